#include "tq_relay.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "tq_amqp.h"
#include "tq_backoff.h"
#include "tq_clock.h"
#include "tq_db.h"
#include "tq_log.h"

#define RELAY_BATCH_DEFAULT 100
#define RELAY_BATCH_MAX 1000
#define RELAY_POLL_DEFAULT_MS 1000
/* The idle wait also paces AMQP heartbeats (30 s): never sleep longer than this. */
#define RELAY_POLL_MAX_MS 5000
#define RELAY_CONFIRM_TIMEOUT_MS 10000
#define RELAY_BACKOFF_MIN_MS 100
#define RELAY_BACKOFF_MAX_MS 5000
/* The outbox backlog (count and age of the oldest due row) is counted this often ... */
#define RELAY_BACKLOG_EVERY_MS 5000
/* ... and at most this often once caught up with a backlog that was not zero. */
#define RELAY_BACKLOG_RECHECK_MS 1000
/* How often a blocked relay reads the broker's frames for connection.unblocked. */
#define RELAY_BLOCKED_POLL_MS 250

/* All SQL of the relay. */
static const char SQL_LISTEN[] = "LISTEN trainq_outbox";
/* Columns 4-6 (db/migrations/0015_events.sql): the exchange, the message_id (the job id
 * for a job message), the correlation_id or NULL. Job messages and replies first, events
 * after them, each in id order (db/migrations/0022_outbox_jobs_first.sql: a burst of events
 * must not hold new jobs back; the index outbox_unpublished_order is this order). */
static const char SQL_CLAIM[] = "SELECT id, job_id::text, routing_key, payload, exchange,"
                                " COALESCE(message_id, job_id::text), correlation_id FROM outbox"
                                " WHERE published_at IS NULL AND available_at <= now()"
                                " ORDER BY exchange = '" TQ_AMQP_EVENTS "', id"
                                " LIMIT $1::int FOR UPDATE SKIP LOCKED";
static const char SQL_MARK_PUBLISHED[] =
    /* clock_timestamp: the moment the confirm arrived, not the start of the round */
    "UPDATE outbox SET published_at = clock_timestamp() WHERE id = ANY($1::bigint[])";
static const char SQL_MARK_FAILED[] =
    "UPDATE outbox SET attempts = attempts + 1, last_error = $2,"
    " available_at = now() + least(power(2, attempts + 1), 60) * interval '1 second'"
    " WHERE id = $1::bigint";
/* The age comes from the partial index's leading column (min over outbox_unpublished), so it
 * costs an index probe, not a scan, however long the backlog. clock_timestamp, not now():
 * it may run inside a round's transaction (block_hook), whose now() stands still. */
static const char SQL_BACKLOG[] =
    "SELECT count(*),"
    " (SELECT coalesce(floor(extract(epoch FROM clock_timestamp() - min(available_at))), 0)"
    "  ::bigint FROM outbox WHERE published_at IS NULL AND available_at <= clock_timestamp())"
    " FROM outbox WHERE published_at IS NULL";
/* Published rows are pruned by the producers' retention thread (producer/retention.c,
 * TRAINQ_OUTBOX_RETENTION_SECONDS), not here. */

typedef enum { SIDE_NONE = 0, SIDE_DB, SIDE_AMQP } relay_side;

struct tq_relay {
    char *db_url;
    char *amqp_url;
    char *name;
    int batch;
    int poll_ms;
    void (*on_replies_dropped)(uint64_t n);

    pthread_t thread;
    int wake[2]; /* self-pipe: stop wakes every wait of the thread */
    atomic_int stopping;
    atomic_int flush_timeout_ms;

    pthread_mutex_t mu; /* guards st */
    tq_relay_stats st;

