#include "tq_config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>

typedef enum {
    OPT_STR,    /* any non-empty string unless default is "" */
    OPT_SECRET, /* like OPT_STR, never echoed back in errors */
    OPT_INT,
    OPT_BYTES,
    OPT_DOUBLE,
    OPT_BOOL,
    OPT_ENUM, /* one of `choices` (comma-separated) */
} opt_type;

typedef struct {
    const char *env;
    const char *flag;
    opt_type type;
    size_t off;
    const char *def; /* NULL: required */
    long long min, max;
    const char *choices;
    unsigned progs;
    const char *help;
} opt;

#define OFF(f) offsetof(tq_config, f)
#define P TQ_PROG_PRODUCER
#define C TQ_PROG_CONSUMER

static const opt options[] = {
    {"TRAINQ_DATABASE_URL", "database-url", OPT_SECRET, OFF(database_url), NULL, 0, 0, NULL, P | C,
     "Postgres connection URL (libpq syntax)"},
    {"TRAINQ_AMQP_URL", "amqp-url", OPT_SECRET, OFF(amqp_url), NULL, 0, 0, NULL, P | C,
     "RabbitMQ URL, amqp://user:pass@host:port/vhost"},
    {"TRAINQ_LOG_LEVEL", "log-level", OPT_ENUM, OFF(log_level), "info", 0, 0,
     "debug,info,warn,error", P | C, "minimum level of the JSON log lines on stderr"},

    {"TRAINQ_HTTP_ADDR", "http-addr", OPT_STR, OFF(http_addr), "127.0.0.1:3000", 0, 0, NULL, P,
     "HTTP listen address host:port (port 0 picks a free port)"},
    {"TRAINQ_HTTP_THREADS", "http-threads", OPT_INT, OFF(http_threads), "4", 1, 256, NULL, P,
     "HTTP worker threads (each holds one Postgres connection)"},
    {"TRAINQ_JWT_ALG", "jwt-alg", OPT_ENUM, OFF(jwt_alg), "HS256", 0, 0,
     "HS256,HS384,HS512,RS256,RS384,RS512,ES256,ES384", P,
     "the only JWT algorithm accepted (never taken from the token)"},
    {"TRAINQ_JWT_SECRET", "jwt-secret", OPT_SECRET, OFF(jwt_secret), "", 0, 0, NULL, P,
     "HMAC secret for HS* tokens (e.g. the Supabase JWT secret)"},
    {"TRAINQ_JWT_PUBLIC_KEY_FILE", "jwt-public-key-file", OPT_STR, OFF(jwt_public_key_file), "",
     0, 0, NULL, P, "PEM public key file for RS*/ES* tokens"},
    {"TRAINQ_JWT_AUDIENCE", "jwt-audience", OPT_STR, OFF(jwt_audience), "authenticated", 0, 0,
     NULL, P, "required `aud` claim (Supabase's user tokens carry `authenticated`); `-`: any"},
    {"TRAINQ_JWT_ISSUER", "jwt-issuer", OPT_STR, OFF(jwt_issuer), "", 0, 0, NULL, P,
     "required `iss` claim (empty: not checked)"},
    {"TRAINQ_JWT_LEEWAY_SECONDS", "jwt-leeway-seconds", OPT_INT, OFF(jwt_leeway_seconds), "30", 0,
     300, NULL, P, "clock skew allowed when checking exp/nbf/iat"},
    {"TRAINQ_CORS_ORIGINS", "cors-origins", OPT_STR, OFF(cors_origins), "*", 0, 0, NULL, P,
     "comma-separated allowed origins, `*` for any, empty for none"},
    {"TRAINQ_SUBMIT_RATE_PER_MINUTE", "submit-rate-per-minute", OPT_INT,
     OFF(submit_rate_per_minute), "10", 1, 1000000, NULL, P,
     "submissions per user per minute, shared by all producers"},
    {"TRAINQ_READ_RATE_PER_MINUTE", "read-rate-per-minute", OPT_INT, OFF(read_rate_per_minute),
     "600", 1, 1000000, NULL, P, "status/list/events requests per user per minute"},
    {"TRAINQ_MAX_BODY_BYTES", "max-body-bytes", OPT_BYTES, OFF(max_body_bytes), "64k", 1024, 65536,
     NULL, P, "largest accepted request body (413 beyond it)"},
    {"TRAINQ_RELAY_BATCH", "relay-batch", OPT_INT, OFF(relay_batch), "100", 1, 1000, NULL, P | C,
     "outbox rows published per confirm round"},
    {"TRAINQ_PUBLISH_KEYS", "publish-keys", OPT_SECRET, OFF(publish_keys), "", 0, 0, NULL, P | C,
     "publisher signing keys `id:secret,id:secret` (secrets of 32+ bytes): relays sign with the "
     "first, consumers accept any and dead-letter other messages; empty: no signing "
     "(docs/message-contract.md)"},
    {"TRAINQ_PUBLISH_KEYS_FILE", "publish-keys-file", OPT_STR, OFF(publish_keys_file), "", 0, 0,
     NULL, P | C, "file holding the TRAINQ_PUBLISH_KEYS list instead (one `id:secret` per line)"},
    {"TRAINQ_REQUEST_TIMEOUT_SECONDS", "request-timeout-seconds", OPT_INT,
     OFF(request_timeout_seconds), "30", 1, 3600, NULL, P, "idle HTTP connection timeout"},
    {"TRAINQ_HTTP_MAX_CONNECTIONS", "http-max-connections", OPT_INT, OFF(http_max_connections),
     "1024", 16, 100000, NULL, P,
     "HTTP connections open at once, all clients (8 more are kept for /healthz and /readyz); "
     "beyond it new connections are closed at once"},
    {"TRAINQ_HTTP_MAX_CONNECTIONS_PER_CLIENT", "http-max-connections-per-client", OPT_INT,
     OFF(http_max_connections_per_client), "64", 1, 100000, NULL, P,
     "HTTP connections one peer address may hold (trusted proxies exempt); more are closed at "
     "once"},
    {"TRAINQ_HTTP_HEADER_TIMEOUT_SECONDS", "http-header-timeout-seconds", OPT_INT,
     OFF(http_header_timeout_seconds), "10", 1, 3600, NULL, P,
     "a request's headers must be in this long after the connection opened (not reset by "
     "trickled bytes)"},
    {"TRAINQ_HTTP_BODY_TIMEOUT_SECONDS", "http-body-timeout-seconds", OPT_INT,
     OFF(http_body_timeout_seconds), "30", 1, 3600, NULL, P,
     "a request's body must be in this long after its headers (not reset by trickled bytes)"},
    {"TRAINQ_HTTP_TRUSTED_PROXIES", "http-trusted-proxies", OPT_STR, OFF(http_trusted_proxies),
     "", 0, 0, NULL, P,
     "comma-separated proxy addresses/CIDRs whose X-Forwarded-For is believed (others' is "
     "ignored)"},

    {"TRAINQ_WORKER_ID", "worker-id", OPT_STR, OFF(worker_id), "", 0, 0, NULL, C,
     "stable id of this consumer (default: host name); unique per consumer"},
    {"TRAINQ_DOCKER_HOST", "docker-host", OPT_STR, OFF(docker_host),
     "unix:///var/run/docker.sock", 0, 0, NULL, C, "Docker Engine socket, unix:///path"},
    {"TRAINQ_GPUS", "gpus", OPT_STR, OFF(gpus), "none", 0, 0, NULL, C,
     "`none` (TRAINQ_SLOTS CPU slots), `all` (one slot, every GPU) or `0,1,...` (a slot per GPU, "
     "each id once, at most 7 digits)"},
    {"TRAINQ_SLOTS", "slots", OPT_INT, OFF(slots), "1", 1, 64, NULL, C,
     "number of slots when TRAINQ_GPUS=none"},
    {"TRAINQ_TRAINING_IMAGE", "training-image", OPT_STR, OFF(training_image), "training-image",
     0, 0, NULL, C, "image that runs the training"},
    {"TRAINQ_TRAINING_CMD", "training-cmd", OPT_STR, OFF(training_cmd),
     "python train_lora.py --config /workspace/config.json", 0, 0, NULL, C,
     "container command, split on spaces (no shell)"},
    {"TRAINQ_DATA_DIR", "data-dir", OPT_STR, OFF(data_dir), "/var/lib/trainq", 0, 0, NULL, C,
     "where configs/{job}.json and outputs/{job}/ are written"},
    {"TRAINQ_DATASETS_ROOT", "datasets-root", OPT_STR, OFF(datasets_root),
     "/var/lib/trainq/datasets", 0, 0, NULL, C,
     "datasets' storage_path is resolved under this directory and may not escape it"},
    {"TRAINQ_HF_CACHE_DIR", "hf-cache-dir", OPT_STR, OFF(hf_cache_dir), "/var/lib/trainq/hf-cache",
     0, 0, NULL, C, "Hugging Face cache mounted at /workspace/models"},
    {"TRAINQ_MODELS_READ_ONLY", "models-read-only", OPT_BOOL, OFF(models_read_only), "false", 0,
     0, NULL, C, "mount the Hugging Face cache read-only (jobs cannot alter what others load)"},
    {"TRAINQ_METRICS_ADDR", "metrics-addr", OPT_STR, OFF(metrics_addr), "127.0.0.1:9101", 0, 0,
     NULL, C, "/metrics and /healthz listen address (port 0 picks a free port)"},
    {"TRAINQ_LEASE_SECONDS", "lease-seconds", OPT_INT, OFF(lease_seconds), "30", 3, 3600, NULL, C,
     "a job whose worker has not renewed its lease this long is recovered by the reaper"},
    {"TRAINQ_HEARTBEAT_SECONDS", "heartbeat-seconds", OPT_INT, OFF(heartbeat_seconds), "5", 1, 600,
     NULL, C, "how often the worker renews its heartbeat and leases (< lease/2)"},
    {"TRAINQ_MAX_ATTEMPTS", "max-attempts", OPT_INT, OFF(max_attempts), "3", 1, 100, NULL, C,
     "attempts before a job whose worker was lost is failed"},
    {"TRAINQ_MAX_RUN_SECONDS", "max-run-seconds", OPT_INT, OFF(max_run_seconds), "86400", 1,
     2592000, NULL, C, "a container running longer is stopped and its job failed"},
    {"TRAINQ_MEMORY_LIMIT", "memory-limit", OPT_BYTES, OFF(memory_bytes), "0", 0, LLONG_MAX, NULL, C,
     "container memory limit (e.g. 32g; 0: none)"},
    {"TRAINQ_SHM_SIZE", "shm-size", OPT_BYTES, OFF(shm_bytes), "2g", 0, LLONG_MAX, NULL, C,
     "container /dev/shm size (0: Docker's default)"},
    {"TRAINQ_PIDS_LIMIT", "pids-limit", OPT_INT, OFF(pids_limit), "4096", 0, 1000000, NULL, C,
     "container process limit (0: none)"},
    {"TRAINQ_CPUS", "cpus", OPT_DOUBLE, OFF(cpus), "0", 0, 1024, NULL, C,
     "container CPU limit in cores (0: none)"},
    {"TRAINQ_STOP_GRACE_SECONDS", "stop-grace-seconds", OPT_INT, OFF(stop_grace_seconds), "10", 0,
     3600, NULL, C, "SIGTERM to SIGKILL delay when a job is cancelled or overruns"},
    {"TRAINQ_REMOVE_CONTAINERS", "remove-containers", OPT_BOOL, OFF(remove_containers), "true", 0, 0,
     NULL, C, "remove a training container once its outcome is recorded"},
    {"TRAINQ_SWEEP_SECONDS", "sweep-seconds", OPT_INT, OFF(sweep_seconds), "10", 1, 3600, NULL, C,
     "how often the reaper and sweeper run"},
    {"TRAINQ_RESTART_GRACE_SECONDS", "restart-grace-seconds", OPT_INT, OFF(restart_grace_seconds),
     "300", 0, 86400, NULL, C,
     "on a clean stop, leases of running jobs are extended this long so a restart adopts them"},
    {"TRAINQ_STRANDED_SECONDS", "stranded-seconds", OPT_INT, OFF(stranded_seconds), "30", 1, 3600,
     NULL, C,
     "a queued job neither claimed, parked nor republished this long is republished by the sweeper"},
    {"TRAINQ_MAX_HOST_RETRIES", "max-host-retries", OPT_INT, OFF(max_host_retries), "10", 1, 1000,
     NULL, C, "times a job is given back by hosts that could not start it before it fails"},
    {"TRAINQ_HOST_ERROR_LIMIT", "host-error-limit", OPT_INT, OFF(host_error_limit), "3", 1, 1000,
     NULL, C, "consecutive start failures of this host before it stops consuming and is unhealthy"},
    {"TRAINQ_HOST_PROBE_SECONDS", "host-probe-seconds", OPT_INT, OFF(host_probe_seconds), "30", 1,
     86400, NULL, C,
     "first wait before an unhealthy host tries one job again (doubles up to 32x on failure)"},
};

