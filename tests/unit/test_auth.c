/*
 * Unit tests for producer/auth: tokens are minted here with libjwt from the PEM keys in
 * tests/unit/keys/ (TQ_TEST_KEYS_DIR, or argv[1]), or hand-crafted where libjwt would
 * refuse to build them. Each rejection test also checks the message, so that removing
 * the check it is about changes the outcome even where libjwt would back it up.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <jwt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"

#ifndef TQ_TEST_KEYS_DIR
#define TQ_TEST_KEYS_DIR "tests/unit/keys"
#endif

#define NOW 1700000000LL
#define SECRET "super-secret-jwt-token-with-at-least-32-characters-long"

static const char *keys_dir = TQ_TEST_KEYS_DIR;

/* ------------------------------------------------------------------ helpers */

static char *slurp(const char *name)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", keys_dir, name);
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    char *buf = calloc(1, 16384);
    assert_non_null(buf);
    size_t n = fread(buf, 1, 16383, f);
    fclose(f);
    assert_true(n > 0);
    return buf;
}

/* Mints a token with libjwt: grants_json is merged into the claims. Caller frees. */
static char *mint(jwt_alg_t alg, const void *key, size_t key_len, const char *grants_json)
{
    jwt_t *j = NULL;
    assert_int_equal(jwt_new(&j), 0);
    if (grants_json)
        assert_int_equal(jwt_add_grants_json(j, grants_json), 0);
    assert_int_equal(jwt_set_alg(j, alg, key, (int)key_len), 0);
    char *tok = jwt_encode_str(j);
    assert_non_null(tok);
    jwt_free(j);
    return tok;
}

static char *mint_hs(const char *secret, const char *grants_json)
{
    return mint(JWT_ALG_HS256, secret, strlen(secret), grants_json);
}

static char *mint_pem(jwt_alg_t alg, const char *key_file, const char *grants_json)
{
    char *pem = slurp(key_file);
    char *tok = mint(alg, pem, strlen(pem), grants_json);
    free(pem);
    return tok;
}

static char *b64url(const char *s)
{
    static const char A[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t n = strlen(s);
    char *o = calloc(1, n * 2 + 4);
    assert_non_null(o);
    size_t k = 0;
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)u[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)u[i + 1] << 8;
        if (i + 2 < n)
            v |= u[i + 2];
        o[k++] = A[(v >> 18) & 63];
        o[k++] = A[(v >> 12) & 63];
        if (i + 1 < n)
            o[k++] = A[(v >> 6) & 63];
        if (i + 2 < n)
            o[k++] = A[v & 63];
    }
    return o;
}

/* "<b64url(header)>.<b64url(payload)>.<sig>"; caller frees. */
static char *craft(const char *header_json, const char *payload_json, const char *sig)
{
    char *h = b64url(header_json), *p = b64url(payload_json);
    size_t n = strlen(h) + strlen(p) + strlen(sig) + 3;
    char *t = malloc(n);
    assert_non_null(t);
    snprintf(t, n, "%s.%s.%s", h, p, sig);
    free(h);
    free(p);
    return t;
}

static char *bearer(const char *tok)
{
    size_t n = strlen(tok) + 8;
    char *b = malloc(n);
    assert_non_null(b);
    snprintf(b, n, "Bearer %s", tok);
    return b;
}

typedef struct {
    tq_auth *a;
    char user[TQ_AUTH_USER_ID_MAX + 1];
    tq_errbuf eb;
} fixture;

static tq_auth *make_auth(const char *alg, const char *secret, const char *pem_file,
                          const char *aud, const char *iss)
{
    char *pem = pem_file ? slurp(pem_file) : NULL;
    tq_auth_config cfg = {.alg = alg,
                          .secret = secret,
                          .public_key_pem = pem,
                          .audience = aud,
                          .issuer = iss,
                          .leeway_seconds = 30};
    tq_auth *a = NULL;
    tq_errbuf eb = {{0}};
    int rc = tq_auth_new(&cfg, &a, &eb);
    free(pem);
    if (rc != TQ_OK)
        fail_msg("tq_auth_new: %s", eb.msg);
    return a;
}

/* Verifies "Bearer <tok>" and returns the code; fx->user / fx->eb hold the outcome. */
static int verify_tok(fixture *fx, const char *tok, long long now)
{
    char *h = bearer(tok);
    memset(&fx->eb, 0, sizeof fx->eb);
    int rc = tq_auth_verify(fx->a, h, now, fx->user, sizeof fx->user, &fx->eb);
    free(h);
    return rc;
}

static void expect_reject(fixture *fx, const char *tok, long long now, const char *msg)
{
    int rc = verify_tok(fx, tok, now);
    if (rc != TQ_ERR_AUTH || strcmp(fx->eb.msg, msg) != 0)
        fail_msg("expected TQ_ERR_AUTH \"%s\", got %d \"%s\"", msg, rc, fx->eb.msg);
    assert_string_equal(fx->user, "");
}

static void expect_accept(fixture *fx, const char *tok, long long now, const char *user)
{
    int rc = verify_tok(fx, tok, now);
    if (rc != TQ_OK)
        fail_msg("expected TQ_OK, got %d \"%s\"", rc, fx->eb.msg);
    assert_string_equal(fx->user, user);
}

