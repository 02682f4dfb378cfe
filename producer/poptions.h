/*
 * poptions — the producer's options: its table (TRAINQ_HTTP_*, TRAINQ_JWT_*, rate limits and
 * the shared TRAINQ_DATABASE_URL ...), the struct it fills and the rules that join several
 * values (the JWT algorithm and its secret or key file). shared/tq_config does the parsing.
 */
#ifndef TQ_POPTIONS_H
#define TQ_POPTIONS_H

#include "tq_config.h"
#include "tq_sign.h"

/* The producer's configuration. Its modules call it tq_config; the consumer has its own
 * tq_config (consumer/coptions.h), and no file includes both. */
typedef struct tq_producer_config {
    /* shared with the consumer (tq_config.h: TQ_OPT_DATABASE_URL ...) */
    char *database_url;
    char *amqp_url;
    char *log_level;
    int relay_batch;
    char *publish_keys;
    char *publish_keys_file;
    tq_sign_keys publish_keyring; /* parsed from one of the two at load; wiped by free */
    /* the producer's own */
    char *http_addr; /* host:port as given */
    char http_host[TQ_CONFIG_HOST_BUF];
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
    int request_timeout_seconds;
    int http_max_connections;
    int http_max_connections_per_client;
    int http_header_timeout_seconds;
    int http_body_timeout_seconds;
    int ready_max_backlog_age_seconds;
    char *http_trusted_proxies; /* comma-separated addresses / CIDR blocks */
    int streams_per_user;
    int stream_keepalive_seconds;
    char *artifacts_dir; /* "" when downloads are off */
    /* retention (producer/retention.c) */
    int outbox_retention_seconds;
    int job_retention_seconds; /* 0: jobs are kept forever */
    int retention_interval_seconds;
    char *admin_claim; /* the operator claim's name and value (auth.h) */
    char *admin_claim_value;
    char *ui_dir; /* the dashboard's files; "" when /ui/ is off (resolved at load) */
    /* webhooks (producer/webhooks.c, docs/webhooks.md) */
    int webhook_allow_loopback; /* tests only: deliveries to 127.0.0.0/8 and http:// */
    int webhook_allow_http;
    char *webhook_allow_cidrs;
    struct tq_netlist *webhook_allow_nets; /* parsed from webhook_allow_cidrs at load; owned */
    int webhook_max_attempts;
    int webhook_retry_min_seconds;
    int webhook_retry_max_seconds;
    int webhook_senders;
    int webhook_endpoint_concurrency;
    int webhook_user_concurrency;
    int webhook_disable_after;
    int webhook_secret_overlap_seconds; /* the replaced secret still signs this long */
} tq_config;

/* The producer's option table, for tq_program_start and tq_config_print_markdown. */
extern const tq_options tq_producer_options;

/* tq_config_load / tq_config_free with the producer's table. */
int tq_producer_config_load(tq_config *c, int argc, char **argv, tq_errbuf *eb);
void tq_producer_config_free(tq_config *c);

#endif
