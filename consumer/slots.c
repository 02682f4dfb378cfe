/*
 * Slots: the worker's shared state changes (worker.h). Every transition happens under
 * w->mu and is broadcast on w->cv, which the runners (runner.c) wait on.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cmetrics.h"
#include "worker.h"

void tq_worker_stop(tq_worker *w)
{
    pthread_mutex_lock(&w->mu);
    atomic_store(&w->stopping, 1);
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

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

void tq_slot_start(tq_worker *w, int i, struct tq_claim *cl)
{
    pthread_mutex_lock(&w->mu);
    w->slots[i].claim = cl;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

void tq_slot_run(tq_worker *w, int i, const char *job_id, const char *container_id,
                 long long fencing, time_t started_wall, int adopted)
{
    pthread_mutex_lock(&w->mu);
    tq_slot *s = &w->slots[i];
    snprintf(s->job_id, sizeof s->job_id, "%s", job_id);
    snprintf(s->container_id, sizeof s->container_id, "%s", container_id);
    s->fencing = fencing;
    s->started_wall = started_wall;
    s->adopted = adopted;
    s->assigned_mono = tq_mono_now();
    atomic_store(&s->cancel, 0);
    atomic_store(&s->lost, 0);
    s->state = TQ_SLOT_RUNNING;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}
