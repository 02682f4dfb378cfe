/*
 * The runners (runner.h): one thread per slot, following its container to the end and
 * recording the outcome.
 */
#include "runner.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "artifacts.h"
#include "cdb.h"
#include "cmetrics.h"
#include "output.h"
#include "start.h"
#include "tq_backoff.h"
#include "tq_db.h"
#include "tq_log.h"
#include "tq_utf8.h"

/* One round of waiting for the exit, and so the period of the output flush: a line
 * printed reaches Postgres within about this long (issue 12 asks for 2 s). */
#define WAIT_ROUND_MS 1000
#define LOG_TAIL_LINES 20
/* ... and of stderr alone, for the trainer's last words (tq_run_describe_exit) */
#define ERR_TAIL_LINES 5
/* Progress samples kept per job in job_output (the producer's history of a run). */
#define PROGRESS_KEEP 1000
/* How long the end of a container's output may lag behind its exit. */
#define OUTPUT_END_WAIT_MS 5000

typedef struct {
    tq_worker *w;
    tq_slot *s;
    PGconn *db;
    /* the running job's output (output.h): its follower, the row being written, the
     * progress last written */
    tq_output *out;
    char *row;
    size_t row_cap;
    tq_progress written;
    int has_written;
    double last_flush;
    char err_last[TQ_OUT_ERR_LINE_MAX]; /* stderr's last line, at the container's end */
    int err_whole;                      /* ... of all of stderr (tq_output_last_err) */
} runner;

/* The last non-empty line of the tail (a trainer's own refusal of its config), into out. */
static void last_line(const char *tail, char *out, size_t cap)
{
    out[0] = '\0';
    if (!tail)
        return;
    const char *end = tail + strlen(tail);
    while (end > tail && (end[-1] == '\n' || end[-1] == '\r' || end[-1] == ' '))
        end--;
    const char *b = end;
    while (b > tail && b[-1] != '\n')
        b--;
    size_t n = (size_t)(end - b) < cap - 1 ? (size_t)(end - b) : cap - 1;
    memcpy(out, b, n);
    out[n] = '\0';
    tq_utf8_clip(out, n);
}

/* The trainer's last words: stderr's last line, else the merged log's. */
static void last_words(const char *tail, const char *err_tail, char *out, size_t cap)
{
    last_line(err_tail, out, cap);
    if (!out[0])
        last_line(tail, out, cap);
}

