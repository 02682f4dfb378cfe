/*
 * The webhook API under /api/training/webhooks (docs/api.md "Webhooks", docs/webhooks.md):
 * endpoints per user, their secrets and deliveries, and the user's default secret that
 * signs the deliveries of a job's own webhook_url (submit.c).
 *
 * Every endpoint authenticates and counts against the user's read limit; an endpoint of
 * another user is answered like one that does not exist (404). A secret is shown only when
 * it is made (creation, rotation) and by the default-secret endpoint.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handlers.h"
#include "pdb.h"
#include "tq_webhook.h"
#include "webhooks.h"

#define DELIVERIES_DEFAULT 50
#define DELIVERIES_MAX 500
#define DESCRIPTION_MAX 500
#define WHY_BUF 128

/* The first N_DEFAULT_EVENTS are what an endpoint gets when it names none; job.progress is
 * opt-in. */
static const char *const known_events[] = {"job.queued", "job.running",   "job.completed",
                                           "job.failed", "job.cancelled", "job.progress"};
#define N_EVENTS (sizeof known_events / sizeof known_events[0])
#define N_DEFAULT_EVENTS 5

static int event_known(const char *e)
{
    for (size_t i = 0; i < N_EVENTS; i++)
        if (strcmp(e, known_events[i]) == 0)
            return 1;
    return 0;
}

char *tq_webhook_events_json(const json_t *events, tq_validation *v, const char *field)
{
    json_t *out = json_array();
    if (!out)
        return NULL;
    if (!events || json_is_null(events)) {
        for (size_t i = 0; i < N_DEFAULT_EVENTS; i++)
            json_array_append_new(out, json_string(known_events[i]));
    } else if (!json_is_array(events) || json_array_size(events) == 0 ||
               json_array_size(events) > N_EVENTS) {
        tq_validation_add(v, field, "must be a non-empty array of event names");
    } else {
        size_t i;
        json_t *e;
        json_array_foreach(events, i, e)
        {
            if (!json_is_string(e) || !event_known(json_string_value(e))) {
                tq_validation_add(v, field,
                                  "unknown event: use job.queued, job.running, job.completed, "
                                  "job.failed, job.cancelled, job.progress");
                break;
            }
            /* a name listed twice is one subscription */
            size_t k;
            json_t *seen;
            int dup = 0;
            json_array_foreach(out, k, seen) dup |= json_equal(seen, e);
            if (!dup)
                json_array_append(out, e);
        }
    }
    char *s = v->n == 0 ? json_dumps(out, JSON_COMPACT) : NULL;
    json_decref(out);
    return s;
}

int tq_webhook_url_field(const tq_req *r, const json_t *url, tq_validation *v, const char *field)
{
    char why[WHY_BUF];
    if (!json_is_string(url)) {
        tq_validation_add(v, field, "must be a string (an https URL)");
        return -1;
    }
    tq_webhook_rule rule = tq_webhook_rule_of(tq_req_app(r)->cfg);
    if (tq_webhook_url_check(json_string_value(url), &rule, why, sizeof why) != 0) {
        tq_validation_add(v, field, "%s", why);
        return -1;
    }
    return 0;
}

/* The body as a JSON object (NULL: replied 415 or 400). */
static json_t *body_object(tq_req *r)
{
    if (tq_req_require_json(r) != 0)
        return NULL;
    size_t len = 0;
    const char *body = tq_req_body(r, &len);
    json_t *o = body ? json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL) : NULL;
    if (!json_is_object(o)) {
        json_decref(o);
        tq_job_bad_request(r, "body", "must be a JSON object");
        return NULL;
    }
    return o;
}

void tq_h_webhook_create(tq_req *r)
{
    if (tq_job_guard(r) != 0)
        return;
    json_t *o = body_object(r);
    if (!o)
        return;
    tq_validation v = {0};
    const char *k;
    json_t *val;
    json_object_foreach(o, k, val)
    {
        if (strcmp(k, "url") != 0 && strcmp(k, "events") != 0 && strcmp(k, "description") != 0)
            tq_validation_add(&v, k, "unknown field");
    }
    tq_webhook_url_field(r, json_object_get(o, "url"), &v, "url");
    char *events = tq_webhook_events_json(json_object_get(o, "events"), &v, "events");
    const json_t *d = json_object_get(o, "description");
    const char *desc = "";
    if (d && !json_is_null(d)) {
        if (!json_is_string(d) || strlen(json_string_value(d)) > DESCRIPTION_MAX)
            tq_validation_add(&v, "description", "must be a string of at most %d bytes",
                              DESCRIPTION_MAX);
        else
            desc = json_string_value(d);
    }
    if (v.n > 0 || !events) {
        if (v.n > 0)
            tq_req_reply_invalid(r, "validation failed", &v);
        else
            tq_req_reply_error(r, 500, "internal server error");
        free(events);
        json_decref(o);
        return;
    }
    char id[TQ_UUID_BUF], secret[TQ_WEBHOOK_SECRET_BUF];
    tq_uuid_generate(id);
    tq_errbuf eb = {{0}};
    json_t *ep = NULL;
    int rc = tq_webhook_secret_new(secret);
    if (rc == TQ_OK)
        rc = tq_pdb_webhook_create(tq_req_user(r), id, json_string_value(json_object_get(o, "url")),
                                   events, desc, secret, &ep, &eb);
    else
        tq_errf(&eb, rc, "could not make a webhook secret");
    if (rc != TQ_OK) {
        tq_req_reply_db_error(r, rc, &eb);
    } else {
        json_object_set_new(ep, "secret", json_string(secret));
        tq_req_reply_json(r, 201, json_pack("{s:b, s:o}", "success", 1, "webhook", ep));
    }
    explicit_bzero(secret, sizeof secret);
    free(events);
    json_decref(o);
}

