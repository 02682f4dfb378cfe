/*
 * cdb — all SQL of the consumer, in one place, parameterised only.
 *
 * The per-user ordering and limit rules live in the database (db/procedures, the claim
 * itself in 60_claim.sql): the claim takes the user's advisory lock, so claims, parks and
 * releases of one user are serialised across every host; the schema's guard refuses a
 * third active job even if this code is wrong. Every change that frees a slot calls
 * tq_release_parked() in the same transaction.
 * Every transaction here runs through tq_db_run_txn (shared/tq_db.h): soft errors are
 * retried there; the connection passed in is borrowed (its owner reconnects it), except
 * the claim's, which the runner may reopen.
 */
#ifndef TQ_CDB_H
#define TQ_CDB_H

#include <libpq-fe.h>

#include "artifacts.h"
#include "tq_db.h"
#include "tq_progress.h"
#include "tq_err.h"
#include "tq_msg.h"
#include "tq_status.h"
#include "tq_uuid.h"

typedef enum {
    TQ_CLAIM_CLAIMED, /* now pending on this worker: launch it */
    TQ_CLAIM_FAILED,  /* the job at the head failed durably (dataset, priority): pick again */
    TQ_CLAIM_NONE,    /* nothing runnable now */
    TQ_CLAIM_BUSY,    /* nothing claimed, a candidate was locked by someone else: ask again soon */
} tq_claim_outcome;

/* Parses the outcome as db/procedures/65_schedule.sql names it ("claimed", "failed", "none",
 * "busy"):
 * TQ_OK, or TQ_ERR_INVALID for any other text (out untouched). */
int tq_claim_outcome_parse(const char *s, tq_claim_outcome *out);

#define TQ_CLAIM_PATH_BUF 1024 /* storage_path and its NUL; a longer one fails the job */
#define TQ_CLAIM_REASON_BUF 256

typedef struct tq_claim {
    tq_claim_outcome outcome;
    char job_id[TQ_UUID_BUF]; /* CLAIMED / FAILED: the job */
    long long fencing_token;  /* CLAIMED: the token every later update must present */
    int attempts;
    char storage_path[TQ_CLAIM_PATH_BUF]; /* CLAIMED: the dataset's storage_path */
    /* CLAIMED: the job as its row holds it (training_jobs.message), decoded once by
     * tq_msg_decode, so every default is tq_job.c's; launch reads it through const
     * pointers. Release with tq_claim_free. */
    tq_job_msg job;
    char reason[TQ_CLAIM_REASON_BUF]; /* FAILED: why */
    double created_epoch;             /* CLAIMED: job creation time (dispatch latency) */
} tq_claim;

/* A delivery's reply_to and correlation_id properties (AMQP short strings; "": absent):
 * where the job's events are also sent (db/procedures/85_events.sql). */
typedef struct {
    const char *reply_to;       /* borrowed; NULL or "": none */
    const char *correlation_id; /* borrowed; NULL or "": none */
} tq_reply_addr;

/* Frees cl->job; safe on a zeroed or already freed claim. */
void tq_claim_free(tq_claim *cl);

/* The job.dead_lettered event of a delivery dead-lettered before it had a job row
 * (tq_event_dead_letter, 85_events.sql): to trainq.events and to reply->reply_to (NULL or
 * "": none), with the dead-letter reason. Run like the claim (same policy `how`). */
int tq_cdb_dead_letter_event(PGconn **c, const tq_db_txn *how, const char *message_id,
                             const char *routing_key, const char *reason,
                             const tq_reply_addr *reply, tq_errbuf *eb);

typedef enum {
    TQ_INTAKE_ACCEPTED,  /* a new queued row */
    TQ_INTAKE_KNOWN,     /* the producer's publication of a job it stored, still queued */
    TQ_INTAKE_DUPLICATE, /* the job exists already (or was deleted): drop the message */
    TQ_INTAKE_MISMATCH,  /* job_id names a job of another user or dataset: dead-letter it */
} tq_intake_outcome;

/* Intake of delivered messages (db/procedures/65_schedule.sql tq_intake): the n
 * messages' jobs made durable as queued rows in one round trip (a row that exists is left
 * as it is), each with its delivery's reply address replies[i] (NULL: none), where the
 * job's events also go (85_events.sql). Run by tq_db_run_txn with the caller's policy `how` (safe
 * to repeat: a repeat finds duplicates). outcome[i] says what became of message i. TQ_OK, or an
 * error (then nothing was stored). */
int tq_cdb_intake(PGconn **c, const tq_db_txn *how, const tq_job_msg *const *msgs,
                  const tq_reply_addr *const *replies, size_t n, tq_intake_outcome *outcome,
                  tq_errbuf *eb);

