/*
 * A finished job's output files (artifacts.h).
 */
#define _GNU_SOURCE
#include "artifacts.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tq_utf8.h"

#define HASH_CHUNK (256 * 1024)

typedef struct {
    tq_artifact *v;
    size_t n;
} found;

/* A name fit to store: valid UTF-8 without control characters. */
static int name_ok(const char *s, size_t len)
{
    char copy[TQ_ARTIFACT_NAME_MAX + 1];
    if (len == 0 || len > TQ_ARTIFACT_NAME_MAX)
        return 0;
    memcpy(copy, s, len);
    if (tq_utf8_sanitize(copy, len) != 0)
        return 0;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return 0;
    return 1;
}

/* SHA-256 of the open regular file fd as lowercase hex; 0 on success. */
static int hash_fd(int fd, char hex[65])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(ctx);
        return -1;
    }
    unsigned char *buf = malloc(HASH_CHUNK);
    int rc = buf ? 0 : -1;
    while (rc == 0) {
        ssize_t r = read(fd, buf, HASH_CHUNK);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            rc = -1;
        else if (r == 0)
            break;
        else if (EVP_DigestUpdate(ctx, buf, (size_t)r) != 1)
            rc = -1;
    }
    free(buf);
    unsigned char md[32];
    unsigned int mdlen = 0;
    if (rc == 0 && (EVP_DigestFinal_ex(ctx, md, &mdlen) != 1 || mdlen != 32))
        rc = -1;
    EVP_MD_CTX_free(ctx);
    if (rc == 0)
        for (int i = 0; i < 32; i++)
            snprintf(hex + 2 * i, 3, "%02x", md[i]);
    return rc;
}

/* One regular file `name` of directory dfd, stored as path (relative); < 0 on NOMEM. */
static int add_file(found *f, int dfd, const char *name, const char *path)
{
    int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return 0;
    struct stat st;
    /* fstat on what was opened: the entry may have been swapped since readdir */
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > TQ_ARTIFACT_MAX_BYTES) {
        close(fd);
        return 0;
    }
    tq_artifact a;
    memset(&a, 0, sizeof a);
    memcpy(a.name, path, strnlen(path, TQ_ARTIFACT_NAME_MAX)); /* name_ok: at most that */
    a.size_bytes = (long long)st.st_size;
    int ok = hash_fd(fd, a.sha256) == 0;
    close(fd);
    if (!ok)
        return 0;
    tq_artifact *v = realloc(f->v, (f->n + 1) * sizeof *v);
    if (!v)
        return -1;
    f->v = v;
    f->v[f->n++] = a;
    return 0;
}

/* Walks directory dfd (taken over: closed here), whose entries are named prefix + name. */
static int walk(found *f, int dfd, const char *prefix, int depth)
{
    DIR *d = fdopendir(dfd);
    if (!d) {
        close(dfd);
        return 0;
    }
    int rc = 0;
    struct dirent *e;
    while (rc == 0 && f->n < TQ_ARTIFACTS_MAX && (e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char path[TQ_ARTIFACT_NAME_MAX + 2];
        int pl = snprintf(path, sizeof path, "%s%s", prefix, e->d_name);
        if (pl < 0 || !name_ok(path, (size_t)pl))
            continue;
        struct stat st;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0)
            continue;
        if (S_ISREG(st.st_mode)) {
            rc = add_file(f, dirfd(d), e->d_name, path);
        } else if (S_ISDIR(st.st_mode) && depth < TQ_ARTIFACTS_MAX_DEPTH) {
            int sub = openat(dirfd(d), e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            char subprefix[TQ_ARTIFACT_NAME_MAX + 2];
            if (sub >= 0 &&
                snprintf(subprefix, sizeof subprefix, "%s/", path) < (int)sizeof subprefix)
                rc = walk(f, sub, subprefix, depth + 1);
            else if (sub >= 0)
                close(sub);
        }
    }
    closedir(d);
    return rc;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(((const tq_artifact *)a)->name, ((const tq_artifact *)b)->name);
}

int tq_artifacts_scan(const char *dir, tq_artifact **out, size_t *n, tq_errbuf *eb)
{
    *out = NULL;
    *n = 0;
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0) {
        if (errno == ENOENT)
            return TQ_OK;
        return tq_errf(eb, TQ_ERR_INVALID, "could not open outputs directory \"%.*s\": %s",
                       TQ_UTF8_ARG(dir, 200), strerror(errno));
    }
    found f = {0};
    if (walk(&f, dfd, "", 1) != 0) {
        free(f.v);
        return tq_errf(eb, TQ_ERR_NOMEM, "could not list artifacts: out of memory");
    }
    if (f.n > 1)
        qsort(f.v, f.n, sizeof *f.v, by_name);
    *out = f.v;
    *n = f.n;
    return TQ_OK;
}
