#include "tq_err.h"

#include <stdarg.h>
#include <stdio.h>

const char *tq_strerror(int err)
{
    switch ((tq_err)err) {
    case TQ_OK: return "ok";
    case TQ_ERR_NOMEM: return "out of memory";
    case TQ_ERR_INVALID: return "invalid input";
    case TQ_ERR_TOO_LARGE: return "input too large";
    case TQ_ERR_NOT_FOUND: return "not found";
    case TQ_ERR_FORBIDDEN: return "forbidden";
    case TQ_ERR_CONFLICT: return "conflict";
    case TQ_ERR_DB: return "database error";
    case TQ_ERR_DB_RETRY: return "database transaction must be retried";
    case TQ_ERR_UNAVAILABLE: return "service unavailable";
    case TQ_ERR_AMQP: return "message broker error";
    case TQ_ERR_DOCKER: return "docker engine error";
    case TQ_ERR_IO: return "i/o error";
    case TQ_ERR_TIMEOUT: return "timed out";
    case TQ_ERR_AUTH: return "unauthorized";
    case TQ_ERR_LIMIT: return "limit reached";
    case TQ_ERR_INTERNAL: return "internal error";
    case TQ_ERR_CONFIG: return "invalid configuration";
    }
    return "unknown error";
}

int tq_errf(tq_errbuf *eb, int err, const char *fmt, ...)
{
    if (eb) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(eb->msg, sizeof eb->msg, fmt, ap);
        va_end(ap);
    }
    return err;
}
