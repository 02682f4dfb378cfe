/*
 * Unit tests for the submission model (shared/tq_job.c) and uuids (shared/tq_uuid.c).
 * Every boundary of the seed's rules is a table row: the value on the boundary is
 * accepted, the nearest value outside is rejected with the exact field and message.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tq_err.h"
#include "tq_job.h"
#include "tq_uuid.h"

#define DS "550e8400-e29b-41d4-a716-446655440000"
#define HEAD                                                                                       \
    "{\"dataset_id\":\"" DS "\",\"type\":\"lora\",\"base_model\":\"stabilityai/sdxl-base-1.0\""

/* Joins the failing field names with ',' so a test asserts the exact set, in order. */
static void fields_of(const tq_validation *v, char *buf, size_t cap)
{
    size_t o = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < v->n; i++) {
        int r = snprintf(buf + o, cap - o, "%s%s", i ? "," : "", v->items[i].field);
        assert_true(r > 0 && (size_t)r < cap - o);
        o += (size_t)r;
    }
}

static int parse_str(const char *body, tq_submission *s, tq_validation *v)
{
    return tq_submission_parse(body, strlen(body), s, v);
}

/* ---- config: every numeric boundary ------------------------------------------------- */

typedef struct {
    const char *key;
    const char *literal; /* JSON text of the value */
    int ok;
    double want;         /* stored value when ok */
    const char *message; /* exact message when rejected */
} config_case;

static const config_case config_cases[] = {
    /* learning_rate: number, 1e-6..1e-2 inclusive */
    {"learning_rate", "1e-6", 1, 1e-6, NULL},
    {"learning_rate", "0.000001", 1, 1e-6, NULL},
    {"learning_rate", "1e-2", 1, 1e-2, NULL},
    {"learning_rate", "0.01", 1, 1e-2, NULL},
    {"learning_rate", "0.0001", 1, 1e-4, NULL},
    {"learning_rate", "3e-4", 1, 3e-4, NULL},
    {"learning_rate", "9.9e-7", 0, 0, "must be between 0.000001 and 0.01"},
    {"learning_rate", "1.01e-2", 0, 0, "must be between 0.000001 and 0.01"},
    {"learning_rate", "0", 0, 0, "must be between 0.000001 and 0.01"},
    {"learning_rate", "-0.0001", 0, 0, "must be between 0.000001 and 0.01"},
    {"learning_rate", "1", 0, 0, "must be between 0.000001 and 0.01"},
    {"learning_rate", "\"0.0001\"", 0, 0, "must be a number"},
    {"learning_rate", "true", 0, 0, "must be a number"},
    {"learning_rate", "null", 0, 0, "must be a number"},
    {"learning_rate", "[0.0001]", 0, 0, "must be a number"},
    {"learning_rate", "{}", 0, 0, "must be a number"},
    /* batch_size: integer 1..8 */
    {"batch_size", "1", 1, 1, NULL},
    {"batch_size", "8", 1, 8, NULL},
    {"batch_size", "2.0", 1, 2, NULL},
    {"batch_size", "0", 0, 0, "must be between 1 and 8"},
    {"batch_size", "9", 0, 0, "must be between 1 and 8"},
    {"batch_size", "-1", 0, 0, "must be between 1 and 8"},
    {"batch_size", "2.5", 0, 0, "must be an integer"},
    {"batch_size", "1.0000001", 0, 0, "must be an integer"},
    {"batch_size", "\"2\"", 0, 0, "must be a number"},
    {"batch_size", "false", 0, 0, "must be a number"},
    {"batch_size", "null", 0, 0, "must be a number"},
    {"batch_size", "[1]", 0, 0, "must be a number"},
    {"batch_size", "1e300", 0, 0, "must be between 1 and 8"},
    {"batch_size", "99999999999999999999999", 0, 0, "must be between 1 and 8"},
    /* steps: integer 100..10000 */
    {"steps", "100", 1, 100, NULL},
    {"steps", "10000", 1, 10000, NULL},
    {"steps", "1e3", 1, 1000, NULL},
    {"steps", "99", 0, 0, "must be between 100 and 10000"},
    {"steps", "10001", 0, 0, "must be between 100 and 10000"},
    {"steps", "100.5", 0, 0, "must be an integer"},
    {"steps", "\"1000\"", 0, 0, "must be a number"},
    {"steps", "true", 0, 0, "must be a number"},
    /* resolution: integer 256..1024, multiple of 64 */
    {"resolution", "256", 1, 256, NULL},
    {"resolution", "1024", 1, 1024, NULL},
    {"resolution", "320", 1, 320, NULL},
    {"resolution", "512.0", 1, 512, NULL},
    {"resolution", "255", 0, 0, "must be between 256 and 1024"},
    {"resolution", "1025", 0, 0, "must be between 256 and 1024"},
    {"resolution", "192", 0, 0, "must be between 256 and 1024"},
    {"resolution", "1088", 0, 0, "must be between 256 and 1024"},
    {"resolution", "300", 0, 0, "must be a multiple of 64"},
    {"resolution", "1023", 0, 0, "must be a multiple of 64"},
    {"resolution", "512.5", 0, 0, "must be an integer"},
    {"resolution", "\"512\"", 0, 0, "must be a number"},
    /* lora_rank: integer 4..128 */
    {"lora_rank", "4", 1, 4, NULL},
    {"lora_rank", "128", 1, 128, NULL},
    {"lora_rank", "3", 0, 0, "must be between 4 and 128"},
    {"lora_rank", "129", 0, 0, "must be between 4 and 128"},
    {"lora_rank", "4.5", 0, 0, "must be an integer"},
    {"lora_rank", "null", 0, 0, "must be a number"},
    /* lora_alpha: integer 1..128 */
    {"lora_alpha", "1", 1, 1, NULL},
    {"lora_alpha", "128", 1, 128, NULL},
    {"lora_alpha", "0", 0, 0, "must be between 1 and 128"},
    {"lora_alpha", "129", 0, 0, "must be between 1 and 128"},
    {"lora_alpha", "0.5", 0, 0, "must be an integer"},
    {"lora_alpha", "\"32\"", 0, 0, "must be a number"},
};

