#include "poptions.h"

#include "admit.h"
#include "auth.h"
#include "request.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define OFF(f) offsetof(tq_config, f)

static const tq_opt options[] = {
    TQ_OPT_DATABASE_URL(tq_config),
    TQ_OPT_AMQP_URL(tq_config),
    TQ_OPT_LOG_LEVEL(tq_config),
    {"TRAINQ_HTTP_ADDR", "http-addr", TQ_OPT_STR, OFF(http_addr), "127.0.0.1:3000", 0, 0, NULL,
     "HTTP listen address host:port (port 0 picks a free port; an address another process listens "
     "on stops the start with exit 1, one this host does not have (after 3 s) or a port it may "
     "not take with exit 2)"},
    {"TRAINQ_HTTP_THREADS", "http-threads", TQ_OPT_INT, OFF(http_threads), "4", 1, 256, NULL,
     "HTTP worker threads (each holds one Postgres connection)"},
    {"TRAINQ_JWT_ALG", "jwt-alg", TQ_OPT_ENUM, OFF(jwt_alg), "HS256", 0, 0,
     "HS256,HS384,HS512,RS256,RS384,RS512,ES256,ES384",
     "the only JWT algorithm accepted (never taken from the token)"},
    {"TRAINQ_JWT_SECRET", "jwt-secret", TQ_OPT_SECRET, OFF(jwt_secret), "", 0, 0, NULL,
     "HMAC secret for HS* tokens (e.g. the Supabase JWT secret)"},
    {"TRAINQ_JWT_PUBLIC_KEY_FILE", "jwt-public-key-file", TQ_OPT_STR, OFF(jwt_public_key_file), "",
     0, 0, NULL, "PEM public key file for RS*/ES* tokens"},
    {"TRAINQ_JWT_AUDIENCE", "jwt-audience", TQ_OPT_STR, OFF(jwt_audience), "authenticated", 0, 0,
     NULL, "required `aud` claim (Supabase's user tokens carry `authenticated`); `-`: any"},
    {"TRAINQ_JWT_ISSUER", "jwt-issuer", TQ_OPT_STR, OFF(jwt_issuer), "", 0, 0, NULL,
     "required `iss` claim (empty: not checked)"},
    {"TRAINQ_JWT_LEEWAY_SECONDS", "jwt-leeway-seconds", TQ_OPT_INT, OFF(jwt_leeway_seconds), "30",
     0, 300, NULL, "clock skew allowed when checking exp/nbf/iat"},
    {"TRAINQ_CORS_ORIGINS", "cors-origins", TQ_OPT_STR, OFF(cors_origins), "*", 0, 0, NULL,
     "comma-separated allowed origins (scheme://host[:port], as browsers send Origin), `*` for "
     "any, empty for none"},
    {"TRAINQ_SUBMIT_RATE_PER_MINUTE", "submit-rate-per-minute", TQ_OPT_INT,
     OFF(submit_rate_per_minute), "10", 1, 1000000, NULL,
     "submissions per user per minute, shared by all producers"},
    {"TRAINQ_READ_RATE_PER_MINUTE", "read-rate-per-minute", TQ_OPT_INT, OFF(read_rate_per_minute),
     "600", 1, 1000000, NULL, "status/list/events requests per user per minute"},
    {"TRAINQ_MAX_BODY_BYTES", "max-body-bytes", TQ_OPT_BYTES, OFF(max_body_bytes), "64k", 1024,
     65536, NULL, "largest accepted request body (413 beyond it)"},
    TQ_OPT_RELAY_BATCH(tq_config),
    TQ_OPT_PUBLISH_KEYS(tq_config),
    TQ_OPT_PUBLISH_KEYS_FILE(tq_config),
    {"TRAINQ_REQUEST_TIMEOUT_SECONDS", "request-timeout-seconds", TQ_OPT_INT,
     OFF(request_timeout_seconds), "30", 1, 3600, NULL, "idle HTTP connection timeout"},
    {"TRAINQ_HTTP_MAX_CONNECTIONS", "http-max-connections", TQ_OPT_INT, OFF(http_max_connections),
     "1024", 16, 100000, NULL,
     "HTTP connections open at once, all clients (8 more are kept for /healthz and /readyz); "
     "beyond it new connections are closed at once"},
    {"TRAINQ_HTTP_MAX_CONNECTIONS_PER_CLIENT", "http-max-connections-per-client", TQ_OPT_INT,
     OFF(http_max_connections_per_client), "64", 1, 100000, NULL,
     "HTTP connections one peer address may hold (trusted proxies exempt); more are closed at "
     "once"},
    {"TRAINQ_HTTP_HEADER_TIMEOUT_SECONDS", "http-header-timeout-seconds", TQ_OPT_INT,
     OFF(http_header_timeout_seconds), "10", 1, 3600, NULL,
     "a request's headers must be in this long after the connection opened (not reset by "
     "trickled bytes)"},
    {"TRAINQ_HTTP_BODY_TIMEOUT_SECONDS", "http-body-timeout-seconds", TQ_OPT_INT,
     OFF(http_body_timeout_seconds), "30", 1, 3600, NULL,
     "a request's body must be in this long after its headers (not reset by trickled bytes)"},
    {"TRAINQ_HTTP_TRUSTED_PROXIES", "http-trusted-proxies", TQ_OPT_STR, OFF(http_trusted_proxies),
     "", 0, 0, NULL,
     "comma-separated proxy addresses/CIDRs whose X-Forwarded-For is believed (others' is "
     "ignored)"},
    {"TRAINQ_STREAMS_PER_USER", "streams-per-user", TQ_OPT_INT, OFF(streams_per_user), "10", 1,
     10000, NULL,
     "Server-Sent Events streams one user may hold open on one producer (429 beyond it)"},
    {"TRAINQ_STREAM_KEEPALIVE_SECONDS", "stream-keepalive-seconds", TQ_OPT_INT,
     OFF(stream_keepalive_seconds), "15", 1, 300, NULL,
     "a `: keepalive` comment is sent on a stream that was silent this long"},
    {"TRAINQ_ARTIFACTS_DIR", "artifacts-dir", TQ_OPT_STR, OFF(artifacts_dir), "", 0, 0, NULL,
     "the consumers' outputs directory as this host sees it (shared storage); artifacts are "
     "downloaded from <dir>/<job id>/<name> (empty: downloads answer 404)"},
    {"TRAINQ_ADMIN_CLAIM", "admin-claim", TQ_OPT_STR, OFF(admin_claim), "trainq_role", 0, 0, NULL,
     "the JWT claim that marks an operator's token for /api/admin/... (empty: no operators)"},
    {"TRAINQ_ADMIN_CLAIM_VALUE", "admin-claim-value", TQ_OPT_STR, OFF(admin_claim_value), "admin",
     0, 0, NULL,
     "the value of TRAINQ_ADMIN_CLAIM (or one element of it, when an array) an operator's "
     "token carries"},
    {"TRAINQ_UI_DIR", "ui-dir", TQ_OPT_STR, OFF(ui_dir), "", 0, 0, NULL,
     "the dashboard's files served under /ui/ (empty: ../share/trainq/ui beside the binary, "
     "else the repository's ui/; `-`: no dashboard)"},
    {"TRAINQ_READY_MAX_BACKLOG_AGE_SECONDS", "ready-max-backlog-age-seconds", TQ_OPT_INT,
     OFF(ready_max_backlog_age_seconds), "60", 1, 86400, NULL,
     "/readyz answers 503 while the oldest due outbox row has waited longer than this"},
    {"TRAINQ_OUTBOX_RETENTION_SECONDS", "outbox-retention-seconds", TQ_OPT_INT,
     OFF(outbox_retention_seconds), "259200", 60, 315360000, NULL,
     "published outbox rows are pruned this long after publication (default 3 days), "
     "delivered and failed webhook deliveries this long after their last attempt; "
     "unpublished rows and pending deliveries are kept whatever their age"},
    {"TRAINQ_JOB_RETENTION_SECONDS", "job-retention-seconds", TQ_OPT_INT,
     OFF(job_retention_seconds), "0", 0, 315360000, NULL,
     "finished (completed, failed, cancelled) jobs are deleted with their audit trail, output "
     "and artifact rows this long after they ended; 0: kept forever"},
    {"TRAINQ_RETENTION_INTERVAL_SECONDS", "retention-interval-seconds", TQ_OPT_INT,
     OFF(retention_interval_seconds), "300", 1, 86400, NULL,
     "how often each producer prunes (outbox, rate-limit rows of past windows, finished jobs), "
     "in batches of short transactions"},
    {"TRAINQ_WEBHOOK_ALLOW_LOOPBACK", "webhook-allow-loopback", TQ_OPT_BOOL,
     OFF(webhook_allow_loopback), "false", 0, 0, NULL,
     "FOR TESTS ONLY: webhooks may use http:// and deliver to loopback addresses (127.0.0.0/8, "
     "::1); otherwise only https:// to public addresses (docs/webhooks.md)"},
    {"TRAINQ_WEBHOOK_ALLOW_HTTP", "webhook-allow-http", TQ_OPT_BOOL, OFF(webhook_allow_http),
     "false", 0, 0, NULL, "webhook URLs may use http:// as well as https://"},
    {"TRAINQ_WEBHOOK_ALLOW_CIDRS", "webhook-allow-cidrs", TQ_OPT_STR, OFF(webhook_allow_cidrs), "",
     0, 0, NULL,
     "comma-separated addresses/CIDRs webhooks may reach although they are private, loopback, "
     "link-local ... (e.g. an internal receiver); empty: public addresses only"},
    {"TRAINQ_WEBHOOK_MAX_ATTEMPTS", "webhook-max-attempts", TQ_OPT_INT, OFF(webhook_max_attempts),
     "60", 1, 1000, NULL,
     "attempts of one webhook delivery before it is marked failed (with the default delays the "
     "retries span more than 24 h)"},
    {"TRAINQ_WEBHOOK_RETRY_MIN_SECONDS", "webhook-retry-min-seconds", TQ_OPT_INT,
     OFF(webhook_retry_min_seconds), "5", 1, 86400, NULL,
     "delay after a webhook delivery's first failure; doubled (with jitter) after each next one"},
    {"TRAINQ_WEBHOOK_RETRY_MAX_SECONDS", "webhook-retry-max-seconds", TQ_OPT_INT,
     OFF(webhook_retry_max_seconds), "3600", 1, 86400, NULL,
     "longest delay between two attempts of a webhook delivery"},
    {"TRAINQ_WEBHOOK_DISABLE_AFTER", "webhook-disable-after", TQ_OPT_INT,
     OFF(webhook_disable_after), "1000", 1, 1000000, NULL,
     "failed attempts in a row (no success between) after which a webhook endpoint is disabled "
     "(a 410 Gone disables it at once)"},
    {"TRAINQ_WEBHOOK_ENDPOINT_CONCURRENCY", "webhook-endpoint-concurrency", TQ_OPT_INT,
     OFF(webhook_endpoint_concurrency), "2", 1, 1000, NULL,
     "webhook requests in flight to one endpoint at once, all producers together (a slow "
     "receiver cannot take every sender)"},
    {"TRAINQ_WEBHOOK_USER_CONCURRENCY", "webhook-user-concurrency", TQ_OPT_INT,
     OFF(webhook_user_concurrency), "0", 0, 1000, NULL,
     "webhook requests in flight for one user at once, all endpoints, job URLs and producers "
     "together (one user's slow receivers cannot take every sender); 0: as many as "
     "TRAINQ_WEBHOOK_ENDPOINT_CONCURRENCY, and no fewer"},
    {"TRAINQ_WEBHOOK_SECRET_OVERLAP_SECONDS", "webhook-secret-overlap-seconds", TQ_OPT_INT,
     OFF(webhook_secret_overlap_seconds), "86400", 0, 2592000, NULL,
     "after rotate-secret, deliveries are also signed with the replaced secret for this long, so "
     "receivers can switch (0: the old secret stops at once)"},
    {"TRAINQ_WEBHOOK_SENDERS", "webhook-senders", TQ_OPT_INT, OFF(webhook_senders), "4", 1, 64,
     NULL,
     "webhook requests one producer sends at once (threads, each one request at a time, so a "
     "slow receiver holds up only one)"},
};

