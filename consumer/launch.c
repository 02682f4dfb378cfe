#include "launch.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "tq_job.h"
#include "tq_json.h"
#include "tq_log.h"
#include "tq_uuid.h"
#include "tq_utf8.h"

/* ---- config.json ---------------------------------------------------------------------- */

/* "a, b, c" from the trigger words. Caller frees; NULL on OOM. */
static char *join_words(const tq_submission *job)
{
    size_t total = 1;
    for (size_t i = 0; i < job->n_trigger_words; i++)
        total += strlen(job->trigger_words[i]) + 2;
    char *s = malloc(total);
    if (!s)
        return NULL;
    size_t off = 0;
    for (size_t i = 0; i < job->n_trigger_words; i++) {
        if (off > 0) {
            memcpy(s + off, ", ", 2);
            off += 2;
        }
        size_t n = strlen(job->trigger_words[i]);
        memcpy(s + off, job->trigger_words[i], n);
        off += n;
    }
    s[off] = '\0';
    return s;
}

/* FNV-1a of the job id, kept positive: a retried job trains with the same seed, different
 * jobs do not all share one. */
static json_int_t seed_of(const char *id)
{
    uint32_t h = 2166136261u;
    for (const unsigned char *p = (const unsigned char *)id; *p; p++) {
        h ^= *p;
        h *= 16777619u;
    }
    return (json_int_t)(h & 0x7fffffffu);
}

/* json_object_set_new that remembers a failure instead of checking every line: the shared
 * one (tq_json.h), under the short name the lines below use. */
#define put(o, key, v, bad) ((void)tq_json_put((o), (key), (v), (bad)))

