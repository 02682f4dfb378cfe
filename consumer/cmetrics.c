#include "cmetrics.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "tq_listen.h"
#include "tq_prom.h"

/* ---- values ---------------------------------------------------------------------------- */

static atomic_long values[TQ_CM__COUNT];

static const struct {
    const char *name;
    const char *help;
    int gauge;
} defs[TQ_CM__COUNT] = {
    [TQ_CM_JOBS_STARTED] = {"trainq_consumer_jobs_started_total",
                            "Training containers started by this worker.", 0},
    [TQ_CM_JOBS_COMPLETED] = {"trainq_consumer_jobs_completed_total",
                              "Jobs whose container exited with code 0.", 0},
    [TQ_CM_JOBS_FAILED] = {"trainq_consumer_jobs_failed_total",
                           "Jobs recorded as failed by this worker.", 0},
    [TQ_CM_JOBS_CANCELLED] = {"trainq_consumer_jobs_cancelled_total",
                              "Jobs cancelled by this worker.", 0},
    [TQ_CM_JOBS_PARKED] = {"trainq_consumer_jobs_parked_total",
                           "Deliveries stored as new queued rows (jobs published straight to "
                           "the exchange); the name is from before the pick design.",
                           0},
    [TQ_CM_JOBS_KNOWN] = {"trainq_consumer_jobs_known_total",
                          "Deliveries of jobs a producer had stored already (every HTTP job): "
                          "acked, the row was queued before the message came.",
                          0},
    [TQ_CM_JOBS_DUPLICATES] = {"trainq_consumer_jobs_duplicates_total",
                               "Deliveries dropped because the job was already claimed or "
                               "finished.",
                               0},
    [TQ_CM_JOBS_DEAD_LETTERED] = {"trainq_consumer_jobs_dead_lettered_total",
                                  "Invalid messages rejected to the dead-letter queue.", 0},
    [TQ_CM_JOBS_RECOVERED] = {"trainq_consumer_jobs_recovered_total",
                              "Jobs of lost workers retried or failed by this worker's reaper.", 0},
    [TQ_CM_JOBS_REQUEUED] = {"trainq_consumer_jobs_requeued_total",
                             "Deliveries or claimed jobs given back because a service or "
                             "this host could not take them.",
                             0},
    [TQ_CM_HOST_ERRORS] = {"trainq_consumer_host_errors_total",
                           "Launches that failed for a reason of this host (image, runtime, "
                           "disk).",
                           0},
    [TQ_CM_JOBS_RELEASED] = {"trainq_consumer_jobs_released_total",
                             "Parked or stranded jobs republished by this worker's sweeper.", 0},
    [TQ_CM_REPLIES_DROPPED] = {"trainq_consumer_relay_replies_dropped_total",
                               "Replies to a job's reply_to returned by the broker (queue "
                               "gone) and dropped by this worker's relay.",
                               0},
    [TQ_CM_SLOTS_TOTAL] = {"trainq_consumer_slots", "GPU slots of this worker.", 1},
    [TQ_CM_SLOTS_BUSY] = {"trainq_consumer_slots_busy", "Slots running a job.", 1},
    [TQ_CM_DOCKER_UP] = {"trainq_consumer_docker_up",
                         "1 if the Docker daemon answered the last call.", 1},
    [TQ_CM_DB_UP] = {"trainq_consumer_db_up", "1 if Postgres answered the last query.", 1},
    [TQ_CM_AMQP_UP] = {"trainq_consumer_amqp_up", "1 while the AMQP connection is open.", 1},
    [TQ_CM_HOST_HEALTHY] = {"trainq_consumer_host_healthy",
                            "0 while this host starts no new job after launches failed in a row.",
                            1},
    /* Set from the database's running totals, which only grow: counters to Prometheus. */
    [TQ_CM_CLUSTER_ATTEMPTS] = {"trainq_cluster_attempts_total",
                                "Attempts that ended, every worker's (read a minute behind).", 0},
    [TQ_CM_CLUSTER_GPU_SECONDS] = {"trainq_cluster_gpu_seconds_total",
                                   "GPU-seconds of the attempts that ended, every worker's "
                                   "(GPUs held x wall time).",
                                   0},
    [TQ_CM_CLUSTER_WALL_SECONDS] = {"trainq_cluster_attempt_seconds_total",
                                    "Wall seconds of the attempts that ended, every worker's.", 0},
};

#define N_BUCKETS 13
static const double bucket_le[N_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                            1,     2.5,  5,     10,   30,  60};
/* Per-bucket (not cumulative) counts; the last one is +Inf. Cumulated at render time. */
static atomic_ulong dispatch_counts[N_BUCKETS + 1];
static atomic_llong dispatch_sum_us;

/* Attempts that ended without success, by failure class (outcome.h). */
static atomic_long class_failures[TQ_FAIL__COUNT];

