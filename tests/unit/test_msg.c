/*
 * Unit tests for the trainq.job.v1 codec (shared/tq_msg.c): exact bytes of the encoding,
 * decode(encode(m)) == m bit for bit, canonical re-encoding, and every decode failure
 * reported with its field.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#include <cmocka.h>

#include "tq_err.h"
#include "tq_msg.h"

#define JOB "0b6e3f5a-9c1d-4e2f-8a7b-1c2d3e4f5a6b"
#define DS "550e8400-e29b-41d4-a716-446655440000"

/* A message built the way the producer builds one: a parsed submission plus envelope. */
static void make_msg(tq_job_msg *m, const char *submission_json, const char *user_id,
                     const char *submitted_at)
{
    tq_validation v;
    memset(m, 0, sizeof *m);
    int rc = tq_submission_parse(submission_json, strlen(submission_json), &m->sub, &v);
    if (rc != TQ_OK)
        fail_msg("submission rejected: %s %s", v.items[0].field, v.items[0].message);
    memcpy(m->job_id, JOB, sizeof m->job_id);
    m->user_id = strdup(user_id);
    assert_non_null(m->user_id);
    snprintf(m->submitted_at, sizeof m->submitted_at, "%s", submitted_at);
}

static void assert_msg_equal(const tq_job_msg *a, const tq_job_msg *b)
{
    assert_string_equal(a->job_id, b->job_id);
    assert_string_equal(a->user_id, b->user_id);
    assert_string_equal(a->submitted_at, b->submitted_at);
    assert_string_equal(a->sub.dataset_id, b->sub.dataset_id);
    assert_string_equal(a->sub.name, b->sub.name);
    assert_int_equal(a->sub.type, b->sub.type);
    assert_string_equal(a->sub.base_model, b->sub.base_model);
    /* bit-exact, not "close enough" */
    assert_memory_equal(&a->sub.config.learning_rate, &b->sub.config.learning_rate, sizeof(double));
    assert_int_equal(a->sub.config.batch_size, b->sub.config.batch_size);
    assert_int_equal(a->sub.config.steps, b->sub.config.steps);
    assert_int_equal(a->sub.config.resolution, b->sub.config.resolution);
    assert_int_equal(a->sub.config.lora_rank, b->sub.config.lora_rank);
    assert_int_equal(a->sub.config.lora_alpha, b->sub.config.lora_alpha);
    assert_int_equal(a->sub.n_trigger_words, b->sub.n_trigger_words);
    for (size_t i = 0; i < a->sub.n_trigger_words; i++)
        assert_string_equal(a->sub.trigger_words[i], b->sub.trigger_words[i]);
}

/* encode → decode → equal, and encode(decode(encode(m))) is byte-identical. */
static void assert_round_trip(const tq_job_msg *m)
{
    tq_job_msg back;
    tq_validation v;
    char *a = tq_msg_encode(m);
    assert_non_null(a);
    int rc = tq_msg_decode(a, strlen(a), &back, &v);
    if (rc != TQ_OK)
        fail_msg("own encoding rejected: %s %s\n%s", v.items[0].field, v.items[0].message, a);
    assert_msg_equal(m, &back);
    char *b = tq_msg_encode(&back);
    assert_non_null(b);
    assert_string_equal(a, b);
    free(a);
    free(b);
    tq_msg_free(&back);
}

static void test_the_encoding_is_compact_json_in_a_fixed_key_order(void **state)
{
    (void)state;
    tq_job_msg m;
    make_msg(&m,
             "{\"trigger_words\":[\"my-concept\"],\"config\":{\"batch_size\":2,"
             "\"learning_rate\":0.0001},\"base_model\":\"stabilityai/sdxl-base-1.0\","
             "\"type\":\"lora\",\"name\":\"My SDXL LoRA\",\"dataset_id\":\"" DS "\"}",
             "user-1", "2024-01-02T03:04:05.678Z");
    char *s = tq_msg_encode(&m);
    assert_non_null(s);
    assert_string_equal(s, "{\"schema\":\"trainq.job.v1\",\"job_id\":\"" JOB "\","
                           "\"user_id\":\"user-1\",\"submitted_at\":\"2024-01-02T03:04:05.678Z\","
                           "\"dataset_id\":\"" DS "\",\"name\":\"My SDXL LoRA\",\"type\":\"lora\","
                           "\"base_model\":\"stabilityai/sdxl-base-1.0\",\"config\":{"
                           "\"learning_rate\":0.0001,\"batch_size\":2,\"steps\":1000,"
                           "\"resolution\":512,\"lora_rank\":16,\"lora_alpha\":32},"
                           "\"trigger_words\":[\"my-concept\"]}");
    free(s);
    /* without submitted_at the key is left out */
    m.submitted_at[0] = '\0';
    s = tq_msg_encode(&m);
    assert_non_null(s);
    assert_null(strstr(s, "submitted_at"));
    assert_non_null(strstr(s, "\"user_id\":\"user-1\",\"dataset_id\""));
    free(s);
    tq_msg_free(&m);
    tq_msg_free(&m); /* twice is safe */
}

