/*
 * auth — bearer-token (JWT) verification for the HTTP producer.
 *
 * What must stay true:
 *  - The algorithm is pinned by configuration, never taken from the token: the header's
 *    `alg` is checked before libjwt sees the token and again after it verified it.
 *    `none` is never accepted, nor is any header with `crit`.
 *  - The token is capped (TQ_AUTH_TOKEN_MAX bytes) and its shape checked (three non-empty
 *    base64url segments) before anything is decoded.
 *  - No claim is read before the signature has been verified.
 *  - `exp` is required; `nbf`/`iat` are honoured; `sub` is the user id.
 *
 * A tq_auth is immutable once built, so one instance may be shared by every HTTP thread.
 */
#ifndef TQ_AUTH_H
#define TQ_AUTH_H

#include <stddef.h>

#include "tq_err.h"
#include "tq_job.h"

/* Longest token accepted (the text after "Bearer "), checked before any decoding. */
#define TQ_AUTH_TOKEN_MAX 8192
/* Longest `sub` accepted; user_id buffers need TQ_AUTH_USER_ID_MAX + 1 bytes. The rule for
 * its characters is tq_user_id_valid's (tq_job.h). */
#define TQ_AUTH_USER_ID_MAX TQ_USER_ID_MAX_BYTES
/* Shortest HS* secret accepted by tq_auth_new (Supabase secrets are longer). */
#define TQ_AUTH_SECRET_MIN 16

/* Supabase signs its users' tokens with aud "authenticated" (and anonymous ones with "anon"):
 * without an audience check, any token signed with the project's secret would be accepted. */
#define TQ_AUTH_DEFAULT_AUDIENCE "authenticated"
/* The audience value that turns the check off. */
#define TQ_AUTH_ANY_AUDIENCE "-"

typedef struct tq_auth tq_auth;

/* All strings are borrowed only for the duration of tq_auth_new (it copies them). */
typedef struct {
    const char *alg;            /* "HS256" | "HS384" | "HS512" | "RS256" | "RS384" | "RS512" |
                                   "ES256" | "ES384" */
    const char *secret;         /* HS*: shared secret; its raw bytes are the HMAC key
                                   (Supabase-compatible). Must be NULL for RS and ES. */
    const char *public_key_pem; /* RS and ES: SubjectPublicKeyInfo PEM ("BEGIN PUBLIC KEY").
                                   Must be NULL for HS. */
    const char *audience;       /* `aud` must equal it or, when an array, contain it. NULL:
                                   TQ_AUTH_DEFAULT_AUDIENCE; TQ_AUTH_ANY_AUDIENCE: not
                                   checked (an operator's explicit choice, never a default) */
    const char *issuer;         /* NULL = not checked; else `iss` must equal it */
    long leeway_seconds;        /* clock skew allowed for exp/nbf/iat (0..3600), e.g. 30 */
    const char *operator_claim; /* a token whose claim of this name is operator_value (or an */
    const char *operator_value; /* array holding it) is an operator's; NULL/"": none is */
} tq_auth_config;

/* Builds a verifier. TQ_ERR_CONFIG (eb says which setting and why) for an unknown alg, a
 * missing or superfluous secret/key, an HS secret shorter than TQ_AUTH_SECRET_MIN, a key
 * that does not parse or does not fit the alg (RSA < 2048 bits, EC curve not the alg's).
 * TQ_ERR_NOMEM when out of memory. On success *out is owned by the caller (tq_auth_free). */
int tq_auth_new(const tq_auth_config *cfg, tq_auth **out, tq_errbuf *eb);

/* NULL is fine. */
void tq_auth_free(tq_auth *a);

/* Verifies an `Authorization` header value ("Bearer <token>": scheme case-insensitive,
 * then one or more spaces; NULL = header absent). `now` is seconds since the epoch.
 * TQ_OK: user_id holds the token's `sub` (valid by tq_user_id_valid).
 * TQ_ERR_AUTH: eb holds one line safe to show the client ("token expired", ...).
 * TQ_ERR_NOMEM when out of memory; TQ_ERR_INTERNAL when user_id_cap is too small for the
 * `sub` of an otherwise valid token (a caller bug: pass TQ_AUTH_USER_ID_MAX + 1).
 * Thread-safe: `a` is only read. */
int tq_auth_verify(const tq_auth *a, const char *authorization, long long now, char *user_id,
                   size_t user_id_cap, tq_errbuf *eb);

/* 1 when `authorization` (NULL = absent) presents a bearer token at all, valid or not; 0
 * when it is absent, empty or of another scheme, with eb saying which. RFC 6750 section
 * 3.1: a request with no credentials gets a challenge without an error code, one with a
 * bad token error="invalid_token". */
int tq_auth_bearer_given(const char *authorization, tq_errbuf *eb);
/* tq_auth_verify, and *is_operator (may be NULL) set to 1 when the verified token carries
 * the configured operator claim (tq_auth_config.operator_claim), else 0; *until (may be
 * NULL) the last second, since the epoch, it is accepted (its exp plus the leeway). */
int tq_auth_verify_operator(const tq_auth *a, const char *authorization, long long now,
                            char *user_id, size_t user_id_cap, int *is_operator, long long *until,
                            tq_errbuf *eb);

#endif
