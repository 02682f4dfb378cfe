/*
 * auth — JWT bearer-token verification on top of libjwt 1.10.
 *
 * libjwt 1.10 takes the algorithm from the token's own header and, given a key, checks the
 * signature with that algorithm. That is the classic alg-confusion hole (an RS256 public
 * key used as an HS256 secret), so the shape, the header and the algorithm are checked
 * here first, with a strict decoder, and the algorithm libjwt used is checked again after.
 * libjwt also has no claim validation in 1.10, so every claim is checked here, after the
 * signature, from the very bytes that were signed.
 *
 * libjwt 1.10 cannot tell "bad key" from "bad signature" (both EINVAL) and we do not link
 * libcrypto directly, so public keys are checked at configuration time by reading their
 * DER structure: right key type for the alg, RSA >= 2048 bits, the alg's EC curve.
 */
#include "auth.h"

#include <jansson.h>
#include <jwt.h>

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Cap on configured secrets and PEM text: libjwt takes an int length. */
#define KEY_MAX (64 * 1024)
#define LEEWAY_MAX 3600

typedef enum { FAM_HS, FAM_RS, FAM_ES } alg_family;

typedef struct {
    const char *name;
    jwt_alg_t jalg;
    alg_family fam;
    size_t ec_coord_len; /* ES only: bytes per coordinate of the curve */
    const unsigned char *curve_oid;
    size_t curve_oid_len;
} alg_info;

/* DER contents (no tag/length) of the OIDs we accept in a SubjectPublicKeyInfo. */
static const unsigned char OID_RSA[] = {0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01};
static const unsigned char OID_EC[] = {0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01};
static const unsigned char OID_P256[] = {0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07};
static const unsigned char OID_P384[] = {0x2B, 0x81, 0x04, 0x00, 0x22};

static const alg_info ALGS[] = {
    {"HS256", JWT_ALG_HS256, FAM_HS, 0, NULL, 0},
    {"HS384", JWT_ALG_HS384, FAM_HS, 0, NULL, 0},
    {"HS512", JWT_ALG_HS512, FAM_HS, 0, NULL, 0},
    {"RS256", JWT_ALG_RS256, FAM_RS, 0, NULL, 0},
    {"RS384", JWT_ALG_RS384, FAM_RS, 0, NULL, 0},
    {"RS512", JWT_ALG_RS512, FAM_RS, 0, NULL, 0},
    {"ES256", JWT_ALG_ES256, FAM_ES, 32, OID_P256, sizeof OID_P256},
    {"ES384", JWT_ALG_ES384, FAM_ES, 48, OID_P384, sizeof OID_P384},
};

struct tq_auth {
    const alg_info *alg;
    unsigned char *key; /* HS: secret bytes; RS/ES: the one PEM block that was checked */
    size_t key_len;
    char *audience; /* NULL = not checked (TQ_AUTH_ANY_AUDIENCE configured) */
    char *issuer;   /* NULL = not checked */
    long leeway;
    char *operator_claim, *operator_value; /* NULL: no token is an operator's */
};

/* ---------------------------------------------------------------- base64 */

static int b64_value(unsigned char c, int url)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == (url ? '-' : '+'))
        return 62;
    if (c == (url ? '_' : '/'))
        return 63;
    return -1;
}

/* Decodes n sextets (already validated as alphabet characters) into out; returns bytes
 * written, or -1 when n is an impossible length or the unused trailing bits are not zero
 * (a non-canonical encoding: two spellings of one signature would be accepted). */
static long b64_pack(const unsigned char *sx, size_t n, unsigned char *out)
{
    if (n % 4 == 1)
        return -1;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        acc = (acc << 6) | sx[i];
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0)
        return -1;
    return (long)o;
}

/* Decodes base64 into a new buffer (caller frees *out; it is NUL-terminated so it can be
 * handed to a JSON parser as text). Two dialects, one decoder:
 *  - B64_URL: strict unpadded base64url (RFC 7515 §2), every byte an alphabet character;
 *  - B64_PEM: standard base64 as found in PEM bodies, whitespace ignored, '=' padding
 *    allowed at the end only. */
enum b64_dialect { B64_URL, B64_PEM };

