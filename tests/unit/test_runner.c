/* How a runner judges the end of a container (consumer/runner: tq_run_judge), its failure
 * class and message, and the retry policy (consumer/outcome). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "runner.h"

static const char *CID = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

static tq_run_end end_with(int code)
{
    tq_run_end e;
    memset(&e, 0, sizeof e);
    e.exit_code = code;
    e.max_run_seconds = 3600;
    e.container_id = CID;
    return e;
}

static void test_exit_zero_completes(void **state)
{
    (void)state;
    tq_run_outcome o;
    tq_run_end e = end_with(0);
    assert_int_equal(tq_run_judge(&e, &o), 0);
    assert_int_equal(o.verdict, TQ_RUN_RECORD);
    assert_int_equal(o.status, TQ_STATUS_COMPLETED);
    assert_int_equal(o.exit_code, 0);
    assert_string_equal(o.error, "");
    assert_string_equal(o.reason, "exit code 0");
}

static void test_nonzero_exit_fails_and_asks_for_the_log_tail(void **state)
{
    (void)state;
    tq_run_outcome o;
    tq_run_end e = end_with(3);
    assert_int_equal(tq_run_judge(&e, &o), 1);
    assert_int_equal(o.verdict, TQ_RUN_RECORD);
    assert_int_equal(o.status, TQ_STATUS_FAILED);
    assert_string_equal(o.error, "training exited with code 3");
    assert_int_equal(o.failure_class, TQ_FAIL_DATASET); /* the trainer contract's 3 */
    tq_run_describe_exit(&e, "Traceback: boom", NULL, &o);
    assert_string_equal(o.error, "training exited with code 3: Traceback: boom");
    assert_string_equal(o.reason, "exit code 3");
    assert_int_equal(o.failure_class, TQ_FAIL_DATASET);
    assert_string_equal(o.failure_message,
                        "the trainer could not use the dataset (exit code 3): Traceback: boom");
}

static void test_exit_zero_after_oom_kill_fails(void **state)
{
    (void)state;
    tq_run_outcome o;
    tq_run_end e = end_with(0);
    e.oom = 1;
    assert_int_equal(tq_run_judge(&e, &o), 1);
    assert_int_equal(o.status, TQ_STATUS_FAILED);
    assert_string_equal(o.error, "training exited with code 0 (killed: out of memory)");
    assert_string_equal(o.failure_message, "out of memory before the first training step: the "
                                           "job is at its smallest size: it needs a host with "
                                           "more memory");
    assert_string_equal(o.reason, "exit code 0, out of memory");
    assert_int_equal(o.failure_class, TQ_FAIL_OOM);
}

static void test_cancellation_beats_overrun_and_outage(void **state)
{
    (void)state;
    tq_run_outcome o;
    tq_run_end e = end_with(143);
    e.cancelled = e.overrun = e.outage = 1;
    assert_int_equal(tq_run_judge(&e, &o), 0);
    assert_int_equal(o.verdict, TQ_RUN_RECORD);
    assert_int_equal(o.status, TQ_STATUS_CANCELLED);
    assert_int_equal(o.exit_code, 143);
    assert_string_equal(o.error, "");
    assert_string_equal(o.reason, "cancelled on request");
    assert_int_equal(o.failure_class, TQ_FAIL_CANCELLED);
    assert_string_equal(o.failure_message, ""); /* the audit reason says who asked */
}

static void test_overrun_fails_with_the_limit_in_the_message(void **state)
{
    (void)state;
    tq_run_outcome o;
    tq_run_end e = end_with(137);
    e.overrun = e.outage = 1;
    assert_int_equal(tq_run_judge(&e, &o), 0);
    assert_int_equal(o.status, TQ_STATUS_FAILED);
    assert_string_equal(o.error, "exceeded the maximum run time of 3600 s");
    assert_string_equal(o.reason, "maximum run time exceeded");
    assert_int_equal(o.failure_class, TQ_FAIL_TIMEOUT);
}

