#include "tq_webhook.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tq_sign.h"

#define PREFIX_LEN (sizeof TQ_WEBHOOK_SECRET_PREFIX - 1)

int tq_webhook_secret_new(char out[TQ_WEBHOOK_SECRET_BUF])
{
    unsigned char raw[TQ_WEBHOOK_SECRET_BYTES];
    if (RAND_bytes(raw, sizeof raw) != 1)
        return TQ_ERR_INTERNAL;
    memcpy(out, TQ_WEBHOOK_SECRET_PREFIX, PREFIX_LEN);
    EVP_EncodeBlock((unsigned char *)out + PREFIX_LEN, raw, (int)sizeof raw);
    OPENSSL_cleanse(raw, sizeof raw);
    return TQ_OK;
}

static int b64_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
           c == '/';
}

/* Strict standard base64 (padded, no whitespace): the decoded length, or -1. EVP_DecodeBlock
 * alone skips whitespace and counts padding as zero bytes. */
static int b64_decode(const char *s, size_t n, unsigned char *out, size_t cap)
{
    if (n == 0 || n % 4 != 0 || n / 4 * 3 > cap)
        return -1;
    size_t pad = s[n - 1] == '=' ? (s[n - 2] == '=' ? 2 : 1) : 0;
    for (size_t i = 0; i < n - pad; i++)
        if (!b64_char((unsigned char)s[i]))
            return -1;
    int len = EVP_DecodeBlock(out, (const unsigned char *)s, (int)n);
    if (len < 0)
        return -1;
    return len - (int)pad;
}

int tq_webhook_secret_key(const char *secret, unsigned char key[TQ_WEBHOOK_SECRET_MAX_BYTES],
                          size_t *key_len)
{
    if (!secret || strncmp(secret, TQ_WEBHOOK_SECRET_PREFIX, PREFIX_LEN) != 0)
        return TQ_ERR_INVALID;
    const char *b = secret + PREFIX_LEN;
    size_t n = strnlen(b, TQ_WEBHOOK_SECRET_BUF);
    unsigned char buf[TQ_WEBHOOK_SECRET_MAX_BYTES + 3];
    int len = b64_decode(b, n, buf, sizeof buf);
    if (len < TQ_WEBHOOK_SECRET_MIN_BYTES || len > TQ_WEBHOOK_SECRET_MAX_BYTES) {
        OPENSSL_cleanse(buf, sizeof buf);
        return TQ_ERR_INVALID;
    }
    memcpy(key, buf, (size_t)len);
    *key_len = (size_t)len;
    OPENSSL_cleanse(buf, sizeof buf);
    return TQ_OK;
}

/* HMAC-SHA256 of "<msg_id>.<timestamp>.<body>" under the secret's key. */
static int mac_of(const char *secret, const char *msg_id, long long timestamp, const void *body,
                  size_t body_len, unsigned char mac[TQ_SIGN_MAC_LEN])
{
    unsigned char key[TQ_WEBHOOK_SECRET_MAX_BYTES];
    size_t key_len;
    if (!msg_id || !*msg_id || strchr(msg_id, '.') || timestamp < 0 ||
        tq_webhook_secret_key(secret, key, &key_len) != TQ_OK)
        return TQ_ERR_INVALID;
    char head[256];
    int hl = snprintf(head, sizeof head, "%s.%lld.", msg_id, timestamp);
    int rc = TQ_ERR_INVALID;
    if (hl > 0 && (size_t)hl < sizeof head) {
        char *signed_content = malloc((size_t)hl + body_len + 1);
        rc = TQ_ERR_NOMEM;
        if (signed_content) {
            memcpy(signed_content, head, (size_t)hl);
            if (body_len)
                memcpy(signed_content + hl, body, body_len);
            rc = tq_sign_hmac(key, key_len, signed_content, (size_t)hl + body_len, mac);
            free(signed_content);
        }
    }
    OPENSSL_cleanse(key, sizeof key);
    return rc;
}

int tq_webhook_sign(const char *secret, const char *msg_id, long long timestamp, const void *body,
                    size_t body_len, char out[TQ_WEBHOOK_SIGNATURE_BUF])
{
    unsigned char mac[TQ_SIGN_MAC_LEN];
    int rc = mac_of(secret, msg_id, timestamp, body, body_len, mac);
    if (rc != TQ_OK)
        return rc;
    memcpy(out, "v1,", 3);
    EVP_EncodeBlock((unsigned char *)out + 3, mac, (int)sizeof mac);
    return TQ_OK;
}

int tq_webhook_verify(const char *secret, const char *msg_id, long long timestamp, long long now,
                      const void *body, size_t body_len, const char *signature_header)
{
    long long skew = now - timestamp;
    if (!signature_header || skew > TQ_WEBHOOK_TOLERANCE_SECONDS ||
        skew < -TQ_WEBHOOK_TOLERANCE_SECONDS)
        return TQ_ERR_FORBIDDEN;
    unsigned char want[TQ_SIGN_MAC_LEN];
    if (mac_of(secret, msg_id, timestamp, body, body_len, want) != TQ_OK)
        return TQ_ERR_FORBIDDEN;
    int ok = 0;
    for (const char *p = signature_header; *p;) {
        while (*p == ' ')
            p++;
        size_t n = strcspn(p, " ");
        unsigned char got[TQ_SIGN_MAC_LEN + 3];
        if (n > 3 && strncmp(p, "v1,", 3) == 0 &&
            b64_decode(p + 3, n - 3, got, sizeof got) == TQ_SIGN_MAC_LEN)
            ok |= CRYPTO_memcmp(got, want, sizeof want) == 0;
        p += n;
    }
    return ok ? TQ_OK : TQ_ERR_FORBIDDEN;
}

