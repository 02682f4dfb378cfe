/*
 * Configuration: defaults, env vs flags, and one clear line for every bad value.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tq_config.h"

static const char *const all_vars[] = {
    "TRAINQ_DATABASE_URL", "TRAINQ_AMQP_URL", "TRAINQ_HTTP_ADDR", "TRAINQ_JWT_SECRET",
    "TRAINQ_JWT_ALG", "TRAINQ_JWT_PUBLIC_KEY_FILE", "TRAINQ_GPUS", "TRAINQ_SLOTS",
    "TRAINQ_HEARTBEAT_SECONDS", "TRAINQ_LEASE_SECONDS", "TRAINQ_WORKER_ID", "TRAINQ_MEMORY_LIMIT",
    "TRAINQ_DOCKER_HOST", "TRAINQ_LOG_LEVEL", "TRAINQ_REMOVE_CONTAINERS", "TRAINQ_CPUS",
    "TRAINQ_DATA_DIR", "TRAINQ_MAX_BODY_BYTES", "TRAINQ_HTTP_THREADS", "TRAINQ_METRICS_ADDR",
    "TRAINQ_JWT_AUDIENCE", "TRAINQ_MODELS_READ_ONLY",
};

static int reset_env(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof all_vars / sizeof all_vars[0]; i++)
        unsetenv(all_vars[i]);
    setenv("TRAINQ_DATABASE_URL", "postgresql://u:p@127.0.0.1:5432/db", 1);
    setenv("TRAINQ_AMQP_URL", "amqp://u:p@127.0.0.1:5672/%2f", 1);
    setenv("TRAINQ_JWT_SECRET", "0123456789abcdef-secret", 1);
    setenv("TRAINQ_WORKER_ID", "w1", 1);
    return 0;
}

/* Loads with the given argv; returns the code and leaves the error line in eb. */
static int load(tq_config *c, unsigned prog, tq_errbuf *eb, int argc, char **argv)
{
    memset(eb, 0, sizeof *eb);
    return tq_config_load(c, prog, argc, argv, eb);
}

static void test_defaults_match_the_design(void **state)
{
    (void)state;
    tq_config c;
    tq_errbuf eb;
    char *argv[] = {"trainq-producer"};
    assert_int_equal(load(&c, TQ_PROG_PRODUCER, &eb, 1, argv), TQ_OK);
    assert_string_equal(c.http_host, "127.0.0.1");
    assert_int_equal(c.http_port, 3000);
    assert_string_equal(c.jwt_alg, "HS256");
    assert_string_equal(c.jwt_audience, "authenticated"); /* Supabase's user tokens */
    assert_int_equal(c.submit_rate_per_minute, 10);
    assert_int_equal(c.max_body_bytes, 65536);
    tq_config_free(&c);

    char *argv2[] = {"trainq-consumer"};
    assert_int_equal(load(&c, TQ_PROG_CONSUMER, &eb, 1, argv2), TQ_OK);
    assert_string_equal(c.gpus, "none");
    assert_int_equal(c.gpus_mode, TQ_GPUS_CFG_NONE);
    assert_int_equal(c.slots, 1);
    assert_string_equal(c.docker_host, "unix:///var/run/docker.sock");
    assert_int_equal(c.lease_seconds, 30);
    assert_int_equal(c.remove_containers, 1);
    assert_int_equal(c.models_read_only, 0);
    assert_int_equal(c.shm_bytes, 2LL << 30);
    tq_config_free(&c);
}

static void test_flags_override_environment(void **state)
{
    (void)state;
    setenv("TRAINQ_HTTP_ADDR", "127.0.0.1:4000", 1);
    tq_config c;
    tq_errbuf eb;
    char *argv[] = {"trainq-producer", "--http-addr=0.0.0.0:5000", "--http-threads", "8"};
    assert_int_equal(load(&c, TQ_PROG_PRODUCER, &eb, 4, argv), TQ_OK);
    assert_string_equal(c.http_host, "0.0.0.0");
    assert_int_equal(c.http_port, 5000);
    assert_int_equal(c.http_threads, 8);
    tq_config_free(&c);
}

