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

#include "tq_err.h"

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

/*
 * Wall-clock timestamps from other programs (Docker's StartedAt, a message's submitted_at):
 * the one RFC 3339 parser. Accepts YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM) exactly:
 * 'T' and 'Z' in either case, 1 to 9 fraction digits (digits below the millisecond are
 * dropped, not rounded), a calendar-checked date (2023-02-29 is refused), seconds up to
 * 60 (a leap second, counted into the next minute), offsets up to 23:59; nothing before or
 * after. On TQ_OK *unix_ms (may be NULL: only check) is the instant in Unix milliseconds
 * (negative before 1970); otherwise TQ_ERR_INVALID and *unix_ms is untouched.
 */
int tq_rfc3339_parse(const char *s, int64_t *unix_ms);

#endif
