/*
 * launch — everything between "this worker claimed job X" and "its container is running":
 * the job's config.json, the dataset path (confined to the datasets root), the outputs
 * directory, and the training container itself (docs/architecture.md, "How a consumer runs a job").
 *
 * The job is the typed submission the consumer holds for a claimed job (cdb.h tq_claim:
 * its row's message, decoded once by tq_msg_decode), with its id beside it: validated, every
 * default already filled in by tq_job.c, read here through const pointers and never
 * defaulted again.
 *
 * Layout on the host (cfg = tq_config):
 *   <datasets_root>/<storage_path>      -> /workspace/datasets   (read-only)
 *   <data_dir>/outputs/<job_id>/        -> /workspace/outputs    (read-write)
 *   <hf_cache_dir>/                     -> /workspace/models     (read-write, or read-only
 *                                                                with TRAINQ_MODELS_READ_ONLY)
 *   <data_dir>/configs/<job_id>.json    -> /workspace/config.json (read-only)
 *
 * Idempotent: every step may be repeated for the same job (redelivery, retry after a
 * crash). The container name training-<job_id> is the duplicate guard: Docker refuses a
 * second container of that name (409), and tq_launch_container adopts this worker's running
 * one.
 */
#ifndef TQ_LAUNCH_H
#define TQ_LAUNCH_H

#include <jansson.h>
#include <limits.h>
#include <stddef.h>

#include "docker.h"
#include "coptions.h"
#include "tq_err.h"
#include "tq_job.h"

/* The container's side of the layout (container_spec.h), as config.json names it. */
#define TQ_LAUNCH_DATASETS_TARGET TQ_CONTAINER_DATASETS_TARGET
#define TQ_LAUNCH_OUTPUTS_TARGET TQ_CONTAINER_OUTPUTS_TARGET
#define TQ_LAUNCH_MODELS_TARGET TQ_CONTAINER_MODELS_TARGET
#define TQ_LAUNCH_CONFIG_TARGET TQ_CONTAINER_CONFIG_TARGET

/*
 * The job's config.json: keys named after the arguments of diffusers'
 * train_text_to_image_lora.py / train_dreambooth_lora.py:
 *   pretrained_model_name_or_path, train_data_dir, output_dir, cache_dir, resolution,
 *   train_batch_size, learning_rate, max_train_steps, checkpointing_steps (steps / 5),
 *   rank, lora_alpha, network_alpha (= lora_alpha), instance_prompt (trigger words joined
 *   with ", "), seed (derived from the job id, so a retry trains identically),
 *   mixed_precision ("fp16"), job_id, job_name, training_type;
 *   lora adds validation_prompt (= instance_prompt); dreambooth adds instance_data_dir
 *   (= train_data_dir).
 * dataset_dir_in_container NULL means TQ_LAUNCH_DATASETS_TARGET.
 * Deterministic: the same job gives the same object; written with JSON_SORT_KEYS it gives
 * the same bytes. New reference, caller decrefs; NULL if job_id, base_model or name is
 * NULL, the type is outside the enum, or memory ran out.
 */
json_t *tq_launch_training_config(const tq_submission *job, const char *job_id,
                                  const char *dataset_dir_in_container);

/*
 * Resolves storage_path (relative to root; an absolute one must still lie under root) with
 * realpath() into out. The answer is a directory strictly below realpath(root) with no
 * symlink left in it, so it can be bind-mounted as is.
 *   ".." component, absolute path elsewhere, symlink leading outside, the root itself
 *     -> TQ_ERR_FORBIDDEN "dataset path \"...\" escapes the datasets root"
 *   missing -> TQ_ERR_NOT_FOUND "dataset directory \"...\" does not exist", unless the root
 *     is empty (a datasets mount that is not there: the host's fault) -> TQ_ERR_IO
 *   not a directory -> TQ_ERR_INVALID; root missing -> TQ_ERR_IO; too long -> TQ_ERR_TOO_LARGE
 * A component swapped for a symlink after this returns is not caught: whoever can write
 * under the datasets root is trusted that far.
 */
int tq_launch_resolve_dataset(const char *root, const char *storage_path, char *out, size_t cap,
                              tq_errbuf *eb);

