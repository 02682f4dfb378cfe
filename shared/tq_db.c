#include "tq_db.h"

#include <stdio.h>
#include <string.h>

/* libpq prints server notices (and "terminating connection" on a restart) to stderr,
 * which would break the JSON-lines log; they carry nothing the callers do not learn from
 * their results, so they are dropped. */
static void drop_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

PGconn *tq_db_connect(const char *url, const char *app, tq_errbuf *eb)
{
    /* Expand the URL, then add our defaults only where the URL is silent. */
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(url, &perr);
    if (!opts) {
        tq_errf(eb, TQ_ERR_CONFIG, "invalid database url: %s", perr ? perr : "cannot parse");
        PQfreemem(perr);
        return NULL;
    }
    const char *keys[64];
    const char *vals[64];
    int n = 0;
    int has_timeout = 0, has_options = 0;
    for (PQconninfoOption *o = opts; o->keyword && n < 56; o++) {
        if (!o->val)
            continue;
        if (strcmp(o->keyword, "connect_timeout") == 0)
            has_timeout = 1;
        if (strcmp(o->keyword, "options") == 0)
            has_options = 1;
        keys[n] = o->keyword;
        vals[n] = o->val;
        n++;
    }
    if (!has_timeout) {
        keys[n] = "connect_timeout";
        vals[n++] = "5";
    }
    if (!has_options) {
        /* No statement or lock wait may hold a thread forever (a lease renewal, a request):
         * both end in a soft error that the caller retries (tq_db_check). */
        keys[n] = "options";
        vals[n++] = TQ_DB_DEFAULT_OPTIONS;
    }
    keys[n] = "application_name";
    vals[n++] = app;
    keys[n] = "keepalives_idle";
    vals[n++] = "10";
    keys[n] = "keepalives_interval";
    vals[n++] = "5";
    keys[n] = "keepalives_count";
    vals[n++] = "3";
    keys[n] = NULL;
    vals[n] = NULL;

    PGconn *c = PQconnectdbParams(keys, vals, 0);
    PQconninfoFree(opts);
    if (!c) {
        tq_errf(eb, TQ_ERR_NOMEM, "could not allocate database connection");
        return NULL;
    }
    if (PQstatus(c) != CONNECTION_OK) {
        char msg[300];
        snprintf(msg, sizeof msg, "%s", PQerrorMessage(c));
        msg[strcspn(msg, "\n")] = '\0';
        tq_errf(eb, TQ_ERR_UNAVAILABLE, "could not connect to postgres: %s", msg);
        PQfinish(c);
        return NULL;
    }
    PQsetNoticeProcessor(c, drop_notice, NULL);
    /* The active-job guard relies on READ COMMITTED; refuse surprises from the server's
     * default_transaction_isolation. */
    PGresult *r = PQexec(c, "SET default_transaction_isolation = 'read committed'");
    int rc = tq_db_check(c, r, eb);
    PQclear(r);
    if (rc != TQ_OK) {
        PQfinish(c);
        return NULL;
    }
    return c;
}

int tq_db_ensure(PGconn **c, const char *url, const char *app, tq_errbuf *eb)
{
    if (*c && PQstatus(*c) == CONNECTION_OK)
        return TQ_OK;
    if (*c) {
        PQfinish(*c);
        *c = NULL;
    }
    *c = tq_db_connect(url, app, eb);
    return *c ? TQ_OK : TQ_ERR_UNAVAILABLE;
}

int tq_db_check(PGconn *c, const PGresult *r, tq_errbuf *eb)
{
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
        return TQ_OK;

    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    const char *primary = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    char msg[300];
    snprintf(msg, sizeof msg, "%s", primary ? primary : PQerrorMessage(c));
    msg[strcspn(msg, "\n")] = '\0';

    if (PQstatus(c) != CONNECTION_OK || !state)
        return tq_errf(eb, TQ_ERR_UNAVAILABLE, "could not reach postgres: %s", msg);
    /* serialization failure, deadlock, lock_timeout, statement_timeout: soft, retry */
    if (strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0 ||
        strcmp(state, "55P03") == 0 || strcmp(state, "57014") == 0)
        return tq_errf(eb, TQ_ERR_DB_RETRY, "transaction must be retried: %s", msg);
    if (strncmp(state, "08", 2) == 0 || strncmp(state, "57P0", 4) == 0)
        return tq_errf(eb, TQ_ERR_UNAVAILABLE, "could not reach postgres: %s", msg);
    if (strcmp(state, TQ_DB_SQLSTATE_ACTIVE_LIMIT) == 0)
        return tq_errf(eb, TQ_ERR_LIMIT, "%s", msg);
    if (strcmp(state, "23505") == 0)
        return tq_errf(eb, TQ_ERR_CONFLICT, "%s", msg);
    return tq_errf(eb, TQ_ERR_DB, "database error %s: %s", state, msg);
}

int tq_db_exec(PGconn *c, const char *sql, int nparams, const char *const *params,
               PGresult **out, tq_errbuf *eb)
{
    if (out)
        *out = NULL;
    PGresult *r = PQexecParams(c, sql, nparams, NULL, params, NULL, NULL, 0);
    int rc = tq_db_check(c, r, eb);
    if (rc == TQ_OK && out)
        *out = r;
    else
        PQclear(r);
    return rc;
}

int tq_db_begin(PGconn *c, tq_errbuf *eb)
{
    return tq_db_exec(c, "BEGIN", 0, NULL, NULL, eb);
}

int tq_db_commit(PGconn *c, tq_errbuf *eb)
{
    return tq_db_exec(c, "COMMIT", 0, NULL, NULL, eb);
}

void tq_db_rollback(PGconn *c)
{
    if (PQstatus(c) == CONNECTION_OK && PQtransactionStatus(c) != PQTRANS_IDLE)
        PQclear(PQexec(c, "ROLLBACK"));
}
