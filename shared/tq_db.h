/*
 * tq_db — thin libpq helpers shared by the producer and the consumer.
 *
 * Results are classified in one place (Taler's habit): hard error, soft error (retry the
 * transaction: 40001 serialization failure, 40P01 deadlock, 55P03 lock_timeout, 57014
 * statement_timeout), unavailable (connection lost,
 * server shutting down: the caller answers 503 / stops consuming and reconnects), or ok.
 * All SQL is parameterised; nothing here builds SQL from data.
 *
 * Every transaction of both programs runs through tq_db_run_txn: BEGIN, the caller's body,
 * COMMIT, with the soft-error and dead-connection retries decided in one place.
 */
#ifndef TQ_DB_H
#define TQ_DB_H

#include <libpq-fe.h>

#include "tq_err.h"

/* Connects with a bounded connect timeout (5 s unless the URL sets one), TCP keepalives,
 * TQ_DB_DEFAULT_OPTIONS unless the URL sets `options`, and application_name = app.
 * Returns NULL and fills eb on failure (TQ_ERR_UNAVAILABLE when the server cannot be
 * reached or refuses; a refusal for want of connection slots starts with TQ_DB_EXHAUSTED).
 * Caller PQfinish()es. */
PGconn *tq_db_connect(const char *url, const char *app, tq_errbuf *eb);

/* The message prefix of a connection refused with SQLSTATE 53300 (max_connections). */
#define TQ_DB_EXHAUSTED "postgres has no free connections"

/* 1 when eb holds a refusal for want of connection slots (see TQ_DB_EXHAUSTED). */
int tq_db_exhausted(const tq_errbuf *eb);

/* Makes *c usable: reconnects if it is NULL or its connection is bad. */
int tq_db_ensure(PGconn **c, const char *url, const char *app, tq_errbuf *eb);

/* Classifies r (which may be NULL): TQ_OK for COMMAND_OK/TUPLES_OK, TQ_ERR_DB_RETRY for
 * 40001/40P01/55P03/57014, TQ_ERR_UNAVAILABLE for a lost connection or class 08/57P0x, TQ_ERR_LIMIT
 * for the active-job guard (TQ001), TQ_ERR_CONFLICT for 23505, else TQ_ERR_DB. Does not free r. */
int tq_db_check(PGconn *c, const PGresult *r, tq_errbuf *eb);

/* How long tq_db_exec and tq_db_exec_prepared wait for an answer: statement_timeout (30 s,
 * TQ_DB_DEFAULT_OPTIONS) ends a statement on the server's side with an answer well before;
 * this bounds a server that gives none at all (stopped, or a network dropping everything).
 * Out of time the connection is cut and the call fails with TQ_ERR_UNAVAILABLE. */
#define TQ_DB_ANSWER_DEADLINE_MS 45000

/* A shorter deadline for the calling thread's statements from now on (a readiness probe
 * must answer soon whatever Postgres does); ms <= 0 restores TQ_DB_ANSWER_DEADLINE_MS. */
void tq_db_set_answer_deadline(int ms);

/* PQexecParams with text parameters; *out (optional) receives the result on TQ_OK and
 * must be PQclear()ed by the caller; on error the result is freed here. The answer is
 * waited for at most the deadline above. */
int tq_db_exec(PGconn *c, const char *sql, int nparams, const char *const *params, PGresult **out,
               tq_errbuf *eb);
/* The same for statement `name`, PREPAREd on c. */
int tq_db_exec_prepared(PGconn *c, const char *name, int nparams, const char *const *params,
                        PGresult **out, tq_errbuf *eb);

/* What idle connection c (no query in flight) received, read without waiting: 1 when
 * notifications arrived (all are drained), 0 when nothing did, -1 when c is bad or gone.
 * Gone includes anything else waiting on its socket: the server's goodbye to a connection
 * it closed while idle (a restart, pg_terminate_backend, an idle timeout) may be read before
 * the end of file, and libpq takes it for a notice and keeps the connection marked good.
 * (At worst a rare unsolicited notice costs the caller a reconnect.) */
int tq_db_idle_check(PGconn *c);

