/*
 * bench-fixed200: the floor for scripts/bench.sh row 1. The producer's HTTP stack
 * (libmicrohttpd, internal epoll thread pool, same daemon options as producer/http.c) with
 * nothing behind it: every request's body is read and dropped, the answer is a fixed
 * 200 JSON body of the size a real submit answer has.
 *
 *   bench-fixed200 [PORT [THREADS]]     (defaults 0 = any free port, 4 threads)
 *
 * Prints "listening PORT" on stdout once it accepts connections; SIGTERM/SIGINT stop it.
 * What must stay true: the MHD flags and options here mirror tq_http_start, so the ratio
 * submit/s ÷ fixed200/s measures what the producer adds on top of its HTTP stack.
 */
#include <microhttpd.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CONN_MEMORY_LIMIT (48 * 1024)
#define MAX_CONNECTIONS 1024
#define CONN_TIMEOUT_SECONDS 30

static const char reply[] = "{\"success\":true,\"job_id\":\"00000000-0000-4000-8000-000000000000\","
                            "\"status\":\"queued\",\"message\":\"Training job queued\"}";

/* A per-request marker so the first call (headers only) is told from the body calls. */
static int marker;

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    (void)cls;
    (void)url;
    (void)method;
    (void)version;
    (void)upload_data;
    if (*con_cls == NULL) {
        *con_cls = &marker;
        return MHD_YES;
    }
    if (*upload_data_size) {
        *upload_data_size = 0; /* read and dropped, like a body the producer buffers */
        return MHD_YES;
    }
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        sizeof reply - 1, (void *)(uintptr_t)reply, MHD_RESPMEM_PERSISTENT);
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    enum MHD_Result r = MHD_queue_response(c, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return r;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)c;
    (void)toe;
    *con_cls = NULL;
}

static long arg_long(const char *s, long lo, long hi, const char *what)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || !end || *end || v < lo || v > hi) {
        fprintf(stderr, "bench-fixed200: invalid %s \"%s\"\n", what, s);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv)
{
    long port = argc > 1 ? arg_long(argv[1], 0, 65535, "port") : 0;
    long threads = argc > 2 ? arg_long(argv[2], 1, 256, "thread count") : 4;

    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* Loopback only, like the producer's default address. */
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

    unsigned flags =
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ITC | MHD_USE_ERROR_LOG;
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, (uint16_t)port, NULL, NULL, on_request, NULL, MHD_OPTION_SOCK_ADDR,
        (struct sockaddr *)&sa, MHD_OPTION_THREAD_POOL_SIZE, (unsigned int)threads,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)CONN_TIMEOUT_SECONDS,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONN_MEMORY_LIMIT, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned int)MAX_CONNECTIONS, MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned int)1,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL, MHD_OPTION_END);
    if (!d) {
        fprintf(stderr, "bench-fixed200: could not listen on port %ld: %s\n", port,
                strerror(errno));
        return 1;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    printf("listening %u\n", di ? (unsigned)di->port : (unsigned)port);
    fflush(stdout);

    int sig = 0;
    sigwait(&sigs, &sig);
    MHD_stop_daemon(d);
    return 0;
}
