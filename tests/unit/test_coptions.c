/*
 * The consumer's options (consumer/coptions): defaults, one clear line for every bad value,
 * GPU ids into slots, and the publisher keys it accepts.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "coptions.h"
#include "options_env.h"

/* Loads with the given argv; returns the code and leaves the error line in eb. */
static int load(tq_config *c, tq_errbuf *eb, int argc, char **argv)
{
    memset(eb, 0, sizeof *eb);
    return tq_consumer_config_load(c, argc, argv, eb);
}

static void test_defaults_match_the_design(void **state)
{
    (void)state;
    tq_config c;
    tq_errbuf eb;
    char *argv2[] = {"trainq-consumer"};
    assert_int_equal(load(&c, &eb, 1, argv2), TQ_OK);
    assert_string_equal(c.gpus, "none");
    assert_int_equal(c.gpus_mode, TQ_GPUS_CFG_NONE);
    assert_int_equal(c.slots, 1);
    assert_string_equal(c.docker_host, "unix:///var/run/docker.sock");
    assert_int_equal(c.lease_seconds, 30);
    assert_int_equal(c.remove_containers, 1);
    assert_int_equal(c.models_read_only, 0);
    assert_int_equal(c.shm_bytes, 2LL << 30);
    assert_int_equal(c.relay_batch, 100);
    assert_string_equal(c.log_level, "info");
    tq_consumer_config_free(&c);
}

static const bad_case bad_cases[] = {
    {"TRAINQ_GPUS", "0,,1", "invalid TRAINQ_GPUS \"0,,1\": expected none, all or device ids"},
    {"TRAINQ_GPUS", "gpu0", "invalid TRAINQ_GPUS"},
    {"TRAINQ_GPUS", "1,", "invalid TRAINQ_GPUS"},
    {"TRAINQ_GPUS", "0,0", "invalid TRAINQ_GPUS \"0,0\": device id 0 is listed twice"},
    {"TRAINQ_GPUS", "1,2,01", "invalid TRAINQ_GPUS \"1,2,01\": device id 1 is listed twice"},
    {"TRAINQ_GPUS", "0,12345678",
     "invalid TRAINQ_GPUS \"0,12345678\": device id \"12345678\" is longer than 7 digits"},
    {"TRAINQ_GPUS",
     "0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,"
     "34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63,64",
     "like 0,1,2 (at most 64)"},
    {"TRAINQ_SLOTS", "65", "invalid TRAINQ_SLOTS \"65\": expected an integer from 1 to 64"},
    {"TRAINQ_HEARTBEAT_SECONDS", "20",
     "invalid TRAINQ_HEARTBEAT_SECONDS 20: must be at most half of TRAINQ_LEASE_SECONDS (30)"},
    {"TRAINQ_WORKER_ID", "a b", "invalid TRAINQ_WORKER_ID \"a b\""},
    {"TRAINQ_MEMORY_LIMIT", "12q", "invalid TRAINQ_MEMORY_LIMIT \"12q\""},
    {"TRAINQ_MEMORY_LIMIT", "1",
     "invalid TRAINQ_MEMORY_LIMIT of 1 bytes: expected 0 (no limit) or at least 6m"},
    {"TRAINQ_MEMORY_LIMIT", "1m",
     "invalid TRAINQ_MEMORY_LIMIT of 1048576 bytes: expected 0 (no limit) or at least 6m"},
    {"TRAINQ_TRAINING_IMAGE", "",
     "invalid TRAINQ_TRAINING_IMAGE \"\": expected an image reference"},
    {"TRAINQ_TRAINING_IMAGE", "train ing", "invalid TRAINQ_TRAINING_IMAGE \"train ing\""},
    {"TRAINQ_RETRY_POLICY", "", "invalid TRAINQ_RETRY_POLICY: empty; `none` turns retries off"},
    {"TRAINQ_CPUS", "0.0001", "invalid TRAINQ_CPUS 0.0001: expected 0 (no limit) or at least 0.01"},
    {"TRAINQ_CPUS", "0x10", "invalid TRAINQ_CPUS \"0x10\": expected a number from 0 to 1024"},
    {"TRAINQ_CPUS", "1e3", "invalid TRAINQ_CPUS \"1e3\": expected a number from 0 to 1024"},
    {"TRAINQ_DOCKER_HOST", "tcp://1.2.3.4:2375", "invalid TRAINQ_DOCKER_HOST"},
    {"TRAINQ_REMOVE_CONTAINERS", "maybe",
     "invalid TRAINQ_REMOVE_CONTAINERS \"maybe\": expected true or false"},
    {"TRAINQ_CPUS", "nan", "invalid TRAINQ_CPUS \"nan\""},
    {"TRAINQ_DATA_DIR", "relative/dir",
     "invalid TRAINQ_DATA_DIR \"relative/dir\": expected an absolute path"},
    {"TRAINQ_METRICS_ADDR", ":9101", "invalid TRAINQ_METRICS_ADDR"},
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
        int rc = load(&c, &eb, 1, argv);
        if (rc != TQ_ERR_CONFIG || !strstr(eb.msg, b->expect) || strchr(eb.msg, '\n'))
            fail_msg("%s=%s: rc %d, line \"%s\", wanted \"%s\"", b->var, b->value, rc, eb.msg,
                     b->expect);
        tq_consumer_config_free(&c);
    }
}

