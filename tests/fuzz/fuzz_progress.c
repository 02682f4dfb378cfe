/*
 * fuzz_progress — tq_progress_parse (a line of a training container's output) and the log
 * splitter tq_log_splitter_* (the container's output stream, in pieces of any size).
 *
 * Properties (tq_progress.h):
 *   - a parsed line has 0 <= step <= total, 1 <= total <= TQ_PROGRESS_MAX_STEPS, a finite
 *     loss and a non-negative finite eta when it has them;
 *   - the parser reads only the bytes it is given (the input is copied to an exact-size
 *     buffer, so ASan sees any read past it);
 *   - the splitter's pieces hold no '\n', '\r' or ESC, are at most TQ_LOG_LINE_MAX bytes,
 *     their total never exceeds the input, and how the stream was cut into chunks does not
 *     change the pieces.
 */
#include <math.h>

#include "fuzz_util.h"

#include "tq_progress.h"

typedef struct {
    unsigned long long hash; /* of every piece, kind included, in order */
    size_t bytes;
    size_t pieces;
} pieces_seen;

static void on_piece(void *arg, tq_log_piece kind, const char *line, size_t len)
{
    pieces_seen *p = arg;
    FUZZ_CHECK(len <= TQ_LOG_LINE_MAX, "piece of %zu bytes", len);
    FUZZ_CHECK(line[len] == '\0', "piece not terminated");
    for (size_t i = 0; i < len; i++)
        FUZZ_CHECK(line[i] != '\n' && line[i] != '\r' && line[i] != 0x1b, "control byte %d",
                   line[i]);
    FUZZ_CHECK(kind == TQ_LOG_LINE || len > 0, "empty redraw");
    p->hash = p->hash * 1099511628211ULL + (unsigned)kind + 1;
    for (size_t i = 0; i < len; i++)
        p->hash = (p->hash ^ (unsigned char)line[i]) * 1099511628211ULL;
    p->bytes += len;
    p->pieces++;
    tq_progress pr;
    if (tq_progress_parse(line, len, &pr)) {
        FUZZ_CHECK(pr.total >= 1 && pr.total <= TQ_PROGRESS_MAX_STEPS, "total %ld", pr.total);
        FUZZ_CHECK(pr.step >= 0 && pr.step <= pr.total, "step %ld of %ld", pr.step, pr.total);
        FUZZ_CHECK(!pr.has_loss || isfinite(pr.loss), "loss");
        FUZZ_CHECK(!pr.has_eta || (isfinite(pr.eta_seconds) && pr.eta_seconds >= 0), "eta");
    }
}

static void split(const uint8_t *data, size_t size, size_t chunk, pieces_seen *out)
{
    tq_log_splitter s;
    tq_log_splitter_init(&s);
    memset(out, 0, sizeof *out);
    for (size_t off = 0; off < size; off += chunk) {
        size_t n = size - off < chunk ? size - off : chunk;
        tq_log_splitter_feed(&s, (const char *)data + off, n, on_piece, out);
    }
    tq_log_splitter_finish(&s, on_piece, out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *line = malloc(size ? size : 1);
    if (!line)
        return 0;
    memcpy(line, data, size);
    tq_progress pr;
    (void)tq_progress_parse(line, size, &pr);
    free(line);

    pieces_seen whole, bytewise, odd;
    split(data, size, size ? size : 1, &whole);
    split(data, size, 1, &bytewise);
    split(data, size, 7, &odd);
    FUZZ_CHECK(whole.bytes <= size, "%zu piece bytes from %zu input bytes", whole.bytes, size);
    FUZZ_CHECK(whole.hash == bytewise.hash && whole.hash == odd.hash &&
                   whole.pieces == bytewise.pieces && whole.pieces == odd.pieces,
               "chunking changed the pieces (%zu / %zu / %zu)", whole.pieces, bytewise.pieces,
               odd.pieces);
    return 0;
}
