/*
 * trainq-consumer: takes training jobs from RabbitMQ and runs them as Docker containers,
 * at most one per slot, at most N active per user across every host (worker.h has the
 * thread layout, docs/architecture.md the invariants).
 *
 * SIGTERM/SIGINT: stop consuming, settle the delivery in hand, leave running containers
 * alone (the next start adopts them), exit 0.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>

#include "adoption.h"
#include "cmetrics.h"
#include "coptions.h"
#include "dispatch.h"
#include "housekeeping.h"
#include "runner.h"
#include "tq_log.h"
#include "tq_program.h"
#include "tq_relay.h"
#include "worker.h"

/* A heartbeat waiting longer than this (and at least twice its interval) for Postgres makes
 * /healthz say so: a heartbeat's statement takes milliseconds. */
#define DB_SILENCE_MS 5000

/* How long the heartbeat under way has waited for Postgres, when that is past the silence
 * its answer normally comes within; else 0. */
static int64_t db_silent_ms(tq_worker *w)
{
    int64_t since = atomic_load(&w->db_wait_since_ms);
    int64_t silence = 2000LL * w->cfg->heartbeat_seconds;
    if (silence < DB_SILENCE_MS)
        silence = DB_SILENCE_MS;
    int64_t waited = since ? tq_mono_ms() - since : 0;
    return waited > silence ? waited : 0;
}

/* A Postgres that takes statements and never answers (stopped, a stalled disk, a network
 * that drops without a reset) keeps the heartbeat waiting up to the answer deadline, and
 * nothing fails meanwhile: main looks every second and says so in the log and the metric. */
static void db_watch(tq_worker *w)
{
    /* Under the housekeeper's lock for its report: a heartbeat answered between this look
     * and the log line must not be followed by a stale db.down (and a metric of 0). */
    pthread_mutex_lock(&w->db_seen_mu);
    int64_t waited = db_silent_ms(w);
    if (waited && atomic_exchange(&w->db_seen, 0) != 0)
        tq_log(TQ_LOG_WARN, "db.down", "postgres not answering for %lld s",
               (long long)(waited / 1000));
    if (waited)
        tq_cmetrics_set(TQ_CM_DB_UP, 0);
    pthread_mutex_unlock(&w->db_seen_mu);
}

static int health(void *arg, char *why, size_t cap)
{
    tq_worker *w = arg;
    int64_t waited = db_silent_ms(w);
    if (!atomic_load(&w->db_ok))
        snprintf(why, cap, "postgres unreachable");
    else if (waited)
        snprintf(why, cap, "postgres not answering for %lld s", (long long)(waited / 1000));
    else if (!atomic_load(&w->amqp_ok))
        snprintf(why, cap, "rabbitmq unreachable");
    else if (!atomic_load(&w->docker_ok))
        snprintf(why, cap, "dockerd unreachable");
    else if (!atomic_load(&w->host_ok)) {
        pthread_mutex_lock(&w->mu);
        snprintf(why, cap, "host cannot start jobs: %s", w->host_error);
        pthread_mutex_unlock(&w->mu);
    } else
        return 1;
    return 0;
}

/* The worker's shared state for cfg, slots included; -1 when memory ran out. */
static int worker_init(tq_worker *w, const tq_config *cfg)
{
    memset(w, 0, sizeof *w);
    w->cfg = cfg;
    if (gethostname(w->hostname, sizeof w->hostname) != 0)
        snprintf(w->hostname, sizeof w->hostname, "unknown");
    w->hostname[sizeof w->hostname - 1] = '\0';
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    w->started_at = (double)now.tv_sec + now.tv_nsec / 1e9;
    pthread_mutex_init(&w->mu, NULL);
    tq_cond_init_monotonic(&w->cv); /* tq_worker_sleep's deadlines are monotonic */
    w->n_slots = cfg->slots;
    w->slots = calloc((size_t)w->n_slots, sizeof *w->slots);
    atomic_store(&w->docker_ok, 1);
    atomic_store(&w->db_ok, 1);
    atomic_store(&w->db_seen, -1); /* neither db.up nor db.down logged yet */
    pthread_mutex_init(&w->db_seen_mu, NULL);
    atomic_store(&w->host_ok, 1);
    /* Unknown until the first heartbeat reads workers.draining: a drained worker that
     * restarts must not pick in the moment before it learns it is drained. */
    atomic_store(&w->draining, -1);
    return w->slots ? 0 : -1;
}

/* The launcher (launcher.h) and the metrics server: TQ_OK, or an error in eb (exit 2). */
static int open_host(tq_worker *w, tq_cmetrics_server **ms, tq_errbuf *eb)
{
    const tq_config *cfg = w->cfg;
    int rc = tq_launcher_docker_new(cfg, &w->launcher, eb);
    if (rc != TQ_OK)
        return rc;
    tq_cmetrics_set(TQ_CM_SLOTS_TOTAL, w->n_slots);
    tq_cmetrics_set(TQ_CM_HOST_HEALTHY, 1);
    int port = 0;
    rc = tq_cmetrics_start(cfg->metrics_host, cfg->metrics_port, health, w, ms, &port, eb);
    if (rc != TQ_OK)
        return rc;
    tq_logj(TQ_LOG_INFO, "consumer.starting",
            json_pack("{s:s, s:i, s:s, s:i}", "worker_id", cfg->worker_id, "slots", w->n_slots,
                      "gpus", cfg->gpus, "metrics_port", port),
            "trainq-consumer %s starting as worker %s with %d slot(s)", TRAINQ_VERSION,
            cfg->worker_id, w->n_slots);
    return TQ_OK;
}

