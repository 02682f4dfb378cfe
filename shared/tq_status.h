/*
 * tq_status — the states of a training job, named once.
 *
 *   queued ──claim──▶ pending ──container started──▶ running ──exit──▶ completed | failed
 *     ▲                  │                              │
 *     └── give back / retry (lease lost, host fault) ◀──┘        any non-terminal ──▶ cancelled
 *
 * The strings are the values of training_jobs.status (CHECK in db/migrations/0001) and of
 * the API's `status`; docs/architecture.md explains each transition and who makes it.
 * "Active" (pending or running) is what the per-user limit counts.
 */
#ifndef TQ_STATUS_H
#define TQ_STATUS_H

typedef enum {
    TQ_STATUS_QUEUED,
    TQ_STATUS_PENDING,
    TQ_STATUS_RUNNING,
    TQ_STATUS_COMPLETED,
    TQ_STATUS_FAILED,
    TQ_STATUS_CANCELLED,
} tq_job_status;

#define TQ_STATUS_COUNT 6
/* Longest status name plus its NUL ("completed", "cancelled"). */
#define TQ_STATUS_BUF 10

/* The database / API spelling; never NULL for a valid status. */
const char *tq_status_name(tq_job_status s);

/* Parses a status name; 0 and *out set, or -1 when s names no status. */
int tq_status_parse(const char *s, tq_job_status *out);

/* completed, failed or cancelled: nothing changes the job any more. */
int tq_status_terminal(tq_job_status s);

/* pending or running: the job holds one of its user's active slots. */
int tq_status_active(tq_job_status s);

#endif
