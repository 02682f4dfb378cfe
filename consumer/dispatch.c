/*
 * The dispatcher: the only thread that talks to the trainq.jobs queue, and the one that
 * fills this host's free slots.
 *
 * Two jobs, one thread (docs/architecture.md, "Who runs next"):
 *  - intake: a delivery is only a job arriving. Deliveries (prefetch INTAKE_BATCH) are
 *    checked (signature, decode, message_id, routing key) and made durable as queued rows
 *    in batches, one round trip each (tq_cdb_intake), then acked. A burst of one user's
 *    jobs is swallowed in batches instead of being claimed and parked one by one, so it
 *    delays nobody's job behind it by more than a few batches.
 *  - picking: while a slot is free, the host asks Postgres for the next runnable job
 *    (tq_cdb_pick: priority, fair share, submission order; the per-user limit and quota
 *    respected), reserves the slot and hands the job to the slot's runner, which starts
 *    its container (start.h) while this thread picks for the next free slot: one slow
 *    container start never holds the host's other slots. It asks when something may have
 *    become runnable: after
 *    its own intake, when one of its slots freed, on NOTIFY trainq_runnable, and every
 *    PICK_EVERY_S in any case.
 *
 * Ack rule (invariant 4): a delivery is acked once its row is committed (or it is confirmed
 * on the dead-letter queue); never at training end. A batch that cannot be stored now
 * (Postgres away after retries on a fresh connection) is given back without spending its
 * delivery count: a copy of each is published (confirmed) and the original acked, after the
 * consumer is cancelled. Only a failure that may be the batch's own (an unexpected database
 * error) is nacked: the quorum queue's delivery limit then bounds it.
 *
 * Capacity (invariant 6): a container starts only in a slot reserved here, from a pick, so
 * never more containers than slots; deliveries are held only for one batch (milliseconds),
 * whatever the slots, so no host sits on work another could start.
 *
 * Host health (start.c): a launch that fails for a reason of this host (image or runtime
 * missing, disk full) gives the job back; TRAINQ_HOST_ERROR_LIMIT such failures in a row
 * mark the host unhealthy: it stops picking and tries one job again after a backoff (a probe).
 */
#include "dispatch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cdb.h"
#include "cmetrics.h"
#include "delivery.h"
#include "start.h"
#include "tq_amqp.h"
#include "tq_backoff.h"
#include "tq_db.h"
#include "tq_log.h"
#include "tq_msg.h"
#include "tq_utf8.h"
#include "tq_sign.h"
#include "worker.h"

#define CONSUME_WAIT_MS 100
/* Deliveries held at once (the prefetch) and stored in one intake round trip. */
#define INTAKE_BATCH 256
/* Waiting for the rest of a batch that is already streaming in. */
#define BATCH_WAIT_MS 2
/* A free slot asks for work at least this often, notification or not. */
#define PICK_EVERY_S 1.0
/* ... and again this soon when a candidate's user was locked by someone else. */
#define PICK_BUSY_S 0.05
/* While RabbitMQ is away: how often the dispatcher looks at its slots between connection
 * attempts (a freed slot or a notification is taken up within this). */
#define AMQP_DOWN_TICK_MS 200
/* Jobs that fail at the head of the queue (dataset missing...) handled per round. */
#define PICK_FAILED_MAX 100
#define HEARTBEAT_S 60
/* Intake tries on a fresh connection before a batch is given back, and their pauses. */
static const int CLAIM_BACKOFF_MS[] = {0, 100, 400, 1000};
#define N_CLAIM_TRIES ((int)(sizeof CLAIM_BACKOFF_MS / sizeof CLAIM_BACKOFF_MS[0]))
/* How often the ready count of trainq.jobs is read for the sweeper. */
#define QUEUE_DEPTH_EVERY_S 2.0
/* An AMQP short string (consumer tag) with its NUL. */
#define SHORTSTR_BUF 256

/* A delivery waiting in the intake batch, with its decoded job (both owned). */
typedef struct {
    tq_delivery dl;
    tq_job_msg m;
} intake_item;

typedef struct {
    tq_worker *w;
    tq_amqp *in;   /* consumes trainq.jobs */
    tq_amqp *dead; /* publishes to the dead-letter exchange, confirm mode */
    PGconn *db;
    int consuming;
    unsigned epoch;
    char tag[SHORTSTR_BUF];
    tq_backoff backoff;   /* reconnecting to RabbitMQ: 100 ms … 5 s, with jitter */
    double amqp_retry_at; /* the next connection attempt while RabbitMQ is away */
    double depth_read_at; /* when trainq.jobs' ready count was last read */
    intake_item *batch;   /* INTAKE_BATCH items */
    size_t n_batch;
    int wake;       /* something may have become runnable: pick now */
    double pick_at; /* the next pick in any case */
    int free_seen;  /* free slots at the last look: more now means one freed */
    int listen_pid; /* backend of d->db that LISTENs (0: none) */
} dispatcher;