void tq_cmetrics_attempt_failed(tq_failure_class c)
{
    if ((int)c > 0 && c < TQ_FAIL__COUNT)
        atomic_fetch_add(&class_failures[c], 1);
}

void tq_cmetrics_inc(tq_cmetric_id id)
{
    tq_cmetrics_add(id, 1);
}

void tq_cmetrics_add(tq_cmetric_id id, long n)
{
    if ((int)id >= 0 && id < TQ_CM__COUNT)
        atomic_fetch_add(&values[id], n);
}

void tq_cmetrics_set(tq_cmetric_id id, long v)
{
    if ((int)id >= 0 && id < TQ_CM__COUNT)
        atomic_store(&values[id], v);
}

long tq_cmetrics_get(tq_cmetric_id id)
{
    if ((int)id >= 0 && id < TQ_CM__COUNT)
        return atomic_load(&values[id]);
    return 0;
}

void tq_cmetrics_observe_dispatch(double seconds)
{
    if (!(seconds > 0)) /* also NaN */
        seconds = 0;
    size_t i = 0;
    while (i < N_BUCKETS && seconds > bucket_le[i])
        i++;
    atomic_fetch_add(&dispatch_counts[i], 1ul);
    /* Microseconds in an integer: lock-free, and a year of latency still fits. */
    double us = seconds * 1e6;
    atomic_fetch_add(&dispatch_sum_us, us < 9e15 ? (long long)(us + 0.5) : 9000000000000000LL);
}

void tq_cmetrics_reset(void)
{
    for (size_t i = 0; i < TQ_CM__COUNT; i++)
        atomic_store(&values[i], 0);
    for (size_t i = 0; i <= N_BUCKETS; i++)
        atomic_store(&dispatch_counts[i], 0ul);
    atomic_store(&dispatch_sum_us, 0);
    for (size_t i = 0; i < TQ_FAIL__COUNT; i++)
        atomic_store(&class_failures[i], 0);
}

char *tq_cmetrics_render(void)
{
    tq_prom_doc d;
    if (tq_prom_begin(&d) != 0)
        return NULL;
    for (size_t i = 0; i < TQ_CM__COUNT; i++) {
        tq_prom_scalar(&d, defs[i].name, defs[i].gauge ? "gauge" : "counter", defs[i].help,
                       atomic_load(&values[i]));
        if (i == TQ_CM_SLOTS_BUSY) {
            long free_slots = atomic_load(&values[TQ_CM_SLOTS_TOTAL]) - atomic_load(&values[i]);
            tq_prom_scalar(&d, "trainq_consumer_slots_free", "gauge", "Slots ready for a job.",
                           free_slots > 0 ? free_slots : 0);
        }
    }
    const char *fc = "trainq_consumer_attempt_failures_total";
    tq_prom_head(&d, fc, "counter",
                 "Attempts that ended without success on this worker, by failure class.");
    for (int c = 1; c < TQ_FAIL__COUNT; c++) {
        char labels[48]; /* every class, also at 0: a rate() needs the series before the first */
        snprintf(labels, sizeof labels, "class=\"%s\"", tq_failure_class_name((tq_failure_class)c));
        tq_prom_sample(&d, fc, labels, atomic_load(&class_failures[c]));
    }
    const char *h = "trainq_consumer_dispatch_latency_seconds";
    tq_prom_head(&d, h, "histogram",
                 "Seconds from the message's publication (or the job's creation) to its "
                 "container start.");
    unsigned long long counts[N_BUCKETS + 1];
    for (size_t i = 0; i <= N_BUCKETS; i++)
        counts[i] = atomic_load(&dispatch_counts[i]);
    tq_prom_histogram(&d, h, NULL, bucket_le, N_BUCKETS, counts,
                      (unsigned long long)atomic_load(&dispatch_sum_us));
    return tq_prom_end(&d, NULL);
}

/* ---- server ---------------------------------------------------------------------------- */

struct tq_cmetrics_server {
    struct MHD_Daemon *mhd;
    tq_cmetrics_health_fn fn;
    void *arg;
};