    /* Owned by the thread. */
    PGconn *pg;
    tq_amqp *amqp;
    tq_amqp_msg *msgs;
    int sign; /* sign_key is set: every message carries its signature */
    tq_sign_key sign_key;
    char (*sigs)[TQ_SIGN_VALUE_LEN]; /* per message of a batch, borrowed by msgs[i] */
    const char *(*hdrs)[4];
    unsigned seed;
    int db_state;   /* -1 unknown, 0 down (logged), 1 up */
    int amqp_state; /* same */
    int db_ever, amqp_ever;
    char last_err[TQ_ERRBUF_LEN]; /* last round error logged, to log once per change */
    int64_t blocked_since;        /* tq_mono_ms when the current blocked stretch began, 0: none */
    int64_t next_backlog;         /* tq_mono_ms of the next backlog count */
};

static int stopping(const tq_relay *r)
{
    return atomic_load(&r->stopping);
}

static void drain_wake(tq_relay *r)
{
    char buf[64];
    while (read(r->wake[0], buf, sizeof buf) > 0) {
    }
}

/* Sleeps up to ms, returning early on stop. */
static void nap(tq_relay *r, int ms)
{
    struct pollfd p = {.fd = r->wake[0], .events = POLLIN};
    if (poll(&p, 1, ms) > 0)
        drain_wake(r);
}

static void backoff_sleep(tq_relay *r, tq_backoff *b)
{
    nap(r, (int)tq_backoff_next(b));
}

static void stats_add(tq_relay *r, uint64_t published, uint64_t confirms, uint64_t nacks,
                      uint64_t returns, uint64_t errors)
{
    pthread_mutex_lock(&r->mu);
    r->st.published += published;
    r->st.confirms += confirms;
    r->st.nacks += nacks;
    r->st.returns += returns;
    r->st.errors += errors;
    pthread_mutex_unlock(&r->mu);
}

static void stats_set_up(tq_relay *r, int db_up, int amqp_up, int reconnected)
{
    pthread_mutex_lock(&r->mu);
    r->st.db_up = db_up;
    r->st.amqp_up = amqp_up;
    if (reconnected)
        r->st.reconnects++;
    pthread_mutex_unlock(&r->mu);
}

static json_t *name_field(const tq_relay *r)
{
    return json_pack("{s:s}", "relay", r->name);
}

/* Follows the AMQP connection's blocked state into the stats and the log (once per
 * change). A dropped connection ends a blocked stretch. */
static void sync_blocked(tq_relay *r)
{
    char reason[128];
    int b = tq_amqp_blocked(r->amqp, reason, sizeof reason);
    int64_t now = tq_mono_ms();
    pthread_mutex_lock(&r->mu);
    if (b && !r->blocked_since) {
        r->blocked_since = now;
        r->st.blocked_events++;
    } else if (!b && r->blocked_since) {
        r->st.blocked_ms += (uint64_t)(now - r->blocked_since);
        r->blocked_since = 0;
    }
    int changed = r->st.amqp_blocked != b;
    r->st.amqp_blocked = b;
    snprintf(r->st.blocked_reason, sizeof r->st.blocked_reason, "%s", b ? reason : "");
    pthread_mutex_unlock(&r->mu);
    if (changed && b)
        tq_logj(TQ_LOG_WARN, "relay.blocked",
                json_pack("{s:s,s:s}", "relay", r->name, "reason", reason),
                "rabbitmq blocked publishing (%s): outbox rows wait until the alarm clears",
                reason);
    else if (changed)
        tq_logj(TQ_LOG_INFO, "relay.unblocked", name_field(r), "rabbitmq unblocked publishing");
}

static void count_backlog(tq_relay *r);
static void backlog_unknown(tq_relay *r);

/* Runs in the relay thread, also inside a round whose confirm wait an alarm paused: the
 * backlog (and its age, which /readyz watches) keeps being counted on the round's own
 * connection, between its statements. */
static void block_hook(void *arg)
{
    tq_relay *r = arg;
    sync_blocked(r);
    if (r->pg && tq_mono_ms() >= r->next_backlog)
        count_backlog(r);
}

static void drop_db(tq_relay *r)
{
    if (r->pg) {
        PQfinish(r->pg);
        r->pg = NULL;
    }
    stats_set_up(r, 0, tq_amqp_alive(r->amqp), 0);
    backlog_unknown(r);
}

