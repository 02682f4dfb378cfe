/*
 * retention — the producer's thread that keeps the tables from growing without bound
 * (issue 11, item 5; docs/operations.md, "Retention"): every TRAINQ_RETENTION_INTERVAL_SECONDS
 * it prunes published outbox rows and finished webhook deliveries older than
 * TRAINQ_OUTBOX_RETENTION_SECONDS, rate-limit rows of past windows, and
 * (TRAINQ_JOB_RETENTION_SECONDS > 0) jobs finished longer ago than that with their audit, output
 * and artifact rows.
 *
 * What must stay true: every batch is its own short transaction over rows taken FOR UPDATE
 * SKIP LOCKED (db/procedures/95_retention.sql), so every producer runs this thread and none
 * waits on another, on the relay or on a request; an unpublished outbox row and a job that is
 * not finished are never pruned. A database that is down only skips a pass.
 */
#ifndef TQ_RETENTION_H
#define TQ_RETENTION_H

#include "poptions.h"
#include "tq_err.h"

typedef struct tq_retention tq_retention;

/* Starts the thread; cfg must outlive it. */
int tq_retention_start(const tq_config *cfg, tq_retention **out, tq_errbuf *eb);

/* Stops it (a batch in flight finishes first) and frees r. NULL is fine. */
void tq_retention_stop(tq_retention *r);

#endif