typedef struct {
    unsigned prog;
    const char *var, *value; /* set before loading */
    const char *expect;      /* substring of the one error line */
} bad_case;

static const bad_case bad_cases[] = {
    {TQ_PROG_PRODUCER, "TRAINQ_HTTP_ADDR", "localhost", "invalid TRAINQ_HTTP_ADDR \"localhost\": expected host:port"},
    {TQ_PROG_PRODUCER, "TRAINQ_HTTP_ADDR", "127.0.0.1:70000", "invalid TRAINQ_HTTP_ADDR"},
    {TQ_PROG_PRODUCER, "TRAINQ_HTTP_THREADS", "0", "invalid TRAINQ_HTTP_THREADS \"0\": expected an integer from 1 to 256"},
    {TQ_PROG_PRODUCER, "TRAINQ_HTTP_THREADS", "4x", "invalid TRAINQ_HTTP_THREADS \"4x\""},
    {TQ_PROG_PRODUCER, "TRAINQ_JWT_ALG", "none", "invalid TRAINQ_JWT_ALG \"none\": expected one of HS256"},
    {TQ_PROG_PRODUCER, "TRAINQ_JWT_ALG", "RS256", "missing TRAINQ_JWT_PUBLIC_KEY_FILE"},
    {TQ_PROG_PRODUCER, "TRAINQ_JWT_SECRET", "short", "invalid TRAINQ_JWT_SECRET: must be at least 16 bytes"},
    {TQ_PROG_PRODUCER, "TRAINQ_JWT_SECRET", "", "missing TRAINQ_JWT_SECRET"},
    {TQ_PROG_PRODUCER, "TRAINQ_JWT_PUBLIC_KEY_FILE", "/nonexistent.pem", "conflicting TRAINQ_JWT_PUBLIC_KEY_FILE"},
    {TQ_PROG_PRODUCER, "TRAINQ_MAX_BODY_BYTES", "10m", "invalid TRAINQ_MAX_BODY_BYTES \"10m\""},
    {TQ_PROG_PRODUCER, "TRAINQ_AMQP_URL", "http://x", "invalid TRAINQ_AMQP_URL"},
    {TQ_PROG_PRODUCER, "TRAINQ_DATABASE_URL", "", "invalid TRAINQ_DATABASE_URL: must not be empty"},
    {TQ_PROG_PRODUCER, "TRAINQ_LOG_LEVEL", "loud", "invalid TRAINQ_LOG_LEVEL \"loud\""},
    {TQ_PROG_CONSUMER, "TRAINQ_GPUS", "0,,1", "invalid TRAINQ_GPUS \"0,,1\": expected none, all or device ids"},
    {TQ_PROG_CONSUMER, "TRAINQ_GPUS", "gpu0", "invalid TRAINQ_GPUS"},
    {TQ_PROG_CONSUMER, "TRAINQ_GPUS", "1,", "invalid TRAINQ_GPUS"},
    {TQ_PROG_CONSUMER, "TRAINQ_GPUS", "0,0", "invalid TRAINQ_GPUS \"0,0\": device id 0 is listed twice"},
    {TQ_PROG_CONSUMER, "TRAINQ_GPUS", "1,2,01", "invalid TRAINQ_GPUS \"1,2,01\": device id 1 is listed twice"},
    {TQ_PROG_CONSUMER, "TRAINQ_GPUS", "0,12345678", "invalid TRAINQ_GPUS \"0,12345678\": device id \"12345678\" is longer than 7 digits"},
    {TQ_PROG_CONSUMER, "TRAINQ_GPUS", "0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63,64", "like 0,1,2 (at most 64)"},
    {TQ_PROG_CONSUMER, "TRAINQ_SLOTS", "65", "invalid TRAINQ_SLOTS \"65\": expected an integer from 1 to 64"},
    {TQ_PROG_CONSUMER, "TRAINQ_HEARTBEAT_SECONDS", "20", "invalid TRAINQ_HEARTBEAT_SECONDS 20: must be at most half of TRAINQ_LEASE_SECONDS (30)"},
    {TQ_PROG_CONSUMER, "TRAINQ_WORKER_ID", "a b", "invalid TRAINQ_WORKER_ID \"a b\""},
    {TQ_PROG_CONSUMER, "TRAINQ_MEMORY_LIMIT", "12q", "invalid TRAINQ_MEMORY_LIMIT \"12q\""},
    {TQ_PROG_CONSUMER, "TRAINQ_DOCKER_HOST", "tcp://1.2.3.4:2375", "invalid TRAINQ_DOCKER_HOST"},
    {TQ_PROG_CONSUMER, "TRAINQ_REMOVE_CONTAINERS", "maybe", "invalid TRAINQ_REMOVE_CONTAINERS \"maybe\": expected true or false"},
    {TQ_PROG_CONSUMER, "TRAINQ_CPUS", "nan", "invalid TRAINQ_CPUS \"nan\""},
    {TQ_PROG_CONSUMER, "TRAINQ_DATA_DIR", "relative/dir", "invalid TRAINQ_DATA_DIR \"relative/dir\": expected an absolute path"},
    {TQ_PROG_CONSUMER, "TRAINQ_METRICS_ADDR", ":9101", "invalid TRAINQ_METRICS_ADDR"},
};

