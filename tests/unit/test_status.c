/* Job states (shared/tq_status): names match the database's CHECK, and the predicates. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "tq_status.h"

static void test_every_status_round_trips_through_its_name(void **state)
{
    (void)state;
    for (int i = 0; i < TQ_STATUS_COUNT; i++) {
        tq_job_status s;
        const char *n = tq_status_name((tq_job_status)i);
        assert_true(strlen(n) < TQ_STATUS_BUF);
        assert_int_equal(tq_status_parse(n, &s), 0);
        assert_int_equal(s, i);
    }
    assert_string_equal(tq_status_name(TQ_STATUS_CANCELLED), "cancelled");
}

static void test_unknown_names_are_refused(void **state)
{
    (void)state;
    tq_job_status s = TQ_STATUS_RUNNING;
    assert_int_equal(tq_status_parse("Queued", &s), -1);
    assert_int_equal(tq_status_parse("", &s), -1);
    assert_int_equal(tq_status_parse(NULL, &s), -1);
    assert_int_equal(s, TQ_STATUS_RUNNING);
    assert_string_equal(tq_status_name((tq_job_status)42), "unknown");
}

static void test_terminal_and_active_split_the_states(void **state)
{
    (void)state;
    int terminal = 0, active = 0;
    for (int i = 0; i < TQ_STATUS_COUNT; i++) {
        assert_false(tq_status_terminal((tq_job_status)i) && tq_status_active((tq_job_status)i));
        terminal += tq_status_terminal((tq_job_status)i);
        active += tq_status_active((tq_job_status)i);
    }
    assert_int_equal(terminal, 3);
    assert_int_equal(active, 2);
    assert_false(tq_status_terminal(TQ_STATUS_QUEUED));
    assert_false(tq_status_active(TQ_STATUS_QUEUED));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_status_round_trips_through_its_name),
        cmocka_unit_test(test_unknown_names_are_refused),
        cmocka_unit_test(test_terminal_and_active_split_the_states),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