static void test_priority_is_written_last_and_only_when_not_normal(void **state)
{
    (void)state;
    static const char *const names[] = {"low", "normal", "high"};
    for (int i = 0; i < 3; i++) {
        char body[256];
        snprintf(body, sizeof body,
                 "{\"priority\":\"%s\",\"config\":{},\"base_model\":\"a/b\","
                 "\"type\":\"lora\",\"dataset_id\":\"" DS "\"}",
                 names[i]);
        tq_job_msg m;
        make_msg(&m, body, "user-1", "");
        assert_string_equal(tq_priority_name(m.sub.priority), names[i]);
        assert_round_trip(&m);
        char *s = tq_msg_encode(&m);
        assert_non_null(s);
        char want[64];
        snprintf(want, sizeof want, "],\"priority\":\"%s\"}", names[i]);
        if (i == 1) /* a normal job's body is the one it had before priorities existed */
            assert_null(strstr(s, "priority"));
        else
            assert_non_null(strstr(s, want));
        free(s);
        tq_msg_free(&m);
    }
}

static void test_messages_round_trip_exactly(void **state)
{
    (void)state;
    static const struct {
        const char *sub;
        const char *user;
        const char *at;
    } cases[] = {
        {"{\"dataset_id\":\"" DS "\",\"type\":\"lora\",\"base_model\":\"gpt2\",\"config\":{}}", "u",
         ""},
        /* unicode name and trigger words, quotes and backslashes */
        {"{\"dataset_id\":\"" DS
         "\",\"name\":\"\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \\\"q\\\" \\\\ "
         "\xf0\x9f\x98\x80\",\"type\":\"dreambooth\",\"base_model\":\"runwayml/"
         "stable-diffusion-v1-5\","
         "\"config\":{\"learning_rate\":3.3e-5},\"trigger_words\":[\"sks\",\"\xc3\xa9t\xc3\xa9\","
         "\"</script>\",\"a/b\"]}",
         /* a user id is visible ASCII (tq_user_id_valid): the unicode is in the text */
         "user-42", "2024-02-29T23:59:60+05:30"},
        /* every minimum */
        {"{\"dataset_id\":\"" DS "\",\"type\":\"lora\",\"base_model\":\"a/b\",\"config\":{"
         "\"learning_rate\":1e-6,\"batch_size\":1,\"steps\":100,\"resolution\":256,"
         "\"lora_rank\":4,\"lora_alpha\":1}}",
         "auth0|5f7c8ec7c33c6c004bbafe82", "1970-01-01T00:00:00Z"},
        /* every maximum */
        {"{\"dataset_id\":\"" DS "\",\"type\":\"lora\",\"base_model\":\"a/b\",\"config\":{"
         "\"learning_rate\":1e-2,\"batch_size\":8,\"steps\":10000,\"resolution\":1024,"
         "\"lora_rank\":128,\"lora_alpha\":128}}",
         "u", "9999-12-31T23:59:59.999999999-23:59"},
        /* rates without a short decimal form */
        {"{\"dataset_id\":\"" DS "\",\"type\":\"lora\",\"base_model\":\"a/b\",\"config\":{"
         "\"learning_rate\":0.00012345678901234567}}",
         "u", ""},
        {"{\"dataset_id\":\"" DS "\",\"type\":\"lora\",\"base_model\":\"a/b\",\"config\":{"
         "\"learning_rate\":0.0033333333333333335}}",
         "u", ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tq_job_msg m;
        make_msg(&m, cases[i].sub, cases[i].user, cases[i].at);
        assert_round_trip(&m);
        tq_msg_free(&m);
    }
}

static void test_maximal_message_round_trips(void **state)
{
    (void)state;
    /* 200-byte name, 20 trigger words of 100 bytes full of characters JSON escapes,
     * 128-byte user id, 96/96 model id */
    char word[101], name[201], user[129], model[194];
    memset(word, '"', 100);
    word[100] = '\0';
    memset(name, '\\', 200);
    name[200] = '\0';
    memset(user, 'u', 128);
    user[128] = '\0';
    memset(model, 'o', 193);
    model[96] = '/';
    model[193] = '\0';

    tq_job_msg m;
    memset(&m, 0, sizeof m);
    memcpy(m.sub.dataset_id, DS, sizeof m.sub.dataset_id);
    m.sub.name = name;
    m.sub.type = TQ_JOB_DREAMBOOTH;
    m.sub.base_model = model;
    tq_train_config_defaults(&m.sub.config);
    m.sub.config.learning_rate = nextafter(1e-2, 0);
    char *words[20];
    for (int i = 0; i < 20; i++)
        words[i] = word;
    m.sub.trigger_words = words;
    m.sub.n_trigger_words = 20;
    memcpy(m.job_id, JOB, sizeof m.job_id);
    m.user_id = user;
    assert_round_trip(&m);
    char *s = tq_msg_encode(&m);
    assert_true(strlen(s) < TQ_MSG_MAX_BYTES);
    free(s);
    /* m's members are borrowed from the stack here: not freed */
}

static void test_every_learning_rate_in_range_round_trips_bit_exactly(void **state)
{
    (void)state;
    tq_job_msg m;
    make_msg(&m, "{\"dataset_id\":\"" DS "\",\"type\":\"lora\",\"base_model\":\"a\",\"config\":{}}",
             "u", "");
    /* a log-uniform sweep plus the neighbours of the bounds and of common values */
    double probes[] = {1e-6,
                       nextafter(1e-6, 1),
                       1e-2,
                       nextafter(1e-2, 0),
                       1e-4,
                       nextafter(1e-4, 0),
                       nextafter(1e-4, 1),
                       2e-4,
                       5e-5,
                       0.003};
    for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++) {
        m.sub.config.learning_rate = probes[i];
        assert_round_trip(&m);
    }
    for (int i = 0; i <= 2000; i++) {
        m.sub.config.learning_rate = pow(10.0, -6.0 + 4.0 * i / 2000.0);
        if (m.sub.config.learning_rate > 1e-2)
            m.sub.config.learning_rate = 1e-2;
        assert_round_trip(&m);
    }
    /* the short form is used where it exists */
    m.sub.config.learning_rate = 1e-4;
    char *s = tq_msg_encode(&m);
    assert_non_null(strstr(s, "\"learning_rate\":0.0001,"));
    free(s);
    m.sub.config.learning_rate = 1e-6;
    s = tq_msg_encode(&m);
    assert_non_null(strstr(s, "\"learning_rate\":1e-6,"));
    free(s);
    tq_msg_free(&m);
}

