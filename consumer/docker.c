#include "docker.h"

#include <curl/curl.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tq_buf.h"
#include "tq_clock.h"
#include "tq_utf8.h"

/* curl_easy_escape(NULL, ...) needs 7.82; CURLOPT_UNIX_SOCKET_PATH needs 7.40. */
#if LIBCURL_VERSION_NUM < 0x075200
#error "libcurl >= 7.82 required"
#endif

#define API_PREFIX "http://localhost/v1.41"
#define SOCK_PATH_MAX 108                  /* sizeof(sockaddr_un.sun_path) */
#define REF_MAX 256                        /* container ids/names and image references */
#define LOG_STREAM_MAX (64u * 1024 * 1024) /* bytes streamed by logs_tail before giving up */
#define STOP_SLACK_MS 30000L

struct tq_docker {
    char sock[SOCK_PATH_MAX];
    size_t max_body;
    long timeout_ms;
};

/* ---------------------------------------------------------------- small helpers */

static void copy_str(char *dst, size_t cap, const char *src)
{
    /* whole characters: the daemon's State.Error may become a job's stored reason */
    size_t n = src ? tq_utf8_prefix(src, cap - 1) : 0;
    if (n)
        memcpy(dst, src, n);
    dst[n] = '\0';
}

/* Copies at most cap-1 bytes of a daemon-supplied string, replacing control characters so
 * an error line stays one line, cut on a character boundary and made valid UTF-8 (it ends
 * up in errors that are stored as a job's reason). */
static void copy_line(char *dst, size_t cap, const char *src, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o + 1 < cap; i++) {
        unsigned char c = (unsigned char)src[i];
        dst[o++] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
    }
    dst[o] = '\0';
    tq_utf8_clip(dst, o);
    tq_utf8_sanitize(dst, strlen(dst));
}

static int ref_ok(const char *ref)
{
    if (!ref || !*ref || strlen(ref) > REF_MAX)
        return 0;
    for (const char *p = ref; *p; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f)
            return 0;
    return 1;
}

/* ---------------------------------------------------------------- log demux */

void tq_log_demux_init(tq_log_demux *m)
{
    memset(m, 0, sizeof *m);
}

static void keep(tq_log_demux *m, const unsigned char *p, size_t n)
{
    const size_t cap = sizeof m->buf;
    if (n >= cap) {
        if (m->len > 0 || n > cap)
            m->truncated = 1;
        memcpy(m->buf, p + (n - cap), cap);
        m->len = cap;
        return;
    }
    if (m->len + n > cap) {
        size_t drop = m->len + n - cap;
        memmove(m->buf, m->buf + drop, m->len - drop);
        m->len -= drop;
        m->truncated = 1;
    }
    memcpy(m->buf + m->len, p, n);
    m->len += n;
}

static void take_payload(tq_log_demux *m, const unsigned char *p, size_t n)
{
    if (m->sink)
        m->sink(m->sink_arg, m->raw ? 0 : m->hdr[0], (const char *)p, n);
    else
        keep(m, p, n);
}

static int header_ok(const unsigned char h[8])
{
    return h[0] <= 2 && h[1] == 0 && h[2] == 0 && h[3] == 0;
}

void tq_log_demux_feed(tq_log_demux *m, const void *data, size_t len)
{
    const unsigned char *p = data;
    while (len > 0) {
        if (m->raw) {
            take_payload(m, p, len);
            return;
        }
        if (m->frame_left > 0) {
            size_t take = len < m->frame_left ? len : m->frame_left;
            take_payload(m, p, take);
            m->frame_left -= take;
            p += take;
            len -= take;
            continue;
        }
        size_t take = 8 - m->hdr_have;
        if (take > len)
            take = len;
        memcpy(m->hdr + m->hdr_have, p, take);
        m->hdr_have += take;
        p += take;
        len -= take;
        if (m->hdr_have < 8)
            return;
        m->hdr_have = 0;
        if (!header_ok(m->hdr)) {
            /* A TTY container's log has no frames; a bad header mid-stream means we lost
             * sync, and showing the bytes beats dropping them. */
            m->raw = 1;
            take_payload(m, m->hdr, 8);
            continue;
        }
        m->started = 1;
        m->frame_left = ((size_t)m->hdr[4] << 24) | ((size_t)m->hdr[5] << 16) |
                        ((size_t)m->hdr[6] << 8) | (size_t)m->hdr[7];
    }
}

