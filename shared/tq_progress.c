#include "tq_progress.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Longest number text read (a loss such as "4.123456789e-01" fits easily). */
#define NUM_MAX 48

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Reads decimal digits at p[0..end); the value, or -1 when there are none or it is past
 * TQ_PROGRESS_MAX_STEPS. *next is the first byte after them. */
static long read_count(const char *p, const char *end, const char **next)
{
    long v = 0;
    const char *q = p;
    while (q < end && is_digit(*q)) {
        v = v * 10 + (*q - '0');
        if (v > TQ_PROGRESS_MAX_STEPS)
            return -1;
        q++;
    }
    *next = q;
    return q == p ? -1 : v;
}

/* A number at p[0..end) as strtod reads it, copied first (the line is not NUL-terminated);
 * 1 when one was read and it is finite. */
static int read_double(const char *p, const char *end, double *out)
{
    char num[NUM_MAX + 1];
    size_t n = 0;
    while (p + n < end && n < NUM_MAX && strchr("0123456789+-.eE", p[n]))
        n++;
    if (n == 0)
        return 0;
    memcpy(num, p, n);
    num[n] = '\0';
    char *stop;
    double v = strtod(num, &stop);
    if (stop == num || !isfinite(v))
        return 0;
    *out = v;
    return 1;
}

/* tqdm's interval "[Nd ][H:]MM:SS" at p[0..end) in seconds; 0 when it is "?" or not one. */
static int read_interval(const char *p, const char *end, double *out)
{
    double total = 0;
    const char *q = p;
    long part = read_count(q, end, &q);
    if (part >= 0 && q < end && *q == 'd') { /* days */
        total = (double)part * 86400;
        q++;
        while (q < end && *q == ' ')
            q++;
        part = read_count(q, end, &q);
    }
    int fields = 0;
    double hms = 0;
    while (part >= 0) {
        hms = hms * 60 + (double)part;
        fields++;
        if (q >= end || *q != ':' || fields == 3)
            break;
        part = read_count(q + 1, end, &q);
    }
    if (part < 0 || fields < 2)
        return 0;
    *out = total + hms;
    return 1;
}

/* Length of the loss key at k ("avr_loss" of kohya, "loss" of the others), else 0. */
static size_t loss_key(const char *k, const char *end)
{
    static const char *const keys[] = {"avr_loss", "loss"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        size_t n = strlen(keys[i]);
        if ((size_t)(end - k) >= n && memcmp(k, keys[i], n) == 0)
            return n;
    }
    return 0;
}

/* The loss in tqdm's postfix p[0..end): the value of a loss key at the start of a postfix
 * item, written "key=value" (diffusers, kohya) or "key: value" (ai-toolkit, whose items
 * are separated by spaces). */
static int find_loss(const char *p, const char *end, double *out)
{
    for (const char *k = p; k < end; k++) {
        if (k > p && k[-1] != ' ' && k[-1] != ',')
            continue;
        size_t klen = loss_key(k, end);
        const char *v = k + klen;
        if (klen == 0 || v >= end || (*v != '=' && *v != ':'))
            continue;
        v++;
        while (v < end && *v == ' ')
            v++;
        if (read_double(v, end, out))
            return 1;
    }
    return 0;
}

/* tqdm: "... N/M [elapsed<remaining, rate, postfix]". The "<" inside the brackets is what
 * tells a progress bar from a line that merely holds a fraction. */
static int parse_tqdm(const char *line, const char *end, tq_progress *out)
{
    for (const char *slash = memchr(line, '/', (size_t)(end - line)); slash;
         slash = memchr(slash + 1, '/', (size_t)(end - slash - 1))) {
        const char *s = slash;
        while (s > line && is_digit(s[-1]))
            s--;
        const char *after;
        long step = read_count(s, slash, &after);
        if (step < 0 || after != slash)
            continue;
        const char *q;
        long total = read_count(slash + 1, end, &q);
        if (total < 1 || step > total || end - q < 2 || q[0] != ' ' || q[1] != '[')
            continue;
        const char *open = q + 2;
        const char *close = memchr(open, ']', (size_t)(end - open));
        const char *bound = close ? close : end;
        const char *lt = memchr(open, '<', (size_t)(bound - open));
        if (!lt)
            continue;
        tq_progress p = {.step = step, .total = total};
        const char *comma = memchr(lt, ',', (size_t)(bound - lt));
        p.has_eta = read_interval(lt + 1, comma ? comma : bound, &p.eta_seconds);
        if (comma)
            p.has_loss = find_loss(comma + 1, bound, &p.loss);
        *out = p;
        return 1;
    }
    return 0;
}

/* trainq's fake trainer: "progress: step N/M". */
static int parse_plain(const char *line, const char *end, tq_progress *out)
{
    static const char prefix[] = "progress: step ";
    const size_t plen = sizeof prefix - 1;
    while (line < end && *line == ' ')
        line++;
    if ((size_t)(end - line) <= plen || memcmp(line, prefix, plen) != 0)
        return 0;
    const char *q;
    long step = read_count(line + plen, end, &q);
    if (step < 0 || q >= end || *q != '/')
        return 0;
    long total = read_count(q + 1, end, &q);
    if (total < 1 || step > total)
        return 0;
    while (q < end && (*q == ' ' || *q == '\t'))
        q++;
    if (q != end)
        return 0;
    *out = (tq_progress){.step = step, .total = total};
    return 1;
}

int tq_progress_parse(const char *line, size_t len, tq_progress *out)
{
    if (!line || len == 0)
        return 0;
    const char *end = line + len;
    return parse_plain(line, end, out) || parse_tqdm(line, end, out);
}

/* ---- log lines ---------------------------------------------------------------------- */

void tq_log_splitter_init(tq_log_splitter *s)
{
    memset(s, 0, sizeof *s);
}

static void emit(tq_log_splitter *s, tq_log_piece kind, tq_log_line_fn fn, void *arg)
{
    s->buf[s->len] = '\0';
    fn(arg, kind, s->buf, s->len);
    s->len = 0;
}

void tq_log_splitter_feed(tq_log_splitter *s, const char *data, size_t n, tq_log_line_fn fn,
                          void *arg)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)data[i];
        if (s->esc == 1) { /* after ESC: '[' opens a CSI sequence, anything else ends it */
            s->esc = c == '[' ? 2 : 0;
            continue;
        }
        if (s->esc == 2) { /* CSI parameters until a final byte 0x40..0x7E */
            if (c >= 0x40 && c <= 0x7e)
                s->esc = 0;
            continue;
        }
        if (c == '\n') {
            s->cr = 0;
            emit(s, TQ_LOG_LINE, fn, arg);
            continue;
        }
        if (s->cr) {
            /* "\r" followed by more text: the state before it was overwritten. An empty
             * state (tqdm's leading "\r") is not worth a call. */
            s->cr = 0;
            if (s->len > 0)
                emit(s, TQ_LOG_REDRAW, fn, arg);
        }
        if (c == '\r') {
            s->cr = 1;
            continue;
        }
        if (c == 0x1b) {
            s->esc = 1;
            continue;
        }
        if (s->len < TQ_LOG_LINE_MAX)
            s->buf[s->len++] = (char)c;
    }
}

void tq_log_splitter_finish(tq_log_splitter *s, tq_log_line_fn fn, void *arg)
{
    if (s->len > 0)
        emit(s, TQ_LOG_LINE, fn, arg);
    s->cr = 0;
    s->esc = 0;
}