/* The JWT algorithm decides which of the secret and the key file is used: exactly that one
 * must be set, so a token is never checked against a credential the operator did not mean. */
static int check_jwt(tq_config *c, tq_errbuf *eb)
{
    int hs = c->jwt_alg[0] == 'H';
    if (!*c->jwt_audience)
        return tq_errf(eb, TQ_ERR_CONFIG,
                       "invalid TRAINQ_JWT_AUDIENCE \"\": expected the audience tokens must "
                       "carry (\"" TQ_AUTH_ANY_AUDIENCE "\" accepts any)");
    if (hs && !*c->jwt_secret)
        return tq_errf(eb, TQ_ERR_CONFIG,
                       "missing TRAINQ_JWT_SECRET: TRAINQ_JWT_ALG %s needs a shared secret",
                       c->jwt_alg);
    if (!hs && !*c->jwt_public_key_file)
        return tq_errf(eb, TQ_ERR_CONFIG,
                       "missing TRAINQ_JWT_PUBLIC_KEY_FILE: TRAINQ_JWT_ALG %s needs a public key",
                       c->jwt_alg);
    if (hs && *c->jwt_public_key_file)
        return tq_errf(eb, TQ_ERR_CONFIG,
                       "conflicting TRAINQ_JWT_PUBLIC_KEY_FILE: TRAINQ_JWT_ALG %s uses "
                       "TRAINQ_JWT_SECRET; set TRAINQ_JWT_ALG to RS256 or ES256 to use a key",
                       c->jwt_alg);
    if (!hs && *c->jwt_secret)
        return tq_errf(eb, TQ_ERR_CONFIG,
                       "conflicting TRAINQ_JWT_SECRET: TRAINQ_JWT_ALG %s verifies with "
                       "TRAINQ_JWT_PUBLIC_KEY_FILE",
                       c->jwt_alg);
    if (hs && strlen(c->jwt_secret) < 16)
        return tq_errf(eb, TQ_ERR_CONFIG,
                       "invalid TRAINQ_JWT_SECRET: must be at least 16 bytes long");
    if (!hs)
        return tq_config_read_file("TRAINQ_JWT_PUBLIC_KEY_FILE", c->jwt_public_key_file,
                                   &c->jwt_public_key_pem, eb);
    return TQ_OK;
}