#undef P
#undef C

static const size_t n_options = sizeof options / sizeof options[0];

int tq_parse_bytes(const char *s, long long *out)
{
    if (!s || !*s || !isdigit((unsigned char)s[0]))
        return TQ_ERR_INVALID;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno)
        return TQ_ERR_INVALID;
    unsigned long long mul = 1;
    if (*end) {
        switch (tolower((unsigned char)*end)) {
        case 'k': mul = 1ull << 10; break;
        case 'm': mul = 1ull << 20; break;
        case 'g': mul = 1ull << 30; break;
        case 't': mul = 1ull << 40; break;
        default: return TQ_ERR_INVALID;
        }
        end++;
        if (*end == 'b' || *end == 'B')
            end++;
        if (*end)
            return TQ_ERR_INVALID;
    }
    if (v > (unsigned long long)LLONG_MAX / mul)
        return TQ_ERR_INVALID;
    *out = (long long)(v * mul);
    return TQ_OK;
}

int tq_parse_hostport(const char *s, char *host, size_t cap, int *port)
{
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s)
        return TQ_ERR_INVALID;
    const char *h = s;
    size_t hl = (size_t)(colon - s);
    if (h[0] == '[') { /* [::1]:3000 */
        if (hl < 3 || h[hl - 1] != ']')
            return TQ_ERR_INVALID;
        h++;
        hl -= 2;
    }
    if (hl == 0 || hl >= cap)
        return TQ_ERR_INVALID;
    for (size_t i = 0; i < hl; i++)
        if (!(isalnum((unsigned char)h[i]) || h[i] == '.' || h[i] == '-' || h[i] == ':'))
            return TQ_ERR_INVALID;
    const char *p = colon + 1;
    if (!*p || strlen(p) > 5)
        return TQ_ERR_INVALID;
    for (const char *q = p; *q; q++)
        if (!isdigit((unsigned char)*q))
            return TQ_ERR_INVALID;
    long v = strtol(p, NULL, 10);
    if (v < 0 || v > 65535)
        return TQ_ERR_INVALID;
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = (int)v;
    return TQ_OK;
}

