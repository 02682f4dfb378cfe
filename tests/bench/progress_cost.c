/*
 * bench-progress: the consumer's cost of reading trainer output (scripts/bench.sh row 8),
 * per MB, next to a floor measured on the same bytes in the same run.
 *
 * The stream is generated: diffusers-style tqdm states redrawn with '\r' (as a trainer
 * prints them to stderr), with a log line ending in '\n' after every 20 states. Three
 * passes over it, each the best of 5 runs:
 *   floor     memchr for every '\n' and every '\r' (touching each byte once, in libc)
 *   parse     tq_log_splitter_feed cutting the stream into pieces and tq_progress_parse on
 *             each piece (what the follower thread does per byte)
 *   consumer  parse plus tq_out_batch_line for the finished lines (the follower's whole
 *             work before a flush)
 * Prints one JSON object: MB, and seconds per MB and MB/s of each pass.
 *   usage: bench-progress [MB]   (default 32)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "output.h"
#include "tq_progress.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

typedef struct {
    long pieces, parsed;
    tq_out_batch *batch;
    char *row;
} counts;

static void on_piece(void *arg, tq_log_piece kind, const char *line, size_t len)
{
    counts *c = arg;
    tq_progress p;
    c->pieces++;
    c->parsed += tq_progress_parse(line, len, &p);
    if (c->batch && kind == TQ_LOG_LINE) {
        tq_out_batch_line(c->batch, line, len);
        /* a flush a second takes the batch; here every 64 KiB of rows, as often or more */
        if (c->batch->len > 64 * 1024)
            tq_out_batch_take(c->batch, c->row);
    }
}

/* Feeds the stream in 16 KiB reads, as curl hands it over. */
static double run_splitter(const char *buf, size_t n, counts *c)
{
    static tq_log_splitter s;
    tq_log_splitter_init(&s);
    double t0 = now();
    for (size_t off = 0; off < n; off += 16384)
        tq_log_splitter_feed(&s, buf + off, n - off < 16384 ? n - off : 16384, on_piece, c);
    tq_log_splitter_finish(&s, on_piece, c);
    return now() - t0;
}

static volatile size_t sink;

static double run_floor(const char *buf, size_t n)
{
    double t0 = now();
    size_t found = 0;
    for (int ch = 0; ch < 2; ch++) {
        const char *p = buf, *end = buf + n;
        while ((p = memchr(p, ch ? '\r' : '\n', (size_t)(end - p))) != NULL) {
            found++;
            p++;
        }
    }
    sink = found;
    return now() - t0;
}

int main(int argc, char **argv)
{
    long mb = argc > 1 ? strtol(argv[1], NULL, 10) : 32;
    if (mb < 1 || mb > 1024) {
        fprintf(stderr, "bench-progress: MB must be 1..1024\n");
        return 2;
    }
    size_t cap = (size_t)mb * 1024 * 1024;
    char *buf = malloc(cap + 512);
    if (!buf)
        return 1;
    size_t n = 0;
    long i = 0, total = 1000000;
    while (n < cap) {
        int w = snprintf(buf + n, 512,
                         "\rSteps:  %2ld%%|\xe2\x96\x88\xe2\x96\x88\xe2\x96\x88\xe2\x96\x8c      "
                         "| %ld/%ld [02:13<02:43,  3.37it/s, loss=0.%04ld, lr=0.0001]",
                         i * 100 / total, i % total, total, i % 10000);
        n += (size_t)w;
        if (++i % 20 == 0)
            n += (size_t)snprintf(buf + n, 512,
                                  "\nepoch %ld: saved checkpoint to "
                                  "/workspace/outputs/checkpoint-%ld\n",
                                  i / 20, i);
    }
    double best[3] = {1e9, 1e9, 1e9};
    counts c = {0};
    tq_out_batch batch;
    if (tq_out_batch_init(&batch, tq_out_row_cap(1024 * 1024)) != TQ_OK)
        return 1;
    char *row = malloc(batch.cap + 128);
    if (!row)
        return 1;
    for (int r = 0; r < 5; r++) {
        double t = run_floor(buf, n);
        best[0] = t < best[0] ? t : best[0];
        c = (counts){0};
        t = run_splitter(buf, n, &c);
        best[1] = t < best[1] ? t : best[1];
        counts cc = {.batch = &batch, .row = row};
        t = run_splitter(buf, n, &cc);
        best[2] = t < best[2] ? t : best[2];
    }
    double m = (double)n / (1024.0 * 1024.0);
    printf("{\"mb\": %.1f, \"pieces\": %ld, \"progress_lines\": %ld, "
           "\"floor_s_per_mb\": %.6f, \"parse_s_per_mb\": %.6f, \"consumer_s_per_mb\": %.6f, "
           "\"floor_mb_s\": %.1f, \"parse_mb_s\": %.1f, \"consumer_mb_s\": %.1f}\n",
           m, c.pieces, c.parsed, best[0] / m, best[1] / m, best[2] / m, m / best[0], m / best[1],
           m / best[2]);
    free(row);
    tq_out_batch_free(&batch);
    free(buf);
    return 0;
}
