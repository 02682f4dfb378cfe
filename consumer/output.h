/*
 * output — following a running container's output: its progress and its log lines, on
 * their way to the job's row and job_output (db/procedures/70_output.sql).
 *
 * One follower thread per running job (tq_output_start) reads Docker's attach stream
 * (tq_docker_attach: the bytes as the trainer writes them, tqdm's carriage-return redraws
 * included), cuts it into lines as a terminal shows them (tq_log_splitter), parses every
 * line and redraw for progress (tq_progress_parse) and collects the finished lines in a
 * bounded batch (tq_out_batch). It never waits for anything but the socket: the job's
 * runner takes the batch at most once a second (tq_output_take) and writes it on its own
 * Postgres connection, so a slow Postgres or a chatty trainer never stalls Docker (which
 * would stall the container's writes), another slot, the dispatcher or lease renewal.
 *
 * What must stay true:
 *  - memory per job is bounded: the batch holds at most row_cap bytes of lines (older lines
 *    of the batch are dropped first and counted), the splitter one line;
 *  - the lines a trainer prints just before it exits are in the last batch: the runner
 *    calls tq_output_finish (waits for the stream's end) before it records the outcome;
 *  - a lost stream (dockerd restarted) is attached again while the container runs; what
 *    was printed meanwhile is not replayed (a gap, marked by a line in the log), and
 *    neither is what a job adopted after a consumer restart printed before it.
 */
#ifndef TQ_OUTPUT_H
#define TQ_OUTPUT_H

#include <stddef.h>

#include "launcher.h"
#include "tq_progress.h"

/* ---- the batch of one flush: pure, exported for the unit tests ------------------------- */

/* The smallest and largest log row the consumer writes; a row is 1/8 of the job's log
 * budget within these, so that the kept log (trimmed by whole rows) is always most of the
 * budget. */
#define TQ_OUT_ROW_MIN (8 * 1024)
#define TQ_OUT_ROW_MAX (256 * 1024)
/* The longest last line of stderr kept (tq_output_last_err), its NUL included. */
#define TQ_OUT_ERR_LINE_MAX 256

typedef struct {
    char *buf;         /* finished lines, each ending in '\n', valid UTF-8 without NUL */
    size_t len, cap;   /* cap: the row budget */
    long long dropped; /* lines dropped from this batch for want of room */
    int has_progress;
    tq_progress progress; /* the newest progress state seen */
} tq_out_batch;

/* The row budget for a job log budget of max_bytes. */
size_t tq_out_row_cap(long long max_bytes);

/* TQ_OK or TQ_ERR_NOMEM. */
int tq_out_batch_init(tq_out_batch *b, size_t cap);
void tq_out_batch_free(tq_out_batch *b);
/* One finished line (without its line end; at most TQ_LOG_LINE_MAX bytes, any bytes: they
 * are made valid UTF-8). When the batch is full, its oldest lines go first (at least half
 * of it at once, so that dropping costs O(1) per byte). */
void tq_out_batch_line(tq_out_batch *b, const char *line, size_t len);
/*
 * Moves the batch's lines into dst (the text of one log row: lines joined by '\n', no
 * trailing one, preceded by a line saying how many were dropped, if any; dst holds
 * b->cap + 128 bytes) and empties it. Returns the row's length (0: no lines).
 */
size_t tq_out_batch_take(tq_out_batch *b, char *dst);
/* Whether two progress states differ in anything written (step, total, loss, eta). */
int tq_out_progress_differs(const tq_progress *a, const tq_progress *b);

/* ---- the follower -------------------------------------------------------------------- */

typedef struct tq_output tq_output;

/* Starts following container_id (replay: also what it printed before, from Docker's log:
 * for a container this process just started). *out is released with tq_output_free. */
int tq_output_start(tq_output **out, const tq_launcher *l, const char *container_id, int replay,
                    size_t row_cap, tq_errbuf *eb);
/* The lines collected since the last take, into row (b->cap + 128 bytes: see
 * tq_out_batch_take; returns its length), and the newest progress (1 when there is one). */
size_t tq_output_take(tq_output *o, char *row, tq_progress *progress, int *has_progress);
/* The container ended: waits up to wait_ms for the end of its stream (its last lines; or
 * until nothing arrived for half a second), then stops the follower. A last line without
 * '\n' counts as a line when the stream ended. */
void tq_output_finish(tq_output *o, long wait_ms);
/* The last non-blank line the container wrote on stderr that the follower saw ("" if none:
 * a TTY's output has no stderr), valid UTF-8, cut to cap. Returns 1 when it saw all of it:
 * from the start (a replay), without a gap, to the stream's end with the container. */
int tq_output_last_err(tq_output *o, char *buf, size_t cap);
/* Stops following (within ~1 s) and frees; NULL is fine. */
void tq_output_free(tq_output *o);

#endif