void tq_run_describe_exit(const tq_run_end *e, const char *tail, const char *err_tail,
                          tq_run_outcome *o)
{
    int code = e->exit_code;
    /* 137 is SIGKILL: under a memory limit, and with no stop of ours (cancel and overrun
     * are judged before), the kernel's OOM killer is the one that sends it. */
    int oom = e->oom || (code == 137 && e->oom_ctx.memory_limit > 0);
    int gpu_oom = !oom && code == TQ_EXIT_GPU_OOM;
    tq_hub_failure hub;
    int hub_found = tq_hub_failure_find(tail, &hub);
    o->verdict = TQ_RUN_RECORD;
    o->status = TQ_STATUS_FAILED;
    o->exit_code = code;
    o->transient = 0;
    char line[200];
    if (oom || gpu_oom) {
        o->failure_class = TQ_FAIL_OOM;
        tq_oom_context c = e->oom_ctx;
        c.gpu = gpu_oom;
        tq_oom_advice(&c, o->failure_message, sizeof o->failure_message);
    } else if (code == TQ_EXIT_CONFIG_ERROR) {
        o->failure_class = TQ_FAIL_CONFIG;
        last_words(tail, err_tail, line, sizeof line);
        snprintf(o->failure_message, sizeof o->failure_message,
                 "the trainer refused its config (exit code 2)%s%s: fix the job's config",
                 line[0] ? ": " : "", line);
    } else if (code == TQ_EXIT_DATASET_ERROR) {
        o->failure_class = TQ_FAIL_DATASET;
        last_words(tail, err_tail, line, sizeof line);
        snprintf(o->failure_message, sizeof o->failure_message,
                 "the trainer could not use the dataset (exit code 3)%s%s", line[0] ? ": " : "",
                 line);
    } else if (code == TQ_EXIT_MISSING) {
        o->failure_class = TQ_FAIL_HOST_ERROR;
        snprintf(o->failure_message, sizeof o->failure_message,
                 "the training image lacks its trainer or launcher (exit code 127): a broken "
                 "image on this host");
    } else if (hub_found || code == TQ_EXIT_HUB_ERROR) {
        if (!hub_found) /* the adapter said so (exit 4) without a status we know */
            hub = (tq_hub_failure){.status = 0, .transient = 1};
        o->failure_class = TQ_FAIL_HUB;
        o->transient = hub.transient;
        const char *what = hub.status == 0     ? "could not be reached"
                           : hub.status == 401 ? "refused access (401): the model is private or "
                                                 "gated; check base_model and the host's token"
                           : hub.status == 403 ? "refused access (403): accept the model's terms "
                                                 "or check the host's token"
                           : hub.status == 404 ? "has no such model or file (404): check base_model"
                           : hub.status == 429 ? "rate-limited the download (429)"
                                               : "failed with a server error";
        if (hub.status >= 500)
            snprintf(o->failure_message, sizeof o->failure_message,
                     "the Hugging Face hub %s (%d) while downloading the base model", what,
                     hub.status);
        else
            snprintf(o->failure_message, sizeof o->failure_message,
                     "the Hugging Face hub %s while downloading the base model", what);
    } else {
        o->failure_class = TQ_FAIL_TRAINER;
        snprintf(o->failure_message, sizeof o->failure_message, "training exited with code %d",
                 code);
    }
    /* The error message stays the raw facts (code, OOM flag, log tail); the class's advice is
     * failure_message. The tail is sanitised (tq_log_demux_finish); a cut must not split a
     * character. */
    int n = snprintf(o->error, sizeof o->error, "training exited with code %d%s%s%s", code,
                     oom ? " (killed: out of memory)" : "", tail && *tail ? ": " : "",
                     tail ? tail : "");
    if (n >= (int)sizeof o->error)
        tq_utf8_clip(o->error, sizeof o->error - 1);
    snprintf(o->reason, sizeof o->reason, "exit code %d%s", code, oom ? ", out of memory" : "");
}

int tq_run_judge(const tq_run_end *e, tq_run_outcome *o)
{
    o->verdict = TQ_RUN_RECORD;
    o->exit_code = e->exit_code;
    o->error[0] = '\0';
    o->failure_message[0] = '\0';
    o->failure_class = TQ_FAIL_NONE;
    o->transient = 0;
    if (e->exit_code == TQ_RUN_NO_EXIT_CODE) {
        o->status = e->cancelled ? TQ_STATUS_CANCELLED : TQ_STATUS_FAILED;
        o->failure_class = e->cancelled ? TQ_FAIL_CANCELLED : TQ_FAIL_HOST_ERROR;
        snprintf(o->error, sizeof o->error, "%s",
                 e->cancelled ? "" : "training container disappeared");
        snprintf(o->reason, sizeof o->reason, "container %.12s no longer exists", e->container_id);
    } else if (e->cancelled) {
        o->status = TQ_STATUS_CANCELLED;
        o->failure_class = TQ_FAIL_CANCELLED;
        /* the log's words; the audit row names who asked (tq_cdb_finish) */
        snprintf(o->reason, sizeof o->reason, "cancelled on request");
    } else if (e->overrun) {
        o->status = TQ_STATUS_FAILED;
        o->failure_class = TQ_FAIL_TIMEOUT;
        snprintf(o->error, sizeof o->error, "exceeded the maximum run time of %d s",
                 e->max_run_seconds);
        snprintf(o->reason, sizeof o->reason, "maximum run time exceeded");
    } else if (e->outage && e->exit_code != 0) {
        /* dockerd went away while the job ran: without live-restore it took the container
         * with it. Not the job's fault: retry it (bounded). */
        o->verdict = TQ_RUN_RETRY;
        o->status = TQ_STATUS_QUEUED;
        o->failure_class = TQ_FAIL_HOST_LOST;
        snprintf(o->reason, sizeof o->reason,
                 "container %.12s ended with code %d while dockerd was unreachable",
                 e->container_id, e->exit_code);
    } else if (e->exit_code == 0 && !e->oom) {
        o->status = TQ_STATUS_COMPLETED;
        snprintf(o->reason, sizeof o->reason, "exit code 0");
    } else {
        tq_run_describe_exit(e, NULL, NULL, o);
        return 1;
    }
    /* A cancellation's message is left to the database: its audit reason names who asked
     * (tq_cdb_finish), and the failure-class trigger takes that. */
    if (o->failure_class != TQ_FAIL_NONE && o->failure_class != TQ_FAIL_CANCELLED &&
        !o->failure_message[0])
        snprintf(o->failure_message, sizeof o->failure_message, "%.*s",
                 (int)sizeof o->failure_message - 1, o->error[0] ? o->error : o->reason);
    return 0;
}

