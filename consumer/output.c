/*
 * The container output follower (output.h).
 */
#include "output.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tq_backoff.h"
#include "tq_clock.h"
#include "tq_utf8.h"

/* ---- the batch ----------------------------------------------------------------------- */

size_t tq_out_row_cap(long long max_bytes)
{
    long long c = max_bytes / 8;
    if (c < TQ_OUT_ROW_MIN)
        c = TQ_OUT_ROW_MIN;
    if (c > TQ_OUT_ROW_MAX)
        c = TQ_OUT_ROW_MAX;
    return (size_t)c;
}

int tq_out_batch_init(tq_out_batch *b, size_t cap)
{
    memset(b, 0, sizeof *b);
    /* + a line of the longest kind, its '\n' and tq_utf8_sanitize's NUL */
    b->buf = malloc(cap + TQ_LOG_LINE_MAX + 2);
    if (!b->buf)
        return TQ_ERR_NOMEM;
    b->cap = cap;
    return TQ_OK;
}

void tq_out_batch_free(tq_out_batch *b)
{
    free(b->buf);
    b->buf = NULL;
}

/* Drops the oldest whole lines until at most keep bytes are left. */
static void drop_oldest(tq_out_batch *b, size_t keep)
{
    size_t cut = b->len > keep ? b->len - keep : 0;
    /* the first line start at or after cut: lines end in '\n', so after one */
    while (cut > 0 && cut < b->len && b->buf[cut - 1] != '\n')
        cut++;
    for (size_t i = 0; i < cut; i++)
        b->dropped += b->buf[i] == '\n';
    memmove(b->buf, b->buf + cut, b->len - cut);
    b->len -= cut;
}

void tq_out_batch_line(tq_out_batch *b, const char *line, size_t len)
{
    if (len > TQ_LOG_LINE_MAX)
        len = TQ_LOG_LINE_MAX;
    if (b->len + len + 1 > b->cap)
        drop_oldest(b, b->cap / 2 > len + 1 ? b->cap / 2 - len - 1 : 0);
    memcpy(b->buf + b->len, line, len);
    /* Postgres refuses invalid UTF-8 and NUL in text; a trainer prints any bytes. */
    tq_utf8_sanitize(b->buf + b->len, len);
    b->len += len;
    b->buf[b->len++] = '\n';
}

size_t tq_out_batch_take(tq_out_batch *b, char *dst)
{
    size_t n = 0;
    if (b->dropped > 0)
        n = (size_t)snprintf(dst, 128,
                             "[trainq: %lld lines dropped here: more than %zu bytes of output "
                             "in a second]\n",
                             b->dropped, b->cap);
    if (b->len == 0 && n == 0)
        return 0;
    memcpy(dst + n, b->buf, b->len);
    n += b->len;
    if (n > 0 && dst[n - 1] == '\n')
        n--; /* lines joined by '\n', no trailing one (the contract of job_output) */
    dst[n] = '\0';
    b->len = 0;
    b->dropped = 0;
    return n;
}

int tq_out_progress_differs(const tq_progress *a, const tq_progress *b)
{
    return a->step != b->step || a->total != b->total || a->has_loss != b->has_loss ||
           (a->has_loss && a->loss != b->loss) || a->has_eta != b->has_eta ||
           (a->has_eta && a->eta_seconds != b->eta_seconds);
}

/* ---- the follower -------------------------------------------------------------------- */

/* tq_output_finish: silence after the exit that means the output is all there. */
#define OUTPUT_QUIET_S 0.5

struct tq_output {
    const tq_launcher *launcher;
    char container_id[TQ_LAUNCHER_ID_BUF];
    int replay;
    pthread_t thread;
    int joined; /* the owner's alone */
    atomic_int stop;

    pthread_mutex_t mu; /* guards batch and ended; cv signals ended and stop */
    pthread_cond_t cv;
    tq_out_batch batch;
    int ended;         /* the follower thread is done */
    double last_bytes; /* tq_mono_now() of the last bytes received */
    int gap;           /* output may be missing before the next bytes: say so in the log */
    int had_gap;       /* it ever was: not all of the output was seen */
    int stream_ended;  /* the stream ended with the container (not cut short by a stop) */