static void test_decoding_a_foreign_message_applies_defaults_and_canonicalises(void **state)
{
    (void)state;
    /* what another service may publish: no name, no config values, upper-case ids,
     * spaces, its own key order, no submitted_at */
    const char *body =
        "{ \"config\": {}, \"type\": \"lora\", \"base_model\": \"gpt2\",\n"
        "  \"dataset_id\": \"550E8400-E29B-41D4-A716-446655440000\",\n"
        "  \"user_id\": \"svc-user\", \"job_id\": \"0B6E3F5A-9C1D-4E2F-8A7B-1C2D3E4F5A6B\",\n"
        "  \"schema\": \"trainq.job.v1\" }";
    tq_job_msg m;
    tq_validation v;
    assert_int_equal(tq_msg_decode(body, strlen(body), &m, &v), TQ_OK);
    assert_string_equal(m.job_id, JOB);
    assert_string_equal(m.sub.dataset_id, DS);
    assert_string_equal(m.user_id, "svc-user");
    assert_string_equal(m.submitted_at, "");
    assert_string_equal(m.sub.name, "lora gpt2");
    assert_int_equal(m.sub.config.steps, 1000);
    assert_true(m.sub.config.learning_rate == 1e-4);
    char *a = tq_msg_encode(&m);
    assert_string_equal(a,
                        "{\"schema\":\"trainq.job.v1\",\"job_id\":\"" JOB "\","
                        "\"user_id\":\"svc-user\",\"dataset_id\":\"" DS "\",\"name\":\"lora gpt2\","
                        "\"type\":\"lora\",\"base_model\":\"gpt2\",\"config\":{"
                        "\"learning_rate\":0.0001,\"batch_size\":1,\"steps\":1000,"
                        "\"resolution\":512,\"lora_rank\":16,\"lora_alpha\":32},"
                        "\"trigger_words\":[]}");
    tq_job_msg again;
    assert_int_equal(tq_msg_decode(a, strlen(a), &again, &v), TQ_OK);
    char *b = tq_msg_encode(&again);
    assert_string_equal(a, b);
    free(a);
    free(b);
    tq_msg_free(&again);
    tq_msg_free(&m);
}

