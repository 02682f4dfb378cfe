#include "tq_db.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "tq_clock.h"

/* The thread's deadline for an answer, when one is set (tq_db_set_answer_deadline). */
static _Thread_local int answer_deadline_ms;

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
    /* 5 s, or as short as the thread's answer deadline allows (libpq's least is 2 s): a
     * readiness probe that has to connect first must still answer soon. */
    int ct_s = 5;
    if (answer_deadline_ms) {
        ct_s = (answer_deadline_ms + 999) / 1000;
        ct_s = ct_s < 2 ? 2 : ct_s > 5 ? 5 : ct_s;
    }
    char ct[16];
    snprintf(ct, sizeof ct, "%d", ct_s);
    if (!has_timeout) {
        keys[n] = "connect_timeout";
        vals[n++] = ct;
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
        /* SQLSTATE 53300 at connect: libpq gives no PGresult, only the server's text
         * ("sorry, too many clients already", "remaining connection slots are reserved
         * ..." once only superuser slots are left, "too many connections for role|database
         * ..." at a CONNECTION LIMIT; English unless lc_messages says else). */
        if (strstr(msg, "too many clients") || strstr(msg, "remaining connection slots") ||
            strstr(msg, "too many connections for"))
            tq_errf(eb, TQ_ERR_UNAVAILABLE, "%s: %s", TQ_DB_EXHAUSTED, msg);
        else
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

int tq_db_exhausted(const tq_errbuf *eb)
{
    return eb && strncmp(eb->msg, TQ_DB_EXHAUSTED, sizeof TQ_DB_EXHAUSTED - 1) == 0;
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
    if (strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0 || strcmp(state, "55P03") == 0 ||
        strcmp(state, "57014") == 0)
        return tq_errf(eb, TQ_ERR_DB_RETRY, "transaction must be retried: %s", msg);
    if (strncmp(state, "08", 2) == 0 || strncmp(state, "57P0", 4) == 0)
        return tq_errf(eb, TQ_ERR_UNAVAILABLE, "could not reach postgres: %s", msg);
    if (strcmp(state, TQ_DB_SQLSTATE_ACTIVE_LIMIT) == 0)
        return tq_errf(eb, TQ_ERR_LIMIT, "%s", msg);
    if (strcmp(state, "23505") == 0)
        return tq_errf(eb, TQ_ERR_CONFLICT, "%s", msg);
    return tq_errf(eb, TQ_ERR_DB, "database error %s: %s", state, msg);
}

/* The result of one statement, as tq_db_exec hands it over. */
static int take_result(PGconn *c, PGresult *r, PGresult **out, tq_errbuf *eb)
{
    int rc = tq_db_check(c, r, eb);
    if (rc == TQ_OK && out)
        *out = r;
    else
        PQclear(r);
    return rc;
}

void tq_db_set_answer_deadline(int ms)
{
    answer_deadline_ms = ms > 0 ? ms : 0;
}

/* The calling thread's answer deadline now. */
static int deadline_ms(void)
{
    return answer_deadline_ms ? answer_deadline_ms : TQ_DB_ANSWER_DEADLINE_MS;
}

/* Set by the calling thread's last tq_db_exec* when the server gave no answer in time:
 * tq_db_txn_retry then does not take it for a connection that died while idle. */
static _Thread_local int last_unanswered;

/* Waits until fd is ready for `events` or `end` (tq_mono_ms) passes: 1 ready, 0 out of
 * time or broken (poll itself failing). */
static int wait_fd(int fd, short events, int64_t end)
{
    for (;;) {
        int64_t left = end - tq_mono_ms();
        if (left <= 0)
            return 0;
        struct pollfd p = {.fd = fd, .events = events};
        int n = poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left);
        if (n > 0)
            return 1;
        if (n < 0 && errno != EINTR)
            return 0;
    }
}

/* Sends what PQsend* queued (the connection is non-blocking meanwhile): a big statement
 * (an intake batch) to a server that reads nothing fills the socket and would block the
 * send itself for ever. 1 sent (or failed: PQgetResult reports it), 0 out of time. */
