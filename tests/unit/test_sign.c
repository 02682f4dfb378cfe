/*
 * Publisher signatures: HMAC-SHA256 against RFC 4231, the key list's every rule, and the
 * verdicts the consumer turns into x-trainq-reason.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "tq_sign.h"

static const char SECRET_A[] = "0123456789abcdef0123456789abcdef"; /* 32 bytes */
static const char SECRET_B[] = "fedcba9876543210fedcba9876543210-b";
static const char BODY[] = "{\"schema\":\"trainq.job.v1\"}";
/* python3: hmac.new(SECRET_A, BODY, hashlib.sha256).hexdigest() */
static const char BODY_SIG_HEX[] =
    "v1=3df065284cd53be0397e0a406e2dd7ab01889f443bf7f6b86ecc4026866648b0";

static void hex(const unsigned char *b, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
}

static void test_hmac_sha256_matches_rfc4231(void **state)
{
    (void)state;
    unsigned char k1[20], k3[20], k4[25], k6[131], d3[50], d4[50];
    memset(k1, 0x0b, sizeof k1);
    memset(k3, 0xaa, sizeof k3);
    memset(d3, 0xdd, sizeof d3);
    for (size_t i = 0; i < sizeof k4; i++)
        k4[i] = (unsigned char)(i + 1);
    memset(d4, 0xcd, sizeof d4);
    memset(k6, 0xaa, sizeof k6);
    const char *t6 = "Test Using Larger Than Block-Size Key - Hash Key First";
    const char *t7 = "This is a test using a larger than block-size key and a larger than "
                     "block-size data. The key needs to be hashed before being used by the HMAC "
                     "algorithm.";
    struct {
        const void *key;
        size_t key_len;
        const void *data;
        size_t len;
        const char *mac;
    } cases[] = {
        /* test case 1 */
        {k1, sizeof k1, "Hi There", 8,
         "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"},
        /* 2: a key shorter than the output */
        {"Jefe", 4, "what do ya want for nothing?", 28,
         "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"},
        /* 3 */
        {k3, sizeof k3, d3, sizeof d3,
         "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"},
        /* 4 */
        {k4, sizeof k4, d4, sizeof d4,
         "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"},
        /* 6: a key larger than the block is hashed first */
        {k6, sizeof k6, t6, strlen(t6),
         "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"},
        /* 7: and larger than block-size data */
        {k6, sizeof k6, t7, strlen(t7),
         "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        unsigned char mac[TQ_SIGN_MAC_LEN];
        char got[2 * TQ_SIGN_MAC_LEN + 1];
        assert_int_equal(
            tq_sign_hmac(cases[i].key, cases[i].key_len, cases[i].data, cases[i].len, mac), TQ_OK);
        hex(mac, sizeof mac, got);
        assert_string_equal(got, cases[i].mac);
    }
}

static void parse_ok(const char *text, tq_sign_keys *k)
{
    tq_errbuf eb = {{0}};
    int rc = tq_sign_keys_parse(text, "TRAINQ_PUBLISH_KEYS", k, &eb);
    if (rc != TQ_OK)
        fail_msg("%s", eb.msg);
}

static void test_key_list_keeps_order_so_the_first_key_signs(void **state)
{
    (void)state;
    char text[256];
    snprintf(text, sizeof text, "new:%s,old.2026-01_x:%s", SECRET_B, SECRET_A);
    tq_sign_keys k;
    parse_ok(text, &k);
    assert_int_equal(k.n, 2);
    assert_string_equal(k.keys[0].id, "new");
    assert_int_equal(k.keys[0].secret_len, strlen(SECRET_B));
    assert_memory_equal(k.keys[0].secret, SECRET_B, strlen(SECRET_B));
    assert_string_equal(k.keys[1].id, "old.2026-01_x");
    /* a secret may contain ':' (only the first one separates) */
    snprintf(text, sizeof text, "a:%s:tail", SECRET_A);
    parse_ok(text, &k);
    assert_int_equal(k.keys[0].secret_len, strlen(SECRET_A) + 5);
    tq_sign_keys_wipe(&k);
    assert_int_equal(k.n, 0);
}

static void test_key_file_format_one_entry_per_line(void **state)
{
    (void)state;
    char text[256];
    snprintf(text, sizeof text, "new:%s\r\n\nold:%s\n", SECRET_B, SECRET_A);
    tq_sign_keys k;
    parse_ok(text, &k);
    assert_int_equal(k.n, 2);
    assert_string_equal(k.keys[1].id, "old");
    assert_int_equal(k.keys[1].secret_len, strlen(SECRET_A)); /* no \r, no \n */
}

static void test_every_bad_key_list_gets_one_line_without_the_secret(void **state)
{
    (void)state;
    char many[2048] = "";
    for (int i = 0; i <= TQ_SIGN_MAX_KEYS; i++) {
        char e[80];
        snprintf(e, sizeof e, "%sk%d:%s", i ? "," : "", i, SECRET_A);
        strcat(many, e);
    }
    char long_secret[TQ_SIGN_SECRET_MAX + 8];
    memset(long_secret, 's', sizeof long_secret - 1);
    long_secret[sizeof long_secret - 1] = '\0';
    char too_long[TQ_SIGN_SECRET_MAX + 16];
    snprintf(too_long, sizeof too_long, "k:%s", long_secret);
    struct {
        const char *text;
        const char *needle;
    } cases[] = {
        {"", "expected one or more id:secret entries"},
        {",\n,", "expected one or more id:secret entries"},
        {":0123456789abcdef0123456789abcdef", "entry 1 has an empty key id"},
        {"justasecretwithoutanid0123456789abcdef", "entry 1 is not of the form id:secret"},
        {"a:0123456789abcdef0123456789abcdef,a:fedcba9876543210fedcba9876543210",
         "key id \"a\" is listed twice"},
        {"a:0123456789abcdef0123456789abcdef,b:short-secret-0123456789",
         "key \"b\" has a secret of 23 bytes; at least 32 are required"},
        {"a b:0123456789abcdef0123456789abcdef", "entry 1 has a key id with a character"},
        {"a\"b:0123456789abcdef0123456789abcdef", "entry 1 has a key id with a character"},
        {"a:0123456789abcdef 0123456789abcdef", "key \"a\" has a secret with a character"},
        {"a:0123456789abcdef\t0123456789abcdef", "key \"a\" has a secret with a character"},
        {"a:0123456789abcdef\xc3\xa9"
         "0123456789abcdef",
         "key \"a\" has a secret with a character"},
        {too_long, "has a secret longer than 256 bytes"},
        {many, "more than 16 keys"},
        {"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa:"
         "0123456789abcdef0123456789abcdef",
         "key id longer than 64 bytes"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tq_sign_keys k;
        tq_errbuf eb = {{0}};
        assert_int_equal(tq_sign_keys_parse(cases[i].text, "TRAINQ_PUBLISH_KEYS", &k, &eb),
                         TQ_ERR_CONFIG);
        if (!strstr(eb.msg, cases[i].needle))
            fail_msg("case %zu: \"%s\" lacks \"%s\"", i, eb.msg, cases[i].needle);
        assert_non_null(strstr(eb.msg, "invalid TRAINQ_PUBLISH_KEYS: "));
        assert_null(strchr(eb.msg, '\n'));
        assert_null(strstr(eb.msg, "0123456789abcdef"));
        assert_null(strstr(eb.msg, "short-secret"));
        assert_int_equal(k.n, 0); /* nothing half-parsed is left behind */
    }
}

static void test_signature_is_v1_lowercase_hex_of_the_body(void **state)
{
    (void)state;
    tq_sign_keys k;
    char text[128];
    snprintf(text, sizeof text, "a:%s", SECRET_A);
    parse_ok(text, &k);
    char v[TQ_SIGN_VALUE_LEN];
    assert_int_equal(tq_sign_value(&k.keys[0], BODY, strlen(BODY), v), TQ_OK);
    assert_string_equal(v, BODY_SIG_HEX);
}

static int verify(const tq_sign_keys *k, const char *kid, const char *sig, const char *body,
                  char *why)
{
    return tq_sign_verify(k, kid, kid ? strlen(kid) : 0, sig, sig ? strlen(sig) : 0, body,
                          strlen(body), why, 256);
}

static void test_verify_accepts_any_listed_key_and_nothing_else(void **state)
{
    (void)state;
    tq_sign_keys k, other;
    char text[256], why[256];
    snprintf(text, sizeof text, "new:%s,old:%s", SECRET_B, SECRET_A);
    parse_ok(text, &k);
    /* signed with the old key (second in the list): rotation keeps it valid */
    assert_int_equal(verify(&k, "old", BODY_SIG_HEX, BODY, why), TQ_OK);
    char upper[TQ_SIGN_VALUE_LEN];
    snprintf(upper, sizeof upper, "v1=");
    for (size_t i = 3; BODY_SIG_HEX[i]; i++)
        upper[i] = (char)(BODY_SIG_HEX[i] >= 'a' ? BODY_SIG_HEX[i] - 32 : BODY_SIG_HEX[i]);
    upper[sizeof upper - 1] = '\0';
    assert_int_equal(verify(&k, "old", upper, BODY, why), TQ_OK);
    char v[TQ_SIGN_VALUE_LEN];
    assert_int_equal(tq_sign_value(&k.keys[0], BODY, strlen(BODY), v), TQ_OK);
    assert_int_equal(verify(&k, "new", v, BODY, why), TQ_OK);

    /* the right signature under the wrong id */
    assert_int_equal(verify(&k, "new", BODY_SIG_HEX, BODY, why), TQ_ERR_AUTH);
    assert_string_equal(why, "bad signature");
    /* a tampered body (one byte more) */
    assert_int_equal(verify(&k, "old", BODY_SIG_HEX, "{\"schema\":\"trainq.job.v1\" }", why),
                     TQ_ERR_AUTH);
    assert_string_equal(why, "bad signature");
    /* signed by a key nobody listed, claiming a listed id */
    snprintf(text, sizeof text, "old:%sX", SECRET_A);
    parse_ok(text, &other);
    assert_int_equal(tq_sign_value(&other.keys[0], BODY, strlen(BODY), v), TQ_OK);
    assert_int_equal(verify(&k, "old", v, BODY, why), TQ_ERR_AUTH);
    assert_string_equal(why, "bad signature");
    /* a listed id is matched exactly, not by prefix */
    assert_int_equal(verify(&k, "ol", BODY_SIG_HEX, BODY, why), TQ_ERR_AUTH);
    assert_string_equal(why, "unknown publisher key id \"ol\"");
}

static void test_verify_names_what_is_missing_or_malformed(void **state)
{
    (void)state;
    tq_sign_keys k;
    char text[128], why[256];
    snprintf(text, sizeof text, "old:%s", SECRET_A);
    parse_ok(text, &k);
    assert_int_equal(verify(&k, NULL, NULL, BODY, why), TQ_ERR_AUTH);
    assert_string_equal(why, "unsigned message: x-trainq-signature is required");
    assert_int_equal(verify(&k, NULL, BODY_SIG_HEX, BODY, why), TQ_ERR_AUTH);
    assert_string_equal(why, "unsigned message: x-trainq-key-id is required");
    assert_int_equal(verify(&k, "x", BODY_SIG_HEX, BODY, why), TQ_ERR_AUTH);
    assert_string_equal(why, "unknown publisher key id \"x\"");
    /* a hostile id cannot put quotes or control characters into the reason */
    assert_int_equal(verify(&k, "a\"b\n\x01", BODY_SIG_HEX, BODY, why), TQ_ERR_AUTH);
    assert_string_equal(why, "unknown publisher key id \"a?b??\"");
    char long_id[200];
    memset(long_id, 'i', sizeof long_id - 1);
    long_id[sizeof long_id - 1] = '\0';
    assert_int_equal(verify(&k, long_id, BODY_SIG_HEX, BODY, why), TQ_ERR_AUTH);
    assert_true(strlen(why) < 100);
    assert_non_null(strstr(why, "\"..."));

    const char *malformed[] = {
        "",
        "3df065284cd53be0397e0a406e2dd7ab01889f443bf7f6b86ecc4026866648b0", /* no v1= */
        "v2=3df065284cd53be0397e0a406e2dd7ab01889f443bf7f6b86ecc4026866648b0",
        "v1=3df065284cd53be0397e0a406e2dd7ab01889f443bf7f6b86ecc4026866648b",   /* 63 */
        "v1=3df065284cd53be0397e0a406e2dd7ab01889f443bf7f6b86ecc4026866648b0a", /* 65 */
        "v1=zdf065284cd53be0397e0a406e2dd7ab01889f443bf7f6b86ecc4026866648b0",
        "v1=PfBlKEzVO+A5fgpAbi3XqwGIn0Q79/a4bsxAJoZmSLA=", /* base64 of the right MAC */
        "v1=",
    };
    for (size_t i = 0; i < sizeof malformed / sizeof malformed[0]; i++) {
        assert_int_equal(verify(&k, "old", malformed[i], BODY, why), TQ_ERR_AUTH);
        if (strncmp(why, "bad signature: expected v1=", 27) != 0)
            fail_msg("case %zu: %s", i, why);
    }
    /* header values are bytes, not C strings: a NUL inside is just a wrong byte */
    char nul_sig[TQ_SIGN_VALUE_LEN];
    memcpy(nul_sig, BODY_SIG_HEX, sizeof nul_sig);
    nul_sig[10] = '\0';
    assert_int_equal(tq_sign_verify(&k, "old", 3, nul_sig, sizeof nul_sig - 1, BODY, strlen(BODY),
                                    why, sizeof why),
                     TQ_ERR_AUTH);
    /* an empty body is signed like any other */
    char v[TQ_SIGN_VALUE_LEN];
    assert_int_equal(tq_sign_value(&k.keys[0], NULL, 0, v), TQ_OK);
    assert_int_equal(tq_sign_verify(&k, "old", 3, v, strlen(v), NULL, 0, why, sizeof why), TQ_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hmac_sha256_matches_rfc4231),
        cmocka_unit_test(test_key_list_keeps_order_so_the_first_key_signs),
        cmocka_unit_test(test_key_file_format_one_entry_per_line),
        cmocka_unit_test(test_every_bad_key_list_gets_one_line_without_the_secret),
        cmocka_unit_test(test_signature_is_v1_lowercase_hex_of_the_body),
        cmocka_unit_test(test_verify_accepts_any_listed_key_and_nothing_else),
        cmocka_unit_test(test_verify_names_what_is_missing_or_malformed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
