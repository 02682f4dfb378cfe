/*
 * tq_log — JSON-lines logging to stderr, one object per line, written with a single
 * write(2) so lines from different threads never interleave.
 *
 *   {"ts":"2026-11-29T11:40:00.123Z","level":"info","prog":"trainq-consumer",
 *    "event":"job.started","msg":"...", <fields>...}
 */
#ifndef TQ_LOG_H
#define TQ_LOG_H

#include <jansson.h>

typedef enum { TQ_LOG_DEBUG = 0, TQ_LOG_INFO, TQ_LOG_WARN, TQ_LOG_ERROR } tq_log_level;

/* Program name shown in every line and the minimum level; call once at start. */
void tq_log_init(const char *prog, tq_log_level min_level);
/* "debug" | "info" | "warn" | "error" -> level; TQ_ERR_INVALID (< 0) for anything else. */
int tq_log_level_parse(const char *s);

void tq_log(tq_log_level lvl, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Same, with extra top-level fields; `fields` is stolen (decref'd) even when filtered. */
void tq_logj(tq_log_level lvl, const char *event, json_t *fields, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* One warning per outage, not per retry: *down (shared by every thread that reports the
 * same thing) goes from 0 to 1 and the line is written; while it stays 1 nothing is.
 * tq_log_up writes its info line once when a success takes *down back to 0. */
void tq_log_down(int *down, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void tq_log_up(int *down, const char *event, const char *msg);

#endif
