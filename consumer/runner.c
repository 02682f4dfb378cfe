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
#include "tq_backoff.h"
#include "tq_db.h"
#include "tq_log.h"
#include "tq_utf8.h"

/* One round of waiting for the exit, and so the period of the output flush: a line
 * printed reaches Postgres within about this long (issue 12 asks for 2 s). */
#define WAIT_ROUND_MS 1000
#define LOG_TAIL_LINES 20
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
} runner;

void tq_run_describe_exit(int exit_code, int oom, const char *tail, tq_run_outcome *o)
{
    o->verdict = TQ_RUN_RECORD;
    o->status = TQ_STATUS_FAILED;
    o->exit_code = exit_code;
    /* The tail is sanitised (tq_log_demux_finish); a cut must not split a character. */
    int n = snprintf(o->error, sizeof o->error, "training exited with code %d%s%s%s", exit_code,
                     oom ? " (killed: out of memory)" : "", tail && *tail ? ": " : "",
                     tail ? tail : "");
    if (n >= (int)sizeof o->error)
        tq_utf8_clip(o->error, sizeof o->error - 1);
    snprintf(o->reason, sizeof o->reason, "exit code %d%s", exit_code,
             oom ? ", out of memory" : "");
}

int tq_run_judge(const tq_run_end *e, tq_run_outcome *o)
{
    o->verdict = TQ_RUN_RECORD;
    o->exit_code = e->exit_code;
    o->error[0] = '\0';
    if (e->exit_code == TQ_RUN_NO_EXIT_CODE) {
        o->status = e->cancelled ? TQ_STATUS_CANCELLED : TQ_STATUS_FAILED;
        snprintf(o->error, sizeof o->error, "%s",
                 e->cancelled ? "" : "training container disappeared");
        snprintf(o->reason, sizeof o->reason, "container %.12s no longer exists", e->container_id);
    } else if (e->cancelled) {
        o->status = TQ_STATUS_CANCELLED;
        snprintf(o->reason, sizeof o->reason, "cancelled by user");
    } else if (e->overrun) {
        o->status = TQ_STATUS_FAILED;
        snprintf(o->error, sizeof o->error, "exceeded the maximum run time of %d s",
                 e->max_run_seconds);
        snprintf(o->reason, sizeof o->reason, "maximum run time exceeded");
    } else if (e->outage && e->exit_code != 0) {
        /* dockerd went away while the job ran: without live-restore it took the container
         * with it. Not the job's fault: retry it (bounded). */
        o->verdict = TQ_RUN_RETRY;
        o->status = TQ_STATUS_QUEUED;
        snprintf(o->reason, sizeof o->reason,
                 "container %.12s ended with code %d while dockerd was unreachable",
                 e->container_id, e->exit_code);
    } else if (e->exit_code == 0 && !e->oom) {
        o->status = TQ_STATUS_COMPLETED;
        snprintf(o->reason, sizeof o->reason, "exit code 0");
    } else {
        tq_run_describe_exit(e->exit_code, e->oom, NULL, o);
        return 1;
    }
    return 0;
}

/* Whether dockerd stops answering within a few seconds (it is shutting down). */
static int dockerd_going_away(tq_worker *w)
{
    for (int i = 0; i < 15; i++) {
        tq_errbuf eb = {{0}};
        if (tq_docker_ping(w->docker, &eb) != TQ_OK)
            return 1;
        if (tq_worker_sleep(w, 200))
            return 0;
    }
    return 0;
}

/* The lease was lost: another worker may run this job now, so ours must not go on. */
static void give_up_lost(runner *r)
{
    tq_worker *w = r->w;
    tq_slot *s = r->s;
    tq_errbuf eb = {{0}};
    tq_docker_kill(w->docker, s->container_id, &eb);
    tq_docker_remove(w->docker, s->container_id, 1, &eb);
    tq_log(TQ_LOG_WARN, "job.lease_lost",
           "job %s: lease lost, container %.12s killed; the job belongs to another worker now",
           s->job_id, s->container_id);
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
    if (tq_docker_stop(w->docker, s->container_id, cfg->stop_grace_seconds, &eb) != TQ_OK) {
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
        e->oom = tq_docker_inspect(w->docker, s->container_id, &st, &eb) == TQ_OK && st.oom_killed;
    }
    /* Killed by a signal we did not send: dockerd shutting down (no live-restore) stops its
     * containers and may still answer this wait before it goes. */
    if (!stop_sent && !e->oom && (code == 137 || code == 143) && dockerd_going_away(w))
        e->outage = 1;
}