char *tq_log_demux_finish(const tq_log_demux *m)
{
    const unsigned char *s = (const unsigned char *)m->buf;
    size_t n = m->len;
    size_t extra = 0;
    /* Fewer than 8 bytes in total that cannot start a header: raw output, not a header. */
    if (!m->started && !m->raw && m->hdr_have > 0 && m->hdr[0] > 2)
        extra = m->hdr_have;
    char *out = malloc(n + extra + 1);
    if (!out)
        return NULL;
    size_t i = 0;
    if (m->truncated)
        while (i < n && i < 3 && (s[i] & 0xC0) == 0x80)
            i++; /* the cut fell inside a character */
    memcpy(out, s + i, n - i);
    memcpy(out + (n - i), m->hdr, extra);
    /* The trainer's bytes are arbitrary: the tail is stored as the job's reason, and
     * Postgres refuses invalid UTF-8 (and NUL would end the C string early). */
    tq_utf8_sanitize(out, n - i + extra);
    return out;
}

/* ---------------------------------------------------------------- JSON parsing */

static const char *obj_str(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

long long tq_docker_parse_time_ms(const char *s)
{
    int64_t ms;
    if (tq_rfc3339_parse(s, &ms) != TQ_OK)
        return -1;
    /* Before 1970 is Go's zero time, "0001-01-01T00:00:00Z": never. */
    return ms > 0 ? (long long)ms : 0;
}

int tq_docker_parse_inspect(const char *json, size_t len, tq_container_state *st, tq_errbuf *eb)
{
    json_error_t jerr;
    memset(st, 0, sizeof *st);
    json_t *root = json_loadb(json, len, 0, &jerr);
    if (!root)
        return tq_errf(eb, TQ_ERR_INVALID, "cannot parse container inspect reply: %s", jerr.text);
    int rc = TQ_OK;
    json_t *state = json_object_get(root, "State");
    const char *id = obj_str(root, "Id");
    if (!id || !json_is_object(state)) {
        rc = tq_errf(eb, TQ_ERR_INVALID, "cannot parse container inspect reply: no Id or State");
        goto out;
    }
    copy_str(st->id, sizeof st->id, id);
    copy_str(st->status, sizeof st->status, obj_str(state, "Status"));
    st->running = json_is_true(json_object_get(state, "Running"));
    st->oom_killed = json_is_true(json_object_get(state, "OOMKilled"));
    json_t *ec = json_object_get(state, "ExitCode");
    st->exit_code = json_is_integer(ec) ? (int)json_integer_value(ec) : 0;
    copy_str(st->error, sizeof st->error, obj_str(state, "Error"));
    long long t = tq_docker_parse_time_ms(obj_str(state, "StartedAt"));
    st->started_at_ms = t > 0 ? t : 0;
    t = tq_docker_parse_time_ms(obj_str(state, "FinishedAt"));
    st->finished_at_ms = t > 0 ? t : 0;
    json_t *labels = json_object_get(json_object_get(root, "Config"), "Labels");
    copy_str(st->job_label, sizeof st->job_label, obj_str(labels, "trainq.job"));
    copy_str(st->worker_label, sizeof st->worker_label, obj_str(labels, "trainq.worker"));
    json_t *mem = json_object_get(json_object_get(root, "HostConfig"), "Memory");
    st->memory_bytes = json_is_integer(mem) ? json_integer_value(mem) : 0;
out:
    json_decref(root);
    return rc;
}

int tq_docker_parse_list(const char *json, size_t len, tq_container_summary **out, size_t *n,
                         tq_errbuf *eb)
{
    json_error_t jerr;
    *out = NULL;
    *n = 0;
    json_t *root = json_loadb(json, len, 0, &jerr);
    if (!root)
        return tq_errf(eb, TQ_ERR_INVALID, "cannot parse container list reply: %s", jerr.text);
    int rc = TQ_OK;
    if (!json_is_array(root)) {
        rc = tq_errf(eb, TQ_ERR_INVALID, "cannot parse container list reply: not an array");
        goto out;
    }
    size_t count = json_array_size(root);
    if (count == 0)
        goto out;
    tq_container_summary *v = calloc(count, sizeof *v);
    if (!v) {
        rc = tq_errf(eb, TQ_ERR_NOMEM, "could not list containers: out of memory");
        goto out;
    }
    size_t k = 0;
    for (size_t i = 0; i < count; i++) {
        json_t *c = json_array_get(root, i);
        const char *id = obj_str(c, "Id");
        if (!id)
            continue; /* not a container: skip rather than fail the whole listing */
        tq_container_summary *s = &v[k++];
        copy_str(s->id, sizeof s->id, id);
        const char *name = json_string_value(json_array_get(json_object_get(c, "Names"), 0));
        if (name && name[0] == '/')
            name++;
        copy_str(s->name, sizeof s->name, name);
        copy_str(s->state, sizeof s->state, obj_str(c, "State"));
        json_t *labels = json_object_get(c, "Labels");
        copy_str(s->job_label, sizeof s->job_label, obj_str(labels, "trainq.job"));
        copy_str(s->worker_label, sizeof s->worker_label, obj_str(labels, "trainq.worker"));
    }
    if (k == 0) {
        free(v);
        v = NULL;
    }
    *out = v;
    *n = k;
out:
    json_decref(root);
    return rc;
}

/* ---------------------------------------------------------------- HTTP over the socket */

typedef struct {
    CURL *curl;
    tq_buf body; /* capped at the client's max_body */
    int overflow;
    tq_log_demux *demux; /* logs: a 200 body goes here instead of into body */
    size_t streamed;
    int status_known;
    long status;
    int unbounded;          /* a live stream: no LOG_STREAM_MAX */
    const atomic_int *stop; /* a live stream: abort once nonzero */
} resp;

static size_t on_write(char *p, size_t size, size_t nmemb, void *ud)
{
    resp *r = ud;
    size_t n = size * nmemb;
    if (r->demux) {
        if (!r->status_known) {
            curl_easy_getinfo(r->curl, CURLINFO_RESPONSE_CODE, &r->status);
            r->status_known = 1;
        }
        if (r->status == 200) {
            r->streamed += n;
            if (!r->unbounded && r->streamed > LOG_STREAM_MAX) {
                r->overflow = 1;
                return 0;
            }
            tq_log_demux_feed(r->demux, p, n);
            return n;
        }
    }
    int rc = tq_buf_add(&r->body, p, n);
    if (rc == TQ_ERR_TOO_LARGE)
        r->overflow = 1;
    return rc == TQ_OK ? n : 0; /* 0 aborts the transfer: CURLE_WRITE_ERROR */
}

/* libcurl calls this at least once a second, also while no byte arrives. */
static int on_progress(void *ud, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    (void)dt, (void)dn, (void)ut, (void)un;
    const resp *r = ud;
    return r->stop && atomic_load(r->stop) ? 1 : 0;
}

static void resp_free(resp *r)
{
    tq_buf_free(&r->body);
}

enum { TIMEOUT_IS_UNAVAILABLE = 0, TIMEOUT_IS_TIMEOUT = 1 };

/*
 * One request. what = "could not <verb> ..." prefix for errors (without the reason).
 * On TQ_OK r->status is the HTTP status and r->body the (capped) body; the caller maps
 * statuses. Transport errors become TQ_ERR_UNAVAILABLE / TIMEOUT / TOO_LARGE / NOMEM.
 */
static int request(tq_docker *d, const char *method, const char *path, const char *json_body,
                   long timeout_ms, int timeout_kind, resp *r, const char *what, tq_errbuf *eb)
{
    char url[REF_MAX * 3 + 512];
    int ul = snprintf(url, sizeof url, "%s%s", API_PREFIX, path);
    if (ul < 0 || (size_t)ul >= sizeof url)
        return tq_errf(eb, TQ_ERR_INVALID, "%s: request path too long", what);

    CURL *c = curl_easy_init();
    if (!c)
        return tq_errf(eb, TQ_ERR_NOMEM, "%s: could not create curl handle", what);
    r->curl = c;
    tq_buf_init(&r->body, d->max_body);
    struct curl_slist *hdrs = NULL, *h;
    int rc = TQ_OK;
    if ((h = curl_slist_append(hdrs, "Expect:")) == NULL) {
        rc = tq_errf(eb, TQ_ERR_NOMEM, "%s: out of memory", what);
        goto out;
    }
    hdrs = h;
    if (json_body) {
        if ((h = curl_slist_append(hdrs, "Content-Type: application/json")) == NULL) {
            rc = tq_errf(eb, TQ_ERR_NOMEM, "%s: out of memory", what);
            goto out;
        }
        hdrs = h;
    }
    curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, d->sock);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L); /* required when threads share the process */
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, TQ_DOCKER_CONNECT_TIMEOUT_MS);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http");
    if (r->stop) {
        curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(c, CURLOPT_XFERINFODATA, r);
        curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    }
    if (strcmp(method, "POST") == 0) {
        const char *b = json_body ? json_body : "";
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(b));
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, b);
    } else if (strcmp(method, "GET") != 0) {
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    }

    CURLcode cc = curl_easy_perform(c);
    if (cc == CURLE_OK) {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    } else if (r->overflow) {
        rc = tq_errf(eb, TQ_ERR_TOO_LARGE, "%s: docker reply larger than %zu bytes", what,
                     r->demux ? (size_t)LOG_STREAM_MAX : r->body.max);
    } else if (cc == CURLE_ABORTED_BY_CALLBACK) {
        rc = tq_errf(eb, TQ_ERR_TIMEOUT, "%s: stopped", what);
    } else if (cc == CURLE_OPERATION_TIMEDOUT && timeout_kind == TIMEOUT_IS_TIMEOUT) {
        rc = tq_errf(eb, TQ_ERR_TIMEOUT, "%s: no answer within %ld ms", what, timeout_ms);
    } else if (cc == CURLE_OUT_OF_MEMORY || cc == CURLE_WRITE_ERROR) {
        rc = tq_errf(eb, TQ_ERR_NOMEM, "%s: out of memory", what);
    } else {
        char reason[128];
        copy_str(reason, sizeof reason, curl_easy_strerror(cc));
        if (reason[0] >= 'A' && reason[0] <= 'Z')
            reason[0] = (char)(reason[0] - 'A' + 'a'); /* curl capitalises, we don't */
        rc = tq_errf(eb, TQ_ERR_UNAVAILABLE, "%s: %s (socket %s)", what, reason, d->sock);
    }