static void drop_amqp(dispatcher *d)
{
    tq_amqp_close(d->in);
    tq_amqp_close(d->dead);
    d->in = d->dead = NULL;
    d->consuming = 0;
    atomic_store(&d->w->amqp_ok, 0);
    atomic_store(&d->w->queue_ready_at, 0.0); /* unknown from now on */
    tq_cmetrics_set(TQ_CM_AMQP_UP, 0);
}

static int connect_amqp(dispatcher *d, tq_errbuf *eb)
{
    const tq_config *cfg = d->w->cfg;
    int rc = tq_amqp_connect(cfg->amqp_url, "trainq-consumer", HEARTBEAT_S, &d->in, eb);
    if (rc == TQ_OK)
        rc = tq_amqp_declare_topology(d->in, eb);
    if (rc == TQ_OK)
        rc = tq_amqp_connect(cfg->amqp_url, "trainq-consumer-dlq", HEARTBEAT_S, &d->dead, eb);
    if (rc == TQ_OK)
        rc = tq_amqp_confirm_select(d->dead, eb);
    if (rc == TQ_OK) {
        amqp_connection_state_t st = tq_amqp_state(d->in);
        amqp_basic_qos(st, TQ_AMQP_CHANNEL, 0, INTAKE_BATCH, 0);
        rc = tq_amqp_check_reply(d->in, amqp_get_rpc_reply(st), "could not set prefetch", eb);
    }
    if (rc != TQ_OK) {
        drop_amqp(d);
        return rc;
    }
    d->epoch = tq_amqp_channel_epoch(d->in);
    d->consuming = 0;
    atomic_store(&d->w->amqp_ok, 1);
    tq_cmetrics_set(TQ_CM_AMQP_UP, 1);
    return TQ_OK;
}

static int start_consuming(dispatcher *d, tq_errbuf *eb)
{
    amqp_connection_state_t st = tq_amqp_state(d->in);
    if (tq_amqp_channel(d->in, eb) < 0)
        return TQ_ERR_AMQP;
    if (tq_amqp_channel_epoch(d->in) != d->epoch) {
        /* the channel was reopened: its prefetch setting is gone too */
        amqp_basic_qos(st, TQ_AMQP_CHANNEL, 0, INTAKE_BATCH, 0);
        int rc = tq_amqp_check_reply(d->in, amqp_get_rpc_reply(st), "could not set prefetch", eb);
        if (rc)
            return rc;
        d->epoch = tq_amqp_channel_epoch(d->in);
    }
    amqp_basic_consume_ok_t *ok =
        amqp_basic_consume(st, TQ_AMQP_CHANNEL, amqp_cstring_bytes(TQ_AMQP_QUEUE), amqp_empty_bytes,
                           0, 0 /* manual acks */, 0, amqp_empty_table);
    int rc =
        tq_amqp_check_reply(d->in, amqp_get_rpc_reply(st), "could not consume trainq.jobs", eb);
    if (rc)
        return rc;
    size_t n = ok->consumer_tag.len < sizeof d->tag - 1 ? ok->consumer_tag.len : sizeof d->tag - 1;
    memcpy(d->tag, ok->consumer_tag.bytes, n);
    d->tag[n] = '\0';
    d->consuming = 1;
    return TQ_OK;
}

static int stop_consuming(dispatcher *d, tq_errbuf *eb)
{
    if (!d->consuming)
        return TQ_OK;
    d->consuming = 0;
    amqp_connection_state_t st = tq_amqp_state(d->in);
    /* A delivery racing the cancel is kept by rabbitmq-c and handed to the next
     * amqp_consume_message, which gives it back (handle: we are no longer consuming). */
    amqp_basic_cancel(st, TQ_AMQP_CHANNEL, amqp_cstring_bytes(d->tag));
    return tq_amqp_check_reply(d->in, amqp_get_rpc_reply(st), "could not cancel consumer", eb);
}

static void settle(dispatcher *d, uint64_t tag, int ack)
{
    amqp_connection_state_t st = tq_amqp_state(d->in);
    int rc = ack ? amqp_basic_ack(st, TQ_AMQP_CHANNEL, tag, 0)
                 : amqp_basic_nack(st, TQ_AMQP_CHANNEL, tag, 0, 1 /* requeue */);
    if (rc != AMQP_STATUS_OK) {
        /* The connection is gone: the broker requeues the delivery by itself. */
        tq_log(TQ_LOG_WARN, "amqp.settle_failed", "could not %s delivery: %s", ack ? "ack" : "nack",
               amqp_error_string2(rc));
        drop_amqp(d);
    }
}

/* Publishes a copy of the delivery to `exchange` and waits for the broker's confirm, then
 * acks the original: routing key, body, and the properties and headers the publisher set
 * (delivery.h: all but user_id and the broker's own headers), with the headers in kv added
 * or replacing theirs, and content type default_ct when it had none. When the copy cannot be
 * confirmed the original is nacked back instead, so the message is never lost between the
 * two. Returns 1 when acked. */
