/*
 * cmetrics — the consumer's /metrics (Prometheus text format 0.0.4) and /healthz.
 *
 * The values are process-global atomics: any thread may update them at any time without a
 * lock, and a render reads each value once (a scrape may see one counter updated and its
 * neighbour not yet; every single series is consistent, and a histogram's _count always
 * equals its +Inf bucket).
 *
 * The HTTP server is libmicrohttpd with its own single thread (MHD_USE_INTERNAL_POLLING_THREAD);
 * it serves GET /metrics and GET /healthz only, so it never touches the consumer's state
 * except through the atomics and the health callback.
 */
#ifndef TQ_CMETRICS_H
#define TQ_CMETRICS_H

#include <stddef.h>

#include "outcome.h"
#include "tq_err.h"

typedef enum {
    /* counters (only grow) */
    TQ_CM_JOBS_STARTED,       /* container started (or adopted at launch) */
    TQ_CM_JOBS_COMPLETED,     /* exit code 0 */
    TQ_CM_JOBS_FAILED,        /* recorded as failed, any reason */
    TQ_CM_JOBS_CANCELLED,     /* cancel carried out by this worker */
    TQ_CM_JOBS_PARKED,        /* a delivery stored as a new queued row (name from before 0012) */
    TQ_CM_JOBS_KNOWN,         /* a delivery of a job a producer had stored (every HTTP job) */
    TQ_CM_JOBS_DUPLICATES,    /* delivery for a job already claimed/terminal: dropped */
    TQ_CM_JOBS_DEAD_LETTERED, /* invalid message rejected to trainq.jobs.dead */
    TQ_CM_JOBS_RECOVERED,     /* jobs of lost workers handled by this worker's reaper */
    TQ_CM_JOBS_REQUEUED,      /* deliveries or claimed jobs given back (a service or the host) */
    TQ_CM_HOST_ERRORS,        /* launches that failed for a reason of this host */
    TQ_CM_JOBS_RELEASED,      /* parked or stranded jobs republished by this worker's sweeper */
    TQ_CM_REPLIES_DROPPED,    /* job event replies returned (reply queue gone), dropped */
    /* gauges (set) */
    TQ_CM_SLOTS_TOTAL,
    TQ_CM_SLOTS_BUSY,
    TQ_CM_DOCKER_UP, /* 1 while the last Docker call reached the daemon */
    TQ_CM_DB_UP,
    TQ_CM_AMQP_UP,
    TQ_CM_HOST_HEALTHY, /* 0 while the host is unhealthy (consecutive launch failures) */
    /* counters set with tq_cmetrics_set: the cluster's usage (every worker's attempts, no
     * user labels), as this worker last read it from job_usage (a minute behind), the same
     * figures on every worker; whole seconds */
    TQ_CM_CLUSTER_ATTEMPTS,
    TQ_CM_CLUSTER_GPU_SECONDS,
    TQ_CM_CLUSTER_WALL_SECONDS,
    TQ_CM__COUNT
} tq_cmetric_id;

/* Counters: add one. Gauges: use tq_cmetrics_set. Ids out of range are ignored. */
void tq_cmetrics_inc(tq_cmetric_id id);
void tq_cmetrics_add(tq_cmetric_id id, long n);
void tq_cmetrics_set(tq_cmetric_id id, long v);
long tq_cmetrics_get(tq_cmetric_id id);

/* An attempt ended without success with class c (retried or not): the counter
 * trainq_consumer_attempt_failures_total{class="..."}. TQ_FAIL_NONE is ignored. */
void tq_cmetrics_attempt_failed(tq_failure_class c);

/* Dispatch latency: seconds from the message's AMQP timestamp (or the job's created_at) to
 * its container start. Negative values (clock skew between hosts) count as 0. Buckets
 * (seconds): 0.005 0.01 0.025 0.05 0.1 0.25 0.5 1 2.5 5 10 30 60 +Inf. */
void tq_cmetrics_observe_dispatch(double seconds);

/* Zeroes every value (tests; a process starts zeroed). */
void tq_cmetrics_reset(void);

/* The /metrics body. Caller frees; NULL only when memory ran out. */
char *tq_cmetrics_render(void);

/*
 * Health callback, run on the server's thread (so it must be thread-safe and quick).
 * Returns 1 when healthy; otherwise 0 with a one-line reason written into reason (cap
 * bytes, NUL-terminated), served as the 503 body.
 */
typedef int (*tq_cmetrics_health_fn)(void *arg, char *reason, size_t cap);

typedef struct tq_cmetrics_server tq_cmetrics_server;

/*
 * Listens on host:port (host: an IPv4/IPv6 literal or a name such as "localhost"; NULL or ""
 * means 127.0.0.1; port 0 picks a free port, stored in *bound_port when not NULL).
 * fn NULL means always healthy. *out is stopped and freed with tq_cmetrics_stop.
 * TQ_ERR_INVALID (bad port, host too long), TQ_ERR_CONFIG (a host that does not resolve,
 * an address this host cannot bind: tq_listen.h), TQ_ERR_IO (another process listens
 * there, the resolver did not answer), TQ_ERR_NOMEM.
 */
int tq_cmetrics_start(const char *host, int port, tq_cmetrics_health_fn fn, void *arg,
                      tq_cmetrics_server **out, int *bound_port, tq_errbuf *eb);

/* Stops the thread (in-flight requests finish) and frees s. NULL is a no-op. */
void tq_cmetrics_stop(tq_cmetrics_server *s);

#endif