out:
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(c);
    r->curl = NULL;
    return rc;
}

/* The daemon's {"message": "..."} or, failing that, the start of the body. */
static void daemon_message(const resp *r, char *dst, size_t cap)
{
    dst[0] = '\0';
    if (r->body.len == 0) {
        snprintf(dst, cap, "HTTP %ld", r->status);
        return;
    }
    json_t *root = json_loadb(tq_buf_str(&r->body), r->body.len, 0, NULL);
    const char *m = obj_str(root, "message");
    if (m)
        copy_line(dst, cap, m, strlen(m));
    else
        copy_line(dst, cap, r->body.data, r->body.len);
    json_decref(root);
}

/* Maps the statuses every call shares; `ok` statuses were handled by the caller. */
static int status_error(const resp *r, const char *what, tq_errbuf *eb)
{
    char msg[300];
    daemon_message(r, msg, sizeof msg);
    switch (r->status) {
    case 400:
        return tq_errf(eb, TQ_ERR_INVALID, "%s: %s", what, msg);
    case 404:
        return tq_errf(eb, TQ_ERR_NOT_FOUND, "%s: %s", what, msg);
    case 409:
        return tq_errf(eb, TQ_ERR_CONFLICT, "%s: %s", what, msg);
    default:
        return tq_errf(eb, TQ_ERR_DOCKER, "%s: docker returned %ld: %s", what, r->status, msg);
    }
}

