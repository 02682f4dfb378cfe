/*
 * Operations endpoints: /healthz (the process answers), /readyz (it can do its job:
 * Postgres answers on this thread's connection, the relay's RabbitMQ connection is up and
 * not blocked by a resource alarm, and the outbox is not falling behind), /metrics
 * (Prometheus text). None needs a token: bind the producer to an address the load balancer
 * and the scraper reach, not the internet, or filter them there.
 *
 * /readyz names every reason it is not ready in "reasons" (fixed phrases plus the broker's
 * alarm text; never SQL or host names), so an operator reads the cause from one request.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handlers.h"
#include "metrics.h"
#include "pdb.h"
#include "tq_db.h"
#include "tq_relay.h"

/* /readyz's wait for Postgres (a connection made for it still has its connect_timeout). */
#define READY_DB_DEADLINE_MS 2000

void tq_h_healthz(tq_req *r)
{
    tq_req_reply_json(r, 200, json_pack("{s:s}", "status", "ok"));
}

/* The Postgres reason: "too many clients" is told apart from an outage, since the cure
 * differs (free connections or raise max_connections, not restart the database). */
static const char *pg_reason(int rc, const tq_errbuf *eb)
{
    if (rc == TQ_OK)
        return NULL;
    if (tq_db_exhausted(eb)) {
        tq_metrics_db_exhausted();
        return "postgres has no free connections (too many clients)";
    }
    return "postgres unavailable";
}

void tq_h_readyz(tq_req *r)
{
    tq_errbuf eb = {{0}};
    /* A load balancer's probe wants an answer soon: a Postgres that answers nothing (stopped,
     * a network dropping everything) is "unreachable" after this, not a probe that hangs. */
    tq_db_set_answer_deadline(READY_DB_DEADLINE_MS);
    int prc = tq_pdb_ping(&eb);
    tq_db_set_answer_deadline(0);
    const tq_app *app = tq_req_app(r);
    json_t *reasons = json_array();
    const char *pgr = pg_reason(prc, &eb);
    if (pgr)
        json_array_append_new(reasons, json_string(pgr));
    const char *amqp = "unavailable";
    const char *outbox = "unknown";
    if (app->relay) {
        tq_relay_stats st;
        tq_relay_stats_get(app->relay, &st);
        char why[200];
        if (!st.amqp_up && !st.amqp_tried) {
            /* not tried yet: the relay tries once Postgres answers. While it does not,
             * Postgres is the reason; once it does, this is, until the first try. */
            amqp = "unknown";
            if (!pgr)
                json_array_append_new(reasons, json_string("rabbitmq not tried yet"));
        } else if (!st.amqp_up) {
            json_array_append_new(reasons, json_string("rabbitmq unavailable"));
        } else if (st.amqp_blocked) {
            amqp = "blocked";
            snprintf(why, sizeof why, "rabbitmq blocked: %s", st.blocked_reason);
            json_array_append_new(reasons, json_string(why));
        } else {
            amqp = "ok";
        }
        int max_age = app->cfg->ready_max_backlog_age_seconds;
        if (st.backlog_age_s >= 0)
            outbox = "ok";
        if (st.backlog_age_s > max_age) {
            outbox = "behind";
            snprintf(why, sizeof why,
                     "outbox backlog: oldest unpublished row waits %lld s (limit %d s, %lld rows)",
                     (long long)st.backlog_age_s, max_age, (long long)st.backlog);
            json_array_append_new(reasons, json_string(why));
        }
    } else {
        json_array_append_new(reasons, json_string("relay not running"));
    }
    int ok = json_array_size(reasons) == 0;
    if (!ok)
        tq_req_add_header(r, "Retry-After", "5");
    tq_req_reply_json(r, ok ? 200 : 503,
                      json_pack("{s:s, s:s, s:s, s:s, s:o}", "status", ok ? "ready" : "unavailable",
                                "postgres", prc == TQ_OK ? "ok" : "unavailable", "amqp", amqp,
                                "outbox", outbox, "reasons", reasons));
}

void tq_h_metrics(tq_req *r)
{
    const tq_app *app = tq_req_app(r);
    tq_metrics_relay mr = {0};
    mr.backlog = -1;
    mr.backlog_age = -1;
    if (app->relay) {
        tq_relay_stats st;
        tq_relay_stats_get(app->relay, &st);
        mr.have = 1;
        mr.connected = st.amqp_up;
        mr.published = st.published;
        mr.confirms = st.confirms;
        mr.nacks = st.nacks;
        mr.returns = st.returns;
        mr.events_published = st.events_published;
        mr.replies_dropped = st.replies_dropped;
        mr.errors = st.errors;
        mr.reconnects = st.reconnects;
        mr.backlog = st.backlog;
        mr.backlog_age = st.backlog_age_s;
        mr.blocked = st.amqp_blocked;
        mr.blocked_events = st.blocked_events;
        mr.blocked_seconds = st.blocked_ms / 1000;
    }
    size_t len = 0;
    char *text = tq_metrics_render(&mr, &len);
    if (!text) {
        tq_req_reply_error(r, 500, "internal server error");
        return;
    }
    tq_req_reply_text(r, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
    free(text);
}
