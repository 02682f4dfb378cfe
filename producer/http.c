/*
 * The producer's HTTP server: libmicrohttpd with an epoll thread pool, connection
 * admission (admit.h: per-client caps, a reserve for health checks, header and body
 * deadlines enforced by a sweeper thread), and the life of a tq_req from the request line
 * to MHD's completed callback. What a request may do is in request.h, the route table in
 * routes.c, the guards in guards.c.
 */
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
#include "metrics.h"
#include "request_impl.h"
#include "routes.h"
#include "stream.h"
#include "tq_clock.h"
#include "tq_listen.h"
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
/* A port number in decimal, for getaddrinfo. */
#define PORT_TEXT_BUF 16
/* One line of MHD's own log. */
#define MHD_LOG_BUF 512

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
    pthread_cond_t stop_cv; /* on CLOCK_MONOTONIC (tq_cond_init_monotonic) */
    int stopping;
};

/* ------------------------------------------------------------------ requests */

static int request_id_sane(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++) {
        char c = s[n];
        if (n >= TQ_REQ_ID_MAX || !((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                                    (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return n > 0;
}

static tq_admit_conn *conn_slot(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? (tq_admit_conn *)ci->socket_context : NULL;
}

/* MHD's decoding of the path and of each query value, except that one holding %00 is left
 * as sent. Decoded, the NUL would end the C string every reader sees: `?status=queued%00x`
 * read as `queued`, `?limit=%00` as no limit, `/jobs/<uuid>%00x` as that job. Left encoded,
 * the value fails its own check (400 naming the field, or 404) like any other bad value. */
static size_t unescape(void *cls, struct MHD_Connection *c, char *s)
{
    (void)cls;
    (void)c;
    if (strstr(s, "%00"))
        return strlen(s);
    return MHD_http_unescape(s);
}

static tq_req *req_new(tq_http *srv, struct MHD_Connection *c, const char *url, const char *method)
{
    tq_req *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->t0 = tq_mono_now();
    r->conn = c;
    r->app = srv->app;
    tq_buf_init(&r->body, (size_t)srv->app->cfg->max_body_bytes);
    snprintf(r->method, sizeof r->method, "%s", method);
    snprintf(r->path, sizeof r->path, "%s", url);
    const char *rid = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Request-Id");
    if (rid && request_id_sane(rid))
        snprintf(r->request_id, sizeof r->request_id, "%s", rid);
    else
        tq_uuid_generate(r->request_id);
    r->route = tq_route_match(url, r->param, sizeof r->param);
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    tq_client_address(srv->trusted, ci ? ci->client_addr : NULL,
                      MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Forwarded-For"),
                      r->client);
    r->ac = conn_slot(c);
    atomic_fetch_add(&srv->in_flight, 1);
    return r;
}

/* How often the headers framing_error looks at occur in a request (one pass). */
typedef struct {
    int content_length, transfer_encoding, host;
} framing_headers;

static enum MHD_Result count_framing(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *value)
{
    (void)kind;
    (void)value;
    framing_headers *f = cls;
    f->content_length += strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0;
    f->transfer_encoding += strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0;
    f->host += strcasecmp(key, MHD_HTTP_HEADER_HOST) == 0;
    return MHD_YES;
}

/* Why the request's framing or Host cannot be trusted, or NULL (on_request). */
static const char *framing_error(struct MHD_Connection *c, const char *version)
{
    framing_headers f = {0, 0, 0};
    MHD_get_connection_values(c, MHD_HEADER_KIND, count_framing, &f);
    if (f.content_length > 1)
        return "request has more than one Content-Length";
    if (f.content_length && f.transfer_encoding)
        return "request has both Content-Length and Transfer-Encoding";
    if (strcmp(version, MHD_HTTP_VERSION_1_1) == 0 && !f.host)
        return "request has no Host header";
    return NULL;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    tq_http *srv = cls;
    tq_req *r = *con_cls;
    size_t max = (size_t)srv->app->cfg->max_body_bytes;
    if (!r) {
        r = req_new(srv, c, url, method);
        if (!r)
            return MHD_NO;
        *con_cls = r;
        tq_admit_set_phase(srv->admit, r->ac, TQ_PHASE_BODY, tq_mono_ms());
        /* A reserve connection (taken while every ordinary one was) is for health checks
         * only; anything else is told to come back, before its body is read. */
        if (tq_admit_is_reserve(r->ac) && !tq_route_is_health(r->route)) {
            tq_metrics_conn(TQ_CONN_RESERVE_BUSY);
            tq_req_add_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "1");
            tq_req_add_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
            tq_req_reply_error(r, 503, "server busy, retry later");
            return MHD_YES;
        }
        /* Framing that two parsers could read two ways (RFC 9112 6.1, 6.3): a request
         * smuggled inside a body that a proxy in front framed otherwise. libmicrohttpd
         * 0.9.75 takes the first Content-Length, or chunked over any length; refused
         * here, and the connection closed after the answer. So is HTTP/1.1 without Host
         * (RFC 9112 3.2). */
        const char *framing = framing_error(c, version);
        if (framing) {
            tq_req_add_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
            tq_req_reply_error(r, 400, framing);
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
        if (!r->replied && tq_req_append_body(r, upload_data, *upload_data_size) != 0)
            return MHD_NO;
        *upload_data_size = 0;
        return MHD_YES;
    }
    tq_admit_set_phase(srv->admit, r->ac, TQ_PHASE_BUSY, tq_mono_ms());
    if (!r->replied) {
        /* A health reserve connection closes after its answer, so it frees its slot. */
        if (tq_admit_is_reserve(r->ac))
            tq_req_add_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
        tq_route_dispatch(r);
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
    tq_admit_set_phase(srv->admit, conn_slot(c), TQ_PHASE_HEADERS, tq_mono_ms());
    double secs = tq_mono_now() - r->t0;
    const char *label = tq_route_label(r->route);
    if (r->replied)
        tq_metrics_observe(r->route >= 0 ? (size_t)r->route : tq_route_count(), r->status, secs);
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
    tq_buf_free(&r->body);
    free(r);
    atomic_fetch_sub(&srv->in_flight, 1);
}

__attribute__((format(printf, 2, 0))) static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[MHD_LOG_BUF];
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
        tq_admit_open(srv->admit, ai ? ai->client_addr : NULL, fdi->connect_fd, tq_mono_ms());
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
    int64_t next_log = tq_mono_ms() + SHED_LOG_MS;
    pthread_mutex_lock(&h->stop_mu);
    while (!h->stopping) {
        struct timespec ts = tq_mono_deadline(SWEEP_MS);
        pthread_cond_timedwait(&h->stop_cv, &h->stop_mu, &ts);
        if (h->stopping)
            break;
        pthread_mutex_unlock(&h->stop_mu);
        int64_t now = tq_mono_ms();
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
    char ports[PORT_TEXT_BUF];
    snprintf(ports, sizeof ports, "%d", port);
    int rc = getaddrinfo(host, ports, &hints, &res);
    if (rc != 0 || !res)
        return tq_errf(eb, tq_listen_resolve_class(rc), "cannot resolve http host \"%s\": %s", host,
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
    if (tq_cond_init_monotonic(&h->stop_cv) != 0) {
        pthread_mutex_destroy(&h->stop_mu);
        free(h);
        return tq_errf(eb, TQ_ERR_NOMEM, "could not set up the connection sweeper");
    }
    tq_metrics_init(tq_route_labels(), tq_route_count());

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
    int lfd = -1;
    if (rc == TQ_OK)
        rc = tq_listen_open((struct sockaddr *)&h->addr, alen, cfg->http_host, cfg->http_port, NULL,
                            &lfd, eb);
    if (rc != TQ_OK) {
        http_free(h);
        return rc;
    }
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ITC |
                     MHD_USE_ERROR_LOG | MHD_ALLOW_SUSPEND_RESUME; /* event streams (stream.h) */
    if (h->addr.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    /* The listening socket is ours (tq_listen.h: bind's errno picks the exit code, and no
     * SO_REUSEPORT, which would let a second producer — a stale one, another configuration
     * — bind the same address and take a share of the connections without a word); MHD
     * owns it from here and closes it on stop. */
    h->d = MHD_start_daemon(
        flags, (uint16_t)app->cfg->http_port, on_accept, h, on_request, h,
        MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, /* first, so every message goes here */
        MHD_OPTION_LISTEN_SOCKET, (MHD_socket)lfd, MHD_OPTION_THREAD_POOL_SIZE,
        (unsigned int)app->cfg->http_threads, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned int)app->cfg->request_timeout_seconds, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)CONN_MEMORY_LIMIT, MHD_OPTION_CONNECTION_LIMIT, mhd_connection_limit(cfg),
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, h, MHD_OPTION_NOTIFY_CONNECTION, on_connection,
        h, MHD_OPTION_UNESCAPE_CALLBACK, unescape, NULL, MHD_OPTION_END);
    if (!h->d) { /* lfd is not closed here: MHD may have closed it already, and the
                  * program stops on this error */
        http_free(h);
        return tq_errf(eb, TQ_ERR_IO,
                       "could not start the HTTP server (libmicrohttpd's log above "
                       "says why)");
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
    /* No new connections from here on; the listening socket is ours to close, after
     * MHD_stop_daemon (libmicrohttpd: its threads may still hold it until then, and a
     * number closed early could be reused by another socket meanwhile). */
    MHD_socket ls = MHD_quiesce_daemon(h->d);
    /* Event streams never end by themselves: end them so the drain below can finish. */
    tq_streams_close_all(h->app->streams);
    for (int waited = 0; atomic_load(&h->in_flight) > 0 && waited < drain_ms; waited += 10) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    int left = atomic_load(&h->in_flight);
    if (left > 0)
        tq_log(TQ_LOG_WARN, "http.drain_timeout", "%d requests still in flight after %d ms", left,
               drain_ms);
    MHD_stop_daemon(h->d);
    if (ls != MHD_INVALID_SOCKET)
        close(ls);
    http_free(h);
}