void tq_run_apply_policy(const tq_retry_policy *p, int done, int attempts, int max_attempts,
                         int backoff_base_s, tq_run_outcome *o, int *delay_s)
{
    *delay_s = 0;
    tq_failure_class c = o->failure_class;
    if (c == TQ_FAIL_NONE || c == TQ_FAIL_CANCELLED || o->status == TQ_STATUS_CANCELLED ||
        o->status == TQ_STATUS_COMPLETED)
        return;
    int by_class = done < p->max_retries[c] && (c != TQ_FAIL_HUB || o->transient);
    /* The job's attempts in all cap every class: without it, a job that failed one class
     * after another would be retried the sum of their retries. */
    int capped = by_class && attempts >= max_attempts;
    if (!by_class || capped) {
        if (capped) { /* the audit reason says why; an exit keeps its own error (log tail) */
            size_t n = strlen(o->reason);
            snprintf(o->reason + n, sizeof o->reason - n,
                     "; %s, not retried: gave up after %d attempts (TRAINQ_MAX_ATTEMPTS)",
                     tq_failure_class_name(c), attempts);
        }
        if (o->verdict == TQ_RUN_RETRY) { /* an outage past its retries fails */
            o->verdict = TQ_RUN_RECORD;
            o->status = TQ_STATUS_FAILED;
            if (capped)
                snprintf(o->error, sizeof o->error, "%s", o->reason);
            else
                snprintf(o->error, sizeof o->error, "%s; not retried after %d such failures",
                         o->reason, done);
        }
        return;
    }
    o->verdict = TQ_RUN_RETRY;
    o->status = TQ_STATUS_QUEUED;
    if (c == TQ_FAIL_HUB)
        *delay_s = tq_retry_backoff_seconds(backoff_base_s, done);
    size_t n = strlen(o->reason);
    snprintf(o->reason + n, sizeof o->reason - n, "; %s, retry %d of %d", tq_failure_class_name(c),
             done + 1, p->max_retries[c]);
}

/* Whether dockerd stops answering within a few seconds (it is shutting down). */
static int dockerd_going_away(tq_worker *w)
{
    for (int i = 0; i < 15; i++) {
        tq_errbuf eb = {{0}};
        if (w->launcher->ops->ping(w->launcher->ctx, &eb) != TQ_OK)
            return 1;
        if (tq_worker_sleep(w, 200))
            return 0;
    }
    return 0;
}

/* Kills and removes the slot's container, and says why in event's log line. */
static void drop_container(runner *r, const char *event, const char *why)
{
    tq_worker *w = r->w;
    tq_slot *s = r->s;
    tq_errbuf eb = {{0}};
    w->launcher->ops->kill(w->launcher->ctx, s->container_id, &eb);
    if (w->launcher->ops->remove(w->launcher->ctx, s->container_id, &eb) != TQ_OK) {
        tq_log(TQ_LOG_WARN, event, "job %s: container %.12s could not be removed (%s): %s",
               s->job_id, s->container_id, eb.msg, why);
        return;
    }
    tq_log(TQ_LOG_WARN, event, "job %s: container %.12s %s", s->job_id, s->container_id, why);
}