static void test_every_bad_value_gets_one_clear_line(void **state)
{
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        const bad_case *b = &bad_cases[i];
        reset_env(state);
        setenv(b->var, b->value, 1);
        tq_config c;
        tq_errbuf eb;
        char *argv[] = {"prog"};
        int rc = load(&c, b->prog, &eb, 1, argv);
        if (rc != TQ_ERR_CONFIG || !strstr(eb.msg, b->expect) || strchr(eb.msg, '\n'))
            fail_msg("%s=%s: rc %d, line \"%s\", wanted \"%s\"", b->var, b->value, rc, eb.msg,
                     b->expect);
        tq_config_free(&c);
    }
}

static void test_secrets_are_never_echoed(void **state)
{
    (void)state;
    setenv("TRAINQ_AMQP_URL", "http://user:hunter2@host", 1);
    tq_config c;
    tq_errbuf eb;
    char *argv[] = {"trainq-producer"};
    assert_int_equal(load(&c, TQ_PROG_PRODUCER, &eb, 1, argv), TQ_ERR_CONFIG);
    assert_null(strstr(eb.msg, "hunter2"));
    tq_config_free(&c);
}

static void test_missing_required_and_unknown_flags(void **state)
{
    (void)state;
    unsetenv("TRAINQ_DATABASE_URL");
    tq_config c;
    tq_errbuf eb;
    char *argv[] = {"trainq-consumer"};
    assert_int_equal(load(&c, TQ_PROG_CONSUMER, &eb, 1, argv), TQ_ERR_CONFIG);
    assert_non_null(strstr(eb.msg, "missing TRAINQ_DATABASE_URL (or --database-url)"));
    tq_config_free(&c);

    reset_env(state);
    char *argv2[] = {"trainq-consumer", "--no-such-flag=1"};
    assert_int_equal(load(&c, TQ_PROG_CONSUMER, &eb, 2, argv2), TQ_ERR_CONFIG);
    assert_non_null(strstr(eb.msg, "unknown option \"--no-such-flag\""));
    tq_config_free(&c);

    /* A producer flag is unknown to the consumer. */
    char *argv3[] = {"trainq-consumer", "--http-addr", "127.0.0.1:1"};
    assert_int_equal(load(&c, TQ_PROG_CONSUMER, &eb, 3, argv3), TQ_ERR_CONFIG);
    tq_config_free(&c);

    char *argv4[] = {"trainq-consumer", "--slots"};
    assert_int_equal(load(&c, TQ_PROG_CONSUMER, &eb, 2, argv4), TQ_ERR_CONFIG);
    assert_non_null(strstr(eb.msg, "missing value for --slots"));
    tq_config_free(&c);
}