static int b64_decode(const char *s, size_t n, enum b64_dialect d, unsigned char **out,
                      size_t *out_len)
{
    unsigned char *sx = malloc(n + 1);
    unsigned char *buf = malloc(n + 1);
    int rc = TQ_ERR_INVALID;
    if (!sx || !buf) {
        rc = TQ_ERR_NOMEM;
        goto out;
    }
    size_t k = 0, pad = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (d == B64_PEM && (c == ' ' || c == '\t' || c == '\r' || c == '\n'))
            continue;
        if (d == B64_PEM && c == '=') {
            pad++;
            continue;
        }
        int v = b64_value(c, d == B64_URL);
        if (v < 0 || pad)
            goto out;
        sx[k++] = (unsigned char)v;
    }
    if (d == B64_PEM && (pad > 2 || (k + pad) % 4 != 0))
        goto out;
    long len = b64_pack(sx, k, buf);
    if (len < 0)
        goto out;
    buf[len] = '\0';
    *out = buf;
    *out_len = (size_t)len;
    buf = NULL;
    rc = TQ_OK;
out:
    free(sx);
    free(buf);
    return rc;
}

/* ---------------------------------------------------------------- DER / SPKI */

typedef struct {
    const unsigned char *p;
    size_t n;
} der_span;

/* Reads one TLV with the expected tag from *in, advancing it; *content = its value. */
static int der_take(der_span *in, unsigned char tag, der_span *content)
{
    if (in->n < 2 || in->p[0] != tag)
        return -1;
    size_t len, hdr;
    unsigned char l0 = in->p[1];
    if (l0 < 0x80) {
        len = l0;
        hdr = 2;
    } else {
        size_t nb = l0 & 0x7F;
        if (nb == 0 || nb > 3 || in->n < 2 + nb)
            return -1; /* no indefinite, <16 MiB */
        len = 0;
        for (size_t i = 0; i < nb; i++)
            len = (len << 8) | in->p[2 + i];
        hdr = 2 + nb;
    }
    if (len > in->n - hdr)
        return -1;
    content->p = in->p + hdr;
    content->n = len;
    in->p += hdr + len;
    in->n -= hdr + len;
    return 0;
}

static int span_is(der_span s, const unsigned char *v, size_t n)
{
    return s.n == n && memcmp(s.p, v, n) == 0;
}

/* Checks a DER SubjectPublicKeyInfo against the configured alg. */
static int spki_check(const unsigned char *der, size_t len, const alg_info *alg, tq_errbuf *eb)
{
    der_span in = {der, len}, spki, algid, oid, params, bits;
    if (der_take(&in, 0x30, &spki) || in.n != 0 || der_take(&spki, 0x30, &algid) ||
        der_take(&spki, 0x03, &bits) || spki.n != 0 || der_take(&algid, 0x06, &oid) || bits.n < 1 ||
        bits.p[0] != 0)
        return tq_errf(eb, TQ_ERR_CONFIG, "cannot parse jwt public key: not a valid public key");

    if (alg->fam == FAM_RS) {
        if (!span_is(oid, OID_RSA, sizeof OID_RSA))
            return tq_errf(eb, TQ_ERR_CONFIG, "cannot use jwt public key: alg %s needs an rsa key",
                           alg->name);
        der_span key = {bits.p + 1, bits.n - 1}, rsa, n, e;
        if (der_take(&key, 0x30, &rsa) || key.n != 0 || der_take(&rsa, 0x02, &n) ||
            der_take(&rsa, 0x02, &e) || rsa.n != 0 || n.n == 0 || e.n == 0)
            return tq_errf(eb, TQ_ERR_CONFIG, "cannot parse jwt public key: bad rsa key");
        while (n.n > 0 && n.p[0] == 0) {
            n.p++;
            n.n--;
        }
        size_t nbits = 0;
        if (n.n > 0) {
            nbits = (n.n - 1) * 8;
            for (unsigned char top = n.p[0]; top; top >>= 1)
                nbits++;
        }
        if (nbits < 2048)
            return tq_errf(eb, TQ_ERR_CONFIG,
                           "cannot use jwt public key: rsa key has %zu bits, at least 2048 "
                           "are required",
                           nbits);
        return TQ_OK;
    }

    /* FAM_ES */
    if (!span_is(oid, OID_EC, sizeof OID_EC))
        return tq_errf(eb, TQ_ERR_CONFIG, "cannot use jwt public key: alg %s needs an ec key",
                       alg->name);
    if (der_take(&algid, 0x06, &params) || algid.n != 0 ||
        !span_is(params, alg->curve_oid, alg->curve_oid_len))
        return tq_errf(eb, TQ_ERR_CONFIG, "cannot use jwt public key: alg %s needs curve %s",
                       alg->name, alg->ec_coord_len == 32 ? "p-256" : "p-384");
    size_t pl = bits.n - 1;
    unsigned char form = pl > 0 ? bits.p[1] : 0;
    if (!((form == 0x04 && pl == 1 + 2 * alg->ec_coord_len) ||
          ((form == 0x02 || form == 0x03) && pl == 1 + alg->ec_coord_len)))
        return tq_errf(eb, TQ_ERR_CONFIG, "cannot parse jwt public key: bad ec point");
    return TQ_OK;
}