static void test_exit_during_a_docker_outage_is_retried_not_failed(void **state)
{
    (void)state;
    tq_run_outcome o;
    tq_run_end e = end_with(137);
    e.outage = 1;
    assert_int_equal(tq_run_judge(&e, &o), 0);
    assert_int_equal(o.verdict, TQ_RUN_RETRY);
    assert_string_equal(o.reason,
                        "container 0123456789ab ended with code 137 while dockerd was unreachable");
    assert_int_equal(o.failure_class, TQ_FAIL_HOST_LOST);
    /* A clean exit seen after an outage is still the job's own success. */
    e = end_with(0);
    e.outage = 1;
    tq_run_judge(&e, &o);
    assert_int_equal(o.verdict, TQ_RUN_RECORD);
    assert_int_equal(o.status, TQ_STATUS_COMPLETED);
}

static void test_vanished_container_fails_unless_cancelled(void **state)
{
    (void)state;
    tq_run_outcome o;
    tq_run_end e = end_with(TQ_RUN_NO_EXIT_CODE);
    assert_int_equal(tq_run_judge(&e, &o), 0);
    assert_int_equal(o.status, TQ_STATUS_FAILED);
    assert_int_equal(o.exit_code, TQ_RUN_NO_EXIT_CODE);
    assert_string_equal(o.error, "training container disappeared");
    assert_string_equal(o.reason, "container 0123456789ab no longer exists");
    assert_int_equal(o.failure_class, TQ_FAIL_HOST_ERROR);
    e.cancelled = 1;
    tq_run_judge(&e, &o);
    assert_int_equal(o.status, TQ_STATUS_CANCELLED);
    assert_string_equal(o.error, "");
}

static void test_long_log_tail_is_cut_at_a_character_boundary(void **state)
{
    (void)state;
    static char tail[TQ_RUN_ERROR_BUF * 2];
    /* "é" is two bytes: any cut that splits one leaves an invalid byte at the end. */
    for (size_t i = 0; i + 2 < sizeof tail; i += 2)
        memcpy(tail + i, "\xc3\xa9", 2);
    tail[sizeof tail - 2] = '\0';
    tq_run_outcome o;
    tq_run_end e = end_with(1);
    tq_run_describe_exit(&e, tail, NULL, &o);
    size_t n = strlen(o.error);
    assert_true(n < sizeof o.error);
    assert_true(n > sizeof o.error - 8);
    /* the last character is whole: a lead byte is never the last byte */
    assert_int_not_equal((unsigned char)o.error[n - 1], 0xc3);
}

/* Docker copies stdout and stderr apart: in the merged log the trainer's refusal on stderr
 * may come before the end of what it printed on stdout. Its stderr's last line is quoted. */
static void test_a_config_error_quotes_the_last_line_of_stderr(void **state)
{
    (void)state;
    tq_run_outcome o;
    tq_run_end e = end_with(2);
    assert_int_equal(tq_run_judge(&e, &o), 1);
    tq_run_describe_exit(&e, "fake-trainer: invalid config: rank_dropout\n{\n}\n\n",
                         "fake-trainer: invalid config: rank_dropout\n", &o);
    assert_string_equal(o.failure_message,
                        "the trainer refused its config (exit code 2): fake-trainer: invalid "
                        "config: rank_dropout: fix the job's config");
    /* nothing on stderr: the merged log's last line */
    tq_run_describe_exit(&e, "bad key x\n", "", &o);
    assert_string_equal(o.failure_message,
                        "the trainer refused its config (exit code 2): bad key x: fix the job's "
                        "config");
}

static void test_oom_names_the_step_batch_size_and_resolution_and_what_to_lower(void **state)
{
    (void)state;
    tq_run_outcome o;
    tq_run_end e = end_with(137);
    e.oom = 1;
    e.oom_ctx = (tq_oom_context){.has_progress = 1,
                                 .step = 3,
                                 .total = 10,
                                 .batch_size = 4,
                                 .resolution = 1024,
                                 .memory_limit = 512LL << 20};
    assert_int_equal(tq_run_judge(&e, &o), 1);
    tq_run_describe_exit(&e, "Killed", NULL, &o);
    assert_int_equal(o.failure_class, TQ_FAIL_OOM);
    assert_string_equal(o.failure_message,
                        "out of memory at step 3 of 10 with batch_size 4 at resolution 1024 "
                        "(memory limit 512 MiB): lower batch_size to 2 (or the resolution)");
    assert_string_equal(o.error, "training exited with code 137 (killed: out of memory): Killed");
    /* batch size 1 already: the resolution is next, to a multiple of 64 */
    e.oom_ctx.batch_size = 1;
    tq_run_describe_exit(&e, NULL, NULL, &o);
    assert_non_null(strstr(o.failure_message, "lower resolution to 768"));
}

