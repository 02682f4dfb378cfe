/*
 * container_spec — what a training container looks like: the spec of a job's container
 * built from the configuration and the job's host paths (tq_job_container_build), its
 * checks, and the JSON body of POST /containers/create (Docker Engine API v1.41) built from
 * it. Pure: no I/O (launch.c prepares the files and makes the Docker calls).
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

#include "tq_config.h"
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
    tq_gpus_cfg gpu_mode;   /* TRAINQ_GPUS's enum (tq_config.h): none, all, or gpu_ids */
    const char *gpu_ids;    /* TQ_GPUS_CFG_IDS: comma-separated device ids or UUIDs, "0,1" */
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
 * frees with free(), or NULL if s lacks name/image, gpu_ids is unusable for TQ_GPUS_CFG_IDS,
 * or memory ran out. Does not run tq_container_spec_check (tq_docker_create does both).
 */
char *tq_docker_create_body(const tq_container_spec *s);

/* ---- a job's training container ---------------------------------------------------------
 *
 * Layout inside the container (the host side is launch.h's); config.json names these paths
 * too:
 *   /workspace/datasets     the job's dataset          (read-only)
 *   /workspace/outputs      the job's outputs          (read-write)
 *   /workspace/models       the Hugging Face cache     (read-write, or read-only with
 *                                                        TRAINQ_MODELS_READ_ONLY: it is
 *                                                        shared by every user's jobs)
 *   /workspace/config.json  the job's configuration    (read-only)
 */
#define TQ_CONTAINER_DATASETS_TARGET "/workspace/datasets"
#define TQ_CONTAINER_OUTPUTS_TARGET "/workspace/outputs"
#define TQ_CONTAINER_MODELS_TARGET "/workspace/models"
#define TQ_CONTAINER_CONFIG_TARGET "/workspace/config.json"

#define TQ_CONTAINER_NAME_PREFIX "training-"
/* "training-" and a job uuid, and the NUL. */
#define TQ_CONTAINER_NAME_BUF 64
#define TQ_CONTAINER_MAX_ARGS 32  /* TRAINQ_TRAINING_CMD words */
#define TQ_CONTAINER_CMD_MAX 4096 /* TRAINQ_TRAINING_CMD bytes */
#define TQ_CONTAINER_N_MOUNTS 4
#define TQ_CONTAINER_N_LABELS 5
#define TQ_CONTAINER_N_ENV 3
#define TQ_CONTAINER_SLOT_BUF 12 /* an int in decimal and the NUL */
#define TQ_CONTAINER_USER_BUF 24 /* "uid:gid", two unsigned ints, and the NUL */

/*
 * Splits cmd on spaces (runs of spaces count as one; no quoting, no shell) into argv,
 * writing the words into buf (cap bytes). *n gets the word count. More than max words, an
 * empty command or a buf too small -> TQ_ERR_INVALID. argv points into buf.
 */
int tq_container_split_cmd(const char *cmd, char *buf, size_t cap, const char **argv, size_t max,
                           size_t *n, tq_errbuf *eb);

/* The job a container is for, where it runs, and the host paths of its mounts (realpath()s:
 * Docker is handed what was checked, never a symlink). All borrowed. */
typedef struct {
    const char *job_id; /* a uuid: it becomes the container's name */
    const char *user_id;
    const char *worker_id;
    int slot; /* the GPU slot: picks the device ids with TQ_GPUS_CFG_IDS */
    const char *dataset, *outputs, *models, *config_file;
} tq_job_container_in;

/* A job's container spec and the storage it points into. spec borrows from the other
 * members, from cfg and from in: use it in place (never copy the struct) while those live. */
typedef struct {
    tq_container_spec spec;
    char name[TQ_CONTAINER_NAME_BUF];
    char cmd_words[TQ_CONTAINER_CMD_MAX];
    const char *argv[TQ_CONTAINER_MAX_ARGS];
    char slot[TQ_CONTAINER_SLOT_BUF];
    tq_label labels[TQ_CONTAINER_N_LABELS];
    tq_mount mounts[TQ_CONTAINER_N_MOUNTS];
    char env_job[TQ_CONTAINER_NAME_BUF];
    const char *env[TQ_CONTAINER_N_ENV];
    char user[TQ_CONTAINER_USER_BUF];
} tq_job_container;

/*
 * What the training container of in->job_id looks like (the Container contract in
 * docs/architecture.md): named training-<job_id>; cfg->training_image running
 * cfg->training_cmd (split by tq_container_split_cmd); labels trainq.job/user/worker/slot
 * and trainq.managed=true; the four mounts of the layout above; env TRAINQ_JOB_ID,
 * TRAINQ_CONFIG and HF_HOME; DeviceRequests per cfg->gpus_mode (ids:
 * tq_config_slot_gpu(cfg, slot)); memory, shm, pids and CPU limits; network "none"; runs as
 * the consumer's uid:gid (every capability is dropped, so this is what lets it write to
 * outputs and the cache); never privileged (tq_docker_create_body).
 * TQ_ERR_INVALID: an unusable training command, or a slot without a GPU in ids mode.
 */
int tq_job_container_build(tq_job_container *c, const tq_config *cfg, const tq_job_container_in *in,
                           tq_errbuf *eb);

#endif
