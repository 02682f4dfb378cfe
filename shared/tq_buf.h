/*
 * tq_buf — the one growable byte buffer of trainq, with a size cap from birth (curl's
 * dynbuf): every byte that arrives from the network (an HTTP request body, a Docker
 * Engine reply) is collected here, and no buffer can be grown past what its owner allowed
 * when it made it.
 *
 * What must stay true:
 *  - len <= max at all times: an append that would pass max fails and changes nothing;
 *  - data is NULL while nothing was ever appended, else NUL-terminated at data[len] (the
 *    bytes themselves may contain NULs; use len);
 *  - the allocation never exceeds max + 1 bytes.
 *
 * Not thread-safe: one owner at a time.
 */
#ifndef TQ_BUF_H
#define TQ_BUF_H

#include <stddef.h>

typedef struct {
    char *data;   /* owned; NULL while empty */
    size_t len;   /* bytes held, without the NUL */
    size_t alloc; /* bytes allocated */
    size_t max;   /* the cap on len, fixed by tq_buf_init */
} tq_buf;

/* An empty buffer that will hold at most max bytes. Allocates nothing. */
void tq_buf_init(tq_buf *b, size_t max);

/* Appends n bytes of p. TQ_OK; TQ_ERR_TOO_LARGE when len + n would pass max;
 * TQ_ERR_NOMEM when growing failed. On failure the buffer is unchanged. */
int tq_buf_add(tq_buf *b, const void *p, size_t n);

/* The contents as a NUL-terminated string ("" while empty); borrowed until the next
 * tq_buf_add or tq_buf_free. */
const char *tq_buf_str(const tq_buf *b);

/* Frees the contents; b is empty afterwards and keeps its cap. NULL is fine. */
void tq_buf_free(tq_buf *b);

#endif
