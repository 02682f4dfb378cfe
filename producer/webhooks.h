/*
 * webhooks — the producer's side of signed webhooks (issue 13, docs/webhooks.md):
 *
 *  - tq_webhook_url_check: the rule a URL must pass to be registered (an endpoint, or a
 *    job's webhook_url), before any connection is made;
 *  - the delivery worker: TRAINQ_WEBHOOK_SENDERS threads in every producer that take due rows of
 *    webhook_deliveries (written by trigger tq_webhook_enqueue in the status change's
 *    transaction), POSTs each with libcurl, signed (Standard Webhooks v1, shared/tq_webhook),
 *    and records the outcome: delivered on 2xx, else retried with exponential backoff and
 *    jitter up to TRAINQ_WEBHOOK_MAX_ATTEMPTS, then failed; a 410 Gone disables the endpoint. Rows
 * are taken FOR UPDATE SKIP LOCKED and leased, so any number of producers can run one; a worker
 * killed mid-request leaves its rows to be sent again after the lease (at least once, same
 * webhook-id). Idle senders are woken by a listener thread on Postgres channel
 * trainq_webhook (notified at the commit that wrote deliveries) and every 0.5 s as a fallback.
 *
 * What must stay true: a request only ever connects to an address tq_webhook_addr_allowed
 * accepted (checked in curl's open-socket callback on the address it connects to: no second
 * lookup); redirects are not followed; proxies from the environment are not used.
 */
#ifndef TQ_WEBHOOKS_H
#define TQ_WEBHOOKS_H

#include <stddef.h>
#include <sys/socket.h>

#include "poptions.h"
#include "tq_err.h"

#define TQ_WEBHOOK_URL_MAX 2048
#define TQ_WEBHOOK_CONNECT_TIMEOUT_MS 5000L
#define TQ_WEBHOOK_TIMEOUT_MS 15000L
/* How much of a response body is read (the rest is not waited for). */
#define TQ_WEBHOOK_RESPONSE_MAX 4096
/* A taken row is due again this long after it was taken (more than one request lasts). */
#define TQ_WEBHOOK_LEASE_SECONDS 30

/* Where deliveries may go, from the options (TRAINQ_WEBHOOK_ALLOW_*). */
struct tq_netlist;
typedef struct {
    int allow_loopback;                  /* tests only: loopback addresses, and http */
    int allow_http;                      /* http:// as well as https:// */
    const struct tq_netlist *allow_nets; /* blocks admitted whatever their class; may be NULL */
} tq_webhook_rule;

/* The rule of cfg. */
tq_webhook_rule tq_webhook_rule_of(const tq_config *cfg);

/* 1 when a delivery may connect to sa: tq_webhook_addr_allowed, or inside allow_nets. */
int tq_webhook_rule_addr_ok(const tq_webhook_rule *rule, const struct sockaddr *sa);

/* 0 when url may be registered: an absolute https URL (http too when allow_http or
 * allow_loopback), at most TQ_WEBHOOK_URL_MAX bytes, no user name or password, and a host
 * that is not an IP literal refused by tq_webhook_rule_addr_ok nor "localhost" (unless
 * allow_loopback). Else -1 with the reason in why. Pure: no DNS lookup, no connection. */
int tq_webhook_url_check(const char *url, const tq_webhook_rule *rule, char *why, size_t why_cap);

/* The delay (ms) before the next attempt after `attempts` failed ones (1, 2, ...):
 * min_s doubling up to max_s, with jitter (tq_backoff); -1 when attempts >= max_attempts. */
long long tq_webhook_retry_ms(int attempts, int max_attempts, int min_s, int max_s, unsigned seed);

typedef struct tq_webhooks tq_webhooks;

/* Starts the delivery worker (cfg->webhook_senders threads); cfg must outlive it. */
int tq_webhooks_start(const tq_config *cfg, tq_webhooks **out, tq_errbuf *eb);

/* Stops it: a request in flight is aborted (its row is due again at once). NULL is fine. */
void tq_webhooks_stop(tq_webhooks *w);

#endif