static int setup_hs(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    fx->a = make_auth("HS256", SECRET, NULL, NULL, NULL);
    *state = fx;
    return 0;
}

static int setup_rs(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    fx->a = make_auth("RS256", NULL, "rsa_public.pem", NULL, NULL);
    *state = fx;
    return 0;
}

static int setup_es(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    fx->a = make_auth("ES256", NULL, "ec_public.pem", NULL, NULL);
    *state = fx;
    return 0;
}

static int setup_hs_aud_iss(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    fx->a =
        make_auth("HS256", SECRET, NULL, "authenticated", "https://example.supabase.co/auth/v1");
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture *fx = *state;
    tq_auth_free(fx->a);
    free(fx);
    return 0;
}

#define VALID_CLAIMS                                                                               \
    "{\"aud\":\"authenticated\",\"sub\":\"user-1\",\"exp\":1700003600,\"iat\":1700000000}"

/* ------------------------------------------------------------------ accepted tokens */

static void valid_hs256_token_yields_its_sub(void **state)
{
    fixture *fx = *state;
    char *t = mint_hs(SECRET, VALID_CLAIMS);
    expect_accept(fx, t, NOW, "user-1");
    free(t);
}

/* The operator claim (TRAINQ_ADMIN_CLAIM): a string equal to the value or an array holding
 * it marks an operator's token; anything else, or no claim configured, does not. */
static int operator_of_token(const char *claim, const char *value, const char *claims_json)
{
    tq_auth_config cfg = {.alg = "HS256",
                          .secret = SECRET,
                          .leeway_seconds = 30,
                          .operator_claim = claim,
                          .operator_value = value};
    tq_auth *a = NULL;
    tq_errbuf eb = {{0}};
    assert_int_equal(tq_auth_new(&cfg, &a, &eb), TQ_OK);
    char *t = mint_hs(SECRET, claims_json), *b = bearer(t);
    char user[TQ_AUTH_USER_ID_MAX + 1];
    int op = -1;
    long long until = 0;
    assert_int_equal(tq_auth_verify_operator(a, b, NOW, user, sizeof user, &op, &until, &eb),
                     TQ_OK);
    assert_string_equal(user, "user-1");
    assert_int_equal(until, 1700003600LL + 30); /* exp (CLAIMS_WITH) plus the leeway */
    free(b);
    free(t);
    tq_auth_free(a);
    return op;
}

#define CLAIMS_WITH(extra)                                                                         \
    "{\"aud\":\"authenticated\",\"sub\":\"user-1\",\"exp\":1700003600," extra "}"

static void operator_claim_marks_an_operators_token_and_nothing_else(void **state)
{
    (void)state;
    assert_int_equal(
        operator_of_token("trainq_role", "admin", CLAIMS_WITH("\"trainq_role\":\"admin\"")), 1);
    assert_int_equal(
        operator_of_token("trainq_role", "admin", CLAIMS_WITH("\"trainq_role\":[\"x\",\"admin\"]")),
        1);
    assert_int_equal(
        operator_of_token("trainq_role", "admin", CLAIMS_WITH("\"trainq_role\":\"Admin\"")), 0);
    assert_int_equal(
        operator_of_token("trainq_role", "admin", CLAIMS_WITH("\"trainq_role\":\"admins\"")), 0);
    assert_int_equal(operator_of_token("trainq_role", "admin", CLAIMS_WITH("\"role\":\"admin\"")),
                     0);
    assert_int_equal(
        operator_of_token("trainq_role", "admin", CLAIMS_WITH("\"trainq_role\":{\"a\":\"admin\"}")),
        0);
    assert_int_equal(operator_of_token("trainq_role", "admin", CLAIMS_WITH("\"trainq_role\":true")),
                     0);
    assert_int_equal(operator_of_token("role", "ops", CLAIMS_WITH("\"role\":\"ops\"")), 1);
    /* no claim configured: no token is an operator's */
    assert_int_equal(operator_of_token("", "admin", CLAIMS_WITH("\"trainq_role\":\"admin\"")), 0);
    assert_int_equal(operator_of_token(NULL, NULL, CLAIMS_WITH("\"trainq_role\":\"admin\"")), 0);
}

static void valid_rs256_token_yields_its_sub(void **state)
{
    fixture *fx = *state;
    char *t = mint_pem(JWT_ALG_RS256, "rsa_private.pem", VALID_CLAIMS);
    expect_accept(fx, t, NOW, "user-1");
    free(t);
}

static void valid_es256_token_yields_its_sub(void **state)
{
    fixture *fx = *state;
    char *t = mint_pem(JWT_ALG_ES256, "ec_private.pem", VALID_CLAIMS);
    expect_accept(fx, t, NOW, "user-1");
    free(t);
}

static void scheme_is_case_insensitive_and_allows_several_spaces(void **state)
{
    fixture *fx = *state;
    char *t = mint_hs(SECRET, VALID_CLAIMS);
    const char *prefixes[] = {"bearer ", "BEARER ", "Bearer    "};
    for (size_t i = 0; i < 3; i++) {
        char h[2048];
        snprintf(h, sizeof h, "%s%s", prefixes[i], t);
        memset(fx->user, 0, sizeof fx->user);
        assert_int_equal(tq_auth_verify(fx->a, h, NOW, fx->user, sizeof fx->user, &fx->eb), TQ_OK);
        assert_string_equal(fx->user, "user-1");
    }
    free(t);
}

