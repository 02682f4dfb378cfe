/* Exponential backoff with jitter (shared/tq_backoff). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "tq_backoff.h"

static void test_exact_delays_double_up_to_the_cap_and_never_beyond(void **state)
{
    (void)state;
    tq_backoff b;
    tq_backoff_init(&b, 250, 5000, TQ_BACKOFF_EXACT, 0);
    /* 4000 doubles to 8000, which the cap holds at 5000: no delay ever exceeds it. */
    const long want[] = {250, 500, 1000, 2000, 4000, 5000, 5000};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        assert_int_equal(tq_backoff_next(&b), want[i]);
    assert_int_equal(b.failures, 7);
}

static void test_reset_starts_over_from_the_minimum(void **state)
{
    (void)state;
    tq_backoff b;
    tq_backoff_init(&b, 500, 8000, TQ_BACKOFF_EXACT, 0);
    tq_backoff_next(&b);
    tq_backoff_next(&b);
    assert_int_equal(b.failures, 2);
    tq_backoff_reset(&b);
    assert_int_equal(b.failures, 0);
    assert_int_equal(tq_backoff_next(&b), 500);
    assert_int_equal(tq_backoff_next(&b), 1000);
}

static void test_jittered_delay_lies_between_half_and_the_whole_step(void **state)
{
    (void)state;
    tq_backoff b;
    tq_backoff_init(&b, 100, 5000, TQ_BACKOFF_JITTER, 12345u);
    long step = 100;
    int below_step = 0;
    for (int i = 0; i < 200; i++) {
        long d = tq_backoff_next(&b);
        assert_true(d >= step / 2);
        assert_true(d <= step);
        below_step |= d < step;
        step = step * 2 < 5000 ? step * 2 : 5000;
    }
    /* Jitter that never moves a delay is no jitter. */
    assert_true(below_step);
}

static void test_jitter_is_reproducible_from_the_seed(void **state)
{
    (void)state;
    tq_backoff a, b;
    tq_backoff_init(&a, 100, 5000, TQ_BACKOFF_JITTER, 7u);
    tq_backoff_init(&b, 100, 5000, TQ_BACKOFF_JITTER, 7u);
    for (int i = 0; i < 20; i++)
        assert_int_equal(tq_backoff_next(&a), tq_backoff_next(&b));
}

static void test_bad_bounds_are_clamped(void **state)
{
    (void)state;
    tq_backoff b;
    tq_backoff_init(&b, 0, -5, TQ_BACKOFF_EXACT, 0);
    assert_true(tq_backoff_next(&b) >= 1);
    assert_true(tq_backoff_next(&b) >= 1);
    tq_backoff_init(&b, 300, 100, TQ_BACKOFF_EXACT, 0);
    assert_int_equal(tq_backoff_next(&b), 300);
    assert_int_equal(tq_backoff_next(&b), 300);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact_delays_double_up_to_the_cap_and_never_beyond),
        cmocka_unit_test(test_reset_starts_over_from_the_minimum),
        cmocka_unit_test(test_jittered_delay_lies_between_half_and_the_whole_step),
        cmocka_unit_test(test_jitter_is_reproducible_from_the_seed),
        cmocka_unit_test(test_bad_bounds_are_clamped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
