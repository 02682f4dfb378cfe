/*
 * POST /api/training/submit — the seed's endpoint, kept exactly.
 *
 * Order of checks (each answers before the next runs): auth (401) → a body's Content-Type
 * (415) → rate limit (429) → Content-Type of an empty body (415) → Idempotency-Key syntax (400) →
 * body (413/400) → a priority above the user's (403) → idempotent replay (200 with the
 * earlier job, or 422) → dataset (404/403) → one
 * transaction writing the job row and its outbox row → 200. Publishing to RabbitMQ happens later,
 * in the relay: a broker outage never fails or slows a submission.
 *
 * Optional webhook_url / webhook_events (docs/webhooks.md) are the producer's alone: taken
 * out of the body before the seed's validation (tq_submission_parse, which refuses unknown
 * fields) and stored beside the job (job_webhooks), not in the trainq.job.v1 message. A body
 * without them is parsed byte for byte as before.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "handlers.h"
#include "pdb.h"
#include "tq_log.h"
#include "tq_msg.h"
#include "tq_status.h"
#include "tq_webhook.h"
#include "wake.h"

#define IDEM_KEY_MAX 128

static int idem_key_ok(const char *k)
{
    size_t n = strlen(k);
    if (n == 0 || n > IDEM_KEY_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)k[i] < 0x21 || (unsigned char)k[i] > 0x7e)
            return 0;
    return 1;
}

static void reply_queued(tq_req *r, const char *job_id)
{
    tq_req_reply_json(r, 200,
                      json_pack("{s:b, s:s, s:s, s:s}", "success", 1, "job_id", job_id, "status",
                                tq_status_name(TQ_STATUS_QUEUED), "message",
                                "Training job queued"));
}

/* The checks before the body is read: auth (401; with a non-JSON body's 415), rate limit
 * (429), Content-Type (415), Idempotency-Key syntax (400). 0 to go on (*idem: the key or NULL;
 * cap: the user's max_priority), -1 when answered. */
static int check_request(tq_req *r, const char **idem, char cap[TQ_PDB_PRIORITY_BUF])
{
    const tq_app *app = tq_req_app(r);
    if (tq_req_authenticate(r) != 0)
        return -1;
    if (tq_req_rate_limit(r, TQ_RATE_SUBMIT, app->cfg->submit_rate_per_minute, cap) != 0)
        return -1;
    if (tq_req_require_json(r) != 0)
        return -1;
    *idem = tq_req_header(r, "Idempotency-Key");
    if (*idem && !idem_key_ok(*idem)) {
        tq_validation v = {0};
        tq_validation_add(&v, "Idempotency-Key",
                          "must be 1 to %d visible ASCII characters (no spaces)", IDEM_KEY_MAX);
        tq_req_reply_invalid(r, "validation failed", &v);
        return -1;
    }
    return 0;
}

/* A job's own webhook from the submit body (url NULL: none). */
typedef struct {
    char *url, *events;
    char *rest; /* the body without the two fields, when they were there */
} job_hook;

static void job_hook_free(job_hook *h)
{
    free(h->url);
    free(h->events);
    free(h->rest);
}

/* Takes webhook_url / webhook_events out of a body that is a JSON object holding either;
 * anything else is left to tq_submission_parse as it is. 0, or -1 when answered (400
 * naming the field). */
static int take_hook(tq_req *r, const char *body, size_t len, job_hook *h)
{
    json_t *o = body ? json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL) : NULL;
    json_t *url = json_object_get(o, "webhook_url"), *ev = json_object_get(o, "webhook_events");
    if (!url && !ev) {
        json_decref(o);
        return 0;
    }
    tq_validation v = {0};
    if (!url || json_is_null(url)) {
        if (ev && !json_is_null(ev))
            tq_validation_add(&v, "webhook_events", "needs webhook_url");
    } else if (tq_webhook_url_field(r, url, &v, "webhook_url") == 0) {
        h->events = tq_webhook_events_json(ev, &v, "webhook_events");
        h->url = strdup(json_string_value(url));
    }
    json_object_del(o, "webhook_url");
    json_object_del(o, "webhook_events");
    h->rest = v.n == 0 ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (v.n > 0) {
        tq_req_reply_invalid(r, "validation failed", &v);
        return -1;
    }
    if (!h->rest || (h->url && !h->events) || (!h->url && h->events)) {
        tq_req_reply_error(r, 500, "internal server error");
        return -1;
    }
    return 0;
}

/* The body as a validated submission (413/400/500 otherwise). 0, or -1 when answered; on
 * 0 the caller frees *sub and *hook. */
