/*
 * admit — which TCP connections the producer takes, how long a client may take to send a
 * request, and who the client is behind a trusted proxy.
 *
 * libmicrohttpd's own idle timeout is reset by every byte, so a client that trickles one
 * header line every few seconds would hold its connection for ever; its global connection
 * cap, once reached, leaves new connections waiting in the listen backlog. This module
 * keeps its own table of open connections (filled from MHD's connection notifications) and
 * decides:
 *
 *  - at accept: refuse (the caller closes the socket at once) when the peer address
 *    already holds `per_client` connections (trusted proxies are exempt), or when
 *    `max_connections + reserve` are open;
 *  - a connection accepted while `max_connections` or more are open is a *reserve*
 *    connection: it is only for /healthz and /readyz (the caller answers anything else 503
 *    and closes it) and gets a short header deadline;
 *  - deadlines that trickling cannot extend: a request's headers must be complete within
 *    `header_ms` of accept (or of the end of the previous request on a kept-alive
 *    connection: max(header_ms, idle_ms)), its body within `body_ms` of the end of its
 *    headers. tq_admit_sweep reports every connection past its deadline; the caller shuts
 *    its socket down, which makes MHD close it through its ordinary path.
 *
 * What must stay true: a slot's fd is only handed out while the slot is open, and the
 * caller's close notification (tq_admit_close) runs before MHD closes the fd; both happen
 * under the table's one mutex, so tq_admit_sweep never names an fd that was reused.
 * The per-client count is checked at accept and taken at open, so with several accepting
 * threads it can be exceeded by at most the number of threads; the table has room for
 * that slack (TQ_ADMIT_SLACK).
 */
#ifndef TQ_ADMIT_H
#define TQ_ADMIT_H

#include <stddef.h>
#include <sys/socket.h>

#include "tq_err.h"

/* Extra table slots beyond max_connections + reserve, for the accept races above. */
#define TQ_ADMIT_SLACK 64
/* Header deadline of a reserve connection (a health check sends its request at once). */
#define TQ_ADMIT_RESERVE_HEADER_MS 2000
/* Longest client address text (an IPv6 address). */
#define TQ_ADMIT_ADDR_MAX 46

/* ---- trusted proxy list: addresses and CIDR blocks, IPv4 and IPv6 ---- */
typedef struct tq_netlist tq_netlist;

/* Parses "10.0.0.0/8, 127.0.0.1, ::1" ("" is an empty list). Caller frees. On a bad entry,
 * TQ_ERR_CONFIG with eb naming it. */
int tq_netlist_parse(const char *text, tq_netlist **out, tq_errbuf *eb);
void tq_netlist_free(tq_netlist *l);
/* 1 when addr (AF_INET or AF_INET6, v4-mapped v6 treated as v4) is in the list. */
int tq_netlist_contains(const tq_netlist *l, const struct sockaddr *addr);

/* The client's address as text: the peer, unless the peer is a trusted proxy and xff (an
 * X-Forwarded-For value) is given; then the rightmost entry of xff that is not itself a
 * trusted proxy (proxies append, so everything left of it could be forged by the client).
 * An entry that is not an address ends the walk at the last good one. */
void tq_client_address(const tq_netlist *trusted, const struct sockaddr *peer, const char *xff,
                       char out[TQ_ADMIT_ADDR_MAX]);

/* ---- the connection table ---- */
typedef struct {
    int max_connections; /* ordinary connections, all clients together */
    int reserve;         /* beyond max_connections, for health checks only */
    int per_client;      /* per peer address; trusted proxies exempt */
    int header_ms, body_ms, idle_ms;
    const tq_netlist *trusted; /* borrowed; may be NULL */
} tq_admit_config;

typedef struct tq_admit tq_admit;
typedef struct tq_admit_conn tq_admit_conn;

typedef enum {
    TQ_ADMIT_OK = 0,
    TQ_ADMIT_REFUSE_CLIENT, /* this peer holds per_client connections */
    TQ_ADMIT_REFUSE_FULL,   /* max_connections + reserve are open */
} tq_admit_verdict;

typedef enum {
    TQ_PHASE_HEADERS, /* waiting for (the rest of) a request's headers */
    TQ_PHASE_BODY,    /* headers in, waiting for the body */
    TQ_PHASE_BUSY,    /* request complete: handler running or response being sent */
} tq_admit_phase;

int tq_admit_new(const tq_admit_config *cfg, tq_admit **out, tq_errbuf *eb);
void tq_admit_free(tq_admit *a);

tq_admit_verdict tq_admit_check(tq_admit *a, const struct sockaddr *peer);
/* Records an accepted connection; NULL when the table is full (the caller must then close
 * it). now_ms is a monotonic clock. */
tq_admit_conn *tq_admit_open(tq_admit *a, const struct sockaddr *peer, int fd, long long now_ms);
void tq_admit_close(tq_admit *a, tq_admit_conn *c);
/* Moves c to phase p at now_ms and sets the matching deadline (after BUSY, HEADERS means
 * a kept-alive connection waiting for its next request). */
void tq_admit_set_phase(tq_admit *a, tq_admit_conn *c, tq_admit_phase p, long long now_ms);
int tq_admit_is_reserve(const tq_admit_conn *c);
/* Connections open now (ordinary and reserve). */
int tq_admit_open_count(tq_admit *a);

/* Calls cut(fd, phase, arg) for every open connection past its deadline, under the table's
 * mutex (so fd is still the connection's), and marks it so it is reported once. Returns
 * how many were cut. cut must not call back into a. */
int tq_admit_sweep(tq_admit *a, long long now_ms, void (*cut)(int fd, tq_admit_phase p, void *arg),
                   void *arg);

#endif
