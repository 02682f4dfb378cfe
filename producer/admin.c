/*
 * The admin API under /api/admin (docs/api.md, "Admin API"): what the operators' pages of
 * the dashboard show and the actions they take. Every endpoint authenticates, counts against
 * the read limit like the job API, and answers 403 to a token without the operator claim
 * (TRAINQ_ADMIN_CLAIM), before it reads anything.
 *
 * The reads and actions are stored functions (db/procedures/90_admin.sql) called through
 * pdb.c; an action's outcome text ("ok", "not_found", "conflict:<why>") becomes 200, 404 or
 * 409 here.
 */
#include <stdio.h>
#include <string.h>

#include "handlers.h"
#include "pdb.h"
#include "tq_status.h"
#include "tq_uuid.h"

#define ADMIN_LIST_DEFAULT 50
#define ADMIN_LIST_MAX 500
/* "conflict:" and the reason 90_admin.sql gives. */
#define OUTCOME_BUF 160
/* A dead letter's id: a bigserial, at most 19 digits. */
#define DEAD_ID_DIGITS_MAX 18

/* Authenticates, counts the request, refuses anyone but an operator (-1: replied). */
static int admin_guard(tq_req *r)
{
    if (tq_job_guard(r) != 0)
        return -1;
    if (!tq_req_is_operator(r)) {
        tq_req_reply_error(r, 403, "operator token required");
        return -1;
    }
    return 0;
}

static void reply_read(tq_req *r, tq_pdb_admin_read_kind what, const char *key, int limit,
                       const char *status)
{
    json_t *v = NULL;
    tq_errbuf eb = {{0}};
    int rc = tq_pdb_admin_read(what, limit, status, &v, &eb);
    if (rc != TQ_OK) {
        tq_req_reply_db_error(r, rc, &eb);
        return;
    }
    json_t *body = json_pack("{s:b}", "success", 1);
    if (key)
        json_object_set_new(body, key, v);
    else if (json_object_update(body, v) == 0)
        json_decref(v);
    else {
        json_decref(v);
        json_decref(body);
        body = NULL;
    }
    tq_req_reply_json(r, 200, body);
}

/* Who the caller is, for the dashboard: any valid token (the operator pages are shown to
 * operators only; the admin API checks again on every request). */
void tq_h_me(tq_req *r)
{
    if (tq_job_guard(r) == 0)
        tq_req_reply_json(r, 200,
                          json_pack("{s:b, s:s, s:b}", "success", 1, "user_id", tq_req_user(r),
                                    "operator", tq_req_is_operator(r)));
}

void tq_h_admin_overview(tq_req *r)
{
    if (admin_guard(r) == 0)
        reply_read(r, TQ_PDB_ADMIN_OVERVIEW, NULL, 0, NULL);
}

void tq_h_admin_workers(tq_req *r)
{
    if (admin_guard(r) == 0)
        reply_read(r, TQ_PDB_ADMIN_WORKERS, "workers", 0, NULL);
}

void tq_h_admin_users(tq_req *r)
{
    if (admin_guard(r) == 0)
        reply_read(r, TQ_PDB_ADMIN_USERS, "users", 0, NULL);
}

void tq_h_admin_dead_letters(tq_req *r)
{
    int limit;
    if (admin_guard(r) != 0 ||
        tq_job_int_param(r, "limit", ADMIN_LIST_DEFAULT, ADMIN_LIST_MAX, &limit) != 0)
        return;
    reply_read(r, TQ_PDB_ADMIN_DEAD_LETTERS, "dead_letters", limit, NULL);
}

void tq_h_admin_jobs(tq_req *r)
{
    int limit;
    if (admin_guard(r) != 0 ||
        tq_job_int_param(r, "limit", ADMIN_LIST_DEFAULT, ADMIN_LIST_MAX, &limit) != 0)
        return;
    const char *status;
    tq_job_status st;
    if (tq_job_status_param(r, &status, &st) != 0)
        return;
    reply_read(r, TQ_PDB_ADMIN_JOBS, "jobs", limit, status ? tq_status_name(st) : NULL);
}

