/*
 * The configuration machinery (shared/tq_config) with a small table of its own: every option
 * type, env vs flags, the shared options' rules, and --help/--version as "done, exit 0"
 * rather than an error. The programs' own tables are tested in test_poptions/test_coptions.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tq_config.h"
#include "tq_program.h"

typedef struct {
    char *database_url;
    char *amqp_url;
    char *log_level;
    int relay_batch;
    char *publish_keys;
    char *publish_keys_file;
    tq_sign_keys publish_keyring;
    char *name;
    int count;
    long long size;
    double ratio;
    int on;
    int checked; /* set by check */
} test_cfg;

static const tq_opt test_opts[] = {
    TQ_OPT_DATABASE_URL(test_cfg),
    TQ_OPT_AMQP_URL(test_cfg),
    TQ_OPT_LOG_LEVEL(test_cfg),
    {"TQTEST_NAME", "name", TQ_OPT_STR, offsetof(test_cfg, name), "dflt", 0, 0, NULL, "a name"},
    {"TQTEST_COUNT", "count", TQ_OPT_INT, offsetof(test_cfg, count), "3", 1, 9, NULL, "a count"},
    {"TQTEST_SIZE", "size", TQ_OPT_BYTES, offsetof(test_cfg, size), "1k", 0, 1 << 20, NULL,
     "a size"},
    {"TQTEST_RATIO", "ratio", TQ_OPT_DOUBLE, offsetof(test_cfg, ratio), "0.5", 0, 1, NULL,
     "a ratio"},
    {"TQTEST_ON", "on", TQ_OPT_BOOL, offsetof(test_cfg, on), "false", 0, 0, NULL, "a switch"},
    TQ_OPT_RELAY_BATCH(test_cfg),
    TQ_OPT_PUBLISH_KEYS(test_cfg),
    TQ_OPT_PUBLISH_KEYS_FILE(test_cfg),
};

static int test_check(void *cfg, tq_errbuf *eb)
{
    test_cfg *c = cfg;
    c->checked = 1;
    return tq_config_check_common(c->database_url, c->amqp_url, c->publish_keys,
                                  c->publish_keys_file, &c->publish_keyring, eb);
}

static void test_release(void *cfg)
{
    tq_sign_keys_wipe(&((test_cfg *)cfg)->publish_keyring);
}

static const tq_options test_options = {
    .opts = test_opts,
    .n_opts = sizeof test_opts / sizeof test_opts[0],
    .size = sizeof(test_cfg),
    .check = test_check,
    .release = test_release,
};

