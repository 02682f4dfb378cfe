/* The monotonic clock and timed waits (shared/tq_clock, consumer tq_worker_sleep), and the
 * RFC 3339 parser (tq_rfc3339_parse). */
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

static int64_t parsed(const char *s)
{
    int64_t ms = -999;
    assert_int_equal(tq_rfc3339_parse(s, &ms), TQ_OK);
    return ms;
}

static void test_rfc3339_fraction_keeps_milliseconds_and_drops_the_rest(void **state)
{
    (void)state;
    assert_int_equal(parsed("1970-01-01T00:00:00Z"), 0);
    assert_int_equal(parsed("1970-01-01T00:00:01.5Z"), 1500);
    assert_int_equal(parsed("1970-01-01T00:00:01.05Z"), 1050);
    /* Docker writes nanoseconds: truncated, never rounded up into the next second */
    assert_int_equal(parsed("1970-01-01T00:00:01.999999999Z"), 1999);
    assert_int_equal(parsed("2024-05-01T10:00:00.123456789Z"), 1714557600123LL);
    assert_int_equal(parsed("2024-05-01t10:00:00.1z"), 1714557600100LL);
}

static void test_rfc3339_offsets_move_the_instant_to_utc(void **state)
{
    (void)state;
    int64_t utc = parsed("2024-05-01T10:00:00Z");
    assert_int_equal(parsed("2024-05-01T12:00:00+02:00"), utc);
    assert_int_equal(parsed("2024-05-01T02:30:00-07:30"), utc);
    assert_int_equal(parsed("2024-05-01T10:00:00+00:00"), utc);
    assert_int_equal(parsed("2024-05-01T12:00:00.000000001+02:00"), utc);
    /* across a day and a year boundary */
    assert_int_equal(parsed("2024-01-01T01:00:00+02:00"), parsed("2023-12-31T23:00:00Z"));
}

static void test_rfc3339_calendar_leap_days_and_old_years(void **state)
{
    (void)state;
    assert_int_equal(parsed("2024-02-29T00:00:00Z") - parsed("2024-02-28T00:00:00Z"), 86400000);
    assert_int_equal(parsed("2024-03-01T00:00:00Z") - parsed("2024-02-29T00:00:00Z"), 86400000);
    assert_int_equal(parsed("2000-02-29T00:00:00Z"), 951782400000LL);
    /* a leap second counts into the next minute */
    assert_int_equal(parsed("2016-12-31T23:59:60Z"), parsed("2017-01-01T00:00:00Z"));
    assert_int_equal(parsed("1969-12-31T23:59:59Z"), -1000);
    /* Go's zero time: about 62 135 596 800 s before 1970 */
    assert_int_equal(parsed("0001-01-01T00:00:00Z"), -62135596800000LL);
    assert_int_equal(tq_rfc3339_parse("0000-01-01T00:00:00Z", NULL), TQ_OK);
}

static void test_rfc3339_refuses_anything_else_and_leaves_the_result_alone(void **state)
{
    (void)state;
    const char *bad[] = {"",
                         "2024-01-02",
                         "2024-01-02 03:04:05Z",
                         "2024-01-02T03:04:05",
                         "2024-01-02T03:04:05.Z",
                         "2024-01-02T03:04:05.1234567890Z",
                         "2024-13-02T03:04:05Z",
                         "2024-00-02T03:04:05Z",
                         "2023-02-29T03:04:05Z",
                         "1900-02-29T03:04:05Z",
                         "2024-04-31T03:04:05Z",
                         "2024-01-00T03:04:05Z",
                         "2024-01-02T24:00:00Z",
                         "2024-01-02T03:60:05Z",
                         "2024-01-02T03:04:61Z",
                         "2024-01-02T03:04:05+0100",
                         "2024-01-02T03:04:05+24:00",
                         "2024-01-02T03:04:05+01:60",
                         "2024-01-02T03:04:05Zjunk",
                         "2024-01-02T03:04:05+01:00junk",
                         "+2024-01-02T03:04:05Z",
                         " 2024-01-02T03:04:05Z",
                         "2024-1-02T03:04:05Z",
                         "2024-01-02T03:04:5Z",
                         "2024-01-02T03:04:05.-1Z",
                         NULL};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int64_t ms = 42;
        if (tq_rfc3339_parse(bad[i], &ms) != TQ_ERR_INVALID)
            fail_msg("accepted %s", bad[i] ? bad[i] : "(null)");
        assert_int_equal(ms, 42);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_timespec_add_carries_nanoseconds),
        cmocka_unit_test(test_deadline_is_on_the_monotonic_clock),
        cmocka_unit_test(test_monotonic_condvar_waits_until_a_monotonic_deadline),
        cmocka_unit_test(test_worker_sleep_ends_after_its_time_on_a_monotonic_condvar),
        cmocka_unit_test(test_rfc3339_fraction_keeps_milliseconds_and_drops_the_rest),
        cmocka_unit_test(test_rfc3339_offsets_move_the_instant_to_utc),
        cmocka_unit_test(test_rfc3339_calendar_leap_days_and_old_years),
        cmocka_unit_test(test_rfc3339_refuses_anything_else_and_leaves_the_result_alone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
