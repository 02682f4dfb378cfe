#include "tq_listen.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* How long an address not on this host is waited for (tq_listen.h), and how often tried. */
#define TQ_LISTEN_RETRY_MS 250
#define TQ_LISTEN_WAIT_MS 3000

int tq_listen_error_class(int e)
{
    switch (e) {
    case EADDRNOTAVAIL: /* not an address of this host (a typo, another machine's) */
    case EACCES:        /* a privileged port without the capability */
    case EPERM:
    case EAFNOSUPPORT: /* IPv6 disabled on this host */
    case EINVAL:       /* an address bind cannot take (link-local without its scope) */
        return TQ_ERR_CONFIG;
    default:
        return TQ_ERR_IO;
    }
}

int tq_listen_resolve_class(int gai)
{
    return gai == EAI_AGAIN ? TQ_ERR_IO : TQ_ERR_CONFIG;
}

static int listen_once(const struct sockaddr *addr, socklen_t len, const char *host, int port,
                       const char *what, int *fd, int *err, tq_errbuf *eb)
{
    *fd = -1;
    int s = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (s < 0 || setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        /* "[::]" is IPv6 only, as libmicrohttpd makes it without MHD_USE_DUAL_STACK */
        (addr->sa_family == AF_INET6 &&
         setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) != 0) ||
        bind(s, addr, len) != 0 || listen(s, SOMAXCONN) != 0) {
        int e = errno;
        *err = e;
        if (s >= 0)
            close(s);
        int v6 = strchr(host, ':') != NULL && host[0] != '[';
        return tq_errf(eb, tq_listen_error_class(e), "could not listen on %s%.200s%s:%d%s%s: %s",
                       v6 ? "[" : "", host, v6 ? "]" : "", port, what ? " for " : "",
                       what ? what : "", strerror(e));
    }
    *fd = s;
    return TQ_OK;
}

int tq_listen_open(const struct sockaddr *addr, socklen_t len, const char *host, int port,
                   const char *what, int *fd, tq_errbuf *eb)
{
    /* An address not (yet) on this host: an IPv6 address still in duplicate address
     * detection right after boot is, for a second or two. Waited for that long, then a
     * setting to fix (exit 2); an address that appears later still (a VRRP address this
     * node does not hold, DHCP) wants the wildcard address (docs/operations.md). */
    for (int waited = 0;; waited += TQ_LISTEN_RETRY_MS) {
        int err = 0;
        int rc = listen_once(addr, len, host, port, what, fd, &err, eb);
        if (rc == TQ_OK || err != EADDRNOTAVAIL || waited >= TQ_LISTEN_WAIT_MS)
            return rc;
        struct timespec ts = {0, TQ_LISTEN_RETRY_MS * 1000000L};
        nanosleep(&ts, NULL);
    }
}
