/*
 * tq_relay — the transactional-outbox relay: a thread that moves rows of table `outbox`
 * to their exchange (trainq.jobs, trainq.events, or the default exchange for a reply) with
 * publisher confirms, and marks them published.
 *
 * What must stay true:
 *  - a row is marked published only after the broker confirmed its message, in the same
 *    transaction that locked it (FOR UPDATE SKIP LOCKED), so any number of relays (one per
 *    producer and consumer instance) can run at once and, short of a crash between the
 *    confirm and the COMMIT, each row is published exactly once;
 *  - delivery is at least once: a confirmed message whose row could not be marked is
 *    published again later; consumers deduplicate by message_id (= job id);
 *  - no failure path spins: every retry sleeps with backoff, interruptible by stop.
 *
 * The relay is a program component: it logs with tq_log (events relay.*).
 */
#ifndef TQ_RELAY_H
#define TQ_RELAY_H

#include <stdint.h>

#include "tq_err.h"
#include "tq_sign.h"

typedef struct {
    const char *database_url; /* copied by tq_relay_start */
    const char *amqp_url;     /* copied */
    const char *name;         /* connection/application name; copied; NULL: "trainq-relay" */
    int batch;                /* rows per transaction; <= 0: 100 (capped at 1000) */
    int poll_ms;              /* fallback poll when no NOTIFY comes; <= 0: 1000 */
    /* NULL or no keys: messages go out unsigned. Otherwise every message is signed with
     * the first key (x-trainq-key-id, x-trainq-signature over the payload bytes exactly
     * as published). The key is copied. */
    const tq_sign_keys *sign_keys;
    /* NULL, or called on the relay thread after a round's commit with the number of
     * replies (to a job's reply_to) that the broker returned and the round dropped: for
     * a program's own metrics. */
    void (*on_replies_dropped)(uint64_t n);
} tq_relay_config;

typedef struct {
    uint64_t published;  /* rows marked published (committed) */
    uint64_t confirms;   /* broker acks for our messages */
    uint64_t nacks;      /* broker nacks */
    uint64_t returns;    /* unroutable messages returned */
    uint64_t errors;     /* failed rounds (database or broker) */
    uint64_t reconnects; /* successful (re)connections after the first, both sides */
    int64_t backlog;     /* unpublished rows at the last count, -1 before the first */
    /* Seconds the oldest due unpublished row has waited (now - its available_at) at the
     * last count; 0 when none is due, -1 before the first count. */
    int64_t backlog_age_s;
    int db_up;   /* 1 while the Postgres connection is usable */
    int amqp_up; /* 1 while the RabbitMQ connection is usable */
    /* 1 once the relay has tried RabbitMQ at all: it tries only with Postgres up, so a
     * producer started while Postgres is away does not know the broker's state yet */
    int amqp_tried;
    /* RabbitMQ resource alarm: 1 while the broker has the relay's connection blocked
     * (connection.blocked); the relay then publishes nothing and keeps its place. */
    int amqp_blocked;
    char blocked_reason[128]; /* the broker's reason while blocked, else "" */
    uint64_t blocked_events;  /* times the connection became blocked */
    uint64_t blocked_ms;      /* total time blocked, the current stretch included */
    /* Job events (trainq.events) confirmed, and replies to a job's reply_to that the broker
     * returned (the queue is gone): logged and dropped, never retried. */
    uint64_t events_published;
    uint64_t replies_dropped;
} tq_relay_stats;

typedef struct tq_relay tq_relay;

/* Validates cfg and starts the relay thread; connecting happens in the thread (a broker
 * or database that is down at start is retried, not an error). *out is caller-owned:
 * release it with tq_relay_stop. */
int tq_relay_start(const tq_relay_config *cfg, tq_relay **out, tq_errbuf *eb);

/* Asks the thread to stop, lets it make one final flush of what is due (bounded by
 * flush_timeout_ms, only over connections that are up), joins it and frees r. NULL ok. */
void tq_relay_stop(tq_relay *r, int flush_timeout_ms);

/* A consistent copy of the counters (thread-safe). */
void tq_relay_stats_get(const tq_relay *r, tq_relay_stats *out);

#endif
