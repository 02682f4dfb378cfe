/*
 * The Server-Sent Events hub of stream.h: the streams, their buffers and the notifier
 * thread that fills them from Postgres.
 */
#include "stream.h"

#include <errno.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "pdb.h"
#include "request_impl.h"
#include "tq_buf.h"
#include "tq_clock.h"
#include "tq_log.h"
#include "tq_status.h"

/* A stream's buffer holds at most TQ_STREAM_BUF_HIGH plus one read: 100 events and output
 * rows up to 256 KiB plus one row (a row is bounded by the consumer's log budget,
 * TRAINQ_LOG_MAX_BYTES). The caps below only stop a runaway: a stream that reaches one
 * ends, and its client resumes from its last event. */
#define STREAM_BUF_MAX (64u * 1024 * 1024)
#define ROUND_MAX STREAM_BUF_MAX
/* How long the listening connection waits before another try after it was lost. */
#define RELISTEN_MS 1000
/* The notifier's longest sleep: keepalives are checked at least this often. */
#define TICK_MAX_MS 1000
/* At most one stream.read_failed warning this often while Postgres is away. */
#define WARN_EVERY_MS 10000
/* Sent first: the client's reconnection delay (ms), and something for proxies to pass on. */
static const char preamble[] = "retry: 2000\n\n";
/* "<event>.<seq>" */
#define ID_BUF 48

typedef struct stream {
    struct stream *next; /* hub list, under h->mu */
    tq_streams *hub;
    int refs;  /* under h->mu: the list's one, and the notifier's while it works on it */
    int dirty; /* under h->mu: something may be new */
    char user[TQ_USER_ID_BUF];
    char job[TQ_UUID_BUF]; /* "" for the all-jobs stream */
    tq_stream_cursor cur;  /* notifier only */
    pthread_mutex_t mu;    /* guards everything below */
    struct MHD_Connection *conn;
    tq_buf buf;
    size_t off;    /* bytes of buf already sent */
    int suspended; /* the callback suspended conn; only the notifier resumes it */
    int blocked;   /* a read was skipped for a full buffer: the callback re-marks dirty */
    int done;      /* end of stream once buf is sent (terminal status, or stopping) */
    int closed;    /* MHD let go of the response: conn is no longer ours */
    int64_t last_write_ms;
    long long until; /* the token's last accepted second: the stream ends after it */
} stream;

struct tq_streams {
    pthread_mutex_t mu;
    stream *list;
    int per_user;
    int keepalive_ms;
    int conn_timeout_s;
    int stopping;
    int wake[2];          /* self-pipe: the callbacks and close_all wake the notifier */
    int64_t last_warn_ms; /* notifier only: the last stream.read_failed logged */
    int listen_down;      /* notifier only: tq_log_down of its listening connection */
    pthread_t thread;
    int started;
};

static void wake(tq_streams *h)
{
    char c = 1;
    ssize_t n = write(h->wake[1], &c, 1); /* full pipe: already woken */
    (void)n;
}

static void unref(stream *s)
{
    tq_streams *h = s->hub;
    pthread_mutex_lock(&h->mu);
    int left = --s->refs;
    pthread_mutex_unlock(&h->mu);
    if (left == 0) {
        tq_buf_free(&s->buf);
        pthread_mutex_destroy(&s->mu);
        free(s);
    }
}

static void mark_dirty(stream *s)
{
    pthread_mutex_lock(&s->hub->mu);
    s->dirty = 1;
    pthread_mutex_unlock(&s->hub->mu);
    wake(s->hub);
}

/* ------------------------------------------------------------------ MHD side */

static ssize_t reader(void *cls, uint64_t pos, char *out, size_t max)
{
    (void)pos;
    stream *s = cls;
    pthread_mutex_lock(&s->mu);
    size_t avail = s->buf.len - s->off;
    if (avail > 0) {
        size_t n = avail < max ? avail : max;
        memcpy(out, s->buf.data + s->off, n);
        s->off += n;
        if (s->off == s->buf.len) {
            tq_buf_free(&s->buf);
            s->off = 0;
        }
        int refill = s->blocked && s->buf.len - s->off < TQ_STREAM_BUF_HIGH;
        if (refill)
            s->blocked = 0;
        pthread_mutex_unlock(&s->mu);
        if (refill)
            mark_dirty(s);
        return (ssize_t)n;
    }
    if (s->done) {
        pthread_mutex_unlock(&s->mu);
        return MHD_CONTENT_READER_END_OF_STREAM;
    }
    /* Nothing to send: out of MHD's event loop until the notifier has more (the
     * documented pairing of a 0 return with MHD_suspend_connection; no busy loop). */
    s->suspended = 1;
    MHD_suspend_connection(s->conn);
    int refill = s->blocked;
    s->blocked = 0;
    pthread_mutex_unlock(&s->mu);
    if (refill)
        mark_dirty(s);
    return 0;
}

