/*
 * housekeeping — the periodic threads of one consumer: the housekeeper (heartbeat and
 * leases, cancellations, health) and the sweeper (reaper and sweeper, on a connection of
 * its own so that a slow sweep never delays a lease renewal).
 */
#ifndef TQ_HOUSEKEEPING_H
#define TQ_HOUSEKEEPING_H

#include <libpq-fe.h>

#include "tq_err.h"
#include "worker.h"

/* Whether this worker id is free to use (TQ_OK) or in use by another live consumer
 * (TQ_ERR_CONFLICT, eb says where): before adoption, which would take the other's containers
 * for its own. The row of a consumer that did not stop cleanly is watched for up to two
 * heartbeats and three seconds (a restart after a crash waits that long): a dead
 * predecessor's heartbeat does not move. Returns TQ_OK early when stopping or when
 * stop_pending() (a signal not yet taken) says so. Other errors: Postgres's. */
int tq_worker_id_check(tq_worker *w, PGconn *db, int (*stop_pending)(void), tq_errbuf *eb);

/* Thread bodies; arg is the tq_worker. Both return when the worker is stopping. */
void *tq_housekeeping_main(void *arg);
void *tq_sweeper_main(void *arg);

#endif