json_t *tq_launch_training_config(const tq_submission *job, const char *job_id,
                                  const char *dataset_dir_in_container)
{
    if (!job_id || !job->base_model || !job->name)
        return NULL;
    int dreambooth = job->type == TQ_JOB_DREAMBOOTH;
    if (!dreambooth && job->type != TQ_JOB_LORA)
        return NULL;
    const char *type = tq_job_type_name(job->type);
    const char *data_dir =
        dataset_dir_in_container ? dataset_dir_in_container : TQ_LAUNCH_DATASETS_TARGET;
    const tq_train_config *c = &job->config;

    char *prompt = join_words(job);
    if (!prompt)
        return NULL;
    json_t *o = json_object();
    if (!o) {
        free(prompt);
        return NULL;
    }
    int bad = 0;
    json_int_t ckpt = c->steps / 5 > 0 ? c->steps / 5 : 1;

    put(o, "pretrained_model_name_or_path", json_string(job->base_model), &bad);
    put(o, "train_data_dir", json_string(data_dir), &bad);
    if (dreambooth)
        put(o, "instance_data_dir", json_string(data_dir), &bad);
    put(o, "output_dir", json_string(TQ_LAUNCH_OUTPUTS_TARGET), &bad);
    put(o, "cache_dir", json_string(TQ_LAUNCH_MODELS_TARGET), &bad);
    put(o, "resolution", json_integer(c->resolution), &bad);
    put(o, "train_batch_size", json_integer(c->batch_size), &bad);
    put(o, "learning_rate", json_real(c->learning_rate), &bad);
    put(o, "max_train_steps", json_integer(c->steps), &bad);
    put(o, "checkpointing_steps", json_integer(ckpt), &bad);
    put(o, "rank", json_integer(c->lora_rank), &bad);
    put(o, "lora_alpha", json_integer(c->lora_alpha), &bad);
    put(o, "network_alpha", json_integer(c->lora_alpha), &bad);
    put(o, "instance_prompt", json_string(prompt), &bad);
    if (!dreambooth)
        put(o, "validation_prompt", json_string(prompt), &bad);
    put(o, "seed", json_integer(seed_of(job_id)), &bad);
    put(o, "mixed_precision", json_string("fp16"), &bad);
    put(o, "job_id", json_string(job_id), &bad);
    put(o, "job_name", json_string(job->name), &bad);
    put(o, "training_type", json_string(type), &bad);
    free(prompt);
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* ---- dataset path ---------------------------------------------------------------------- */

static int has_dotdot(const char *p)
{
    for (const char *c = p; (c = strstr(c, "..")) != NULL; c += 2)
        if ((c == p || c[-1] == '/') && (c[2] == '\0' || c[2] == '/'))
            return 1;
    return 0;
}

/* Length of root without trailing slashes ("/" stays 1). */
static size_t root_len(const char *root)
{
    size_t n = strlen(root);
    while (n > 1 && root[n - 1] == '/')
        n--;
    return n;
}

/* path is root or below it, compared by whole components: "/data/ds2" is not under
 * "/data/ds". */
static int lexically_under(const char *path, const char *root)
{
    size_t n = root_len(root);
    if (n == 1 && root[0] == '/')
        return path[0] == '/';
    return strncmp(path, root, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

/* path (canonical: no trailing slash, no symlink) is strictly below root (canonical). */
static int strictly_under(const char *path, const char *root)
{
    size_t n = strlen(root);
    if (n == 1 && root[0] == '/')
        return path[0] == '/' && path[1] != '\0';
    return strncmp(path, root, n) == 0 && path[n] == '/' && path[n + 1] != '\0';
}

#define ESCAPES(sp)                                                                                \
    tq_errf(eb, TQ_ERR_FORBIDDEN, "dataset path \"%.*s\" escapes the datasets root",               \
            TQ_UTF8_ARG((sp), 200))

/* Whether directory d holds nothing (or cannot be read: then not judged empty). */
static int dir_is_empty(const char *d)
{
    DIR *dir = opendir(d);
    if (!dir)
        return 0;
    int empty = 1;
    struct dirent *e;
    while (empty && (e = readdir(dir)) != NULL)
        empty = strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0;
    closedir(dir);
    return empty;
}

int tq_launch_resolve_dataset(const char *root, const char *storage_path, char *out, size_t cap,
                              tq_errbuf *eb)
{
    if (cap > 0)
        out[0] = '\0';
    if (!root || root[0] != '/')
        return tq_errf(eb, TQ_ERR_INVALID, "cannot resolve dataset: datasets root is not absolute");
    if (!storage_path || !*storage_path)
        return tq_errf(eb, TQ_ERR_INVALID, "cannot resolve dataset: storage path is empty");
    if (strlen(storage_path) >= PATH_MAX)
        return tq_errf(eb, TQ_ERR_TOO_LARGE, "cannot resolve dataset: storage path too long");

    char rroot[PATH_MAX];
    if (!realpath(root, rroot))
        return tq_errf(eb, TQ_ERR_IO, "could not resolve datasets root \"%.*s\": %m",
                       TQ_UTF8_ARG(root, 200));
    /* Refused before touching the file system, so a probe cannot learn what exists outside. */
    if (has_dotdot(storage_path))
        return ESCAPES(storage_path);

    char cand[PATH_MAX];
    if (storage_path[0] == '/') {
        /* Either spelling of the root: configured (may be a symlink) or resolved. */
        if (!lexically_under(storage_path, root) && !lexically_under(storage_path, rroot))
            return ESCAPES(storage_path);
        memcpy(cand, storage_path, strlen(storage_path) + 1);
    } else {
        int n = snprintf(cand, sizeof cand, "%s/%s", rroot, storage_path);
        if (n < 0 || (size_t)n >= sizeof cand)
            return tq_errf(eb, TQ_ERR_TOO_LARGE, "cannot resolve dataset: storage path too long");
    }

    char res[PATH_MAX];
    if (!realpath(cand, res)) {
        int err = errno;
        /* An empty root is what a datasets mount that is not there looks like (NFS down, a
         * host booted without it): the host's fault, not every job's own (dataset_error
         * would fail each job it picks, for good). */
        if ((err == ENOENT || err == ENOTDIR) && dir_is_empty(rroot))
            return tq_errf(eb, TQ_ERR_IO,
                           "datasets root \"%.*s\" is empty (not mounted?): dataset \"%.*s\" "
                           "cannot be there",
                           TQ_UTF8_ARG(root, 200), TQ_UTF8_ARG(storage_path, 200));
        if (err == ENOENT || err == ENOTDIR)
            return tq_errf(eb, TQ_ERR_NOT_FOUND, "dataset directory \"%.*s\" does not exist",
                           TQ_UTF8_ARG(storage_path, 200));
        return tq_errf(eb, TQ_ERR_IO, "could not resolve dataset path \"%.*s\": %m",
                       TQ_UTF8_ARG(storage_path, 200));
    }
    /* The authoritative check: symlinks are resolved now. The root itself is refused too:
     * mounting it would hand one job every user's datasets. */
    if (!strictly_under(res, rroot))
        return ESCAPES(storage_path);

    struct stat stt;
    if (stat(res, &stt) != 0)
        return tq_errf(eb, TQ_ERR_IO, "could not stat dataset path \"%.*s\": %m",
                       TQ_UTF8_ARG(storage_path, 200));
    if (!S_ISDIR(stt.st_mode))
        return tq_errf(eb, TQ_ERR_INVALID, "dataset path \"%.*s\" is not a directory",
                       TQ_UTF8_ARG(storage_path, 200));
    size_t len = strlen(res);
    if (len >= cap)
        return tq_errf(eb, TQ_ERR_TOO_LARGE, "cannot resolve dataset: buffer too small");
    memcpy(out, res, len + 1);
    return TQ_OK;
}

/* ---- files ----------------------------------------------------------------------------- */

/* mkdir -p; an existing directory is fine, an existing non-directory is not. */
static int mkdir_p(const char *path, mode_t mode, tq_errbuf *eb)
{
    char buf[PATH_MAX];
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof buf)
        return tq_errf(eb, TQ_ERR_INVALID, "cannot create directory: path empty or too long");
    memcpy(buf, path, len + 1);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, mode) != 0 && errno != EEXIST)
            return tq_errf(eb, TQ_ERR_IO, "could not create directory \"%.*s\": %m",
                           TQ_UTF8_ARG(buf, 200));
        *p = '/';
    }
    if (mkdir(buf, mode) != 0 && errno != EEXIST)
        return tq_errf(eb, TQ_ERR_IO, "could not create directory \"%.*s\": %m",
                       TQ_UTF8_ARG(buf, 200));
    struct stat st;
    if (stat(buf, &st) != 0)
        return tq_errf(eb, TQ_ERR_IO, "could not stat directory \"%.*s\": %m",
                       TQ_UTF8_ARG(buf, 200));
    if (!S_ISDIR(st.st_mode))
        return tq_errf(eb, TQ_ERR_IO, "could not create directory \"%.*s\": not a directory",
                       TQ_UTF8_ARG(buf, 200));
    return TQ_OK;
}

