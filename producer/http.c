#include "http.h"

#include <microhttpd.h>

#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "admit.h"
#include "handlers.h"
#include "metrics.h"
#include "pdb.h"
#include "tq_log.h"
#include "tq_uuid.h"

/* Headers + request line must fit here; MHD answers 431/414 itself beyond it. The cap is
 * above the largest token auth accepts (TQ_AUTH_TOKEN_MAX). */
#define CONN_MEMORY_LIMIT (48 * 1024)
/* Connections beyond TRAINQ_HTTP_MAX_CONNECTIONS kept for /healthz and /readyz, so a load
 * balancer's checks are answered while the rest is full (admit.h). */
#define HEALTH_RESERVE 8
/* How often deadlines are enforced, the open-connection gauge sampled, and (at most every
 * SHED_LOG_MS) one summary of what was shed logged: a flood must not become a log flood. */
#define SWEEP_MS 200
#define SHED_LOG_MS 10000
/* A chunked body over the cap is read and dropped (so the 413 can be sent), but only up
 * to this much; beyond it the connection is cut. */
#define DISCARD_MAX (16u * 1024 * 1024)
#define REQUEST_ID_MAX 64
#define PARAM_MAX 72
#define EXTRA_HEADERS 8

typedef void (*handler_fn)(tq_req *r);

/* The static route table. A pattern segment "{id}" matches any one segment; the label
 * (the pattern itself) is what logs and metrics show, so their cardinality is fixed. */
typedef struct {
    const char *pattern;
    handler_fn get, post, del;
} route;

static const route routes[] = {
    {"/healthz", tq_h_healthz, NULL, NULL},
    {"/readyz", tq_h_readyz, NULL, NULL},
    {"/metrics", tq_h_metrics, NULL, NULL},
    {"/api/training/submit", NULL, tq_h_submit, NULL},
    {"/api/training/jobs", tq_h_job_list, NULL, NULL},
    {"/api/training/jobs/{id}", tq_h_job_get, NULL, tq_h_job_delete},
    {"/api/training/jobs/{id}/cancel", NULL, tq_h_job_cancel, NULL},
    {"/api/training/jobs/{id}/events", tq_h_job_events, NULL, NULL},
};
#define N_ROUTES (sizeof routes / sizeof routes[0])

static const char *route_labels[N_ROUTES];

struct tq_http {
    struct MHD_Daemon *d;
    const tq_app *app;
    int port;
    atomic_int in_flight;
    struct sockaddr_storage addr;
    tq_admit *admit;
    tq_netlist *trusted;
    pthread_t sweeper;
    int sweeper_started;
    pthread_mutex_t stop_mu;
    pthread_cond_t stop_cv;
    int stopping;
};

struct tq_req {
    struct MHD_Connection *conn;
    tq_http *srv;
    int route; /* index into routes, -1 when nothing matched */
    char method[16];
    char path[257];
    char param[PARAM_MAX];
    char *body;
    size_t len, cap;
    size_t discarded;
    int too_large;
    char request_id[REQUEST_ID_MAX + 1];
    char user[TQ_AUTH_USER_ID_MAX + 1];
    char client[TQ_ADMIT_ADDR_MAX];
    tq_admit_conn *ac; /* the connection's admission slot; NULL if it has none */
    struct timespec t0;
    unsigned status;
    int replied;
    struct {
        char name[64];
        char value[512];
    } hdr[EXTRA_HEADERS];
    int nhdr;
};

/* ------------------------------------------------------------------ accessors */

const tq_app *tq_req_app(const tq_req *r)
{
    return r->srv->app;
}