/* ---- decode failures ---------------------------------------------------------------- */

#define ENV "\"schema\":\"trainq.job.v1\",\"job_id\":\"" JOB "\",\"user_id\":\"u\""
#define SUB "\"dataset_id\":\"" DS "\",\"type\":\"lora\",\"base_model\":\"gpt2\",\"config\":{}"

static const struct {
    const char *body;
    const char *fields;
    const char *message0;
} bad_cases[] = {
    {"{" ENV "," SUB "}", "", NULL}, /* control: valid */
    {"{\"schema\":\"trainq.job.v2\",\"job_id\":\"" JOB "\",\"user_id\":\"u\"," SUB "}", "schema",
     "must be \"trainq.job.v1\""},
    {"{\"schema\":\"trainq.job.v1 \",\"job_id\":\"" JOB "\",\"user_id\":\"u\"," SUB "}", "schema",
     "must be \"trainq.job.v1\""},
    {"{\"schema\":1,\"job_id\":\"" JOB "\",\"user_id\":\"u\"," SUB "}", "schema",
     "must be a string"},
    {"{\"job_id\":\"" JOB "\",\"user_id\":\"u\"," SUB "}", "schema", "is required"},
    {"{\"schema\":\"trainq.job.v1\",\"user_id\":\"u\"," SUB "}", "job_id", "is required"},
    {"{\"schema\":\"trainq.job.v1\",\"job_id\":\"not-a-uuid\",\"user_id\":\"u\"," SUB "}", "job_id",
     "must be a uuid"},
    {"{\"schema\":\"trainq.job.v1\",\"job_id\":null,\"user_id\":\"u\"," SUB "}", "job_id",
     "must be a string"},
    {"{\"schema\":\"trainq.job.v1\",\"job_id\":\"" JOB "\"," SUB "}", "user_id", "is required"},
    {"{\"schema\":\"trainq.job.v1\",\"job_id\":\"" JOB "\",\"user_id\":\"\"," SUB "}", "user_id",
     "must be 1 to 128 bytes"},
    {"{\"schema\":\"trainq.job.v1\",\"job_id\":\"" JOB "\",\"user_id\":42," SUB "}", "user_id",
     "must be a string"},
    {"{\"schema\":\"trainq.job.v1\",\"job_id\":\"" JOB "\",\"user_id\":\"a\\nb\"," SUB "}",
     "user_id", "must not contain control characters"},
    {"{" ENV ",\"submitted_at\":\"yesterday\"," SUB "}", "submitted_at",
     "must be an rfc 3339 timestamp"},
    {"{" ENV ",\"submitted_at\":1700000000," SUB "}", "submitted_at", "must be a string"},
    {"{" ENV "," SUB ",\"priority\":9}", "priority",
     "must be one of \"low\", \"normal\", \"high\""},
    {"{" ENV "," SUB ",\"Priority\":\"high\"}", "Priority", "unknown field"},
    {"{" ENV "," SUB ",\"Schema\":\"x\"}", "Schema", "unknown field"},
    {"{" ENV ",\"dataset_id\":\"" DS "\",\"type\":\"lora\",\"base_model\":\"gpt2\","
     "\"config\":{\"schema\":\"trainq.job.v1\"}}",
     "config.schema", "unknown field"},
    {"{" ENV ",\"dataset_id\":\"" DS "\",\"type\":\"lora\",\"base_model\":\"gpt2\","
     "\"config\":{\"steps\":50}}",
     "config.steps", "must be between 100 and 10000"},
    {"{" ENV "}", "dataset_id,type,base_model,config", "is required"},
    /* envelope and submission errors together, envelope first */
    {"{\"schema\":\"x\",\"job_id\":\"y\",\"user_id\":\"\",\"submitted_at\":\"z\","
     "\"dataset_id\":\"d\",\"type\":\"t\",\"base_model\":\"-\",\"config\":{\"stpes\":1},\"w\":0}",
     "schema,job_id,user_id,submitted_at,dataset_id,type,base_model,config.stpes,w",
     "must be \"trainq.job.v1\""},
    /* the parser's rules */
    {"{" ENV ",\"job_id\":\"" JOB "\"," SUB "}", "body", NULL},
    {"{" ENV "," SUB "", "body", NULL},
    {"{" ENV "," SUB "}}", "body", NULL},
    {"[{" ENV "," SUB "}]", "body", "must be a json object"},
    {"{" ENV "," SUB ",\"name\":\"a\\u0000\"}", "body", NULL},
    {"{" ENV "," SUB ",\"x\":[[[[[[[[]]]]]]]]}", "body",
     "invalid json: nesting deeper than 8 levels"},
};

