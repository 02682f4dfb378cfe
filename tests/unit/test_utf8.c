/* UTF-8 cuts and repairs (shared/tq_utf8) and tq_errf's use of them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "tq_err.h"
#include "tq_utf8.h"

/* 1 if s[0..len) is well-formed UTF-8 without NUL, checked without the code under test's
 * walk: a copy must come out of tq_utf8_sanitize unchanged. */
static int valid(const char *s, size_t len)
{
    char copy[1024];
    assert_true(len < sizeof copy);
    memcpy(copy, s, len);
    return tq_utf8_sanitize(copy, len) == 0 && memcmp(copy, s, len) == 0;
}

static void test_clip_never_splits_a_character_at_any_cut(void **state)
{
    (void)state;
    /* 1-, 2-, 3- and 4-byte characters, and their boundaries in bytes */
    const char *text = "a\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80z\xc3\xa9";
    const size_t bounds[] = {0, 1, 3, 6, 10, 11, 13};
    size_t len = strlen(text);
    for (size_t cut = 0; cut <= len + 2; cut++) {
        size_t want = 0;
        for (size_t b = 0; b < sizeof bounds / sizeof bounds[0]; b++)
            if (bounds[b] <= cut)
                want = bounds[b];
        assert_int_equal(tq_utf8_prefix(text, cut), want);
        char buf[32];
        snprintf(buf, sizeof buf, "%s", text);
        tq_utf8_clip(buf, cut);
        assert_int_equal(strlen(buf), want);
        assert_memory_equal(buf, text, want);
        assert_true(valid(buf, strlen(buf)));
    }
}

static void test_clip_drops_a_character_already_cut_short(void **state)
{
    (void)state;
    char a[] = "ab\xe2\x82"; /* "ab€" cut inside the euro sign by an earlier snprintf */
    tq_utf8_clip(a, 100);
    assert_string_equal(a, "ab");
    char b[] = "ab\xf0\x9f\x98";
    tq_utf8_clip(b, 100);
    assert_string_equal(b, "ab");
    char c[] = "ab\xc3";
    tq_utf8_clip(c, 100);
    assert_string_equal(c, "ab");
    /* a malformed byte that is not the start of a cut character is sanitise's business */
    char d[] = "a\xff"
               "b";
    assert_int_equal(tq_utf8_prefix(d, 2), 2);
    tq_utf8_clip(d, 100);
    assert_string_equal(d, "a\xff"
                           "b");
    char e[] = "";
    tq_utf8_clip(e, 0);
    assert_string_equal(e, "");
}

static void test_format_arg_prints_whole_characters(void **state)
{
    (void)state;
    char out[64];
    const char *s = "\xc3\xa9\xc3\xa9\xc3\xa9"; /* "ééé" */
    snprintf(out, sizeof out, "[%.*s]", TQ_UTF8_ARG(s, 5));
    assert_string_equal(out, "[\xc3\xa9\xc3\xa9]");
    snprintf(out, sizeof out, "[%.*s]", TQ_UTF8_ARG(s, 1));
    assert_string_equal(out, "[]");
}

