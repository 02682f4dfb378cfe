/* Unit tests for a delivery taken out of its envelope (consumer/delivery.h): every field
 * the dispatcher settles with, the body moved (not copied), the properties and headers a
 * copy keeps and those it must not, the reply address made safe, and the headers' cap. Envelopes
 * are built by hand, as rabbitmq-c fills them (the body its own allocation). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "delivery.h"
#include "tq_err.h"
#include "tq_sign.h"

static amqp_bytes_t bytes(const char *s)
{
    amqp_bytes_t b = {strlen(s), (void *)s};
    return b;
}

static amqp_table_entry_t str_entry(const char *key, const char *value)
{
    amqp_table_entry_t e;
    memset(&e, 0, sizeof e);
    e.key = bytes(key);
    e.value.kind = AMQP_FIELD_KIND_UTF8;
    e.value.value.bytes = bytes(value);
    return e;
}

static amqp_table_entry_t int_entry(const char *key, int64_t v)
{
    amqp_table_entry_t e;
    memset(&e, 0, sizeof e);
    e.key = bytes(key);
    e.value.kind = AMQP_FIELD_KIND_I64;
    e.value.value.i64 = v;
    return e;
}

static void envelope(amqp_envelope_t *env, uint64_t tag, const char *rk, const void *body,
                     size_t body_len)
{
    memset(env, 0, sizeof *env);
    env->delivery_tag = tag;
    env->routing_key = amqp_bytes_malloc_dup(bytes(rk)); /* amqp_destroy_envelope frees it */
    if (body_len) { /* rabbitmq-c's empty body is amqp_empty_bytes */
        amqp_bytes_t b = {body_len, (void *)body};
        env->message.body = amqp_bytes_malloc_dup(b);
        assert_non_null(env->message.body.bytes);
    }
}

static void every_field_is_kept_and_the_body_moved_whole(void **state)
{
    (void)state;
    static const char body[] = {'{', '"', 'a', '"', 0, ':', '1', '}'}; /* a NUL inside */
    amqp_envelope_t env;
    envelope(&env, 42, "lora", body, sizeof body);
    amqp_basic_properties_t *p = &env.message.properties;
    p->_flags = AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG |
                AMQP_BASIC_REPLY_TO_FLAG | AMQP_BASIC_CORRELATION_ID_FLAG |
                AMQP_BASIC_CONTENT_ENCODING_FLAG | AMQP_BASIC_TYPE_FLAG | AMQP_BASIC_APP_ID_FLAG |
                AMQP_BASIC_USER_ID_FLAG | AMQP_BASIC_PRIORITY_FLAG | AMQP_BASIC_TIMESTAMP_FLAG |
                AMQP_BASIC_EXPIRATION_FLAG | AMQP_BASIC_CLUSTER_ID_FLAG;
    p->message_id = bytes("7d0c0d4e-8a54-4d55-9d8e-1b1b3c0c0a01");
    p->content_type = bytes("application/json");
    p->reply_to = bytes("amq.rabbitmq.reply-to.g1h");
    p->correlation_id = bytes("req-17");
    p->content_encoding = bytes("identity");
    p->type = bytes("trainq.job.v1");
    p->app_id = bytes("billing");
    p->user_id = bytes("billing-svc");
    p->expiration = bytes("60000");
    p->cluster_id = bytes("c1");
    p->priority = 3;
    p->timestamp = 1234567890;

    void *received = env.message.body.bytes;
    tq_delivery dl;
    assert_int_equal(tq_delivery_take(&env, &dl), TQ_OK);
    assert_int_equal(dl.tag, 42);
    assert_string_equal(dl.routing_key, "lora");
    assert_string_equal(dl.message_id, "7d0c0d4e-8a54-4d55-9d8e-1b1b3c0c0a01");
    assert_string_equal(dl.content_type, "application/json");
    assert_int_equal(dl.body.len, sizeof body);
    assert_memory_equal(dl.body.bytes, body, sizeof body);
    assert_ptr_equal(dl.body.bytes, received); /* moved, not copied ... */
    assert_null(env.message.body.bytes);       /* ... so destroying env frees no body */
    assert_int_equal(env.message.body.len, 0);
    assert_string_equal(dl.reply.reply_to, "amq.rabbitmq.reply-to.g1h");
    assert_string_equal(dl.reply.correlation_id, "req-17");
    assert_null(dl.refused_reply_to);
    assert_int_equal(dl.headers.len, 0);
    assert_int_equal(dl.headers_too_big, 0);
    amqp_destroy_envelope(&env); /* ASan and LeakSanitizer watch both frees */
    /* A copy's properties: all the publisher set but user_id, in the delivery's own memory
     * (env is gone). */
    const amqp_basic_properties_t *c = &dl.props;
    assert_int_equal(c->_flags, (p->_flags & ~AMQP_BASIC_USER_ID_FLAG));
    const struct {
        amqp_bytes_t got;
        const char *want;
    } kept[] = {
        {c->message_id, "7d0c0d4e-8a54-4d55-9d8e-1b1b3c0c0a01"},
        {c->content_type, "application/json"},
        {c->reply_to, "amq.rabbitmq.reply-to.g1h"},
        {c->correlation_id, "req-17"},
        {c->content_encoding, "identity"},
        {c->type, "trainq.job.v1"},
        {c->app_id, "billing"},
        {c->expiration, "60000"},
        {c->cluster_id, "c1"},
    };
    for (size_t i = 0; i < sizeof kept / sizeof kept[0]; i++) {
        assert_int_equal(kept[i].got.len, strlen(kept[i].want));
        assert_memory_equal(kept[i].got.bytes, kept[i].want, kept[i].got.len);
        assert_true((char *)kept[i].got.bytes >= dl.strings);
    }
    assert_int_equal(c->priority, 3);
    assert_int_equal(c->timestamp, 1234567890);
    tq_delivery_free(&dl);
    assert_null(dl.strings);
    assert_null(dl.body.bytes);
    tq_delivery_free(&dl); /* twice is safe */
}

