/*
 * tq_amqp — one RabbitMQ connection (rabbitmq-c 0.11) with channel 1 open, used by the
 * outbox relay, the consumer's consume loop and its dead-letter publisher.
 *
 * What must stay true:
 *  - one tq_amqp per thread: rabbitmq-c connections are not thread-safe;
 *  - every amqp_rpc_reply_t is decoded by tq_amqp_check_reply, which also keeps the
 *    wrapper's state honest: a channel closed by the broker is reopened on next use
 *    (tq_amqp_channel), a connection closed by the broker or a socket error marks the
 *    wrapper dead (tq_amqp_alive() == 0) and the caller must tq_amqp_close() it and
 *    connect again;
 *  - a wrapper used for tq_amqp_publish_confirmed() must not also consume: deliveries
 *    that arrive while waiting for confirms are not kept.
 *
 * Headers live in /usr/include (<amqp.h>, <amqp_tcp_socket.h>) on Debian 12's 0.11.
 */
#ifndef TQ_AMQP_H
#define TQ_AMQP_H

#include <amqp.h>
#include <stdatomic.h>
#include <stddef.h>

#include "tq_err.h"

/* The topology (declared by tq_amqp_declare_topology). */
#define TQ_AMQP_EXCHANGE "trainq.jobs"        /* direct, durable; routing key = job type */
#define TQ_AMQP_DLX "trainq.jobs.dlx"         /* fanout, durable */
#define TQ_AMQP_QUEUE "trainq.jobs"           /* quorum, delivery limit, dead-letters to DLX */
#define TQ_AMQP_DEAD_QUEUE "trainq.jobs.dead" /* quorum, bound to the DLX */
/* topic, durable; routing key job.<status>.<type>: job events (docs/message-contract.md) */
#define TQ_AMQP_EVENTS "trainq.events"
#define TQ_AMQP_DELIVERY_LIMIT 5
#define TQ_AMQP_CHANNEL 1
#define TQ_AMQP_DEFAULT_HEARTBEAT 30

typedef struct tq_amqp tq_amqp;

/* A url list names the nodes of one cluster: at most this many. */
#define TQ_AMQP_MAX_NODES 16

/* url is one node, amqp://user:pass@host:port/vhost, or a comma-separated list of such
 * nodes of one cluster (blanks around commas ignored; every node must name the same vhost;
 * not modified). Tries the nodes in turn, starting at a rotating one (random per process),
 * until one accepts: opens the socket with a 5 s timeout, logs in with the given heartbeat
 * (<= 0: 30 s) and client property connection_name, and opens channel 1. There is no
 * failover inside a connection: when its node dies the wrapper turns dead and the caller's
 * next tq_amqp_connect lands on a node that is up. *out is caller-owned: tq_amqp_close() it.
 * Errors (of the last node tried when all failed): TQ_ERR_CONFIG (bad url),
 * TQ_ERR_UNAVAILABLE (cannot connect), TQ_ERR_AUTH (login refused), TQ_ERR_AMQP (other
 * broker refusal). */
int tq_amqp_connect(const char *url, const char *conn_name, int heartbeat_s, tq_amqp **out,
                    tq_errbuf *eb);

/* Checks that url (one node or a list, as tq_amqp_connect takes it) parses, for
 * configuration checks at start: TQ_OK or TQ_ERR_CONFIG. Messages never quote the url. */
int tq_amqp_url_check(const char *url, tq_errbuf *eb);

/* The number of nodes in a valid url list (>= 1), or TQ_ERR_CONFIG. */
int tq_amqp_url_nodes(const char *urls, tq_errbuf *eb);

/* x-quorum-initial-group-size for quorum queues declared through a list of n_nodes nodes:
 * min(3, n_nodes) for a list, 0 (argument left out: the broker's default) for one url. */
int tq_amqp_quorum_group_size(int n_nodes);

/* Closes channel and connection politely (bounded by a 5 s rpc timeout) and frees a.
 * NULL is fine. */
void tq_amqp_close(tq_amqp *a);

/* 1 while the connection is usable, 0 once the broker closed it or the socket failed. */
int tq_amqp_alive(const tq_amqp *a);

