/*
 * trainq-producer: the HTTP front door. Accepts training submissions, writes each as a
 * job row plus an outbox row in one transaction, and runs the outbox relay that publishes
 * them to RabbitMQ with publisher confirms, and sends the webhooks of status changes
 * (producer/webhooks.c). Its retention thread prunes what is kept only for a while
 * (producer/retention.c).
 *
 * Signals: SIGTERM/SIGINT stop accepting connections, let in-flight requests finish
 * (up to DRAIN_MS), stop the HTTP threads, give the relay one last flush, then exit 0.
 * All signals of interest are blocked before any thread starts and taken with sigwait()
 * here, so no handler runs on an arbitrary thread.
 */
#include <curl/curl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "http.h"
#include "pdb.h"
#include "poptions.h"
#include "retention.h"
#include "stream.h"
#include "tq_log.h"
#include "tq_program.h"
#include "tq_relay.h"
#include "wake.h"
#include "webhooks.h"

#define DRAIN_MS 10000
#define RELAY_FLUSH_MS 5000

static const char *nonempty(const char *s)
{
    return s && *s ? s : NULL;
}

/* The token verifier, from the JWT options (docs/configuration.md). */
static int start_auth(const tq_config *cfg, tq_auth **auth, tq_errbuf *eb)
{
    tq_auth_config ac = {
        .alg = cfg->jwt_alg,
        .secret = nonempty(cfg->jwt_secret),
        .public_key_pem = nonempty(cfg->jwt_public_key_pem),
        .audience = cfg->jwt_audience, /* empty is refused: "-" says "any" explicitly */
        .issuer = nonempty(cfg->jwt_issuer),
        .leeway_seconds = cfg->jwt_leeway_seconds,
        .operator_claim = cfg->admin_claim,
        .operator_value = cfg->admin_claim_value,
    };
    return tq_auth_new(&ac, auth, eb);
}

/* The outbox relay of this producer (every producer runs one; shared/tq_relay.h). */
static int start_relay(const tq_config *cfg, tq_relay **relay, tq_errbuf *eb)
{
    tq_relay_config rc_cfg = {
        .database_url = cfg->database_url,
        .amqp_url = cfg->amqp_url,
        .name = "trainq-producer-relay",
        .batch = cfg->relay_batch,
        .poll_ms = 1000,
        .sign_keys = &cfg->publish_keyring,
    };
    return tq_relay_start(&rc_cfg, relay, eb);
}

/* A configuration found bad after loading (a key file, the file descriptor limit, an HTTP
 * address this host cannot bind): one line, as tq_program_start prints the others, then
 * exit 2. */
static void config_error(const tq_errbuf *eb)
{
    fprintf(stderr, "trainq-producer: %s\n", eb->msg);
}

int main(int argc, char **argv)
{
    tq_config cfg;
    sigset_t sigs;
    int start = tq_program_start(&tq_producer_options, &cfg, "trainq-producer", argc, argv, &sigs);
    if (start != TQ_OK)
        return tq_program_exit_code(start);
    tq_errbuf eb = {{0}};

    int exit_code = 1;
    tq_auth *auth = NULL;
    tq_relay *relay = NULL;
    tq_http *http = NULL;
    tq_streams *streams = NULL;
    tq_webhooks *hooks = NULL;
    tq_retention *retention = NULL;
    tq_wake *wake = NULL;
    int pdb_ready = 0;
    int curl_ready = 0;

    int rc = tq_http_prepare(&cfg, &eb);
    if (rc != TQ_OK) {
        config_error(&eb);
        exit_code = 2;
        goto out;
    }
    rc = start_auth(&cfg, &auth, &eb);
    if (rc != TQ_OK) {
        config_error(&eb);
        exit_code = 2;
        goto out;
    }
    if (tq_pdb_init(cfg.database_url, "trainq-producer") != TQ_OK) {
        tq_log(TQ_LOG_ERROR, "producer.start", "out of memory");
        goto out;
    }
    pdb_ready = 1;
    /* Before any thread: curl_global_init is not thread-safe. */
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        tq_log(TQ_LOG_ERROR, "producer.start", "could not initialise libcurl");
        goto out;
    }
    curl_ready = 1;

    rc = start_relay(&cfg, &relay, &eb);
    if (rc != TQ_OK) {
        tq_log(TQ_LOG_ERROR, "producer.start", "could not start the outbox relay: %s", eb.msg);
        goto out;
    }

    rc = tq_webhooks_start(&cfg, &hooks, &eb);
    if (rc != TQ_OK) {
        tq_log(TQ_LOG_ERROR, "producer.start", "%s", eb.msg);
        goto out;
    }

    rc = tq_retention_start(&cfg, &retention, &eb);
    if (rc != TQ_OK) {
        tq_log(TQ_LOG_ERROR, "producer.start", "%s", eb.msg);
        goto out;
    }

    rc = tq_streams_start(&cfg, &streams, &eb);
    if (rc != TQ_OK) {
        tq_log(TQ_LOG_ERROR, "producer.start", "%s", eb.msg);
        goto out;
    }
    rc = tq_wake_start(&wake, &eb);
    if (rc != TQ_OK) {
        tq_log(TQ_LOG_ERROR, "producer.start", "%s", eb.msg);
        goto out;
    }
    tq_app app = {.cfg = &cfg, .auth = auth, .relay = relay, .streams = streams, .wake = wake};
    rc = tq_http_start(&app, &http, &eb);
    if (rc == TQ_ERR_CONFIG || rc == TQ_ERR_INVALID) { /* an address no restart can bind */
        config_error(&eb);
        exit_code = 2;
        goto out;
    }
    if (rc != TQ_OK) { /* the address is another process's: it may be free next time */
        tq_log(TQ_LOG_ERROR, "producer.start", "%s", eb.msg);
        goto out;
    }
    tq_logj(TQ_LOG_INFO, "http.listening",
            json_pack("{s:s, s:i, s:i}", "host", cfg.http_host, "port", tq_http_port(http),
                      "threads", cfg.http_threads),
            "listening on %s:%d", cfg.http_host, tq_http_port(http));

    int sig = 0;
    sigwait(&sigs, &sig);
    tq_log(TQ_LOG_INFO, "producer.stopping", "received %s, stopping",
           sig == SIGTERM ? "SIGTERM" : "SIGINT");
    exit_code = 0;

out:
    tq_http_stop(http, DRAIN_MS);
    tq_wake_stop(wake); /* after the last request: its wake-ups go out before the relay's flush */
    tq_streams_stop(streams);
    tq_webhooks_stop(hooks);
    tq_retention_stop(retention);
    tq_relay_stop(relay, RELAY_FLUSH_MS);
    tq_auth_free(auth);
    if (pdb_ready)
        tq_pdb_shutdown();
    if (curl_ready)
        curl_global_cleanup();
    tq_producer_config_free(&cfg);
    if (exit_code == 0)
        tq_log(TQ_LOG_INFO, "producer.stopped", "stopped");
    return exit_code;
}
