#include "cdb.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tq_db.h"

/* Rolls back on the error path so the connection is reusable. */
static int fail(PGconn *c, int rc)
{
    tq_db_rollback(c);
    return rc;
}

static int set_reason(PGconn *c, const char *reason, tq_errbuf *eb)
{
    const char *p[1] = {reason ? reason : ""};
    return tq_db_exec(c, "SELECT set_config('trainq.reason', $1, true)", 1, p, NULL, eb);
}

/* Fails a queued job durably (its dataset cannot be used); no slot changes hands. */
static int fail_queued(PGconn *c, const char *job_id, const char *why, tq_errbuf *eb)
{
    const char *p[2] = {job_id, why};
    return tq_db_exec(c,
                      "UPDATE training_jobs SET status = 'failed', error_message = $2, "
                      "completed_at = now(), parked_at = NULL WHERE id = $1 AND status = 'queued'",
                      2, p, NULL, eb);
}

/* Takes the job's user's advisory lock, the first lock of every transaction that changes a
 * job's status (see tq_cdb_claim; the status guard trigger takes the same lock, and a
 * transaction that reaches it holding the job's row lock deadlocks with one that holds the
 * user's lock and waits for that row, e.g. the producer's cancel). A plain read of user_id
 * takes no row lock, and a job's user never changes. */
static int lock_job_user(PGconn *c, const char *job_id, tq_errbuf *eb)
{
    const char *p[1] = {job_id};
    return tq_db_exec(c,
                      "SELECT tq_lock_user(user_id) FROM training_jobs WHERE id = $1",
                      1, p, NULL, eb);
}

