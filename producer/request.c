/*
 * The request API of request.h: accessors, body collection and every reply. All responses
 * leave through queue(), which adds the headers every response carries.
 */
#include "request_impl.h"

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "metrics.h"
#include "tq_db.h"
#include "tq_log.h"

/* A chunked body over the cap is read and dropped (so the 413 can be sent), but only up
 * to this much; beyond it the connection is cut. */
#define DISCARD_MAX (16u * 1024 * 1024)

/* ------------------------------------------------------------------ accessors */

const tq_app *tq_req_app(const tq_req *r)
{
    return r->app;
}

const char *tq_req_header(tq_req *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

/* Content-Type may be absent (the body is JSON either way) or application/json with any
 * parameters (charset=utf-8); anything else is 415. */
static int content_type_ok(const char *ct)
{
    if (!ct)
        return 1;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    static const char want[] = "application/json";
    if (strncasecmp(ct, want, sizeof want - 1) != 0)
        return 0;
    char after = ct[sizeof want - 1];
    return after == '\0' || after == ';' || after == ' ' || after == '\t';
}

int tq_req_require_json(tq_req *r)
{
    if (content_type_ok(tq_req_header(r, "Content-Type")))
        return 0;
    tq_req_reply_error(r, 415, "content type must be application/json");
    return -1;
}

const char *tq_req_query(tq_req *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
}

const char *tq_req_body(const tq_req *r, size_t *len)
{
    *len = r->body.len;
    return tq_buf_str(&r->body);
}

const char *tq_req_param(const tq_req *r)
{
    return r->param;
}

const char *tq_req_user(const tq_req *r)
{
    return r->user;
}

int tq_req_is_operator(const tq_req *r)
{
    return r->is_operator;
}

const char *tq_req_id(const tq_req *r)
{
    return r->request_id;
}

int tq_req_append_body(tq_req *r, const char *data, size_t n)
{
    if (!r->too_large) {
        int rc = tq_buf_add(&r->body, data, n);
        if (rc == TQ_OK)
            return 0;
        if (rc != TQ_ERR_TOO_LARGE)
            return -1;
        r->too_large = 1;
        tq_buf_free(&r->body);
    }
    r->discarded += n;
    return r->discarded <= DISCARD_MAX ? 0 : -1;
}

/* ------------------------------------------------------------------ replies */

void tq_req_add_header(tq_req *r, const char *name, const char *value)
{
    if (r->nhdr >= TQ_REQ_EXTRA_HEADERS)
        return;
    snprintf(r->hdr[r->nhdr].name, sizeof r->hdr[0].name, "%s", name);
    snprintf(r->hdr[r->nhdr].value, sizeof r->hdr[0].value, "%s", value);
    r->nhdr++;
}

/* The next entry of a TRAINQ_CORS_ORIGINS list from p: *start and *len (never empty:
 * commas and spaces around entries are skipped); returns where the entry after it begins,
 * or NULL when none is left. The one reader of the list's format. */
static const char *next_origin(const char *p, const char **start, size_t *len)
{
    while (*p == ' ' || *p == ',')
        p++;
    if (!*p)
        return NULL;
    const char *e = p;
    while (*e && *e != ',')
        e++;
    const char *end = e;
    while (end > p && end[-1] == ' ')
        end--;
    *start = p;
    *len = (size_t)(end - p);
    return e;
}

/* 1 if origin is one of the entries of list (comparison is exact, as browsers send the
 * origin verbatim). */
static int origin_listed(const char *list, const char *origin)
{
    size_t olen = strlen(origin), n;
    const char *entry;
    for (const char *p = list; (p = next_origin(p, &entry, &n)) != NULL;)
        if (n == olen && olen && memcmp(entry, origin, olen) == 0)
            return 1;
    return 0;
}

/* One origin as a browser sends it in Origin: scheme "://" host [":" port], lowercase (as
 * browsers serialise it), nothing after (no path, not even "/"), no space. An entry that
 * is not one could never match, and the operator who wrote it would wonder why the browser
 * is refused. "null" (what sandboxed and file: pages send) is refused too: allowing it
 * would allow any such page. */
static int origin_ok(const char *p, size_t n)
{
    size_t i = 0;
    while (i < n && (islower((unsigned char)p[i]) || isdigit((unsigned char)p[i]) || p[i] == '+' ||
                     p[i] == '-' || p[i] == '.'))
        i++;
    if (i == 0 || !islower((unsigned char)p[0]) || n - i < 4 || memcmp(p + i, "://", 3) != 0)
        return 0;
    for (i += 3; i < n; i++)
        if (p[i] == '/' || p[i] == '?' || p[i] == '#' || p[i] == '@' ||
            isupper((unsigned char)p[i]) || (unsigned char)p[i] <= ' ' ||
            (unsigned char)p[i] >= 0x7f)
            return 0;
    return 1;
}

int tq_req_cors_check(const char *list, tq_errbuf *eb)
{
    if (strcmp(list, "*") == 0)
        return TQ_OK;
    size_t n;
    const char *entry;
    for (const char *p = list; (p = next_origin(p, &entry, &n)) != NULL;)
        if (!origin_ok(entry, n))
            return tq_errf(eb, TQ_ERR_CONFIG,
                           "invalid TRAINQ_CORS_ORIGINS entry \"%.*s\": expected an origin such "
                           "as https://app.example.com (scheme://host[:port], lowercase, no "
                           "path), or * alone",
                           (int)(n > 200 ? 200 : n), entry);
    return TQ_OK;
}

static void add_cors(tq_req *r, struct MHD_Response *resp, int preflight)
{
    const char *list = r->app->cfg->cors_origins;
    if (!list || !*list)
        return;
    const char *origin = tq_req_header(r, MHD_HTTP_HEADER_ORIGIN);
    if (strcmp(list, "*") == 0) {
        MHD_add_response_header(resp, "Access-Control-Allow-Origin", "*");
    } else {
        /* The answer depends on Origin even when it is refused: caches must key on it. */
        MHD_add_response_header(resp, MHD_HTTP_HEADER_VARY, "Origin");
        if (!origin || !origin_listed(list, origin))
            return;
        MHD_add_response_header(resp, "Access-Control-Allow-Origin", origin);
    }
    if (preflight) {
        MHD_add_response_header(
            resp, "Access-Control-Allow-Headers",
            "Authorization, Content-Type, Idempotency-Key, Last-Event-ID, Range, "
            "X-Request-Id");
        MHD_add_response_header(resp, "Access-Control-Max-Age", "600");
    } else {
        /* Every header of ours a script may need (docs/api.md): a browser hides the
         * others from a cross-origin caller, whatever the response carries. */
        MHD_add_response_header(resp, "Access-Control-Expose-Headers",
                                "Retry-After, X-Request-Id, WWW-Authenticate, Content-Range, "
                                "Accept-Ranges, Content-Disposition, X-RateLimit-Limit, "
                                "X-RateLimit-Remaining, Idempotent-Replayed");
    }
}

static void queue(tq_req *r, unsigned status, struct MHD_Response *resp, const char *ctype,
                  int preflight)
{
    if (!resp) {
        /* Out of memory: nothing sensible can be sent; MHD closes the connection. */
        r->replied = 1;
        r->status = 500;
        return;
    }
    if (ctype)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    MHD_add_response_header(resp, "X-Request-Id", r->request_id);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    add_cors(r, resp, preflight);
    for (int i = 0; i < r->nhdr; i++)
        MHD_add_response_header(resp, r->hdr[i].name, r->hdr[i].value);
    if (MHD_queue_response(r->conn, status, resp) != MHD_YES)
        tq_log(TQ_LOG_WARN, "http.queue_failed", "could not queue response %u for request %s",
               status, r->request_id);
    MHD_destroy_response(resp);
    r->replied = 1;
    r->status = status;
}

void tq_req_reply_preflight(tq_req *r, const char *allow)
{
    if (r->replied)
        return;
    struct MHD_Response *resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    if (resp) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
        const char *list = r->app->cfg->cors_origins;
        if (list && *list)
            MHD_add_response_header(resp, "Access-Control-Allow-Methods", allow);
    }
    queue(r, 204, resp, NULL, 1);
}

