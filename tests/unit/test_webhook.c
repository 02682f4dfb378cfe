/* Webhook signatures (Standard Webhooks) and the address rule for deliveries (shared/tq_webhook).
 * Addresses are only parsed (inet_pton), never connected to. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "tq_webhook.h"

/* The Standard Webhooks specification's example (also computed independently with Python's
 * hmac module when this test was written). */
#define SPEC_SECRET "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
#define SPEC_ID "msg_p5jXN8AQM9LWM0D4loKWxJek"
#define SPEC_TS 1614265330LL
#define SPEC_BODY "{\"test\": 2432232314}"
#define SPEC_SIG "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

static void test_signature_matches_the_specification_example(void **state)
{
    (void)state;
    char sig[TQ_WEBHOOK_SIGNATURE_BUF];
    assert_int_equal(
        tq_webhook_sign(SPEC_SECRET, SPEC_ID, SPEC_TS, SPEC_BODY, strlen(SPEC_BODY), sig), TQ_OK);
    assert_string_equal(sig, SPEC_SIG);
    assert_int_equal(tq_webhook_verify(SPEC_SECRET, SPEC_ID, SPEC_TS, SPEC_TS + 10, SPEC_BODY,
                                       strlen(SPEC_BODY), SPEC_SIG),
                     TQ_OK);
}

static void test_verify_refuses_tampering_old_timestamps_and_other_secrets(void **state)
{
    (void)state;
    const char *body = SPEC_BODY;
    size_t n = strlen(body);
    assert_int_equal(
        tq_webhook_verify(SPEC_SECRET, SPEC_ID, SPEC_TS, SPEC_TS, "{\"test\": 1}", 11, SPEC_SIG),
        TQ_ERR_FORBIDDEN);
    assert_int_equal(
        tq_webhook_verify(SPEC_SECRET, "msg_other", SPEC_TS, SPEC_TS, body, n, SPEC_SIG),
        TQ_ERR_FORBIDDEN);
    assert_int_equal(
        tq_webhook_verify(SPEC_SECRET, SPEC_ID, SPEC_TS + 1, SPEC_TS, body, n, SPEC_SIG),
        TQ_ERR_FORBIDDEN); /* the timestamp is signed */
    assert_int_equal(tq_webhook_verify(SPEC_SECRET, SPEC_ID, SPEC_TS,
                                       SPEC_TS + TQ_WEBHOOK_TOLERANCE_SECONDS + 1, body, n,
                                       SPEC_SIG),
                     TQ_ERR_FORBIDDEN);
    assert_int_equal(tq_webhook_verify(SPEC_SECRET, SPEC_ID, SPEC_TS,
                                       SPEC_TS - TQ_WEBHOOK_TOLERANCE_SECONDS - 1, body, n,
                                       SPEC_SIG),
                     TQ_ERR_FORBIDDEN);
    char other[TQ_WEBHOOK_SECRET_BUF];
    assert_int_equal(tq_webhook_secret_new(other), TQ_OK);
    assert_int_equal(tq_webhook_verify(other, SPEC_ID, SPEC_TS, SPEC_TS, body, n, SPEC_SIG),
                     TQ_ERR_FORBIDDEN);
    assert_int_equal(tq_webhook_verify(SPEC_SECRET, SPEC_ID, SPEC_TS, SPEC_TS, body, n, ""),
                     TQ_ERR_FORBIDDEN);
    assert_int_equal(tq_webhook_verify(SPEC_SECRET, SPEC_ID, SPEC_TS, SPEC_TS, body, n,
                                       "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="),
                     TQ_ERR_FORBIDDEN);
}

static void test_one_matching_entry_of_several_is_enough(void **state)
{
    (void)state;
    const char *hdr = "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= v1a,junk " SPEC_SIG;
    assert_int_equal(tq_webhook_verify(SPEC_SECRET, SPEC_ID, SPEC_TS, SPEC_TS, SPEC_BODY,
                                       strlen(SPEC_BODY), hdr),
                     TQ_OK);
}

