/*
 * dispatch — the dispatcher thread: AMQP in, decode, claim, launch, ack, one delivery at a
 * time (dispatch.c says what must stay true).
 */
#ifndef TQ_DISPATCH_H
#define TQ_DISPATCH_H

/* Thread body; arg is the tq_worker. Returns when the worker is stopping. */
void *tq_dispatch_main(void *arg);

#endif