static int flush_within(PGconn *c, int64_t end)
{
    int f;
    while ((f = PQflush(c)) == 1) {
        if (!wait_fd(PQsocket(c), POLLOUT | POLLIN, end))
            return 0;
        if (!PQconsumeInput(c)) /* libpq asks for input to be read while it flushes */
            return 1;
    }
    return 1;
}

/* Waits until libpq has a whole result to hand over: 1 ready (a lost connection too:
 * PQgetResult then says so), 0 out of time. */
static int wait_ready(PGconn *c, int64_t end)
{
    while (PQisBusy(c)) {
        if (!wait_fd(PQsocket(c), POLLIN, end))
            return 0;
        if (!PQconsumeInput(c))
            return 1;
    }
    return 1;
}

/* What PQexec* would return for the query queued by send (the last result; the first error
 * one when there is one), sending and waiting at most the answer deadline: a server that is
 * stopped (SIGSTOP, a disk it blocks on) or behind a network that drops everything would
 * otherwise hold the thread for as long as that lasts, since statement_timeout is the
 * server's own clock. Out of time, the connection is cut (the caller's next tq_db_ensure
 * connects afresh) and *late is set. */
static PGresult *await_answer(PGconn *c, int sent, int *late)
{
    *late = 0;
    if (!sent) {
        PQsetnonblocking(c, 0);
        return NULL;
    }
    int64_t end = tq_mono_ms() + deadline_ms();
    int flushed = flush_within(c, end);
    PQsetnonblocking(c, 0);
    PGresult *keep = NULL;
    for (;;) {
        if (!flushed || !wait_ready(c, end)) {
            *late = 1;
            PQclear(keep);
            shutdown(PQsocket(c), SHUT_RDWR);
            PQconsumeInput(c); /* reads the end: the connection is CONNECTION_BAD now */
            return NULL;
        }
        PGresult *r = PQgetResult(c);
        if (!r)
            return keep;
        if (keep && PQresultStatus(keep) == PGRES_FATAL_ERROR) {
            PQclear(r);
            continue;
        }
        PQclear(keep);
        keep = r;
    }
}

/* The answer of the query just queued (sent: what PQsend* returned) as tq_db_exec hands it
 * over. */
static int answer(PGconn *c, int sent, PGresult **out, tq_errbuf *eb)
{
    PGresult *r = await_answer(c, sent, &last_unanswered);
    if (last_unanswered)
        return tq_errf(eb, TQ_ERR_UNAVAILABLE, "could not reach postgres: no answer within %d ms",
                       deadline_ms());
    return take_result(c, r, out, eb);
}

int tq_db_exec(PGconn *c, const char *sql, int nparams, const char *const *params, PGresult **out,
               tq_errbuf *eb)
{
    if (out)
        *out = NULL;
    PQsetnonblocking(c, 1); /* await_answer sends, then sets it back */
    return answer(c, PQsendQueryParams(c, sql, nparams, NULL, params, NULL, NULL, 0), out, eb);
}

int tq_db_exec_prepared(PGconn *c, const char *name, int nparams, const char *const *params,
                        PGresult **out, tq_errbuf *eb)
{
    if (out)
        *out = NULL;
    PQsetnonblocking(c, 1);
    return answer(c, PQsendQueryPrepared(c, name, nparams, params, NULL, NULL, 0), out, eb);
}

