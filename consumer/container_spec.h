/*
 * container_spec — what a training container looks like, and the JSON body of
 * POST /containers/create (Docker Engine API v1.41) built from it. Pure: no I/O.
 *
 * Security posture of every container built here (callers cannot turn these off):
 *   - HostConfig.Privileged is always false;
 *   - SecurityOpt ["no-new-privileges"] and CapDrop ["ALL"];
 *   - NetworkMode defaults to "none";
 *   - no mount may expose a container runtime socket (see tq_container_spec_check).
 * Because every capability is dropped, root in the container has no CAP_DAC_OVERRIDE: it can
 * write only to directories it owns or that are world-writable. Either create the outputs
 * directory as the uid the container runs as, or set `user` to the owner's "uid:gid"
 * (the consumer does the latter, so outputs end up owned by the consumer's user).
 */
#ifndef TQ_CONTAINER_SPEC_H
#define TQ_CONTAINER_SPEC_H

#include <stddef.h>

#include "tq_err.h"

/* A bind mount (HostConfig.Mounts, Type "bind"). Both paths absolute. */
typedef struct {
    const char *source; /* host path */
    const char *target; /* path inside the container */
    int read_only;
} tq_mount;

typedef struct {
    const char *key, *value;
} tq_label;

typedef enum { TQ_GPUS_NONE = 0, TQ_GPUS_ALL, TQ_GPUS_IDS } tq_gpu_mode;

/* All pointers are borrowed; nothing here is freed by the functions below.
 * Zero / NULL means "unset" for every optional field. */
typedef struct {
    const char *name;       /* required, Docker name rules: [A-Za-z0-9][A-Za-z0-9_.-]* (<= 128) */
    const char *image;      /* required */
    const char *const *cmd; /* optional: overrides the image's Cmd (not its Entrypoint) */
    size_t n_cmd;
    const char *const *env; /* "KEY=VALUE" each */
    size_t n_env;
    const tq_label *labels;
    size_t n_labels;
    const tq_mount *mounts;
    size_t n_mounts;
    tq_gpu_mode gpu_mode;
    const char *gpu_ids;    /* TQ_GPUS_IDS: comma-separated device ids or GPU UUIDs, "0,1" */
    long long memory_bytes; /* also sets MemorySwap to the same value: no swap */
    long long shm_bytes;
    long long nano_cpus; /* 1e9 = one CPU */
    long pids_limit;
    const char *network_mode; /* NULL = "none" */
    const char *user;         /* NULL = the image's user; "uid:gid" or a name */
} tq_container_spec;

/*
 * Validates a spec before it is sent. docker_socket (may be NULL) is the host path of the
 * daemon's socket: a mount whose source is that path or one of its parent directories is
 * refused, as is any mount whose source ends in ".sock" or is "/", "/run" or "/var/run"
 * (the usual homes of docker.sock/containerd.sock). Mounting the socket would give the
 * training code root on the host. Returns TQ_OK or TQ_ERR_INVALID with a reason.
 */
/* 1 when mounting `source` would expose the container runtime's socket: it is docker_socket
 * (may be NULL) or one of its parent directories, or one of the usual homes of such sockets,
 * compared both as written and after realpath. The consumer refuses at start a configured
 * directory for which this holds (main.c), and every launch checks its mounts again. */
int tq_mount_source_exposes_socket(const char *source, const char *docker_socket);

int tq_container_spec_check(const tq_container_spec *s, const char *docker_socket, tq_errbuf *eb);

/*
 * The JSON body for POST /containers/create. Returns a NUL-terminated string the caller
 * frees with free(), or NULL if s lacks name/image, gpu_ids is unusable for TQ_GPUS_IDS,
 * or memory ran out. Does not run tq_container_spec_check (tq_docker_create does both).
 */
char *tq_docker_create_body(const tq_container_spec *s);

#endif