/* Starts following the slot's container output; without it the job still runs (the log
 * and live progress are a view, not the job). */
static void output_begin(runner *r)
{
    tq_slot *s = r->s;
    r->has_written = 0;
    r->last_flush = tq_mono_now();
    tq_errbuf eb = {{0}};
    if (tq_output_start(&r->out, r->w->docker, s->container_id, !s->adopted, r->row_cap, &eb) !=
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
        int rc = tq_docker_wait(w->docker, s->container_id, WAIT_ROUND_MS, &code, &eb);
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
            if (tq_run_judge(&e, o)) {
                char *tail = NULL;
                tq_docker_logs_tail(w->docker, s->container_id, LOG_TAIL_LINES, &tail, &eb);
                tq_run_describe_exit(e.exit_code, e.oom, tail, o);
                free(tail);
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
static int record(runner *r, const tq_run_outcome *o, const tq_artifact *arts, size_t n_arts)
{
    tq_worker *w = r->w;
    tq_slot *s = r->s;
    tq_backoff bo;
    tq_backoff_init(&bo, 250, 5000, TQ_BACKOFF_EXACT, 0);
    for (;;) {
        tq_errbuf eb = {{0}};
        int rc = tq_db_ensure(&r->db, w->cfg->database_url, "trainq-consumer-runner", &eb);
        if (rc == TQ_OK && o->verdict == TQ_RUN_RETRY) {
            rc = tq_cdb_retry(r->db, s->job_id, s->fencing, o->reason, w->cfg->max_attempts, &eb);
            if (rc == TQ_OK) {
                tq_log(TQ_LOG_WARN, "job.interrupted", "job %s given back: %s", s->job_id,
                       o->reason);
                tq_cmetrics_inc(TQ_CM_JOBS_REQUEUED);
                return 1;
            }
        } else if (rc == TQ_OK) {
            rc = tq_cdb_finish(r->db, s->job_id, s->fencing, o->status, o->exit_code,
                               o->error[0] ? o->error : NULL, o->reason, arts, n_arts, &eb);
        }
        if (rc == TQ_OK) {
            const char *status = tq_status_name(o->status);
            tq_logj(TQ_LOG_INFO, "job.finished",
                    json_pack("{s:s, s:s, s:i}", "job_id", s->job_id, "status", status, "exit_code",
                              o->exit_code),
                    "job %s %s (%s)", s->job_id, status, o->reason);
            tq_cmetrics_inc(finished_metric(o->status));
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
    if (tq_docker_remove(r->w->docker, r->s->container_id, 1, &eb) != TQ_OK)
        tq_log(TQ_LOG_WARN, "docker.remove_failed", "job %s: %s", r->s->job_id, eb.msg);
}

static void *runner_main(void *arg)
{
    runner *r = arg;
    tq_worker *w = r->w;
    tq_slot *s = r->s;
    for (;;) {
        pthread_mutex_lock(&w->mu);
        while (s->state != TQ_SLOT_RUNNING && !atomic_load(&w->stopping))
            pthread_cond_wait(&w->cv, &w->mu);
        pthread_mutex_unlock(&w->mu);
        if (atomic_load(&w->stopping))
            break;

        tq_run_outcome o;
        memset(&o, 0, sizeof o);
        char done_job[TQ_UUID_BUF] = "", done_container[TQ_DOCKER_ID_BUF] = "";
        output_begin(r);
        if (follow(r, &o) == 0) {
            output_end(r, 1);
            pthread_mutex_lock(&w->mu);
            s->state = TQ_SLOT_FINISHING;
            pthread_mutex_unlock(&w->mu);
            if (o.verdict == TQ_RUN_RETRY)
                remove_before_retry(r);
            tq_artifact *arts = NULL;
            size_t n_arts = 0;
            if (o.verdict == TQ_RUN_RECORD)
                scan_artifacts(r, &arts, &n_arts);
            int recorded = record(r, &o, arts, n_arts);
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
            if (tq_docker_remove(w->docker, done_container, 1, &eb) != TQ_OK)
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
}
