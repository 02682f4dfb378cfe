#include "metrics.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#include "tq_prom.h"

/* Status codes the producer answers with; anything else is counted as "other". */
static const unsigned codes[] = {200, 202, 204, 400, 401, 403, 404, 405,
                                 409, 413, 415, 422, 429, 431, 500, 503};
#define N_CODES (sizeof codes / sizeof codes[0])
#define CODE_OTHER N_CODES

/* Upper bounds in seconds, 1 ms .. 5 s. */
static const double buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                 0.1,   0.25,   0.5,   1.0,  2.5,   5.0};
#define N_BUCKETS (sizeof buckets / sizeof buckets[0])

#define ROUTE_SLOTS (TQ_METRICS_MAX_ROUTES + 1) /* + "other" */

static const char *const *route_names;
static size_t n_routes;

static atomic_ullong req_count[ROUTE_SLOTS][N_CODES + 1];
/* Non-cumulative per bucket (+Inf last); made cumulative when rendered. */
static atomic_ullong lat_bucket[ROUTE_SLOTS][N_BUCKETS + 1];
static atomic_ullong lat_sum_us[ROUTE_SLOTS];
static atomic_ullong lat_count[ROUTE_SLOTS];

static atomic_ullong conn_events[TQ_CONN_N_EVENTS];
static atomic_int conn_open;

void tq_metrics_conn(tq_metrics_conn_event ev)
{
    atomic_fetch_add_explicit(&conn_events[ev], 1, memory_order_relaxed);
}

unsigned long long tq_metrics_conn_total(tq_metrics_conn_event ev)
{
    return atomic_load_explicit(&conn_events[ev], memory_order_relaxed);
}

void tq_metrics_conn_open(int n)
{
    atomic_store_explicit(&conn_open, n, memory_order_relaxed);
}

static void render_conns(tq_prom_doc *d)
{
    tq_prom_scalar(d, "trainq_http_connections_open", "gauge",
                   "HTTP connections open (sampled every 200 ms).",
                   atomic_load_explicit(&conn_open, memory_order_relaxed));
    const char *n = "trainq_http_connections_refused_total";
    tq_prom_head(d, n, "counter", "Connections closed at accept.");
    tq_prom_sample_u(d, n, "reason=\"per_client\"", tq_metrics_conn_total(TQ_CONN_REFUSED_CLIENT));
    tq_prom_sample_u(d, n, "reason=\"full\"", tq_metrics_conn_total(TQ_CONN_REFUSED_FULL));
    n = "trainq_http_reserve_refused_total";
    tq_prom_head(d, n, "counter",
                 "Requests other than /healthz and /readyz answered 503 on a connection from "
                 "the health reserve.");
    tq_prom_sample_u(d, n, NULL, tq_metrics_conn_total(TQ_CONN_RESERVE_BUSY));
    n = "trainq_http_deadline_closed_total";
    tq_prom_head(d, n, "counter",
                 "Connections closed because a request's headers or body were not in by their "
                 "deadline.");
    tq_prom_sample_u(d, n, "phase=\"headers\"", tq_metrics_conn_total(TQ_CONN_CUT_HEADERS));
    tq_prom_sample_u(d, n, "phase=\"body\"", tq_metrics_conn_total(TQ_CONN_CUT_BODY));
}

void tq_metrics_init(const char *const *names, size_t n)
{
    route_names = names;
    n_routes = n > TQ_METRICS_MAX_ROUTES ? TQ_METRICS_MAX_ROUTES : n;
}

