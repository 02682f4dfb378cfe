#include "pdb.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tq_db.h"
#include "tq_status.h"

/* An int in decimal, as a text parameter. */
#define INT_TEXT_BUF 16

static char *db_url;
static char *db_app;
static pthread_key_t conn_key;
static int key_made;

/* Per-thread state behind conn_key: the thread's connection (run_txn opens it). */
typedef struct {
    PGconn *c;
} tconn;

static void tconn_free(void *p)
{
    tconn *t = p;
    if (t) {
        if (t->c)
            PQfinish(t->c);
        free(t);
    }
}

int tq_pdb_init(const char *database_url, const char *application_name)
{
    db_url = strdup(database_url);
    db_app = strdup(application_name);
    if (!db_url || !db_app)
        return TQ_ERR_NOMEM;
    if (pthread_key_create(&conn_key, tconn_free) != 0)
        return TQ_ERR_NOMEM;
    key_made = 1;
    return TQ_OK;
}

void tq_pdb_shutdown(void)
{
    if (key_made) {
        /* The calling (main) thread's connection, if it ever made one. */
        tconn_free(pthread_getspecific(conn_key));
        pthread_setspecific(conn_key, NULL);
        pthread_key_delete(conn_key);
        key_made = 0;
    }
    free(db_url);
    free(db_app);
    db_url = db_app = NULL;
}

/* The two statements of every submission. Each is PREPAREd once per connection (session_sql)
 * and runs as its own implicit transaction (run_txn_as, tq_db_exec_prepared): one round trip
 * each, and no parse and plan per request, which cost about a quarter of the submission's
 * database CPU (docs/performance.md, "What bounds submit").
 * The rate-limit hit: fixed one-minute windows aligned to the clock (date_trunc), so every
 * producer agrees on the window without coordination. A counter increment lost in a crash
 * only lets one more request through; not worth an fsync on every request (the job itself
 * is committed synchronously), so the transaction-local synchronous_commit = off rides in
 * the same statement (CTE s). The submit bucket also reads the user's max_priority from the
 * same user_limits row, for the submission that follows (tq_pdb_submit). */
#define SQL_RATE_HIT                                                                               \
    "WITH s AS (SELECT set_config('synchronous_commit', 'off', true)),"                            \
    " w AS ("                                                                                      \
    "  INSERT INTO rate_limits (user_id, bucket, window_start, count)"                             \
    "  VALUES ($1, $2, date_trunc('minute', now()), 1)"                                            \
    "  ON CONFLICT (user_id, bucket, window_start)"                                                \
    "  DO UPDATE SET count = rate_limits.count + 1"                                                \
    "  RETURNING count, window_start)"                                                             \
    " SELECT w.count, COALESCE(l.submit_per_min, $3::int),"                                        \
    "  GREATEST(1, ceil(extract(epoch FROM"                                                        \
    "   (w.window_start + interval '1 minute' - now()))))::int,"                                   \
    "  CASE WHEN $2 = 'submit' THEN COALESCE(l.max_priority, 'normal') ELSE '' END"                \
    " FROM w CROSS JOIN s"                                                                         \
    " LEFT JOIN user_limits l ON l.user_id = $1 AND $2 = 'submit'"
/* The submission (tq_submit, db/procedures/35_submit.sql). */
#define SQL_SUBMIT                                                                                 \
    "SELECT outcome, submitted_id, max_priority, deferred_notify"                                  \
    " FROM tq_submit($1::text, $2::uuid, $3::uuid, $4::text, $5::text, $6::text, $7::text,"        \
    " $8::text, $9::jsonb, $10::text, $11::text, $12::text)"

/* Session settings every producer connection needs: UTC so JSON timestamps read
 * "...+00:00", a statement timeout so a wedged server yields 503/500, not a hang, and the
 * prepared statements. The reload of the procedures at every program start
 * (scripts/migrate.sh, CREATE OR REPLACE) does not break them: Postgres plans a prepared
 * statement again when what it uses changed. */
static const char *const session_sql =
    "SET TimeZone = 'UTC'; SET statement_timeout = '10s'; SET lock_timeout = '5s';"
    " PREPARE rate_hit (text, text, text) AS " SQL_RATE_HIT ";"
    " PREPARE submit_call AS " SQL_SUBMIT;

/* This thread's state (its connection is opened by run_txn). */
static int conn_get(tconn **out, tq_errbuf *eb)
{
    tconn *t = pthread_getspecific(conn_key);
    if (!t) {
        t = calloc(1, sizeof *t);
        if (!t)
            return tq_errf(eb, TQ_ERR_NOMEM, "out of memory");
        pthread_setspecific(conn_key, t);
    }
    *out = t;
    return TQ_OK;
}

/* Integer column of a result; 0 when NULL or not a number (the SQL guarantees it is). */
static long long col_ll(const PGresult *r, int row, int col)
{
    if (PQgetisnull(r, row, col))
        return 0;
    return strtoll(PQgetvalue(r, row, col), NULL, 10);
}

static void col_copy(const PGresult *r, int row, int col, char *dst, size_t cap)
{
    snprintf(dst, cap, "%s", PQgetisnull(r, row, col) ? "" : PQgetvalue(r, row, col));
}

/* Parses a JSON text column built by Postgres (new reference; NULL → TQ_ERR_DB). */
static int col_json(const PGresult *r, int row, int col, json_t **out, tq_errbuf *eb)
{
    json_error_t je;
    *out = json_loads(PQgetvalue(r, row, col), JSON_DECODE_ANY, &je);
    if (!*out)
        return tq_errf(eb, TQ_ERR_DB, "cannot parse json from postgres: %s", je.text);
    return TQ_OK;
}

static int exec(tconn *t, const char *sql, int n, const char *const *p, PGresult **out,
                tq_errbuf *eb)
{
    return tq_db_exec(t->c, sql, n, p, out, eb);
}

/* A statement session_sql PREPAREd, by name. */
/*
 * Runs fn in its own transaction on this thread's connection, through tq_db_run_txn:
 * up to 4 tries in all, on serialization failure / deadlock / timeouts (TQ_ERR_DB_RETRY),
 * and once on a fresh connection when the old one turned out dead before anything of
 * this call reached the server (Postgres restarted while we were idle).
 * fn returns TQ_OK to commit; anything else rolls back and is returned.
 */
typedef int (*txn_fn)(tconn *t, void *arg, tq_errbuf *eb);

typedef struct {
    tconn *t;
    txn_fn fn;
    void *arg;
} txn_call;

static int txn_body(PGconn *c, void *arg, tq_errbuf *eb)
{
    (void)c; /* the same as k->t->c */
    txn_call *k = arg;
    return k->fn(k->t, k->arg, eb);
}

/* implicit: fn sends one statement, its own transaction (one round trip, no BEGIN/COMMIT). */
static int run_txn_as(txn_fn fn, void *arg, int implicit, tq_errbuf *eb)
{
    tconn *t = NULL;
    int rc = conn_get(&t, eb);
    if (rc != TQ_OK)
        return rc;
    txn_call k = {t, fn, arg};
    /* check_idle: these connections never LISTEN (tq_pdb_listen_open opens its own) */
    const tq_db_txn how = {.url = db_url,
                           .app = db_app,
                           .session_sql = session_sql,
                           .implicit = implicit,
                           .check_idle = 1};
    return tq_db_run_txn(&t->c, &how, txn_body, &k, eb);
}

static int run_txn(txn_fn fn, void *arg, tq_errbuf *eb)
{
    return run_txn_as(fn, arg, 0, eb);
}

/* ------------------------------------------------------------------ ping */

static int ping_fn(tconn *t, void *arg, tq_errbuf *eb)
{
    (void)arg;
    return exec(t, "SELECT 1", 0, NULL, NULL, eb);
}

int tq_pdb_ping(tq_errbuf *eb)
{
    return run_txn(ping_fn, NULL, eb);
}

/* ------------------------------------------------------------------ rate limit */

typedef struct {
    const char *user, *bucket;
    char def[INT_TEXT_BUF];
    int count, limit, retry_after;
    char max_priority[TQ_PDB_PRIORITY_BUF];
} rate_arg;

