/* The Range header of artifact downloads (producer/live.c, tq_range_parse): one range is
 * served, an unsatisfiable one is 416, anything else gets the whole file. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "handlers.h"

static int parse(const char *h, unsigned long long size, unsigned long long *start,
                 unsigned long long *len)
{
    *start = *len = 12345;
    return tq_range_parse(h, size, start, len);
}

static void test_one_range_in_each_form_is_served(void **state)
{
    (void)state;
    unsigned long long s, n;
    assert_int_equal(parse("bytes=2-5", 100, &s, &n), 1);
    assert_int_equal(s, 2);
    assert_int_equal(n, 4);
    assert_int_equal(parse("bytes=90-", 100, &s, &n), 1);
    assert_int_equal(s, 90);
    assert_int_equal(n, 10);
    assert_int_equal(parse("bytes=-7", 100, &s, &n), 1);
    assert_int_equal(s, 93);
    assert_int_equal(n, 7);
    /* an end past the file is cut to it; a suffix longer than the file is the file */
    assert_int_equal(parse("bytes=50-1000", 100, &s, &n), 1);
    assert_int_equal(s, 50);
    assert_int_equal(n, 50);
    assert_int_equal(parse("bytes=-1000", 100, &s, &n), 1);
    assert_int_equal(s, 0);
    assert_int_equal(n, 100);
    assert_int_equal(parse("bytes=0-0", 1, &s, &n), 1);
    assert_int_equal(n, 1);
}

static void test_a_range_past_the_end_is_unsatisfiable(void **state)
{
    (void)state;
    unsigned long long s, n;
    assert_int_equal(parse("bytes=100-", 100, &s, &n), -1);
    assert_int_equal(parse("bytes=100-200", 100, &s, &n), -1);
    assert_int_equal(parse("bytes=-0", 100, &s, &n), -1);
    assert_int_equal(parse("bytes=0-", 0, &s, &n), -1);
    assert_int_equal(parse("bytes=-5", 0, &s, &n), -1);
}

static void test_anything_else_gets_the_whole_file(void **state)
{
    (void)state;
    unsigned long long s, n;
    const char *whole[] = {NULL,
                           "",
                           "bytes=",
                           "bytes=-",
                           "bytes=5-2",
                           "bytes=a-b",
                           "bytes=0-1,3-4",
                           "items=0-1",
                           "bytes=1",
                           "bytes= 1-2",
                           "bytes=1-2 ",
                           "bytes=+1-2",
                           "bytes=1--2",
                           "bytes=99999999999999999999-"};
    for (size_t i = 0; i < sizeof whole / sizeof whole[0]; i++) {
        assert_int_equal(parse(whole[i], 100, &s, &n), 0);
        assert_int_equal(s, 12345); /* untouched */
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_range_in_each_form_is_served),
        cmocka_unit_test(test_a_range_past_the_end_is_unsatisfiable),
        cmocka_unit_test(test_anything_else_gets_the_whole_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
