#include "webhooks.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "admit.h"
#include "pdb.h"
#include "tq_backoff.h"
#include "tq_clock.h"
#include "tq_log.h"
#include "tq_webhook.h"

/* Senders are woken by Postgres notifications (channel trainq_webhook, sent at the commit
 * of a transaction that wrote deliveries); the listener also wakes one every POLL_MS, for
 * retries that fell due and notifications missed while its connection was down. */
#define POLL_MS 500
/* A waiting sender looks by itself this often, should the listener be stuck (connecting). */
#define BACKSTOP_MS 5000
/* How long the listener waits before connecting again after its connection was lost. */
#define RELISTEN_MS 1000
/* A short reason for the deliveries listing (curl's message or our own). */
#define ERROR_BUF 256

/* ------------------------------------------------------------------ the URL rule */

tq_webhook_rule tq_webhook_rule_of(const tq_config *cfg)
{
    tq_webhook_rule r = {cfg->webhook_allow_loopback, cfg->webhook_allow_http,
                         cfg->webhook_allow_nets};
    return r;
}

int tq_webhook_rule_addr_ok(const tq_webhook_rule *rule, const struct sockaddr *sa)
{
    return tq_webhook_addr_allowed(sa, rule->allow_loopback) ||
           (rule->allow_nets && tq_netlist_contains(rule->allow_nets, sa));
}

static int host_is_localhost(const char *h)
{
    size_t n = strlen(h);
    if (n > 0 && h[n - 1] == '.')
        n--; /* "localhost." */
    static const char lh[] = "localhost";
    if (n == sizeof lh - 1 && strncasecmp(h, lh, n) == 0)
        return 1;
    return n > sizeof lh && h[n - sizeof lh] == '.' &&
           strncasecmp(h + n - (sizeof lh - 1), lh, sizeof lh - 1) == 0;
}

/* -1 and why when host is an IP literal that may not be connected to; 0 otherwise
 * (names are judged at connect time, on the address they resolve to). */
static int host_literal_check(const char *host, const tq_webhook_rule *rule, char *why, size_t cap)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    char buf[64];
    size_t n = strlen(host);
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']' && n - 2 < sizeof buf) {
        memcpy(buf, host + 1, n - 2);
        buf[n - 2] = '\0';
        char *pct = strchr(buf, '%'); /* zone id */
        if (pct)
            *pct = '\0';
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        if (inet_pton(AF_INET6, buf, &s6->sin6_addr) != 1) {
            snprintf(why, cap, "has an invalid IPv6 address");
            return -1;
        }
        s6->sin6_family = AF_INET6;
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        if (inet_pton(AF_INET, host, &s4->sin_addr) != 1)
            return 0; /* a name */
        s4->sin_family = AF_INET;
    }
    const struct sockaddr *sa = (const struct sockaddr *)&ss;
    if (!tq_webhook_rule_addr_ok(rule, sa)) {
        const char *cls = tq_addr_class_name(tq_addr_classify(sa));
        snprintf(why, cap, "must not point to %s %s address", strchr("aeiou", cls[0]) ? "an" : "a",
                 cls);
        return -1;
    }
    return 0;
}

/* Whether url spells "<scheme>://" followed by a host. libcurl is lenient and reads a host
 * out of "https:///x", "https:/x" or "https:x" too ("x"): such a URL is a typo, and it
 * would be stored and retried against a host its writer never named. */
static int authority_follows(const char *url, const char *scheme)
{
    size_t n = strlen(scheme);
    return strncasecmp(url, scheme, n) == 0 && strncmp(url + n, "://", 3) == 0 &&
           url[n + 3] != '\0' && url[n + 3] != '/';
}

int tq_webhook_url_check(const char *url, const tq_webhook_rule *rule, char *why, size_t why_cap)
{
    if (!url || !*url) {
        snprintf(why, why_cap, "must be a non-empty URL");
        return -1;
    }
    if (strlen(url) > TQ_WEBHOOK_URL_MAX) {
        snprintf(why, why_cap, "must be at most %d bytes", TQ_WEBHOOK_URL_MAX);
        return -1;
    }
    CURLU *u = curl_url();
    if (!u) {
        snprintf(why, why_cap, "could not be checked");
        return -1;
    }
    int rc = -1;
    char *scheme = NULL, *host = NULL, *user = NULL, *pass = NULL;
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || !*host ||
        !authority_follows(url, scheme)) {
        snprintf(why, why_cap, "must be an absolute http(s) URL");
        goto out;
    }
    int http_ok = rule->allow_http || rule->allow_loopback;
    if (strcmp(scheme, "https") != 0 && !(http_ok && strcmp(scheme, "http") == 0)) {
        snprintf(why, why_cap, "must use https");
        goto out;
    }
    if (curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK ||
        curl_url_get(u, CURLUPART_PASSWORD, &pass, 0) == CURLUE_OK) {
        snprintf(why, why_cap, "must not contain credentials");
        goto out;
    }
    if (!rule->allow_loopback && host_is_localhost(host)) {
        snprintf(why, why_cap, "must not point to a loopback address");
        goto out;
    }
    rc = host_literal_check(host, rule, why, why_cap);
