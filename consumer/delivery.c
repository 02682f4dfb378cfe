/*
 * delivery — a delivery taken out of its envelope (delivery.h says why).
 *
 * What must stay true: a give-back or a dead-letter copy publishes what the delivery
 * carried: the body as received (its allocation is moved, never copied or cut), routing
 * key, message id and content type whole (AMQP short strings), header keys and values cut
 * at TQ_DELIVERY_KV_BUF - 1 bytes as the give-back always cut them. One allocation holds
 * the strings, sized exactly in a first pass.
 */
#include "delivery.h"

#include <stdlib.h>
#include <string.h>

#include "tq_err.h"
#include "tq_utf8.h"

/* An AMQP short string and its NUL. */
#define SHORT_BUF 256

/* The bytes of b as a C string, cut to cap - 1 bytes. */
static size_t cut_len(amqp_bytes_t b, size_t cap)
{
    return b.len < cap - 1 ? b.len : cap - 1;
}

/* Whether a header table entry holds a string (AMQP longstr, or bytes). */
static int string_entry(const amqp_table_entry_t *e)
{
    return e->value.kind == AMQP_FIELD_KIND_UTF8 || e->value.kind == AMQP_FIELD_KIND_BYTES;
}

/* Whether header entry e is one a give-back copies (delivery.h). */
static int copied_header(const amqp_table_entry_t *e)
{
    if (!string_entry(e))
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

int tq_delivery_take(amqp_envelope_t *env, tq_delivery *out)
{
    memset(out, 0, sizeof *out);
    const amqp_basic_properties_t *p = &env->message.properties;
    const amqp_table_t *h = p->_flags & AMQP_BASIC_HEADERS_FLAG ? &p->headers : NULL;
    amqp_bytes_t mid = p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG ? p->message_id : amqp_empty_bytes;
    amqp_bytes_t ct = p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG ? p->content_type : amqp_empty_bytes;
    amqp_bytes_t rt = p->_flags & AMQP_BASIC_REPLY_TO_FLAG ? p->reply_to : amqp_empty_bytes;
    amqp_bytes_t cid =
        p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG ? p->correlation_id : amqp_empty_bytes;

    size_t size = cut_len(env->routing_key, SHORT_BUF) + 1 + cut_len(mid, SHORT_BUF) + 1 +
                  cut_len(ct, SHORT_BUF) + 1 + cut_len(rt, SHORT_BUF) + 1 +
                  cut_len(cid, SHORT_BUF) + 1;
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
    out->strings = at;
    out->tag = env->delivery_tag;
    out->routing_key = put(&at, env->routing_key, SHORT_BUF);
    out->message_id = put(&at, mid, SHORT_BUF);
    out->content_type = put(&at, ct, SHORT_BUF);
    if (!(p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG))
        out->content_type = NULL;
    char *reply_to = put(&at, rt, SHORT_BUF), *correlation_id = put(&at, cid, SHORT_BUF);
    /* valid UTF-8 for Postgres: such a queue only gets its replies returned and dropped */
    tq_utf8_sanitize(reply_to, strlen(reply_to));
    tq_utf8_sanitize(correlation_id, strlen(correlation_id));
    out->reply.reply_to = reply_to;
    out->reply.correlation_id = correlation_id;
    if (strncmp(reply_to, "trainq.", 7) == 0) {
        out->refused_reply_to = reply_to;
        out->reply.reply_to = "";
    }
    for (int i = 0; h && i < h->num_entries && out->n_kv < n_kv; i++)
        if (copied_header(&h->entries[i])) {
            out->kv[out->n_kv++] = put(&at, h->entries[i].key, TQ_DELIVERY_KV_BUF);
            out->kv[out->n_kv++] = put(&at, h->entries[i].value.value.bytes, TQ_DELIVERY_KV_BUF);
        }
    /* rabbitmq-c allocated it with amqp_bytes_malloc; amqp_destroy_envelope frees none */
    out->body = env->message.body;
    env->message.body = amqp_empty_bytes;
    return TQ_OK;
}

void tq_delivery_free(tq_delivery *d)
{
    amqp_bytes_free(d->body);
    free(d->strings);
    memset(d, 0, sizeof *d);
}

int tq_delivery_header(const amqp_envelope_t *env, const char *name, const char **v, size_t *n)
{
    if (!(env->message.properties._flags & AMQP_BASIC_HEADERS_FLAG))
        return 0;
    const amqp_table_t *t = &env->message.properties.headers;
    size_t nl = strlen(name);
    for (int i = 0; i < t->num_entries; i++) {
        const amqp_table_entry_t *e = &t->entries[i];
        if (e->key.len != nl || memcmp(e->key.bytes, name, nl) != 0)
            continue;
        if (!string_entry(e))
            return -1;
        *v = e->value.value.bytes.len ? e->value.value.bytes.bytes : "";
        *n = e->value.value.bytes.len;
        return 1;
    }
    return 0;
}