static int parse_body(tq_req *r, tq_submission *sub, job_hook *hook)
{
    size_t len = 0;
    const char *body = tq_req_body(r, &len);
    if (take_hook(r, body, len, hook) != 0)
        return -1;
    if (hook->rest) {
        body = hook->rest;
        len = strlen(body);
    }
    tq_validation v = {0};
    int rc = tq_submission_parse(body, len, sub, &v);
    if (rc == TQ_ERR_TOO_LARGE) {
        tq_req_reply_error(r, 413, "request body too large");
        return -1;
    }
    if (rc == TQ_ERR_INVALID) {
        /* A body that is not a JSON object at all reports one error on field "body". */
        int parse = v.n == 1 && strcmp(v.items[0].field, "body") == 0;
        tq_req_reply_invalid(r, parse ? "invalid JSON" : "validation failed", &v);
        return -1;
    }
    if (rc != TQ_OK) {
        tq_errbuf eb;
        tq_errf(&eb, rc, "could not parse submission");
        tq_req_reply_db_error(r, TQ_ERR_INTERNAL, &eb);
        return -1;
    }
    return 0;
}

/* Answers the outcome of tq_pdb_submit. */
static void reply_submitted(tq_req *r, int rc, const tq_pdb_submitted *res, tq_job_type type,
                            const tq_errbuf *eb)
{
    switch (rc) {
    case TQ_OK:
        if (res->replayed)
            tq_req_add_header(r, "Idempotent-Replayed", "true");
        else
            tq_logj(TQ_LOG_INFO, "job.submitted",
                    json_pack("{s:s, s:s, s:s, s:s}", "job_id", res->job_id, "user", tq_req_user(r),
                              "type", tq_job_type_name(type), "request_id", tq_req_id(r)),
                    "job %s queued", res->job_id);
        reply_queued(r, res->job_id);
        break;
    case TQ_ERR_NOT_FOUND:
        tq_req_reply_error(r, 404, "dataset not found");
        break;
    case TQ_ERR_FORBIDDEN:
        if (res->max_priority[0]) {
            /* the shape of a 400's details, so that a client finds the field the same way */
            tq_validation v = {0};
            tq_validation_add(&v, "priority", "must be at most \"%s\" for this user",
                              res->max_priority);
            tq_req_reply_json(r, 403,
                              json_pack("{s:b, s:s, s:o*}", "success", 0, "error",
                                        "priority not allowed", "details",
                                        tq_validation_to_json(&v)));
        } else {
            tq_req_reply_error(r, 403, "dataset belongs to another user");
        }
        break;
    case TQ_ERR_CONFLICT:
        tq_req_reply_error(r, 422, "idempotency key reused with a different request");
        break;
    default:
        tq_req_reply_db_error(r, rc, eb);
        break;
    }
}

void tq_h_submit(tq_req *r)
{
    const char *idem = NULL;
    tq_submission sub = {0};
    job_hook hook = {0};
    char secret[TQ_WEBHOOK_SECRET_BUF] = "";
    char cap[TQ_PDB_PRIORITY_BUF] = "";
    if (check_request(r, &idem, cap) != 0)
        return;
    if (parse_body(r, &sub, &hook) != 0) {
        job_hook_free(&hook);
        return;
    }

    char job_id[TQ_UUID_BUF];
    tq_uuid_generate(job_id);
    tq_job_msg msg = {0};
    memcpy(msg.job_id, job_id, sizeof job_id);
    msg.user_id = (char *)(uintptr_t)tq_req_user(r);
    tq_rfc3339_now(msg.submitted_at);
    msg.sub = sub;
    char *payload = tq_msg_encode(&msg);

    json_t *canon = tq_submission_to_json(&sub);
    char *canon_s = canon ? json_dumps(canon, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(canon);

    tq_errbuf eb = {{0}};
    if (!payload || !canon_s) {
        /* Out of memory, or a message tq_msg_encode would not decode: not the client's
         * body at fault (its user id passed the same tq_user_id_valid in auth.c). */
        tq_errf(&eb, TQ_ERR_INTERNAL, "could not encode job message for user");
        tq_req_reply_db_error(r, TQ_ERR_INTERNAL, &eb);
        goto out;
    }

    /* The user's default secret, should this be their first job with a webhook. */
    tq_pdb_job_hook ph = {.url = hook.url, .events_json = hook.events, .new_secret = secret};
    if (hook.url && tq_webhook_secret_new(secret) != TQ_OK) {
        tq_errf(&eb, TQ_ERR_INTERNAL, "could not make a webhook secret");
        tq_req_reply_db_error(r, TQ_ERR_INTERNAL, &eb);
        goto out;
    }
    tq_pdb_submitted res;
    int rc = tq_pdb_submit(tq_req_user(r), cap, &sub, job_id, canon_s, payload, idem,
                           hook.url ? &ph : NULL, &res, &eb);
    if (rc == TQ_OK && !res.replayed)
        tq_wake_note(tq_req_app(r)->wake, tq_req_user(r), res.deferred_notify);
    reply_submitted(r, rc, &res, sub.type, &eb);
out:
    explicit_bzero(secret, sizeof secret);
    job_hook_free(&hook);
    free(payload);
    free(canon_s);
    tq_submission_free(&sub);
}