void tq_req_reply_text(tq_req *r, unsigned status, const char *content_type, const char *text,
                       size_t len)
{
    if (r->replied)
        return;
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)(uintptr_t)text, MHD_RESPMEM_MUST_COPY);
    queue(r, status, resp, content_type, 0);
}

void tq_req_reply_callback(tq_req *r, unsigned status, const char *content_type,
                           MHD_ContentReaderCallback cb, void *cls,
                           MHD_ContentReaderFreeCallback free_cb)
{
    if (r->replied) {
        free_cb(cls);
        return;
    }
    /* 4 KiB: the most one call of cb copies. */
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, cb, cls, free_cb);
    if (!resp)
        free_cb(cls);
    queue(r, status, resp, content_type, 0);
}

void tq_req_reply_fd(tq_req *r, unsigned status, const char *content_type, int fd,
                     unsigned long long offset, unsigned long long len)
{
    if (r->replied) {
        close(fd);
        return;
    }
    struct MHD_Response *resp =
        MHD_create_response_from_fd_at_offset64((uint64_t)len, fd, (uint64_t)offset);
    if (!resp)
        close(fd);
    queue(r, status, resp, content_type, 0);
}

void tq_req_reply_json(tq_req *r, unsigned status, json_t *body)
{
    if (r->replied) {
        json_decref(body);
        return;
    }
    char *s = body ? json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(body);
    if (!s) {
        static const char oom[] = "{\"success\":false,\"error\":\"internal server error\"}";
        tq_req_reply_text(r, 500, "application/json", oom, sizeof oom - 1);
        return;
    }
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(s), s, MHD_RESPMEM_MUST_FREE);
    if (!resp)
        free(s);
    queue(r, status, resp, "application/json", 0);
}

void tq_req_reply_error(tq_req *r, unsigned status, const char *msg)
{
    tq_req_reply_json(r, status, json_pack("{s:b, s:s}", "success", 0, "error", msg));
}

void tq_req_reply_invalid(tq_req *r, const char *error, const tq_validation *v)
{
    tq_req_reply_json(r, 400,
                      json_pack("{s:b, s:s, s:o*}", "success", 0, "error", error, "details",
                                tq_validation_to_json(v)));
}

void tq_req_reply_db_error(tq_req *r, int rc, const tq_errbuf *eb)
{
    if (rc == TQ_ERR_UNAVAILABLE) {
        tq_logj(TQ_LOG_WARN, "http.db_unavailable", json_pack("{s:s}", "request_id", r->request_id),
                "%s", eb->msg);
        tq_req_add_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "5");
        if (tq_db_exhausted(eb)) {
            tq_metrics_db_exhausted();
            tq_req_reply_error(r, 503, "database has no free connections, retry later");
        } else {
            tq_req_reply_error(r, 503, "service temporarily unavailable");
        }
        return;
    }
    tq_logj(TQ_LOG_ERROR, "http.internal_error", json_pack("{s:s}", "request_id", r->request_id),
            "%s: %s", tq_strerror(rc), eb->msg);
    tq_req_reply_error(r, 500, "internal server error");
}