out:
    curl_free(scheme);
    curl_free(host);
    curl_free(user);
    curl_free(pass);
    curl_url_cleanup(u);
    return rc;
}

long long tq_webhook_retry_ms(int attempts, int max_attempts, int min_s, int max_s, unsigned seed)
{
    if (attempts >= max_attempts)
        return -1;
    tq_backoff b;
    tq_backoff_init(&b, (long)min_s * 1000, (long)max_s * 1000, TQ_BACKOFF_JITTER, seed);
    long d = 0;
    for (int i = 0; i < attempts && i < 64; i++)
        d = tq_backoff_next(&b);
    return d;
}

/* ------------------------------------------------------------------ the worker */

/* One sending thread. Each takes one row at a time, so a slow receiver holds up only the
 * sender in its request, never rows queued behind it in a batch. */
typedef struct {
    tq_webhooks *w;
    pthread_t thread;
    unsigned seed; /* rand_r state of the retry jitter, this thread's own */
} sender;

/* Waking: the listener thread turns each batch of notifications (and each POLL_MS tick)
 * into one kick, which wakes one idle sender; a sender that took a row kicks the next one,
 * so a backlog spreads over all senders without every notification waking all of them. A
 * kick nobody waits for is kept (up to the number of senders) for the next that does. */
struct tq_webhooks {
    const tq_config *cfg;
    tq_webhook_rule rule;
    sender *senders;
    int n_senders; /* started */
    pthread_t listener;
    int listener_started;
    int wake[2]; /* self-pipe: tq_webhooks_stop wakes the listener out of poll() */
    pthread_mutex_t mu;
    pthread_cond_t idle_cv;  /* idle senders wait here for a kick */
    pthread_cond_t pause_cv; /* senders backing off after an error wait here (stop only) */
    int kicks;               /* under mu: pending wake-ups, at most n_senders */
    int stop; /* under mu; also read unlocked by the curl callbacks (a late read is harmless) */
    int take_down;   /* tq_log_down: the senders' takes fail (Postgres away) */
    int listen_down; /* tq_log_down: the listener has no connection */
};

static int stopping(tq_webhooks *w)
{
    pthread_mutex_lock(&w->mu);
    int stop = w->stop;
    pthread_mutex_unlock(&w->mu);
    return stop;
}

static void kick(tq_webhooks *w)
{
    pthread_mutex_lock(&w->mu);
    if (w->kicks < w->n_senders)
        w->kicks++;
    pthread_cond_signal(&w->idle_cv);
    pthread_mutex_unlock(&w->mu);
}

typedef struct {
    tq_webhooks *w;
    size_t got;              /* response bytes read */
    char refused[ERROR_BUF]; /* set by open_socket when it refused an address */
} send_ctx;

/* Called by curl for every connection it opens, with the address it resolved: the SSRF
 * rule is enforced here, on exactly the address connected to. */
static curl_socket_t open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *a)
{
    send_ctx *s = clientp;
    if (purpose != CURLSOCKTYPE_IPCXN || !tq_webhook_rule_addr_ok(&s->w->rule, &a->addr)) {
        snprintf(s->refused, sizeof s->refused, "refused: %s address",
                 tq_addr_class_name(tq_addr_classify(&a->addr)));
        return CURL_SOCKET_BAD;
    }
    return socket(a->family, a->socktype, a->protocol);
}

/* The response body is read up to TQ_WEBHOOK_RESPONSE_MAX and then the transfer ends
 * (the status line is all we need). */
static size_t on_write(char *p, size_t size, size_t nmemb, void *ud)
{
    (void)p;
    send_ctx *s = ud;
    size_t n = size * nmemb;
    if (s->got + n > TQ_WEBHOOK_RESPONSE_MAX)
        return 0;
    s->got += n;
    return n;
}

static int on_progress(void *ud, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d)
{
    (void)a, (void)b, (void)c, (void)d;
    send_ctx *s = ud;
    return __atomic_load_n(&s->w->stop, __ATOMIC_RELAXED) ? 1 : 0;
}