/* The lease was lost: another worker may run this job now, so ours must not go on. */
static void give_up_lost(runner *r)
{
    drop_container(r, "job.lease_lost",
                   "killed: lease lost; the job belongs to another worker now");
}

/* Stopping because another consumer has this worker id (w->fatal): nothing will adopt the
 * container this process started, and the other consumer knows nothing of its job, whose
 * claim the reaper gives back once its lease expires; left running it would run twice. An
 * adopted container is left alone: it may be the other consumer's own. */
static void abandon(runner *r)
{
    drop_container(r, "job.abandoned",
                   "removed: this consumer stops (its worker id is in use) and the reaper gives "
                   "the job back when its lease expires");
}

/* Sends the stop on cancellation or overrun (once it worked). Returns 1 once sent. */
static int stop_if_due(runner *r, int *overrun)
{
    tq_worker *w = r->w;
    tq_slot *s = r->s;
    const tq_config *cfg = w->cfg;
    time_t now = time(NULL);
    if (!atomic_load(&s->cancel) && now - s->started_wall < (time_t)cfg->max_run_seconds)
        return 0;
    *overrun = !atomic_load(&s->cancel);
    tq_errbuf eb = {{0}};
    tq_log(TQ_LOG_INFO, *overrun ? "job.overrun" : "job.cancelling",
           "job %s: stopping container %.12s (grace %d s)", s->job_id, s->container_id,
           cfg->stop_grace_seconds);
    if (w->launcher->ops->stop(w->launcher->ctx, s->container_id, cfg->stop_grace_seconds, &eb) !=
        TQ_OK) {
        tq_log(TQ_LOG_WARN, "docker.stop_failed", "job %s: %s", s->job_id, eb.msg);
        return 0; /* try again next round */
    }
    return 1;
}

/* The container exited with code: the facts tq_run_judge needs that cost a Docker call. */
static void exit_facts(runner *r, int code, int stop_sent, tq_run_end *e)
{
    tq_worker *w = r->w;
    tq_slot *s = r->s;
    /* Only a failed exit needs the OOM flag: skipping the inspect on success takes a round
     * trip to a busy dockerd off the release path. */
    if (code != 0) {
        tq_errbuf eb = {{0}};
        tq_container_state st;
        memset(&st, 0, sizeof st);
        if (w->launcher->ops->inspect(w->launcher->ctx, s->container_id, &st, &eb) == TQ_OK) {
            e->oom = st.oom_killed;
            e->oom_ctx.memory_limit = st.memory_bytes;
        }
    }
    /* Killed by a signal we did not send: dockerd shutting down (no live-restore) stops its
     * containers and may still answer this wait before it goes. */
    if (!stop_sent && !e->oom && (code == 137 || code == 143) && dockerd_going_away(w))
        e->outage = 1;
}

/* The job's batch size and resolution, from its config.json (also for an adopted job, whose
 * submission this process never saw), for the OOM's advice; left 0 when unreadable. */
static void job_size(runner *r, tq_oom_context *c)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/configs/%s.json", r->w->cfg->data_dir, r->s->job_id);
    json_error_t err;
    json_t *conf = json_load_file(path, JSON_DECODE_ANY, &err); /* ours, written by launch.c */
    if (!conf)
        return;
    json_t *b = json_object_get(conf, "train_batch_size"),
           *res = json_object_get(conf, "resolution");
    if (json_is_integer(b) && json_integer_value(b) > 0 && json_integer_value(b) < 1 << 20)
        c->batch_size = (int)json_integer_value(b);
    if (json_is_integer(res) && json_integer_value(res) > 0 && json_integer_value(res) < 1 << 20)
        c->resolution = (int)json_integer_value(res);
    json_decref(conf);
}

/* Starts following the slot's container output; without it the job still runs (the log
 * and live progress are a view, not the job). */
static void output_begin(runner *r)
{
    tq_slot *s = r->s;
    r->has_written = 0;
    r->err_last[0] = '\0';
    r->err_whole = 0;
    r->last_flush = tq_mono_now();
    tq_errbuf eb = {{0}};
    if (tq_output_start(&r->out, r->w->launcher, s->container_id, !s->adopted, r->row_cap, &eb) !=
        TQ_OK)
        tq_log(TQ_LOG_WARN, "job.output_unfollowed", "job %s: %s", s->job_id, eb.msg);
}