/* "/containers/<escaped ref><suffix>" into buf. */
static int ref_path(char *buf, size_t cap, const char *prefix, const char *ref, const char *suffix,
                    const char *what, tq_errbuf *eb)
{
    if (!ref_ok(ref))
        return tq_errf(eb, TQ_ERR_INVALID, "%s: invalid reference", what);
    char *e = curl_easy_escape(NULL, ref, 0);
    if (!e)
        return tq_errf(eb, TQ_ERR_NOMEM, "%s: out of memory", what);
    int n = snprintf(buf, cap, "%s%s%s", prefix, e, suffix);
    curl_free(e);
    if (n < 0 || (size_t)n >= cap)
        return tq_errf(eb, TQ_ERR_INVALID, "%s: reference too long", what);
    return TQ_OK;
}

/* ---------------------------------------------------------------- public API */

int tq_docker_new(const char *host, tq_docker **out, tq_errbuf *eb)
{
    *out = NULL;
    if (!host || !*host)
        return tq_errf(eb, TQ_ERR_CONFIG, "invalid docker host: empty");
    const char *path = host;
    if (strncmp(host, "unix://", 7) == 0)
        path = host + 7;
    else if (strstr(host, "://"))
        return tq_errf(eb, TQ_ERR_CONFIG,
                       "invalid docker host \"%.200s\": only unix:// sockets are supported", host);
    if (path[0] != '/')
        return tq_errf(eb, TQ_ERR_CONFIG, "invalid docker host \"%.200s\": need an absolute path",
                       host);
    if (strlen(path) >= SOCK_PATH_MAX)
        return tq_errf(eb, TQ_ERR_CONFIG, "invalid docker host \"%.200s\": path too long", host);
    /* Reference-counted, so a matching cleanup in tq_docker_free is safe with many handles. */
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return tq_errf(eb, TQ_ERR_INTERNAL, "could not initialise libcurl");
    tq_docker *d = calloc(1, sizeof *d);
    if (!d) {
        curl_global_cleanup();
        return tq_errf(eb, TQ_ERR_NOMEM, "could not allocate docker client: out of memory");
    }
    copy_str(d->sock, sizeof d->sock, path);
    d->max_body = TQ_DOCKER_DEFAULT_MAX_BODY;
    d->timeout_ms = TQ_DOCKER_DEFAULT_TIMEOUT_MS;
    *out = d;
    return TQ_OK;
}