/* SQL_RATE_HIT. Rows of past windows are pruned by retention (tq_pdb_retention_prune), not
 * here: the request's transaction only counts. */
static int rate_fn(tconn *t, void *arg, tq_errbuf *eb)
{
    rate_arg *a = arg;
    const char *p[3] = {a->user, a->bucket, a->def};
    PGresult *res = NULL;
    int rc = tq_db_exec_prepared(t->c, "rate_hit", 3, p, &res, eb);
    if (rc != TQ_OK)
        return rc;
    a->count = (int)col_ll(res, 0, 0);
    a->limit = (int)col_ll(res, 0, 1);
    a->retry_after = (int)col_ll(res, 0, 2);
    col_copy(res, 0, 3, a->max_priority, sizeof a->max_priority);
    PQclear(res);
    return TQ_OK;
}

int tq_pdb_rate_hit(const char *user, const char *bucket, int default_limit, int *count, int *limit,
                    int *retry_after, char max_priority[TQ_PDB_PRIORITY_BUF], tq_errbuf *eb)
{
    rate_arg a = {.user = user, .bucket = bucket};
    snprintf(a.def, sizeof a.def, "%d", default_limit);
    /* one statement, its own transaction; repeated after a lost connection, it counts one
     * hit twice at worst */
    int rc = run_txn_as(rate_fn, &a, 1, eb);
    if (rc == TQ_OK) {
        *count = a.count;
        *limit = a.limit;
        *retry_after = a.retry_after < 1 ? 1 : a.retry_after;
        if (max_priority)
            memcpy(max_priority, a.max_priority, sizeof a.max_priority);
    }
    return rc;
}

/* ------------------------------------------------------------------ submit */

typedef struct {
    const char *user, *cap, *job_id, *canon, *payload, *idem;
    const tq_submission *s;
    const tq_pdb_job_hook *hook;
    tq_pdb_submitted *out;
} submit_arg;

/* One round trip: tq_submit (db/procedures/35_submit.sql) does the idempotency lookup (the
 * request hash is md5 of the canonical submission: defaults applied, fixed key order, so a
 * retry that spells the same request differently still matches), the dataset check, the
 * job's own webhook row and the user's default secret (with a hook), the job row, its outbox
 * row and (by trigger) the audit row, and names the outcome. */
static int submit_fn(tconn *t, void *arg, tq_errbuf *eb)
{
    submit_arg *a = arg;
    a->out->replayed = 0;
    a->out->max_priority[0] = '\0';
    const tq_pdb_job_hook *h = a->hook;
    const char *p[12] = {a->user,
                         a->job_id,
                         a->s->dataset_id,
                         tq_job_type_name(a->s->type),
                         a->payload,
                         a->idem,
                         a->canon,
                         h ? h->url : NULL,
                         h ? h->events_json : NULL,
                         h ? h->new_secret : NULL,
                         a->s->priority_given ? tq_priority_name(a->s->priority) : NULL,
                         a->cap && a->cap[0] ? a->cap : NULL};
    PGresult *res = NULL;
    int rc = tq_db_exec_prepared(t->c, "submit_call", 12, p, &res, eb);
    if (rc == TQ_ERR_CONFLICT && a->idem) {
        /* Another request with the same key committed first: start over, and the
         * idempotency lookup finds its job. */
        return tq_errf(eb, TQ_ERR_DB_RETRY, "concurrent request with the same idempotency key");
    }
    if (rc != TQ_OK)
        return rc;
    if (PQntuples(res) != 1) {
        PQclear(res);
        return tq_errf(eb, TQ_ERR_DB, "tq_submit returned no outcome");
    }
    const char *outcome = PQgetvalue(res, 0, 0);
    col_copy(res, 0, 1, a->out->job_id, sizeof a->out->job_id);
    if (strcmp(outcome, "created") == 0) {
        col_copy(res, 0, 3, a->out->deferred_notify, sizeof a->out->deferred_notify);
        rc = TQ_OK;
    } else if (strcmp(outcome, "replayed") == 0) {
        a->out->replayed = 1;
        rc = TQ_OK;
    } else if (strcmp(outcome, "conflict") == 0)
        rc = tq_errf(eb, TQ_ERR_CONFLICT, "idempotency key reused with a different request");
    else if (strcmp(outcome, "dataset_missing") == 0)
        rc = tq_errf(eb, TQ_ERR_NOT_FOUND, "dataset not found");
    else if (strcmp(outcome, "dataset_forbidden") == 0)
        rc = tq_errf(eb, TQ_ERR_FORBIDDEN, "dataset belongs to another user");
    else if (strcmp(outcome, "priority_forbidden") == 0) {
        col_copy(res, 0, 2, a->out->max_priority, sizeof a->out->max_priority);
        rc = tq_errf(eb, TQ_ERR_FORBIDDEN, "priority above the user's max_priority");
    } else
        rc = tq_errf(eb, TQ_ERR_DB, "tq_submit: unknown outcome \"%s\"", outcome);
    PQclear(res);
    return rc;
}

int tq_pdb_submit(const char *user, const char *max_priority, const tq_submission *s,
                  const char *job_id, const char *canonical_json, const char *msg_payload,
                  const char *idem_key, const tq_pdb_job_hook *hook, tq_pdb_submitted *out,
                  tq_errbuf *eb)
{
    submit_arg a = {.user = user,
                    .cap = max_priority,
                    .hook = hook,
                    .job_id = job_id,
                    .canon = canonical_json,
                    .payload = msg_payload,
                    .idem = idem_key,
                    .s = s,
                    .out = out};
    memset(out, 0, sizeof *out);
    /* One statement, its own transaction (tq_submit does everything in one call). Only a
     * connection found closed before the statement is sent is retried (tq_db_run_txn): a
     * submission whose connection is lost in flight answers 503, and the client's retry
     * with its Idempotency-Key finds the job if it was committed. */
    return run_txn_as(submit_fn, &a, 1, eb);
}

/* ------------------------------------------------------------------ wake-ups */

typedef struct {
    const char *channels, *users;
} wake_arg;

static int wake_fn(tconn *t, void *arg, tq_errbuf *eb)
{
    wake_arg *a = arg;
    const char *p[2] = {a->channels, a->users};
    return exec(t, "SELECT tq_wake($1::jsonb, $2::jsonb)", 2, p, NULL, eb);
}

int tq_pdb_wake(const char *channels_json, const char *users_json, tq_errbuf *eb)
{
    wake_arg a = {channels_json, users_json};
    /* one statement, one round trip: nothing in it needs to be retried as a whole */
    return run_txn_as(wake_fn, &a, 1, eb);
}

/* ------------------------------------------------------------------ jobs */

/* The job as the API shows it (the seed's DbTrainingJob plus queue fields): JOB_JSON_POS over
 * the row aliased j, with pos the SQL of its queue position. docs/api.md, "Queue position":
 * the order in which free slots pick queued jobs (db/procedures/65_schedule.sql:
 * tq_queue_positions, tq_waiting_reason). A position costs one ranking of the queue.
 * One job's: */
#define QUEUE_POSITION                                                                             \
    "CASE WHEN j.status = 'queued' THEN"                                                           \
    " (SELECT p.queue_position FROM tq_queue_positions(ARRAY[j.id]) p) END"
/* A page's (its rows in CTE page): one ranking for all of them, in CTE pos. */
#define PAGE_POSITIONS                                                                             \
    " pos AS MATERIALIZED (SELECT * FROM tq_queue_positions("                                      \
    "   ARRAY(SELECT id FROM page WHERE status = 'queued')))"
#define PAGE_POSITION "(SELECT p.queue_position FROM pos p WHERE p.id = j.id)"

