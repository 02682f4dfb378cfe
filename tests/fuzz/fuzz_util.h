/*
 * fuzz_util — checks shared by the libFuzzer harnesses (tests/fuzz/fuzz_*.c).
 *
 * A harness aborts (FUZZ_CHECK) when a documented property does not hold, so that
 * libFuzzer records the input as a crash even when no sanitizer fired. Everything here is
 * static: each harness is its own program.
 */
#ifndef TQ_FUZZ_UTIL_H
#define TQ_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tq_job.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond, ...)                                                                      \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz property violated at %s:%d: %s\n  ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Length of the well-formed UTF-8 sequence at s, 0 if malformed (overlong, surrogate,
 * past U+10FFFF, truncated). Written independently of the code under test on purpose. */
static inline size_t fuzz_utf8_seq(const unsigned char *s, size_t avail, uint32_t *cp)
{
    static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    size_t n;
    uint32_t u;
    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    }
    if ((s[0] & 0xE0) == 0xC0)
        n = 2, u = s[0] & 0x1Fu;
    else if ((s[0] & 0xF0) == 0xE0)
        n = 3, u = s[0] & 0x0Fu;
    else if ((s[0] & 0xF8) == 0xF0)
        n = 4, u = s[0] & 0x07u;
    else
        return 0;
    if (n > avail)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        u = (u << 6) | (s[i] & 0x3Fu);
    }
    if (u < min_cp[n] || u > 0x10FFFF || (u >= 0xD800 && u <= 0xDFFF))
        return 0;
    *cp = u;
    return n;
}

/* 1 if s[0..len) is well-formed UTF-8 (no NUL); with no_control, also free of
 * U+0001..U+001F, U+007F..U+009F. */
static inline int fuzz_utf8_ok(const char *s, size_t len, int no_control)
{
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t n = fuzz_utf8_seq(p + i, len - i, &cp);
        if (n == 0 || cp == 0)
            return 0;
        if (no_control && (cp < 0x20 || (cp >= 0x7F && cp <= 0x9F)))
            return 0;
        i += n;
    }
    return 1;
}

/* A fixed-size char array member: NUL-terminated inside its array. */
#define FUZZ_TERMINATED(arr) (memchr((arr), '\0', sizeof(arr)) != NULL)

/* What tq_job.h promises about a validation report after a parse that returned rc. */
static inline void fuzz_check_validation(const tq_validation *v, int rc)
{
    FUZZ_CHECK(v->n <= TQ_VALIDATION_MAX, "n=%zu", v->n);
    if (rc == 0)
        FUZZ_CHECK(v->n == 0, "TQ_OK with %zu errors, first %s: %s", v->n, v->items[0].field,
                   v->items[0].message);
    else
        FUZZ_CHECK(v->n >= 1, "rc=%d with an empty report", rc);
    for (size_t i = 0; i < v->n; i++) {
        const tq_field_error *e = &v->items[i];
        FUZZ_CHECK(FUZZ_TERMINATED(e->field) && FUZZ_TERMINATED(e->message), "item %zu", i);
        FUZZ_CHECK(fuzz_utf8_ok(e->field, strlen(e->field), 1), "field not clean text");
        FUZZ_CHECK(fuzz_utf8_ok(e->message, strlen(e->message), 1), "message not clean text");
        FUZZ_CHECK(e->message[0] != '\0', "empty message for field %s", e->field);
    }
    json_t *j = tq_validation_to_json(v);
    FUZZ_CHECK(j != NULL, "tq_validation_to_json failed");
    FUZZ_CHECK(json_array_size(j) == v->n, "details length");
    json_decref(j);
}

