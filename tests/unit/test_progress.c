/* Trainer output (shared/tq_progress): the progress lines of real trainers, and the log cut
 * into lines as a terminal shows tqdm's carriage-return redraws. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "tq_progress.h"

static int parse(const char *s, tq_progress *p)
{
    memset(p, 0x5a, sizeof *p);
    return tq_progress_parse(s, strlen(s), p);
}

static void test_diffusers_line_gives_steps_loss_and_eta(void **state)
{
    (void)state;
    tq_progress p;
    assert_int_equal(
        parse("Steps:  45%|\xe2\x96\x88\xe2\x96\x88\xe2\x96\x88\xe2\x96\x88\xe2\x96\x8c"
              "     | 450/1000 [02:13<02:43,  3.37it/s, loss=0.0912, lr=0.0001]",
              &p),
        1);
    assert_int_equal(p.step, 450);
    assert_int_equal(p.total, 1000);
    assert_true(p.has_loss);
    assert_float_equal(p.loss, 0.0912, 1e-12);
    assert_true(p.has_eta);
    assert_float_equal(p.eta_seconds, 163, 1e-9);
}

static void test_kohya_line_reads_avr_loss(void **state)
{
    (void)state;
    tq_progress p;
    assert_int_equal(parse("steps:  10%|\xe2\x96\x88         | 100/1000 [00:50<07:30,  2.00it/s, "
                           "avr_loss=0.123]",
                           &p),
                     1);
    assert_int_equal(p.step, 100);
    assert_int_equal(p.total, 1000);
    assert_true(p.has_loss);
    assert_float_equal(p.loss, 0.123, 1e-12);
    assert_float_equal(p.eta_seconds, 450, 1e-9);
}

static void test_ai_toolkit_line_reads_colon_loss_not_lr(void **state)
{
    (void)state;
    tq_progress p;
    assert_int_equal(parse("my_lora:  12%|\xe2\x96\x88\xe2\x96\x8f        | 120/1000 "
                           "[01:00<07:20,  2.00it/s, lr: 1.0e-04 loss: 4.123e-01]",
                           &p),
                     1);
    assert_int_equal(p.step, 120);
    assert_int_equal(p.total, 1000);
    assert_true(p.has_loss);
    assert_float_equal(p.loss, 0.4123, 1e-12);
    assert_float_equal(p.eta_seconds, 440, 1e-9);
}

static void test_plain_fake_trainer_line(void **state)
{
    (void)state;
    tq_progress p;
    assert_int_equal(parse("progress: step 3/5", &p), 1);
    assert_int_equal(p.step, 3);
    assert_int_equal(p.total, 5);
    assert_false(p.has_loss);
    assert_false(p.has_eta);
    assert_int_equal(parse("  progress: step 5/5  ", &p), 1);
    assert_int_equal(p.step, 5);
}

static void test_unknown_eta_hours_and_days(void **state)
{
    (void)state;
    tq_progress p;
    assert_int_equal(parse("Steps:   0%|          | 0/1000 [00:00<?, ?it/s]", &p), 1);
    assert_int_equal(p.step, 0);
    assert_false(p.has_eta);
    assert_false(p.has_loss);
    assert_int_equal(parse("Steps:   1%|   | 10/1000 [00:10<1:02:03, 1.00it/s]", &p), 1);
    assert_true(p.has_eta);
    assert_float_equal(p.eta_seconds, 3723, 1e-9);
    assert_int_equal(parse("Steps:   1%|   | 10/9000 [00:10<2d 01:00:00, 1.00s/it]", &p), 1);
    assert_float_equal(p.eta_seconds, 2 * 86400 + 3600, 1e-9);
}

static void test_lines_that_are_not_progress(void **state)
{
    (void)state;
    static const char *const not_progress[] = {
        "",
        "loaded 3/5 [files]",                             /* a fraction, no tqdm timing */
        "Steps: 45%| | 450/1000",                         /* no brackets */
        "Steps: | 1001/1000 [00:01<00:00, 1it/s]",        /* step past total */
        "Steps: | 5/0 [00:01<00:00, 1it/s]",              /* no total */
        "Steps: | 99999999999/99999999999 [00:01<00:00]", /* past TQ_PROGRESS_MAX_STEPS */
        "progress: step 6/5",
        "progress: step 3/5 extra",
        "progress: step /5",
        "fake-trainer: done",
    };
    for (size_t i = 0; i < sizeof not_progress / sizeof not_progress[0]; i++) {
        tq_progress p = {.step = -7};
        assert_int_equal(tq_progress_parse(not_progress[i], strlen(not_progress[i]), &p), 0);
        assert_int_equal(p.step, -7);
    }
    tq_progress p;
    assert_int_equal(tq_progress_parse(NULL, 3, &p), 0);
}