static double stored(const tq_train_config *c, const char *key)
{
    if (strcmp(key, "learning_rate") == 0)
        return c->learning_rate;
    if (strcmp(key, "batch_size") == 0)
        return c->batch_size;
    if (strcmp(key, "steps") == 0)
        return c->steps;
    if (strcmp(key, "resolution") == 0)
        return c->resolution;
    if (strcmp(key, "lora_rank") == 0)
        return c->lora_rank;
    if (strcmp(key, "lora_alpha") == 0)
        return c->lora_alpha;
    fail_msg("no such key %s", key);
    return 0;
}

static void test_every_config_boundary_is_accepted_or_rejected_exactly(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof config_cases / sizeof config_cases[0]; i++) {
        const config_case *c = &config_cases[i];
        char body[512], field[64];
        tq_submission s;
        tq_validation v;
        snprintf(body, sizeof body, HEAD ",\"config\":{\"%s\":%s}}", c->key, c->literal);
        int rc = parse_str(body, &s, &v);
        if (c->ok) {
            if (rc != TQ_OK)
                fail_msg("%s=%s rejected: %s %s", c->key, c->literal, v.items[0].field,
                         v.items[0].message);
            /* bit-exact: 1e-6 in JSON is the same double as the C literal */
            double got = stored(&s.config, c->key);
            if (memcmp(&got, &c->want, sizeof got) != 0)
                fail_msg("%s=%s stored %.17g", c->key, c->literal, got);
            tq_submission_free(&s);
        } else {
            if (rc != TQ_ERR_INVALID)
                fail_msg("%s=%s accepted (rc %d)", c->key, c->literal, rc);
            snprintf(field, sizeof field, "config.%s", c->key);
            assert_int_equal(v.n, 1);
            assert_string_equal(v.items[0].field, field);
            if (strcmp(v.items[0].message, c->message) != 0)
                fail_msg("%s=%s: message \"%s\", want \"%s\"", c->key, c->literal,
                         v.items[0].message, c->message);
            assert_null(s.name); /* nothing handed out on failure */
        }
    }
}

static void test_absent_optional_fields_get_the_seed_defaults(void **state)
{
    (void)state;
    tq_submission s;
    tq_validation v;
    assert_int_equal(parse_str(HEAD ",\"config\":{}}", &s, &v), TQ_OK);
    assert_int_equal(v.n, 0);
    assert_string_equal(s.dataset_id, DS);
    assert_string_equal(s.name, "lora stabilityai/sdxl-base-1.0");
    assert_int_equal(s.type, TQ_JOB_LORA);
    assert_string_equal(s.base_model, "stabilityai/sdxl-base-1.0");
    assert_true(s.config.learning_rate == 1e-4);
    assert_int_equal(s.config.batch_size, 1);
    assert_int_equal(s.config.steps, 1000);
    assert_int_equal(s.config.resolution, 512);
    assert_int_equal(s.config.lora_rank, 16);
    assert_int_equal(s.config.lora_alpha, 32);
    assert_int_equal(s.n_trigger_words, 0);
    assert_null(s.trigger_words);
    tq_submission_free(&s);
    tq_submission_free(&s); /* twice is safe */

    /* only some config keys: the others keep their defaults */
    assert_int_equal(parse_str("{\"dataset_id\":\"" DS "\",\"type\":\"dreambooth\","
                               "\"base_model\":\"gpt2\",\"config\":{\"steps\":200}}",
                               &s, &v),
                     TQ_OK);
    assert_string_equal(s.name, "dreambooth gpt2");
    assert_int_equal(s.type, TQ_JOB_DREAMBOOTH);
    assert_int_equal(s.config.steps, 200);
    assert_int_equal(s.config.batch_size, 1);
    assert_int_equal(s.config.lora_alpha, 32);
    tq_submission_free(&s);
}

static void test_the_seed_example_is_accepted_as_written(void **state)
{
    (void)state;
    const char *body = "{\n"
                       "    \"dataset_id\": \"550e8400-e29b-41d4-a716-446655440000\",\n"
                       "    \"name\": \"My SDXL LoRA\",\n"
                       "    \"type\": \"lora\",\n"
                       "    \"base_model\": \"stabilityai/sdxl-base-1.0\",\n"
                       "    \"config\": {\n"
                       "      \"learning_rate\": 0.0001,\n"
                       "      \"batch_size\": 2,\n"
                       "      \"steps\": 1000,\n"
                       "      \"resolution\": 512,\n"
                       "      \"lora_rank\": 16,\n"
                       "      \"lora_alpha\": 32\n"
                       "    },\n"
                       "    \"trigger_words\": [\"my-concept\"]\n"
                       "  }";
    tq_submission s;
    tq_validation v;
    assert_int_equal(parse_str(body, &s, &v), TQ_OK);
    assert_string_equal(s.name, "My SDXL LoRA");
    assert_int_equal(s.config.batch_size, 2);
    assert_int_equal(s.n_trigger_words, 1);
    assert_string_equal(s.trigger_words[0], "my-concept");
    tq_submission_free(&s);
}

static void test_dataset_id_is_stored_lowercase(void **state)
{
    (void)state;
    tq_submission s;
    tq_validation v;
    assert_int_equal(parse_str("{\"dataset_id\":\"550E8400-E29B-41D4-A716-446655440000\","
                               "\"type\":\"lora\",\"base_model\":\"gpt2\",\"config\":{}}",
                               &s, &v),
                     TQ_OK);
    assert_string_equal(s.dataset_id, DS);
    tq_submission_free(&s);
}

/* ---- top-level fields: types, required, unknown, many errors at once ---------------- */

typedef struct {
    const char *body;
    const char *fields;   /* exact comma-joined list of failing fields */
    const char *message0; /* exact message of the first, or NULL to skip */
} body_case;

