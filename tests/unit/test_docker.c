/* Unit tests for the pure parts of the Docker client: log stream demultiplexing, inspect and
 * list parsing, the create body and spec checks. The daemon itself is exercised by
 * tests/docker_it.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "container_spec.h"
#include "docker.h"

/* Appends one frame (stream, payload) to buf at *off. */
static void frame(unsigned char *buf, size_t *off, int stream, const char *payload, size_t n)
{
    unsigned char *h = buf + *off;
    h[0] = (unsigned char)stream;
    h[1] = h[2] = h[3] = 0;
    h[4] = (unsigned char)(n >> 24);
    h[5] = (unsigned char)(n >> 16);
    h[6] = (unsigned char)(n >> 8);
    h[7] = (unsigned char)n;
    memcpy(h + 8, payload, n);
    *off += 8 + n;
}

static char *demux_all(const unsigned char *buf, size_t len, size_t piece)
{
    tq_log_demux *m = malloc(sizeof *m);
    assert_non_null(m);
    tq_log_demux_init(m);
    for (size_t i = 0; i < len; i += piece)
        tq_log_demux_feed(m, buf + i, len - i < piece ? len - i : piece);
    char *s = tq_log_demux_finish(m);
    free(m);
    assert_non_null(s);
    return s;
}

static void demux_interleaves_stdout_and_stderr_frames(void **state)
{
    (void)state;
    unsigned char buf[128];
    size_t off = 0;
    frame(buf, &off, 1, "step 1\n", 7);
    frame(buf, &off, 2, "warn: x\n", 8);
    frame(buf, &off, 1, "boom\n", 5);
    char *s = demux_all(buf, off, off);
    assert_string_equal(s, "step 1\nwarn: x\nboom\n");
    free(s);
}

typedef struct {
    char text[3][256];
    size_t len[3];
} sink_seen;

static void sink_collect(void *arg, int stream, const char *data, size_t len)
{
    sink_seen *s = arg;
    assert_true(stream >= 0 && stream <= 2);
    assert_true(s->len[stream] + len < sizeof s->text[stream]);
    memcpy(s->text[stream] + s->len[stream], data, len);
    s->len[stream] += len;
}

static void demux_with_a_sink_passes_every_payload_byte_on_with_its_stream(void **state)
{
    (void)state;
    unsigned char buf[128];
    size_t off = 0;
    frame(buf, &off, 2, "\rSteps:  10%", 12);
    frame(buf, &off, 1, "line one\n", 9);
    frame(buf, &off, 2, "\rSteps:  20%", 12);
    for (size_t piece = 1; piece <= off; piece++) {
        tq_log_demux *m = calloc(1, sizeof *m);
        assert_non_null(m);
        tq_log_demux_init(m);
        sink_seen seen;
        memset(&seen, 0, sizeof seen);
        m->sink = sink_collect;
        m->sink_arg = &seen;
        for (size_t i = 0; i < off; i += piece)
            tq_log_demux_feed(m, buf + i, off - i < piece ? off - i : piece);
        assert_int_equal(m->len, 0); /* nothing kept in the tail buffer */
        assert_int_equal(seen.len[0], 0);
        assert_memory_equal(seen.text[1], "line one\n", 9);
        assert_int_equal(seen.len[2], 24);
        assert_memory_equal(seen.text[2], "\rSteps:  10%\rSteps:  20%", 24);
        free(m);
    }
}

static void demux_handles_frames_split_at_every_byte(void **state)
{
    (void)state;
    unsigned char buf[128];
    size_t off = 0;
    frame(buf, &off, 1, "hello ", 6);
    frame(buf, &off, 2, "", 0); /* empty frames happen */
    frame(buf, &off, 2, "world", 5);
    for (size_t piece = 1; piece <= 9; piece++) {
        char *s = demux_all(buf, off, piece);
        assert_string_equal(s, "hello world");
        free(s);
    }
}