const char *tq_req_header(tq_req *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

const char *tq_req_query(tq_req *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
}

const char *tq_req_body(const tq_req *r, size_t *len)
{
    *len = r->len;
    return r->body ? r->body : "";
}

const char *tq_req_param(const tq_req *r)
{
    return r->param;
}

const char *tq_req_user(const tq_req *r)
{
    return r->user;
}

const char *tq_req_id(const tq_req *r)
{
    return r->request_id;
}

/* ------------------------------------------------------------------ replies */

void tq_req_add_header(tq_req *r, const char *name, const char *value)
{
    if (r->nhdr >= EXTRA_HEADERS)
        return;
    snprintf(r->hdr[r->nhdr].name, sizeof r->hdr[0].name, "%s", name);
    snprintf(r->hdr[r->nhdr].value, sizeof r->hdr[0].value, "%s", value);
    r->nhdr++;
}

/* 1 if origin is one of the comma-separated entries of list (spaces around entries are
 * ignored; comparison is exact, as browsers send the origin verbatim). */
static int origin_listed(const char *list, const char *origin)
{
    size_t olen = strlen(origin);
    const char *p = list;
    while (*p) {
        while (*p == ' ' || *p == ',')
            p++;
        const char *e = p;
        while (*e && *e != ',')
            e++;
        const char *end = e;
        while (end > p && end[-1] == ' ')
            end--;
        if ((size_t)(end - p) == olen && olen && memcmp(p, origin, olen) == 0)
            return 1;
        p = e;
    }
    return 0;
}

static void add_cors(tq_req *r, struct MHD_Response *resp, int preflight)
{
    const char *list = r->srv->app->cfg->cors_origins;
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
        MHD_add_response_header(resp, "Access-Control-Allow-Headers",
                                "Authorization, Content-Type, Idempotency-Key, X-Request-Id");
        MHD_add_response_header(resp, "Access-Control-Max-Age", "600");
    } else {
        MHD_add_response_header(resp, "Access-Control-Expose-Headers",
                                "Retry-After, X-Request-Id, WWW-Authenticate");
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

void tq_req_reply_text(tq_req *r, unsigned status, const char *content_type, const char *text,
                       size_t len)
{
    if (r->replied)
        return;
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)(uintptr_t)text, MHD_RESPMEM_MUST_COPY);
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

void tq_req_reply_db_error(tq_req *r, int rc, const tq_errbuf *eb)
{
    if (rc == TQ_ERR_UNAVAILABLE) {
        tq_logj(TQ_LOG_WARN, "http.db_unavailable", json_pack("{s:s}", "request_id", r->request_id),
                "%s", eb->msg);
        tq_req_add_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "5");
        tq_req_reply_error(r, 503, "service temporarily unavailable");
        return;
    }
    tq_logj(TQ_LOG_ERROR, "http.internal_error", json_pack("{s:s}", "request_id", r->request_id),
            "%s: %s", tq_strerror(rc), eb->msg);
    tq_req_reply_error(r, 500, "internal server error");
}

/* ------------------------------------------------------------------ guards */

/* error_description is a quoted-string: keep printable ASCII minus quote and backslash. */
static void quoted_safe(char *dst, size_t cap, const char *src)
{
    size_t j = 0;
    for (size_t i = 0; src[i] && j + 1 < cap; i++) {
        unsigned char ch = (unsigned char)src[i];
        dst[j++] = (ch >= 0x20 && ch < 0x7f && ch != '"' && ch != '\\') ? (char)ch : ' ';
    }
    dst[j] = '\0';
}

int tq_req_authenticate(tq_req *r)
{
    const char *h = tq_req_header(r, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h) {
        tq_req_add_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"trainq\"");
        tq_req_reply_error(r, 401, "missing bearer token");
        return -1;
    }
    tq_errbuf eb = {{0}};
    int rc =
        tq_auth_verify(r->srv->app->auth, h, (long long)time(NULL), r->user, sizeof r->user, &eb);
    if (rc == TQ_OK)
        return 0;
    r->user[0] = '\0';
    if (rc != TQ_ERR_AUTH) {
        tq_logj(TQ_LOG_ERROR, "http.auth_error", json_pack("{s:s}", "request_id", r->request_id),
                "%s: %s", tq_strerror(rc), eb.msg);
        tq_req_reply_error(r, 500, "internal server error");
        return -1;
    }
    char desc[200], www[300];
    quoted_safe(desc, sizeof desc, eb.msg[0] ? eb.msg : "invalid token");
    snprintf(www, sizeof www,
             "Bearer realm=\"trainq\", error=\"invalid_token\", error_description=\"%s\"", desc);
    tq_req_add_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, www);
    tq_req_reply_error(r, 401, eb.msg[0] ? eb.msg : "invalid token");
    return -1;
}