#define JOB_JSON_POS(pos)                                                                          \
    "json_build_object('id', id, 'user_id', user_id, 'dataset_id', dataset_id,"                    \
    " 'name', name, 'type', type, 'base_model', base_model, 'config', config,"                     \
    " 'trigger_words', to_json(trigger_words), 'status', status,"                                  \
    " 'container_id', container_id, 'error_message', error_message,"                               \
    " 'created_at', created_at, 'updated_at', updated_at, 'started_at', started_at,"               \
    " 'completed_at', completed_at, 'attempts', attempts, 'worker_id', worker_id,"                 \
    " 'progress', progress, 'exit_code', exit_code,"                                               \
    " 'failure_class', failure_class, 'failure_message', failure_message,"                         \
    " 'cancel_requested_at', cancel_requested_at, 'current_step', current_step,"                   \
    " 'total_steps', total_steps, 'loss', loss, 'eta_seconds', eta_seconds,"                       \
    " 'progress_updated_at', progress_updated_at,"                                                 \
    " 'queue_position', " pos ","                                                                  \
    " 'waiting_reason', CASE WHEN status = 'queued' THEN tq_waiting_reason(user_id) END,"          \
    " 'priority', tq_priority_name(priority))::text"
#define JOB_JSON JOB_JSON_POS(QUEUE_POSITION)
#define PAGE_JSON JOB_JSON_POS(PAGE_POSITION)

typedef struct {
    const char *user, *job_id, *status, *after_micros, *after_id;
    const char *by; /* a cancel's requester: "user" or "operator" */
    char limit[INT_TEXT_BUF];
    json_t *json;
    char cursor[TQ_PDB_CURSOR_MAX];
    tq_job_status st;
    int done;
} job_arg;

static int get_fn(tconn *t, void *arg, tq_errbuf *eb)
{
    job_arg *a = arg;
    const char *p[2] = {a->job_id, a->user};
    PGresult *res = NULL;
    int rc =
        exec(t, "SELECT " JOB_JSON " FROM training_jobs j WHERE id = $1::uuid AND user_id = $2", 2,
             p, &res, eb);
    if (rc != TQ_OK)
        return rc;
    if (PQntuples(res) == 0)
        rc = tq_errf(eb, TQ_ERR_NOT_FOUND, "job not found");
    else
        rc = col_json(res, 0, 0, &a->json, eb);
    PQclear(res);
    return rc;
}

/* Runs fn(arg) in a transaction and hands the JSON it left in *result to *out; on failure
 * the partial result is freed. */
static int run_json(txn_fn fn, void *arg, json_t **result, json_t **out, tq_errbuf *eb)
{
    int rc = run_txn(fn, arg, eb);
    if (rc != TQ_OK) {
        json_decref(*result);
        return rc;
    }
    *out = *result;
    return TQ_OK;
}

int tq_pdb_job_get(const char *user, const char *job_id, json_t **job, tq_errbuf *eb)
{
    job_arg a = {.user = user, .job_id = job_id};
    return run_json(get_fn, &a, &a.json, job, eb);
}

/* Keyset paging on (created_at, id): the cursor is the last row's created_at in
 * microseconds since the epoch and its id, which is exact (no float rounding) and
 * stable while rows are inserted. One extra row is read to know whether a page follows. */
