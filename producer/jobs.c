/*
 * The job API under /api/training/jobs: the seed's "future enhancements" (status,
 * history, cancellation) plus the audit trail and deletion of finished jobs.
 *
 * Every endpoint authenticates and counts against the user's read limit; a job of another
 * user is answered exactly like a job that does not exist (404), so ids cannot be probed.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handlers.h"
#include "pdb.h"
#include "tq_status.h"
#include "tq_uuid.h"

#define LIST_DEFAULT 20
#define LIST_MAX 100
/* The cursor's microseconds: at most 17 digits (before the year 5000): larger values would
 * overflow the interval arithmetic in SQL, and no row of ours is that late. */
#define CURSOR_MICROS_MAX 17
/* "job is already cancelled: cancel it first" and the like. */
#define CONFLICT_MSG_BUF 64

int tq_job_guard(tq_req *r)
{
    if (tq_req_authenticate(r) != 0)
        return -1;
    return tq_req_rate_limit(r, TQ_RATE_READ, tq_req_app(r)->cfg->read_rate_per_minute, NULL);
}

void tq_job_bad_request(tq_req *r, const char *field, const char *message)
{
    tq_validation v = {0};
    tq_validation_add(&v, field, "%s", message);
    tq_req_reply_invalid(r, "validation failed", &v);
}

/* The {id} segment as a canonical uuid; 400 when malformed. */
int tq_job_id_param(tq_req *r, char id[TQ_UUID_BUF])
{
    if (tq_uuid_canonical(tq_req_param(r), id) != TQ_OK) {
        tq_job_bad_request(r, "id", "must be a uuid");
        return -1;
    }
    return 0;
}