/* An action's outcome as the answer: 200 with what was done, 404, or 409 with the reason. */
static void reply_action(tq_req *r, tq_pdb_admin_action_kind what, const char *arg,
                         const char *done, const char *missing)
{
    char outcome[OUTCOME_BUF];
    tq_errbuf eb = {{0}};
    int rc = tq_pdb_admin_action(what, arg, outcome, sizeof outcome, &eb);
    if (rc != TQ_OK)
        tq_req_reply_db_error(r, rc, &eb);
    else if (strcmp(outcome, "ok") == 0)
        tq_req_reply_json(r, 200,
                          json_pack("{s:b, s:s, s:s}", "success", 1, "id", arg, "message", done));
    else if (strcmp(outcome, "not_found") == 0)
        tq_req_reply_error(r, 404, missing);
    else
        tq_req_reply_error(r, 409,
                           strncmp(outcome, "conflict:", 9) == 0 ? outcome + 9 : "conflict");
}

void tq_h_admin_job_cancel(tq_req *r)
{
    char id[TQ_UUID_BUF], user[TQ_USER_ID_BUF];
    if (admin_guard(r) != 0 || tq_job_id_param(r, id) != 0)
        return;
    tq_errbuf eb = {{0}};
    int rc = tq_pdb_job_user(id, user, &eb);
    if (rc != TQ_OK) {
        tq_req_reply_db_error(r, rc, &eb);
        return;
    }
    if (!user[0]) {
        tq_req_reply_error(r, 404, "job not found");
        return;
    }
    tq_job_status st = TQ_STATUS_QUEUED;
    int done = 0;
    rc = tq_pdb_job_cancel(user, id, 1, &st, &done, &eb);
    if (rc == TQ_ERR_CONFLICT) /* the owner's words: "job is already completed" */
        tq_req_reply_json(r, 409,
                          json_pack("{s:b, s:s, s:s}", "success", 0, "error", eb.msg, "status",
                                    tq_status_name(st)));
    else if (rc != TQ_OK)
        tq_job_reply_failure(r, rc, &eb);
    else
        tq_req_reply_json(r, done ? 200 : 202,
                          json_pack("{s:b, s:s, s:s, s:s}", "success", 1, "job_id", id, "status",
                                    done ? "cancelled" : tq_status_name(st), "message",
                                    done ? "job cancelled" : "cancellation requested"));
}

void tq_h_admin_job_retry(tq_req *r)
{
    char id[TQ_UUID_BUF];
    if (admin_guard(r) != 0 || tq_job_id_param(r, id) != 0)
        return;
    reply_action(r, TQ_PDB_ADMIN_RETRY, id, "job queued again", "job not found");
}

void tq_h_admin_dead_letter_republish(tq_req *r)
{
    if (admin_guard(r) != 0)
        return;
    const char *id = tq_req_param(r);
    size_t n = strlen(id);
    if (n == 0 || n > DEAD_ID_DIGITS_MAX || strspn(id, "0123456789") != n) {
        tq_job_bad_request(r, "id", "must be a dead letter's id");
        return;
    }
    reply_action(r, TQ_PDB_ADMIN_REPUBLISH, id, "message republished", "dead letter not found");
}

/* A worker id as TRAINQ_WORKER_ID allows: printable ASCII (the path segment is decoded). */
static int worker_param(tq_req *r)
{
    for (const char *c = tq_req_param(r); *c; c++)
        if (*c < 0x21 || *c > 0x7e) {
            tq_job_bad_request(r, "id", "must be a worker id");
            return -1;
        }
    return 0;
}

void tq_h_admin_worker_drain(tq_req *r)
{
    if (admin_guard(r) == 0 && worker_param(r) == 0)
        reply_action(r, TQ_PDB_ADMIN_DRAIN, tq_req_param(r), "worker draining", "worker not found");
}

void tq_h_admin_worker_undrain(tq_req *r)
{
    if (admin_guard(r) == 0 && worker_param(r) == 0)
        reply_action(r, TQ_PDB_ADMIN_UNDRAIN, tq_req_param(r), "worker no longer draining",
                     "worker not found");
}