/* ------------------------------------------------------------------ signatures and keys */

static void token_signed_with_another_secret_is_rejected(void **state)
{
    fixture *fx = *state;
    char *t = mint_hs("another-secret-of-sufficient-length-0123456789", VALID_CLAIMS);
    expect_reject(fx, t, NOW, "token signature is invalid");
    free(t);
}

static void token_signed_with_another_rsa_key_is_rejected(void **state)
{
    fixture *fx = *state;
    char *t = mint_pem(JWT_ALG_RS256, "rsa_wrong_private.pem", VALID_CLAIMS);
    expect_reject(fx, t, NOW, "token signature is invalid");
    free(t);
}

static void token_signed_with_another_ec_key_is_rejected(void **state)
{
    fixture *fx = *state;
    char *t = mint_pem(JWT_ALG_ES256, "ec_wrong_private.pem", VALID_CLAIMS);
    expect_reject(fx, t, NOW, "token signature is invalid");
    free(t);
}

/* The payload is swapped for another user's after signing: nothing from it may count. */
static void tampered_payload_is_rejected(void **state)
{
    fixture *fx = *state;
    char *t = mint_hs(SECRET, VALID_CLAIMS);
    char *other = b64url("{\"aud\":\"authenticated\",\"sub\":\"admin\",\"exp\":1700003600}");
    char *d1 = strchr(t, '.'), *d2 = strchr(d1 + 1, '.');
    char forged[2048];
    snprintf(forged, sizeof forged, "%.*s.%s%s", (int)(d1 - t), t, other, d2);
    expect_reject(fx, forged, NOW, "token signature is invalid");
    free(other);
    free(t);
}

/* ------------------------------------------------------------------ algorithm pinning */

static void alg_none_is_rejected(void **state)
{
    fixture *fx = *state;
    char *p = b64url(VALID_CLAIMS);
    char t[1024];
    /* With no signature at all the shape check fires first ... */
    snprintf(t, sizeof t, "eyJhbGciOiJub25lIn0.%s.", p);
    expect_reject(fx, t, NOW, "token is malformed");
    /* ... and with a dummy one the pinned algorithm does. */
    snprintf(t, sizeof t, "eyJhbGciOiJub25lIn0.%s.c2ln", p);
    expect_reject(fx, t, NOW, "token algorithm none is not accepted");
    free(p);
    char *u = craft("{\"alg\":\"NONE\",\"typ\":\"JWT\"}", VALID_CLAIMS, "c2ln");
    expect_reject(fx, u, NOW, "token algorithm NONE is not accepted");
    free(u);
}

/* libjwt 1.10 would verify this: it HMACs with whatever key bytes it was given. */
static void hs256_signed_with_rsa_public_pem_is_rejected_when_rs256_configured(void **state)
{
    fixture *fx = *state;
    char *pem = slurp("rsa_public.pem");
    char *t = mint(JWT_ALG_HS256, pem, strlen(pem), VALID_CLAIMS);
    expect_reject(fx, t, NOW, "token algorithm HS256 is not accepted");
    free(t);
    free(pem);
}

static void rs256_token_is_rejected_when_hs256_configured(void **state)
{
    fixture *fx = *state;
    char *t = mint_pem(JWT_ALG_RS256, "rsa_private.pem", VALID_CLAIMS);
    expect_reject(fx, t, NOW, "token algorithm RS256 is not accepted");
    free(t);
}

static void hs512_token_is_rejected_when_hs256_configured(void **state)
{
    fixture *fx = *state;
    char *t = mint(JWT_ALG_HS512, SECRET, strlen(SECRET), VALID_CLAIMS);
    expect_reject(fx, t, NOW, "token algorithm HS512 is not accepted");
    free(t);
}

static void header_with_duplicate_alg_is_rejected(void **state)
{
    fixture *fx = *state;
    char *t = craft("{\"alg\":\"HS256\",\"alg\":\"RS256\"}", VALID_CLAIMS, "c2ln");
    expect_reject(fx, t, NOW, "token header is not a json object");
    free(t);
}

static void header_with_crit_is_rejected(void **state)
{
    fixture *fx = *state;
    jwt_t *j = NULL;
    assert_int_equal(jwt_new(&j), 0);
    assert_int_equal(jwt_add_grants_json(j, VALID_CLAIMS), 0);
    assert_int_equal(jwt_add_headers_json(j, "{\"crit\":[\"b64\"],\"b64\":false}"), 0);
    assert_int_equal(
        jwt_set_alg(j, JWT_ALG_HS256, (const unsigned char *)SECRET, (int)strlen(SECRET)), 0);
    char *t = jwt_encode_str(j);
    jwt_free(j);
    expect_reject(fx, t, NOW, "token has critical header extensions, not supported");
    free(t);
}

static void header_without_alg_is_rejected(void **state)
{
    fixture *fx = *state;
    char *t = craft("{\"typ\":\"JWT\"}", VALID_CLAIMS, "c2ln");
    expect_reject(fx, t, NOW, "token header has no alg");
    free(t);
}

static void hs256_header_with_empty_signature_is_rejected(void **state)
{
    fixture *fx = *state;
    char *t = craft("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", VALID_CLAIMS, "");
    expect_reject(fx, t, NOW, "token is malformed");
    free(t);
}