static int in_choices(const char *choices, const char *v)
{
    size_t n = strlen(v);
    for (const char *p = choices; *p;) {
        const char *e = strchr(p, ',');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l == n && strncmp(p, v, n) == 0)
            return 1;
        if (!e)
            break;
        p = e + 1;
    }
    return 0;
}

static int bad(tq_errbuf *eb, const opt *o, const char *v, const char *expected)
{
    if (o->type == OPT_SECRET)
        return tq_errf(eb, TQ_ERR_CONFIG, "invalid %s: %s", o->env, expected);
    return tq_errf(eb, TQ_ERR_CONFIG, "invalid %s \"%.200s\": %s", o->env, v, expected);
}

static int set_value(tq_config *c, const opt *o, const char *v, tq_errbuf *eb)
{
    char *base = (char *)c + o->off;
    char expected[200];
    switch (o->type) {
    case OPT_STR:
    case OPT_SECRET: {
        if (o->def == NULL && !*v)
            return bad(eb, o, v, "must not be empty");
        char *dup = strdup(v);
        if (!dup)
            return TQ_ERR_NOMEM;
        free(*(char **)base);
        *(char **)base = dup;
        return TQ_OK;
    }
    case OPT_ENUM: {
        if (!in_choices(o->choices, v)) {
            snprintf(expected, sizeof expected, "expected one of %s", o->choices);
            return bad(eb, o, v, expected);
        }
        char *dup = strdup(v);
        if (!dup)
            return TQ_ERR_NOMEM;
        free(*(char **)base);
        *(char **)base = dup;
        return TQ_OK;
    }
    case OPT_INT: {
        char *end;
        errno = 0;
        long long x = strtoll(v, &end, 10);
        snprintf(expected, sizeof expected, "expected an integer from %lld to %lld", o->min, o->max);
        if (!*v || *end || errno || x < o->min || x > o->max)
            return bad(eb, o, v, expected);
        *(int *)base = (int)x;
        return TQ_OK;
    }
    case OPT_BYTES: {
        long long x;
        snprintf(expected, sizeof expected,
                 "expected a size from %lld to %lld bytes (suffix k, m, g allowed)", o->min,
                 o->max);
        if (tq_parse_bytes(v, &x) != TQ_OK || x < o->min || x > o->max)
            return bad(eb, o, v, expected);
        *(long long *)base = x;
        return TQ_OK;
    }
    case OPT_DOUBLE: {
        char *end;
        errno = 0;
        double x = strtod(v, &end);
        snprintf(expected, sizeof expected, "expected a number from %lld to %lld", o->min, o->max);
        if (!*v || *end || errno || !isfinite(x) || x < (double)o->min || x > (double)o->max)
            return bad(eb, o, v, expected);
        *(double *)base = x;
        return TQ_OK;
    }
    case OPT_BOOL: {
        if (strcmp(v, "true") == 0 || strcmp(v, "1") == 0 || strcmp(v, "yes") == 0)
            *(int *)base = 1;
        else if (strcmp(v, "false") == 0 || strcmp(v, "0") == 0 || strcmp(v, "no") == 0)
            *(int *)base = 0;
        else
            return bad(eb, o, v, "expected true or false");
        return TQ_OK;
    }
    }
    return TQ_ERR_INTERNAL;
}

