/*
 * delivery — a delivery taken out of its envelope (delivery.h says why).
 *
 * What must stay true: a give-back or a dead-letter copy publishes what the delivery
 * carried: the body as received (its allocation is moved, never copied or cut), every
 * property whole (AMQP short strings) but user_id, and the headers but the broker's own,
 * in wire form, whole or not at all (headers_too_big). One allocation holds the strings
 * and the headers, sized exactly in a first pass.
 */
#include "delivery.h"

#include <stddef.h>
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

/* Whether key k starts with prefix p. */
static int key_starts(amqp_bytes_t k, const char *p)
{
    size_t n = strlen(p);
    return k.len >= n && memcmp(k.bytes, p, n) == 0;
}

/* Whether header entry e is one a copy keeps (delivery.h): all but those RabbitMQ sets on a
 * redelivery or its own dead-lettering, which would be stale on a new message. Other x-*
 * are the publisher's (an old custom-header habit). */
static int copied_header(const amqp_table_entry_t *e)
{
    amqp_bytes_t k = e->key;
    return !(k.len == 16 && key_starts(k, "x-delivery-count")) &&
           !(k.len == 7 && key_starts(k, "x-death")) && !key_starts(k, "x-first-death-") &&
           !key_starts(k, "x-last-death-");
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

/* The byte properties a copy keeps as they came (short strings: always whole). user_id is
 * not among them (delivery.h); message_id and content_type point at the fields above. */
static const struct {
    amqp_flags_t flag;
    size_t off;
} KEPT[] = {
    {AMQP_BASIC_CONTENT_ENCODING_FLAG, offsetof(amqp_basic_properties_t, content_encoding)},
    {AMQP_BASIC_CORRELATION_ID_FLAG, offsetof(amqp_basic_properties_t, correlation_id)},
    {AMQP_BASIC_REPLY_TO_FLAG, offsetof(amqp_basic_properties_t, reply_to)},
    {AMQP_BASIC_EXPIRATION_FLAG, offsetof(amqp_basic_properties_t, expiration)},
    {AMQP_BASIC_TYPE_FLAG, offsetof(amqp_basic_properties_t, type)},
    {AMQP_BASIC_APP_ID_FLAG, offsetof(amqp_basic_properties_t, app_id)},
    {AMQP_BASIC_CLUSTER_ID_FLAG, offsetof(amqp_basic_properties_t, cluster_id)},
};
#define N_KEPT (sizeof KEPT / sizeof KEPT[0])

static amqp_bytes_t *prop(amqp_basic_properties_t *p, size_t i)
{
    return (amqp_bytes_t *)(void *)((char *)p + KEPT[i].off);
}

/* The headers a copy keeps, in wire form, into a buffer of TQ_DELIVERY_HEADERS_MAX: TQ_OK
 * with *len (0: none to keep), TQ_ERR_TOO_LARGE, or TQ_ERR_NOMEM. */
static int encode_headers(const amqp_table_t *h, unsigned char *buf, size_t *len)
{
    *len = 0;
    if (!h || h->num_entries <= 0)
        return TQ_OK;
    amqp_table_entry_t *kept = malloc((size_t)h->num_entries * sizeof *kept);
    if (!kept)
        return TQ_ERR_NOMEM;
    amqp_table_t t = {0, kept};
    for (int i = 0; i < h->num_entries; i++)
        if (copied_header(&h->entries[i]))
            kept[t.num_entries++] = h->entries[i];
    int rc = TQ_OK;
    if (t.num_entries > 0) {
        amqp_bytes_t out = {TQ_DELIVERY_HEADERS_MAX, buf};
        size_t off = 0;
        int st = amqp_encode_table(out, &t, &off);
        if (st == AMQP_STATUS_OK)
            *len = off;
        else
            rc = st == AMQP_STATUS_NO_MEMORY ? TQ_ERR_NOMEM : TQ_ERR_TOO_LARGE;
    }
    free(kept);
    return rc;
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

    unsigned char *hbuf = h ? malloc(TQ_DELIVERY_HEADERS_MAX) : NULL;
    size_t hlen = 0;
    int hrc = h ? (hbuf ? encode_headers(h, hbuf, &hlen) : TQ_ERR_NOMEM) : TQ_OK;
    if (hrc == TQ_ERR_NOMEM) {
        free(hbuf);
        return TQ_ERR_NOMEM;
    }
    amqp_basic_properties_t props = *p;
    props._flags &= (amqp_flags_t) ~(AMQP_BASIC_USER_ID_FLAG | AMQP_BASIC_HEADERS_FLAG);
    props.headers = amqp_empty_table;

    size_t size = cut_len(env->routing_key, SHORT_BUF) + 1 + cut_len(mid, SHORT_BUF) + 1 +
                  cut_len(ct, SHORT_BUF) + 1 + cut_len(rt, SHORT_BUF) + 1 +
                  cut_len(cid, SHORT_BUF) + 1 + hlen;
    for (size_t i = 0; i < N_KEPT; i++)
        if (props._flags & KEPT[i].flag)
            size += cut_len(*prop(&props, i), SHORT_BUF) + 1;
    char *at = malloc(size);
    if (!at) {
        free(hbuf);
        return TQ_ERR_NOMEM;
    }
    out->strings = at;
    out->tag = env->delivery_tag;
    out->routing_key = put(&at, env->routing_key, SHORT_BUF);
    out->message_id = put(&at, mid, SHORT_BUF);
    out->content_type = put(&at, ct, SHORT_BUF);
    if (!(p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG))
        out->content_type = NULL;
    props.message_id.bytes = (void *)out->message_id;
    props.content_type.bytes = (void *)out->content_type;
    for (size_t i = 0; i < N_KEPT; i++)
        if (props._flags & KEPT[i].flag)
            prop(&props, i)->bytes = put(&at, *prop(&props, i), SHORT_BUF);
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
    if (hlen) {
        memcpy(at, hbuf, hlen);
        out->headers.bytes = at;
        out->headers.len = hlen;
    }
    free(hbuf);
    out->headers_too_big = hrc == TQ_ERR_TOO_LARGE;
    const struct {
        const char *name;
        amqp_bytes_t v;
    } named[] = {{"routing key", env->routing_key},
                 {"message_id", mid},
                 {"reply_to", rt},
                 {"correlation_id", cid}};
    for (size_t i = 0; i < sizeof named / sizeof named[0] && !out->nul_in; i++)
        if (named[i].v.len && memchr(named[i].v.bytes, '\0', named[i].v.len))
            out->nul_in = named[i].name;
    /* Cut at the NUL, they would name another queue or another request: the dead letter's
     * event then goes to no reply queue and carries no correlation_id. */
    if (out->nul_in && (out->nul_in == named[2].name || out->nul_in == named[3].name)) {
        out->reply.reply_to = "";
        out->reply.correlation_id = "";
        out->refused_reply_to = NULL;
    }
    out->props = props;
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
