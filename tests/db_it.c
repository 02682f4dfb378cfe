/*
 * db_it — the transaction runner (shared/tq_db tq_db_run_txn) against the real Postgres of
 * TRAINQ_DATABASE_URL (exit 77 = skipped without it). Each case runs a body that writes one
 * row tagged with this run's id into a scratch table, then fails the way the case needs (a
 * soft error, a hard error, its own backend killed), and checks how often the body ran,
 * what was committed and what became of the connection. The scratch rows are deleted at the
 * end; the table stays (other runs may be using it).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tq_db.h"
#include "tq_uuid.h"

static const char *url;
static char tag[TQ_UUID_BUF];
static PGconn *checker; /* reads what was committed, kills other sessions */
static int failures;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            failures++;                                                                            \
            printf("FAIL %s:%d: ", __func__, __LINE__);                                            \
            printf(__VA_ARGS__);                                                                   \
            printf("\n");                                                                          \
        }                                                                                          \
    } while (0)

typedef struct {
    int calls;
    int soft_first; /* the first N calls end in a serialization failure */
    int hard;       /* every call ends in a hard error */
    int kill_first; /* the first N calls kill their own backend after the insert */
    int txn_seen;   /* PQtransactionStatus inside the body, last call */
    char lock_timeout[32];
} body;

static int body_fn(PGconn *c, void *arg, tq_errbuf *eb)
{
    body *b = arg;
    b->calls++;
    b->txn_seen = PQtransactionStatus(c);
    const char *p[1] = {tag};
    int rc = tq_db_exec(c, "INSERT INTO tq_db_it (tag) VALUES ($1)", 1, p, NULL, eb);
    if (rc != TQ_OK)
        return rc;
    PGresult *r;
    if (tq_db_exec(c, "SELECT current_setting('lock_timeout')", 0, NULL, &r, eb) == TQ_OK) {
        snprintf(b->lock_timeout, sizeof b->lock_timeout, "%s", PQgetvalue(r, 0, 0));
        PQclear(r);
    }
    if (b->calls <= b->kill_first)
        return tq_db_exec(c, "SELECT pg_terminate_backend(pg_backend_pid())", 0, NULL, NULL, eb);
    if (b->calls <= b->soft_first)
        return tq_db_exec(c,
                          "DO $$ BEGIN RAISE EXCEPTION 'db_it: serialization failure' "
                          "USING ERRCODE = '40001'; END $$",
                          0, NULL, NULL, eb);
    if (b->hard)
        return tq_db_exec(c, "DO $$ BEGIN RAISE EXCEPTION 'db_it: hard'; END $$", 0, NULL, NULL,
                          eb);
    return TQ_OK;
}

/* Rows of this run committed so far, then deleted so the next case starts from 0. */
static int committed(void)
{
    const char *p[1] = {tag};
    PGresult *r;
    tq_errbuf eb = {{0}};
    if (tq_db_exec(checker,
                   "WITH d AS (DELETE FROM tq_db_it WHERE tag = $1 RETURNING 1) "
                   "SELECT count(*) FROM d",
                   1, p, &r, &eb) != TQ_OK) {
        printf("FAIL committed: %s\n", eb.msg);
        failures++;
        return -1;
    }
    int n = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    return n;
}

/* Terminates c's backend from the checker and waits until it is gone, so that c is a
 * connection that died while idle (what a Postgres restart leaves behind). */
static void kill_idle(PGconn *c)
{
    char pid[16];
    snprintf(pid, sizeof pid, "%d", PQbackendPID(c));
    const char *p[1] = {pid};
    tq_errbuf eb = {{0}};
    tq_db_exec(checker, "SELECT pg_terminate_backend($1::int)", 1, p, NULL, &eb);
    for (int i = 0; i < 100; i++) {
        PGresult *r;
        if (tq_db_exec(checker, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1::int", 1, p,
                       &r, &eb) != TQ_OK)
            break;
        int alive = atoi(PQgetvalue(r, 0, 0));
        PQclear(r);
        if (!alive)
            return;
        usleep(50 * 1000);
    }
    printf("FAIL kill_idle: backend %s still there\n", pid);
    failures++;
}

