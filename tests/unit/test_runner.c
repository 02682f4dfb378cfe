/* How a runner judges the end of a container (consumer/runner: tq_run_judge). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "runner.h"

static const char *CID = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

static tq_run_end end_with(int code)
{
    tq_run_end e;
    memset(&e, 0, sizeof e);
    e.exit_code = code;
    e.max_run_seconds = 3600;
    e.container_id = CID;
    return e;
}

static void test_exit_zero_completes(void **state)
{
    (void)state;
    tq_run_outcome o;
    tq_run_end e = end_with(0);
    assert_int_equal(tq_run_judge(&e, &o), 0);
    assert_int_equal(o.verdict, TQ_RUN_RECORD);
    assert_int_equal(o.status, TQ_STATUS_COMPLETED);
    assert_int_equal(o.exit_code, 0);
    assert_string_equal(o.error, "");
    assert_string_equal(o.reason, "exit code 0");
}

static void test_nonzero_exit_fails_and_asks_for_the_log_tail(void **state)
{
    (void)state;
    tq_run_outcome o;
    tq_run_end e = end_with(3);
    assert_int_equal(tq_run_judge(&e, &o), 1);
    assert_int_equal(o.verdict, TQ_RUN_RECORD);
    assert_int_equal(o.status, TQ_STATUS_FAILED);
    assert_string_equal(o.error, "training exited with code 3");
    tq_run_describe_exit(3, 0, "Traceback: boom", &o);
    assert_string_equal(o.error, "training exited with code 3: Traceback: boom");
    assert_string_equal(o.reason, "exit code 3");
}

static void test_exit_zero_after_oom_kill_fails(void **state)
{
    (void)state;
    tq_run_outcome o;
    tq_run_end e = end_with(0);
    e.oom = 1;
    assert_int_equal(tq_run_judge(&e, &o), 1);
    assert_int_equal(o.status, TQ_STATUS_FAILED);
    assert_string_equal(o.error, "training exited with code 0 (killed: out of memory)");
    assert_string_equal(o.reason, "exit code 0, out of memory");
}

static void test_cancellation_beats_overrun_and_outage(void **state)
{
    (void)state;
    tq_run_outcome o;
    tq_run_end e = end_with(143);
    e.cancelled = e.overrun = e.outage = 1;
    assert_int_equal(tq_run_judge(&e, &o), 0);
    assert_int_equal(o.verdict, TQ_RUN_RECORD);
    assert_int_equal(o.status, TQ_STATUS_CANCELLED);
    assert_int_equal(o.exit_code, 143);
    assert_string_equal(o.error, "");
    assert_string_equal(o.reason, "cancelled by user");
}

static void test_overrun_fails_with_the_limit_in_the_message(void **state)
{
    (void)state;
    tq_run_outcome o;
    tq_run_end e = end_with(137);
    e.overrun = e.outage = 1;
    assert_int_equal(tq_run_judge(&e, &o), 0);
    assert_int_equal(o.status, TQ_STATUS_FAILED);
    assert_string_equal(o.error, "exceeded the maximum run time of 3600 s");
    assert_string_equal(o.reason, "maximum run time exceeded");
}

static void test_exit_during_a_docker_outage_is_retried_not_failed(void **state)
{
    (void)state;
    tq_run_outcome o;
    tq_run_end e = end_with(137);
    e.outage = 1;
    assert_int_equal(tq_run_judge(&e, &o), 0);
    assert_int_equal(o.verdict, TQ_RUN_RETRY);
    assert_string_equal(o.reason,
                        "container 0123456789ab ended with code 137 while dockerd was unreachable");
    /* A clean exit seen after an outage is still the job's own success. */
    e = end_with(0);
    e.outage = 1;
    tq_run_judge(&e, &o);
    assert_int_equal(o.verdict, TQ_RUN_RECORD);
    assert_int_equal(o.status, TQ_STATUS_COMPLETED);
}

static void test_vanished_container_fails_unless_cancelled(void **state)
{
    (void)state;
    tq_run_outcome o;
    tq_run_end e = end_with(TQ_RUN_NO_EXIT_CODE);
    assert_int_equal(tq_run_judge(&e, &o), 0);
    assert_int_equal(o.status, TQ_STATUS_FAILED);
    assert_int_equal(o.exit_code, TQ_RUN_NO_EXIT_CODE);
    assert_string_equal(o.error, "training container disappeared");
    assert_string_equal(o.reason, "container 0123456789ab no longer exists");
    e.cancelled = 1;
    tq_run_judge(&e, &o);
    assert_int_equal(o.status, TQ_STATUS_CANCELLED);
    assert_string_equal(o.error, "");
}

static void test_long_log_tail_is_cut_at_a_character_boundary(void **state)
{
    (void)state;
    static char tail[TQ_RUN_ERROR_BUF * 2];
    /* "é" is two bytes: any cut that splits one leaves an invalid byte at the end. */
    for (size_t i = 0; i + 2 < sizeof tail; i += 2)
        memcpy(tail + i, "\xc3\xa9", 2);
    tail[sizeof tail - 2] = '\0';
    tq_run_outcome o;
    tq_run_describe_exit(1, 0, tail, &o);
    size_t n = strlen(o.error);
    assert_true(n < sizeof o.error);
    assert_true(n > sizeof o.error - 8);
    /* the last character is whole: a lead byte is never the last byte */
    assert_int_not_equal((unsigned char)o.error[n - 1], 0xc3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exit_zero_completes),
        cmocka_unit_test(test_nonzero_exit_fails_and_asks_for_the_log_tail),
        cmocka_unit_test(test_exit_zero_after_oom_kill_fails),
        cmocka_unit_test(test_cancellation_beats_overrun_and_outage),
        cmocka_unit_test(test_overrun_fails_with_the_limit_in_the_message),
        cmocka_unit_test(test_exit_during_a_docker_outage_is_retried_not_failed),
        cmocka_unit_test(test_vanished_container_fails_unless_cancelled),
        cmocka_unit_test(test_long_log_tail_is_cut_at_a_character_boundary),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