static void demux_keeps_what_arrived_of_a_truncated_frame(void **state)
{
    (void)state;
    unsigned char buf[128];
    size_t off = 0;
    frame(buf, &off, 1, "first\n", 6);
    frame(buf, &off, 2, "second-part", 11);
    char *s = demux_all(buf, off - 5, 3); /* cut 5 bytes from the end */
    assert_string_equal(s, "first\nsecond");
    free(s);
}

static void demux_drops_a_truncated_header(void **state)
{
    (void)state;
    unsigned char buf[128];
    size_t off = 0;
    frame(buf, &off, 1, "only\n", 5);
    frame(buf, &off, 1, "next", 4);
    char *s = demux_all(buf, 5 + 8 + 3, 4); /* first frame + 3 bytes of the second header */
    assert_string_equal(s, "only\n");
    free(s);
}

static void demux_keeps_the_end_when_the_log_exceeds_4k(void **state)
{
    (void)state;
    /* 300 lines of 33 bytes across frames of varying size: 9900 bytes of text. */
    size_t text_len = 0;
    char *text = malloc(300 * 40);
    assert_non_null(text);
    for (int i = 0; i < 300; i++)
        text_len += (size_t)snprintf(text + text_len, 40, "line %05d of the training log..\n", i);
    unsigned char *buf = malloc(text_len + 8 * 300);
    assert_non_null(buf);
    size_t off = 0, pos = 0, fsz = 1;
    while (pos < text_len) {
        size_t n = text_len - pos < fsz ? text_len - pos : fsz;
        frame(buf, &off, (fsz % 2) ? 1 : 2, text + pos, n);
        pos += n;
        fsz = fsz * 3 % 997 + 1;
    }
    char *s = demux_all(buf, off, 1000);
    assert_int_equal(strlen(s), TQ_DOCKER_LOG_TAIL_MAX);
    assert_memory_equal(s, text + text_len - TQ_DOCKER_LOG_TAIL_MAX, TQ_DOCKER_LOG_TAIL_MAX);
    assert_non_null(strstr(s, "line 00299 of the training log..\n"));
    assert_null(strstr(s, "line 00000 "));
    free(s);
    /* One frame bigger than the cap, fed in one piece. */
    off = 0;
    frame(buf, &off, 1, text, text_len);
    s = demux_all(buf, off, off);
    assert_memory_equal(s, text + text_len - TQ_DOCKER_LOG_TAIL_MAX, TQ_DOCKER_LOG_TAIL_MAX);
    free(s);
    free(buf);
    free(text);
}

static void demux_output_is_valid_utf8_without_nul(void **state)
{
    (void)state;
    unsigned char buf[64];
    size_t off = 0;
    static const char p[] = "a\0b\xff"
                            "c\xc3\xa9"
                            "d\xe2\x82";
    frame(buf, &off, 1, p, sizeof p - 1);
    char *s = demux_all(buf, off, off);
    assert_string_equal(s, "a?b?c\xc3\xa9"
                           "d??");
    free(s);
}

static void demux_drops_a_character_cut_by_truncation(void **state)
{
    (void)state;
    /* "é", 'x', then ASCII: the last 4096 bytes start inside "é". */
    size_t n = TQ_DOCKER_LOG_TAIL_MAX + 1;
    char *text = malloc(n);
    assert_non_null(text);
    memset(text, 'a', n);
    text[0] = (char)0xc3;
    text[1] = (char)0xa9;
    text[2] = 'x';
    unsigned char *buf = malloc(n + 8);
    assert_non_null(buf);
    size_t off = 0;
    frame(buf, &off, 1, text, n);
    char *s = demux_all(buf, off, 7);
    assert_int_equal(s[0], 'x');
    assert_int_equal(strlen(s), TQ_DOCKER_LOG_TAIL_MAX - 1);
    free(s);
    free(buf);
    free(text);
}

static void demux_passes_a_tty_stream_through(void **state)
{
    (void)state;
    const char *raw = "plain tty output\r\n";
    char *s = demux_all((const unsigned char *)raw, strlen(raw), 5);
    assert_string_equal(s, raw);
    free(s);
    s = demux_all((const unsigned char *)"hi\n", 3, 3); /* shorter than a header */
    assert_string_equal(s, "hi\n");
    free(s);
}