void tq_h_webhook_list(tq_req *r)
{
    if (tq_job_guard(r) != 0)
        return;
    json_t *list = NULL;
    tq_errbuf eb = {{0}};
    int rc = tq_pdb_webhook_list(tq_req_user(r), &list, &eb);
    if (rc != TQ_OK)
        tq_req_reply_db_error(r, rc, &eb);
    else
        tq_req_reply_json(r, 200, json_pack("{s:b, s:o}", "success", 1, "webhooks", list));
}

/* 404 for an endpoint that is absent or another user's, else 503 / 500. */
static void reply_failure(tq_req *r, int rc, const tq_errbuf *eb)
{
    if (rc == TQ_ERR_NOT_FOUND)
        tq_req_reply_error(r, 404, "webhook not found");
    else
        tq_req_reply_db_error(r, rc, eb);
}

void tq_h_webhook_delete(tq_req *r)
{
    char id[TQ_UUID_BUF];
    if (tq_job_guard(r) != 0 || tq_job_id_param(r, id) != 0)
        return;
    tq_errbuf eb = {{0}};
    int rc = tq_pdb_webhook_delete(tq_req_user(r), id, &eb);
    if (rc != TQ_OK)
        reply_failure(r, rc, &eb);
    else
        tq_req_reply_json(
            r, 200,
            json_pack("{s:b, s:s, s:s}", "success", 1, "id", id, "message", "webhook deleted"));
}

void tq_h_webhook_rotate(tq_req *r)
{
    char id[TQ_UUID_BUF];
    /* The param of ".../{id}/rotate-secret" is the id alone. */
    if (tq_job_guard(r) != 0 || tq_job_id_param(r, id) != 0)
        return;
    char secret[TQ_WEBHOOK_SECRET_BUF];
    tq_errbuf eb = {{0}};
    json_t *expires = NULL;
    int rc = tq_webhook_secret_new(secret);
    if (rc == TQ_OK)
        rc = tq_pdb_webhook_rotate(tq_req_user(r), id, secret,
                                   tq_req_app(r)->cfg->webhook_secret_overlap_seconds, &expires,
                                   &eb);
    else
        tq_errf(&eb, rc, "could not make a webhook secret");
    if (rc != TQ_OK)
        reply_failure(r, rc, &eb);
    else
        tq_req_reply_json(r, 200,
                          json_pack("{s:b, s:s, s:s, s:o}", "success", 1, "id", id, "secret",
                                    secret, "previous_secret_expires_at",
                                    expires ? expires : json_null()));
    explicit_bzero(secret, sizeof secret);
}

void tq_h_webhook_deliveries(tq_req *r)
{
    char id[TQ_UUID_BUF];
    if (tq_job_guard(r) != 0 || tq_job_id_param(r, id) != 0)
        return;
    int limit = 0;
    if (tq_job_int_param(r, "limit", DELIVERIES_DEFAULT, DELIVERIES_MAX, &limit) != 0)
        return;
    json_t *list = NULL;
    tq_errbuf eb = {{0}};
    int rc = tq_pdb_webhook_deliveries(tq_req_user(r), id, limit, &list, &eb);
    if (rc != TQ_OK)
        reply_failure(r, rc, &eb);
    else
        tq_req_reply_json(r, 200,
                          json_pack("{s:b, s:s, s:o}", "success", 1, "id", id, "deliveries", list));
}

static int tq_webhook_default_secret(tq_req *r, char out[TQ_WEBHOOK_SECRET_BUF], tq_errbuf *eb)
{
    char candidate[TQ_WEBHOOK_SECRET_BUF];
    int rc = tq_webhook_secret_new(candidate);
    if (rc != TQ_OK)
        return tq_errf(eb, rc, "could not make a webhook secret");
    rc = tq_pdb_default_secret(tq_req_user(r), candidate, out, TQ_WEBHOOK_SECRET_BUF, eb);
    explicit_bzero(candidate, sizeof candidate);
    return rc;
}

void tq_h_webhook_default_secret(tq_req *r)
{
    if (tq_job_guard(r) != 0)
        return;
    char secret[TQ_WEBHOOK_SECRET_BUF];
    tq_errbuf eb = {{0}};
    int rc = tq_webhook_default_secret(r, secret, &eb);
    if (rc != TQ_OK)
        tq_req_reply_db_error(r, rc, &eb);
    else
        tq_req_reply_json(r, 200, json_pack("{s:b, s:s}", "success", 1, "secret", secret));
    explicit_bzero(secret, sizeof secret);
}
