#include "cdb.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tq_utf8.h"

/* Every transaction of the functions below: on the caller's (borrowed) connection, soft
 * errors retried by the runner, a lost connection returned for its owner to reopen. */
static int run(PGconn *c, tq_db_txn_fn fn, void *arg, tq_errbuf *eb)
{
    static const tq_db_txn borrowed = {0};
    return tq_db_run_txn(&c, &borrowed, fn, arg, eb);
}

static int set_reason(PGconn *c, const char *reason, tq_errbuf *eb)
{
    const char *p[1] = {reason ? reason : ""};
    return tq_db_exec(c, "SELECT set_config('trainq.reason', $1, true)", 1, p, NULL, eb);
}

/* Takes the job's user's advisory lock, the first lock of every transaction that changes a
 * job's status (db/procedures/60_claim.sql says why: the status guard trigger takes the same
 * lock, and a transaction that reaches it holding the job's row lock deadlocks with one
 * that holds the user's lock and waits for that row, e.g. the producer's cancel). A plain
 * read of user_id takes no row lock, and a job's user never changes. */
static int lock_job_user(PGconn *c, const char *job_id, tq_errbuf *eb)
{
    const char *p[1] = {job_id};
    return tq_db_exec(c, "SELECT tq_lock_user(user_id) FROM training_jobs WHERE id = $1", 1, p,
                      NULL, eb);
}

/* Decimal text of a number, for a query parameter. */
#define TQ_NUM_BUF 24
static void num(char out[TQ_NUM_BUF], long long v)
{
    snprintf(out, TQ_NUM_BUF, "%lld", v);
}

/* ---- the claim ------------------------------------------------------------------------ */

static const struct {
    const char *name;
    tq_claim_outcome outcome;
} CLAIM_OUTCOMES[] = {
    {"claimed", TQ_CLAIM_CLAIMED},
    {"failed", TQ_CLAIM_FAILED},
    {"none", TQ_CLAIM_NONE},
    {"busy", TQ_CLAIM_BUSY},
};

int tq_claim_outcome_parse(const char *s, tq_claim_outcome *out)
{
    for (size_t i = 0; s && i < sizeof CLAIM_OUTCOMES / sizeof CLAIM_OUTCOMES[0]; i++)
        if (strcmp(s, CLAIM_OUTCOMES[i].name) == 0) {
            *out = CLAIM_OUTCOMES[i].outcome;
            return TQ_OK;
        }
    return TQ_ERR_INVALID;
}

void tq_claim_free(tq_claim *cl)
{
    tq_msg_free(&cl->job);
}

typedef struct {
    const char *worker_id;
    char lease[TQ_NUM_BUF], path_max[TQ_NUM_BUF], gpus[TQ_NUM_BUF];
    tq_claim *out;
    char *job_message; /* CLAIMED: the row's message, decoded after the runner returns */
} claim_arg;

static const char *col(const PGresult *r, int c)
{
    return PQgetisnull(r, 0, c) ? "" : PQgetvalue(r, 0, c);
}

/* The one round trip of the pick; its outcome copied into a->out. Starts afresh on every
 * try (the runner may repeat it). */
static int pick_fn(PGconn *c, void *arg, tq_errbuf *eb)
{
    claim_arg *a = arg;
    tq_claim *out = a->out;
    memset(out, 0, sizeof *out);
    free(a->job_message);
    a->job_message = NULL;
    const char *p[4] = {a->worker_id, a->lease, a->path_max, a->gpus};
    PGresult *r;
    int rc = tq_db_exec(c,
                        "SELECT outcome, reason, job_id, fencing_token, attempts, storage_path, "
                        "created_epoch, message FROM tq_pick($1, $2::int, $3::int, $4::int)",
                        4, p, &r, eb);
    if (rc == TQ_ERR_LIMIT) /* the schema's guard disagreed with the procedure's count */
        return tq_errf(eb, TQ_ERR_INTERNAL, "active-job guard refused a pick of %s", a->worker_id);
    if (rc != TQ_OK)
        return rc;
    if (PQntuples(r) != 1 || tq_claim_outcome_parse(col(r, 0), &out->outcome) != TQ_OK) {
        rc = tq_errf(eb, TQ_ERR_INTERNAL, "tq_pick returned no known outcome");
        PQclear(r);
        return rc;
    }
    snprintf(out->reason, sizeof out->reason, "%s", col(r, 1));
    snprintf(out->job_id, sizeof out->job_id, "%s", col(r, 2));
    if (out->outcome == TQ_CLAIM_CLAIMED) {
        out->fencing_token = strtoll(col(r, 3), NULL, 10);
        out->attempts = (int)strtol(col(r, 4), NULL, 10);
        snprintf(out->storage_path, sizeof out->storage_path, "%s", col(r, 5));
        out->created_epoch = strtod(col(r, 6), NULL);
        a->job_message = strdup(col(r, 7));
        if (!a->job_message)
            rc = tq_errf(eb, TQ_ERR_NOMEM, "out of memory");
    }
    PQclear(r);
    return rc;
}

