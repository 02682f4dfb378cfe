#include "webhooks.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <jansson.h>
#include <netinet/in.h>
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

/* How often an idle worker looks for due rows. */
#define POLL_MS 500
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
        snprintf(why, cap, "must not point to a %s address",
                 tq_addr_class_name(tq_addr_classify(sa)));
        return -1;
    }
    return 0;
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
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || !*host) {
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

struct tq_webhooks {
    const tq_config *cfg;
    tq_webhook_rule rule;
    sender *senders;
    int n_senders; /* started */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop; /* under mu; also read unlocked by the curl callbacks (a late read is harmless) */
};

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
    char msg_id[32], ts[24], sig[TQ_WEBHOOK_SIGNATURE_BUF];
    snprintf(msg_id, sizeof msg_id, "msg_%lld", h->id);
    long long now = (long long)time(NULL);
    snprintf(ts, sizeof ts, "%lld", now);
    if (!h->secret || tq_webhook_sign(h->secret, msg_id, now, body, strlen(body), sig) != TQ_OK) {
        snprintf(error, error_cap, "no usable signing secret");
        return;
    }
    char hid[64], hts[64], hsig[32 + TQ_WEBHOOK_SIGNATURE_BUF];
    snprintf(hid, sizeof hid, "webhook-id: %s", msg_id);
    snprintf(hts, sizeof hts, "webhook-timestamp: %s", ts);
    snprintf(hsig, sizeof hsig, "webhook-signature: %s", sig);
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

static void *worker_main(void *arg)
{
    sender *se = arg;
    tq_webhooks *w = se->w;
    tq_backoff err_backoff;
    tq_backoff_init(&err_backoff, 500, 30000, TQ_BACKOFF_JITTER, se->seed);
    for (;;) {
        pthread_mutex_lock(&w->mu);
        int stop = w->stop;
        pthread_mutex_unlock(&w->mu);
        if (stop)
            break;
        tq_pdb_hook *rows = NULL;
        int n = 0;
        tq_errbuf eb = {{0}};
        long wait_ms = POLL_MS;
        int rc = tq_pdb_hooks_take(w->cfg->webhook_endpoint_concurrency, TQ_WEBHOOK_LEASE_SECONDS,
                                   &rows, &n, &eb);
        if (rc != TQ_OK) {
            tq_log(TQ_LOG_WARN, "webhook.take_failed", "%s", eb.msg);
            wait_ms = tq_backoff_next(&err_backoff);
        } else {
            tq_backoff_reset(&err_backoff);
            for (int i = 0; i < n && !__atomic_load_n(&w->stop, __ATOMIC_RELAXED); i++)
                deliver(se, &rows[i]);
            if (n > 0)
                wait_ms = 0;
        }
        tq_pdb_hooks_free(rows, n);
        if (wait_ms > 0) {
            struct timespec ts = tq_mono_deadline(wait_ms);
            pthread_mutex_lock(&w->mu);
            if (!w->stop)
                pthread_cond_timedwait(&w->cv, &w->mu, &ts);
            pthread_mutex_unlock(&w->mu);
        }
    }
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
    pthread_mutex_init(&w->mu, NULL);
    if (tq_cond_init_monotonic(&w->cv) != TQ_OK) {
        pthread_mutex_destroy(&w->mu);
        free(ss);
        free(w);
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
    *out = w;
    return TQ_OK;
}

void tq_webhooks_stop(tq_webhooks *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->mu);
    __atomic_store_n(&w->stop, 1, __ATOMIC_RELAXED);
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    for (int i = 0; i < w->n_senders; i++)
        pthread_join(w->senders[i].thread, NULL);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w->senders);
    free(w);
}