#define PEM_BEGIN "-----BEGIN PUBLIC KEY-----"
#define PEM_END "-----END PUBLIC KEY-----"

/* Finds the first SPKI PEM block, checks it, and copies exactly that block to *out so
 * libjwt later reads the key that was checked and nothing else. Caller frees *out. */
static int pem_load(const char *pem, const alg_info *alg, unsigned char **out, size_t *out_len,
                    tq_errbuf *eb)
{
    if (strstr(pem, "PRIVATE KEY"))
        return tq_errf(eb, TQ_ERR_CONFIG,
                       "cannot use jwt public key: it holds a private key; give only the "
                       "public key (openssl pkey -pubout)");
    const char *b = strstr(pem, PEM_BEGIN);
    const char *e = b ? strstr(b, PEM_END) : NULL;
    if (!b || !e) {
        if (strstr(pem, "BEGIN RSA PUBLIC KEY"))
            return tq_errf(eb, TQ_ERR_CONFIG,
                           "cannot use jwt public key: pkcs#1 \"rsa public key\" pem is not "
                           "supported; convert it to \"public key\" (openssl rsa -RSAPublicKey_in "
                           "-pubout)");
        return tq_errf(eb, TQ_ERR_CONFIG,
                       "cannot parse jwt public key: no \"-----BEGIN PUBLIC KEY-----\" pem block");
    }
    const char *body = b + strlen(PEM_BEGIN);
    unsigned char *der;
    size_t der_len;
    int rc = b64_decode(body, (size_t)(e - body), B64_PEM, &der, &der_len);
    if (rc == TQ_ERR_NOMEM)
        return tq_errf(eb, rc, "could not load jwt public key: out of memory");
    if (rc != TQ_OK)
        return tq_errf(eb, TQ_ERR_CONFIG, "cannot parse jwt public key: bad base64 in pem");
    rc = spki_check(der, der_len, alg, eb);
    free(der);
    if (rc != TQ_OK)
        return rc;

    size_t n = (size_t)(e - b) + strlen(PEM_END);
    unsigned char *copy = malloc(n + 2);
    if (!copy)
        return tq_errf(eb, TQ_ERR_NOMEM, "could not load jwt public key: out of memory");
    memcpy(copy, b, n);
    copy[n] = '\n';
    copy[n + 1] = '\0';
    *out = copy;
    *out_len = n + 1;
    return TQ_OK;
}

/* ---------------------------------------------------------------- configuration */

static char *dup_opt(const char *s, int *nomem)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        *nomem = 1;
    return d;
}

/* The HS secret or the RS/ES public key of cfg, checked against a->alg, into a->key. */
static int load_key(tq_auth *a, const tq_auth_config *cfg, tq_errbuf *eb)
{
    if (a->alg->fam == FAM_HS) {
        if (cfg->public_key_pem)
            return tq_errf(eb, TQ_ERR_CONFIG,
                           "cannot use a jwt public key with alg %s: it needs a secret",
                           a->alg->name);
        size_t n = cfg->secret ? strnlen(cfg->secret, KEY_MAX + 1) : 0;
        if (n == 0)
            return tq_errf(eb, TQ_ERR_CONFIG, "cannot use jwt alg %s without a secret",
                           a->alg->name);
        if (n < TQ_AUTH_SECRET_MIN || n > KEY_MAX)
            return tq_errf(eb, TQ_ERR_CONFIG,
                           "cannot use jwt secret: it has %zu bytes, %d..%d are required", n,
                           TQ_AUTH_SECRET_MIN, KEY_MAX);
        a->key = malloc(n);
        if (!a->key)
            return tq_errf(eb, TQ_ERR_NOMEM, "could not set up jwt verification: out of memory");
        memcpy(a->key, cfg->secret, n);
        a->key_len = n;
    } else {
        if (cfg->secret)
            return tq_errf(eb, TQ_ERR_CONFIG,
                           "cannot use a jwt secret with alg %s: it needs a public key",
                           a->alg->name);
        if (!cfg->public_key_pem || !cfg->public_key_pem[0])
            return tq_errf(eb, TQ_ERR_CONFIG, "cannot use jwt alg %s without a public key",
                           a->alg->name);
        if (strnlen(cfg->public_key_pem, KEY_MAX + 1) > KEY_MAX)
            return tq_errf(eb, TQ_ERR_CONFIG, "cannot use jwt public key: over %d bytes", KEY_MAX);
        return pem_load(cfg->public_key_pem, a->alg, &a->key, &a->key_len, eb);
    }
    return TQ_OK;
}