/* BEGIN / COMMIT / ROLLBACK (rollback ignores errors: it runs on the error path). */
int tq_db_begin(PGconn *c, tq_errbuf *eb);
int tq_db_commit(PGconn *c, tq_errbuf *eb);
void tq_db_rollback(PGconn *c);

/* ---- the transaction runner (Taler's TEH_DB_run_transaction) --------------------------- */

/* The body of one transaction: its statements on c, TQ_OK to commit, anything else to roll
 * back (that code is returned). It may run more than once, so it must start from its
 * arguments every time (no state carried over from a try that rolled back). */
typedef int (*tq_db_txn_fn)(PGconn *c, void *arg, tq_errbuf *eb);

/* Called before try number `next` (1-based: 1 is the first retry) after a try that failed
 * with rc (eb says why). Returns 0 to retry, nonzero to give up (rc is then returned). */
typedef int (*tq_db_retry_fn)(void *arg, int next, int rc, const tq_errbuf *eb);

/* Total tries of a transaction unless tq_db_txn.tries says otherwise. */
#define TQ_DB_TXN_TRIES 4

/* How tq_db_run_txn gets its connection and when it tries again. Zero is a valid policy
 * for a borrowed connection: TQ_DB_TXN_TRIES tries on soft errors, no reconnect. */
typedef struct {
    /* NULL: *c is borrowed (the caller reconnects with tq_db_ensure); a failure never
     * closes or replaces it. Otherwise *c is (re)opened from url/app as needed and closed
     * when it turned out dead. */
    const char *url, *app;
    const char *session_sql; /* optional: run once on each connection opened here */
    int tries;               /* total tries, 0 = TQ_DB_TXN_TRIES */
    /* fn sends exactly one statement, which is its own transaction (no BEGIN/COMMIT): a
     * single call of a stored procedure costs one round trip. */
    int implicit;
    /* Retry a lost connection even when part of the transaction may have run (fn must be
     * safe to repeat, as the claim is); otherwise only a connection found dead at BEGIN is
     * retried, once. Needs url. */
    int retry_unavailable;
    /* Before each try, look whether the server closed the (idle) connection, without a round
     * trip, and open a fresh one if so: for an implicit transaction, which a failure cannot
     * retry. Only for connections that never LISTEN: anything waiting on the socket of an
     * idle connection is taken for the server's goodbye. Needs url. */
    int check_idle;
    tq_db_retry_fn before_retry; /* optional: backoff, logging, giving up */
    void *retry_arg;
} tq_db_txn;

/*
 * Runs fn in one transaction: BEGIN, fn, COMMIT; rolls back on any error. Tries again
 *  - on a soft error (TQ_ERR_DB_RETRY: serialization failure, deadlock, lock or statement
 *    timeout), up to how->tries tries in all;
 *  - once, on a fresh connection, when the connection turned out dead before anything of
 *    the transaction ran (BEGIN failed with TQ_ERR_UNAVAILABLE on a connection this call did
 *    not just open: Postgres restarted while we were idle) — or, with retry_unavailable,
 *    after every TQ_ERR_UNAVAILABLE (also a failed connect), within how->tries.
 * Every other error is returned at once. Returns TQ_OK once a COMMIT succeeded.
 */
int tq_db_run_txn(PGconn **c, const tq_db_txn *how, tq_db_txn_fn fn, void *arg, tq_errbuf *eb);

/* The runner's decision after a failed try, pure so it can be tested: 1 to try again.
 * began: BEGIN reached the server (always 1 for an implicit transaction, whose one
 * statement may have run); fresh: the connection was opened by this try; *stale_left: the
 * one retry of a connection found dead (cleared when used). */
int tq_db_txn_retry(const tq_db_txn *how, int rc, int began, int fresh, int *stale_left);

/* Server settings of every connection whose URL names no `options` of its own: no statement
 * runs longer than 30 s and no lock is awaited longer than 10 s (docs/operations.md). */
#define TQ_DB_DEFAULT_OPTIONS "-c statement_timeout=30000 -c lock_timeout=10000"

/* SQLSTATE of the active-job guard raised by tq_guard_active (db/procedures/20_guards.sql). */
#define TQ_DB_SQLSTATE_ACTIVE_LIMIT "TQ001"

#endif
