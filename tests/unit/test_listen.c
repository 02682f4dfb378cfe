/* The listening sockets' errors and the exit codes they lead to (shared/tq_listen). Only
 * loopback is bound here; what an address of another host does is the classifier's case. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "tq_listen.h"

static void test_settings_no_restart_can_fix_are_config_errors(void **state)
{
    (void)state;
    assert_int_equal(tq_listen_error_class(EADDRNOTAVAIL), TQ_ERR_CONFIG);
    assert_int_equal(tq_listen_error_class(EACCES), TQ_ERR_CONFIG);
    assert_int_equal(tq_listen_error_class(EPERM), TQ_ERR_CONFIG);
    assert_int_equal(tq_listen_error_class(EAFNOSUPPORT), TQ_ERR_CONFIG);
    assert_int_equal(tq_listen_error_class(EINVAL), TQ_ERR_CONFIG);
}

static void test_an_address_someone_else_holds_may_be_free_next_time(void **state)
{
    (void)state;
    assert_int_equal(tq_listen_error_class(EADDRINUSE), TQ_ERR_IO);
    assert_int_equal(tq_listen_error_class(EMFILE), TQ_ERR_IO);
    assert_int_equal(tq_listen_error_class(ENOBUFS), TQ_ERR_IO);
}

static void test_only_a_resolver_that_did_not_answer_may_resolve_next_time(void **state)
{
    (void)state;
    assert_int_equal(tq_listen_resolve_class(EAI_AGAIN), TQ_ERR_IO);
    assert_int_equal(tq_listen_resolve_class(EAI_NONAME), TQ_ERR_CONFIG);
    assert_int_equal(tq_listen_resolve_class(EAI_FAMILY), TQ_ERR_CONFIG);
    assert_int_equal(tq_listen_resolve_class(0), TQ_ERR_CONFIG); /* no address */
}

static struct sockaddr_in loopback(int port)
{
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static void test_a_socket_is_listening_nonblocking_and_close_on_exec(void **state)
{
    (void)state;
    struct sockaddr_in a = loopback(0);
    tq_errbuf eb = {{0}};
    int fd = -1;
    assert_int_equal(
        tq_listen_open((struct sockaddr *)&a, sizeof a, "127.0.0.1", 0, NULL, &fd, &eb), TQ_OK);
    assert_true(fd >= 0);
    int on = 0;
    socklen_t len = sizeof on;
    assert_int_equal(getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &len), 0);
    assert_int_equal(on, 1);
    assert_true(fcntl(fd, F_GETFL) & O_NONBLOCK);
    assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    close(fd);
}

static void test_a_taken_port_is_an_io_error_naming_the_address(void **state)
{
    (void)state;
    struct sockaddr_in a = loopback(0);
    tq_errbuf eb = {{0}};
    int first = -1, second = 7;
    assert_int_equal(
        tq_listen_open((struct sockaddr *)&a, sizeof a, "127.0.0.1", 0, NULL, &first, &eb), TQ_OK);
    socklen_t len = sizeof a;
    assert_int_equal(getsockname(first, (struct sockaddr *)&a, &len), 0);
    int port = ntohs(a.sin_port);
    assert_int_equal(
        tq_listen_open((struct sockaddr *)&a, sizeof a, "127.0.0.1", port, "metrics", &second, &eb),
        TQ_ERR_IO);
    assert_int_equal(second, -1);
    char want[128];
    snprintf(want, sizeof want, "could not listen on 127.0.0.1:%d for metrics: %s", port,
             strerror(EADDRINUSE));
    assert_string_equal(eb.msg, want);
    close(first);
}

static void test_an_ipv6_host_is_bracketed_in_the_error(void **state)
{
    (void)state;
    /* Two sockets on [::1] with one port: the second fails, and says where. */
    struct sockaddr_in6 a;
    memset(&a, 0, sizeof a);
    a.sin6_family = AF_INET6;
    a.sin6_addr = in6addr_loopback;
    tq_errbuf eb = {{0}};
    int first = -1, second = -1;
    if (tq_listen_open((struct sockaddr *)&a, sizeof a, "::1", 0, NULL, &first, &eb) != TQ_OK)
        skip(); /* no IPv6 on this host */
    socklen_t len = sizeof a;
    assert_int_equal(getsockname(first, (struct sockaddr *)&a, &len), 0);
    int port = ntohs(a.sin6_port);
    assert_int_equal(
        tq_listen_open((struct sockaddr *)&a, sizeof a, "::1", port, NULL, &second, &eb),
        TQ_ERR_IO);
    assert_int_equal(second, -1);
    char want[128];
    snprintf(want, sizeof want, "could not listen on [::1]:%d: %s", port, strerror(EADDRINUSE));
    assert_string_equal(eb.msg, want);
    close(first);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_settings_no_restart_can_fix_are_config_errors),
        cmocka_unit_test(test_an_address_someone_else_holds_may_be_free_next_time),
        cmocka_unit_test(test_only_a_resolver_that_did_not_answer_may_resolve_next_time),
        cmocka_unit_test(test_a_socket_is_listening_nonblocking_and_close_on_exec),
        cmocka_unit_test(test_a_taken_port_is_an_io_error_naming_the_address),
        cmocka_unit_test(test_an_ipv6_host_is_bracketed_in_the_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