static int write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Readers (the container, an operator) see the old file or the new one, never a torn one.
 * No fsync: the file only has to outlive the container that reads it, and a host crash ends
 * that container too (the retried job writes the file again), and two fsyncs per launch
 * would sit on the dispatch path of every job. */
static int write_atomic(const char *path, const char *data, size_t len, tq_errbuf *eb)
{
    static atomic_uint seq;
    char tmp[PATH_MAX];
    int n = snprintf(tmp, sizeof tmp, "%s.tmp.%ld.%u", path, (long)getpid(),
                     atomic_fetch_add(&seq, 1u));
    if (n < 0 || (size_t)n >= sizeof tmp)
        return tq_errf(eb, TQ_ERR_TOO_LARGE, "cannot write \"%.*s\": path too long",
                       TQ_UTF8_ARG(path, 200));
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return tq_errf(eb, TQ_ERR_IO, "could not create \"%.*s\": %m", TQ_UTF8_ARG(tmp, 200));
    /* Owner-only whatever the umask: the container runs as the consumer's uid and reads it;
     * other local users have no business reading a job's configuration. */
    if (fchmod(fd, 0600) != 0 || write_all(fd, data, len) != 0) {
        int e = errno;
        close(fd);
        unlink(tmp);
        errno = e;
        return tq_errf(eb, TQ_ERR_IO, "could not write \"%.*s\": %m", TQ_UTF8_ARG(tmp, 200));
    }
    if (close(fd) != 0) {
        int e = errno;
        unlink(tmp);
        errno = e;
        return tq_errf(eb, TQ_ERR_IO, "could not write \"%.*s\": %m", TQ_UTF8_ARG(tmp, 200));
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        errno = e;
        return tq_errf(eb, TQ_ERR_IO, "could not rename \"%.*s\" to \"%.*s\": %m",
                       TQ_UTF8_ARG(tmp, 200), TQ_UTF8_ARG(path, 200));
    }
    return TQ_OK;
}

