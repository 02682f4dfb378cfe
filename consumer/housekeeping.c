/*
 * The housekeeper: everything periodic of one consumer, on its own Postgres connection.
 *
 *  - heartbeat: renews this worker's row and the lease of its active jobs; compares what
 *    the database still gives this worker with its slots (a job missing there was taken
 *    over by a reaper: its runner kills the container) and picks up cancellations;
 *  - health: pings dockerd and Postgres, so the dispatcher consumes only while both answer;
 *  - the sweeper thread (tq_sweeper_main, its own connection): the reaper recovers jobs
 *    whose worker stopped renewing its lease; the sweeper releases parked jobs whose user
 *    has room and republishes stranded ones (db/procedures/40_dispatch.sql).
 *
 * Start-up adoption (adoption.c) runs before these threads start.
 */
#include "housekeeping.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cdb.h"
#include "cmetrics.h"
#include "tq_db.h"
#include "tq_clock.h"
#include "tq_log.h"
#include "tq_utf8.h"
#include "worker.h"

typedef struct {
    tq_worker *w;
    PGconn *db;
    int beats;       /* heartbeats written */
    int twin_warned; /* a newer consumer with this worker id was logged */
    /* Heartbeats that found the row written by another process, and the last one's
     * tq_mono_now(): one may be a dead predecessor's write committed late (or lost and
     * replayed by a failover), a live consumer writes again within its lease. */
    int twin_sightings;
    double twin_last;
} housekeeper;

/* How long a consumer row's heartbeat is watched for a live writer: two heartbeats, the
 * docker ping each round may wait for (2 s), and a second, within the lease. Assumes the other
 * consumer's TRAINQ_HEARTBEAT_SECONDS is no longer than this one's; the heartbeats' own check
 * (twin_seen) finds one with a longer cadence. */
static double id_watch_seconds(const tq_worker *w)
{
    /* ... and never so long that the dead predecessor's leases (renewed at its last
     * heartbeat) expire before adoption: the reaper would give its running jobs to another
     * worker while their containers still run here */
    double watch = 2.0 * w->cfg->heartbeat_seconds + 3.0;
    double cap = w->cfg->lease_seconds - w->cfg->heartbeat_seconds - 1.0;
    return watch < cap ? watch : cap;
}

static int id_in_use(tq_worker *w, const tq_cdb_worker_row *o, tq_errbuf *eb)
{
    return tq_errf(eb, TQ_ERR_CONFLICT,
                   "worker id %s is in use by a running consumer on host %.*s (started %.1f s "
                   "before this one, its heartbeat %.1f s ago): give each consumer its own "
                   "TRAINQ_WORKER_ID",
                   w->cfg->worker_id, TQ_UTF8_ARG(o->hostname, 200), w->started_at - o->started_at,
                   o->heartbeat_age);
}

int tq_worker_id_check(tq_worker *w, PGconn *db, int (*stop_pending)(void), tq_errbuf *eb)
{
    tq_cdb_worker_row first, now;
    int rc = tq_cdb_worker_seen(db, w->cfg->worker_id, &first, eb);
    if (rc == TQ_ERR_NOT_FOUND)
        return TQ_OK;
    if (rc != TQ_OK)
        return rc;
    double watch = id_watch_seconds(w);
    if (first.stopped || first.heartbeat_age > watch)
        return TQ_OK;
    tq_log(TQ_LOG_INFO, "worker.id_watch",
           "worker %s: its row was not marked stopped and was written %.1f s ago: watching it "
           "for up to %.0f s for another consumer using this id",
           w->cfg->worker_id, first.heartbeat_age, watch - first.heartbeat_age);
    double until = tq_mono_now() + watch - first.heartbeat_age;
    while (tq_mono_now() < until) {
        if (stop_pending() || tq_worker_sleep(w, 250))
            return TQ_OK; /* stopping: nothing will be adopted */
        rc = tq_cdb_worker_seen(db, w->cfg->worker_id, &now, eb);
        if (rc == TQ_ERR_NOT_FOUND || (rc == TQ_OK && now.stopped))
            return TQ_OK;
        if (rc != TQ_OK)
            return rc;
        if (now.heartbeat_at != first.heartbeat_at)
            return id_in_use(w, &now, eb);
    }
    return TQ_OK;
}

/* Another process wrote this worker's row since its last heartbeat: two consumers use one
 * worker id, and each would take the other's jobs and containers for its own. Seen twice
 * (within two leases), the one that started later stops (exit 2: a setting to fix, not a
 * fault a restart mends); the other goes on and says so once. */
