/* TRAINQ_AMQP_URL as one node or a list of a cluster's nodes (shared/tq_amqp), the quorum
 * replica count a list asks for, and the configuration check's one-line refusal. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "poptions.h"
#include "tq_amqp.h"

static void test_one_url_is_a_list_of_one_node(void **state)
{
    (void)state;
    tq_errbuf eb = {{0}};
    assert_int_equal(tq_amqp_url_nodes("amqp://u:p@127.0.0.1:5672/%2f", &eb), 1);
    assert_int_equal(tq_amqp_url_check("amqp://u:p@127.0.0.1:5672/%2f", &eb), TQ_OK);
    /* the empty vhost means "/" as before */
    assert_int_equal(tq_amqp_url_nodes("amqp://u:p@127.0.0.1:5672/", &eb), 1);
}

static void test_a_comma_separated_list_names_every_node(void **state)
{
    (void)state;
    tq_errbuf eb = {{0}};
    assert_int_equal(tq_amqp_url_nodes("amqp://u:p@127.0.0.1:1/%2f,amqp://u:p@127.0.0.1:2/%2f,"
                                       "amqp://u:p@127.0.0.1:3/%2f",
                                       &eb),
                     3);
    /* blanks around the commas are what people type; they are not part of a url */
    assert_int_equal(tq_amqp_url_nodes(" amqp://u:p@h1:1/%2f , amqp://u:p@h2:2/%2f ", &eb), 2);
    /* the vhost "/" written two ways is one vhost */
    assert_int_equal(tq_amqp_url_nodes("amqp://u:p@h1:1/,amqp://u:p@h2:2/%2f", &eb), 2);
}

static void test_a_bad_node_is_named_without_quoting_its_password(void **state)
{
    (void)state;
    tq_errbuf eb = {{0}};
    assert_int_equal(tq_amqp_url_nodes("amqp://u:hunter2@h1:1/%2f,http://u:hunter2@h2", &eb),
                     TQ_ERR_CONFIG);
    assert_non_null(strstr(eb.msg, "node 2 of 2"));
    assert_null(strstr(eb.msg, "hunter2"));
    assert_int_equal(tq_amqp_url_check("amqp://u:p@h1:1/%2f,,amqp://u:p@h2:2/%2f", &eb),
                     TQ_ERR_CONFIG);
    assert_non_null(strstr(eb.msg, "node 2 is empty"));
    assert_int_equal(tq_amqp_url_nodes("amqp://u:p@h1:1/%2f,", &eb), TQ_ERR_CONFIG);
    assert_int_equal(tq_amqp_url_nodes("", &eb), TQ_ERR_CONFIG);
    assert_int_equal(tq_amqp_url_nodes(NULL, &eb), TQ_ERR_CONFIG);
    assert_int_equal(tq_amqp_url_nodes("amqp://u:p@h1:1/%2f,amqps://u:p@h2:2/%2f", &eb),
                     TQ_ERR_CONFIG);
    assert_non_null(strstr(eb.msg, "amqps is not supported"));
}

static void test_every_node_must_serve_the_same_vhost(void **state)
{
    (void)state;
    tq_errbuf eb = {{0}};
    assert_int_equal(tq_amqp_url_nodes("amqp://u:p@h1:1/prod,amqp://u:p@h2:2/test", &eb),
                     TQ_ERR_CONFIG);
    assert_non_null(strstr(eb.msg, "node 2 of 2 names another vhost"));
}

static void test_a_list_is_capped(void **state)
{
    (void)state;
    tq_errbuf eb = {{0}};
    char list[4096] = "";
    size_t len = 0;
    for (int i = 0; i < TQ_AMQP_MAX_NODES; i++)
        len += (size_t)snprintf(list + len, sizeof list - len, "%samqp://u:p@h%d:1/%%2f",
                                i ? "," : "", i);
    assert_int_equal(tq_amqp_url_nodes(list, &eb), TQ_AMQP_MAX_NODES);
    snprintf(list + len, sizeof list - len, ",amqp://u:p@one-too-many:1/%%2f");
    assert_int_equal(tq_amqp_url_nodes(list, &eb), TQ_ERR_CONFIG);
    assert_non_null(strstr(eb.msg, "more than 16 nodes"));
}

static void test_quorum_replicas_fit_the_list(void **state)
{
    (void)state;
    assert_int_equal(tq_amqp_quorum_group_size(1), 0); /* one url: the broker decides */
    assert_int_equal(tq_amqp_quorum_group_size(2), 2);
    assert_int_equal(tq_amqp_quorum_group_size(3), 3);
    assert_int_equal(tq_amqp_quorum_group_size(5), 3);
}

static int load_producer(const char *amqp_url, tq_config *c, tq_errbuf *eb)
{
    setenv("TRAINQ_DATABASE_URL", "postgresql://u:p@127.0.0.1/trainq", 1);
    setenv("TRAINQ_JWT_SECRET", "0123456789abcdef0123456789abcdef", 1);
    setenv("TRAINQ_AMQP_URL", amqp_url, 1);
    char *argv[] = {"trainq-producer", NULL};
    return tq_producer_config_load(c, 1, argv, eb);
}

static void test_configuration_takes_a_list_and_refuses_a_bad_node(void **state)
{
    (void)state;
    tq_config c;
    tq_errbuf eb = {{0}};
    assert_int_equal(
        load_producer("amqp://u:p@127.0.0.1:1/%2f,amqp://u:p@127.0.0.1:2/%2f", &c, &eb), TQ_OK);
    tq_producer_config_free(&c);
    assert_int_equal(
        load_producer("amqp://u:p@127.0.0.1:1/%2f,amqp://u:secret@127.0.0.1:2/x", &c, &eb),
        TQ_ERR_CONFIG);
    assert_non_null(strstr(eb.msg, "invalid TRAINQ_AMQP_URL"));
    assert_null(strchr(eb.msg, '\n'));
    assert_null(strstr(eb.msg, "secret"));
    tq_producer_config_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_url_is_a_list_of_one_node),
        cmocka_unit_test(test_a_comma_separated_list_names_every_node),
        cmocka_unit_test(test_a_bad_node_is_named_without_quoting_its_password),
        cmocka_unit_test(test_every_node_must_serve_the_same_vhost),
        cmocka_unit_test(test_a_list_is_capped),
        cmocka_unit_test(test_quorum_replicas_fit_the_list),
        cmocka_unit_test(test_configuration_takes_a_list_and_refuses_a_bad_node),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