static const body_case body_cases[] = {
    {"{}", "dataset_id,type,base_model,config", "is required"},
    {"{\"type\":\"lora\",\"base_model\":\"gpt2\",\"config\":{}}", "dataset_id", "is required"},
    {"{\"dataset_id\":\"" DS "\",\"base_model\":\"gpt2\",\"config\":{}}", "type", "is required"},
    {"{\"dataset_id\":\"" DS "\",\"type\":\"lora\",\"config\":{}}", "base_model", "is required"},
    {HEAD "}", "config", "is required"},
    {HEAD ",\"config\":null}", "config", "must be an object"},
    {HEAD ",\"config\":[]}", "config", "must be an object"},
    {HEAD ",\"config\":\"{}\"}", "config", "must be an object"},
    {"{\"dataset_id\":5,\"name\":7,\"type\":true,\"base_model\":null,\"config\":[],"
     "\"trigger_words\":\"x\"}",
     "dataset_id,name,type,base_model,config,trigger_words", "must be a string"},
    {"{\"dataset_id\":\"not-a-uuid\",\"type\":\"lora\",\"base_model\":\"gpt2\",\"config\":{}}",
     "dataset_id", "must be a uuid"},
    {"{\"dataset_id\":\"550e8400e29b41d4a716446655440000\",\"type\":\"lora\","
     "\"base_model\":\"gpt2\",\"config\":{}}",
     "dataset_id", "must be a uuid"},
    {"{\"dataset_id\":\"550e8400-e29b-41d4-a716-44665544000g\",\"type\":\"lora\","
     "\"base_model\":\"gpt2\",\"config\":{}}",
     "dataset_id", "must be a uuid"},
    {"{\"dataset_id\":\"" DS "\",\"type\":\"LoRA\",\"base_model\":\"gpt2\",\"config\":{}}", "type",
     "must be one of \"lora\", \"dreambooth\""},
    {"{\"dataset_id\":\"" DS "\",\"type\":\"gan\",\"base_model\":\"gpt2\",\"config\":{}}", "type",
     "must be one of \"lora\", \"dreambooth\""},
    {"{\"dataset_id\":\"" DS "\",\"type\":\"lora\",\"base_model\":\"a//b\",\"config\":{}}",
     "base_model", "must be a hugging face model id (\"name\" or \"owner/name\")"},
    {HEAD ",\"name\":null,\"config\":{}}", "name", "must be a string"},
    {HEAD ",\"name\":\"\",\"config\":{}}", "name", "must be 1 to 200 bytes"},
    {HEAD ",\"name\":\"tab\\there\",\"config\":{}}", "name", "must not contain control characters"},
    {HEAD ",\"name\":\"del\\u007f\",\"config\":{}}", "name", "must not contain control characters"},
    {HEAD ",\"name\":\"c1\\u0085\",\"config\":{}}", "name", "must not contain control characters"},
    {HEAD ",\"name\":\"nl\\n\",\"config\":{}}", "name", "must not contain control characters"},
    {HEAD ",\"config\":{},\"trigger_words\":null}", "trigger_words", "must be an array"},
    {HEAD ",\"config\":{},\"trigger_words\":{}}", "trigger_words", "must be an array"},
    {HEAD ",\"config\":{},\"trigger_words\":[\"ok\",\"\",3,\"a\\u0001\"]}",
     "trigger_words[1],trigger_words[2],trigger_words[3]", "must be 1 to 100 bytes"},
    /* unknown keys: a typo must never become a default */
    {HEAD ",\"config\":{\"stpes\":5000}}", "config.stpes", "unknown field"},
    {HEAD ",\"config\":{},\"priority\":1}", "priority",
     "must be one of \"low\", \"normal\", \"high\""},
    {HEAD ",\"config\":{},\"priority\":\"urgent\"}", "priority",
     "must be one of \"low\", \"normal\", \"high\""},
    {HEAD ",\"config\":{},\"Priority\":\"high\"}", "Priority", "unknown field"},
    {HEAD ",\"config\":{},\"Name\":\"x\"}", "Name", "unknown field"},
    {HEAD ",\"config\":{\"steps\":1000,\"learningRate\":0.1,\"epochs\":3}}",
     "config.learningRate,config.epochs", "unknown field"},
    /* everything wrong at once: every field reported, config keys in fixed order, then
     * unknown keys in document order */
    {"{\"zz\":1,\"dataset_id\":\"nope\",\"type\":\"gan\",\"base_model\":\"a//b\","
     "\"name\":\"\",\"config\":{\"stpes\":1,\"resolution\":300,\"steps\":5,"
     "\"learning_rate\":\"x\",\"batch_size\":2.5,\"lora_rank\":200,\"lora_alpha\":0},"
     "\"trigger_words\":[\"ok\",\"\"],\"extra\":1}",
     "dataset_id,name,type,base_model,config.learning_rate,config.batch_size,config.steps,"
     "config.resolution,config.lora_rank,config.lora_alpha,config.stpes,trigger_words[1],zz,"
     "extra",
     "must be a uuid"},
};

static void test_every_failing_field_is_reported_with_its_reason(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof body_cases / sizeof body_cases[0]; i++) {
        const body_case *c = &body_cases[i];
        tq_submission s;
        tq_validation v;
        char got[1024];
        int rc = parse_str(c->body, &s, &v);
        if (rc != TQ_ERR_INVALID)
            fail_msg("case %zu accepted: %s", i, c->body);
        fields_of(&v, got, sizeof got);
        if (strcmp(got, c->fields) != 0)
            fail_msg("case %zu: fields \"%s\", want \"%s\"", i, got, c->fields);
        if (c->message0 && strcmp(v.items[0].message, c->message0) != 0)
            fail_msg("case %zu: message \"%s\", want \"%s\"", i, v.items[0].message, c->message0);
    }
}

