/*
 * handlers — one function per HTTP endpoint, named by the route table (routes.c) and
 * called by its dispatcher after the route and method matched and the whole body was
 * read. Each replies exactly once through the request API (request.h), after the guards
 * (guards.h) it needs.
 *
 *   submit.c  POST   /api/training/submit
 *   jobs.c    GET    /api/training/jobs            GET    /api/training/jobs/{id}
 *             POST   /api/training/jobs/{id}/cancel
 *             GET    /api/training/jobs/{id}/events DELETE /api/training/jobs/{id}
 *   live.c    GET    /api/training/jobs/{id}/logs   GET /api/training/jobs/{id}/stream
 *             GET    /api/training/jobs/{id}/progress
 *   admin.c   /api/admin/...                        ui.c  GET /ui/{name}
 *             GET    /api/training/jobs/{id}/artifacts  .../artifacts/{name}  GET
 * /api/training/stream ops.c     GET    /healthz  /readyz  /metrics
 */
#ifndef TQ_HANDLERS_H
#define TQ_HANDLERS_H

#include "guards.h"
#include "request.h"
#include "tq_status.h"
#include "tq_uuid.h"

/* Shared by the job handlers (jobs.c, live.c): authenticate and count against the read
 * limit (-1: replied); a 400 naming one field; the {id} segment (or given text) as a
 * canonical uuid (-1: replied 400); 404 for absent or another user's, else 503/500. */
int tq_job_guard(tq_req *r);
void tq_job_bad_request(tq_req *r, const char *field, const char *message);
int tq_job_id_param(tq_req *r, char id[TQ_UUID_BUF]);
/* An integer query parameter such as ?limit=: def when absent or empty, else decimal
 * digits 1..max (-1: replied 400 naming it). */
int tq_job_int_param(tq_req *r, const char *name, int def, int max, int *out);
/* The ?status= query: *status NULL when absent or empty, else its parsed *st (-1: replied
 * 400 naming status). */
int tq_job_status_param(tq_req *r, const char **status, tq_job_status *st);
void tq_job_reply_failure(tq_req *r, int rc, const tq_errbuf *eb);

void tq_h_submit(tq_req *r);

void tq_h_job_list(tq_req *r);
void tq_h_job_get(tq_req *r);
void tq_h_job_cancel(tq_req *r);
void tq_h_job_events(tq_req *r);
void tq_h_job_delete(tq_req *r);

void tq_h_usage(tq_req *r); /* usage.c: GET /api/training/usage */

void tq_h_job_logs(tq_req *r);
void tq_h_job_stream(tq_req *r);
void tq_h_job_artifacts(tq_req *r);
void tq_h_job_artifact(tq_req *r);
void tq_h_stream_all(tq_req *r);

/* A Range header against a file of size bytes: 1 with start and len for one satisfiable
 * range, -1 when unsatisfiable (416), 0 to send the whole file (absent, not "bytes=",
 * several ranges, or malformed: RFC 9110 lets a server ignore those). */
int tq_range_parse(const char *h, unsigned long long size, unsigned long long *start,
                   unsigned long long *len);

/* Webhooks (webhook_api.c). tq_webhook_events_json: the events array of a request (NULL:
 * every event) as compact JSON text (caller frees), or NULL with an error on field in v;
 * tq_webhook_url_field: the URL rule (webhooks.c) on a request's field (-1: error in v). */
char *tq_webhook_events_json(const json_t *events, tq_validation *v, const char *field);
int tq_webhook_url_field(const tq_req *r, const json_t *url, tq_validation *v, const char *field);
void tq_h_webhook_create(tq_req *r);
void tq_h_webhook_list(tq_req *r);
void tq_h_webhook_delete(tq_req *r);
void tq_h_webhook_rotate(tq_req *r);
void tq_h_webhook_deliveries(tq_req *r);
void tq_h_webhook_default_secret(tq_req *r);

/* GET /api/training/me: the caller's user id and whether the token is an operator's. */
void tq_h_me(tq_req *r);
/* The admin API (admin.c): an operator's token only (403 otherwise). */
void tq_h_admin_overview(tq_req *r);
void tq_h_admin_workers(tq_req *r);
void tq_h_admin_users(tq_req *r);
void tq_h_admin_dead_letters(tq_req *r);
void tq_h_admin_jobs(tq_req *r);
void tq_h_admin_job_cancel(tq_req *r);
void tq_h_admin_job_retry(tq_req *r);
void tq_h_admin_dead_letter_republish(tq_req *r);
void tq_h_admin_worker_drain(tq_req *r);
void tq_h_admin_worker_undrain(tq_req *r);

/* The dashboard's static files (ui.c). */
void tq_h_ui(tq_req *r);

/* A job's kept progress samples (live.c): the dashboard's loss curve. */
void tq_h_job_progress(tq_req *r);

void tq_h_healthz(tq_req *r);
void tq_h_readyz(tq_req *r);
void tq_h_metrics(tq_req *r);

#endif