static void absent_properties_read_as_empty_and_no_content_type(void **state)
{
    (void)state;
    amqp_envelope_t env;
    envelope(&env, 1, "", NULL, 0);
    tq_delivery dl;
    assert_int_equal(tq_delivery_take(&env, &dl), TQ_OK);
    assert_string_equal(dl.routing_key, "");
    assert_string_equal(dl.message_id, "");
    assert_null(dl.content_type);
    assert_int_equal(dl.body.len, 0);
    assert_string_equal(dl.reply.reply_to, "");
    assert_string_equal(dl.reply.correlation_id, "");
    tq_delivery_free(&dl);
    amqp_destroy_envelope(&env);
}

/* The kept headers of dl, decoded from their wire form. */
static amqp_table_t kept_headers(const tq_delivery *dl, amqp_pool_t *pool)
{
    amqp_table_t t = amqp_empty_table;
    size_t off = 0;
    assert_int_equal(amqp_decode_table(dl->headers, pool, &t, &off), AMQP_STATUS_OK);
    assert_int_equal(off, dl->headers.len);
    return t;
}

static void the_publishers_and_trainqs_headers_are_kept_of_every_kind(void **state)
{
    (void)state;
    amqp_table_entry_t e[] = {
        str_entry(TQ_SIGN_KEY_ID_HEADER, "k1"),
        int_entry("x-delivery-count", 3),              /* the broker's */
        str_entry("x-first-death-reason", "rejected"), /* the broker's */
        str_entry("x-death", "[]"),                    /* the broker's (a table there) */
        str_entry("x-last-death-queue", "q"),          /* the broker's */
        str_entry("x-custom", "mine"),                 /* the publisher's own x-* */
        str_entry("tenant", "acme"),
        int_entry("attempt", 2), /* not a string: kept all the same */
        str_entry(TQ_SIGN_SIGNATURE_HEADER, "c2ln"),
    };
    e[6].value.kind = AMQP_FIELD_KIND_BYTES;
    amqp_envelope_t env;
    envelope(&env, 2, "lora", "{}", 2);
    env.message.properties._flags = AMQP_BASIC_HEADERS_FLAG;
    env.message.properties.headers.num_entries = (int)(sizeof e / sizeof e[0]);
    env.message.properties.headers.entries = e;
    tq_delivery dl;
    assert_int_equal(tq_delivery_take(&env, &dl), TQ_OK);
    amqp_destroy_envelope(&env);
    assert_int_equal(dl.headers_too_big, 0);
    assert_false(dl.props._flags & AMQP_BASIC_HEADERS_FLAG); /* they travel in wire form */
    amqp_pool_t pool;
    init_amqp_pool(&pool, 512);
    amqp_table_t t = kept_headers(&dl, &pool);
    assert_int_equal(t.num_entries, 5);
    const char *keys[] = {TQ_SIGN_KEY_ID_HEADER, "x-custom", "tenant", "attempt",
                          TQ_SIGN_SIGNATURE_HEADER};
    for (int i = 0; i < 5; i++) {
        assert_int_equal(t.entries[i].key.len, strlen(keys[i]));
        assert_memory_equal(t.entries[i].key.bytes, keys[i], strlen(keys[i]));
    }
    assert_int_equal(t.entries[2].value.kind, AMQP_FIELD_KIND_BYTES);
    assert_memory_equal(t.entries[2].value.value.bytes.bytes, "acme", 4);
    assert_int_equal(t.entries[3].value.kind, AMQP_FIELD_KIND_I64);
    assert_int_equal(t.entries[3].value.value.i64, 2);
    empty_amqp_pool(&pool);
    tq_delivery_free(&dl);
}