static int copy_then_ack(dispatcher *d, const tq_delivery *dl, const char *exchange,
                         const char *const *kv, size_t n_kv, const char *default_ct,
                         const char *what)
{
    const char *mid = dl->message_id;
    tq_amqp_msg m = {
        .exchange = exchange,
        .routing_key = dl->routing_key,
        .message_id = mid[0] ? mid : NULL, /* how a return is matched to it */
        .body = dl->body.bytes,
        .body_len = dl->body.len,
        .content_type = default_ct,
        .header_kv = kv,
        .n_header_kv = n_kv,
        .props = &dl->props,
        .headers = dl->headers,
        .drop_expiration = strcmp(exchange, TQ_AMQP_DLX) == 0,
    };
    tq_errbuf eb = {{0}};
    int rc = d->dead ? tq_amqp_publish_confirmed(d->dead, &m, 1, 5000, &eb) : TQ_ERR_UNAVAILABLE;
    if (rc == TQ_OK && m.result == TQ_OK) {
        settle(d, dl->tag, 1);
        return 1;
    }
    tq_log(TQ_LOG_WARN, "amqp.copy_failed", "could not %s message %s: %s; nacking it", what,
           mid[0] ? mid : "(no message_id)",
           rc == TQ_OK ? m.reason
           : d->dead   ? eb.msg
                       : "no channel");
    if (d->dead && !tq_amqp_alive(d->dead)) {
        tq_amqp_close(d->dead);
        d->dead = NULL;
    }
    settle(d, dl->tag, 0);
    return 0;
}

/* Dead-letters the delivery with the reason in a header, then acks it. */
static void dead_letter(dispatcher *d, const tq_delivery *dl, const char *reason)
{
    const char *rk = dl->routing_key, *mid = dl->message_id;
    const char *hdr[] = {TQ_MSG_REASON_HEADER,     reason, "x-trainq-worker", d->w->cfg->worker_id,
                         "x-original-routing-key", rk};
    if (!copy_then_ack(d, dl, TQ_AMQP_DLX, hdr, 6, "application/octet-stream", "dead-letter"))
        return;
    tq_logj(TQ_LOG_WARN, "job.dead_lettered", json_pack("{s:s}", "message_id", mid),
            "message %s dead-lettered: %s", mid[0] ? mid : "(no message_id)", reason);
    /* For the admin API; the copy on trainq.jobs.dead is already confirmed either way. */
    tq_errbuf eb = {{0}};
    if (tq_db_ensure(&d->db, d->w->cfg->database_url, "trainq-consumer", &eb) != TQ_OK ||
        tq_cdb_dead_letter(d->db, mid, rk, reason, d->w->cfg->worker_id, dl->body.bytes,
                           dl->body.len, &eb) != TQ_OK)
        tq_log(TQ_LOG_WARN, "db.dead_letter_failed", "could not record dead letter %s: %s",
               mid[0] ? mid : "(no message_id)", eb.msg);
    tq_cmetrics_inc(TQ_CM_JOBS_DEAD_LETTERED);
}

/* Gives a delivery back without spending its delivery count: a nack would count toward the
 * quorum queue's delivery limit although the failure is ours (Postgres away), and enough
 * of them would dead-letter a valid job. A copy is published (confirmed) to the exchange
 * with the same routing key, body, properties and headers, then the original is acked; if
 * the copy cannot be confirmed, the original is nacked after all (the broker keeps it
 * either way). */
static void defer(dispatcher *d, const tq_delivery *dl)
{
    /* Headers too big to keep (delivery.h) would not survive the copy: back the ordinary
     * way; it is dead-lettered for them when next taken. */
    if (dl->headers_too_big) {
        settle(d, dl->tag, 0);
        return;
    }
    if (copy_then_ack(d, dl, TQ_AMQP_EXCHANGE, NULL, 0, "application/json", "give back"))
        tq_cmetrics_inc(TQ_CM_JOBS_REQUEUED);
}

/* A message whose headers a copy could not keep whole (delivery.h). */
#define HEADERS_TOO_BIG_(n) "invalid message: headers: must be at most " #n " bytes"
#define HEADERS_TOO_BIG_N(n) HEADERS_TOO_BIG_(n)
#define HEADERS_TOO_BIG HEADERS_TOO_BIG_N(TQ_DELIVERY_HEADERS_MAX)

/* Room for the longest reason: every failure a validation keeps (TQ_VALIDATION_MAX, each
 * "<field>: <message>" and "; "), so that x-trainq-reason lists all of them as the
 * contract says, never a cut line. */
#define REASON_CAP                                                                                 \
    (sizeof "invalid message: " +                                                                  \
     TQ_VALIDATION_MAX * (sizeof((tq_field_error *)0)->field +                                     \
                          sizeof((tq_field_error *)0)->message + sizeof "; : "))

/* Why a decode failed, as one header-sized line: "invalid message: " and every failure as
 * "<field>: <reason>", joined by "; " (docs/message-contract.md, "Validation reasons"). */
