/*
 * coptions — the consumer's options: its table (TRAINQ_WORKER_ID, TRAINQ_GPUS, container
 * limits, timings and the shared TRAINQ_DATABASE_URL ...), the struct it fills and the rules
 * that join several values (GPU ids into slots, heartbeat against lease, absolute directories).
 * shared/tq_config does the parsing.
 */
#ifndef TQ_COPTIONS_H
#define TQ_COPTIONS_H

#include "outcome.h"
#include "tq_config.h"
#include "tq_sign.h"

typedef enum { TQ_GPUS_CFG_NONE, TQ_GPUS_CFG_ALL, TQ_GPUS_CFG_IDS } tq_gpus_cfg;
/* Longest GPU device id accepted in TRAINQ_GPUS, in digits. */
#define TQ_GPU_ID_MAX 7
/* Most slots one consumer runs (TRAINQ_SLOTS, or ids in TRAINQ_GPUS). */
#define TQ_SLOTS_MAX 64

/* The consumer's configuration. Its modules call it tq_config; the producer has its own
 * tq_config (producer/poptions.h), and no file includes both. */
typedef struct tq_consumer_config {
    /* shared with the producer (tq_config.h: TQ_OPT_DATABASE_URL ...) */
    char *database_url;
    char *amqp_url;
    char *log_level;
    int relay_batch;
    char *publish_keys;
    char *publish_keys_file;
    tq_sign_keys publish_keyring; /* parsed from one of the two at load; wiped by free */
    /* the consumer's own */
    char *worker_id;
    char *docker_host;
    char *gpus; /* as given */
    tq_gpus_cfg gpus_mode;
    int slots; /* effective number of slots after TRAINQ_GPUS is applied */
    char *training_image;
    char *training_cmd;
    char *data_dir;
    char *datasets_root;
    char *hf_cache_dir;
    int models_read_only;
    char *metrics_addr;
    char metrics_host[TQ_CONFIG_HOST_BUF];
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
    long long log_max_bytes;
    long long dataset_max_bytes; /* preflight: a larger dataset fails as dataset_error */
    char *retry_policy;          /* as given (TRAINQ_RETRY_POLICY) */
    tq_retry_policy retry;       /* parsed from it at load (outcome.h) */
    int retry_backoff_seconds;   /* hub_error's first wait, doubling */
} tq_config;

/* The consumer's option table, for tq_program_start and tq_config_print_markdown. */
extern const tq_options tq_consumer_options;

/* tq_config_load / tq_config_free with the consumer's table. */
int tq_consumer_config_load(tq_config *c, int argc, char **argv, tq_errbuf *eb);
void tq_consumer_config_free(tq_config *c);

/* The device ids of slot i when gpus_mode is TQ_GPUS_CFG_IDS ("0", "1", ...); NULL otherwise. */
const char *tq_config_slot_gpu(const tq_config *c, int slot);

#endif