/* The body: {"type", "timestamp", "data": the job object, "sequence"} (docs/webhooks.md). */
static char *build_body(const tq_pdb_hook *h)
{
    json_t *data = NULL;
    if (h->job_json) {
        data = json_loads(h->job_json, JSON_DECODE_ANY, NULL);
        if (!data)
            return NULL;
    }
    json_t *o = json_pack("{s:s, s:s, s:o, s:I}", "type", h->event, "timestamp", h->event_at,
                          "data", data ? data : json_null(), "sequence", (json_int_t)h->sequence);
    char *s = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(o);
    return s;
}

/* One attempt: status (0 when no response) and error (empty when none). */
static void send_one(tq_webhooks *w, const tq_pdb_hook *h, const char *body, int *status,
                     char *error, size_t error_cap)
{
    *status = 0;
    error[0] = '\0';
    char msg_id[32], ts[24], sig[TQ_WEBHOOK_SIGNATURE_BUF], old[TQ_WEBHOOK_SIGNATURE_BUF];
    snprintf(msg_id, sizeof msg_id, "msg_%lld", h->id);
    long long now = (long long)time(NULL);
    snprintf(ts, sizeof ts, "%lld", now);
    if (!h->secret || tq_webhook_sign(h->secret, msg_id, now, body, strlen(body), sig) != TQ_OK) {
        snprintf(error, error_cap, "no usable signing secret");
        return;
    }
    /* During a rotation's overlap the replaced secret signs too (Standard Webhooks: the
     * receiver accepts any one of the space-separated signatures), new one first. */
    old[0] = '\0';
    if (h->old_secret &&
        tq_webhook_sign(h->old_secret, msg_id, now, body, strlen(body), old) != TQ_OK)
        old[0] = '\0';
    char hid[64], hts[64], hsig[32 + 2 * TQ_WEBHOOK_SIGNATURE_BUF];
    snprintf(hid, sizeof hid, "webhook-id: %s", msg_id);
    snprintf(hts, sizeof hts, "webhook-timestamp: %s", ts);
    snprintf(hsig, sizeof hsig, "webhook-signature: %s%s%s", sig, old[0] ? " " : "", old);
    struct curl_slist *hdrs = NULL, *tmp;
    const char *lines[] = {"Content-Type: application/json",
                           "User-Agent: trainq-webhooks/1",
                           "Expect:",
                           hid,
                           hts,
                           hsig};
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        tmp = curl_slist_append(hdrs, lines[i]);
        if (!tmp) {
            curl_slist_free_all(hdrs);
            snprintf(error, error_cap, "out of memory");
            return;
        }
        hdrs = tmp;
    }
    CURL *c = curl_easy_init();
    if (!c) {
        curl_slist_free_all(hdrs);
        snprintf(error, error_cap, "out of memory");
        return;
    }
    send_ctx s = {.w = w};
    const char *protos = w->rule.allow_http || w->rule.allow_loopback ? "http,https" : "https";
    curl_easy_setopt(c, CURLOPT_URL, h->url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, protos);
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_PROXY, ""); /* never through a proxy from the environment */
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, TQ_WEBHOOK_CONNECT_TIMEOUT_MS);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, TQ_WEBHOOK_TIMEOUT_MS);
    curl_easy_setopt(c, CURLOPT_OPENSOCKETFUNCTION, open_socket);
    curl_easy_setopt(c, CURLOPT_OPENSOCKETDATA, &s);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &s);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, &s);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    CURLcode cc = curl_easy_perform(c);
    long code = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    *status = (int)code;
    if (s.refused[0])
        snprintf(error, error_cap, "%s", s.refused);
    else if (cc != CURLE_OK && !(cc == CURLE_WRITE_ERROR && code > 0))
        snprintf(error, error_cap, "%s", curl_easy_strerror(cc));
    curl_easy_cleanup(c);
    curl_slist_free_all(hdrs);
}