static void validation_reason(const tq_validation *v, int rc, char *out, size_t cap)
{
    size_t used = (size_t)snprintf(out, cap, "invalid message: ");
    if (rc == TQ_ERR_TOO_LARGE) {
        snprintf(out + used, cap - used, "body: must be at most %d bytes", TQ_MSG_MAX_BYTES);
        return;
    }
    for (size_t i = 0; i < v->n && used < cap; i++)
        used += (size_t)snprintf(out + used, cap - used, "%s%s: %s", i ? "; " : "",
                                 v->items[i].field, v->items[i].message);
}

/* With publisher keys configured, only a body signed by one of them gets further: this runs
 * before the body is even parsed, and long before any database work. 1: go on. */
static int publisher_verified(dispatcher *d, const amqp_envelope_t *env, const tq_delivery *dl)
{
    const tq_sign_keys *keys = &d->w->cfg->publish_keyring;
    if (keys->n == 0)
        return 1;
    const char *hv[2] = {NULL, NULL};
    size_t hn[2] = {0, 0};
    const char *names[2] = {TQ_SIGN_KEY_ID_HEADER, TQ_SIGN_SIGNATURE_HEADER};
    char why[256];
    for (int i = 0; i < 2; i++)
        if (tq_delivery_header(env, names[i], &hv[i], &hn[i]) < 0) {
            snprintf(why, sizeof why, "bad signature: header %s must be a string", names[i]);
            dead_letter(d, dl, why);
            return 0;
        }
    int rc = tq_sign_verify(keys, hv[0], hn[0], hv[1], hn[1], dl->body.bytes, dl->body.len, why,
                            sizeof why);
    if (rc == TQ_OK)
        return 1;
    if (rc == TQ_ERR_AUTH)
        dead_letter(d, dl, why);
    else /* libcrypto failed: not the message's fault; its delivery limit bounds this */
        settle(d, dl->tag, 0);
    return 0;
}

typedef struct {
    tq_worker *w;
    const char *job_id;
} claim_retry_arg;

/* Before the claim's next try (tq_db_txn.before_retry): logged, then a short backoff; a
 * stopping worker gives up (the delivery is deferred). */
static int claim_retry(void *arg, int next, int rc, const tq_errbuf *eb)
{
    (void)rc;
    claim_retry_arg *a = arg;
    tq_log(TQ_LOG_INFO, "job.claim_retry", "job %s: %s; trying again", a->job_id, eb->msg);
    return tq_worker_sleep(a->w, CLAIM_BACKOFF_MS[next]);
}

/* The policy of the dispatcher's transactions: a connection that died while idle (Postgres
 * restarted, sessions cut, a failover) fails its next statement; the runner then connects
 * afresh, with a backoff, so a blip costs nothing. `repeat`: safe to repeat after a lost
 * reply (intake is; a pick is not: it may have claimed). */
static tq_db_txn dispatcher_txn(dispatcher *d, claim_retry_arg *ra, int repeat)
{
    const tq_db_txn how = {
        .url = d->w->cfg->database_url,
        .app = "trainq-consumer",
        .tries = N_CLAIM_TRIES,
        .implicit = 1,
        .retry_unavailable = repeat,
        .before_retry = claim_retry,
        .retry_arg = ra,
    };
    return how;
}

/* After a delivery's database work failed with rc: Postgres unreachable or busy (or out of
 * memory) gives the delivery back, after the consumer is cancelled, and returns 1. */
static int deferred_for_db(dispatcher *d, const tq_delivery *dl, const char *job_id, int rc,
                           const tq_errbuf *eb)
{
    if (rc != TQ_ERR_UNAVAILABLE && rc != TQ_ERR_DB_RETRY && rc != TQ_ERR_NOMEM)
        return 0;
    if (rc == TQ_ERR_UNAVAILABLE)
        atomic_store(&d->w->db_ok, 0);
    tq_log(TQ_LOG_WARN, "job.claim_deferred", "job %s: %s", job_id, eb->msg);
    tq_errbuf cb = {{0}};
    stop_consuming(d, &cb);
    defer(d, dl);
    return 1;
}

/* The delivery's reply addresses (tq_delivery_take made them valid UTF-8 for Postgres),
 * with a word when its reply_to was refused: events in trainq's own queues would be taken
 * for jobs (and dead-lettered). */
static const tq_reply_addr *reply_addr(const tq_delivery *dl)
{
    if (dl->refused_reply_to)
        tq_log(TQ_LOG_WARN, "job.reply_to_ignored", "reply_to \"%.200s\" names a trainq queue",
               dl->refused_reply_to);
    return &dl->reply;
}

/* Dead-letters a delivery that passed the publisher check but gets no job row, with its
 * job.dead_lettered event (db/procedures/85_events.sql) written first: a dead-letter copy
 * that fails makes the delivery come again (a second event: at least once), and Postgres
 * away gives it back like a claim, so the event is never lost. */