int tq_auth_new(const tq_auth_config *cfg, tq_auth **out, tq_errbuf *eb)
{
    *out = NULL;
    const alg_info *alg = NULL;
    for (size_t i = 0; cfg->alg && i < sizeof ALGS / sizeof ALGS[0]; i++)
        if (strcmp(cfg->alg, ALGS[i].name) == 0)
            alg = &ALGS[i];
    if (!alg)
        return tq_errf(eb, TQ_ERR_CONFIG,
                       "cannot use jwt algorithm \"%.16s\": expected one of HS256, HS384, "
                       "HS512, RS256, RS384, RS512, ES256, ES384",
                       cfg->alg ? cfg->alg : "");
    if (cfg->leeway_seconds < 0 || cfg->leeway_seconds > LEEWAY_MAX)
        return tq_errf(eb, TQ_ERR_CONFIG, "cannot use jwt leeway %ld: must be 0..%d seconds",
                       cfg->leeway_seconds, LEEWAY_MAX);
    if ((cfg->audience && !cfg->audience[0]) || (cfg->issuer && !cfg->issuer[0]))
        return tq_errf(eb, TQ_ERR_CONFIG,
                       "cannot use an empty jwt audience or issuer: leave the issuer unset, "
                       "set the audience to \"" TQ_AUTH_ANY_AUDIENCE "\" to accept any");

    tq_auth *a = calloc(1, sizeof *a);
    if (!a)
        return tq_errf(eb, TQ_ERR_NOMEM, "could not set up jwt verification: out of memory");
    a->alg = alg;
    a->leeway = cfg->leeway_seconds;

    int rc = load_key(a, cfg, eb);
    if (rc != TQ_OK)
        goto fail;

    int nomem = 0;
    const char *aud = cfg->audience ? cfg->audience : TQ_AUTH_DEFAULT_AUDIENCE;
    a->audience = strcmp(aud, TQ_AUTH_ANY_AUDIENCE) == 0 ? NULL : dup_opt(aud, &nomem);
    a->issuer = dup_opt(cfg->issuer, &nomem);
    if (cfg->operator_claim && cfg->operator_claim[0] && cfg->operator_value &&
        cfg->operator_value[0]) {
        a->operator_claim = dup_opt(cfg->operator_claim, &nomem);
        a->operator_value = dup_opt(cfg->operator_value, &nomem);
    }
    if (nomem) {
        rc = tq_errf(eb, TQ_ERR_NOMEM, "could not set up jwt verification: out of memory");
        goto fail;
    }
    *out = a;
    return TQ_OK;
fail:
    tq_auth_free(a);
    return rc;
}

void tq_auth_free(tq_auth *a)
{
    if (!a)
        return;
    if (a->key) {
        /* The secret should not linger in freed heap memory. */
        volatile unsigned char *k = a->key;
        for (size_t i = 0; i < a->key_len; i++)
            k[i] = 0;
    }
    free(a->key);
    free(a->audience);
    free(a->issuer);
    free(a->operator_claim);
    free(a->operator_value);
    free(a);
}

/* ---------------------------------------------------------------- verification */

/* Decodes one base64url segment and parses it as a JSON object, rejecting duplicate keys
 * (so no two parsers can disagree on which "alg" or "sub" counts). NULL on any failure;
 * *nomem says whether that was memory. */