/* The pick (db/procedures/65_schedule.sql tq_pick): claims the next runnable job for a
 * free slot holding `gpus` GPUs — priority, then fair share, then submission order; the
 * per-user limit and quota respected — in one round trip. *out: CLAIMED (the job decoded
 * from its stored message, as launch needs it), FAILED (a job failed durably: pick again),
 * BUSY (a candidate was locked elsewhere: pick again soon) or NONE. Not repeated after a lost reply
 * (it may have claimed): a claim nobody holds expires and the reaper gives it back. TQ_ERR_INTERNAL
 * when the schema's active-job guard refused what the procedure's count allowed. On TQ_OK the
 * caller releases *out with tq_claim_free. */
int tq_cdb_pick(PGconn **c, const tq_db_txn *how, const char *worker_id, int lease_seconds,
                int gpus, tq_claim *out, tq_errbuf *eb);

/* LISTEN trainq_runnable on c (sent by every transaction that may make a job runnable). */
int tq_cdb_listen_runnable(PGconn *c, tq_errbuf *eb);

/* Reads what c received without waiting: 1 when a trainq_runnable notification arrived
 * since the last call (all are drained), 0 when none, -1 when the connection is bad (also
 * one that died while idle: the caller replaces it before its next transaction). */
int tq_cdb_runnable_notified(PGconn *c);

/* 1 when the claim (job_id, fencing) is still this worker's and pending, 0 when not or when
 * Postgres cannot say (a launcher that cannot tell must not stop another worker's unit). */
int tq_cdb_claim_held(PGconn *c, const char *job_id, const char *worker_id, long long fencing);

/* pending → running with the container id, its progress 0 (a trainer that prints nothing
 * parseable still shows it started); TQ_ERR_CONFLICT when fenced out. *cancel (may be NULL)
 * is 1 when a cancellation was requested meanwhile (while the container was being created):
 * the caller stops it now rather than at the next heartbeat. */
int tq_cdb_mark_running(PGconn *c, const char *job_id, long long fencing, const char *container_id,
                        int *cancel, tq_errbuf *eb);

/* The failure class of an attempt (consumer/outcome.h; db/procedures/62_outcomes.sql stores
 * it on the job and in job_events) with its actionable message, and for a retry the seconds
 * before the job is released again (0: at once). */
typedef struct {
    const char *cls;     /* "oom" ... "cancelled"; NULL: none (completed) */
    const char *message; /* NULL: the reason */
    int delay_s;
} tq_cdb_failure;

/* Records the outcome (status completed, failed or cancelled; TQ_ERR_INVALID for any other;
 * exit_code < -255 means none) with the job's n_artifacts output files (job_artifacts) and
 * releases the user's next parked jobs, in one transaction. TQ_ERR_CONFLICT when fenced out
 * (the job was recovered by a reaper meanwhile). */
int tq_cdb_finish(PGconn *c, const char *job_id, long long fencing, tq_job_status status,
                  int exit_code, const char *error_message, const char *reason,
                  const tq_cdb_failure *failure, const tq_artifact *artifacts, size_t n_artifacts,
                  tq_errbuf *eb);

/* One flush of a running job's output, in one transaction (db/procedures/70_output.sql):
 * the progress p when given (the newest progress_keep samples are kept), then the log row
 * `lines` when not NULL (the job's log trimmed to log_max_bytes). TQ_ERR_CONFLICT when
 * fenced out: the job is no longer this claim's, or no longer active. */
int tq_cdb_output(PGconn *c, const char *job_id, long long fencing, const tq_progress *p,
                  int progress_keep, const char *lines, long long log_max_bytes, tq_errbuf *eb);

typedef enum {
    TQ_GIVEN_BACK,          /* queued again (parked, released at once if the user has room) */
    TQ_GIVE_BACK_CANCELLED, /* its cancellation was requested meanwhile: now cancelled */
    TQ_GIVE_BACK_FAILED,    /* given back max_host_retries times: failed with the reason */
    TQ_GIVE_BACK_FENCED,    /* no longer this claim's: nothing changed */
} tq_give_back_outcome;

/* Gives a claimed job back because it could not start on this host for a reason of the
 * host's (dockerd away, image or runtime missing, name still being removed). The job keeps
 * its place in its user's order and its attempts; it is republished through the outbox.
 * Bounded: the max_host_retries-th give-back fails it with `reason`. TQ_OK with *outcome,
 * or a database error (then nothing changed). */
int tq_cdb_give_back(PGconn *c, const char *job_id, long long fencing, const char *reason,
                     const char *failure_class, int max_host_retries, tq_give_back_outcome *outcome,
                     tq_errbuf *eb);

/* Retries (or fails after max_attempts) a job of this worker whose attempt ended with
 * `failure` and may be tried again (an outage of this host, or the retry policy), its
 * release held back failure->delay_s. Fenced: TQ_ERR_CONFLICT if the job is no longer this
 * claim's. */
