/*
 * Start-up adoption (adoption.h): this worker's containers back into its slots, its claims
 * without a container given back.
 */
#include "adoption.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cdb.h"
#include "housekeeping.h"
#include "tq_backoff.h"
#include "tq_db.h"
#include "tq_log.h"
#include "tq_utf8.h"

/* Finds the fencing token of job_id among this worker's active jobs; -1 if not there. */
static long long held(const tq_cdb_active *act, size_t n, const char *job_id)
{
    for (size_t k = 0; k < n; k++)
        if (strcmp(act[k].job_id, job_id) == 0)
            return act[k].fencing_token;
    return -1;
}

/*
 * The containers adoption must see: this worker's live ones (any job: those of jobs it no
 * longer holds are stopped), and every container of a job it still holds, whatever its
 * state (one that exited while the consumer was down has an outcome to record). Exited
 * containers of finished jobs are left out: a host keeps many of them (with
 * TRAINQ_REMOVE_CONTAINERS=false, all of them) and listing them all could exceed the
 * Docker reply cap and stop the consumer from starting.
 */
static int list_adoptable(tq_worker *w, const tq_cdb_active *act, size_t na,
                          tq_container_summary **out, size_t *n, tq_errbuf *eb)
{
    const tq_launcher *l = w->launcher;
    int rc = l->ops->list_own(l->ctx, NULL, 1, out, n, eb);
    for (size_t k = 0; rc == TQ_OK && k < na; k++) {
        int listed = 0;
        for (size_t i = 0; i < *n; i++)
            listed |= strcmp((*out)[i].job_label, act[k].job_id) == 0;
        if (listed)
            continue;
        tq_container_summary *more = NULL;
        size_t nm = 0;
        rc = l->ops->list_own(l->ctx, act[k].job_id, 0, &more, &nm, eb);
        if (rc == TQ_OK && nm > 0) {
            tq_container_summary *all = realloc(*out, (*n + nm) * sizeof **out);
            if (!all) {
                rc = tq_errf(eb, TQ_ERR_NOMEM, "could not list containers: out of memory");
            } else {
                memcpy(all + *n, more, nm * sizeof *more);
                *out = all;
                *n += nm;
            }
        }
        free(more);
    }
    return rc;
}

/* Signals are taken by main's sigwait() only after adoption; until then a SIGTERM stays
 * pending, and adoption (which waits for Postgres and dockerd) must not outlive it. */
static int stop_signal_pending(void)
{
    sigset_t p;
    return sigpending(&p) == 0 && (sigismember(&p, SIGTERM) == 1 || sigismember(&p, SIGINT) == 1);
}

/* One container found at start: adopted into a slot (1), or stopped or its job given back
 * (0). fencing is the claim's token, -1 when this worker no longer holds the job. */
static int adopt_one(tq_worker *w, PGconn *db, const tq_container_summary *c, long long fencing)
{
    const tq_config *cfg = w->cfg;
    tq_errbuf kb = {{0}};
    tq_container_state st;
    memset(&st, 0, sizeof st);
    const tq_launcher *l = w->launcher;
    int inspected = l->ops->inspect(l->ctx, c->id, &st, &kb) == TQ_OK;
    int slot = fencing >= 0 && inspected ? tq_slot_reserve(w, c->job_label) : -1;
    if (slot < 0) {
        /* Not ours any more (recovered elsewhere, finished), no slot, or not readable now:
         * stop it so the job never runs twice. A held job without a slot is not renewed and
         * the reaper retries it. */
        l->ops->kill(l->ctx, c->id, &kb);
        if (cfg->remove_containers)
            l->ops->remove(l->ctx, c->id, &kb);
        tq_log(TQ_LOG_WARN, "adopt.stopped", "stopped container %.12s of job %s: %s", c->id,
               c->job_label,
               fencing < 0 ? "job not held"
               : inspected ? "no free slot"
                           : kb.msg);
        return 0;
    }
    if (strcmp(st.status, "created") == 0 && l->ops->start_existing(l->ctx, c->id, &kb) != TQ_OK) {
        /* Crashed between create and start, and it will not start now: a wait on it would
         * report exit code 0 for a job that never ran. Retry the job instead. */
        char why[400];
        snprintf(why, sizeof why, "worker %s could not start its adopted container: %.*s",
                 cfg->worker_id, TQ_UTF8_ARG(kb.msg, 300));
        l->ops->remove(l->ctx, c->id, &kb);
        tq_slot_free(w, slot);
        const tq_cdb_failure f = {.cls = "host_error", .message = why};
        if (tq_cdb_retry(db, c->job_label, fencing, why, &f, cfg->max_attempts, &kb) != TQ_OK)
            tq_log(TQ_LOG_WARN, "adopt.repair_failed", "job %s: %s", c->job_label, kb.msg);
        return 0;
    }
    tq_cdb_mark_running(db, c->job_label, fencing, c->id, NULL, &kb); /* if still pending */
    time_t started = st.started_at_ms > 0 ? (time_t)(st.started_at_ms / 1000) : time(NULL);
    tq_slot_run(w, slot, c->job_label, c->id, fencing, started, 1);
    tq_log(TQ_LOG_INFO, "adopt.container", "adopted container %.12s of job %s (%s)", c->id,
           c->job_label, st.status);
    return 1;
}

