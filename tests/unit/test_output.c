/* Unit tests for the batch of a running job's output (consumer/output.h): what one flush
 * writes as a log row, bounded, valid UTF-8, oldest lines dropped first. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "output.h"

static char *take(tq_out_batch *b, size_t *n)
{
    char *row = malloc(b->cap + 128);
    assert_non_null(row);
    *n = tq_out_batch_take(b, row);
    return row;
}

static void a_row_is_the_lines_joined_without_a_trailing_newline(void **state)
{
    (void)state;
    tq_out_batch b;
    assert_int_equal(tq_out_batch_init(&b, TQ_OUT_ROW_MIN), TQ_OK);
    size_t n;
    char *row = take(&b, &n);
    assert_int_equal(n, 0); /* nothing to write */
    tq_out_batch_line(&b, "first", 5);
    tq_out_batch_line(&b, "", 0);
    tq_out_batch_line(&b, "third", 5);
    free(row);
    row = take(&b, &n);
    assert_int_equal(n, strlen("first\n\nthird"));
    assert_string_equal(row, "first\n\nthird");
    free(row);
    row = take(&b, &n);
    assert_int_equal(n, 0); /* taken: empty again */
    free(row);
    tq_out_batch_free(&b);
}

static void arbitrary_bytes_become_valid_utf8_without_nul(void **state)
{
    (void)state;
    tq_out_batch b;
    assert_int_equal(tq_out_batch_init(&b, TQ_OUT_ROW_MIN), TQ_OK);
    tq_out_batch_line(&b, "a\0b\xff\xc3", 5);
    tq_out_batch_line(&b, "\xc3\xa9t\xc3\xa9", 5);
    size_t n;
    char *row = take(&b, &n);
    assert_int_equal(n, 11);
    assert_memory_equal(row, "a?b??\n\xc3\xa9t\xc3\xa9", 11);
    free(row);
    tq_out_batch_free(&b);
}

static void a_full_batch_drops_its_oldest_lines_and_says_how_many(void **state)
{
    (void)state;
    tq_out_batch b;
    assert_int_equal(tq_out_batch_init(&b, TQ_OUT_ROW_MIN), TQ_OK);
    char line[64];
    int total = 10000;
    for (int i = 0; i < total; i++) {
        int len = snprintf(line, sizeof line, "line %05d", i);
        tq_out_batch_line(&b, line, (size_t)len);
        assert_true(b.len <= b.cap);
    }
    size_t n;
    char *row = take(&b, &n);
    assert_true(n <= TQ_OUT_ROW_MIN + 128);
    assert_int_equal(strlen(row), n);
    /* the newest line is the last; the drop is said first; kept + dropped = all */
    assert_string_equal(row + n - 10, "line 09999");
    long long dropped = 0;
    assert_int_equal(sscanf(row, "[trainq: %lld lines dropped here", &dropped), 1);
    int kept = 0;
    for (size_t i = 0; i < n; i++)
        kept += row[i] == '\n';
    assert_int_equal(dropped + kept, total); /* kept lines: newlines minus marker + last */
    /* whole lines only: the first kept line is complete */
    char *first = strchr(row, '\n') + 1;
    assert_memory_equal(first, "line ", 5);
    assert_int_equal(strchr(first, '\n') - first, 10);
    free(row);
    tq_out_batch_free(&b);
}

static void a_line_longer_than_the_line_limit_is_cut(void **state)
{
    (void)state;
    tq_out_batch b;
    assert_int_equal(tq_out_batch_init(&b, TQ_OUT_ROW_MIN), TQ_OK);
    char *big = malloc(TQ_LOG_LINE_MAX * 2);
    assert_non_null(big);
    memset(big, 'x', TQ_LOG_LINE_MAX * 2);
    tq_out_batch_line(&b, big, TQ_LOG_LINE_MAX * 2);
    size_t n;
    char *row = take(&b, &n);
    assert_int_equal(n, TQ_LOG_LINE_MAX);
    free(row);
    free(big);
    tq_out_batch_free(&b);
}

static void the_row_budget_is_an_eighth_of_the_log_budget_within_bounds(void **state)
{
    (void)state;
    assert_int_equal(tq_out_row_cap(1024 * 1024), 128 * 1024);
    assert_int_equal(tq_out_row_cap(65536), TQ_OUT_ROW_MIN);
    assert_int_equal(tq_out_row_cap(1LL << 30), TQ_OUT_ROW_MAX);
}

static void progress_differs_only_in_what_is_written(void **state)
{
    (void)state;
    tq_progress a = {.step = 3, .total = 10, .has_loss = 1, .loss = 0.5};
    tq_progress b = a;
    assert_false(tq_out_progress_differs(&a, &b));
    b.eta_seconds = 7; /* not written while has_eta is 0 */
    assert_false(tq_out_progress_differs(&a, &b));
    b.has_eta = 1;
    assert_true(tq_out_progress_differs(&a, &b));
    b = a;
    b.loss = 0.25;
    assert_true(tq_out_progress_differs(&a, &b));
    b = a;
    b.step = 4;
    assert_true(tq_out_progress_differs(&a, &b));
}