static void test_invalid_messages_report_the_failing_fields(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        tq_job_msg m;
        tq_validation v;
        char got[512] = "";
        size_t o = 0;
        int rc = tq_msg_decode(bad_cases[i].body, strlen(bad_cases[i].body), &m, &v);
        for (size_t k = 0; k < v.n; k++)
            o += (size_t)snprintf(got + o, sizeof got - o, "%s%s", k ? "," : "", v.items[k].field);
        if (strcmp(got, bad_cases[i].fields) != 0)
            fail_msg("case %zu: fields \"%s\", want \"%s\"", i, got, bad_cases[i].fields);
        if (bad_cases[i].fields[0] == '\0') {
            assert_int_equal(rc, TQ_OK);
            tq_msg_free(&m);
            continue;
        }
        assert_int_equal(rc, TQ_ERR_INVALID);
        assert_null(m.user_id);
        assert_null(m.sub.name);
        if (bad_cases[i].message0 && strcmp(v.items[0].message, bad_cases[i].message0) != 0)
            fail_msg("case %zu: message \"%s\", want \"%s\"", i, v.items[0].message,
                     bad_cases[i].message0);
    }
}

static void test_user_id_is_capped_at_128_bytes(void **state)
{
    (void)state;
    char user[200], body[1024];
    tq_job_msg m;
    tq_validation v;
    memset(user, 'u', 128);
    user[128] = '\0';
    snprintf(body, sizeof body,
             "{\"schema\":\"trainq.job.v1\",\"job_id\":\"" JOB "\",\"user_id\":\"%s\"," SUB "}",
             user);
    assert_int_equal(tq_msg_decode(body, strlen(body), &m, &v), TQ_OK);
    assert_int_equal(strlen(m.user_id), 128);
    tq_msg_free(&m);
    user[128] = 'u';
    user[129] = '\0';
    snprintf(body, sizeof body,
             "{\"schema\":\"trainq.job.v1\",\"job_id\":\"" JOB "\",\"user_id\":\"%s\"," SUB "}",
             user);
    assert_int_equal(tq_msg_decode(body, strlen(body), &m, &v), TQ_ERR_INVALID);
    assert_int_equal(v.n, 1);
    assert_string_equal(v.items[0].field, "user_id");
    assert_string_equal(v.items[0].message, "must be 1 to 128 bytes");
    /* The rule itself (tq_user_id_valid) is tested in test_job.c. */
}

static void test_a_user_id_with_a_space_or_non_ascii_is_refused(void **state)
{
    (void)state;
    const char *bad[] = {"a b", "\xe7\x94\xa8x", "caf\xc3\xa9"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char body[512];
        tq_job_msg m;
        tq_validation v = {0};
        snprintf(body, sizeof body,
                 "{\"schema\":\"trainq.job.v1\",\"job_id\":\"" JOB "\",\"user_id\":\"%s\"," SUB "}",
                 bad[i]);
        assert_int_equal(tq_msg_decode(body, strlen(body), &m, &v), TQ_ERR_INVALID);
        assert_int_equal(v.n, 1);
        assert_string_equal(v.items[0].field, "user_id");
        assert_string_equal(v.items[0].message, "must be visible ascii, without spaces");
    }
}

static void test_a_body_over_64_kib_is_refused(void **state)
{
    (void)state;
    static char buf[TQ_MSG_MAX_BYTES + 1];
    memset(buf, ' ', sizeof buf);
    buf[0] = '{';
    tq_job_msg m;
    tq_validation v;
    assert_int_equal(tq_msg_decode(buf, sizeof buf, &m, &v), TQ_ERR_TOO_LARGE);
    assert_int_equal(v.n, 1);
    assert_string_equal(v.items[0].field, "body");
    assert_null(m.user_id);
    assert_int_equal(tq_msg_decode(buf, sizeof buf, &m, NULL), TQ_ERR_TOO_LARGE);
}

