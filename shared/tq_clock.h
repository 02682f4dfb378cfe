/*
 * tq_clock — the one monotonic clock of trainq.
 *
 * Every interval, deadline and timed wait is measured on CLOCK_MONOTONIC, so an NTP step or
 * an operator's `date -s` can neither stop lease renewal (a wait that never ends) nor fire
 * every timer at once. Wall time (time(NULL), CLOCK_REALTIME) is only for timestamps that
 * leave the process (database, logs, AMQP) and for comparing with other hosts' timestamps
 * such as a container's started_at.
 */
#ifndef TQ_CLOCK_H
#define TQ_CLOCK_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

/* Monotonic now, in milliseconds / in seconds. */
int64_t tq_mono_ms(void);
double tq_mono_now(void);

/* base + ms (ms >= 0), normalised (0 <= tv_nsec < 1e9). */
struct timespec tq_timespec_add_ms(struct timespec base, long ms);

/* The absolute CLOCK_MONOTONIC time ms from now: the deadline for pthread_cond_timedwait
 * on a condition variable made by tq_cond_init_monotonic. */
struct timespec tq_mono_deadline(long ms);

/* Initialises cv to measure pthread_cond_timedwait deadlines on CLOCK_MONOTONIC (the
 * default is CLOCK_REALTIME). Every condition variable used with a timed wait is made by
 * this function. TQ_OK, TQ_ERR_NOMEM, or TQ_ERR_INTERNAL (the clock cannot be chosen). */
int tq_cond_init_monotonic(pthread_cond_t *cv);

#endif
