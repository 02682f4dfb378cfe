/* The shared JSON object builder helper (shared/tq_json). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "tq_json.h"

static void test_put_sets_the_key_and_keeps_failed_untouched(void **state)
{
    (void)state;
    json_t *o = json_object();
    int failed = 0;
    assert_int_equal(tq_json_put(o, "a", json_integer(7), &failed), 0);
    assert_int_equal(tq_json_put(o, "b", json_string("x"), NULL), 0);
    assert_int_equal(failed, 0);
    assert_int_equal(json_integer_value(json_object_get(o, "a")), 7);
    assert_string_equal(json_string_value(json_object_get(o, "b")), "x");
    json_decref(o);
}

static void test_put_of_a_failed_constructor_reports_and_remembers(void **state)
{
    (void)state;
    json_t *o = json_object();
    int failed = 0;
    /* json_string(NULL) is what an out-of-memory constructor hands over: NULL */
    assert_int_equal(tq_json_put(o, "a", json_string(NULL), &failed), -1);
    assert_int_equal(failed, 1);
    /* a later success does not clear the failure */
    assert_int_equal(tq_json_put(o, "b", json_true(), &failed), 0);
    assert_int_equal(failed, 1);
    assert_null(json_object_get(o, "a"));
    assert_int_equal(tq_json_put(o, "c", NULL, NULL), -1);
    json_decref(o);
}

static void test_put_into_a_non_object_fails_without_leaking(void **state)
{
    (void)state;
    json_t *arr = json_array();
    int failed = 0;
    /* the value is stolen even though the set fails: LSan checks nothing leaks */
    assert_int_equal(tq_json_put(arr, "k", json_string("v"), &failed), -1);
    assert_int_equal(failed, 1);
    json_decref(arr);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_sets_the_key_and_keeps_failed_untouched),
        cmocka_unit_test(test_put_of_a_failed_constructor_reports_and_remembers),
        cmocka_unit_test(test_put_into_a_non_object_fails_without_leaking),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
