/*
 * adoption — start-up of a consumer that may have run before under the same worker id.
 *
 * Before the dispatcher consumes anything, the worker takes back by label the containers
 * it left running (a deploy, a crash) and hands each to a slot's runner, stops those of
 * jobs it no longer holds (recovered elsewhere meanwhile), and gives back its claims that
 * have no container (it died between claim and start).
 *
 * What must stay true: a job never runs twice — a container is either adopted under the
 * claim's fencing token or killed.
 */
#ifndef TQ_ADOPTION_H
#define TQ_ADOPTION_H

#include "worker.h"

/* Returns when done, or early when stopping (also on a pending SIGTERM/SIGINT) or with
 * w->fatal set when another live consumer uses this worker id (tq_worker_id_check). Waits
 * with backoff while Postgres or dockerd do not answer. */
void tq_worker_adopt(tq_worker *w);

#endif