static int reset_env(void **state)
{
    (void)state;
    const char *vars[] = {"TQTEST_NAME",        "TQTEST_COUNT",        "TQTEST_SIZE",
                          "TQTEST_RATIO",       "TQTEST_ON",           "TRAINQ_LOG_LEVEL",
                          "TRAINQ_RELAY_BATCH", "TRAINQ_PUBLISH_KEYS", "TRAINQ_PUBLISH_KEYS_FILE"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        unsetenv(vars[i]);
    setenv("TRAINQ_DATABASE_URL", "postgresql://u:p@127.0.0.1:5432/db", 1);
    setenv("TRAINQ_AMQP_URL", "amqp://u:p@127.0.0.1:5672/%2f", 1);
    return 0;
}

static int load(test_cfg *c, tq_errbuf *eb, int argc, char **argv)
{
    memset(eb, 0, sizeof *eb);
    return tq_config_load(&test_options, c, argc, argv, eb);
}

static void test_every_type_takes_defaults_env_and_flags(void **state)
{
    (void)state;
    test_cfg c;
    tq_errbuf eb;
    char *argv[] = {"prog"};
    assert_int_equal(load(&c, &eb, 1, argv), TQ_OK);
    assert_string_equal(c.name, "dflt");
    assert_int_equal(c.count, 3);
    assert_int_equal(c.size, 1024);
    assert_true(c.ratio == 0.5);
    assert_int_equal(c.on, 0);
    assert_string_equal(c.log_level, "info");
    assert_int_equal(c.relay_batch, 100);
    assert_string_equal(c.publish_keys, "");
    assert_int_equal(c.checked, 1);
    tq_config_free(&test_options, &c);
    assert_null(c.name);

    setenv("TQTEST_COUNT", "4", 1);
    setenv("TQTEST_NAME", "from-env", 1);
    char *argv2[] = {"prog", "--count=7", "--size", "2k", "--on", "yes", "--ratio=1"};
    assert_int_equal(load(&c, &eb, 7, argv2), TQ_OK);
    assert_string_equal(c.name, "from-env");
    assert_int_equal(c.count, 7); /* the flag wins */
    assert_int_equal(c.size, 2048);
    assert_true(c.ratio == 1.0);
    assert_int_equal(c.on, 1);
    tq_config_free(&test_options, &c);

    /* ... also over a value the environment gets wrong, which is then not read at all */
    setenv("TQTEST_COUNT", "0", 1);
    setenv("TQTEST_ON", "maybe", 1);
    char *argv3[] = {"prog", "--count", "5", "--on=no"};
    assert_int_equal(load(&c, &eb, 4, argv3), TQ_OK);
    assert_int_equal(c.count, 5);
    assert_int_equal(c.on, 0);
    tq_config_free(&test_options, &c);
    char *argv4[] = {"prog", "--on=no"}; /* not overridden: still refused */
    assert_int_equal(load(&c, &eb, 2, argv4), TQ_ERR_CONFIG);
    assert_non_null(strstr(eb.msg, "TQTEST_COUNT"));
    tq_config_free(&test_options, &c);
    unsetenv("TQTEST_COUNT");
    unsetenv("TQTEST_ON");
}

static void test_bad_values_name_the_variable_and_the_range(void **state)
{
    static const struct {
        const char *var, *value, *expect;
    } cases[] = {
        {"TQTEST_COUNT", "10", "invalid TQTEST_COUNT \"10\": expected an integer from 1 to 9"},
        {"TQTEST_SIZE", "2m",
         "invalid TQTEST_SIZE \"2m\": expected a size from 0 to 1048576 bytes"},
        {"TQTEST_RATIO", "1.5", "invalid TQTEST_RATIO \"1.5\": expected a number from 0 to 1"},
        /* numbers as written: no sign but '-', no blanks, hex, exponents, inf or nan */
        {"TQTEST_COUNT", " 5", "invalid TQTEST_COUNT \" 5\": expected an integer"},
        {"TQTEST_COUNT", "+5", "invalid TQTEST_COUNT \"+5\": expected an integer"},
        {"TQTEST_COUNT", "", "invalid TQTEST_COUNT \"\": expected an integer"},
        {"TQTEST_RATIO", "0x0.8", "invalid TQTEST_RATIO \"0x0.8\": expected a number"},
        {"TQTEST_RATIO", "5e-1", "invalid TQTEST_RATIO \"5e-1\": expected a number"},
        {"TQTEST_RATIO", ".5", "invalid TQTEST_RATIO \".5\": expected a number"},
        {"TQTEST_RATIO", "0.", "invalid TQTEST_RATIO \"0.\": expected a number"},
        {"TQTEST_RATIO", "nan", "invalid TQTEST_RATIO \"nan\": expected a number"},
        {"TQTEST_ON", "maybe", "invalid TQTEST_ON \"maybe\": expected true or false"},
        {"TRAINQ_LOG_LEVEL", "loud", "invalid TRAINQ_LOG_LEVEL \"loud\": expected one of debug"},
        {"TRAINQ_RELAY_BATCH", "0", "invalid TRAINQ_RELAY_BATCH \"0\": expected an integer"},
        {"TRAINQ_AMQP_URL", "http://u:hunter2@h", "invalid TRAINQ_AMQP_URL: expected amqp://"},
        {"TRAINQ_DATABASE_URL", "", "invalid TRAINQ_DATABASE_URL: must not be empty"},
        {"TRAINQ_DATABASE_URL", "abc", "invalid TRAINQ_DATABASE_URL: expected postgresql://"},
        {"TRAINQ_DATABASE_URL", "postgresql://u:hunter2@h/db?bogus=1",
         "invalid TRAINQ_DATABASE_URL: expected postgresql://"},
        {"TRAINQ_DATABASE_URL", "host=h password=hunter2 bogus=1",
         "invalid TRAINQ_DATABASE_URL: expected postgresql://"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        reset_env(state);
        setenv(cases[i].var, cases[i].value, 1);
        test_cfg c;
        tq_errbuf eb;
        char *argv[] = {"prog"};
        int rc = load(&c, &eb, 1, argv);
        if (rc != TQ_ERR_CONFIG || !strstr(eb.msg, cases[i].expect) || strstr(eb.msg, "hunter2"))
            fail_msg("%s=%s: rc %d, line \"%s\"", cases[i].var, cases[i].value, rc, eb.msg);
        tq_config_free(&test_options, &c);
    }
}

static void test_help_and_version_are_done_not_an_error(void **state)
{
    (void)state;
    const char *asks[] = {"--help", "-h", "--version", "--config-markdown"};
    for (size_t i = 0; i < sizeof asks / sizeof asks[0]; i++) {
        test_cfg c;
        tq_errbuf eb;
        char *argv[] = {"prog", (char *)asks[i]};
        assert_int_equal(load(&c, &eb, 2, argv), TQ_ERR_EXIT_OK);
        tq_config_free(&test_options, &c);
    }
    /* Negative like every tq_err, with its own message, and main exits 0 for it. */
    assert_true(TQ_ERR_EXIT_OK < 0);
    /* with a value they are a mistake, said as such (not "unknown option --help") */
    char *bad[] = {"prog", "--help=1"};
    test_cfg c;
    tq_errbuf eb;
    assert_int_equal(load(&c, &eb, 2, bad), TQ_ERR_CONFIG);
    assert_string_equal(eb.msg, "--help takes no value");
    tq_config_free(&test_options, &c);
    assert_string_not_equal(tq_strerror(TQ_ERR_EXIT_OK), "unknown error");
    assert_int_equal(tq_program_exit_code(TQ_ERR_EXIT_OK), 0);
    assert_int_equal(tq_program_exit_code(TQ_ERR_CONFIG), 2);
    assert_int_equal(tq_program_exit_code(TQ_ERR_NOMEM), 2);
}

static void test_string_values_are_found_by_variable(void **state)
{
    (void)state;
    setenv("TRAINQ_LOG_LEVEL", "warn", 1);
    test_cfg c;
    tq_errbuf eb;
    char *argv[] = {"prog"};
    assert_int_equal(load(&c, &eb, 1, argv), TQ_OK);
    assert_string_equal(tq_config_str(&test_options, &c, "TRAINQ_LOG_LEVEL"), "warn");
    assert_string_equal(tq_config_str(&test_options, &c, "TQTEST_NAME"), "dflt");
    assert_null(tq_config_str(&test_options, &c, "TQTEST_COUNT")); /* not a string */
    assert_null(tq_config_str(&test_options, &c, "TRAINQ_NO_SUCH"));
    tq_config_free(&test_options, &c);
}

static void test_markdown_lists_every_row_in_table_order(void **state)
{
    (void)state;
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    tq_config_print_markdown(f, &test_options);
    fclose(f);
    assert_non_null(strstr(text, "| `TRAINQ_DATABASE_URL` | `--database-url` | `(required)` |"));
    assert_non_null(strstr(text, "| `TRAINQ_PUBLISH_KEYS` | `--publish-keys` | `(empty)` |"));
    assert_non_null(strstr(text, "| `TQTEST_COUNT` | `--count` | `3` | 1 – 9 | a count |"));
    assert_true(strstr(text, "TQTEST_ON") < strstr(text, "TRAINQ_RELAY_BATCH"));
    free(text);
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
        cmocka_unit_test_setup(test_every_type_takes_defaults_env_and_flags, reset_env),
        cmocka_unit_test_setup(test_bad_values_name_the_variable_and_the_range, reset_env),
        cmocka_unit_test_setup(test_help_and_version_are_done_not_an_error, reset_env),
        cmocka_unit_test_setup(test_string_values_are_found_by_variable, reset_env),
        cmocka_unit_test_setup(test_markdown_lists_every_row_in_table_order, reset_env),
        cmocka_unit_test_setup(test_sizes_and_addresses_parse, reset_env),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
