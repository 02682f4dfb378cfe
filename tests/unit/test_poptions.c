/*
 * The producer's options (producer/poptions): defaults, env vs flags, one clear line for
 * every bad value, and the publisher keys it signs with.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "poptions.h"
#include "options_env.h"

/* Loads with the given argv; returns the code and leaves the error line in eb. */
static int load(tq_config *c, tq_errbuf *eb, int argc, char **argv)
{
    memset(eb, 0, sizeof *eb);
    return tq_producer_config_load(c, argc, argv, eb);
}

static void test_defaults_match_the_design(void **state)
{
    (void)state;
    tq_config c;
    tq_errbuf eb;
    char *argv[] = {"trainq-producer"};
    assert_int_equal(load(&c, &eb, 1, argv), TQ_OK);
    assert_string_equal(c.http_host, "127.0.0.1");
    assert_int_equal(c.http_port, 3000);
    assert_string_equal(c.jwt_alg, "HS256");
    assert_string_equal(c.jwt_audience, "authenticated"); /* Supabase's user tokens */
    assert_int_equal(c.submit_rate_per_minute, 10);
    assert_int_equal(c.max_body_bytes, 65536);
    assert_int_equal(c.relay_batch, 100);
    assert_string_equal(c.log_level, "info");
    tq_producer_config_free(&c);
}

static void test_flags_override_environment(void **state)
{
    (void)state;
    setenv("TRAINQ_HTTP_ADDR", "127.0.0.1:4000", 1);
    tq_config c;
    tq_errbuf eb;
    char *argv[] = {"trainq-producer", "--http-addr=0.0.0.0:5000", "--http-threads", "8"};
    assert_int_equal(load(&c, &eb, 4, argv), TQ_OK);
    assert_string_equal(c.http_host, "0.0.0.0");
    assert_int_equal(c.http_port, 5000);
    assert_int_equal(c.http_threads, 8);
    tq_producer_config_free(&c);
}

static const bad_case bad_cases[] = {
    {"TRAINQ_HTTP_ADDR", "localhost", "invalid TRAINQ_HTTP_ADDR \"localhost\": expected host:port"},
    {"TRAINQ_HTTP_ADDR", "127.0.0.1:70000", "invalid TRAINQ_HTTP_ADDR"},
    {"TRAINQ_HTTP_THREADS", "0",
     "invalid TRAINQ_HTTP_THREADS \"0\": expected an integer from 1 to 256"},
    {"TRAINQ_HTTP_THREADS", "4x", "invalid TRAINQ_HTTP_THREADS \"4x\""},
    {"TRAINQ_JWT_ALG", "none", "invalid TRAINQ_JWT_ALG \"none\": expected one of HS256"},
    {"TRAINQ_JWT_ALG", "RS256", "missing TRAINQ_JWT_PUBLIC_KEY_FILE"},
    {"TRAINQ_JWT_SECRET", "short", "invalid TRAINQ_JWT_SECRET: must be at least 16 bytes"},
    {"TRAINQ_JWT_SECRET", "", "missing TRAINQ_JWT_SECRET"},
    {"TRAINQ_JWT_AUDIENCE", "", "invalid TRAINQ_JWT_AUDIENCE \"\": expected the audience"},
    {"TRAINQ_WEBHOOK_USER_CONCURRENCY", "1",
     "invalid TRAINQ_WEBHOOK_USER_CONCURRENCY 1: below TRAINQ_WEBHOOK_ENDPOINT_CONCURRENCY (2)"},
    {"TRAINQ_JWT_PUBLIC_KEY_FILE", "/nonexistent.pem", "conflicting TRAINQ_JWT_PUBLIC_KEY_FILE"},
    {"TRAINQ_MAX_BODY_BYTES", "10m", "invalid TRAINQ_MAX_BODY_BYTES \"10m\""},
    {"TRAINQ_AMQP_URL", "http://x", "invalid TRAINQ_AMQP_URL"},
    {"TRAINQ_DATABASE_URL", "", "invalid TRAINQ_DATABASE_URL: must not be empty"},
    {"TRAINQ_LOG_LEVEL", "loud", "invalid TRAINQ_LOG_LEVEL \"loud\""},
    {"TRAINQ_HTTP_TRUSTED_PROXIES", "garbage",
     "invalid TRAINQ_HTTP_TRUSTED_PROXIES entry \"garbage\""},
    {"TRAINQ_CORS_ORIGINS", "not an origin",
     "invalid TRAINQ_CORS_ORIGINS entry \"not an origin\": expected an origin"},
    {"TRAINQ_CORS_ORIGINS", "https://app.example.com/", "entry \"https://app.example.com/\""},
    {"TRAINQ_CORS_ORIGINS", "https://a.example.com, app.example.com", "entry \"app.example.com\""},
    {"TRAINQ_CORS_ORIGINS", "*, https://a.example.com", "entry \"*\""},
    {"TRAINQ_CORS_ORIGINS", "https://", "entry \"https://\""},
    {"TRAINQ_CORS_ORIGINS", "https://App.example.com", "entry \"https://App.example.com\""},
    {"TRAINQ_CORS_ORIGINS", "null", "entry \"null\""},
};