void tq_docker_free(tq_docker *d)
{
    if (!d)
        return;
    free(d);
    curl_global_cleanup();
}

void tq_docker_set_limits(tq_docker *d, size_t max_body, long timeout_ms)
{
    if (max_body > 0)
        d->max_body = max_body;
    if (timeout_ms > 0)
        d->timeout_ms = timeout_ms;
}

const char *tq_docker_socket_path(const tq_docker *d)
{
    return d->sock;
}

int tq_docker_ping(tq_docker *d, tq_errbuf *eb)
{
    resp r = {0};
    const char *what = "could not ping docker";
    int rc = request(d, "GET", "/_ping", NULL, d->timeout_ms, TIMEOUT_IS_UNAVAILABLE, &r, what, eb);
    if (rc == TQ_OK && r.status != 200)
        rc = status_error(&r, what, eb);
    resp_free(&r);
    return rc;
}

int tq_docker_create(tq_docker *d, const tq_container_spec *s, char id[TQ_DOCKER_ID_BUF],
                     tq_errbuf *eb)
{
    id[0] = '\0';
    int rc = tq_container_spec_check(s, d->sock, eb);
    if (rc != TQ_OK)
        return rc;
    char what[200];
    snprintf(what, sizeof what, "could not create container \"%s\"", s->name);
    char path[REF_MAX * 3 + 64];
    rc = ref_path(path, sizeof path, "/containers/create?name=", s->name, "", what, eb);
    if (rc != TQ_OK)
        return rc;
    char *body = tq_docker_create_body(s);
    if (!body)
        return tq_errf(eb, TQ_ERR_NOMEM, "%s: out of memory", what);
    resp r = {0};
    rc = request(d, "POST", path, body, d->timeout_ms, TIMEOUT_IS_UNAVAILABLE, &r, what, eb);
    free(body);
    if (rc != TQ_OK)
        goto out;
    if (r.status == 201) {
        json_t *root = json_loadb(tq_buf_str(&r.body), r.body.len, 0, NULL);
        const char *cid = obj_str(root, "Id");
        if (cid && strlen(cid) == TQ_DOCKER_ID_BUF - 1)
            copy_str(id, TQ_DOCKER_ID_BUF, cid);
        else
            rc = tq_errf(eb, TQ_ERR_DOCKER, "%s: reply has no container id", what);
        json_decref(root);
    } else if (r.status == 404) {
        rc = tq_errf(eb, TQ_ERR_NOT_FOUND, "cannot create container \"%s\": image \"%s\" not found",
                     s->name, s->image);
    } else {
        rc = status_error(&r, what, eb);
    }
out:
    resp_free(&r);
    return rc;
}