/* 1 while the broker has this live connection blocked (connection.blocked: a memory or
 * disk alarm; publishes are not read until connection.unblocked), with the broker's reason
 * copied into reason (may be NULL). The state is updated by frames read through
 * tq_amqp_pump, tq_amqp_handle_frame and the confirm wait; the capability is announced at
 * login. Consuming and acking keep working while blocked. */
int tq_amqp_blocked(const tq_amqp *a, char *reason, size_t reason_len);

/* Opts in to waiting out resource alarms: with a flag set (borrowed; NULL: none, the
 * default), tq_amqp_publish_confirmed's clock stops while the connection is blocked, and
 * raising the flag ends such a wait (TQ_ERR_UNAVAILABLE, wrapper dead). The relay uses it
 * with its stop flag. Without one, the timeout runs as always, blocked or not. */
void tq_amqp_set_abort(tq_amqp *a, const atomic_int *flag);

/* fn(arg) is called on the connection's thread right after each connection.blocked or
 * connection.unblocked is read, and about every 500 ms while a confirm wait is paused by a
 * blocked connection, so the owner can publish the state (tq_amqp_blocked) and keep its
 * other duties going during a long alarm. fn must not use the connection. */
void tq_amqp_set_block_hook(tq_amqp *a, void (*fn)(void *arg), void *arg);

/* The underlying connection, borrowed (for amqp_basic_consume, amqp_consume_message, ...).
 * Decode every reply got from it with tq_amqp_check_reply. */
amqp_connection_state_t tq_amqp_state(tq_amqp *a);

/* Makes sure channel 1 is open (reopening it, and re-entering confirm mode when it was
 * selected, after a broker channel close). Returns the channel number (> 0) or a
 * negative tq_err. Consumers must redo basic.qos/basic.consume after a reopen: the
 * return value alone does not say whether it happened, tq_amqp_channel_epoch does. */
int tq_amqp_channel(tq_amqp *a, tq_errbuf *eb);
/* Increments each time channel 1 is (re)opened. */
unsigned tq_amqp_channel_epoch(const tq_amqp *a);

/* The one decoder of amqp_rpc_reply_t. `what` is the failed action in message style
 * ("could not declare queue \"trainq.jobs\""). Normal → TQ_OK. Library exception →
 * TQ_ERR_TIMEOUT / TQ_ERR_NOMEM / TQ_ERR_UNAVAILABLE and the wrapper is marked dead.
 * Broker channel.close → close-ok sent, channel reopened on next use, TQ_ERR_AMQP.
 * Broker connection.close → close-ok sent, wrapper dead; TQ_ERR_UNAVAILABLE for 320
 * (connection forced, e.g. broker shutdown), TQ_ERR_AUTH for 403/530, else TQ_ERR_AMQP.
 * The message includes the reply code and text. */
int tq_amqp_check_reply(tq_amqp *a, amqp_rpc_reply_t r, const char *what, tq_errbuf *eb);

/* Handles a frame that the caller's loop did not expect (e.g. after amqp_consume_message
 * returned AMQP_STATUS_UNEXPECTED_STATE and the caller read the frame with
 * amqp_simple_wait_frame): channel.close / connection.close are answered and recorded as
 * above (returning TQ_ERR_AMQP / TQ_ERR_UNAVAILABLE), basic.return's content is read and
 * dropped; anything else is ignored (TQ_OK). */
int tq_amqp_handle_frame(tq_amqp *a, const amqp_frame_t *f, tq_errbuf *eb);

/* Reads whatever the broker sent without blocking (stale confirms, heartbeats, closes)
 * and sends a heartbeat when one is due. Call it at least every heartbeat/2 seconds on
 * an otherwise idle connection. TQ_OK, or the error that made the wrapper dead. */
int tq_amqp_pump(tq_amqp *a, tq_errbuf *eb);

/* Idempotent, non-destructive declaration of the topology above (both producer and consumer
 * call it): exchanges and bindings are declared as always; a queue is looked up passively
 * first and declared only when missing (with x-quorum-initial-group-size from the url list,
 * see tq_amqp_quorum_group_size), so an existing queue is used with the arguments it was
 * made with and no redeclaration can fail on a differing replica count. */
