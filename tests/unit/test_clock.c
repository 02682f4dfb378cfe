/* The monotonic clock and timed waits (shared/tq_clock, consumer tq_worker_sleep). */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "tq_clock.h"
#include "worker.h"

static void test_timespec_add_carries_nanoseconds(void **state)
{
    (void)state;
    struct timespec t = tq_timespec_add_ms((struct timespec){10, 999000000L}, 1);
    assert_int_equal(t.tv_sec, 11);
    assert_int_equal(t.tv_nsec, 0);
    t = tq_timespec_add_ms((struct timespec){10, 500000000L}, 2750);
    assert_int_equal(t.tv_sec, 13);
    assert_int_equal(t.tv_nsec, 250000000L);
    t = tq_timespec_add_ms((struct timespec){0, 0}, 0);
    assert_int_equal(t.tv_sec, 0);
    assert_int_equal(t.tv_nsec, 0);
}

static void test_deadline_is_on_the_monotonic_clock(void **state)
{
    (void)state;
    /* CLOCK_REALTIME is ~1.7e9 s, CLOCK_MONOTONIC the time since boot: a deadline taken
     * from the wrong clock lands decades away from this window. */
    struct timespec before, after;
    clock_gettime(CLOCK_MONOTONIC, &before);
    struct timespec d = tq_mono_deadline(1500);
    clock_gettime(CLOCK_MONOTONIC, &after);
    struct timespec lo = tq_timespec_add_ms(before, 1500), hi = tq_timespec_add_ms(after, 1500);
    double dd = (double)d.tv_sec + d.tv_nsec / 1e9;
    assert_true(dd >= (double)lo.tv_sec + lo.tv_nsec / 1e9);
    assert_true(dd <= (double)hi.tv_sec + hi.tv_nsec / 1e9);
    assert_true(d.tv_nsec >= 0 && d.tv_nsec < 1000000000L);
}

static void test_monotonic_condvar_waits_until_a_monotonic_deadline(void **state)
{
    (void)state;
    /* Were the condition variable on CLOCK_REALTIME, a monotonic deadline would be decades
     * in the past and the wait would return at once. */
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv;
    assert_int_equal(tq_cond_init_monotonic(&cv), 0);
    int64_t t0 = tq_mono_ms();
    struct timespec until = tq_mono_deadline(150);
    pthread_mutex_lock(&mu);
    int rc;
    while ((rc = pthread_cond_timedwait(&cv, &mu, &until)) == 0) {
    }
    pthread_mutex_unlock(&mu);
    int64_t waited = tq_mono_ms() - t0;
    assert_int_equal(rc, ETIMEDOUT);
    assert_true(waited >= 140);
    assert_true(waited < 5000);
    pthread_cond_destroy(&cv);
}

static void *stop_later(void *arg)
{
    tq_worker *w = arg;
    usleep(3000 * 1000);
    pthread_mutex_lock(&w->mu);
    atomic_store(&w->stopping, 1);
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

static void test_worker_sleep_ends_after_its_time_on_a_monotonic_condvar(void **state)
{
    (void)state;
    /* The consumer's condition variable (main.c) is monotonic; a sleep whose deadline came
     * from another clock would either return at once or run until stopped (3 s here). */
    tq_worker w;
    memset(&w, 0, sizeof w);
    pthread_mutex_init(&w.mu, NULL);
    assert_int_equal(tq_cond_init_monotonic(&w.cv), 0);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, stop_later, &w), 0);
    int64_t t0 = tq_mono_ms();
    int stopped = tq_worker_sleep(&w, 200);
    int64_t slept = tq_mono_ms() - t0;
    assert_int_equal(stopped, 0);
    assert_true(slept >= 190);
    assert_true(slept < 2500);
    assert_int_equal(tq_worker_sleep(&w, 60000), 1); /* woken early by the stop */
    pthread_join(t, NULL);
    pthread_cond_destroy(&w.cv);
    pthread_mutex_destroy(&w.mu);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_timespec_add_carries_nanoseconds),
        cmocka_unit_test(test_deadline_is_on_the_monotonic_clock),
        cmocka_unit_test(test_monotonic_condvar_waits_until_a_monotonic_deadline),
        cmocka_unit_test(test_worker_sleep_ends_after_its_time_on_a_monotonic_condvar),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
