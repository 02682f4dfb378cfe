/*
 * dispatch — the dispatcher thread: AMQP in, decode, store, ack; the pick for each free
 * slot, whose runner starts it (dispatch.c says what must stay true).
 */
#ifndef TQ_DISPATCH_H
#define TQ_DISPATCH_H

/* Thread body; arg is the tq_worker. Returns when the worker is stopping. */
void *tq_dispatch_main(void *arg);

#endif