/* MHD destroyed the response: the connection is done with this stream. */
static void on_free(void *cls)
{
    stream *s = cls;
    tq_streams *h = s->hub;
    pthread_mutex_lock(&s->mu);
    s->closed = 1;
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_lock(&h->mu);
    for (stream **p = &h->list; *p; p = &(*p)->next)
        if (*p == s) {
            *p = s->next;
            break;
        }
    pthread_mutex_unlock(&h->mu);
    unref(s);
}

/* Under s->mu: hands what was appended to a suspended connection. */
static void resume_locked(stream *s)
{
    if (s->suspended && !s->closed && (s->buf.len > s->off || s->done)) {
        s->suspended = 0;
        MHD_resume_connection(s->conn);
    }
}

/* Under s->mu: whether the client of a suspended stream has closed its end. A suspended
 * connection is out of MHD's event loop, so MHD would notice only at the next write (a
 * keepalive, up to TRAINQ_STREAM_KEEPALIVE_SECONDS later), and until then the stream would
 * hold its connection and count against its user's TRAINQ_STREAMS_PER_USER. Only while
 * suspended: MHD then leaves the connection, and so its socket, alone. */
static int peer_gone_locked(stream *s)
{
    if (!s->suspended || s->closed || s->done)
        return 0;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(s->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci)
        return 0;
    char c;
    ssize_t n = recv(ci->connect_fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

/* Whether s still serves a client: not ending, and its client still there. A stream whose
 * client left is ended here (resumed, MHD closes the connection and frees it at once). */
static int stream_live(stream *s)
{
    pthread_mutex_lock(&s->mu);
    int gone = peer_gone_locked(s);
    if (gone) {
        s->done = 1;
        resume_locked(s);
    }
    int live = !s->done && !s->closed;
    pthread_mutex_unlock(&s->mu);
    return live;
}

/* Appends text (under s->mu); on overflow (cannot happen below STREAM_BUF_MAX with the
 * read limits) the stream ends so the client reconnects and resumes from its cursor. */
static void push(stream *s, const char *text, size_t n, int64_t now)
{
    pthread_mutex_lock(&s->mu);
    if (!s->done && n) {
        if (s->off > 0 && s->off * 2 >= s->buf.len) {
            memmove(s->buf.data, s->buf.data + s->off, s->buf.len - s->off);
            s->buf.len -= s->off;
            s->off = 0;
        }
        if (tq_buf_add(&s->buf, text, n) != TQ_OK) {
            tq_log(TQ_LOG_WARN, "stream.overflow", "stream of user %s ended: buffer full", s->user);
            s->done = 1;
        }
        s->last_write_ms = now;
    }
    resume_locked(s);
    pthread_mutex_unlock(&s->mu);
}

static void finish(stream *s)
{
    pthread_mutex_lock(&s->mu);
    s->done = 1;
    resume_locked(s);
    pthread_mutex_unlock(&s->mu);
}

/* ------------------------------------------------------------------ formatting */

/* One round's text; after one failed append nothing more is appended, so a cut event is
 * never followed by others. */
typedef struct {
    tq_buf b;
    int failed;
} out_t;

static void put(out_t *o, const void *p, size_t n)
{
    if (!o->failed && tq_buf_add(&o->b, p, n) != TQ_OK)
        o->failed = 1;
}

/* One event: id, event name and data; every line of data its own "data:" field (a CR
 * would end a line for the client, so it becomes a space). */
static void emit(out_t *b, const char *id, const char *event, const char *data)
{
    char head[ID_BUF + 64];
    int n = snprintf(head, sizeof head, "id: %s\nevent: %s\n", id, event);
    put(b, head, (size_t)n);
    const char *p = data;
    for (;;) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        put(b, "data: ", 6);
        for (size_t i = 0; i < len;) {
            size_t run = 0;
            while (i + run < len && p[i + run] != '\r')
                run++;
            put(b, p + i, run);
            i += run;
            if (i < len) {
                put(b, " ", 1);
                i++;
            }
        }
        put(b, "\n", 1);
        if (!nl)
            break;
        p = nl + 1;
    }
    put(b, "\n", 1);
}

static void emit_json(out_t *b, const char *id, const char *event, json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (s)
        emit(b, id, event, s);
    free(s);
}

static void job_id_text(const stream *s, char id[ID_BUF])
{
    if (s->job[0])
        snprintf(id, ID_BUF, "%lld.%lld", s->cur.event, s->cur.seq);
    else
        snprintf(id, ID_BUF, "%lld", s->cur.event);
}

static int status_terminal(const char *st)
{
    tq_job_status v;
    return st && tq_status_parse(st, &v) == 0 && tq_status_terminal(v);
}

static void emit_status(stream *s, out_t *b, json_t *e)
{
    s->cur.event = json_integer_value(json_object_get(e, "id"));
    json_object_del(e, "id");
    char id[ID_BUF];
    job_id_text(s, id);
    emit_json(b, id, "status", e);
}

/* One read of a job stream. Returns 1 when more is waiting (read again). */
static int round_job(stream *s, json_t *o, out_t *b)
{
    json_t *events = json_object_get(o, "events"), *output = json_object_get(o, "output");
    const char *now_status = json_string_value(json_object_get(o, "status"));
    size_t ne = json_array_size(events), no = json_array_size(output);
    int more_output = json_is_true(json_object_get(o, "more_output"));
    int more = ne >= TQ_PDB_STREAM_EVENTS || more_output;
    size_t term = ne;
    for (size_t i = 0; i < ne; i++)
        if (status_terminal(
                json_string_value(json_object_get(json_array_get(events, i), "status")))) {
            term = i;
            break;
        }
    for (size_t i = 0; i < term; i++)
        emit_status(s, b, json_array_get(events, i));
    /* Progress is a state: of several samples in one read only the newest is sent. */
    size_t last_progress = no;
    json_t *kind_progress = json_string("progress");
    for (size_t i = 0; i < no; i++)
        if (json_equal(json_object_get(json_array_get(output, i), "kind"), kind_progress))
            last_progress = i;
    json_decref(kind_progress);
    for (size_t i = 0; i < no; i++) {
        json_t *row = json_array_get(output, i);
        s->cur.seq = json_integer_value(json_object_get(row, "seq"));
        const char *kind = json_string_value(json_object_get(row, "kind"));
        const char *body = json_string_value(json_object_get(row, "body"));
        if (!kind || !body)
            continue;
        char id[ID_BUF];
        job_id_text(s, id);
        if (strcmp(kind, "log") == 0) {
            emit(b, id, "log", body);
        } else if (i == last_progress) {
            json_t *p = json_loads(body, 0, NULL);
            if (json_is_object(p)) {
                json_t *d = json_pack("{s:s}", "job_id", s->job);
                json_object_update(d, p);
                emit_json(b, id, "progress", d);
                json_decref(d);
            }
            json_decref(p);
        }
    }
    if (term < ne) {
        /* The terminal status goes last: every output row before it was read first. */
        if (more_output)
            return 1;
        emit_status(s, b, json_array_get(events, term));
        return -1;
    }
    if (!more && (now_status == NULL || status_terminal(now_status)))
        return -1; /* the client had already seen the end */
    return more;
}

static int round_user(stream *s, json_t *o, out_t *b)
{
    json_t *events = json_object_get(o, "events"), *prog = json_object_get(o, "progress");
    size_t ne = json_array_size(events);
    for (size_t i = 0; i < ne; i++)
        emit_status(s, b, json_array_get(events, i));
    char id[ID_BUF];
    job_id_text(s, id);
    for (size_t i = 0; i < json_array_size(prog); i++) {
        json_t *p = json_array_get(prog, i);
        long long m = json_integer_value(json_object_get(p, "micros"));
        if (m > s->cur.micros)
            s->cur.micros = m;
        json_object_del(p, "micros");
        emit_json(b, id, "progress", p);
    }
    return ne >= TQ_PDB_STREAM_EVENTS;
}

/* Reads what the stream has not sent yet and appends it. TQ_OK, or the read's failure
 * (the stream stays open, its cursor where it was). */
static int refill(stream *s, int64_t now)
{
    pthread_mutex_lock(&s->mu);
    int skip = s->done || s->closed;
    if (!skip && s->buf.len - s->off >= TQ_STREAM_BUF_HIGH) {
        s->blocked = 1; /* the callback marks it dirty again once drained */
        skip = 1;
    }
    pthread_mutex_unlock(&s->mu);
    if (skip)
        return TQ_OK;
    json_t *o = NULL;
    tq_errbuf eb = {{0}};
    int rc = s->job[0] ? tq_pdb_stream_job(s->user, s->job, s->cur.event, s->cur.seq, &o, &eb)
                       : tq_pdb_stream_user(s->user, s->cur.event, s->cur.micros, &o, &eb);
    if (rc != TQ_OK) {
        /* notifier thread only: no lock */
        if (now - s->hub->last_warn_ms >= WARN_EVERY_MS) {
            tq_log(TQ_LOG_WARN, "stream.read_failed", "%s", eb.msg);
            s->hub->last_warn_ms = now;
        }
        return rc;
    }
    out_t out = {.failed = 0};
    tq_buf_init(&out.b, ROUND_MAX);
    int r = s->job[0] ? round_job(s, o, &out) : round_user(s, o, &out);
    json_decref(o);
    if (out.failed) {
        /* Out of memory or over ROUND_MAX: nothing of this round is sent; the stream ends
         * and its client resumes from the last event it received. */
        tq_log(TQ_LOG_WARN, "stream.overflow", "stream of user %s ended: round too large", s->user);
        tq_buf_free(&out.b);
        finish(s);
        return TQ_OK;
    }
    push(s, out.b.data ? out.b.data : "", out.b.len, now);
    tq_buf_free(&out.b);
    if (r < 0)
        finish(s);
    else if (r > 0)
        mark_dirty(s);
    return TQ_OK;
}

/* ------------------------------------------------------------------ notifier */

/* Marks the streams a notification concerns. An output notification names a job: its
 * job streams, and (only when the user has an all-jobs stream open here) that user's. */
static void on_notify(tq_streams *h, const char *chan, const char *payload)
{
    int event = strcmp(chan, TQ_PDB_CHAN_EVENT) == 0;
    int any_all = 0;
    pthread_mutex_lock(&h->mu);
    for (stream *s = h->list; s; s = s->next) {
        /* An event without a user: every stream (tq_wake when its list of users overflowed). */
        if (event ? !payload[0] || strcmp(s->user, payload) == 0 : strcmp(s->job, payload) == 0)
            s->dirty = 1;
        any_all |= !event && !s->job[0];
    }
    pthread_mutex_unlock(&h->mu);
    if (!any_all)
        return;
    char user[TQ_USER_ID_BUF];
    tq_errbuf eb = {{0}};
    if (tq_pdb_job_user(payload, user, &eb) != TQ_OK || !user[0])
        return;
    pthread_mutex_lock(&h->mu);
    for (stream *s = h->list; s; s = s->next)
        if (!s->job[0] && strcmp(s->user, user) == 0)
            s->dirty = 1;
    pthread_mutex_unlock(&h->mu);
}

static void mark_all(tq_streams *h)
{
    pthread_mutex_lock(&h->mu);
    for (stream *s = h->list; s; s = s->next)
        s->dirty = 1;
    pthread_mutex_unlock(&h->mu);
}

/* The streams to work on now (dirty, or due a keepalive), each with a reference. */
static size_t take(tq_streams *h, stream ***out, int all)
{
    pthread_mutex_lock(&h->mu);
    size_t n = 0;
    for (stream *s = h->list; s; s = s->next)
        n += all || s->dirty;
    stream **v = n ? calloc(n, sizeof *v) : NULL;
    size_t k = 0;
    if (v)
        for (stream *s = h->list; s && k < n; s = s->next)
            if (all || s->dirty) {
                if (!all)
                    s->dirty = 0;
                s->refs++;
                v[k++] = s;
            }
    pthread_mutex_unlock(&h->mu);
    *out = v;
    return k;
}

static void keepalives(tq_streams *h, int64_t now)
{
    stream **v = NULL;
    size_t n = take(h, &v, 1);
    static const char ka[] = ": keepalive\n\n";
    long long wall = (long long)time(NULL);
    for (size_t i = 0; i < n; i++) {
        /* A token is checked once, when the stream opens: a stream outliving it would keep
         * delivering to whoever holds the connection. Its client reconnects with a fresh
         * token (or learns from the 401 that it needs one). */
        if (v[i]->until > 0 && wall > v[i]->until)
            finish(v[i]);
        /* every tick: a client that left frees its stream within a second */
        if (stream_live(v[i])) {
            pthread_mutex_lock(&v[i]->mu);
            int due = now - v[i]->last_write_ms >= h->keepalive_ms;
            pthread_mutex_unlock(&v[i]->mu);
            if (due)
                push(v[i], ka, sizeof ka - 1, now);
        }
        unref(v[i]);
    }
    free(v);
}

static void *notifier_main(void *arg)
{
    tq_streams *h = arg;
    PGconn *lc = NULL;
    int64_t next_listen = 0, next_poll = 0, next_ka = 0;
    h->last_warn_ms = tq_mono_ms() - WARN_EVERY_MS;
    int tick = h->keepalive_ms / 4 < TICK_MAX_MS ? h->keepalive_ms / 4 : TICK_MAX_MS;
    pthread_mutex_lock(&h->mu);
    while (!h->stopping) {
        pthread_mutex_unlock(&h->mu);
        int64_t now = tq_mono_ms();
        if (!lc && now >= next_listen) {
            tq_errbuf eb = {{0}};
            lc = tq_pdb_listen_open(&eb);
            if (!lc) {
                tq_log_down(&h->listen_down, "stream.listen_failed", "%s; retrying", eb.msg);
                next_listen = now + RELISTEN_MS;
            } else {
                tq_log_up(&h->listen_down, "stream.listen_ok", "listening for job changes again");
            }
            next_poll = now; /* what was missed meanwhile */
        }
        struct pollfd pf[2] = {{.fd = h->wake[0], .events = POLLIN},
                               {.fd = lc ? PQsocket(lc) : -1, .events = POLLIN}};
        int64_t until = next_poll < next_ka ? next_poll : next_ka;
        int timeout = until > now ? (int)(until - now) : 0;
        if (timeout > tick)
            timeout = tick;
        poll(pf, 2, timeout);
        char drain[64];
        while (read(h->wake[0], drain, sizeof drain) > 0)
            ;
        if (lc) {
            if (!PQconsumeInput(lc)) {
                tq_log_down(&h->listen_down, "stream.listen_lost", "%.*s",
                            (int)strcspn(PQerrorMessage(lc), "\n"), PQerrorMessage(lc));
                PQfinish(lc);
                lc = NULL;
            }
            PGnotify *nt;
            while (lc && (nt = PQnotifies(lc)) != NULL) {
                on_notify(h, nt->relname, nt->extra);
                PQfreemem(nt);
            }
        }
        now = tq_mono_ms();
        if (now >= next_poll) {
            mark_all(h);
            next_poll = now + TQ_STREAM_POLL_MS;
        }
        stream **v = NULL;
        size_t n = take(h, &v, 0);
        int failed = 0;
        for (size_t i = 0; i < n; i++) {
            /* After a failed read (Postgres away) the rest wait for the next poll: one
             * warning per round, not one per stream, and no round of connect timeouts. */
            if (failed) {
                pthread_mutex_lock(&h->mu);
                v[i]->dirty = 1;
                pthread_mutex_unlock(&h->mu);
            } else {
                failed = refill(v[i], now) != TQ_OK;
            }
            unref(v[i]);
        }
        free(v);
        if (now >= next_ka) {
            keepalives(h, now);
            next_ka = now + tick;
        }
        pthread_mutex_lock(&h->mu);
    }
    pthread_mutex_unlock(&h->mu);
    if (lc)
        PQfinish(lc);
    return NULL;
}

/* ------------------------------------------------------------------ API */

int tq_streams_start(const tq_config *cfg, tq_streams **out, tq_errbuf *eb)
{
    *out = NULL;
    tq_streams *h = calloc(1, sizeof *h);
    if (!h)
        return tq_errf(eb, TQ_ERR_NOMEM, "out of memory");
    h->per_user = cfg->streams_per_user;
    h->keepalive_ms = cfg->stream_keepalive_seconds * 1000;
    /* MHD's idle timeout counts only while a stream is not suspended (writing to a client
     * that does not read); a keepalive is due at least that often. */
    h->conn_timeout_s = cfg->request_timeout_seconds + cfg->stream_keepalive_seconds;
    pthread_mutex_init(&h->mu, NULL);
    if (pipe(h->wake) != 0 || fcntl(h->wake[0], F_SETFL, O_NONBLOCK) != 0 ||
        fcntl(h->wake[1], F_SETFL, O_NONBLOCK) != 0) {
        pthread_mutex_destroy(&h->mu);
        free(h);
        return tq_errf(eb, TQ_ERR_IO, "could not make the stream notifier's pipe: %s",
                       strerror(errno));
    }
    if (pthread_create(&h->thread, NULL, notifier_main, h) != 0) {
        close(h->wake[0]);
        close(h->wake[1]);
        pthread_mutex_destroy(&h->mu);
        free(h);
        return tq_errf(eb, TQ_ERR_NOMEM, "could not start the stream notifier thread");
    }
    h->started = 1;
    *out = h;
    return TQ_OK;
}

void tq_streams_close_all(tq_streams *h)
{
    if (!h)
        return;
    pthread_mutex_lock(&h->mu);
    h->stopping = 1;
    for (stream *s = h->list; s; s = s->next) {
        pthread_mutex_lock(&s->mu);
        tq_buf_free(&s->buf); /* its client resumes from the last event it received */
        s->off = 0;
        s->done = 1;
        resume_locked(s);
        pthread_mutex_unlock(&s->mu);
    }
    pthread_mutex_unlock(&h->mu);
    wake(h);
}

void tq_streams_stop(tq_streams *h)
{
    if (!h)
        return;
    tq_streams_close_all(h);
    if (h->started)
        pthread_join(h->thread, NULL);
    /* The server stopped first: every response, and so every stream, is gone. */
    close(h->wake[0]);
    close(h->wake[1]);
    pthread_mutex_destroy(&h->mu);
    free(h);
}

int tq_streams_count(tq_streams *h)
{
    int n = 0;
    pthread_mutex_lock(&h->mu);
    for (stream *s = h->list; s; s = s->next)
        n++;
    pthread_mutex_unlock(&h->mu);
    return n;
}

void tq_streams_open(tq_streams *h, tq_req *r, const char *job_id, const tq_stream_cursor *from)
{
    const char *user = tq_req_user(r);
    stream *s = calloc(1, sizeof *s);
    if (!s) {
        tq_req_reply_error(r, 500, "internal server error");
        return;
    }
    s->hub = h;
    s->refs = 1;
    s->dirty = 1;
    s->conn = r->conn;
    s->cur = *from;
    s->until = r->token_until;
    snprintf(s->user, sizeof s->user, "%s", user);
    snprintf(s->job, sizeof s->job, "%s", job_id ? job_id : "");
    pthread_mutex_init(&s->mu, NULL);
    tq_buf_init(&s->buf, STREAM_BUF_MAX);
    tq_buf_add(&s->buf, preamble, sizeof preamble - 1);
    s->last_write_ms = tq_mono_ms();

    pthread_mutex_lock(&h->mu);
    int mine = 0; /* streams ending, or whose client left, do not count */
    for (stream *o = h->list; o; o = o->next)
        mine += strcmp(o->user, user) == 0 && stream_live(o);
    int stopping = h->stopping;
    if (!stopping && mine < h->per_user) {
        s->next = h->list;
        h->list = s;
    }
    pthread_mutex_unlock(&h->mu);
    if (stopping || mine >= h->per_user) {
        unref(s);
        tq_req_add_header(r, MHD_HTTP_HEADER_RETRY_AFTER, stopping ? "1" : "5");
        if (stopping)
            tq_req_reply_error(r, 503, "server stopping, retry later");
        else
            tq_req_reply_error(r, 429, "too many open streams");
        return;
    }
    MHD_set_connection_option(r->conn, MHD_CONNECTION_OPTION_TIMEOUT,
                              (unsigned int)h->conn_timeout_s);
    tq_req_add_header(r, "X-Accel-Buffering", "no");
    tq_req_reply_callback(r, 200, "text/event-stream", reader, s, on_free);
    wake(h);
}
