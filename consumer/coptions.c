#include "coptions.h"

#include <ctype.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define OFF(f) offsetof(tq_config, f)

static const tq_opt options[] = {
    TQ_OPT_DATABASE_URL(tq_config),
    TQ_OPT_AMQP_URL(tq_config),
    TQ_OPT_LOG_LEVEL(tq_config),
    TQ_OPT_RELAY_BATCH(tq_config),
    TQ_OPT_PUBLISH_KEYS(tq_config),
    TQ_OPT_PUBLISH_KEYS_FILE(tq_config),
    {"TRAINQ_WORKER_ID", "worker-id", TQ_OPT_STR, OFF(worker_id), "", 0, 0, NULL,
     "stable id of this consumer (default: host name); unique per consumer: a second live "
     "consumer with it exits 2"},
    {"TRAINQ_DOCKER_HOST", "docker-host", TQ_OPT_STR, OFF(docker_host),
     "unix:///var/run/docker.sock", 0, 0, NULL, "Docker Engine socket, unix:///path"},
    {"TRAINQ_GPUS", "gpus", TQ_OPT_STR, OFF(gpus), "none", 0, 0, NULL,
     "`none` (TRAINQ_SLOTS CPU slots), `all` (one slot, every GPU) or `0,1,...` (a slot per GPU, "
     "each id once, at most 7 digits)"},
    {"TRAINQ_SLOTS", "slots", TQ_OPT_INT, OFF(slots), "1", 1, TQ_SLOTS_MAX, NULL,
     "number of slots when TRAINQ_GPUS=none"},
    {"TRAINQ_TRAINING_IMAGE", "training-image", TQ_OPT_STR, OFF(training_image), "training-image",
     0, 0, NULL, "image that runs the training"},
    {"TRAINQ_TRAINING_CMD", "training-cmd", TQ_OPT_STR, OFF(training_cmd),
     "python train_lora.py --config /workspace/config.json", 0, 0, NULL,
     "container command, split on spaces (no shell)"},
    {"TRAINQ_DATA_DIR", "data-dir", TQ_OPT_STR, OFF(data_dir), "/var/lib/trainq", 0, 0, NULL,
     "where configs/{job}.json and outputs/{job}/ are written"},
    {"TRAINQ_DATASETS_ROOT", "datasets-root", TQ_OPT_STR, OFF(datasets_root),
     "/var/lib/trainq/datasets", 0, 0, NULL,
     "datasets' storage_path is resolved under this directory and may not escape it"},
    {"TRAINQ_HF_CACHE_DIR", "hf-cache-dir", TQ_OPT_STR, OFF(hf_cache_dir),
     "/var/lib/trainq/hf-cache", 0, 0, NULL, "Hugging Face cache mounted at /workspace/models"},
    {"TRAINQ_MODELS_READ_ONLY", "models-read-only", TQ_OPT_BOOL, OFF(models_read_only), "false", 0,
     0, NULL, "mount the Hugging Face cache read-only (jobs cannot alter what others load)"},
    {"TRAINQ_METRICS_ADDR", "metrics-addr", TQ_OPT_STR, OFF(metrics_addr), "127.0.0.1:9101", 0, 0,
     NULL,
     "/metrics and /healthz listen address (port 0 picks a free port; an address another "
     "process listens on stops the start with exit 1, one this host does not have (after 3 s) "
     "or a port it may not take with exit 2)"},
    {"TRAINQ_LEASE_SECONDS", "lease-seconds", TQ_OPT_INT, OFF(lease_seconds), "30", 3, 3600, NULL,
     "a job whose worker has not renewed its lease this long is recovered by the reaper"},
    {"TRAINQ_HEARTBEAT_SECONDS", "heartbeat-seconds", TQ_OPT_INT, OFF(heartbeat_seconds), "5", 1,
     600, NULL,
     "how often the worker renews its heartbeat and leases (at most half of TRAINQ_LEASE_SECONDS)"},
    {"TRAINQ_MAX_ATTEMPTS", "max-attempts", TQ_OPT_INT, OFF(max_attempts), "4", 1, 100, NULL,
     "a job's attempts in all (the first and its retries): caps TRAINQ_RETRY_POLICY's retries "
     "and a lost worker's; the default lets each class retry its 3 times"},
    {"TRAINQ_MAX_RUN_SECONDS", "max-run-seconds", TQ_OPT_INT, OFF(max_run_seconds), "86400", 1,
     2592000, NULL, "a container running longer is stopped and its job failed"},
    {"TRAINQ_MEMORY_LIMIT", "memory-limit", TQ_OPT_BYTES, OFF(memory_bytes), "0", 0, LLONG_MAX,
     NULL, "container memory limit (e.g. 32g; 0: none; else at least 6m, Docker's minimum)"},
    {"TRAINQ_SHM_SIZE", "shm-size", TQ_OPT_BYTES, OFF(shm_bytes), "2g", 0, LLONG_MAX, NULL,
     "container /dev/shm size (0: Docker's default)"},
    {"TRAINQ_PIDS_LIMIT", "pids-limit", TQ_OPT_INT, OFF(pids_limit), "4096", 0, 1000000, NULL,
     "container process limit (0: none)"},
    {"TRAINQ_CPUS", "cpus", TQ_OPT_DOUBLE, OFF(cpus), "0", 0, 1024, NULL,
     "container CPU limit in cores (0: none; else at least 0.01, as Docker takes it)"},
    {"TRAINQ_STOP_GRACE_SECONDS", "stop-grace-seconds", TQ_OPT_INT, OFF(stop_grace_seconds), "10",
     0, 3600, NULL, "SIGTERM to SIGKILL delay when a job is cancelled or overruns"},
    {"TRAINQ_REMOVE_CONTAINERS", "remove-containers", TQ_OPT_BOOL, OFF(remove_containers), "true",
     0, 0, NULL, "remove a training container once its outcome is recorded"},
    {"TRAINQ_SWEEP_SECONDS", "sweep-seconds", TQ_OPT_INT, OFF(sweep_seconds), "10", 1, 3600, NULL,
     "how often the reaper and sweeper run"},
    {"TRAINQ_RESTART_GRACE_SECONDS", "restart-grace-seconds", TQ_OPT_INT,
     OFF(restart_grace_seconds), "300", 0, 86400, NULL,
     "on a clean stop, leases of running jobs are extended this long so a restart adopts them"},
    {"TRAINQ_STRANDED_SECONDS", "stranded-seconds", TQ_OPT_INT, OFF(stranded_seconds), "30", 1,
     3600, NULL,
     "unused since free slots pick queued rows (0012): nothing can be stranded; kept so "
     "that configurations stay valid"},
    {"TRAINQ_MAX_HOST_RETRIES", "max-host-retries", TQ_OPT_INT, OFF(max_host_retries), "10", 1,
     1000, NULL, "times a job is given back by hosts that could not start it before it fails"},
    {"TRAINQ_DATASET_MAX_BYTES", "dataset-max-bytes", TQ_OPT_BYTES, OFF(dataset_max_bytes), "50g",
     0, LLONG_MAX, NULL,
     "preflight: a dataset larger than this fails as dataset_error before any container starts "
     "(0: no limit)"},
    {"TRAINQ_RETRY_POLICY", "retry-policy", TQ_OPT_STR, OFF(retry_policy), TQ_RETRY_POLICY_DEFAULT,
     0, 0, NULL,
     "retries per failure class of a run, `class=N,...` (oom, trainer_error, config_error, "
     "dataset_error, hub_error, timeout, host_lost, host_error; others: none; `none`: no retry)"},
    {"TRAINQ_RETRY_BACKOFF_SECONDS", "retry-backoff-seconds", TQ_OPT_INT,
     OFF(retry_backoff_seconds), "30", 0, 3600, NULL,
     "wait before the first hub_error retry, doubling with each (at most 32 times)"},
    {"TRAINQ_HOST_ERROR_LIMIT", "host-error-limit", TQ_OPT_INT, OFF(host_error_limit), "3", 1, 1000,
     NULL, "consecutive start failures of this host before it starts no new job and is unhealthy"},
    {"TRAINQ_HOST_PROBE_SECONDS", "host-probe-seconds", TQ_OPT_INT, OFF(host_probe_seconds), "30",
     1, 86400, NULL,
     "first wait before an unhealthy host tries one job again (doubles up to 32x on failure)"},
    {"TRAINQ_LOG_MAX_BYTES", "log-max-bytes", TQ_OPT_BYTES, OFF(log_max_bytes), "1m", 65536,
     1073741824LL, NULL,
     "log lines kept per job in Postgres (job_output; the oldest go first), 64k to 1g"},
};

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

