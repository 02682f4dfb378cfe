/*
 * The job API under /api/training/jobs: the seed's "future enhancements" (status,
 * history, cancellation) plus the audit trail and deletion of finished jobs.
 *
 * Every endpoint authenticates and counts against the user's read limit; a job of another
 * user is answered exactly like a job that does not exist (404), so ids cannot be probed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handlers.h"
#include "pdb.h"
#include "tq_uuid.h"

#define LIST_DEFAULT 20
#define LIST_MAX 100

static int guard(tq_req *r)
{
    if (tq_req_authenticate(r) != 0)
        return -1;
    return tq_req_rate_limit(r, "read", tq_req_app(r)->cfg->read_rate_per_minute);
}

static void bad_request(tq_req *r, const char *field, const char *message)
{
    tq_validation v = {0};
    tq_validation_add(&v, field, "%s", message);
    tq_req_reply_json(r, 400,
                      json_pack("{s:b, s:s, s:o*}", "success", 0, "error", "validation failed",
                                "details", tq_validation_to_json(&v)));
}

/* The {id} segment as a canonical uuid; 400 when malformed. */
static int job_id_param(tq_req *r, char id[TQ_UUID_BUF])
{
    if (tq_uuid_canonical(tq_req_param(r), id) != TQ_OK) {
        bad_request(r, "id", "must be a uuid");
        return -1;
    }
    return 0;
}

static int status_valid(const char *s)
{
    static const char *const all[] = {"queued",    "pending", "running",
                                      "completed", "failed",  "cancelled"};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (strcmp(s, all[i]) == 0)
            return 1;
    return 0;
}

/* "<microseconds>_<uuid>" as made by tq_pdb_job_list; split into its two parts. */
static int cursor_parse(const char *c, char micros[24], char id[TQ_UUID_BUF])
{
    const char *us = strchr(c, '_');
    if (!us)
        return -1;
    size_t n = (size_t)(us - c);
    /* At most 17 digits (before the year 5000): larger values would overflow the interval
     * arithmetic in SQL, and no row of ours is that late. */
    if (n == 0 || n > 17)
        return -1;
    for (size_t i = 0; i < n; i++)
        if (c[i] < '0' || c[i] > '9')
            return -1;
    memcpy(micros, c, n);
    micros[n] = '\0';
    return tq_uuid_canonical(us + 1, id) == TQ_OK ? 0 : -1;
}

void tq_h_job_list(tq_req *r)
{
    if (guard(r) != 0)
        return;
    const char *status = tq_req_query(r, "status");
    if (status && !*status)
        status = NULL;
    if (status && !status_valid(status)) {
        bad_request(r, "status",
                    "must be one of queued, pending, running, completed, failed, cancelled");
        return;
    }
    int limit = LIST_DEFAULT;
    const char *ls = tq_req_query(r, "limit");
    if (ls && *ls) {
        char *end = NULL;
        long v = strtol(ls, &end, 10);
        if (*end || end == ls || v < 1 || v > LIST_MAX) {
            bad_request(r, "limit", "must be an integer between 1 and 100");
            return;
        }
        limit = (int)v;
    }
    char micros[24] = "", after_id[TQ_UUID_BUF] = "";
    const char *cursor = tq_req_query(r, "cursor");
    int have_cursor = cursor && *cursor;
    if (have_cursor && cursor_parse(cursor, micros, after_id) != 0) {
        bad_request(r, "cursor", "is not a cursor returned by this API");
        return;
    }
    json_t *jobs = NULL;
    char next[TQ_PDB_CURSOR_MAX];
    tq_errbuf eb = {{0}};
    int rc = tq_pdb_job_list(tq_req_user(r), status, have_cursor ? micros : NULL,
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
    if (guard(r) != 0 || job_id_param(r, id) != 0)
        return;
    json_t *job = NULL;
    tq_errbuf eb = {{0}};
    int rc = tq_pdb_job_get(tq_req_user(r), id, &job, &eb);
    if (rc == TQ_ERR_NOT_FOUND)
        tq_req_reply_error(r, 404, "job not found");
    else if (rc != TQ_OK)
        tq_req_reply_db_error(r, rc, &eb);
    else
        tq_req_reply_json(r, 200, json_pack("{s:b, s:o}", "success", 1, "job", job));
}

void tq_h_job_cancel(tq_req *r)
{
    char id[TQ_UUID_BUF];
    if (guard(r) != 0 || job_id_param(r, id) != 0)
        return;
    char status[16] = "";
    int done = 0;
    tq_errbuf eb = {{0}};
    int rc = tq_pdb_job_cancel(tq_req_user(r), id, status, &done, &eb);
    if (rc == TQ_ERR_NOT_FOUND) {
        tq_req_reply_error(r, 404, "job not found");
    } else if (rc == TQ_ERR_CONFLICT) {
        char msg[64];
        snprintf(msg, sizeof msg, "job is already %s", status);
        tq_req_reply_json(
            r, 409, json_pack("{s:b, s:s, s:s}", "success", 0, "error", msg, "status", status));
    } else if (rc != TQ_OK) {
        tq_req_reply_db_error(r, rc, &eb);
    } else if (done) {
        tq_req_reply_json(r, 200,
                          json_pack("{s:b, s:s, s:s, s:s}", "success", 1, "job_id", id, "status",
                                    "cancelled", "message", "job cancelled"));
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
    if (guard(r) != 0 || job_id_param(r, id) != 0)
        return;
    json_t *events = NULL;
    tq_errbuf eb = {{0}};
    int rc = tq_pdb_job_events(tq_req_user(r), id, &events, &eb);
    if (rc == TQ_ERR_NOT_FOUND)
        tq_req_reply_error(r, 404, "job not found");
    else if (rc != TQ_OK)
        tq_req_reply_db_error(r, rc, &eb);
    else
        tq_req_reply_json(
            r, 200, json_pack("{s:b, s:s, s:o}", "success", 1, "job_id", id, "events", events));
}

void tq_h_job_delete(tq_req *r)
{
    char id[TQ_UUID_BUF];
    if (guard(r) != 0 || job_id_param(r, id) != 0)
        return;
    char status[16] = "";
    tq_errbuf eb = {{0}};
    int rc = tq_pdb_job_delete(tq_req_user(r), id, status, &eb);
    if (rc == TQ_ERR_NOT_FOUND) {
        tq_req_reply_error(r, 404, "job not found");
    } else if (rc == TQ_ERR_CONFLICT) {
        char msg[64];
        snprintf(msg, sizeof msg, "job is %s: cancel it first", status);
        tq_req_reply_json(
            r, 409, json_pack("{s:b, s:s, s:s}", "success", 0, "error", msg, "status", status));
    } else if (rc != TQ_OK) {
        tq_req_reply_db_error(r, rc, &eb);
    } else {
        tq_req_reply_json(
            r, 200,
            json_pack("{s:b, s:s, s:s}", "success", 1, "job_id", id, "message", "job deleted"));
    }
}
