/* Body collection of the producer's request API (producer/request.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "request_impl.h"

static void test_a_body_within_the_cap_is_kept_whole(void **state)
{
    (void)state;
    tq_req r;
    memset(&r, 0, sizeof r);
    tq_buf_init(&r.body, 8);
    assert_int_equal(tq_req_append_body(&r, "{\"a\":", 5), 0);
    assert_int_equal(tq_req_append_body(&r, "1}", 2), 0);
    size_t len = 0;
    assert_string_equal(tq_req_body(&r, &len), "{\"a\":1}");
    assert_int_equal(len, 7);
    assert_false(r.too_large);
    tq_buf_free(&r.body);
}

static void test_a_body_over_the_cap_is_dropped_and_read_on_up_to_the_discard_limit(void **state)
{
    (void)state;
    tq_req r;
    memset(&r, 0, sizeof r);
    tq_buf_init(&r.body, 8);
    assert_int_equal(tq_req_append_body(&r, "12345", 5), 0);
    assert_int_equal(tq_req_append_body(&r, "6789", 4), 0); /* 9 > 8 */
    assert_true(r.too_large);
    size_t len = 1;
    assert_string_equal(tq_req_body(&r, &len), "");
    assert_int_equal(len, 0);
    assert_null(r.body.data);
    /* Read on (and dropped) so the 413 can be sent, up to 16 MiB, then the cut. */
    enum { MIB = 1024 * 1024 };
    char *chunk = calloc(1, MIB);
    assert_non_null(chunk);
    size_t total = 4;
    while (total + MIB <= 16u * MIB) {
        assert_int_equal(tq_req_append_body(&r, chunk, MIB), 0);
        total += MIB;
    }
    /* exactly 16 MiB discarded is still read; one byte more is not */
    assert_int_equal(tq_req_append_body(&r, chunk, 16u * MIB - total), 0);
    assert_int_equal(tq_req_append_body(&r, chunk, 1), -1);
    assert_null(r.body.data);
    free(chunk);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_body_within_the_cap_is_kept_whole),
        cmocka_unit_test(test_a_body_over_the_cap_is_dropped_and_read_on_up_to_the_discard_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