/* A segment's JSON object, or NULL: *nomem set when out of memory, *overflow when it is
 * JSON but holds a number jansson cannot represent (an exp past 2^63, say: that is not
 * "not json", and saying so would send its author looking in the wrong place). */
static json_t *segment_json(const char *s, size_t n, int *nomem, int *overflow)
{
    unsigned char *raw;
    size_t raw_len;
    int rc = b64_decode(s, n, B64_URL, &raw, &raw_len);
    if (rc != TQ_OK) {
        if (rc == TQ_ERR_NOMEM)
            *nomem = 1;
        return NULL;
    }
    json_error_t jerr;
    json_t *j = json_loadb((const char *)raw, raw_len, JSON_REJECT_DUPLICATES, &jerr);
    free(raw);
    if (!j && json_error_code(&jerr) == json_error_numeric_overflow)
        *overflow = 1;
    if (j && !json_is_object(j)) {
        json_decref(j);
        j = NULL;
    }
    return j;
}

/* True when s can be echoed in an error line: short, letters and digits only. */
static int is_plain_word(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++) {
        unsigned char c = (unsigned char)s[n];
        if (n >= 16 ||
            !((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')))
            return 0;
    }
    return n > 0;
}

/* Checks everything that can be known before the signature: the header. */
static int check_header(const tq_auth *a, json_t *hdr, tq_errbuf *eb)
{
    json_t *alg = json_object_get(hdr, "alg");
    if (!json_is_string(alg))
        return tq_errf(eb, TQ_ERR_AUTH, "token header has no alg");
    const char *name = json_string_value(alg);
    if (json_string_length(alg) != strlen(name) || strcmp(name, a->alg->name) != 0) {
        if (is_plain_word(name))
            return tq_errf(eb, TQ_ERR_AUTH, "token algorithm %s is not accepted", name);
        return tq_errf(eb, TQ_ERR_AUTH, "token algorithm is not accepted");
    }
    /* We understand no extension, so any `crit` must be refused (RFC 7515 §4.1.11). */
    if (json_object_get(hdr, "crit"))
        return tq_errf(eb, TQ_ERR_AUTH, "token has critical header extensions, not supported");
    json_t *typ = json_object_get(hdr, "typ");
    if (typ && !(json_is_string(typ) && strcasecmp(json_string_value(typ), "JWT") == 0))
        return tq_errf(eb, TQ_ERR_AUTH, "token type is not accepted");
    return TQ_OK;
}

/* Reads a NumericDate claim. 1 = present (in *v), 0 = absent, -1 = not a number. */
static int time_claim(json_t *claims, const char *name, double *v)
{
    json_t *j = json_object_get(claims, name);
    if (!j)
        return 0;
    if (!json_is_number(j))
        return -1;
    *v = json_number_value(j);
    return isfinite(*v) ? 1 : -1;
}

static int check_claims(const tq_auth *a, json_t *claims, long long now, char *user_id,
                        size_t user_id_cap, tq_errbuf *eb)
{
    /* now and leeway are far below 2^53, so these are exact; a claim too large for a
     * double is in the far future either way. */
    double lo = (double)now - (double)a->leeway, hi = (double)now + (double)a->leeway;
    double t;

    int r = time_claim(claims, "exp", &t);
    if (r == 0)
        return tq_errf(eb, TQ_ERR_AUTH, "token has no exp claim");
    if (r < 0)
        return tq_errf(eb, TQ_ERR_AUTH, "token exp claim is not a number");
    if (lo >= t)
        return tq_errf(eb, TQ_ERR_AUTH, "token expired");

    r = time_claim(claims, "nbf", &t);
    if (r < 0)
        return tq_errf(eb, TQ_ERR_AUTH, "token nbf claim is not a number");
    if (r > 0 && t > hi)
        return tq_errf(eb, TQ_ERR_AUTH, "token is not valid yet");

    r = time_claim(claims, "iat", &t);
    if (r < 0)
        return tq_errf(eb, TQ_ERR_AUTH, "token iat claim is not a number");
    if (r > 0 && t > hi)
        return tq_errf(eb, TQ_ERR_AUTH, "token was issued in the future");

    if (a->issuer) {
        json_t *iss = json_object_get(claims, "iss");
        if (!iss)
            return tq_errf(eb, TQ_ERR_AUTH, "token has no iss claim");
        if (!json_is_string(iss) || json_string_length(iss) != strlen(a->issuer) ||
            strcmp(json_string_value(iss), a->issuer) != 0)
            return tq_errf(eb, TQ_ERR_AUTH, "token issuer is not accepted");
    }

    if (a->audience) {
        json_t *aud = json_object_get(claims, "aud");
        if (!aud)
            return tq_errf(eb, TQ_ERR_AUTH, "token has no aud claim");
        size_t want = strlen(a->audience);
        int ok = 0;
        if (json_is_string(aud)) {
            ok =
                json_string_length(aud) == want && strcmp(json_string_value(aud), a->audience) == 0;
        } else if (json_is_array(aud)) {
            size_t i;
            json_t *v;
            json_array_foreach(aud, i, v)
            {
                if (json_is_string(v) && json_string_length(v) == want &&
                    strcmp(json_string_value(v), a->audience) == 0)
                    ok = 1;
            }
        }
        if (!ok)
            return tq_errf(eb, TQ_ERR_AUTH, "token audience is not accepted");
    }

    json_t *sub = json_object_get(claims, "sub");
    if (!sub)
        return tq_errf(eb, TQ_ERR_AUTH, "token has no sub claim");
    if (!json_is_string(sub))
        return tq_errf(eb, TQ_ERR_AUTH, "token sub claim is not a string");
    size_t n = json_string_length(sub);
    const char *s = json_string_value(sub);
    if (n == 0)
        return tq_errf(eb, TQ_ERR_AUTH, "token sub claim is empty");
    if (n > TQ_AUTH_USER_ID_MAX)
        return tq_errf(eb, TQ_ERR_AUTH, "token sub claim is too long (over %d bytes)",
                       TQ_AUTH_USER_ID_MAX);
    /* n counts embedded NULs too: a NUL is not a visible character, so it is refused. */
    if (!tq_user_id_valid(s, n))
        return tq_errf(eb, TQ_ERR_AUTH, "token sub claim has characters that are not allowed");
    if (n + 1 > user_id_cap)
        return tq_errf(eb, TQ_ERR_INTERNAL, "user id buffer too small (%zu bytes)", user_id_cap);
    memcpy(user_id, s, n);
    user_id[n] = '\0';
    return TQ_OK;
}

/* Shape: exactly three non-empty base64url segments; dot[] receives the two dots. An
 * empty signature is refused here rather than trusting libjwt to reject it. */
static int token_shape_ok(const char *p, size_t len, size_t dot[2])
{
    size_t ndots = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '.') {
            if (ndots == 2)
                return 0;
            dot[ndots++] = i;
        } else if (b64_value(c, 1) < 0) {
            return 0;
        }
    }
    return ndots == 2 && dot[0] != 0 && dot[1] != dot[0] + 1 && dot[1] + 1 != len;
}