/* ------------------------------------------------------------------ shape and size */

static void missing_header_is_rejected(void **state)
{
    fixture *fx = *state;
    assert_int_equal(tq_auth_verify(fx->a, NULL, NOW, fx->user, sizeof fx->user, &fx->eb),
                     TQ_ERR_AUTH);
    assert_string_equal(fx->eb.msg, "missing bearer token");
    assert_int_equal(tq_auth_verify(fx->a, "", NOW, fx->user, sizeof fx->user, &fx->eb),
                     TQ_ERR_AUTH);
    assert_string_equal(fx->eb.msg, "missing bearer token");
    assert_int_equal(tq_auth_verify(fx->a, "Bearer   ", NOW, fx->user, sizeof fx->user, &fx->eb),
                     TQ_ERR_AUTH);
    assert_string_equal(fx->eb.msg, "missing bearer token");
}

static void basic_scheme_is_rejected(void **state)
{
    fixture *fx = *state;
    const char *bad[] = {"Basic xyz", "Bearerxyz", "Token abc.def.ghi"};
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(tq_auth_verify(fx->a, bad[i], NOW, fx->user, sizeof fx->user, &fx->eb),
                         TQ_ERR_AUTH);
        assert_string_equal(fx->eb.msg, "authorization scheme must be bearer");
    }
}

static void garbage_and_two_segment_tokens_are_malformed(void **state)
{
    fixture *fx = *state;
    expect_reject(fx, "garbage", NOW, "token is malformed");
    expect_reject(fx, "eyJhbGciOiJIUzI1NiJ9.e30", NOW, "token is malformed");
    expect_reject(fx, "a.b.c.d", NOW, "token is malformed");
    expect_reject(fx, ".e30.c2ln", NOW, "token is malformed");
    expect_reject(fx, "eyJhbGciOiJIUzI1NiJ9..c2ln", NOW, "token is malformed");
}

/* libjwt's base64 decoder skips characters it does not know, so these must be refused
 * before it sees them. */
static void valid_token_with_foreign_characters_is_malformed(void **state)
{
    fixture *fx = *state;
    char *t = mint_hs(SECRET, VALID_CLAIMS);
    char buf[2048];
    snprintf(buf, sizeof buf, "%s=", t);
    expect_reject(fx, buf, NOW, "token is malformed");
    snprintf(buf, sizeof buf, "%s ", t);
    expect_reject(fx, buf, NOW, "token is malformed");
    char *d = strchr(t, '.');
    snprintf(buf, sizeof buf, "%.*s\n%s", (int)(d - t), t, d);
    expect_reject(fx, buf, NOW, "token is malformed");
    snprintf(buf, sizeof buf, "%.*s %s", (int)(d - t), t, d);
    expect_reject(fx, buf, NOW, "token is malformed");
    free(t);
}

static void token_over_8k_is_rejected_before_decoding(void **state)
{
    fixture *fx = *state;
    /* A well-formed, validly signed token that is simply too big. */
    char pad[9 * 1024 + 1];
    memset(pad, 'x', sizeof pad - 1);
    pad[sizeof pad - 1] = '\0';
    char claims[10 * 1024];
    snprintf(claims, sizeof claims,
             "{\"aud\":\"authenticated\",\"sub\":\"user-1\",\"exp\":1700003600,\"pad\":\"%s\"}",
             pad);
    char *t = mint_hs(SECRET, claims);
    assert_true(strlen(t) > 9 * 1024);
    expect_reject(fx, t, NOW, "token is too long (over 8192 bytes)");
    free(t);
}

static void header_that_is_not_json_is_rejected(void **state)
{
    fixture *fx = *state;
    char *t = craft("not json", VALID_CLAIMS, "c2ln");
    expect_reject(fx, t, NOW, "token header is not a json object");
    free(t);
    t = craft("[\"HS256\"]", VALID_CLAIMS, "c2ln");
    expect_reject(fx, t, NOW, "token header is not a json object");
    free(t);
}

static void payload_that_is_not_json_is_rejected(void **state)
{
    fixture *fx = *state;
    char *t = craft("{\"alg\":\"HS256\"}", "nope", "c2ln");
    expect_reject(fx, t, NOW, "token payload is not a json object");
    free(t);
}

/* JSON, but with a number jansson cannot hold: said as such, not as "not json". */
static void payload_with_a_huge_number_is_named_as_such(void **state)
{
    fixture *fx = *state;
    char *t =
        craft("{\"alg\":\"HS256\"}",
              "{\"aud\":\"authenticated\",\"sub\":\"u\",\"exp\":99999999999999999999}", "c2ln");
    expect_reject(fx, t, NOW, "token payload holds a number out of range");
    free(t);
    t = craft("{\"alg\":\"HS256\",\"x\":-99999999999999999999}", VALID_CLAIMS, "c2ln");
    expect_reject(fx, t, NOW, "token header holds a number out of range");
    free(t);
}

