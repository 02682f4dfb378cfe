/*
 * delivery — a delivery copied out of its envelope (delivery.h says why).
 *
 * What must stay true: every string is a C string cut where the dispatcher cut it before
 * (short strings whole, header keys and values at TQ_DELIVERY_KV_BUF - 1 bytes), so a
 * give-back or a dead-letter copy publishes the same bytes as when it read the envelope;
 * one allocation holds them all, sized exactly in a first pass.
 */
#include "delivery.h"

#include <stdlib.h>
#include <string.h>

#include "tq_err.h"
#include "tq_utf8.h"

/* The bytes of b as a C string, cut to cap - 1 bytes. */
static size_t cut_len(amqp_bytes_t b, size_t cap)
{
    return b.len < cap - 1 ? b.len : cap - 1;
}

/* Whether header entry e is one a give-back copies (delivery.h). */
static int copied_header(const amqp_table_entry_t *e)
{
    if (e->value.kind != AMQP_FIELD_KIND_UTF8 && e->value.kind != AMQP_FIELD_KIND_BYTES)
        return 0;
    return !(e->key.len >= 2 && memcmp(e->key.bytes, "x-", 2) == 0) ||
           (e->key.len > 9 && memcmp(e->key.bytes, "x-trainq-", 9) == 0);
}

/* Appends b (cut to cap - 1 bytes) at *at as a C string; returns where it starts. */
static char *put(char **at, amqp_bytes_t b, size_t cap)
{
    char *s = *at;
    size_t n = cut_len(b, cap);
    if (n) /* an empty property has bytes == NULL */
        memcpy(s, b.bytes, n);
    s[n] = '\0';
    *at += n + 1;
    return s;
}

int tq_delivery_copy(const amqp_envelope_t *env, tq_delivery *out)
{
    memset(out, 0, sizeof *out);
    static const amqp_bytes_t none = {0, NULL};
    const amqp_basic_properties_t *p = &env->message.properties;
    const amqp_table_t *h = p->_flags & AMQP_BASIC_HEADERS_FLAG ? &p->headers : NULL;
    amqp_bytes_t mid = p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG ? p->message_id : none;
    amqp_bytes_t ct = p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG ? p->content_type : none;
    amqp_bytes_t rt = p->_flags & AMQP_BASIC_REPLY_TO_FLAG ? p->reply_to : none;
    amqp_bytes_t cid = p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG ? p->correlation_id : none;
    const size_t sc = 256; /* a short string and its NUL */

    size_t size = env->message.body.len + 1 + cut_len(env->routing_key, sc) + 1 + cut_len(mid, sc) +
                  1 + cut_len(ct, sc) + 1 + cut_len(rt, sc) + 1 + cut_len(cid, sc) + 1;
    size_t n_kv = 0;
    for (int i = 0; h && i < h->num_entries && n_kv + 2 <= TQ_DELIVERY_KV_MAX; i++)
        if (copied_header(&h->entries[i])) {
            size += cut_len(h->entries[i].key, TQ_DELIVERY_KV_BUF) + 1 +
                    cut_len(h->entries[i].value.value.bytes, TQ_DELIVERY_KV_BUF) + 1;
            n_kv += 2;
        }
    char *at = malloc(size);
    if (!at)
        return TQ_ERR_NOMEM;
    out->mem = at;
    out->tag = env->delivery_tag;
    out->body = put(&at, env->message.body, env->message.body.len + 1);
    out->body_len = env->message.body.len;
    out->routing_key = put(&at, env->routing_key, sc);
    out->message_id = put(&at, mid, sc);
    out->content_type = put(&at, ct, sc);
    if (!(p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG))
        out->content_type = NULL;
    char *reply_to = put(&at, rt, sc), *correlation_id = put(&at, cid, sc);
    /* valid UTF-8 for Postgres: such a queue only gets its replies returned and dropped */
    tq_utf8_sanitize(reply_to, strlen(reply_to));
    tq_utf8_sanitize(correlation_id, strlen(correlation_id));
    if (strncmp(reply_to, "trainq.", 7) == 0) {
        out->reply_refused = 1;
        reply_to[0] = '\0';
    }
    out->reply.reply_to = reply_to;
    out->reply.correlation_id = correlation_id;
    for (int i = 0; h && i < h->num_entries && out->n_kv < n_kv; i++)
        if (copied_header(&h->entries[i])) {
            out->kv[out->n_kv++] = put(&at, h->entries[i].key, TQ_DELIVERY_KV_BUF);
            out->kv[out->n_kv++] = put(&at, h->entries[i].value.value.bytes, TQ_DELIVERY_KV_BUF);
        }
    return TQ_OK;
}

void tq_delivery_free(tq_delivery *d)
{
    free(d->mem);
    memset(d, 0, sizeof *d);
}
