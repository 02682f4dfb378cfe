#include "tq_sign.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

static int id_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

/* Printable ASCII but ',' (the entry separator) and ' ' (a pasted space is a typo). */
static int secret_char(unsigned char c)
{
    return c > ' ' && c < 0x7f && c != ',';
}

/* One "id:secret" entry of len bytes (not NUL-terminated) appended to out. */
static int parse_entry(const char *e, size_t len, const char *what, size_t index, tq_sign_keys *out,
                       tq_errbuf *eb)
{
    const char *colon = memchr(e, ':', len);
    if (!colon)
        return tq_errf(eb, TQ_ERR_CONFIG, "invalid %s: entry %zu is not of the form id:secret",
                       what, index);
    size_t il = (size_t)(colon - e);
    const char *s = colon + 1;
    size_t sl = len - il - 1;
    if (il == 0)
        return tq_errf(eb, TQ_ERR_CONFIG, "invalid %s: entry %zu has an empty key id", what, index);
    if (il > TQ_SIGN_ID_MAX)
        return tq_errf(eb, TQ_ERR_CONFIG, "invalid %s: entry %zu has a key id longer than %d bytes",
                       what, index, TQ_SIGN_ID_MAX);
    for (size_t i = 0; i < il; i++)
        if (!id_char((unsigned char)e[i]))
            return tq_errf(eb, TQ_ERR_CONFIG,
                           "invalid %s: entry %zu has a key id with a character other than "
                           "A-Z a-z 0-9 . _ -",
                           what, index);
    char id[TQ_SIGN_ID_MAX + 1];
    memcpy(id, e, il);
    id[il] = '\0';
    for (size_t k = 0; k < out->n; k++)
        if (strcmp(out->keys[k].id, id) == 0)
            return tq_errf(eb, TQ_ERR_CONFIG, "invalid %s: key id \"%s\" is listed twice", what,
                           id);
    if (sl < TQ_SIGN_SECRET_MIN)
        return tq_errf(eb, TQ_ERR_CONFIG,
                       "invalid %s: key \"%s\" has a secret of %zu bytes; at least %d are required",
                       what, id, sl, TQ_SIGN_SECRET_MIN);
    if (sl > TQ_SIGN_SECRET_MAX)
        return tq_errf(eb, TQ_ERR_CONFIG,
                       "invalid %s: key \"%s\" has a secret longer than %d bytes", what, id,
                       TQ_SIGN_SECRET_MAX);
    for (size_t i = 0; i < sl; i++)
        if (!secret_char((unsigned char)s[i]))
            return tq_errf(eb, TQ_ERR_CONFIG,
                           "invalid %s: key \"%s\" has a secret with a character other than "
                           "printable ASCII (no spaces, no commas)",
                           what, id);
    if (out->n == TQ_SIGN_MAX_KEYS)
        return tq_errf(eb, TQ_ERR_CONFIG, "invalid %s: more than %d keys", what, TQ_SIGN_MAX_KEYS);
    tq_sign_key *key = &out->keys[out->n++];
    memcpy(key->id, id, il + 1);
    memcpy(key->secret, s, sl);
    key->secret_len = sl;
    return TQ_OK;
}

int tq_sign_keys_parse(const char *text, const char *what, tq_sign_keys *out, tq_errbuf *eb)
{
    memset(out, 0, sizeof *out);
    size_t index = 0;
    int rc = TQ_OK;
    for (const char *p = text; rc == TQ_OK && *p;) {
        size_t len = strcspn(p, ",\n");
        size_t used = len;
        if (len > 0 && p[len - 1] == '\r')
            len--;
        if (len > 0)
            rc = parse_entry(p, len, what, ++index, out, eb);
        p += used;
        if (*p)
            p++;
    }
    if (rc == TQ_OK && out->n == 0)
        rc = tq_errf(eb, TQ_ERR_CONFIG, "invalid %s: expected one or more id:secret entries", what);
    if (rc != TQ_OK)
        tq_sign_keys_wipe(out);
    return rc;
}

void tq_sign_keys_wipe(tq_sign_keys *k)
{
    OPENSSL_cleanse(k, sizeof *k);
}

void tq_sign_key_wipe(tq_sign_key *k)
{
    OPENSSL_cleanse(k, sizeof *k);
}

