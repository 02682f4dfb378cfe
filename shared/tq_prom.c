#include "tq_prom.h"

#include <stdlib.h>

int tq_prom_begin(tq_prom_doc *d)
{
    d->buf = NULL;
    d->len = 0;
    d->f = open_memstream(&d->buf, &d->len);
    return d->f ? 0 : -1;
}

char *tq_prom_end(tq_prom_doc *d, size_t *len)
{
    int bad = ferror(d->f);
    bad |= fclose(d->f) != 0;
    d->f = NULL;
    if (bad) {
        free(d->buf);
        d->buf = NULL;
        return NULL;
    }
    if (len)
        *len = d->len;
    return d->buf;
}

void tq_prom_head(tq_prom_doc *d, const char *name, const char *type, const char *help)
{
    fprintf(d->f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* "{labels}" or nothing. */
static void labels_of(tq_prom_doc *d, const char *labels)
{
    if (labels && *labels)
        fprintf(d->f, "{%s}", labels);
}

void tq_prom_sample(tq_prom_doc *d, const char *name, const char *labels, long long v)
{
    fputs(name, d->f);
    labels_of(d, labels);
    fprintf(d->f, " %lld\n", v);
}

void tq_prom_sample_u(tq_prom_doc *d, const char *name, const char *labels, unsigned long long v)
{
    fputs(name, d->f);
    labels_of(d, labels);
    fprintf(d->f, " %llu\n", v);
}

void tq_prom_scalar(tq_prom_doc *d, const char *name, const char *type, const char *help,
                    long long v)
{
    tq_prom_head(d, name, type, help);
    tq_prom_sample(d, name, NULL, v);
}

void tq_prom_histogram(tq_prom_doc *d, const char *name, const char *labels, const double *le,
                       size_t n, const unsigned long long *counts, unsigned long long sum_us)
{
    const char *sep = labels && *labels ? "," : "";
    const char *lab = labels ? labels : "";
    unsigned long long cum = 0;
    for (size_t i = 0; i <= n; i++) {
        cum += counts[i];
        if (i < n)
            fprintf(d->f, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, lab, sep, le[i], cum);
        else
            fprintf(d->f, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, lab, sep, cum);
    }
    fprintf(d->f, "%s_sum", name);
    labels_of(d, labels);
    fprintf(d->f, " %llu.%06llu\n", sum_us / 1000000u, sum_us % 1000000u);
    fprintf(d->f, "%s_count", name);
    labels_of(d, labels);
    fprintf(d->f, " %llu\n", cum);
}
