#include "retention.h"

#include <pthread.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "pdb.h"
#include "tq_clock.h"
#include "tq_log.h"

/* Rows of outbox, of rate_limits and of webhook_deliveries per transaction, and jobs (each
 * with its audit, output and artifact rows, a few hundred rows for a chatty one) per
 * transaction: each batch stays far below the connection's 10 s statement timeout and holds its row
 * locks only briefly. */
#define RETENTION_BATCH 2000
#define RETENTION_JOB_BATCH 100
/* Batches in one pass at most (a backlog of millions goes over several passes), and the
 * pause between two, so the pruning never takes the database from the requests. */
#define RETENTION_MAX_BATCHES 500
#define RETENTION_PAUSE_MS 20

struct tq_retention {
    const tq_config *cfg;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop; /* under mu */
};

/* Waits ms or until stop; returns 1 when stopping. */
static int wait_ms(tq_retention *r, long ms)
{
    struct timespec ts = tq_mono_deadline(ms);
    pthread_mutex_lock(&r->mu);
    if (!r->stop)
        pthread_cond_timedwait(&r->cv, &r->mu, &ts);
    int stop = r->stop;
    pthread_mutex_unlock(&r->mu);
    return stop;
}

/* One pass: batches until none comes back full. */
static void prune_pass(tq_retention *r)
{
    const tq_config *c = r->cfg;
    tq_pdb_pruned sum = {0};
    int batches = 0;
    for (; batches < RETENTION_MAX_BATCHES; batches++) {
        tq_pdb_pruned got;
        tq_errbuf eb = {{0}};
        if (tq_pdb_retention_prune(c->outbox_retention_seconds, c->job_retention_seconds,
                                   RETENTION_BATCH, RETENTION_JOB_BATCH, &got, &eb) != TQ_OK) {
            tq_log(TQ_LOG_WARN, "retention.failed", "could not prune: %s", eb.msg);
            break;
        }
        sum.outbox_rows += got.outbox_rows;
        sum.rate_rows += got.rate_rows;
        sum.jobs += got.jobs;
        sum.webhook_rows += got.webhook_rows;
        if (got.outbox_rows < RETENTION_BATCH && got.rate_rows < RETENTION_BATCH &&
            got.jobs < RETENTION_JOB_BATCH && got.webhook_rows < RETENTION_BATCH)
            break;
        if (wait_ms(r, RETENTION_PAUSE_MS))
            break;
    }
    if (sum.outbox_rows + sum.rate_rows + sum.jobs + sum.webhook_rows > 0)
        tq_logj(TQ_LOG_INFO, "retention.pruned",
                json_pack("{s:I, s:I, s:I, s:I}", "outbox_rows", (json_int_t)sum.outbox_rows,
                          "rate_limit_rows", (json_int_t)sum.rate_rows, "jobs",
                          (json_int_t)sum.jobs, "webhook_rows", (json_int_t)sum.webhook_rows),
                "pruned %lld published outbox rows, %lld rate-limit rows, %lld finished jobs, "
                "%lld webhook deliveries",
                sum.outbox_rows, sum.rate_rows, sum.jobs, sum.webhook_rows);
}

static void *retention_main(void *arg)
{
    tq_retention *r = arg;
    long interval_ms = (long)r->cfg->retention_interval_seconds * 1000;
    /* The producers of a fleet started together spread their passes: the first comes
     * after a random half to whole interval. */
    unsigned seed = (unsigned)time(NULL) ^ (unsigned)getpid();
    long first = interval_ms / 2 + (long)(rand_r(&seed) % (unsigned)(interval_ms / 2 + 1));
    if (wait_ms(r, first))
        return NULL;
    do
        prune_pass(r);
    while (!wait_ms(r, interval_ms));
    return NULL;
}

int tq_retention_start(const tq_config *cfg, tq_retention **out, tq_errbuf *eb)
{
    *out = NULL;
    tq_retention *r = calloc(1, sizeof *r);
    if (!r)
        return tq_errf(eb, TQ_ERR_NOMEM, "out of memory");
    r->cfg = cfg;
    pthread_mutex_init(&r->mu, NULL);
    if (tq_cond_init_monotonic(&r->cv) != TQ_OK) {
        pthread_mutex_destroy(&r->mu);
        free(r);
        return tq_errf(eb, TQ_ERR_INTERNAL, "could not start the retention thread");
    }
    if (pthread_create(&r->thread, NULL, retention_main, r) != 0) {
        pthread_cond_destroy(&r->cv);
        pthread_mutex_destroy(&r->mu);
        free(r);
        return tq_errf(eb, TQ_ERR_INTERNAL, "could not start the retention thread");
    }
    *out = r;
    return TQ_OK;
}

void tq_retention_stop(tq_retention *r)
{
    if (!r)
        return;
    pthread_mutex_lock(&r->mu);
    r->stop = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->thread, NULL);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    free(r);
}