int tq_db_idle_check(PGconn *c)
{
    if (!c || PQstatus(c) != CONNECTION_OK || PQsocket(c) < 0)
        return -1;
    struct pollfd p = {.fd = PQsocket(c), .events = POLLIN};
    int arrived = poll(&p, 1, 0) != 0;
    /* notifications may also sit in libpq's buffer, read with an earlier result */
    if (arrived && (!PQconsumeInput(c) || PQstatus(c) != CONNECTION_OK))
        return -1;
    int got = 0;
    PGnotify *n;
    while ((n = PQnotifies(c)) != NULL) {
        got = 1;
        PQfreemem(n);
    }
    return arrived && !got ? -1 : got;
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

/* ---- the transaction runner ---------------------------------------------------------- */

int tq_db_txn_retry(const tq_db_txn *how, int rc, int began, int fresh, int *stale_left)
{
    if (rc == TQ_ERR_DB_RETRY)
        return 1;
    if (rc != TQ_ERR_UNAVAILABLE || !how->url)
        return 0; /* a borrowed connection is the caller's to reopen */
    if (how->retry_unavailable)
        return 1;
    /* A server that answered nothing in time did not die while idle: trying again on a
     * fresh connection would only double the wait of a caller that set a deadline. */
    if (last_unanswered)
        return 0;
    /* Nothing of the transaction ran on a connection that was already open: it died while
     * idle, and one try on a fresh one cannot do anything twice. */
    if (!began && !fresh && *stale_left) {
        *stale_left = 0;
        return 1;
    }
    return 0;
}

/* (Re)opens *c as needed, with the session settings. *fresh says it was opened here. */
static int txn_conn(PGconn **c, const tq_db_txn *how, int *fresh, tq_errbuf *eb)
{
    /* An idle connection that never LISTENs (tq_db_txn.check_idle) hears nothing from the
     * server but its goodbye: one that died while idle is opened again before anything is
     * sent on it, also for an implicit transaction, whose failed statement tq_db_txn_retry
     * cannot tell from one that ran. (A connection lost without a word, or in the moment
     * between this look and the send, still fails the try.) */
    if (how->check_idle && how->url && *c && PQstatus(*c) == CONNECTION_OK &&
        tq_db_idle_check(*c) != 0) {
        PQfinish(*c);
        *c = NULL;
    }
    *fresh = !*c || PQstatus(*c) != CONNECTION_OK;
    if (!how->url)
        return *c ? TQ_OK : tq_errf(eb, TQ_ERR_UNAVAILABLE, "no database connection");
    int rc = tq_db_ensure(c, how->url, how->app, eb);
    if (rc != TQ_OK || !*fresh || !how->session_sql)
        return rc;
    PGresult *r = PQexec(*c, how->session_sql);
    rc = tq_db_check(*c, r, eb);
    PQclear(r);
    if (rc != TQ_OK) {
        PQfinish(*c);
        *c = NULL;
    }
    return rc;
}

/* One try: BEGIN, fn, COMMIT. *began says BEGIN reached the server. */
static int txn_once(PGconn *c, const tq_db_txn *how, tq_db_txn_fn fn, void *arg, int *began,
                    tq_errbuf *eb)
{
    *began = how->implicit;
    int rc = how->implicit ? TQ_OK : tq_db_begin(c, eb);
    if (rc != TQ_OK)
        return rc;
    *began = 1;
    rc = fn(c, arg, eb);
    if (rc == TQ_OK && !how->implicit)
        rc = tq_db_commit(c, eb);
    return rc;
}

int tq_db_run_txn(PGconn **c, const tq_db_txn *how, tq_db_txn_fn fn, void *arg, tq_errbuf *eb)
{
    int tries = how->tries > 0 ? how->tries : TQ_DB_TXN_TRIES;
    int stale_left = 1;
    int rc = TQ_OK;
    for (int attempt = 0; attempt < tries; attempt++) {
        if (attempt && how->before_retry && how->before_retry(how->retry_arg, attempt, rc, eb))
            return rc;
        int fresh = 0, began = 0;
        rc = txn_conn(c, how, &fresh, eb);
        if (rc == TQ_OK) {
            rc = txn_once(*c, how, fn, arg, &began, eb);
            if (rc == TQ_OK)
                return TQ_OK;
            /* Leave no transaction open, and drop a connection that is gone. */
            if (how->url && (rc == TQ_ERR_UNAVAILABLE || PQstatus(*c) != CONNECTION_OK)) {
                PQfinish(*c);
                *c = NULL;
            } else {
                tq_db_rollback(*c);
            }
        } else {
            began = 0;
            fresh = 1; /* a failed connect is never "a connection found dead" */
        }
        if (!tq_db_txn_retry(how, rc, began, fresh, &stale_left))
            return rc;
    }
    return rc;
}