/* The operator claim: a string equal to the configured value, or an array holding it. */
static int operator_of(const tq_auth *a, json_t *claims)
{
    if (!a->operator_claim)
        return 0;
    json_t *c = json_object_get(claims, a->operator_claim), *v;
    size_t i;
    if (json_is_string(c))
        return strcmp(json_string_value(c), a->operator_value) == 0;
    json_array_foreach(c, i, v)
    {
        if (json_is_string(v) && strcmp(json_string_value(v), a->operator_value) == 0)
            return 1;
    }
    return 0;
}

int tq_auth_verify(const tq_auth *a, const char *authorization, long long now, char *user_id,
                   size_t user_id_cap, tq_errbuf *eb)
{
    return tq_auth_verify_operator(a, authorization, now, user_id, user_id_cap, NULL, NULL, eb);
}

enum { BEARER_NONE, BEARER_OTHER_SCHEME, BEARER_TOKEN };

/* Splits an Authorization value: BEARER_TOKEN with *token at its first non-space byte
 * after "Bearer" (scheme case-insensitive), or why there is none. */
static int bearer_token(const char *authorization, const char **token)
{
    if (!authorization)
        return BEARER_NONE;
    const char *p = authorization;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p == '\0')
        return BEARER_NONE;
    if (strncasecmp(p, "bearer", 6) != 0 || (p[6] != ' ' && p[6] != '\0'))
        return BEARER_OTHER_SCHEME;
    p += 6;
    while (*p == ' ')
        p++;
    if (*p == '\0')
        return BEARER_NONE;
    *token = p;
    return BEARER_TOKEN;
}

