/*
 * pdb — every SQL statement of the producer, in one place, all parameterised.
 *
 * Each HTTP thread owns one Postgres connection (thread-local, opened on first use,
 * reopened after a failure, closed when the thread exits). A call that fails with
 * TQ_ERR_UNAVAILABLE on a connection that had been idle is retried once on a fresh
 * connection, but only when nothing of it reached the server, so nothing runs twice.
 *
 * Results: TQ_OK, TQ_ERR_NOT_FOUND / TQ_ERR_FORBIDDEN / TQ_ERR_CONFLICT (soft, the caller
 * answers 4xx), TQ_ERR_UNAVAILABLE (answer 503), anything else (answer 500; eb has the
 * detail for the log). Job JSON is built by Postgres, so timestamps are RFC 3339 UTC.
 */
#ifndef TQ_PDB_H
#define TQ_PDB_H

#include <jansson.h>

#include "tq_err.h"
#include "tq_job.h"
#include "tq_status.h"
#include "tq_uuid.h"

/* Copies url; call once before any other tq_pdb_ function (and tq_pdb_shutdown at exit,
 * after every thread that used a connection has exited). */
int tq_pdb_init(const char *database_url, const char *application_name);
void tq_pdb_shutdown(void);

/* SELECT 1 on this thread's connection. */
int tq_pdb_ping(tq_errbuf *eb);

/* A priority's name ("normal") and its NUL. */
#define TQ_PDB_PRIORITY_BUF 8

/* Counts one hit of user in bucket's current one-minute window. *limit is the user's
 * override (user_limits.submit_per_min, submit bucket only) or default_limit; *count the
 * hits so far including this one; *retry_after the seconds until the window ends (>= 1).
 * max_priority (may be NULL; submit bucket only, "" otherwise): the highest priority the
 * user may ask for, read from the same user_limits row, for tq_pdb_submit. */
int tq_pdb_rate_hit(const char *user, const char *bucket, int default_limit, int *count, int *limit,
                    int *retry_after, char max_priority[TQ_PDB_PRIORITY_BUF], tq_errbuf *eb);

/* Room for tq_submit's deferred_notify: every channel name once. */
#define TQ_PDB_DEFERRED_BUF 160

/* A job's own webhook from the submit body (events: a JSON array of event names). */
typedef struct {
    const char *url;
    const char *events_json;
    const char *new_secret; /* the user's default secret if they have none yet */
} tq_pdb_job_hook;

typedef struct {
    char job_id[TQ_UUID_BUF];
    int replayed; /* 1: an earlier request with the same Idempotency-Key made the job */
    /* TQ_ERR_FORBIDDEN for the priority: the highest the user may ask for ("" otherwise) */
    char max_priority[TQ_PDB_PRIORITY_BUF];
    /* A new job: the channels whose NOTIFY tq_submit deferred to after the commit
     * (comma-separated, e.g. "trainq_job_event,trainq_outbox"); the caller hands them to
     * tq_wake_note (producer/wake.h). "" otherwise. */
    char deferred_notify[TQ_PDB_DEFERRED_BUF];
} tq_pdb_submitted;

/* In one transaction: idempotency lookup, dataset check, job row (status queued, source
 * http, made by tq_insert_job from msg_payload, the tq_msg_encode body of job_id) and its
 * outbox row; both hold msg_payload byte for byte, so a later release republishes exactly
 * what was first published. idem_key may be NULL. With hook non-NULL, before the job row
 * (whose insert trigger reads it), the job's webhook row and the user's default secret.
 * All of it in one round trip (tq_submit, db/procedures/35_submit.sql).
 * TQ_ERR_NOT_FOUND: no such dataset. TQ_ERR_FORBIDDEN: dataset of another user, or (with
 * out->max_priority set) s->priority above the user's user_limits.max_priority.
 * TQ_ERR_CONFLICT: idem_key already used by this user for a different submission.
 * max_priority: the user's cap as tq_pdb_rate_hit read it moments before (one read of
 * user_limits per submission, not three: docs/performance.md); NULL or "" to read it here. */
