/* The capped growable buffer (shared/tq_buf): bodies from the network are collected in it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "tq_buf.h"
#include "tq_err.h"

static void test_an_empty_buffer_reads_as_the_empty_string(void **state)
{
    (void)state;
    tq_buf b;
    tq_buf_init(&b, 10);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    assert_string_equal(tq_buf_str(&b), "");
    tq_buf_free(&b);
    tq_buf_free(NULL);
}

static void test_appends_concatenate_and_stay_nul_terminated(void **state)
{
    (void)state;
    tq_buf b;
    tq_buf_init(&b, 100);
    assert_int_equal(tq_buf_add(&b, "abc", 3), TQ_OK);
    assert_int_equal(tq_buf_add(&b, "", 0), TQ_OK);
    assert_int_equal(tq_buf_add(&b, "d\0e", 3), TQ_OK);
    assert_int_equal(b.len, 6);
    assert_memory_equal(b.data, "abcd\0e", 7);
    assert_string_equal(tq_buf_str(&b), "abcd");
    tq_buf_free(&b);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.max, 100);
}

static void test_exactly_the_cap_fits_and_one_byte_more_is_refused(void **state)
{
    (void)state;
    tq_buf b;
    tq_buf_init(&b, 5);
    assert_int_equal(tq_buf_add(&b, "abcd", 4), TQ_OK);
    assert_int_equal(tq_buf_add(&b, "ef", 2), TQ_ERR_TOO_LARGE);
    /* a refused append changes nothing */
    assert_int_equal(b.len, 4);
    assert_string_equal(tq_buf_str(&b), "abcd");
    assert_int_equal(tq_buf_add(&b, "e", 1), TQ_OK);
    assert_string_equal(tq_buf_str(&b), "abcde");
    assert_int_equal(tq_buf_add(&b, "f", 1), TQ_ERR_TOO_LARGE);
    assert_true(b.alloc <= b.max + 1);
    tq_buf_free(&b);
}

static void test_a_zero_cap_holds_nothing(void **state)
{
    (void)state;
    tq_buf b;
    tq_buf_init(&b, 0);
    assert_int_equal(tq_buf_add(&b, "x", 1), TQ_ERR_TOO_LARGE);
    assert_int_equal(tq_buf_add(&b, "", 0), TQ_OK);
    assert_string_equal(tq_buf_str(&b), "");
    tq_buf_free(&b);
}

static void test_a_length_that_would_wrap_is_refused(void **state)
{
    (void)state;
    tq_buf b;
    tq_buf_init(&b, 64);
    assert_int_equal(tq_buf_add(&b, "ab", 2), TQ_OK);
    assert_int_equal(tq_buf_add(&b, "x", SIZE_MAX), TQ_ERR_TOO_LARGE);
    assert_int_equal(tq_buf_add(&b, "x", SIZE_MAX - 1), TQ_ERR_TOO_LARGE);
    assert_int_equal(b.len, 2);
    tq_buf_free(&b);
}

static void test_growth_keeps_every_byte_and_never_allocates_past_the_cap(void **state)
{
    (void)state;
    enum { MAX = 100000 };
    tq_buf b;
    tq_buf_init(&b, MAX);
    char chunk[777];
    size_t total = 0;
    for (unsigned i = 0; total + sizeof chunk <= MAX; i++) {
        memset(chunk, 'a' + (int)(i % 26), sizeof chunk);
        assert_int_equal(tq_buf_add(&b, chunk, sizeof chunk), TQ_OK);
        total += sizeof chunk;
        assert_true(b.alloc <= MAX + 1);
    }
    assert_int_equal(b.len, total);
    for (size_t i = 0; i < total; i++)
        assert_int_equal(b.data[i], 'a' + (int)((i / sizeof chunk) % 26));
    assert_int_equal(tq_buf_add(&b, chunk, sizeof chunk), TQ_ERR_TOO_LARGE);
    assert_int_equal(tq_buf_add(&b, chunk, MAX - total), TQ_OK);
    assert_int_equal(b.len, MAX);
    assert_int_equal(b.alloc, MAX + 1);
    tq_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_an_empty_buffer_reads_as_the_empty_string),
        cmocka_unit_test(test_appends_concatenate_and_stay_nul_terminated),
        cmocka_unit_test(test_exactly_the_cap_fits_and_one_byte_more_is_refused),
        cmocka_unit_test(test_a_zero_cap_holds_nothing),
        cmocka_unit_test(test_a_length_that_would_wrap_is_refused),
        cmocka_unit_test(test_growth_keeps_every_byte_and_never_allocates_past_the_cap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