/* An empty TRAINQ_WORKER_ID is the host name; either must be a short plain name. */
static int check_worker_id(tq_config *c, tq_errbuf *eb)
{
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
    return TQ_OK;
}

/* TRAINQ_GPUS into gpus_mode and, for `all` and explicit ids, the number of slots. */
static int parse_gpus(tq_config *c, tq_errbuf *eb)
{
    if (strcmp(c->gpus, "none") == 0) {
        c->gpus_mode = TQ_GPUS_CFG_NONE;
        return TQ_OK;
    }
    if (strcmp(c->gpus, "all") == 0) {
        c->gpus_mode = TQ_GPUS_CFG_ALL;
        c->slots = 1;
        return TQ_OK;
    }
    /* "0,1,3": digits separated by single commas, each id once (two slots on one GPU
     * would share its memory) and short enough for tq_config_slot_gpu's table
     * (TQ_GPU_ID_MAX digits), which must never cut an id into another one. */
    int n = 0;
    unsigned long seen[TQ_SLOTS_MAX];
    const char *p = c->gpus;
    while (*p && n < TQ_SLOTS_MAX) {
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
    return TQ_OK;
}

/* Docker refuses a container memory limit under 6 MiB ("Minimum memory limit allowed is
 * 6MB"). */
#define DOCKER_MIN_MEMORY (6LL * 1024 * 1024)

static int check(void *cfg, tq_errbuf *eb)
{
    tq_config *c = cfg;
    int rc = check_worker_id(c, eb);
    if (rc != TQ_OK)
        return rc;
    if (strncmp(c->docker_host, "unix://", 7) != 0 || c->docker_host[7] != '/')
        return tq_errf(
            eb, TQ_ERR_CONFIG,
            "invalid TRAINQ_DOCKER_HOST \"%.200s\": expected unix:///path/to/docker.sock",
            c->docker_host);
    rc = parse_gpus(c, eb);
    if (rc != TQ_OK)
        return rc;
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
    /* Values the first launch would refuse (one job failing after another, fleet-wide, for
     * a typo in a deployment file) stop the start instead. */
    if (!*c->training_image || strpbrk(c->training_image, " \t\r\n\v\f"))
        return tq_errf(eb, TQ_ERR_CONFIG,
                       "invalid TRAINQ_TRAINING_IMAGE \"%.200s\": expected an image reference "
                       "such as training-image or registry.example.com/train:1.0",
                       c->training_image);
    if (c->memory_bytes != 0 && c->memory_bytes < DOCKER_MIN_MEMORY)
        return tq_errf(eb, TQ_ERR_CONFIG,
                       "invalid TRAINQ_MEMORY_LIMIT of %lld bytes: expected 0 (no limit) or at "
                       "least 6m, the least Docker accepts",
                       c->memory_bytes);
    if (c->cpus != 0 && c->cpus < 0.01)
        return tq_errf(eb, TQ_ERR_CONFIG,
                       "invalid TRAINQ_CPUS %g: expected 0 (no limit) or at least 0.01, the "
                       "least Docker accepts",
                       c->cpus);
    if (!*c->retry_policy)
        return tq_errf(eb, TQ_ERR_CONFIG,
                       "invalid TRAINQ_RETRY_POLICY: empty; `none` turns retries off");
    rc = tq_retry_policy_parse(c->retry_policy, &c->retry, eb);
    if (rc != TQ_OK)
        return rc;
    const char *dirs[][2] = {{"TRAINQ_DATA_DIR", c->data_dir},
                             {"TRAINQ_DATASETS_ROOT", c->datasets_root},
                             {"TRAINQ_HF_CACHE_DIR", c->hf_cache_dir}};
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++)
        if (dirs[i][1][0] != '/')
            return tq_errf(eb, TQ_ERR_CONFIG, "invalid %s \"%.200s\": expected an absolute path",
                           dirs[i][0], dirs[i][1]);
    return tq_config_check_common(c->database_url, c->amqp_url, c->publish_keys,
                                  c->publish_keys_file, &c->publish_keyring, eb);
}