static void test_missing_required_and_unknown_flags(void **state)
{
    (void)state;
    unsetenv("TRAINQ_DATABASE_URL");
    tq_config c;
    tq_errbuf eb;
    char *argv[] = {"trainq-consumer"};
    assert_int_equal(load(&c, &eb, 1, argv), TQ_ERR_CONFIG);
    assert_non_null(strstr(eb.msg, "missing TRAINQ_DATABASE_URL (or --database-url)"));
    tq_consumer_config_free(&c);

    reset_env(state);
    char *argv2[] = {"trainq-consumer", "--no-such-flag=1"};
    assert_int_equal(load(&c, &eb, 2, argv2), TQ_ERR_CONFIG);
    assert_non_null(strstr(eb.msg, "unknown option \"--no-such-flag\""));
    tq_consumer_config_free(&c);

    /* A producer flag is unknown to the consumer. */
    char *argv3[] = {"trainq-consumer", "--http-addr", "127.0.0.1:1"};
    assert_int_equal(load(&c, &eb, 3, argv3), TQ_ERR_CONFIG);
    tq_consumer_config_free(&c);

    char *argv4[] = {"trainq-consumer", "--slots"};
    assert_int_equal(load(&c, &eb, 2, argv4), TQ_ERR_CONFIG);
    assert_non_null(strstr(eb.msg, "missing value for --slots"));
    tq_consumer_config_free(&c);
}

static void test_gpu_ids_make_one_slot_each(void **state)
{
    (void)state;
    setenv("TRAINQ_GPUS", "0,2,3", 1);
    setenv("TRAINQ_SLOTS", "9", 1); /* ignored with explicit ids */
    tq_config c;
    tq_errbuf eb;
    char *argv[] = {"trainq-consumer"};
    assert_int_equal(load(&c, &eb, 1, argv), TQ_OK);
    assert_int_equal(c.gpus_mode, TQ_GPUS_CFG_IDS);
    assert_int_equal(c.slots, 3);
    assert_string_equal(tq_config_slot_gpu(&c, 0), "0");
    assert_string_equal(tq_config_slot_gpu(&c, 1), "2");
    assert_string_equal(tq_config_slot_gpu(&c, 2), "3");
    assert_null(tq_config_slot_gpu(&c, 3));
    tq_consumer_config_free(&c);

    setenv("TRAINQ_GPUS", "5,1234567", 1); /* the longest id is kept whole */
    assert_int_equal(load(&c, &eb, 1, argv), TQ_OK);
    assert_int_equal(c.slots, 2);
    assert_string_equal(tq_config_slot_gpu(&c, 1), "1234567");
    tq_consumer_config_free(&c);

    setenv("TRAINQ_GPUS", "all", 1);
    assert_int_equal(load(&c, &eb, 1, argv), TQ_OK);
    assert_int_equal(c.gpus_mode, TQ_GPUS_CFG_ALL);
    assert_int_equal(c.slots, 1);
    assert_null(tq_config_slot_gpu(&c, 0));
    tq_consumer_config_free(&c);
}

