/*
 * runner — what happens when a training container exits.
 *
 * One runner thread per slot follows one container at a time: it waits for the exit in
 * one-second rounds (so cancellation, overrun, a lost lease and shutdown are noticed within
 * ~1 s), writes after each round what the job's output follower collected (output.h: its
 * progress and log lines, on the runner's own connection), judges the end (tq_run_judge),
 * writes the last lines, records the outcome and the job's output files (artifacts.h) with
 * the claim's fencing token — releasing the user's next parked job in the same transaction
 * (cdb.c) — and frees the slot. An exit caused by dockerd going away is not the job's fault: the
 * job is given back (retried, bounded by max_attempts) instead of recorded as failed.
 *
 * What must stay true:
 *  - an outcome is written only with the fencing token of the claim the slot holds: a
 *    runner whose lease was lost kills its container and records nothing;
 *  - on shutdown a runner leaves its container alone: the next start of this worker adopts
 *    it (adoption.h), so a restart never kills a training run;
 *  - the job's output is written only by its runner, never by the follower thread, so that
 *    a slow Postgres never holds up the reading of Docker's stream (output.h).
 */
#ifndef TQ_RUNNER_H
#define TQ_RUNNER_H

#include <stddef.h>

#include "outcome.h"
#include "tq_status.h"
#include "worker.h"

/* What is to be done with the job once its container ended. */
typedef enum {
    TQ_RUN_RECORD, /* record status (completed, failed or cancelled) */
    TQ_RUN_RETRY,  /* try the job again: an outage of this host, or the retry policy */
} tq_run_verdict;

/* tq_run_outcome.exit_code when the container left none (it disappeared). */
#define TQ_RUN_NO_EXIT_CODE (-256)
#define TQ_RUN_ERROR_BUF 4608
#define TQ_RUN_REASON_BUF 256

/* The container's end, as the job's outcome. */
typedef struct {
    tq_run_verdict verdict;
    tq_job_status status;           /* TQ_RUN_RECORD: a terminal status */
    int exit_code;                  /* TQ_RUN_NO_EXIT_CODE: none */
    char error[TQ_RUN_ERROR_BUF];   /* the job's error message, "" for none */
    char reason[TQ_RUN_REASON_BUF]; /* why, for the log and the status history */
    tq_failure_class failure_class; /* TQ_FAIL_NONE when completed */
    /* what a person should know and do (outcome.h: the OOM's step, batch size, resolution
     * and what to lower), stored as training_jobs.failure_message */
    char failure_message[TQ_RUN_REASON_BUF * 2];
    int transient; /* hub_error: the hub may answer later (429, 5xx, no connection) */
} tq_run_outcome;

/* What the runner saw when its wait on the container ended. */
typedef struct {
    int exit_code; /* TQ_RUN_NO_EXIT_CODE: the container no longer exists */
    int oom;       /* killed by the kernel's OOM killer */
    int cancelled; /* the user asked for cancellation */
    int overrun;   /* the runner stopped it at the maximum run time */
    int outage;    /* dockerd was unreachable while the job ran, or is going away */
    int max_run_seconds;
    const char *container_id;
    tq_oom_context oom_ctx; /* progress, batch size, resolution, memory limit (outcome.h) */
} tq_run_end;

/*
 * Judges the end of a container: cancelled beats overrun (timeout), overrun beats an
 * outage, an outage with a non-zero code is retried (host_lost), a vanished container is
 * host_error, code 0 without OOM completes, anything else fails. Returns 1 when the outcome
 * is a failed exit whose class and message want the container's log tail (then call
 * tq_run_describe_exit), 0 when *o is complete. Every failed outcome has a failure class.
 * Pure.
 */
int tq_run_judge(const tq_run_end *e, tq_run_outcome *o);

/* The failed outcome of e's exit, classified (outcome.h): oom (the OOM flag, or 137 under a
 * memory limit), config_error (exit 2), hub_error (the hub's failure in the tail),
 * trainer_error; its error message ends in the log tail (may be NULL), cut at a character
 * boundary. The trainer's own words quoted for exits 2 and 3 are the last line of
 * err_tail (its stderr alone, may be NULL) when it has one, else of tail: Docker copies
 * stdout and stderr separately, so in the merged log a trainer's last stderr line may land
 * before its last stdout lines. Pure. */
void tq_run_describe_exit(const tq_run_end *e, const char *tail, const char *err_tail,
                          tq_run_outcome *o);

/* Applies the retry policy to a failed outcome whose class already failed `done` earlier
 * attempts of the job, `attempts` its attempts so far (this one included): RETRY (status
 * queued, *delay_s the seconds before the job is released again: hub_error's backoff from
 * backoff_base_s) while done < the class's maximum and attempts < max_attempts; a hub_error
 * the hub will not change its mind about (401, 403, 404) is not retried. Otherwise the
 * outcome stays the failure it is (its exit code, its error with the log tail), the reason
 * saying why it was not retried. Pure. */
void tq_run_apply_policy(const tq_retry_policy *p, int done, int attempts, int max_attempts,
                         int backoff_base_s, tq_run_outcome *o, int *delay_s);

/* Starts one runner thread per slot / wakes and joins them (on stopping). */
int tq_runners_start(tq_worker *w);
void tq_runners_join(tq_worker *w);

#endif