/* Whether any bearer token was presented decides the challenge's form (RFC 6750 3.1). */
static void bearer_given_tells_no_credentials_from_a_bad_token(void **state)
{
    (void)state;
    tq_errbuf eb = {{0}};
    assert_int_equal(tq_auth_bearer_given(NULL, &eb), 0);
    assert_string_equal(eb.msg, "missing bearer token");
    assert_int_equal(tq_auth_bearer_given("Bearer    ", &eb), 0);
    assert_string_equal(eb.msg, "missing bearer token");
    assert_int_equal(tq_auth_bearer_given("  ", &eb), 0);
    assert_string_equal(eb.msg, "missing bearer token");
    assert_int_equal(tq_auth_bearer_given("Basic dXNlcjpwdw==", &eb), 0);
    assert_string_equal(eb.msg, "authorization scheme must be bearer");
    assert_int_equal(tq_auth_bearer_given("bearer x", &eb), 1);
    assert_int_equal(tq_auth_bearer_given("Bearer not.a.token", &eb), 1);
}

/* ------------------------------------------------------------------ claims */

static void expiry_is_honoured_with_leeway(void **state)
{
    fixture *fx = *state;
    char c[256];
    snprintf(c, sizeof c, "{\"aud\":\"authenticated\",\"sub\":\"user-1\",\"exp\":%lld}", NOW - 100);
    char *t = mint_hs(SECRET, c);
    expect_reject(fx, t, NOW, "token expired");
    free(t);
    snprintf(c, sizeof c, "{\"aud\":\"authenticated\",\"sub\":\"user-1\",\"exp\":%lld}", NOW - 10);
    t = mint_hs(SECRET, c);
    expect_accept(fx, t, NOW, "user-1");
    /* Exactly at exp + leeway it is over. */
    expect_reject(fx, t, NOW + 20, "token expired");
    free(t);
}

static void missing_or_non_numeric_exp_is_rejected(void **state)
{
    fixture *fx = *state;
    char *t = mint_hs(SECRET, "{\"aud\":\"authenticated\",\"sub\":\"user-1\"}");
    expect_reject(fx, t, NOW, "token has no exp claim");
    free(t);
    t = mint_hs(SECRET, "{\"aud\":\"authenticated\",\"sub\":\"user-1\",\"exp\":\"1700003600\"}");
    expect_reject(fx, t, NOW, "token exp claim is not a number");
    free(t);
}

static void fractional_exp_is_accepted(void **state)
{
    fixture *fx = *state;
    char *t =
        mint_hs(SECRET, "{\"aud\":\"authenticated\",\"sub\":\"user-1\",\"exp\":1700003600.5}");
    expect_accept(fx, t, NOW, "user-1");
    free(t);
}

static void nbf_in_the_future_is_rejected(void **state)
{
    fixture *fx = *state;
    char c[256];
    snprintf(c, sizeof c,
             "{\"aud\":\"authenticated\",\"sub\":\"user-1\",\"exp\":%lld,\"nbf\":%lld}", NOW + 3600,
             NOW + 100);
    char *t = mint_hs(SECRET, c);
    expect_reject(fx, t, NOW, "token is not valid yet");
    expect_accept(fx, t, NOW + 70, "user-1"); /* within leeway */
    free(t);
    t = mint_hs(
        SECRET,
        "{\"aud\":\"authenticated\",\"sub\":\"user-1\",\"exp\":1700003600,\"nbf\":\"soon\"}");
    expect_reject(fx, t, NOW, "token nbf claim is not a number");
    free(t);
}

static void iat_in_the_future_is_rejected(void **state)
{
    fixture *fx = *state;
    char c[256];
    snprintf(c, sizeof c,
             "{\"aud\":\"authenticated\",\"sub\":\"user-1\",\"exp\":%lld,\"iat\":%lld}", NOW + 3600,
             NOW + 100);
    char *t = mint_hs(SECRET, c);
    expect_reject(fx, t, NOW, "token was issued in the future");
    free(t);
    snprintf(c, sizeof c,
             "{\"aud\":\"authenticated\",\"sub\":\"user-1\",\"exp\":%lld,\"iat\":%lld}", NOW + 3600,
             NOW + 20);
    t = mint_hs(SECRET, c);
    expect_accept(fx, t, NOW, "user-1");
    free(t);
}

static void sub_must_be_a_short_visible_string(void **state)
{
    fixture *fx = *state;
    char *t = mint_hs(SECRET, "{\"aud\":\"authenticated\",\"exp\":1700003600}");
    expect_reject(fx, t, NOW, "token has no sub claim");
    free(t);
    t = mint_hs(SECRET, "{\"aud\":\"authenticated\",\"sub\":\"\",\"exp\":1700003600}");
    expect_reject(fx, t, NOW, "token sub claim is empty");
    free(t);
    t = mint_hs(SECRET, "{\"aud\":\"authenticated\",\"sub\":42,\"exp\":1700003600}");
    expect_reject(fx, t, NOW, "token sub claim is not a string");
    free(t);
    t = mint_hs(SECRET, "{\"aud\":\"authenticated\",\"sub\":\"a\\nb\",\"exp\":1700003600}");
    expect_reject(fx, t, NOW, "token sub claim has characters that are not allowed");
    free(t);
    t = mint_hs(SECRET, "{\"aud\":\"authenticated\",\"sub\":\"a b\",\"exp\":1700003600}");
    expect_reject(fx, t, NOW, "token sub claim has characters that are not allowed");
    free(t);

    char c[512], sub[TQ_AUTH_USER_ID_MAX + 2];
    memset(sub, 'u', sizeof sub - 1);
    sub[sizeof sub - 1] = '\0'; /* 129 chars */
    snprintf(c, sizeof c, "{\"aud\":\"authenticated\",\"sub\":\"%s\",\"exp\":1700003600}", sub);
    t = mint_hs(SECRET, c);
    expect_reject(fx, t, NOW, "token sub claim is too long (over 128 bytes)");
    free(t);
    sub[TQ_AUTH_USER_ID_MAX] = '\0'; /* 128 chars: the longest allowed */
    snprintf(c, sizeof c, "{\"aud\":\"authenticated\",\"sub\":\"%s\",\"exp\":1700003600}", sub);
    t = mint_hs(SECRET, c);
    expect_accept(fx, t, NOW, sub);
    /* A caller buffer too small for it is a caller bug, not the client's fault. */
    char small[16];
    char *h = bearer(t);
    assert_int_equal(tq_auth_verify(fx->a, h, NOW, small, sizeof small, &fx->eb), TQ_ERR_INTERNAL);
    free(h);
    free(t);
}