/* The claimed job's message, decoded once. A message that does not decode (a row edited by
 * hand; never one that shared/tq_msg.c's encoder wrote) fails the job durably, so that it is
 * not retried forever; out of memory leaves it to the reaper (it is pending on us, and no
 * slot renews its lease). */
static int claim_decode(PGconn *c, const char *job_id, const char *text, tq_claim *out,
                        tq_errbuf *eb)
{
    tq_validation v;
    memset(&v, 0, sizeof v);
    int rc = tq_msg_decode(text, strlen(text), &out->job, &v);
    if (rc == TQ_ERR_NOMEM)
        return tq_errf(eb, TQ_ERR_NOMEM, "out of memory decoding job %s", job_id);
    if (rc == TQ_OK && strcmp(out->job.job_id, job_id) == 0)
        return TQ_OK;
    if (rc == TQ_OK)
        snprintf(out->reason, sizeof out->reason, "stored job names job_id %s", out->job.job_id);
    else
        snprintf(out->reason, sizeof out->reason, "stored job is invalid: %s %s",
                 v.n ? v.items[0].field : "body", v.n ? v.items[0].message : "");
    tq_msg_free(&out->job);
    const tq_cdb_failure f = {.cls = "config_error"};
    rc = tq_cdb_finish(c, job_id, out->fencing_token, TQ_STATUS_FAILED, -256, out->reason,
                       out->reason, &f, NULL, 0, eb);
    if (rc != TQ_OK)
        return rc;
    out->outcome = TQ_CLAIM_FAILED;
    return TQ_OK;
}

int tq_cdb_pick(PGconn **c, const tq_db_txn *how, const char *worker_id, int lease_seconds,
                int gpus, tq_claim *out, tq_errbuf *eb)
{
    memset(out, 0, sizeof *out);
    claim_arg a = {.worker_id = worker_id, .out = out};
    num(a.lease, lease_seconds);
    num(a.path_max, TQ_CLAIM_PATH_BUF - 1);
    num(a.gpus, gpus);
    int rc = tq_db_run_txn(c, how, pick_fn, &a, eb);
    if (rc == TQ_OK && out->outcome == TQ_CLAIM_CLAIMED)
        rc = claim_decode(*c, out->job_id, a.job_message, out, eb);
    free(a.job_message);
    if (rc != TQ_OK)
        tq_claim_free(out);
    return rc;
}

typedef struct {
    const char *p[5];
} dead_letter_arg;

static int dead_letter_fn(PGconn *c, void *arg, tq_errbuf *eb)
{
    dead_letter_arg *a = arg;
    return tq_db_exec(c, "SELECT tq_event_dead_letter($1, $2, $3, $4, $5)", 5, a->p, NULL, eb);
}

int tq_cdb_dead_letter_event(PGconn **c, const tq_db_txn *how, const char *message_id,
                             const char *routing_key, const char *reason,
                             const tq_reply_addr *reply, tq_errbuf *eb)
{
    const char *to = reply && reply->reply_to ? reply->reply_to : "";
    const char *cid = reply && reply->correlation_id ? reply->correlation_id : "";
    dead_letter_arg a = {{message_id, routing_key, reason, to, cid}};
    return tq_db_run_txn(c, how, dead_letter_fn, &a, eb);
}

/* ---- intake --------------------------------------------------------------------------- */

typedef struct {
    const char *batch;   /* a JSON array of the canonical bodies */
    const char *replies; /* a JSON array of [reply_to, correlation_id] or null, per body */
    size_t n;
    tq_intake_outcome *outcome;
} intake_arg;

static int intake_fn(PGconn *c, void *arg, tq_errbuf *eb)
{
    intake_arg *a = arg;
    const char *p[2] = {a->batch, a->replies};
    PGresult *r;
    int rc =
        tq_db_exec(c, "SELECT idx, outcome FROM tq_intake($1::jsonb, $2::jsonb)", 2, p, &r, eb);
    if (rc != TQ_OK)
        return rc;
    for (size_t i = 0; i < a->n; i++)
        a->outcome[i] = TQ_INTAKE_ACCEPTED;
    for (int i = 0; i < PQntuples(r); i++) {
        long idx = strtol(PQgetvalue(r, i, 0), NULL, 10);
        const char *o = PQgetvalue(r, i, 1);
        if (idx >= 0 && (size_t)idx < a->n)
            a->outcome[idx] = strcmp(o, "mismatch") == 0    ? TQ_INTAKE_MISMATCH
                              : strcmp(o, "duplicate") == 0 ? TQ_INTAKE_DUPLICATE
                              : strcmp(o, "known") == 0     ? TQ_INTAKE_KNOWN
                                                            : TQ_INTAKE_ACCEPTED;
    }
    if ((size_t)PQntuples(r) != a->n)
        rc = tq_errf(eb, TQ_ERR_INTERNAL, "tq_intake answered %d of %zu messages", PQntuples(r),
                     a->n);
    PQclear(r);
    return rc;
}