static const char *INSPECT_OOM =
    "{\"Id\":\"4f1c0e0f4b7a9b5e6c2d8a1f3e5b7c9d0a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d\","
    "\"Name\":\"/training-j1\","
    "\"State\":{\"Status\":\"exited\",\"Running\":false,\"Paused\":false,\"OOMKilled\":true,"
    "\"Dead\":false,\"Pid\":0,\"ExitCode\":137,\"Error\":\"\","
    "\"StartedAt\":\"2024-05-01T10:00:00.123456789Z\","
    "\"FinishedAt\":\"2024-05-01T10:01:00.5Z\"},"
    "\"HostConfig\":{\"Memory\":67108864,\"Privileged\":false},"
    "\"Config\":{\"Image\":\"trainer\",\"Labels\":{\"trainq.job\":\"j1\",\"trainq.worker\":\"w\"}}"
    "}";

static void inspect_reads_oom_kill_exit_code_times_and_label(void **state)
{
    (void)state;
    tq_container_state st;
    tq_errbuf eb = {{0}};
    assert_int_equal(tq_docker_parse_inspect(INSPECT_OOM, strlen(INSPECT_OOM), &st, &eb), TQ_OK);
    assert_string_equal(st.id, "4f1c0e0f4b7a9b5e6c2d8a1f3e5b7c9d0a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d");
    assert_string_equal(st.status, "exited");
    assert_int_equal(st.running, 0);
    assert_int_equal(st.oom_killed, 1);
    assert_int_equal(st.exit_code, 137);
    assert_int_equal(st.started_at_ms, 1714557600123LL);
    assert_int_equal(st.finished_at_ms, 1714557660500LL);
    assert_int_equal(st.memory_bytes, 67108864);
    assert_string_equal(st.job_label, "j1");
    assert_string_equal(st.error, "");
}

static void inspect_of_a_running_container_has_no_finish_time(void **state)
{
    (void)state;
    const char *j = "{\"Id\":\"abc\",\"State\":{\"Status\":\"running\",\"Running\":true,"
                    "\"OOMKilled\":false,\"ExitCode\":0,\"Error\":\"\","
                    "\"StartedAt\":\"2024-05-01T10:00:00Z\","
                    "\"FinishedAt\":\"0001-01-01T00:00:00Z\"},\"Config\":{\"Labels\":null}}";
    tq_container_state st;
    assert_int_equal(tq_docker_parse_inspect(j, strlen(j), &st, NULL), TQ_OK);
    assert_string_equal(st.status, "running");
    assert_int_equal(st.running, 1);
    assert_int_equal(st.oom_killed, 0);
    assert_int_equal(st.exit_code, 0);
    assert_int_equal(st.started_at_ms, 1714557600000LL);
    assert_int_equal(st.finished_at_ms, 0);
    assert_string_equal(st.job_label, "");
}

static void inspect_keeps_the_start_error_and_a_nonzero_exit(void **state)
{
    (void)state;
    const char *j =
        "{\"Id\":\"abc\",\"State\":{\"Status\":\"created\",\"Running\":false,"
        "\"ExitCode\":128,\"Error\":\"could not select device driver \\\"nvidia\\\"\","
        "\"StartedAt\":\"0001-01-01T00:00:00Z\",\"FinishedAt\":\"0001-01-01T00:00:00Z\"},"
        "\"Config\":{\"Labels\":{\"trainq.job\":\"j9\"}}}";
    tq_container_state st;
    assert_int_equal(tq_docker_parse_inspect(j, strlen(j), &st, NULL), TQ_OK);
    assert_int_equal(st.exit_code, 128);
    assert_string_equal(st.error, "could not select device driver \"nvidia\"");
    assert_string_equal(st.job_label, "j9");
}

static void inspect_rejects_garbage(void **state)
{
    (void)state;
    tq_container_state st;
    tq_errbuf eb = {{0}};
    assert_int_equal(tq_docker_parse_inspect("{\"Id\":", 6, &st, &eb), TQ_ERR_INVALID);
    assert_non_null(strstr(eb.msg, "cannot parse container inspect reply"));
    assert_int_equal(tq_docker_parse_inspect("{\"Id\":\"x\"}", 10, &st, &eb), TQ_ERR_INVALID);
    assert_int_equal(tq_docker_parse_inspect("[]", 2, &st, &eb), TQ_ERR_INVALID);
}