/* HS256 tokens of user "u" with these claims: refused with msg, or accepted when it is NULL. */
typedef struct {
    const char *claims;
    const char *msg;
} claims_case;

static void expect_claims(fixture *fx, const claims_case *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char *t = mint_hs(SECRET, cases[i].claims);
        if (cases[i].msg)
            expect_reject(fx, t, NOW, cases[i].msg);
        else
            expect_accept(fx, t, NOW, "u");
        free(t);
    }
}

static void audience_and_issuer_are_checked_when_configured(void **state)
{
    fixture *fx = *state;
    static const claims_case cases[] = {
        {"{\"sub\":\"u\",\"exp\":1700003600,\"iss\":\"https://example.supabase.co/auth/v1\","
         "\"aud\":\"authenticated\"}",
         NULL},
        {"{\"sub\":\"u\",\"exp\":1700003600,\"iss\":\"https://example.supabase.co/auth/v1\","
         "\"aud\":[\"other\",\"authenticated\"]}",
         NULL},
        {"{\"sub\":\"u\",\"exp\":1700003600,\"iss\":\"https://example.supabase.co/auth/v1\","
         "\"aud\":\"anon\"}",
         "token audience is not accepted"},
        {"{\"sub\":\"u\",\"exp\":1700003600,\"iss\":\"https://example.supabase.co/auth/v1\","
         "\"aud\":[\"anon\",\"other\"]}",
         "token audience is not accepted"},
        {"{\"sub\":\"u\",\"exp\":1700003600,\"iss\":\"https://example.supabase.co/auth/v1\","
         "\"aud\":\"authenticated-not\"}",
         "token audience is not accepted"},
        {"{\"sub\":\"u\",\"exp\":1700003600,\"iss\":\"https://example.supabase.co/auth/v1\"}",
         "token has no aud claim"},
        {"{\"sub\":\"u\",\"exp\":1700003600,\"iss\":\"https://evil.example/auth/v1\","
         "\"aud\":\"authenticated\"}",
         "token issuer is not accepted"},
        {"{\"sub\":\"u\",\"exp\":1700003600,\"aud\":\"authenticated\"}", "token has no iss claim"},
    };
    expect_claims(fx, cases, sizeof cases / sizeof cases[0]);
}

/* With no audience configured, `aud` must be (or contain) "authenticated", as Supabase's user
 * tokens do: a token signed with the project's secret for anything else (anon,
 * service_role, another app) is refused. */
static void audience_authenticated_is_required_by_default(void **state)
{
    fixture *fx = *state;
    static const claims_case cases[] = {
        {"{\"sub\":\"u\",\"exp\":1700003600,\"aud\":\"authenticated\"}", NULL},
        {"{\"sub\":\"u\",\"exp\":1700003600,\"aud\":[\"anon\",\"authenticated\"]}", NULL},
        {"{\"sub\":\"u\",\"exp\":1700003600}", "token has no aud claim"},
        {"{\"sub\":\"u\",\"exp\":1700003600,\"aud\":\"anon\"}", "token audience is not accepted"},
        {"{\"sub\":\"u\",\"exp\":1700003600,\"aud\":\"service_role\"}",
         "token audience is not accepted"},
        {"{\"sub\":\"u\",\"exp\":1700003600,\"aud\":[\"anon\"]}", "token audience is not accepted"},
    };
    expect_claims(fx, cases, sizeof cases / sizeof cases[0]);
}

static int setup_hs_any_audience(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    fx->a = make_auth("HS256", SECRET, NULL, TQ_AUTH_ANY_AUDIENCE, NULL);
    *state = fx;
    return 0;
}

static void audience_is_ignored_only_when_explicitly_disabled(void **state)
{
    fixture *fx = *state;
    static const char *const claims[] = {
        "{\"sub\":\"u\",\"exp\":1700003600,\"aud\":\"whatever\",\"iss\":\"x\"}",
        "{\"sub\":\"u\",\"exp\":1700003600}",
        "{\"sub\":\"u\",\"exp\":1700003600,\"aud\":\"authenticated\"}",
    };
    for (size_t i = 0; i < sizeof claims / sizeof claims[0]; i++) {
        char *t = mint_hs(SECRET, claims[i]);
        expect_accept(fx, t, NOW, "u");
        free(t);
    }
}