int tq_pdb_submit(const char *user, const char *max_priority, const tq_submission *s,
                  const char *job_id, const char *canonical_json, const char *msg_payload,
                  const char *idem_key, const tq_pdb_job_hook *hook, tq_pdb_submitted *out,
                  tq_errbuf *eb);

/* Sends the notifications that committed submissions deferred (tq_wake, db/procedures/
 * 35_submit.sql), in a transaction of its own committed without a WAL flush: channels_json
 * the channels, users_json the users whose streams trainq_job_event wakes ([] for every
 * stream); both JSON arrays of strings. */
int tq_pdb_wake(const char *channels_json, const char *users_json, tq_errbuf *eb);

/* The user's usage in [from_ms, to_ms) (Unix milliseconds) as a new JSON object (caller
 * decrefs): {from, to, days: [{day, jobs: {completed, failed, cancelled}, attempts,
 * gpu_seconds, wall_seconds}], totals: {the same without day}} (tq_usage_days). */
int tq_pdb_usage(const char *user, int64_t from_ms, int64_t to_ms, json_t **out, tq_errbuf *eb);

/* The job as JSON (new reference). TQ_ERR_NOT_FOUND when absent or another user's. */
int tq_pdb_job_get(const char *user, const char *job_id, json_t **job, tq_errbuf *eb);

/* Newest first. status may be NULL (any status); after_micros/after_id (both or neither) is the
 * keyset cursor. *jobs is a new array; next_cursor is "" when there is no further page. */
#define TQ_PDB_CURSOR_MAX 64
int tq_pdb_job_list(const char *user, const tq_job_status *status, const char *after_micros,
                    const char *after_id, int limit, json_t **jobs,
                    char next_cursor[TQ_PDB_CURSOR_MAX], tq_errbuf *eb);

/* queued → cancelled (*done = 1); pending/running → cancel_requested_at set (*done = 0),
 * and who asked (by_operator: an operator, else the user), which the audit row of the
 * cancellation names. status receives the status before the call. TQ_ERR_CONFLICT: already
 * terminal. */
int tq_pdb_job_cancel(const char *user, const char *job_id, int by_operator, tq_job_status *status,
                      int *done, tq_errbuf *eb);

/* The audit trail, oldest first (new reference). TQ_ERR_NOT_FOUND when the user has no
 * job (current or deleted) with that id. */
int tq_pdb_job_events(const char *user, const char *job_id, json_t **events, tq_errbuf *eb);

/* Deletes a terminal job (its events stay). status receives its status.
 * TQ_ERR_NOT_FOUND, or TQ_ERR_CONFLICT when the job is not terminal. */
int tq_pdb_job_delete(const char *user, const char *job_id, tq_job_status *status, tq_errbuf *eb);

/* ---- live output (docs/api.md "Watching a job"; db/migrations/0008_live_output.sql) ---- */

/* The job's kept log rows, newest first, as a JSON array of strings (each complete lines
 * joined by '\n'). Rows are read newest first until they hold at least tail lines.
 * TQ_ERR_NOT_FOUND when the job is absent or another user's. */
int tq_pdb_job_log(const char *user, const char *job_id, int tail, json_t **rows, tq_errbuf *eb);

/* The job's artifacts [{name, size_bytes, sha256, created_at}], by name. TQ_ERR_NOT_FOUND
 * as above. */
int tq_pdb_job_artifacts(const char *user, const char *job_id, json_t **list, tq_errbuf *eb);

/* 1 in *listed when name is one of the job's artifacts (the job being the user's); its
 * recorded size in *size. TQ_ERR_NOT_FOUND when the job is absent or another user's. */
int tq_pdb_artifact_find(const char *user, const char *job_id, const char *name, int *listed,
                         long long *size, tq_errbuf *eb);