/* 1 with *token (bearer_token), or 0 with eb saying why there is none. */
static int bearer_or_why(const char *authorization, const char **token, tq_errbuf *eb)
{
    switch (bearer_token(authorization, token)) {
    case BEARER_NONE:
        tq_errf(eb, TQ_ERR_AUTH, "missing bearer token");
        return 0;
    case BEARER_OTHER_SCHEME:
        tq_errf(eb, TQ_ERR_AUTH, "authorization scheme must be bearer");
        return 0;
    default:
        return 1;
    }
}

int tq_auth_bearer_given(const char *authorization, tq_errbuf *eb)
{
    const char *t;
    return bearer_or_why(authorization, &t, eb);
}

/* The last second the token is accepted: its exp plus the leeway (check_claims read exp as
 * a finite number), clamped to what a long long holds. */
static long long valid_until(const tq_auth *a, json_t *claims)
{
    double t = json_number_value(json_object_get(claims, "exp")) + (double)a->leeway;
    return t >= 9.2e18 ? (long long)9.2e18 : (long long)t;
}

int tq_auth_verify_operator(const tq_auth *a, const char *authorization, long long now,
                            char *user_id, size_t user_id_cap, int *is_operator, long long *until,
                            tq_errbuf *eb)
{
    if (is_operator)
        *is_operator = 0;
    if (until)
        *until = 0;
    if (user_id && user_id_cap > 0)
        user_id[0] = '\0';
    const char *p = NULL;
    if (!bearer_or_why(authorization, &p, eb))
        return TQ_ERR_AUTH;

    /* The cap comes first: nothing below may look past TQ_AUTH_TOKEN_MAX bytes. */
    size_t len = strnlen(p, TQ_AUTH_TOKEN_MAX + 1);
    if (len > TQ_AUTH_TOKEN_MAX)
        return tq_errf(eb, TQ_ERR_AUTH, "token is too long (over %d bytes)", TQ_AUTH_TOKEN_MAX);

    size_t dot[2];
    if (!token_shape_ok(p, len, dot))
        return tq_errf(eb, TQ_ERR_AUTH, "token is malformed");

    int nomem = 0, overflow = 0, rc;
    json_t *hdr = NULL, *claims = NULL;
    jwt_t *jwt = NULL;

    hdr = segment_json(p, dot[0], &nomem, &overflow);
    if (!hdr) {
        rc = nomem      ? tq_errf(eb, TQ_ERR_NOMEM, "could not verify token: out of memory")
             : overflow ? tq_errf(eb, TQ_ERR_AUTH, "token header holds a number out of range")
                        : tq_errf(eb, TQ_ERR_AUTH, "token header is not a json object");
        goto out;
    }
    rc = check_header(a, hdr, eb);
    if (rc != TQ_OK)
        goto out;

    /* Parsed now only so a bad payload gets a clear message; nothing in it is read until
     * the signature has been verified below. */
    claims = segment_json(p + dot[0] + 1, dot[1] - dot[0] - 1, &nomem, &overflow);
    if (!claims) {
        rc = nomem      ? tq_errf(eb, TQ_ERR_NOMEM, "could not verify token: out of memory")
             : overflow ? tq_errf(eb, TQ_ERR_AUTH, "token payload holds a number out of range")
                        : tq_errf(eb, TQ_ERR_AUTH, "token payload is not a json object");
        goto out;
    }

    int jrc = jwt_decode(&jwt, p, a->key, (int)a->key_len);
    if (jrc != 0 || !jwt) {
        rc = jrc == ENOMEM ? tq_errf(eb, TQ_ERR_NOMEM, "could not verify token: out of memory")
                           : tq_errf(eb, TQ_ERR_AUTH, "token signature is invalid");
        goto out;
    }
    /* Belt and braces: the algorithm libjwt actually verified with must be ours. */
    if (jwt_get_alg(jwt) != a->alg->jalg) {
        rc = tq_errf(eb, TQ_ERR_AUTH, "token algorithm does not match the configured one");
        goto out;
    }

    rc = check_claims(a, claims, now, user_id, user_id_cap, eb);
    if (rc == TQ_OK && is_operator)
        *is_operator = operator_of(a, claims);
    if (rc == TQ_OK && until)
        *until = valid_until(a, claims);
out:
    jwt_free(jwt);
    json_decref(claims);
    json_decref(hdr);
    return rc;
}