static void test_wrong_type_messages_name_the_expected_type(void **state)
{
    (void)state;
    tq_submission s;
    tq_validation v;
    assert_int_equal(parse_str("{\"dataset_id\":5,\"name\":7,\"type\":true,\"base_model\":null,"
                               "\"config\":[],\"trigger_words\":\"x\"}",
                               &s, &v),
                     TQ_ERR_INVALID);
    assert_int_equal(v.n, 6);
    const char *want[] = {"must be a string", "must be a string",  "must be a string",
                          "must be a string", "must be an object", "must be an array"};
    for (size_t i = 0; i < 6; i++)
        assert_string_equal(v.items[i].message, want[i]);
}

static void test_more_than_32_errors_are_capped_not_overflowed(void **state)
{
    (void)state;
    char body[4096];
    size_t o = (size_t)snprintf(body, sizeof body, "%s", HEAD ",\"config\":{}");
    for (int i = 0; i < 40; i++)
        o += (size_t)snprintf(body + o, sizeof body - o, ",\"k%d\":%d", i, i);
    snprintf(body + o, sizeof body - o, "}");
    tq_submission s;
    tq_validation v;
    assert_int_equal(parse_str(body, &s, &v), TQ_ERR_INVALID);
    assert_int_equal(v.n, TQ_VALIDATION_MAX);
    assert_string_equal(v.items[0].field, "k0");
    assert_string_equal(v.items[31].field, "k31");
}

static void test_reported_key_names_are_cleaned_and_cut(void **state)
{
    (void)state;
    char body[1024], key[301];
    memset(key, 'x', 300);
    key[300] = '\0';
    snprintf(body, sizeof body,
             HEAD ",\"config\":{},\"%s\":1,\"a\\u0001b\":2,\"\xc3\xa9t\xc3\xa9\":3}", key);
    tq_submission s;
    tq_validation v;
    assert_int_equal(parse_str(body, &s, &v), TQ_ERR_INVALID);
    assert_int_equal(v.n, 3);
    assert_int_equal(strlen(v.items[0].field), 63);
    assert_string_equal(v.items[1].field, "a?b");
    assert_string_equal(v.items[2].field, "\xc3\xa9t\xc3\xa9");

    /* a two-byte character is never cut in half */
    char ukey[200] = "";
    for (int i = 0; i < 40; i++)
        memcpy(ukey + 2 * i, "\xc3\xa9", 3);
    snprintf(body, sizeof body, HEAD ",\"config\":{},\"%s\":1}", ukey);
    assert_int_equal(parse_str(body, &s, &v), TQ_ERR_INVALID);
    assert_int_equal(strlen(v.items[0].field), 62);

    json_t *j = tq_validation_to_json(&v);
    assert_non_null(j);
    assert_int_equal(json_array_size(j), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(j, 0), "message")),
                        "unknown field");
    json_decref(j);
}

/* ---- caps on strings and arrays ----------------------------------------------------- */

static int parse_with_name(const char *name, tq_submission *s, tq_validation *v)
{
    char body[1024];
    snprintf(body, sizeof body, HEAD ",\"name\":\"%s\",\"config\":{}}", name);
    return parse_str(body, s, v);
}

static void test_name_is_capped_at_200_bytes(void **state)
{
    (void)state;
    char name[300];
    tq_submission s;
    tq_validation v;

    memset(name, 'n', 200);
    name[200] = '\0';
    assert_int_equal(parse_with_name(name, &s, &v), TQ_OK);
    assert_string_equal(s.name, name);
    tq_submission_free(&s);

    name[200] = 'n';
    name[201] = '\0';
    assert_int_equal(parse_with_name(name, &s, &v), TQ_ERR_INVALID);
    assert_int_equal(v.n, 1);
    assert_string_equal(v.items[0].field, "name");
    assert_string_equal(v.items[0].message, "must be 1 to 200 bytes");

    /* bytes, not characters: 100 x "é" is 200 bytes (ok), 101 is 202 (rejected) */
    for (int i = 0; i < 100; i++)
        memcpy(name + 2 * i, "\xc3\xa9", 3);
    assert_int_equal(parse_with_name(name, &s, &v), TQ_OK);
    tq_submission_free(&s);
    memcpy(name + 200, "\xc3\xa9", 3);
    assert_int_equal(parse_with_name(name, &s, &v), TQ_ERR_INVALID);

    assert_int_equal(parse_with_name("x", &s, &v), TQ_OK);
    tq_submission_free(&s);
}

static void test_default_name_of_a_long_model_id_is_cut_to_200_bytes(void **state)
{
    (void)state;
    char id[200], body[512];
    memset(id, 'o', 96);
    id[96] = '/';
    memset(id + 97, 'm', 96);
    id[193] = '\0';
    snprintf(body, sizeof body,
             "{\"dataset_id\":\"" DS
             "\",\"type\":\"dreambooth\",\"base_model\":\"%s\",\"config\":{}}",
             id);
    tq_submission s;
    tq_validation v;
    assert_int_equal(parse_str(body, &s, &v), TQ_OK);
    assert_int_equal(strlen(s.name), 200);
    assert_memory_equal(s.name, "dreambooth oooo", 15);
    assert_string_equal(s.base_model, id);
    tq_submission_free(&s);
}

static int parse_with_words(int n, size_t len, tq_submission *s, tq_validation *v)
{
    static char body[8192];
    char word[256];
    memset(word, 'w', len);
    word[len] = '\0';
    size_t o = (size_t)snprintf(body, sizeof body, "%s", HEAD ",\"config\":{},\"trigger_words\":[");
    for (int i = 0; i < n; i++)
        o += (size_t)snprintf(body + o, sizeof body - o, "%s\"%s\"", i ? "," : "", word);
    snprintf(body + o, sizeof body - o, "]}");
    return parse_str(body, s, v);
}