/* [reply_to, correlation_id] of a delivery (each null when absent), or null when both are.
 * A correlation_id without a reply_to is kept too: every event of the job carries it, and
 * a service that only watches trainq.events matches them to its requests by it. */
static json_t *reply_json(const tq_reply_addr *r)
{
    const char *to = r && r->reply_to && r->reply_to[0] ? r->reply_to : NULL;
    const char *cid = r && r->correlation_id && r->correlation_id[0] ? r->correlation_id : NULL;
    if (!to && !cid)
        return json_null();
    return json_pack("[s?s?]", to, cid);
}

int tq_cdb_intake(PGconn **c, const tq_db_txn *how, const tq_job_msg *const *msgs,
                  const tq_reply_addr *const *replies, size_t n, tq_intake_outcome *outcome,
                  tq_errbuf *eb)
{
    /* The rows hold these bytes: canonical, the body a producer would have published. */
    json_t *arr = json_array(), *rep = json_array();
    int failed = !arr || !rep;
    for (size_t i = 0; i < n && !failed; i++) {
        char *m = tq_msg_encode(msgs[i]);
        failed = !m || json_array_append_new(arr, json_string(m)) != 0 ||
                 json_array_append_new(rep, reply_json(replies ? replies[i] : NULL)) != 0;
        free(m);
    }
    char *batch = failed ? NULL : json_dumps(arr, JSON_COMPACT);
    char *reps = failed ? NULL : json_dumps(rep, JSON_COMPACT);
    json_decref(arr);
    json_decref(rep);
    if (!batch || !reps) {
        free(batch);
        free(reps);
        return tq_errf(eb, TQ_ERR_NOMEM, "could not encode an intake batch of %zu", n);
    }
    intake_arg a = {.batch = batch, .replies = reps, .n = n, .outcome = outcome};
    int rc = tq_db_run_txn(c, how, intake_fn, &a, eb);
    free(batch);
    free(reps);
    return rc;
}

int tq_cdb_listen_runnable(PGconn *c, tq_errbuf *eb)
{
    return tq_db_exec(c, "LISTEN trainq_runnable", 0, NULL, NULL, eb);
}

int tq_cdb_runnable_notified(PGconn *c)
{
    /* Also finds a connection that died while idle (tq_db_idle_check), so the next pick
     * never runs on a dead connection. */
    return tq_db_idle_check(c);
}

/* ---- status changes of a claimed job --------------------------------------------------- */

typedef struct {
    const char *job_id, *container_id;
    char token[TQ_NUM_BUF];
    char why[96];
    int cancel; /* out */
} running_arg;

static int mark_running_fn(PGconn *c, void *arg, tq_errbuf *eb)
{
    running_arg *a = arg;
    int rc = lock_job_user(c, a->job_id, eb);
    if (rc != TQ_OK)
        return rc;
    /* The reason is set for this transaction only, with the update. */
    const char *p[4] = {a->job_id, a->token, a->container_id, a->why};
    PGresult *r;
    rc = tq_db_exec(c,
                    "WITH r AS (SELECT set_config('trainq.reason', $4, true)) "
                    "UPDATE training_jobs SET status = 'running', container_id = $3, "
                    "started_at = now(), progress = 0, current_step = NULL, "
                    "total_steps = NULL, loss = NULL, eta_seconds = NULL, "
                    "progress_updated_at = now() FROM r WHERE id = $1 AND fencing_token = $2 "
                    "AND status = 'pending' RETURNING cancel_requested_at IS NOT NULL",
                    4, p, &r, eb);
    if (rc != TQ_OK)
        return rc;
    int n = PQntuples(r);
    a->cancel = n == 1 && strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    PQclear(r);
    if (n != 1)
        return tq_errf(eb, TQ_ERR_CONFLICT, "job %s is no longer ours", a->job_id);
    return TQ_OK;
}

int tq_cdb_claim_held(PGconn *c, const char *job_id, const char *worker_id, long long fencing)
{
    char tok[TQ_NUM_BUF];
    num(tok, fencing);
    const char *p[3] = {job_id, worker_id, tok};
    PGresult *r = NULL;
    tq_errbuf eb = {{0}};
    if (tq_db_exec(c,
                   "SELECT 1 FROM training_jobs WHERE id = $1 AND worker_id = $2 "
                   "AND fencing_token = $3 AND status = 'pending'",
                   3, p, &r, &eb) != TQ_OK)
        return 0;
    int held = PQntuples(r) == 1;
    PQclear(r);
    return held;
}

int tq_cdb_mark_running(PGconn *c, const char *job_id, long long fencing, const char *container_id,
                        int *cancel, tq_errbuf *eb)
{
    running_arg a = {.job_id = job_id, .container_id = container_id};
    num(a.token, fencing);
    snprintf(a.why, sizeof a.why, "container %.12s started", container_id);
    int rc = run(c, mark_running_fn, &a, eb);
    if (cancel)
        *cancel = rc == TQ_OK && a.cancel;
    return rc;
}

