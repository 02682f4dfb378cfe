/*
 * http — the producer's HTTP server (libmicrohttpd, epoll thread pool): it admits
 * connections (admit.h), reads each request's (capped) body, hands the request to the
 * route table's dispatcher (routes.h) and writes the access-log line and the metrics.
 *
 * One tq_req (request.h) lives per HTTP request: created when MHD sees the request line,
 * filled with the body, handed to exactly one handler, and freed in MHD's completed
 * callback after the access-log line and the metrics are written.
 *
 * What must stay true:
 *  - every request gets exactly one response; a handler that does not reply is answered
 *    500 by the dispatcher;
 *  - a response other than 413 (and the 503 of a health-reserve connection, admit.h) is
 *    only queued after the whole body was read, so MHD can keep the connection alive;
 *  - every connection has an admission slot from MHD's connection notification until its
 *    close notification; the slot's deadlines bound how long a request may take to arrive;
 *  - every response carries X-Request-Id, Cache-Control: no-store and the CORS headers;
 *  - nothing from the server's internals (SQL errors, host names) reaches a response body.
 */
#ifndef TQ_HTTP_H
#define TQ_HTTP_H

#include "poptions.h"
#include "request.h"
#include "tq_err.h"

/* ---- the server ---- */

typedef struct tq_http tq_http;

/* Raises the file descriptor soft limit to what TRAINQ_HTTP_MAX_CONNECTIONS needs.
 * TQ_ERR_CONFIG with one line in eb when the hard limit is lower. Call before any thread
 * starts. */
int tq_http_prepare(const tq_config *cfg, tq_errbuf *eb);
/* Binds cfg->http_host:http_port (port 0: any free port) and starts the thread pool.
 * app must outlive the server. *out is caller-owned (tq_http_stop). */
int tq_http_start(const tq_app *app, tq_http **out, tq_errbuf *eb);
/* The port actually bound. */
int tq_http_port(const tq_http *h);
/* Stops accepting, waits up to drain_ms for in-flight requests to complete, then stops
 * the threads and frees h. NULL is fine. */
void tq_http_stop(tq_http *h, int drain_ms);

#endif