/* The next part of one job's stream after cursor (events, seq): a JSON object
 * {"events": [{id, job_id, status, from_status, reason, at}] (at most TQ_PDB_STREAM_EVENTS),
 *  "output": [{seq, kind, body}] (at most 64 rows, and once TQ_PDB_STREAM_BYTES of bodies
 *  are in no further row), "more_output": whether rows after those wait, "status": the
 *  job's status now (null when deleted)}, all from one snapshot. */
#define TQ_PDB_STREAM_EVENTS 100
#define TQ_PDB_STREAM_BYTES_SQL "262144"
int tq_pdb_stream_job(const char *user, const char *job_id, long long after_event,
                      long long after_seq, json_t **out, tq_errbuf *eb);

/* The next part of a user's all-jobs stream: {"events": [...] as above, "progress":
 * [{job_id, progress, current_step, total_steps, loss, eta_seconds, progress_updated_at,
 * micros}] of the user's jobs whose progress changed after after_micros (µs since the
 * epoch)}. */
int tq_pdb_stream_user(const char *user, long long after_event, long long after_micros,
                       json_t **out, tq_errbuf *eb);

/* Where a stream starts: *last_event the user's newest job_events id (0 if none), *now_micros
 * the database's clock in µs since the epoch, *end_event (job streams) the job's newest
 * event id when the job has ended (completed, failed, cancelled), else 0. With job_id
 * non-NULL, TQ_ERR_NOT_FOUND when the user has no such job (current, or deleted with events
 * left). */
int tq_pdb_stream_start(const char *user, const char *job_id, long long *last_event,
                        long long *now_micros, long long *end_event, tq_errbuf *eb);

/* The job's kept progress samples [{progress, current_step, total_steps, loss, eta_seconds,
 * progress_updated_at}], oldest first. TQ_ERR_NOT_FOUND as above. */
int tq_pdb_job_progress(const char *user, const char *job_id, json_t **samples, tq_errbuf *eb);

/* The admin API's reads (db/procedures/90_admin.sql), each one JSON value (*out, new):
 * limit is used by DEAD_LETTERS and JOBS, status (NULL: any) by JOBS. */
typedef enum {
    TQ_PDB_ADMIN_OVERVIEW,
    TQ_PDB_ADMIN_WORKERS,
    TQ_PDB_ADMIN_USERS,
    TQ_PDB_ADMIN_DEAD_LETTERS,
    TQ_PDB_ADMIN_JOBS
} tq_pdb_admin_read_kind;
int tq_pdb_admin_read(tq_pdb_admin_read_kind what, int limit, const char *status, json_t **out,
                      tq_errbuf *eb);

/* The admin API's actions on arg (a job id, a dead letter's id, a worker id); outcome gets
 * "ok", "not_found" or "conflict:<why>" (90_admin.sql). */
typedef enum {
    TQ_PDB_ADMIN_RETRY,
    TQ_PDB_ADMIN_REPUBLISH,
    TQ_PDB_ADMIN_DRAIN,
    TQ_PDB_ADMIN_UNDRAIN
} tq_pdb_admin_action_kind;
int tq_pdb_admin_action(tq_pdb_admin_action_kind what, const char *arg, char *outcome,
                        size_t outcome_cap, tq_errbuf *eb);

/* The user of a job ("" when the job is gone). */
int tq_pdb_job_user(const char *job_id, char user[TQ_USER_ID_BUF], tq_errbuf *eb);

/* A dedicated connection that LISTENs on trainq_job_event (payload: a user id) and
 * trainq_job_output (payload: a job id); NULL on failure (eb says why). */
#define TQ_PDB_CHAN_EVENT "trainq_job_event"
#define TQ_PDB_CHAN_OUTPUT "trainq_job_output"
struct pg_conn;
struct pg_conn *tq_pdb_listen_open(tq_errbuf *eb);

/* One batch of retention (tq_retention_prune, db/procedures/95_retention.sql) in its own
 * transaction: published outbox rows older than outbox_seconds, rate-limit rows of windows
 * past, delivered and failed webhook deliveries whose last attempt is older than
 * outbox_seconds, and with job_seconds > 0 the jobs finished more than job_seconds ago with
 * their audit, outbox, output and artifact rows; at most batch rows of each of the first
 * three, job_batch jobs. Fills what each deleted (a kind came back full when its count is its
 * limit). */