static int path_join(char *out, size_t cap, const char *a, const char *b, const char *c,
                     tq_errbuf *eb)
{
    int n = snprintf(out, cap, "%s%s%s", a, b, c);
    if (n < 0 || (size_t)n >= cap)
        return tq_errf(eb, TQ_ERR_TOO_LARGE, "cannot build path under \"%.*s\": too long",
                       TQ_UTF8_ARG(a, 200));
    return TQ_OK;
}

/* The job id, checked: it becomes a file name and a container name. */
static int job_id_check(const char *id, tq_errbuf *eb)
{
    if (!id || !tq_uuid_valid(id))
        return tq_errf(eb, TQ_ERR_INVALID, "cannot launch job: id is not a uuid");
    return TQ_OK;
}

/* ---- preflight and resume ---------------------------------------------------------- */

/* Directory levels and entries the dataset preflight looks at: a dataset is a folder of
 * images (with captions), not a tree; a bound keeps a hostile one from stalling dispatch. */
#define PREFLIGHT_MAX_DEPTH 4
#define PREFLIGHT_MAX_ENTRIES 200000L

typedef struct {
    long long bytes, max_bytes;
    long entries, images;
    char image[PATH_MAX]; /* the first image found */
} preflight_walk;

static int image_name(const char *name)
{
    static const char *const EXT[] = {".jpg", ".jpeg", ".png", ".webp"};
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof EXT / sizeof EXT[0]; i++) {
        size_t e = strlen(EXT[i]);
        if (n > e && strcasecmp(name + n - e, EXT[i]) == 0)
            return 1;
    }
    return 0;
}

/* Walks dir (no symlink followed: the bind mount shows them as they are) counting bytes and
 * images. TQ_OK, or the first reason the dataset cannot be used. */
