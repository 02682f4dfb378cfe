/*
 * artifacts — the output files of a finished job: what the consumer records in
 * job_artifacts (name, size, sha256) when it records the job's outcome (runner.c).
 *
 * Bounded, so that a job's end is never held up for long and a hostile trainer cannot make
 * the consumer hash without end: at most TQ_ARTIFACTS_MAX files, at most
 * TQ_ARTIFACTS_MAX_DEPTH directories deep, and files larger than TQ_ARTIFACT_MAX_BYTES are
 * left out (hashing one takes ~1 s per GB on these hosts). Only regular files count:
 * symbolic links are never followed (the directory is the container's to write, and a link
 * could point at any file of the host), nor are devices, sockets or pipes opened.
 */
#ifndef TQ_ARTIFACTS_H
#define TQ_ARTIFACTS_H

#include <stddef.h>

#include "tq_err.h"

#define TQ_ARTIFACTS_MAX 100
#define TQ_ARTIFACTS_MAX_DEPTH 8
#define TQ_ARTIFACT_MAX_BYTES (4LL * 1024 * 1024 * 1024)
#define TQ_ARTIFACT_NAME_MAX 255 /* bytes; job_artifacts.name allows 255 characters */

typedef struct {
    char name[TQ_ARTIFACT_NAME_MAX + 1]; /* relative to the outputs directory, '/'-separated */
    long long size_bytes;
    char sha256[65]; /* lowercase hex */
} tq_artifact;

/*
 * The regular files in or below dir, sorted by name, into *out (caller frees; NULL when *n
 * is 0). Files whose name is longer than TQ_ARTIFACT_NAME_MAX bytes, is not valid UTF-8 or
 * holds control characters are left out, as are files that cannot be read. A missing dir is
 * no artifacts (TQ_OK, 0). TQ_ERR_NOMEM, or TQ_ERR_INVALID when dir cannot be opened.
 */
int tq_artifacts_scan(const char *dir, tq_artifact **out, size_t *n, tq_errbuf *eb);

#endif
