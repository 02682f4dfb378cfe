/*
 * start — a claimed job into its reserved slot (start.h): prepare, preflight, create and
 * start the container, mark it running. Runs on the slot's runner thread with the runner's
 * own connection, so the dispatcher picks for the next free slot while a container starts
 * (a slow dockerd or a large image no longer holds every other slot of the host).
 *
 * What must stay true:
 *  - a job that cannot start here for its own reason (the dataset) fails durably; for a
 *    reason of this host it is given back (tq_cdb_give_back), never lost: whatever the
 *    path, the slot is freed only once the job is running in it, recorded or given up;
 *  - the host-health counters (TRAINQ_HOST_ERROR_LIMIT launches in a row that failed for a
 *    reason of this host, the probe's backoff) are shared by every slot, under w->mu.
 */
#include "start.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cmetrics.h"
#include "launch.h"
#include "tq_db.h"
#include "tq_log.h"
#include "tq_utf8.h"

/* Whether this host may take a job now: healthy, or unhealthy with a probe due. */
int tq_host_usable(tq_worker *w)
{
    if (atomic_load(&w->host_ok))
        return 1;
    pthread_mutex_lock(&w->mu);
    double at = w->probe_at;
    pthread_mutex_unlock(&w->mu);
    return tq_mono_now() >= at;
}

/* A launch failed for a reason of this host. The counters change under w->mu; the log
 * line is written after it is released (the health endpoint waits on the same lock). */
static void host_error(tq_worker *w, const char *why)
{
    tq_cmetrics_inc(TQ_CM_HOST_ERRORS);
    pthread_mutex_lock(&w->mu);
    int errors = ++w->host_errors;
    if (errors < w->cfg->host_error_limit) {
        pthread_mutex_unlock(&w->mu);
        return;
    }
    int first = atomic_exchange(&w->host_ok, 0);
    if (first) {
        w->probe_wait_s = w->cfg->host_probe_seconds;
    } else {
        /* a failed probe: wait longer, up to 32 times the first wait */
        long cap = 32L * w->cfg->host_probe_seconds;
        w->probe_wait_s = w->probe_wait_s * 2 < cap ? w->probe_wait_s * 2 : cap;
    }
    long wait_s = w->probe_wait_s;
    w->probe_at = tq_mono_now() + (double)wait_s;
    snprintf(w->host_error, sizeof w->host_error, "%s", why);
    tq_utf8_clip(w->host_error, sizeof w->host_error - 1); /* a cut character is no text */
    pthread_mutex_unlock(&w->mu);
    tq_cmetrics_set(TQ_CM_HOST_HEALTHY, 0);
    if (first)
        tq_log(TQ_LOG_ERROR, "host.unhealthy",
               "%d launches in a row failed on this host; not consuming, next try in %ld s: %s",
               errors, wait_s, why);
    else
        tq_log(TQ_LOG_WARN, "host.probe_failed", "still cannot start jobs, next try in %ld s: %s",
               wait_s, why);
}

/* A job started: whatever failed before was not permanent. */
static void host_ok(tq_worker *w)
{
    pthread_mutex_lock(&w->mu);
    w->host_errors = 0;
    pthread_mutex_unlock(&w->mu);
    if (!atomic_exchange(&w->host_ok, 1)) {
        tq_log(TQ_LOG_INFO, "host.healthy", "a job started again; consuming");
        tq_cmetrics_set(TQ_CM_HOST_HEALTHY, 1);
    }
}

/* Fails a claimed job that cannot start here for a reason retrying will not fix: its
 * dataset (the preflight's dataset_error). */
static void fail_claimed(PGconn *db, const char *job_id, long long fencing, const char *why)
{
    tq_errbuf eb = {{0}};
    const tq_cdb_failure f = {.cls = "dataset_error", .message = why};
    if (tq_cdb_finish(db, job_id, fencing, TQ_STATUS_FAILED, -256, why, why, &f, NULL, 0, &eb) !=
        TQ_OK)
        tq_log(TQ_LOG_ERROR, "job.fail_failed", "could not record failure of job %s: %s", job_id,
               eb.msg);
    else {
        tq_cmetrics_inc(TQ_CM_JOBS_FAILED);
        tq_cmetrics_attempt_failed(TQ_FAIL_DATASET);
    }
    tq_log(TQ_LOG_WARN, "job.failed", "job %s failed before start: %s", job_id, why);
}

