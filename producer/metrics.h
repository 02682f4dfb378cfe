/*
 * metrics — the producer's Prometheus counters.
 *
 * Counters are C11 atomics (relaxed): the HTTP threads only add, /metrics only reads, and
 * a scrape may see one request counted in the total but not yet in its bucket, which the
 * text format tolerates.
 */
#ifndef TQ_METRICS_H
#define TQ_METRICS_H

#include <stddef.h>

/* Every route of routes.c gets its own label (a _Static_assert there holds it); "other"
 * is for requests that matched none. */
#define TQ_METRICS_MAX_ROUTES 48

/* route_names[i] is the label of route i (borrowed for the process' life; static). */
void tq_metrics_init(const char *const *route_names, size_t n);

/* One finished request. Routes >= n and unusual codes are counted under "other". */
void tq_metrics_observe(size_t route, unsigned status, double seconds);

/* Connection admission (see admit.h): what was shed, and how many connections are open. */
typedef enum {
    TQ_CONN_REFUSED_CLIENT, /* closed at accept: the peer address is at its cap */
    TQ_CONN_REFUSED_FULL,   /* closed at accept: every slot, reserve included, is taken */
    TQ_CONN_RESERVE_BUSY,   /* a reserve connection asked for more than a health check: 503 */
    TQ_CONN_CUT_HEADERS,    /* closed: headers not complete by the header deadline */
    TQ_CONN_CUT_BODY,       /* closed: body not complete by the body deadline */
    TQ_CONN_N_EVENTS
} tq_metrics_conn_event;

void tq_metrics_conn(tq_metrics_conn_event ev);
unsigned long long tq_metrics_conn_total(tq_metrics_conn_event ev);
void tq_metrics_conn_open(int n);

/* Relay figures shown by /metrics (have = 0: the relay is not running). */
typedef struct {
    int have;
    int connected;
    unsigned long long published, confirms, nacks, returns, errors, reconnects;
    long long backlog;     /* -1: unknown */
    long long backlog_age; /* seconds, -1: unknown */
    int blocked;           /* RabbitMQ has the relay's connection blocked (resource alarm) */
    unsigned long long blocked_events;
    unsigned long long blocked_seconds; /* whole seconds */
    /* Job events published to trainq.events; replies returned (reply queue gone), dropped. */
    unsigned long long events_published, replies_dropped;
} tq_metrics_relay;

/* Postgres refused a connection for want of slots ("too many clients", SQLSTATE 53300). */
void tq_metrics_db_exhausted(void);

/* The Prometheus text exposition (version 0.0.4). Caller frees; NULL when out of memory. */
char *tq_metrics_render(const tq_metrics_relay *relay, size_t *len);

#endif