static void test_new_secrets_are_random_and_parse_back(void **state)
{
    (void)state;
    char a[TQ_WEBHOOK_SECRET_BUF], b[TQ_WEBHOOK_SECRET_BUF];
    assert_int_equal(tq_webhook_secret_new(a), TQ_OK);
    assert_int_equal(tq_webhook_secret_new(b), TQ_OK);
    assert_string_not_equal(a, b);
    assert_memory_equal(a, "whsec_", 6);
    unsigned char key[TQ_WEBHOOK_SECRET_MAX_BYTES];
    size_t len = 0;
    assert_int_equal(tq_webhook_secret_key(a, key, &len), TQ_OK);
    assert_int_equal(len, TQ_WEBHOOK_SECRET_BYTES);
    char sig[TQ_WEBHOOK_SIGNATURE_BUF];
    assert_int_equal(tq_webhook_sign(a, "msg_1", 1700000000, "x", 1, sig), TQ_OK);
    assert_int_equal(strlen(sig), TQ_WEBHOOK_SIGNATURE_BUF - 1);
    assert_int_equal(tq_webhook_verify(a, "msg_1", 1700000000, 1700000000, "x", 1, sig), TQ_OK);
}

static void test_bad_secrets_and_ids_are_refused(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",        /* no prefix */
        "whsec_",                                  /* empty */
        "whsec_AAAA",                              /* 3 bytes: too short */
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS!",  /* not base64 */
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS",   /* not a multiple of 4 */
        "whsec_MfKQ9r8GKYqrTwjU PD8ILPZIo2LaLaSw", /* whitespace */
        /* 66 bytes: too long (64 is the most) */
        "whsec_"
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    };
    unsigned char key[TQ_WEBHOOK_SECRET_MAX_BYTES];
    size_t len;
    char sig[TQ_WEBHOOK_SIGNATURE_BUF];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(tq_webhook_secret_key(bad[i], key, &len), TQ_ERR_INVALID);
        assert_int_equal(tq_webhook_sign(bad[i], "msg_1", 1, "x", 1, sig), TQ_ERR_INVALID);
    }
    /* the bounds: 24 and 64 key bytes are accepted, 23 is not */
    char edge[TQ_WEBHOOK_SECRET_BUF];
    snprintf(edge, sizeof edge, "whsec_%s", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    assert_int_equal(tq_webhook_secret_key(edge, key, &len), TQ_OK);
    assert_int_equal(len, 24);
    snprintf(edge, sizeof edge, "whsec_%s", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    assert_int_equal(tq_webhook_secret_key(edge, key, &len), TQ_ERR_INVALID);
    memset(edge, 'A', sizeof edge);
    memcpy(edge, "whsec_", 6);
    memcpy(edge + 6 + 86, "==", 3);
    assert_int_equal(tq_webhook_secret_key(edge, key, &len), TQ_OK);
    assert_int_equal(len, 64);
    assert_int_equal(tq_webhook_sign(SPEC_SECRET, "", 1, "x", 1, sig), TQ_ERR_INVALID);
    assert_int_equal(tq_webhook_sign(SPEC_SECRET, "a.b", 1, "x", 1, sig), TQ_ERR_INVALID);
    assert_int_equal(tq_webhook_sign(SPEC_SECRET, "msg", -1, "x", 1, sig), TQ_ERR_INVALID);
}

static tq_addr_class cls(const char *text)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (strchr(text, ':')) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        assert_int_equal(inet_pton(AF_INET6, text, &s6->sin6_addr), 1);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        assert_int_equal(inet_pton(AF_INET, text, &s4->sin_addr), 1);
    }
    return tq_addr_classify((const struct sockaddr *)&ss);
}