/* Claims with no container: the process died between claim and start. */
static void repair_claims(tq_worker *w, PGconn *db, const tq_cdb_active *act, size_t na,
                          const tq_container_summary *cs, size_t nc)
{
    const tq_config *cfg = w->cfg;
    for (size_t k = 0; k < na; k++) {
        int has = 0;
        for (size_t i = 0; i < nc; i++)
            has |= strcmp(cs[i].job_label, act[k].job_id) == 0;
        if (has)
            continue;
        tq_errbuf kb = {{0}};
        char why[160];
        snprintf(why, sizeof why, "worker %s restarted and found no container", cfg->worker_id);
        const tq_cdb_failure f = {.cls = "host_lost"};
        if (tq_cdb_retry(db, act[k].job_id, act[k].fencing_token, why, &f, cfg->max_attempts,
                         &kb) != TQ_OK)
            tq_log(TQ_LOG_WARN, "adopt.repair_failed", "job %s: %s", act[k].job_id, kb.msg);
        else
            tq_log(TQ_LOG_INFO, "adopt.repaired", "job %s: %s", act[k].job_id, why);
    }
}

void tq_worker_adopt(tq_worker *w)
{
    const tq_config *cfg = w->cfg;
    PGconn *db = NULL;
    tq_backoff bo;
    tq_backoff_init(&bo, 200, 5000, TQ_BACKOFF_EXACT, 0);
    while (!atomic_load(&w->stopping)) {
        tq_errbuf eb = {{0}};
        tq_container_summary *cs = NULL;
        size_t nc = 0;
        tq_cdb_active *act = NULL;
        size_t na = 0;
        int rc = tq_db_ensure(&db, cfg->database_url, "trainq-consumer-adopt", &eb);
        if (rc == TQ_OK)
            rc = tq_worker_id_check(w, db, stop_signal_pending, &eb);
        if (rc == TQ_ERR_CONFLICT) {
            tq_log(TQ_LOG_ERROR, "worker.duplicate_id", "%s; stopping", eb.msg);
            atomic_store(&w->fatal, 2);
            break;
        }
        if (rc == TQ_OK)
            rc = tq_cdb_worker_jobs(db, cfg->worker_id, &act, &na, &eb);
        if (rc == TQ_OK)
            rc = list_adoptable(w, act, na, &cs, &nc, &eb);
        if (rc != TQ_OK) {
            free(cs);
            free(act);
            tq_log(TQ_LOG_WARN, "adopt.waiting", "could not adopt containers yet: %s", eb.msg);
            if (stop_signal_pending() || tq_worker_sleep(w, tq_backoff_next(&bo)))
                break;
            continue;
        }
        int adopted = 0;
        for (size_t i = 0; i < nc; i++)
            adopted += adopt_one(w, db, &cs[i], held(act, na, cs[i].job_label));
        repair_claims(w, db, act, na, cs, nc);
        tq_log(TQ_LOG_INFO, "adopt.done", "adopted %d container(s), %zu claim(s) held", adopted,
               na);
        free(cs);
        free(act);
        break;
    }
    if (db)
        PQfinish(db);
}