int tq_cdb_claim(PGconn *c, const tq_job_msg *m, const char *worker_id, int lease_seconds,
                 tq_claim *out, tq_errbuf *eb)
{
    memset(out, 0, sizeof *out);
    /* The row keeps trainq's own encoding of the message (what a release republishes);
     * m was decoded from a valid body, so only memory can make this fail. */
    char *body = tq_msg_encode(m);
    int rc = TQ_ERR_NOMEM;
    PGresult *r = NULL;
    if (!body)
        goto out;

    if ((rc = tq_db_begin(c, eb)))
        goto out;
    /* The user's lock first, before any row lock: releases (tq_release_parked) take it and
     * then lock parked rows, so the opposite order here could deadlock with them. */
    {
        const char *pl[1] = {m->user_id};
        if ((rc = tq_db_exec(c, "SELECT tq_lock_user($1)", 1, pl, NULL, eb)))
            goto rollback;
    }
    /* A message from another service has no row yet: create it, idempotently (a known
     * job id, or one deleted through the API, is left alone: db/procedures/30_jobs.sql). */
    {
        const char *p[1] = {body};
        rc = tq_db_exec(c, "SELECT tq_insert_job($1, 'amqp')", 1, p, NULL, eb);
        if (rc)
            goto rollback;
    }
    {
        const char *p[1] = {m->job_id};
        rc = tq_db_exec(c,
                        "SELECT user_id, dataset_id::text, status, fencing_token "
                        "FROM training_jobs WHERE id = $1 FOR UPDATE",
                        1, p, &r, eb);
        if (rc)
            goto rollback;
        if (PQntuples(r) != 1) {
            out->outcome = TQ_CLAIM_DUPLICATE;
            snprintf(out->reason, sizeof out->reason, "job was deleted");
            goto commit;
        }
        if (strcmp(PQgetvalue(r, 0, 0), m->user_id) != 0 ||
            strcmp(PQgetvalue(r, 0, 1), m->sub.dataset_id) != 0) {
            out->outcome = TQ_CLAIM_MISMATCH;
            snprintf(out->reason, sizeof out->reason,
                     "job_id %s already names a job of another user or dataset", m->job_id);
            goto commit;
        }
        if (strcmp(PQgetvalue(r, 0, 2), "queued") != 0) {
            out->outcome = TQ_CLAIM_DUPLICATE;
            snprintf(out->reason, sizeof out->reason, "job is %s", PQgetvalue(r, 0, 2));
            goto commit;
        }
        PQclear(r);
        r = NULL;
    }
    /* The dataset is checked here too: direct publishers are not checked by the producer,
     * and a dataset can disappear between submission and dispatch. */
    {
        const char *p[1] = {m->sub.dataset_id};
        rc = tq_db_exec(c, "SELECT user_id, storage_path FROM datasets WHERE id = $1", 1, p, &r,
                        eb);
        if (rc)
            goto rollback;
        const char *why = NULL;
        char buf[200];
        if (PQntuples(r) == 0) {
            snprintf(buf, sizeof buf, "dataset %s not found", m->sub.dataset_id);
            why = buf;
        } else if (strcmp(PQgetvalue(r, 0, 0), m->user_id) != 0) {
            snprintf(buf, sizeof buf, "dataset %s belongs to another user", m->sub.dataset_id);
            why = buf;
        } else if ((size_t)PQgetlength(r, 0, 1) >= sizeof out->storage_path) {
            /* cut short, it could name another directory */
            snprintf(buf, sizeof buf, "dataset %s storage_path is longer than %zu bytes",
                     m->sub.dataset_id, sizeof out->storage_path - 1);
            why = buf;
        } else {
            snprintf(out->storage_path, sizeof out->storage_path, "%s", PQgetvalue(r, 0, 1));
        }
        PQclear(r);
        r = NULL;
        if (why) {
            if ((rc = fail_queued(c, m->job_id, why, eb)))
                goto rollback;
            out->outcome = TQ_CLAIM_FAILED;
            snprintf(out->reason, sizeof out->reason, "%s", why);
            goto commit;
        }
    }
    /* Under the user's lock: room, and no older job of the user waiting (submission
     * order). The count runs after the lock, in a fresh snapshot (READ COMMITTED). */
    {
        const char *p[2] = {m->user_id, m->job_id};
        rc = tq_db_exec(
            c,
            "SELECT (SELECT count(*) FROM training_jobs "
            "         WHERE user_id = $1 AND status IN ('pending', 'running')) "
            "         < tq_user_max_active($1), "
            "       EXISTS (SELECT 1 FROM training_jobs o, training_jobs me "
            "                WHERE me.id = $2 AND o.user_id = $1 AND o.status = 'queued' "
            "                  AND o.parked_at IS NOT NULL AND o.id <> me.id "
            "                  AND (o.created_at, o.id) < (me.created_at, me.id))",
            2, p, &r, eb);
        if (rc)
            goto rollback;
        int room = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
        int older = strcmp(PQgetvalue(r, 0, 1), "t") == 0;
        PQclear(r);
        r = NULL;
        if (!room || older) {
            /* This delivery used up any release of the job that sent it here: clear
             * released_at so the next release is not taken for a duplicate in flight and
             * throttled (it would wait for the sweeper). */
            rc = tq_db_exec(c,
                            "UPDATE training_jobs SET parked_at = COALESCE(parked_at, now()), "
                            "released_at = NULL WHERE id = $1",
                            1, p + 1, NULL, eb);
            if (rc)
                goto rollback;
            /* Room with older jobs parked means their release was lost: redo it now. */
            if (room && (rc = tq_db_exec(c, "SELECT tq_release_parked($1)", 1, p, NULL, eb)))
                goto rollback;
            out->outcome = TQ_CLAIM_PARKED;
            snprintf(out->reason, sizeof out->reason, "%s",
                     room ? "older jobs of the user are waiting" : "user at the active-job limit");
            goto commit;
        }
    }
    {
        char lease[16];
        snprintf(lease, sizeof lease, "%d", lease_seconds);
        char why[160];
        snprintf(why, sizeof why, "claimed by worker %s", worker_id);
        if ((rc = set_reason(c, why, eb)))
            goto rollback;
        const char *p[3] = {m->job_id, worker_id, lease};
        rc = tq_db_exec(
            c,
            "UPDATE training_jobs SET status = 'pending', worker_id = $2, "
            "fencing_token = fencing_token + 1, attempts = attempts + 1, "
            "lease_expires_at = now() + make_interval(secs => $3::int), parked_at = NULL, "
            "released_at = NULL, container_id = NULL, exit_code = NULL "
            "WHERE id = $1 RETURNING fencing_token, attempts, "
            "extract(epoch FROM created_at), "
            "json_build_object('id', id, 'user_id', user_id, 'dataset_id', dataset_id, "
            "'name', name, 'type', type, 'base_model', base_model, 'config', config, "
            "'trigger_words', to_json(trigger_words))::text",
            3, p, &r, eb);
        if (rc == TQ_ERR_LIMIT) /* the schema's guard disagreed with the count above */
            rc = tq_errf(eb, TQ_ERR_INTERNAL, "active-job guard refused claim of %s", m->job_id);
        if (rc)
            goto rollback;
        out->fencing_token = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
        out->attempts = (int)strtol(PQgetvalue(r, 0, 1), NULL, 10);
        out->created_epoch = strtod(PQgetvalue(r, 0, 2), NULL);
        json_error_t jerr;
        out->job = json_loads(PQgetvalue(r, 0, 3), 0, &jerr);
        PQclear(r);
        r = NULL;
        if (!out->job) {
            rc = TQ_ERR_NOMEM;
            goto rollback;
        }
        if ((rc = set_reason(c, "", eb)))
            goto rollback;
        /* Still room after this claim: let the user's next parked jobs go too. */
        const char *pu[1] = {m->user_id};
        if ((rc = tq_db_exec(c, "SELECT tq_release_parked($1)", 1, pu, NULL, eb)))
            goto rollback;
        out->outcome = TQ_CLAIM_CLAIMED;
    }
commit:
    PQclear(r);
    r = NULL;
    rc = tq_db_commit(c, eb);
    if (rc) {
        json_decref(out->job);
        out->job = NULL;
    }
    goto out;
rollback:
    PQclear(r);
    r = NULL;
    json_decref(out->job);
    out->job = NULL;
    tq_db_rollback(c);
out:
    free(body);
    return rc;
}