/* ------------------------------------------------------------------ configuration */

static int config_rc(const char *alg, const char *secret, const char *pem_file, tq_errbuf *eb)
{
    char *pem = pem_file ? slurp(pem_file) : NULL;
    tq_auth_config cfg = {
        .alg = alg, .secret = secret, .public_key_pem = pem, .leeway_seconds = 30};
    tq_auth *a = NULL;
    int rc = tq_auth_new(&cfg, &a, eb);
    if (rc == TQ_OK)
        assert_non_null(a);
    else
        assert_null(a);
    tq_auth_free(a);
    free(pem);
    return rc;
}

static void bad_configurations_are_refused(void **state)
{
    (void)state;
    tq_errbuf eb;
    assert_int_equal(config_rc("none", SECRET, NULL, &eb), TQ_ERR_CONFIG);
    assert_int_equal(config_rc("hs256", SECRET, NULL, &eb), TQ_ERR_CONFIG);
    assert_int_equal(config_rc(NULL, SECRET, NULL, &eb), TQ_ERR_CONFIG);
    assert_int_equal(config_rc("ES512", NULL, "ec_public.pem", &eb), TQ_ERR_CONFIG);
    assert_int_equal(config_rc("HS256", NULL, NULL, &eb), TQ_ERR_CONFIG);
    assert_int_equal(config_rc("HS256", "", NULL, &eb), TQ_ERR_CONFIG);
    assert_int_equal(config_rc("HS256", "short-secret", NULL, &eb), TQ_ERR_CONFIG);
    assert_non_null(strstr(eb.msg, "12 bytes"));
    assert_int_equal(config_rc("HS256", "0123456789abcdef", NULL, &eb), TQ_OK);
    assert_int_equal(config_rc("HS256", SECRET, "rsa_public.pem", &eb), TQ_ERR_CONFIG);
    assert_int_equal(config_rc("RS256", NULL, NULL, &eb), TQ_ERR_CONFIG);
    assert_int_equal(config_rc("RS256", SECRET, "rsa_public.pem", &eb), TQ_ERR_CONFIG);
    assert_int_equal(config_rc("RS256", NULL, "rsa_private.pem", &eb), TQ_ERR_CONFIG);
    assert_non_null(strstr(eb.msg, "private key"));
    assert_int_equal(config_rc("RS256", NULL, "ec_public.pem", &eb), TQ_ERR_CONFIG);
    assert_string_equal(eb.msg, "cannot use jwt public key: alg RS256 needs an rsa key");
    assert_int_equal(config_rc("RS256", NULL, "rsa1024_public.pem", &eb), TQ_ERR_CONFIG);
    assert_non_null(strstr(eb.msg, "1024 bits"));
    assert_int_equal(config_rc("ES256", NULL, "rsa_public.pem", &eb), TQ_ERR_CONFIG);
    assert_string_equal(eb.msg, "cannot use jwt public key: alg ES256 needs an ec key");
    assert_int_equal(config_rc("ES256", NULL, "ec384_public.pem", &eb), TQ_ERR_CONFIG);
    assert_string_equal(eb.msg, "cannot use jwt public key: alg ES256 needs curve p-256");
    assert_int_equal(config_rc("ES384", NULL, "ec384_public.pem", &eb), TQ_OK);
    assert_int_equal(config_rc("RS512", NULL, "rsa_public.pem", &eb), TQ_OK);

    tq_auth *a = NULL;
    tq_auth_config cfg = {.alg = "RS256",
                          .public_key_pem = "-----BEGIN PUBLIC KEY-----\n"
                                            "bm90IGEga2V5\n"
                                            "-----END PUBLIC KEY-----\n",
                          .leeway_seconds = 30};
    assert_int_equal(tq_auth_new(&cfg, &a, &eb), TQ_ERR_CONFIG);
    cfg.public_key_pem = "garbage";
    assert_int_equal(tq_auth_new(&cfg, &a, &eb), TQ_ERR_CONFIG);
    cfg.public_key_pem = "-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n";
    assert_int_equal(tq_auth_new(&cfg, &a, &eb), TQ_ERR_CONFIG);
    cfg = (tq_auth_config){.alg = "HS256", .secret = SECRET, .leeway_seconds = -1};
    assert_int_equal(tq_auth_new(&cfg, &a, &eb), TQ_ERR_CONFIG);
    cfg = (tq_auth_config){.alg = "HS256", .secret = SECRET, .audience = ""};
    assert_int_equal(tq_auth_new(&cfg, &a, &eb), TQ_ERR_CONFIG);
    assert_null(a);
}

/* ------------------------------------------------------------------ threads */

typedef struct {
    const tq_auth *a;
    const char *hdr;
    const char *want;
    int failures;
} thread_arg;

static void *verify_many(void *p)
{
    thread_arg *ta = p;
    for (int i = 0; i < 200; i++) {
        char user[TQ_AUTH_USER_ID_MAX + 1];
        tq_errbuf eb;
        int rc = tq_auth_verify(ta->a, ta->hdr, NOW, user, sizeof user, &eb);
        if (ta->want ? (rc != TQ_OK || strcmp(user, ta->want) != 0) : rc != TQ_ERR_AUTH)
            ta->failures++;
    }
    return NULL;
}

