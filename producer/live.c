/*
 * Watching a job (docs/api.md, "Watching a job"): its log tail, its Server-Sent Events
 * stream and the all-jobs stream (stream.h), and its artifacts. Guards and answers as in
 * jobs.c: another user's job is answered like one that does not exist.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "handlers.h"
#include "pdb.h"
#include "request_impl.h"
#include "stream.h"

#define TAIL_DEFAULT 200
#define TAIL_MAX 10000
/* Longest artifact name (job_artifacts.name's CHECK). */
#define ARTIFACT_NAME_MAX 255
/* Decimal digits of a cursor part in Last-Event-ID (bigint). */
#define CURSOR_DIGITS_MAX 18
/* "bytes 0-123/456" and the like. */
#define CONTENT_RANGE_BUF 64
#define DISPOSITION_BUF (ARTIFACT_NAME_MAX + 48)

/* ------------------------------------------------------------------ logs */

void tq_h_job_logs(tq_req *r)
{
    char id[TQ_UUID_BUF];
    if (tq_job_guard(r) != 0 || tq_job_id_param(r, id) != 0)
        return;
    int tail;
    if (tq_job_int_param(r, "tail", TAIL_DEFAULT, TAIL_MAX, &tail) != 0)
        return;
    json_t *rows = NULL;
    tq_errbuf eb = {{0}};
    int rc = tq_pdb_job_log(tq_req_user(r), id, tail, &rows, &eb);
    if (rc != TQ_OK) {
        tq_job_reply_failure(r, rc, &eb);
        return;
    }
    /* Oldest selected row first, one line per '\n'; then only the last `tail` lines. */
    tq_buf b;
    tq_buf_init(&b, (size_t)-1);
    for (size_t i = json_array_size(rows); i-- > 0;) {
        const char *body = json_string_value(json_array_get(rows, i));
        if (body &&
            (tq_buf_add(&b, body, strlen(body)) != TQ_OK || tq_buf_add(&b, "\n", 1) != TQ_OK)) {
            json_decref(rows);
            tq_buf_free(&b);
            tq_req_reply_error(r, 500, "internal server error");
            return;
        }
    }
    json_decref(rows);
    size_t start = b.len;
    for (int lines = 0; start > 0; start--)
        if (b.data[start - 1] == '\n' && start != b.len && ++lines == tail)
            break;
    tq_req_reply_text(r, 200, "text/plain; charset=utf-8", b.data ? b.data + start : "",
                      b.len - start);
    tq_buf_free(&b);
}

void tq_h_job_progress(tq_req *r)
{
    char id[TQ_UUID_BUF];
    if (tq_job_guard(r) != 0 || tq_job_id_param(r, id) != 0)
        return;
    json_t *samples = NULL;
    tq_errbuf eb = {{0}};
    int rc = tq_pdb_job_progress(tq_req_user(r), id, &samples, &eb);
    if (rc != TQ_OK)
        tq_job_reply_failure(r, rc, &eb);
    else
        tq_req_reply_json(
            r, 200, json_pack("{s:b, s:s, s:o}", "success", 1, "job_id", id, "samples", samples));
}

/* ------------------------------------------------------------------ streams */