static void deliver(sender *se, const tq_pdb_hook *h)
{
    tq_webhooks *w = se->w;
    const tq_config *cfg = w->cfg;
    int status = 0;
    char error[ERROR_BUF];
    int64_t t0 = tq_mono_ms();
    char *body = build_body(h);
    if (body)
        send_one(w, h, body, &status, error, sizeof error);
    else
        snprintf(error, sizeof error, "could not build the body");
    free(body);
    long long latency = (long long)(tq_mono_ms() - t0);
    int ok = status >= 200 && status < 300;
    long long retry = 0;
    if (!ok) {
        if (status == 410)
            retry = -1; /* Gone: never again (tq_pdb_hook_record disables the endpoint) */
        else if (__atomic_load_n(&w->stop, __ATOMIC_RELAXED))
            retry = 0; /* aborted by our own stop: due again at once */
        else
            retry = tq_webhook_retry_ms(h->attempts, cfg->webhook_max_attempts,
                                        cfg->webhook_retry_min_seconds,
                                        cfg->webhook_retry_max_seconds, se->seed++);
    }
    tq_errbuf eb = {{0}};
    if (tq_pdb_hook_record(h->id, ok, retry, status, error[0] ? error : NULL, latency,
                           cfg->webhook_disable_after, &eb) != TQ_OK) {
        /* The lease makes it due again: sent twice at worst, never lost. */
        tq_log(TQ_LOG_WARN, "webhook.record_failed", "delivery %lld: %s", h->id, eb.msg);
        return;
    }
    tq_logj(ok ? TQ_LOG_DEBUG : TQ_LOG_INFO, ok ? "webhook.delivered" : "webhook.attempt_failed",
            json_pack("{s:I, s:s, s:s, s:i, s:i, s:s, s:I}", "delivery", (json_int_t)h->id,
                      "job_id", h->job_id, "event", h->event, "status", status, "attempts",
                      h->attempts, "error", error, "retry_ms", (json_int_t)retry),
            "webhook %lld (%s of job %s): %s", h->id, h->event, h->job_id,
            ok          ? "delivered"
            : retry < 0 ? "failed for good"
                        : "will retry");
}

/* Waits (on cv, at most ms) until stop, or with idle_cv until a kick, which it takes. */
static void sender_wait(tq_webhooks *w, pthread_cond_t *cv, long ms)
{
    struct timespec ts = tq_mono_deadline(ms);
    pthread_mutex_lock(&w->mu);
    int timed_out = 0;
    while (!w->stop && !timed_out && !(cv == &w->idle_cv && w->kicks > 0))
        timed_out = pthread_cond_timedwait(cv, &w->mu, &ts) != 0;
    if (cv == &w->idle_cv && w->kicks > 0)
        w->kicks--;
    pthread_mutex_unlock(&w->mu);
}

static void *worker_main(void *arg)
{
    sender *se = arg;
    tq_webhooks *w = se->w;
    tq_backoff err_backoff;
    tq_backoff_init(&err_backoff, 500, 30000, TQ_BACKOFF_JITTER, se->seed);
    for (;;) {
        if (stopping(w))
            break;
        tq_pdb_hook *rows = NULL;
        int n = 0;
        tq_errbuf eb = {{0}};
        int rc = tq_pdb_hooks_take(w->cfg->webhook_endpoint_concurrency,
                                   w->cfg->webhook_user_concurrency, TQ_WEBHOOK_LEASE_SECONDS,
                                   &rows, &n, &eb);
        if (rc != TQ_OK) {
            tq_log_down(&w->take_down, "webhook.take_failed", "%s; retrying", eb.msg);
            /* Kicks are for senders that can work: this one pauses for its backoff. */
            sender_wait(w, &w->pause_cv, tq_backoff_next(&err_backoff));
        } else {
            tq_backoff_reset(&err_backoff);
            tq_log_up(&w->take_down, "webhook.take_ok", "webhook senders take deliveries again");
            if (n > 0)
                kick(w); /* there may be more: another sender looks while this one sends */
            for (int i = 0; i < n && !__atomic_load_n(&w->stop, __ATOMIC_RELAXED); i++)
                deliver(se, &rows[i]);
        }
        tq_pdb_hooks_free(rows, n);
        if (rc == TQ_OK && n == 0)
            sender_wait(w, &w->idle_cv, BACKSTOP_MS);
    }
    return NULL;
}

/* The listener: one connection LISTENing on trainq_webhook; every batch of notifications
 * and every POLL_MS tick kick one sender. While it has no connection the ticks go on (the
 * senders poll), and every new connection kicks once for what was missed meanwhile. */