static void list_reads_names_states_and_labels(void **state)
{
    (void)state;
    const char *j = "[{\"Id\":\"aaa\",\"Names\":[\"/training-j1\"],\"State\":\"running\","
                    "\"Labels\":{\"trainq.job\":\"j1\",\"trainq.worker\":\"gpu-host-1\"}},"
                    "{\"Id\":\"bbb\",\"Names\":[\"/other\"],\"State\":\"exited\",\"Labels\":{}},"
                    "{\"NotAContainer\":true}]";
    tq_container_summary *v = NULL;
    size_t n = 0;
    assert_int_equal(tq_docker_parse_list(j, strlen(j), &v, &n, NULL), TQ_OK);
    assert_int_equal(n, 2);
    assert_string_equal(v[0].id, "aaa");
    assert_string_equal(v[0].name, "training-j1");
    assert_string_equal(v[0].state, "running");
    assert_string_equal(v[0].job_label, "j1");
    assert_string_equal(v[0].worker_label, "gpu-host-1");
    assert_string_equal(v[1].name, "other");
    assert_string_equal(v[1].job_label, "");
    free(v);
}

static void list_of_nothing_is_empty_and_a_non_array_is_invalid(void **state)
{
    (void)state;
    tq_container_summary *v = (void *)1;
    size_t n = 7;
    assert_int_equal(tq_docker_parse_list("[]", 2, &v, &n, NULL), TQ_OK);
    assert_null(v);
    assert_int_equal(n, 0);
    assert_int_equal(tq_docker_parse_list("{}", 2, &v, &n, NULL), TQ_ERR_INVALID);
    assert_int_equal(tq_docker_parse_list("[", 1, &v, &n, NULL), TQ_ERR_INVALID);
}

/* The filters part of a list path, unescaped. */
static void list_filters(const char *const *labels, const char *const *statuses, char *json,
                         size_t cap)
{
    char path[TQ_DOCKER_LIST_PATH_MAX];
    tq_errbuf eb = {{0}};
    if (tq_docker_list_path(labels, statuses, path, sizeof path, &eb) != TQ_OK)
        fail_msg("list path refused: %s", eb.msg);
    const char *pre = "/containers/json?all=true&filters=";
    assert_memory_equal(path, pre, strlen(pre));
    char *u = curl_easy_unescape(NULL, path + strlen(pre), 0, NULL);
    assert_non_null(u);
    snprintf(json, cap, "%s", u);
    curl_free(u);
}

static void list_path_filters_by_every_label_and_any_status(void **state)
{
    (void)state;
    char json[512], path[TQ_DOCKER_LIST_PATH_MAX];
    const char *labels[] = {"trainq.worker=gpu-host-1", "trainq.job=j1", NULL};
    const char *live[] = {"created", "restarting", "running", "removing", "paused", NULL};
    list_filters(labels, live, json, sizeof json);
    assert_string_equal(json, "{\"label\":[\"trainq.worker=gpu-host-1\",\"trainq.job=j1\"],"
                              "\"status\":[\"created\",\"restarting\",\"running\","
                              "\"removing\",\"paused\"]}");
    list_filters(labels, NULL, json, sizeof json);
    assert_string_equal(json, "{\"label\":[\"trainq.worker=gpu-host-1\",\"trainq.job=j1\"]}");
    const char *exited[] = {"exited", "dead", NULL};
    list_filters(NULL, exited, json, sizeof json);
    assert_string_equal(json, "{\"status\":[\"exited\",\"dead\"]}");
    /* no filter at all: every container */
    const char *none[] = {NULL};
    assert_int_equal(tq_docker_list_path(none, NULL, path, sizeof path, NULL), TQ_OK);
    assert_string_equal(path, "/containers/json?all=true");
    /* the JSON is escaped: nothing in it can end the query string */
    const char *amp[] = {"a&b=c#d", NULL};
    assert_int_equal(tq_docker_list_path(amp, NULL, path, sizeof path, NULL), TQ_OK);
    assert_null(strchr(path + strlen("/containers/json?all=true&"), '&'));
    assert_null(strchr(path, '#'));
}

