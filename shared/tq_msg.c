#include "tq_msg.h"

#include "tq_clock.h"
#include "tq_err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- timestamps --------------------------------------------------------------------- */

/* The parser is tq_clock's; a message's timestamp must also fit its buffer. */
int tq_rfc3339_valid(const char *s)
{
    return s && strnlen(s, TQ_TIMESTAMP_BUF) < TQ_TIMESTAMP_BUF &&
           tq_rfc3339_parse(s, NULL) == TQ_OK;
}

void tq_rfc3339_now(char out[TQ_TIMESTAMP_BUF])
{
    struct timespec ts;
    struct tm tm;
    char base[24];

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, TQ_TIMESTAMP_BUF, "%s.%03ldZ", base, ts.tv_nsec / 1000000L);
}

/* ---- decode ------------------------------------------------------------------------- */

void tq_msg_free(tq_job_msg *m)
{
    if (!m)
        return;
    free(m->user_id);
    tq_submission_free(&m->sub);
    memset(m, 0, sizeof *m);
}

/* A string member, or NULL after reporting "is required" / "must be a string". The
 * length must equal strlen: an embedded NUL would make the C view differ from the JSON. */
static const char *get_string(const json_t *obj, const char *key, int required, tq_validation *v)
{
    json_t *x = json_object_get(obj, key);
    if (!x) {
        if (required)
            tq_validation_add(v, key, "is required");
        return NULL;
    }
    if (!json_is_string(x)) {
        tq_validation_add(v, key, "must be a string");
        return NULL;
    }
    const char *s = json_string_value(x);
    if (strlen(s) != json_string_length(x)) {
        tq_validation_add(v, key, "must not contain control characters");
        return NULL;
    }
    return s;
}

static const char *const envelope_keys[] = {"schema", "job_id", "user_id", "submitted_at", NULL};

static int msg_from_json(json_t *root, tq_job_msg *out, tq_validation *v)
{
    const char *schema, *job_id, *user_id, *ts;
    json_t *rest;
    tq_validation sv;
    int rc;

    schema = get_string(root, "schema", 1, v);
    if (schema && strcmp(schema, TQ_MSG_SCHEMA) != 0)
        tq_validation_add(v, "schema", "must be \"%s\"", TQ_MSG_SCHEMA);

    job_id = get_string(root, "job_id", 1, v);
    if (job_id && tq_uuid_canonical(job_id, out->job_id) != TQ_OK)
        tq_validation_add(v, "job_id", "must be a uuid");

    user_id = get_string(root, "user_id", 1, v);
    if (user_id && !tq_user_id_valid(user_id, strlen(user_id))) {
        size_t n = strnlen(user_id, TQ_USER_ID_MAX_BYTES + 1);
        if (n == 0 || n > TQ_USER_ID_MAX_BYTES)
            tq_validation_add(v, "user_id", "must be 1 to %d bytes", TQ_USER_ID_MAX_BYTES);
        else if (!tq_text_valid(user_id, n, TQ_USER_ID_MAX_BYTES))
            tq_validation_add(v, "user_id", "must not contain control characters");
        else
            tq_validation_add(v, "user_id", "must be visible ascii, without spaces");
    }

    ts = get_string(root, "submitted_at", 0, v);
    if (ts && !tq_rfc3339_valid(ts))
        tq_validation_add(v, "submitted_at", "must be an rfc 3339 timestamp");

    /* The rest must be exactly a submission: validate a shallow copy without the envelope
     * so that the unknown-key rule and every default come from the one validator. */
    rest = json_copy(root);
    if (!rest)
        return TQ_ERR_NOMEM;
    for (const char *const *k = envelope_keys; *k; k++)
        json_object_del(rest, *k);
    rc = tq_submission_from_json(rest, &out->sub, &sv);
    json_decref(rest);
    for (size_t i = 0; i < sv.n; i++)
        tq_validation_add(v, sv.items[i].field, "%s", sv.items[i].message);
    if (rc == TQ_ERR_NOMEM)
        return rc;

    if (v->n > 0) {
        tq_submission_free(&out->sub);
        return TQ_ERR_INVALID;
    }
    out->user_id = strdup(user_id);
    if (!out->user_id)
        return TQ_ERR_NOMEM;
    if (ts)
        memcpy(out->submitted_at, ts, strlen(ts) + 1); /* < TQ_TIMESTAMP_BUF: checked */
    return TQ_OK;
}