static void soft_errors_are_retried_and_each_try_rolled_back(void)
{
    PGconn *c = NULL;
    const tq_db_txn how = {.url = url, .app = "db_it"};
    body b = {.soft_first = 2};
    tq_errbuf eb = {{0}};
    int rc = tq_db_run_txn(&c, &how, body_fn, &b, &eb);
    CHECK(rc == TQ_OK, "rc %d: %s", rc, eb.msg);
    CHECK(b.calls == 3, "body ran %d times, want 3", b.calls);
    CHECK(committed() == 1, "the failed tries' rows were committed");
    CHECK(b.txn_seen == PQTRANS_INTRANS, "body ran outside a transaction (%d)", b.txn_seen);
    PQfinish(c);
}

static void soft_errors_are_bounded(void)
{
    PGconn *c = NULL;
    const tq_db_txn how = {.url = url, .app = "db_it"};
    body b = {.soft_first = 100};
    tq_errbuf eb = {{0}};
    int rc = tq_db_run_txn(&c, &how, body_fn, &b, &eb);
    CHECK(rc == TQ_ERR_DB_RETRY, "rc %d, want TQ_ERR_DB_RETRY", rc);
    CHECK(b.calls == TQ_DB_TXN_TRIES, "body ran %d times, want %d", b.calls, TQ_DB_TXN_TRIES);
    const tq_db_txn two = {.url = url, .app = "db_it", .tries = 2};
    b = (body){.soft_first = 100};
    rc = tq_db_run_txn(&c, &two, body_fn, &b, &eb);
    CHECK(rc == TQ_ERR_DB_RETRY && b.calls == 2, "tries = 2: rc %d, %d calls", rc, b.calls);
    CHECK(committed() == 0, "rows of failed transactions were committed");
    CHECK(c && PQstatus(c) == CONNECTION_OK && PQtransactionStatus(c) == PQTRANS_IDLE,
          "the connection was not left idle and usable");
    PQfinish(c);
}

static void a_hard_error_is_rolled_back_and_returned_at_once(void)
{
    PGconn *c = tq_db_connect(url, "db_it", NULL);
    PGconn *was = c;
    const tq_db_txn borrowed = {0};
    body b = {.hard = 1};
    tq_errbuf eb = {{0}};
    int rc = tq_db_run_txn(&c, &borrowed, body_fn, &b, &eb);
    CHECK(rc == TQ_ERR_DB, "rc %d, want TQ_ERR_DB", rc);
    CHECK(b.calls == 1, "body ran %d times", b.calls);
    CHECK(strstr(eb.msg, "db_it: hard") != NULL, "eb: %s", eb.msg);
    CHECK(committed() == 0, "the failed transaction's row was committed");
    CHECK(c == was && PQtransactionStatus(c) == PQTRANS_IDLE, "borrowed connection not idle");
    PQfinish(c);
}

typedef struct {
    int calls, next[8];
    int give_up_at;
} retries;

static int on_retry(void *arg, int next, int rc, const tq_errbuf *eb)
{
    retries *r = arg;
    (void)eb;
    if (r->calls < 8)
        r->next[r->calls] = next;
    r->calls++;
    return rc == TQ_ERR_DB_RETRY && next == r->give_up_at;
}

static void before_retry_sees_every_retry_and_can_give_up(void)
{
    PGconn *c = NULL;
    retries r = {.give_up_at = 3};
    const tq_db_txn how = {.url = url, .app = "db_it", .before_retry = on_retry, .retry_arg = &r};
    body b = {.soft_first = 100};
    tq_errbuf eb = {{0}};
    int rc = tq_db_run_txn(&c, &how, body_fn, &b, &eb);
    CHECK(rc == TQ_ERR_DB_RETRY, "rc %d", rc);
    CHECK(b.calls == 3, "body ran %d times, want 3 (gave up before the 4th)", b.calls);
    CHECK(r.calls == 3 && r.next[0] == 1 && r.next[1] == 2 && r.next[2] == 3,
          "before_retry calls %d (%d, %d, %d)", r.calls, r.next[0], r.next[1], r.next[2]);
    committed();
    PQfinish(c);
}