/* A directory holding the dashboard (its index.html), as an absolute path (caller frees). */
static char *ui_candidate(const char *dir)
{
    char index[PATH_MAX + 16];
    char *abs = realpath(dir, NULL);
    if (!abs)
        return NULL;
    snprintf(index, sizeof index, "%s/index.html", abs);
    if (access(index, R_OK) != 0) {
        free(abs);
        return NULL;
    }
    return abs;
}

/* TRAINQ_UI_DIR: "-" turns the dashboard off; a given directory must hold it; by default it
 * is looked for beside the binary: installed (<prefix>/bin → <prefix>/share/trainq/ui) or in
 * the build tree (<repo>/build/producer → <repo>/ui). Not found by default: off. */
static int resolve_ui_dir(tq_config *c, tq_errbuf *eb)
{
    char *found = NULL;
    if (strcmp(c->ui_dir, "-") == 0) {
        found = strdup("");
    } else if (c->ui_dir[0]) {
        found = ui_candidate(c->ui_dir);
        if (!found)
            return tq_errf(eb, TQ_ERR_CONFIG,
                           "invalid TRAINQ_UI_DIR \"%.200s\": not a directory with an index.html",
                           c->ui_dir);
    } else {
        char exe[PATH_MAX], dir[PATH_MAX + 32];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (n > 0) {
            exe[n] = '\0';
            char *slash = strrchr(exe, '/');
            if (slash)
                *slash = '\0';
            static const char *const rel[] = {"../share/trainq/ui", "../../ui", "../ui"};
            for (size_t i = 0; !found && i < sizeof rel / sizeof rel[0]; i++) {
                snprintf(dir, sizeof dir, "%s/%s", exe, rel[i]);
                found = ui_candidate(dir);
            }
        }
        if (!found)
            found = strdup("");
    }
    if (!found)
        return tq_errf(eb, TQ_ERR_NOMEM, "out of memory");
    free(c->ui_dir);
    c->ui_dir = found;
    return TQ_OK;
}