/* One fenced status change that may free a slot of the user: with `reason` in the audit
 * trail, runs `sql` (an UPDATE ... RETURNING user_id), then releases the user's next parked
 * jobs. TQ_ERR_CONFLICT when the update matched no row (fenced out). */
typedef struct {
    const char *job_id, *reason, *sql;
    int nparams;
    const char *const *params;
    const tq_cdb_failure *failure; /* NULL: none */
    int cancel_reason;             /* a cancellation: the reason names who asked (not `reason`) */
} release_arg;

/* The class and message the next status change of this transaction records
 * (db/procedures/62_outcomes.sql); NULL clears them. */
static int set_failure(PGconn *c, const tq_cdb_failure *f, tq_errbuf *eb)
{
    const char *p[2] = {f && f->cls ? f->cls : NULL, f ? f->message : NULL};
    return tq_db_exec(c, "SELECT tq_set_failure($1, $2)", 2, p, NULL, eb);
}

static int change_and_release_fn(PGconn *c, void *arg, tq_errbuf *eb)
{
    release_arg *a = arg;
    int rc;
    if ((rc = lock_job_user(c, a->job_id, eb)))
        return rc;
    if (a->cancel_reason) {
        /* who asked is on the row (the producer's cancel): the audit row names them */
        const char *p[1] = {a->job_id};
        rc = tq_db_exec(c,
                        "SELECT set_config('trainq.reason', CASE cancel_requested_by WHEN "
                        "'operator' THEN 'cancelled by an operator' ELSE 'cancelled by user' "
                        "END, true) FROM training_jobs WHERE id = $1",
                        1, p, NULL, eb);
    } else {
        rc = set_reason(c, a->reason, eb);
    }
    if (rc != TQ_OK)
        return rc;
    if (a->failure && (rc = set_failure(c, a->failure, eb)))
        return rc;
    PGresult *r;
    if ((rc = tq_db_exec(c, a->sql, a->nparams, a->params, &r, eb)))
        return rc;
    if (PQntuples(r) != 1) {
        PQclear(r);
        return tq_errf(eb, TQ_ERR_CONFLICT, "job %s is no longer ours (fenced out)", a->job_id);
    }
    const char *pu[1] = {PQgetvalue(r, 0, 0)};
    rc = tq_db_exec(c, "SELECT tq_release_parked($1)", 1, pu, NULL, eb);
    PQclear(r);
    if (rc == TQ_OK)
        rc = set_reason(c, "", eb);
    return rc;
}

typedef struct {
    release_arg release;
    const char *job_id;
    const char *artifacts; /* JSON array of {name, size_bytes, sha256}, or NULL */
} finish_arg;

static int finish_fn(PGconn *c, void *arg, tq_errbuf *eb)
{
    finish_arg *a = arg;
    int rc = change_and_release_fn(c, &a->release, eb);
    if (rc != TQ_OK || !a->artifacts)
        return rc;
    const char *p[2] = {a->job_id, a->artifacts};
    return tq_db_exec(c,
                      "INSERT INTO job_artifacts (job_id, name, size_bytes, sha256) "
                      "SELECT $1, name, size_bytes, sha256 FROM json_to_recordset($2::json) "
                      "AS a(name text, size_bytes bigint, sha256 text) "
                      "ON CONFLICT (job_id, name) DO UPDATE SET size_bytes = "
                      "excluded.size_bytes, sha256 = excluded.sha256",
                      2, p, NULL, eb);
}

/* The artifacts as the JSON parameter of finish_fn; NULL for none (and on out of memory:
 * the outcome matters more than the list). Caller frees. */
static char *artifacts_json(const tq_artifact *v, size_t n)
{
    if (n == 0)
        return NULL;
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++)
        json_array_append_new(arr, json_pack("{s:s, s:I, s:s}", "name", v[i].name, "size_bytes",
                                             (json_int_t)v[i].size_bytes, "sha256", v[i].sha256));
    char *out = arr ? json_dumps(arr, JSON_COMPACT) : NULL;
    json_decref(arr);
    return out;
}

