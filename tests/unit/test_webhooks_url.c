/* producer/webhooks.c: the rule a webhook URL must pass at registration (no DNS, no
 * connection) and the retry schedule. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include "admit.h"
#include "webhooks.h"

static int ok(const char *url, int loop)
{
    char why[128] = "";
    tq_webhook_rule rule = {.allow_loopback = loop};
    return tq_webhook_url_check(url, &rule, why, sizeof why) == 0;
}

static void refused_with(const char *url, int loop, const char *want)
{
    char why[128] = "";
    tq_webhook_rule rule = {.allow_loopback = loop};
    assert_int_equal(tq_webhook_url_check(url, &rule, why, sizeof why), -1);
    if (!strstr(why, want))
        fail_msg("%s: reason \"%s\" lacks \"%s\"", url, why, want);
}

static void test_https_public_accepted(void **s)
{
    (void)s;
    assert_true(ok("https://hooks.example.com/trainq", 0));
    assert_true(ok("https://93.184.216.34:8443/x?y=1", 0));
    assert_true(ok("https://[2606:2800:220:1:248:1893:25c8:1946]/x", 0));
}

static void test_scheme(void **s)
{
    (void)s;
    refused_with("http://hooks.example.com/", 0, "https");
    refused_with("ftp://hooks.example.com/", 1, "https");
    refused_with("hooks.example.com/x", 0, "");
    refused_with("", 0, "non-empty");
    assert_true(ok("http://127.0.0.1:8080/hook", 1));
    assert_true(ok("HTTPS://hooks.example.com/x", 0));
    /* curl would read a host out of these ("x"); the URL must name it after "//" */
    refused_with("https:///x", 0, "absolute");
    refused_with("https:////hooks.example.com/x", 0, "absolute");
    refused_with("https:hooks.example.com/x", 0, "absolute");
    refused_with("https:/hooks.example.com/x", 0, "absolute");
    refused_with("https://", 0, "absolute");
}

static void test_credentials_and_length(void **s)
{
    (void)s;
    refused_with("https://user:pw@hooks.example.com/", 0, "credentials");
    refused_with("https://user@hooks.example.com/", 0, "credentials");
    char big[TQ_WEBHOOK_URL_MAX + 32];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    memcpy(big, "https://x.example/", 18);
    refused_with(big, 0, "at most");
}

static void test_inward_literals_refused(void **s)
{
    (void)s;
    refused_with("https://127.0.0.1/", 0, "loopback");
    refused_with("https://localhost:9000/", 0, "loopback");
    refused_with("https://api.localhost/", 0, "loopback");
    refused_with("https://[::1]/", 0, "loopback");
    refused_with("https://10.1.2.3/", 0, "private");
    refused_with("https://192.168.0.10/", 0, "private");
    refused_with("https://169.254.169.254/latest/meta-data", 0, "link-local");
    refused_with("https://169.254.169.254/", 1, "link-local");
    refused_with("https://[fe80::1]/", 0, "link-local");
    refused_with("https://[fd00::1]/", 0, "private");
    refused_with("https://[::ffff:10.0.0.1]/", 0, "private");
    refused_with("https://0.0.0.0/", 1, "unspecified");
    refused_with("https://224.0.0.1/", 0, "multicast");
    /* the test option admits loopback only */
    assert_true(ok("https://127.0.0.1/", 1));
    assert_true(ok("http://localhost:1/", 1));
    refused_with("http://10.0.0.1/", 1, "private");
}

/* TRAINQ_WEBHOOK_ALLOW_CIDRS admits exactly its blocks; TRAINQ_WEBHOOK_ALLOW_HTTP admits
 * http and nothing else. */
static void test_operator_allowances(void **s)
{
    (void)s;
    tq_netlist *nets = NULL;
    tq_errbuf eb = {{0}};
    assert_int_equal(tq_netlist_parse("10.20.0.0/16, fd00::1", &nets, &eb), TQ_OK);
    tq_webhook_rule rule = {.allow_nets = nets};
    char why[128] = "";
    assert_int_equal(tq_webhook_url_check("https://10.20.3.4/h", &rule, why, sizeof why), 0);
    assert_int_equal(tq_webhook_url_check("https://[fd00::1]/h", &rule, why, sizeof why), 0);
    assert_int_equal(tq_webhook_url_check("https://10.21.0.1/h", &rule, why, sizeof why), -1);
    assert_int_equal(tq_webhook_url_check("https://[fd00::2]/h", &rule, why, sizeof why), -1);
    assert_int_equal(tq_webhook_url_check("http://hooks.example.com/", &rule, why, sizeof why), -1);
    struct sockaddr_in in = {.sin_family = AF_INET};
    inet_pton(AF_INET, "10.20.9.9", &in.sin_addr);
    assert_true(tq_webhook_rule_addr_ok(&rule, (struct sockaddr *)&in));
    inet_pton(AF_INET, "169.254.169.254", &in.sin_addr);
    assert_false(tq_webhook_rule_addr_ok(&rule, (struct sockaddr *)&in));
    tq_webhook_rule http = {.allow_http = 1};
    assert_int_equal(tq_webhook_url_check("http://hooks.example.com/", &http, why, sizeof why), 0);
    assert_int_equal(tq_webhook_url_check("http://127.0.0.1/", &http, why, sizeof why), -1);
    tq_netlist_free(nets);
}

static void test_retry_schedule(void **s)
{
    (void)s;
    /* jittered into [d/2, d] of 5 s, 10 s, 20 s, ... capped at 3600 s */
    long long d1 = tq_webhook_retry_ms(1, 35, 5, 3600, 1);
    assert_true(d1 >= 2500 && d1 <= 5000);
    long long d4 = tq_webhook_retry_ms(4, 35, 5, 3600, 1);
    assert_true(d4 >= 20000 && d4 <= 40000);
    long long d30 = tq_webhook_retry_ms(30, 35, 5, 3600, 1);
    assert_true(d30 >= 1800000 && d30 <= 3600000);
    assert_int_equal(tq_webhook_retry_ms(35, 35, 5, 3600, 1), -1);
    /* the default schedule (60 attempts, 5 s .. 1 h) spans at least 24 h whatever the
     * jitter (each delay is at least half its nominal value) */
    long long total = 0;
    for (int a = 1; a < 60; a++)
        total += tq_webhook_retry_ms(a, 60, 5, 3600, (unsigned)a);
    assert_true(total >= 24LL * 3600 * 1000);
    assert_int_equal(tq_webhook_retry_ms(60, 60, 5, 3600, 1), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_https_public_accepted),
        cmocka_unit_test(test_scheme),
        cmocka_unit_test(test_credentials_and_length),
        cmocka_unit_test(test_inward_literals_refused),
        cmocka_unit_test(test_operator_allowances),
        cmocka_unit_test(test_retry_schedule),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
