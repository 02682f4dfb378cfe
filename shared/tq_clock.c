#include "tq_clock.h"

#include <errno.h>

#include "tq_err.h"

int64_t tq_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

double tq_mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct timespec tq_timespec_add_ms(struct timespec base, long ms)
{
    base.tv_sec += ms / 1000;
    base.tv_nsec += (ms % 1000) * 1000000L;
    if (base.tv_nsec >= 1000000000L) {
        base.tv_sec++;
        base.tv_nsec -= 1000000000L;
    }
    return base;
}

struct timespec tq_mono_deadline(long ms)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return tq_timespec_add_ms(now, ms);
}

int tq_cond_init_monotonic(pthread_cond_t *cv)
{
    pthread_condattr_t a;
    int rc = pthread_condattr_init(&a);
    if (rc)
        return TQ_ERR_NOMEM; /* its only failure */
    rc = pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    if (rc == 0)
        rc = pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
    if (rc == 0)
        return TQ_OK;
    return rc == ENOMEM || rc == EAGAIN ? TQ_ERR_NOMEM : TQ_ERR_INTERNAL;
}

/* Reads exactly n digits at *p; -1 if any is not a digit. */
static int digits(const char **p, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '9')
            return -1;
        v = v * 10 + (c - '0');
    }
    *p += n;
    return v;
}

static int days_in_month(int y, int m)
{
    static const int d[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
        return 29;
    return d[m - 1];
}

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar (H. Hinnant's
 * days_from_civil): no timegm, no time zone, no time_t range to worry about. */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* The fraction after '.': 1..9 digits, as milliseconds (truncated). -1 if malformed. */
static int fraction_ms(const char **p)
{
    int n = 0, ms = 0;
    for (; **p >= '0' && **p <= '9'; (*p)++, n++)
        if (n < 3)
            ms = ms * 10 + (**p - '0');
    if (n < 1 || n > 9)
        return -1;
    for (; n < 3; n++)
        ms *= 10;
    return ms;
}

/* "Z", "+HH:MM" or "-HH:MM" ending the string, as minutes east of UTC; 0 and *off set, or
 * -1 if malformed. */
static int utc_offset(const char *p, int *off)
{
    if (*p == 'Z' || *p == 'z') {
        *off = 0;
        return p[1] == '\0' ? 0 : -1;
    }
    if (*p != '+' && *p != '-')
        return -1;
    int sign = *p++ == '-' ? -1 : 1;
    int oh = digits(&p, 2);
    if (oh < 0 || oh > 23 || *p++ != ':')
        return -1;
    int om = digits(&p, 2);
    if (om < 0 || om > 59 || *p != '\0')
        return -1;
    *off = sign * (oh * 60 + om);
    return 0;
}

int tq_rfc3339_parse(const char *s, int64_t *unix_ms)
{
    if (!s)
        return TQ_ERR_INVALID;
    const char *p = s;
    int y = digits(&p, 4);
    if (y < 0 || *p++ != '-')
        return TQ_ERR_INVALID;
    int mo = digits(&p, 2);
    if (mo < 1 || mo > 12 || *p++ != '-')
        return TQ_ERR_INVALID;
    int d = digits(&p, 2);
    if (d < 1 || d > days_in_month(y, mo) || (*p != 'T' && *p != 't'))
        return TQ_ERR_INVALID;
    p++;
    int h = digits(&p, 2);
    if (h < 0 || h > 23 || *p++ != ':')
        return TQ_ERR_INVALID;
    int mi = digits(&p, 2);
    if (mi < 0 || mi > 59 || *p++ != ':')
        return TQ_ERR_INVALID;
    int se = digits(&p, 2);
    if (se < 0 || se > 60) /* 60: a leap second */
        return TQ_ERR_INVALID;
    int ms = 0, off = 0;
    if (*p == '.') {
        p++;
        if ((ms = fraction_ms(&p)) < 0)
            return TQ_ERR_INVALID;
    }
    if (utc_offset(p, &off) != 0)
        return TQ_ERR_INVALID;
    if (unix_ms) {
        int64_t secs = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se;
        *unix_ms = (secs - (int64_t)off * 60) * 1000 + ms;
    }
    return TQ_OK;
}
