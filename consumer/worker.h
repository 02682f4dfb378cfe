/*
 * worker — the state one trainq-consumer process shares between its threads (slots, health
 * flags, the queue's ready count), and the slot operations (slots.c). The threads:
 *
 *   dispatcher (dispatch.h)   AMQP in: intake, ack; picks a job for each free slot
 *   one runner per slot       starts the picked job's container (start.h), follows it to the
 *     (runner.h)              end, writes its output once a second, records the outcome
 *   one follower per running  reads the container's output stream (output.h)
 *     job
 *   housekeeper               heartbeat + leases, cancellations, health
 *   sweeper (housekeeping.h)  reaper (lost hosts) and sweeper (parked and stranded jobs)
 *   metrics server (MHD)      /metrics, /healthz (cmetrics.h)
 * and, before any of them, start-up adoption (adoption.h).
 *
 * What must stay true:
 *  - a slot is busy from the moment the dispatcher reserves it until its runner has
 *    recorded the outcome (or given the job up); busy slots never exceed n_slots, so this
 *    worker never runs more containers than it has slots;
 *  - only the dispatcher reserves slots, so "a slot is free" seen by the dispatcher stays
 *    true until it uses it; a reserved slot is freed by its runner once the start failed;
 *  - every DB write about a job presents the fencing token of the claim.
 */
#ifndef TQ_WORKER_H
#define TQ_WORKER_H

#include <pthread.h>

#include "tq_clock.h"
#include <stdatomic.h>
#include <time.h>

#include "launcher.h"
#include "coptions.h"
#include "tq_uuid.h"

struct tq_claim; /* cdb.h */

/* FREE → RESERVED (picked; the runner starting its container, start.h) → RUNNING (runner
 * following) → FINISHING (runner recording the outcome: the job leaves this worker on
 * purpose) → FREE */
typedef enum {
    TQ_SLOT_FREE = 0,
    TQ_SLOT_RESERVED,
    TQ_SLOT_RUNNING,
    TQ_SLOT_FINISHING
} tq_slot_state;

typedef struct {
    int index;
    pthread_t thread;
    tq_slot_state state;
    char job_id[TQ_UUID_BUF];
    char container_id[TQ_LAUNCHER_ID_BUF];
    long long fencing;
    time_t started_wall;    /* when the container started (max run time) */
    double assigned_mono;   /* when the runner got it (heartbeat race guard) */
    atomic_int cancel;      /* the user asked for cancellation */
    atomic_int lost;        /* the lease was lost: another worker owns the job now */
    int adopted;            /* found running at start (adoption.h), not started by us */
    struct tq_claim *claim; /* RESERVED: the pick to start, handed over by the dispatcher
                             * (owned; the runner takes it, guarded by mu) */
} tq_slot;

typedef struct tq_worker {
    const tq_config *cfg;
    tq_launcher *launcher; /* how jobs run on this host (launcher.h) */
    char hostname[256];
    double started_at; /* this process's start, epoch seconds (workers.started_at) */

    pthread_mutex_t mu; /* guards slot state transitions; cv signals them and stopping */
    pthread_cond_t cv;
    tq_slot *slots;
    int n_slots;
    int n_runners; /* runner threads started (joined on the way out) */

    atomic_int stopping;
    /* Set, to the exit code, by a thread that found this process must stop: another live
     * consumer uses its worker id (housekeeping.c). main stops the worker then. */
    atomic_int fatal;
    atomic_int docker_ok;
    atomic_int db_ok;
    /* tq_mono_ms() when the housekeeper's heartbeat sent its statement, 0 once answered: a
     * Postgres that answers nothing at all (stopped, or behind a network dropping everything)
     * shows as a wait that grows, long before the answer deadline fails it (/healthz). */
    _Atomic int64_t db_wait_since_ms;
    /* What db.up / db.down last logged (-1 nothing yet, 0 down, 1 up): the housekeeper's
     * heartbeats and main's watch of a heartbeat that hangs both report through it, so an
     * outage is logged once, down and up. */
    atomic_int db_seen;
    pthread_mutex_t db_seen_mu; /* one of the two reports at a time: their order holds */
    atomic_int amqp_ok;
    /* 0 once TRAINQ_HOST_ERROR_LIMIT launches in a row failed for a reason of this host
     * (image or runtime missing, disk full): the dispatcher starts no new job and tries one
     * job again after a backoff; /healthz reports host_error meanwhile (guarded by mu). */
    atomic_int host_ok;
    /* An operator asked this worker to drain (read on every heartbeat): the dispatcher picks
     * no new job; running jobs finish. -1 until the first heartbeat has answered: picks
     * wait for it, so a drained worker that restarts stays drained. */
    atomic_int draining;
    char host_error[256];
    /* Launches in a row that failed for a reason of this host, and while unhealthy when to
     * try one job again and the current probe backoff (start.c; guarded by mu). */
    int host_errors;
    double probe_at;
    long probe_wait_s;

    /* Ready messages in trainq.jobs as last seen by the dispatcher (passive declare), and
     * when (tq_mono_now); the sweeper's stranded repair leaves that many newest jobs alone. */
    _Atomic long long queue_ready;
    _Atomic double queue_ready_at;
} tq_worker;

/* Sleeps up to ms (on the monotonic clock: w->cv is made by tq_cond_init_monotonic), returning
 * early (1) when the worker is stopping. */
int tq_worker_sleep(tq_worker *w, long ms);
/* Sets stopping and wakes every thread waiting on w->cv. */
void tq_worker_stop(tq_worker *w);

/* Number of free slots (locks mu). */
int tq_slots_free(tq_worker *w);
/* Reserves a free slot for job_id (its lease is renewed from now on); -1 if none. */
int tq_slot_reserve(tq_worker *w, const char *job_id);
/* Frees slot i: a reservation given back unused, or a job whose outcome is recorded. */
void tq_slot_free(tq_worker *w, int i);
/* Hands the pick cl (a CLAIMED tq_claim, heap, ownership passes) to reserved slot i's
 * runner, which starts it. */
void tq_slot_start(tq_worker *w, int i, struct tq_claim *cl);
/* Hands a started container to slot i's runner (adopted: found at start, adoption.h). */
void tq_slot_run(tq_worker *w, int i, const char *job_id, const char *container_id,
                 long long fencing, time_t started_wall, int adopted);

/* The job ids held by non-free slots, as a Postgres array literal "{id,id}" (ids are
 * canonical uuids, so no quoting is needed). */
void tq_slots_held(tq_worker *w, char *out, size_t cap);
/* Room for tq_slots_held with every slot busy (at most 64 slots: tq_config). */
#define TQ_SLOTS_HELD_BUF (64 * 40 + 4)

#endif
