/*
 * tq_listen — the listening sockets of both programs (the producer's HTTP address, the
 * consumer's metrics address), bound here and handed to libmicrohttpd
 * (MHD_OPTION_LISTEN_SOCKET), so that bind's own errno decides the exit code: an address
 * this host cannot have or a port it may not take is a setting that will fail the same way
 * on every restart (exit 2, which the systemd units do not restart); an address another
 * process holds may be free on the next start (exit 1).
 */
#ifndef TQ_LISTEN_H
#define TQ_LISTEN_H

#include <sys/socket.h>

#include "tq_err.h"

/* What a failed bind/listen with errno e means: TQ_ERR_CONFIG when no restart can help
 * (EADDRNOTAVAIL, EACCES, EPERM, EAFNOSUPPORT), else TQ_ERR_IO (EADDRINUSE and the rest). */
int tq_listen_error_class(int e);

/* The same for a host that getaddrinfo could not resolve (gai its result, 0 with no
 * address): TQ_ERR_IO when the resolver did not answer (EAI_AGAIN: a restart may get an
 * answer, exit 1), else TQ_ERR_CONFIG (a name that does not exist stays so). */
int tq_listen_resolve_class(int gai);

/* A non-blocking, close-on-exec TCP socket bound to addr (SO_REUSEADDR, so a restart binds
 * while old connections sit in TIME_WAIT; never SO_REUSEPORT, which would let a second
 * process share the address unseen) and listening. An address not on this host is tried
 * again for 3 s first (an IPv6 address in duplicate address detection after boot). host and port
 * are addr as configured, for the error: "could not listen on HOST:PORT[ for WHAT]: STRERROR" (an
 * IPv6 host in brackets). Returns TQ_OK with *fd, or the class above with *fd = -1. */
int tq_listen_open(const struct sockaddr *addr, socklen_t len, const char *host, int port,
                   const char *what, int *fd, tq_errbuf *eb);

#endif