static int list_fn(tconn *t, void *arg, tq_errbuf *eb)
{
    job_arg *a = arg;
    const char *p[5] = {a->user, a->status, a->after_micros, a->after_id, a->limit};
    PGresult *res = NULL;
    int rc = exec(t,
                  "WITH page AS MATERIALIZED (SELECT * FROM training_jobs WHERE user_id = $1"
                  "   AND ($2::text IS NULL OR status = $2)"
                  "   AND ($3::bigint IS NULL OR (created_at, id) <"
                  "        (timestamptz 'epoch' + $3::bigint * interval '1 microsecond', $4::uuid))"
                  "   ORDER BY created_at DESC, id DESC LIMIT $5::int + 1)," PAGE_POSITIONS
                  " SELECT " PAGE_JSON ","
                  " (extract(epoch FROM created_at) * 1000000)::bigint::text, id::text"
                  " FROM page j ORDER BY created_at DESC, id DESC",
                  5, p, &res, eb);
    if (rc != TQ_OK)
        return rc;
    int lim = (int)strtol(a->limit, NULL, 10);
    int n = PQntuples(res);
    a->json = json_array();
    if (!a->json) {
        PQclear(res);
        return tq_errf(eb, TQ_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i < n && i < lim; i++) {
        json_t *j = NULL;
        rc = col_json(res, i, 0, &j, eb);
        if (rc != TQ_OK)
            break;
        json_array_append_new(a->json, j);
    }
    a->cursor[0] = '\0';
    if (rc == TQ_OK && n > lim && lim > 0)
        snprintf(a->cursor, sizeof a->cursor, "%s_%s", PQgetvalue(res, lim - 1, 1),
                 PQgetvalue(res, lim - 1, 2));
    PQclear(res);
    return rc;
}

int tq_pdb_job_list(const char *user, const tq_job_status *status, const char *after_micros,
                    const char *after_id, int limit, json_t **jobs,
                    char next_cursor[TQ_PDB_CURSOR_MAX], tq_errbuf *eb)
{
    job_arg a = {.user = user,
                 .status = status ? tq_status_name(*status) : NULL,
                 .after_micros = after_micros,
                 .after_id = after_id};
    snprintf(a.limit, sizeof a.limit, "%d", limit);
    int rc = run_json(list_fn, &a, &a.json, jobs, eb);
    if (rc == TQ_OK)
        snprintf(next_cursor, TQ_PDB_CURSOR_MAX, "%s", a.cursor);
    return rc;
}

/* Locks the user's job row and reads its status into a->st. The user's advisory lock comes
 * first, before the row lock: it is the one lock order of every transaction that changes a
 * job's status (the consumer's claim and status changes, tq_release_parked, and the status
 * guard trigger, which takes it on every status change). Locking the row first and then
 * meeting the guard's lock deadlocks with a claim that holds the user's lock and waits for
 * this row. The user is the authenticated one, and only that user's rows are locked. */
static int lock_job(tconn *t, job_arg *a, tq_errbuf *eb)
{
    const char *p[2] = {a->job_id, a->user};
    PGresult *res = NULL;
    int rc = exec(t, "SELECT tq_lock_user($1)", 1, p + 1, NULL, eb);
    if (rc != TQ_OK)
        return rc;
    rc = exec(t,
              "SELECT status FROM training_jobs WHERE id = $1::uuid AND user_id = $2"
              " FOR UPDATE",
              2, p, &res, eb);
    if (rc != TQ_OK)
        return rc;
    if (PQntuples(res) == 0)
        rc = tq_errf(eb, TQ_ERR_NOT_FOUND, "job not found");
    else if (tq_status_parse(PQgetvalue(res, 0, 0), &a->st) != 0)
        rc = tq_errf(eb, TQ_ERR_DB, "job %s has an unknown status", a->job_id);
    PQclear(res);
    return rc;
}

/* An unpublished job message of a job that will never run is dropped (its events stay: the
 * cancellation's own is among them); a row a relay is publishing right now (locked) is left
 * alone: the consumer sees the job is cancelled. */
static int drop_unpublished(tconn *t, const char *job_id, tq_errbuf *eb)
{
    const char *p[1] = {job_id};
    return exec(t,
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE job_id = $1::uuid"
                " AND exchange = 'trainq.jobs' AND published_at IS NULL FOR UPDATE SKIP LOCKED)",
                1, p, NULL, eb);
}

static int cancel_fn(tconn *t, void *arg, tq_errbuf *eb)
{
    job_arg *a = arg;
    int rc = lock_job(t, a, eb);
    if (rc != TQ_OK)
        return rc;
    if (tq_status_terminal(a->st))
        return tq_errf(eb, TQ_ERR_CONFLICT, "job is already %s", tq_status_name(a->st));
    const char *by = a->by;
    const char *p[2] = {a->job_id, by};
    if (a->st == TQ_STATUS_QUEUED) {
        const char *why[1] = {strcmp(by, "operator") == 0 ? "cancelled by an operator"
                                                          : "cancelled by user"};
        rc = exec(t, "SELECT set_config('trainq.reason', $1, true)", 1, why, NULL, eb);
        if (rc == TQ_OK)
            rc = exec(t,
                      "UPDATE training_jobs SET status = 'cancelled', completed_at = now(),"
                      " parked_at = NULL, cancel_requested_at = COALESCE(cancel_requested_at,"
                      " now()), cancel_requested_by = COALESCE(cancel_requested_by, $2),"
                      " updated_at = now() WHERE id = $1::uuid",
                      2, p, NULL, eb);
        if (rc == TQ_OK)
            rc = drop_unpublished(t, a->job_id, eb);
        a->done = 1;
        return rc;
    }
    a->done = 0;
    return exec(t,
                "UPDATE training_jobs SET cancel_requested_at = COALESCE(cancel_requested_at,"
                " now()), cancel_requested_by = COALESCE(cancel_requested_by, $2),"
                " updated_at = now() WHERE id = $1::uuid",
                2, p, NULL, eb);
}

int tq_pdb_job_cancel(const char *user, const char *job_id, int by_operator, tq_job_status *status,
                      int *done, tq_errbuf *eb)
{
    job_arg a = {.user = user, .job_id = job_id, .by = by_operator ? "operator" : "user"};
    int rc = run_txn(cancel_fn, &a, eb);
    *status = a.st;
    *done = a.done;
    return rc;
}

static int events_fn(tconn *t, void *arg, tq_errbuf *eb)
{
    job_arg *a = arg;
    const char *p[2] = {a->job_id, a->user};
    PGresult *res = NULL;
    int rc = exec(t,
                  "SELECT COALESCE(json_agg(json_build_object('id', id, 'from_status',"
                  " from_status, 'to_status', to_status, 'reason', reason, 'worker_id',"
                  " worker_id, 'failure_class', failure_class, 'at', at) ORDER BY id),"
                  " '[]')::text, count(*)"
                  " FROM job_events WHERE job_id = $1::uuid AND user_id = $2",
                  2, p, &res, eb);
    if (rc != TQ_OK)
        return rc;
    if (col_ll(res, 0, 1) == 0)
        rc = tq_errf(eb, TQ_ERR_NOT_FOUND, "job not found");
    else
        rc = col_json(res, 0, 0, &a->json, eb);
    PQclear(res);
    return rc;
}

int tq_pdb_job_events(const char *user, const char *job_id, json_t **events, tq_errbuf *eb)
{
    job_arg a = {.user = user, .job_id = job_id};
    return run_json(events_fn, &a, &a.json, events, eb);
}

/* ------------------------------------------------------------------ usage */

typedef struct {
    const char *user;
    char from[INT_TEXT_BUF], to[INT_TEXT_BUF];
    json_t *json;
} usage_arg;

static int usage_fn(tconn *t, void *arg, tq_errbuf *eb)
{
    usage_arg *a = arg;
    const char *p[3] = {a->user, a->from, a->to};
    PGresult *res = NULL;
    int rc = exec(
        t,
        "WITH r AS (SELECT to_timestamp($2::bigint / 1000.0) AS f,"
        "                  to_timestamp($3::bigint / 1000.0) AS t),"
        " d AS (SELECT u.* FROM r, tq_usage_days($1, r.f, r.t) u)"
        " SELECT json_build_object('from', (SELECT f FROM r), 'to', (SELECT t FROM r),"
        "  'days', COALESCE((SELECT json_agg(json_build_object('day', day, 'jobs',"
        "    json_build_object('completed', completed, 'failed', failed, 'cancelled', cancelled),"
        "    'attempts', attempts, 'gpu_seconds', round(gpu_seconds::numeric, 3),"
        "    'wall_seconds', round(wall_seconds::numeric, 3))"
        "    ORDER BY day) FROM d), '[]'),"
        "  'totals', (SELECT json_build_object('jobs', json_build_object('completed',"
        "    COALESCE(sum(completed), 0), 'failed', COALESCE(sum(failed), 0), 'cancelled',"
        "    COALESCE(sum(cancelled), 0)), 'attempts', COALESCE(sum(attempts), 0),"
        "    'gpu_seconds', round(COALESCE(sum(gpu_seconds), 0)::numeric, 3), 'wall_seconds',"
        "    round(COALESCE(sum(wall_seconds), 0)::numeric, 3)) FROM d))::text",
        3, p, &res, eb);
    if (rc != TQ_OK)
        return rc;
    rc = col_json(res, 0, 0, &a->json, eb);
    PQclear(res);
    return rc;
}

int tq_pdb_usage(const char *user, int64_t from_ms, int64_t to_ms, json_t **out, tq_errbuf *eb)
{
    usage_arg a = {.user = user};
    snprintf(a.from, sizeof a.from, "%lld", (long long)from_ms);
    snprintf(a.to, sizeof a.to, "%lld", (long long)to_ms);
    return run_json(usage_fn, &a, &a.json, out, eb);
}

static int delete_fn(tconn *t, void *arg, tq_errbuf *eb)
{
    job_arg *a = arg;
    int rc = lock_job(t, a, eb);
    if (rc != TQ_OK)
        return rc;
    if (!tq_status_terminal(a->st))
        return tq_errf(eb, TQ_ERR_CONFLICT, "job is %s", tq_status_name(a->st));
    const char *p[1] = {a->job_id};
    rc = exec(t, "DELETE FROM training_jobs WHERE id = $1::uuid", 1, p, NULL, eb);
    if (rc == TQ_OK) /* its audit rows stay, until job retention (95_retention.sql) */
        rc = exec(t,
                  "INSERT INTO deleted_jobs (job_id) VALUES ($1::uuid)"
                  " ON CONFLICT (job_id) DO NOTHING",
                  1, p, NULL, eb);
    if (rc == TQ_OK)
        rc = drop_unpublished(t, a->job_id, eb);
    return rc;
}

int tq_pdb_job_delete(const char *user, const char *job_id, tq_job_status *status, tq_errbuf *eb)
{
    job_arg a = {.user = user, .job_id = job_id};
    int rc = run_txn(delete_fn, &a, eb);
    *status = a.st;
    return rc;
}

/* ------------------------------------------------------------------ live output */

typedef struct {
    const char *user, *job_id, *name;
    char a[24], b[24];
    json_t *json;
    long long n1, n2, n3;
    int found;
    char *text;
    size_t text_cap;
} live_arg;

/* One row, one text column of JSON built by Postgres → a->json; no row → not found. */
static int json_row(tconn *t, live_arg *a, const char *sql, int n, const char *const *p,
                    tq_errbuf *eb)
{
    PGresult *res = NULL;
    int rc = exec(t, sql, n, p, &res, eb);
    if (rc != TQ_OK)
        return rc;
    if (PQntuples(res) == 0 || PQgetisnull(res, 0, 0))
        rc = tq_errf(eb, TQ_ERR_NOT_FOUND, "job not found");
    else
        rc = col_json(res, 0, 0, &a->json, eb);
    PQclear(res);
    return rc;
}

/* Newest rows first, up to the one where the running count of lines reaches the tail
 * (a row of k lines holds k-1 newlines). The job row is the ownership check. */
static int log_fn(tconn *t, void *arg, tq_errbuf *eb)
{
    live_arg *a = arg;
    const char *p[3] = {a->job_id, a->user, a->a};
    return json_row(t, a,
                    "SELECT (SELECT COALESCE(json_agg(body ORDER BY seq DESC), '[]') FROM ("
                    "  SELECT seq, body, sum(length(body) - length(replace(body, E'\\n', '')) + 1)"
                    "    OVER (ORDER BY seq DESC) AS lines FROM job_output"
                    "   WHERE job_id = j.id AND kind = 'log') o"
                    "  WHERE lines - (length(body) - length(replace(body, E'\\n', '')) + 1)"
                    "        < $3::int)::text"
                    " FROM training_jobs j WHERE id = $1::uuid AND user_id = $2",
                    3, p, eb);
}

int tq_pdb_job_log(const char *user, const char *job_id, int tail, json_t **rows, tq_errbuf *eb)
{
    live_arg a = {.user = user, .job_id = job_id};
    snprintf(a.a, sizeof a.a, "%d", tail);
    return run_json(log_fn, &a, &a.json, rows, eb);
}

static int artifacts_fn(tconn *t, void *arg, tq_errbuf *eb)
{
    live_arg *a = arg;
    const char *p[2] = {a->job_id, a->user};
    return json_row(t, a,
                    "SELECT (SELECT COALESCE(json_agg(json_build_object('name', name,"
                    " 'size_bytes', size_bytes, 'sha256', sha256, 'created_at', created_at)"
                    " ORDER BY name), '[]') FROM job_artifacts WHERE job_id = j.id)::text"
                    " FROM training_jobs j WHERE id = $1::uuid AND user_id = $2",
                    2, p, eb);
}

int tq_pdb_job_artifacts(const char *user, const char *job_id, json_t **list, tq_errbuf *eb)
{
    live_arg a = {.user = user, .job_id = job_id};
    return run_json(artifacts_fn, &a, &a.json, list, eb);
}

static int artifact_find_fn(tconn *t, void *arg, tq_errbuf *eb)
{
    live_arg *a = arg;
    const char *p[3] = {a->job_id, a->user, a->name};
    PGresult *res = NULL;
    int rc = exec(t,
                  "SELECT (SELECT size_bytes FROM job_artifacts WHERE job_id = j.id AND name = $3)"
                  " FROM training_jobs j WHERE id = $1::uuid AND user_id = $2",
                  3, p, &res, eb);
    if (rc != TQ_OK)
        return rc;
    if (PQntuples(res) == 0) {
        rc = tq_errf(eb, TQ_ERR_NOT_FOUND, "job not found");
    } else {
        a->found = !PQgetisnull(res, 0, 0);
        a->n1 = col_ll(res, 0, 0);
    }
    PQclear(res);
    return rc;
}

int tq_pdb_artifact_find(const char *user, const char *job_id, const char *name, int *listed,
                         long long *size, tq_errbuf *eb)
{
    live_arg a = {.user = user, .job_id = job_id, .name = name};
    int rc = run_txn(artifact_find_fn, &a, eb);
    *listed = a.found;
    *size = a.n1;
    return rc;
}

/* The stream's events: job_events after the cursor. Per user (and so per job) their id order
 * is commit order (every status change holds the user's advisory lock to commit), so "id >
 * cursor" never skips an event that commits later. */
#define STREAM_EVENTS_SQL(where)                                                                   \
    "(SELECT COALESCE(json_agg(e ORDER BY e.id), '[]') FROM (SELECT id, job_id,"                   \
    " to_status AS status, from_status, reason, at FROM job_events WHERE " where                   \
    " ORDER BY id LIMIT 100) e)::text"

static int stream_job_fn(tconn *t, void *arg, tq_errbuf *eb)
{
    live_arg *a = arg;
    const char *p[4] = {a->job_id, a->user, a->a, a->b};
    /* One statement, one snapshot: when it shows the terminal status it shows every output
     * row (those commit before it: both write the job's row). The rows: at most 64, and
     * no more once TQ_PDB_STREAM_BYTES are in (the first row always). */
    return json_row(
        t, a,
        "WITH o AS (SELECT seq, kind, body FROM ("
        "  SELECT seq, kind, body, sum(bytes) OVER (ORDER BY seq) - bytes AS before"
        "   FROM (SELECT seq, kind, body, bytes FROM job_output WHERE job_id = $1::uuid"
        "   AND seq > $4::bigint ORDER BY seq LIMIT 64) l) w"
        "  WHERE before < " TQ_PDB_STREAM_BYTES_SQL ")"
        "SELECT json_build_object('events', " STREAM_EVENTS_SQL(
            "job_id = $1::uuid AND user_id = $2 AND id > $3::bigint") "::json,"
                                                                      " 'output', (SELECT "
                                                                      "COALESCE(json_agg(o ORDER "
                                                                      "BY o.seq), '[]') FROM o),"
                                                                      " 'more_output', EXISTS "
                                                                      "(SELECT 1 FROM job_output "
                                                                      "WHERE job_id = $1::uuid"
                                                                      "   AND seq > "
                                                                      "COALESCE((SELECT max(seq) "
                                                                      "FROM o), $4::bigint)),"
                                                                      " 'status', (SELECT status "
                                                                      "FROM training_jobs WHERE id "
                                                                      "= $1::uuid))::text",
        4, p, eb);
}

int tq_pdb_stream_job(const char *user, const char *job_id, long long after_event,
                      long long after_seq, json_t **out, tq_errbuf *eb)
{
    live_arg a = {.user = user, .job_id = job_id};
    snprintf(a.a, sizeof a.a, "%lld", after_event);
    snprintf(a.b, sizeof a.b, "%lld", after_seq);
    return run_json(stream_job_fn, &a, &a.json, out, eb);
}

static int stream_user_fn(tconn *t, void *arg, tq_errbuf *eb)
{
    live_arg *a = arg;
    const char *p[3] = {a->user, a->a, a->b};
    return json_row(
        t, a,
        "SELECT json_build_object('events', " STREAM_EVENTS_SQL(
            "user_id = $1 AND id > $2::bigint") "::json,"
                                                " 'progress', (SELECT "
                                                "COALESCE(json_agg(json_build_object('job_id', id, "
                                                "'progress',"
                                                "  progress, 'current_step', current_step, "
                                                "'total_steps', total_steps, 'loss', loss,"
                                                "  'eta_seconds', eta_seconds, "
                                                "'progress_updated_at', progress_updated_at, "
                                                "'micros',"
                                                "  (extract(epoch FROM progress_updated_at) * "
                                                "1000000)::bigint)"
                                                "  ORDER BY progress_updated_at), '[]') FROM "
                                                "training_jobs WHERE user_id = $1"
                                                "  AND status IN ('pending', 'running') AND "
                                                "progress_updated_at >"
                                                "  timestamptz 'epoch' + $3::bigint * interval '1 "
                                                "microsecond'))::text",
        3, p, eb);
}

int tq_pdb_stream_user(const char *user, long long after_event, long long after_micros,
                       json_t **out, tq_errbuf *eb)
{
    live_arg a = {.user = user};
    snprintf(a.a, sizeof a.a, "%lld", after_event);
    snprintf(a.b, sizeof a.b, "%lld", after_micros);
    return run_json(stream_user_fn, &a, &a.json, out, eb);
}

static int stream_start_fn(tconn *t, void *arg, tq_errbuf *eb)
{
    live_arg *a = arg;
    const char *p[2] = {a->user, a->job_id};
    PGresult *res = NULL;
    int rc = exec(t,
                  "SELECT (SELECT COALESCE(max(id), 0) FROM job_events WHERE user_id = $1),"
                  " (extract(epoch FROM clock_timestamp()) * 1000000)::bigint,"
                  " $2::uuid IS NULL OR EXISTS (SELECT 1 FROM job_events WHERE job_id = $2::uuid"
                  "   AND user_id = $1),"
                  " COALESCE((SELECT (SELECT max(e.id) FROM job_events e WHERE e.job_id = j.id)"
                  "   FROM training_jobs j WHERE j.id = $2::uuid AND j.user_id = $1"
                  "   AND j.status IN ('completed', 'failed', 'cancelled')), 0)",
                  2, p, &res, eb);
    if (rc != TQ_OK)
        return rc;
    a->n1 = col_ll(res, 0, 0);
    a->n2 = col_ll(res, 0, 1);
    a->n3 = col_ll(res, 0, 3);
    if (strcmp(PQgetvalue(res, 0, 2), "t") != 0)
        rc = tq_errf(eb, TQ_ERR_NOT_FOUND, "job not found");
    PQclear(res);
    return rc;
}

int tq_pdb_stream_start(const char *user, const char *job_id, long long *last_event,
                        long long *now_micros, long long *end_event, tq_errbuf *eb)
{
    live_arg a = {.user = user, .job_id = job_id};
    int rc = run_txn(stream_start_fn, &a, eb);
    *last_event = a.n1;
    *now_micros = a.n2;
    *end_event = a.n3;
    return rc;
}

static int job_user_fn(tconn *t, void *arg, tq_errbuf *eb)
{
    live_arg *a = arg;
    const char *p[1] = {a->job_id};
    PGresult *res = NULL;
    int rc = exec(t, "SELECT user_id FROM training_jobs WHERE id = $1::uuid", 1, p, &res, eb);
    if (rc != TQ_OK)
        return rc;
    if (PQntuples(res) > 0)
        col_copy(res, 0, 0, a->text, a->text_cap);
    PQclear(res);
    return TQ_OK;
}

int tq_pdb_job_user(const char *job_id, char user[TQ_USER_ID_BUF], tq_errbuf *eb)
{
    user[0] = '\0';
    live_arg a = {.job_id = job_id, .text = user, .text_cap = TQ_USER_ID_BUF};
    return run_txn(job_user_fn, &a, eb);
}

/* The job's kept progress samples (the consumer keeps the newest few hundred 'progress'
 * rows of job_output), oldest first: the dashboard's loss curve. */
static int progress_fn(tconn *t, void *arg, tq_errbuf *eb)
{
    live_arg *a = arg;
    const char *p[2] = {a->job_id, a->user};
    return json_row(t, a,
                    "SELECT (SELECT COALESCE(json_agg(body::json ORDER BY seq), '[]')"
                    " FROM job_output WHERE job_id = j.id AND kind = 'progress')::text"
                    " FROM training_jobs j WHERE id = $1::uuid AND user_id = $2",
                    2, p, eb);
}

int tq_pdb_job_progress(const char *user, const char *job_id, json_t **samples, tq_errbuf *eb)
{
    live_arg a = {.user = user, .job_id = job_id};
    return run_json(progress_fn, &a, &a.json, samples, eb);
}

/* ------------------------------------------------------------------ admin (90_admin.sql) */

static const char *const admin_read_sql[] = {
    [TQ_PDB_ADMIN_OVERVIEW] = "SELECT tq_admin_overview()::text",
    [TQ_PDB_ADMIN_WORKERS] = "SELECT tq_admin_workers()::text",
    [TQ_PDB_ADMIN_USERS] = "SELECT tq_admin_users()::text",
    [TQ_PDB_ADMIN_DEAD_LETTERS] = "SELECT tq_admin_dead_letters($1::int)::text",
    [TQ_PDB_ADMIN_JOBS] =
        "WITH page AS MATERIALIZED (SELECT * FROM training_jobs"
        "   WHERE ($2::text IS NULL OR status = $2) ORDER BY created_at DESC, id DESC"
        "   LIMIT $1::int)," PAGE_POSITIONS " SELECT COALESCE(json_agg(" PAGE_JSON
        "::json ORDER BY j.created_at DESC, j.id DESC),"
        "   '[]')::text FROM page j",
};

static const char *const admin_action_sql[] = {
    [TQ_PDB_ADMIN_RETRY] = "SELECT tq_admin_retry($1::uuid)",
    [TQ_PDB_ADMIN_REPUBLISH] = "SELECT tq_admin_republish($1::bigint)",
    [TQ_PDB_ADMIN_DRAIN] = "SELECT tq_admin_drain($1, true)",
    [TQ_PDB_ADMIN_UNDRAIN] = "SELECT tq_admin_drain($1, false)",
};

typedef struct {
    const char *sql, *arg, *arg2;
    char limit[INT_TEXT_BUF];
    json_t *json;
    char *outcome;
    size_t outcome_cap;
} admin_arg;

static int admin_read_fn(tconn *t, void *arg, tq_errbuf *eb)
{
    admin_arg *a = arg;
    const char *p[2] = {a->limit, a->arg2};
    PGresult *res = NULL;
    int n = strstr(a->sql, "$2") ? 2 : strstr(a->sql, "$1") ? 1 : 0;
    int rc = exec(t, a->sql, n, p, &res, eb);
    if (rc != TQ_OK)
        return rc;
    rc = col_json(res, 0, 0, &a->json, eb);
    PQclear(res);
    return rc;
}

int tq_pdb_admin_read(tq_pdb_admin_read_kind what, int limit, const char *status, json_t **out,
                      tq_errbuf *eb)
{
    admin_arg a = {.sql = admin_read_sql[what], .arg2 = status};
    snprintf(a.limit, sizeof a.limit, "%d", limit);
    return run_json(admin_read_fn, &a, &a.json, out, eb);
}

static int admin_action_fn(tconn *t, void *arg, tq_errbuf *eb)
{
    admin_arg *a = arg;
    const char *p[1] = {a->arg};
    PGresult *res = NULL;
    int rc = exec(t, a->sql, 1, p, &res, eb);
    if (rc != TQ_OK)
        return rc;
    col_copy(res, 0, 0, a->outcome, a->outcome_cap);
    PQclear(res);
    return TQ_OK;
}

int tq_pdb_admin_action(tq_pdb_admin_action_kind what, const char *arg, char *outcome,
                        size_t outcome_cap, tq_errbuf *eb)
{
    admin_arg a = {
        .sql = admin_action_sql[what], .arg = arg, .outcome = outcome, .outcome_cap = outcome_cap};
    outcome[0] = '\0';
    return run_txn(admin_action_fn, &a, eb);
}

PGconn *tq_pdb_listen_open(tq_errbuf *eb)
{
    PGconn *c = tq_db_connect(db_url, db_app, eb);
    if (!c)
        return NULL;
    if (tq_db_exec(c, "LISTEN " TQ_PDB_CHAN_EVENT, 0, NULL, NULL, eb) != TQ_OK ||
        tq_db_exec(c, "LISTEN " TQ_PDB_CHAN_OUTPUT, 0, NULL, NULL, eb) != TQ_OK) {
        PQfinish(c);
        return NULL;
    }
    return c;
}

/* ------------------------------------------------------------------ retention */

typedef struct {
    char p[4][INT_TEXT_BUF];
    tq_pdb_pruned *out;
} prune_arg;

static int prune_fn(tconn *t, void *arg, tq_errbuf *eb)
{
    prune_arg *a = arg;
    const char *p[4] = {a->p[0], a->p[1], a->p[2], a->p[3]};
    PGresult *res = NULL;
    int rc = exec(t,
                  "SELECT outbox_rows, rate_rows, jobs, webhook_rows"
                  " FROM tq_retention_prune($1::int, $2::int, $3::int, $4::int)",
                  4, p, &res, eb);
    if (rc != TQ_OK)
        return rc;
    a->out->outbox_rows = col_ll(res, 0, 0);
    a->out->rate_rows = col_ll(res, 0, 1);
    a->out->jobs = col_ll(res, 0, 2);
    a->out->webhook_rows = col_ll(res, 0, 3);
    PQclear(res);
    return TQ_OK;
}

int tq_pdb_retention_prune(int outbox_seconds, int job_seconds, int batch, int job_batch,
                           tq_pdb_pruned *out, tq_errbuf *eb)
{
    prune_arg a = {.out = out};
    snprintf(a.p[0], sizeof a.p[0], "%d", outbox_seconds);
    snprintf(a.p[1], sizeof a.p[1], "%d", job_seconds);
    snprintf(a.p[2], sizeof a.p[2], "%d", batch);
    snprintf(a.p[3], sizeof a.p[3], "%d", job_batch);
    memset(out, 0, sizeof *out);
    return run_txn(prune_fn, &a, eb);
}

/* ------------------------------------------------------------------ webhooks */

PGconn *tq_pdb_hooks_listen_open(tq_errbuf *eb)
{
    PGconn *c = tq_db_connect(db_url, db_app, eb);
    if (c && tq_db_exec(c, "LISTEN " TQ_PDB_CHAN_WEBHOOK, 0, NULL, NULL, eb) != TQ_OK) {
        PQfinish(c);
        return NULL;
    }
    return c;
}

typedef struct {
    char cap[INT_TEXT_BUF], user_cap[INT_TEXT_BUF], lease[INT_TEXT_BUF];
    char id[24]; /* the leased delivery; "" when none was due */
    tq_pdb_hook *rows;
    int n;
} hooks_take_arg;

void tq_pdb_hooks_free(tq_pdb_hook *h, int n)
{
    for (int i = 0; h && i < n; i++) {
        free(h[i].url);
        free(h[i].event);
        free(h[i].secret);
        free(h[i].old_secret);
        free(h[i].job_json);
    }
    free(h);
}

static char *col_dup(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? NULL : strdup(PQgetvalue(r, row, col));
}

/* The lease, in its own transaction (tq_webhook_take, db/procedures/80_webhooks.sql): it
 * holds the endpoint's lock until its commit, so nothing else is done inside it. */
static int hooks_lease_fn(tconn *t, void *arg, tq_errbuf *eb)
{
    hooks_take_arg *a = arg;
    const char *p[3] = {a->cap, a->user_cap, a->lease};
    PGresult *res = NULL;
    a->id[0] = '\0';
    int rc = exec(t, "SELECT tq_webhook_take($1::int, $2::int, $3::int)", 3, p, &res, eb);
    if (rc != TQ_OK)
        return rc;
    if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 0))
        col_copy(res, 0, 0, a->id, sizeof a->id);
    PQclear(res);
    return TQ_OK;
}