static void test_exit_137_under_a_memory_limit_is_oom_without_the_flag(void **state)
{
    (void)state;
    tq_run_outcome o;
    tq_run_end e = end_with(137);
    tq_run_describe_exit(&e, NULL, NULL, &o);
    assert_int_equal(o.failure_class, TQ_FAIL_TRAINER); /* no limit: a SIGKILL from elsewhere */
    e.oom_ctx.memory_limit = 1LL << 30;
    tq_run_describe_exit(&e, NULL, NULL, &o);
    assert_int_equal(o.failure_class, TQ_FAIL_OOM);
}

static void test_exit_2_is_a_config_error_with_the_trainers_last_line(void **state)
{
    (void)state;
    tq_run_outcome o;
    tq_run_end e = end_with(2);
    assert_int_equal(tq_run_judge(&e, &o), 1);
    tq_run_describe_exit(&e, "loading\nerror: unknown key foo\n", NULL, &o);
    assert_int_equal(o.failure_class, TQ_FAIL_CONFIG);
    assert_string_equal(o.failure_message, "the trainer refused its config (exit code 2): error: "
                                           "unknown key foo: fix the job's config");
}

static void test_the_trainer_contracts_exit_codes_name_their_class(void **state)
{
    (void)state;
    static const struct {
        int code;
        tq_failure_class c;
    } cases[] = {{1, TQ_FAIL_TRAINER},   {2, TQ_FAIL_CONFIG},   {3, TQ_FAIL_DATASET},
                 {4, TQ_FAIL_HUB},       {5, TQ_FAIL_OOM},      {127, TQ_FAIL_HOST_ERROR},
                 {137, TQ_FAIL_TRAINER}, {139, TQ_FAIL_TRAINER}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tq_run_outcome o;
        tq_run_end e = end_with(cases[i].code);
        assert_int_equal(tq_run_judge(&e, &o), 1);
        tq_run_describe_exit(&e, "last words", NULL, &o);
        assert_int_equal(o.failure_class, cases[i].c);
        assert_int_equal(o.status, TQ_STATUS_FAILED);
        assert_true(o.failure_message[0] != '\0');
    }
    tq_run_outcome o;
    tq_run_end e = end_with(5);
    e.oom_ctx = (tq_oom_context){
        .has_progress = 1, .step = 7, .total = 9, .batch_size = 2, .resolution = 512};
    tq_run_describe_exit(&e, NULL, NULL, &o);
    assert_string_equal(o.failure_message, "out of GPU memory at step 7 of 9 with batch_size 2 "
                                           "at resolution 512: lower batch_size to 1 (or the "
                                           "resolution)");
}

