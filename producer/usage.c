/*
 * GET /api/training/usage?from=&to= — the caller's usage per UTC day (docs/api.md,
 * "Usage"): jobs that ended that day by outcome, attempts, GPU-seconds and wall seconds of
 * the attempts that ended that day (db/procedures/65_schedule.sql, tq_usage_days; each
 * attempt recorded by the trigger tq_record_usage from the audit trail).
 *
 * from and to are RFC 3339 timestamps or dates (YYYY-MM-DD, midnight UTC); to defaults to
 * now, from to 30 days before to; the range is half open [from, to), at most
 * USAGE_MAX_DAYS long.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "handlers.h"
#include "pdb.h"
#include "tq_clock.h"

#define USAGE_DEFAULT_DAYS 30
#define USAGE_MAX_DAYS 366
#define DAY_MS (86400LL * 1000)
/* The longest RFC 3339 text tq_rfc3339_parse accepts, and then some. */
#define TS_MAX 64

/* A query argument as Unix milliseconds: a date (midnight UTC) or an RFC 3339 timestamp.
 * 1 when absent, 0 when parsed, -1 when answered (400 naming the field). */
static int time_param(tq_req *r, const char *name, int64_t *ms)
{
    const char *s = tq_req_query(r, name);
    if (!s)
        return 1;
    char buf[TS_MAX];
    size_t n = strnlen(s, TS_MAX);
    if (n == 10 && n < sizeof buf) { /* YYYY-MM-DD */
        snprintf(buf, sizeof buf, "%sT00:00:00Z", s);
        s = buf;
    }
    if (n >= TS_MAX || tq_rfc3339_parse(s, ms) != TQ_OK) {
        tq_job_bad_request(r, name, "must be a date (YYYY-MM-DD) or an rfc 3339 timestamp");
        return -1;
    }
    return 0;
}

void tq_h_usage(tq_req *r)
{
    if (tq_job_guard(r) != 0)
        return;
    int64_t from = 0, to = 0;
    int rf = time_param(r, "from", &from), rt;
    if (rf < 0 || (rt = time_param(r, "to", &to)) < 0)
        return;
    if (rt) /* the next whole second: what ended a moment ago is in */
        to = ((int64_t)time(NULL) + 1) * 1000;
    if (rf)
        from = to - USAGE_DEFAULT_DAYS * DAY_MS;
    if (from >= to) {
        tq_job_bad_request(r, "from", "must be before to");
        return;
    }
    if (to - from > USAGE_MAX_DAYS * DAY_MS) {
        tq_job_bad_request(r, "from", "must be at most 366 days before to");
        return;
    }
    json_t *usage = NULL;
    tq_errbuf eb = {{0}};
    int rc = tq_pdb_usage(tq_req_user(r), from, to, &usage, &eb);
    if (rc != TQ_OK) {
        tq_job_reply_failure(r, rc, &eb);
        return;
    }
    json_object_set_new(usage, "success", json_true());
    tq_req_reply_json(r, 200, usage);
}