static void list_path_refuses_bad_labels_statuses_and_sizes(void **state)
{
    (void)state;
    char path[TQ_DOCKER_LIST_PATH_MAX];
    tq_errbuf eb = {{0}};
    const char *space[] = {"trainq.worker=a b", NULL};
    assert_int_equal(tq_docker_list_path(space, NULL, path, sizeof path, &eb), TQ_ERR_INVALID);
    assert_non_null(strstr(eb.msg, "invalid label filter"));
    const char *status[] = {"running", "stopped", NULL};
    assert_int_equal(tq_docker_list_path(NULL, status, path, sizeof path, &eb), TQ_ERR_INVALID);
    assert_non_null(strstr(eb.msg, "invalid status filter"));
    const char *many[TQ_DOCKER_LIST_MAX_FILTERS + 2];
    for (int i = 0; i <= TQ_DOCKER_LIST_MAX_FILTERS; i++)
        many[i] = "k=v";
    many[TQ_DOCKER_LIST_MAX_FILTERS + 1] = NULL;
    assert_int_equal(tq_docker_list_path(many, NULL, path, sizeof path, &eb), TQ_ERR_INVALID);
    many[TQ_DOCKER_LIST_MAX_FILTERS] = NULL;
    assert_int_equal(tq_docker_list_path(many, NULL, path, sizeof path, &eb), TQ_OK);
    const char *ok[] = {"trainq.worker=w", NULL};
    assert_int_equal(tq_docker_list_path(ok, NULL, path, 40, &eb), TQ_ERR_INVALID);
    assert_non_null(strstr(eb.msg, "filters too long"));
}

static void times_parse_as_docker_writes_them(void **state)
{
    (void)state;
    assert_int_equal(tq_docker_parse_time_ms("1970-01-01T00:00:00Z"), 0);
    assert_int_equal(tq_docker_parse_time_ms("1970-01-01T00:00:01.5Z"), 1500);
    assert_int_equal(tq_docker_parse_time_ms("2024-05-01T12:00:00.000000001+02:00"),
                     1714557600000LL);
    assert_int_equal(tq_docker_parse_time_ms("0001-01-01T00:00:00Z"), 0);
    assert_int_equal(tq_docker_parse_time_ms("2024-05-01 10:00:00Z"), -1);
    assert_int_equal(tq_docker_parse_time_ms("2024-05-01T10:00:00"), -1);
    assert_int_equal(tq_docker_parse_time_ms("2024-13-01T10:00:00Z"), -1);
    assert_int_equal(tq_docker_parse_time_ms(""), -1);
    assert_int_equal(tq_docker_parse_time_ms(NULL), -1);
}

static const char *const CMD[] = {"--steps", "10"};
static const char *const ENV[] = {"HF_HOME=/workspace/models", "JOB=j1"};
static const tq_label LABELS[] = {{"trainq.job", "j1"}, {"trainq.worker", "w1"}};
static const tq_mount MOUNTS[] = {{"/data/ds/1", "/workspace/datasets", 1},
                                  {"/data/out/j1", "/workspace/outputs", 0}};

static tq_container_spec base_spec(void)
{
    tq_container_spec s = {0};
    s.name = "training-j1";
    s.image = "trainer:1";
    s.labels = LABELS;
    s.n_labels = 2;
    s.mounts = MOUNTS;
    s.n_mounts = 2;
    s.env = ENV;
    s.n_env = 2;
    return s;
}

static json_t *body_json(const tq_container_spec *s)
{
    char *b = tq_docker_create_body(s);
    assert_non_null(b);
    assert_null(strstr(b, "\"Privileged\":true"));
    json_t *j = json_loads(b, 0, NULL);
    free(b);
    assert_non_null(j);
    return j;
}

