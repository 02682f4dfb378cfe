/*
 * docker — a small Docker Engine API v1.41 client over the daemon's unix socket (libcurl).
 *
 * Threads: a tq_docker holds configuration only and is never written after setup, so any
 * number of threads may call these functions on one handle at once (each call uses its own
 * curl easy handle). Create the first handle before starting threads: tq_docker_new runs
 * curl_global_init, which must not race with other curl use.
 *
 * Bounds: every call has a 5 s connect timeout and a total timeout (60 s default;
 * tq_docker_stop adds the grace period; tq_docker_wait takes its own), and every response
 * body is capped (1 MiB default) -> TQ_ERR_TOO_LARGE when exceeded.
 *
 * Errors common to every call: TQ_ERR_UNAVAILABLE when the daemon cannot be reached or does
 * not answer in time (transient: retry later; for create, the container may exist, so the
 * retry must expect TQ_ERR_CONFLICT), TQ_ERR_INVALID for an unusable argument or a 400,
 * TQ_ERR_DOCKER with the daemon's "message" for any other error status, TQ_ERR_NOMEM.
 */
#ifndef TQ_DOCKER_H
#define TQ_DOCKER_H

#include <stdatomic.h>
#include <stddef.h>

#include "container_spec.h"
#include "launcher.h"
#include "tq_err.h"

typedef struct tq_docker tq_docker;

/* Cap of a reply body held in memory (tq_docker_set_limits changes it). The largest
 * replies trainq reads are an inspect (~10 KB) and a filtered list of one worker's
 * containers (~1-2 KB each); a larger reply fails with TQ_ERR_TOO_LARGE, "docker reply
 * larger than N bytes". */
#define TQ_DOCKER_DEFAULT_MAX_BODY (1024 * 1024)
#define TQ_DOCKER_LIST_MAX_FILTERS 8
#define TQ_DOCKER_LIST_PATH_MAX 8192
#define TQ_DOCKER_DEFAULT_TIMEOUT_MS 60000L
#define TQ_DOCKER_CONNECT_TIMEOUT_MS 5000L
#define TQ_DOCKER_LOG_TAIL_MAX 4096 /* bytes of log text kept by tq_docker_logs_tail */
/* A container id: 64 hex digits and the NUL. */
#define TQ_DOCKER_ID_BUF TQ_LAUNCHER_ID_BUF
/* A container state or status word ("restarting", "removing") and the NUL. */
#define TQ_DOCKER_STATE_BUF TQ_LAUNCHER_STATE_BUF

/* host: "unix:///path/docker.sock" or "/path/docker.sock" (tcp:// is refused:
 * TQ_ERR_CONFIG). Does not contact the daemon. *out is freed with tq_docker_free. */
int tq_docker_new(const char *host, tq_docker **out, tq_errbuf *eb);
void tq_docker_free(tq_docker *d);

/* Only before the handle is shared between threads. 0 keeps the current value. */
void tq_docker_set_limits(tq_docker *d, size_t max_body, long timeout_ms);

/* The socket path the handle talks to (borrowed, lives as long as d). */
const char *tq_docker_socket_path(const tq_docker *d);

/* GET /_ping. */
int tq_docker_ping(tq_docker *d, tq_errbuf *eb);

/*
 * POST /containers/create?name=... after tq_container_spec_check (mounts exposing the
 * daemon's socket are refused). On TQ_OK id holds the 64-hex container id.
 * 409 -> TQ_ERR_CONFLICT (name in use: for trainq, the job already has its container);
 * 404 -> TQ_ERR_NOT_FOUND with `image "x" not found`.
 */
int tq_docker_create(tq_docker *d, const tq_container_spec *s, char id[TQ_DOCKER_ID_BUF],
                     tq_errbuf *eb);

/* 204, or 304 already started -> TQ_OK; 404 -> TQ_ERR_NOT_FOUND. A missing GPU driver
 * or entrypoint shows up here as TQ_ERR_DOCKER with the daemon's message. */
int tq_docker_start(tq_docker *d, const char *id_or_name, tq_errbuf *eb);

/* tq_container_state (launcher.h), from the daemon's inspect. */
/* GET /containers/{id}/json. 404 -> TQ_ERR_NOT_FOUND. */
int tq_docker_inspect(tq_docker *d, const char *id_or_name, tq_container_state *st, tq_errbuf *eb);

/* POST /containers/{id}/wait?condition=not-running: blocks until the container is not
 * running and stores its exit code. Returns at once for a container never started, so call
 * it after start. timeout_ms <= 0 means the handle's default. Out of time -> TQ_ERR_TIMEOUT
 * (the container keeps running). 404 -> TQ_ERR_NOT_FOUND. */
int tq_docker_wait(tq_docker *d, const char *id, long timeout_ms, int *exit_code, tq_errbuf *eb);

/* GET /containers/{id}/logs?stdout=1&stderr=1&tail=lines: stdout and stderr interleaved as
 * written. *out (caller frees) holds at most the last TQ_DOCKER_LOG_TAIL_MAX bytes, is valid
 * UTF-8 (bad bytes become '?') and has no NUL inside, so it can go straight into a text
 * column. lines <= 0 means 100. 404 -> TQ_ERR_NOT_FOUND. */
int tq_docker_logs_tail(tq_docker *d, const char *id, int lines, int stderr_only, char **out,
                        tq_errbuf *eb);