/* ---- where a delivery may connect ---------------------------------------------------- */

static int in4(uint32_t a, uint32_t net, int bits)
{
    uint32_t mask = bits == 0 ? 0 : 0xffffffffu << (32 - bits);
    return (a & mask) == (net & mask);
}

/* a: host byte order. */
static tq_addr_class classify4(uint32_t a)
{
    if (in4(a, 0x00000000, 8))
        return TQ_ADDR_UNSPECIFIED; /* "this network" */
    if (in4(a, 0x7f000000, 8))
        return TQ_ADDR_LOOPBACK;
    if (in4(a, 0x0a000000, 8) || in4(a, 0xac100000, 12) || in4(a, 0xc0a80000, 16))
        return TQ_ADDR_PRIVATE;
    if (in4(a, 0xa9fe0000, 16))
        return TQ_ADDR_LINK_LOCAL;
    if (in4(a, 0x64400000, 10))
        return TQ_ADDR_SHARED;
    if (in4(a, 0xe0000000, 4))
        return TQ_ADDR_MULTICAST;
    if (in4(a, 0xc0000000, 24) || /* IETF protocol assignments */
        in4(a, 0xc0000200, 24) || /* TEST-NET-1 */
        in4(a, 0xc6120000, 15) || /* benchmarking */
        in4(a, 0xc6336400, 24) || /* TEST-NET-2 */
        in4(a, 0xcb007100, 24) || /* TEST-NET-3 */
        in4(a, 0xc0586300, 24) || /* 6to4 relay anycast (deprecated) */
        in4(a, 0xf0000000, 4))    /* reserved, and the broadcast address */
        return TQ_ADDR_RESERVED;
    return TQ_ADDR_PUBLIC;
}

static uint32_t v4_at(const unsigned char *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

static tq_addr_class classify6(const unsigned char *b)
{
    static const unsigned char zero[16];
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const unsigned char nat64[12] = {0x00, 0x64, 0xff, 0x9b};
    if (memcmp(b, zero, 16) == 0)
        return TQ_ADDR_UNSPECIFIED;
    if (memcmp(b, zero, 15) == 0 && b[15] == 1)
        return TQ_ADDR_LOOPBACK;
    if (memcmp(b, mapped, 12) == 0 || memcmp(b, nat64, 12) == 0 || memcmp(b, zero, 12) == 0)
        return classify4(v4_at(b + 12)); /* mapped, NAT64, and deprecated "compatible" */
    if (b[0] == 0x20 && b[1] == 0x02)
        return classify4(v4_at(b + 2)); /* 6to4 */
    if (b[0] == 0xff)
        return TQ_ADDR_MULTICAST;
    if ((b[0] & 0xfe) == 0xfc)
        return TQ_ADDR_PRIVATE; /* unique local fc00::/7 */
    if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80)
        return TQ_ADDR_LINK_LOCAL;
    if (b[0] == 0xfe && (b[1] & 0xc0) == 0xc0)
        return TQ_ADDR_PRIVATE; /* deprecated site-local fec0::/10 */
    if ((b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0d && b[3] == 0xb8) || /* documentation */
        (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x00 && b[3] == 0x00) || /* Teredo */
        (b[0] == 0x01 && b[1] == 0x00 && memcmp(b + 2, zero, 6) == 0) ||  /* discard-only */
        (b[0] & 0xe0) != 0x20)                                            /* not 2000::/3 */
        return TQ_ADDR_RESERVED;
    return TQ_ADDR_PUBLIC;
}

tq_addr_class tq_addr_classify(const struct sockaddr *sa)
{
    if (!sa)
        return TQ_ADDR_RESERVED;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)(const void *)sa;
        return classify4(ntohl(s4->sin_addr.s_addr));
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)(const void *)sa;
        return classify6(s6->sin6_addr.s6_addr);
    }
    return TQ_ADDR_RESERVED;
}

const char *tq_addr_class_name(tq_addr_class c)
{
    switch (c) {
    case TQ_ADDR_PUBLIC:
        return "public";
    case TQ_ADDR_LOOPBACK:
        return "loopback";
    case TQ_ADDR_PRIVATE:
        return "private";
    case TQ_ADDR_LINK_LOCAL:
        return "link-local";
    case TQ_ADDR_SHARED:
        return "shared (carrier-grade NAT)";
    case TQ_ADDR_UNSPECIFIED:
        return "unspecified";
    case TQ_ADDR_MULTICAST:
        return "multicast";
    case TQ_ADDR_RESERVED:
        break;
    }
    return "reserved";
}

int tq_webhook_addr_allowed(const struct sockaddr *sa, int allow_loopback)
{
    tq_addr_class c = tq_addr_classify(sa);
    return c == TQ_ADDR_PUBLIC || (allow_loopback && c == TQ_ADDR_LOOPBACK);
}
