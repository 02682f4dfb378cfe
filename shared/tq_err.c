#include "tq_err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "tq_utf8.h"

const char *tq_strerror(int err)
{
    switch ((tq_err)err) {
    case TQ_OK:
        return "ok";
    case TQ_ERR_NOMEM:
        return "out of memory";
    case TQ_ERR_INVALID:
        return "invalid input";
    case TQ_ERR_TOO_LARGE:
        return "input too large";
    case TQ_ERR_NOT_FOUND:
        return "not found";
    case TQ_ERR_FORBIDDEN:
        return "forbidden";
    case TQ_ERR_CONFLICT:
        return "conflict";
    case TQ_ERR_DB:
        return "database error";
    case TQ_ERR_DB_RETRY:
        return "database transaction must be retried";
    case TQ_ERR_UNAVAILABLE:
        return "service unavailable";
    case TQ_ERR_AMQP:
        return "message broker error";
    case TQ_ERR_DOCKER:
        return "docker engine error";
    case TQ_ERR_IO:
        return "i/o error";
    case TQ_ERR_TIMEOUT:
        return "timed out";
    case TQ_ERR_AUTH:
        return "unauthorized";
    case TQ_ERR_LIMIT:
        return "limit reached";
    case TQ_ERR_INTERNAL:
        return "internal error";
    case TQ_ERR_CONFIG:
        return "invalid configuration";
    case TQ_ERR_EXIT_OK:
        return "done, nothing left to run";
    }
    return "unknown error";
}

int tq_errf(tq_errbuf *eb, int err, const char *fmt, ...)
{
    if (eb) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(eb->msg, sizeof eb->msg, fmt, ap);
        va_end(ap);
        if (n < 0)
            eb->msg[0] = '\0';
        else if ((size_t)n >= sizeof eb->msg)
            tq_utf8_clip(eb->msg, sizeof eb->msg - 1); /* full: not inside a character */
        /* The message may be stored as a job's reason (Postgres refuses invalid UTF-8)
         * and may quote outside bytes; "%.Ns" may have cut one inside a character. */
        tq_utf8_sanitize(eb->msg, strlen(eb->msg));
    }
    return err;
}