/* Writes what the follower collected (at most once a second unless last): the progress if
 * it changed, the lines as one log row. A fenced write stops following: the job is not
 * ours any more. A failed write loses that batch (memory stays bounded) and is logged. */
static void output_flush(runner *r, int last)
{
    tq_worker *w = r->w;
    tq_slot *s = r->s;
    double now = tq_mono_now();
    if (!r->out || (!last && now - r->last_flush < WAIT_ROUND_MS / 1000.0))
        return;
    r->last_flush = now;
    tq_progress p;
    int has_p = 0;
    size_t n = tq_output_take(r->out, r->row, &p, &has_p);
    int new_p = has_p && (!r->has_written || tq_out_progress_differs(&p, &r->written));
    if (n == 0 && !new_p)
        return;
    tq_errbuf eb = {{0}};
    int rc = tq_db_ensure(&r->db, w->cfg->database_url, "trainq-consumer-runner", &eb);
    if (rc == TQ_OK)
        rc = tq_cdb_output(r->db, s->job_id, s->fencing, new_p ? &p : NULL, PROGRESS_KEEP,
                           n ? r->row : NULL, w->cfg->log_max_bytes, &eb);
    if (rc == TQ_OK) {
        if (new_p) {
            r->written = p;
            r->has_written = 1;
        }
        return;
    }
    if (rc == TQ_ERR_CONFLICT) {
        tq_log(TQ_LOG_WARN, "job.output_fenced", "job %s: output no longer written: %s", s->job_id,
               eb.msg);
        tq_output_free(r->out);
        r->out = NULL;
        return;
    }
    tq_log(TQ_LOG_WARN, "job.output_lost", "job %s: could not write its output: %s", s->job_id,
           eb.msg);
}

/* Stops following. ended: the container exited, so its last lines are awaited and written
 * before the outcome is (the caller records it next). */
static void output_end(runner *r, int ended)
{
    if (!r->out)
        return;
    if (ended) {
        tq_output_finish(r->out, OUTPUT_END_WAIT_MS);
        /* before the flush, which frees r->out when the job is no longer ours */
        r->err_whole = tq_output_last_err(r->out, r->err_last, sizeof r->err_last);
        output_flush(r, 1);
    }
    tq_output_free(r->out);
    r->out = NULL;
}

/* Waits for the container to end. Returns 0 with *o filled, or 1 when the worker is
 * stopping or the job was taken away (lost lease): then nothing is to be recorded. */
static int follow(runner *r, tq_run_outcome *o)
{
    tq_worker *w = r->w;
    tq_slot *s = r->s;
    int stop_sent = 0;
    tq_run_end e = {.max_run_seconds = w->cfg->max_run_seconds, .container_id = s->container_id};
    tq_backoff bo;
    tq_backoff_init(&bo, 500, 8000, TQ_BACKOFF_EXACT, 0);
    for (;;) {
        if (atomic_load(&w->stopping))
            return 1;
        if (atomic_load(&s->lost)) {
            give_up_lost(r);
            return 1;
        }
        if (!stop_sent)
            stop_sent = stop_if_due(r, &e.overrun);
        int code = -1;
        tq_errbuf eb = {{0}};
        int rc =
            w->launcher->ops->wait(w->launcher->ctx, s->container_id, WAIT_ROUND_MS, &code, &eb);
        if (rc == TQ_ERR_TIMEOUT) {
            output_flush(r, 0);
            continue;
        }
        if (rc == TQ_OK || rc == TQ_ERR_NOT_FOUND) {
            if (rc == TQ_OK) {
                atomic_store(&w->docker_ok, 1);
                e.exit_code = code;
                exit_facts(r, code, stop_sent, &e);
            } else {
                e.exit_code = TQ_RUN_NO_EXIT_CODE;
            }
            e.cancelled = atomic_load(&s->cancel);
            /* The last lines and progress first: an OOM's advice names the step it died at. */
            output_end(r, 1);
            e.oom_ctx.has_progress = r->has_written;
            e.oom_ctx.step = r->written.step;
            e.oom_ctx.total = r->written.total;
            if (e.exit_code != 0)
                job_size(r, &e.oom_ctx);
            if (tq_run_judge(&e, o)) {
                char *tail = NULL, *err_tail = NULL;
                w->launcher->ops->logs_tail(w->launcher->ctx, s->container_id, LOG_TAIL_LINES, 0,
                                            &tail, &eb);
                /* The followed stream's stderr when it saw all of it (Docker's log can lag
                 * the exit), else the log's, else what the stream saw. */
                const char *err = r->err_last;
                if (!r->err_whole || !err[0]) {
                    w->launcher->ops->logs_tail(w->launcher->ctx, s->container_id, ERR_TAIL_LINES,
                                                1, &err_tail, &eb);
                    if (err_tail && strspn(err_tail, " \r\n") < strlen(err_tail))
                        err = err_tail;
                }
                tq_run_describe_exit(&e, tail, err, o);
                free(tail);
                free(err_tail);
            }
            return 0;
        }
        /* dockerd unreachable or failing: the container keeps running without it; look
         * again with backoff. */
        e.outage = 1;
        if (atomic_exchange(&w->docker_ok, 0))
            tq_log(TQ_LOG_WARN, "docker.down", "could not follow job %s: %s", s->job_id, eb.msg);
        output_flush(r, 0);
        if (tq_worker_sleep(w, tq_backoff_next(&bo)))
            return 1;
    }
}

