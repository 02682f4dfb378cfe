/*
 * guards — the checks an endpoint runs before its own work: who is asking (the bearer
 * token, auth.h) and whether they may ask again now (the per-user rate limit, kept in
 * Postgres so every producer shares one count).
 *
 * Each returns 0 to go on, or -1 when it already queued the response (401, 429, 503, 500):
 * the handler then returns at once.
 */
#ifndef TQ_GUARDS_H
#define TQ_GUARDS_H

#include "request.h"

/* The buckets of tq_req_rate_limit, as stored in rate_limits.bucket. */
#define TQ_RATE_SUBMIT "submit"
#define TQ_RATE_READ "read"

/* Verifies the bearer token and sets the request's user; 401 with WWW-Authenticate when
 * it fails. */
int tq_req_authenticate(tq_req *r);

/* Counts one request in the user's fixed one-minute window of `bucket` (TQ_RATE_SUBMIT |
 * TQ_RATE_READ); sets X-RateLimit-Limit / -Remaining; 429 with Retry-After when over the
 * limit, 503 / 500 on DB errors. Call after tq_req_authenticate. max_priority (NULL, or
 * TQ_PDB_PRIORITY_BUF bytes, submit bucket): the user's cap, as tq_pdb_rate_hit gives it. */
int tq_req_rate_limit(tq_req *r, const char *bucket, int default_per_minute, char *max_priority);

#endif