static void drop_amqp(tq_relay *r)
{
    if (r->amqp) {
        tq_amqp_close(r->amqp);
        r->amqp = NULL;
    }
    sync_blocked(r);
    stats_set_up(r, r->pg != NULL, 0, 0);
}

/* Logged once per change of state, not per retry. */
static void note_down(tq_relay *r, int *state, const char *what, const tq_errbuf *eb)
{
    if (*state != 0)
        tq_logj(TQ_LOG_WARN, "relay.disconnected", name_field(r), "%s unavailable: %s", what,
                eb->msg);
    *state = 0;
}

static void note_up(tq_relay *r, int *state, int *ever, const char *what)
{
    if (*state == 0)
        tq_logj(TQ_LOG_INFO, "relay.reconnect", name_field(r), "%s connection restored", what);
    else
        tq_logj(TQ_LOG_DEBUG, "relay.connect", name_field(r), "%s connected", what);
    *state = 1;
    int again = *ever;
    *ever = 1;
    stats_set_up(r, r->pg != NULL, tq_amqp_alive(r->amqp), again);
}

/* libpq prints server notices (and the FATAL of an admin shutdown) to stderr by default,
 * which would break the JSON-lines log. */
static void pg_notice(void *arg, const char *message)
{
    const tq_relay *r = arg;
    char msg[300];
    snprintf(msg, sizeof msg, "%s", message);
    msg[strcspn(msg, "\n")] = '\0';
    tq_logj(TQ_LOG_DEBUG, "relay.pg_notice", name_field(r), "postgres: %s", msg);
}

static int ensure_db(tq_relay *r)
{
    if (r->pg && PQstatus(r->pg) == CONNECTION_OK)
        return TQ_OK;
    drop_db(r);
    tq_errbuf eb = {{0}};
    r->pg = tq_db_connect(r->db_url, r->name, &eb);
    if (r->pg)
        PQsetNoticeProcessor(r->pg, pg_notice, r);
    int rc = r->pg ? tq_db_exec(r->pg, SQL_LISTEN, 0, NULL, NULL, &eb) : TQ_ERR_UNAVAILABLE;
    if (rc != TQ_OK) {
        drop_db(r);
        note_down(r, &r->db_state, "postgres", &eb);
        return rc;
    }
    note_up(r, &r->db_state, &r->db_ever, "postgres");
    return TQ_OK;
}

static int ensure_amqp(tq_relay *r)
{
    if (tq_amqp_alive(r->amqp))
        return TQ_OK;
    drop_amqp(r);
    pthread_mutex_lock(&r->mu);
    r->st.amqp_tried = 1;
    pthread_mutex_unlock(&r->mu);
    tq_errbuf eb = {{0}};
    int rc = tq_amqp_connect(r->amqp_url, r->name, TQ_AMQP_DEFAULT_HEARTBEAT, &r->amqp, &eb);
    if (rc == TQ_OK) {
        tq_amqp_set_abort(r->amqp, &r->stopping);
        tq_amqp_set_block_hook(r->amqp, block_hook, r);
    }
    if (rc == TQ_OK)
        rc = tq_amqp_declare_topology(r->amqp, &eb);
    if (rc == TQ_OK)
        rc = tq_amqp_confirm_select(r->amqp, &eb);
    if (rc != TQ_OK) {
        drop_amqp(r);
        note_down(r, &r->amqp_state, "rabbitmq", &eb);
        return rc;
    }
    note_up(r, &r->amqp_state, &r->amqp_ever, "rabbitmq");
    return TQ_OK;
}

typedef struct {
    uint64_t acked, nacked, returned;
    uint64_t replies_dropped; /* returned replies, marked published (among acked) */
    uint64_t events;          /* acked messages to trainq.events */
} batch_verdicts;

/* A reply (default exchange, to a job's reply_to) that came back: its queue is gone. */
static int is_dropped_reply(const tq_amqp_msg *m)
{
    return m->verdict == TQ_AMQP_RETURNED && m->exchange[0] == '\0';
}

