/*
 * tq_sign — publisher signatures on trainq.job.v1 messages (docs/message-contract.md,
 * "Signed messages"): HMAC-SHA256 over the exact body bytes with a key shared between
 * the publishers and the consumers, carried in two AMQP headers:
 *
 *   x-trainq-key-id     the id of the key that signed ("2026-11", "billing", ...)
 *   x-trainq-signature  "v1=" + HMAC-SHA256(secret, body) as 64 hex digits (written
 *                       lowercase, accepted in either case)
 *
 * Only the body is signed: every other field the consumer acts on is checked against it
 * (message_id must equal job_id, the routing key must equal type), so a signed body
 * cannot be replayed as a different job, and replaying it as itself is a duplicate.
 *
 * A key list ("keyring") is "id:secret" entries separated by ',' or newlines. The first
 * key signs, every key verifies: that is how keys rotate without a flag day.
 *
 * Pure functions over caller-owned memory; nothing logs, nothing allocates.
 */
#ifndef TQ_SIGN_H
#define TQ_SIGN_H

#include <stddef.h>

#include "tq_err.h"

#define TQ_SIGN_KEY_ID_HEADER "x-trainq-key-id"
#define TQ_SIGN_SIGNATURE_HEADER "x-trainq-signature"

#define TQ_SIGN_MAX_KEYS 16
#define TQ_SIGN_ID_MAX 64              /* bytes of a key id: [A-Za-z0-9._-] */
#define TQ_SIGN_SECRET_MIN 32          /* bytes of a secret: 256 bits if random bytes are hex'd */
#define TQ_SIGN_SECRET_MAX 256         /* printable ASCII except ',' and whitespace */
#define TQ_SIGN_MAC_LEN 32             /* HMAC-SHA256 */
#define TQ_SIGN_VALUE_LEN (3 + 64 + 1) /* "v1=" + hex + NUL */

typedef struct {
    char id[TQ_SIGN_ID_MAX + 1];
    unsigned char secret[TQ_SIGN_SECRET_MAX];
    size_t secret_len;
} tq_sign_key;

/* A plain value: copying it copies the secrets (wipe copies with tq_sign_keys_wipe). */
typedef struct {
    size_t n; /* 0: signing is off */
    tq_sign_key keys[TQ_SIGN_MAX_KEYS];
} tq_sign_keys;

/* Parses "id:secret,id:secret" (',' or '\n' separate entries; a '\r' before '\n' and
 * empty entries are ignored, so a file with one entry per line works as is). On an error
 * eb holds one line that names `what` (e.g. "TRAINQ_PUBLISH_KEYS") and never a secret:
 *   invalid TRAINQ_PUBLISH_KEYS: key "old" has a secret of 12 bytes; at least 32 are required
 * TQ_OK with out->n >= 1, or TQ_ERR_CONFIG (no key, empty or bad id, duplicate id, secret
 * too short or too long or with a bad character, more than TQ_SIGN_MAX_KEYS keys). */
int tq_sign_keys_parse(const char *text, const char *what, tq_sign_keys *out, tq_errbuf *eb);

/* Overwrite the secrets (and everything else) with zeros. */
void tq_sign_keys_wipe(tq_sign_keys *k);
void tq_sign_key_wipe(tq_sign_key *k);

/* HMAC-SHA256(key, data) into mac. TQ_OK, or TQ_ERR_INTERNAL if libcrypto failed. */
int tq_sign_hmac(const void *key, size_t key_len, const void *data, size_t len,
                 unsigned char mac[TQ_SIGN_MAC_LEN]);

/* The x-trainq-signature value of body under key: "v1=" + 64 lowercase hex digits. */
int tq_sign_value(const tq_sign_key *key, const void *body, size_t len,
                  char out[TQ_SIGN_VALUE_LEN]);

/*
 * Checks a delivery's headers against the keyring. key_id and signature are the header
 * values as received (NULL when absent; ki_len / sig_len bytes, not NUL-terminated, never
 * trusted to be text). TQ_OK if a listed key signed exactly this body; otherwise
 * TQ_ERR_AUTH with a one-line reason in `why` meant for x-trainq-reason:
 *   unsigned message: x-trainq-signature is required
 *   unsigned message: x-trainq-key-id is required
 *   unknown publisher key id "x"
 *   bad signature: expected v1= followed by 64 hex digits
 *   bad signature
 * The MAC comparison takes the same time wherever the first difference is.
 */
int tq_sign_verify(const tq_sign_keys *k, const char *key_id, size_t ki_len, const char *signature,
                   size_t sig_len, const void *body, size_t len, char *why, size_t why_cap);

#endif