/* What TRAINQ_CORS_ORIGINS takes: "*", nothing, or origins as browsers send them. */
static void test_cors_origins_that_can_match_are_accepted(void **state)
{
    const char *good[] = {"*",
                          "",
                          "https://app.example.com",
                          " https://a.example.com , http://localhost:5173,",
                          "chrome-extension://abcdef",
                          "http://[::1]:8080"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        reset_env(state);
        setenv("TRAINQ_CORS_ORIGINS", good[i], 1);
        tq_config c;
        tq_errbuf eb;
        char *argv[] = {"prog"};
        if (load(&c, &eb, 1, argv) != TQ_OK)
            fail_msg("%s refused: %s", good[i], eb.msg);
        tq_producer_config_free(&c);
    }
}

static void test_every_bad_value_gets_one_clear_line(void **state)
{
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        const bad_case *b = &bad_cases[i];
        reset_env(state);
        setenv(b->var, b->value, 1);
        tq_config c;
        tq_errbuf eb;
        char *argv[] = {"prog"};
        int rc = load(&c, &eb, 1, argv);
        if (rc != TQ_ERR_CONFIG || !strstr(eb.msg, b->expect) || strchr(eb.msg, '\n'))
            fail_msg("%s=%s: rc %d, line \"%s\", wanted \"%s\"", b->var, b->value, rc, eb.msg,
                     b->expect);
        tq_producer_config_free(&c);
    }
}

static void test_secrets_are_never_echoed(void **state)
{
    (void)state;
    setenv("TRAINQ_AMQP_URL", "http://user:hunter2@host", 1);
    tq_config c;
    tq_errbuf eb;
    char *argv[] = {"trainq-producer"};
    assert_int_equal(load(&c, &eb, 1, argv), TQ_ERR_CONFIG);
    assert_null(strstr(eb.msg, "hunter2"));
    tq_producer_config_free(&c);
}

static void test_consumer_flags_are_unknown_to_the_producer(void **state)
{
    (void)state;
    tq_config c;
    tq_errbuf eb;
    char *argv[] = {"trainq-producer", "--gpus", "all"};
    assert_int_equal(load(&c, &eb, 3, argv), TQ_ERR_CONFIG);
    assert_non_null(strstr(eb.msg, "unknown option \"--gpus\""));
    tq_producer_config_free(&c);
}

/* TRAINQ_PUBLISH_KEYS / TRAINQ_PUBLISH_KEYS_FILE (shared/tq_sign.h), as the producer's
 * relay signs with them. */
static void test_publish_keys_are_optional_and_checked_at_start(void **state)
{
    (void)state;
    tq_config c;
    tq_errbuf eb;
    char *argv[] = {"trainq"};
    assert_int_equal(load(&c, &eb, 1, argv), TQ_OK);
    assert_int_equal(c.publish_keyring.n, 0);
    tq_producer_config_free(&c);

    char text[256];
    snprintf(text, sizeof text, "new:%s,old:%s", SECRET_B, SECRET_A);
    setenv("TRAINQ_PUBLISH_KEYS", text, 1);
    assert_int_equal(load(&c, &eb, 1, argv), TQ_OK);
    assert_int_equal(c.publish_keyring.n, 2);
    assert_string_equal(c.publish_keyring.keys[0].id, "new");
    tq_producer_config_free(&c);
    assert_int_equal(c.publish_keyring.n, 0);

    setenv("TRAINQ_PUBLISH_KEYS", "a:tooshort", 1);
    assert_int_equal(load(&c, &eb, 1, argv), TQ_ERR_CONFIG);
    assert_string_equal(eb.msg, "invalid TRAINQ_PUBLISH_KEYS: key \"a\" has a secret of 8 "
                                "bytes; at least 32 are required");
    tq_producer_config_free(&c);
    unsetenv("TRAINQ_PUBLISH_KEYS");

    setenv("TRAINQ_PUBLISH_KEYS_FILE", "/nonexistent/tq-keys", 1);
    assert_int_equal(load(&c, &eb, 1, argv), TQ_ERR_CONFIG);
    assert_non_null(strstr(eb.msg, "cannot read TRAINQ_PUBLISH_KEYS_FILE"));
    tq_producer_config_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_defaults_match_the_design, reset_env),
        cmocka_unit_test_setup(test_flags_override_environment, reset_env),
        cmocka_unit_test_setup(test_every_bad_value_gets_one_clear_line, reset_env),
        cmocka_unit_test_setup(test_cors_origins_that_can_match_are_accepted, reset_env),
        cmocka_unit_test_setup(test_secrets_are_never_echoed, reset_env),
        cmocka_unit_test_setup(test_consumer_flags_are_unknown_to_the_producer, reset_env),
        cmocka_unit_test_setup(test_publish_keys_are_optional_and_checked_at_start, reset_env),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