/* "{1,2,3}" from the confirmed rows' ids (digits only: safe as an array literal). */
static char *id_array(PGresult *res, const tq_amqp_msg *msgs, int n, int *count)
{
    size_t cap = (size_t)n * 22 + 3;
    char *s = malloc(cap);
    if (!s)
        return NULL;
    size_t len = 0;
    s[len++] = '{';
    *count = 0;
    for (int i = 0; i < n; i++) {
        if (msgs[i].verdict != TQ_AMQP_ACKED && !is_dropped_reply(&msgs[i]))
            continue;
        int w = snprintf(s + len, cap - len, "%s%s", *count ? "," : "", PQgetvalue(res, i, 0));
        if (w < 0 || (size_t)w >= cap - len) {
            free(s);
            return NULL;
        }
        len += (size_t)w;
        (*count)++;
    }
    s[len++] = '}';
    s[len] = '\0';
    return s;
}

/* The messages of the n locked rows in res (borrowing its values), signed when keys are
 * set: over the bytes published, not a re-encoding, since the consumer verifies those. */
static int build_batch(tq_relay *r, PGresult *res, int n, tq_errbuf *eb)
{
    for (int i = 0; i < n; i++) {
        tq_amqp_msg *m = &r->msgs[i];
        memset(m, 0, sizeof *m);
        m->exchange = PQgetvalue(res, i, 4);
        m->routing_key = PQgetvalue(res, i, 2);
        m->message_id = PQgetvalue(res, i, 5);
        m->correlation_id = PQgetisnull(res, i, 6) ? NULL : PQgetvalue(res, i, 6);
        /* An event nobody is bound to is not an error: only job messages and replies are
         * mandatory. */
        m->not_mandatory = strcmp(m->exchange, TQ_AMQP_EVENTS) == 0;
        m->body = PQgetvalue(res, i, 3);
        m->body_len = (size_t)PQgetlength(res, i, 3);
        m->content_type = "application/json";
        if (!r->sign)
            continue;
        int rc = tq_sign_value(&r->sign_key, m->body, m->body_len, r->sigs[i]);
        if (rc != TQ_OK)
            return tq_errf(eb, rc, "could not sign outbox row %s", PQgetvalue(res, i, 0));
        const char **h = r->hdrs[i];
        h[0] = TQ_SIGN_KEY_ID_HEADER;
        h[1] = r->sign_key.id;
        h[2] = TQ_SIGN_SIGNATURE_HEADER;
        h[3] = r->sigs[i];
        m->header_kv = h;
        m->n_header_kv = 4;
    }
    return TQ_OK;
}

/* After the broker's verdicts on the whole batch: marks the acked rows published and the
 * others failed (returned or nacked: both are retried), in the round's transaction. */
static int mark_batch(tq_relay *r, PGresult *res, int n, batch_verdicts *bv, tq_errbuf *eb)
{
    int rc;
    for (int i = 0; i < n; i++) {
        tq_amqp_msg *m = &r->msgs[i];
        if (is_dropped_reply(m)) {
            /* Retrying would hold the job's later events behind a queue that may never
             * come back: logged, counted, and marked published with the others. */
            bv->replies_dropped++;
            tq_logj(TQ_LOG_WARN, "relay.reply_dropped",
                    json_pack("{s:s,s:s,s:s}", "relay", r->name, "job_id", PQgetvalue(res, i, 1),
                              "reply_to", m->routing_key),
                    "reply to \"%s\" dropped: %s", m->routing_key, m->reason);
        }
        if (m->verdict == TQ_AMQP_ACKED || is_dropped_reply(m)) {
            bv->acked++;
            bv->events += m->verdict == TQ_AMQP_ACKED && m->not_mandatory;
            continue;
        }
        if (m->verdict == TQ_AMQP_RETURNED)
            bv->returned++;
        else
            bv->nacked++;
        tq_logj(TQ_LOG_WARN, "relay.publish_failed",
                json_pack("{s:s,s:s,s:s}", "relay", r->name, "job_id", m->message_id, "routing_key",
                          m->routing_key),
                "could not publish outbox row %s: %s", PQgetvalue(res, i, 0), m->reason);
        const char *p_fail[2] = {PQgetvalue(res, i, 0), m->reason};
        rc = tq_db_exec(r->pg, SQL_MARK_FAILED, 2, p_fail, NULL, eb);
        if (rc != TQ_OK)
            return rc;
    }
    if (bv->acked == 0)
        return TQ_OK;
    int count = 0;
    char *ids = id_array(res, r->msgs, n, &count);
    if (!ids)
        return tq_errf(eb, TQ_ERR_NOMEM, "could not build id list");
    const char *p_mark[1] = {ids};
    rc = tq_db_exec(r->pg, SQL_MARK_PUBLISHED, 1, p_mark, NULL, eb);
    free(ids);
    return rc;
}