typedef struct {
    long long outbox_rows, rate_rows, jobs, webhook_rows;
} tq_pdb_pruned;
int tq_pdb_retention_prune(int outbox_seconds, int job_seconds, int batch, int job_batch,
                           tq_pdb_pruned *out, tq_errbuf *eb);

/* ---- webhooks (db/migrations/0009_webhooks.sql, producer/webhooks.c) ---------------- */

/* One delivery taken by a worker: what it needs to build, sign and send the request. */
typedef struct {
    long long id; /* webhook-id is "msg_<id>" */
    char job_id[TQ_UUID_BUF];
    char *url, *event, *secret;
    char *old_secret;  /* the endpoint's replaced secret while it still signs; else NULL */
    char *job_json;    /* the job as GET /api/training/jobs/{id} shows it; NULL when deleted */
    char event_at[40]; /* RFC 3339 */
    long long sequence;
    int attempts; /* this one included */
} tq_pdb_hook;

void tq_pdb_hooks_free(tq_pdb_hook *h, int n);

/* A dedicated connection that LISTENs on trainq_webhook (notified at the commit of a
 * transaction that wrote deliveries, db/procedures/80_webhooks.sql); NULL on failure. */
#define TQ_PDB_CHAN_WEBHOOK "trainq_webhook"
struct pg_conn *tq_pdb_hooks_listen_open(tq_errbuf *eb);

/* Takes one due delivery (FOR UPDATE SKIP LOCKED, so any number of workers can run): the
 * first pending one of its job and target (so a target receives a job's events in sequence
 * order), of an endpoint with fewer than endpoint_cap deliveries in flight (leased) and a
 * user with fewer than user_cap, and leases it: due again after lease_seconds, attempts + 1,
 * in the same transaction. *out is a new array of *n (0 or 1; free with tq_pdb_hooks_free). */
int tq_pdb_hooks_take(int endpoint_cap, int user_cap, int lease_seconds, tq_pdb_hook **out, int *n,
                      tq_errbuf *eb);

/* The outcome of one attempt: delivered (state delivered), or retry_ms >= 0 (due again
 * then), or retry_ms < 0 (state failed). status 0 when no response; error may be NULL.
 * status 410 (Gone) fails the delivery for good, disables its endpoint and fails the
 * endpoint's pending deliveries (for a job's own URL: that job's); so does the
 * disable_after-th failed attempt in a row of an endpoint. */
int tq_pdb_hook_record(long long id, int delivered, long long retry_ms, int status,
                       const char *error, long long latency_ms, int disable_after, tq_errbuf *eb);

/* A new endpoint; *out the listing object of it (without the secret). */
int tq_pdb_webhook_create(const char *user, const char *id, const char *url,
                          const char *events_json, const char *description, const char *secret,
                          json_t **out, tq_errbuf *eb);
/* The user's endpoints, oldest first, without secrets. */
int tq_pdb_webhook_list(const char *user, json_t **out, tq_errbuf *eb);
/* TQ_ERR_NOT_FOUND when absent or another user's (also for the two below). */
int tq_pdb_webhook_delete(const char *user, const char *id, tq_errbuf *eb);
/* Rotation keeps the replaced secret signing for overlap_seconds (none when 0); *expires the
 * JSON of when it stops (an RFC 3339 string, or null; new reference, caller decrefs). */
int tq_pdb_webhook_rotate(const char *user, const char *id, const char *secret, int overlap_seconds,
                          json_t **expires, tq_errbuf *eb);
/* The endpoint's newest deliveries (at most limit). */
int tq_pdb_webhook_deliveries(const char *user, const char *id, int limit, json_t **out,
                              tq_errbuf *eb);
/* The user's default secret, made from candidate when they have none. */
int tq_pdb_default_secret(const char *user, const char *candidate, char *out, size_t cap,
                          tq_errbuf *eb);

#endif
