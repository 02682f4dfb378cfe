/*
 * outcome — why an attempt of a job ended without success (its failure class), what a
 * person should do about it, and whether it is tried again (the retry policy).
 * docs/architecture.md, "Failure classes", is the contract; db/procedures/62_outcomes.sql
 * stores the class on the job row and in job_events.
 *
 * The classes, as stored (training_jobs.failure_class) and as the metric label:
 *   oom            killed by the kernel's OOM killer (the runtime says so), exit 137
 *                  under a memory limit without a stop of ours, or the trainer's exit 5
 *                  (out of GPU memory)
 *   trainer_error  any other non-zero exit
 *   config_error   the trainer refused its config.json: exit code 2, by contract
 *   dataset_error  the dataset is missing, unreadable, empty of images or too large (the
 *                  preflight, or the trainer's exit 3)
 *   hub_error      the model download failed: the Hugging Face hub's 401/403/404/429/5xx
 *                  (or no connection) in the log tail, or the trainer's exit 4
 *   timeout        stopped at TRAINQ_MAX_RUN_SECONDS
 *   host_lost      the worker or its runtime went away while the job ran
 *   host_error     this host could not start the job (training image missing, runtime error,
 *                  the trainer's exit 127: not in the image), or its container vanished
 *   cancelled      the user cancelled it
 * All pure; no I/O.
 */
#ifndef TQ_OUTCOME_H
#define TQ_OUTCOME_H

#include <stddef.h>

#include "tq_err.h"

typedef enum {
    TQ_FAIL_NONE = 0, /* completed */
    TQ_FAIL_OOM,
    TQ_FAIL_TRAINER,
    TQ_FAIL_CONFIG,
    TQ_FAIL_DATASET,
    TQ_FAIL_HUB,
    TQ_FAIL_TIMEOUT,
    TQ_FAIL_HOST_LOST,
    TQ_FAIL_HOST_ERROR,
    TQ_FAIL_CANCELLED,
    TQ_FAIL__COUNT
} tq_failure_class;

/* The trainer contract's exit codes (docs/deployment.md, "Exit codes"; the trainer adapter
 * and the fake trainer use them): 2 "I cannot use this config", 3 the dataset, 4 the hub,
 * 5 out of GPU memory, 127 the trainer is not in the image. */
#define TQ_EXIT_CONFIG_ERROR 2
#define TQ_EXIT_DATASET_ERROR 3
#define TQ_EXIT_HUB_ERROR 4
#define TQ_EXIT_GPU_OOM 5
#define TQ_EXIT_MISSING 127

/* "oom" ... "cancelled"; NULL for TQ_FAIL_NONE or out of range. */
const char *tq_failure_class_name(tq_failure_class c);
/* The class named s; TQ_FAIL_NONE when s names none. */
tq_failure_class tq_failure_class_parse(const char *s);

/* A Hugging Face hub failure recognised in a log tail. */
typedef struct {
    int status;    /* 401, 403, 404, 429, 500..599; 0: no connection to the hub */
    int transient; /* 429, 5xx, no connection: worth trying again later */
} tq_hub_failure;

/*
 * Whether the tail holds a Hugging Face hub failure: a line that names the hub
 * (huggingface.co, huggingface_hub, or one of its error types: RepositoryNotFoundError,
 * GatedRepoError, RevisionNotFoundError, EntryNotFoundError, HfHubHTTPError) with an HTTP
 * status as requests words it ("404 Client Error", "503 Server Error"), or the hub's
 * "We couldn't connect to 'https://huggingface.co'". 1 and *out filled, else 0.
 */
int tq_hub_failure_find(const char *tail, tq_hub_failure *out);

/* What the trainer was doing when it ran out of memory, for the advice. 0 means unknown. */
typedef struct {
    long step, total; /* the last progress seen (step 0: before the first) */
    int has_progress;
    int batch_size;         /* train_batch_size of config.json */
    int resolution;         /* resolution of config.json */
    long long memory_limit; /* bytes, 0: none */
    int gpu;                /* CUDA ran out (the trainer's exit 5), not the host's memory */
} tq_oom_context;

/* The actionable message of an OOM: where it happened, with which batch size and
 * resolution, and what to lower (the batch size first, then the resolution, by the job's
 * own limits: batch 1..8, resolution 256..1024 in steps of 64). Cut to cap. */
void tq_oom_advice(const tq_oom_context *c, char *out, size_t cap);

/* The retry policy: how many times an attempt ending with each class is tried again. */
typedef struct {
    int max_retries[TQ_FAIL__COUNT];
} tq_retry_policy;

/* The default policy text (TRAINQ_RETRY_POLICY). */
#define TQ_RETRY_POLICY_DEFAULT "host_lost=3,host_error=3,hub_error=3"

/*
 * Parses "class=N,class=N" (N 0..100; classes not named are not retried; "" or "none":
 * nothing is). cancelled cannot be retried (a user's decision). TQ_ERR_CONFIG with the
 * reason on anything else.
 */
int tq_retry_policy_parse(const char *s, tq_retry_policy *p, tq_errbuf *eb);

/* Seconds before a hub_error retry: base * 2^done, at most 32 * base. */
int tq_retry_backoff_seconds(int base, int done);

#endif
