/*
 * tq_job — the training submission: its model, its validation, its JSON form.
 *
 * This is the body of `POST /api/training/submit` (seed spec) and the payload part of
 * every `trainq.job.v1` message (tq_msg.h). The producer and the consumer validate with
 * this one code, so a job accepted over HTTP and a job published straight to AMQP by
 * another service obey exactly the same rules.
 *
 * Rules (each limit is a #define below):
 *   dataset_id     required string, uuid 8-4-4-4-12 hex, either case (stored lowercased)
 *   name           optional string, 1..200 bytes, no control characters;
 *                  absent → "<type> <base_model>" (cut to 200 bytes; it is ASCII)
 *   type           required string, "lora" | "dreambooth"
 *   base_model     required string, Hugging Face repo id `name` or `owner/name`
 *                  (see tq_hf_model_id_valid)
 *   config         required object; every key optional, absent → default:
 *     learning_rate  number  1e-6..1e-2 inclusive             default 1e-4
 *     batch_size     integer 1..8                             default 1
 *     steps          integer 100..10000                       default 1000
 *     resolution     integer 256..1024, multiple of 64        default 512
 *     lora_rank      integer 4..128                           default 16
 *     lora_alpha     integer 1..128                           default 32
 *   trigger_words  optional array of at most 20 strings, each 1..100 bytes, no control
 *                  characters; absent → empty
 *
 * "integer" means a JSON number with an integral value (JavaScript's Number.isInteger):
 * 2 and 2.0 are accepted, 2.5 is "must be an integer"; a string ("2"), a boolean, null,
 * an array or an object where a number is expected is "must be a number". JSON null is
 * never read as "absent": an optional field that is present must have the right type.
 *
 * UNKNOWN KEYS ARE REJECTED, at the top level and inside config (field = the key path,
 * message "unknown field"), so that a typo such as "stpes" is an error and never silently
 * becomes the default.
 *
 * "control characters" are U+0000..U+001F, U+007F and U+0080..U+009F.
 */
#ifndef TQ_JOB_H
#define TQ_JOB_H

#include <jansson.h>
#include <stddef.h>

#include "tq_uuid.h"

/* ---- caps and ranges ---------------------------------------------------------------- */

#define TQ_SUBMISSION_MAX_BYTES 65536 /* HTTP body / AMQP body, checked before parsing */
#define TQ_JSON_MAX_DEPTH 8           /* nesting of [ and {, the top-level object is 1 */

#define TQ_NAME_MAX_BYTES 200
#define TQ_TRIGGER_WORDS_MAX 20
#define TQ_TRIGGER_WORD_MAX_BYTES 100
#define TQ_HF_PART_MAX 96                           /* owner, and name, each */
#define TQ_HF_MODEL_ID_MAX (TQ_HF_PART_MAX * 2 + 1) /* owner/name */

#define TQ_LEARNING_RATE_MIN 1e-6
#define TQ_LEARNING_RATE_MAX 1e-2
#define TQ_BATCH_SIZE_MIN 1
#define TQ_BATCH_SIZE_MAX 8
#define TQ_STEPS_MIN 100
#define TQ_STEPS_MAX 10000
#define TQ_RESOLUTION_MIN 256
#define TQ_RESOLUTION_MAX 1024
#define TQ_RESOLUTION_MULTIPLE 64
#define TQ_LORA_RANK_MIN 4
#define TQ_LORA_RANK_MAX 128
#define TQ_LORA_ALPHA_MIN 1
#define TQ_LORA_ALPHA_MAX 128

#define TQ_DEFAULT_LEARNING_RATE 1e-4
#define TQ_DEFAULT_BATCH_SIZE 1
#define TQ_DEFAULT_STEPS 1000
#define TQ_DEFAULT_RESOLUTION 512
#define TQ_DEFAULT_LORA_RANK 16
#define TQ_DEFAULT_LORA_ALPHA 32

/* ---- validation report ---------------------------------------------------------------- */

#define TQ_VALIDATION_MAX 32

/* One failing field. field is a path ("config.steps", "trigger_words[3]", "body" for a
 * body that could not be parsed); message is lowercase, no trailing period ("must be
 * between 100 and 10000"). Both are always NUL-terminated, valid UTF-8 without control
 * characters (user-supplied key names are cleaned and cut), so they can be put into a JSON
 * response as they are. */
typedef struct {
    char field[64];
    char message[160];
} tq_field_error;

/* Every failing field, in a fixed order (dataset_id, name, type, base_model, config,
 * config.*, trigger_words, trigger_words[i], then unknown keys in document order).
 * At most TQ_VALIDATION_MAX are kept; further ones are dropped. */
typedef struct {
    tq_field_error items[TQ_VALIDATION_MAX];
    size_t n;
} tq_validation;

/* Appends one error (no-op when v is NULL or full). field and the formatted message are
 * cleaned and cut to fit. */
