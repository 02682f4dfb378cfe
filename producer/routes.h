/*
 * routes — the producer's static route table (routes.c, beside the handlers it names) and
 * the dispatcher the server calls once a request's body has been read.
 *
 * A route is identified by its index in the table; its label (the pattern, such as
 * "/api/training/jobs/{id}") is what logs and metrics show, so their cardinality is fixed.
 */
#ifndef TQ_ROUTES_H
#define TQ_ROUTES_H

#include <stddef.h>

#include "request.h"

/* Number of routes; metrics keep one more slot (index tq_route_count()) for "other". */
size_t tq_route_count(void);

/* The labels of every route, in table order (tq_route_count() of them); static. Call
 * before the server's threads start. */
const char *const *tq_route_labels(void);

/* The route's label, or "other" for -1. */
const char *tq_route_label(int route);

/* 1 for the routes a health-check reserve connection may use (/healthz, /readyz). */
int tq_route_is_health(int route);

/* Matches a request path; the route's index (-1 when none) and, for a route with an {id}
 * segment, that segment in param (else ""). A single trailing slash is ignored
 * ("/api/training/jobs/" lists). param must hold TQ_REQ_PARAM_MAX bytes (request_impl.h);
 * a longer segment matches nothing. */
int tq_route_match(const char *url, char *param, size_t param_cap);

/* Answers r: 404 (no route), 204 (OPTIONS preflight), 405 (method), 413 (body over the
 * cap), or the route's handler; a handler that gave no reply is answered 500. */
void tq_route_dispatch(tq_req *r);

#endif