int tq_req_rate_limit(tq_req *r, const char *bucket, int default_per_minute)
{
    int count = 0, limit = 0, retry = 1;
    tq_errbuf eb = {{0}};
    int rc = tq_pdb_rate_hit(r->user, bucket, default_per_minute, &count, &limit, &retry, &eb);
    if (rc != TQ_OK) {
        tq_req_reply_db_error(r, rc, &eb);
        return -1;
    }
    char v[32];
    snprintf(v, sizeof v, "%d", limit);
    tq_req_add_header(r, "X-RateLimit-Limit", v);
    snprintf(v, sizeof v, "%d", count >= limit ? 0 : limit - count);
    tq_req_add_header(r, "X-RateLimit-Remaining", v);
    if (count <= limit)
        return 0;
    snprintf(v, sizeof v, "%d", retry);
    tq_req_add_header(r, MHD_HTTP_HEADER_RETRY_AFTER, v);
    tq_req_reply_error(r, 429, "rate limit exceeded");
    return -1;
}

/* ------------------------------------------------------------------ dispatch */

/* Matches path against the table; fills r->route and r->param. A single trailing slash
 * is ignored ("/api/training/jobs/" lists). */
static void match_route(tq_req *r, const char *url)
{
    r->route = -1;
    size_t ulen = strlen(url);
    if (ulen > 1 && url[ulen - 1] == '/')
        ulen--;
    for (size_t i = 0; i < N_ROUTES; i++) {
        const char *p = routes[i].pattern;
        const char *u = url;
        const char *uend = url + ulen;
        char param[PARAM_MAX] = "";
        int ok = 1;
        while (*p && ok) {
            if (strncmp(p, "{id}", 4) == 0) {
                const char *seg = u;
                while (u < uend && *u != '/')
                    u++;
                size_t n = (size_t)(u - seg);
                if (n == 0 || n >= sizeof param)
                    ok = 0;
                else {
                    memcpy(param, seg, n);
                    param[n] = '\0';
                }
                p += 4;
            } else if (u < uend && *p == *u) {
                p++;
                u++;
            } else {
                ok = 0;
            }
        }
        if (ok && u == uend) {
            r->route = (int)i;
            memcpy(r->param, param, sizeof param);
            return;
        }
    }
}

static void allow_of(const route *rt, char *out, size_t cap)
{
    snprintf(out, cap, "%s%s%sOPTIONS", rt->get ? "GET, HEAD, " : "", rt->post ? "POST, " : "",
             rt->del ? "DELETE, " : "");
}

static void dispatch(tq_req *r)
{
    if (r->route < 0) {
        tq_req_reply_error(r, 404, "not found");
        return;
    }
    const route *rt = &routes[r->route];
    char allow[64];
    allow_of(rt, allow, sizeof allow);
    if (strcmp(r->method, "OPTIONS") == 0) {
        struct MHD_Response *resp =
            MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
        if (resp) {
            MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
            const char *list = r->srv->app->cfg->cors_origins;
            if (list && *list)
                MHD_add_response_header(resp, "Access-Control-Allow-Methods", allow);
        }
        queue(r, 204, resp, NULL, 1);
        return;
    }
    handler_fn fn = NULL;
    if (strcmp(r->method, "GET") == 0 || strcmp(r->method, "HEAD") == 0)
        fn = rt->get;
    else if (strcmp(r->method, "POST") == 0)
        fn = rt->post;
    else if (strcmp(r->method, "DELETE") == 0)
        fn = rt->del;
    if (!fn) {
        tq_req_add_header(r, MHD_HTTP_HEADER_ALLOW, allow);
        tq_req_reply_error(r, 405, "method not allowed");
        return;
    }
    if (r->too_large) {
        tq_req_reply_error(r, 413, "request body too large");
        return;
    }
    fn(r);
    if (!r->replied) {
        tq_log(TQ_LOG_ERROR, "http.no_reply", "handler of %s gave no reply (request %s)",
               rt->pattern, r->request_id);
        tq_req_reply_error(r, 500, "internal server error");
    }
}