/* Gives a claimed job back: it could not start here for a reason of this host's. */
void tq_give_back_claim(tq_worker *w, PGconn *db, const tq_claim *cl, const char *why)
{
    const char *job_id = cl->job_id;
    tq_errbuf qb = {{0}};
    tq_give_back_outcome out = TQ_GIVEN_BACK;
    if (tq_cdb_give_back(db, job_id, cl->fencing_token, why, "host_error", w->cfg->max_host_retries,
                         &out, &qb) != TQ_OK) {
        /* Still claimed by us: our lease is no longer renewed (no slot holds it), so the
         * reaper recovers it within a lease. */
        tq_log(TQ_LOG_ERROR, "job.give_back_failed", "job %s: %s", job_id, qb.msg);
        return;
    }
    if (out != TQ_GIVE_BACK_FENCED)
        tq_cmetrics_attempt_failed(TQ_FAIL_HOST_ERROR);
    switch (out) {
    case TQ_GIVE_BACK_FENCED:
        tq_log(TQ_LOG_WARN, "job.fenced", "job %s: not given back, no longer ours", job_id);
        break;
    case TQ_GIVE_BACK_FAILED:
        tq_cmetrics_inc(TQ_CM_JOBS_FAILED);
        tq_log(TQ_LOG_WARN, "job.failed", "job %s failed: no worker could start it: %s", job_id,
               why);
        break;
    case TQ_GIVE_BACK_CANCELLED:
        tq_cmetrics_inc(TQ_CM_JOBS_CANCELLED);
        tq_log(TQ_LOG_INFO, "job.cancelled", "job %s cancelled before it started", job_id);
        break;
    case TQ_GIVEN_BACK:
        tq_cmetrics_inc(TQ_CM_JOBS_REQUEUED);
        tq_log(TQ_LOG_WARN, "job.requeued", "job %s given back: %s", job_id, why);
        break;
    }
}

/* Whether the job's retry resumes from a checkpoint: its outputs hold checkpoint-* and its
 * last attempt ended with host_lost or host_error (not the job's doing: a run of its own
 * that failed starts afresh). The outputs must be on storage every host shares for a
 * retry elsewhere to find them (docs/operations.md). */
static int resumes(tq_worker *w, PGconn *db, const char *job_id)
{
    char outputs[PATH_MAX], last[32] = "";
    if (snprintf(outputs, sizeof outputs, "%s/outputs/%s", w->cfg->data_dir, job_id) >=
            (int)sizeof outputs ||
        !tq_launch_has_checkpoint(outputs))
        return 0;
    tq_errbuf eb = {{0}};
    if (tq_cdb_last_failure(db, job_id, last, sizeof last, &eb) != TQ_OK) {
        tq_log(TQ_LOG_WARN, "job.resume_unknown", "job %s: %s; starting afresh", job_id, eb.msg);
        return 0;
    }
    return strcmp(last, "host_lost") == 0 || strcmp(last, "host_error") == 0;
}

typedef struct {
    PGconn *db;
    const char *worker_id;
    const tq_claim *cl;
} claim_check;

/* tq_launch_request.claim_held: the claim, asked of Postgres at the moment it matters. */
static int claim_held(void *arg)
{
    const claim_check *c = arg;
    return tq_cdb_claim_held(c->db, c->cl->job_id, c->worker_id, c->cl->fencing_token);
}

