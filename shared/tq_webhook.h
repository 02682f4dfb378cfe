/*
 * tq_webhook — the pure parts of calling a web app back (issue "signed webhooks"):
 *
 *  - Standard Webhooks signatures (https://www.standardwebhooks.com/): a secret is
 *    "whsec_" + base64 of random bytes; a delivery carries the headers webhook-id,
 *    webhook-timestamp (Unix seconds) and webhook-signature, "v1," + base64 of
 *    HMAC-SHA256(secret bytes, "<id>.<timestamp>.<body>"), several space-separated while a
 *    secret rotates. Any Standard Webhooks library verifies what tq_webhook_sign writes.
 *  - the address rule that keeps deliveries from reaching inside the network (SSRF): a
 *    delivery may only connect to a public unicast address, checked on the address actually
 *    connected to (after DNS), so a name that resolves inward is refused too.
 *
 * Pure functions over caller-owned memory; nothing logs, nothing touches the network.
 */
#ifndef TQ_WEBHOOK_H
#define TQ_WEBHOOK_H

#include <stddef.h>
#include <sys/socket.h>

#include "tq_err.h"

#define TQ_WEBHOOK_SECRET_PREFIX "whsec_"
#define TQ_WEBHOOK_SECRET_MIN_BYTES 24 /* random bytes behind the prefix */
#define TQ_WEBHOOK_SECRET_MAX_BYTES 64
#define TQ_WEBHOOK_SECRET_BYTES 32 /* what tq_webhook_secret_new makes */
/* "whsec_" + base64 of TQ_WEBHOOK_SECRET_MAX_BYTES + NUL */
#define TQ_WEBHOOK_SECRET_BUF (6 + 4 * ((TQ_WEBHOOK_SECRET_MAX_BYTES + 2) / 3) + 1)
/* "v1," + base64 of 32 bytes + NUL */
#define TQ_WEBHOOK_SIGNATURE_BUF (3 + 44 + 1)
/* How far a webhook-timestamp may be from the receiver's clock (the spec's advice). */
#define TQ_WEBHOOK_TOLERANCE_SECONDS 300

/* A new secret from the system's random source into out. TQ_OK, or TQ_ERR_INTERNAL. */
int tq_webhook_secret_new(char out[TQ_WEBHOOK_SECRET_BUF]);

/* The key bytes of a secret: "whsec_" + base64 of TQ_WEBHOOK_SECRET_MIN_BYTES ..
 * TQ_WEBHOOK_SECRET_MAX_BYTES bytes. TQ_OK, or TQ_ERR_INVALID (no prefix, bad base64, wrong
 * length). */
int tq_webhook_secret_key(const char *secret, unsigned char key[TQ_WEBHOOK_SECRET_MAX_BYTES],
                          size_t *key_len);

/* The webhook-signature value of one delivery: "v1," + base64 HMAC-SHA256 over
 * "<msg_id>.<timestamp>.<body>". TQ_OK, TQ_ERR_INVALID (bad secret or id), TQ_ERR_NOMEM. */
int tq_webhook_sign(const char *secret, const char *msg_id, long long timestamp, const void *body,
                    size_t body_len, char out[TQ_WEBHOOK_SIGNATURE_BUF]);

/* What a receiver does (here for tests and for documentation by example): TQ_OK when one of
 * the space-separated "v1,..." entries of signature_header matches (constant time) and
 * timestamp is within TQ_WEBHOOK_TOLERANCE_SECONDS of now; TQ_ERR_FORBIDDEN otherwise. */
int tq_webhook_verify(const char *secret, const char *msg_id, long long timestamp, long long now,
                      const void *body, size_t body_len, const char *signature_header);

/* ---- where a delivery may connect ---------------------------------------------------- */

typedef enum {
    TQ_ADDR_PUBLIC,      /* global unicast: deliveries may go there */
    TQ_ADDR_LOOPBACK,    /* 127.0.0.0/8, ::1 */
    TQ_ADDR_PRIVATE,     /* 10/8, 172.16/12, 192.168/16, fc00::/7 */
    TQ_ADDR_LINK_LOCAL,  /* 169.254/16 (cloud metadata lives here), fe80::/10 */
    TQ_ADDR_SHARED,      /* 100.64/10 (carrier-grade NAT) */
    TQ_ADDR_UNSPECIFIED, /* 0.0.0.0/8, :: */
    TQ_ADDR_MULTICAST,   /* 224/4, ff00::/8 */
    TQ_ADDR_RESERVED,    /* documentation, benchmarking, 240/4, broadcast, IETF, Teredo,
                            unknown families */
} tq_addr_class;

/* The class of an IPv4 or IPv6 socket address. IPv4 embedded in IPv6 (mapped ::ffff:0:0/96,
 * NAT64 64:ff9b::/96, 6to4 2002::/16, compatible ::/96) is judged by the IPv4 address. */
tq_addr_class tq_addr_classify(const struct sockaddr *sa);

/* Lowercase name of a class, for error messages ("loopback", "private", ...). */
const char *tq_addr_class_name(tq_addr_class c);

/* 1 when a delivery may connect to sa: a public address, or a loopback one when
 * allow_loopback (a test setting: trainq's own tests receive on 127.0.0.1). */
int tq_webhook_addr_allowed(const struct sockaddr *sa, int allow_loopback);

#endif