static void test_gpu_ids_make_one_slot_each(void **state)
{
    (void)state;
    setenv("TRAINQ_GPUS", "0,2,3", 1);
    setenv("TRAINQ_SLOTS", "9", 1); /* ignored with explicit ids */
    tq_config c;
    tq_errbuf eb;
    char *argv[] = {"trainq-consumer"};
    assert_int_equal(load(&c, TQ_PROG_CONSUMER, &eb, 1, argv), TQ_OK);
    assert_int_equal(c.gpus_mode, TQ_GPUS_CFG_IDS);
    assert_int_equal(c.slots, 3);
    assert_string_equal(tq_config_slot_gpu(&c, 0), "0");
    assert_string_equal(tq_config_slot_gpu(&c, 1), "2");
    assert_string_equal(tq_config_slot_gpu(&c, 2), "3");
    assert_null(tq_config_slot_gpu(&c, 3));
    tq_config_free(&c);

    setenv("TRAINQ_GPUS", "5,1234567", 1); /* the longest id is kept whole */
    assert_int_equal(load(&c, TQ_PROG_CONSUMER, &eb, 1, argv), TQ_OK);
    assert_int_equal(c.slots, 2);
    assert_string_equal(tq_config_slot_gpu(&c, 1), "1234567");
    tq_config_free(&c);

    setenv("TRAINQ_GPUS", "all", 1);
    assert_int_equal(load(&c, TQ_PROG_CONSUMER, &eb, 1, argv), TQ_OK);
    assert_int_equal(c.gpus_mode, TQ_GPUS_CFG_ALL);
    assert_int_equal(c.slots, 1);
    assert_null(tq_config_slot_gpu(&c, 0));
    tq_config_free(&c);
}

static void test_sizes_and_addresses_parse(void **state)
{
    (void)state;
    long long v;
    assert_int_equal(tq_parse_bytes("0", &v), TQ_OK);
    assert_int_equal(v, 0);
    assert_int_equal(tq_parse_bytes("512m", &v), TQ_OK);
    assert_int_equal(v, 512LL << 20);
    assert_int_equal(tq_parse_bytes("16G", &v), TQ_OK);
    assert_int_equal(v, 16LL << 30);
    assert_int_equal(tq_parse_bytes("64kb", &v), TQ_OK);
    assert_int_equal(v, 65536);
    assert_int_equal(tq_parse_bytes("-1", &v), TQ_ERR_INVALID);
    assert_int_equal(tq_parse_bytes("1.5g", &v), TQ_ERR_INVALID);
    assert_int_equal(tq_parse_bytes("99999999999t", &v), TQ_ERR_INVALID);
    assert_int_equal(tq_parse_bytes("", &v), TQ_ERR_INVALID);

    char host[64];
    int port;
    assert_int_equal(tq_parse_hostport("[::1]:3000", host, sizeof host, &port), TQ_OK);
    assert_string_equal(host, "::1");
    assert_int_equal(port, 3000);
    assert_int_equal(tq_parse_hostport("localhost:0", host, sizeof host, &port), TQ_OK);
    assert_int_equal(port, 0);
    assert_int_equal(tq_parse_hostport("host:", host, sizeof host, &port), TQ_ERR_INVALID);
    assert_int_equal(tq_parse_hostport("a b:1", host, sizeof host, &port), TQ_ERR_INVALID);
    assert_int_equal(tq_parse_hostport("h:123456", host, sizeof host, &port), TQ_ERR_INVALID);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_defaults_match_the_design, reset_env),
        cmocka_unit_test_setup(test_flags_override_environment, reset_env),
        cmocka_unit_test_setup(test_every_bad_value_gets_one_clear_line, reset_env),
        cmocka_unit_test_setup(test_secrets_are_never_echoed, reset_env),
        cmocka_unit_test_setup(test_missing_required_and_unknown_flags, reset_env),
        cmocka_unit_test_setup(test_gpu_ids_make_one_slot_each, reset_env),
        cmocka_unit_test_setup(test_sizes_and_addresses_parse, reset_env),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
