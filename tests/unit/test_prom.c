/* The Prometheus text format (shared/tq_prom) and the two /metrics bodies built on it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cmetrics.h"
#include "metrics.h"
#include "tq_prom.h"

static void test_scalar_family_is_help_type_and_one_sample(void **state)
{
    (void)state;
    tq_prom_doc d;
    assert_int_equal(tq_prom_begin(&d), 0);
    tq_prom_scalar(&d, "x_total", "counter", "Things done.", 42);
    tq_prom_scalar(&d, "y", "gauge", "Level.", -1);
    size_t len = 0;
    char *s = tq_prom_end(&d, &len);
    assert_non_null(s);
    const char *want = "# HELP x_total Things done.\n# TYPE x_total counter\nx_total 42\n"
                       "# HELP y Level.\n# TYPE y gauge\ny -1\n";
    assert_string_equal(s, want);
    assert_int_equal(len, strlen(want));
    free(s);
}

static void test_labelled_samples_put_labels_in_braces(void **state)
{
    (void)state;
    tq_prom_doc d;
    assert_int_equal(tq_prom_begin(&d), 0);
    tq_prom_sample_u(&d, "r_total", "route=\"a\",code=\"200\"", 18446744073709551615ull);
    tq_prom_sample_u(&d, "r_total", "", 1);
    tq_prom_sample(&d, "r_total", NULL, 2);
    char *s = tq_prom_end(&d, NULL);
    assert_string_equal(s, "r_total{route=\"a\",code=\"200\"} 18446744073709551615\n"
                           "r_total 1\nr_total 2\n");
    free(s);
}

static void test_histogram_buckets_are_cumulative_and_inf_equals_count(void **state)
{
    (void)state;
    static const double le[] = {0.005, 0.25, 1, 2.5, 60};
    const unsigned long long counts[] = {1, 0, 2, 0, 0, 3}; /* last: above every bound */
    tq_prom_doc d;
    assert_int_equal(tq_prom_begin(&d), 0);
    tq_prom_histogram(&d, "h_seconds", NULL, le, 5, counts, 1234567891ull);
    tq_prom_histogram(&d, "h_seconds", "route=\"b\"", le, 5, counts, 5ull);
    char *s = tq_prom_end(&d, NULL);
    assert_string_equal(s, "h_seconds_bucket{le=\"0.005\"} 1\n"
                           "h_seconds_bucket{le=\"0.25\"} 1\n"
                           "h_seconds_bucket{le=\"1\"} 3\n"
                           "h_seconds_bucket{le=\"2.5\"} 3\n"
                           "h_seconds_bucket{le=\"60\"} 3\n"
                           "h_seconds_bucket{le=\"+Inf\"} 6\n"
                           "h_seconds_sum 1234.567891\n"
                           "h_seconds_count 6\n"
                           "h_seconds_bucket{route=\"b\",le=\"0.005\"} 1\n"
                           "h_seconds_bucket{route=\"b\",le=\"0.25\"} 1\n"
                           "h_seconds_bucket{route=\"b\",le=\"1\"} 3\n"
                           "h_seconds_bucket{route=\"b\",le=\"2.5\"} 3\n"
                           "h_seconds_bucket{route=\"b\",le=\"60\"} 3\n"
                           "h_seconds_bucket{route=\"b\",le=\"+Inf\"} 6\n"
                           "h_seconds_sum{route=\"b\"} 0.000005\n"
                           "h_seconds_count{route=\"b\"} 6\n");
    free(s);
}

static void test_consumer_metrics_render_free_slots_and_latency(void **state)
{
    (void)state;
    tq_cmetrics_reset();
    tq_cmetrics_set(TQ_CM_SLOTS_TOTAL, 4);
    tq_cmetrics_set(TQ_CM_SLOTS_BUSY, 1);
    tq_cmetrics_observe_dispatch(0.003);
    tq_cmetrics_observe_dispatch(0.7);
    tq_cmetrics_observe_dispatch(1234.5678915);
    char *s = tq_cmetrics_render();
    assert_non_null(s);
    assert_non_null(strstr(s, "# HELP trainq_consumer_slots_busy Slots running a job.\n"
                              "# TYPE trainq_consumer_slots_busy gauge\n"
                              "trainq_consumer_slots_busy 1\n"
                              "# HELP trainq_consumer_slots_free Slots ready for a job.\n"
                              "# TYPE trainq_consumer_slots_free gauge\n"
                              "trainq_consumer_slots_free 3\n"));
    assert_non_null(strstr(s, "# TYPE trainq_consumer_dispatch_latency_seconds histogram\n"
                              "trainq_consumer_dispatch_latency_seconds_bucket{le=\"0.005\"} 1\n"));
    assert_non_null(strstr(s, "trainq_consumer_dispatch_latency_seconds_bucket{le=\"1\"} 2\n"));
    assert_non_null(strstr(s, "trainq_consumer_dispatch_latency_seconds_bucket{le=\"60\"} 2\n"
                              "trainq_consumer_dispatch_latency_seconds_bucket{le=\"+Inf\"} 3\n"
                              "trainq_consumer_dispatch_latency_seconds_sum 1235.270892\n"
                              "trainq_consumer_dispatch_latency_seconds_count 3\n"));
    free(s);
    tq_cmetrics_reset();
}

static void test_producer_metrics_render_routes_and_relay(void **state)
{
    (void)state;
    static const char *const routes[] = {"POST /jobs", "GET /jobs/{id}"};
    tq_metrics_init(routes, 2);
    tq_metrics_observe(0, 202, 0.0042);
    tq_metrics_observe(0, 202, 0.7);
    tq_metrics_observe(5, 999, 12.0);
    tq_metrics_relay rel = {0};
    rel.backlog = 5;
    rel.published = 9;
    size_t len = 0;
    char *s = tq_metrics_render(&rel, &len);
    assert_non_null(s);
    assert_int_equal(len, strlen(s));
    assert_non_null(strstr(s, "# TYPE trainq_http_requests_total counter\n"
                              "trainq_http_requests_total{route=\"POST /jobs\",code=\"202\"} 2\n"
                              "trainq_http_requests_total{route=\"other\",code=\"other\"} 1\n"));
    assert_non_null(strstr(s, "trainq_http_request_duration_seconds_bucket{route=\"POST /jobs\","
                              "le=\"0.005\"} 1\n"));
    assert_non_null(strstr(s, "trainq_http_request_duration_seconds_sum{route=\"POST /jobs\"} "
                              "0.704200\n"));
    assert_non_null(strstr(s, "trainq_http_connections_refused_total{reason=\"full\"} "));
    assert_non_null(strstr(s, "# TYPE trainq_outbox_backlog gauge\ntrainq_outbox_backlog 5\n"));
    assert_non_null(strstr(s, "# HELP trainq_relay_published_total Outbox rows published and "
                              "confirmed by the broker.\n# TYPE trainq_relay_published_total "
                              "counter\ntrainq_relay_published_total 9\n"));
    free(s);
    s = tq_metrics_render(NULL, NULL);
    assert_non_null(strstr(s, "trainq_outbox_backlog -1\n"));
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scalar_family_is_help_type_and_one_sample),
        cmocka_unit_test(test_labelled_samples_put_labels_in_braces),
        cmocka_unit_test(test_histogram_buckets_are_cumulative_and_inf_equals_count),
        cmocka_unit_test(test_consumer_metrics_render_free_slots_and_latency),
        cmocka_unit_test(test_producer_metrics_render_routes_and_relay),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
