#include "tq_buf.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tq_err.h"

/* First allocation: most bodies and daemon replies fit, so they are copied once. */
#define FIRST_ALLOC 1024

void tq_buf_init(tq_buf *b, size_t max)
{
    b->data = NULL;
    b->len = b->alloc = 0;
    b->max = max < SIZE_MAX ? max : SIZE_MAX - 1; /* room for the NUL */
}

int tq_buf_add(tq_buf *b, const void *p, size_t n)
{
    if (n > b->max - b->len) /* len <= max, so this cannot wrap */
        return TQ_ERR_TOO_LARGE;
    if (b->len + n + 1 > b->alloc) {
        /* want <= max + 1 after the check above; doubling stops at the cap. */
        size_t want = b->len + n + 1, limit = b->max < SIZE_MAX ? b->max + 1 : SIZE_MAX;
        size_t alloc = b->alloc ? b->alloc : FIRST_ALLOC;
        while (alloc < want && alloc <= SIZE_MAX / 2)
            alloc *= 2;
        if (alloc < want || alloc > limit)
            alloc = alloc < want ? want : limit;
        char *d = realloc(b->data, alloc);
        if (!d)
            return TQ_ERR_NOMEM;
        b->data = d;
        b->alloc = alloc;
    }
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return TQ_OK;
}

const char *tq_buf_str(const tq_buf *b)
{
    return b->data ? b->data : "";
}

void tq_buf_free(tq_buf *b)
{
    if (!b)
        return;
    free(b->data);
    b->data = NULL;
    b->len = b->alloc = 0;
}