static int request_id_sane(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++) {
        char c = s[n];
        if (n >= REQUEST_ID_MAX || !((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                                     (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return n > 0;
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static tq_admit_conn *conn_slot(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? (tq_admit_conn *)ci->socket_context : NULL;
}

static tq_req *req_new(tq_http *srv, struct MHD_Connection *c, const char *url, const char *method)
{
    tq_req *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    clock_gettime(CLOCK_MONOTONIC, &r->t0);
    r->conn = c;
    r->srv = srv;
    snprintf(r->method, sizeof r->method, "%s", method);
    snprintf(r->path, sizeof r->path, "%s", url);
    const char *rid = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Request-Id");
    if (rid && request_id_sane(rid))
        snprintf(r->request_id, sizeof r->request_id, "%s", rid);
    else
        tq_uuid_generate(r->request_id);
    match_route(r, url);
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    tq_client_address(srv->trusted, ci ? ci->client_addr : NULL,
                      MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Forwarded-For"),
                      r->client);
    r->ac = conn_slot(c);
    atomic_fetch_add(&srv->in_flight, 1);
    return r;
}

static int append_body(tq_req *r, const char *data, size_t n, size_t max)
{
    if (r->too_large || r->len + n > max) {
        r->too_large = 1;
        free(r->body);
        r->body = NULL;
        r->len = r->cap = 0;
        r->discarded += n;
        return r->discarded <= DISCARD_MAX ? 0 : -1;
    }
    if (r->len + n + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 1024;
        while (cap < r->len + n + 1)
            cap *= 2;
        char *b = realloc(r->body, cap);
        if (!b)
            return -1;
        r->body = b;
        r->cap = cap;
    }
    memcpy(r->body + r->len, data, n);
    r->len += n;
    r->body[r->len] = '\0';
    return 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    (void)version;
    tq_http *srv = cls;
    tq_req *r = *con_cls;
    size_t max = (size_t)srv->app->cfg->max_body_bytes;
    if (!r) {
        r = req_new(srv, c, url, method);
        if (!r)
            return MHD_NO;
        *con_cls = r;
        tq_admit_set_phase(srv->admit, r->ac, TQ_PHASE_BODY, now_ms());
        /* A reserve connection (taken while every ordinary one was) is for health checks
         * only; anything else is told to come back, before its body is read. */
        if (tq_admit_is_reserve(r->ac) &&
            (r->route < 0 || (strcmp(routes[r->route].pattern, "/healthz") != 0 &&
                              strcmp(routes[r->route].pattern, "/readyz") != 0))) {
            tq_metrics_conn(TQ_CONN_RESERVE_BUSY);
            tq_req_add_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "1");
            tq_req_add_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
            tq_req_reply_error(r, 503, "server busy, retry later");
            return MHD_YES;
        }
        /* A declared length over the cap is refused before reading a byte of it; MHD then
         * closes the connection, which is right for a client sending that much. */
        const char *cl =
            MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl) {
            char *end = NULL;
            errno = 0;
            unsigned long long v = strtoull(cl, &end, 10);
            if (errno == ERANGE || v > max) {
                r->too_large = 1;
                tq_req_reply_error(r, 413, "request body too large");
            }
        }
        return MHD_YES;
    }
    if (*upload_data_size) {
        if (!r->replied && append_body(r, upload_data, *upload_data_size, max) != 0)
            return MHD_NO;
        *upload_data_size = 0;
        return MHD_YES;
    }
    tq_admit_set_phase(srv->admit, r->ac, TQ_PHASE_BUSY, now_ms());
    if (!r->replied) {
        /* A health reserve connection closes after its answer, so it frees its slot. */
        if (tq_admit_is_reserve(r->ac))
            tq_req_add_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
        dispatch(r);
    }
    return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    tq_http *srv = cls;
    tq_req *r = *con_cls;
    if (!r)
        return;
    *con_cls = NULL;
    /* A kept-alive connection now waits for its next request's headers. */
    tq_admit_set_phase(srv->admit, conn_slot(c), TQ_PHASE_HEADERS, now_ms());
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - r->t0.tv_sec) + (double)(t1.tv_nsec - r->t0.tv_nsec) / 1e9;
    const char *label = r->route >= 0 ? routes[r->route].pattern : "other";
    if (r->replied)
        tq_metrics_observe(r->route >= 0 ? (size_t)r->route : N_ROUTES, r->status, secs);
    json_t *f = json_object();
    if (f) {
        json_object_set_new(f, "method", json_string(r->method));
        json_object_set_new(f, "route", json_string(label));
        json_t *p = json_string(r->path); /* NULL (skipped) when not UTF-8 */
        if (p)
            json_object_set_new(f, "path", p);
        json_object_set_new(f, "status", json_integer(r->replied ? r->status : 0));
        /* integers: jansson would print 0.117 as 0.11700000000000001 */
        json_object_set_new(f, "ms", json_integer((json_int_t)(secs * 1e3 + 0.5)));
        json_object_set_new(f, "us", json_integer((json_int_t)(secs * 1e6)));
        json_object_set_new(f, "request_id", json_string(r->request_id));
        json_object_set_new(f, "client", json_string(r->client));
        if (r->user[0])
            json_object_set_new(f, "user", json_string(r->user));
        if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
            json_object_set_new(f, "terminated", json_integer((json_int_t)toe));
    }
    tq_logj(TQ_LOG_INFO, "http.request", f, "%s %s %u", r->method, label,
            r->replied ? r->status : 0);
    free(r->body);
    free(r);
    atomic_fetch_sub(&srv->in_flight, 1);
}

__attribute__((format(printf, 2, 0))) static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    msg[strcspn(msg, "\n")] = '\0';
    tq_log(TQ_LOG_WARN, "http.mhd", "%s", msg);
}

/* ------------------------------------------------------------------ admission */

/* MHD's accept policy: runs on the accepting thread before MHD allocates anything for the
 * socket; MHD_NO closes it at once, so a refused client learns in one round trip instead
 * of waiting in the listen backlog. */
static enum MHD_Result on_accept(void *cls, const struct sockaddr *addr, socklen_t len)
{
    (void)len;
    tq_http *srv = cls;
    switch (tq_admit_check(srv->admit, addr)) {
    case TQ_ADMIT_OK:
        return MHD_YES;
    case TQ_ADMIT_REFUSE_CLIENT:
        tq_metrics_conn(TQ_CONN_REFUSED_CLIENT);
        return MHD_NO;
    case TQ_ADMIT_REFUSE_FULL:
        tq_metrics_conn(TQ_CONN_REFUSED_FULL);
        return MHD_NO;
    }
    return MHD_NO;
}

/* MHD calls CLOSED before it closes the socket (and from the connection's own thread), so
 * while the slot is open its fd is this connection's: the sweeper may shut it down. */
static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    tq_http *srv = cls;
    if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        tq_admit_close(srv->admit, *socket_context);
        *socket_context = NULL;
        return;
    }
    const union MHD_ConnectionInfo *fdi =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    const union MHD_ConnectionInfo *ai =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!fdi)
        return;
    tq_admit_conn *ac =
        tq_admit_open(srv->admit, ai ? ai->client_addr : NULL, fdi->connect_fd, now_ms());
    if (!ac) {
        /* More accepted than the table holds (see TQ_ADMIT_SLACK): let MHD close it. */
        tq_metrics_conn(TQ_CONN_REFUSED_FULL);
        shutdown(fdi->connect_fd, SHUT_RDWR);
    }
    *socket_context = ac;
}