void tq_validation_add(tq_validation *v, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* [{"field":..., "message":...}, ...] — the `details` of a 400 reply. New reference,
 * caller decrefs; NULL on allocation failure. */
json_t *tq_validation_to_json(const tq_validation *v);

/* ---- the submission ------------------------------------------------------------------- */

typedef enum { TQ_JOB_LORA, TQ_JOB_DREAMBOOTH } tq_job_type;

/* Normal is 0, so that a zeroed submission is a normal one; the database keeps its own
 * numbers, in the order of starting (training_jobs.priority, 65_schedule.sql). */
typedef enum { TQ_PRIORITY_NORMAL, TQ_PRIORITY_LOW, TQ_PRIORITY_HIGH } tq_priority;

typedef struct {
    double learning_rate;
    int batch_size, steps, resolution, lora_rank, lora_alpha;
} tq_train_config;

/* A validated submission. After a successful parse every member is set: name is never
 * NULL (the default is filled in), trigger_words is NULL exactly when n_trigger_words is
 * 0. All strings are owned by the struct; release with tq_submission_free. */
typedef struct {
    char dataset_id[37]; /* lowercase uuid */
    char *name;
    tq_job_type type;
    char *base_model;
    tq_train_config config;
    char **trigger_words;
    size_t n_trigger_words;
    tq_priority priority; /* optional in the body; TQ_PRIORITY_NORMAL when absent */
    int priority_given;   /* the body named it: an explicit "normal" is checked against the
                             user's max_priority, an absent one defaults under it */
} tq_submission;

/* Static string "lora" / "dreambooth" ("unknown" for a value outside the enum). */
const char *tq_job_type_name(tq_job_type t);

/* Exact, case-sensitive. TQ_OK or TQ_ERR_INVALID (out untouched). */
int tq_job_type_parse(const char *s, tq_job_type *out);

/* Static string "low" / "normal" / "high" ("unknown" outside the enum); parse is exact,
 * case-sensitive: TQ_OK or TQ_ERR_INVALID (out untouched). */
const char *tq_priority_name(tq_priority p);
int tq_priority_parse(const char *s, tq_priority *out);

/* Fills c with the seed's defaults. */
void tq_train_config_defaults(tq_train_config *c);

/* 1 if s[0..len) is 1..max_bytes of well-formed UTF-8 with no control character (and so
 * no NUL); 0 otherwise. The rule for name and trigger words. */
int tq_text_valid(const char *s, size_t len, size_t max_bytes);

/* ---- user ids ------------------------------------------------------------------------ */

#define TQ_USER_ID_MAX_BYTES 128
/* A user id and its NUL. */
#define TQ_USER_ID_BUF (TQ_USER_ID_MAX_BYTES + 1)

/* 1 if s[0..len) is a valid user id: 1..TQ_USER_ID_MAX_BYTES bytes, each visible ASCII
 * (0x21..0x7E: no space, no control character, no NUL, nothing over 0x7E); 0 otherwise
 * (also for NULL). The one rule for the `sub` of a token the producer accepts (auth.c) and
 * the `user_id` of a trainq.job.v1 message (tq_msg.c): a user id travels into SQL
 * parameters, log lines, container labels and metrics, where a space or a look-alike
 * character would make two users hard to tell apart. docs/api.md and
 * docs/message-contract.md state it. */
int tq_user_id_valid(const char *s, size_t len);

/* 1 if s is a Hugging Face repo id: `name` or `owner/name` (zero or one '/'); each part
 * 1..96 bytes of [A-Za-z0-9._-], starting with a letter or digit, not ending with '.' or
 * '-', containing neither "--" nor "..". 0 otherwise (also for NULL). */
int tq_hf_model_id_valid(const char *s);

/*
 * Parses and validates a request body. The caps are applied before/while parsing: len
 * over TQ_SUBMISSION_MAX_BYTES → TQ_ERR_TOO_LARGE without reading the bytes; nesting
 * deeper than TQ_JSON_MAX_DEPTH, duplicate keys, "\u0000", invalid UTF-8, trailing
 * garbage, or a top level that is not an object → one error with field "body".
 *
 * Returns TQ_OK (out owns its strings), TQ_ERR_INVALID (v lists every failing field),
 * TQ_ERR_TOO_LARGE (v has one "body" error) or TQ_ERR_NOMEM. Unless TQ_OK is returned,
 * out holds nothing to free (tq_submission_free on it is still safe). v may be NULL.
 */
int tq_submission_parse(const char *buf, size_t len, tq_submission *out, tq_validation *v);

/* The same validation on an already-parsed object (borrowed; not modified). Same return
 * values and ownership as tq_submission_parse, minus TQ_ERR_TOO_LARGE. */
int tq_submission_from_json(const json_t *obj, tq_submission *out, tq_validation *v);

/* Every field present, defaults applied, keys in a fixed order (dataset_id, name, type,
 * base_model, config{learning_rate, batch_size, steps, resolution, lora_rank, lora_alpha},
 * trigger_words, then priority only when it is not normal: a normal job's body is the same
 * bytes as before priorities existed). New reference, caller decrefs; NULL on allocation failure or
 * when s has a NULL string member. */
json_t *tq_submission_to_json(const tq_submission *s);

/* Frees the members (not s itself) and zeroes s; safe to call twice. */
void tq_submission_free(tq_submission *s);

/*
 * The capped JSON loader used for submissions and messages (exported so that other
 * network JSON inputs get the same caps): rejects len > max_bytes (TQ_ERR_TOO_LARGE),
 * depth > TQ_JSON_MAX_DEPTH, duplicate keys, "\u0000", invalid UTF-8, and any top level
 * other than an object (TQ_ERR_INVALID), each as one "body" error in v (v may be NULL).
 * Every number is read as a real, as JavaScript does, so that an integer too big for 64
 * bits is a range error of its field rather than a parse error (a number beyond double
 * range, 1e400, is still a "body" error). On TQ_OK *out is a new reference, caller
 * decrefs; otherwise *out is NULL.
 */
int tq_json_load_object(const char *buf, size_t len, size_t max_bytes, json_t **out,
                        tq_validation *v);

#endif
