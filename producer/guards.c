#include "guards.h"

#include <stdio.h>
#include <time.h>

#include "pdb.h"
#include "request_impl.h"
#include "tq_log.h"

/* error_description of WWW-Authenticate: one line of eb, and the header around it. */
#define AUTH_DESC_BUF 200
#define AUTH_HEADER_BUF 300
/* A decimal int for a header value. */
#define INT_TEXT_BUF 16

/* error_description is a quoted-string: keep printable ASCII minus quote and backslash. */
static void quoted_safe(char *dst, size_t cap, const char *src)
{
    size_t j = 0;
    for (size_t i = 0; src[i] && j + 1 < cap; i++) {
        unsigned char ch = (unsigned char)src[i];
        dst[j++] = (ch >= 0x20 && ch < 0x7f && ch != '"' && ch != '\\') ? (char)ch : ' ';
    }
    dst[j] = '\0';
}

int tq_req_authenticate(tq_req *r)
{
    const char *h = tq_req_header(r, MHD_HTTP_HEADER_AUTHORIZATION);
    tq_errbuf eb = {{0}};
    int rc = tq_auth_verify_operator(r->app->auth, h, (long long)time(NULL), r->user,
                                     sizeof r->user, &r->is_operator, &r->token_until, &eb);
    if (rc == TQ_ERR_AUTH && !tq_auth_bearer_given(h, &eb)) {
        /* No credentials (or another scheme's): a bare challenge, no error code. */
        r->user[0] = '\0';
        tq_req_add_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"trainq\"");
        tq_req_reply_error(r, 401, eb.msg);
        return -1;
    }
    /* Every body this API reads is JSON: one that says it is something else is 415 on any
     * authenticated route (docs/api.md), also where the body is ignored (cancel, retry,
     * drain) — after the 401, so a caller without a token learns nothing else first. */
    if (rc == TQ_OK)
        return r->body.len > 0 && tq_req_require_json(r) != 0 ? -1 : 0;
    r->user[0] = '\0';
    if (rc != TQ_ERR_AUTH) {
        tq_logj(TQ_LOG_ERROR, "http.auth_error", json_pack("{s:s}", "request_id", r->request_id),
                "%s: %s", tq_strerror(rc), eb.msg);
        tq_req_reply_error(r, 500, "internal server error");
        return -1;
    }
    char desc[AUTH_DESC_BUF], www[AUTH_HEADER_BUF];
    quoted_safe(desc, sizeof desc, eb.msg[0] ? eb.msg : "invalid token");
    snprintf(www, sizeof www,
             "Bearer realm=\"trainq\", error=\"invalid_token\", error_description=\"%s\"", desc);
    tq_req_add_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, www);
    tq_req_reply_error(r, 401, eb.msg[0] ? eb.msg : "invalid token");
    return -1;
}

int tq_req_rate_limit(tq_req *r, const char *bucket, int default_per_minute, char *max_priority)
{
    int count = 0, limit = 0, retry = 1;
    tq_errbuf eb = {{0}};
    int rc = tq_pdb_rate_hit(r->user, bucket, default_per_minute, &count, &limit, &retry,
                             max_priority, &eb);
    if (rc != TQ_OK) {
        tq_req_reply_db_error(r, rc, &eb);
        return -1;
    }
    char v[INT_TEXT_BUF];
    snprintf(v, sizeof v, "%d", limit);
    tq_req_add_header(r, "X-RateLimit-Limit", v);
    snprintf(v, sizeof v, "%d", count >= limit ? 0 : limit - count);
    tq_req_add_header(r, "X-RateLimit-Remaining", v);
    if (count <= limit)
        return 0;
    snprintf(v, sizeof v, "%d", retry);
    tq_req_add_header(r, MHD_HTTP_HEADER_RETRY_AFTER, v);
    tq_req_reply_error(r, 429, "rate limit exceeded");
    return -1;
}