static void twin_seen(housekeeper *h, const tq_cdb_worker_row *o)
{
    tq_worker *w = h->w;
    double now = tq_mono_now();
    if (h->twin_sightings > 0 && now - h->twin_last > 2.0 * w->cfg->lease_seconds)
        h->twin_sightings = 0; /* long ago: that one was a stray write */
    h->twin_last = now;
    if (++h->twin_sightings < 2)
        return;
    if (o->started_at > w->started_at) {
        if (!h->twin_warned)
            tq_log(TQ_LOG_WARN, "worker.duplicate_id",
                   "worker id %s is also used by a consumer on host %.*s that started %.1f s "
                   "after this one; the other one started later and stops",
                   w->cfg->worker_id, TQ_UTF8_ARG(o->hostname, 200), o->started_at - w->started_at);
        h->twin_warned = 1;
        return;
    }
    tq_errbuf eb = {{0}};
    id_in_use(w, o, &eb);
    tq_log(TQ_LOG_ERROR, "worker.duplicate_id", "%s; this one started later and stops", eb.msg);
    atomic_store(&w->fatal, 2);
    tq_worker_stop(w); /* now: no new claim in the moment before main sees it */
}

static void health_docker(housekeeper *h)
{
    tq_worker *w = h->w;
    tq_errbuf eb = {{0}};
    /* the launcher pings with a short timeout of its own: a hung runtime must not delay
     * the leases renewed in the same loop */
    int ok = w->launcher->ops->ping(w->launcher->ctx, &eb) == TQ_OK;
    int was = atomic_exchange(&w->docker_ok, ok);
    if (was != ok)
        tq_log(ok ? TQ_LOG_INFO : TQ_LOG_WARN, ok ? "docker.up" : "docker.down", "%s",
               ok ? "dockerd answers" : eb.msg);
    tq_cmetrics_set(TQ_CM_DOCKER_UP, ok);
}

/* Other threads also clear db_ok when their queries fail; the log follows the heartbeats
 * (and main's watch of one that hangs, w->db_seen) so that every outage is logged once,
 * down and up. */
static void set_db_ok(housekeeper *h, int ok, const char *why)
{
    atomic_store(&h->w->db_ok, ok);
    pthread_mutex_lock(&h->w->db_seen_mu);
    if (atomic_exchange(&h->w->db_seen, ok) != ok)
        tq_log(ok ? TQ_LOG_INFO : TQ_LOG_WARN, ok ? "db.up" : "db.down", "%s",
               ok ? "postgres answers" : why);
    tq_cmetrics_set(TQ_CM_DB_UP, ok);
    pthread_mutex_unlock(&h->w->db_seen_mu);
}

static void heartbeat(housekeeper *h)
{
    tq_worker *w = h->w;
    double t0 = tq_mono_now();
    tq_cdb_active *act = NULL;
    size_t n = 0;
    tq_errbuf eb = {{0}};
    char held[TQ_SLOTS_HELD_BUF];
    tq_slots_held(w, held, sizeof held);
    tq_cdb_worker_state ws = {
        .worker_id = w->cfg->worker_id,
        .hostname = w->hostname,
        .slots = w->n_slots,
        .busy = w->n_slots - tq_slots_free(w),
        .gpus = w->cfg->gpus,
        .healthy = atomic_load(&w->host_ok) && atomic_load(&w->docker_ok),
        .started_at = w->started_at,
    };
    int draining = 0;
    tq_cdb_worker_row other;
    atomic_store(&w->db_wait_since_ms, tq_mono_ms());
    int rc =
        tq_cdb_heartbeat(h->db, &ws, w->cfg->lease_seconds, held, &draining, &other, &act, &n, &eb);
    atomic_store(&w->db_wait_since_ms, 0);
    if (rc != TQ_OK) {
        set_db_ok(h, 0, eb.msg);
        return;
    }
    /* The first heartbeat overwrites a predecessor's row (tq_worker_id_check judged it). */
    if (h->beats++ > 0 && other.started_at > 0)
        twin_seen(h, &other);
    int was = atomic_exchange(&w->draining, draining);
    if (was != draining && (was != -1 || draining)) /* not "no longer draining" at start */
        tq_log(TQ_LOG_INFO, "worker.drain", "worker %s %s", w->cfg->worker_id,
               draining ? "draining: takes no new jobs" : "no longer draining");
    set_db_ok(h, 1, NULL);
    pthread_mutex_lock(&w->mu);
    for (int i = 0; i < w->n_slots; i++) {
        tq_slot *s = &w->slots[i];
        /* A slot handed over after this heartbeat began may be missing from its answer, and
         * one whose runner is recording the outcome has just left it on purpose. */
        if (s->state != TQ_SLOT_RUNNING || s->assigned_mono >= t0)
            continue;
        int found = 0;
        for (size_t k = 0; k < n; k++)
            if (strcmp(act[k].job_id, s->job_id) == 0 && act[k].fencing_token == s->fencing) {
                found = 1;
                if (act[k].cancel_requested && !atomic_exchange(&s->cancel, 1))
                    tq_log(TQ_LOG_INFO, "job.cancel_requested", "job %s: cancellation requested",
                           s->job_id);
            }
        if (!found && !atomic_exchange(&s->lost, 1))
            tq_log(TQ_LOG_WARN, "job.lease_lost", "job %s is no longer held by this worker",
                   s->job_id);
    }
    pthread_mutex_unlock(&w->mu);
    free(act);
}

