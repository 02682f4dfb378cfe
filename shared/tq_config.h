/*
 * tq_config — the machinery that configures a program from TRAINQ_* environment variables
 * and the matching command-line flags (flags win). Each program owns its option table
 * (producer/poptions.c, consumer/coptions.c): one row per option with its parser, default,
 * range and help text, filling the program's own config struct. `--help` and
 * docs/configuration.md are printed from the table, so the documentation cannot drift from
 * the code (a ctest compares them). The options both programs take are spelled once here
 * (TQ_OPT_DATABASE_URL ...); each program places them in its table where it lists them.
 *
 * A bad value is reported as one line naming the variable, the value and what was expected.
 */
#ifndef TQ_CONFIG_H
#define TQ_CONFIG_H

#include <stddef.h>
#include <stdio.h>

#include "tq_err.h"
#include "tq_sign.h"

/* Room for the host part of a host:port option (tq_parse_hostport). */
#define TQ_CONFIG_HOST_BUF 256

typedef enum {
    TQ_OPT_STR,    /* char *: any string; must not be empty when required (def NULL) */
    TQ_OPT_SECRET, /* char *: like TQ_OPT_STR, never echoed back in errors or --help */
    TQ_OPT_INT,    /* int in [min, max] */
    TQ_OPT_BYTES,  /* long long in [min, max], "64k", "2g" (tq_parse_bytes) */
    TQ_OPT_DOUBLE, /* double in [min, max] */
    TQ_OPT_BOOL,   /* int 0/1 from true/false, 1/0, yes/no */
    TQ_OPT_ENUM,   /* char *: one of `choices` (comma-separated) */
} tq_opt_type;

/* One option. `off` is the offset of its field in the program's config struct, of the C
 * type its tq_opt_type names above. Every string field holds a value after loading (its
 * default at least), so a program never sees NULL for a string option. */
typedef struct {
    const char *env;
    const char *flag; /* without the leading "--" */
    tq_opt_type type;
    size_t off;
    const char *def; /* NULL: required */
    long long min, max;
    const char *choices;
    const char *help;
} tq_opt;

/* A program's options: its table, the struct it fills, and its cross-option rules. */
typedef struct {
    const tq_opt *opts;
    size_t n_opts;
    size_t size; /* of the config struct; tq_config_load zeroes it first */
    /* Rules a single value cannot express and values derived from several, run once every
     * option is set: TQ_OK, or TQ_ERR_CONFIG with one line in eb (or TQ_ERR_NOMEM). */
    int (*check)(void *cfg, tq_errbuf *eb);
    /* Frees what check made; the option strings are freed by tq_config_free. */
    void (*release)(void *cfg);
} tq_options;

/* The offset of field f of struct type T, refused at compile time unless f is a `ctype`. */
#define TQ_OPT_OFF(T, f, ctype) (offsetof(T, f) + 0 * sizeof((ctype *)0 == &((T *)0)->f))

/* The options both programs take. A program's config struct T has fields of these names
 * (char *database_url, *amqp_url, *log_level, *publish_keys, *publish_keys_file;
 * int relay_batch; tq_sign_keys publish_keyring) and its check calls tq_config_check_common. */
#define TQ_OPT_DATABASE_URL(T)                                                                     \
    {                                                                                              \
        "TRAINQ_DATABASE_URL", "database-url", TQ_OPT_SECRET, TQ_OPT_OFF(T, database_url, char *), \
            NULL, 0, 0, NULL,                                                                      \
            "Postgres connection URL (libpq syntax); a multi-host URL with "                       \
            "target_session_attrs=read-write follows a failover to the promoted standby"           \
    }
#define TQ_OPT_AMQP_URL(T)                                                                         \
    {                                                                                              \
        "TRAINQ_AMQP_URL", "amqp-url", TQ_OPT_SECRET, TQ_OPT_OFF(T, amqp_url, char *), NULL, 0, 0, \
            NULL,                                                                                  \
            "RabbitMQ URL, amqp://user:pass@host:port/vhost, or a comma-separated list of the "    \
            "URLs of one cluster's nodes (same vhost): every connection starts at a rotating "     \
            "node and moves to the next when its node is down; quorum queues a list creates get "  \
            "min(3, nodes) replicas"                                                               \
    }