/*
 * One round, one transaction: lock due rows, publish them, wait for confirms, mark.
 * The row locks are held while waiting for the broker, so a concurrent relay skips
 * these rows instead of publishing them too.
 */
static int relay_round(tq_relay *r, int confirm_timeout_ms, int *full, relay_side *side,
                       tq_errbuf *eb)
{
    *full = 0;
    *side = SIDE_DB;
    PGresult *res = NULL;
    char limit[16];
    snprintf(limit, sizeof limit, "%d", r->batch);
    const char *p_claim[1] = {limit};

    int rc = tq_db_begin(r->pg, eb);
    if (rc != TQ_OK)
        return rc;
    rc = tq_db_exec(r->pg, SQL_CLAIM, 1, p_claim, &res, eb);
    if (rc != TQ_OK)
        goto rollback;
    int n = PQntuples(res);
    if (n == 0) {
        PQclear(res);
        tq_db_rollback(r->pg);
        return TQ_OK;
    }

    rc = build_batch(r, res, n, eb);
    if (rc != TQ_OK)
        goto rollback;
    rc = tq_amqp_publish_confirmed(r->amqp, r->msgs, (size_t)n, confirm_timeout_ms, eb);
    if (rc != TQ_OK) {
        /* Nothing is marked: the rows stay due and are published again after
         * reconnecting (some may already be on the queue: at least once). */
        *side = SIDE_AMQP;
        goto rollback;
    }

    batch_verdicts bv = {0};
    rc = mark_batch(r, res, n, &bv, eb);
    if (rc != TQ_OK)
        goto rollback;
    uint64_t acked = bv.acked;
    /* If this COMMIT fails, the confirmed messages are on the queue but their rows are
     * not marked: they will be published again. That is the at-least-once contract —
     * consumers deduplicate by message_id (the job id). */
    rc = tq_db_commit(r->pg, eb);
    stats_add(r, rc == TQ_OK ? acked : 0, acked, bv.nacked, bv.returned, 0);
    if (rc == TQ_OK) {
        pthread_mutex_lock(&r->mu);
        r->st.events_published += bv.events;
        r->st.replies_dropped += bv.replies_dropped;
        pthread_mutex_unlock(&r->mu);
        if (bv.replies_dropped && r->on_replies_dropped)
            r->on_replies_dropped(bv.replies_dropped);
    }
    if (rc != TQ_OK)
        goto rollback;
    PQclear(res);
    if (acked)
        tq_logj(TQ_LOG_DEBUG, "relay.published",
                json_pack("{s:s,s:I}", "relay", r->name, "count", (json_int_t)acked),
                "published %" PRIu64 " outbox rows", acked);
    *full = (n == r->batch);
    *side = SIDE_NONE;
    return TQ_OK;

rollback:
    PQclear(res);
    tq_db_rollback(r->pg);
    return rc;
}

/* The backlog is not known (Postgres away): -1, as /metrics documents, and /readyz says
 * "unknown" rather than the last count, which may be minutes old. */
static void backlog_unknown(tq_relay *r)
{
    pthread_mutex_lock(&r->mu);
    r->st.backlog = -1;
    r->st.backlog_age_s = -1;
    pthread_mutex_unlock(&r->mu);
}