static void create_body_is_locked_down_with_mounts_labels_env(void **state)
{
    (void)state;
    tq_container_spec s = base_spec();
    json_t *j = body_json(&s);
    json_t *hc = json_object_get(j, "HostConfig");
    assert_string_equal(json_string_value(json_object_get(j, "Image")), "trainer:1");
    assert_null(json_object_get(j, "Cmd")); /* the image's default stays */
    assert_null(json_object_get(j, "User"));
    assert_true(json_is_false(json_object_get(j, "Tty")));
    assert_true(json_is_false(json_object_get(hc, "Privileged")));
    assert_true(json_is_false(json_object_get(hc, "AutoRemove")));
    assert_string_equal(json_string_value(json_object_get(hc, "NetworkMode")), "none");
    assert_string_equal(json_string_value(json_array_get(json_object_get(hc, "CapDrop"), 0)),
                        "ALL");
    assert_string_equal(json_string_value(json_array_get(json_object_get(hc, "SecurityOpt"), 0)),
                        "no-new-privileges");
    assert_null(json_object_get(hc, "DeviceRequests"));
    assert_null(json_object_get(hc, "Memory"));
    assert_null(json_object_get(hc, "PidsLimit"));
    json_t *m0 = json_array_get(json_object_get(hc, "Mounts"), 0);
    json_t *m1 = json_array_get(json_object_get(hc, "Mounts"), 1);
    assert_string_equal(json_string_value(json_object_get(m0, "Type")), "bind");
    assert_string_equal(json_string_value(json_object_get(m0, "Source")), "/data/ds/1");
    assert_string_equal(json_string_value(json_object_get(m0, "Target")), "/workspace/datasets");
    assert_true(json_is_true(json_object_get(m0, "ReadOnly")));
    assert_true(json_is_false(json_object_get(m1, "ReadOnly")));
    json_t *labels = json_object_get(j, "Labels");
    assert_string_equal(json_string_value(json_object_get(labels, "trainq.job")), "j1");
    assert_string_equal(json_string_value(json_object_get(labels, "trainq.worker")), "w1");
    assert_string_equal(json_string_value(json_array_get(json_object_get(j, "Env"), 1)), "JOB=j1");
    json_decref(j);
}

static void create_body_carries_limits_cmd_user_and_network(void **state)
{
    (void)state;
    tq_container_spec s = base_spec();
    s.cmd = CMD;
    s.n_cmd = 2;
    s.memory_bytes = 8LL << 30;
    s.shm_bytes = 1LL << 30;
    s.nano_cpus = 4000000000LL;
    s.pids_limit = 512;
    s.network_mode = "bridge";
    s.user = "1000:1000";
    json_t *j = body_json(&s);
    json_t *hc = json_object_get(j, "HostConfig");
    assert_int_equal(json_integer_value(json_object_get(hc, "Memory")), 8LL << 30);
    assert_int_equal(json_integer_value(json_object_get(hc, "MemorySwap")), 8LL << 30);
    assert_int_equal(json_integer_value(json_object_get(hc, "ShmSize")), 1LL << 30);
    assert_int_equal(json_integer_value(json_object_get(hc, "NanoCpus")), 4000000000LL);
    assert_int_equal(json_integer_value(json_object_get(hc, "PidsLimit")), 512);
    assert_string_equal(json_string_value(json_object_get(hc, "NetworkMode")), "bridge");
    assert_string_equal(json_string_value(json_object_get(j, "User")), "1000:1000");
    json_t *cmd = json_object_get(j, "Cmd");
    assert_int_equal(json_array_size(cmd), 2);
    assert_string_equal(json_string_value(json_array_get(cmd, 0)), "--steps");
    json_decref(j);
}

static void create_body_requests_all_gpus(void **state)
{
    (void)state;
    tq_container_spec s = base_spec();
    s.gpu_mode = TQ_GPUS_CFG_ALL;
    json_t *j = body_json(&s);
    json_t *want =
        json_loads("[{\"Driver\":\"nvidia\",\"Count\":-1,\"Capabilities\":[[\"gpu\"]]}]", 0, NULL);
    assert_true(
        json_equal(json_object_get(json_object_get(j, "HostConfig"), "DeviceRequests"), want));
    json_decref(want);
    json_decref(j);
}