int tq_cdb_finish(PGconn *c, const char *job_id, long long fencing, tq_job_status status,
                  int exit_code, const char *error_message, const char *reason,
                  const tq_cdb_failure *failure, const tq_artifact *artifacts, size_t n_artifacts,
                  tq_errbuf *eb)
{
    if (!tq_status_terminal(status))
        return tq_errf(eb, TQ_ERR_INVALID, "cannot finish job %s as %s", job_id,
                       tq_status_name(status));
    char tok[TQ_NUM_BUF], code[TQ_NUM_BUF];
    num(tok, fencing);
    num(code, exit_code);
    const char *p[5] = {job_id, tok, tq_status_name(status), exit_code < -255 ? NULL : code,
                        error_message};
    finish_arg a = {
        .release =
            {
                .job_id = job_id,
                .reason = reason,
                .sql = "UPDATE training_jobs SET status = $3, exit_code = $4::int, "
                       "error_message = $5, completed_at = now(), lease_expires_at = NULL, "
                       "progress = CASE WHEN $3 = 'completed' THEN 1 ELSE progress END "
                       "WHERE id = $1 AND fencing_token = $2 AND status IN ('pending', "
                       "'running') RETURNING user_id",
                .nparams = 5,
                .params = p,
                .failure = failure,
                .cancel_reason = status == TQ_STATUS_CANCELLED,
            },
        .job_id = job_id,
        .artifacts = artifacts_json(artifacts, n_artifacts),
    };
    int rc = run(c, finish_fn, &a, eb);
    free((char *)a.artifacts);
    return rc;
}

/* ---- a running job's output ----------------------------------------------------------- */

typedef struct {
    const char *job_id, *lines;
    char token[TQ_NUM_BUF], step[TQ_NUM_BUF], total[TQ_NUM_BUF], keep[TQ_NUM_BUF], max[TQ_NUM_BUF];
    char loss[32], eta[32];
    int has_progress, has_loss, has_eta;
} output_arg;

/* One call of a fenced output procedure (it returns NULL when the token is stale). */
static int fenced_call(PGconn *c, const char *sql, int n, const char *const *p, const char *job_id,
                       tq_errbuf *eb)
{
    PGresult *r;
    int rc = tq_db_exec(c, sql, n, p, &r, eb);
    if (rc != TQ_OK)
        return rc;
    int fenced = PQgetisnull(r, 0, 0);
    PQclear(r);
    return fenced ? tq_errf(eb, TQ_ERR_CONFLICT, "job %s is no longer ours (fenced out)", job_id)
                  : TQ_OK;
}

static int output_fn(PGconn *c, void *arg, tq_errbuf *eb)
{
    output_arg *a = arg;
    int rc = TQ_OK;
    if (a->has_progress) {
        const char *p[7] = {a->job_id,
                            a->token,
                            a->step,
                            a->total,
                            a->has_loss ? a->loss : NULL,
                            a->has_eta ? a->eta : NULL,
                            a->keep};
        rc = fenced_call(c,
                         "SELECT tq_output_progress($1::uuid, $2::bigint, $3::int, $4::int, "
                         "$5::float8, $6::float8, $7::int)",
                         7, p, a->job_id, eb);
    }
    if (rc == TQ_OK && a->lines) {
        const char *p[4] = {a->job_id, a->token, a->lines, a->max};
        rc = fenced_call(c, "SELECT tq_output_log($1::uuid, $2::bigint, $3, $4::bigint)", 4, p,
                         a->job_id, eb);
    }
    return rc;
}

int tq_cdb_output(PGconn *c, const char *job_id, long long fencing, const tq_progress *p,
                  int progress_keep, const char *lines, long long log_max_bytes, tq_errbuf *eb)
{
    output_arg a = {.job_id = job_id, .lines = lines, .has_progress = p != NULL};
    num(a.token, fencing);
    num(a.keep, progress_keep);
    num(a.max, log_max_bytes);
    if (p) {
        num(a.step, p->step);
        num(a.total, p->total);
        a.has_loss = p->has_loss;
        a.has_eta = p->has_eta;
        /* %.17g: the value read back is the value parsed */
        snprintf(a.loss, sizeof a.loss, "%.17g", p->loss);
        snprintf(a.eta, sizeof a.eta, "%.17g", p->eta_seconds);
    }
    if (!p && !lines)
        return TQ_OK;
    return run(c, output_fn, &a, eb);
}

static const struct {
    const char *name;
    tq_give_back_outcome outcome;
} GIVE_BACK_OUTCOMES[] = {
    {"requeued", TQ_GIVEN_BACK},
    {"cancelled", TQ_GIVE_BACK_CANCELLED},
    {"failed", TQ_GIVE_BACK_FAILED},
};

typedef struct {
    const char *job_id, *reason, *cls;
    char token[TQ_NUM_BUF], max[TQ_NUM_BUF];
    tq_give_back_outcome outcome;
} give_back_arg;

/* One statement, so one implicit transaction: tq_give_back takes the user's lock, then the
 * row, and releases the user's next parked job (db/procedures/40_dispatch.sql). */
static int give_back_fn(PGconn *c, void *arg, tq_errbuf *eb)
{
    give_back_arg *a = arg;
    const char *p[5] = {a->job_id, a->token, a->reason, a->max, a->cls};
    PGresult *r;
    int rc = tq_db_exec(c, "SELECT tq_give_back_as($5, $1::uuid, $2::bigint, $3, $4::int)", 5, p,
                        &r, eb);
    if (rc != TQ_OK)
        return rc;
    const char *v = PQgetvalue(r, 0, 0);
    a->outcome = TQ_GIVE_BACK_FENCED;
    for (size_t i = 0; i < sizeof GIVE_BACK_OUTCOMES / sizeof GIVE_BACK_OUTCOMES[0]; i++)
        if (strcmp(v, GIVE_BACK_OUTCOMES[i].name) == 0)
            a->outcome = GIVE_BACK_OUTCOMES[i].outcome;
    PQclear(r);
    return TQ_OK;
}

