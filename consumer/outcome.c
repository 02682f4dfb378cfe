#include "outcome.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const NAMES[TQ_FAIL__COUNT] = {
    [TQ_FAIL_OOM] = "oom",
    [TQ_FAIL_TRAINER] = "trainer_error",
    [TQ_FAIL_CONFIG] = "config_error",
    [TQ_FAIL_DATASET] = "dataset_error",
    [TQ_FAIL_HUB] = "hub_error",
    [TQ_FAIL_TIMEOUT] = "timeout",
    [TQ_FAIL_HOST_LOST] = "host_lost",
    [TQ_FAIL_HOST_ERROR] = "host_error",
    [TQ_FAIL_CANCELLED] = "cancelled",
};

const char *tq_failure_class_name(tq_failure_class c)
{
    return (int)c > 0 && c < TQ_FAIL__COUNT ? NAMES[c] : NULL;
}

tq_failure_class tq_failure_class_parse(const char *s)
{
    for (int i = 1; s && i < TQ_FAIL__COUNT; i++)
        if (strcmp(s, NAMES[i]) == 0)
            return (tq_failure_class)i;
    return TQ_FAIL_NONE;
}

/* ---- the Hugging Face hub ------------------------------------------------------------- */

/* What names the hub on a line: its host, its library, or one of the library's errors. */
static const char *const HUB_MARKS[] = {
    "huggingface.co",        "huggingface_hub",    "RepositoryNotFoundError", "GatedRepoError",
    "RevisionNotFoundError", "EntryNotFoundError", "HfHubHTTPError",
};

/* requests' wording of a status: "404 Client Error", "503 Server Error". The status of the
 * first such phrase in [p, end), or 0. */
static int http_status_in(const char *p, const char *end)
{
    for (const char *q = p; q + 3 < end; q++) {
        if (!isdigit((unsigned char)q[0]) || !isdigit((unsigned char)q[1]) ||
            !isdigit((unsigned char)q[2]) || (q > p && isdigit((unsigned char)q[-1])))
            continue;
        const char *rest = q + 3;
        size_t left = (size_t)(end - rest);
        int client = left >= 13 && memcmp(rest, " Client Error", 13) == 0;
        int server = left >= 13 && memcmp(rest, " Server Error", 13) == 0;
        if (!client && !server)
            continue;
        int status = (q[0] - '0') * 100 + (q[1] - '0') * 10 + (q[2] - '0');
        if ((client && status >= 400 && status < 500) || (server && status >= 500 && status < 600))
            return status;
    }
    return 0;
}

static int line_names_hub(const char *p, const char *end)
{
    for (size_t i = 0; i < sizeof HUB_MARKS / sizeof HUB_MARKS[0]; i++) {
        size_t n = strlen(HUB_MARKS[i]);
        for (const char *q = p; q + n <= end; q++)
            if (memcmp(q, HUB_MARKS[i], n) == 0)
                return 1;
    }
    return 0;
}

int tq_hub_failure_find(const char *tail, tq_hub_failure *out)
{
    if (!tail)
        return 0;
    /* The exception is raised last: the last line that matches is the cause. */
    int found = 0;
    for (const char *p = tail; *p;) {
        const char *end = strchr(p, '\n');
        if (!end)
            end = p + strlen(p);
        if (line_names_hub(p, end)) {
            int status = http_status_in(p, end);
            static const char conn[] = "couldn't connect to 'https://huggingface.co'";
            int offline = 0;
            for (const char *q = p; !status && q + sizeof conn - 1 <= end && !offline; q++)
                offline = memcmp(q, conn, sizeof conn - 1) == 0;
            if (status == 401 || status == 403 || status == 404 || status == 429 || status >= 500 ||
                offline) {
                out->status = status;
                out->transient = offline || status == 429 || status >= 500;
                found = 1;
            }
        }
        p = *end ? end + 1 : end;
    }
    return found;
}

/* ---- out of memory -------------------------------------------------------------------- */

void tq_oom_advice(const tq_oom_context *c, char *out, size_t cap)
{
    char where[96], what[128], lower[192];
    if (c->has_progress && c->step > 0)
        snprintf(where, sizeof where, "at step %ld of %ld", c->step, c->total);
    else
        snprintf(where, sizeof where, "before the first training step");
    if (c->batch_size > 0 && c->resolution > 0)
        snprintf(what, sizeof what, " with batch_size %d at resolution %d", c->batch_size,
                 c->resolution);
    else
        what[0] = '\0';
    if (c->batch_size > 1)
        snprintf(lower, sizeof lower, "lower batch_size to %d%s", c->batch_size / 2,
                 c->resolution > 256 ? " (or the resolution)" : "");
    else if (c->resolution > 256) {
        /* a multiple of 64, at least 256: what the job validation accepts */
        int r = c->resolution * 3 / 4 / 64 * 64;
        snprintf(lower, sizeof lower, "lower resolution to %d", r < 256 ? 256 : r);
    } else
        snprintf(lower, sizeof lower,
                 "the job is at its smallest size: it needs a host with "
                 "more memory");
    char limit[64] = "";
    if (c->memory_limit > 0)
        snprintf(limit, sizeof limit, " (memory limit %lld MiB)", c->memory_limit >> 20);
    snprintf(out, cap, "out of %smemory %s%s%s: %s", c->gpu ? "GPU " : "", where, what,
             c->gpu ? "" : limit, lower);
}

/* ---- the retry policy ----------------------------------------------------------------- */

int tq_retry_policy_parse(const char *s, tq_retry_policy *p, tq_errbuf *eb)
{
    memset(p, 0, sizeof *p);
    if (!s || !*s || strcmp(s, "none") == 0)
        return TQ_OK;
    const char *q = s;
    while (*q) {
        size_t n = strcspn(q, "=,");
        char name[32];
        if (q[n] != '=' || n == 0 || n >= sizeof name)
            return tq_errf(eb, TQ_ERR_CONFIG,
                           "invalid TRAINQ_RETRY_POLICY \"%.200s\": expected class=N,class=N", s);
        memcpy(name, q, n);
        name[n] = '\0';
        tq_failure_class c = tq_failure_class_parse(name);
        if (c == TQ_FAIL_NONE || c == TQ_FAIL_CANCELLED)
            return tq_errf(eb, TQ_ERR_CONFIG,
                           "invalid TRAINQ_RETRY_POLICY \"%.200s\": \"%s\" is not a failure "
                           "class that can be retried",
                           s, name);
        q += n + 1;
        char *end;
        long v = strtol(q, &end, 10);
        if (end == q || !isdigit((unsigned char)*q) || v > 100 || (*end && *end != ','))
            return tq_errf(eb, TQ_ERR_CONFIG,
                           "invalid TRAINQ_RETRY_POLICY \"%.200s\": the count of %s must be "
                           "0..100",
                           s, name);
        p->max_retries[c] = (int)v;
        if (*end == ',' && !end[1])
            return tq_errf(eb, TQ_ERR_CONFIG,
                           "invalid TRAINQ_RETRY_POLICY \"%.200s\": ends with a comma", s);
        q = *end ? end + 1 : end;
    }
    return TQ_OK;
}

int tq_retry_backoff_seconds(int base, int done)
{
    if (base <= 0)
        return 0;
    int shift = done < 0 ? 0 : done > 5 ? 5 : done;
    return base << shift;
}