int tq_cdb_mark_running(PGconn *c, const char *job_id, long long fencing,
                        const char *container_id, tq_errbuf *eb)
{
    char tok[24];
    snprintf(tok, sizeof tok, "%lld", fencing);
    char why[96];
    snprintf(why, sizeof why, "container %.12s started", container_id);
    const char *p[4] = {job_id, tok, container_id, why};
    PGresult *r;
    int rc = tq_db_begin(c, eb);
    if (rc || (rc = lock_job_user(c, job_id, eb)))
        return fail(c, rc);
    /* The reason is set for this transaction only, with the update. */
    rc = tq_db_exec(c,
                    "WITH r AS (SELECT set_config('trainq.reason', $4, true)) "
                    "UPDATE training_jobs SET status = 'running', container_id = $3, "
                    "started_at = now() FROM r WHERE id = $1 AND fencing_token = $2 "
                    "AND status = 'pending'",
                    4, p, &r, eb);
    if (rc)
        return fail(c, rc);
    int n = (int)strtol(PQcmdTuples(r), NULL, 10);
    PQclear(r);
    if (n != 1)
        return fail(c, tq_errf(eb, TQ_ERR_CONFLICT, "job %s is no longer ours", job_id));
    return tq_db_commit(c, eb);
}

/* One fenced status change that may free a slot of the user: in one transaction, with
 * `reason` in the audit trail, runs `sql` (an UPDATE ... RETURNING user_id), then releases
 * the user's next parked jobs. TQ_ERR_CONFLICT when the update matched no row (fenced out). */
static int change_and_release(PGconn *c, const char *job_id, const char *reason,
                              const char *sql, int nparams, const char *const *params,
                              tq_errbuf *eb)
{
    int rc = tq_db_begin(c, eb);
    if (rc)
        return rc;
    if ((rc = lock_job_user(c, job_id, eb)) || (rc = set_reason(c, reason, eb)))
        return fail(c, rc);
    PGresult *r;
    if ((rc = tq_db_exec(c, sql, nparams, params, &r, eb)))
        return fail(c, rc);
    if (PQntuples(r) != 1) {
        PQclear(r);
        tq_db_rollback(c);
        return tq_errf(eb, TQ_ERR_CONFLICT, "job %s is no longer ours (fenced out)", job_id);
    }
    const char *pu[1] = {PQgetvalue(r, 0, 0)};
    rc = tq_db_exec(c, "SELECT tq_release_parked($1)", 1, pu, NULL, eb);
    PQclear(r);
    if (rc || (rc = set_reason(c, "", eb)))
        return fail(c, rc);
    return tq_db_commit(c, eb);
}

int tq_cdb_finish(PGconn *c, const char *job_id, long long fencing, const char *status,
                  int exit_code, const char *error_message, const char *reason, tq_errbuf *eb)
{
    char tok[24], code[16];
    snprintf(tok, sizeof tok, "%lld", fencing);
    snprintf(code, sizeof code, "%d", exit_code);
    const char *p[5] = {job_id, tok, status, exit_code < -255 ? NULL : code, error_message};
    return change_and_release(
        c, job_id, reason,
        "UPDATE training_jobs SET status = $3, exit_code = $4::int, "
        "error_message = $5, completed_at = now(), lease_expires_at = NULL, "
        "progress = CASE WHEN $3 = 'completed' THEN 1 ELSE progress END "
        "WHERE id = $1 AND fencing_token = $2 AND status IN ('pending', 'running') "
        "RETURNING user_id",
        5, p, eb);
}

int tq_cdb_give_back(PGconn *c, const char *job_id, long long fencing, const char *reason,
                     int max_host_retries, tq_give_back_outcome *outcome, tq_errbuf *eb)
{
    char tok[24], mx[16];
    snprintf(tok, sizeof tok, "%lld", fencing);
    snprintf(mx, sizeof mx, "%d", max_host_retries);
    const char *p[4] = {job_id, tok, reason, mx};
    PGresult *r;
    /* One statement, so one implicit transaction: tq_give_back takes the user's lock, then
     * the row, and releases the user's next parked job (db/procedures/40_dispatch.sql). */
    int rc = tq_db_exec(c, "SELECT tq_give_back($1::uuid, $2::bigint, $3, $4::int)", 4, p, &r,
                        eb);
    if (rc)
        return rc;
    const char *v = PQgetvalue(r, 0, 0);
    *outcome = strcmp(v, "requeued") == 0    ? TQ_GIVEN_BACK
               : strcmp(v, "cancelled") == 0 ? TQ_GIVE_BACK_CANCELLED
               : strcmp(v, "failed") == 0    ? TQ_GIVE_BACK_FAILED
                                             : TQ_GIVE_BACK_FENCED;
    PQclear(r);
    return TQ_OK;
}

