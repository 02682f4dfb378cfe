/*
 * start — starting a claimed job in the slot the dispatcher reserved for it (start.c says
 * what must stay true). The dispatcher picks and reserves; the slot's runner starts.
 */
#ifndef TQ_START_H
#define TQ_START_H

#include <libpq-fe.h>

#include "cdb.h"
#include "worker.h"

/* Starts cl (a CLAIMED pick) in reserved slot `slot`, on *db (opened when needed). 1 when
 * the slot now runs it (tq_slot_run); 0 when the job failed, was given back or was left to
 * the reaper, and the caller frees the slot. */
int tq_start_claimed(tq_worker *w, PGconn **db, int slot, const tq_claim *cl);

/* Gives a claimed job back on db: it could not start here for a reason of this host's. */
void tq_give_back_claim(tq_worker *w, PGconn *db, const tq_claim *cl, const char *why);

/* Whether this host may take a job now: healthy, or unhealthy with a probe due. */
int tq_host_usable(tq_worker *w);

#endif