static tq_cmetric_id finished_metric(tq_job_status st)
{
    return st == TQ_STATUS_COMPLETED   ? TQ_CM_JOBS_COMPLETED
           : st == TQ_STATUS_CANCELLED ? TQ_CM_JOBS_CANCELLED
                                       : TQ_CM_JOBS_FAILED;
}

/* Records the outcome with the job's artifacts; retries while Postgres is away. Returns 1
 * if recorded or fenced out (done either way), 0 when stopping first. */
static int record(runner *r, const tq_run_outcome *o, int delay_s, const tq_artifact *arts,
                  size_t n_arts)
{
    tq_worker *w = r->w;
    tq_slot *s = r->s;
    tq_backoff bo;
    tq_backoff_init(&bo, 250, 5000, TQ_BACKOFF_EXACT, 0);
    for (;;) {
        tq_errbuf eb = {{0}};
        int rc = tq_db_ensure(&r->db, w->cfg->database_url, "trainq-consumer-runner", &eb);
        const tq_cdb_failure f = {.cls = tq_failure_class_name(o->failure_class),
                                  .message = o->failure_message[0] ? o->failure_message : NULL,
                                  .delay_s = delay_s};
        if (rc == TQ_OK && o->verdict == TQ_RUN_RETRY) {
            rc = tq_cdb_retry(r->db, s->job_id, s->fencing, o->reason, &f, w->cfg->max_attempts,
                              &eb);
            if (rc == TQ_OK) {
                tq_logj(TQ_LOG_WARN, "job.interrupted",
                        json_pack("{s:s, s:s?, s:i}", "job_id", s->job_id, "failure_class", f.cls,
                                  "retry_in_s", delay_s),
                        "job %s given back: %s", s->job_id, o->reason);
                tq_cmetrics_inc(TQ_CM_JOBS_REQUEUED);
                tq_cmetrics_attempt_failed(o->failure_class);
                return 1;
            }
        } else if (rc == TQ_OK) {
            rc = tq_cdb_finish(r->db, s->job_id, s->fencing, o->status, o->exit_code,
                               o->error[0] ? o->error : NULL, o->reason, &f, arts, n_arts, &eb);
        }
        if (rc == TQ_OK) {
            const char *status = tq_status_name(o->status);
            tq_logj(TQ_LOG_INFO, "job.finished",
                    json_pack("{s:s, s:s, s:i, s:s?, s:s?}", "job_id", s->job_id, "status", status,
                              "exit_code", o->exit_code, "failure_class", f.cls, "failure_message",
                              f.message),
                    "job %s %s (%s)", s->job_id, status, o->reason);
            tq_cmetrics_inc(finished_metric(o->status));
            tq_cmetrics_attempt_failed(o->failure_class);
            return 1;
        }
        if (rc == TQ_ERR_CONFLICT) {
            tq_log(TQ_LOG_WARN, "job.fenced", "job %s: outcome not recorded: %s", s->job_id,
                   eb.msg);
            return 1;
        }
        tq_log(TQ_LOG_WARN, "db.retry", "could not record outcome of job %s: %s", s->job_id,
               eb.msg);
        if (rc == TQ_ERR_UNAVAILABLE)
            atomic_store(&w->db_ok, 0);
        if (tq_worker_sleep(w, tq_backoff_next(&bo)))
            return 0;
    }
}

