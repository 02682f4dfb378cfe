/* The producer's route table (producer/routes.c): which path names which route. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "request_impl.h"
#include "routes.h"

static int route_of(const char *url, char param[TQ_REQ_PARAM_MAX])
{
    return tq_route_match(url, param, TQ_REQ_PARAM_MAX);
}

static void test_every_route_matches_its_own_path_and_is_labelled_by_its_pattern(void **state)
{
    (void)state;
    char param[TQ_REQ_PARAM_MAX];
    const char *const *labels = tq_route_labels();
    assert_int_equal(tq_route_count(), 33);
    for (size_t i = 0; i < tq_route_count(); i++) {
        assert_string_equal(tq_route_label((int)i), labels[i]);
        if (!strstr(labels[i], "{id}"))
            assert_int_equal(route_of(labels[i], param), (int)i);
    }
    assert_string_equal(tq_route_label(-1), "other");
}

static void test_the_id_segment_is_captured(void **state)
{
    (void)state;
    char param[TQ_REQ_PARAM_MAX];
    int get = route_of("/api/training/jobs/abc", param);
    assert_string_equal(tq_route_label(get), "/api/training/jobs/{id}");
    assert_string_equal(param, "abc");
    int cancel = route_of("/api/training/jobs/0b6e3f5a-9c1d-4e2f-8a7b-1c2d3e4f5a6b/cancel", param);
    assert_string_equal(tq_route_label(cancel), "/api/training/jobs/{id}/cancel");
    assert_string_equal(param, "0b6e3f5a-9c1d-4e2f-8a7b-1c2d3e4f5a6b");
    int events = route_of("/api/training/jobs/x/events/", param);
    assert_string_equal(tq_route_label(events), "/api/training/jobs/{id}/events");
    assert_string_equal(param, "x");
}

static void test_the_dashboard_takes_everything_under_ui_and_the_admin_api_its_ids(void **state)
{
    (void)state;
    char param[TQ_REQ_PARAM_MAX];
    assert_string_equal(tq_route_label(route_of("/ui/", param)), "/ui");
    assert_string_equal(param, "");
    assert_string_equal(tq_route_label(route_of("/ui/app.js", param)), "/ui/{name}");
    assert_string_equal(param, "app.js");
    /* what ui.c must refuse reaches it whole */
    assert_string_equal(tq_route_label(route_of("/ui/../../etc/passwd", param)), "/ui/{name}");
    assert_string_equal(param, "../../etc/passwd");
    assert_int_equal(route_of("/uix", param), -1);
    int drain = route_of("/api/admin/workers/gpu-host-1/drain", param);
    assert_string_equal(tq_route_label(drain), "/api/admin/workers/{id}/drain");
    assert_string_equal(param, "gpu-host-1");
    int rep = route_of("/api/admin/dead-letters/42/republish", param);
    assert_string_equal(tq_route_label(rep), "/api/admin/dead-letters/{id}/republish");
    assert_string_equal(param, "42");
}

static void test_default_secret_is_not_taken_for_a_webhook_id(void **state)
{
    (void)state;
    char param[TQ_REQ_PARAM_MAX];
    assert_string_equal(tq_route_label(route_of("/api/training/webhooks/default-secret", param)),
                        "/api/training/webhooks/default-secret");
    int rot = route_of("/api/training/webhooks/abc/rotate-secret", param);
    assert_string_equal(tq_route_label(rot), "/api/training/webhooks/{id}/rotate-secret");
    assert_string_equal(param, "abc");
}