/* What the request needs, read after the lease. The secret: the endpoint's, or for a job's
 * own URL the user's default secret. The job JSON is JOB_JSON over the row as it is now
 * (alias j, as JOB_JSON needs). */
static int hooks_take_fn(tconn *t, void *arg, tq_errbuf *eb)
{
    hooks_take_arg *a = arg;
    tq_pdb_hooks_free(a->rows, a->n);
    a->rows = NULL;
    a->n = 0;
    const char *p[1] = {a->id};
    PGresult *res = NULL;
    int rc = exec(
        t,
        "SELECT d.id, d.job_id::text, d.url, d.event,"
        "   COALESCE((SELECT s.secret FROM webhook_endpoints s WHERE s.id = d.endpoint_id),"
        "            (SELECT s.secret FROM webhook_user_secrets s WHERE s.user_id = d.user_id)),"
        "   (SELECT " JOB_JSON " FROM training_jobs j WHERE j.id = d.job_id),"
        "   to_char(d.event_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),"
        "   d.sequence, d.attempts,"
        "   (SELECT s.previous_secret FROM webhook_endpoints s WHERE s.id = d.endpoint_id"
        "      AND s.previous_secret_until > now())"
        " FROM webhook_deliveries d WHERE d.id = $1::bigint AND d.state = 'pending'",
        1, p, &res, eb);
    if (rc != TQ_OK)
        return rc;
    int n = PQntuples(res);
    if (n > 0) {
        a->rows = calloc((size_t)n, sizeof *a->rows);
        if (!a->rows) {
            PQclear(res);
            return tq_errf(eb, TQ_ERR_NOMEM, "out of memory");
        }
    }
    for (int i = 0; i < n; i++) {
        tq_pdb_hook *h = &a->rows[i];
        a->n++;
        h->id = col_ll(res, i, 0);
        col_copy(res, i, 1, h->job_id, sizeof h->job_id);
        h->url = col_dup(res, i, 2);
        h->event = col_dup(res, i, 3);
        h->secret = col_dup(res, i, 4);
        h->job_json = col_dup(res, i, 5);
        col_copy(res, i, 6, h->event_at, sizeof h->event_at);
        h->sequence = col_ll(res, i, 7);
        h->attempts = (int)col_ll(res, i, 8);
        h->old_secret = col_dup(res, i, 9);
        if (!h->url || !h->event || (!PQgetisnull(res, i, 5) && !h->job_json) ||
            (!PQgetisnull(res, i, 9) && !h->old_secret)) {
            PQclear(res);
            return tq_errf(eb, TQ_ERR_NOMEM, "out of memory");
        }
    }
    PQclear(res);
    return TQ_OK;
}

