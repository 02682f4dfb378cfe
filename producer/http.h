/*
 * http — the producer's HTTP server (libmicrohttpd, epoll thread pool) and the small
 * request API its endpoint handlers use.
 *
 * One tq_req lives per HTTP request: created when MHD sees the request line, filled with
 * the (capped) body, handed to exactly one handler, and freed in MHD's completed callback
 * after the access-log line and the metrics are written.
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

#include <jansson.h>
#include <stddef.h>

#include "auth.h"
#include "poptions.h"
#include "tq_err.h"

struct tq_relay;

/* What handlers may read; borrowed by the server for its whole life. */
typedef struct {
    const tq_config *cfg;
    const tq_auth *auth;
    struct tq_relay *relay; /* NULL when the relay could not be started */
} tq_app;

typedef struct tq_req tq_req;

/* ---- request accessors (all borrowed until the request completes) ---- */
const tq_app *tq_req_app(const tq_req *r);
/* Request header / query argument, NULL when absent. */
const char *tq_req_header(tq_req *r, const char *name);
const char *tq_req_query(tq_req *r, const char *name);
/* The body (NUL-terminated copy, may contain NULs) and its length. */
const char *tq_req_body(const tq_req *r, size_t *len);
/* The {id} path segment of the matched route ("" when the route has none). */
const char *tq_req_param(const tq_req *r);
/* The authenticated user id ("" before tq_req_authenticate succeeded). */
const char *tq_req_user(const tq_req *r);
const char *tq_req_id(const tq_req *r);

/* ---- replies: the first reply wins, later ones are ignored ---- */

/* Adds a response header (copied; both capped at 512 bytes). Call before replying. */
void tq_req_add_header(tq_req *r, const char *name, const char *value);
/* Replies with body serialised as JSON; body is stolen (NULL → 500). */
void tq_req_reply_json(tq_req *r, unsigned status, json_t *body);
/* {success:false, error:msg} */
void tq_req_reply_error(tq_req *r, unsigned status, const char *msg);
/* Replies with the given text (copied) and content type. */
void tq_req_reply_text(tq_req *r, unsigned status, const char *content_type, const char *text,
                       size_t len);
/* Maps a database failure to 503 (TQ_ERR_UNAVAILABLE, with Retry-After) or 500, and logs
 * eb's detail with the request id (never sent to the client). */
void tq_req_reply_db_error(tq_req *r, int rc, const tq_errbuf *eb);

/* ---- guards: return 0 to go on, -1 when a response was already queued ---- */

/* Verifies the bearer token; 401 with WWW-Authenticate when it fails. */
int tq_req_authenticate(tq_req *r);
/* Counts one request in the user's fixed one-minute window of `bucket`
 * ("submit" | "read"); 429 with Retry-After when over the limit, 503 / 500 on DB errors. */
int tq_req_rate_limit(tq_req *r, const char *bucket, int default_per_minute);

/* ---- the server ---- */

typedef struct tq_http tq_http;

/* Checks the HTTP options that the option table cannot (the trusted proxy list) and raises
 * the file descriptor soft limit to what TRAINQ_HTTP_MAX_CONNECTIONS needs. TQ_ERR_CONFIG
 * with one line in eb when it cannot. Call before any thread starts. */
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
