#include "tq_job.h"

#include "tq_err.h"
#include "tq_json.h"
#include "tq_utf8.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- text helpers ------------------------------------------------------------------- */

static int is_control(uint32_t cp)
{
    return cp < 0x20 || (cp >= 0x7F && cp <= 0x9F);
}

enum { TEXT_OK, TEXT_CONTROL, TEXT_BAD_UTF8 };

/* Checked even on strings jansson produced: an object handed to tq_submission_from_json
 * may have been built with json_stringn_nocheck or hold an embedded NUL. */
static int text_check(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        uint32_t cp;
        size_t n = tq_utf8_seq(p + i, len - i, &cp);
        if (n == 0)
            return TEXT_BAD_UTF8;
        if (is_control(cp))
            return TEXT_CONTROL;
        i += n;
    }
    return TEXT_OK;
}

/* Copies src into dst (cap bytes incl. NUL), whole characters only, turning malformed
 * bytes and control characters into '?', so that reports are always printable UTF-8. */
static void clean_copy(char *dst, size_t cap, const char *src)
{
    const unsigned char *p = (const unsigned char *)src;
    size_t len = strlen(src), i = 0, o = 0;
    while (i < len) {
        uint32_t cp;
        size_t n = tq_utf8_seq(p + i, len - i, &cp);
        if (n == 0 || is_control(cp)) {
            if (o + 1 >= cap)
                break;
            dst[o++] = '?';
            i += n ? n : 1;
            continue;
        }
        if (o + n >= cap)
            break;
        memcpy(dst + o, p + i, n);
        o += n;
        i += n;
    }
    dst[o] = '\0';
}

/* ---- validation report -------------------------------------------------------------- */

void tq_validation_add(tq_validation *v, const char *field, const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    if (!v || v->n >= TQ_VALIDATION_MAX)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    tq_field_error *e = &v->items[v->n++];
    clean_copy(e->field, sizeof e->field, field ? field : "");
    clean_copy(e->message, sizeof e->message, msg);
}