/* The sweeper thread: the reaper and the sweeper, on a connection of their own, so a slow
 * sweep (a user's lock held elsewhere, a big backlog) never delays this worker's own lease
 * renewal in the housekeeper. A reaper that has itself just come back to Postgres waits a
 * full lease first: after an outage every lease looks expired, and the workers that are
 * alive need a heartbeat to renew theirs before anybody takes their jobs away. */
void *tq_sweeper_main(void *arg)
{
    tq_worker *w = arg;
    PGconn *db = NULL;
    double up_since = -1; /* monotonic time since when this connection has answered */
    tq_cdb_usage usage = {0};
    while (!atomic_load(&w->stopping)) {
        tq_errbuf eb = {{0}};
        int recovered = 0, released = 0;
        int rc = tq_db_ensure(&db, w->cfg->database_url, "trainq-consumer-sweeper", &eb);
        if (rc == TQ_OK && up_since < 0)
            up_since = tq_mono_now();
        if (rc == TQ_OK && tq_mono_now() - up_since >= (double)w->cfg->lease_seconds) {
            rc = tq_cdb_reap(db, w->cfg->max_attempts, &recovered, &eb);
            if (rc == TQ_OK && recovered) {
                tq_log(TQ_LOG_INFO, "reaper.round", "recovered %d job(s)", recovered);
                tq_cmetrics_add(TQ_CM_JOBS_RECOVERED, recovered);
            }
        }
        if (rc == TQ_OK) {
            /* The queue's ready count is only trusted while fresh: unknown, the stranded
             * repair waits rather than republish jobs that may still be queued. */
            double at = atomic_load(&w->queue_ready_at);
            long long in_queue = at > 0 && tq_mono_now() - at < 3.0 * w->cfg->sweep_seconds + 5
                                     ? atomic_load(&w->queue_ready)
                                     : -1;
            rc = tq_cdb_sweep(db, w->cfg->stranded_seconds, in_queue, &released, &eb);
            /* Only a wake-up since 0012 (db/procedures/40_dispatch.sql): the pickers of
             * every host look again; nothing is republished. */
            if (rc == TQ_OK && released)
                tq_log(TQ_LOG_DEBUG, "sweeper.woke",
                       "%d user(s) have queued jobs with room: pickers woken", released);
        }
        if (rc == TQ_OK && (rc = tq_cdb_usage_totals(db, &usage, &eb)) == TQ_OK) {
            tq_cmetrics_set(TQ_CM_CLUSTER_ATTEMPTS, (long)usage.attempts);
            tq_cmetrics_set(TQ_CM_CLUSTER_GPU_SECONDS, (long)usage.gpu_seconds);
            tq_cmetrics_set(TQ_CM_CLUSTER_WALL_SECONDS, (long)usage.wall_seconds);
        }
        if (rc != TQ_OK) {
            tq_log(TQ_LOG_WARN, "sweeper.failed", "%s", eb.msg);
            if (!db || PQstatus(db) != CONNECTION_OK)
                up_since = -1;
        }
        tq_worker_sleep(w, (long)w->cfg->sweep_seconds * 1000);
    }
    if (db)
        PQfinish(db);
    return NULL;
}

void *tq_housekeeping_main(void *arg)
{
    housekeeper h = {.w = arg};
    tq_worker *w = h.w;
    tq_errbuf eb = {{0}};
    while (!atomic_load(&w->stopping)) {
        /* Leases first: nothing else in this loop may delay them. */
        if (tq_db_ensure(&h.db, w->cfg->database_url, "trainq-consumer-housekeeper", &eb) !=
            TQ_OK) {
            set_db_ok(&h, 0, eb.msg);
        } else {
            heartbeat(&h);
        }
        health_docker(&h);
        tq_worker_sleep(w, (long)w->cfg->heartbeat_seconds * 1000);
    }
    if (h.db) {
        /* Containers keep running across a clean stop (a deploy): give the restart time to
         * adopt them before anybody else retries their jobs. */
        char held[TQ_SLOTS_HELD_BUF];
        tq_slots_held(w, held, sizeof held);
        /* (Not when another consumer has this id: nothing restarts this one to adopt.) */
        if (w->cfg->restart_grace_seconds > 0 && strcmp(held, "{}") != 0 &&
            !atomic_load(&w->fatal)) {
            if (tq_cdb_extend_leases(h.db, w->cfg->worker_id, held, w->cfg->restart_grace_seconds,
                                     &eb) == TQ_OK)
                tq_log(TQ_LOG_INFO, "consumer.leases_extended",
                       "leases of %s extended by %d s for the restart", held,
                       w->cfg->restart_grace_seconds);
            else
                tq_log(TQ_LOG_WARN, "consumer.leases_not_extended", "%s", eb.msg);
        }
        if (!atomic_load(&w->fatal)) /* else the row is the other consumer's */
            tq_cdb_worker_stopped(h.db, w->cfg->worker_id, &eb);
        PQfinish(h.db);
    }
    return NULL;
}
