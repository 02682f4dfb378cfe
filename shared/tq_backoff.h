/*
 * tq_backoff — exponential backoff, optionally with jitter: the one way trainq waits
 * between attempts at something that failed (a connection, a query, a Docker call).
 *
 * The delays double from min_ms up to max_ms: min, 2·min, 4·min, …, max, max, …. With
 * jitter each delay is drawn uniformly from [d/2, d] instead of d, so many processes that
 * lost a service at the same moment do not all come back at the same moment.
 * tq_backoff_reset starts over from min_ms after a success.
 *
 * Pure and per caller: a tq_backoff belongs to one thread; the jitter draws from its own
 * rand_r state, never from the process-wide rand().
 */
#ifndef TQ_BACKOFF_H
#define TQ_BACKOFF_H

#define TQ_BACKOFF_JITTER 1
#define TQ_BACKOFF_EXACT 0

typedef struct {
    long min_ms, max_ms;
    long next_ms;  /* the (unjittered) delay of the next failure */
    int failures;  /* failures since the last reset: 0 means "not backing off" */
    int jitter;    /* TQ_BACKOFF_JITTER or TQ_BACKOFF_EXACT */
    unsigned seed; /* rand_r state of the jitter */
} tq_backoff;

/* 0 < min_ms <= max_ms. seed only matters with TQ_BACKOFF_JITTER. */
void tq_backoff_init(tq_backoff *b, long min_ms, long max_ms, int jitter, unsigned seed);

/* The delay to wait after one more failure, in ms; the next one doubles (up to max_ms). */
long tq_backoff_next(tq_backoff *b);

/* After a success: the next failure waits min_ms again. */
void tq_backoff_reset(tq_backoff *b);

#endif
