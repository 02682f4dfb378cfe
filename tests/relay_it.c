/*
 * relay_it — runs one outbox relay (tq_relay) for the integration tests.
 *
 *   relay_it [--seconds N] [--name NAME] [--batch N] [--poll-ms N] [--flush-ms N]
 *
 * Reads TRAINQ_DATABASE_URL and TRAINQ_AMQP_URL. Runs until N seconds pass (default:
 * forever) or SIGTERM/SIGINT arrives, then stops the relay with a final flush and prints
 * its counters as one JSON object on stdout. Logs (JSON lines) go to stderr.
 *
 *   relay_it --probe-channel-close MESSAGE_ID
 *
 * Exercises tq_amqp alone: a batch to a missing exchange (the broker closes the channel),
 * then a batch to trainq.jobs on the same wrapper; prints both results as JSON.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "tq_amqp.h"
#include "tq_log.h"
#include "tq_relay.h"

/* The channel-close path of tq_amqp: refused batch → TQ_ERR_AMQP, same wrapper usable. */
static int probe_channel_close(const char *amqp_url, const char *msgid)
{
    tq_errbuf eb = {{0}};
    tq_amqp *a = NULL;
    int rc = tq_amqp_connect(amqp_url, "relay_it-probe", 0, &a, &eb);
    if (rc == TQ_OK)
        rc = tq_amqp_declare_topology(a, &eb);
    if (rc == TQ_OK)
        rc = tq_amqp_confirm_select(a, &eb);
    if (rc != TQ_OK) {
        fprintf(stderr, "relay_it: %s\n", eb.msg);
        tq_amqp_close(a);
        return 1;
    }
    unsigned epoch0 = tq_amqp_channel_epoch(a);
    tq_amqp_msg m = {.exchange = "trainq.no.such.exchange",
                     .routing_key = "lora",
                     .message_id = msgid,
                     .body = "{}",
                     .body_len = 2};
    tq_errbuf eb1 = {{0}};
    int rc1 = tq_amqp_publish_confirmed(a, &m, 1, 5000, &eb1);
    int unconfirmed1 = m.verdict == TQ_AMQP_UNCONFIRMED;
    int alive1 = tq_amqp_alive(a);
    static const char *const hdr[] = {"x-trainq-probe", "1"};
    m.exchange = TQ_AMQP_EXCHANGE;
    m.header_kv = hdr;
    m.n_header_kv = 2;
    tq_errbuf eb2 = {{0}};
    int rc2 = tq_amqp_publish_confirmed(a, &m, 1, 5000, &eb2);
    json_t *o =
        json_pack("{s:i,s:s,s:b,s:i,s:i,s:i,s:b,s:s,s:i}", "first_rc", rc1, "first_msg", eb1.msg,
                  "first_unconfirmed", unconfirmed1, "alive_after_first", alive1, "second_rc", rc2,
                  "second_result", m.result, "second_acked", m.verdict == TQ_AMQP_ACKED,
                  "second_msg", eb2.msg, "reopened", tq_amqp_channel_epoch(a) > epoch0);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    if (s)
        printf("%s\n", s);
    free(s);
    json_decref(o);
    tq_amqp_close(a);
    return 0;
}

static int parse_int(const char *s, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 0 || v > 1000000000)
        return -1;
    *out = (int)v;
    return 0;
}

int main(int argc, char **argv)
{
    int seconds = 0, batch = 0, poll_ms = 0, flush_ms = 5000;
    const char *name = "relay_it";
    const char *probe_id = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--probe-channel-close") == 0 && i + 1 < argc) {
            probe_id = argv[++i];
            continue;
        }
        int *target = NULL;
        if (strcmp(argv[i], "--seconds") == 0)
            target = &seconds;
        else if (strcmp(argv[i], "--batch") == 0)
            target = &batch;
        else if (strcmp(argv[i], "--poll-ms") == 0)
            target = &poll_ms;
        else if (strcmp(argv[i], "--flush-ms") == 0)
            target = &flush_ms;
        else if (strcmp(argv[i], "--name") == 0 && i + 1 < argc) {
            name = argv[++i];
            continue;
        }
        if (!target || i + 1 >= argc || parse_int(argv[++i], target) != 0) {
            fprintf(stderr, "usage: relay_it [--seconds N] [--name NAME] [--batch N] "
                            "[--poll-ms N] [--flush-ms N]\n");
            return 2;
        }
    }
    const char *db = getenv("TRAINQ_DATABASE_URL");
    const char *amqp = getenv("TRAINQ_AMQP_URL");
    if (!db || !amqp) {
        fprintf(stderr, "relay_it: TRAINQ_DATABASE_URL and TRAINQ_AMQP_URL are required\n");
        return 2;
    }
    if (probe_id)
        return probe_channel_close(amqp, probe_id);
    const char *lvl = getenv("TRAINQ_LOG_LEVEL");
    int level = lvl ? tq_log_level_parse(lvl) : TQ_LOG_INFO;
    tq_log_init("relay_it", level < 0 ? TQ_LOG_INFO : (tq_log_level)level);

    /* Block the stop signals before any thread exists, then wait for them here. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);

    tq_relay_config cfg = {
        .database_url = db, .amqp_url = amqp, .name = name, .batch = batch, .poll_ms = poll_ms};
    tq_relay *r = NULL;
    tq_errbuf eb = {{0}};
    if (tq_relay_start(&cfg, &r, &eb) != TQ_OK) {
        tq_log(TQ_LOG_ERROR, "relay_it.start", "%s", eb.msg);
        return 1;
    }
    tq_log(TQ_LOG_INFO, "relay_it.started", "relay %s running", name);

    for (;;) {
        int sig;
        if (seconds > 0) {
            struct timespec ts = {.tv_sec = seconds, .tv_nsec = 0};
            sig = sigtimedwait(&stop, NULL, &ts);
            if (sig < 0 && errno == EINTR)
                continue;
        } else {
            if (sigwait(&stop, &sig) != 0)
                continue;
        }
        break;
    }

    tq_relay_stats before;
    tq_relay_stats_get(r, &before);
    /* Counters are read before stop frees the relay; the flush itself shows in the
     * published count only through the database. */
    tq_relay_stop(r, flush_ms);
    printf("{\"published\":%" PRIu64 ",\"confirms\":%" PRIu64 ",\"nacks\":%" PRIu64
           ",\"returns\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"reconnects\":%" PRIu64
           ",\"backlog\":%" PRId64 ",\"db_up\":%d,\"amqp_up\":%d}\n",
           before.published, before.confirms, before.nacks, before.returns, before.errors,
           before.reconnects, before.backlog, before.db_up, before.amqp_up);
    fflush(stdout);
    return 0;
}
