/*
 * Connection admission (producer/admit.c): per-address caps, the health reserve, deadlines
 * that trickling cannot extend, and who the client is behind a trusted proxy.
 */
#include <arpa/inet.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "admit.h"

static struct sockaddr_in v4(const char *ip)
{
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    inet_pton(AF_INET, ip, &a.sin_addr);
    return a;
}

#define SA(x) ((const struct sockaddr *)(const void *)&(x))

static tq_netlist *netlist(const char *text)
{
    tq_netlist *l = NULL;
    tq_errbuf eb = {{0}};
    assert_int_equal(tq_netlist_parse(text, &l, &eb), TQ_OK);
    return l;
}

static void trusted_proxy_list_takes_addresses_and_cidr_blocks(void **state)
{
    (void)state;
    tq_netlist *l = netlist(" 10.0.0.0/8, 127.0.0.3 ,::1, 2001:db8::/32,");
    struct sockaddr_in a = v4("10.200.1.2"), b = v4("11.0.0.1"), c = v4("127.0.0.3");
    assert_true(tq_netlist_contains(l, SA(a)));
    assert_false(tq_netlist_contains(l, SA(b)));
    assert_true(tq_netlist_contains(l, SA(c)));
    struct sockaddr_in6 m = {0};
    m.sin6_family = AF_INET6;
    inet_pton(AF_INET6, "::ffff:10.1.1.1", &m.sin6_addr); /* v4-mapped counts as v4 */
    assert_true(tq_netlist_contains(l, SA(m)));
    tq_netlist_free(l);

    static const char *const bad[] = {"10.0.0.0/33", "example.com", "10.0.0.1/", "1.2.3.4/8x",
                                      "::1/129"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tq_errbuf eb = {{0}};
        l = NULL;
        assert_int_equal(tq_netlist_parse(bad[i], &l, &eb), TQ_ERR_CONFIG);
        assert_non_null(strstr(eb.msg, "TRAINQ_HTTP_TRUSTED_PROXIES"));
        assert_null(l);
    }
    l = netlist("");
    assert_false(tq_netlist_contains(l, SA(a)));
    tq_netlist_free(l);
}

static void forwarded_for_is_believed_only_from_a_trusted_proxy(void **state)
{
    (void)state;
    tq_netlist *l = netlist("10.0.0.0/8");
    char out[TQ_ADMIT_ADDR_MAX];
    struct sockaddr_in proxy = v4("10.0.0.5"), direct = v4("198.51.100.7");
    tq_client_address(l, SA(direct), "203.0.113.9", out);
    assert_string_equal(out, "198.51.100.7");
    tq_client_address(l, SA(proxy), NULL, out);
    assert_string_equal(out, "10.0.0.5");
    tq_client_address(l, SA(proxy), "203.0.113.9", out);
    assert_string_equal(out, "203.0.113.9");
    /* The client may forge entries on the left; the rightmost untrusted one is the client. */
    tq_client_address(l, SA(proxy), "1.1.1.1, 203.0.113.9, 10.1.1.1", out);
    assert_string_equal(out, "203.0.113.9");
    /* Garbage ends the walk at the last address a trusted hop vouched for. */
    tq_client_address(l, SA(proxy), "203.0.113.9, junk", out);
    assert_string_equal(out, "10.0.0.5");
    tq_client_address(NULL, SA(proxy), "203.0.113.9", out);
    assert_string_equal(out, "10.0.0.5");
    tq_netlist_free(l);
}

static tq_admit *table(int max, int reserve, int per_client, const tq_netlist *trusted)
{
    tq_admit_config cfg = {.max_connections = max,
                           .reserve = reserve,
                           .per_client = per_client,
                           .header_ms = 1000,
                           .body_ms = 3000,
                           .idle_ms = 5000,
                           .trusted = trusted};
    tq_admit *a = NULL;
    tq_errbuf eb = {{0}};
    assert_int_equal(tq_admit_new(&cfg, &a, &eb), TQ_OK);
    return a;
}

static void one_address_is_capped_and_others_are_not(void **state)
{
    (void)state;
    tq_netlist *l = netlist("127.0.0.3");
    tq_admit *a = table(100, 2, 3, l);
    struct sockaddr_in x = v4("127.0.0.1"), y = v4("127.0.0.2"), p = v4("127.0.0.3");
    tq_admit_conn *c[3];
    for (int i = 0; i < 3; i++) {
        assert_int_equal(tq_admit_check(a, SA(x)), TQ_ADMIT_OK);
        c[i] = tq_admit_open(a, SA(x), 10 + i, 0);
        assert_non_null(c[i]);
    }
    assert_int_equal(tq_admit_check(a, SA(x)), TQ_ADMIT_REFUSE_CLIENT);
    assert_int_equal(tq_admit_check(a, SA(y)), TQ_ADMIT_OK);
    for (int i = 0; i < 10; i++) { /* a trusted proxy is exempt */
        assert_int_equal(tq_admit_check(a, SA(p)), TQ_ADMIT_OK);
        assert_non_null(tq_admit_open(a, SA(p), 100 + i, 0));
    }
    tq_admit_close(a, c[0]);
    assert_int_equal(tq_admit_check(a, SA(x)), TQ_ADMIT_OK);
    tq_admit_free(a);
    tq_netlist_free(l);
}