#define TQ_OPT_LOG_LEVEL(T)                                                                        \
    {                                                                                              \
        "TRAINQ_LOG_LEVEL", "log-level", TQ_OPT_ENUM, TQ_OPT_OFF(T, log_level, char *), "info", 0, \
            0, "debug,info,warn,error", "minimum level of the JSON log lines on stderr"            \
    }
#define TQ_OPT_RELAY_BATCH(T)                                                                      \
    {                                                                                              \
        "TRAINQ_RELAY_BATCH", "relay-batch", TQ_OPT_INT, TQ_OPT_OFF(T, relay_batch, int), "100",   \
            1, 1000, NULL, "outbox rows published per confirm round"                               \
    }
#define TQ_OPT_PUBLISH_KEYS(T)                                                                     \
    {                                                                                              \
        "TRAINQ_PUBLISH_KEYS", "publish-keys", TQ_OPT_SECRET, TQ_OPT_OFF(T, publish_keys, char *), \
            "", 0, 0, NULL,                                                                        \
            "publisher signing keys `id:secret,id:secret` (secrets of 32+ bytes): relays sign "    \
            "with the "                                                                            \
            "first, consumers accept any and dead-letter other messages; empty: no signing "       \
            "(docs/message-contract.md)"                                                           \
    }
#define TQ_OPT_PUBLISH_KEYS_FILE(T)                                                                \
    {                                                                                              \
        "TRAINQ_PUBLISH_KEYS_FILE", "publish-keys-file", TQ_OPT_STR,                               \
            TQ_OPT_OFF(T, publish_keys_file, char *), "", 0, 0, NULL,                              \
            "file holding the TRAINQ_PUBLISH_KEYS list instead (one `id:secret` per line)"         \
    }

/* Loads the options of t into cfg from the environment and argv (argv[0] is the program
 * name). Returns TQ_OK; TQ_ERR_EXIT_OK when --help, --version or --config-markdown was
 * asked for and printed to stdout (nothing else to do); TQ_ERR_CONFIG with one line in eb
 * such as
 *   invalid TRAINQ_HTTP_ADDR "x": expected host:port
 * which the caller prints before it exits 2; or TQ_ERR_NOMEM. Free with tq_config_free
 * even on error. */
int tq_config_load(const tq_options *t, void *cfg, int argc, char **argv, tq_errbuf *eb);
void tq_config_free(const tq_options *t, void *cfg);

/* The value of string option `env` in cfg (borrowed), or NULL when t has no such option. */
const char *tq_config_str(const tq_options *t, const void *cfg, const char *env);

/* The markdown table of t's options (docs/configuration.md is made of these). */
void tq_config_print_markdown(FILE *out, const tq_options *t);

/* The rules of the shared options, for a program's check: a TRAINQ_DATABASE_URL libpq can
 * parse; TRAINQ_PUBLISH_KEYS, or the file TRAINQ_PUBLISH_KEYS_FILE names (not both), parsed
 * into *keyring (neither: n == 0, signing off); then an amqp:// or amqps:// TRAINQ_AMQP_URL.
 * No message quotes a url (it may hold a password). */
int tq_config_check_common(const char *database_url, const char *amqp_url, const char *publish_keys,
                           const char *publish_keys_file, tq_sign_keys *keyring, tq_errbuf *eb);

/* The contents of the file that option `what` names at `path`: not empty, at most 64 KiB,
 * NUL-terminated, caller frees. A file that cannot be used is TQ_ERR_CONFIG naming both. */
int tq_config_read_file(const char *what, const char *path, char **out, tq_errbuf *eb);

/* Value parsers for option tables and checks. */
int tq_parse_bytes(const char *s, long long *out); /* "512m", "16g", "1024" */
int tq_parse_hostport(const char *s, char *host, size_t cap, int *port);

#endif
