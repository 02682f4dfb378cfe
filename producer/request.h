/*
 * request — the API an endpoint handler sees: one tq_req per HTTP request, its accessors
 * and its replies. The server (http.c) makes the request and frees it; handlers
 * (handlers.h) read it and reply through it; the guards (guards.h) authenticate it.
 *
 * What must stay true:
 *  - the first reply wins, later ones are ignored; every response carries X-Request-Id,
 *    Cache-Control: no-store and the CORS headers (request.c adds them in one place);
 *  - nothing from the server's internals (SQL errors, host names) reaches a response body:
 *    tq_req_reply_db_error logs the detail and sends a fixed message.
 */
#ifndef TQ_REQUEST_H
#define TQ_REQUEST_H

#include <jansson.h>
#include <stddef.h>

#include "auth.h"
#include "poptions.h"
#include "tq_err.h"
#include "tq_job.h"

struct tq_relay;
struct tq_streams;
struct tq_wake;

/* What handlers may read; borrowed by the server for its whole life. */
typedef struct {
    const tq_config *cfg;
    const tq_auth *auth;
    struct tq_relay *relay;     /* NULL when the relay could not be started */
    struct tq_streams *streams; /* the Server-Sent Events hub (stream.h) */
    struct tq_wake *wake;       /* after-commit wake-ups of submissions (wake.h) */
} tq_app;

typedef struct tq_req tq_req;

/* ---- accessors (all borrowed until the request completes) ---- */
const tq_app *tq_req_app(const tq_req *r);
/* Request header / query argument, NULL when absent. */
const char *tq_req_header(tq_req *r, const char *name);
const char *tq_req_query(tq_req *r, const char *name);
/* TRAINQ_CORS_ORIGINS: "*", empty, or comma-separated origins (scheme://host[:port]) that a
 * browser's Origin can equal. TQ_ERR_CONFIG with one line naming the first bad entry. */
int tq_req_cors_check(const char *list, tq_errbuf *eb);
/* 0 when the request's Content-Type is absent or application/json (parameters allowed);
 * otherwise replies 415 and returns -1. For every handler that reads a JSON body. */
int tq_req_require_json(tq_req *r);
/* The body (NUL-terminated copy, may contain NULs) and its length. */
const char *tq_req_body(const tq_req *r, size_t *len);
/* The {id} path segment of the matched route ("" when the route has none). */
const char *tq_req_param(const tq_req *r);
/* The authenticated user id ("" before tq_req_authenticate succeeded). */
const char *tq_req_user(const tq_req *r);
/* 1 when the authenticated token is an operator's (TRAINQ_ADMIN_CLAIM). */
int tq_req_is_operator(const tq_req *r);
const char *tq_req_id(const tq_req *r);

/* ---- replies: the first reply wins, later ones are ignored ---- */

/* Adds a response header (copied; the name is capped at TQ_REQ_HEADER_NAME_MAX bytes, the
 * value at TQ_REQ_HEADER_VALUE_MAX). Call before replying; at most TQ_REQ_EXTRA_HEADERS. */
#define TQ_REQ_HEADER_NAME_MAX 63
#define TQ_REQ_HEADER_VALUE_MAX 511
#define TQ_REQ_EXTRA_HEADERS 8
void tq_req_add_header(tq_req *r, const char *name, const char *value);
/* Replies with body serialised as JSON; body is stolen (NULL → 500). */
void tq_req_reply_json(tq_req *r, unsigned status, json_t *body);
/* {success:false, error:msg} */
void tq_req_reply_error(tq_req *r, unsigned status, const char *msg);
/* 400 {success:false, error, details: [{field, message}, ...]} — the one shape of a
 * request the API refuses field by field (docs/api.md, "Errors"). */
void tq_req_reply_invalid(tq_req *r, const char *error, const tq_validation *v);
/* Replies with the given text (copied) and content type. */
void tq_req_reply_text(tq_req *r, unsigned status, const char *content_type, const char *text,
                       size_t len);
/* Maps a database failure to 503 (TQ_ERR_UNAVAILABLE, with Retry-After) or 500, and logs
 * eb's detail with the request id (never sent to the client). */
void tq_req_reply_db_error(tq_req *r, int rc, const tq_errbuf *eb);

#endif
