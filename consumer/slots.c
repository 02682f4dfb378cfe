/*
 * Slots and their runners. A runner follows one container at a time: it waits for the
 * exit in short rounds (so cancellation, overrun, a lost lease and shutdown are noticed
 * within ~2 s), then records the outcome with the claim's fencing token and releases the
 * user's next parked job in the same transaction (cdb.c), then frees the slot.
 *
 * On shutdown a runner leaves its container alone: the next start of this worker adopts
 * it (housekeeping.c), so a restart never kills a training run.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cdb.h"
#include "cmetrics.h"
#include "tq_db.h"
#include "tq_log.h"
#include "tq_utf8.h"
#include "worker.h"

#define WAIT_ROUND_MS 2000
#define LOG_TAIL_LINES 20

int tq_worker_sleep(tq_worker *w, long ms)
{
    /* w->cv measures on CLOCK_MONOTONIC (tq_cond_init_monotonic): a wall-clock step must
     * not stretch the housekeeper's sleep past a lease. */
    struct timespec until = tq_mono_deadline(ms);
    pthread_mutex_lock(&w->mu);
    while (!atomic_load(&w->stopping)) {
        if (pthread_cond_timedwait(&w->cv, &w->mu, &until) == ETIMEDOUT)
            break;
    }
    int stopping = atomic_load(&w->stopping);
    pthread_mutex_unlock(&w->mu);
    return stopping;
}

int tq_slots_free(tq_worker *w)
{
    int n = 0;
    pthread_mutex_lock(&w->mu);
    for (int i = 0; i < w->n_slots; i++)
        n += w->slots[i].state == TQ_SLOT_FREE;
    pthread_mutex_unlock(&w->mu);
    return n;
}

int tq_slot_reserve(tq_worker *w, const char *job_id)
{
    int got = -1;
    pthread_mutex_lock(&w->mu);
    for (int i = 0; i < w->n_slots && got < 0; i++)
        if (w->slots[i].state == TQ_SLOT_FREE) {
            w->slots[i].state = TQ_SLOT_RESERVED;
            snprintf(w->slots[i].job_id, sizeof w->slots[i].job_id, "%s", job_id);
            got = i;
        }
    pthread_mutex_unlock(&w->mu);
    tq_cmetrics_set(TQ_CM_SLOTS_BUSY, w->n_slots - tq_slots_free(w));
    return got;
}

void tq_slots_held(tq_worker *w, char *out, size_t cap)
{
    size_t used = (size_t)snprintf(out, cap, "{");
    pthread_mutex_lock(&w->mu);
    for (int i = 0; i < w->n_slots && used < cap; i++)
        if (w->slots[i].state != TQ_SLOT_FREE && w->slots[i].job_id[0])
            used += (size_t)snprintf(out + used, cap - used, "%s%s", used > 1 ? "," : "",
                                     w->slots[i].job_id);
    pthread_mutex_unlock(&w->mu);
    if (used < cap)
        snprintf(out + used, cap - used, "}");
}

void tq_slot_free(tq_worker *w, int i)
{
    pthread_mutex_lock(&w->mu);
    w->slots[i].state = TQ_SLOT_FREE;
    w->slots[i].job_id[0] = '\0';
    w->slots[i].container_id[0] = '\0';
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    tq_cmetrics_set(TQ_CM_SLOTS_BUSY, w->n_slots - tq_slots_free(w));
}