/* Applies the retry policy (TRAINQ_RETRY_POLICY) to a failed outcome: it counts the
 * class's earlier failures of the job in Postgres, waiting while Postgres is away. Returns 0
 * when stopping first. */
static int police(runner *r, tq_run_outcome *o, int *delay_s)
{
    *delay_s = 0;
    if (o->failure_class == TQ_FAIL_NONE || o->failure_class == TQ_FAIL_CANCELLED)
        return 1;
    tq_backoff bo;
    tq_backoff_init(&bo, 250, 5000, TQ_BACKOFF_EXACT, 0);
    for (;;) {
        tq_errbuf eb = {{0}};
        int done = 0;
        int rc = tq_db_ensure(&r->db, r->w->cfg->database_url, "trainq-consumer-runner", &eb);
        int attempts = 0;
        if (rc == TQ_OK)
            rc = tq_cdb_class_failures(r->db, r->s->job_id, tq_failure_class_name(o->failure_class),
                                       &done, &attempts, &eb);
        if (rc == TQ_OK) {
            tq_run_apply_policy(&r->w->cfg->retry, done, attempts, r->w->cfg->max_attempts,
                                r->w->cfg->retry_backoff_seconds, o, delay_s);
            return 1;
        }
        tq_log(TQ_LOG_WARN, "db.retry", "could not read the failures of job %s: %s", r->s->job_id,
               eb.msg);
        if (tq_worker_sleep(r->w, tq_backoff_next(&bo)))
            return 0;
    }
}

/* The job's output files (artifacts.h), found in <data_dir>/outputs/<job_id>/. */
static void scan_artifacts(runner *r, tq_artifact **arts, size_t *n)
{
    char dir[4096];
    tq_errbuf eb = {{0}};
    snprintf(dir, sizeof dir, "%s/outputs/%s", r->w->cfg->data_dir, r->s->job_id);
    if (tq_artifacts_scan(dir, arts, n, &eb) != TQ_OK)
        tq_log(TQ_LOG_WARN, "job.artifacts_unlisted", "job %s: %s", r->s->job_id, eb.msg);
}

/* Removes the container of a job given back before its slot is freed: the job may come
 * straight back to this host, whose next container of the same name must not meet this one
 * still being removed (best effort: with dockerd away, the next launch replaces or waits
 * for it, see launch.h). */
static void remove_before_retry(runner *r)
{
    tq_errbuf eb = {{0}};
    if (r->w->launcher->ops->remove(r->w->launcher->ctx, r->s->container_id, &eb) != TQ_OK)
        tq_log(TQ_LOG_WARN, "docker.remove_failed", "job %s: %s", r->s->job_id, eb.msg);
}