static void print_help(FILE *out, const char *prog_name, unsigned prog)
{
    fprintf(out, "usage: %s [--FLAG=VALUE ...]\n\n", prog_name);
    fprintf(out, "Every option is an environment variable or a flag (the flag wins).\n\n");
    for (size_t i = 0; i < n_options; i++) {
        const opt *o = &options[i];
        if (!(o->progs & prog))
            continue;
        fprintf(out, "  --%-26s %-32s %s", o->flag, o->env, o->help);
        if (o->def == NULL)
            fprintf(out, " (required)\n");
        else if (o->type == OPT_SECRET || !*o->def)
            fprintf(out, "\n");
        else
            fprintf(out, " (default %s)\n", o->def);
    }
    fprintf(out, "\n  --help                      this text\n  --version                   "
                 "print the version\n");
}

void tq_config_print_markdown(FILE *out, unsigned prog)
{
    fprintf(out, "| variable | flag | default | meaning |\n|---|---|---|---|\n");
    for (size_t i = 0; i < n_options; i++) {
        const opt *o = &options[i];
        if (!(o->progs & prog))
            continue;
        const char *def = o->def == NULL ? "(required)" : (*o->def ? o->def : "(empty)");
        fprintf(out, "| `%s` | `--%s` | `%s` | %s |\n", o->env, o->flag, def, o->help);
    }
}