static void test_trigger_words_are_capped_at_20_words_of_100_bytes(void **state)
{
    (void)state;
    tq_submission s;
    tq_validation v;

    assert_int_equal(parse_with_words(20, 100, &s, &v), TQ_OK);
    assert_int_equal(s.n_trigger_words, 20);
    assert_int_equal(strlen(s.trigger_words[19]), 100);
    tq_submission_free(&s);

    assert_int_equal(parse_with_words(21, 5, &s, &v), TQ_ERR_INVALID);
    assert_int_equal(v.n, 1);
    assert_string_equal(v.items[0].field, "trigger_words");
    assert_string_equal(v.items[0].message, "must have at most 20 items");

    assert_int_equal(parse_with_words(3, 101, &s, &v), TQ_ERR_INVALID);
    char got[256];
    fields_of(&v, got, sizeof got);
    assert_string_equal(got, "trigger_words[0],trigger_words[1],trigger_words[2]");
    assert_string_equal(v.items[0].message, "must be 1 to 100 bytes");

    assert_int_equal(parse_with_words(1, 1, &s, &v), TQ_OK);
    tq_submission_free(&s);
    assert_int_equal(parse_with_words(0, 1, &s, &v), TQ_OK);
    assert_int_equal(s.n_trigger_words, 0);
    tq_submission_free(&s);
}

/* ---- Hugging Face ids --------------------------------------------------------------- */