/* Under the admission table's mutex: the fd is still the expired connection's. shutdown()
 * (not close) wakes MHD's epoll with end-of-file, and MHD closes and cleans up as for any
 * client that went away. */
static void cut_connection(int fd, tq_admit_phase p, void *arg)
{
    (void)arg;
    shutdown(fd, SHUT_RDWR);
    tq_metrics_conn(p == TQ_PHASE_BODY ? TQ_CONN_CUT_BODY : TQ_CONN_CUT_HEADERS);
}

static void log_shed(unsigned long long last[TQ_CONN_N_EVENTS], int open)
{
    unsigned long long d[TQ_CONN_N_EVENTS], any = 0;
    for (int i = 0; i < TQ_CONN_N_EVENTS; i++) {
        unsigned long long v = tq_metrics_conn_total((tq_metrics_conn_event)i);
        d[i] = v - last[i];
        last[i] = v;
        any |= d[i];
    }
    if (!any)
        return;
    tq_logj(TQ_LOG_WARN, "http.shed",
            json_pack("{s:I, s:I, s:I, s:I, s:I, s:i}", "refused_per_client",
                      (json_int_t)d[TQ_CONN_REFUSED_CLIENT], "refused_full",
                      (json_int_t)d[TQ_CONN_REFUSED_FULL], "reserve_503",
                      (json_int_t)d[TQ_CONN_RESERVE_BUSY], "cut_headers",
                      (json_int_t)d[TQ_CONN_CUT_HEADERS], "cut_body",
                      (json_int_t)d[TQ_CONN_CUT_BODY], "open", open),
            "shed load in the last %d s: %llu connections refused, %llu past their deadline",
            SHED_LOG_MS / 1000, d[TQ_CONN_REFUSED_CLIENT] + d[TQ_CONN_REFUSED_FULL],
            d[TQ_CONN_CUT_HEADERS] + d[TQ_CONN_CUT_BODY]);
}

