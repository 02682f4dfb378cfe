#include "tq_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tq_err.h"

static const char *log_prog = "trainq";
static tq_log_level log_min = TQ_LOG_INFO;
static const char *const level_names[] = {"debug", "info", "warn", "error"};

void tq_log_init(const char *prog, tq_log_level min_level)
{
    log_prog = prog;
    log_min = min_level;
}

int tq_log_level_parse(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(s, level_names[i]) == 0)
            return i;
    return TQ_ERR_INVALID;
}

__attribute__((format(printf, 4, 0))) static void
log_emit(tq_log_level lvl, const char *event, json_t *fields, const char *fmt, va_list ap)
{
    if (lvl < log_min) {
        json_decref(fields);
        return;
    }
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);

    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);
    char ts[40];
    size_t n = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof ts - n, ".%03ldZ", now.tv_nsec / 1000000);

    json_t *o = json_object();
    if (!o) {
        json_decref(fields);
        return;
    }
    json_object_set_new(o, "ts", json_string(ts));
    json_object_set_new(o, "level", json_string(level_names[lvl]));
    json_object_set_new(o, "prog", json_string(log_prog));
    json_object_set_new(o, "event", json_string(event));
    /* json_string rejects invalid UTF-8; the message may quote user input, so fall back
     * to a lossy-but-valid copy rather than dropping the line. */
    json_t *m = json_string(msg);
    if (!m) {
        for (char *p = msg; *p; p++)
            if ((unsigned char)*p >= 0x80)
                *p = '?';
        m = json_string(msg);
    }
    json_object_set_new(o, "msg", m);
    if (fields)
        json_object_update_missing(o, fields);
    json_decref(fields);

    char *line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (!line)
        return;
    size_t len = strlen(line);
    line[len] = '\0';
    /* One write per line: stderr is unbuffered and lines stay whole between threads. */
    char buf[8192];
    if (len + 1 < sizeof buf) {
        memcpy(buf, line, len);
        buf[len] = '\n';
        ssize_t w = write(STDERR_FILENO, buf, len + 1);
        (void)w;
    } else {
        ssize_t w = write(STDERR_FILENO, line, len);
        w = write(STDERR_FILENO, "\n", 1);
        (void)w;
    }
    free(line);
}

void tq_log(tq_log_level lvl, const char *event, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_emit(lvl, event, NULL, fmt, ap);
    va_end(ap);
}

void tq_logj(tq_log_level lvl, const char *event, json_t *fields, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_emit(lvl, event, fields, fmt, ap);
    va_end(ap);
}

void tq_log_down(int *down, const char *event, const char *fmt, ...)
{
    if (__atomic_exchange_n(down, 1, __ATOMIC_RELAXED))
        return;
    va_list ap;
    va_start(ap, fmt);
    log_emit(TQ_LOG_WARN, event, NULL, fmt, ap);
    va_end(ap);
}

void tq_log_up(int *down, const char *event, const char *msg)
{
    if (__atomic_exchange_n(down, 0, __ATOMIC_RELAXED))
        tq_log(TQ_LOG_INFO, event, "%s", msg);
}
