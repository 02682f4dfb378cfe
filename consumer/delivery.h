/*
 * delivery — what the dispatcher still needs of a delivery once it has been read, taken out
 * of its rabbitmq-c envelope, so that the envelope can go at once.
 *
 * Why: rabbitmq-c gives every envelope a properties pool of its own, one 4 KB page, and the
 * dispatcher holds up to a whole intake batch (256 deliveries) until the batch is stored;
 * the envelopes alone would keep about 1 MB of a consumer's memory (issue 11's footprint).
 * A taken delivery keeps the body's own allocation (taken over, not copied) and one block
 * of strings and headers: a few hundred bytes for a job message (at most 16 strings of 256
 * bytes, and the headers in wire form).
 */
#ifndef TQ_DELIVERY_H
#define TQ_DELIVERY_H

#include <amqp.h>
#include <stddef.h>
#include <stdint.h>

#include "cdb.h"

/* A delivery's headers are kept for its copies up to this size in wire form (an AMQP field
 * table, 4-byte length included); a message with more is dead-lettered for it (dispatch.c). */
#define TQ_DELIVERY_HEADERS_MAX 16384

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
    /* What a copy of the delivery (a give-back, a dead letter) is published with, so that
     * it keeps everything its publisher set: every property but user_id (RabbitMQ refuses
     * a user_id other than the publishing connection's user) and headers, whose field
     * table is in `headers` instead. Byte fields point into `strings`. */
    amqp_basic_properties_t props;
    /* The headers but those RabbitMQ set on a redelivery or a dead-lettering of its own
     * (x-delivery-count, x-death, x-first-death-*, x-last-death-*), as a field table in wire
     * form (amqp_encode_table); len 0 when none, or when they did not fit in
     * TQ_DELIVERY_HEADERS_MAX: then headers_too_big is 1. */
    amqp_bytes_t headers;
    int headers_too_big;
    /* The first of routing key, message_id, reply_to and correlation_id that holds a NUL
     * byte ("message_id", ...), NULL when none does: as C strings they would be cut there
     * (a correlation_id stored short, a message_id "<job id>\0x" taken for the job id), so
     * such a message is dead-lettered instead (with no reply and no correlation_id on its
     * event when it is one of those two). */
    const char *nul_in;
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
