/*
 * housekeeping — the periodic threads of one consumer: the housekeeper (heartbeat and
 * leases, cancellations, health) and the sweeper (reaper and sweeper, on a connection of
 * its own so that a slow sweep never delays a lease renewal).
 */
#ifndef TQ_HOUSEKEEPING_H
#define TQ_HOUSEKEEPING_H

/* Thread bodies; arg is the tq_worker. Both return when the worker is stopping. */
void *tq_housekeeping_main(void *arg);
void *tq_sweeper_main(void *arg);

#endif