static void *listener_main(void *arg)
{
    tq_webhooks *w = arg;
    PGconn *lc = NULL;
    int64_t next_listen = 0, next_tick = 0;
    for (;;) {
        if (stopping(w))
            break;
        int64_t now = tq_mono_ms();
        if (!lc && now >= next_listen) {
            tq_errbuf eb = {{0}};
            lc = tq_pdb_hooks_listen_open(&eb);
            if (!lc) {
                tq_log_down(&w->listen_down, "webhook.listen_failed", "%s; retrying", eb.msg);
                next_listen = now + RELISTEN_MS;
            } else {
                tq_log_up(&w->listen_down, "webhook.listen_ok", "listening for deliveries again");
            }
            next_tick = now; /* what was written while nobody listened */
        }
        if (now >= next_tick) {
            kick(w);
            next_tick = now + POLL_MS;
        }
        struct pollfd pf[2] = {{.fd = w->wake[0], .events = POLLIN},
                               {.fd = lc ? PQsocket(lc) : -1, .events = POLLIN}};
        poll(pf, 2, (int)(next_tick > now ? next_tick - now : 0));
        if (lc && (pf[1].revents & (POLLIN | POLLERR | POLLHUP))) {
            if (!PQconsumeInput(lc)) {
                tq_log_down(&w->listen_down, "webhook.listen_lost", "%.*s",
                            (int)strcspn(PQerrorMessage(lc), "\n"), PQerrorMessage(lc));
                PQfinish(lc);
                lc = NULL;
                continue;
            }
            int got = 0;
            PGnotify *nt;
            while ((nt = PQnotifies(lc)) != NULL) {
                got = 1;
                PQfreemem(nt);
            }
            if (got)
                kick(w);
        }
    }
    if (lc)
        PQfinish(lc);
    return NULL;
}

int tq_webhooks_start(const tq_config *cfg, tq_webhooks **out, tq_errbuf *eb)
{
    *out = NULL;
    tq_webhooks *w = calloc(1, sizeof *w);
    sender *ss = calloc((size_t)cfg->webhook_senders, sizeof *ss);
    if (!w || !ss) {
        free(w);
        free(ss);
        return tq_errf(eb, TQ_ERR_NOMEM, "out of memory");
    }
    w->cfg = cfg;
    w->rule = tq_webhook_rule_of(cfg);
    w->senders = ss;
    w->wake[0] = w->wake[1] = -1;
    pthread_mutex_init(&w->mu, NULL);
    if (tq_cond_init_monotonic(&w->idle_cv) != TQ_OK) {
        pthread_mutex_destroy(&w->mu);
        free(ss);
        free(w);
        return tq_errf(eb, TQ_ERR_INTERNAL, "could not start the webhook senders");
    }
    if (tq_cond_init_monotonic(&w->pause_cv) != TQ_OK) {
        pthread_cond_destroy(&w->idle_cv);
        pthread_mutex_destroy(&w->mu);
        free(ss);
        free(w);
        return tq_errf(eb, TQ_ERR_INTERNAL, "could not start the webhook senders");
    }
    if (pipe(w->wake) != 0 || fcntl(w->wake[0], F_SETFL, O_NONBLOCK) != 0) {
        tq_webhooks_stop(w);
        return tq_errf(eb, TQ_ERR_INTERNAL, "could not start the webhook senders");
    }
    unsigned base = (unsigned)time(NULL) ^ (unsigned)getpid();
    for (int i = 0; i < cfg->webhook_senders; i++) {
        ss[i].w = w;
        ss[i].seed = base + (unsigned)i * 7919u;
        if (pthread_create(&ss[i].thread, NULL, worker_main, &ss[i]) != 0) {
            tq_webhooks_stop(w);
            return tq_errf(eb, TQ_ERR_INTERNAL, "could not start the webhook senders");
        }
        w->n_senders++;
    }
    if (pthread_create(&w->listener, NULL, listener_main, w) != 0) {
        tq_webhooks_stop(w);
        return tq_errf(eb, TQ_ERR_INTERNAL, "could not start the webhook listener");
    }
    w->listener_started = 1;
    *out = w;
    return TQ_OK;
}

void tq_webhooks_stop(tq_webhooks *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->mu);
    __atomic_store_n(&w->stop, 1, __ATOMIC_RELAXED);
    pthread_cond_broadcast(&w->idle_cv);
    pthread_cond_broadcast(&w->pause_cv);
    pthread_mutex_unlock(&w->mu);
    if (w->wake[1] >= 0) {
        char c = 1;
        ssize_t n = write(w->wake[1], &c, 1);
        (void)n; /* a full pipe has woken it already */
    }
    if (w->listener_started)
        pthread_join(w->listener, NULL);
    for (int i = 0; i < w->n_senders; i++)
        pthread_join(w->senders[i].thread, NULL);
    for (int i = 0; i < 2; i++)
        if (w->wake[i] >= 0)
            close(w->wake[i]);
    pthread_cond_destroy(&w->idle_cv);
    pthread_cond_destroy(&w->pause_cv);
    pthread_mutex_destroy(&w->mu);
    free(w->senders);
    free(w);
}
