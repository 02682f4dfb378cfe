#include "container_spec.h"

#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tq_json.h"

#define NAME_MAX_LEN 128
#define GPU_ID_MAX_LEN 64

static int name_char_ok(char c, int first)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return 1;
    return !first && (c == '_' || c == '.' || c == '-');
}

static int gpu_id_char_ok(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
}

/* Appends every id of "0, 1,GPU-abc" to arr. Returns 0, or -1 if an id is empty, too long
 * or has a character no device id has (so a typo fails at create, not silently). */
static int add_gpu_ids(json_t *arr, const char *ids)
{
    size_t n = 0;
    const char *p = ids;
    while (p && *p) {
        while (*p == ' ')
            p++;
        const char *start = p;
        while (*p && *p != ',' && *p != ' ')
            p++;
        size_t len = (size_t)(p - start);
        while (*p == ' ')
            p++;
        if (*p && *p != ',')
            return -1; /* "0 1" */
        if (len == 0 || len > GPU_ID_MAX_LEN)
            return -1;
        for (size_t i = 0; i < len; i++)
            if (!gpu_id_char_ok(start[i]))
                return -1;
        if (json_array_append_new(arr, json_stringn(start, len)) != 0)
            return -1;
        n++;
        if (*p == ',') {
            p++;
            if (!*p)
                return -1; /* trailing comma */
        }
    }
    return n > 0 ? 0 : -1;
}

/* True if any path component is "..": Docker would resolve it, our checks would not. */
static int has_dotdot(const char *p)
{
    for (const char *c = p; (c = strstr(c, "..")) != NULL; c += 2)
        if ((c == p || c[-1] == '/') && (c[2] == '\0' || c[2] == '/'))
            return 1;
    return 0;
}

static int is_sock_dir(const char *src)
{
    static const char *const dirs[] = {"/",
                                       "/run",
                                       "/var/run",
                                       "/var/run/docker",
                                       "/run/docker",
                                       "/run/containerd",
                                       "/var/run/containerd"};
    size_t len = strlen(src);
    while (len > 1 && src[len - 1] == '/')
        len--;
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++)
        if (strlen(dirs[i]) == len && strncmp(dirs[i], src, len) == 0)
            return 1;
    return len >= 5 && strncmp(src + len - 5, ".sock", 5) == 0;
}

/* True if src is sock itself or a directory above it ("/tmp/dk" exposes "/tmp/dk/d.sock"). */
static int exposes(const char *src, const char *sock)
{
    size_t len = strlen(src);
    while (len > 1 && src[len - 1] == '/')
        len--;
    if (strncmp(src, sock, len) != 0)
        return 0;
    return sock[len] == '\0' || sock[len] == '/' || len == 1;
}

int tq_mount_source_exposes_socket(const char *source, const char *docker_socket)
{
    /* Compare what the paths really are: a symlink must not smuggle the socket's directory
     * past a textual check. */
    char real_src[PATH_MAX], real_sock[PATH_MAX];
    const char *src = realpath(source, real_src) ? real_src : source;
    const char *sock =
        docker_socket && realpath(docker_socket, real_sock) ? real_sock : docker_socket;
    return is_sock_dir(source) || is_sock_dir(src) ||
           (sock && (exposes(src, sock) || exposes(source, docker_socket)));
}