int tq_cdb_retry(PGconn *c, const char *job_id, long long fencing, const char *reason,
                 const tq_cdb_failure *failure, int max_attempts, tq_errbuf *eb);

/* The job's failure_class (of its last attempt that ended without success) into out, ""
 * for none. */
int tq_cdb_last_failure(PGconn *c, const char *job_id, char *out, size_t cap, tq_errbuf *eb);

/* How many attempts of the job already ended with failure class cls (the retry policy's
 * count, from job_events), and its attempts so far (training_jobs.attempts). */
int tq_cdb_class_failures(PGconn *c, const char *job_id, const char *cls, int *n, int *attempts,
                          tq_errbuf *eb);

typedef struct {
    char job_id[TQ_UUID_BUF];
    long long fencing_token;
    int cancel_requested;
} tq_cdb_active;

/* What a heartbeat reports about this worker (the admin API's workers table). */
typedef struct {
    const char *worker_id, *hostname;
    int slots, busy;
    const char *gpus; /* TRAINQ_GPUS as given */
    int healthy;
    double started_at; /* when this process started, seconds since the epoch */
} tq_cdb_worker_state;

/* Heartbeat: upserts the worker row and renews the lease of the active jobs of this
 * worker that its slots hold (held_ids, a uuid[] literal); a claim no slot holds (dropped
 * by a failure) expires and the reaper recovers it. *out (caller frees) lists the jobs the database
 * still gives this worker, with their fencing tokens and cancel flags: a slot whose job is missing
 * lost its lease. *draining: 1 when an operator asked this worker to drain (workers.draining).
 * *other (may be NULL): a process other than ws's wrote the row since it was last written,
 * with its host and start; other->started_at is 0 when the row was this process's or new. */
typedef struct {
    double started_at;    /* seconds since the epoch; 0: none */
    double heartbeat_age; /* seconds since its last heartbeat (tq_cdb_worker_seen) */
    double heartbeat_at;  /* seconds since the epoch */
    int stopped;          /* workers.stopped_at is set: it stopped cleanly */
    char hostname[256];
} tq_cdb_worker_row;
int tq_cdb_heartbeat(PGconn *c, const tq_cdb_worker_state *ws, int lease_seconds,
                     const char *held_ids, int *draining, tq_cdb_worker_row *other,
                     tq_cdb_active **out, size_t *n, tq_errbuf *eb);

/* The worker row of worker_id as it stands: TQ_ERR_NOT_FOUND when there is none. */
int tq_cdb_worker_seen(PGconn *c, const char *worker_id, tq_cdb_worker_row *row, tq_errbuf *eb);

/* Records a message this worker dead-lettered (after the broker confirmed the copy), for the
 * admin API; body is sanitised to UTF-8 and capped here. */
int tq_cdb_dead_letter(PGconn *c, const char *message_id, const char *routing_key,
                       const char *reason, const char *worker_id, const void *body, size_t len,
                       tq_errbuf *eb);

/* Clean stop: extends the leases of the held jobs (held_ids, a uuid[] literal) to
 * `seconds` from now, so that this worker's restart adopts their containers before a
 * reaper elsewhere retries them. */
int tq_cdb_extend_leases(PGconn *c, const char *worker_id, const char *held_ids, int seconds,
                         tq_errbuf *eb);

/* Jobs the database says this worker holds (start-up adoption); caller frees *out. */
int tq_cdb_worker_jobs(PGconn *c, const char *worker_id, tq_cdb_active **out, size_t *n,
                       tq_errbuf *eb);

/* One reaper round (a no-op when another worker holds the reaper lock): recovers jobs whose
 * lease expired. */
int tq_cdb_reap(PGconn *c, int max_attempts, int *recovered, tq_errbuf *eb);

/* One sweep: parks queued jobs that have left the queue without a claim for longer than
 * stranded_seconds (in_queue: ready messages in trainq.jobs, < 0 when unknown, which skips
 * that part), then releases parked jobs of users with room whose release is older than
 * stranded_seconds. *released counts the releases. */
int tq_cdb_sweep(PGconn *c, int stranded_seconds, long long in_queue, int *released, tq_errbuf *eb);

/* The cluster's usage totals (every worker's attempts, db/procedures/65_schedule.sql's
 * job_usage), read incrementally: each call adds the rows that ended after the cursor and
 * more than a minute ago (by then their transactions committed, so no row is skipped for
 * committing late), at most 10 000 a call. Start from a zeroed struct. */
typedef struct {
    char after_at[48]; /* ended_at of the last row counted ("" before the first) */
    long long after_id;
    long long attempts;
    double gpu_seconds, wall_seconds;
} tq_cdb_usage;
int tq_cdb_usage_totals(PGconn *c, tq_cdb_usage *t, tq_errbuf *eb);

/* Marks the worker stopped (clean shutdown). */
int tq_cdb_worker_stopped(PGconn *c, const char *worker_id, tq_errbuf *eb);

#endif
