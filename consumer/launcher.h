/*
 * launcher — how a consumer runs a job's training somewhere: the operations the dispatcher,
 * the runners, the output followers, adoption and the health check use, behind one table of
 * function pointers and an opaque context. The Docker Engine implementation
 * (launcher_docker.c, over docker.h and launch.c) is the only one today; a Kubernetes one
 * (docs/scale-out.md, "A Kubernetes launcher") would fill the same table — a batch/v1 Job
 * named training-<job_id> for start, a pod watch for wait, the pod's termination state for
 * inspect — without a change to dispatch.c, runner.c, output.c or adoption.c.
 *
 * A unit is what runs one attempt of one job (a container, a pod): it has an id of at most
 * TQ_LAUNCHER_ID_BUF - 1 bytes, the labels trainq.job / trainq.worker, and a state in
 * tq_container_state's vocabulary (a launcher maps its own onto it).
 *
 * What must stay true of every implementation:
 *  - start is idempotent per job: a unit already running for this job is adopted (TQ_OK with
 *    its id), one of another job holding the name is TQ_ERR_CONFLICT — the duplicate guard
 *    that keeps a job from running twice on one host;
 *  - every error of start and preflight_image is the host's, never the job's: the dispatcher
 *    gives the job back (TQ_ERR_NOT_FOUND: the training image is missing; TQ_ERR_UNAVAILABLE:
 *    the runtime does not answer; TQ_ERR_CONFLICT: try again later);
 *  - inspect reports oom_killed from the runtime itself (the kernel's OOM killer), so that
 *    the failure class "oom" never rests on guessing from an exit code alone;
 *  - list_own returns only units labelled with this worker (and job, when given), so
 *    adoption never touches another worker's units.
 * Threads: any number of threads may call the operations on one launcher at once.
 */
#ifndef TQ_LAUNCHER_H
#define TQ_LAUNCHER_H

#include <stdatomic.h>
#include <stddef.h>

#include "tq_err.h"

/* A unit id (a container's 64 hex digits) and the NUL. */
#define TQ_LAUNCHER_ID_BUF 65
/* A unit's state word ("running", "removing") and the NUL. */
#define TQ_LAUNCHER_STATE_BUF 16

/* Receives a unit's output as it is written: stream 1 stdout, 2 stderr, 0 a TTY's (or
 * unframed) output. Must not block. */
typedef void (*tq_log_sink_fn)(void *arg, int stream, const char *data, size_t len);

typedef struct {
    char id[TQ_LAUNCHER_ID_BUF];
    /* created | running | paused | restarting | removing | exited | dead */
    char status[TQ_LAUNCHER_STATE_BUF];
    int running;
    int exit_code;
    int oom_killed;
    long long started_at_ms, finished_at_ms; /* Unix ms; 0 = never */
    long long memory_bytes;                  /* the memory limit, 0 = unlimited */
    char job_label[64];                      /* label "trainq.job", "" if absent */
    char worker_label[128];                  /* label "trainq.worker", "" if absent */
    char error[256];                         /* why start failed, if it did */
} tq_container_state;

typedef struct {
    char id[TQ_LAUNCHER_ID_BUF];
    char name[128];
    char state[TQ_LAUNCHER_STATE_BUF];
    char job_label[64];     /* "trainq.job" */
    char worker_label[128]; /* "trainq.worker" */
} tq_container_summary;

struct tq_launch_paths_s;

/* One job's start: what tq_launch_prepare made ready on this host (launch.h). */
typedef struct {
    int slot;
    const char *job_id;
    const char *user_id;
    const struct tq_launch_paths_s *paths;
    /* 1 while the caller's claim on the job still stands (its fencing token current): asked
     * before a unit another worker left running under the job's name is replaced, so that a
     * launcher whose claim was taken away never stops the one that holds it now. */
    int (*claim_held)(void *arg);
    void *claim_held_arg;
} tq_launch_request;

typedef struct {
    const char *name; /* "docker" */
    /* Whether the runtime answers, quickly (a short timeout of its own: the housekeeper's
     * health check must not be held up by a hung runtime). */
    int (*ping)(void *ctx, tq_errbuf *eb);
    /* Whether the training image can start here without a pull: TQ_OK, TQ_ERR_NOT_FOUND. */
    int (*preflight_image)(void *ctx, tq_errbuf *eb);
    /* Creates and starts the job's unit (idempotent, see above); id on TQ_OK. */
    int (*start)(void *ctx, const tq_launch_request *req, char id[TQ_LAUNCHER_ID_BUF],
                 tq_errbuf *eb);
    /* Starts a unit found created but never started (a crash between create and start). */
    int (*start_existing)(void *ctx, const char *id, tq_errbuf *eb);
    /* Waits up to timeout_ms for the unit to end: TQ_OK with its exit code, TQ_ERR_TIMEOUT
     * (still running), TQ_ERR_NOT_FOUND (gone). */
    int (*wait)(void *ctx, const char *id, long timeout_ms, int *exit_code, tq_errbuf *eb);
    int (*inspect)(void *ctx, const char *id, tq_container_state *st, tq_errbuf *eb);
    /* The last lines of its output, of stderr alone with stderr_only (*out caller frees;
     * valid UTF-8, no NUL). */
    int (*logs_tail)(void *ctx, const char *id, int lines, int stderr_only, char **out,
                     tq_errbuf *eb);
    /* Streams its output into sink until it ends (TQ_OK), *stop (TQ_ERR_TIMEOUT) or the
     * runtime goes away (TQ_ERR_UNAVAILABLE); replay: what it printed before, first. */
    int (*attach)(void *ctx, const char *id, int replay, tq_log_sink_fn sink, void *arg,
                  const atomic_int *stop, tq_errbuf *eb);
    int (*stop)(void *ctx, const char *id, int grace_seconds, tq_errbuf *eb);
    int (*kill)(void *ctx, const char *id, tq_errbuf *eb);
    /* Removes it, running or not; gone already -> TQ_OK. */
    int (*remove)(void *ctx, const char *id, tq_errbuf *eb);
    /* This worker's units (of job_id only, when not NULL); live_only: not yet ended. *out
     * caller frees (NULL when *n is 0). */
    int (*list_own)(void *ctx, const char *job_id, int live_only, tq_container_summary **out,
                    size_t *n, tq_errbuf *eb);
    void (*free)(void *ctx);
} tq_launcher_ops;

typedef struct tq_launcher {
    const tq_launcher_ops *ops;
    void *ctx;
} tq_launcher;

/* The Docker Engine launcher for cfg (TRAINQ_DOCKER_HOST, the training image, the worker
 * id): does not contact the daemon. Bad configuration -> TQ_ERR_CONFIG / TQ_ERR_INVALID.
 * Freed with tq_launcher_free. cfg must outlive it. */
struct tq_consumer_config;
int tq_launcher_docker_new(const struct tq_consumer_config *cfg, tq_launcher **out, tq_errbuf *eb);
void tq_launcher_free(tq_launcher *l);

#endif