static void dead_letter_event(dispatcher *d, const tq_delivery *dl, const char *reason)
{
    /* valid UTF-8 for Postgres; the dead-letter copy keeps the delivery's own bytes */
    char rk[SHORTSTR_BUF], mid[SHORTSTR_BUF], why[REASON_CAP];
    snprintf(rk, sizeof rk, "%s", dl->routing_key);
    snprintf(mid, sizeof mid, "%s", dl->message_id);
    snprintf(why, sizeof why, "%s", reason);
    tq_utf8_sanitize(rk, strlen(rk));
    tq_utf8_sanitize(mid, strlen(mid));
    tq_utf8_sanitize(why, strlen(why));
    claim_retry_arg ra = {d->w, mid};
    const tq_db_txn how = dispatcher_txn(d, &ra, 1);
    tq_errbuf eb = {{0}};
    int rc = tq_cdb_dead_letter_event(&d->db, &how, mid, rk, why, reply_addr(dl), &eb);
    if (deferred_for_db(d, dl, mid, rc, &eb))
        return;
    if (rc != TQ_OK) /* not Postgres away: the message's own bytes, say; it goes all the same */
        tq_log(TQ_LOG_WARN, "job.event_failed", "no dead-letter event for message %s: %s", mid,
               eb.msg);
    dead_letter(d, dl, reason);
}

/* Decodes and checks a delivery: 1 with *m filled (caller frees), or 0 when the delivery
 * was settled here (nacked after running out of memory, or dead-lettered with the reason:
 * invalid body, message_id not the job id, routing key not the job's type). */
static int accept_message(dispatcher *d, const tq_delivery *dl, tq_job_msg *m)
{
    char reason[REASON_CAP];
    if (dl->nul_in) {
        snprintf(reason, sizeof reason, "invalid message: %s: must not contain a NUL byte",
                 dl->nul_in);
        dead_letter_event(d, dl, reason);
        return 0;
    }
    tq_validation v;
    memset(&v, 0, sizeof v);
    int rc = tq_msg_decode(dl->body.bytes, dl->body.len, m, &v);
    if (rc == TQ_ERR_NOMEM) {
        settle(d, dl->tag, 0);
        return 0;
    }
    if (rc != TQ_OK) {
        validation_reason(&v, rc, reason, sizeof reason);
        dead_letter_event(d, dl, reason);
        return 0;
    }
    const char *mid = dl->message_id, *rk = dl->routing_key;
    /* job_id is canonical (lowercase) after decoding; a publisher may send either case */
    if (strcasecmp(mid, m->job_id) != 0) {
        snprintf(reason, sizeof reason,
                 mid[0] ? "invalid message: message_id \"%s\" differs from job_id"
                        : "invalid message: message_id property is required%s",
                 mid);
        tq_msg_free(m);
        dead_letter_event(d, dl, reason);
        return 0;
    }
    /* The exchange routes by job type: a body whose type differs from its routing key was
     * queued for the wrong kind of worker. */
    if (strcmp(rk, tq_job_type_name(m->sub.type)) != 0) {
        snprintf(reason, sizeof reason,
                 "invalid message: routing key \"%s\" differs from type \"%s\"", rk,
                 tq_job_type_name(m->sub.type));
        tq_msg_free(m);
        dead_letter_event(d, dl, reason);
        return 0;
    }
    return 1;
}

/* Whether an intake failure is ours (Postgres away or busy, memory) rather than maybe the
 * batch's own (an unexpected database error). */
static int intake_soft(int rc)
{
    return rc == TQ_ERR_UNAVAILABLE || rc == TQ_ERR_DB_RETRY || rc == TQ_ERR_NOMEM;
}

/* Settles one delivery of a stored (or failed) batch by rc and its outcome; frees it. */
static void settle_item(dispatcher *d, intake_item *it, int rc, tq_intake_outcome outcome)
{
    if (!d->in) {
        /* the connection is gone: the broker requeues the delivery by itself */
    } else if (intake_soft(rc)) {
        defer(d, &it->dl);
    } else if (rc != TQ_OK) {
        /* Maybe the message's own fault: its delivery limit bounds this. */
        settle(d, it->dl.tag, 0);
    } else if (outcome == TQ_INTAKE_MISMATCH) {
        char why[160];
        snprintf(why, sizeof why, "job_id %s already names a job of another user or dataset",
                 it->m.job_id);
        dead_letter(d, &it->dl, why);
    } else {
        if (outcome == TQ_INTAKE_DUPLICATE) {
            tq_cmetrics_inc(TQ_CM_JOBS_DUPLICATES);
            tq_log(TQ_LOG_INFO, "job.duplicate", "job %s: duplicate delivery dropped",
                   it->m.job_id);
        } else if (outcome == TQ_INTAKE_ACCEPTED) {
            tq_cmetrics_inc(TQ_CM_JOBS_PARKED);
        } else if (outcome == TQ_INTAKE_KNOWN) {
            tq_cmetrics_inc(TQ_CM_JOBS_KNOWN);
        }
        settle(d, it->dl.tag, 1);
    }
    tq_msg_free(&it->m);
    tq_delivery_free(&it->dl);
}