static int check(void *cfg, tq_errbuf *eb)
{
    tq_config *c = cfg;
    int urc = resolve_ui_dir(c, eb);
    if (urc != TQ_OK)
        return urc;
    if (tq_parse_hostport(c->http_addr, c->http_host, sizeof c->http_host, &c->http_port))
        return tq_errf(eb, TQ_ERR_CONFIG, "invalid TRAINQ_HTTP_ADDR \"%.200s\": expected host:port",
                       c->http_addr);
    int rc = check_jwt(c, eb);
    if (rc != TQ_OK)
        return rc;
    rc = tq_req_cors_check(c->cors_origins, eb);
    if (rc != TQ_OK)
        return rc;
    tq_netlist *proxies = NULL; /* parsed again by the HTTP server, which keeps it */
    rc = tq_netlist_parse(c->http_trusted_proxies, &proxies, eb);
    tq_netlist_free(proxies);
    if (rc != TQ_OK)
        return rc;
    rc = tq_netlist_parse(c->webhook_allow_cidrs, &c->webhook_allow_nets, eb);
    if (rc == TQ_ERR_CONFIG) /* its message names the proxies' option */
        return tq_errf(eb, TQ_ERR_CONFIG,
                       "invalid TRAINQ_WEBHOOK_ALLOW_CIDRS \"%.200s\": expected comma-separated "
                       "IP addresses or CIDR blocks",
                       c->webhook_allow_cidrs);
    if (rc != TQ_OK)
        return rc;
    if (c->webhook_retry_max_seconds < c->webhook_retry_min_seconds)
        return tq_errf(eb, TQ_ERR_CONFIG,
                       "invalid TRAINQ_WEBHOOK_RETRY_MAX_SECONDS: below "
                       "TRAINQ_WEBHOOK_RETRY_MIN_SECONDS");
    /* Below the endpoint cap the user's would quietly lower it (an endpoint belongs to one
     * user): a deployment that raised the endpoint cap keeps it unless it says otherwise. */
    if (c->webhook_user_concurrency == 0)
        c->webhook_user_concurrency = c->webhook_endpoint_concurrency;
    if (c->webhook_user_concurrency < c->webhook_endpoint_concurrency)
        return tq_errf(eb, TQ_ERR_CONFIG,
                       "invalid TRAINQ_WEBHOOK_USER_CONCURRENCY %d: below "
                       "TRAINQ_WEBHOOK_ENDPOINT_CONCURRENCY (%d), which it would lower",
                       c->webhook_user_concurrency, c->webhook_endpoint_concurrency);
    return tq_config_check_common(c->database_url, c->amqp_url, c->publish_keys,
                                  c->publish_keys_file, &c->publish_keyring, eb);
}

static void release(void *cfg)
{
    tq_config *c = cfg;
    free(c->jwt_public_key_pem);
    c->jwt_public_key_pem = NULL;
    tq_sign_keys_wipe(&c->publish_keyring);
    tq_netlist_free(c->webhook_allow_nets);
    c->webhook_allow_nets = NULL;
}

const tq_options tq_producer_options = {
    .opts = options,
    .n_opts = sizeof options / sizeof options[0],
    .size = sizeof(tq_config),
    .check = check,
    .release = release,
};

int tq_producer_config_load(tq_config *c, int argc, char **argv, tq_errbuf *eb)
{
    return tq_config_load(&tq_producer_options, c, argc, argv, eb);
}

void tq_producer_config_free(tq_config *c)
{
    tq_config_free(&tq_producer_options, c);
}