static void test_hugging_face_ids_accepted(void **state)
{
    (void)state;
    char p96[97], both96[194];
    memset(p96, 'a', 96);
    p96[96] = '\0';
    memcpy(both96, p96, 96);
    both96[96] = '/';
    memcpy(both96 + 97, p96, 97);
    const char *ok[] = {
        "stabilityai/sdxl-base-1.0",
        "gpt2",
        "runwayml/stable-diffusion-v1-5",
        "a/b",
        "a",
        "A1",
        "stabilityai/stable-diffusion-xl-base-1.0",
        "CompVis/stable-diffusion-v1-4",
        "openai/clip-vit-large-patch14",
        "bert-base-uncased",
        "h94/IP-Adapter",
        "user_name/model_name",
        "a.b-c_d/e.f-g_h",
        "0/9",
        "x_/y_",
        "a-b.c",
        p96,
        both96,
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        if (!tq_hf_model_id_valid(ok[i]))
            fail_msg("rejected \"%s\"", ok[i]);
}

static void test_hugging_face_ids_rejected(void **state)
{
    (void)state;
    char p97[200], long_owner[300];
    memset(p97, 'a', 97);
    p97[97] = '\0';
    snprintf(long_owner, sizeof long_owner, "%s/model", p97);
    const char *bad[] = {
        "",
        "/x",
        "x/",
        "/",
        "a/b/c",
        "a//b",
        "-x",
        "x-",
        "x.",
        ".x",
        "_x",
        "a..b",
        "a--b",
        "x y",
        " x",
        "x\t",
        "\xc3\xbcn\xc3\xaf"
        "code",
        "../etc",
        "owner/../x",
        "a/-b",
        "a-/b",
        "a:b",
        "a@b",
        "https://huggingface.co/gpt2",
        "a\\b",
        p97,
        long_owner,
        NULL,
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (tq_hf_model_id_valid(bad[i]))
            fail_msg("accepted \"%s\"", bad[i] ? bad[i] : "(null)");
}

static void test_base_model_in_a_body_uses_the_same_rule(void **state)
{
    (void)state;
    tq_submission s;
    tq_validation v;
    assert_int_equal(parse_str("{\"dataset_id\":\"" DS "\",\"type\":\"lora\",\"base_model\":"
                               "\"../etc\",\"config\":{}}",
                               &s, &v),
                     TQ_ERR_INVALID);
    assert_int_equal(v.n, 1);
    assert_string_equal(v.items[0].field, "base_model");
}

/* ---- the parser's caps -------------------------------------------------------------- */

static void expect_body_error(const char *buf, size_t len, int want_rc, const char *contains)
{
    tq_submission s;
    tq_validation v;
    int rc = tq_submission_parse(buf, len, &s, &v);
    if (rc != want_rc)
        fail_msg("rc %d, want %d for %.60s", rc, want_rc, buf);
    assert_int_equal(v.n, 1);
    assert_string_equal(v.items[0].field, "body");
    if (!strstr(v.items[0].message, contains))
        fail_msg("message \"%s\" lacks \"%s\"", v.items[0].message, contains);
    assert_null(s.name);
}

static void test_malformed_json_is_one_body_error(void **state)
{
    (void)state;
    const char *good = HEAD ",\"config\":{}}";
    /* truncated */
    expect_body_error(good, strlen(good) - 1, TQ_ERR_INVALID, "invalid json at line");
    expect_body_error("{\"dataset_id\":", 14, TQ_ERR_INVALID, "invalid json at line");
    /* trailing garbage */
    char buf[512];
    snprintf(buf, sizeof buf, "%s x", good);
    expect_body_error(buf, strlen(buf), TQ_ERR_INVALID, "invalid json at line");
    snprintf(buf, sizeof buf, "%s{}", good);
    expect_body_error(buf, strlen(buf), TQ_ERR_INVALID, "invalid json at line");
    /* empty, whitespace, not an object */
    expect_body_error("", 0, TQ_ERR_INVALID, "invalid json at line");
    expect_body_error(NULL, 0, TQ_ERR_INVALID, "invalid json at line");
    expect_body_error("   ", 3, TQ_ERR_INVALID, "invalid json at line");
    expect_body_error("[]", 2, TQ_ERR_INVALID, "must be a json object");
    expect_body_error("\"x\"", 3, TQ_ERR_INVALID, "must be a json object");
    expect_body_error("42", 2, TQ_ERR_INVALID, "must be a json object");
    expect_body_error("null", 4, TQ_ERR_INVALID, "must be a json object");
    /* the position is part of the message */
    expect_body_error("{\"a\":}", 6, TQ_ERR_INVALID, "column");
    /* single quotes, comments, NaN are not JSON */
    expect_body_error("{'a':1}", 7, TQ_ERR_INVALID, "invalid json at line");
    expect_body_error("{\"a\":NaN}", 9, TQ_ERR_INVALID, "invalid json at line");
    expect_body_error("{/*c*/}", 7, TQ_ERR_INVALID, "invalid json at line");
}

static void test_duplicate_keys_are_rejected(void **state)
{
    (void)state;
    const char *a = "{\"dataset_id\":\"" DS "\",\"type\":\"lora\",\"type\":\"dreambooth\","
                    "\"base_model\":\"gpt2\",\"config\":{}}";
    expect_body_error(a, strlen(a), TQ_ERR_INVALID, "duplicate");
    const char *b = HEAD ",\"config\":{\"steps\":100,\"steps\":10000}}";
    expect_body_error(b, strlen(b), TQ_ERR_INVALID, "duplicate");
}

static void test_nul_and_invalid_utf8_are_rejected(void **state)
{
    (void)state;
    const char *nul = HEAD ",\"name\":\"a\\u0000b\",\"config\":{}}";
    expect_body_error(nul, strlen(nul), TQ_ERR_INVALID, "invalid json at line");
    /* in the contract's words, not jansson's (which names its JSON_ALLOW_NUL flag) */
    expect_body_error(nul, strlen(nul), TQ_ERR_INVALID, "\\u0000 is not allowed in a string");
    /* a number no double holds: said so, not as jansson's "real number overflow" */
    const char *huge = HEAD ",\"config\":{\"steps\":1e400}}";
    expect_body_error(huge, strlen(huge), TQ_ERR_INVALID, "a number out of range");
    const char *nulkey = HEAD ",\"config\":{},\"a\\u0000\":1}";
    expect_body_error(nulkey, strlen(nulkey), TQ_ERR_INVALID, "invalid json at line");
    /* a raw NUL byte inside the buffer */
    char raw[256];
    int n = snprintf(raw, sizeof raw, HEAD ",\"name\":\"aXb\",\"config\":{}}");
    *strchr(raw, 'X') = '\0';
    expect_body_error(raw, (size_t)n, TQ_ERR_INVALID, "invalid json at line");

    const char *bad_utf8[] = {
        HEAD ",\"name\":\"\xff\",\"config\":{}}",             /* never valid */
        HEAD ",\"name\":\"\xc3\",\"config\":{}}",             /* truncated sequence */
        HEAD ",\"name\":\"\xc0\xaf\",\"config\":{}}",         /* overlong "/" */
        HEAD ",\"name\":\"\xed\xa0\x80\",\"config\":{}}",     /* surrogate */
        HEAD ",\"name\":\"\xf4\x90\x80\x80\",\"config\":{}}", /* past U+10FFFF */
        HEAD ",\"config\":{},\"\xfe\":1}",                    /* in a key */
    };
    for (size_t i = 0; i < sizeof bad_utf8 / sizeof bad_utf8[0]; i++)
        expect_body_error(bad_utf8[i], strlen(bad_utf8[i]), TQ_ERR_INVALID, "invalid json at line");

    /* escaped lone surrogate is invalid too; a proper pair is fine */
    const char *lone = HEAD ",\"name\":\"\\ud800\",\"config\":{}}";
    expect_body_error(lone, strlen(lone), TQ_ERR_INVALID, "invalid json at line");
    tq_submission s;
    tq_validation v;
    assert_int_equal(
        parse_str(HEAD ",\"name\":\"\\ud83d\\ude00 \xe6\x97\xa5\",\"config\":{}}", &s, &v), TQ_OK);
    assert_string_equal(s.name, "\xf0\x9f\x98\x80 \xe6\x97\xa5");
    tq_submission_free(&s);
}

/* A body whose unknown key "x" holds `levels` nested arrays, so the whole document has
 * depth levels + 1. */
static int parse_nested(int levels, tq_validation *v)
{
    char body[512];
    size_t o = (size_t)snprintf(body, sizeof body, "%s", HEAD ",\"config\":{},\"x\":");
    for (int i = 0; i < levels; i++)
        body[o++] = '[';
    for (int i = 0; i < levels; i++)
        body[o++] = ']';
    body[o++] = '}';
    body[o] = '\0';
    tq_submission s;
    return parse_str(body, &s, v);
}

static void test_nesting_deeper_than_8_is_rejected_before_parsing(void **state)
{
    (void)state;
    tq_validation v;
    /* depth 8: parsed, then refused only as an unknown field */
    assert_int_equal(parse_nested(7, &v), TQ_ERR_INVALID);
    assert_int_equal(v.n, 1);
    assert_string_equal(v.items[0].field, "x");
    assert_string_equal(v.items[0].message, "unknown field");
    /* depth 9 */
    assert_int_equal(parse_nested(8, &v), TQ_ERR_INVALID);
    assert_int_equal(v.n, 1);
    assert_string_equal(v.items[0].field, "body");
    assert_string_equal(v.items[0].message, "invalid json: nesting deeper than 8 levels");
    /* brackets inside strings (with escaped quotes) do not count */
    tq_submission s;
    assert_int_equal(
        parse_str(HEAD ",\"name\":\"[[[[[[[[[[{{{{{\\\"[[[[[[[[[[\\\\\",\"config\":{}}", &s, &v),
        TQ_OK);
    assert_string_equal(s.name, "[[[[[[[[[[{{{{{\"[[[[[[[[[[\\");
    tq_submission_free(&s);
    /* a huge depth costs no recursion */
    static char deep[60000];
    memset(deep, '[', sizeof deep);
    expect_body_error(deep, sizeof deep, TQ_ERR_INVALID, "nesting deeper than 8");
}

static void test_body_over_64_kib_is_refused_unread(void **state)
{
    (void)state;
    static char buf[TQ_SUBMISSION_MAX_BYTES + 2];
    const char *good = HEAD ",\"config\":{}}";
    size_t n = strlen(good);
    /* exactly 64 KiB: the valid object padded with whitespace */
    memcpy(buf, good, n);
    memset(buf + n, ' ', TQ_SUBMISSION_MAX_BYTES - n);
    tq_submission s;
    tq_validation v;
    assert_int_equal(tq_submission_parse(buf, TQ_SUBMISSION_MAX_BYTES, &s, &v), TQ_OK);
    tq_submission_free(&s);
    buf[TQ_SUBMISSION_MAX_BYTES] = ' ';
    expect_body_error(buf, TQ_SUBMISSION_MAX_BYTES + 1, TQ_ERR_TOO_LARGE,
                      "must be at most 65536 bytes");
}

/* ---- JSON form, types, uuids -------------------------------------------------------- */

static void test_to_json_has_every_field_in_a_fixed_order(void **state)
{
    (void)state;
    tq_submission s;
    tq_validation v;
    assert_int_equal(parse_str("{\"trigger_words\":[\"b\",\"a\"],\"config\":{\"lora_alpha\":8,"
                               "\"steps\":300},\"base_model\":\"gpt2\",\"type\":\"dreambooth\","
                               "\"dataset_id\":\"" DS "\"}",
                               &s, &v),
                     TQ_OK);
    json_t *j = tq_submission_to_json(&s);
    assert_non_null(j);
    char *text = json_dumps(j, JSON_COMPACT);
    assert_string_equal(text, "{\"dataset_id\":\"" DS "\",\"name\":\"dreambooth gpt2\","
                              "\"type\":\"dreambooth\",\"base_model\":\"gpt2\",\"config\":{"
                              "\"learning_rate\":0.0001,\"batch_size\":1,\"steps\":300,"
                              "\"resolution\":512,\"lora_rank\":16,\"lora_alpha\":8},"
                              "\"trigger_words\":[\"b\",\"a\"]}");
    /* and it validates back to the same submission */
    tq_submission back;
    assert_int_equal(tq_submission_from_json(j, &back, &v), TQ_OK);
    assert_string_equal(back.name, s.name);
    assert_int_equal(back.config.lora_alpha, 8);
    assert_int_equal(back.n_trigger_words, 2);
    assert_string_equal(back.trigger_words[1], "a");
    tq_submission_free(&back);
    free(text);
    json_decref(j);
    tq_submission_free(&s);
}

static void test_from_json_accepts_jansson_integers_and_reals(void **state)
{
    (void)state;
    /* built in C rather than parsed: json_integer for ints, json_real for the rate */
    json_t *o = json_pack("{s:s, s:s, s:s, s:{s:f, s:I, s:f}}", "dataset_id", DS, "type", "lora",
                          "base_model", "gpt2", "config", "learning_rate", 5e-5, "steps",
                          (json_int_t)4000, "resolution", 768.0);
    assert_non_null(o);
    tq_submission s;
    tq_validation v;
    assert_int_equal(tq_submission_from_json(o, &s, &v), TQ_OK);
    assert_int_equal(s.config.steps, 4000);
    assert_int_equal(s.config.resolution, 768);
    tq_submission_free(&s);
    /* a 64-bit integer far outside the range is a range error, not an overflow */
    json_object_set_new(json_object_get(o, "config"), "steps", json_integer(INT64_MAX));
    assert_int_equal(tq_submission_from_json(o, &s, &v), TQ_ERR_INVALID);
    assert_string_equal(v.items[0].message, "must be between 100 and 10000");
    json_object_set_new(json_object_get(o, "config"), "steps", json_integer(INT64_MIN));
    assert_int_equal(tq_submission_from_json(o, &s, &v), TQ_ERR_INVALID);
    /* an embedded NUL (possible with json_stringn) is refused */
    json_object_set_new(json_object_get(o, "config"), "steps", json_integer(100));
    json_object_set_new(o, "name", json_stringn("a\0b", 3));
    assert_int_equal(tq_submission_from_json(o, &s, &v), TQ_ERR_INVALID);
    assert_string_equal(v.items[0].field, "name");
    assert_string_equal(v.items[0].message, "must not contain control characters");
    json_object_set_new(o, "name", json_string("ok"));
    assert_int_equal(tq_submission_from_json(o, &s, NULL), TQ_OK); /* v may be NULL */
    tq_submission_free(&s);
    assert_int_equal(tq_submission_from_json(json_object_get(o, "name"), &s, &v), TQ_ERR_INVALID);
    json_decref(o);
}

static void test_job_type_names_round_trip(void **state)
{
    (void)state;
    tq_job_type t = TQ_JOB_DREAMBOOTH;
    assert_string_equal(tq_job_type_name(TQ_JOB_LORA), "lora");
    assert_string_equal(tq_job_type_name(TQ_JOB_DREAMBOOTH), "dreambooth");
    assert_int_equal(tq_job_type_parse("lora", &t), TQ_OK);
    assert_int_equal(t, TQ_JOB_LORA);
    assert_int_equal(tq_job_type_parse("dreambooth", &t), TQ_OK);
    assert_int_equal(t, TQ_JOB_DREAMBOOTH);
    assert_int_equal(tq_job_type_parse("Lora", &t), TQ_ERR_INVALID);
    assert_int_equal(tq_job_type_parse("", &t), TQ_ERR_INVALID);
    assert_int_equal(tq_job_type_parse(NULL, &t), TQ_ERR_INVALID);
    assert_int_equal(t, TQ_JOB_DREAMBOOTH); /* untouched on failure */
}

static void test_uuids_are_generated_random_and_validated(void **state)
{
    (void)state;
    char a[TQ_UUID_BUF], b[TQ_UUID_BUF], c[TQ_UUID_BUF];
    tq_uuid_generate(a);
    tq_uuid_generate(b);
    assert_true(tq_uuid_valid(a));
    assert_string_not_equal(a, b);
    assert_int_equal(a[14], '4'); /* version 4 */
    for (int i = 0; i < TQ_UUID_LEN; i++)
        assert_false(a[i] >= 'A' && a[i] <= 'F');

    const char *ok[] = {DS, "00000000-0000-0000-0000-000000000000",
                        "550E8400-E29B-41D4-A716-446655440000",
                        "ffffffff-ffff-ffff-ffff-ffffffffffff"};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        assert_true(tq_uuid_valid(ok[i]));
    const char *bad[] = {"",
                         "550e8400-e29b-41d4-a716-44665544000",
                         "550e8400-e29b-41d4-a716-4466554400000",
                         "550e8400e29b-41d4-a716-446655440000-",
                         "550e8400-e29b-41d4-a716_446655440000",
                         "{550e8400-e29b-41d4-a716-446655440000}",
                         "550e8400-e29b-41d4-a716-44665544000z",
                         " 550e8400-e29b-41d4-a716-44665544000",
                         NULL};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (tq_uuid_valid(bad[i]))
            fail_msg("accepted \"%s\"", bad[i]);
    assert_int_equal(tq_uuid_canonical("550E8400-E29B-41D4-A716-446655440000", c), TQ_OK);
    assert_string_equal(c, DS);
    assert_int_equal(tq_uuid_canonical("nope", c), TQ_ERR_INVALID);
    assert_string_equal(c, "");
}

/* One rule for the token's `sub` and the message's `user_id` (docs/api.md, "Auth";
 * docs/message-contract.md). */
static void test_user_id_is_1_to_128_bytes_of_visible_ascii(void **state)
{
    (void)state;
    char id[TQ_USER_ID_MAX_BYTES + 2];
    memset(id, 'u', sizeof id);
    assert_true(tq_user_id_valid(id, 1));
    assert_true(tq_user_id_valid(id, TQ_USER_ID_MAX_BYTES));
    assert_false(tq_user_id_valid(id, TQ_USER_ID_MAX_BYTES + 1));
    assert_false(tq_user_id_valid("", 0));
    assert_false(tq_user_id_valid(NULL, 0));
    assert_true(tq_user_id_valid("!", 1)); /* 0x21, the first allowed */
    assert_true(tq_user_id_valid("~", 1)); /* 0x7E, the last allowed */
    assert_true(tq_user_id_valid("auth0|user-1", 12));
    assert_true(tq_user_id_valid("0b6e3f5a-9c1d-4e2f-8a7b-1c2d3e4f5a6b", 36));
    assert_false(tq_user_id_valid("a b", 3));   /* 0x20 */
    assert_false(tq_user_id_valid("a\x7f", 2)); /* DEL */
    assert_false(tq_user_id_valid("a\nb", 3));
    assert_false(tq_user_id_valid("a\0b", 3)); /* an embedded NUL counts */
    assert_false(tq_user_id_valid("\xff", 1));
    assert_false(tq_user_id_valid("\xe7\x94\xa8 x", 5)); /* UTF-8 and a space */
    assert_false(tq_user_id_valid("caf\xc3\xa9", 5));    /* well-formed non-ASCII */
}

static void test_text_rule_counts_bytes_and_refuses_controls(void **state)
{
    (void)state;
    assert_true(tq_text_valid("abc", 3, 3));
    assert_false(tq_text_valid("abcd", 4, 3));
    assert_false(tq_text_valid("", 0, 3));
    assert_false(tq_text_valid("a\0b", 3, 3));
    assert_false(tq_text_valid("\xc2\x9f", 2, 3));         /* U+009F, a C1 control */
    assert_true(tq_text_valid("\xc2\xa0", 2, 3));          /* U+00A0 is printable */
    assert_false(tq_text_valid("\xe2\x82", 2, 3));         /* cut sequence */
    assert_false(tq_text_valid("\xe0\x80\xaf", 3, 3));     /* overlong "/" */
    assert_false(tq_text_valid("\xed\xa0\x80", 3, 3));     /* surrogate */
    assert_false(tq_text_valid("\xf4\x90\x80\x80", 4, 4)); /* past U+10FFFF */
    assert_true(tq_text_valid("\xf4\x8f\xbf\xbf", 4, 4));  /* U+10FFFF itself */
    assert_false(tq_text_valid(NULL, 0, 3));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_config_boundary_is_accepted_or_rejected_exactly),
        cmocka_unit_test(test_absent_optional_fields_get_the_seed_defaults),
        cmocka_unit_test(test_the_seed_example_is_accepted_as_written),
        cmocka_unit_test(test_dataset_id_is_stored_lowercase),
        cmocka_unit_test(test_every_failing_field_is_reported_with_its_reason),
        cmocka_unit_test(test_wrong_type_messages_name_the_expected_type),
        cmocka_unit_test(test_more_than_32_errors_are_capped_not_overflowed),
        cmocka_unit_test(test_reported_key_names_are_cleaned_and_cut),
        cmocka_unit_test(test_name_is_capped_at_200_bytes),
        cmocka_unit_test(test_default_name_of_a_long_model_id_is_cut_to_200_bytes),
        cmocka_unit_test(test_trigger_words_are_capped_at_20_words_of_100_bytes),
        cmocka_unit_test(test_hugging_face_ids_accepted),
        cmocka_unit_test(test_hugging_face_ids_rejected),
        cmocka_unit_test(test_base_model_in_a_body_uses_the_same_rule),
        cmocka_unit_test(test_malformed_json_is_one_body_error),
        cmocka_unit_test(test_duplicate_keys_are_rejected),
        cmocka_unit_test(test_nul_and_invalid_utf8_are_rejected),
        cmocka_unit_test(test_nesting_deeper_than_8_is_rejected_before_parsing),
        cmocka_unit_test(test_body_over_64_kib_is_refused_unread),
        cmocka_unit_test(test_to_json_has_every_field_in_a_fixed_order),
        cmocka_unit_test(test_from_json_accepts_jansson_integers_and_reals),
        cmocka_unit_test(test_job_type_names_round_trip),
        cmocka_unit_test(test_uuids_are_generated_random_and_validated),
        cmocka_unit_test(test_user_id_is_1_to_128_bytes_of_visible_ascii),
        cmocka_unit_test(test_text_rule_counts_bytes_and_refuses_controls),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