static void one_verifier_serves_many_threads_at_once(void **state)
{
    fixture *fx = *state; /* RS256 */
    char *good = mint_pem(JWT_ALG_RS256, "rsa_private.pem", VALID_CLAIMS);
    char *bad = mint_pem(JWT_ALG_RS256, "rsa_wrong_private.pem", VALID_CLAIMS);
    char *hg = bearer(good), *hb = bearer(bad);
    pthread_t th[8];
    thread_arg ta[8];
    for (int i = 0; i < 8; i++) {
        ta[i] = (thread_arg){fx->a, (i % 2) ? hb : hg, (i % 2) ? NULL : "user-1", 0};
        assert_int_equal(pthread_create(&th[i], NULL, verify_many, &ta[i]), 0);
    }
    for (int i = 0; i < 8; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(ta[i].failures, 0);
    }
    free(hg);
    free(hb);
    free(good);
    free(bad);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        keys_dir = argv[1];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(valid_hs256_token_yields_its_sub, setup_hs, teardown),
        cmocka_unit_test_setup_teardown(valid_rs256_token_yields_its_sub, setup_rs, teardown),
        cmocka_unit_test(operator_claim_marks_an_operators_token_and_nothing_else),
        cmocka_unit_test_setup_teardown(valid_es256_token_yields_its_sub, setup_es, teardown),
        cmocka_unit_test_setup_teardown(scheme_is_case_insensitive_and_allows_several_spaces,
                                        setup_hs, teardown),
        cmocka_unit_test_setup_teardown(token_signed_with_another_secret_is_rejected, setup_hs,
                                        teardown),
        cmocka_unit_test_setup_teardown(token_signed_with_another_rsa_key_is_rejected, setup_rs,
                                        teardown),
        cmocka_unit_test_setup_teardown(token_signed_with_another_ec_key_is_rejected, setup_es,
                                        teardown),
        cmocka_unit_test_setup_teardown(tampered_payload_is_rejected, setup_hs, teardown),
        cmocka_unit_test_setup_teardown(alg_none_is_rejected, setup_hs, teardown),
        cmocka_unit_test_setup_teardown(
            hs256_signed_with_rsa_public_pem_is_rejected_when_rs256_configured, setup_rs, teardown),
        cmocka_unit_test_setup_teardown(rs256_token_is_rejected_when_hs256_configured, setup_hs,
                                        teardown),
        cmocka_unit_test_setup_teardown(hs512_token_is_rejected_when_hs256_configured, setup_hs,
                                        teardown),
        cmocka_unit_test_setup_teardown(header_with_duplicate_alg_is_rejected, setup_hs, teardown),
        cmocka_unit_test_setup_teardown(header_with_crit_is_rejected, setup_hs, teardown),
        cmocka_unit_test_setup_teardown(header_without_alg_is_rejected, setup_hs, teardown),
        cmocka_unit_test_setup_teardown(hs256_header_with_empty_signature_is_rejected, setup_hs,
                                        teardown),
        cmocka_unit_test_setup_teardown(missing_header_is_rejected, setup_hs, teardown),
        cmocka_unit_test_setup_teardown(basic_scheme_is_rejected, setup_hs, teardown),
        cmocka_unit_test_setup_teardown(garbage_and_two_segment_tokens_are_malformed, setup_hs,
                                        teardown),
        cmocka_unit_test_setup_teardown(valid_token_with_foreign_characters_is_malformed, setup_hs,
                                        teardown),
        cmocka_unit_test_setup_teardown(token_over_8k_is_rejected_before_decoding, setup_hs,
                                        teardown),
        cmocka_unit_test_setup_teardown(header_that_is_not_json_is_rejected, setup_hs, teardown),
        cmocka_unit_test_setup_teardown(payload_that_is_not_json_is_rejected, setup_hs, teardown),
        cmocka_unit_test_setup_teardown(payload_with_a_huge_number_is_named_as_such, setup_hs,
                                        teardown),
        cmocka_unit_test(bearer_given_tells_no_credentials_from_a_bad_token),
        cmocka_unit_test_setup_teardown(expiry_is_honoured_with_leeway, setup_hs, teardown),
        cmocka_unit_test_setup_teardown(missing_or_non_numeric_exp_is_rejected, setup_hs, teardown),
        cmocka_unit_test_setup_teardown(fractional_exp_is_accepted, setup_hs, teardown),
        cmocka_unit_test_setup_teardown(nbf_in_the_future_is_rejected, setup_hs, teardown),
        cmocka_unit_test_setup_teardown(iat_in_the_future_is_rejected, setup_hs, teardown),
        cmocka_unit_test_setup_teardown(sub_must_be_a_short_visible_string, setup_hs, teardown),
        cmocka_unit_test_setup_teardown(audience_and_issuer_are_checked_when_configured,
                                        setup_hs_aud_iss, teardown),
        cmocka_unit_test_setup_teardown(audience_authenticated_is_required_by_default, setup_hs,
                                        teardown),
        cmocka_unit_test_setup_teardown(audience_is_ignored_only_when_explicitly_disabled,
                                        setup_hs_any_audience, teardown),
        cmocka_unit_test(bad_configurations_are_refused),
        cmocka_unit_test_setup_teardown(one_verifier_serves_many_threads_at_once, setup_rs,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