static int walk(preflight_walk *w, const char *dir, int depth, tq_errbuf *eb)
{
    DIR *d = opendir(dir);
    if (!d)
        return tq_errf(eb, errno == EACCES ? TQ_ERR_FORBIDDEN : TQ_ERR_IO,
                       "dataset directory \"%.*s\" is not readable: %s", TQ_UTF8_ARG(dir, 300),
                       strerror(errno));
    int rc = TQ_OK;
    struct dirent *de;
    while (rc == TQ_OK && (de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (++w->entries > PREFLIGHT_MAX_ENTRIES) {
            rc = tq_errf(eb, TQ_ERR_TOO_LARGE, "dataset holds more than %ld files",
                         PREFLIGHT_MAX_ENTRIES);
            break;
        }
        char path[PATH_MAX];
        if (snprintf(path, sizeof path, "%s/%s", dir, de->d_name) >= (int)sizeof path)
            continue;
        struct stat st;
        if (lstat(path, &st) != 0)
            continue;
        if (S_ISDIR(st.st_mode)) {
            if (depth < PREFLIGHT_MAX_DEPTH)
                rc = walk(w, path, depth + 1, eb);
            continue;
        }
        if (!S_ISREG(st.st_mode))
            continue;
        w->bytes += st.st_size;
        if (w->max_bytes > 0 && w->bytes > w->max_bytes)
            rc = tq_errf(eb, TQ_ERR_TOO_LARGE,
                         "dataset is larger than TRAINQ_DATASET_MAX_BYTES (%lld bytes)",
                         w->max_bytes);
        else if (image_name(de->d_name) && w->images++ == 0)
            snprintf(w->image, sizeof w->image, "%s", path);
    }
    closedir(d);
    return rc;
}

int tq_launch_preflight_dataset(const char *dir, long long max_bytes, tq_errbuf *eb)
{
    preflight_walk w = {.max_bytes = max_bytes};
    int rc = walk(&w, dir, 0, eb);
    if (rc != TQ_OK)
        return rc;
    if (w.images == 0)
        return tq_errf(eb, TQ_ERR_INVALID, "dataset holds no image file (jpg, jpeg, png or webp)");
    /* One image opened, as the trainer will: a dataset of files it cannot read is empty. */
    int fd = open(w.image, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return tq_errf(eb, TQ_ERR_FORBIDDEN, "dataset image \"%.*s\" is not readable: %s",
                       TQ_UTF8_ARG(w.image, 300), strerror(errno));
    close(fd);
    return TQ_OK;
}

int tq_launch_has_checkpoint(const char *outputs_dir)
{
    DIR *d = opendir(outputs_dir);
    if (!d)
        return 0;
    int found = 0;
    struct dirent *de;
    while (!found && (de = readdir(d)) != NULL) {
        /* diffusers' checkpoint-<step>, kohya's <name>-<step>-state (the trainer adapter
         * resumes from the newest of those for "latest") */
        size_t n = strlen(de->d_name);
        int diffusers = strncmp(de->d_name, "checkpoint-", 11) == 0 && de->d_name[11];
        int kohya = n > 6 && strcmp(de->d_name + n - 6, "-state") == 0;
        if (!diffusers && !kohya)
            continue;
        char path[PATH_MAX];
        struct stat st;
        found = snprintf(path, sizeof path, "%s/%s", outputs_dir, de->d_name) < (int)sizeof path &&
                lstat(path, &st) == 0 && S_ISDIR(st.st_mode);
    }
    closedir(d);
    return found;
}

int tq_launch_prepare(const tq_config *cfg, const tq_submission *job, const char *id,
                      const char *storage_path, int resume, tq_launch_paths *p, tq_errbuf *eb)
{
    memset(p, 0, sizeof *p);
    int rc = job_id_check(id, eb);
    if (rc != TQ_OK)
        return rc;
    rc = tq_launch_resolve_dataset(cfg->datasets_root, storage_path, p->dataset, sizeof p->dataset,
                                   eb);
    if (rc != TQ_OK)
        return rc;

    char configs[PATH_MAX];
    if ((rc = path_join(p->outputs, sizeof p->outputs, cfg->data_dir, "/outputs/", id, eb)) ||
        (rc = path_join(configs, sizeof configs, cfg->data_dir, "/configs", "", eb)) ||
        (rc = path_join(p->config_file, sizeof p->config_file, configs, "/", id, eb)))
        return rc;
    size_t cl = strlen(p->config_file);
    if (cl + 5 >= sizeof p->config_file)
        return tq_errf(eb, TQ_ERR_TOO_LARGE, "cannot build config path: too long");
    memcpy(p->config_file + cl, ".json", 6);

    if ((rc = mkdir_p(p->outputs, 0700, eb)) || (rc = mkdir_p(configs, 0700, eb)) ||
        (rc = mkdir_p(cfg->hf_cache_dir, 0755, eb)))
        return rc;
    /* A job's outputs are owner-only whatever the umask, also when the directory exists
     * already (a retry, or one made by an older consumer): the container runs as our uid. */
    if (chmod(p->outputs, 0700) != 0)
        return tq_errf(eb, TQ_ERR_IO, "could not chmod \"%.*s\": %m", TQ_UTF8_ARG(p->outputs, 200));

    /* Resolve the rest too (the dataset already is), so the mounts name real paths. */
    {
        char tmp[PATH_MAX];
        const char *what[2] = {"outputs directory", "Hugging Face cache"};
        char *paths[2] = {p->outputs, p->models};
        snprintf(p->models, sizeof p->models, "%s", cfg->hf_cache_dir);
        for (int i = 0; i < 2; i++) {
            if (!realpath(paths[i], tmp))
                return tq_errf(eb, TQ_ERR_IO, "could not resolve %s \"%s\": %s", what[i], paths[i],
                               strerror(errno));
            snprintf(paths[i], PATH_MAX, "%s", tmp);
        }
        if (!realpath(configs, tmp))
            return tq_errf(eb, TQ_ERR_IO, "could not resolve \"%s\": %s", configs, strerror(errno));
        if ((rc = path_join(p->config_file, sizeof p->config_file, tmp, "/", id, eb)))
            return rc;
        cl = strlen(p->config_file);
        if (cl + 5 >= sizeof p->config_file)
            return tq_errf(eb, TQ_ERR_TOO_LARGE, "cannot build config path: too long");
        memcpy(p->config_file + cl, ".json", 6);
    }

    json_t *conf = tq_launch_training_config(job, id, TQ_LAUNCH_DATASETS_TARGET);
    if (!conf)
        return tq_errf(eb, TQ_ERR_INVALID,
                       "cannot build config.json of job %s: job lacks type "
                       "or base_model",
                       id);
    /* diffusers' scripts take "latest" as the newest checkpoint-* under output_dir */
    if (resume && json_object_set_new(conf, "resume_from_checkpoint", json_string("latest"))) {
        json_decref(conf);
        return tq_errf(eb, TQ_ERR_NOMEM, "could not build config.json: out of memory");
    }
    /* 15 significant digits print a learning rate of 1e-4 as 0.0001, not
     * 0.00010000000000000000479; every value a person types survives the round trip. */
    char *text = json_dumps(conf, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(15));
    json_decref(conf);
    if (!text)
        return tq_errf(eb, TQ_ERR_NOMEM, "could not serialise config.json: out of memory");
    size_t len = strlen(text);
    /* A trailing newline so `cat` output is tidy; part of the deterministic bytes. */
    char *withnl = malloc(len + 2);
    if (!withnl) {
        free(text);
        return tq_errf(eb, TQ_ERR_NOMEM, "could not serialise config.json: out of memory");
    }
    memcpy(withnl, text, len);
    withnl[len] = '\n';
    withnl[len + 1] = '\0';
    free(text);
    rc = write_atomic(p->config_file, withnl, len + 1, eb);
    free(withnl);
    return rc;
}

/* ---- the container --------------------------------------------------------------------- */

static void copy_id(char dst[TQ_DOCKER_ID_BUF], const char *src)
{
    size_t n = strnlen(src, TQ_DOCKER_ID_BUF - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* Create then start. *conflict tells a 409 at create (the name is taken) from other errors. */
static int create_start(tq_docker *d, const tq_container_spec *s,
                        char container_id[TQ_DOCKER_ID_BUF], int *conflict, tq_errbuf *eb)
{
    char id[TQ_DOCKER_ID_BUF] = {0};
    *conflict = 0;
    int rc = tq_docker_create(d, s, id, eb);
    if (rc == TQ_ERR_CONFLICT)
        *conflict = 1;
    if (rc != TQ_OK)
        return rc;
    rc = tq_docker_start(d, id, eb);
    if (rc != TQ_OK) {
        /* A container that cannot start (bad entrypoint, missing GPU driver) is removed so
         * the next attempt is not taken for a duplicate. An unreachable daemon cannot be
         * asked: the next attempt's 409 path cleans up instead. */
        if (rc != TQ_ERR_UNAVAILABLE) {
            tq_errbuf ignored;
            (void)tq_docker_remove(d, id, 1, &ignored);
        }
        return rc;
    }
    copy_id(container_id, id);
    return TQ_OK;
}

int tq_launch_container(tq_docker *d, const tq_config *cfg, int slot, const char *id,
                        const char *user_id, const char *worker_id, const tq_launch_paths *p,
                        int (*claim_held)(void *), void *claim_held_arg,
                        char container_id[TQ_DOCKER_ID_BUF], tq_errbuf *eb)
{
    container_id[0] = '\0';
    int rc = job_id_check(id, eb);
    if (rc != TQ_OK)
        return rc;
    if (!user_id || !*user_id)
        return tq_errf(eb, TQ_ERR_INVALID, "cannot launch job %s: user_id missing", id);
    if (!worker_id || !*worker_id)
        return tq_errf(eb, TQ_ERR_INVALID, "cannot launch job %s: worker id is empty", id);

    tq_job_container jc;
    const tq_job_container_in in = {.job_id = id,
                                    .user_id = user_id,
                                    .worker_id = worker_id,
                                    .slot = slot,
                                    .dataset = p->dataset,
                                    .outputs = p->outputs,
                                    .models = p->models,
                                    .config_file = p->config_file};
    rc = tq_job_container_build(&jc, cfg, &in, eb);
    if (rc != TQ_OK)
        return rc;
    const char *name = jc.name;

    /* Two rounds at most: the second follows the removal of a stale container. */
    for (int round = 0; round < 2; round++) {
        int conflict;
        rc = create_start(d, &jc.spec, container_id, &conflict, eb);
        if (!conflict) {
            if (rc == TQ_OK && eb)
                eb->msg[0] = '\0'; /* drop the 409 text of the first round */
            return rc;
        }

        tq_container_state st;
        memset(&st, 0, sizeof st);
        rc = tq_docker_inspect(d, name, &st, eb);
        if (rc == TQ_ERR_NOT_FOUND)
            continue; /* removed between our create and inspect */
        if (rc != TQ_OK)
            return rc;
        if (strcmp(st.job_label, id) != 0)
            return tq_errf(eb, TQ_ERR_CONFLICT,
                           "cannot create container \"%s\": the name is taken by a container "
                           "not labelled with this job",
                           name);
        int up =
            st.running || strcmp(st.status, "paused") == 0 || strcmp(st.status, "restarting") == 0;
        if (up && strcmp(st.worker_label, worker_id) == 0) {
            copy_id(container_id, st.id); /* adopted: this job's container is already up */
            if (eb)
                eb->msg[0] = '\0';
            return TQ_OK;
        }
        if (strcmp(st.status, "removing") == 0)
            return tq_errf(eb, TQ_ERR_CONFLICT,
                           "cannot create container \"%s\": the old one is being removed", name);
        if (round == 1)
            break;
        /* Created (a launch that never started), exited (an earlier attempt), or up but
         * another worker's: the job was taken from a worker that died (or lost Postgres)
         * with its container running on a shared daemon. That container holds the other
         * worker's GPUs, and the other worker, back, would kill it as a job it no longer
         * holds (exit 137, read as out of memory). Replace it — but only while our own
         * claim still stands: a launcher whose claim was taken from it meanwhile (it lost
         * Postgres before its create) would otherwise stop the container of the worker
         * that holds the job now. The force removal kills it, and the other worker's late
         * outcome for it is refused by the fencing token. */
        if (up && !(claim_held && claim_held(claim_held_arg)))
            return tq_errf(eb, TQ_ERR_CONFLICT,
                           "cannot create container \"%s\": worker %s runs the job's "
                           "container and this claim no longer holds",
                           name, st.worker_label[0] ? st.worker_label : "(unlabelled)");
        if (up)
            tq_log(TQ_LOG_WARN, "launch.replaced",
                   "job %s: replacing container %.12s of worker %s (the job was taken from it)", id,
                   st.id, st.worker_label[0] ? st.worker_label : "(unlabelled)");
        rc = tq_docker_remove(d, st.id, 1, eb);
        if (rc != TQ_OK)
            return rc;
    }
    return tq_errf(eb, TQ_ERR_CONFLICT,
                   "cannot create container \"%s\": the name is still taken after removing "
                   "the old container",
                   name);
}