/* TRAINQ_PUBLISH_KEYS / TRAINQ_PUBLISH_KEYS_FILE (shared/tq_sign.h), as the consumer
 * checks deliveries and its relay signs with them. */
static void test_publish_keys_are_optional_and_checked_at_start(void **state)
{
    (void)state;
    tq_config c;
    tq_errbuf eb;
    char *argv[] = {"trainq"};
    assert_int_equal(load(&c, &eb, 1, argv), TQ_OK);
    assert_int_equal(c.publish_keyring.n, 0);
    tq_consumer_config_free(&c);

    char text[256];
    snprintf(text, sizeof text, "new:%s,old:%s", SECRET_B, SECRET_A);
    setenv("TRAINQ_PUBLISH_KEYS", text, 1);
    assert_int_equal(load(&c, &eb, 1, argv), TQ_OK);
    assert_int_equal(c.publish_keyring.n, 2);
    assert_string_equal(c.publish_keyring.keys[0].id, "new");
    tq_consumer_config_free(&c);
    assert_int_equal(c.publish_keyring.n, 0);

    setenv("TRAINQ_PUBLISH_KEYS", "a:tooshort", 1);
    assert_int_equal(load(&c, &eb, 1, argv), TQ_ERR_CONFIG);
    assert_string_equal(eb.msg, "invalid TRAINQ_PUBLISH_KEYS: key \"a\" has a secret of 8 "
                                "bytes; at least 32 are required");
    tq_consumer_config_free(&c);
}

static void test_publish_keys_from_a_file(void **state)
{
    (void)state;
    char path[] = "/tmp/tq-test-coptions-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    char text[256];
    int n = snprintf(text, sizeof text, "new:%s\nold:%s\n", SECRET_B, SECRET_A);
    assert_int_equal(write(fd, text, (size_t)n), n);
    close(fd);

    tq_config c;
    tq_errbuf eb;
    char *argv[] = {"trainq"};
    setenv("TRAINQ_PUBLISH_KEYS_FILE", path, 1);
    assert_int_equal(load(&c, &eb, 1, argv), TQ_OK);
    assert_int_equal(c.publish_keyring.n, 2);
    assert_string_equal(c.publish_keyring.keys[1].id, "old");
    assert_int_equal(c.publish_keyring.keys[1].secret_len, strlen(SECRET_A));
    tq_consumer_config_free(&c);

    /* both set: which one wins would be a guess */
    setenv("TRAINQ_PUBLISH_KEYS", text, 1);
    assert_int_equal(load(&c, &eb, 1, argv), TQ_ERR_CONFIG);
    assert_non_null(strstr(eb.msg, "conflicting TRAINQ_PUBLISH_KEYS_FILE"));
    tq_consumer_config_free(&c);
    unsetenv("TRAINQ_PUBLISH_KEYS");

    unlink(path);
    assert_int_equal(load(&c, &eb, 1, argv), TQ_ERR_CONFIG);
    assert_non_null(strstr(eb.msg, "cannot read TRAINQ_PUBLISH_KEYS_FILE"));
    tq_consumer_config_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_defaults_match_the_design, reset_env),
        cmocka_unit_test_setup(test_every_bad_value_gets_one_clear_line, reset_env),
        cmocka_unit_test_setup(test_missing_required_and_unknown_flags, reset_env),
        cmocka_unit_test_setup(test_gpu_ids_make_one_slot_each, reset_env),
        cmocka_unit_test_setup(test_publish_keys_are_optional_and_checked_at_start, reset_env),
        cmocka_unit_test_setup(test_publish_keys_from_a_file, reset_env),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