static const opt *find_flag(const char *name, size_t len, unsigned prog)
{
    for (size_t i = 0; i < n_options; i++)
        if ((options[i].progs & prog) && strlen(options[i].flag) == len &&
            strncmp(options[i].flag, name, len) == 0)
            return &options[i];
    return NULL;
}

static int valid_worker_id(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '.' || s[i] == '_' || s[i] == '-'))
            return 0;
    return 1;
}

/* The contents of the file option `what` (at most 64 KiB, not empty), NUL-terminated. */
static int read_file(const char *what, const char *path, char **out, tq_errbuf *eb)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return tq_errf(eb, TQ_ERR_CONFIG, "cannot read %s \"%s\": %s", what, path,
                       strerror(errno));
    char *buf = malloc(65537);
    if (!buf) {
        fclose(f);
        return TQ_ERR_NOMEM;
    }
    size_t n = fread(buf, 1, 65536, f);
    int toolong = !feof(f);
    fclose(f);
    if (toolong || n == 0) {
        free(buf);
        return tq_errf(eb, TQ_ERR_CONFIG, "cannot use %s \"%s\": %s", what, path,
                       n == 0 ? "file is empty" : "file is larger than 64 KiB");
    }
    buf[n] = '\0';
    *out = buf;
    return TQ_OK;
}

