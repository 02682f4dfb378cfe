/*
 * request_impl — the inside of a tq_req, for the producer's HTTP layer only: the server
 * (http.c) that makes and frees it, the request API (request.c), the route table
 * (routes.c) that dispatches it and the guards (guards.c) that set its user. Handlers
 * include request.h and never this file.
 */
#ifndef TQ_REQUEST_IMPL_H
#define TQ_REQUEST_IMPL_H

#include <microhttpd.h>

#include "admit.h"
#include "request.h"
#include "tq_buf.h"

/* Longest request id taken from a client's X-Request-Id (else a uuid is made). */
#define TQ_REQ_ID_MAX 64
/* The {id} path segment; longer ones match no route (a uuid is 36). */
/* The path's placeholder segments, joined by '/' (routes.c): a uuid and an artifact name
 * (at most 255 bytes); longer ones match no route. */
#define TQ_REQ_PARAM_MAX 300
/* Method and path as logged: longer ones are cut (MHD caps the whole request line). */
#define TQ_REQ_METHOD_BUF 16
#define TQ_REQ_PATH_BUF 257

struct tq_req {
    struct MHD_Connection *conn;
    const tq_app *app;
    int route; /* index into the route table (routes.h), -1 when nothing matched */
    char method[TQ_REQ_METHOD_BUF];
    char path[TQ_REQ_PATH_BUF];
    char param[TQ_REQ_PARAM_MAX];
    tq_buf body;      /* capped at max_body_bytes */
    size_t discarded; /* bytes of an over-cap body read and dropped */
    int too_large;
    char request_id[TQ_REQ_ID_MAX + 1];
    char user[TQ_USER_ID_BUF];
    int is_operator;       /* the token carries the operator claim (auth.h) */
    long long token_until; /* the token's last accepted second (auth.h); a stream ends then */
    char client[TQ_ADMIT_ADDR_MAX];
    tq_admit_conn *ac; /* the connection's admission slot; NULL if it has none */
    double t0;         /* tq_mono_now() when the request line arrived */
    unsigned status;
    int replied;
    struct {
        char name[TQ_REQ_HEADER_NAME_MAX + 1];
        char value[TQ_REQ_HEADER_VALUE_MAX + 1];
    } hdr[TQ_REQ_EXTRA_HEADERS];
    int nhdr;
};

/* Collects n more body bytes. Past the cap the body is dropped and r->too_large set (the
 * dispatcher answers 413), but reading goes on so the answer can be sent, up to a
 * discard limit. -1 when the connection must be cut (discard limit or out of memory). */
int tq_req_append_body(tq_req *r, const char *data, size_t n);

/* A response whose body cb produces (MHD_create_response_from_callback, unknown size,
 * chunked); free_cb(cls) runs when MHD is done with it, also when the reply fails. */
void tq_req_reply_callback(tq_req *r, unsigned status, const char *content_type,
                           MHD_ContentReaderCallback cb, void *cls,
                           MHD_ContentReaderFreeCallback free_cb);
/* len bytes of fd from offset (the response owns fd and closes it). */
void tq_req_reply_fd(tq_req *r, unsigned status, const char *content_type, int fd,
                     unsigned long long offset, unsigned long long len);

/* 204 to a CORS preflight (OPTIONS): Allow, and Access-Control-Allow-Methods when CORS is
 * configured, both set to allow. */
void tq_req_reply_preflight(tq_req *r, const char *allow);

#endif