int tq_cdb_give_back(PGconn *c, const char *job_id, long long fencing, const char *reason,
                     const char *failure_class, int max_host_retries, tq_give_back_outcome *outcome,
                     tq_errbuf *eb)
{
    give_back_arg a = {.job_id = job_id, .reason = reason, .cls = failure_class};
    num(a.token, fencing);
    num(a.max, max_host_retries);
    static const tq_db_txn one_statement = {.implicit = 1};
    int rc = tq_db_run_txn(&c, &one_statement, give_back_fn, &a, eb);
    if (rc == TQ_OK)
        *outcome = a.outcome;
    return rc;
}

typedef struct {
    const char *job_id, *reason;
    char token[TQ_NUM_BUF], max[TQ_NUM_BUF], delay[TQ_NUM_BUF];
    const tq_cdb_failure *failure;
} retry_arg;

static int retry_fn(PGconn *c, void *arg, tq_errbuf *eb)
{
    retry_arg *a = arg;
    int rc = lock_job_user(c, a->job_id, eb);
    if (rc != TQ_OK)
        return rc;
    /* The row lock, taken with the fencing check, holds until commit: nobody can claim
     * the job in between. */
    const char *p[2] = {a->job_id, a->token};
    PGresult *r;
    rc = tq_db_exec(c,
                    "SELECT 1 FROM training_jobs WHERE id = $1 AND fencing_token = $2 "
                    "AND status IN ('pending', 'running') FOR UPDATE",
                    2, p, &r, eb);
    if (rc != TQ_OK)
        return rc;
    int n = PQntuples(r);
    PQclear(r);
    if (n != 1)
        return tq_errf(eb, TQ_ERR_CONFLICT, "job %s is no longer ours", a->job_id);
    const tq_cdb_failure *f = a->failure;
    const char *q[6] = {a->job_id, a->reason, a->max, f ? f->cls : NULL, f ? f->message : NULL,
                        a->delay};
    return tq_db_exec(c, "SELECT tq_retry_as($4, $5, $1, $2, $3::int, $6::int)", 6, q, NULL, eb);
}

int tq_cdb_retry(PGconn *c, const char *job_id, long long fencing, const char *reason,
                 const tq_cdb_failure *failure, int max_attempts, tq_errbuf *eb)
{
    retry_arg a = {.job_id = job_id, .reason = reason, .failure = failure};
    num(a.token, fencing);
    num(a.max, max_attempts);
    num(a.delay, failure ? failure->delay_s : 0);
    return run(c, retry_fn, &a, eb);
}

int tq_cdb_last_failure(PGconn *c, const char *job_id, char *out, size_t cap, tq_errbuf *eb)
{
    const char *p[1] = {job_id};
    PGresult *r;
    int rc = tq_db_exec(c, "SELECT coalesce(failure_class, '') FROM training_jobs WHERE id = $1", 1,
                        p, &r, eb);
    if (rc != TQ_OK)
        return rc;
    snprintf(out, cap, "%s", PQntuples(r) == 1 ? PQgetvalue(r, 0, 0) : "");
    PQclear(r);
    return TQ_OK;
}

int tq_cdb_class_failures(PGconn *c, const char *job_id, const char *cls, int *n, int *attempts,
                          tq_errbuf *eb)
{
    const char *p[2] = {job_id, cls};
    PGresult *r;
    int rc = tq_db_exec(c,
                        "SELECT tq_class_failures($1, $2),"
                        " COALESCE((SELECT attempts FROM training_jobs WHERE id = $1), 0)",
                        2, p, &r, eb);
    if (rc != TQ_OK)
        return rc;
    *n = (int)strtol(PQgetvalue(r, 0, 0), NULL, 10);
    *attempts = (int)strtol(PQgetvalue(r, 0, 1), NULL, 10);
    PQclear(r);
    return TQ_OK;
}

static int active_rows(PGresult *r, tq_cdb_active **out, size_t *n)
{
    size_t rows = (size_t)PQntuples(r);
    *out = calloc(rows ? rows : 1, sizeof **out);
    if (!*out)
        return TQ_ERR_NOMEM;
    for (size_t i = 0; i < rows; i++) {
        snprintf((*out)[i].job_id, sizeof(*out)[i].job_id, "%s", PQgetvalue(r, (int)i, 0));
        (*out)[i].fencing_token = strtoll(PQgetvalue(r, (int)i, 1), NULL, 10);
        (*out)[i].cancel_requested = strcmp(PQgetvalue(r, (int)i, 2), "t") == 0;
    }
    *n = rows;
    return TQ_OK;
}