/* TRAINQ_PUBLISH_KEYS or the file named by TRAINQ_PUBLISH_KEYS_FILE (not both) into
 * c->publish_keyring; neither leaves signing off. */
static int load_publish_keys(tq_config *c, tq_errbuf *eb)
{
    if (*c->publish_keys && *c->publish_keys_file)
        return tq_errf(eb, TQ_ERR_CONFIG, "conflicting TRAINQ_PUBLISH_KEYS_FILE: "
                                          "TRAINQ_PUBLISH_KEYS is set too; set only one");
    if (*c->publish_keys)
        return tq_sign_keys_parse(c->publish_keys, "TRAINQ_PUBLISH_KEYS", &c->publish_keyring, eb);
    if (!*c->publish_keys_file)
        return TQ_OK;
    char *text = NULL;
    int rc = read_file("TRAINQ_PUBLISH_KEYS_FILE", c->publish_keys_file, &text, eb);
    if (rc == TQ_OK) {
        rc = tq_sign_keys_parse(text, "TRAINQ_PUBLISH_KEYS_FILE", &c->publish_keyring, eb);
        OPENSSL_cleanse(text, strlen(text));
        free(text);
    }
    return rc;
}

/* Cross-option rules that a single value cannot express. */
static int check_combined(tq_config *c, unsigned prog, tq_errbuf *eb)
{
    if (prog & TQ_PROG_PRODUCER) {
        if (tq_parse_hostport(c->http_addr, c->http_host, sizeof c->http_host, &c->http_port))
            return tq_errf(eb, TQ_ERR_CONFIG, "invalid TRAINQ_HTTP_ADDR \"%.200s\": expected host:port",
                           c->http_addr);
        int hs = c->jwt_alg[0] == 'H';
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
        if (!hs) {
            int rc = read_file("TRAINQ_JWT_PUBLIC_KEY_FILE", c->jwt_public_key_file,
                               &c->jwt_public_key_pem, eb);
            if (rc)
                return rc;
        }
    }
    if (prog & TQ_PROG_CONSUMER) {
        if (!*c->worker_id) {
            char host[256];
            if (gethostname(host, sizeof host) != 0)
                return tq_errf(eb, TQ_ERR_CONFIG, "cannot determine host name: set TRAINQ_WORKER_ID");
            host[sizeof host - 1] = '\0';
            free(c->worker_id);
            c->worker_id = strdup(host);
            if (!c->worker_id)
                return TQ_ERR_NOMEM;
        }
        if (!valid_worker_id(c->worker_id))
            return tq_errf(eb, TQ_ERR_CONFIG,
                           "invalid TRAINQ_WORKER_ID \"%.100s\": expected 1-64 of A-Z a-z 0-9 . _ -",
                           c->worker_id);
        if (strncmp(c->docker_host, "unix://", 7) != 0 || c->docker_host[7] != '/')
            return tq_errf(eb, TQ_ERR_CONFIG,
                           "invalid TRAINQ_DOCKER_HOST \"%.200s\": expected unix:///path/to/docker.sock",
                           c->docker_host);
        if (strcmp(c->gpus, "none") == 0) {
            c->gpus_mode = TQ_GPUS_CFG_NONE;
        } else if (strcmp(c->gpus, "all") == 0) {
            c->gpus_mode = TQ_GPUS_CFG_ALL;
            c->slots = 1;
        } else {
            /* "0,1,3": digits separated by single commas, each id once (two slots on one
             * GPU would share its memory) and short enough for tq_config_slot_gpu's table
             * (TQ_GPU_ID_MAX digits), which must never cut an id into another one. */
            int n = 0;
            unsigned long seen[64];
            const char *p = c->gpus;
            while (*p && n < 64) {
                if (!isdigit((unsigned char)*p))
                    break;
                const char *id = p;
                while (isdigit((unsigned char)*p))
                    p++;
                if (p - id > TQ_GPU_ID_MAX)
                    return tq_errf(eb, TQ_ERR_CONFIG,
                                   "invalid TRAINQ_GPUS \"%.100s\": device id \"%.*s\" is longer "
                                   "than %d digits",
                                   c->gpus, (int)(p - id), id, TQ_GPU_ID_MAX);
                unsigned long v = strtoul(id, NULL, 10);
                for (int i = 0; i < n; i++)
                    if (seen[i] == v)
                        return tq_errf(eb, TQ_ERR_CONFIG,
                                       "invalid TRAINQ_GPUS \"%.100s\": device id %lu is listed "
                                       "twice",
                                       c->gpus, v);
                seen[n++] = v;
                if (*p == ',' && p[1])
                    p++;
                else
                    break;
            }
            if (*p || n == 0)
                return tq_errf(eb, TQ_ERR_CONFIG,
                               "invalid TRAINQ_GPUS \"%.100s\": expected none, all or device ids "
                               "like 0,1,2 (at most 64)",
                               c->gpus);
            c->gpus_mode = TQ_GPUS_CFG_IDS;
            c->slots = n;
        }
        if (c->heartbeat_seconds * 2 > c->lease_seconds)
            return tq_errf(eb, TQ_ERR_CONFIG,
                           "invalid TRAINQ_HEARTBEAT_SECONDS %d: must be at most half of "
                           "TRAINQ_LEASE_SECONDS (%d)",
                           c->heartbeat_seconds, c->lease_seconds);
        if (tq_parse_hostport(c->metrics_addr, c->metrics_host, sizeof c->metrics_host,
                              &c->metrics_port))
            return tq_errf(eb, TQ_ERR_CONFIG,
                           "invalid TRAINQ_METRICS_ADDR \"%.200s\": expected host:port",
                           c->metrics_addr);
        if (!*c->training_cmd || c->training_cmd[0] == ' ')
            return tq_errf(eb, TQ_ERR_CONFIG,
                           "invalid TRAINQ_TRAINING_CMD: expected a command such as \"python "
                           "train_lora.py --config /workspace/config.json\"");
        const char *dirs[][2] = {{"TRAINQ_DATA_DIR", c->data_dir},
                                 {"TRAINQ_DATASETS_ROOT", c->datasets_root},
                                 {"TRAINQ_HF_CACHE_DIR", c->hf_cache_dir}};
        for (size_t i = 0; i < 3; i++)
            if (dirs[i][1][0] != '/')
                return tq_errf(eb, TQ_ERR_CONFIG, "invalid %s \"%.200s\": expected an absolute path",
                               dirs[i][0], dirs[i][1]);
    }
    int rc = load_publish_keys(c, eb);
    if (rc != TQ_OK)
        return rc;
    if (strncmp(c->amqp_url, "amqp://", 7) != 0 && strncmp(c->amqp_url, "amqps://", 8) != 0)
        return tq_errf(eb, TQ_ERR_CONFIG, "invalid TRAINQ_AMQP_URL: expected amqp://user:pass@host:port/vhost");
    return TQ_OK;
}

