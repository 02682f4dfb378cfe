/*
 * The Docker Engine launcher (launcher.h): a unit is the container training-<job_id>, made
 * by tq_launch_container (launch.h) and followed through docker.h. Two handles: the main
 * one for everything, and one with a short timeout for ping, so a hung dockerd cannot hold
 * up the housekeeper's health check (and with it the renewal of leases).
 */
#include "launcher.h"

#include <stdio.h>
#include <stdlib.h>

#include "container_spec.h"
#include "coptions.h"
#include "docker.h"
#include "launch.h"

#define PING_MAX_BODY (64 * 1024)
#define PING_TIMEOUT_MS 2000L

typedef struct {
    const tq_config *cfg;
    tq_docker *d;
    tq_docker *ping;
} docker_launcher;

static int dl_ping(void *ctx, tq_errbuf *eb)
{
    docker_launcher *l = ctx;
    return tq_docker_ping(l->ping, eb);
}

static int dl_preflight_image(void *ctx, tq_errbuf *eb)
{
    docker_launcher *l = ctx;
    return tq_docker_image_exists(l->d, l->cfg->training_image, eb);
}

static int dl_start(void *ctx, const tq_launch_request *req, char id[TQ_LAUNCHER_ID_BUF],
                    tq_errbuf *eb)
{
    docker_launcher *l = ctx;
    return tq_launch_container(l->d, l->cfg, req->slot, req->job_id, req->user_id,
                               l->cfg->worker_id, req->paths, req->claim_held, req->claim_held_arg,
                               id, eb);
}

static int dl_start_existing(void *ctx, const char *id, tq_errbuf *eb)
{
    return tq_docker_start(((docker_launcher *)ctx)->d, id, eb);
}

static int dl_wait(void *ctx, const char *id, long timeout_ms, int *exit_code, tq_errbuf *eb)
{
    return tq_docker_wait(((docker_launcher *)ctx)->d, id, timeout_ms, exit_code, eb);
}

static int dl_inspect(void *ctx, const char *id, tq_container_state *st, tq_errbuf *eb)
{
    return tq_docker_inspect(((docker_launcher *)ctx)->d, id, st, eb);
}

static int dl_logs_tail(void *ctx, const char *id, int lines, int stderr_only, char **out,
                        tq_errbuf *eb)
{
    return tq_docker_logs_tail(((docker_launcher *)ctx)->d, id, lines, stderr_only, out, eb);
}

static int dl_attach(void *ctx, const char *id, int replay, tq_log_sink_fn sink, void *arg,
                     const atomic_int *stop, tq_errbuf *eb)
{
    return tq_docker_attach(((docker_launcher *)ctx)->d, id, replay, sink, arg, stop, eb);
}

static int dl_stop(void *ctx, const char *id, int grace_seconds, tq_errbuf *eb)
{
    return tq_docker_stop(((docker_launcher *)ctx)->d, id, grace_seconds, eb);
}

static int dl_kill(void *ctx, const char *id, tq_errbuf *eb)
{
    return tq_docker_kill(((docker_launcher *)ctx)->d, id, eb);
}

static int dl_remove(void *ctx, const char *id, tq_errbuf *eb)
{
    return tq_docker_remove(((docker_launcher *)ctx)->d, id, 1, eb);
}

/* Filtered by label and state in the daemon: a host's history of exited containers may not
 * fit the reply cap (docker.h), so the unfiltered list is never asked for. */
static int dl_list_own(void *ctx, const char *job_id, int live_only, tq_container_summary **out,
                       size_t *n, tq_errbuf *eb)
{
    docker_launcher *l = ctx;
    static const char *const live[] = {"created",  "restarting", "running",
                                       "removing", "paused",     NULL};
    char worker[160], job[96];
    snprintf(worker, sizeof worker, "trainq.worker=%s", l->cfg->worker_id);
    const char *labels[3] = {worker, NULL, NULL};
    if (job_id) {
        snprintf(job, sizeof job, "trainq.job=%s", job_id);
        labels[1] = job;
    }
    return tq_docker_list_where(l->d, labels, live_only ? live : NULL, out, n, eb);
}

static void dl_free(void *ctx)
{
    docker_launcher *l = ctx;
    if (!l)
        return;
    tq_docker_free(l->d);
    tq_docker_free(l->ping);
    free(l);
}

static const tq_launcher_ops DOCKER_OPS = {
    .name = "docker",
    .ping = dl_ping,
    .preflight_image = dl_preflight_image,
    .start = dl_start,
    .start_existing = dl_start_existing,
    .wait = dl_wait,
    .inspect = dl_inspect,
    .logs_tail = dl_logs_tail,
    .attach = dl_attach,
    .stop = dl_stop,
    .kill = dl_kill,
    .remove = dl_remove,
    .list_own = dl_list_own,
    .free = dl_free,
};

int tq_launcher_docker_new(const tq_config *cfg, tq_launcher **out, tq_errbuf *eb)
{
    *out = NULL;
    docker_launcher *l = calloc(1, sizeof *l);
    tq_launcher *t = calloc(1, sizeof *t);
    if (!l || !t) {
        free(l);
        free(t);
        return tq_errf(eb, TQ_ERR_NOMEM, "could not create the docker launcher: out of memory");
    }
    l->cfg = cfg;
    t->ops = &DOCKER_OPS;
    t->ctx = l;
    int rc = tq_docker_new(cfg->docker_host, &l->d, eb);
    if (rc == TQ_OK)
        rc = tq_docker_new(cfg->docker_host, &l->ping, eb);
    if (rc == TQ_OK) {
        tq_docker_set_limits(l->ping, PING_MAX_BODY, PING_TIMEOUT_MS);
        /* Mounted into every container as it is: refused here, once, rather than at every
         * launch, where it would only make this host give every job back. */
        if (tq_mount_source_exposes_socket(cfg->hf_cache_dir, tq_docker_socket_path(l->d)))
            rc = tq_errf(eb, TQ_ERR_INVALID,
                         "invalid TRAINQ_HF_CACHE_DIR \"%s\": mounting it would expose the "
                         "container runtime socket",
                         cfg->hf_cache_dir);
    }
    if (rc != TQ_OK) {
        tq_launcher_free(t);
        return rc;
    }
    *out = t;
    return TQ_OK;
}

void tq_launcher_free(tq_launcher *l)
{
    if (!l)
        return;
    l->ops->free(l->ctx);
    free(l);
}