/* Runs how's transaction, kills its connection's backend while idle, runs it again: the
 * second run must run its body once, on a fresh connection, and both rows be committed. */
static void rerun_after_idle_kill(PGconn **c, const tq_db_txn *how, body *b)
{
    tq_errbuf eb = {{0}};
    int rc = tq_db_run_txn(c, how, body_fn, b, &eb);
    CHECK(rc == TQ_OK && *c, "first: rc %d %s", rc, eb.msg);
    int old_pid = *c ? PQbackendPID(*c) : 0;
    kill_idle(*c);
    *b = (body){0};
    rc = tq_db_run_txn(c, how, body_fn, b, &eb);
    CHECK(rc == TQ_OK, "after the kill: rc %d %s", rc, eb.msg);
    CHECK(b->calls == 1, "body ran %d times, want 1", b->calls);
    CHECK(*c && PQbackendPID(*c) != old_pid, "not a fresh connection");
    CHECK(committed() == 2, "want both transactions' rows");
}

static void a_connection_that_died_idle_is_replaced_once(void)
{
    PGconn *c = NULL;
    const tq_db_txn how = {.url = url, .app = "db_it", .session_sql = "SET lock_timeout = 4321"};
    body b = {0};
    tq_errbuf eb = {{0}};
    rerun_after_idle_kill(&c, &how, &b);
    CHECK(strcmp(b.lock_timeout, "4321ms") == 0, "session_sql not applied on the fresh one: %s",
          b.lock_timeout);

    /* Borrowed: the runner neither closes nor replaces the caller's connection. */
    PGconn *borrowed = c;
    kill_idle(c);
    const tq_db_txn none = {0};
    b = (body){0};
    int rc = tq_db_run_txn(&c, &none, body_fn, &b, &eb);
    CHECK(rc == TQ_ERR_UNAVAILABLE, "borrowed: rc %d", rc);
    CHECK(b.calls == 0 && c == borrowed, "borrowed: %d calls, replaced %d", b.calls, c != borrowed);
    PQfinish(c);
}

static void a_connection_lost_inside_the_transaction_is_not_repeated(void)
{
    PGconn *c = NULL;
    const tq_db_txn how = {.url = url, .app = "db_it"};
    body b = {.kill_first = 1};
    tq_errbuf eb = {{0}};
    int rc = tq_db_run_txn(&c, &how, body_fn, &b, &eb);
    CHECK(rc == TQ_ERR_UNAVAILABLE, "rc %d, want TQ_ERR_UNAVAILABLE (%s)", rc, eb.msg);
    CHECK(b.calls == 1, "body ran %d times, want 1", b.calls);
    CHECK(c == NULL, "the dead connection was kept");
    CHECK(committed() == 0, "the lost transaction's row was committed");

    /* Unless the body is safe to repeat (the claim): then a fresh connection runs it. */
    const tq_db_txn again = {.url = url, .app = "db_it", .retry_unavailable = 1};
    b = (body){.kill_first = 1};
    rc = tq_db_run_txn(&c, &again, body_fn, &b, &eb);
    CHECK(rc == TQ_OK && b.calls == 2, "retry_unavailable: rc %d, %d calls", rc, b.calls);
    CHECK(committed() == 1, "want the second try's row only");
    PQfinish(c);
}