static void *sweeper_main(void *arg)
{
    tq_http *h = arg;
    unsigned long long last[TQ_CONN_N_EVENTS] = {0};
    long long next_log = now_ms() + SHED_LOG_MS;
    pthread_mutex_lock(&h->stop_mu);
    while (!h->stopping) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += SWEEP_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&h->stop_cv, &h->stop_mu, &ts);
        if (h->stopping)
            break;
        pthread_mutex_unlock(&h->stop_mu);
        long long now = now_ms();
        tq_admit_sweep(h->admit, now, cut_connection, NULL);
        int open = tq_admit_open_count(h->admit);
        tq_metrics_conn_open(open);
        if (now >= next_log) {
            log_shed(last, open);
            next_log = now + SHED_LOG_MS;
        }
        pthread_mutex_lock(&h->stop_mu);
    }
    pthread_mutex_unlock(&h->stop_mu);
    return NULL;
}

/* ------------------------------------------------------------------ server */

static int resolve(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len,
                   tq_errbuf *eb)
{
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    char ports[16];
    snprintf(ports, sizeof ports, "%d", port);
    int rc = getaddrinfo(host, ports, &hints, &res);
    if (rc != 0 || !res)
        return tq_errf(eb, TQ_ERR_CONFIG, "cannot resolve http host \"%s\": %s", host,
                       gai_strerror(rc));
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return TQ_OK;
}

/* MHD's own limit sits above ours (ordinary + reserve + the admission table's slack): MHD
 * at its limit stops accepting and leaves connections in the backlog, which is what the
 * admission table exists to avoid; we refuse first, at once. */
static unsigned mhd_connection_limit(const tq_config *cfg)
{
    return (unsigned)cfg->http_max_connections + HEALTH_RESERVE + TQ_ADMIT_SLACK;
}

/* File descriptors besides HTTP connections: Postgres (one per HTTP thread and the relay),
 * RabbitMQ, epoll and inter-thread pipes of the pool, stdio, log. */
#define OTHER_FDS 64

int tq_http_prepare(const tq_config *cfg, tq_errbuf *eb)
{
    tq_netlist *l = NULL;
    int rc = tq_netlist_parse(cfg->http_trusted_proxies, &l, eb);
    tq_netlist_free(l);
    if (rc != TQ_OK)
        return rc;
    rlim_t need = (rlim_t)mhd_connection_limit(cfg) + (rlim_t)cfg->http_threads * 4 + OTHER_FDS;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return TQ_OK;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
        if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need)
            return tq_errf(eb, TQ_ERR_CONFIG,
                           "TRAINQ_HTTP_MAX_CONNECTIONS %d needs %llu file descriptors, the hard "
                           "limit (ulimit -Hn) is %llu",
                           cfg->http_max_connections, (unsigned long long)need,
                           (unsigned long long)rl.rlim_max);
        rl.rlim_cur = need;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            return tq_errf(eb, TQ_ERR_CONFIG,
                           "could not raise the file descriptor limit to %llu: %s",
                           (unsigned long long)need, strerror(errno));
    }
    return TQ_OK;
}