static void headers_are_kept_whole_up_to_the_cap_and_not_beyond(void **state)
{
    (void)state;
    static char long_value[TQ_DELIVERY_HEADERS_MAX / 2];
    memset(long_value, 'v', sizeof long_value - 1);
    char keys[3][8];
    amqp_table_entry_t e[3];
    for (int i = 0; i < 3; i++) {
        snprintf(keys[i], sizeof keys[i], "h%d", i);
        e[i] = str_entry(keys[i], i == 0 ? long_value : "v");
    }
    amqp_envelope_t env;
    envelope(&env, 3, "lora", "{}", 2);
    env.message.properties._flags = AMQP_BASIC_HEADERS_FLAG;
    env.message.properties.headers.num_entries = 3;
    env.message.properties.headers.entries = e;
    tq_delivery dl;
    assert_int_equal(tq_delivery_take(&env, &dl), TQ_OK); /* one long value: whole */
    assert_int_equal(dl.headers_too_big, 0);
    amqp_pool_t pool;
    init_amqp_pool(&pool, 512);
    amqp_table_t t = kept_headers(&dl, &pool);
    assert_int_equal(t.num_entries, 3);
    assert_int_equal(t.entries[0].value.value.bytes.len, sizeof long_value - 1);
    empty_amqp_pool(&pool);
    tq_delivery_free(&dl);

    e[1] = str_entry(keys[1], long_value); /* two of them: over the cap */
    assert_int_equal(tq_delivery_take(&env, &dl), TQ_OK);
    assert_int_equal(dl.headers_too_big, 1);
    assert_int_equal(dl.headers.len, 0);
    tq_delivery_free(&dl);
    amqp_destroy_envelope(&env);
}

static void a_reply_to_a_trainq_queue_is_refused_and_bad_utf8_replaced(void **state)
{
    (void)state;
    amqp_envelope_t env;
    envelope(&env, 4, "lora", "{}", 2);
    amqp_basic_properties_t *p = &env.message.properties;
    p->_flags = AMQP_BASIC_REPLY_TO_FLAG | AMQP_BASIC_CORRELATION_ID_FLAG;
    p->reply_to = bytes("trainq.jobs");
    p->correlation_id = bytes("id-\xff-x");
    tq_delivery dl;
    assert_int_equal(tq_delivery_take(&env, &dl), TQ_OK);
    assert_string_equal(dl.refused_reply_to, "trainq.jobs"); /* for the warning */
    assert_string_equal(dl.reply.reply_to, "");
    assert_string_equal(dl.reply.correlation_id, "id-?-x");
    tq_delivery_free(&dl);

    p->reply_to = bytes("my.replies\xc3");
    assert_int_equal(tq_delivery_take(&env, &dl), TQ_OK);
    assert_null(dl.refused_reply_to);
    assert_string_equal(dl.reply.reply_to, "my.replies?");
    tq_delivery_free(&dl);
    amqp_destroy_envelope(&env);
}

static void a_named_header_is_read_only_as_a_string(void **state)
{
    (void)state;
    amqp_table_entry_t e[] = {
        str_entry("x-trainq-key-id", "k1"),
        int_entry("x-trainq-signature", 7), /* present, not a string */
        str_entry("tenant", ""),
    };
    e[0].value.kind = AMQP_FIELD_KIND_BYTES; /* bytes count as a string */
    amqp_envelope_t env;
    envelope(&env, 3, "lora", "{}", 2);
    const char *v = NULL;
    size_t n = 99;
    assert_int_equal(tq_delivery_header(&env, "x-trainq-key-id", &v, &n), 0); /* no headers */
    env.message.properties._flags = AMQP_BASIC_HEADERS_FLAG;
    env.message.properties.headers.num_entries = (int)(sizeof e / sizeof e[0]);
    env.message.properties.headers.entries = e;
    assert_int_equal(tq_delivery_header(&env, "x-trainq-key-id", &v, &n), 1);
    assert_int_equal(n, 2);
    assert_memory_equal(v, "k1", 2);
    assert_int_equal(tq_delivery_header(&env, "x-trainq-signature", &v, &n), -1);
    assert_int_equal(tq_delivery_header(&env, "tenant", &v, &n), 1);
    assert_int_equal(n, 0);
    assert_string_equal(v, "");
    assert_int_equal(tq_delivery_header(&env, "x-trainq-key", &v, &n), 0); /* a prefix only */
    assert_int_equal(tq_delivery_header(&env, "tenants", &v, &n), 0);
    amqp_destroy_envelope(&env);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_field_is_kept_and_the_body_moved_whole),
        cmocka_unit_test(absent_properties_read_as_empty_and_no_content_type),
        cmocka_unit_test(the_publishers_and_trainqs_headers_are_kept_of_every_kind),
        cmocka_unit_test(headers_are_kept_whole_up_to_the_cap_and_not_beyond),
        cmocka_unit_test(a_reply_to_a_trainq_queue_is_refused_and_bad_utf8_replaced),
        cmocka_unit_test(a_named_header_is_read_only_as_a_string),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