static void test_an_artifact_path_captures_the_id_and_the_rest_as_the_name(void **state)
{
    (void)state;
    char param[TQ_REQ_PARAM_MAX];
    int a = route_of("/api/training/jobs/abc/artifacts/model.safetensors", param);
    assert_string_equal(tq_route_label(a), "/api/training/jobs/{id}/artifacts/{name}");
    assert_string_equal(param, "abc/model.safetensors");
    int list = route_of("/api/training/jobs/abc/artifacts/", param);
    assert_string_equal(tq_route_label(list), "/api/training/jobs/{id}/artifacts");
    assert_string_equal(param, "abc");
    /* a name is the rest of the path: a file in a subdirectory of the job's outputs, as the
     * consumer records it ("checkpoint-1/state.bin"); the handler checks each component */
    a = route_of("/api/training/jobs/abc/artifacts/checkpoint-1/state.bin", param);
    assert_string_equal(tq_route_label(a), "/api/training/jobs/{id}/artifacts/{name}");
    assert_string_equal(param, "abc/checkpoint-1/state.bin");
    assert_string_equal(tq_route_label(route_of("/api/training/stream", param)),
                        "/api/training/stream");
    /* a trailing slash stays part of the name (its empty last component is the handler's
     * 404), not dropped to serve the file without it */
    a = route_of("/api/training/jobs/abc/artifacts/trainer.log/", param);
    assert_string_equal(tq_route_label(a), "/api/training/jobs/{id}/artifacts/{name}");
    assert_string_equal(param, "abc/trainer.log/");
}

static void test_one_trailing_slash_is_ignored_and_nothing_else_matches(void **state)
{
    (void)state;
    char param[TQ_REQ_PARAM_MAX];
    assert_string_equal(tq_route_label(route_of("/api/training/jobs/", param)),
                        "/api/training/jobs");
    assert_string_equal(param, "");
    assert_int_equal(route_of("/api/training/jobs//", param), -1);
    assert_int_equal(route_of("/api/training/jobs//cancel", param), -1); /* empty {id} */
    assert_int_equal(route_of("/api/training/job", param), -1);
    assert_int_equal(route_of("/api/training/jobs/a/b", param), -1);
    assert_int_equal(route_of("/healthzz", param), -1);
    assert_int_equal(route_of("", param), -1);
    assert_int_equal(route_of("/", param), -1);
    assert_string_equal(param, "");
}

static void test_an_id_segment_longer_than_the_cap_matches_no_route(void **state)
{
    (void)state;
    char param[TQ_REQ_PARAM_MAX], url[TQ_REQ_PARAM_MAX + 64];
    char seg[TQ_REQ_PARAM_MAX + 1];
    memset(seg, 'a', sizeof seg - 1);
    seg[TQ_REQ_PARAM_MAX - 1] = '\0'; /* the longest that fits */
    snprintf(url, sizeof url, "/api/training/jobs/%s", seg);
    assert_string_equal(tq_route_label(route_of(url, param)), "/api/training/jobs/{id}");
    assert_string_equal(param, seg);
    seg[TQ_REQ_PARAM_MAX - 1] = 'a';
    seg[TQ_REQ_PARAM_MAX] = '\0'; /* one more */
    snprintf(url, sizeof url, "/api/training/jobs/%s", seg);
    assert_int_equal(route_of(url, param), -1);
}

static void test_only_the_health_checks_may_use_the_reserve(void **state)
{
    (void)state;
    char param[TQ_REQ_PARAM_MAX];
    assert_true(tq_route_is_health(route_of("/healthz", param)));
    assert_true(tq_route_is_health(route_of("/readyz", param)));
    assert_false(tq_route_is_health(route_of("/metrics", param)));
    assert_false(tq_route_is_health(route_of("/api/training/submit", param)));
    assert_false(tq_route_is_health(route_of("/api/training/jobs/x", param)));
    assert_false(tq_route_is_health(-1));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_route_matches_its_own_path_and_is_labelled_by_its_pattern),
        cmocka_unit_test(test_the_id_segment_is_captured),
        cmocka_unit_test(test_default_secret_is_not_taken_for_a_webhook_id),
        cmocka_unit_test(test_the_dashboard_takes_everything_under_ui_and_the_admin_api_its_ids),
        cmocka_unit_test(test_an_artifact_path_captures_the_id_and_the_rest_as_the_name),
        cmocka_unit_test(test_one_trailing_slash_is_ignored_and_nothing_else_matches),
        cmocka_unit_test(test_an_id_segment_longer_than_the_cap_matches_no_route),
        cmocka_unit_test(test_only_the_health_checks_may_use_the_reserve),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