int tq_config_load(tq_config *c, unsigned prog, int argc, char **argv, tq_errbuf *eb)
{
    memset(c, 0, sizeof *c);
    const char *prog_name = argc > 0 ? argv[0] : "trainq";
    const char *slash = strrchr(prog_name, '/');
    if (slash)
        prog_name = slash + 1;

    /* Every string option gets a value (its default) so callers never see NULL. */
    for (size_t i = 0; i < n_options; i++) {
        const opt *o = &options[i];
        if (!(o->progs & prog) || o->def == NULL)
            continue;
        int rc = set_value(c, o, o->def, eb);
        if (rc)
            return rc == TQ_ERR_CONFIG ? tq_errf(eb, TQ_ERR_INTERNAL, "bad default for %s", o->env)
                                       : rc;
    }
    for (size_t i = 0; i < n_options; i++) {
        const opt *o = &options[i];
        if (!(o->progs & prog))
            continue;
        const char *v = getenv(o->env);
        if (v) {
            int rc = set_value(c, o, v, eb);
            if (rc)
                return rc;
        }
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            print_help(stdout, prog_name, prog);
            return TQ_CONFIG_EXIT;
        }
        if (strcmp(a, "--version") == 0) {
            printf("%s %s\n", prog_name, TRAINQ_VERSION);
            return TQ_CONFIG_EXIT;
        }
        if (strcmp(a, "--config-markdown") == 0) {
            tq_config_print_markdown(stdout, prog);
            return TQ_CONFIG_EXIT;
        }
        if (strncmp(a, "--", 2) != 0)
            return tq_errf(eb, TQ_ERR_CONFIG, "unexpected argument \"%.100s\" (see --help)", a);
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const opt *o = find_flag(name, nlen, prog);
        if (!o)
            return tq_errf(eb, TQ_ERR_CONFIG, "unknown option \"--%.*s\" (see --help)", (int)nlen,
                           name);
        const char *v;
        if (eq) {
            v = eq + 1;
        } else if (i + 1 < argc) {
            v = argv[++i];
        } else {
            return tq_errf(eb, TQ_ERR_CONFIG, "missing value for --%s", o->flag);
        }
        int rc = set_value(c, o, v, eb);
        if (rc)
            return rc;
    }
    for (size_t i = 0; i < n_options; i++) {
        const opt *o = &options[i];
        if ((o->progs & prog) && o->def == NULL && !*(char **)((char *)c + o->off))
            return tq_errf(eb, TQ_ERR_CONFIG, "missing %s (or --%s): %s", o->env, o->flag,
                           o->help);
    }
    return check_combined(c, prog, eb);
}

void tq_config_free(tq_config *c)
{
    for (size_t i = 0; i < n_options; i++) {
        const opt *o = &options[i];
        if (o->type == OPT_STR || o->type == OPT_SECRET || o->type == OPT_ENUM) {
            char **p = (char **)((char *)c + o->off);
            free(*p);
            *p = NULL;
        }
    }
    free(c->jwt_public_key_pem);
    c->jwt_public_key_pem = NULL;
    tq_sign_keys_wipe(&c->publish_keyring);
}

const char *tq_config_slot_gpu(const tq_config *c, int slot)
{
    /* Returned pointers point into a static table of small ids; slots are at most 64. */
    static char ids[64][TQ_GPU_ID_MAX + 1];
    if (c->gpus_mode != TQ_GPUS_CFG_IDS || slot < 0 || slot >= c->slots)
        return NULL;
    const char *p = c->gpus;
    for (int i = 0; i < slot; i++)
        p = strchr(p, ',') + 1;
    size_t n = strcspn(p, ","); /* < sizeof ids[0]: tq_config_load refuses longer ids */
    memcpy(ids[slot], p, n);
    ids[slot][n] = '\0';
    return ids[slot];
}
