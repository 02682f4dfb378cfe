/*
 * fuzz_token — tq_auth_verify with a fixed HS256 configuration.
 *
 * Input layout: byte 0 is a mode, the rest is the material.
 *   mode bit 0 = 0: the rest is the Authorization header value as received ("Bearer ...").
 *                   This drives the scheme, cap, shape, base64url and header checks.
 *   mode bit 0 = 1: the rest is HEADER_JSON '\n' PAYLOAD_JSON; the harness base64url-encodes
 *                   both and signs them with HMAC-SHA256, so the fuzzer gets past the
 *                   signature to libjwt's decoder and the claim checks. With mode bit 2 set
 *                   the signing key is wrong, and the token must never be accepted.
 *   mode bit 1: 0 = plain verifier, 1 = verifier that also requires aud and iss.
 *
 * Properties (producer/auth.h):
 *   - the result is TQ_OK, TQ_ERR_AUTH or TQ_ERR_NOMEM (never TQ_ERR_INTERNAL with a
 *     big enough user_id buffer);
 *   - a rejection leaves one printable line in eb (it is shown to the client);
 *   - an acceptance is re-derived independently: the token's third segment is exactly the
 *     base64url HMAC-SHA256 of the first two under the configured secret, the header's alg
 *     is "HS256", exp is a number later than now - leeway, sub equals user_id and is 1..128
 *     visible ASCII characters.
 */
#include "fuzz_util.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <strings.h>

#include "auth.h"
#include "tq_err.h"

#define SECRET "super-secret-jwt-token-with-at-least-32-characters-long"
#define WRONG_SECRET "another-secret-of-sufficient-length-0123456789"
#define NOW 1700000000LL
#define LEEWAY 30
#define AUDIENCE "authenticated"
#define ISSUER "https://example.supabase.co/auth/v1"

static tq_auth *verifiers[2];

static void setup(void)
{
    tq_errbuf eb;
    tq_auth_config plain = {.alg = "HS256",
                            .secret = SECRET,
                            .audience = TQ_AUTH_ANY_AUDIENCE,
                            .leeway_seconds = LEEWAY};
    tq_auth_config strict = plain;
    strict.audience = AUDIENCE;
    strict.issuer = ISSUER;
    if (tq_auth_new(&plain, &verifiers[0], &eb) != TQ_OK ||
        tq_auth_new(&strict, &verifiers[1], &eb) != TQ_OK) {
        fprintf(stderr, "fuzz_token: tq_auth_new: %s\n", eb.msg);
        abort();
    }
}