static void *runner_main(void *arg)
{
    runner *r = arg;
    tq_worker *w = r->w;
    tq_slot *s = r->s;
    for (;;) {
        pthread_mutex_lock(&w->mu);
        while (s->state != TQ_SLOT_RUNNING && !s->claim && !atomic_load(&w->stopping))
            pthread_cond_wait(&w->cv, &w->mu);
        tq_claim *cl = s->claim;
        s->claim = NULL;
        int running = s->state == TQ_SLOT_RUNNING;
        pthread_mutex_unlock(&w->mu);
        if (cl) {
            /* A pick to start, even when stopping: it is claimed already, and a container
             * started now is adopted by the next start of this worker like any other. */
            int started = tq_start_claimed(w, &r->db, s->index, cl);
            tq_claim_free(cl);
            free(cl);
            if (!started)
                tq_slot_free(w, s->index);
            continue;
        }
        if (atomic_load(&w->stopping)) {
            if (atomic_load(&w->fatal) && running && !s->adopted)
                abandon(r); /* started in the moment before the stop */
            break;
        }

        tq_run_outcome o;
        memset(&o, 0, sizeof o);
        char done_job[TQ_UUID_BUF] = "", done_container[TQ_LAUNCHER_ID_BUF] = "";
        output_begin(r);
        if (follow(r, &o) == 0) {
            output_end(r, 1);
            pthread_mutex_lock(&w->mu);
            s->state = TQ_SLOT_FINISHING;
            pthread_mutex_unlock(&w->mu);
            int delay_s = 0;
            if (!police(r, &o, &delay_s))
                break; /* stopping: the container stays for adoption */
            if (o.verdict == TQ_RUN_RETRY)
                remove_before_retry(r);
            tq_artifact *arts = NULL;
            size_t n_arts = 0;
            if (o.verdict == TQ_RUN_RECORD)
                scan_artifacts(r, &arts, &n_arts);
            int recorded = record(r, &o, delay_s, arts, n_arts);
            free(arts);
            if (!recorded)
                break; /* stopping: the container stays for adoption */
            if (w->cfg->remove_containers && o.verdict == TQ_RUN_RECORD) {
                memcpy(done_job, s->job_id, sizeof done_job);
                memcpy(done_container, s->container_id, sizeof done_container);
            }
        } else if (atomic_load(&w->stopping)) {
            /* the container stays for adoption: write what was collected so far */
            output_flush(r, 1);
            output_end(r, 0);
            if (atomic_load(&w->fatal) && !s->adopted)
                abandon(r);
            break;
        } else {
            output_end(r, 0); /* the lease was lost: nothing more is ours to write */
        }
        /* The slot is free as soon as the outcome is recorded: the exited container no
         * longer runs, and its removal below must not delay the next launch (which this
         * runner picks up when it loops). */
        tq_slot_free(w, s->index);
        if (done_container[0]) {
            tq_errbuf eb = {{0}};
            if (w->launcher->ops->remove(w->launcher->ctx, done_container, &eb) != TQ_OK)
                tq_log(TQ_LOG_WARN, "docker.remove_failed", "job %s: %s", done_job, eb.msg);
        }
    }
    output_end(r, 0);
    if (r->db)
        PQfinish(r->db);
    free(r->row);
    free(r);
    return NULL;
}

int tq_runners_start(tq_worker *w)
{
    for (int i = 0; i < w->n_slots; i++) {
        runner *r = calloc(1, sizeof *r);
        if (!r)
            return TQ_ERR_NOMEM;
        r->w = w;
        r->s = &w->slots[i];
        r->row_cap = tq_out_row_cap(w->cfg->log_max_bytes);
        r->row = malloc(r->row_cap + 128);
        if (!r->row) {
            free(r);
            return TQ_ERR_NOMEM;
        }
        w->slots[i].index = i;
        if (pthread_create(&w->slots[i].thread, NULL, runner_main, r) != 0) {
            free(r->row);
            free(r);
            return TQ_ERR_INTERNAL;
        }
        w->n_runners = i + 1;
    }
    return TQ_OK;
}

void tq_runners_join(tq_worker *w)
{
    pthread_mutex_lock(&w->mu);
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    for (int i = 0; i < w->n_runners; i++)
        pthread_join(w->slots[i].thread, NULL);
    /* A pick handed over after its runner had stopped: claimed, never started. Left to the
     * reaper (this worker no longer renews its lease), as a kill at that moment would. */
    for (int i = 0; i < w->n_slots; i++)
        if (w->slots[i].claim) {
            tq_log(TQ_LOG_WARN, "job.not_started",
                   "job %s: stopping before its start; the reaper gives it back",
                   w->slots[i].claim->job_id);
            tq_claim_free(w->slots[i].claim);
            free(w->slots[i].claim);
            w->slots[i].claim = NULL;
        }
}
