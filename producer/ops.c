/*
 * Operations endpoints: /healthz (the process answers), /readyz (it can do its job:
 * Postgres answers on this thread's connection and the relay's RabbitMQ connection is
 * up), /metrics (Prometheus text). None needs a token: bind the producer to an address
 * the load balancer and the scraper reach, not the internet, or filter them there.
 */
#include <stdlib.h>

#include "handlers.h"
#include "metrics.h"
#include "pdb.h"
#include "tq_relay.h"

void tq_h_healthz(tq_req *r)
{
    tq_req_reply_json(r, 200, json_pack("{s:s}", "status", "ok"));
}

void tq_h_readyz(tq_req *r)
{
    tq_errbuf eb = {{0}};
    int pg = tq_pdb_ping(&eb) == TQ_OK;
    int amqp = 0;
    const tq_app *app = tq_req_app(r);
    if (app->relay) {
        tq_relay_stats st;
        tq_relay_stats_get(app->relay, &st);
        amqp = st.amqp_up;
    }
    int ok = pg && amqp;
    if (!ok)
        tq_req_add_header(r, "Retry-After", "5");
    tq_req_reply_json(r, ok ? 200 : 503,
                      json_pack("{s:s, s:s, s:s}", "status", ok ? "ready" : "unavailable",
                                "postgres", pg ? "ok" : "unavailable", "amqp",
                                amqp ? "ok" : "unavailable"));
}

void tq_h_metrics(tq_req *r)
{
    const tq_app *app = tq_req_app(r);
    tq_metrics_relay mr = {0};
    mr.backlog = -1;
    if (app->relay) {
        tq_relay_stats st;
        tq_relay_stats_get(app->relay, &st);
        mr.have = 1;
        mr.connected = st.amqp_up;
        mr.published = st.published;
        mr.confirms = st.confirms;
        mr.nacks = st.nacks;
        mr.returns = st.returns;
        mr.errors = st.errors;
        mr.reconnects = st.reconnects;
        mr.backlog = st.backlog;
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
