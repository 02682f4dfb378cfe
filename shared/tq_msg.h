/*
 * tq_msg — the AMQP message `trainq.job.v1` (the contract is docs/message-contract.md).
 *
 * Body: one compact JSON object, keys in this order:
 *   {"schema":"trainq.job.v1","job_id":UUID,"user_id":STRING,"submitted_at":RFC3339,
 *    "dataset_id":...,"name":...,"type":...,"base_model":...,"config":{...},"trigger_words":[...]}
 * The submission part obeys exactly the rules of tq_job.h (same validator, same defaults,
 * unknown keys rejected). Services other than the producer publish such messages directly,
 * so the decoder trusts nothing: it applies the same caps as the HTTP body.
 *
 * What must stay true:
 *   - decode(encode(m)) reproduces m exactly, the learning rate bit for bit;
 *   - encode is canonical: equal structs give identical bytes, so encode(decode(b)) is the
 *     canonical form of b and encoding it again changes nothing;
 *   - AMQP message_id == job_id, routing key == tq_job_type_name(sub.type);
 *   - this is the only encoder of trainq.job.v1: every job row keeps the bytes it produced
 *     (training_jobs.message) and a release republishes those (db/procedures/30_jobs.sql).
 */
#ifndef TQ_MSG_H
#define TQ_MSG_H

#include <stddef.h>

#include "tq_job.h"

#define TQ_MSG_SCHEMA "trainq.job.v1"
#define TQ_MSG_MAX_BYTES TQ_SUBMISSION_MAX_BYTES
#define TQ_TIMESTAMP_BUF 40

/* The topology names live in tq_amqp.h (TQ_AMQP_EXCHANGE, ...), one source of truth. */
#define TQ_MSG_REASON_HEADER "x-trainq-reason" /* why a message was dead-lettered */
#define TQ_MSG_CONTENT_TYPE "application/json"

typedef struct {
    char job_id[37];                     /* lowercase uuid */
    char *user_id;                       /* owned; valid by tq_user_id_valid (tq_job.h) */
    char submitted_at[TQ_TIMESTAMP_BUF]; /* RFC 3339, or "" when absent */
    tq_submission sub;                   /* owned */
} tq_job_msg;

/* The compact JSON body. Caller frees with free(). NULL on allocation failure, or when m
 * would not decode back to exactly m (invalid user_id or fields, a non-canonical uppercase
 * uuid): the result is checked with tq_msg_decode, so the producer can never publish a
 * message that consumers dead-letter. tq_user_id_valid and tq_uuid_canonical tell why. */
char *tq_msg_encode(const tq_job_msg *m);

/*
 * Parses and validates a body: len over TQ_MSG_MAX_BYTES → TQ_ERR_TOO_LARGE; JSON errors
 * (depth, duplicates, "\u0000", UTF-8, not an object) → TQ_ERR_INVALID with one "body"
 * error; otherwise every failing field is reported: schema, job_id, user_id, submitted_at,
 * then the submission's fields as tq_submission_from_json reports them (unknown keys
 * included). Returns TQ_OK (out owns its members; tq_msg_free), TQ_ERR_INVALID,
 * TQ_ERR_TOO_LARGE or TQ_ERR_NOMEM; on failure out holds nothing to free. v may be NULL.
 */
int tq_msg_decode(const char *body, size_t len, tq_job_msg *out, tq_validation *v);

/* Frees the members (not m) and zeroes m; safe to call twice. */
void tq_msg_free(tq_job_msg *m);

/* 1 if s is an RFC 3339 date-time (YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM), 'T' and
 * 'Z' in either case, at most 9 fraction digits, calendar-checked) shorter than
 * TQ_TIMESTAMP_BUF; 0 otherwise. */
int tq_rfc3339_valid(const char *s);

/* The current UTC time as "YYYY-MM-DDTHH:MM:SS.mmmZ". */
void tq_rfc3339_now(char out[TQ_TIMESTAMP_BUF]);

#endif
