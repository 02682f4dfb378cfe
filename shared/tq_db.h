/*
 * tq_db — thin libpq helpers shared by the producer and the consumer.
 *
 * Results are classified in one place (Taler's habit): hard error, soft error (retry the
 * transaction: 40001 serialization failure, 40P01 deadlock, 55P03 lock_timeout, 57014
 * statement_timeout), unavailable (connection lost,
 * server shutting down: the caller answers 503 / stops consuming and reconnects), or ok.
 * All SQL is parameterised; nothing here builds SQL from data.
 */
#ifndef TQ_DB_H
#define TQ_DB_H

#include <libpq-fe.h>

#include "tq_err.h"

/* Connects with a bounded connect timeout (5 s unless the URL sets one), TCP keepalives,
 * TQ_DB_DEFAULT_OPTIONS unless the URL sets `options`, and application_name = app.
 * Returns NULL and fills eb on failure. Caller PQfinish()es. */
PGconn *tq_db_connect(const char *url, const char *app, tq_errbuf *eb);

/* Makes *c usable: reconnects if it is NULL or its connection is bad. */
int tq_db_ensure(PGconn **c, const char *url, const char *app, tq_errbuf *eb);

/* Classifies r (which may be NULL): TQ_OK for COMMAND_OK/TUPLES_OK, TQ_ERR_DB_RETRY for
 * 40001/40P01/55P03/57014, TQ_ERR_UNAVAILABLE for a lost connection or class 08/57P0x, TQ_ERR_LIMIT for
 * the active-job guard (TQ001), TQ_ERR_CONFLICT for 23505, else TQ_ERR_DB. Does not free r. */
int tq_db_check(PGconn *c, const PGresult *r, tq_errbuf *eb);

/* PQexecParams with text parameters; *out (optional) receives the result on TQ_OK and
 * must be PQclear()ed by the caller; on error the result is freed here. */
int tq_db_exec(PGconn *c, const char *sql, int nparams, const char *const *params,
               PGresult **out, tq_errbuf *eb);

/* BEGIN / COMMIT / ROLLBACK (rollback ignores errors: it runs on the error path). */
int tq_db_begin(PGconn *c, tq_errbuf *eb);
int tq_db_commit(PGconn *c, tq_errbuf *eb);
void tq_db_rollback(PGconn *c);

/* Server settings of every connection whose URL names no `options` of its own: no statement
 * runs longer than 30 s and no lock is awaited longer than 10 s (docs/operations.md). */
#define TQ_DB_DEFAULT_OPTIONS "-c statement_timeout=30000 -c lock_timeout=10000"

/* SQLSTATE of the active-job guard raised by tq_guard_active (db/procedures/20_guards.sql). */
#define TQ_DB_SQLSTATE_ACTIVE_LIMIT "TQ001"

#endif