static void test_addresses_are_classified(void **state)
{
    (void)state;
    static const struct {
        const char *addr;
        tq_addr_class want;
    } cases[] = {
        {"93.184.216.34", TQ_ADDR_PUBLIC},
        {"8.8.8.8", TQ_ADDR_PUBLIC},
        {"172.15.255.255", TQ_ADDR_PUBLIC},
        {"172.32.0.1", TQ_ADDR_PUBLIC},
        {"100.63.255.255", TQ_ADDR_PUBLIC},
        {"127.0.0.1", TQ_ADDR_LOOPBACK},
        {"127.255.255.254", TQ_ADDR_LOOPBACK},
        {"10.1.2.3", TQ_ADDR_PRIVATE},
        {"172.16.0.1", TQ_ADDR_PRIVATE},
        {"172.31.255.255", TQ_ADDR_PRIVATE},
        {"192.168.1.1", TQ_ADDR_PRIVATE},
        {"169.254.169.254", TQ_ADDR_LINK_LOCAL},
        {"100.64.0.1", TQ_ADDR_SHARED},
        {"0.0.0.0", TQ_ADDR_UNSPECIFIED},
        {"0.1.2.3", TQ_ADDR_UNSPECIFIED},
        {"224.0.0.1", TQ_ADDR_MULTICAST},
        {"239.255.255.250", TQ_ADDR_MULTICAST},
        {"255.255.255.255", TQ_ADDR_RESERVED},
        {"240.0.0.1", TQ_ADDR_RESERVED},
        {"192.0.2.1", TQ_ADDR_RESERVED},
        {"198.18.0.1", TQ_ADDR_RESERVED},
        {"203.0.113.9", TQ_ADDR_RESERVED},
        {"2606:2800:220:1:248:1893:25c8:1946", TQ_ADDR_PUBLIC},
        {"::1", TQ_ADDR_LOOPBACK},
        {"::", TQ_ADDR_UNSPECIFIED},
        {"::ffff:127.0.0.1", TQ_ADDR_LOOPBACK},
        {"::ffff:10.0.0.1", TQ_ADDR_PRIVATE},
        {"::ffff:169.254.169.254", TQ_ADDR_LINK_LOCAL},
        {"::ffff:93.184.216.34", TQ_ADDR_PUBLIC},
        {"64:ff9b::a00:1", TQ_ADDR_PRIVATE},   /* NAT64 of 10.0.0.1 */
        {"2002:c0a8:101::1", TQ_ADDR_PRIVATE}, /* 6to4 of 192.168.1.1 */
        {"fc00::1", TQ_ADDR_PRIVATE},
        {"fd12:3456::1", TQ_ADDR_PRIVATE},
        {"fe80::1", TQ_ADDR_LINK_LOCAL},
        {"fec0::1", TQ_ADDR_PRIVATE},
        {"ff02::1", TQ_ADDR_MULTICAST},
        {"2001:db8::1", TQ_ADDR_RESERVED},
        {"2001:0:4136:e378:8000:63bf:3fff:fdd2", TQ_ADDR_RESERVED}, /* Teredo */
        {"100::1", TQ_ADDR_RESERVED},
        {"4000::1", TQ_ADDR_RESERVED},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tq_addr_class got = cls(cases[i].addr);
        if (got != cases[i].want)
            fail_msg("%s: %s, want %s", cases[i].addr, tq_addr_class_name(got),
                     tq_addr_class_name(cases[i].want));
    }
    struct sockaddr un = {.sa_family = AF_UNIX};
    assert_int_equal(tq_addr_classify(&un), TQ_ADDR_RESERVED);
    assert_int_equal(tq_addr_classify(NULL), TQ_ADDR_RESERVED);
}

static void test_deliveries_go_to_public_addresses_and_loopback_only_when_allowed(void **state)
{
    (void)state;
    struct sockaddr_in s = {.sin_family = AF_INET};
    inet_pton(AF_INET, "127.0.0.1", &s.sin_addr);
    assert_false(tq_webhook_addr_allowed((struct sockaddr *)&s, 0));
    assert_true(tq_webhook_addr_allowed((struct sockaddr *)&s, 1));
    inet_pton(AF_INET, "10.0.0.1", &s.sin_addr);
    assert_false(tq_webhook_addr_allowed((struct sockaddr *)&s, 1));
    inet_pton(AF_INET, "93.184.216.34", &s.sin_addr);
    assert_true(tq_webhook_addr_allowed((struct sockaddr *)&s, 0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_signature_matches_the_specification_example),
        cmocka_unit_test(test_verify_refuses_tampering_old_timestamps_and_other_secrets),
        cmocka_unit_test(test_one_matching_entry_of_several_is_enough),
        cmocka_unit_test(test_new_secrets_are_random_and_parse_back),
        cmocka_unit_test(test_bad_secrets_and_ids_are_refused),
        cmocka_unit_test(test_addresses_are_classified),
        cmocka_unit_test(test_deliveries_go_to_public_addresses_and_loopback_only_when_allowed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
