/*
 * tq_uuid — job ids and dataset ids.
 *
 * Canonical form everywhere in trainq (database, AMQP message_id, container names, JSON):
 * 36 characters, 8-4-4-4-12 lowercase hex. Input may use either case; it is lowercased on
 * the way in so that one id never has two spellings (the id is the idempotency key).
 */
#ifndef TQ_UUID_H
#define TQ_UUID_H

#define TQ_UUID_LEN 36 /* characters, without the terminating NUL */
#define TQ_UUID_BUF (TQ_UUID_LEN + 1)

/* Writes a fresh random (version 4) uuid, lowercase, NUL-terminated. Never fails. */
void tq_uuid_generate(char out[TQ_UUID_BUF]);

/* 1 if s (NUL-terminated, may be NULL → 0) is exactly 8-4-4-4-12 hex digits, either
 * case; 0 otherwise. Version and variant bits are not checked: any such id is accepted. */
int tq_uuid_valid(const char *s);

/* Copies a valid uuid into out, lowercased. Returns TQ_OK, or TQ_ERR_INVALID (out is then
 * set to the empty string) when tq_uuid_valid(s) is 0. */
int tq_uuid_canonical(const char *s, char out[TQ_UUID_BUF]);

#endif