    /* the follower thread's alone: stdout (and a TTY's output) and stderr, cut apart so
     * that a tqdm bar on stderr and lines on stdout never run into one line */
    tq_log_splitter splitter[2];
    int feeding_err; /* the bytes being fed are stderr's */
    /* stderr's last non-blank line (guarded by mu): a trainer's refusal of its config, quoted
     * in the job's failure (exit 2, 3). Kept here because the stream ends after all of the
     * container's output, while Docker's log may not have stored its last lines yet when
     * the wait returns (seen: stderr's only line missing from /logs, stdout's all there). */
    char err_last[TQ_OUT_ERR_LINE_MAX];
};

static void on_piece(void *arg, tq_log_piece kind, const char *line, size_t len)
{
    tq_output *o = arg;
    tq_progress p;
    if (tq_progress_parse(line, len, &p)) {
        o->batch.progress = p;
        o->batch.has_progress = 1;
    }
    if (kind != TQ_LOG_LINE)
        return;
    tq_out_batch_line(&o->batch, line, len);
    if (o->feeding_err) {
        while (len > 0 && (line[len - 1] == ' ' || line[len - 1] == '\r'))
            len--;
        if (len > 0) {
            if (len > sizeof o->err_last - 1)
                len = sizeof o->err_last - 1;
            memcpy(o->err_last, line, len);
            tq_utf8_sanitize(o->err_last, len);
        }
    }
}

/* Called by the launcher's attach on the follower thread: must not block (launcher.h). */
static void on_bytes(void *arg, int stream, const char *data, size_t len)
{
    tq_output *o = arg;
    pthread_mutex_lock(&o->mu);
    o->last_bytes = tq_mono_now();
    if (o->gap) {
        /* once per gap, right before what follows it (not per failed attach: a dockerd
         * outage would fill the log with these) */
        static const char note[] = "[trainq: output followed again from here; lines printed "
                                   "while it was not followed are missing]";
        tq_out_batch_line(&o->batch, note, sizeof note - 1);
        o->gap = 0;
    }
    o->feeding_err = stream == 2;
    tq_log_splitter_feed(&o->splitter[stream == 2], data, len, on_piece, o);
    pthread_mutex_unlock(&o->mu);
}

/* Sleeps ms unless stopped first (1). */
static int pause_ms(tq_output *o, long ms)
{
    struct timespec until = tq_mono_deadline(ms);
    pthread_mutex_lock(&o->mu);
    while (!atomic_load(&o->stop))
        if (pthread_cond_timedwait(&o->cv, &o->mu, &until) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&o->mu);
    return atomic_load(&o->stop);
}

/* Whether the container still runs (then its stream ended for a reason of dockerd's and is
 * to be attached again); -1 when that cannot be known now. */
static int still_running(tq_output *o)
{
    tq_errbuf eb = {{0}};
    tq_container_state st;
    int rc = o->launcher->ops->inspect(o->launcher->ctx, o->container_id, &st, &eb);
    if (rc == TQ_ERR_NOT_FOUND)
        return 0;
    return rc == TQ_OK ? st.running : -1;
}

static void *follower_main(void *arg)
{
    tq_output *o = arg;
    tq_backoff bo;
    tq_backoff_init(&bo, 250, 5000, TQ_BACKOFF_EXACT, 0);
    int first = 1;
    while (!atomic_load(&o->stop)) {
        tq_errbuf eb = {{0}};
        int rc = o->launcher->ops->attach(o->launcher->ctx, o->container_id, first && o->replay,
                                          on_bytes, o, &o->stop, &eb);
        first = 0;
        if (atomic_load(&o->stop))
            break;
        int running = rc == TQ_ERR_NOT_FOUND ? 0 : still_running(o);
        if (running == 0) {
            pthread_mutex_lock(&o->mu);
            o->stream_ended = 1;
            pthread_mutex_unlock(&o->mu);
            break; /* its output ended with it */
        }
        pthread_mutex_lock(&o->mu);
        o->gap = 1;
        o->had_gap = 1;
        pthread_mutex_unlock(&o->mu);
        if (pause_ms(o, tq_backoff_next(&bo)))
            break;
    }
    pthread_mutex_lock(&o->mu);
    /* also when stopped: a last line without '\n' printed just before the exit */
    for (int i = 0; i < 2; i++) {
        o->feeding_err = i == 1;
        tq_log_splitter_finish(&o->splitter[i], on_piece, o);
    }
    o->ended = 1;
    pthread_cond_broadcast(&o->cv);
    pthread_mutex_unlock(&o->mu);
    return NULL;
}