/* Columns 0-4 of r's row 0, as tq_cdb_worker_row: started_at, heartbeat age, heartbeat_at
 * (epoch seconds as text), stopped, hostname. */
static void worker_row(const PGresult *r, int col, tq_cdb_worker_row *row)
{
    memset(row, 0, sizeof *row);
    if (PQgetisnull(r, 0, col))
        return;
    row->started_at = strtod(PQgetvalue(r, 0, col), NULL);
    row->heartbeat_age = strtod(PQgetvalue(r, 0, col + 1), NULL);
    row->heartbeat_at = strtod(PQgetvalue(r, 0, col + 2), NULL);
    row->stopped = strcmp(PQgetvalue(r, 0, col + 3), "t") == 0;
    snprintf(row->hostname, sizeof row->hostname, "%s", PQgetvalue(r, 0, col + 4));
}

#define SQL_WORKER_ROW_COLS                                                                        \
    "extract(epoch FROM started_at)::text, extract(epoch FROM now() - heartbeat_at)::text, "       \
    "extract(epoch FROM heartbeat_at)::text, stopped_at IS NOT NULL, hostname"

int tq_cdb_worker_seen(PGconn *c, const char *worker_id, tq_cdb_worker_row *row, tq_errbuf *eb)
{
    const char *p[1] = {worker_id};
    PGresult *r;
    int rc = tq_db_exec(c, "SELECT " SQL_WORKER_ROW_COLS " FROM workers WHERE worker_id = $1", 1, p,
                        &r, eb);
    if (rc)
        return rc;
    if (PQntuples(r) != 1) {
        PQclear(r);
        memset(row, 0, sizeof *row);
        return TQ_ERR_NOT_FOUND;
    }
    worker_row(r, 0, row);
    PQclear(r);
    return TQ_OK;
}

int tq_cdb_heartbeat(PGconn *c, const tq_cdb_worker_state *ws, int lease_seconds,
                     const char *held_ids, int *draining, tq_cdb_worker_row *other,
                     tq_cdb_active **out, size_t *n, tq_errbuf *eb)
{
    char s[TQ_NUM_BUF], busy[TQ_NUM_BUF], lease[TQ_NUM_BUF];
    num(s, ws->slots);
    num(busy, ws->busy);
    num(lease, lease_seconds);
    const char *worker_id = ws->worker_id;
    char started[32];
    snprintf(started, sizeof started, "%.6f", ws->started_at);
    const char *p[8] = {worker_id, ws->hostname, s, busy, ws->gpus, ws->healthy ? "t" : "f",
                        lease,     started};
    PGresult *dr;
    /* started_at is this process's start: a restarted worker (same id) shows its restart. The
     * row as it was (prev, the statement's snapshot): written by another process, it is that
     * process's start, host and heartbeat. */
    int rc =
        tq_db_exec(c,
                   "WITH prev AS (SELECT " SQL_WORKER_ROW_COLS ", started_at AS at FROM workers"
                   " WHERE worker_id = $1),"
                   " up AS (INSERT INTO workers (worker_id, hostname, slots, busy, gpus, healthy, "
                   "lease_seconds, started_at) "
                   "VALUES ($1, $2, $3, $4, $5, $6, $7::int, to_timestamp($8::double precision)) "
                   "ON CONFLICT (worker_id) DO UPDATE SET hostname = $2, slots = $3, "
                   "busy = $4, gpus = $5, healthy = $6, heartbeat_at = now(), "
                   "lease_seconds = $7::int, started_at = to_timestamp($8::double precision), "
                   "stopped_at = NULL RETURNING draining, started_at)"
                   " SELECT up.draining, prev.* FROM up LEFT JOIN prev ON prev.at <> up.started_at",
                   8, p, &dr, eb);
    if (rc)
        return rc;
    *draining = PQntuples(dr) == 1 && strcmp(PQgetvalue(dr, 0, 0), "t") == 0;
    if (other) {
        memset(other, 0, sizeof *other);
        if (PQntuples(dr) == 1)
            worker_row(dr, 1, other);
    }
    PQclear(dr);
    const char *q[3] = {worker_id, lease, held_ids};
    PGresult *r;
    rc = tq_db_exec(c,
                    "UPDATE training_jobs SET lease_expires_at = now() + make_interval(secs => "
                    "$2::int) WHERE worker_id = $1 AND status IN ('pending', 'running') "
                    "AND id = ANY($3::uuid[]) "
                    "RETURNING id::text, fencing_token, cancel_requested_at IS NOT NULL",
                    3, q, &r, eb);
    if (rc)
        return rc;
    rc = active_rows(r, out, n);
    PQclear(r);
    return rc;
}

/* Longest dead-letter body kept (a valid message is far smaller). */
#define DEAD_BODY_MAX (64 * 1024)

