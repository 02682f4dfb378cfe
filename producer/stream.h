/*
 * stream — the Server-Sent Events streams of a job and of all of a user's jobs
 * (docs/api.md, "Watching a job"). One notifier thread per producer LISTENs on Postgres
 * (trainq_job_event, trainq_job_output; a poll every TQ_STREAM_POLL_MS covers a missed
 * notification or a lost listening connection), reads what each woken stream has not yet
 * sent (producer/pdb.c, after the stream's cursor) and appends it to that stream's
 * bounded buffer. libmicrohttpd sends the buffer through a content-reader callback that
 * suspends the connection when the buffer is empty; the notifier resumes it.
 *
 * What must stay true:
 *  - no HTTP thread ever waits for Postgres or for another client: the callback only
 *    copies from the buffer; a slow client's buffer fills and its stream is simply not
 *    read for until it drains (its cursor stays), so it costs at most TQ_STREAM_BUF_HIGH
 *    plus one read of memory;
 *  - an event's `id:` is the cursor after it, so a client reconnecting with Last-Event-ID
 *    gets exactly what it had not received (docs/api.md);
 *  - tq_streams_close_all ends every stream at once (SIGTERM), before the server drains.
 */
#ifndef TQ_STREAM_H
#define TQ_STREAM_H

#include "poptions.h"
#include "request.h"
#include "tq_err.h"

#define TQ_STREAM_POLL_MS 5000
/* Buffered bytes above which a stream is not read for until its client drains it. */
#define TQ_STREAM_BUF_HIGH (64 * 1024)

typedef struct tq_streams tq_streams;

int tq_streams_start(const tq_config *cfg, tq_streams **out, tq_errbuf *eb);
/* Ends every open stream and refuses new ones (503). */
void tq_streams_close_all(tq_streams *h);
/* Stops the notifier and frees h; call after the HTTP server stopped. NULL is fine. */
void tq_streams_stop(tq_streams *h);

/* Where a stream starts: after job_events id `event` and (job streams) job_output seq
 * `seq`; the all-jobs stream sends progress newer than `micros` (µs since the epoch). */
typedef struct {
    long long event, seq, micros;
} tq_stream_cursor;

/* Replies to r with the stream of job_id (NULL: all of the user's jobs), or 429 (the
 * user's TRAINQ_STREAMS_PER_USER are open, with Retry-After) or 503 (stopping). */
void tq_streams_open(tq_streams *h, tq_req *r, const char *job_id, const tq_stream_cursor *from);

/* Number of open streams (for tests and metrics). */
int tq_streams_count(tq_streams *h);

#endif