int tq_amqp_declare_topology(tq_amqp *a, tq_errbuf *eb);

/* The number of ready (not delivered) messages in `queue`, by a passive declare
 * (TQ_ERR_NOT_FOUND when the queue does not exist). Use a connection that does not consume
 * (its deliveries would interleave with the reply). */
int tq_amqp_queue_ready(tq_amqp *a, const char *queue, long long *ready, tq_errbuf *eb);

/* Puts channel 1 in publisher-confirm mode (kept across channel reopens). */
int tq_amqp_confirm_select(tq_amqp *a, tq_errbuf *eb);

/* What the broker said about one message of a confirmed batch. */
typedef enum {
    TQ_AMQP_UNCONFIRMED = 0, /* no verdict: the batch failed before it came (result says why) */
    TQ_AMQP_ACKED,           /* confirmed (basic.ack) and not returned */
    TQ_AMQP_NACKED,          /* refused (basic.nack) */
    TQ_AMQP_RETURNED,        /* unroutable (basic.return, then acked): no queue holds it */
} tq_amqp_verdict;

/* One message of a confirmed batch. All pointers are borrowed for the call. header_kv
 * is n_header_kv strings: key, value, key, value, ... (even, at most 32 strings).
 * content_type NULL means application/json. result/verdict/reason are outputs. */
typedef struct {
    const char *exchange;
    const char *routing_key;
    const char *message_id;
    const char *body;
    size_t body_len;
    const char *content_type;
    const char *const *header_kv;
    size_t n_header_kv;
    /* Sent as the correlation_id property when not NULL (a reply to a job's reply_to). */
    const char *correlation_id;
    /* A copy of a delivery (a give-back, a dead letter): when not NULL these properties
     * are sent as they are, message_id, correlation_id and content_type above ignored
     * (content_type still the default when props has none), with the field table
     * `headers` (wire form, amqp_encode_table; len 0: none) whose entries header_kv
     * replaces or adds to. Always persistent; a missing timestamp is set to now; expiration
     * is dropped when drop_expiration (a dead letter must not expire off its queue, as
     * RabbitMQ's own dead-lettering drops it). */
    const amqp_basic_properties_t *props;
    amqp_bytes_t headers;
    int drop_expiration;
    /* 1: published without the mandatory flag, so never returned (an event nobody is
     * bound to is fine); 0: mandatory, as the comment below says. */
    int not_mandatory;
    int result;              /* TQ_OK: acked; TQ_ERR_AMQP: nacked or returned; else batch error */
    tq_amqp_verdict verdict; /* decide on this, never on the text of reason */
    char reason[128];        /* for logs and outbox.last_error; set when result != TQ_OK */
} tq_amqp_msg;

/* Publishes msgs[0..n) persistent (delivery_mode 2), mandatory, with content_type,
 * message_id and timestamp, on a channel in confirm mode (tq_amqp_confirm_select first),
 * then waits up to timeout_ms in total for every confirm (time while the connection is
 * blocked does not count when an abort flag is set, see tq_amqp_set_abort). Returns TQ_OK when
 * every message has a verdict (msgs[i].verdict ACKED, NACKED or RETURNED) and msgs[i].result TQ_OK
 * (acked) or TQ_ERR_AMQP (nacked or returned). Otherwise the whole batch failed: TQ_ERR_UNAVAILABLE
 * (connection lost: wrapper dead), TQ_ERR_TIMEOUT (no confirm in time: the wrapper is made dead
 * too, because late confirms could not be told apart), TQ_ERR_AMQP (the broker closed the channel),
 * TQ_ERR_NOMEM; every message without a verdict (UNCONFIRMED) then has result = that error and must
 * be treated as not published (it may still have been: publish again, consumers dedup by
 * message_id). */
int tq_amqp_publish_confirmed(tq_amqp *a, tq_amqp_msg *msgs, size_t n, int timeout_ms,
                              tq_errbuf *eb);

#endif