/* Stores the batch (one round trip) and settles every delivery of it exactly once. A batch
 * that fails for a reason that may be one message's own is stored again message by message,
 * so that only that message spends its delivery count (and is dead-lettered by the queue's
 * limit in the end), never its batch-mates. */
static void flush_intake(dispatcher *d)
{
    tq_worker *w = d->w;
    size_t n = d->n_batch;
    if (n == 0)
        return;
    const tq_job_msg *msgs[INTAKE_BATCH];
    const tq_reply_addr *replies[INTAKE_BATCH];
    tq_intake_outcome outcome[INTAKE_BATCH];
    int rcs[INTAKE_BATCH];
    for (size_t i = 0; i < n; i++) {
        msgs[i] = &d->batch[i].m;
        replies[i] = reply_addr(&d->batch[i].dl);
    }
    tq_errbuf eb = {{0}};
    claim_retry_arg ra = {w, "(intake)"};
    const tq_db_txn how = dispatcher_txn(d, &ra, 1);
    int rc = tq_cdb_intake(&d->db, &how, msgs, replies, n, outcome, &eb);
    for (size_t i = 0; i < n; i++)
        rcs[i] = rc;
    if (rc != TQ_OK && !intake_soft(rc) && n > 1)
        for (size_t i = 0; i < n; i++) {
            tq_errbuf one = {{0}};
            rcs[i] = tq_cdb_intake(&d->db, &how, &msgs[i], &replies[i], 1, &outcome[i], &one);
            if (rcs[i] != TQ_OK)
                tq_log(TQ_LOG_ERROR, "job.intake_failed", "job %s: %s", msgs[i]->job_id, one.msg);
        }
    else if (rc != TQ_OK)
        tq_log(intake_soft(rc) ? TQ_LOG_WARN : TQ_LOG_ERROR,
               intake_soft(rc) ? "job.intake_deferred" : "job.intake_failed", "%zu deliveries: %s",
               n, eb.msg);
    if (intake_soft(rc)) {
        if (rc == TQ_ERR_UNAVAILABLE)
            atomic_store(&w->db_ok, 0);
        tq_errbuf cb = {{0}};
        if (d->in)
            stop_consuming(d, &cb);
    }
    for (size_t i = 0; i < n; i++) {
        settle_item(d, &d->batch[i], rcs[i], outcome[i]);
        if (rcs[i] == TQ_OK)
            d->wake = 1;
    }
    d->n_batch = 0;
}

/* One delivery: taken out of its envelope (delivery.h; the envelope is destroyed here once
 * the signature check has read its headers), then the body decoded and checked. It joins
 * the batch, which owns it from then on, or is settled here (dead-lettered, deferred, or
 * nacked when memory ran out). */
static void handle(dispatcher *d, amqp_envelope_t *env)
{
    intake_item *it = &d->batch[d->n_batch]; /* pump reads only while the batch has room */
    if (tq_delivery_take(env, &it->dl) != TQ_OK) {
        settle(d, env->delivery_tag, 0);
        amqp_destroy_envelope(env);
        return;
    }
    int go_on;
    if (!d->consuming || atomic_load(&d->w->stopping)) {
        /* arrived after cancel: elsewhere, without spending its delivery count */
        defer(d, &it->dl);
        go_on = 0;
    } else if (it->dl.headers_too_big) {
        dead_letter_event(d, &it->dl, HEADERS_TOO_BIG);
        go_on = 0;
    } else {
        go_on = publisher_verified(d, env, &it->dl);
    }
    amqp_destroy_envelope(env);
    if (go_on && accept_message(d, &it->dl, &it->m))
        d->n_batch++;
    else
        tq_delivery_free(&it->dl);
}

/* LISTEN on the dispatcher's connection, again whenever the runner replaced it. */
static void listen_runnable(dispatcher *d)
{
    if (!d->db || PQstatus(d->db) != CONNECTION_OK || PQbackendPID(d->db) == d->listen_pid)
        return;
    tq_errbuf eb = {{0}};
    if (tq_cdb_listen_runnable(d->db, &eb) == TQ_OK)
        d->listen_pid = PQbackendPID(d->db);
    else
        tq_log(TQ_LOG_DEBUG, "db.listen_failed", "%s", eb.msg);
}

/* GPUs one slot holds: one device per slot with ids or `all` (one slot), none on CPU. */
static int slot_gpus(const tq_config *cfg)
{
    return cfg->gpus_mode == TQ_GPUS_CFG_NONE ? 0 : 1;
}