static int digits(const char *s, size_t n, long long *out)
{
    if (n == 0 || n > CURSOR_DIGITS_MAX)
        return -1;
    long long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

/* Last-Event-ID: "<event>.<seq>" as a job stream sends it, or "<event>" (all-jobs stream);
 * 0 absent, 1 parsed, -1 malformed (replied 400). */
static int last_event_id(tq_req *r, tq_stream_cursor *c)
{
    const char *v = tq_req_header(r, "Last-Event-ID");
    if (!v || !*v)
        return 0;
    const char *dot = strchr(v, '.');
    size_t n = dot ? (size_t)(dot - v) : strlen(v);
    if (digits(v, n, &c->event) != 0 || (dot && digits(dot + 1, strlen(dot + 1), &c->seq) != 0)) {
        tq_job_bad_request(r, "Last-Event-ID", "is not an id this API sent");
        return -1;
    }
    return 1;
}

/* Opens the stream of job (NULL: all of the user's jobs) from Last-Event-ID, if sent. */
static void open_stream(tq_req *r, const char *job)
{
    tq_stream_cursor c = {0};
    int have = last_event_id(r, &c);
    if (have < 0)
        return;
    long long newest = 0, now = 0, end = 0;
    tq_errbuf eb = {{0}};
    int rc = tq_pdb_stream_start(tq_req_user(r), job, &newest, &now, &end, &eb);
    if (rc != TQ_OK) {
        tq_job_reply_failure(r, rc, &eb);
        return;
    }
    /* The client has seen the job's end: nothing will follow. 204 is what makes EventSource
     * stop reconnecting (a stream that opens and ends would have it come back every 2 s,
     * spending its user's read rate limit for ever). */
    if (job && have && end > 0 && c.event >= end) {
        tq_req_reply_text(r, 204, NULL, "", 0);
        return;
    }
    if (!job) {
        /* Without Last-Event-ID: from now on (the current state is GET
         * /api/training/jobs); progress from now on in any case. */
        if (!have)
            c.event = newest;
        c.seq = 0;
        c.micros = now;
    }
    /* A job stream without Last-Event-ID starts at 0.0: the job's story from its start,
     * every status, its kept log and its newest progress (bounded by the consumer's
     * budgets). */
    tq_streams_open(tq_req_app(r)->streams, r, job, &c);
}

void tq_h_job_stream(tq_req *r)
{
    char id[TQ_UUID_BUF];
    if (tq_job_guard(r) != 0 || tq_job_id_param(r, id) != 0)
        return;
    open_stream(r, id);
}

void tq_h_stream_all(tq_req *r)
{
    if (tq_job_guard(r) == 0)
        open_stream(r, NULL);
}

/* ------------------------------------------------------------------ artifacts */

void tq_h_job_artifacts(tq_req *r)
{
    char id[TQ_UUID_BUF];
    if (tq_job_guard(r) != 0 || tq_job_id_param(r, id) != 0)
        return;
    json_t *list = NULL;
    tq_errbuf eb = {{0}};
    int rc = tq_pdb_job_artifacts(tq_req_user(r), id, &list, &eb);
    if (rc != TQ_OK)
        tq_job_reply_failure(r, rc, &eb);
    else
        tq_req_reply_json(r, 200,
                          json_pack("{s:b, s:s, s:o, s:b}", "success", 1, "job_id", id, "artifacts",
                                    list, "downloadable",
                                    tq_req_app(r)->cfg->artifacts_dir[0] != '\0'));
}

int tq_range_parse(const char *h, unsigned long long size, unsigned long long *start,
                   unsigned long long *len)
{
    if (!h || strncmp(h, "bytes=", 6) != 0 || strchr(h, ','))
        return 0; /* absent, another unit or several ranges: the whole file (RFC 9110) */
    const char *p = h + 6, *dash = strchr(p, '-');
    if (!dash)
        return 0;
    long long a = -1, b = -1;
    if (dash > p && digits(p, (size_t)(dash - p), &a) != 0)
        return 0;
    if (dash[1] && digits(dash + 1, strlen(dash + 1), &b) != 0)
        return 0;
    if (a < 0 && b < 0)
        return 0;
    if (a < 0) { /* suffix: the last b bytes */
        if (b == 0 || size == 0)
            return -1;
        unsigned long long n = (unsigned long long)b < size ? (unsigned long long)b : size;
        *start = size - n;
        *len = n;
        return 1;
    }
    if (b >= 0 && b < a)
        return 0; /* invalid: ignored */
    if ((unsigned long long)a >= size)
        return -1;
    unsigned long long last =
        b < 0 || (unsigned long long)b >= size ? size - 1 : (unsigned long long)b;
    *start = (unsigned long long)a;
    *len = last - *start + 1;
    return 1;
}

/* A name as the consumer records it (consumer/artifacts.c): a path relative to the job's
 * outputs directory, components separated by '/', none empty, "." or "..", no backslash or
 * control character. Only names listed in job_artifacts are ever opened; this only keeps
 * the lookup and the open simple. */
static int artifact_name_ok(const char *n)
{
    size_t len = strlen(n);
    if (len == 0 || len > ARTIFACT_NAME_MAX)
        return 0;
    for (const char *c = n; *c;) {
        size_t k = strcspn(c, "/");
        if (k == 0 || (k == 1 && c[0] == '.') || (k == 2 && c[0] == '.' && c[1] == '.'))
            return 0;
        c += k;
        if (*c == '/')
            c++;
        if (*c == '\0' && c[-1] == '/')
            return 0; /* a trailing slash */
    }
    for (size_t i = 0; i < len; i++)
        if (n[i] == '\\' || (unsigned char)n[i] < 0x20 || n[i] == 0x7f)
            return 0;
    return 1;
}

/* Opens <dir>/<job>/<name> as a regular file, walking every component below dir with
 * O_NOFOLLOW (the operator's dir itself may be a symlink), so no link inside the job's
 * directory can lead out of it. -1 with errno otherwise. */
static int open_artifact(const char *dir, const char *job, const char *name, struct stat *st)
{
    int root = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (root < 0)
        return -1;
    int d = openat(root, job, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    close(root);
    char part[ARTIFACT_NAME_MAX + 1];
    const char *c = name;
    while (d >= 0 && strchr(c, '/')) {
        size_t k = strcspn(c, "/");
        memcpy(part, c, k);
        part[k] = '\0';
        int next = openat(d, part, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        close(d);
        d = next;
        c += k + 1;
    }
    if (d < 0)
        return -1;
    int fd = openat(d, c, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    close(d);
    if (fd < 0)
        return -1;
    if (fstat(fd, st) != 0 || !S_ISREG(st->st_mode)) {
        close(fd);
        errno = ENOENT;
        return -1;
    }
    return fd;
}

static int plain_name(const char *n)
{
    for (; *n; n++)
        if (!((*n >= 'a' && *n <= 'z') || (*n >= 'A' && *n <= 'Z') || (*n >= '0' && *n <= '9') ||
              *n == '.' || *n == '_' || *n == '-'))
            return 0;
    return 1;
}

void tq_h_job_artifact(tq_req *r)
{
    if (tq_job_guard(r) != 0)
        return;
    /* The route's two segments: "<id>/<name>" (routes.c). */
    const char *param = tq_req_param(r), *slash = strchr(param, '/');
    char id[TQ_UUID_BUF], raw[TQ_UUID_BUF + 8];
    const char *name = slash ? slash + 1 : "";
    snprintf(raw, sizeof raw, "%.*s", slash ? (int)(slash - param) : 0, param);
    if (!slash || (size_t)(slash - param) >= sizeof raw || tq_uuid_canonical(raw, id) != TQ_OK) {
        tq_job_bad_request(r, "id", "must be a uuid");
        return;
    }
    const char *dir = tq_req_app(r)->cfg->artifacts_dir;
    if (!dir[0]) {
        tq_req_reply_error(
            r, 404,
            "artifact downloads are not enabled on this server (TRAINQ_ARTIFACTS_DIR "
            "is not set)");
        return;
    }
    int listed = 0;
    long long size = 0;
    tq_errbuf eb = {{0}};
    int rc = artifact_name_ok(name)
                 ? tq_pdb_artifact_find(tq_req_user(r), id, name, &listed, &size, &eb)
                 : TQ_OK;
    if (rc != TQ_OK) {
        tq_job_reply_failure(r, rc, &eb);
        return;
    }
    struct stat st;
    int fd = listed ? open_artifact(dir, id, name, &st) : -1;
    if (fd < 0) {
        tq_req_reply_error(r, 404, "artifact not found");
        return;
    }
    unsigned long long fsize = (unsigned long long)st.st_size, start = 0, len = fsize;
    int range = tq_range_parse(tq_req_header(r, "Range"), fsize, &start, &len);
    char cr[CONTENT_RANGE_BUF];
    tq_req_add_header(r, "Accept-Ranges", "bytes");
    if (range < 0) {
        close(fd);
        snprintf(cr, sizeof cr, "bytes */%llu", fsize);
        tq_req_add_header(r, "Content-Range", cr);
        tq_req_reply_error(r, 416, "range not satisfiable");
        return;
    }
    if (range > 0) {
        snprintf(cr, sizeof cr, "bytes %llu-%llu/%llu", start, start + len - 1, fsize);
        tq_req_add_header(r, "Content-Range", cr);
    }
    char disp[DISPOSITION_BUF];
    if (plain_name(name))
        snprintf(disp, sizeof disp, "attachment; filename=\"%s\"", name);
    else
        snprintf(disp, sizeof disp, "attachment");
    tq_req_add_header(r, "Content-Disposition", disp);
    tq_req_reply_fd(r, range > 0 ? 206 : 200, "application/octet-stream", fd, start, len);
}