static void test_nan_loss_is_no_loss_and_length_bounds_the_read(void **state)
{
    (void)state;
    tq_progress p;
    assert_int_equal(parse("Steps: | 1/10 [00:01<00:09, 1it/s, loss=nan]", &p), 1);
    assert_false(p.has_loss);
    /* The length, not a NUL, ends the line: "450/1000 [0" is cut before the '<'. */
    const char *s = "Steps: | 450/1000 [02:13<02:43, 3.37it/s, loss=0.0912]";
    assert_int_equal(tq_progress_parse(s, strlen("Steps: | 450/1000 [0"), &p), 0);
    /* Cut inside the postfix: the loss digits after the cut are not read. */
    assert_int_equal(tq_progress_parse(s, strlen(s) - strlen("0912]"), &p), 1);
    assert_true(p.has_loss);
    assert_float_equal(p.loss, 0.0, 1e-12);
}

/* ---- the splitter ---- */

typedef struct {
    char got[4096];
    size_t used;
} collected;

static void collect(void *arg, tq_log_piece kind, const char *line, size_t len)
{
    collected *c = arg;
    assert_int_equal(strlen(line), len);
    int n = snprintf(c->got + c->used, sizeof c->got - c->used, "%s[%s]",
                     kind == TQ_LOG_LINE ? "L" : "R", line);
    assert_true(n > 0 && (size_t)n < sizeof c->got - c->used);
    c->used += (size_t)n;
}

static void split(const char *const *chunks, size_t n, collected *c)
{
    tq_log_splitter s;
    tq_log_splitter_init(&s);
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < n; i++)
        tq_log_splitter_feed(&s, chunks[i], strlen(chunks[i]), collect, c);
    tq_log_splitter_finish(&s, collect, c);
}

static void test_carriage_returns_keep_only_the_last_state(void **state)
{
    (void)state;
    const char *chunks[] = {"start\n\rSteps: 1/3\rSteps: 2/3", "\rSteps: 3/3\n", "done\r\n"};
    collected c;
    split(chunks, 3, &c);
    assert_string_equal(c.got, "L[start]R[Steps: 1/3]R[Steps: 2/3]L[Steps: 3/3]L[done]");
}

static void test_a_line_split_across_chunks_and_an_unterminated_last_line(void **state)
{
    (void)state;
    const char *chunks[] = {"hel", "lo wo", "rld\npartial", "\r", "", "final"};
    collected c;
    split(chunks, 6, &c);
    assert_string_equal(c.got, "L[hello world]R[partial]L[final]");
}

static void test_escape_sequences_are_dropped(void **state)
{
    (void)state;
    const char *chunks[] = {"\x1b[32mgreen\x1b[0m text\n\x1b[A\x1b", "[2Kredrawn\n\x1b"
                                                                     "7saved\n"};
    collected c;
    split(chunks, 2, &c);
    assert_string_equal(c.got, "L[green text]L[redrawn]L[saved]");
}

static void record_len(void *arg, tq_log_piece kind, const char *line, size_t len)
{
    size_t *lens = arg;
    assert_int_equal(kind, TQ_LOG_LINE);
    assert_int_equal(strlen(line), len);
    lens[lens[0] + 1] = len;
    lens[0]++;
}

static void test_a_long_line_is_cut_at_the_cap(void **state)
{
    (void)state;
    static char big[TQ_LOG_LINE_MAX + 100];
    memset(big, 'x', sizeof big);
    size_t lens[4] = {0};
    tq_log_splitter s;
    tq_log_splitter_init(&s);
    tq_log_splitter_feed(&s, big, sizeof big, record_len, lens);
    assert_int_equal(lens[0], 0); /* no line ended yet */
    tq_log_splitter_feed(&s, "\nok\n", 4, record_len, lens);
    tq_log_splitter_finish(&s, record_len, lens);
    assert_int_equal(lens[0], 2);
    assert_int_equal(lens[1], TQ_LOG_LINE_MAX);
    assert_int_equal(lens[2], 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_diffusers_line_gives_steps_loss_and_eta),
        cmocka_unit_test(test_kohya_line_reads_avr_loss),
        cmocka_unit_test(test_ai_toolkit_line_reads_colon_loss_not_lr),
        cmocka_unit_test(test_plain_fake_trainer_line),
        cmocka_unit_test(test_unknown_eta_hours_and_days),
        cmocka_unit_test(test_lines_that_are_not_progress),
        cmocka_unit_test(test_nan_loss_is_no_loss_and_length_bounds_the_read),
        cmocka_unit_test(test_carriage_returns_keep_only_the_last_state),
        cmocka_unit_test(test_a_line_split_across_chunks_and_an_unterminated_last_line),
        cmocka_unit_test(test_escape_sequences_are_dropped),
        cmocka_unit_test(test_a_long_line_is_cut_at_the_cap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