static void test_encode_refuses_what_consumers_would_reject(void **state)
{
    (void)state;
    tq_job_msg m;
    make_msg(&m, "{" SUB "}", "u", "");
    char *s = tq_msg_encode(&m);
    assert_non_null(s);
    free(s);

    free(m.user_id);
    m.user_id = strdup("");
    assert_null(tq_msg_encode(&m));
    free(m.user_id);
    m.user_id = NULL;
    assert_null(tq_msg_encode(&m));
    m.user_id = strdup("u");

    memcpy(m.job_id, "0B6E3F5A-9C1D-4E2F-8A7B-1C2D3E4F5A6B", sizeof m.job_id);
    assert_null(tq_msg_encode(&m)); /* would not decode back to the same id */
    memcpy(m.job_id, "nope", 5);
    assert_null(tq_msg_encode(&m));
    memcpy(m.job_id, JOB, sizeof m.job_id);

    snprintf(m.submitted_at, sizeof m.submitted_at, "%s", "2024-13-01T00:00:00Z");
    assert_null(tq_msg_encode(&m));
    m.submitted_at[0] = '\0';

    m.sub.config.steps = 99;
    assert_null(tq_msg_encode(&m));
    m.sub.config.steps = 1000;
    m.sub.config.learning_rate = 0.5;
    assert_null(tq_msg_encode(&m));
    m.sub.config.learning_rate = 1e-4;

    s = tq_msg_encode(&m);
    assert_non_null(s);
    free(s);
    tq_msg_free(&m);
}

static void test_rfc3339_timestamps(void **state)
{
    (void)state;
    const char *ok[] = {"2024-01-02T03:04:05Z",      "2024-01-02t03:04:05z",
                        "2024-01-02T03:04:05.1Z",    "2024-01-02T03:04:05.123456789Z",
                        "2024-01-02T03:04:05+00:00", "2024-01-02T03:04:05-08:00",
                        "2024-02-29T00:00:00Z",      "2000-02-29T00:00:00Z",
                        "2016-12-31T23:59:60Z",      "0000-01-01T00:00:00Z"};
    const char *bad[] = {"",
                         "2024-01-02",
                         "2024-01-02 03:04:05Z",
                         "2024-01-02T03:04:05",
                         "2024-01-02T03:04:05.Z",
                         "2024-01-02T03:04:05.1234567890Z",
                         "2024-13-02T03:04:05Z",
                         "2024-00-02T03:04:05Z",
                         "2023-02-29T03:04:05Z",
                         "1900-02-29T03:04:05Z",
                         "2024-04-31T03:04:05Z",
                         "2024-01-02T24:00:00Z",
                         "2024-01-02T03:60:05Z",
                         "2024-01-02T03:04:61Z",
                         "2024-01-02T03:04:05+0100",
                         "2024-01-02T03:04:05+24:00",
                         "2024-01-02T03:04:05Zjunk",
                         "+2024-01-02T03:04:05Z",
                         "2024-1-02T03:04:05Z",
                         NULL};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        if (!tq_rfc3339_valid(ok[i]))
            fail_msg("rejected %s", ok[i]);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (tq_rfc3339_valid(bad[i]))
            fail_msg("accepted %s", bad[i] ? bad[i] : "(null)");
    char now[TQ_TIMESTAMP_BUF];
    tq_rfc3339_now(now);
    assert_true(tq_rfc3339_valid(now));
    assert_int_equal(strlen(now), 24);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_the_encoding_is_compact_json_in_a_fixed_key_order),
        cmocka_unit_test(test_priority_is_written_last_and_only_when_not_normal),
        cmocka_unit_test(test_messages_round_trip_exactly),
        cmocka_unit_test(test_maximal_message_round_trips),
        cmocka_unit_test(test_every_learning_rate_in_range_round_trips_bit_exactly),
        cmocka_unit_test(test_decoding_a_foreign_message_applies_defaults_and_canonicalises),
        cmocka_unit_test(test_invalid_messages_report_the_failing_fields),
        cmocka_unit_test(test_user_id_is_capped_at_128_bytes),
        cmocka_unit_test(test_a_user_id_with_a_space_or_non_ascii_is_refused),
        cmocka_unit_test(test_a_body_over_64_kib_is_refused),
        cmocka_unit_test(test_encode_refuses_what_consumers_would_reject),
        cmocka_unit_test(test_rfc3339_timestamps),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
