/*
 * tq_progress — reading a trainer's output: its progress lines, and its log cut into lines
 * the way a terminal shows them.
 *
 * Trainers report progress with tqdm, which redraws one line with carriage returns:
 *   diffusers / accelerate  "Steps:  45%|████▌     | 450/1000 [02:13<02:43,  3.37it/s, loss=0.0912,
 * lr=0.0001]" kohya sd-scripts        "steps:  10%|█         | 100/1000 [00:50<07:30,  2.00it/s,
 * avr_loss=0.123]" ai-toolkit              "my_lora:  12%|█▏        | 120/1000
 * [01:00<07:20,  2.00it/s, lr: 1.0e-04 loss: 4.123e-01]" and trainq's fake trainer prints
 * "progress: step 3/5".
 *
 * Pure: no I/O, no allocation. Input is untrusted container output: every length is
 * bounded, numbers are range-checked, and nothing here assumes valid UTF-8.
 */
#ifndef TQ_PROGRESS_H
#define TQ_PROGRESS_H

#include <stddef.h>

/* Steps beyond this are not believed (a trainer printing garbage). */
#define TQ_PROGRESS_MAX_STEPS 100000000L

typedef struct {
    long step, total; /* 0 <= step <= total, total >= 1 */
    int has_loss;
    double loss; /* finite, when has_loss */
    int has_eta;
    double eta_seconds; /* >= 0, when has_eta (tqdm's remaining time; "?" means unknown) */
} tq_progress;

/* Parses one line (len bytes, need not be NUL-terminated). 1 and *out filled when it is a
 * progress line of a format above, else 0 (out untouched). Of tqdm's postfix, the loss is
 * the value of the key "loss" or "avr_loss" (written "k=v" or "k: v"). */
int tq_progress_parse(const char *line, size_t len, tq_progress *out);

/* ---- log lines ---------------------------------------------------------------------- */

/* Longest line kept; the rest of a longer line is dropped (a log is for reading, and a
 * trainer's lines are short). */
#define TQ_LOG_LINE_MAX 4096

typedef enum {
    TQ_LOG_LINE,   /* a finished line ('\n'): goes to the job's log */
    TQ_LOG_REDRAW, /* a state overwritten by '\r': read it for progress, do not log it */
} tq_log_piece;

/* Called for every piece of output; line is NUL-terminated, without its '\r' / '\n' and
 * without terminal escape sequences (colours, cursor moves). */
typedef void (*tq_log_line_fn)(void *arg, tq_log_piece kind, const char *line, size_t len);

/* Cuts a byte stream into lines as a terminal shows them: '\n' ends a line, "\r\n" too, a
 * lone '\r' starts the line over (tqdm's redraw: only the last state of such a line is a
 * TQ_LOG_LINE; each earlier state is a TQ_LOG_REDRAW). Feed it chunks as they arrive. */
typedef struct {
    char buf[TQ_LOG_LINE_MAX + 1];
    size_t len;
    int cr;  /* the last byte was '\r' */
    int esc; /* inside an escape sequence: 1 after ESC, 2 inside CSI (ESC '[') */
} tq_log_splitter;

void tq_log_splitter_init(tq_log_splitter *s);
void tq_log_splitter_feed(tq_log_splitter *s, const char *data, size_t n, tq_log_line_fn fn,
                          void *arg);
/* End of stream: a last line without '\n' is passed on as a TQ_LOG_LINE. */
void tq_log_splitter_finish(tq_log_splitter *s, tq_log_line_fn fn, void *arg);

#endif