/* Fills the free slots from Postgres, when something may have become runnable. */
static void fill(dispatcher *d)
{
    tq_worker *w = d->w;
    double now = tq_mono_now();
    int heard = d->db ? tq_cdb_runnable_notified(d->db) : 0;
    if (heard < 0) {
        /* Died while idle: a fresh one now, so that neither the next pick nor the next
         * intake fails on it (the runner opens it), and LISTEN again on it. */
        PQfinish(d->db);
        d->db = NULL;
        d->listen_pid = 0;
    }
    if (heard != 0)
        d->wake = 1;
    int free_now = tq_slots_free(w);
    if (free_now > d->free_seen)
        d->wake = 1; /* one of ours ended */
    d->free_seen = free_now;
    if (!d->wake && now < d->pick_at)
        return;
    /* A draining worker (an operator's drain, db/procedures/90_admin.sql) finishes what runs
     * and picks nothing new; its intake goes on, which only makes rows durable. Before its
     * first heartbeat (draining -1) it does not know yet, and waits. */
    if (free_now == 0 || atomic_load(&w->stopping) || !atomic_load(&w->docker_ok) ||
        !atomic_load(&w->db_ok) || !tq_host_usable(w) || atomic_load(&w->draining) != 0)
        return; /* the wake stays: it is taken up once a slot can be filled */
    d->wake = 0;
    d->pick_at = now + PICK_EVERY_S;
    int failed = 0;
    while (tq_slots_free(w) > 0 && failed < PICK_FAILED_MAX && !atomic_load(&w->stopping)) {
        tq_claim cl;
        tq_errbuf eb = {{0}};
        claim_retry_arg ra = {w, "(pick)"};
        const tq_db_txn how = dispatcher_txn(d, &ra, 0);
        int rc = tq_cdb_pick(&d->db, &how, w->cfg->worker_id, w->cfg->lease_seconds,
                             slot_gpus(w->cfg), &cl, &eb);
        if (rc != TQ_OK) {
            /* Not db_ok = 0: that also stops the intake until the next heartbeat, and a
             * periodic pick failing each second then kept a given-back delivery out for
             * tens of seconds while the heartbeat got through. The heartbeat says whether
             * Postgres is up; the next pick is PICK_EVERY_S away anyway. */
            tq_log(rc == TQ_ERR_INTERNAL ? TQ_LOG_ERROR : TQ_LOG_WARN, "job.pick_failed", "%s",
                   eb.msg);
            break;
        }
        if (cl.outcome == TQ_CLAIM_NONE || cl.outcome == TQ_CLAIM_BUSY) {
            if (cl.outcome == TQ_CLAIM_BUSY) /* that claim or job end commits in a moment */
                d->pick_at = tq_mono_now() + PICK_BUSY_S;
            tq_claim_free(&cl);
            break;
        }
        if (cl.outcome == TQ_CLAIM_FAILED) {
            failed++;
            tq_cmetrics_inc(TQ_CM_JOBS_FAILED);
            tq_log(TQ_LOG_WARN, "job.failed", "job %s failed: %s", cl.job_id, cl.reason);
            tq_claim_free(&cl);
            continue;
        }
        /* The slot's runner starts it (start.h); this thread goes on picking for the next
         * free slot meanwhile. */
        int slot = tq_slot_reserve(w, cl.job_id);
        tq_claim *held = slot >= 0 ? malloc(sizeof *held) : NULL;
        if (!held) { /* out of memory, or no free slot (cannot happen: only we reserve) */
            tq_give_back_claim(w, d->db, &cl, slot < 0 ? "no free slot" : "out of memory");
            if (slot >= 0)
                tq_slot_free(w, slot);
            tq_claim_free(&cl);
            break;
        }
        *held = cl; /* the runner owns it (and its decoded job) from here */
        tq_slot_start(w, slot, held);
        if (!atomic_load(&w->docker_ok) || !tq_host_usable(w))
            break;
    }
    listen_runnable(d);
    d->free_seen = tq_slots_free(w);
}

/* Every few seconds: the ready count of trainq.jobs, for the sweeper's stranded repair
 * (worker.h). Read on the publishing connection, which has no deliveries to confuse with
 * the reply. */
static void read_queue_depth(dispatcher *d)
{
    double now = tq_mono_now();
    if (!d->dead || now - d->depth_read_at < QUEUE_DEPTH_EVERY_S)
        return;
    d->depth_read_at = now;
    long long ready = 0;
    tq_errbuf eb = {{0}};
    if (tq_amqp_queue_ready(d->dead, TQ_AMQP_QUEUE, &ready, &eb) != TQ_OK) {
        tq_log(TQ_LOG_DEBUG, "amqp.depth_failed", "%s", eb.msg);
        atomic_store(&d->w->queue_ready_at, 0.0);
        return;
    }
    atomic_store(&d->w->queue_ready, ready);
    atomic_store(&d->w->queue_ready_at, now);
}