/* Every rule of tq_job.h on a submission that parsed. */
static inline void fuzz_check_submission(const tq_submission *s)
{
    FUZZ_CHECK(FUZZ_TERMINATED(s->dataset_id) && strlen(s->dataset_id) == 36, "dataset_id");
    for (size_t i = 0; i < 36; i++) {
        char c = s->dataset_id[i];
        if (i == 8 || i == 13 || i == 18 || i == 23)
            FUZZ_CHECK(c == '-', "dataset_id dash at %zu", i);
        else
            FUZZ_CHECK((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'),
                       "dataset_id not lowercase hex at %zu: %s", i, s->dataset_id);
    }
    FUZZ_CHECK(s->name != NULL, "name NULL");
    size_t nl = strlen(s->name);
    FUZZ_CHECK(nl >= 1 && nl <= TQ_NAME_MAX_BYTES && fuzz_utf8_ok(s->name, nl, 1), "name");
    FUZZ_CHECK(s->type == TQ_JOB_LORA || s->type == TQ_JOB_DREAMBOOTH, "type %d", (int)s->type);
    FUZZ_CHECK(s->base_model && tq_hf_model_id_valid(s->base_model), "base_model");
    const tq_train_config *c = &s->config;
    FUZZ_CHECK(c->learning_rate >= TQ_LEARNING_RATE_MIN && c->learning_rate <= TQ_LEARNING_RATE_MAX,
               "learning_rate %.17g", c->learning_rate);
    FUZZ_CHECK(c->batch_size >= TQ_BATCH_SIZE_MIN && c->batch_size <= TQ_BATCH_SIZE_MAX, "batch");
    FUZZ_CHECK(c->steps >= TQ_STEPS_MIN && c->steps <= TQ_STEPS_MAX, "steps");
    FUZZ_CHECK(c->resolution >= TQ_RESOLUTION_MIN && c->resolution <= TQ_RESOLUTION_MAX &&
                   c->resolution % TQ_RESOLUTION_MULTIPLE == 0,
               "resolution %d", c->resolution);
    FUZZ_CHECK(c->lora_rank >= TQ_LORA_RANK_MIN && c->lora_rank <= TQ_LORA_RANK_MAX, "rank");
    FUZZ_CHECK(c->lora_alpha >= TQ_LORA_ALPHA_MIN && c->lora_alpha <= TQ_LORA_ALPHA_MAX, "alpha");
    FUZZ_CHECK((s->trigger_words == NULL) == (s->n_trigger_words == 0), "trigger_words NULL iff 0");
    FUZZ_CHECK(s->n_trigger_words <= TQ_TRIGGER_WORDS_MAX, "%zu trigger words", s->n_trigger_words);
    for (size_t i = 0; i < s->n_trigger_words; i++) {
        const char *w = s->trigger_words[i];
        FUZZ_CHECK(w != NULL, "trigger word %zu NULL", i);
        size_t wl = strlen(w);
        FUZZ_CHECK(wl >= 1 && wl <= TQ_TRIGGER_WORD_MAX_BYTES && fuzz_utf8_ok(w, wl, 1),
                   "trigger word %zu", i);
    }
}

/* Field-by-field equality, the learning rate bit for bit. */
static inline int fuzz_submission_equal(const tq_submission *a, const tq_submission *b)
{
    if (strcmp(a->dataset_id, b->dataset_id) != 0 || strcmp(a->name, b->name) != 0 ||
        a->type != b->type || strcmp(a->base_model, b->base_model) != 0 ||
        memcmp(&a->config.learning_rate, &b->config.learning_rate, sizeof(double)) != 0 ||
        a->config.batch_size != b->config.batch_size || a->config.steps != b->config.steps ||
        a->config.resolution != b->config.resolution ||
        a->config.lora_rank != b->config.lora_rank ||
        a->config.lora_alpha != b->config.lora_alpha || a->n_trigger_words != b->n_trigger_words)
        return 0;
    for (size_t i = 0; i < a->n_trigger_words; i++)
        if (strcmp(a->trigger_words[i], b->trigger_words[i]) != 0)
            return 0;
    return 1;
}

#endif
