#include "metrics.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

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

static void render_conns(FILE *f)
{
    fprintf(f,
            "# HELP trainq_http_connections_open HTTP connections open (sampled every 200 ms).\n"
            "# TYPE trainq_http_connections_open gauge\ntrainq_http_connections_open %d\n",
            atomic_load_explicit(&conn_open, memory_order_relaxed));
    fprintf(f,
            "# HELP trainq_http_connections_refused_total Connections closed at accept.\n"
            "# TYPE trainq_http_connections_refused_total counter\n"
            "trainq_http_connections_refused_total{reason=\"per_client\"} %llu\n"
            "trainq_http_connections_refused_total{reason=\"full\"} %llu\n",
            tq_metrics_conn_total(TQ_CONN_REFUSED_CLIENT),
            tq_metrics_conn_total(TQ_CONN_REFUSED_FULL));
    fprintf(f,
            "# HELP trainq_http_reserve_refused_total Requests other than /healthz and /readyz "
            "answered 503 on a connection from the health reserve.\n"
            "# TYPE trainq_http_reserve_refused_total counter\n"
            "trainq_http_reserve_refused_total %llu\n",
            tq_metrics_conn_total(TQ_CONN_RESERVE_BUSY));
    fprintf(f,
            "# HELP trainq_http_deadline_closed_total Connections closed because a request's "
            "headers or body were not in by their deadline.\n"
            "# TYPE trainq_http_deadline_closed_total counter\n"
            "trainq_http_deadline_closed_total{phase=\"headers\"} %llu\n"
            "trainq_http_deadline_closed_total{phase=\"body\"} %llu\n",
            tq_metrics_conn_total(TQ_CONN_CUT_HEADERS), tq_metrics_conn_total(TQ_CONN_CUT_BODY));
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

char *tq_metrics_render(const tq_metrics_relay *relay, size_t *len)
{
    char *buf = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&buf, &size);
    if (!f)
        return NULL;

    fputs("# HELP trainq_http_requests_total HTTP requests answered, by route and status code.\n"
          "# TYPE trainq_http_requests_total counter\n",
          f);
    for (size_t r = 0; r < ROUTE_SLOTS; r++) {
        if (r >= n_routes && r != TQ_METRICS_MAX_ROUTES)
            continue;
        for (size_t c = 0; c <= N_CODES; c++) {
            unsigned long long v = atomic_load_explicit(&req_count[r][c], memory_order_relaxed);
            if (!v)
                continue;
            if (c < N_CODES)
                fprintf(f, "trainq_http_requests_total{route=\"%s\",code=\"%u\"} %llu\n",
                        route_label(r), codes[c], v);
            else
                fprintf(f, "trainq_http_requests_total{route=\"%s\",code=\"other\"} %llu\n",
                        route_label(r), v);
        }
    }

    fputs("# HELP trainq_http_request_duration_seconds Time from request line to response "
          "sent.\n# TYPE trainq_http_request_duration_seconds histogram\n",
          f);
    for (size_t r = 0; r < ROUTE_SLOTS; r++) {
        if (r >= n_routes && r != TQ_METRICS_MAX_ROUTES)
            continue;
        unsigned long long count = atomic_load_explicit(&lat_count[r], memory_order_relaxed);
        if (!count && r == TQ_METRICS_MAX_ROUTES)
            continue;
        unsigned long long cum = 0;
        for (size_t b = 0; b <= N_BUCKETS; b++) {
            cum += atomic_load_explicit(&lat_bucket[r][b], memory_order_relaxed);
            if (b < N_BUCKETS)
                fprintf(
                    f, "trainq_http_request_duration_seconds_bucket{route=\"%s\",le=\"%g\"} %llu\n",
                    route_label(r), buckets[b], cum);
            else
                fprintf(
                    f,
                    "trainq_http_request_duration_seconds_bucket{route=\"%s\",le=\"+Inf\"} %llu\n",
                    route_label(r), cum);
        }
        fprintf(f, "trainq_http_request_duration_seconds_sum{route=\"%s\"} %.6f\n", route_label(r),
                (double)atomic_load_explicit(&lat_sum_us[r], memory_order_relaxed) / 1e6);
        fprintf(f, "trainq_http_request_duration_seconds_count{route=\"%s\"} %llu\n",
                route_label(r), cum);
    }

    render_conns(f);

    tq_metrics_relay none = {0};
    none.backlog = -1;
    const tq_metrics_relay *rs = relay ? relay : &none;
    fprintf(f,
            "# HELP trainq_outbox_backlog Outbox rows not yet published (-1: unknown).\n"
            "# TYPE trainq_outbox_backlog gauge\ntrainq_outbox_backlog %lld\n",
            rs->backlog);
    fprintf(f,
            "# HELP trainq_relay_amqp_up 1 while the relay's RabbitMQ connection is up.\n"
            "# TYPE trainq_relay_amqp_up gauge\ntrainq_relay_amqp_up %d\n",
            rs->connected);
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
        {"trainq_relay_errors_total", "Relay rounds that failed (database or broker).",
         offsetof(tq_metrics_relay, errors)},
        {"trainq_relay_reconnects_total", "Relay reconnections to Postgres or RabbitMQ.",
         offsetof(tq_metrics_relay, reconnects)},
    };
    for (size_t i = 0; i < sizeof ctr / sizeof ctr[0]; i++) {
        const unsigned long long *v =
            (const unsigned long long *)(const void *)((const char *)rs + ctr[i].off);
        fprintf(f, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", ctr[i].name, ctr[i].help,
                ctr[i].name, ctr[i].name, *v);
    }
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    if (len)
        *len = size;
    return buf;
}
