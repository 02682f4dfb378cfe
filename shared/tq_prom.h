/*
 * tq_prom — the Prometheus text exposition format (version 0.0.4), written once for both
 * programs' /metrics (consumer/cmetrics.c, producer/metrics.c).
 *
 * A document is built in memory (tq_prom_begin … tq_prom_end); each metric family is one
 * `# HELP` / `# TYPE` head followed by its samples. Names, help texts and label strings
 * are the callers' constants: nothing here escapes them, so none may come from input.
 * Histograms are kept by the callers as per-bucket (not cumulative) counts; they are made
 * cumulative here, so a histogram's +Inf bucket always equals its _count.
 */
#ifndef TQ_PROM_H
#define TQ_PROM_H

#include <stddef.h>
#include <stdio.h>

typedef struct {
    FILE *f; /* write samples here (NULL after tq_prom_end) */
    char *buf;
    size_t len;
} tq_prom_doc;

/* 0, or -1 when out of memory. */
int tq_prom_begin(tq_prom_doc *d);

/* The document (caller frees) and its length in *len (may be NULL); NULL when out of memory
 * (the document is freed then). */
char *tq_prom_end(tq_prom_doc *d, size_t *len);

/* "# HELP name help\n# TYPE name type\n"; type is "counter", "gauge" or "histogram". */
void tq_prom_head(tq_prom_doc *d, const char *name, const char *type, const char *help);

/* One sample: "name{labels} v\n" ("name v\n" when labels is NULL or ""). labels is the
 * inside of the braces, e.g. `route="POST /jobs",code="202"`. */
void tq_prom_sample(tq_prom_doc *d, const char *name, const char *labels, long long v);
void tq_prom_sample_u(tq_prom_doc *d, const char *name, const char *labels, unsigned long long v);

/* A family of one unlabelled sample: the head and "name v". */
void tq_prom_scalar(tq_prom_doc *d, const char *name, const char *type, const char *help,
                    long long v);

/*
 * The samples of one histogram series (its head is the caller's, once per family):
 * name_bucket{labels,le="…"} for each of the n upper bounds le[] (printed with %g) and
 * +Inf, then name_sum{labels} and name_count{labels}. counts has n + 1 per-bucket counts,
 * the last one above every bound; sum_us is the sum of the observations in microseconds
 * (printed as seconds with six decimals, exactly).
 */
void tq_prom_histogram(tq_prom_doc *d, const char *name, const char *labels, const double *le,
                       size_t n, const unsigned long long *counts, unsigned long long sum_us);

#endif