int tq_cdb_retry(PGconn *c, const char *job_id, long long fencing, const char *reason,
                 int max_attempts, tq_errbuf *eb)
{
    char tok[24], ma[16];
    snprintf(tok, sizeof tok, "%lld", fencing);
    snprintf(ma, sizeof ma, "%d", max_attempts);
    int rc = tq_db_begin(c, eb);
    if (rc)
        return rc;
    if ((rc = lock_job_user(c, job_id, eb)))
        return fail(c, rc);
    /* The row lock, taken with the fencing check, holds until commit: nobody can claim
     * the job in between. */
    const char *p[2] = {job_id, tok};
    PGresult *r;
    rc = tq_db_exec(c,
                    "SELECT 1 FROM training_jobs WHERE id = $1 AND fencing_token = $2 "
                    "AND status IN ('pending', 'running') FOR UPDATE",
                    2, p, &r, eb);
    if (rc)
        return fail(c, rc);
    int n = PQntuples(r);
    PQclear(r);
    if (n != 1) {
        tq_db_rollback(c);
        return tq_errf(eb, TQ_ERR_CONFLICT, "job %s is no longer ours", job_id);
    }
    const char *q[3] = {job_id, reason, ma};
    rc = tq_db_exec(c, "SELECT tq_recover_job($1, $2, $3::int, false)", 3, q, NULL, eb);
    if (rc)
        return fail(c, rc);
    return tq_db_commit(c, eb);
}

static int active_rows(PGresult *r, tq_cdb_active **out, size_t *n)
{
    size_t rows = (size_t)PQntuples(r);
    *out = calloc(rows ? rows : 1, sizeof **out);
    if (!*out)
        return TQ_ERR_NOMEM;
    for (size_t i = 0; i < rows; i++) {
        snprintf((*out)[i].job_id, sizeof (*out)[i].job_id, "%s", PQgetvalue(r, (int)i, 0));
        (*out)[i].fencing_token = strtoll(PQgetvalue(r, (int)i, 1), NULL, 10);
        (*out)[i].cancel_requested = strcmp(PQgetvalue(r, (int)i, 2), "t") == 0;
    }
    *n = rows;
    return TQ_OK;
}

int tq_cdb_heartbeat(PGconn *c, const char *worker_id, const char *hostname, int slots,
                     int lease_seconds, const char *held_ids, tq_cdb_active **out, size_t *n,
                     tq_errbuf *eb)
{
    char s[16], lease[16];
    snprintf(s, sizeof s, "%d", slots);
    snprintf(lease, sizeof lease, "%d", lease_seconds);
    const char *p[3] = {worker_id, hostname, s};
    int rc = tq_db_exec(c,
                        "INSERT INTO workers (worker_id, hostname, slots) VALUES ($1, $2, $3) "
                        "ON CONFLICT (worker_id) DO UPDATE SET hostname = $2, slots = $3, "
                        "heartbeat_at = now(), stopped_at = NULL",
                        3, p, NULL, eb);
    if (rc)
        return rc;
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

int tq_cdb_extend_leases(PGconn *c, const char *worker_id, const char *held_ids, int seconds,
                         tq_errbuf *eb)
{
    char secs[16];
    snprintf(secs, sizeof secs, "%d", seconds);
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
    char ma[16];
    snprintf(ma, sizeof ma, "%d", max_attempts);
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

int tq_cdb_sweep(PGconn *c, int stranded_seconds, long long in_queue, int *released,
                 tq_errbuf *eb)
{
    char secs[16], inq[24];
    snprintf(secs, sizeof secs, "%d", stranded_seconds);
    snprintf(inq, sizeof inq, "%lld", in_queue);
    const char *p[2] = {secs, in_queue >= 0 ? inq : NULL};
    PGresult *r;
    int rc = tq_db_exec(c, "SELECT tq_sweep($1::int, $2::bigint)", 2, p, &r, eb);
    if (rc)
        return rc;
    *released = (int)strtol(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return TQ_OK;
}

int tq_cdb_worker_stopped(PGconn *c, const char *worker_id, tq_errbuf *eb)
{
    const char *p[1] = {worker_id};
    return tq_db_exec(c, "UPDATE workers SET stopped_at = now() WHERE worker_id = $1", 1, p,
                      NULL, eb);
}