void tq_slot_run(tq_worker *w, int i, const char *job_id, const char *container_id,
                 long long fencing, time_t started_wall)
{
    pthread_mutex_lock(&w->mu);
    tq_slot *s = &w->slots[i];
    snprintf(s->job_id, sizeof s->job_id, "%s", job_id);
    snprintf(s->container_id, sizeof s->container_id, "%s", container_id);
    s->fencing = fencing;
    s->started_wall = started_wall;
    s->assigned_mono = tq_mono_now();
    atomic_store(&s->cancel, 0);
    atomic_store(&s->lost, 0);
    s->state = TQ_SLOT_RUNNING;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

typedef struct {
    tq_worker *w;
    tq_slot *s;
    PGconn *db;
} runner;

/* The container's end, as the job's outcome. */
typedef struct {
    const char *status; /* NULL: interrupted by an outage, retry the job */
    int exit_code; /* < -255: none */
    char error[4608];
    char reason[256];
} outcome;

static void describe_exit(runner *r, int exit_code, int oom, outcome *o)
{
    tq_slot *s = r->s;
    char *tail = NULL;
    tq_errbuf eb = {{0}};
    tq_docker_logs_tail(r->w->docker, s->container_id, LOG_TAIL_LINES, &tail, &eb);
    o->status = "failed";
    o->exit_code = exit_code;
    /* The tail is sanitised (tq_log_demux_finish); a cut must not split a character. */
    int n = snprintf(o->error, sizeof o->error, "training exited with code %d%s%s%s", exit_code,
                     oom ? " (killed: out of memory)" : "", tail && *tail ? ": " : "",
                     tail ? tail : "");
    if (n >= (int)sizeof o->error)
        tq_utf8_clip(o->error, sizeof o->error - 1);
    snprintf(o->reason, sizeof o->reason, "exit code %d%s", exit_code, oom ? ", out of memory" : "");
    free(tail);
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

/* Waits for the container to end. Returns 0 with *o filled, or 1 when the worker is
 * stopping or the job was taken away (lost lease): then nothing is to be recorded. */
static int follow(runner *r, outcome *o)
{
    tq_worker *w = r->w;
    tq_slot *s = r->s;
    const tq_config *cfg = w->cfg;
    int stop_sent = 0, overrun = 0, outage = 0;
    long backoff = 500;
    for (;;) {
        if (atomic_load(&w->stopping))
            return 1;
        if (atomic_load(&s->lost)) {
            /* Another worker may run this job now: make sure ours does not go on. */
            tq_errbuf eb = {{0}};
            tq_docker_kill(w->docker, s->container_id, &eb);
            tq_docker_remove(w->docker, s->container_id, 1, &eb);
            tq_log(TQ_LOG_WARN, "job.lease_lost",
                   "job %s: lease lost, container %.12s killed; the job belongs to another "
                   "worker now",
                   s->job_id, s->container_id);
            return 1;
        }
        time_t now = time(NULL);
        if (!stop_sent && (atomic_load(&s->cancel) ||
                           now - s->started_wall >= (time_t)cfg->max_run_seconds)) {
            overrun = !atomic_load(&s->cancel);
            stop_sent = 1;
            tq_errbuf eb = {{0}};
            tq_log(TQ_LOG_INFO, overrun ? "job.overrun" : "job.cancelling",
                   "job %s: stopping container %.12s (grace %d s)", s->job_id, s->container_id,
                   cfg->stop_grace_seconds);
            if (tq_docker_stop(w->docker, s->container_id, cfg->stop_grace_seconds, &eb) != TQ_OK) {
                tq_log(TQ_LOG_WARN, "docker.stop_failed", "job %s: %s", s->job_id, eb.msg);
                stop_sent = 0; /* try again next round */
            }
        }
        int code = -1;
        tq_errbuf eb = {{0}};
        int rc = tq_docker_wait(w->docker, s->container_id, WAIT_ROUND_MS, &code, &eb);
        if (rc == TQ_ERR_TIMEOUT)
            continue;
        if (rc == TQ_OK) {
            atomic_store(&w->docker_ok, 1);
            /* Only a failed exit needs the OOM flag: skipping the inspect on success takes
             * a round trip to a busy dockerd off the release path. */
            int oom = 0;
            if (code != 0) {
                tq_container_state st;
                memset(&st, 0, sizeof st);
                oom = tq_docker_inspect(w->docker, s->container_id, &st, &eb) == TQ_OK &&
                      st.oom_killed;
            }
            /* Killed by a signal we did not send: dockerd shutting down (no live-restore)
             * stops its containers and may still answer this wait before it goes. */
            if (!stop_sent && !oom && (code == 137 || code == 143) && dockerd_going_away(w))
                outage = 1;
            if (atomic_load(&s->cancel)) {
                o->status = "cancelled";
                o->exit_code = code;
                o->error[0] = '\0';
                snprintf(o->reason, sizeof o->reason, "cancelled by user");
            } else if (overrun) {
                o->status = "failed";
                o->exit_code = code;
                snprintf(o->error, sizeof o->error, "exceeded the maximum run time of %d s",
                         cfg->max_run_seconds);
                snprintf(o->reason, sizeof o->reason, "maximum run time exceeded");
            } else if (outage && code != 0) {
                /* dockerd went away while the job ran: without live-restore it took the
                 * container with it. Not the job's fault: retry it (bounded). */
                o->status = NULL;
                o->exit_code = code;
                snprintf(o->reason, sizeof o->reason,
                         "container %.12s ended with code %d while dockerd was unreachable",
                         s->container_id, code);
            } else if (code == 0 && !oom) {
                o->status = "completed";
                o->exit_code = 0;
                o->error[0] = '\0';
                snprintf(o->reason, sizeof o->reason, "exit code 0");
            } else {
                describe_exit(r, code, oom, o);
            }
            return 0;
        }
        if (rc == TQ_ERR_NOT_FOUND) {
            o->status = atomic_load(&s->cancel) ? "cancelled" : "failed";
            o->exit_code = -256;
            snprintf(o->error, sizeof o->error, "%s",
                     atomic_load(&s->cancel) ? "" : "training container disappeared");
            snprintf(o->reason, sizeof o->reason, "container %.12s no longer exists",
                     s->container_id);
            return 0;
        }
        /* dockerd unreachable or failing: the container keeps running without it; look
         * again with backoff. */
        outage = 1;
        if (atomic_exchange(&w->docker_ok, 0))
            tq_log(TQ_LOG_WARN, "docker.down", "could not follow job %s: %s", s->job_id, eb.msg);
        if (tq_worker_sleep(w, backoff))
            return 1;
        backoff = backoff < 8000 ? backoff * 2 : 8000;
    }
}

/* Records the outcome; retries while Postgres is away. Returns 1 if recorded or fenced
 * out (done either way), 0 when stopping first. */
static int record(runner *r, const outcome *o)
{
    tq_worker *w = r->w;
    tq_slot *s = r->s;
    long backoff = 250;
    for (;;) {
        tq_errbuf eb = {{0}};
        int rc = tq_db_ensure(&r->db, w->cfg->database_url, "trainq-consumer-runner", &eb);
        if (rc == TQ_OK && !o->status) {
            rc = tq_cdb_retry(r->db, s->job_id, s->fencing, o->reason, w->cfg->max_attempts, &eb);
            if (rc == TQ_OK) {
                tq_log(TQ_LOG_WARN, "job.interrupted", "job %s given back: %s", s->job_id,
                       o->reason);
                tq_cmetrics_inc(TQ_CM_JOBS_REQUEUED);
                return 1;
            }
        } else if (rc == TQ_OK) {
            tq_job_status st = TQ_STATUS_FAILED;
            tq_status_parse(o->status, &st);
            rc = tq_cdb_finish(r->db, s->job_id, s->fencing, st, o->exit_code,
                               o->error[0] ? o->error : NULL, o->reason, &eb);
        }
        if (rc == TQ_OK) {
            tq_logj(TQ_LOG_INFO, "job.finished",
                    json_pack("{s:s, s:s, s:i}", "job_id", s->job_id, "status", o->status,
                              "exit_code", o->exit_code),
                    "job %s %s (%s)", s->job_id, o->status, o->reason);
            tq_cmetrics_inc(strcmp(o->status, "completed") == 0   ? TQ_CM_JOBS_COMPLETED
                            : strcmp(o->status, "cancelled") == 0 ? TQ_CM_JOBS_CANCELLED
                                                                   : TQ_CM_JOBS_FAILED);
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
        if (tq_worker_sleep(w, backoff))
            return 0;
        backoff = backoff < 5000 ? backoff * 2 : 5000;
    }
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

        outcome o;
        memset(&o, 0, sizeof o);
        char done_job[37] = "", done_container[65] = "";
        if (follow(r, &o) == 0) {
            pthread_mutex_lock(&w->mu);
            s->state = TQ_SLOT_FINISHING;
            pthread_mutex_unlock(&w->mu);
            if (!o.status) {
                /* Retried: the job may come straight back to this host, whose next container
                 * of the same name must not meet this one still being removed. So the old
                 * one goes first, and the slot is freed only after it (best effort: with
                 * dockerd away, the next launch replaces or waits for it, see launch.h). */
                tq_errbuf eb = {{0}};
                if (tq_docker_remove(w->docker, s->container_id, 1, &eb) != TQ_OK)
                    tq_log(TQ_LOG_WARN, "docker.remove_failed", "job %s: %s", s->job_id, eb.msg);
            }
            if (!record(r, &o))
                break; /* stopping: the container stays for adoption */
            if (w->cfg->remove_containers && o.status) {
                memcpy(done_job, s->job_id, sizeof done_job);
                memcpy(done_container, s->container_id, sizeof done_container);
            }
        } else if (atomic_load(&w->stopping)) {
            break;
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
    if (r->db)
        PQfinish(r->db);
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
        w->slots[i].index = i;
        if (pthread_create(&w->slots[i].thread, NULL, runner_main, r) != 0) {
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