static void create_body_requests_gpu_ids(void **state)
{
    (void)state;
    tq_container_spec s = base_spec();
    s.gpu_mode = TQ_GPUS_CFG_IDS;
    s.gpu_ids = "0, 1";
    json_t *j = body_json(&s);
    json_t *want = json_loads(
        "[{\"Driver\":\"nvidia\",\"DeviceIDs\":[\"0\",\"1\"],\"Capabilities\":[[\"gpu\"]]}]", 0,
        NULL);
    assert_true(
        json_equal(json_object_get(json_object_get(j, "HostConfig"), "DeviceRequests"), want));
    json_decref(want);
    json_decref(j);
    s.gpu_ids = "0,,1";
    assert_null(tq_docker_create_body(&s));
}

static void spec_check_accepts_a_normal_spec(void **state)
{
    (void)state;
    tq_container_spec s = base_spec();
    assert_int_equal(tq_container_spec_check(&s, "/var/run/docker.sock", NULL), TQ_OK);
    tq_mount near = {"/tmp/dkx/out", "/workspace/outputs", 0};
    s.mounts = &near;
    s.n_mounts = 1;
    assert_int_equal(tq_container_spec_check(&s, "/tmp/dk/docker.sock", NULL), TQ_OK);
    s.gpu_mode = TQ_GPUS_CFG_IDS;
    s.gpu_ids = "GPU-8a3c1f2e-0000-1111-2222-333344445555,2";
    assert_int_equal(tq_container_spec_check(&s, NULL, NULL), TQ_OK);
}

static void spec_check_refuses_mounts_exposing_the_docker_socket(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "/var/run/docker.sock", "/var/run", "/var/run/",           "/",   "/run",
        "/srv/containerd.sock", "/tmp/dk",  "/tmp/dk/docker.sock", "/tmp"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tq_container_spec s = base_spec();
        tq_mount m = {bad[i], "/x", 1};
        s.mounts = &m;
        s.n_mounts = 1;
        tq_errbuf eb = {{0}};
        assert_int_equal(tq_container_spec_check(&s, "/tmp/dk/docker.sock", &eb), TQ_ERR_INVALID);
        assert_non_null(strstr(eb.msg, "socket"));
    }
}

static void spec_check_refuses_bad_names_paths_env_and_gpu_ids(void **state)
{
    (void)state;
    tq_container_spec s = base_spec();
    const char *names[] = {"", "-lead", "a/b", "a b", "x?y"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        s.name = names[i];
        assert_int_equal(tq_container_spec_check(&s, NULL, NULL), TQ_ERR_INVALID);
    }
    s = base_spec();
    tq_mount rel = {"data/ds", "/workspace/datasets", 1};
    s.mounts = &rel;
    s.n_mounts = 1;
    assert_int_equal(tq_container_spec_check(&s, NULL, NULL), TQ_ERR_INVALID);
    tq_mount dots = {"/data/ds/../../etc", "/workspace/datasets", 1};
    s.mounts = &dots;
    assert_int_equal(tq_container_spec_check(&s, NULL, NULL), TQ_ERR_INVALID);
    tq_mount dots2 = {"/data/..", "/workspace/datasets", 1};
    s.mounts = &dots2;
    assert_int_equal(tq_container_spec_check(&s, NULL, NULL), TQ_ERR_INVALID);
    tq_mount dotsok = {"/data/..hidden", "/workspace/datasets", 1};
    s.mounts = &dotsok;
    assert_int_equal(tq_container_spec_check(&s, NULL, NULL), TQ_OK);
    s = base_spec();
    const char *const env[] = {"NOEQUALS"};
    s.env = env;
    s.n_env = 1;
    assert_int_equal(tq_container_spec_check(&s, NULL, NULL), TQ_ERR_INVALID);
    s = base_spec();
    s.gpu_mode = TQ_GPUS_CFG_IDS;
    const char *ids[] = {NULL, "", ",", "0,", "0 1", "0;1", "$(x)"};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        s.gpu_ids = ids[i];
        assert_int_equal(tq_container_spec_check(&s, NULL, NULL), TQ_ERR_INVALID);
    }
    s = base_spec();
    s.memory_bytes = -1;
    assert_int_equal(tq_container_spec_check(&s, NULL, NULL), TQ_ERR_INVALID);
}