static void an_implicit_transaction_sends_no_begin(void)
{
    PGconn *c = NULL;
    const tq_db_txn how = {.url = url, .app = "db_it", .implicit = 1};
    body b = {0};
    tq_errbuf eb = {{0}};
    int rc = tq_db_run_txn(&c, &how, body_fn, &b, &eb);
    CHECK(rc == TQ_OK, "rc %d %s", rc, eb.msg);
    CHECK(b.txn_seen == PQTRANS_IDLE, "a BEGIN was sent (status %d)", b.txn_seen);
    CHECK(committed() == 1, "the row was not committed");
    PQfinish(c);
}

/* Its one statement may have run when it fails, so a failed implicit transaction is never
 * tried again; a connection the server closed while idle is noticed before anything is
 * sent on it (the server's goodbye waits on the socket) and replaced. */
static void an_implicit_transaction_on_a_connection_that_died_idle_runs_on_a_fresh_one(void)
{
    PGconn *c = NULL;
    const tq_db_txn how = {.url = url, .app = "db_it", .implicit = 1, .check_idle = 1};
    body b = {0};
    rerun_after_idle_kill(&c, &how, &b);
    PQfinish(c);
}

/* tq_db_idle_check: 0 while nothing came, 1 once notifications came (drained: 0 after),
 * -1 once the server closed the connection, before libpq has seen the end of file. */
static void the_idle_check_tells_quiet_notified_and_gone_apart(void)
{
    tq_errbuf eb = {{0}};
    PGconn *c = tq_db_connect(url, "db_it-idle", &eb);
    CHECK(c != NULL, "connect: %s", eb.msg);
    if (!c)
        return;
    CHECK(tq_db_exec(c, "LISTEN tq_db_it_idle", 0, NULL, NULL, &eb) == TQ_OK, "listen: %s", eb.msg);
    CHECK(tq_db_idle_check(c) == 0, "quiet connection: not 0");
    /* two in one transaction: the listener's backend sends them together */
    tq_db_exec(checker,
               "SELECT pg_notify('tq_db_it_idle', 'first'), pg_notify('tq_db_it_idle', 'second')",
               0, NULL, NULL, &eb);
    int got = 0;
    for (int i = 0; i < 100 && !got; i++) {
        got = tq_db_idle_check(c);
        if (!got)
            usleep(20 * 1000);
    }
    CHECK(got == 1, "notified connection: %d, want 1", got);
    CHECK(tq_db_idle_check(c) == 0, "drained connection: not 0");
    kill_idle(c);
    int gone = 0;
    for (int i = 0; i < 100 && !gone; i++) {
        gone = tq_db_idle_check(c);
        if (!gone)
            usleep(20 * 1000);
    }
    CHECK(gone == -1, "terminated connection: %d, want -1", gone);
    PQfinish(c);
    CHECK(tq_db_idle_check(NULL) == -1, "no connection: not -1");
}

int main(void)
{
    url = getenv("TRAINQ_DATABASE_URL");
    if (!url || !*url) {
        printf("db_it: TRAINQ_DATABASE_URL not set, skipped\n");
        return 77;
    }
    tq_errbuf eb = {{0}};
    checker = tq_db_connect(url, "db_it-checker", &eb);
    if (!checker) {
        printf("db_it: %s\n", eb.msg);
        return 1;
    }
    tq_uuid_generate(tag);
    if (tq_db_exec(checker, "CREATE TABLE IF NOT EXISTS tq_db_it (tag text NOT NULL)", 0, NULL,
                   NULL, &eb) != TQ_OK) {
        printf("db_it: %s\n", eb.msg);
        return 1;
    }
    soft_errors_are_retried_and_each_try_rolled_back();
    soft_errors_are_bounded();
    a_hard_error_is_rolled_back_and_returned_at_once();
    before_retry_sees_every_retry_and_can_give_up();
    a_connection_that_died_idle_is_replaced_once();
    a_connection_lost_inside_the_transaction_is_not_repeated();
    an_implicit_transaction_sends_no_begin();
    an_implicit_transaction_on_a_connection_that_died_idle_runs_on_a_fresh_one();
    the_idle_check_tells_quiet_notified_and_gone_apart();
    committed();
    PQfinish(checker);
    printf("db_it: %s\n", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