int tq_job_int_param(tq_req *r, const char *name, int def, int max, int *out)
{
    *out = def;
    const char *s = tq_req_query(r, name);
    if (!s || !*s)
        return 0;
    /* Digits only: strtol alone would also take " 5", "+5" and saturate at LONG_MAX. */
    long v = 0;
    size_t i = 0;
    for (; s[i] >= '0' && s[i] <= '9' && v <= max; i++)
        v = v * 10 + (s[i] - '0');
    if (s[i] || v < 1 || v > max) {
        char msg[64];
        snprintf(msg, sizeof msg, "must be an integer between 1 and %d", max);
        tq_job_bad_request(r, name, msg);
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* A failed lookup: 404 for a job that is absent or another user's (the same answer, so
 * ids cannot be probed), else 503 / 500. */
void tq_job_reply_failure(tq_req *r, int rc, const tq_errbuf *eb)
{
    if (rc == TQ_ERR_NOT_FOUND)
        tq_req_reply_error(r, 404, "job not found");
    else
        tq_req_reply_db_error(r, rc, eb);
}

/* 409 for a job whose status does not allow the request: the message and the status. */
__attribute__((format(printf, 3, 4))) static void reply_conflict(tq_req *r, const char *status,
                                                                 const char *fmt, ...)
{
    char msg[CONFLICT_MSG_BUF];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    tq_req_reply_json(r, 409,
                      json_pack("{s:b, s:s, s:s}", "success", 0, "error", msg, "status", status));
}

/* "<microseconds>_<uuid>" as made by tq_pdb_job_list; split into its two parts. */
static int cursor_parse(const char *c, char micros[CURSOR_MICROS_MAX + 1], char id[TQ_UUID_BUF])
{
    const char *us = strchr(c, '_');
    if (!us)
        return -1;
    size_t n = (size_t)(us - c);
    if (n == 0 || n > CURSOR_MICROS_MAX)
        return -1;
    for (size_t i = 0; i < n; i++)
        if (c[i] < '0' || c[i] > '9')
            return -1;
    memcpy(micros, c, n);
    micros[n] = '\0';
    return tq_uuid_canonical(us + 1, id) == TQ_OK ? 0 : -1;
}

int tq_job_status_param(tq_req *r, const char **status, tq_job_status *st)
{
    *status = tq_req_query(r, "status");
    if (*status && !**status)
        *status = NULL;
    if (*status && tq_status_parse(*status, st) != 0) {
        tq_job_bad_request(r, "status",
                           "must be one of queued, pending, running, completed, failed, cancelled");
        return -1;
    }
    return 0;
}

void tq_h_job_list(tq_req *r)
{
    if (tq_job_guard(r) != 0)
        return;
    const char *status;
    tq_job_status st;
    if (tq_job_status_param(r, &status, &st) != 0)
        return;
    int limit = 0;
    if (tq_job_int_param(r, "limit", LIST_DEFAULT, LIST_MAX, &limit) != 0)
        return;
    char micros[CURSOR_MICROS_MAX + 1] = "", after_id[TQ_UUID_BUF] = "";
    const char *cursor = tq_req_query(r, "cursor");
    int have_cursor = cursor && *cursor;
    if (have_cursor && cursor_parse(cursor, micros, after_id) != 0) {
        tq_job_bad_request(r, "cursor", "is not a cursor returned by this API");
        return;
    }
    json_t *jobs = NULL;
    char next[TQ_PDB_CURSOR_MAX];
    tq_errbuf eb = {{0}};
    int rc = tq_pdb_job_list(tq_req_user(r), status ? &st : NULL, have_cursor ? micros : NULL,
                             have_cursor ? after_id : NULL, limit, &jobs, next, &eb);
    if (rc != TQ_OK) {
        tq_req_reply_db_error(r, rc, &eb);
        return;
    }
    tq_req_reply_json(r, 200,
                      json_pack("{s:b, s:o, s:o}", "success", 1, "jobs", jobs, "next_cursor",
                                next[0] ? json_string(next) : json_null()));
}

void tq_h_job_get(tq_req *r)
{
    char id[TQ_UUID_BUF];
    if (tq_job_guard(r) != 0 || tq_job_id_param(r, id) != 0)
        return;
    json_t *job = NULL;
    tq_errbuf eb = {{0}};
    int rc = tq_pdb_job_get(tq_req_user(r), id, &job, &eb);
    if (rc != TQ_OK)
        tq_job_reply_failure(r, rc, &eb);
    else
        tq_req_reply_json(r, 200, json_pack("{s:b, s:o}", "success", 1, "job", job));
}

void tq_h_job_cancel(tq_req *r)
{
    char id[TQ_UUID_BUF];
    if (tq_job_guard(r) != 0 || tq_job_id_param(r, id) != 0)
        return;
    tq_job_status st = TQ_STATUS_QUEUED;
    int done = 0;
    tq_errbuf eb = {{0}};
    int rc = tq_pdb_job_cancel(tq_req_user(r), id, 0, &st, &done, &eb);
    const char *status = tq_status_name(st);
    if (rc == TQ_ERR_CONFLICT) {
        reply_conflict(r, status, "job is already %s", status);
    } else if (rc != TQ_OK) {
        tq_job_reply_failure(r, rc, &eb);
    } else if (done) {
        tq_req_reply_json(r, 200,
                          json_pack("{s:b, s:s, s:s, s:s}", "success", 1, "job_id", id, "status",
                                    tq_status_name(TQ_STATUS_CANCELLED), "message",
                                    "job cancelled"));
    } else {
        /* A consumer owns the container: it stops it and records the outcome. */
        tq_req_reply_json(r, 202,
                          json_pack("{s:b, s:s, s:s, s:s}", "success", 1, "job_id", id, "status",
                                    status, "message", "cancellation requested"));
    }
}

void tq_h_job_events(tq_req *r)
{
    char id[TQ_UUID_BUF];
    if (tq_job_guard(r) != 0 || tq_job_id_param(r, id) != 0)
        return;
    json_t *events = NULL;
    tq_errbuf eb = {{0}};
    int rc = tq_pdb_job_events(tq_req_user(r), id, &events, &eb);
    if (rc != TQ_OK)
        tq_job_reply_failure(r, rc, &eb);
    else
        tq_req_reply_json(
            r, 200, json_pack("{s:b, s:s, s:o}", "success", 1, "job_id", id, "events", events));
}

void tq_h_job_delete(tq_req *r)
{
    char id[TQ_UUID_BUF];
    if (tq_job_guard(r) != 0 || tq_job_id_param(r, id) != 0)
        return;
    tq_job_status st = TQ_STATUS_QUEUED;
    tq_errbuf eb = {{0}};
    int rc = tq_pdb_job_delete(tq_req_user(r), id, &st, &eb);
    const char *status = tq_status_name(st);
    if (rc == TQ_ERR_CONFLICT) {
        reply_conflict(r, status, "job is %s: cancel it first", status);
    } else if (rc != TQ_OK) {
        tq_job_reply_failure(r, rc, &eb);
    } else {
        tq_req_reply_json(
            r, 200,
            json_pack("{s:b, s:s, s:s}", "success", 1, "job_id", id, "message", "job deleted"));
    }
}