static void http_free(tq_http *h)
{
    if (h->sweeper_started) {
        pthread_mutex_lock(&h->stop_mu);
        h->stopping = 1;
        pthread_cond_signal(&h->stop_cv);
        pthread_mutex_unlock(&h->stop_mu);
        pthread_join(h->sweeper, NULL);
    }
    pthread_cond_destroy(&h->stop_cv);
    pthread_mutex_destroy(&h->stop_mu);
    tq_admit_free(h->admit);
    tq_netlist_free(h->trusted);
    free(h);
}

int tq_http_start(const tq_app *app, tq_http **out, tq_errbuf *eb)
{
    *out = NULL;
    const tq_config *cfg = app->cfg;
    tq_http *h = calloc(1, sizeof *h);
    if (!h)
        return tq_errf(eb, TQ_ERR_NOMEM, "out of memory");
    h->app = app;
    atomic_init(&h->in_flight, 0);
    pthread_mutex_init(&h->stop_mu, NULL);
    pthread_cond_init(&h->stop_cv, NULL);
    for (size_t i = 0; i < N_ROUTES; i++)
        route_labels[i] = routes[i].pattern;
    tq_metrics_init(route_labels, N_ROUTES);

    int rc = tq_netlist_parse(cfg->http_trusted_proxies, &h->trusted, eb);
    tq_admit_config acfg = {
        .max_connections = cfg->http_max_connections,
        .reserve = HEALTH_RESERVE,
        .per_client = cfg->http_max_connections_per_client,
        .header_ms = cfg->http_header_timeout_seconds * 1000,
        .body_ms = cfg->http_body_timeout_seconds * 1000,
        .idle_ms = cfg->request_timeout_seconds * 1000,
        .trusted = h->trusted,
    };
    if (rc == TQ_OK)
        rc = tq_admit_new(&acfg, &h->admit, eb);
    socklen_t alen = 0;
    if (rc == TQ_OK)
        rc = resolve(cfg->http_host, cfg->http_port, &h->addr, &alen, eb);
    if (rc != TQ_OK) {
        http_free(h);
        return rc;
    }
    unsigned flags =
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ITC | MHD_USE_ERROR_LOG;
    if (h->addr.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    h->d = MHD_start_daemon(
        flags, (uint16_t)app->cfg->http_port, on_accept, h, on_request, h,
        MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, /* first, so every message goes here */
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&h->addr, MHD_OPTION_THREAD_POOL_SIZE,
        (unsigned int)app->cfg->http_threads, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned int)app->cfg->request_timeout_seconds, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)CONN_MEMORY_LIMIT, MHD_OPTION_CONNECTION_LIMIT, mhd_connection_limit(cfg),
        MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned int)1, MHD_OPTION_NOTIFY_COMPLETED,
        on_completed, h, MHD_OPTION_NOTIFY_CONNECTION, on_connection, h, MHD_OPTION_END);
    if (!h->d) {
        int e = errno;
        http_free(h);
        return tq_errf(eb, TQ_ERR_IO, "could not listen on %s:%d: %s", app->cfg->http_host,
                       app->cfg->http_port, strerror(e));
    }
    if (pthread_create(&h->sweeper, NULL, sweeper_main, h) != 0) {
        MHD_stop_daemon(h->d);
        http_free(h);
        return tq_errf(eb, TQ_ERR_NOMEM, "could not start the connection sweeper thread");
    }
    h->sweeper_started = 1;
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    h->port = di ? di->port : app->cfg->http_port;
    *out = h;
    return TQ_OK;
}

int tq_http_port(const tq_http *h)
{
    return h->port;
}

void tq_http_stop(tq_http *h, int drain_ms)
{
    if (!h)
        return;
    /* No new connections from here on; the listening socket is ours to close. */
    MHD_socket ls = MHD_quiesce_daemon(h->d);
    if (ls != MHD_INVALID_SOCKET)
        close(ls);
    for (int waited = 0; atomic_load(&h->in_flight) > 0 && waited < drain_ms; waited += 10) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    int left = atomic_load(&h->in_flight);
    if (left > 0)
        tq_log(TQ_LOG_WARN, "http.drain_timeout", "%d requests still in flight after %d ms", left,
               drain_ms);
    MHD_stop_daemon(h->d);
    http_free(h);
}