static void release(void *cfg)
{
    tq_config *c = cfg;
    tq_sign_keys_wipe(&c->publish_keyring);
}

const tq_options tq_consumer_options = {
    .opts = options,
    .n_opts = sizeof options / sizeof options[0],
    .size = sizeof(tq_config),
    .check = check,
    .release = release,
};

int tq_consumer_config_load(tq_config *c, int argc, char **argv, tq_errbuf *eb)
{
    return tq_config_load(&tq_consumer_options, c, argc, argv, eb);
}

void tq_consumer_config_free(tq_config *c)
{
    tq_config_free(&tq_consumer_options, c);
}

const char *tq_config_slot_gpu(const tq_config *c, int slot)
{
    /* Returned pointers point into a static table of small ids, one per slot. */
    static char ids[TQ_SLOTS_MAX][TQ_GPU_ID_MAX + 1];
    if (c->gpus_mode != TQ_GPUS_CFG_IDS || slot < 0 || slot >= c->slots)
        return NULL;
    const char *p = c->gpus;
    for (int i = 0; i < slot; i++)
        p = strchr(p, ',') + 1;
    size_t n = strcspn(p, ","); /* < sizeof ids[0]: the check refuses longer ids */
    memcpy(ids[slot], p, n);
    ids[slot][n] = '\0';
    return ids[slot];
}