/* POST/DELETE/GET on /containers/{ref}{suffix} whose success statuses are ok1/ok2. */
static int simple_call(tq_docker *d, const char *method, const char *verb, const char *ref,
                       const char *suffix, long timeout_ms, long ok1, long ok2, resp *r, char *what,
                       size_t what_cap, tq_errbuf *eb)
{
    snprintf(what, what_cap, "could not %s container \"%.128s\"", verb, ref ? ref : "");
    char path[REF_MAX * 3 + 128];
    int rc = ref_path(path, sizeof path, "/containers/", ref, suffix, what, eb);
    if (rc != TQ_OK)
        return rc;
    rc = request(d, method, path, NULL, timeout_ms, TIMEOUT_IS_UNAVAILABLE, r, what, eb);
    if (rc == TQ_OK && r->status != ok1 && r->status != ok2)
        rc = status_error(r, what, eb);
    return rc;
}

int tq_docker_start(tq_docker *d, const char *id_or_name, tq_errbuf *eb)
{
    resp r = {0};
    char what[200];
    int rc = simple_call(d, "POST", "start", id_or_name, "/start", d->timeout_ms, 204, 304, &r,
                         what, sizeof what, eb);
    resp_free(&r);
    return rc;
}

int tq_docker_inspect(tq_docker *d, const char *id_or_name, tq_container_state *st, tq_errbuf *eb)
{
    resp r = {0};
    char what[200];
    memset(st, 0, sizeof *st);
    int rc = simple_call(d, "GET", "inspect", id_or_name, "/json", d->timeout_ms, 200, 200, &r,
                         what, sizeof what, eb);
    if (rc == TQ_OK)
        rc = tq_docker_parse_inspect(tq_buf_str(&r.body), r.body.len, st, eb);
    resp_free(&r);
    return rc;
}

int tq_docker_wait(tq_docker *d, const char *id, long timeout_ms, int *exit_code, tq_errbuf *eb)
{
    char what[200];
    snprintf(what, sizeof what, "could not wait for container \"%.128s\"", id ? id : "");
    char path[REF_MAX * 3 + 64];
    int rc =
        ref_path(path, sizeof path, "/containers/", id, "/wait?condition=not-running", what, eb);
    if (rc != TQ_OK)
        return rc;
    resp r = {0};
    rc = request(d, "POST", path, NULL, timeout_ms > 0 ? timeout_ms : d->timeout_ms,
                 TIMEOUT_IS_TIMEOUT, &r, what, eb);
    if (rc != TQ_OK)
        goto out;
    if (r.status != 200) {
        rc = status_error(&r, what, eb);
        goto out;
    }
    json_t *root = json_loadb(tq_buf_str(&r.body), r.body.len, 0, NULL);
    json_t *sc = json_object_get(root, "StatusCode");
    if (json_is_integer(sc)) {
        *exit_code = (int)json_integer_value(sc);
    } else {
        rc = tq_errf(eb, TQ_ERR_DOCKER, "%s: reply has no StatusCode", what);
    }
    json_decref(root);
out:
    resp_free(&r);
    return rc;
}