int tq_output_start(tq_output **out, const tq_launcher *l, const char *container_id, int replay,
                    size_t row_cap, tq_errbuf *eb)
{
    *out = NULL;
    tq_output *o = calloc(1, sizeof *o);
    if (!o || tq_out_batch_init(&o->batch, row_cap) != TQ_OK) {
        free(o);
        return tq_errf(eb, TQ_ERR_NOMEM, "could not follow container output: out of memory");
    }
    o->launcher = l;
    snprintf(o->container_id, sizeof o->container_id, "%s", container_id);
    o->replay = replay;
    o->gap = !replay;
    o->had_gap = !replay;
    o->last_bytes = tq_mono_now();
    tq_log_splitter_init(&o->splitter[0]);
    tq_log_splitter_init(&o->splitter[1]);
    pthread_mutex_init(&o->mu, NULL);
    tq_cond_init_monotonic(&o->cv);
    if (pthread_create(&o->thread, NULL, follower_main, o) != 0) {
        pthread_cond_destroy(&o->cv);
        pthread_mutex_destroy(&o->mu);
        tq_out_batch_free(&o->batch);
        free(o);
        return tq_errf(eb, TQ_ERR_INTERNAL, "could not start the output follower thread");
    }
    *out = o;
    return TQ_OK;
}

size_t tq_output_take(tq_output *o, char *row, tq_progress *progress, int *has_progress)
{
    pthread_mutex_lock(&o->mu);
    size_t n = tq_out_batch_take(&o->batch, row);
    *has_progress = o->batch.has_progress;
    if (*has_progress)
        *progress = o->batch.progress;
    pthread_mutex_unlock(&o->mu);
    return n;
}

static void stop_and_join(tq_output *o)
{
    if (o->joined)
        return;
    pthread_mutex_lock(&o->mu);
    atomic_store(&o->stop, 1);
    pthread_cond_broadcast(&o->cv);
    pthread_mutex_unlock(&o->mu);
    pthread_join(o->thread, NULL);
    o->joined = 1;
}

void tq_output_finish(tq_output *o, long wait_ms)
{
    /* Docker copies a container's output out before its wait returns, so the stream
     * normally ends within milliseconds. It never ends for an attach made after the exit
     * (a short job, an adopted exited container): once nothing arrived for
     * OUTPUT_QUIET_S, everything there was has arrived. */
    double start = tq_mono_now();
    pthread_mutex_lock(&o->mu);
    while (!o->ended) {
        double now = tq_mono_now();
        double quiet_since = o->last_bytes > start ? o->last_bytes : start;
        if (now - start >= wait_ms / 1000.0 || now - quiet_since >= OUTPUT_QUIET_S)
            break;
        struct timespec until = tq_mono_deadline(100);
        pthread_cond_timedwait(&o->cv, &o->mu, &until);
    }
    pthread_mutex_unlock(&o->mu);
    stop_and_join(o); /* the batch now holds everything: the follower has finished */
}

int tq_output_last_err(tq_output *o, char *buf, size_t cap)
{
    pthread_mutex_lock(&o->mu);
    snprintf(buf, cap, "%s", o->err_last);
    int whole = o->stream_ended && !o->had_gap;
    pthread_mutex_unlock(&o->mu);
    tq_utf8_clip(buf, strlen(buf));
    return whole;
}

void tq_output_free(tq_output *o)
{
    if (!o)
        return;
    stop_and_join(o);
    pthread_cond_destroy(&o->cv);
    pthread_mutex_destroy(&o->mu);
    tq_out_batch_free(&o->batch);
    free(o);
}
