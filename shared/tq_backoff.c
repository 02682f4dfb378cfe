#include "tq_backoff.h"

#include <stdlib.h>

void tq_backoff_init(tq_backoff *b, long min_ms, long max_ms, int jitter, unsigned seed)
{
    b->min_ms = min_ms > 0 ? min_ms : 1;
    b->max_ms = max_ms >= b->min_ms ? max_ms : b->min_ms;
    b->jitter = jitter;
    b->seed = seed;
    tq_backoff_reset(b);
}

void tq_backoff_reset(tq_backoff *b)
{
    b->next_ms = b->min_ms;
    b->failures = 0;
}

long tq_backoff_next(tq_backoff *b)
{
    long d = b->next_ms;
    b->next_ms = d < b->max_ms / 2 ? d * 2 : b->max_ms;
    if (b->failures < 1000000)
        b->failures++;
    if (!b->jitter)
        return d;
    long half = d / 2;
    return half + (long)((unsigned long)rand_r(&b->seed) % (unsigned long)(d - half + 1));
}