static void test_sanitize_replaces_every_malformed_byte(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        size_t len;
        const char *out;
        size_t bad;
    } cases[] = {
        {"plain ascii", 11, "plain ascii", 0},
        {"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9, "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 0},
        {"a\xff"
         "b\xfe",
         4, "a?b?", 2}, /* never valid bytes */
        {"\x80\xbf"
         "x",
         3, "??x", 2},                                  /* lone continuation bytes */
        {"\xc3(", 2, "?(", 1},                          /* lead without continuation */
        {"x\xe2\x82", 3, "x??", 2},                     /* cut short at the end */
        {"\xc0\xaf", 2, "??", 2},                       /* overlong '/' */
        {"\xe0\x80\xaf", 3, "???", 3},                  /* overlong, 3 bytes */
        {"\xf0\x80\x80\xaf", 4, "????", 4},             /* overlong, 4 bytes */
        {"\xc1\xbf", 2, "??", 2},                       /* overlong DEL */
        {"\xed\xa0\x80", 3, "???", 3},                  /* surrogate U+D800 */
        {"\xf4\x90\x80\x80", 4, "????", 4},             /* past U+10FFFF */
        {"\xf4\x8f\xbf\xbf", 4, "\xf4\x8f\xbf\xbf", 0}, /* U+10FFFF itself */
        {"a\0b", 3, "a?b", 1},                          /* NUL inside the text */
        {"line\nnext\ttab", 13, "line\nnext\ttab", 0},  /* controls stay (log lines) */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char buf[32];
        memcpy(buf, cases[i].in, cases[i].len);
        buf[cases[i].len] = 'Z'; /* must be overwritten by the terminating NUL */
        size_t bad = tq_utf8_sanitize(buf, cases[i].len);
        if (bad != cases[i].bad || strlen(buf) != cases[i].len ||
            memcmp(buf, cases[i].out, cases[i].len) != 0)
            fail_msg("case %zu: %zu replaced (want %zu), got \"%s\"", i, bad, cases[i].bad, buf);
    }
}

static void test_seq_decodes_and_rejects(void **state)
{
    (void)state;
    uint32_t cp = 0;
    assert_int_equal(tq_utf8_seq((const unsigned char *)"\xe2\x82\xac", 3, &cp), 3);
    assert_int_equal(cp, 0x20AC);
    assert_int_equal(tq_utf8_seq((const unsigned char *)"\xe2\x82\xac", 2, &cp), 0);
    assert_int_equal(tq_utf8_seq((const unsigned char *)"\xf0\x9f\x98\x80", 4, NULL), 4);
    assert_int_equal(tq_utf8_seq((const unsigned char *)"A", 0, &cp), 0);
}

static void test_errf_cuts_a_full_buffer_on_a_character_boundary(void **state)
{
    (void)state;
    char big[TQ_ERRBUF_LEN * 2 + 1];
    for (int shift = 0; shift < 4; shift++) {
        /* shift moves the cut through every byte of the 4-byte characters */
        memset(big, 'x', (size_t)shift);
        size_t o = (size_t)shift;
        while (o + 4 < sizeof big) {
            memcpy(big + o, "\xf0\x9f\x98\x80", 4);
            o += 4;
        }
        big[o] = '\0';
        tq_errbuf eb;
        assert_int_equal(tq_errf(&eb, TQ_ERR_IO, "%s", big), TQ_ERR_IO);
        size_t n = strlen(eb.msg);
        assert_true(n < TQ_ERRBUF_LEN);
        assert_true(n > TQ_ERRBUF_LEN - 5);
        assert_int_equal((n - (size_t)shift) % 4, 0);
        assert_memory_equal(eb.msg, big, n);
        assert_true(valid(eb.msg, n));
    }
}

static void test_errf_message_is_always_valid_utf8(void **state)
{
    (void)state;
    tq_errbuf eb;
    /* "%.3s" of "éé" stops inside the second é; bytes quoted from outside may be anything */
    tq_errf(&eb, TQ_ERR_INVALID, "path \"%.3s\" and \"%s\"", "\xc3\xa9\xc3\xa9", "\xff\xc0\xaf");
    assert_string_equal(eb.msg, "path \"\xc3\xa9?\" and \"???\"");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_clip_never_splits_a_character_at_any_cut),
        cmocka_unit_test(test_clip_drops_a_character_already_cut_short),
        cmocka_unit_test(test_format_arg_prints_whole_characters),
        cmocka_unit_test(test_sanitize_replaces_every_malformed_byte),
        cmocka_unit_test(test_seq_decodes_and_rejects),
        cmocka_unit_test(test_errf_cuts_a_full_buffer_on_a_character_boundary),
        cmocka_unit_test(test_errf_message_is_always_valid_utf8),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