int tq_msg_decode(const char *body, size_t len, tq_job_msg *out, tq_validation *v)
{
    tq_validation local;
    json_t *root;

    memset(out, 0, sizeof *out);
    if (!v)
        v = &local;
    int rc = tq_json_load_object(body, len, TQ_MSG_MAX_BYTES, &root, v);
    if (rc != TQ_OK)
        return rc;
    rc = msg_from_json(root, out, v);
    json_decref(root);
    if (rc != TQ_OK)
        tq_msg_free(out);
    return rc;
}

/* ---- encode ------------------------------------------------------------------------- */

/* The fewest significant digits that read back as exactly d, so 1e-4 is written "0.0001"
 * and not "0.00010000000000000000479", and every double still round-trips. */
static int shortest_precision(double d)
{
    char buf[40];
    for (int p = 1; p < 17; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, d);
        if (strtod(buf, NULL) == d)
            return p;
    }
    return 17;
}

static int msg_equal(const tq_job_msg *a, const tq_job_msg *b)
{
    const tq_submission *x = &a->sub, *y = &b->sub;
    if (strcmp(a->job_id, b->job_id) != 0 || strcmp(a->user_id, b->user_id) != 0 ||
        strcmp(a->submitted_at, b->submitted_at) != 0 ||
        strcmp(x->dataset_id, y->dataset_id) != 0 || strcmp(x->name, y->name) != 0 ||
        x->type != y->type || strcmp(x->base_model, y->base_model) != 0 ||
        memcmp(&x->config.learning_rate, &y->config.learning_rate, sizeof(double)) != 0 ||
        x->config.batch_size != y->config.batch_size || x->config.steps != y->config.steps ||
        x->config.resolution != y->config.resolution ||
        x->config.lora_rank != y->config.lora_rank ||
        x->config.lora_alpha != y->config.lora_alpha || x->n_trigger_words != y->n_trigger_words ||
        x->priority != y->priority)
        return 0;
    for (size_t i = 0; i < x->n_trigger_words; i++)
        if (strcmp(x->trigger_words[i], y->trigger_words[i]) != 0)
            return 0;
    return 1;
}

char *tq_msg_encode(const tq_job_msg *m)
{
    int failed = 0;
    char *out = NULL;
    tq_job_msg back;

    if (!m->user_id)
        return NULL;
    json_t *sub = tq_submission_to_json(&m->sub);
    json_t *o = json_object();
    if (!sub || !o)
        goto out;
    failed |= json_object_set_new(o, "schema", json_string(TQ_MSG_SCHEMA));
    failed |= json_object_set_new(o, "job_id", json_string(m->job_id));
    failed |= json_object_set_new(o, "user_id", json_string(m->user_id));
    if (m->submitted_at[0])
        failed |= json_object_set_new(o, "submitted_at", json_string(m->submitted_at));
    /* update keeps sub's insertion order, so the key order is fixed */
    failed |= json_object_update(o, sub);
    if (failed)
        goto out;
    out = json_dumps(o, JSON_COMPACT |
                            JSON_REAL_PRECISION(shortest_precision(m->sub.config.learning_rate)));
    if (!out)
        goto out;
    /* The one guarantee consumers rely on: what we publish, they accept, unchanged. */
    if (tq_msg_decode(out, strlen(out), &back, NULL) != TQ_OK) {
        free(out);
        out = NULL;
        goto out;
    }
    if (!msg_equal(m, &back)) {
        free(out);
        out = NULL;
    }
    tq_msg_free(&back);
out:
    json_decref(sub);
    json_decref(o);
    return out;
}