static void past_the_ordinary_connections_only_the_reserve_then_nothing(void **state)
{
    (void)state;
    tq_admit *a = table(2, 1, 100, NULL);
    struct sockaddr_in x = v4("127.0.0.1");
    tq_admit_conn *c1 = tq_admit_open(a, SA(x), 1, 0);
    tq_admit_conn *c2 = tq_admit_open(a, SA(x), 2, 0);
    assert_false(tq_admit_is_reserve(c1) || tq_admit_is_reserve(c2));
    assert_int_equal(tq_admit_check(a, SA(x)), TQ_ADMIT_OK);
    tq_admit_conn *r = tq_admit_open(a, SA(x), 3, 0);
    assert_true(tq_admit_is_reserve(r));
    assert_int_equal(tq_admit_check(a, SA(x)), TQ_ADMIT_REFUSE_FULL);
    assert_int_equal(tq_admit_open_count(a), 3);
    tq_admit_close(a, r);
    assert_int_equal(tq_admit_check(a, SA(x)), TQ_ADMIT_OK);
    tq_admit_free(a);
}

static int cut_fds[16];
static tq_admit_phase cut_phase[16];
static int n_cut;

static void record_cut(int fd, tq_admit_phase p, void *arg)
{
    (void)arg;
    cut_fds[n_cut] = fd;
    cut_phase[n_cut++] = p;
}

static void deadlines_count_from_the_start_and_are_reported_once(void **state)
{
    (void)state;
    tq_admit *a = table(10, 1, 10, NULL);
    struct sockaddr_in x = v4("127.0.0.1");
    tq_admit_conn *slow = tq_admit_open(a, SA(x), 7, 0);
    tq_admit_conn *body = tq_admit_open(a, SA(x), 8, 0);
    tq_admit_conn *busy = tq_admit_open(a, SA(x), 9, 0);
    tq_admit_set_phase(a, body, TQ_PHASE_BODY, 500); /* headers in at 0.5 s */
    tq_admit_set_phase(a, busy, TQ_PHASE_BODY, 100);
    tq_admit_set_phase(a, busy, TQ_PHASE_BUSY, 200); /* handler running: no deadline */
    n_cut = 0;
    assert_int_equal(tq_admit_sweep(a, 999, record_cut, NULL), 0);
    assert_int_equal(tq_admit_sweep(a, 1000, record_cut, NULL), 1); /* header: 1 s from open */
    assert_int_equal(cut_fds[0], 7);
    assert_int_equal(cut_phase[0], TQ_PHASE_HEADERS);
    assert_int_equal(tq_admit_sweep(a, 3499, record_cut, NULL), 0); /* reported once */
    assert_int_equal(tq_admit_sweep(a, 3500, record_cut, NULL), 1); /* body: 3 s from headers */
    assert_int_equal(cut_fds[1], 8);
    assert_int_equal(cut_phase[1], TQ_PHASE_BODY);
    assert_int_equal(tq_admit_sweep(a, 1000000, record_cut, NULL), 0);
    /* After a response a kept-alive connection waits max(header, idle) for the next one. */
    tq_admit_set_phase(a, busy, TQ_PHASE_HEADERS, 2000);
    assert_int_equal(tq_admit_sweep(a, 6999, record_cut, NULL), 0);
    assert_int_equal(tq_admit_sweep(a, 7000, record_cut, NULL), 1);
    assert_int_equal(cut_fds[2], 9);
    tq_admit_close(a, slow);
    tq_admit_close(a, body);
    tq_admit_close(a, busy);
    assert_int_equal(tq_admit_open_count(a), 0);
    tq_admit_free(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(trusted_proxy_list_takes_addresses_and_cidr_blocks),
        cmocka_unit_test(forwarded_for_is_believed_only_from_a_trusted_proxy),
        cmocka_unit_test(one_address_is_capped_and_others_are_not),
        cmocka_unit_test(past_the_ordinary_connections_only_the_reserve_then_nothing),
        cmocka_unit_test(deadlines_count_from_the_start_and_are_reported_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