#define REASON_MAX 256

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, char *body, int owned,
                             const char *ctype)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(
        strlen(body), body, owned ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!r) {
        if (owned)
            free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *upload_data,
                              size_t *upload_data_size, void **con_cls)
{
    (void)version;
    (void)upload_data;
    (void)upload_data_size;
    (void)con_cls;
    tq_cmetrics_server *s = cls;
    static char not_found[] = "not found\n";
    static char not_allowed[] = "method not allowed\n";
    static char nomem[] = "out of memory\n";
    const char *text = "text/plain; charset=utf-8";

    int is_metrics = strcmp(url, "/metrics") == 0;
    int is_health = strcmp(url, "/healthz") == 0;
    if (!is_metrics && !is_health)
        return reply(c, MHD_HTTP_NOT_FOUND, not_found, 0, text);
    /* Answered before any body is read: MHD then closes the connection, so an upload is
     * never buffered. */
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return reply(c, MHD_HTTP_METHOD_NOT_ALLOWED, not_allowed, 0, text);

    if (is_metrics) {
        char *body = tq_cmetrics_render();
        if (!body)
            return reply(c, MHD_HTTP_INTERNAL_SERVER_ERROR, nomem, 0, text);
        return reply(c, MHD_HTTP_OK, body, 1, "text/plain; version=0.0.4; charset=utf-8");
    }
    char reason[REASON_MAX] = "unhealthy";
    if (!s->fn || s->fn(s->arg, reason, sizeof reason - 1)) {
        static char ok[] = "ok\n";
        return reply(c, MHD_HTTP_OK, ok, 0, text);
    }
    reason[sizeof reason - 1] = '\0';
    size_t n = strlen(reason);
    char *body = malloc(n + 2);
    if (!body)
        return reply(c, MHD_HTTP_INTERNAL_SERVER_ERROR, nomem, 0, text);
    memcpy(body, reason, n);
    body[n] = '\n';
    body[n + 1] = '\0';
    return reply(c, MHD_HTTP_SERVICE_UNAVAILABLE, body, 1, text);
}

int tq_cmetrics_start(const char *host, int port, tq_cmetrics_health_fn fn, void *arg,
                      tq_cmetrics_server **out, int *bound_port, tq_errbuf *eb)
{
    *out = NULL;
    if (port < 0 || port > 65535)
        return tq_errf(eb, TQ_ERR_INVALID, "invalid metrics port %d", port);
    char h[256];
    if (!host || !*host)
        host = "127.0.0.1";
    size_t hl = strlen(host);
    if (hl >= sizeof h)
        return tq_errf(eb, TQ_ERR_INVALID, "invalid metrics host: too long");
    if (host[0] == '[' && hl > 2 && host[hl - 1] == ']') { /* "[::1]" */
        memcpy(h, host + 1, hl - 2);
        h[hl - 2] = '\0';
    } else {
        memcpy(h, host, hl + 1);
    }

    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int gai = getaddrinfo(h, NULL, &hints, &ai);
    if (gai != 0 || !ai)
        return tq_errf(eb, tq_listen_resolve_class(gai),
                       "could not resolve metrics host \"%.200s\": %s", h, gai_strerror(gai));
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD;
    if (ai->ai_family == AF_INET6) {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
        memcpy(a6, ai->ai_addr, sizeof *a6);
        a6->sin6_port = htons((uint16_t)port);
        flags |= MHD_USE_IPv6;
    } else if (ai->ai_family == AF_INET) {
        struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
        memcpy(a4, ai->ai_addr, sizeof *a4);
        a4->sin_port = htons((uint16_t)port);
    } else {
        freeaddrinfo(ai);
        return tq_errf(eb, TQ_ERR_INVALID, "invalid metrics host \"%.200s\": not an IP address", h);
    }
    freeaddrinfo(ai);

    tq_cmetrics_server *s = calloc(1, sizeof *s);
    if (!s)
        return tq_errf(eb, TQ_ERR_NOMEM, "could not start metrics server: out of memory");
    s->fn = fn;
    s->arg = arg;
    /* Scrapers and probes are few: a small connection cap and a short idle timeout keep a
     * slow client from holding the one thread's attention. */
    /* Bound here (tq_listen.h), so bind's errno tells a bad setting (exit 2) from a port
     * another process holds (exit 1); MHD owns the socket from here and closes it on stop. */
    int lfd = -1;
    int rc = tq_listen_open((struct sockaddr *)&ss,
                            ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                     : sizeof(struct sockaddr_in),
                            h, port, "metrics", &lfd, eb);
    if (rc != TQ_OK) {
        free(s);
        return rc;
    }
    s->mhd = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, handle, s,
                              MHD_OPTION_LISTEN_SOCKET, (MHD_socket)lfd,
                              MHD_OPTION_CONNECTION_LIMIT, 32u, MHD_OPTION_CONNECTION_TIMEOUT, 10u,
                              MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)32768, MHD_OPTION_END);
    if (!s->mhd) { /* lfd not closed: MHD may have closed it, and the consumer stops */
        free(s);
        return tq_errf(eb, TQ_ERR_IO, "could not start the metrics server");
    }
    if (bound_port) {
        const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_BIND_PORT);
        *bound_port = di ? di->port : port;
    }
    *out = s;
    return TQ_OK;
}

void tq_cmetrics_stop(tq_cmetrics_server *s)
{
    if (!s)
        return;
    MHD_stop_daemon(s->mhd);
    free(s);
}