int tq_pdb_hooks_take(int endpoint_cap, int user_cap, int lease_seconds, tq_pdb_hook **out, int *n,
                      tq_errbuf *eb)
{
    hooks_take_arg a = {0};
    snprintf(a.cap, sizeof a.cap, "%d", endpoint_cap);
    snprintf(a.user_cap, sizeof a.user_cap, "%d", user_cap);
    snprintf(a.lease, sizeof a.lease, "%d", lease_seconds);
    int rc = run_txn(hooks_lease_fn, &a, eb);
    if (rc == TQ_OK && a.id[0])
        rc = run_txn(hooks_take_fn, &a, eb);
    if (rc != TQ_OK) {
        tq_pdb_hooks_free(a.rows, a.n);
        *out = NULL;
        *n = 0;
        return rc;
    }
    *out = a.rows;
    *n = a.n;
    return TQ_OK;
}

typedef struct {
    const char *p[6];
    int gone;
    char disable_after[INT_TEXT_BUF];
} hook_record_arg;

/* Stops sending to the target of delivery id: its endpoint is disabled with reason, or for
 * a job's own URL that job's webhook is stopped (either way the trigger writes no new
 * deliveries for it), and its pending deliveries, this one too, fail. */
static int hook_stop_target(tconn *t, const char *id, const char *reason, tq_errbuf *eb)
{
    const char *p[2] = {id, reason};
    int rc = exec(t,
                  "UPDATE webhook_endpoints e SET disabled_at = now(), disabled_reason = $2"
                  " FROM webhook_deliveries d WHERE d.id = $1::bigint AND e.id = d.endpoint_id"
                  " AND e.disabled_at IS NULL",
                  2, p, NULL, eb);
    if (rc == TQ_OK)
        rc = exec(t,
                  "UPDATE job_webhooks w SET stopped_at = now(), stopped_reason = $2"
                  " FROM webhook_deliveries d WHERE d.id = $1::bigint AND d.endpoint_id IS NULL"
                  " AND w.job_id = d.job_id AND w.stopped_at IS NULL",
                  2, p, NULL, eb);
    if (rc != TQ_OK)
        return rc;
    return exec(t,
                "UPDATE webhook_deliveries x SET state = 'failed', last_error = CASE"
                " WHEN x.id = d.id THEN x.last_error ELSE 'not sent: ' || $2 END"
                " FROM webhook_deliveries d WHERE d.id = $1::bigint"
                " AND x.state = 'pending' AND x.target = d.target"
                " AND (d.endpoint_id IS NOT NULL OR x.job_id = d.job_id)",
                2, p, NULL, eb);
}

