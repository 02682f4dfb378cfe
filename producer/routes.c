/*
 * The static route table: every endpoint, the handler of each method (handlers.h), and
 * the dispatch from a request to one of them.
 */
#include "routes.h"

#include <stdio.h>
#include <string.h>

#include "handlers.h"
#include "metrics.h"
#include "request_impl.h"
#include "tq_log.h"

/* "GET, HEAD, POST, DELETE, OPTIONS" and a NUL fit. */
#define ALLOW_BUF 64

typedef void (*handler_fn)(tq_req *r);

/* A pattern segment "{...}" ("{id}", "{name}") matches any one segment; the matched
 * segments go to the request's param, joined by '/'. */
typedef struct {
    const char *pattern;
    handler_fn get, post, del;
} route_entry;

static const route_entry routes[] = {
    {"/healthz", tq_h_healthz, NULL, NULL},
    {"/readyz", tq_h_readyz, NULL, NULL},
    {"/metrics", tq_h_metrics, NULL, NULL},
    {"/api/training/submit", NULL, tq_h_submit, NULL},
    {"/api/training/jobs", tq_h_job_list, NULL, NULL},
    {"/api/training/jobs/{id}", tq_h_job_get, NULL, tq_h_job_delete},
    {"/api/training/jobs/{id}/cancel", NULL, tq_h_job_cancel, NULL},
    {"/api/training/jobs/{id}/events", tq_h_job_events, NULL, NULL},
    {"/api/training/jobs/{id}/logs", tq_h_job_logs, NULL, NULL},
    {"/api/training/jobs/{id}/stream", tq_h_job_stream, NULL, NULL},
    {"/api/training/jobs/{id}/artifacts", tq_h_job_artifacts, NULL, NULL},
    {"/api/training/jobs/{id}/artifacts/{name}", tq_h_job_artifact, NULL, NULL},
    {"/api/training/stream", tq_h_stream_all, NULL, NULL},
    {"/api/training/usage", tq_h_usage, NULL, NULL},
    /* before ".../{id}", which would take "default-secret" for an id */
    {"/api/training/webhooks/default-secret", tq_h_webhook_default_secret, NULL, NULL},
    {"/api/training/webhooks", tq_h_webhook_list, tq_h_webhook_create, NULL},
    {"/api/training/webhooks/{id}", NULL, NULL, tq_h_webhook_delete},
    {"/api/training/webhooks/{id}/rotate-secret", NULL, tq_h_webhook_rotate, NULL},
    {"/api/training/webhooks/{id}/deliveries", tq_h_webhook_deliveries, NULL, NULL},
    {"/api/training/jobs/{id}/progress", tq_h_job_progress, NULL, NULL},
    {"/api/training/me", tq_h_me, NULL, NULL},
    {"/api/admin/overview", tq_h_admin_overview, NULL, NULL},
    {"/api/admin/workers", tq_h_admin_workers, NULL, NULL},
    {"/api/admin/workers/{id}/drain", NULL, tq_h_admin_worker_drain, NULL},
    {"/api/admin/workers/{id}/undrain", NULL, tq_h_admin_worker_undrain, NULL},
    {"/api/admin/users", tq_h_admin_users, NULL, NULL},
    {"/api/admin/jobs", tq_h_admin_jobs, NULL, NULL},
    {"/api/admin/jobs/{id}/cancel", NULL, tq_h_admin_job_cancel, NULL},
    {"/api/admin/jobs/{id}/retry", NULL, tq_h_admin_job_retry, NULL},
    {"/api/admin/dead-letters", tq_h_admin_dead_letters, NULL, NULL},
    {"/api/admin/dead-letters/{id}/republish", NULL, tq_h_admin_dead_letter_republish, NULL},
    /* "/ui" and "/ui/" (the trailing slash is ignored) give index.html; "{name}" takes the
     * rest of the path, which ui.c refuses unless it is one plain file name. */
    {"/ui", tq_h_ui, NULL, NULL},
    {"/ui/{name}", tq_h_ui, NULL, NULL},
};
#define N_ROUTES (sizeof routes / sizeof routes[0])
_Static_assert(N_ROUTES <= TQ_METRICS_MAX_ROUTES,
               "every route needs its own label in /metrics: raise TQ_METRICS_MAX_ROUTES");

size_t tq_route_count(void)
{
    return N_ROUTES;
}

const char *const *tq_route_labels(void)
{
    static const char *labels[N_ROUTES];
    for (size_t i = 0; i < N_ROUTES; i++)
        labels[i] = routes[i].pattern;
    return labels;
}

const char *tq_route_label(int route)
{
    return route >= 0 && (size_t)route < N_ROUTES ? routes[route].pattern : "other";
}

int tq_route_is_health(int route)
{
    return route >= 0 && (routes[route].get == tq_h_healthz || routes[route].get == tq_h_readyz);
}

/* 1 if url[0..ulen) matches pattern p; its placeholder segments (if any) go to param,
 * joined by '/'. */
static int match_one(const char *p, const char *url, size_t ulen, char *param, size_t cap)
{
    const char *u = url, *uend = url + ulen;
    size_t used = 0;
    param[0] = '\0';
    while (*p) {
        if (*p == '{') {
            /* "{name}" (an artifact's path, always last in its pattern) takes the rest of
             * the path, slashes included: files in subdirectories of a job's outputs. */
            int rest = strncmp(p, "{name}", 6) == 0;
            const char *seg = u;
            while (u < uend && (rest || *u != '/'))
                u++;
            size_t n = (size_t)(u - seg), sep = used > 0;
            if (n == 0 || used + sep + n >= cap)
                return 0;
            if (sep)
                param[used++] = '/';
            memcpy(param + used, seg, n);
            used += n;
            param[used] = '\0';
            p = strchr(p, '}') + 1;
        } else if (u < uend && *p == *u) {
            p++;
            u++;
        } else {
            return 0;
        }
    }
    return u == uend;
}

/* The path as it is first, then without one trailing slash ("/api/training/jobs/"). In
 * that order because "{name}" takes the rest of the path: an artifact name ending in '/'
 * has an empty last component, which the handler refuses (404), where stripping the slash
 * first would have served the file under a name that is not listed. */
int tq_route_match(const char *url, char *param, size_t param_cap)
{
    size_t ulen = strlen(url);
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1 && !(ulen > 1 && url[ulen - 1] == '/'))
            break;
        size_t n = pass == 0 ? ulen : ulen - 1;
        for (size_t i = 0; i < N_ROUTES; i++)
            if (match_one(routes[i].pattern, url, n, param, param_cap))
                return (int)i;
    }
    param[0] = '\0';
    return -1;
}

static void allow_of(const route_entry *rt, char *out, size_t cap)
{
    snprintf(out, cap, "%s%s%sOPTIONS", rt->get ? "GET, HEAD, " : "", rt->post ? "POST, " : "",
             rt->del ? "DELETE, " : "");
}

void tq_route_dispatch(tq_req *r)
{
    if (r->route < 0) {
        tq_req_reply_error(r, 404, "not found");
        return;
    }
    const route_entry *rt = &routes[r->route];
    char allow[ALLOW_BUF];
    allow_of(rt, allow, sizeof allow);
    if (strcmp(r->method, "OPTIONS") == 0) {
        tq_req_reply_preflight(r, allow);
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