json_t *tq_validation_to_json(const tq_validation *v)
{
    json_t *arr = json_array();
    if (!arr)
        return NULL;
    for (size_t i = 0; v && i < v->n; i++) {
        json_t *e =
            json_pack("{s:s, s:s}", "field", v->items[i].field, "message", v->items[i].message);
        if (!e || json_array_append_new(arr, e) != 0) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

int tq_text_valid(const char *s, size_t len, size_t max_bytes)
{
    return s && len >= 1 && len <= max_bytes && text_check(s, len) == TEXT_OK;
}

int tq_user_id_valid(const char *s, size_t len)
{
    if (!s || len < 1 || len > TQ_USER_ID_MAX_BYTES)
        return 0;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7E)
            return 0;
    return 1;
}

/* ---- small public helpers ----------------------------------------------------------- */

const char *tq_job_type_name(tq_job_type t)
{
    switch (t) {
    case TQ_JOB_LORA:
        return "lora";
    case TQ_JOB_DREAMBOOTH:
        return "dreambooth";
    }
    return "unknown";
}

static const char *const PRIORITY_NAMES[] = {"normal", "low", "high"}; /* by tq_priority */

const char *tq_priority_name(tq_priority p)
{
    return (unsigned)p < 3 ? PRIORITY_NAMES[p] : "unknown";
}

int tq_priority_parse(const char *s, tq_priority *out)
{
    for (int i = 0; s && i < 3; i++)
        if (strcmp(s, PRIORITY_NAMES[i]) == 0) {
            *out = (tq_priority)i;
            return TQ_OK;
        }
    return TQ_ERR_INVALID;
}

int tq_job_type_parse(const char *s, tq_job_type *out)
{
    if (s && strcmp(s, "lora") == 0) {
        *out = TQ_JOB_LORA;
        return TQ_OK;
    }
    if (s && strcmp(s, "dreambooth") == 0) {
        *out = TQ_JOB_DREAMBOOTH;
        return TQ_OK;
    }
    return TQ_ERR_INVALID;
}

void tq_train_config_defaults(tq_train_config *c)
{
    c->learning_rate = TQ_DEFAULT_LEARNING_RATE;
    c->batch_size = TQ_DEFAULT_BATCH_SIZE;
    c->steps = TQ_DEFAULT_STEPS;
    c->resolution = TQ_DEFAULT_RESOLUTION;
    c->lora_rank = TQ_DEFAULT_LORA_RANK;
    c->lora_alpha = TQ_DEFAULT_LORA_ALPHA;
}

static int hf_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static int hf_part_valid(const char *s, size_t len)
{
    if (len == 0 || len > TQ_HF_PART_MAX || !hf_alnum(s[0]))
        return 0;
    for (size_t i = 1; i < len; i++) {
        char c = s[i];
        if (!hf_alnum(c) && c != '.' && c != '_' && c != '-')
            return 0;
        if ((c == '-' || c == '.') && s[i - 1] == c)
            return 0;
    }
    return s[len - 1] != '.' && s[len - 1] != '-';
}

int tq_hf_model_id_valid(const char *s)
{
    if (!s)
        return 0;
    /* bounded scan: never walk a huge string only to reject it */
    size_t len = strnlen(s, TQ_HF_MODEL_ID_MAX + 1);
    if (len > TQ_HF_MODEL_ID_MAX)
        return 0;
    const char *slash = memchr(s, '/', len);
    if (!slash)
        return hf_part_valid(s, len);
    size_t owner = (size_t)(slash - s);
    return hf_part_valid(s, owner) && hf_part_valid(slash + 1, len - owner - 1);
}

/* ---- capped JSON loading ------------------------------------------------------------ */

/* Depth of [ and { outside strings. Runs before jansson so that a deeply nested body costs
 * one linear scan, not a recursive parse; malformed input is left for jansson to report. */
static size_t json_max_depth(const char *buf, size_t len)
{
    size_t depth = 0, max = 0;
    int in_str = 0, esc = 0;
    for (size_t i = 0; i < len; i++) {
        char c = buf[i];
        if (in_str) {
            if (esc)
                esc = 0;
            else if (c == '\\')
                esc = 1;
            else if (c == '"')
                in_str = 0;
        } else if (c == '"') {
            in_str = 1;
        } else if (c == '{' || c == '[') {
            if (++depth > max)
                max = depth;
        } else if ((c == '}' || c == ']') && depth > 0) {
            depth--;
        }
    }
    return max;
}

int tq_json_load_object(const char *buf, size_t len, size_t max_bytes, json_t **out,
                        tq_validation *v)
{
    json_error_t err;
    json_t *root;

    *out = NULL;
    if (v)
        v->n = 0;
    if (len > max_bytes) {
        tq_validation_add(v, "body", "must be at most %zu bytes", max_bytes);
        return TQ_ERR_TOO_LARGE;
    }
    if (!buf)
        len = 0, buf = "";
    if (json_max_depth(buf, len) > TQ_JSON_MAX_DEPTH) {
        tq_validation_add(v, "body", "invalid json: nesting deeper than %d levels",
                          TQ_JSON_MAX_DEPTH);
        return TQ_ERR_INVALID;
    }
    /* Not JSON_ALLOW_NUL: "\u0000" is refused, so every string is a proper C string. */
    root = json_loadb(buf, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL,
                      &err);
    if (!root) {
        /* position first: the message is cut at 159 bytes, jansson's text can be long; the
         * one text that names a jansson flag is said in the contract's words */
        enum json_error_code code = json_error_code(&err);
        const char *why = code == json_error_null_character ? "\\u0000 is not allowed in a string"
                          : code == json_error_numeric_overflow
                              ? "a number out of range (beyond what a double holds)"
                              : err.text;
        tq_validation_add(v, "body", "invalid json at line %d, column %d (byte %d): %s", err.line,
                          err.column, err.position, why);
        return TQ_ERR_INVALID;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        tq_validation_add(v, "body", "must be a json object");
        return TQ_ERR_INVALID;
    }
    *out = root;
    return TQ_OK;
}

/* ---- field validators --------------------------------------------------------------- */

/* A string field that must be 1..max bytes of printable UTF-8. Returns the string
 * (borrowed from x) or NULL after reporting. */
static const char *check_text(const json_t *x, const char *field, size_t max, tq_validation *v)
{
    if (!json_is_string(x)) {
        tq_validation_add(v, field, "must be a string");
        return NULL;
    }
    const char *s = json_string_value(x);
    size_t len = json_string_length(x);
    if (len == 0 || len > max) {
        tq_validation_add(v, field, "must be 1 to %zu bytes", max);
        return NULL;
    }
    switch (text_check(s, len)) {
    case TEXT_CONTROL:
        tq_validation_add(v, field, "must not contain control characters");
        return NULL;
    case TEXT_BAD_UTF8:
        tq_validation_add(v, field, "must be valid utf-8");
        return NULL;
    }
    return s;
}

/* Optional integer config key. Integral reals count (Number.isInteger), and the range is
 * checked on the double before any cast, so 1e300 is a range error, not undefined
 * behaviour. */
static void check_int(const json_t *cfg, const char *key, int min, int max, int multiple, int *out,
                      tq_validation *v)
{
    char field[64];
    json_t *x = json_object_get(cfg, key);
    double d;

    if (!x)
        return; /* keeps the default */
    snprintf(field, sizeof field, "config.%s", key);
    if (json_is_integer(x)) {
        /* clamp before converting: a json_int_t need not fit a double exactly */
        json_int_t i = json_integer_value(x);
        d = (i < min) ? (double)min - 1 : (i > max) ? (double)max + 1 : (double)i;
    } else if (json_is_real(x)) {
        d = json_real_value(x);
        if (!isfinite(d) || d != floor(d)) {
            tq_validation_add(v, field, "must be an integer");
            return;
        }
    } else {
        tq_validation_add(v, field, "must be a number");
        return;
    }
    if (d < min || d > max) {
        tq_validation_add(v, field, "must be between %d and %d", min, max);
        return;
    }
    int n = (int)d;
    if (multiple > 1 && n % multiple != 0) {
        tq_validation_add(v, field, "must be a multiple of %d", multiple);
        return;
    }
    *out = n;
}

static void check_learning_rate(const json_t *cfg, double *out, tq_validation *v)
{
    json_t *x = json_object_get(cfg, "learning_rate");
    if (!x)
        return;
    if (!json_is_number(x)) {
        tq_validation_add(v, "config.learning_rate", "must be a number");
        return;
    }
    double d = json_number_value(x);
    /* the bounds are the same literals strtod reads from JSON, so 1e-6 and 1e-2 compare
     * equal to themselves bit for bit */
    if (!(d >= TQ_LEARNING_RATE_MIN && d <= TQ_LEARNING_RATE_MAX)) {
        tq_validation_add(v, "config.learning_rate", "must be between 0.000001 and 0.01");
        return;
    }
    *out = d;
}

static int key_in(const char *key, const char *const *keys)
{
    for (; *keys; keys++)
        if (strcmp(key, *keys) == 0)
            return 1;
    return 0;
}

static void check_unknown(const json_t *obj, const char *prefix, const char *const *known,
                          tq_validation *v)
{
    const char *key;
    json_t *val;
    /* jansson's iteration API is not const-qualified; nothing is modified here */
    json_t *o = (json_t *)obj;
    json_object_foreach(o, key, val)
    {
        (void)val;
        if (!key_in(key, known)) {
            char field[256];
            snprintf(field, sizeof field, "%s%s", prefix, key);
            tq_validation_add(v, field, "unknown field");
        }
    }
}

static const char *const submission_keys[] = {
    "dataset_id", "name", "type", "base_model", "config", "trigger_words", "priority", NULL};
static const char *const config_keys[] = {"learning_rate", "batch_size", "steps", "resolution",
                                          "lora_rank",     "lora_alpha", NULL};

/* ---- the submission ----------------------------------------------------------------- */

void tq_submission_free(tq_submission *s)
{
    if (!s)
        return;
    free(s->name);
    free(s->base_model);
    for (size_t i = 0; i < s->n_trigger_words; i++)
        free(s->trigger_words[i]);
    free(s->trigger_words);
    memset(s, 0, sizeof *s);
}

/* config: required object; each key optional, absent -> the default (tq_job.h). */
static void check_config(const json_t *x, tq_train_config *cfg, tq_validation *v)
{
    tq_train_config_defaults(cfg);
    if (!x) {
        tq_validation_add(v, "config", "is required");
        return;
    }
    if (!json_is_object(x)) {
        tq_validation_add(v, "config", "must be an object");
        return;
    }
    check_learning_rate(x, &cfg->learning_rate, v);
    check_int(x, "batch_size", TQ_BATCH_SIZE_MIN, TQ_BATCH_SIZE_MAX, 0, &cfg->batch_size, v);
    check_int(x, "steps", TQ_STEPS_MIN, TQ_STEPS_MAX, 0, &cfg->steps, v);
    check_int(x, "resolution", TQ_RESOLUTION_MIN, TQ_RESOLUTION_MAX, TQ_RESOLUTION_MULTIPLE,
              &cfg->resolution, v);
    check_int(x, "lora_rank", TQ_LORA_RANK_MIN, TQ_LORA_RANK_MAX, 0, &cfg->lora_rank, v);
    check_int(x, "lora_alpha", TQ_LORA_ALPHA_MIN, TQ_LORA_ALPHA_MAX, 0, &cfg->lora_alpha, v);
    check_unknown(x, "config.", config_keys, v);
}

/* trigger_words: optional array of short texts. The array when present and an array (its
 * items may still have failed), else NULL. */
static const json_t *check_trigger_words(const json_t *x, tq_validation *v)
{
    if (!x)
        return NULL;
    if (!json_is_array(x)) {
        tq_validation_add(v, "trigger_words", "must be an array");
        return NULL;
    }
    size_t n = json_array_size(x);
    if (n > TQ_TRIGGER_WORDS_MAX)
        tq_validation_add(v, "trigger_words", "must have at most %d items", TQ_TRIGGER_WORDS_MAX);
    for (size_t i = 0; i < n; i++) {
        char field[64];
        snprintf(field, sizeof field, "trigger_words[%zu]", i);
        check_text(json_array_get(x, i), field, TQ_TRIGGER_WORD_MAX_BYTES, v);
    }
    return x;
}

static int copy_submission(tq_submission *out, const char *dataset_id, const char *name,
                           tq_job_type type, const char *base_model, const tq_train_config *cfg,
                           const json_t *words);

/* priority: optional, one of the three names; absent -> normal. */
static tq_priority check_priority(const json_t *x, tq_validation *v)
{
    tq_priority p = TQ_PRIORITY_NORMAL;
    if (x && (!json_is_string(x) || json_string_length(x) != strlen(json_string_value(x)) ||
              tq_priority_parse(json_string_value(x), &p) != TQ_OK))
        tq_validation_add(v, "priority", "must be one of \"low\", \"normal\", \"high\"");
    return p;
}

int tq_submission_from_json(const json_t *obj, tq_submission *out, tq_validation *v)
{
    tq_validation local;
    const json_t *x;
    const char *dataset_id = NULL, *name = NULL, *base_model = NULL;
    tq_job_type type = TQ_JOB_LORA;
    tq_train_config cfg;
    const json_t *words = NULL;

    memset(out, 0, sizeof *out);
    if (!v)
        v = &local; /* the rules still need to know whether anything failed */
    v->n = 0;
    if (!json_is_object(obj)) {
        tq_validation_add(v, "body", "must be a json object");
        return TQ_ERR_INVALID;
    }

    x = json_object_get(obj, "dataset_id");
    if (!x) {
        tq_validation_add(v, "dataset_id", "is required");
    } else if (!json_is_string(x)) {
        tq_validation_add(v, "dataset_id", "must be a string");
    } else if (!tq_uuid_valid(json_string_value(x)) || json_string_length(x) != TQ_UUID_LEN) {
        tq_validation_add(v, "dataset_id", "must be a uuid");
    } else {
        dataset_id = json_string_value(x);
    }

    x = json_object_get(obj, "name");
    if (x)
        name = check_text(x, "name", TQ_NAME_MAX_BYTES, v);

    x = json_object_get(obj, "type");
    if (!x) {
        tq_validation_add(v, "type", "is required");
    } else if (!json_is_string(x)) {
        tq_validation_add(v, "type", "must be a string");
    } else if (json_string_length(x) != strlen(json_string_value(x)) ||
               tq_job_type_parse(json_string_value(x), &type) != TQ_OK) {
        tq_validation_add(v, "type", "must be one of \"lora\", \"dreambooth\"");
    }

    x = json_object_get(obj, "base_model");
    if (!x) {
        tq_validation_add(v, "base_model", "is required");
    } else if (!json_is_string(x)) {
        tq_validation_add(v, "base_model", "must be a string");
    } else if (json_string_length(x) != strlen(json_string_value(x)) ||
               !tq_hf_model_id_valid(json_string_value(x))) {
        tq_validation_add(v, "base_model",
                          "must be a hugging face model id (\"name\" or \"owner/name\")");
    } else {
        base_model = json_string_value(x);
    }

    check_config(json_object_get(obj, "config"), &cfg, v);
    words = check_trigger_words(json_object_get(obj, "trigger_words"), v);
    tq_priority priority = check_priority(json_object_get(obj, "priority"), v);
    check_unknown(obj, "", submission_keys, v);

    if (v->n > 0)
        return TQ_ERR_INVALID;
    int rc = copy_submission(out, dataset_id, name, type, base_model, &cfg, words);
    if (rc == TQ_OK) {
        out->priority = priority;
        out->priority_given = json_object_get(obj, "priority") != NULL;
    }
    return rc;
}

/* Fills out from values that passed validation; only copies (and lowercases the dataset
 * id, and makes the default name). TQ_ERR_NOMEM leaves out freed. */
static int copy_submission(tq_submission *out, const char *dataset_id, const char *name,
                           tq_job_type type, const char *base_model, const tq_train_config *cfg,
                           const json_t *words)
{
    for (int i = 0; i < TQ_UUID_BUF; i++) {
        char c = dataset_id[i];
        out->dataset_id[i] = (c >= 'A' && c <= 'F') ? (char)(c - 'A' + 'a') : c;
    }
    out->type = type;
    out->config = *cfg;
    out->base_model = strdup(base_model);
    if (name) {
        out->name = strdup(name);
    } else {
        /* type (<= 10) + ' ' + base_model (<= 193) can pass 200 bytes; the id is ASCII,
         * so cutting at a byte is cutting at a character */
        char def[TQ_NAME_MAX_BYTES + 1];
        if (snprintf(def, sizeof def, "%s %s", tq_job_type_name(type), base_model) < 0)
            def[0] = '\0';
        out->name = strdup(def);
    }
    if (!out->name || !out->base_model)
        goto nomem;
    if (words && json_array_size(words) > 0) {
        size_t n = json_array_size(words);
        out->trigger_words = calloc(n, sizeof *out->trigger_words);
        if (!out->trigger_words)
            goto nomem;
        /* slots not yet filled are NULL, so tq_submission_free can run at any point */
        out->n_trigger_words = n;
        for (size_t i = 0; i < n; i++) {
            out->trigger_words[i] = strdup(json_string_value(json_array_get(words, i)));
            if (!out->trigger_words[i])
                goto nomem;
        }
    }
    return TQ_OK;

nomem:
    tq_submission_free(out);
    return TQ_ERR_NOMEM;
}

int tq_submission_parse(const char *buf, size_t len, tq_submission *out, tq_validation *v)
{
    json_t *root;
    memset(out, 0, sizeof *out);
    int rc = tq_json_load_object(buf, len, TQ_SUBMISSION_MAX_BYTES, &root, v);
    if (rc != TQ_OK)
        return rc;
    rc = tq_submission_from_json(root, out, v);
    json_decref(root);
    return rc;
}

json_t *tq_submission_to_json(const tq_submission *s)
{
    int failed = 0;
    if (!s->name || !s->base_model || (s->n_trigger_words && !s->trigger_words))
        return NULL;
    json_t *o = json_object(), *cfg = json_object(), *words = json_array();
    if (!o || !cfg || !words) {
        json_decref(o);
        json_decref(cfg);
        json_decref(words);
        return NULL;
    }
    for (size_t i = 0; i < s->n_trigger_words; i++)
        if (!s->trigger_words[i] ||
            json_array_append_new(words, json_string(s->trigger_words[i])) != 0)
            failed = 1;
    tq_json_put(cfg, "learning_rate", json_real(s->config.learning_rate), &failed);
    tq_json_put(cfg, "batch_size", json_integer(s->config.batch_size), &failed);
    tq_json_put(cfg, "steps", json_integer(s->config.steps), &failed);
    tq_json_put(cfg, "resolution", json_integer(s->config.resolution), &failed);
    tq_json_put(cfg, "lora_rank", json_integer(s->config.lora_rank), &failed);
    tq_json_put(cfg, "lora_alpha", json_integer(s->config.lora_alpha), &failed);

    tq_json_put(o, "dataset_id", json_string(s->dataset_id), &failed);
    tq_json_put(o, "name", json_string(s->name), &failed);
    tq_json_put(o, "type", json_string(tq_job_type_name(s->type)), &failed);
    tq_json_put(o, "base_model", json_string(s->base_model), &failed);
    tq_json_put(o, "config", cfg, &failed);
    tq_json_put(o, "trigger_words", words, &failed);
    if (s->priority != TQ_PRIORITY_NORMAL)
        tq_json_put(o, "priority", json_string(tq_priority_name(s->priority)), &failed);
    if (failed) {
        json_decref(o);
        return NULL;
    }
    return o;
}