/* The endpoint's run of failed attempts (reset by a success); at disable_after the
 * endpoint is disabled. */
static int hook_count_failures(tconn *t, hook_record_arg *a, tq_errbuf *eb)
{
    const char *p[3] = {a->p[0], a->p[1], a->disable_after};
    PGresult *res = NULL;
    int rc = exec(t,
                  "UPDATE webhook_endpoints e SET failures_in_row ="
                  " CASE WHEN $2 = 'delivered' THEN 0 ELSE e.failures_in_row + 1 END"
                  " FROM webhook_deliveries d WHERE d.id = $1::bigint AND e.id = d.endpoint_id"
                  /* a success after a success changes nothing: no write, no row lock for
                   * the endpoint's other senders to queue on */
                  " AND ($2 <> 'delivered' OR e.failures_in_row <> 0)"
                  " RETURNING e.failures_in_row >= $3::int AND e.disabled_at IS NULL",
                  3, p, &res, eb);
    if (rc != TQ_OK)
        return rc;
    int disable = PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    if (!disable)
        return TQ_OK;
    char reason[96];
    snprintf(reason, sizeof reason, "%s failed attempts in a row", a->disable_after);
    return hook_stop_target(t, a->p[0], reason, eb);
}

static int hook_record_fn(tconn *t, void *arg, tq_errbuf *eb)
{
    hook_record_arg *a = arg;
    /* An outcome lost in a Postgres crash is an attempt made again (same webhook-id), as
     * the lease already allows. */
    int sc = exec(t, "SET LOCAL synchronous_commit = off", 0, NULL, NULL, eb);
    if (sc != TQ_OK)
        return sc;
    int rc = exec(t,
                  "UPDATE webhook_deliveries SET"
                  " state = CASE WHEN $2 = 'delivered' THEN 'delivered'"
                  "   WHEN $3::bigint < 0 THEN 'failed' ELSE 'pending' END,"
                  " delivered_at = CASE WHEN $2 = 'delivered' THEN now() END,"
                  " due_at = CASE WHEN $2 <> 'delivered' AND $3::bigint >= 0"
                  "   THEN now() + make_interval(secs => $3::bigint / 1000.0) ELSE due_at END,"
                  " last_status = NULLIF($4::int, 0), last_error = $5,"
                  " last_latency_ms = $6::int, leased_until = NULL"
                  " WHERE id = $1::bigint AND state = 'pending'",
                  6, a->p, NULL, eb);
    if (rc != TQ_OK)
        return rc;
    if (a->gone)
        return hook_stop_target(t, a->p[0], "the receiver answered 410 Gone", eb);
    return hook_count_failures(t, a, eb);
}