static void replies_dropped(uint64_t n)
{
    tq_cmetrics_add(TQ_CM_REPLIES_DROPPED, (long)n);
}

/* Releases of parked jobs and retries are outbox rows: every consumer relays them, so a
 * deployment needs no producer for its queue to keep moving. */
static int start_relay(const tq_config *cfg, tq_relay **relay, tq_errbuf *eb)
{
    tq_relay_config rc_cfg = {.database_url = cfg->database_url,
                              .amqp_url = cfg->amqp_url,
                              .name = "trainq-consumer-relay",
                              .batch = cfg->relay_batch,
                              .sign_keys = &cfg->publish_keyring,
                              .on_replies_dropped = replies_dropped};
    if (cfg->publish_keyring.n == 0)
        tq_log(TQ_LOG_WARN, "consumer.unauthenticated_publishers",
               "TRAINQ_PUBLISH_KEYS is not set: direct publishers are not authenticated; anyone "
               "who can publish to exchange trainq.jobs can run jobs as any user");
    return tq_relay_start(&rc_cfg, relay, eb);
}

/* Starts the housekeeper, the dispatcher and the sweeper, waits for SIGTERM/SIGINT, then
 * stops and joins them. 0, 1 when a thread could not be started, or w->fatal (2: another
 * consumer uses this worker id, seen by the heartbeat). */
static int run_threads(tq_worker *w, sigset_t *sigs)
{
    pthread_t disp, hk, sw;
    int started = 0, exit_code = 0;
    if (pthread_create(&hk, NULL, tq_housekeeping_main, w) == 0)
        started |= 1;
    if (pthread_create(&disp, NULL, tq_dispatch_main, w) == 0)
        started |= 2;
    if (pthread_create(&sw, NULL, tq_sweeper_main, w) == 0)
        started |= 4;
    if (started != 7) {
        fprintf(stderr, "trainq-consumer: could not start threads\n");
        exit_code = 1;
    } else {
        /* consumer.ready is logged by the dispatcher once RabbitMQ answered and the
         * topology is declared. */
        int sig;
        const struct timespec tick = {.tv_sec = 1};
        while ((sig = sigtimedwait(sigs, NULL, &tick)) < 0 && !atomic_load(&w->fatal))
            db_watch(w); /* a second without a signal (EAGAIN), or EINTR */
        exit_code = atomic_load(&w->fatal);
        if (exit_code)
            tq_log(TQ_LOG_INFO, "consumer.stopping",
                   "another consumer uses this worker id: stopping; the containers this one "
                   "started are removed, those it adopted keep running");
        else
            tq_log(TQ_LOG_INFO, "consumer.stopping", "signal %d: stopping; containers keep running",
                   sig);
    }
    tq_worker_stop(w);
    if (started & 2)
        pthread_join(disp, NULL);
    if (started & 1)
        pthread_join(hk, NULL);
    if (started & 4)
        pthread_join(sw, NULL);
    return exit_code;
}

int main(int argc, char **argv)
{
    tq_config cfg;
    sigset_t sigs;
    int start = tq_program_start(&tq_consumer_options, &cfg, "trainq-consumer", argc, argv, &sigs);
    if (start != TQ_OK)
        return tq_program_exit_code(start);
    tq_errbuf eb = {{0}};
    srand((unsigned)getpid() ^ (unsigned)time(NULL));

    tq_worker w;
    int exit_code = 0;
    tq_cmetrics_server *ms = NULL;
    tq_relay *relay = NULL;
    int rc = worker_init(&w, &cfg) != 0 ? TQ_ERR_NOMEM : open_host(&w, &ms, &eb);
    if (rc == TQ_OK)
        rc = start_relay(&cfg, &relay, &eb);
    if (rc != TQ_OK) {
        fprintf(stderr, "trainq-consumer: %s\n", w.slots ? eb.msg : "out of memory");
        /* 2 is a setting that cannot work (systemd's unit does not restart it); a metrics
         * port another process holds, or memory, may be there on the next start: 1. */
        exit_code = rc == TQ_ERR_IO || rc == TQ_ERR_NOMEM ? 1 : 2;
        goto out;
    }
    if (tq_runners_start(&w) != TQ_OK) {
        fprintf(stderr, "trainq-consumer: could not start runner threads\n");
        atomic_store(&w.stopping, 1);
        tq_runners_join(&w);
        exit_code = 1;
        goto out;
    }
    /* Adoption runs before consuming. It only waits with tq_worker_sleep, so a SIGTERM
     * during it is handled after it returns. */
    tq_worker_adopt(&w);
    if (atomic_load(&w.fatal)) { /* another consumer uses this worker id */
        exit_code = atomic_load(&w.fatal);
        tq_worker_stop(&w);
    } else {
        exit_code = run_threads(&w, &sigs);
    }
    tq_runners_join(&w);
    tq_relay_stop(relay, 2000);
    relay = NULL;
    tq_log(TQ_LOG_INFO, "consumer.stopped", "worker %s stopped", cfg.worker_id);
out:
    tq_relay_stop(relay, 0);
    tq_cmetrics_stop(ms);
    tq_launcher_free(w.launcher);
    free(w.slots);
    pthread_cond_destroy(&w.cv);
    pthread_mutex_destroy(&w.mu);
    tq_consumer_config_free(&cfg);
    curl_global_cleanup();
    return exit_code;
}