int tq_sign_hmac(const void *key, size_t key_len, const void *data, size_t len,
                 unsigned char mac[TQ_SIGN_MAC_LEN])
{
    static const unsigned char empty[1];
    unsigned int n = 0;
    if (key_len > INT_MAX)
        return TQ_ERR_INTERNAL;
    if (!HMAC(EVP_sha256(), key_len ? key : empty, (int)key_len, len ? data : empty, len, mac,
              &n) ||
        n != TQ_SIGN_MAC_LEN)
        return TQ_ERR_INTERNAL;
    return TQ_OK;
}

int tq_sign_value(const tq_sign_key *key, const void *body, size_t len, char out[TQ_SIGN_VALUE_LEN])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char mac[TQ_SIGN_MAC_LEN];
    int rc = tq_sign_hmac(key->secret, key->secret_len, body, len, mac);
    if (rc != TQ_OK)
        return rc;
    memcpy(out, "v1=", 3);
    for (size_t i = 0; i < TQ_SIGN_MAC_LEN; i++) {
        out[3 + 2 * i] = hex[mac[i] >> 4];
        out[4 + 2 * i] = hex[mac[i] & 15];
    }
    out[TQ_SIGN_VALUE_LEN - 1] = '\0';
    return TQ_OK;
}

static int hex_val(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The MAC of a "v1=" value: exactly 64 hex digits, either case. 0 on success. */
static int decode_mac(const char *s, size_t n, unsigned char mac[TQ_SIGN_MAC_LEN])
{
    if (n != 2 * TQ_SIGN_MAC_LEN)
        return -1;
    for (size_t i = 0; i < TQ_SIGN_MAC_LEN; i++) {
        int hi = hex_val((unsigned char)s[2 * i]), lo = hex_val((unsigned char)s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        mac[i] = (unsigned char)(hi << 4 | lo);
    }
    return 0;
}

/* The received key id for a reason line: at most 64 bytes, non-printables and quotes
 * replaced, so a header cannot inject anything into logs or x-trainq-reason. */
static void quote_id(const char *s, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n && i < TQ_SIGN_ID_MAX && o + 1 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        out[o++] = (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') ? (char)c : '?';
    }
    out[o] = '\0';
}

int tq_sign_verify(const tq_sign_keys *k, const char *key_id, size_t ki_len, const char *signature,
                   size_t sig_len, const void *body, size_t len, char *why, size_t why_cap)
{
    if (!signature) {
        snprintf(why, why_cap, "unsigned message: %s is required", TQ_SIGN_SIGNATURE_HEADER);
        return TQ_ERR_AUTH;
    }
    if (!key_id) {
        snprintf(why, why_cap, "unsigned message: %s is required", TQ_SIGN_KEY_ID_HEADER);
        return TQ_ERR_AUTH;
    }
    const tq_sign_key *key = NULL;
    for (size_t i = 0; i < k->n && !key; i++)
        if (strlen(k->keys[i].id) == ki_len && memcmp(k->keys[i].id, key_id, ki_len) == 0)
            key = &k->keys[i];
    if (!key) {
        char shown[TQ_SIGN_ID_MAX + 1];
        quote_id(key_id, ki_len, shown, sizeof shown);
        snprintf(why, why_cap, "unknown publisher key id \"%s\"%s", shown,
                 ki_len > TQ_SIGN_ID_MAX ? "..." : "");
        return TQ_ERR_AUTH;
    }
    unsigned char got[TQ_SIGN_MAC_LEN], want[TQ_SIGN_MAC_LEN];
    if (sig_len < 3 || memcmp(signature, "v1=", 3) != 0 ||
        decode_mac(signature + 3, sig_len - 3, got) != 0) {
        snprintf(why, why_cap, "bad signature: expected v1= followed by 64 hex digits");
        return TQ_ERR_AUTH;
    }
    if (tq_sign_hmac(key->secret, key->secret_len, body, len, want) != TQ_OK) {
        snprintf(why, why_cap, "could not compute the signature");
        return TQ_ERR_INTERNAL;
    }
    if (CRYPTO_memcmp(got, want, TQ_SIGN_MAC_LEN) != 0) {
        snprintf(why, why_cap, "bad signature");
        return TQ_ERR_AUTH;
    }
    return TQ_OK;
}