int tq_cdb_dead_letter(PGconn *c, const char *message_id, const char *routing_key,
                       const char *reason, const char *worker_id, const void *body, size_t len,
                       tq_errbuf *eb)
{
    size_t n = len < DEAD_BODY_MAX ? len : DEAD_BODY_MAX;
    char *text = malloc(n + 1);
    if (!text)
        return tq_errf(eb, TQ_ERR_NOMEM, "out of memory");
    if (n)
        memcpy(text, body, n);
    tq_utf8_sanitize(text, n);
    const char *p[5] = {message_id, routing_key, reason, worker_id, text};
    int rc = tq_db_exec(c, "SELECT tq_dead_letter_record($1, $2, $3, $4, $5)", 5, p, NULL, eb);
    free(text);
    return rc;
}

int tq_cdb_extend_leases(PGconn *c, const char *worker_id, const char *held_ids, int seconds,
                         tq_errbuf *eb)
{
    char secs[TQ_NUM_BUF];
    num(secs, seconds);
    const char *p[3] = {worker_id, held_ids, secs};
    return tq_db_exec(c,
                      "UPDATE training_jobs SET lease_expires_at = "
                      "GREATEST(lease_expires_at, now() + make_interval(secs => $3::int)) "
                      "WHERE worker_id = $1 AND status IN ('pending', 'running') "
                      "AND id = ANY($2::uuid[])",
                      3, p, NULL, eb);
}

int tq_cdb_worker_jobs(PGconn *c, const char *worker_id, tq_cdb_active **out, size_t *n,
                       tq_errbuf *eb)
{
    const char *p[1] = {worker_id};
    PGresult *r;
    int rc = tq_db_exec(c,
                        "SELECT id::text, fencing_token, cancel_requested_at IS NOT NULL "
                        "FROM training_jobs WHERE worker_id = $1 "
                        "AND status IN ('pending', 'running')",
                        1, p, &r, eb);
    if (rc)
        return rc;
    rc = active_rows(r, out, n);
    PQclear(r);
    return rc;
}

int tq_cdb_reap(PGconn *c, int max_attempts, int *recovered, tq_errbuf *eb)
{
    char ma[TQ_NUM_BUF];
    num(ma, max_attempts);
    const char *p[1] = {ma};
    PGresult *r;
    /* Its own (implicit) transaction: the reaper's try-lock is held only while it works. */
    int rc = tq_db_exec(c, "SELECT count(*) FROM tq_reap($1::int)", 1, p, &r, eb);
    if (rc)
        return rc;
    *recovered = (int)strtol(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return TQ_OK;
}

int tq_cdb_sweep(PGconn *c, int stranded_seconds, long long in_queue, int *released, tq_errbuf *eb)
{
    char secs[TQ_NUM_BUF], inq[TQ_NUM_BUF];
    num(secs, stranded_seconds);
    num(inq, in_queue);
    const char *p[2] = {secs, in_queue >= 0 ? inq : NULL};
    PGresult *r;
    int rc = tq_db_exec(c, "SELECT tq_sweep($1::int, $2::bigint)", 2, p, &r, eb);
    if (rc)
        return rc;
    *released = (int)strtol(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return TQ_OK;
}

int tq_cdb_usage_totals(PGconn *c, tq_cdb_usage *t, tq_errbuf *eb)
{
    char id[TQ_NUM_BUF];
    num(id, t->after_id);
    const char *p[2] = {t->after_at[0] ? t->after_at : "-infinity", id};
    PGresult *r;
    int rc = tq_db_exec(c,
                        "WITH n AS (SELECT id, ended_at, gpu_seconds, wall_seconds FROM job_usage"
                        " WHERE (ended_at, id) > ($1::timestamptz, $2::bigint)"
                        " AND ended_at < now() - interval '1 minute'"
                        " ORDER BY ended_at, id LIMIT 10000),"
                        " l AS (SELECT ended_at, id FROM n ORDER BY ended_at DESC, id DESC LIMIT 1)"
                        " SELECT count(*), COALESCE(sum(gpu_seconds), 0),"
                        " COALESCE(sum(wall_seconds), 0), (SELECT ended_at::text FROM l),"
                        " (SELECT id FROM l) FROM n",
                        2, p, &r, eb);
    if (rc)
        return rc;
    long long n = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    if (n > 0 && !PQgetisnull(r, 0, 3)) {
        t->attempts += n;
        t->gpu_seconds += strtod(PQgetvalue(r, 0, 1), NULL);
        t->wall_seconds += strtod(PQgetvalue(r, 0, 2), NULL);
        snprintf(t->after_at, sizeof t->after_at, "%s", PQgetvalue(r, 0, 3));
        t->after_id = strtoll(PQgetvalue(r, 0, 4), NULL, 10);
    }
    PQclear(r);
    return TQ_OK;
}

int tq_cdb_worker_stopped(PGconn *c, const char *worker_id, tq_errbuf *eb)
{
    const char *p[1] = {worker_id};
    return tq_db_exec(c, "UPDATE workers SET stopped_at = now() WHERE worker_id = $1", 1, p, NULL,
                      eb);
}