static void new_accepts_only_unix_sockets(void **state)
{
    (void)state;
    tq_docker *d = NULL;
    tq_errbuf eb = {{0}};
    assert_int_equal(tq_docker_new("tcp://127.0.0.1:2375", &d, &eb), TQ_ERR_CONFIG);
    assert_null(d);
    assert_int_equal(tq_docker_new("var/run/docker.sock", &d, &eb), TQ_ERR_CONFIG);
    assert_int_equal(tq_docker_new("", &d, &eb), TQ_ERR_CONFIG);
    assert_int_equal(tq_docker_new("unix:///var/run/docker.sock", &d, &eb), TQ_OK);
    assert_string_equal(tq_docker_socket_path(d), "/var/run/docker.sock");
    tq_docker_free(d);
    assert_int_equal(tq_docker_new("/run/x.sock", &d, &eb), TQ_OK);
    assert_string_equal(tq_docker_socket_path(d), "/run/x.sock");
    tq_docker_free(d);
}

static void a_missing_socket_is_unavailable(void **state)
{
    (void)state;
    tq_docker *d = NULL;
    tq_errbuf eb = {{0}};
    assert_int_equal(tq_docker_new("unix:///nonexistent/trainq-test/docker.sock", &d, &eb), TQ_OK);
    assert_int_equal(tq_docker_ping(d, &eb), TQ_ERR_UNAVAILABLE);
    assert_non_null(strstr(eb.msg, "could not ping docker"));
    tq_container_state st;
    assert_int_equal(tq_docker_inspect(d, "x", &st, &eb), TQ_ERR_UNAVAILABLE);
    assert_int_equal(tq_docker_inspect(d, "", &st, &eb), TQ_ERR_INVALID);
    tq_docker_free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(demux_interleaves_stdout_and_stderr_frames),
        cmocka_unit_test(demux_handles_frames_split_at_every_byte),
        cmocka_unit_test(demux_with_a_sink_passes_every_payload_byte_on_with_its_stream),
        cmocka_unit_test(demux_keeps_what_arrived_of_a_truncated_frame),
        cmocka_unit_test(demux_drops_a_truncated_header),
        cmocka_unit_test(demux_keeps_the_end_when_the_log_exceeds_4k),
        cmocka_unit_test(demux_output_is_valid_utf8_without_nul),
        cmocka_unit_test(demux_drops_a_character_cut_by_truncation),
        cmocka_unit_test(demux_passes_a_tty_stream_through),
        cmocka_unit_test(inspect_reads_oom_kill_exit_code_times_and_label),
        cmocka_unit_test(inspect_of_a_running_container_has_no_finish_time),
        cmocka_unit_test(inspect_keeps_the_start_error_and_a_nonzero_exit),
        cmocka_unit_test(inspect_rejects_garbage),
        cmocka_unit_test(list_reads_names_states_and_labels),
        cmocka_unit_test(list_of_nothing_is_empty_and_a_non_array_is_invalid),
        cmocka_unit_test(times_parse_as_docker_writes_them),
        cmocka_unit_test(create_body_is_locked_down_with_mounts_labels_env),
        cmocka_unit_test(create_body_carries_limits_cmd_user_and_network),
        cmocka_unit_test(create_body_requests_all_gpus),
        cmocka_unit_test(create_body_requests_gpu_ids),
        cmocka_unit_test(spec_check_accepts_a_normal_spec),
        cmocka_unit_test(spec_check_refuses_mounts_exposing_the_docker_socket),
        cmocka_unit_test(spec_check_refuses_bad_names_paths_env_and_gpu_ids),
        cmocka_unit_test(list_path_filters_by_every_label_and_any_status),
        cmocka_unit_test(list_path_refuses_bad_labels_statuses_and_sizes),
        cmocka_unit_test(new_accepts_only_unix_sockets),
        cmocka_unit_test(a_missing_socket_is_unavailable),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