/*
 * POST /containers/{id}/attach?stream=1&stdout=1&stderr=1[&logs=1]: the container's output
 * as it is written, demultiplexed into sink(arg, stream, bytes, n) on the calling thread, until the
 * container's output ends (it exited: TQ_OK), *stop becomes nonzero (checked at least once
 * a second: TQ_ERR_TIMEOUT) or the daemon goes away (TQ_ERR_UNAVAILABLE). logs=1 first
 * replays what the container printed before (Docker's log driver, whole lines), then
 * streams. No total timeout and no cap on the bytes streamed: the sink bounds what it
 * keeps. Attach, not GET /logs?follow=1: the log driver passes a line on only at its '\n'
 * (or 16 KiB), so tqdm's carriage-return redraws would arrive only when the bar ends.
 * The sink must not block: Docker buffers at most ~1 MB per attached client and then
 * stalls the container's writes. 404 -> TQ_ERR_NOT_FOUND.
 */
int tq_docker_attach(tq_docker *d, const char *id, int logs, tq_log_sink_fn sink, void *arg,
                     const atomic_int *stop, tq_errbuf *eb);

/* POST /containers/{id}/stop?t=grace: SIGTERM (or the image's StopSignal), SIGKILL after
 * grace_seconds. 204 or 304 (not running) -> TQ_OK; 404 -> TQ_ERR_NOT_FOUND. */
int tq_docker_stop(tq_docker *d, const char *id, int grace_seconds, tq_errbuf *eb);

/* POST /containers/{id}/kill (SIGKILL). A container that is not running (409) -> TQ_OK:
 * the caller wanted it stopped and it is. 404 -> TQ_ERR_NOT_FOUND. */
int tq_docker_kill(tq_docker *d, const char *id, tq_errbuf *eb);

/* DELETE /containers/{id}?force=&v=1. 404 -> TQ_OK (already gone); 409 (running without
 * force, or removal already in progress) -> TQ_ERR_CONFLICT. */
int tq_docker_remove(tq_docker *d, const char *id, int force, tq_errbuf *eb);

/* tq_container_summary: launcher.h. */
/* GET /containers/json?all=true&filters={"label":[label_filter]}. label_filter is "key" or
 * "key=value"; NULL lists every container. *out (caller frees with free(); NULL when *n is
 * 0) holds *n entries. The reply must fit the handle's max_body (each container is ~1-2 KB
 * of it): a host's history of exited containers may not, so whatever runs at start lists
 * with tq_docker_list_where and a status filter. */
int tq_docker_list(tq_docker *d, const char *label_filter, tq_container_summary **out, size_t *n,
                   tq_errbuf *eb);

/* Like tq_docker_list, with filters={"label":[labels...],"status":[statuses...]}: every
 * label must match (each "key" or "key=value"), and the state must be one of statuses
 * (created, restarting, running, removing, paused, exited, dead). Both lists end with NULL,
 * hold at most TQ_DOCKER_LIST_MAX_FILTERS entries and may be NULL or empty (no filter). */
int tq_docker_list_where(tq_docker *d, const char *const *labels, const char *const *statuses,
                         tq_container_summary **out, size_t *n, tq_errbuf *eb);

/* GET /images/{name}/json: TQ_OK if present locally, TQ_ERR_NOT_FOUND if not. */
int tq_docker_image_exists(tq_docker *d, const char *image, tq_errbuf *eb);

/* ---- Pure helpers, exported for the unit tests. ---- */

/* Demultiplexes the non-TTY log stream (8-byte headers: stream, 0, 0, 0, big-endian
 * length) fed in arbitrary pieces, keeping the last TQ_DOCKER_LOG_TAIL_MAX payload bytes.
 * A stream that does not start with a valid header is taken as raw (TTY) output. */
typedef struct {
    unsigned char hdr[8];
    size_t hdr_have;
    size_t frame_left;
    int raw;
    int started;
    int truncated; /* bytes were dropped from the front */
    /* When set, every payload piece goes to sink(sink_arg, ...) as it arrives and buf is
     * not used (a live stream, tq_docker_attach); otherwise the tail is kept in buf. */
    tq_log_sink_fn sink;
    void *sink_arg;
    size_t len;
    char buf[TQ_DOCKER_LOG_TAIL_MAX];
} tq_log_demux;

void tq_log_demux_init(tq_log_demux *m);
void tq_log_demux_feed(tq_log_demux *m, const void *data, size_t len);
/* The kept text as a new string (caller frees; NULL only on out of memory). A partial
 * last frame keeps what arrived; a partial header is dropped. */
char *tq_log_demux_finish(const tq_log_demux *m);

/* JSON of GET /containers/{id}/json -> st. TQ_ERR_INVALID if it is not that shape. */
int tq_docker_parse_inspect(const char *json, size_t len, tq_container_state *st, tq_errbuf *eb);

/* The request path of tq_docker_list_where ("/containers/json?all=true&filters=" and the
 * URL-escaped filters JSON) into buf. TQ_ERR_INVALID: a label with spaces or control
 * characters or longer than 256 bytes, an unknown status, too many filters, or a path
 * longer than cap. */
int tq_docker_list_path(const char *const *labels, const char *const *statuses, char *buf,
                        size_t cap, tq_errbuf *eb);

/* JSON of GET /containers/json -> *out (caller frees), *n entries. */
int tq_docker_parse_list(const char *json, size_t len, tq_container_summary **out, size_t *n,
                         tq_errbuf *eb);

/* RFC 3339 time as Docker writes it ("2024-05-01T10:00:00.123456789Z") -> Unix ms
 * (tq_rfc3339_parse); Docker's zero time "0001-01-01T00:00:00Z" (any time before 1970)
 * -> 0. Returns -1 if unparsable. */
long long tq_docker_parse_time_ms(const char *s);

#endif
