#include "tq_status.h"

#include <string.h>

static const char *const names[TQ_STATUS_COUNT] = {
    [TQ_STATUS_QUEUED] = "queued",   [TQ_STATUS_PENDING] = "pending",
    [TQ_STATUS_RUNNING] = "running", [TQ_STATUS_COMPLETED] = "completed",
    [TQ_STATUS_FAILED] = "failed",   [TQ_STATUS_CANCELLED] = "cancelled",
};

const char *tq_status_name(tq_job_status s)
{
    return (unsigned)s < TQ_STATUS_COUNT ? names[s] : "unknown";
}

int tq_status_parse(const char *s, tq_job_status *out)
{
    for (int i = 0; s && i < TQ_STATUS_COUNT; i++) {
        if (strcmp(s, names[i]) == 0) {
            *out = (tq_job_status)i;
            return 0;
        }
    }
    return -1;
}

int tq_status_terminal(tq_job_status s)
{
    return s == TQ_STATUS_COMPLETED || s == TQ_STATUS_FAILED || s == TQ_STATUS_CANCELLED;
}

int tq_status_active(tq_job_status s)
{
    return s == TQ_STATUS_PENDING || s == TQ_STATUS_RUNNING;
}