/* Host paths of one job's mounts. */
typedef struct tq_launch_paths_s {
    char dataset[PATH_MAX];     /* resolved dataset directory */
    char outputs[PATH_MAX];     /* <data_dir>/outputs/<job_id> */
    char config_file[PATH_MAX]; /* <data_dir>/configs/<job_id>.json */
    char models[PATH_MAX];      /* the Hugging Face cache directory */
    /* All four are realpath()s: Docker is handed what was checked, never a symlink. */
} tq_launch_paths;

/*
 * Resolves the dataset (errors as tq_launch_resolve_dataset), creates the outputs
 * directory (mode 0700 whatever the umask, also when it exists) and hf_cache_dir, and
 * writes config.json atomically (temporary file, rename), mode 0600 — with
 * resume_from_checkpoint "latest" when resume is set (a retry after host_lost or host_error
 * whose outputs hold a checkpoint). Owner-only: one
 * user's outputs and config are not readable by other local users; the container runs as
 * the consumer's uid (tq_launch_container), so it can still use them. The job id must be a
 * uuid (TQ_ERR_INVALID otherwise: it becomes a path and a container name). File system
 * failures -> TQ_ERR_IO.
 */
int tq_launch_prepare(const tq_config *cfg, const tq_submission *job, const char *job_id,
                      const char *storage_path, int resume, tq_launch_paths *p, tq_errbuf *eb);

/*
 * The preflight of a resolved dataset directory, before any container is created: readable,
 * at most max_bytes of regular files (0: no limit; symlinks are not followed), and at least
 * one image file (.jpg .jpeg .png .webp, any case) that can be opened. Looks 4 levels
 * deep and at 200 000 entries at most. Errors (the job's dataset_error): TQ_ERR_FORBIDDEN
 * (not readable), TQ_ERR_TOO_LARGE, TQ_ERR_INVALID (no image), TQ_ERR_IO.
 */
int tq_launch_preflight_dataset(const char *dir, long long max_bytes, tq_errbuf *eb);

/* Whether a job's outputs directory holds a checkpoint directory — checkpoint-* (diffusers'
 * scripts write one every checkpointing_steps) or *-state (kohya's --save_state) —: a retry
 * after host_lost/host_error then resumes from it. Symlinks do not count. */
int tq_launch_has_checkpoint(const char *outputs_dir);

/*
 * Creates and starts training-<job_id> from cfg and p, for GPU slot `slot` (user_id: the
 * job's user, for the trainq.user label):
 * labels trainq.job/user/worker/slot and trainq.managed=true; the four mounts above;
 * DeviceRequests per cfg->gpus_mode (ids: tq_config_slot_gpu(cfg, slot)); memory, shm,
 * pids and CPU limits; network "none"; runs as the consumer's uid:gid (all capabilities
 * are dropped, so this is what lets it write to outputs and the cache); never privileged.
 *
 * Name taken (409): the container is inspected. Running (or paused), labelled with this
 * job and this worker -> adopted: TQ_OK with its id. Running but another worker's (the job
 * was taken from it, on a shared daemon) -> removed and created anew while claim_held
 * (arg) says the caller's claim still stands, else TQ_ERR_CONFLICT. Created/exited/dead ->
 * removed, then created and started once more. Labelled with another job ->
 * TQ_ERR_CONFLICT. Being removed -> TQ_ERR_CONFLICT (try again later).
 * A start that fails for a reason other than an unreachable daemon removes the container
 * it just created (best effort) so a retry starts clean.
 * Errors pass through from docker.h: TQ_ERR_NOT_FOUND (image missing), TQ_ERR_UNAVAILABLE
 * (daemon unreachable), TQ_ERR_CONFLICT (try again later), TQ_ERR_DOCKER, TQ_ERR_INVALID.
 * Every one of them is this host's, never the job's: the dispatcher gives the job back
 * (dispatch.c), and counts all but UNAVAILABLE and CONFLICT toward the host's health.
 * container_id gets the 64-hex id on TQ_OK.
 */
int tq_launch_container(tq_docker *d, const tq_config *cfg, int slot, const char *job_id,
                        const char *user_id, const char *worker_id, const tq_launch_paths *p,
                        int (*claim_held)(void *), void *claim_held_arg,
                        char container_id[TQ_DOCKER_ID_BUF], tq_errbuf *eb);

#endif