int tq_container_spec_check(const tq_container_spec *s, const char *docker_socket, tq_errbuf *eb)
{
    if (!s->name || !*s->name)
        return tq_errf(eb, TQ_ERR_INVALID, "cannot create container: name is empty");
    size_t nlen = strlen(s->name);
    if (nlen > NAME_MAX_LEN)
        return tq_errf(eb, TQ_ERR_INVALID, "cannot create container: name longer than %d",
                       NAME_MAX_LEN);
    for (size_t i = 0; i < nlen; i++)
        if (!name_char_ok(s->name[i], i == 0))
            return tq_errf(eb, TQ_ERR_INVALID, "cannot create container: invalid name \"%.128s\"",
                           s->name);
    if (!s->image || !*s->image)
        return tq_errf(eb, TQ_ERR_INVALID, "cannot create container \"%s\": image is empty",
                       s->name);
    for (size_t i = 0; i < s->n_env; i++)
        if (!s->env[i] || !strchr(s->env[i], '=') || s->env[i][0] == '=')
            return tq_errf(eb, TQ_ERR_INVALID,
                           "cannot create container \"%s\": env entry %zu is not KEY=VALUE",
                           s->name, i);
    for (size_t i = 0; i < s->n_labels; i++)
        if (!s->labels[i].key || !*s->labels[i].key || !s->labels[i].value)
            return tq_errf(eb, TQ_ERR_INVALID, "cannot create container \"%s\": label %zu is empty",
                           s->name, i);
    for (size_t i = 0; i < s->n_cmd; i++)
        if (!s->cmd[i])
            return tq_errf(eb, TQ_ERR_INVALID, "cannot create container \"%s\": cmd[%zu] is NULL",
                           s->name, i);
    for (size_t i = 0; i < s->n_mounts; i++) {
        const tq_mount *m = &s->mounts[i];
        if (!m->source || m->source[0] != '/' || !m->target || m->target[0] != '/')
            return tq_errf(eb, TQ_ERR_INVALID,
                           "cannot create container \"%s\": mount %zu needs absolute paths",
                           s->name, i);
        if (has_dotdot(m->source) || has_dotdot(m->target))
            return tq_errf(eb, TQ_ERR_INVALID,
                           "cannot create container \"%s\": mount %zu has \"..\" in a path",
                           s->name, i);
        if (tq_mount_source_exposes_socket(m->source, docker_socket))
            return tq_errf(eb, TQ_ERR_INVALID,
                           "cannot create container \"%s\": mount of \"%.200s\" would expose the "
                           "container runtime socket",
                           s->name, m->source);
    }
    if (s->gpu_mode == TQ_GPUS_CFG_IDS) {
        json_t *arr = json_array();
        int bad = !arr || add_gpu_ids(arr, s->gpu_ids) != 0;
        json_decref(arr);
        if (bad)
            return tq_errf(eb, TQ_ERR_INVALID,
                           "cannot create container \"%s\": invalid gpu ids \"%.64s\"", s->name,
                           s->gpu_ids ? s->gpu_ids : "");
    }
    if (s->memory_bytes < 0 || s->shm_bytes < 0 || s->nano_cpus < 0 || s->pids_limit < 0)
        return tq_errf(eb, TQ_ERR_INVALID, "cannot create container \"%s\": negative limit",
                       s->name);
    return TQ_OK;
}

/* jansson's *_set_new / *_append_new steal the value even on failure (tq_json_put too), so
 * each helper only has to report whether it worked. */