static void test_hub_failures_in_the_log_tail_are_hub_errors(void **state)
{
    (void)state;
    static const struct {
        const char *tail;
        int status, transient;
    } cases[] = {
        {"Traceback\nhuggingface_hub.utils._errors.RepositoryNotFoundError: 401 Client Error. "
         "(Request ID: Root=1)\nRepository Not Found for url: "
         "https://huggingface.co/api/models/x/y.",
         401, 0},
        {"requests.exceptions.HTTPError: 404 Client Error: Not Found for url: "
         "https://huggingface.co/x/resolve/main/model_index.json",
         404, 0},
        {"huggingface_hub.utils._errors.HfHubHTTPError: 429 Client Error: Too Many Requests for "
         "url: https://huggingface.co/api/models/x",
         429, 1},
        {"HfHubHTTPError: 503 Server Error: Service Unavailable for url: "
         "https://huggingface.co/api/models/x",
         503, 1},
        {"OSError: We couldn't connect to 'https://huggingface.co' to load this file", 0, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tq_hub_failure h = {-1, -1};
        assert_int_equal(tq_hub_failure_find(cases[i].tail, &h), 1);
        assert_int_equal(h.status, cases[i].status);
        assert_int_equal(h.transient, cases[i].transient);
        tq_run_outcome o;
        tq_run_end e = end_with(1);
        tq_run_describe_exit(&e, cases[i].tail, NULL, &o);
        assert_int_equal(o.failure_class, TQ_FAIL_HUB);
        assert_int_equal(o.transient, cases[i].transient);
    }
    tq_hub_failure h;
    /* a 404 of something else, or the hub named without a failure, is no hub error */
    assert_int_equal(tq_hub_failure_find("HTTPError: 404 Client Error for url: http://x/", &h), 0);
    assert_int_equal(tq_hub_failure_find("downloading from https://huggingface.co/x ok", &h), 0);
    assert_int_equal(tq_hub_failure_find(NULL, &h), 0);
}

static const char HUB_502[] = "HfHubHTTPError: 502 Server Error: Bad Gateway for url: "
                              "https://huggingface.co/x";
static const char HUB_404[] = "HTTPError: 404 Client Error: Not Found for url: "
                              "https://huggingface.co/x";

static void test_retry_policy_retries_a_class_up_to_its_count(void **state)
{
    (void)state;
    tq_retry_policy p;
    tq_errbuf eb = {{0}};
    assert_int_equal(tq_retry_policy_parse(TQ_RETRY_POLICY_DEFAULT, &p, &eb), TQ_OK);
    assert_int_equal(p.max_retries[TQ_FAIL_HOST_LOST], 3);
    assert_int_equal(p.max_retries[TQ_FAIL_HOST_ERROR], 3);
    assert_int_equal(p.max_retries[TQ_FAIL_HUB], 3);
    assert_int_equal(p.max_retries[TQ_FAIL_OOM], 0);
    tq_run_outcome o;
    int delay = -1;
    /* hub_error, transient: retried with a doubling backoff, then failed */
    tq_run_end e = end_with(1);
    tq_run_describe_exit(&e, HUB_502, NULL, &o);
    tq_run_apply_policy(&p, 0, 1, 100, 30, &o, &delay);
    assert_int_equal(o.verdict, TQ_RUN_RETRY);
    assert_int_equal(o.status, TQ_STATUS_QUEUED);
    assert_int_equal(delay, 30);
    assert_non_null(strstr(o.reason, "hub_error, retry 1 of 3"));
    tq_run_describe_exit(&e, HUB_502, NULL, &o);
    tq_run_apply_policy(&p, 2, 3, 100, 30, &o, &delay);
    assert_int_equal(delay, 120);
    tq_run_describe_exit(&e, HUB_502, NULL, &o);
    tq_run_apply_policy(&p, 3, 4, 100, 30, &o, &delay);
    assert_int_equal(o.verdict, TQ_RUN_RECORD);
    assert_int_equal(o.status, TQ_STATUS_FAILED);
    /* a 404 will not change: not retried */
    tq_run_describe_exit(&e, HUB_404, NULL, &o);
    tq_run_apply_policy(&p, 0, 1, 100, 30, &o, &delay);
    assert_int_equal(o.verdict, TQ_RUN_RECORD);
    /* an oom is not retried by default, and is when the policy says so */
    e = end_with(137);
    e.oom = 1;
    tq_run_describe_exit(&e, NULL, NULL, &o);
    tq_run_apply_policy(&p, 0, 1, 100, 30, &o, &delay);
    assert_int_equal(o.verdict, TQ_RUN_RECORD);
    assert_int_equal(tq_retry_policy_parse("oom=1", &p, &eb), TQ_OK);
    tq_run_apply_policy(&p, 0, 1, 100, 30, &o, &delay);
    assert_int_equal(o.verdict, TQ_RUN_RETRY);
    assert_int_equal(delay, 0);
    /* an outage past its retries fails instead of being given back again */
    assert_int_equal(tq_retry_policy_parse("host_lost=1", &p, &eb), TQ_OK);
    e = end_with(137);
    e.outage = 1;
    tq_run_judge(&e, &o);
    tq_run_apply_policy(&p, 1, 2, 100, 30, &o, &delay);
    assert_int_equal(o.verdict, TQ_RUN_RECORD);
    assert_int_equal(o.status, TQ_STATUS_FAILED);
    /* the job's attempts in all cap every class (TRAINQ_MAX_ATTEMPTS): its last attempt is
     * the failure it is, its exit's error and log tail kept, the reason saying why */
    assert_int_equal(tq_retry_policy_parse(TQ_RETRY_POLICY_DEFAULT, &p, &eb), TQ_OK);
    e = end_with(1);
    tq_run_describe_exit(&e, HUB_502, NULL, &o);
    char error[sizeof o.error];
    snprintf(error, sizeof error, "%s", o.error);
    tq_run_apply_policy(&p, 2, 3, 4, 30, &o, &delay);
    assert_int_equal(o.verdict, TQ_RUN_RETRY); /* the third attempt: one more to go */
    tq_run_describe_exit(&e, HUB_502, NULL, &o);
    tq_run_apply_policy(&p, 2, 4, 4, 30, &o, &delay);
    assert_int_equal(o.verdict, TQ_RUN_RECORD);
    assert_int_equal(o.status, TQ_STATUS_FAILED);
    assert_int_equal(o.exit_code, 1);
    assert_int_equal(delay, 0);
    assert_string_equal(o.error, error);
    assert_non_null(strstr(o.reason, "hub_error, not retried: gave up after 4 attempts"));
    /* and an outage on the last attempt fails with the cap as its error */
    e = end_with(137);
    e.outage = 1;
    tq_run_judge(&e, &o);
    tq_run_apply_policy(&p, 0, 4, 4, 30, &o, &delay);
    assert_int_equal(o.verdict, TQ_RUN_RECORD);
    assert_int_equal(o.status, TQ_STATUS_FAILED);
    assert_non_null(strstr(o.error, "gave up after 4 attempts"));
    assert_non_null(strstr(o.reason, "host_lost, not retried: gave up after 4 attempts"));
    /* cancellation and completion are never retried */
    e = end_with(0);
    tq_run_judge(&e, &o);
    tq_run_apply_policy(&p, 0, 1, 100, 30, &o, &delay);
    assert_int_equal(o.status, TQ_STATUS_COMPLETED);
}

static void test_retry_policy_refuses_what_it_cannot_mean(void **state)
{
    (void)state;
    tq_retry_policy p;
    const char *bad[] = {"oom",         "oom=",   "oom=x",  "oom=101",
                         "cancelled=1", "nope=1", "oom=1,", "=1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tq_errbuf eb = {{0}};
        assert_int_equal(tq_retry_policy_parse(bad[i], &p, &eb), TQ_ERR_CONFIG);
        assert_non_null(strstr(eb.msg, "TRAINQ_RETRY_POLICY"));
    }
    tq_errbuf eb = {{0}};
    assert_int_equal(tq_retry_policy_parse("none", &p, &eb), TQ_OK);
    assert_int_equal(p.max_retries[TQ_FAIL_HOST_LOST], 0);
    for (int c = 1; c < TQ_FAIL__COUNT; c++)
        assert_int_equal(tq_failure_class_parse(tq_failure_class_name((tq_failure_class)c)), c);
    assert_null(tq_failure_class_name(TQ_FAIL_NONE));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exit_zero_completes),
        cmocka_unit_test(test_nonzero_exit_fails_and_asks_for_the_log_tail),
        cmocka_unit_test(test_exit_zero_after_oom_kill_fails),
        cmocka_unit_test(test_cancellation_beats_overrun_and_outage),
        cmocka_unit_test(test_overrun_fails_with_the_limit_in_the_message),
        cmocka_unit_test(test_exit_during_a_docker_outage_is_retried_not_failed),
        cmocka_unit_test(test_vanished_container_fails_unless_cancelled),
        cmocka_unit_test(test_long_log_tail_is_cut_at_a_character_boundary),
        cmocka_unit_test(test_a_config_error_quotes_the_last_line_of_stderr),
        cmocka_unit_test(test_oom_names_the_step_batch_size_and_resolution_and_what_to_lower),
        cmocka_unit_test(test_exit_137_under_a_memory_limit_is_oom_without_the_flag),
        cmocka_unit_test(test_exit_2_is_a_config_error_with_the_trainers_last_line),
        cmocka_unit_test(test_the_trainer_contracts_exit_codes_name_their_class),
        cmocka_unit_test(test_hub_failures_in_the_log_tail_are_hub_errors),
        cmocka_unit_test(test_retry_policy_retries_a_class_up_to_its_count),
        cmocka_unit_test(test_retry_policy_refuses_what_it_cannot_mean),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