static void count_backlog(tq_relay *r)
{
    PGresult *res = NULL;
    tq_errbuf eb = {{0}};
    if (tq_db_exec(r->pg, SQL_BACKLOG, 0, NULL, &res, &eb) != TQ_OK) {
        backlog_unknown(r); /* the next round notices a broken connection */
        return;
    }
    r->next_backlog = tq_mono_ms() + RELAY_BACKLOG_EVERY_MS;
    int64_t v = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    int64_t age = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
    PQclear(res);
    pthread_mutex_lock(&r->mu);
    r->st.backlog = v;
    r->st.backlog_age_s = age < 0 ? 0 : age;
    pthread_mutex_unlock(&r->mu);
}

/* Reads what the broker sent (heartbeats, connection.blocked/unblocked, closes). */
static void pump_amqp(tq_relay *r)
{
    tq_errbuf eb = {{0}};
    if (r->amqp && tq_amqp_pump(r->amqp, &eb) != TQ_OK && !tq_amqp_alive(r->amqp)) {
        note_down(r, &r->amqp_state, "rabbitmq", &eb);
        drop_amqp(r);
    }
    sync_blocked(r);
}

/* Waits for a NOTIFY, stop, or timeout; keeps the AMQP connection's heartbeats going.
 * Returns early at once if notifications are already buffered by libpq (they may have
 * arrived with the results of the last round). */