static json_t *string_array(const char *const *v, size_t n)
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++) {
        if (json_array_append_new(arr, json_string(v[i])) != 0) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

static json_t *one_string_array(const char *s)
{
    return string_array(&s, 1);
}

static json_t *device_requests(const tq_container_spec *s)
{
    json_t *req = json_object(), *list = json_array(), *caps = json_array();
    if (!req || !list || !caps)
        goto fail;
    if (json_array_append_new(caps, one_string_array("gpu")) != 0)
        goto fail;
    if (tq_json_put(req, "Driver", json_string("nvidia"), NULL) != 0)
        goto fail;
    if (s->gpu_mode == TQ_GPUS_CFG_ALL) {
        if (tq_json_put(req, "Count", json_integer(-1), NULL) != 0)
            goto fail;
    } else {
        json_t *ids = json_array();
        if (!ids || add_gpu_ids(ids, s->gpu_ids) != 0) {
            json_decref(ids);
            goto fail;
        }
        if (tq_json_put(req, "DeviceIDs", ids, NULL) != 0)
            goto fail;
    }
    if (tq_json_put(req, "Capabilities", caps, NULL) != 0) {
        caps = NULL;
        goto fail;
    }
    caps = NULL;
    if (json_array_append_new(list, req) != 0) {
        req = NULL;
        goto fail;
    }
    return list;
fail:
    json_decref(req);
    json_decref(list);
    json_decref(caps);
    return NULL;
}

static json_t *host_config(const tq_container_spec *s)
{
    json_t *hc = json_object(), *mounts = json_array();
    if (!hc || !mounts)
        goto fail;
    for (size_t i = 0; i < s->n_mounts; i++) {
        json_t *m = json_pack("{s:s, s:s, s:s, s:b}", "Type", "bind", "Source", s->mounts[i].source,
                              "Target", s->mounts[i].target, "ReadOnly", s->mounts[i].read_only);
        if (json_array_append_new(mounts, m) != 0)
            goto fail;
    }
    if (tq_json_put(hc, "Mounts", mounts, NULL) != 0) {
        mounts = NULL;
        goto fail;
    }
    mounts = NULL;
    if (tq_json_put(hc, "NetworkMode", json_string(s->network_mode ? s->network_mode : "none"),
                    NULL) != 0 ||
        tq_json_put(hc, "Privileged", json_false(), NULL) != 0 ||
        tq_json_put(hc, "AutoRemove", json_false(), NULL) != 0 ||
        tq_json_put(hc, "SecurityOpt", one_string_array("no-new-privileges"), NULL) != 0 ||
        tq_json_put(hc, "CapDrop", one_string_array("ALL"), NULL) != 0 ||
        /* The consumer reads the log tail for failure reasons, so pin a driver the logs
         * endpoint can read, and bound its disk use. */
        tq_json_put(hc, "LogConfig",
                    json_pack("{s:s, s:{s:s, s:s}}", "Type", "json-file", "Config", "max-size",
                              "10m", "max-file", "2"),
                    NULL) != 0)
        goto fail;
    if (s->memory_bytes > 0 &&
        (tq_json_put(hc, "Memory", json_integer(s->memory_bytes), NULL) != 0 ||
         tq_json_put(hc, "MemorySwap", json_integer(s->memory_bytes), NULL) != 0))
        goto fail;
    if (s->shm_bytes > 0 && tq_json_put(hc, "ShmSize", json_integer(s->shm_bytes), NULL) != 0)
        goto fail;
    if (s->nano_cpus > 0 && tq_json_put(hc, "NanoCpus", json_integer(s->nano_cpus), NULL) != 0)
        goto fail;
    if (s->pids_limit > 0 && tq_json_put(hc, "PidsLimit", json_integer(s->pids_limit), NULL) != 0)
        goto fail;
    if (s->gpu_mode != TQ_GPUS_CFG_NONE &&
        tq_json_put(hc, "DeviceRequests", device_requests(s), NULL) != 0)
        goto fail;
    return hc;
fail:
    json_decref(hc);
    json_decref(mounts);
    return NULL;
}

char *tq_docker_create_body(const tq_container_spec *s)
{
    if (!s || !s->name || !s->image)
        return NULL;
    char *out = NULL;
    json_t *root = json_object(), *labels = json_object();
    if (!root || !labels)
        goto out;
    for (size_t i = 0; i < s->n_labels; i++)
        if (!s->labels[i].key ||
            tq_json_put(labels, s->labels[i].key, json_string(s->labels[i].value), NULL) != 0)
            goto out;
    if (tq_json_put(root, "Labels", labels, NULL) != 0) {
        labels = NULL;
        goto out;
    }
    labels = NULL;
    if (tq_json_put(root, "Image", json_string(s->image), NULL) != 0 ||
        tq_json_put(root, "Env", string_array(s->env, s->n_env), NULL) != 0 ||
        tq_json_put(root, "Tty", json_false(), NULL) != 0 ||
        tq_json_put(root, "OpenStdin", json_false(), NULL) != 0 ||
        tq_json_put(root, "AttachStdin", json_false(), NULL) != 0)
        goto out;
    /* An empty Cmd would replace the image's default with nothing; omit it instead. */
    if (s->n_cmd > 0 && tq_json_put(root, "Cmd", string_array(s->cmd, s->n_cmd), NULL) != 0)
        goto out;
    if (s->user && tq_json_put(root, "User", json_string(s->user), NULL) != 0)
        goto out;
    if (tq_json_put(root, "HostConfig", host_config(s), NULL) != 0)
        goto out;
    out = json_dumps(root, JSON_COMPACT);
out:
    json_decref(root);
    json_decref(labels);
    return out;
}

/* ---- a job's training container -------------------------------------------------------- */

int tq_container_split_cmd(const char *cmd, char *buf, size_t cap, const char **argv, size_t max,
                           size_t *n, tq_errbuf *eb)
{
    *n = 0;
    if (!cmd)
        return tq_errf(eb, TQ_ERR_INVALID, "invalid training command: empty");
    size_t len = strlen(cmd);
    if (len >= cap)
        return tq_errf(eb, TQ_ERR_INVALID, "invalid training command: longer than %zu bytes",
                       cap - 1);
    memcpy(buf, cmd, len + 1);
    char *p = buf;
    while (*p) {
        while (*p == ' ')
            *p++ = '\0';
        if (!*p)
            break;
        if (*n == max)
            return tq_errf(eb, TQ_ERR_INVALID, "invalid training command: more than %zu words",
                           max);
        argv[(*n)++] = p;
        while (*p && *p != ' ')
            p++;
    }
    if (*n == 0)
        return tq_errf(eb, TQ_ERR_INVALID, "invalid training command: empty");
    return TQ_OK;
}

int tq_job_container_build(tq_job_container *c, const tq_config *cfg, const tq_job_container_in *in,
                           tq_errbuf *eb)
{
    memset(c, 0, sizeof *c);
    tq_container_spec *s = &c->spec;
    size_t nargv;
    int rc = tq_container_split_cmd(cfg->training_cmd, c->cmd_words, sizeof c->cmd_words, c->argv,
                                    TQ_CONTAINER_MAX_ARGS, &nargv, eb);
    if (rc != TQ_OK)
        return rc;
    s->gpu_mode = cfg->gpus_mode;
    if (s->gpu_mode == TQ_GPUS_CFG_IDS) {
        s->gpu_ids = tq_config_slot_gpu(cfg, in->slot);
        if (!s->gpu_ids)
            return tq_errf(eb, TQ_ERR_INVALID, "cannot launch job %s: slot %d has no gpu",
                           in->job_id, in->slot);
    }

    snprintf(c->name, sizeof c->name, TQ_CONTAINER_NAME_PREFIX "%s", in->job_id);
    snprintf(c->slot, sizeof c->slot, "%d", in->slot);
    c->labels[0] = (tq_label){"trainq.job", in->job_id};
    c->labels[1] = (tq_label){"trainq.user", in->user_id};
    c->labels[2] = (tq_label){"trainq.worker", in->worker_id};
    c->labels[3] = (tq_label){"trainq.slot", c->slot};
    c->labels[4] = (tq_label){"trainq.managed", "true"};
    c->mounts[0] = (tq_mount){in->dataset, TQ_CONTAINER_DATASETS_TARGET, 1};
    c->mounts[1] = (tq_mount){in->outputs, TQ_CONTAINER_OUTPUTS_TARGET, 0};
    c->mounts[2] = (tq_mount){in->models, TQ_CONTAINER_MODELS_TARGET, cfg->models_read_only != 0};
    c->mounts[3] = (tq_mount){in->config_file, TQ_CONTAINER_CONFIG_TARGET, 1};
    snprintf(c->env_job, sizeof c->env_job, "TRAINQ_JOB_ID=%s", in->job_id);
    c->env[0] = c->env_job;
    c->env[1] = "TRAINQ_CONFIG=" TQ_CONTAINER_CONFIG_TARGET;
    c->env[2] = "HF_HOME=" TQ_CONTAINER_MODELS_TARGET;
    /* Every capability is dropped (container_spec.h), so root inside could not write to
     * directories the consumer owns; running as the consumer's uid:gid can, and leaves the
     * outputs owned by it. */
    snprintf(c->user, sizeof c->user, "%u:%u", (unsigned)getuid(), (unsigned)getgid());

    s->name = c->name;
    s->image = cfg->training_image;
    s->cmd = c->argv;
    s->n_cmd = nargv;
    s->env = c->env;
    s->n_env = TQ_CONTAINER_N_ENV;
    s->labels = c->labels;
    s->n_labels = TQ_CONTAINER_N_LABELS;
    s->mounts = c->mounts;
    s->n_mounts = TQ_CONTAINER_N_MOUNTS;
    s->memory_bytes = cfg->memory_bytes;
    s->shm_bytes = cfg->shm_bytes;
    s->nano_cpus = cfg->cpus > 0 ? (long long)(cfg->cpus * 1e9 + 0.5) : 0;
    s->pids_limit = cfg->pids_limit;
    s->network_mode = "none";
    s->user = c->user;
    return TQ_OK;
}