int tq_pdb_hook_record(long long id, int delivered, long long retry_ms, int status,
                       const char *error, long long latency_ms, int disable_after, tq_errbuf *eb)
{
    char sid[24], sretry[24], sstatus[INT_TEXT_BUF], slat[24];
    snprintf(sid, sizeof sid, "%lld", id);
    /* 410 Gone: failed for good, and the target is stopped */
    int gone = !delivered && status == 410;
    snprintf(sretry, sizeof sretry, "%lld", gone ? -1 : retry_ms);
    snprintf(sstatus, sizeof sstatus, "%d", status);
    snprintf(slat, sizeof slat, "%lld", latency_ms);
    hook_record_arg a = {
        {sid, delivered ? "delivered" : "retry", sretry, sstatus, error, slat}, gone, ""};
    snprintf(a.disable_after, sizeof a.disable_after, "%d", disable_after);
    return run_txn(hook_record_fn, &a, eb);
}

/* ------------------------------------------------------------------ webhook endpoints API */

#define ENDPOINT_JSON                                                                              \
    "json_build_object('id', id, 'url', url, 'events', to_json(events),"                           \
    " 'description', description, 'created_at', created_at,"                                       \
    " 'disabled', disabled_at IS NOT NULL, 'disabled_at', disabled_at,"                            \
    " 'disabled_reason', disabled_reason, 'previous_secret_expires_at',"                           \
    " CASE WHEN previous_secret_until > now() THEN previous_secret_until END)"

typedef struct {
    const char *p[6];
    int np;
    const char *sql;
    json_t *json;
    int need_row; /* TQ_ERR_NOT_FOUND when the statement returned no row */
} hook_api_arg;

static int hook_api_fn(tconn *t, void *arg, tq_errbuf *eb)
{
    hook_api_arg *a = arg;
    json_decref(a->json);
    a->json = NULL;
    PGresult *res = NULL;
    int rc = exec(t, a->sql, a->np, a->p, &res, eb);
    if (rc != TQ_OK)
        return rc;
    if (PQntuples(res) == 0)
        rc = a->need_row ? tq_errf(eb, TQ_ERR_NOT_FOUND, "webhook not found") : TQ_OK;
    else if (!PQgetisnull(res, 0, 0))
        rc = col_json(res, 0, 0, &a->json, eb);
    PQclear(res);
    return rc;
}

static int hook_api(hook_api_arg *a, json_t **out, tq_errbuf *eb)
{
    int rc = run_txn(hook_api_fn, a, eb);
    if (rc != TQ_OK || !out) {
        json_decref(a->json);
        return rc;
    }
    *out = a->json;
    return TQ_OK;
}

int tq_pdb_webhook_create(const char *user, const char *id, const char *url,
                          const char *events_json, const char *description, const char *secret,
                          json_t **out, tq_errbuf *eb)
{
    hook_api_arg a = {
        .p = {id, user, url, events_json, description, secret},
        .np = 6,
        .need_row = 1,
        .sql = "INSERT INTO webhook_endpoints (id, user_id, url, events, description, secret)"
               " VALUES ($1::uuid, $2, $3, ARRAY(SELECT jsonb_array_elements_text($4::jsonb)),"
               " $5, $6) RETURNING " ENDPOINT_JSON "::text"};
    return hook_api(&a, out, eb);
}

int tq_pdb_webhook_list(const char *user, json_t **out, tq_errbuf *eb)
{
    hook_api_arg a = {.p = {user},
                      .np = 1,
                      .need_row = 1,
                      .sql = "SELECT COALESCE(json_agg(" ENDPOINT_JSON
                             " ORDER BY created_at, id), '[]')::text"
                             " FROM webhook_endpoints WHERE user_id = $1"};
    return hook_api(&a, out, eb);
}

int tq_pdb_webhook_delete(const char *user, const char *id, tq_errbuf *eb)
{
    hook_api_arg a = {.p = {id, user},
                      .np = 2,
                      .need_row = 1,
                      .sql = "DELETE FROM webhook_endpoints WHERE id = $1::uuid AND user_id = $2"
                             " RETURNING 'true'"};
    return hook_api(&a, NULL, eb);
}

int tq_pdb_webhook_rotate(const char *user, const char *id, const char *secret, int overlap_seconds,
                          json_t **expires, tq_errbuf *eb)
{
    char overlap[INT_TEXT_BUF];
    snprintf(overlap, sizeof overlap, "%d", overlap_seconds);
    /* The secret replaced is the current one: a second rotation inside the window ends the
     * first one's overlap (two signatures at most). */
    hook_api_arg a = {.p = {id, user, secret, overlap},
                      .np = 4,
                      .need_row = 1,
                      .sql = "UPDATE webhook_endpoints SET secret = $3,"
                             " previous_secret = CASE WHEN $4::int > 0 THEN secret END,"
                             " previous_secret_until = CASE WHEN $4::int > 0"
                             "   THEN now() + make_interval(secs => $4::int) END"
                             " WHERE id = $1::uuid AND user_id = $2"
                             " RETURNING COALESCE(to_json(previous_secret_until), 'null')::text"};
    return hook_api(&a, expires, eb);
}

int tq_pdb_webhook_deliveries(const char *user, const char *id, int limit, json_t **out,
                              tq_errbuf *eb)
{
    char lim[INT_TEXT_BUF];
    snprintf(lim, sizeof lim, "%d", limit);
    hook_api_arg a = {.p = {id, user, lim},
                      .np = 3,
                      .need_row = 1,
                      .sql = "SELECT (SELECT COALESCE(json_agg(json_build_object("
                             "  'id', 'msg_' || d.id, 'job_id', d.job_id, 'event', d.event,"
                             "  'sequence', d.sequence, 'state', d.state, 'attempts', d.attempts,"
                             "  'created_at', d.event_at, 'last_attempt_at', d.last_attempt_at,"
                             "  'status_code', d.last_status, 'latency_ms', d.last_latency_ms,"
                             "  'error', d.last_error, 'delivered_at', d.delivered_at,"
                             "  'next_attempt_at', CASE WHEN d.state = 'pending' THEN d.due_at END)"
                             "  ORDER BY d.id DESC), '[]')"
                             "  FROM (SELECT * FROM webhook_deliveries WHERE endpoint_id = e.id"
                             "        ORDER BY id DESC LIMIT $3::int) d)::text"
                             " FROM webhook_endpoints e WHERE e.id = $1::uuid AND e.user_id = $2"};
    return hook_api(&a, out, eb);
}

int tq_pdb_default_secret(const char *user, const char *candidate, char *out, size_t cap,
                          tq_errbuf *eb)
{
    hook_api_arg a = {.p = {user, candidate},
                      .np = 2,
                      .need_row = 1,
                      .sql =
                          "WITH i AS (INSERT INTO webhook_user_secrets (user_id, secret)"
                          "  VALUES ($1, $2) ON CONFLICT (user_id) DO NOTHING RETURNING secret)"
                          " SELECT to_json(COALESCE((SELECT secret FROM i),"
                          "  (SELECT secret FROM webhook_user_secrets WHERE user_id = $1)))::text"};
    json_t *j = NULL;
    int rc = hook_api(&a, &j, eb);
    if (rc != TQ_OK)
        return rc;
    snprintf(out, cap, "%s", json_is_string(j) ? json_string_value(j) : "");
    json_decref(j);
    return out[0] ? TQ_OK : tq_errf(eb, TQ_ERR_DB, "no default secret");
}