/* Reads one delivery or frame (waits at most wait_ms). 1 when a delivery was read. */
static int read_one(dispatcher *d, long wait_ms)
{
    amqp_connection_state_t st = tq_amqp_state(d->in);
    amqp_maybe_release_buffers(st);
    amqp_envelope_t env;
    struct timeval tv = {0, wait_ms * 1000};
    amqp_rpc_reply_t res = amqp_consume_message(st, &env, &tv, 0);
    if (res.reply_type == AMQP_RESPONSE_NORMAL) {
        handle(d, &env);
        return 1;
    }
    if (res.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
        res.library_error == AMQP_STATUS_TIMEOUT)
        return 0;
    tq_errbuf eb = {{0}};
    if (res.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
        res.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
        amqp_frame_t f;
        if (amqp_simple_wait_frame(st, &f) != AMQP_STATUS_OK) {
            drop_amqp(d);
            return 0;
        }
        if (f.frame_type == AMQP_FRAME_METHOD && f.payload.method.id == AMQP_BASIC_CANCEL_METHOD) {
            /* the broker cancelled us (queue deleted): consume again once redeclared */
            tq_log(TQ_LOG_WARN, "amqp.cancelled", "broker cancelled the consumer");
            d->consuming = 0;
            tq_amqp_declare_topology(d->in, &eb);
            return 0;
        }
        if (tq_amqp_handle_frame(d->in, &f, &eb) != TQ_OK) {
            /* The broker closed our channel (or connection): the consumer is gone with it
             * and must be registered again on the reopened channel. */
            tq_log(TQ_LOG_WARN, "amqp.closed", "%s", eb.msg);
            d->consuming = 0;
        }
        if (!tq_amqp_alive(d->in))
            drop_amqp(d);
        else if (tq_amqp_channel_epoch(d->in) != d->epoch)
            d->consuming = 0;
        return 0;
    }
    tq_amqp_check_reply(d->in, res, "could not read from trainq.jobs", &eb);
    tq_log(TQ_LOG_WARN, "amqp.lost", "%s", eb.msg);
    drop_amqp(d);
    return 0;
}

/* Reads deliveries while they stream in, up to one batch, and stores them. */
static void pump(dispatcher *d)
{
    if (read_one(d, CONSUME_WAIT_MS))
        while (d->in && d->n_batch < INTAKE_BATCH && read_one(d, BATCH_WAIT_MS))
            ;
    flush_intake(d);
}

void *tq_dispatch_main(void *arg)
{
    dispatcher d;
    memset(&d, 0, sizeof d);
    d.w = arg;
    d.batch = calloc(INTAKE_BATCH, sizeof *d.batch);
    if (!d.batch) {
        tq_log(TQ_LOG_ERROR, "consumer.nomem", "could not allocate the intake batch");
        atomic_store(&d.w->stopping, 1);
        return NULL;
    }
    tq_backoff_init(&d.backoff, 100, 5000, TQ_BACKOFF_JITTER, (unsigned)rand());
    tq_worker *w = d.w;
    int logged_down = 0, ready = 0;
    while (!atomic_load(&w->stopping)) {
        tq_errbuf eb = {{0}};
        /* Either connection may be the one whose node died (they can sit on different
         * nodes of a cluster): a dead publishing connection is replaced as well. */
        if (!tq_amqp_alive(d.in) || !tq_amqp_alive(d.dead)) {
            if (tq_mono_now() < d.amqp_retry_at) {
                /* RabbitMQ is away: only intake needs it. The rows in Postgres are what
                 * slots pick, so they go on picking (once a second, or when woken). */
                fill(&d);
                tq_worker_sleep(w, AMQP_DOWN_TICK_MS);
                continue;
            }
            drop_amqp(&d);
            if (connect_amqp(&d, &eb) != TQ_OK) {
                if (!logged_down++)
                    tq_log(TQ_LOG_WARN, "amqp.down", "%s; retrying", eb.msg);
                d.amqp_retry_at = tq_mono_now() + tq_backoff_next(&d.backoff) / 1000.0;
                continue;
            }
            if (!ready) {
                /* Ready means a publisher can now route jobs to us. */
                tq_log(TQ_LOG_INFO, "consumer.ready", "worker %s consuming (topology declared)",
                       w->cfg->worker_id);
                ready = 1;
            } else if (logged_down) {
                tq_log(TQ_LOG_INFO, "amqp.up", "connected to RabbitMQ");
            }
            logged_down = 0;
            tq_backoff_reset(&d.backoff);
        }
        tq_amqp_pump(d.dead, &eb);
        read_queue_depth(&d);
        fill(&d);
        /* Intake needs only Postgres: slots and dockerd are the picker's business. */
        int want = atomic_load(&w->db_ok);
        if (want && !d.consuming) {
            if (start_consuming(&d, &eb) != TQ_OK) {
                tq_log(TQ_LOG_WARN, "amqp.consume_failed", "%s", eb.msg);
                if (!tq_amqp_alive(d.in))
                    drop_amqp(&d);
                tq_worker_sleep(w, 500);
                continue;
            }
        } else if (!want && d.consuming) {
            if (stop_consuming(&d, &eb) != TQ_OK && !tq_amqp_alive(d.in))
                drop_amqp(&d);
        }
        if (d.in)
            pump(&d);
    }
    if (d.in) {
        tq_errbuf eb = {{0}};
        stop_consuming(&d, &eb);
        /* Drain what raced the cancel: give it back so another worker takes it. */
        for (int i = 0; i < 5 && d.in && tq_amqp_alive(d.in); i++)
            pump(&d);
    }
    drop_amqp(&d);
    if (d.db)
        PQfinish(d.db);
    free(d.batch);
    return NULL;
}
