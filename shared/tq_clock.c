#include "tq_clock.h"

#include <errno.h>

#include "tq_err.h"

int64_t tq_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

double tq_mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct timespec tq_timespec_add_ms(struct timespec base, long ms)
{
    base.tv_sec += ms / 1000;
    base.tv_nsec += (ms % 1000) * 1000000L;
    if (base.tv_nsec >= 1000000000L) {
        base.tv_sec++;
        base.tv_nsec -= 1000000000L;
    }
    return base;
}

struct timespec tq_mono_deadline(long ms)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return tq_timespec_add_ms(now, ms);
}

int tq_cond_init_monotonic(pthread_cond_t *cv)
{
    pthread_condattr_t a;
    int rc = pthread_condattr_init(&a);
    if (rc)
        return TQ_ERR_NOMEM; /* its only failure */
    rc = pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    if (rc == 0)
        rc = pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
    if (rc == 0)
        return TQ_OK;
    return rc == ENOMEM || rc == EAGAIN ? TQ_ERR_NOMEM : TQ_ERR_INTERNAL;
}