void tq_metrics_observe(size_t route, unsigned status, double seconds)
{
    if (route >= n_routes)
        route = TQ_METRICS_MAX_ROUTES;
    size_t ci = CODE_OTHER;
    for (size_t i = 0; i < N_CODES; i++)
        if (codes[i] == status) {
            ci = i;
            break;
        }
    atomic_fetch_add_explicit(&req_count[route][ci], 1, memory_order_relaxed);
    size_t b = N_BUCKETS;
    for (size_t i = 0; i < N_BUCKETS; i++)
        if (seconds <= buckets[i]) {
            b = i;
            break;
        }
    if (seconds < 0)
        seconds = 0;
    atomic_fetch_add_explicit(&lat_bucket[route][b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&lat_sum_us[route], (unsigned long long)(seconds * 1e6),
                              memory_order_relaxed);
    atomic_fetch_add_explicit(&lat_count[route], 1, memory_order_relaxed);
}

static const char *route_label(size_t i)
{
    return i < n_routes ? route_names[i] : "other";
}

/* Room for `route="…",code="…"`: route names are the route table's constants. */
#define LABELS_BUF 160

static atomic_ullong db_exhausted;

void tq_metrics_db_exhausted(void)
{
    atomic_fetch_add_explicit(&db_exhausted, 1, memory_order_relaxed);
}

/* Requests by route and status code, and their latency histogram per route. */
static void render_http(tq_prom_doc *d)
{
    char lab[LABELS_BUF];
    const char *n = "trainq_http_requests_total";
    tq_prom_head(d, n, "counter", "HTTP requests answered, by route and status code.");
    for (size_t r = 0; r < ROUTE_SLOTS; r++) {
        if (r >= n_routes && r != TQ_METRICS_MAX_ROUTES)
            continue;
        for (size_t c = 0; c <= N_CODES; c++) {
            unsigned long long v = atomic_load_explicit(&req_count[r][c], memory_order_relaxed);
            if (!v)
                continue;
            if (c < N_CODES)
                snprintf(lab, sizeof lab, "route=\"%s\",code=\"%u\"", route_label(r), codes[c]);
            else
                snprintf(lab, sizeof lab, "route=\"%s\",code=\"other\"", route_label(r));
            tq_prom_sample_u(d, n, lab, v);
        }
    }

    n = "trainq_http_request_duration_seconds";
    tq_prom_head(d, n, "histogram", "Time from request line to response sent.");
    for (size_t r = 0; r < ROUTE_SLOTS; r++) {
        if (r >= n_routes && r != TQ_METRICS_MAX_ROUTES)
            continue;
        unsigned long long count = atomic_load_explicit(&lat_count[r], memory_order_relaxed);
        if (!count)
            continue; /* a route never asked has no series, as a code never answered */
        unsigned long long counts[N_BUCKETS + 1];
        for (size_t b = 0; b <= N_BUCKETS; b++)
            counts[b] = atomic_load_explicit(&lat_bucket[r][b], memory_order_relaxed);
        snprintf(lab, sizeof lab, "route=\"%s\"", route_label(r));
        tq_prom_histogram(d, n, lab, buckets, N_BUCKETS, counts,
                          atomic_load_explicit(&lat_sum_us[r], memory_order_relaxed));
    }
}

/* The outbox relay's state and counters (relay NULL: not running), and the database's
 * refused connections. */
static void render_relay(tq_prom_doc *d, const tq_metrics_relay *relay)
{
    tq_metrics_relay none = {0};
    none.backlog = -1;
    const tq_metrics_relay *rs = relay ? relay : &none;
    tq_prom_scalar(d, "trainq_outbox_backlog", "gauge",
                   "Outbox rows not yet published (-1: unknown).", rs->backlog);
    tq_prom_scalar(d, "trainq_outbox_backlog_age_seconds", "gauge",
                   "How long the oldest due outbox row has waited (-1: unknown).", rs->backlog_age);
    tq_prom_scalar(d, "trainq_relay_amqp_up", "gauge",
                   "1 while the relay's RabbitMQ connection is up.", rs->connected);
    tq_prom_scalar(d, "trainq_relay_amqp_blocked", "gauge",
                   "1 while RabbitMQ blocks the relay's publishing (memory or disk alarm).",
                   rs->blocked);
    tq_prom_head(d, "trainq_relay_amqp_blocked_seconds_total", "counter",
                 "Time the relay's RabbitMQ connection spent blocked by a resource alarm.");
    tq_prom_sample_u(d, "trainq_relay_amqp_blocked_seconds_total", NULL, rs->blocked_seconds);
    tq_prom_head(d, "trainq_db_connections_refused_total", "counter",
                 "Postgres connections refused for want of slots (too many clients, 53300).");
    tq_prom_sample_u(d, "trainq_db_connections_refused_total", NULL,
                     atomic_load_explicit(&db_exhausted, memory_order_relaxed));
    static const struct {
        const char *name, *help;
        size_t off;
    } ctr[] = {
        {"trainq_relay_published_total", "Outbox rows published and confirmed by the broker.",
         offsetof(tq_metrics_relay, published)},
        {"trainq_relay_confirms_total", "Publisher confirms (basic.ack) received.",
         offsetof(tq_metrics_relay, confirms)},
        {"trainq_relay_nacks_total", "Publisher nacks (basic.nack) received.",
         offsetof(tq_metrics_relay, nacks)},
        {"trainq_relay_returns_total", "Messages returned as unroutable (basic.return).",
         offsetof(tq_metrics_relay, returns)},
        {"trainq_relay_events_published_total", "Job events published to trainq.events.",
         offsetof(tq_metrics_relay, events_published)},
        {"trainq_relay_replies_dropped_total",
         "Replies to a job's reply_to returned by the broker (queue gone): dropped.",
         offsetof(tq_metrics_relay, replies_dropped)},
        {"trainq_relay_errors_total", "Relay rounds that failed (database or broker).",
         offsetof(tq_metrics_relay, errors)},
        {"trainq_relay_reconnects_total", "Relay reconnections to Postgres or RabbitMQ.",
         offsetof(tq_metrics_relay, reconnects)},
        {"trainq_relay_amqp_blocked_total", "Times RabbitMQ blocked the relay's connection.",
         offsetof(tq_metrics_relay, blocked_events)},
    };
    for (size_t i = 0; i < sizeof ctr / sizeof ctr[0]; i++) {
        const unsigned long long *v =
            (const unsigned long long *)(const void *)((const char *)rs + ctr[i].off);
        tq_prom_head(d, ctr[i].name, "counter", ctr[i].help);
        tq_prom_sample_u(d, ctr[i].name, NULL, *v);
    }
}

char *tq_metrics_render(const tq_metrics_relay *relay, size_t *len)
{
    tq_prom_doc d;
    if (tq_prom_begin(&d) != 0)
        return NULL;
    render_http(&d);
    render_conns(&d);
    render_relay(&d, relay);
    return tq_prom_end(&d, len);
}