static const char B64URL[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* Unpadded base64url of p[0..n) appended at out (room for 4*ceil(n/3)+1); returns length. */
static size_t b64url(const unsigned char *p, size_t n, char *out)
{
    size_t o = 0, i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = ((uint32_t)p[i] << 16) | ((uint32_t)p[i + 1] << 8) | p[i + 2];
        out[o++] = B64URL[v >> 18];
        out[o++] = B64URL[(v >> 12) & 63];
        out[o++] = B64URL[(v >> 6) & 63];
        out[o++] = B64URL[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        out[o++] = B64URL[v >> 18];
        out[o++] = B64URL[(v >> 12) & 63];
    } else if (n - i == 2) {
        uint32_t v = ((uint32_t)p[i] << 16) | ((uint32_t)p[i + 1] << 8);
        out[o++] = B64URL[v >> 18];
        out[o++] = B64URL[(v >> 12) & 63];
        out[o++] = B64URL[(v >> 6) & 63];
    }
    out[o] = '\0';
    return o;
}

/* Lenient base64url decoding of an already shape-checked segment (NUL-terminated result,
 * caller frees). */
static unsigned char *unb64url(const char *s, size_t n, size_t *out_len)
{
    unsigned char *out = malloc(n + 1);
    FUZZ_CHECK(out != NULL, "oom");
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        const char *q = memchr(B64URL, s[i], 64);
        FUZZ_CHECK(q != NULL && s[i] != '\0', "accepted token has a non-base64url byte");
        acc = (acc << 6) | (uint32_t)(q - B64URL);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    out[o] = '\0';
    *out_len = o;
    return out;
}

static size_t hs256(const char *key, const char *msg, size_t n, unsigned char mac[32])
{
    unsigned int len = 0;
    FUZZ_CHECK(HMAC(EVP_sha256(), key, (int)strlen(key), (const unsigned char *)msg, n, mac, &len),
               "HMAC failed");
    return len;
}

/* Re-derives, without the code under test, that an accepted header value deserved it. */
static void check_accepted(const char *authorization, int strict, const char *user_id)
{
    const char *p = authorization;
    while (*p == ' ' || *p == '\t')
        p++;
    FUZZ_CHECK(strncasecmp(p, "bearer", 6) == 0, "accepted without the bearer scheme");
    p += 6;
    FUZZ_CHECK(*p == ' ', "accepted without a space after the scheme");
    while (*p == ' ')
        p++;
    size_t len = strlen(p);
    FUZZ_CHECK(len <= TQ_AUTH_TOKEN_MAX, "accepted a %zu-byte token", len);
    const char *d1 = memchr(p, '.', len);
    FUZZ_CHECK(d1 != NULL, "accepted a token without '.'");
    const char *d2 = memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - p));
    FUZZ_CHECK(d2 != NULL && !memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - p)),
               "accepted a token without exactly three segments");

    unsigned char mac[32];
    char mac64[64];
    size_t ml = hs256(SECRET, p, (size_t)(d2 - p), mac);
    b64url(mac, ml, mac64);
    FUZZ_CHECK(strcmp(d2 + 1, mac64) == 0, "accepted a token whose signature is not ours: %s", p);

    size_t hl, pl;
    unsigned char *h = unb64url(p, (size_t)(d1 - p), &hl);
    unsigned char *c = unb64url(d1 + 1, (size_t)(d2 - d1 - 1), &pl);
    json_t *hj = json_loadb((const char *)h, hl, 0, NULL);
    json_t *cj = json_loadb((const char *)c, pl, 0, NULL);
    FUZZ_CHECK(json_is_object(hj) && json_is_object(cj), "accepted non-object header/payload");
    json_t *alg = json_object_get(hj, "alg");
    FUZZ_CHECK(json_is_string(alg) && strcmp(json_string_value(alg), "HS256") == 0 &&
                   json_string_length(alg) == 5,
               "accepted alg other than HS256: %s", h);
    FUZZ_CHECK(json_object_get(hj, "crit") == NULL, "accepted a crit header");
    json_t *exp = json_object_get(cj, "exp");
    FUZZ_CHECK(json_is_number(exp) && json_number_value(exp) > (double)(NOW - LEEWAY),
               "accepted without a future exp: %s", c);
    json_t *sub = json_object_get(cj, "sub");
    FUZZ_CHECK(json_is_string(sub) && strcmp(json_string_value(sub), user_id) == 0 &&
                   json_string_length(sub) == strlen(user_id),
               "sub and user_id differ: %s vs %s", c, user_id);
    if (strict) {
        json_t *iss = json_object_get(cj, "iss");
        FUZZ_CHECK(json_is_string(iss) && strcmp(json_string_value(iss), ISSUER) == 0,
                   "accepted a wrong issuer: %s", c);
        FUZZ_CHECK(json_object_get(cj, "aud") != NULL, "accepted without aud: %s", c);
    }
    json_decref(hj);
    json_decref(cj);
    free(h);
    free(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!verifiers[0])
        setup();
    if (size < 1)
        return 0;
    unsigned mode = data[0];
    const char *rest = (const char *)data + 1;
    size_t n = size - 1;
    int strict = (mode >> 1) & 1;
    int wrong_key = 0;
    char *authz;

    if ((mode & 1) == 0) {
        authz = malloc(n + 1); /* a header value is a C string: an inner NUL ends it */
        FUZZ_CHECK(authz != NULL, "oom");
        memcpy(authz, rest, n);
        authz[n] = '\0';
    } else {
        wrong_key = (mode >> 2) & 1;
        const char *nl = memchr(rest, '\n', n);
        size_t hl = nl ? (size_t)(nl - rest) : n;
        const char *pay = nl ? nl + 1 : "";
        size_t pl = nl ? n - hl - 1 : 0;
        size_t cap = 7 + (hl + pl + 2) / 3 * 4 + 8 + 1 + 64;
        authz = malloc(cap);
        FUZZ_CHECK(authz != NULL, "oom");
        memcpy(authz, "Bearer ", 7);
        char *t = authz + 7;
        size_t o = b64url((const unsigned char *)rest, hl, t);
        t[o++] = '.';
        o += b64url((const unsigned char *)pay, pl, t + o);
        unsigned char mac[32];
        size_t ml = hs256(wrong_key ? WRONG_SECRET : SECRET, t, o, mac);
        t[o++] = '.';
        b64url(mac, ml, t + o);
    }

    char user_id[TQ_AUTH_USER_ID_MAX + 1];
    tq_errbuf eb;
    eb.msg[0] = '\0';
    int rc = tq_auth_verify(verifiers[strict], authz, NOW, user_id, sizeof user_id, &eb);
    FUZZ_CHECK(rc == TQ_OK || rc == TQ_ERR_AUTH || rc == TQ_ERR_NOMEM, "rc=%d (%s)", rc, eb.msg);
    if (rc == TQ_OK) {
        FUZZ_CHECK(!wrong_key, "accepted a token signed with the wrong key");
        size_t ul = strnlen(user_id, sizeof user_id);
        FUZZ_CHECK(ul >= 1 && ul <= TQ_AUTH_USER_ID_MAX, "user_id length %zu", ul);
        for (size_t i = 0; i < ul; i++)
            FUZZ_CHECK(user_id[i] >= 0x21 && user_id[i] <= 0x7E, "user_id byte %zu", i);
        check_accepted(authz, strict, user_id);
    } else {
        size_t el = strnlen(eb.msg, sizeof eb.msg);
        FUZZ_CHECK(el > 0 && el < sizeof eb.msg, "error line missing or unterminated");
        for (size_t i = 0; i < el; i++)
            FUZZ_CHECK((unsigned char)eb.msg[i] >= 0x20 && eb.msg[i] != 0x7F,
                       "error line has a control byte at %zu", i);
        FUZZ_CHECK(user_id[0] == '\0', "user_id filled on rejection");
    }

    /* NULL = header absent: always a rejection. */
    FUZZ_CHECK(tq_auth_verify(verifiers[strict], NULL, NOW, user_id, sizeof user_id, &eb) ==
                   TQ_ERR_AUTH,
               "absent header");
    free(authz);
    return 0;
}
