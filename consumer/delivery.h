/*
 * delivery — what the dispatcher still needs of a delivery once it has been read, taken out
 * of its rabbitmq-c envelope, so that the envelope can go at once.
 *
 * Why: rabbitmq-c gives every envelope a properties pool of its own, one 4 KB page, and the
 * dispatcher holds up to a whole intake batch (256 deliveries) until the batch is stored;
 * the envelopes alone would keep about 1 MB of a consumer's memory (issue 11's footprint).
 * A taken delivery keeps the body's own allocation (taken over, not copied) and one block
 * of strings: a few hundred bytes for a job message (at most 21 strings of 256 bytes).
 */
#ifndef TQ_DELIVERY_H
#define TQ_DELIVERY_H

#include <amqp.h>
#include <stddef.h>
#include <stdint.h>

#include "cdb.h"

/* At most this many strings (key, value, key, value...) of headers are kept ... */
#define TQ_DELIVERY_KV_MAX 16
/* ... each cut to this many bytes with its NUL. */
#define TQ_DELIVERY_KV_BUF 256

typedef struct {
    uint64_t tag;
    /* routing key, message id, content type: AMQP short strings, whole (≤ 255 bytes) */
    const char *routing_key;  /* "" when absent */
    const char *message_id;   /* "" when absent */
    const char *content_type; /* NULL when absent */
    amqp_bytes_t body;        /* owned (rabbitmq-c's allocation); not NUL-terminated */
    /* reply_to and correlation_id, valid UTF-8 (a malformed byte becomes '?'); reply_to
     * is "" when absent or when it names one of trainq's own queues (events there would
     * be taken for jobs): then refused_reply_to is that name, NULL otherwise. */
    tq_reply_addr reply;
    const char *refused_reply_to;
    /* The string headers a give-back copies onto the new message: the publisher's (its
     * signature among them) and trainq's own x-trainq-*; not the broker's x-* (delivery
     * count, x-death) nor any header that is not a string. */
    const char *kv[TQ_DELIVERY_KV_MAX];
    size_t n_kv;
    char *strings; /* owns every string above */
} tq_delivery;

/* Fills *out from env and takes env's body over (env's body is empty afterwards; env still
 * needs amqp_destroy_envelope, and its headers stay readable until then). TQ_OK, or
 * TQ_ERR_NOMEM with *out zeroed and env as it was. */
int tq_delivery_take(amqp_envelope_t *env, tq_delivery *out);

/* The string header name of env (the signature check reads its headers before env goes):
 * 1 found (*v, *n borrowed from env), 0 absent, -1 present with a type other than a
 * string. */
int tq_delivery_header(const amqp_envelope_t *env, const char *name, const char **v, size_t *n);

/* Frees what d owns and zeroes it; safe on a zeroed delivery. */
void tq_delivery_free(tq_delivery *d);

#endif