/* Launches a claimed job into slot `slot`. Returns 1 if the slot is now running it. */
static int launch(tq_worker *w, PGconn *db, int slot, const tq_claim *cl)
{
    const char *job_id = cl->job_id;
    tq_launch_paths paths;
    tq_errbuf eb = {{0}};
    char why[700];
    double t0 = tq_mono_now();
    int resume = resumes(w, db, job_id);
    int rc = tq_launch_prepare(w->cfg, &cl->job.sub, job_id, cl->storage_path, resume, &paths, &eb);
    /* The preflight, before any container exists: the dataset's own faults fail the job at
     * once (dataset_error); a training image missing here is this host's (host_error). */
    if (rc == TQ_OK)
        rc = tq_launch_preflight_dataset(paths.dataset, w->cfg->dataset_max_bytes, &eb);
    double t1 = tq_mono_now();
    if (rc == TQ_OK && resume)
        tq_logj(TQ_LOG_INFO, "job.resuming", json_pack("{s:s}", "job_id", job_id),
                "job %s resumes from its latest checkpoint", job_id);
    if (rc != TQ_OK) {
        if (rc != TQ_ERR_NOMEM && rc != TQ_ERR_IO) {
            fail_claimed(db, job_id, cl->fencing_token, eb.msg); /* the job's own fault */
            return 0;
        }
        /* A problem of this host (disk full, root not mounted): not the job's. */
        snprintf(why, sizeof why, "could not prepare the job on worker %s: %s", w->cfg->worker_id,
                 eb.msg);
        tq_give_back_claim(w, db, cl, why);
        host_error(w, why);
        return 0;
    }
    char cid[TQ_LAUNCHER_ID_BUF] = "";
    claim_check cc = {db, w->cfg->worker_id, cl};
    const tq_launch_request req = {slot, job_id, cl->job.user_id, &paths, claim_held, &cc};
    rc = w->launcher->ops->preflight_image(w->launcher->ctx, &eb);
    if (rc == TQ_OK)
        rc = w->launcher->ops->start(w->launcher->ctx, &req, cid, &eb);
    if (rc != TQ_OK) {
        /* Nothing a container does can fail here, only this host: give the job back so that
         * it keeps its place and another host (or this one later) starts it. */
        if (rc == TQ_ERR_NOT_FOUND)
            snprintf(why, sizeof why, "training image \"%s\" not found on worker %s",
                     w->cfg->training_image, w->cfg->worker_id);
        else if (rc == TQ_ERR_UNAVAILABLE)
            snprintf(why, sizeof why, "%s unavailable on worker %s: %s", w->launcher->ops->name,
                     w->cfg->worker_id, eb.msg);
        else
            snprintf(why, sizeof why, "could not start training container on worker %s: %s",
                     w->cfg->worker_id, eb.msg);
        tq_give_back_claim(w, db, cl, why);
        if (rc == TQ_ERR_UNAVAILABLE)
            atomic_store(&w->docker_ok, 0); /* the housekeeper's ping says when it is back */
        else if (rc != TQ_ERR_CONFLICT)
            host_error(w, why); /* a name still being removed is no fault of the host */
        return 0;
    }
    double t2 = tq_mono_now();
    int cancel = 0;
    rc = tq_cdb_mark_running(db, job_id, cl->fencing_token, cid, &cancel, &eb);
    tq_logj(TQ_LOG_DEBUG, "job.launch_timing",
            json_pack("{s:s, s:i, s:i, s:i}", "job_id", job_id, "prepare_us",
                      (int)((t1 - t0) * 1e6), "create_start_us", (int)((t2 - t1) * 1e6),
                      "mark_running_us", (int)((tq_mono_now() - t2) * 1e6)),
            "job %s launch phases", job_id);
    if (rc == TQ_ERR_CONFLICT) {
        /* Recovered by a reaper meanwhile: this container must not run. */
        tq_errbuf kb = {{0}};
        w->launcher->ops->remove(w->launcher->ctx, cid, &kb);
        tq_log(TQ_LOG_WARN, "job.fenced", "job %s: %s; container removed", job_id, eb.msg);
        return 0;
    }
    if (rc != TQ_OK)
        /* Still ours (fenced writes later will tell); the runner records the outcome. */
        tq_log(TQ_LOG_WARN, "db.mark_running_failed", "job %s: %s", job_id, eb.msg);
    tq_slot_run(w, slot, job_id, cid, cl->fencing_token, time(NULL), 0);
    if (cancel) {
        /* Requested while the container was being created: the heartbeat that would tell
         * the runner may be two intervals away (one begun before the slot was handed over
         * skips it), and the job would train until then. */
        atomic_store(&w->slots[slot].cancel, 1);
        tq_log(TQ_LOG_INFO, "job.cancel_requested", "job %s: cancellation requested", job_id);
    }
    host_ok(w);
    tq_cmetrics_inc(TQ_CM_JOBS_STARTED);
    /* created_epoch has microseconds: so must now, or a start within the second of its
     * submission is not observed and every other one is up to a second short */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    double now_epoch = (double)ts.tv_sec + ts.tv_nsec / 1e9;
    if (cl->created_epoch > 0 && now_epoch >= cl->created_epoch)
        tq_cmetrics_observe_dispatch(now_epoch - cl->created_epoch);
    tq_logj(TQ_LOG_INFO, "job.started",
            json_pack("{s:s, s:s, s:i, s:i}", "job_id", job_id, "container", cid, "slot", slot,
                      "attempt", cl->attempts),
            "job %s started in slot %d", job_id, slot);
    return 1;
}

int tq_start_claimed(tq_worker *w, PGconn **db, int slot, const tq_claim *cl)
{
    tq_errbuf eb = {{0}};
    /* The runner's connection may have idled since its last job: one the server closed
     * meanwhile (a restart) is replaced now, not found dead by the claim's first write. */
    if (*db && tq_db_idle_check(*db) < 0) {
        PQfinish(*db);
        *db = NULL;
    }
    if (tq_db_ensure(db, w->cfg->database_url, "trainq-consumer-runner", &eb) != TQ_OK) {
        /* Nothing can be recorded: the job stays claimed by us, and once the slot is free
         * its lease is no longer renewed, so the reaper gives it back within a lease. */
        tq_log(TQ_LOG_WARN, "job.launch_deferred", "job %s: no database to start it with: %s",
               cl->job_id, eb.msg);
        atomic_store(&w->db_ok, 0);
        return 0;
    }
    return launch(w, *db, slot, cl);
}