int tq_docker_logs_tail(tq_docker *d, const char *id, int lines, int stderr_only, char **out,
                        tq_errbuf *eb)
{
    *out = NULL;
    char suffix[80];
    snprintf(suffix, sizeof suffix, "/logs?stdout=%d&stderr=1&tail=%d", !stderr_only,
             lines > 0 ? lines : 100);
    tq_log_demux *m = malloc(sizeof *m);
    if (!m)
        return tq_errf(eb, TQ_ERR_NOMEM, "could not read logs: out of memory");
    tq_log_demux_init(m);
    resp r = {0};
    r.demux = m;
    char what[200];
    int rc = simple_call(d, "GET", "read logs of", id, suffix, d->timeout_ms, 200, 200, &r, what,
                         sizeof what, eb);
    if (rc == TQ_OK) {
        *out = tq_log_demux_finish(m);
        if (!*out)
            rc = tq_errf(eb, TQ_ERR_NOMEM, "%s: out of memory", what);
    }
    resp_free(&r);
    free(m);
    return rc;
}

int tq_docker_attach(tq_docker *d, const char *id, int logs, tq_log_sink_fn sink, void *arg,
                     const atomic_int *stop, tq_errbuf *eb)
{
    tq_log_demux *m = malloc(sizeof *m);
    if (!m)
        return tq_errf(eb, TQ_ERR_NOMEM, "could not attach: out of memory");
    tq_log_demux_init(m);
    m->sink = sink;
    m->sink_arg = arg;
    resp r = {.demux = m, .unbounded = 1, .stop = stop};
    char what[200];
    /* timeout 0: curl's "no total timeout"; the stream lasts as long as the training. */
    int rc = simple_call(d, "POST", "attach to", id,
                         logs ? "/attach?stream=1&stdout=1&stderr=1&logs=1"
                              : "/attach?stream=1&stdout=1&stderr=1",
                         0, 200, 101, &r, what, sizeof what, eb);
    resp_free(&r);
    free(m);
    return rc;
}

int tq_docker_stop(tq_docker *d, const char *id, int grace_seconds, tq_errbuf *eb)
{
    if (grace_seconds < 0)
        grace_seconds = 0;
    if (grace_seconds > 3600)
        grace_seconds = 3600;
    char suffix[32];
    snprintf(suffix, sizeof suffix, "/stop?t=%d", grace_seconds);
    resp r = {0};
    char what[200];
    /* The daemon answers only after the container is gone, up to grace seconds later. */
    int rc = simple_call(d, "POST", "stop", id, suffix,
                         d->timeout_ms + grace_seconds * 1000L + STOP_SLACK_MS, 204, 304, &r, what,
                         sizeof what, eb);
    resp_free(&r);
    return rc;
}

int tq_docker_kill(tq_docker *d, const char *id, tq_errbuf *eb)
{
    resp r = {0};
    char what[200];
    int rc = simple_call(d, "POST", "kill", id, "/kill", d->timeout_ms, 204, 409, &r, what,
                         sizeof what, eb);
    resp_free(&r);
    return rc;
}

int tq_docker_remove(tq_docker *d, const char *id, int force, tq_errbuf *eb)
{
    resp r = {0};
    char what[200];
    int rc = simple_call(d, "DELETE", "remove", id, force ? "?force=1&v=1" : "?v=1", d->timeout_ms,
                         204, 404, &r, what, sizeof what, eb);
    resp_free(&r);
    return rc;
}

