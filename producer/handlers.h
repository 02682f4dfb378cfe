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
 *   ops.c     GET    /healthz  /readyz  /metrics
 */
#ifndef TQ_HANDLERS_H
#define TQ_HANDLERS_H

#include "guards.h"
#include "request.h"

void tq_h_submit(tq_req *r);

void tq_h_job_list(tq_req *r);
void tq_h_job_get(tq_req *r);
void tq_h_job_cancel(tq_req *r);
void tq_h_job_events(tq_req *r);
void tq_h_job_delete(tq_req *r);

void tq_h_healthz(tq_req *r);
void tq_h_readyz(tq_req *r);
void tq_h_metrics(tq_req *r);

#endif
