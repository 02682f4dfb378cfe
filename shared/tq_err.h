/*
 * tq_err — the one error enum of trainq.
 *
 * Every fallible function returns TQ_OK (0) or a negative tq_err. Libraries never log:
 * they return a code and, where the caller needs detail, fill a tq_errbuf with one
 * lowercase line (PostgreSQL message style: "could not ..." = maybe temporary,
 * "cannot ..." = permanent).
 */
#ifndef TQ_ERR_H
#define TQ_ERR_H

#include <stddef.h>

typedef enum {
    TQ_OK = 0,
    TQ_ERR_NOMEM = -1,       /* allocation failed */
    TQ_ERR_INVALID = -2,     /* input failed validation or could not be parsed */
    TQ_ERR_TOO_LARGE = -3,   /* input over its cap */
    TQ_ERR_NOT_FOUND = -4,   /* the thing named does not exist */
    TQ_ERR_FORBIDDEN = -5,   /* exists, but belongs to someone else */
    TQ_ERR_CONFLICT = -6,    /* state does not allow it (terminal job, name taken, key reuse) */
    TQ_ERR_DB = -7,          /* hard database error: retrying will not help */
    TQ_ERR_DB_RETRY = -8,    /* soft database error (40001/40P01): retry the transaction */
    TQ_ERR_UNAVAILABLE = -9, /* a service (Postgres, RabbitMQ, dockerd) cannot be reached */
    TQ_ERR_AMQP = -10,       /* broker refused (channel/connection close, nack, return) */
    TQ_ERR_DOCKER = -11,     /* Docker Engine answered with an error */
    TQ_ERR_IO = -12,         /* file system or socket error */
    TQ_ERR_TIMEOUT = -13,    /* bounded wait ran out */
    TQ_ERR_AUTH = -14,       /* missing or invalid credentials */
    TQ_ERR_LIMIT = -15,      /* rate limit or active-job limit reached */
    TQ_ERR_INTERNAL = -16,   /* a bug: an invariant did not hold */
    TQ_ERR_CONFIG = -17,     /* bad configuration value */
    TQ_ERR_EXIT_OK = -18,    /* not a failure: what was asked is done (--help/--version
                              * printed) and the program exits 0 without starting */
} tq_err;

/* Static, never NULL, for every value (and "unknown error" for anything else). */
const char *tq_strerror(int err);

#define TQ_ERRBUF_LEN 512

/* A caller-owned buffer for one line of detail. */
typedef struct {
    char msg[TQ_ERRBUF_LEN];
} tq_errbuf;

/* Formats into eb (if eb is not NULL), truncating safely; returns err so callers can
 * write `return tq_errf(eb, TQ_ERR_INVALID, "cannot ...")`. The message is always valid
 * UTF-8 (it may be stored as a job's reason): a full buffer is cut between characters and
 * malformed bytes (e.g. left by a "%.Ns" cut) become '?'. */
int tq_errf(tq_errbuf *eb, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
