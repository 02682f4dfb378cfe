/*
 * tq_config — configuration of both programs from TRAINQ_* environment variables and the
 * matching command-line flags (flags win). One table describes every option: its parser,
 * default, range and help text; `--help` and docs/configuration.md are printed from it, so
 * the documentation cannot drift from the code (a ctest compares them).
 *
 * A bad value is reported as one line naming the variable, the value and what was expected.
 */
#ifndef TQ_CONFIG_H
#define TQ_CONFIG_H

#include <stdio.h>

#include "tq_err.h"
#include "tq_sign.h"

/* Which program an option belongs to (bit mask). */
#define TQ_PROG_PRODUCER 1u
#define TQ_PROG_CONSUMER 2u

typedef enum { TQ_GPUS_CFG_NONE, TQ_GPUS_CFG_ALL, TQ_GPUS_CFG_IDS } tq_gpus_cfg;
/* Longest GPU device id accepted in TRAINQ_GPUS, in digits. */
#define TQ_GPU_ID_MAX 7

typedef struct {
    /* both */
    char *database_url;
    char *amqp_url;
    char *log_level;
    /* producer */
    char *http_addr; /* host:port as given */
    char http_host[256];
    int http_port;
    int http_threads;
    char *jwt_alg;
    char *jwt_secret;
    char *jwt_public_key_file;
    char *jwt_public_key_pem; /* read from jwt_public_key_file at load; owned */
    char *jwt_audience;
    char *jwt_issuer;
    int jwt_leeway_seconds;
    char *cors_origins; /* comma-separated, or "*" */
    int submit_rate_per_minute;
    int read_rate_per_minute;
    long long max_body_bytes;
    int relay_batch;
    int request_timeout_seconds;
    int http_max_connections;
    int http_max_connections_per_client;
    int http_header_timeout_seconds;
    int http_body_timeout_seconds;
    char *http_trusted_proxies; /* comma-separated addresses / CIDR blocks */
    /* both: publisher signatures (tq_sign.h); publish_keyring.n == 0 when off */
    char *publish_keys;
    char *publish_keys_file;
    tq_sign_keys publish_keyring; /* parsed from one of the two at load; wiped by free */
    /* consumer */
    char *worker_id;
    char *docker_host;
    char *gpus; /* as given */
    tq_gpus_cfg gpus_mode;
    int slots;  /* effective number of slots after TRAINQ_GPUS is applied */
    char *training_image;
    char *training_cmd;
    char *data_dir;
    char *datasets_root;
    char *hf_cache_dir;
    int models_read_only;
    char *metrics_addr;
    char metrics_host[256];
    int metrics_port;
    int lease_seconds;
    int heartbeat_seconds;
    int max_attempts;
    int max_run_seconds;
    long long memory_bytes;
    long long shm_bytes;
    int pids_limit;
    double cpus;
    int stop_grace_seconds;
    int remove_containers;
    int sweep_seconds;
    int restart_grace_seconds;
    int stranded_seconds;
    int max_host_retries;
    int host_error_limit;
    int host_probe_seconds;
} tq_config;

/* tq_config_load results besides TQ_OK and TQ_ERR_CONFIG */
#define TQ_CONFIG_EXIT 1 /* --help / --version was printed: exit 0 */

/* Loads the options of `prog` from the environment and argv (argv[0] is the program name).
 * On TQ_ERR_CONFIG eb holds one line such as
 *   invalid TRAINQ_HTTP_ADDR "x": expected host:port
 * The caller prints it and exits non-zero. Free with tq_config_free even on error. */
int tq_config_load(tq_config *c, unsigned prog, int argc, char **argv, tq_errbuf *eb);
void tq_config_free(tq_config *c);

/* The device ids of slot i when gpus_mode is TQ_GPUS_CFG_IDS ("0", "1", ...); NULL otherwise. */
const char *tq_config_slot_gpu(const tq_config *c, int slot);

/* The markdown table of the options of `prog` (docs/configuration.md is made of these). */
void tq_config_print_markdown(FILE *out, unsigned prog);

/* Parsers exposed for unit tests. */
int tq_parse_bytes(const char *s, long long *out);              /* "512m", "16g", "1024" */
int tq_parse_hostport(const char *s, char *host, size_t cap, int *port);

#endif
