/*
 * wake — the producer's thread that wakes, after their commit, the listeners that new
 * submissions concern (the outbox relays, the event streams, the webhook senders).
 *
 * Why: a transaction that sends NOTIFY takes the database's notification lock at commit and
 * holds it through its WAL flush, so notifying submissions would commit one at a time
 * (docs/performance.md, "What bounds submit"). tq_submit defers its notifications instead
 * (db/procedures/00_triggers.sql, tq_notify) and names them; the request thread hands them
 * here after the commit, and this thread sends what has gathered in one short transaction
 * of its own (tq_pdb_wake), round after round: under load one round covers many submissions.
 *
 * What must stay true: a note is taken only after the submission committed, so a woken
 * listener finds the rows. A wake-up that is lost (the database away, the process killed)
 * costs latency only: every listener also polls (the relay every second, streams and
 * webhook senders on their own poll).
 */
#ifndef TQ_WAKE_H
#define TQ_WAKE_H

#include "tq_err.h"

typedef struct tq_wake tq_wake;

int tq_wake_start(tq_wake **out, tq_errbuf *eb);

/* After a submission of user committed: channels is tq_submit's deferred_notify
 * (comma-separated channel names; "" or NULL: nothing to do). Never blocks on the
 * database. w NULL is fine (nothing is sent; the listeners' polls catch up). */
void tq_wake_note(tq_wake *w, const char *user, const char *channels);

/* Sends what is still pending, stops the thread and frees w. NULL is fine. */
void tq_wake_stop(tq_wake *w);

#endif