/* ---- the follower, against a launcher whose unit printed a fixed script and ended ---- */

typedef struct {
    int stream;
    const char *bytes;
} piece;

static const piece *script;

static int fake_attach(void *ctx, const char *id, int replay, tq_log_sink_fn sink, void *arg,
                       const atomic_int *stop, tq_errbuf *eb)
{
    (void)ctx, (void)id, (void)replay, (void)stop, (void)eb;
    for (const piece *p = script; p->bytes; p++)
        sink(arg, p->stream, p->bytes, strlen(p->bytes));
    return TQ_OK; /* the stream ended */
}

static int fake_inspect(void *ctx, const char *id, tq_container_state *st, tq_errbuf *eb)
{
    (void)ctx, (void)id, (void)st;
    return tq_errf(eb, TQ_ERR_NOT_FOUND, "gone"); /* it ended with its stream */
}

/* replay: followed from the start (a container this process started); *whole: what
 * tq_output_last_err said. */
static const char *followed_err(const piece *p, int replay, char *buf, size_t cap, int *whole)
{
    static const tq_launcher_ops ops = {.attach = fake_attach, .inspect = fake_inspect};
    tq_launcher l = {.ops = &ops};
    script = p;
    tq_output *o;
    tq_errbuf eb = {{0}};
    assert_int_equal(tq_output_start(&o, &l, "c0ffee", replay, TQ_OUT_ROW_MIN, &eb), TQ_OK);
    tq_output_finish(o, 5000);
    *whole = tq_output_last_err(o, buf, cap);
    tq_output_free(o);
    return buf;
}

static const char *last_err_of(const piece *p, char *buf, size_t cap)
{
    int whole;
    followed_err(p, 1, buf, cap, &whole);
    assert_true(whole); /* from the start to the stream's end with the container */
    return buf;
}

static void the_last_stderr_line_is_kept_apart_from_stdout(void **state)
{
    (void)state;
    char buf[TQ_OUT_ERR_LINE_MAX];
    /* the fake trainer's exit 2: its config on stdout, its refusal on stderr, in any order */
    const piece refusal[] = {{1, "fake-trainer: config:\n{\n"},
                             {2, "warming up\nfake-trainer: invalid config: unknown key"},
                             {1, "  \"rank\": 4\n"},
                             {2, " rank_dropout\n  \n"},
                             {1, "}\n"},
                             {0, NULL}};
    assert_string_equal(last_err_of(refusal, buf, sizeof buf),
                        "fake-trainer: invalid config: unknown key rank_dropout");
    /* a last line without '\n' counts; a tqdm redraw ('\r') is not a line */
    const piece unended[] = {{2, "first\n"}, {2, "10%\r20%\r"}, {2, "no newline"}, {0, NULL}};
    assert_string_equal(last_err_of(unended, buf, sizeof buf), "no newline");
    const piece redrawn[] = {{2, "the refusal\n"}, {2, "10%\r20%\r"}, {2, "refused\n"}, {0, NULL}};
    assert_string_equal(last_err_of(redrawn, buf, sizeof buf), "refused");
    /* ... but the state a bar was left in at the end is what a terminal shows last */
    const piece left[] = {{2, "the refusal\n"}, {2, "10%\r20%\r"}, {0, NULL}};
    assert_string_equal(last_err_of(left, buf, sizeof buf), "20%");
    /* an adopted container's output is followed from the adoption on: not all of it */
    int whole = 1;
    assert_string_equal(followed_err(refusal, 0, buf, sizeof buf, &whole),
                        "fake-trainer: invalid config: unknown key rank_dropout");
    assert_false(whole);
    const piece only_stdout[] = {{1, "all on stdout\n"}, {0, "a tty's\n"}, {0, NULL}};
    assert_string_equal(last_err_of(only_stdout, buf, sizeof buf), "");
    /* cut to the caller's buffer, whole characters only, and valid UTF-8 */
    const piece wide[] = {{2, "\xc3\xa9\xc3\xa9\xc3\xa9\xff\n"}, {0, NULL}};
    assert_string_equal(last_err_of(wide, buf, 6), "\xc3\xa9\xc3\xa9");
    assert_string_equal(last_err_of(wide, buf, sizeof buf), "\xc3\xa9\xc3\xa9\xc3\xa9?");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(a_row_is_the_lines_joined_without_a_trailing_newline),
        cmocka_unit_test(arbitrary_bytes_become_valid_utf8_without_nul),
        cmocka_unit_test(a_full_batch_drops_its_oldest_lines_and_says_how_many),
        cmocka_unit_test(a_line_longer_than_the_line_limit_is_cut),
        cmocka_unit_test(the_row_budget_is_an_eighth_of_the_log_budget_within_bounds),
        cmocka_unit_test(progress_differs_only_in_what_is_written),
        cmocka_unit_test(the_last_stderr_line_is_kept_apart_from_stdout),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