static void wait_for_work(tq_relay *r, int timeout_ms)
{
    int got = 0;
    if (PQconsumeInput(r->pg) == 0) {
        drop_db(r);
        return;
    }
    PGnotify *nt;
    while ((nt = PQnotifies(r->pg)) != NULL) {
        PQfreemem(nt);
        got = 1;
    }
    if (!got) {
        struct pollfd p[2] = {{.fd = PQsocket(r->pg), .events = POLLIN},
                              {.fd = r->wake[0], .events = POLLIN}};
        int k = poll(p, 2, timeout_ms);
        if (k > 0 && (p[1].revents & POLLIN))
            drain_wake(r);
        if (k > 0 && (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
            if (PQconsumeInput(r->pg) == 0) {
                drop_db(r);
                return;
            }
            while ((nt = PQnotifies(r->pg)) != NULL)
                PQfreemem(nt);
        }
    }
    pump_amqp(r);
}

static void round_failed(tq_relay *r, relay_side side, int rc, const tq_errbuf *eb)
{
    stats_add(r, 0, 0, 0, 0, 1);
    if (strcmp(r->last_err, eb->msg) != 0) {
        tq_logj(TQ_LOG_WARN, "relay.error", name_field(r), "outbox round failed: %s", eb->msg);
        snprintf(r->last_err, sizeof r->last_err, "%s", eb->msg);
    }
    if (side == SIDE_AMQP) {
        /* Channel closes included: reconnecting also redeclares the topology. */
        note_down(r, &r->amqp_state, "rabbitmq", eb);
        drop_amqp(r);
    } else if (rc == TQ_ERR_UNAVAILABLE || !r->pg || PQstatus(r->pg) != CONNECTION_OK) {
        note_down(r, &r->db_state, "postgres", eb);
        drop_db(r);
    }
}

static void final_flush(tq_relay *r)
{
    int budget = atomic_load(&r->flush_timeout_ms);
    if (budget <= 0 || !r->pg || PQstatus(r->pg) != CONNECTION_OK || !tq_amqp_alive(r->amqp) ||
        tq_amqp_blocked(r->amqp, NULL, 0))
        return;
    int64_t deadline = tq_mono_ms() + budget;
    for (;;) {
        int64_t left = deadline - tq_mono_ms();
        if (left <= 0)
            break;
        int full = 0;
        relay_side side;
        tq_errbuf eb = {{0}};
        int ct = left < RELAY_CONFIRM_TIMEOUT_MS ? (int)left : RELAY_CONFIRM_TIMEOUT_MS;
        int rc = relay_round(r, ct, &full, &side, &eb);
        if (rc != TQ_OK) {
            round_failed(r, side, rc, &eb);
            break;
        }
        if (!full)
            break;
    }
}

static void *relay_main(void *arg)
{
    tq_relay *r = arg;
    tq_backoff bo_db, bo_amqp, bo_round;
    tq_backoff_init(&bo_db, RELAY_BACKOFF_MIN_MS, RELAY_BACKOFF_MAX_MS, TQ_BACKOFF_JITTER,
                    (unsigned)rand_r(&r->seed));
    bo_round = bo_amqp = bo_db;

    while (!stopping(r)) {
        if (ensure_db(r) != TQ_OK) {
            backoff_sleep(r, &bo_db);
            continue;
        }
        tq_backoff_reset(&bo_db);
        if (ensure_amqp(r) != TQ_OK) {
            /* Nothing goes out, so the rows' age is what an operator must see grow. */
            if (tq_mono_ms() >= r->next_backlog)
                count_backlog(r);
            backoff_sleep(r, &bo_amqp);
            continue;
        }
        tq_backoff_reset(&bo_amqp);

        /* A resource alarm: publish nothing (the broker would not read it) and keep the
         * connection, so there is no reconnect storm and the rows stay due, in order, for
         * when connection.unblocked comes. The backlog is still counted for /readyz. */
        pump_amqp(r);
        if (tq_amqp_blocked(r->amqp, NULL, 0)) {
            if (tq_mono_ms() >= r->next_backlog)
                count_backlog(r);
            nap(r, RELAY_BLOCKED_POLL_MS);
            continue;
        }

        int full = 0;
        relay_side side;
        tq_errbuf eb = {{0}};
        int rc = relay_round(r, RELAY_CONFIRM_TIMEOUT_MS, &full, &side, &eb);
        if (rc != TQ_OK) {
            round_failed(r, side, rc, &eb);
            backoff_sleep(r, &bo_round);
            continue;
        }
        if (bo_round.failures) {
            tq_logj(TQ_LOG_INFO, "relay.recovered", name_field(r), "outbox rounds succeed again");
            r->last_err[0] = '\0';
        }
        tq_backoff_reset(&bo_round);
        if (full)
            continue;

        /* A round that was not full has caught up: a backlog counted before it (an outage's,
         * say) is counted again within a second, not in up to RELAY_BACKLOG_EVERY_MS, or
         * /readyz goes on reporting rows that are gone. Caught up, the count is cheap. */
        int64_t now = tq_mono_ms();
        pthread_mutex_lock(&r->mu);
        int stale = r->st.backlog != 0 &&
                    now >= r->next_backlog - RELAY_BACKLOG_EVERY_MS + RELAY_BACKLOG_RECHECK_MS;
        pthread_mutex_unlock(&r->mu);
        if (now >= r->next_backlog || stale)
            count_backlog(r);
        if (r->pg)
            wait_for_work(r, r->poll_ms);
    }
    final_flush(r);
    drop_amqp(r);
    drop_db(r);
    return NULL;
}

static void relay_free(tq_relay *r)
{
    if (!r)
        return;
    if (r->wake[0] >= 0)
        close(r->wake[0]);
    if (r->wake[1] >= 0)
        close(r->wake[1]);
    pthread_mutex_destroy(&r->mu);
    free(r->msgs);
    free(r->sigs);
    free(r->hdrs);
    tq_sign_key_wipe(&r->sign_key);
    free(r->db_url);
    free(r->amqp_url);
    free(r->name);
    free(r);
}

int tq_relay_start(const tq_relay_config *cfg, tq_relay **out, tq_errbuf *eb)
{
    *out = NULL;
    if (!cfg || !cfg->database_url || !cfg->amqp_url)
        return tq_errf(eb, TQ_ERR_CONFIG, "cannot start relay: database and amqp urls required");
    /* Bad configuration fails at start, not as an endless retry in the thread. */
    int rc = tq_amqp_url_check(cfg->amqp_url, eb);
    if (rc != TQ_OK)
        return rc;
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(cfg->database_url, &perr);
    if (!opts) {
        tq_errf(eb, TQ_ERR_CONFIG, "invalid database url: %s", perr ? perr : "cannot parse");
        PQfreemem(perr);
        return TQ_ERR_CONFIG;
    }
    PQconninfoFree(opts);
    tq_relay *r = calloc(1, sizeof *r);
    if (!r)
        return tq_errf(eb, TQ_ERR_NOMEM, "could not allocate relay");
    r->wake[0] = r->wake[1] = -1;
    pthread_mutex_init(&r->mu, NULL);
    r->batch = cfg->batch > 0 ? cfg->batch : RELAY_BATCH_DEFAULT;
    if (r->batch > RELAY_BATCH_MAX)
        r->batch = RELAY_BATCH_MAX;
    r->poll_ms = cfg->poll_ms > 0 ? cfg->poll_ms : RELAY_POLL_DEFAULT_MS;
    r->on_replies_dropped = cfg->on_replies_dropped;
    if (r->poll_ms > RELAY_POLL_MAX_MS)
        r->poll_ms = RELAY_POLL_MAX_MS;
    r->db_url = strdup(cfg->database_url);
    r->amqp_url = strdup(cfg->amqp_url);
    r->name = strdup(cfg->name ? cfg->name : "trainq-relay");
    r->msgs = calloc((size_t)r->batch, sizeof *r->msgs);
    r->sigs = calloc((size_t)r->batch, sizeof *r->sigs);
    r->hdrs = calloc((size_t)r->batch, sizeof *r->hdrs);
    if (cfg->sign_keys && cfg->sign_keys->n > 0) {
        r->sign = 1;
        r->sign_key = cfg->sign_keys->keys[0];
    }
    r->db_state = r->amqp_state = -1;
    r->st.backlog = -1;
    r->st.backlog_age_s = -1;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    r->seed = (unsigned)ts.tv_nsec ^ (unsigned)getpid();
    if (!r->db_url || !r->amqp_url || !r->name || !r->msgs || !r->sigs || !r->hdrs) {
        relay_free(r);
        return tq_errf(eb, TQ_ERR_NOMEM, "could not allocate relay");
    }
    if (pipe(r->wake) != 0) {
        int e = errno;
        r->wake[0] = r->wake[1] = -1;
        relay_free(r);
        return tq_errf(eb, TQ_ERR_IO, "could not create relay wake pipe: %s", strerror(e));
    }
    for (int i = 0; i < 2; i++) {
        fcntl(r->wake[i], F_SETFL, fcntl(r->wake[i], F_GETFL) | O_NONBLOCK);
        fcntl(r->wake[i], F_SETFD, FD_CLOEXEC);
    }

    /* The thread inherits this mask: process signals (SIGTERM...) stay with the
     * program's own handling, never interrupt the relay. */
    sigset_t all, old;
    sigemptyset(&all);
    int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGCHLD, SIGPIPE, SIGALRM};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        sigaddset(&all, sigs[i]);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int e = pthread_create(&r->thread, NULL, relay_main, r);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (e != 0) {
        relay_free(r);
        return tq_errf(eb, TQ_ERR_INTERNAL, "could not start relay thread: %s", strerror(e));
    }
    *out = r;
    return TQ_OK;
}

void tq_relay_stop(tq_relay *r, int flush_timeout_ms)
{
    if (!r)
        return;
    atomic_store(&r->flush_timeout_ms, flush_timeout_ms);
    atomic_store(&r->stopping, 1);
    ssize_t w = write(r->wake[1], "x", 1);
    (void)w; /* a full pipe already wakes the thread */
    pthread_join(r->thread, NULL);
    relay_free(r);
}

void tq_relay_stats_get(const tq_relay *r, tq_relay_stats *out)
{
    pthread_mutex_lock((pthread_mutex_t *)&r->mu);
    *out = r->st;
    if (r->blocked_since)
        out->blocked_ms += (uint64_t)(tq_mono_ms() - r->blocked_since);
    pthread_mutex_unlock((pthread_mutex_t *)&r->mu);
}