int tq_docker_list_path(const char *const *labels, const char *const *statuses, char *buf,
                        size_t cap, tq_errbuf *eb)
{
    static const char *const known[] = {"created", "restarting", "running", "removing",
                                        "paused",  "exited",     "dead"};
    const char *what = "could not list containers";
    json_t *f = json_object(), *lv = json_array(), *sv = json_array();
    int rc = f && lv && sv ? TQ_OK : tq_errf(eb, TQ_ERR_NOMEM, "%s: out of memory", what);
    for (size_t i = 0; rc == TQ_OK && labels && labels[i]; i++) {
        if (i >= TQ_DOCKER_LIST_MAX_FILTERS || !ref_ok(labels[i]))
            rc = tq_errf(eb, TQ_ERR_INVALID, "%s: invalid label filter", what);
        else if (json_array_append_new(lv, json_string(labels[i])))
            rc = tq_errf(eb, TQ_ERR_NOMEM, "%s: out of memory", what);
    }
    for (size_t i = 0; rc == TQ_OK && statuses && statuses[i]; i++) {
        size_t k = 0;
        while (k < sizeof known / sizeof known[0] && strcmp(statuses[i], known[k]) != 0)
            k++;
        if (k == sizeof known / sizeof known[0] || i >= TQ_DOCKER_LIST_MAX_FILTERS)
            rc = tq_errf(eb, TQ_ERR_INVALID, "%s: invalid status filter", what);
        else if (json_array_append_new(sv, json_string(statuses[i])))
            rc = tq_errf(eb, TQ_ERR_NOMEM, "%s: out of memory", what);
    }
    if (rc == TQ_OK && json_array_size(lv) && json_object_set(f, "label", lv))
        rc = tq_errf(eb, TQ_ERR_NOMEM, "%s: out of memory", what);
    if (rc == TQ_OK && json_array_size(sv) && json_object_set(f, "status", sv))
        rc = tq_errf(eb, TQ_ERR_NOMEM, "%s: out of memory", what);
    char *fj = NULL, *e = NULL;
    if (rc == TQ_OK && json_object_size(f)) {
        fj = json_dumps(f, JSON_COMPACT);
        e = fj ? curl_easy_escape(NULL, fj, 0) : NULL;
        if (!e)
            rc = tq_errf(eb, TQ_ERR_NOMEM, "%s: out of memory", what);
    }
    if (rc == TQ_OK) {
        int n =
            snprintf(buf, cap, "/containers/json?all=true%s%s", e ? "&filters=" : "", e ? e : "");
        if (n < 0 || (size_t)n >= cap)
            rc = tq_errf(eb, TQ_ERR_INVALID, "%s: filters too long", what);
    }
    curl_free(e);
    free(fj);
    json_decref(lv);
    json_decref(sv);
    json_decref(f);
    return rc;
}

int tq_docker_list_where(tq_docker *d, const char *const *labels, const char *const *statuses,
                         tq_container_summary **out, size_t *n, tq_errbuf *eb)
{
    *out = NULL;
    *n = 0;
    const char *what = "could not list containers";
    char path[TQ_DOCKER_LIST_PATH_MAX];
    int rc = tq_docker_list_path(labels, statuses, path, sizeof path, eb);
    if (rc != TQ_OK)
        return rc;
    resp r = {0};
    rc = request(d, "GET", path, NULL, d->timeout_ms, TIMEOUT_IS_UNAVAILABLE, &r, what, eb);
    if (rc == TQ_OK) {
        if (r.status == 200)
            rc = tq_docker_parse_list(tq_buf_str(&r.body), r.body.len, out, n, eb);
        else
            rc = status_error(&r, what, eb);
    }
    resp_free(&r);
    return rc;
}

int tq_docker_list(tq_docker *d, const char *label_filter, tq_container_summary **out, size_t *n,
                   tq_errbuf *eb)
{
    const char *labels[2] = {label_filter, NULL};
    return tq_docker_list_where(d, labels, NULL, out, n, eb);
}

int tq_docker_image_exists(tq_docker *d, const char *image, tq_errbuf *eb)
{
    char what[300];
    snprintf(what, sizeof what, "could not inspect image \"%.200s\"", image ? image : "");
    char path[REF_MAX * 3 + 64];
    int rc = ref_path(path, sizeof path, "/images/", image, "/json", what, eb);
    if (rc != TQ_OK)
        return rc;
    resp r = {0};
    rc = request(d, "GET", path, NULL, d->timeout_ms, TIMEOUT_IS_UNAVAILABLE, &r, what, eb);
    if (rc == TQ_OK) {
        if (r.status == 404)
            rc = tq_errf(eb, TQ_ERR_NOT_FOUND, "image \"%.200s\" not found", image);
        else if (r.status != 200)
            rc = status_error(&r, what, eb);
    }
    resp_free(&r);
    return rc;
}
