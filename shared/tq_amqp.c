#include "tq_amqp.h"

#include <amqp_tcp_socket.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "tq_clock.h"

#define TQ_AMQP_URL_MAX 2048
/* A whole TRAINQ_AMQP_URL list: TQ_AMQP_MAX_NODES urls of ordinary length. */
#define TQ_AMQP_LIST_MAX 8192
/* Replicas of a quorum queue declared by trainq: 3 tolerates the loss of one node, and more
 * replicas cost every publish a wider quorum write (RabbitMQ's advice is 3 or 5). */
#define TQ_AMQP_QUORUM_REPLICAS 3
#define TQ_AMQP_CONNECT_TIMEOUT_S 5
#define TQ_AMQP_HANDSHAKE_TIMEOUT_S 10
/* Declarations of quorum queues start a Ra cluster: give them room, but never forever. */
#define TQ_AMQP_RPC_TIMEOUT_S 30
#define TQ_AMQP_CLOSE_TIMEOUT_S 5
#define TQ_AMQP_MAX_HEADERS 16

struct tq_amqp {
    amqp_connection_state_t conn;
    int dead;                 /* socket failed or broker closed the connection */
    int channel_open;         /* channel 1 is open (0 after a broker channel.close) */
    int confirm;              /* confirm mode wanted: re-selected on reopen */
    unsigned epoch;           /* channel (re)open count */
    uint64_t next_tag;        /* delivery tag the next publish gets (confirm mode) */
    int n_nodes;              /* nodes in the url list this connection was made from */
    unsigned last_close_code; /* reply code of the last broker channel.close */
    int blocked;              /* connection.blocked received, no connection.unblocked yet */
    char blocked_reason[128]; /* the broker's reason ("low on memory", "low on disk") */
    const atomic_int *abort;  /* when set and non-zero: give up a blocked confirm wait */
    void (*on_block)(void *); /* blocked/unblocked changes, and ticks of a blocked wait */
    void *on_block_arg;
};

static void set_rpc_timeout(amqp_connection_state_t c, int seconds)
{
    struct timeval tv = {.tv_sec = seconds, .tv_usec = 0};
    amqp_set_rpc_timeout(c, &tv);
}

/* Copies reply_text (not NUL-terminated, broker-chosen length) into a capped buffer. */
static void bytes_to_str(amqp_bytes_t b, char *out, size_t outlen)
{
    size_t n = b.len < outlen - 1 ? b.len : outlen - 1;
    if (n)
        memcpy(out, b.bytes, n);
    out[n] = '\0';
}

static int on_channel_close(tq_amqp *a, amqp_channel_t ch, const amqp_channel_close_t *m,
                            const char *what, tq_errbuf *eb)
{
    char text[256];
    bytes_to_str(m->reply_text, text, sizeof text);
    amqp_channel_close_ok_t ok = {0};
    if (amqp_send_method(a->conn, ch, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok) != AMQP_STATUS_OK)
        a->dead = 1;
    if (ch == TQ_AMQP_CHANNEL)
        a->channel_open = 0;
    a->last_close_code = m->reply_code;
    return tq_errf(eb, TQ_ERR_AMQP, "%s: channel closed by broker: %u %s", what,
                   (unsigned)m->reply_code, text);
}

static int on_connection_close(tq_amqp *a, const amqp_connection_close_t *m, const char *what,
                               tq_errbuf *eb)
{
    char text[256];
    bytes_to_str(m->reply_text, text, sizeof text);
    amqp_connection_close_ok_t ok = {0};
    (void)amqp_send_method(a->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
    a->dead = 1;
    a->channel_open = 0;
    int err = TQ_ERR_AMQP;
    if (m->reply_code == AMQP_CONNECTION_FORCED)
        err = TQ_ERR_UNAVAILABLE;
    else if (m->reply_code == AMQP_ACCESS_REFUSED || m->reply_code == AMQP_NOT_ALLOWED)
        err = TQ_ERR_AUTH;
    return tq_errf(eb, err, "%s: connection closed by broker: %u %s", what, (unsigned)m->reply_code,
                   text);
}

static int on_library_error(tq_amqp *a, int status, const char *what, tq_errbuf *eb)
{
    /* After any library-level failure (socket error, heartbeat or rpc timeout, bad
     * frame) rabbitmq-c's connection state is unusable: only a fresh connection helps. */
    a->dead = 1;
    a->channel_open = 0;
    int err = TQ_ERR_UNAVAILABLE;
    if (status == AMQP_STATUS_TIMEOUT)
        err = TQ_ERR_TIMEOUT;
    else if (status == AMQP_STATUS_NO_MEMORY)
        err = TQ_ERR_NOMEM;
    return tq_errf(eb, err, "%s: %s", what, amqp_error_string2(status));
}

int tq_amqp_check_reply(tq_amqp *a, amqp_rpc_reply_t r, const char *what, tq_errbuf *eb)
{
    switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        return TQ_OK;
    case AMQP_RESPONSE_NONE:
        a->dead = 1;
        return tq_errf(eb, TQ_ERR_INTERNAL, "%s: missing rpc reply", what);
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        return on_library_error(a, r.library_error, what, eb);
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD)
            return on_channel_close(a, TQ_AMQP_CHANNEL, r.reply.decoded, what, eb);
        if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD)
            return on_connection_close(a, r.reply.decoded, what, eb);
        a->dead = 1;
        return tq_errf(eb, TQ_ERR_AMQP, "%s: unexpected method 0x%08x from broker", what,
                       (unsigned)r.reply.id);
    }
    a->dead = 1;
    return tq_errf(eb, TQ_ERR_INTERNAL, "%s: unknown rpc reply type %d", what, (int)r.reply_type);
}

static int open_channel(tq_amqp *a, tq_errbuf *eb)
{
    amqp_channel_open(a->conn, TQ_AMQP_CHANNEL);
    int rc = tq_amqp_check_reply(a, amqp_get_rpc_reply(a->conn), "could not open channel", eb);
    if (rc != TQ_OK)
        return rc;
    a->channel_open = 1;
    a->epoch++;
    a->next_tag = 1;
    if (a->confirm) {
        amqp_confirm_select(a->conn, TQ_AMQP_CHANNEL);
        rc = tq_amqp_check_reply(a, amqp_get_rpc_reply(a->conn),
                                 "could not enable publisher confirms", eb);
    }
    return rc;
}

int tq_amqp_channel(tq_amqp *a, tq_errbuf *eb)
{
    if (a->dead)
        return tq_errf(eb, TQ_ERR_UNAVAILABLE, "rabbitmq connection is closed");
    if (!a->channel_open) {
        int rc = open_channel(a, eb);
        if (rc != TQ_OK)
            return rc;
    }
    return TQ_AMQP_CHANNEL;
}

unsigned tq_amqp_channel_epoch(const tq_amqp *a)
{
    return a->epoch;
}

/* urlcopy (TQ_AMQP_URL_MAX bytes) receives the url: amqp_parse_url writes NULs into its
 * argument and ci points into it. */
static int parse_url(const char *url, char *urlcopy, struct amqp_connection_info *ci, tq_errbuf *eb)
{
    if (!url || strlen(url) >= TQ_AMQP_URL_MAX)
        return tq_errf(eb, TQ_ERR_CONFIG, "invalid amqp url: missing or too long");
    snprintf(urlcopy, TQ_AMQP_URL_MAX, "%s", url);
    amqp_default_connection_info(ci);
    if (amqp_parse_url(urlcopy, ci) != AMQP_STATUS_OK)
        return tq_errf(eb, TQ_ERR_CONFIG, "invalid amqp url: cannot parse");
    if (ci->ssl)
        return tq_errf(eb, TQ_ERR_CONFIG, "invalid amqp url: amqps is not supported");
    /* "amqp://host:port/" names the vhost "" by the URI spec; nobody means that. */
    if (ci->vhost[0] == '\0')
        ci->vhost = "/";
    return TQ_OK;
}

/* One node of a TRAINQ_AMQP_URL list: where it starts in the list and how long it is. */
typedef struct {
    size_t off, len;
} url_span;

static int is_blank(char c)
{
    return c == ' ' || c == '\t';
}

/* Cuts `list` at commas into at most TQ_AMQP_MAX_NODES spans, blanks around each trimmed.
 * Every span is non-empty; the list itself is not modified. Returns the count or
 * TQ_ERR_CONFIG. */
static int split_urls(const char *list, url_span *spans, tq_errbuf *eb)
{
    if (!list || !*list || strlen(list) >= TQ_AMQP_LIST_MAX)
        return tq_errf(eb, TQ_ERR_CONFIG, "invalid amqp url: missing or too long");
    int n = 0;
    size_t i = 0;
    for (;;) {
        size_t end = i + strcspn(list + i, ",");
        size_t b = i, e = end;
        while (b < e && is_blank(list[b]))
            b++;
        while (e > b && is_blank(list[e - 1]))
            e--;
        if (n == TQ_AMQP_MAX_NODES)
            return tq_errf(eb, TQ_ERR_CONFIG, "invalid amqp url list: more than %d nodes",
                           TQ_AMQP_MAX_NODES);
        if (b == e)
            return tq_errf(eb, TQ_ERR_CONFIG, "invalid amqp url list: node %d is empty", n + 1);
        spans[n].off = b;
        spans[n].len = e - b;
        n++;
        if (list[end] == '\0')
            return n;
        i = end + 1;
    }
}

/* Parses node `k` of a split list into urlcopy/ci (as parse_url). Errors name the node when
 * the list has more than one, and never quote the url (it holds a password). */
static int parse_node(const char *list, const url_span *spans, int k, int n, char *urlcopy,
                      struct amqp_connection_info *ci, tq_errbuf *eb)
{
    char one[TQ_AMQP_URL_MAX];
    if (spans[k].len >= sizeof one)
        return n > 1 ? tq_errf(eb, TQ_ERR_CONFIG, "invalid amqp url (node %d of %d): too long",
                               k + 1, n)
                     : tq_errf(eb, TQ_ERR_CONFIG, "invalid amqp url: missing or too long");
    memcpy(one, list + spans[k].off, spans[k].len);
    one[spans[k].len] = '\0';
    int rc = parse_url(one, urlcopy, ci, eb);
    if (rc != TQ_OK && n > 1) {
        const char *why = strncmp(eb->msg, "invalid amqp url: ", 18) == 0 ? eb->msg + 18 : "";
        char detail[128];
        snprintf(detail, sizeof detail, "%s", why);
        return tq_errf(eb, rc, "invalid amqp url (node %d of %d): %s", k + 1, n, detail);
    }
    return rc;
}

int tq_amqp_url_nodes(const char *urls, tq_errbuf *eb)
{
    url_span spans[TQ_AMQP_MAX_NODES];
    int n = split_urls(urls, spans, eb);
    if (n < 0)
        return n;
    /* Every node must serve the same vhost: a list spanning two vhosts would split the
     * topology into two unrelated queues, and jobs published to one never reach the other. */
    char first_vhost[TQ_AMQP_URL_MAX];
    for (int k = 0; k < n; k++) {
        char urlcopy[TQ_AMQP_URL_MAX];
        struct amqp_connection_info ci;
        int rc = parse_node(urls, spans, k, n, urlcopy, &ci, eb);
        if (rc != TQ_OK)
            return rc;
        if (k == 0)
            snprintf(first_vhost, sizeof first_vhost, "%s", ci.vhost);
        else if (strcmp(first_vhost, ci.vhost) != 0)
            return tq_errf(eb, TQ_ERR_CONFIG,
                           "invalid amqp url list: node %d of %d names another vhost than node 1",
                           k + 1, n);
    }
    return n;
}

int tq_amqp_url_check(const char *url, tq_errbuf *eb)
{
    int n = tq_amqp_url_nodes(url, eb);
    return n < 0 ? n : TQ_OK;
}

int tq_amqp_quorum_group_size(int n_nodes)
{
    /* One url may be a load balancer in front of any number of nodes: the broker's own
     * default (a replica on every cluster node, up to its configured cap) is the safe
     * choice there, and keeps a single-node declaration exactly as it always was. */
    if (n_nodes <= 1)
        return 0;
    return n_nodes < TQ_AMQP_QUORUM_REPLICAS ? n_nodes : TQ_AMQP_QUORUM_REPLICAS;
}

/* Where the next connect starts in the list: rotating, from a per-process random start, so
 * that a fleet's connections spread over the nodes rather than all landing on the first. */
static unsigned next_start(void)
{
    static atomic_uint rotor;
    static atomic_int seeded;
    if (!atomic_exchange(&seeded, 1))
        atomic_store(&rotor, (unsigned)getpid() * 2654435761u ^ (unsigned)time(NULL));
    return atomic_fetch_add(&rotor, 1);
}

static int connect_node(const struct amqp_connection_info *ci, const char *conn_name,
                        int heartbeat_s, tq_amqp **out, tq_errbuf *eb);

int tq_amqp_connect(const char *url, const char *conn_name, int heartbeat_s, tq_amqp **out,
                    tq_errbuf *eb)
{
    *out = NULL;
    if (heartbeat_s <= 0)
        heartbeat_s = TQ_AMQP_DEFAULT_HEARTBEAT;
    int n = tq_amqp_url_nodes(url, eb);
    if (n < 0)
        return n;
    url_span spans[TQ_AMQP_MAX_NODES];
    (void)split_urls(url, spans, eb); /* cannot fail: tq_amqp_url_nodes accepted it */

    /* Every node once, from a rotating start; the first that logs in and opens the channel
     * wins. A node that refuses (down, booting, partitioned away) costs at most the connect
     * and handshake timeouts, nothing on loopback where a stopped node refuses at once. */
    unsigned start = next_start();
    int rc = TQ_ERR_UNAVAILABLE;
    for (int t = 0; t < n; t++) {
        int k = (int)((start + (unsigned)t) % (unsigned)n);
        char urlcopy[TQ_AMQP_URL_MAX];
        struct amqp_connection_info ci;
        rc = parse_node(url, spans, k, n, urlcopy, &ci, eb);
        if (rc == TQ_OK)
            rc = connect_node(&ci, conn_name, heartbeat_s, out, eb);
        if (rc == TQ_OK) {
            (*out)->n_nodes = n;
            return TQ_OK;
        }
        if (rc == TQ_ERR_CONFIG || rc == TQ_ERR_NOMEM)
            return rc;
    }
    if (n > 1 && eb) {
        char last[TQ_ERRBUF_LEN - 64];
        snprintf(last, sizeof last, "%.400s", eb->msg);
        tq_errf(eb, rc, "no rabbitmq node of %d accepted; last: %s", n, last);
    }
    return rc;
}

/* Connects to one parsed node: socket, login, channel 1. */
static int connect_node(const struct amqp_connection_info *ci, const char *conn_name,
                        int heartbeat_s, tq_amqp **out, tq_errbuf *eb)
{
    tq_amqp *a = calloc(1, sizeof *a);
    if (!a)
        return tq_errf(eb, TQ_ERR_NOMEM, "could not allocate amqp connection");
    a->conn = amqp_new_connection();
    if (!a->conn) {
        free(a);
        return tq_errf(eb, TQ_ERR_NOMEM, "could not allocate amqp connection");
    }
    a->dead = 1; /* until login succeeds */
    int rc;
    amqp_socket_t *sock = amqp_tcp_socket_new(a->conn);
    if (!sock) {
        rc = tq_errf(eb, TQ_ERR_NOMEM, "could not allocate amqp socket");
        goto fail;
    }
    struct timeval tv = {.tv_sec = TQ_AMQP_CONNECT_TIMEOUT_S, .tv_usec = 0};
    int st = amqp_socket_open_noblock(sock, ci->host, ci->port, &tv);
    if (st != AMQP_STATUS_OK) {
        /* errno is not meaningful here (the library polls a non-blocking connect). */
        rc = tq_errf(eb, TQ_ERR_UNAVAILABLE, "could not connect to rabbitmq at %s:%d: %s", ci->host,
                     ci->port, amqp_error_string2(st));
        goto fail;
    }
    struct timeval hs = {.tv_sec = TQ_AMQP_HANDSHAKE_TIMEOUT_S, .tv_usec = 0};
    amqp_set_handshake_timeout(a->conn, &hs);
    set_rpc_timeout(a->conn, TQ_AMQP_RPC_TIMEOUT_S);

    /* rabbitmq-c 0.11 announces only authentication_failure_close and
     * exchange_exchange_bindings; it merges ours into them. Without connection.blocked the
     * broker silently stops reading a publisher during a memory or disk alarm and the
     * confirm wait cannot tell that from a dead link. */
    amqp_table_entry_t cap = {.key = amqp_cstring_bytes("connection.blocked"),
                              .value = {.kind = AMQP_FIELD_KIND_BOOLEAN, .value.boolean = 1}};
    amqp_table_entry_t prop[2] = {
        {.key = amqp_cstring_bytes("connection_name"),
         .value = {.kind = AMQP_FIELD_KIND_UTF8,
                   .value.bytes = amqp_cstring_bytes(conn_name ? conn_name : "trainq")}},
        {.key = amqp_cstring_bytes("capabilities"),
         .value = {.kind = AMQP_FIELD_KIND_TABLE,
                   .value.table = {.num_entries = 1, .entries = &cap}}},
    };
    amqp_table_t props = {.num_entries = 2, .entries = prop};
    a->dead = 0;
    amqp_rpc_reply_t r =
        amqp_login_with_properties(a->conn, ci->vhost, 0, 131072, heartbeat_s, &props,
                                   AMQP_SASL_METHOD_PLAIN, ci->user, ci->password);
    char what[300];
    snprintf(what, sizeof what, "could not log in to rabbitmq at %s:%d", ci->host, ci->port);
    rc = tq_amqp_check_reply(a, r, what, eb);
    if (rc != TQ_OK) {
        /* RabbitMQ drops the socket on bad credentials unless the client announces
         * authentication_failure_close; either way the login did not happen. */
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            r.library_error == AMQP_STATUS_CONNECTION_CLOSED)
            rc = tq_errf(eb, TQ_ERR_AUTH, "%s: connection closed during login (bad credentials?)",
                         what);
        goto fail;
    }
    rc = open_channel(a, eb);
    if (rc != TQ_OK)
        goto fail;
    *out = a;
    return TQ_OK;

fail:
    a->dead = 1;
    tq_amqp_close(a);
    return rc;
}

void tq_amqp_close(tq_amqp *a)
{
    if (!a)
        return;
    if (!a->dead) {
        set_rpc_timeout(a->conn, TQ_AMQP_CLOSE_TIMEOUT_S);
        if (a->channel_open)
            (void)amqp_channel_close(a->conn, TQ_AMQP_CHANNEL, AMQP_REPLY_SUCCESS);
        (void)amqp_connection_close(a->conn, AMQP_REPLY_SUCCESS);
    }
    amqp_destroy_connection(a->conn);
    free(a);
}

int tq_amqp_alive(const tq_amqp *a)
{
    return a && !a->dead;
}

amqp_connection_state_t tq_amqp_state(tq_amqp *a)
{
    return a->conn;
}

/* Reads and drops the content of a basic.return so the frame stream stays in sync. */
static int skip_returned_content(tq_amqp *a, amqp_channel_t ch, char *msgid, size_t msgid_len,
                                 tq_errbuf *eb)
{
    amqp_message_t m;
    amqp_rpc_reply_t r = amqp_read_message(a->conn, ch, &m, 0);
    int rc = tq_amqp_check_reply(a, r, "could not read returned message", eb);
    if (rc != TQ_OK)
        return rc;
    if (msgid) {
        msgid[0] = '\0';
        if (m.properties._flags & AMQP_BASIC_MESSAGE_ID_FLAG)
            bytes_to_str(m.properties.message_id, msgid, msgid_len);
    }
    amqp_destroy_message(&m);
    return TQ_OK;
}

/* connection.blocked / connection.unblocked (announced at login, see connect_node): the
 * broker stopped reading what this connection publishes until a resource alarm clears. */
static void on_blocked(tq_amqp *a, const amqp_frame_t *f)
{
    if (f->payload.method.id == AMQP_CONNECTION_BLOCKED_METHOD) {
        const amqp_connection_blocked_t *m = f->payload.method.decoded;
        a->blocked = 1;
        bytes_to_str(m->reason, a->blocked_reason, sizeof a->blocked_reason);
    } else {
        a->blocked = 0;
        a->blocked_reason[0] = '\0';
    }
    if (a->on_block)
        a->on_block(a->on_block_arg);
}

static int is_blocked_frame(const amqp_frame_t *f)
{
    return f->frame_type == AMQP_FRAME_METHOD && f->channel == 0 &&
           (f->payload.method.id == AMQP_CONNECTION_BLOCKED_METHOD ||
            f->payload.method.id == AMQP_CONNECTION_UNBLOCKED_METHOD);
}

int tq_amqp_blocked(const tq_amqp *a, char *reason, size_t reason_len)
{
    if (reason && reason_len)
        snprintf(reason, reason_len, "%s", a && a->blocked ? a->blocked_reason : "");
    return a && !a->dead && a->blocked;
}

void tq_amqp_set_abort(tq_amqp *a, const atomic_int *flag)
{
    a->abort = flag;
}

void tq_amqp_set_block_hook(tq_amqp *a, void (*fn)(void *arg), void *arg)
{
    a->on_block = fn;
    a->on_block_arg = arg;
}

int tq_amqp_handle_frame(tq_amqp *a, const amqp_frame_t *f, tq_errbuf *eb)
{
    if (is_blocked_frame(f)) {
        on_blocked(a, f);
        return TQ_OK;
    }
    if (f->frame_type != AMQP_FRAME_METHOD)
        return TQ_OK;
    switch (f->payload.method.id) {
    case AMQP_CONNECTION_CLOSE_METHOD:
        return on_connection_close(a, f->payload.method.decoded, "rabbitmq connection lost", eb);
    case AMQP_CHANNEL_CLOSE_METHOD:
        return on_channel_close(a, f->channel, f->payload.method.decoded, "rabbitmq channel lost",
                                eb);
    case AMQP_BASIC_RETURN_METHOD:
        return skip_returned_content(a, f->channel, NULL, 0, eb);
    default:
        return TQ_OK;
    }
}

int tq_amqp_pump(tq_amqp *a, tq_errbuf *eb)
{
    if (a->dead)
        return tq_errf(eb, TQ_ERR_UNAVAILABLE, "rabbitmq connection is closed");
    /* Bounded: a peer flooding us cannot keep this loop going forever. */
    for (int i = 0; i < 1000; i++) {
        amqp_frame_t f;
        struct timeval zero = {0, 0};
        int st = amqp_simple_wait_frame_noblock(a->conn, &f, &zero);
        if (st == AMQP_STATUS_TIMEOUT)
            break;
        if (st != AMQP_STATUS_OK)
            return on_library_error(a, st, "rabbitmq connection lost", eb);
        int rc = tq_amqp_handle_frame(a, &f, eb);
        amqp_maybe_release_buffers(a->conn);
        if (rc != TQ_OK && a->dead)
            return rc;
    }
    return TQ_OK;
}

int tq_amqp_confirm_select(tq_amqp *a, tq_errbuf *eb)
{
    int ch = tq_amqp_channel(a, eb);
    if (ch < 0)
        return ch;
    if (a->confirm)
        return TQ_OK;
    amqp_confirm_select(a->conn, (amqp_channel_t)ch);
    int rc = tq_amqp_check_reply(a, amqp_get_rpc_reply(a->conn),
                                 "could not enable publisher confirms", eb);
    if (rc == TQ_OK) {
        a->confirm = 1;
        a->next_tag = 1;
    }
    return rc;
}

static int declare_exchange(tq_amqp *a, const char *name, const char *type, tq_errbuf *eb)
{
    amqp_exchange_declare(a->conn, TQ_AMQP_CHANNEL, amqp_cstring_bytes(name),
                          amqp_cstring_bytes(type), 0, 1, 0, 0, amqp_empty_table);
    char what[160];
    snprintf(what, sizeof what, "could not declare exchange \"%s\"", name);
    return tq_amqp_check_reply(a, amqp_get_rpc_reply(a->conn), what, eb);
}

static int declare_queue(tq_amqp *a, const char *name, amqp_table_t args, tq_errbuf *eb)
{
    amqp_queue_declare(a->conn, TQ_AMQP_CHANNEL, amqp_cstring_bytes(name), 0, 1, 0, 0, args);
    char what[160];
    snprintf(what, sizeof what, "could not declare queue \"%s\"", name);
    return tq_amqp_check_reply(a, amqp_get_rpc_reply(a->conn), what, eb);
}

/* A passive declare: TQ_OK (with *ready, when not NULL, the ready message count) when the
 * queue exists, whatever its arguments; TQ_ERR_NOT_FOUND when it does not (the broker
 * closed the channel with 404: reopened on next use); else the error. */
static int passive_declare(tq_amqp *a, const char *queue, long long *ready, tq_errbuf *eb)
{
    int rc = tq_amqp_channel(a, eb);
    if (rc < 0)
        return rc;
    amqp_queue_declare_ok_t *ok =
        amqp_queue_declare(a->conn, TQ_AMQP_CHANNEL, amqp_cstring_bytes(queue), 1 /* passive */, 0,
                           0, 0, amqp_empty_table);
    char what[160];
    snprintf(what, sizeof what, "could not look up queue \"%s\"", queue);
    a->last_close_code = 0;
    rc = tq_amqp_check_reply(a, amqp_get_rpc_reply(a->conn), what, eb);
    if (rc == TQ_ERR_AMQP && !a->dead && a->last_close_code == AMQP_NOT_FOUND)
        return TQ_ERR_NOT_FOUND;
    if (rc == TQ_OK && ready)
        *ready = ok ? (long long)ok->message_count : 0;
    return rc;
}

int tq_amqp_queue_ready(tq_amqp *a, const char *queue, long long *ready, tq_errbuf *eb)
{
    return passive_declare(a, queue, ready, eb);
}

static int bind_queue(tq_amqp *a, const char *queue, const char *exchange, const char *key,
                      tq_errbuf *eb)
{
    amqp_queue_bind(a->conn, TQ_AMQP_CHANNEL, amqp_cstring_bytes(queue),
                    amqp_cstring_bytes(exchange), amqp_cstring_bytes(key), amqp_empty_table);
    char what[200];
    snprintf(what, sizeof what, "could not bind queue \"%s\" to \"%s\" with key \"%s\"", queue,
             exchange, key);
    return tq_amqp_check_reply(a, amqp_get_rpc_reply(a->conn), what, eb);
}

/* Declares a durable queue only where it does not exist yet. An existing queue is used as it
 * is: RabbitMQ refuses (406) any redeclaration whose x-arguments differ, and a quorum queue's
 * replica count (x-quorum-initial-group-size) depends on how many nodes the declaring
 * program was given, so two programs with different lists, or a queue made before the list
 * grew, must never lock each other out. Nothing here deletes or changes a queue. */
static int ensure_queue(tq_amqp *a, const char *name, amqp_table_t args, tq_errbuf *eb)
{
    int rc = passive_declare(a, name, NULL, eb);
    if (rc != TQ_ERR_NOT_FOUND)
        return rc;
    if ((rc = tq_amqp_channel(a, eb)) < 0)
        return rc;
    a->last_close_code = 0;
    rc = declare_queue(a, name, args, eb);
    /* Another program created it between our look-up and our declare, with other
     * arguments: theirs stands, and the queue is there, which is all we need. */
    if (rc == TQ_ERR_AMQP && !a->dead && a->last_close_code == AMQP_PRECONDITION_FAILED)
        rc = passive_declare(a, name, NULL, eb);
    return rc;
}

int tq_amqp_declare_topology(tq_amqp *a, tq_errbuf *eb)
{
    int rc = tq_amqp_channel(a, eb);
    if (rc < 0)
        return rc;
    if ((rc = declare_exchange(a, TQ_AMQP_EXCHANGE, "direct", eb)) != TQ_OK)
        return rc;
    if ((rc = declare_exchange(a, TQ_AMQP_DLX, "fanout", eb)) != TQ_OK)
        return rc;
    if ((rc = declare_exchange(a, TQ_AMQP_EVENTS, "topic", eb)) != TQ_OK)
        return rc;

    /* Argument types matter (an equal value of another AMQP type is "inequivalent"), so
     * this is the one place that writes them. The group size goes last and only when the
     * url list names more than one node (tq_amqp_quorum_group_size). */
    int group = tq_amqp_quorum_group_size(a->n_nodes);
    amqp_table_entry_t group_arg = {.key = amqp_cstring_bytes("x-quorum-initial-group-size"),
                                    .value = {.kind = AMQP_FIELD_KIND_I64, .value.i64 = group}};
    amqp_table_entry_t dead_args[2] = {
        {.key = amqp_cstring_bytes("x-queue-type"),
         .value = {.kind = AMQP_FIELD_KIND_UTF8, .value.bytes = amqp_cstring_bytes("quorum")}},
        group_arg,
    };
    amqp_table_t dead_tbl = {.num_entries = group ? 2 : 1, .entries = dead_args};
    if ((rc = ensure_queue(a, TQ_AMQP_DEAD_QUEUE, dead_tbl, eb)) != TQ_OK)
        return rc;
    if ((rc = bind_queue(a, TQ_AMQP_DEAD_QUEUE, TQ_AMQP_DLX, "", eb)) != TQ_OK)
        return rc;

    amqp_table_entry_t job_args[4] = {
        {.key = amqp_cstring_bytes("x-queue-type"),
         .value = {.kind = AMQP_FIELD_KIND_UTF8, .value.bytes = amqp_cstring_bytes("quorum")}},
        {.key = amqp_cstring_bytes("x-delivery-limit"),
         .value = {.kind = AMQP_FIELD_KIND_I64, .value.i64 = TQ_AMQP_DELIVERY_LIMIT}},
        {.key = amqp_cstring_bytes("x-dead-letter-exchange"),
         .value = {.kind = AMQP_FIELD_KIND_UTF8, .value.bytes = amqp_cstring_bytes(TQ_AMQP_DLX)}},
        group_arg,
    };
    amqp_table_t job_tbl = {.num_entries = group ? 4 : 3, .entries = job_args};
    if ((rc = ensure_queue(a, TQ_AMQP_QUEUE, job_tbl, eb)) != TQ_OK)
        return rc;
    static const char *const keys[] = {"lora", "dreambooth"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if ((rc = bind_queue(a, TQ_AMQP_QUEUE, TQ_AMQP_EXCHANGE, keys[i], eb)) != TQ_OK)
            return rc;
    amqp_maybe_release_buffers(a->conn);
    return TQ_OK;
}

/* Per-message bookkeeping while confirms arrive. */
enum { PUB_PENDING = 0, PUB_ACKED, PUB_NACKED };

static void fail_pending(tq_amqp_msg *msgs, const unsigned char *state, const int *returned,
                         size_t n, int err, const char *why)
{
    for (size_t i = 0; i < n; i++) {
        if (state[i] != PUB_PENDING)
            continue;
        msgs[i].result = err;
        /* the reason is a short tag for logs and outbox.last_error: cut it, don't overflow */
        snprintf(msgs[i].reason, sizeof msgs[i].reason, "%.120s", returned[i] ? "unroutable" : why);
    }
}

/* Applies an ack/nack for `tag` (and every earlier one when `multiple`). */
static void apply_confirm(tq_amqp_msg *msgs, unsigned char *state, const int *returned, size_t n,
                          uint64_t base, uint64_t tag, int multiple, int ack, size_t *remaining)
{
    if (tag < base)
        return; /* a confirm for an earlier batch (cannot happen: timeouts kill the link) */
    uint64_t last = tag - base;
    uint64_t first = multiple ? 0 : last;
    for (uint64_t i = first; i <= last && i < n; i++) {
        if (state[i] != PUB_PENDING)
            continue;
        (*remaining)--;
        if (ack && !returned[i]) {
            state[i] = PUB_ACKED;
            msgs[i].result = TQ_OK;
            msgs[i].verdict = TQ_AMQP_ACKED;
            msgs[i].reason[0] = '\0';
        } else {
            /* A returned message is acked afterwards: the ack only means "handled". */
            state[i] = PUB_NACKED;
            msgs[i].result = TQ_ERR_AMQP;
            msgs[i].verdict = returned[i] ? TQ_AMQP_RETURNED : TQ_AMQP_NACKED;
            if (!returned[i])
                snprintf(msgs[i].reason, sizeof msgs[i].reason, "nacked by broker");
        }
    }
}

/* Whether header_kv names the key k. */
static int kv_has(const tq_amqp_msg *m, amqp_bytes_t k)
{
    for (size_t i = 0; i < m->n_header_kv; i += 2)
        if (strlen(m->header_kv[i]) == k.len && memcmp(m->header_kv[i], k.bytes, k.len) == 0)
            return 1;
    return 0;
}

/* The properties of a copy (tq_amqp_msg.props): its headers decoded into pool, the entries
 * header_kv replaces left out, header_kv's appended, user_id and (drop_expiration)
 * expiration dropped; publish_one adds the defaults every message gets. TQ_OK or
 * TQ_ERR_INVALID/NOMEM. */
static int copy_props(const tq_amqp_msg *m, amqp_pool_t *pool, amqp_basic_properties_t *p,
                      tq_errbuf *eb)
{
    *p = *m->props;
    amqp_table_t orig = amqp_empty_table;
    if (m->headers.len) {
        size_t off = 0;
        if (amqp_decode_table(m->headers, pool, &orig, &off) != AMQP_STATUS_OK)
            return tq_errf(eb, TQ_ERR_INVALID, "cannot publish: the copy's headers do not decode");
    }
    size_t cap = (size_t)orig.num_entries + m->n_header_kv / 2;
    amqp_table_entry_t *e = cap ? amqp_pool_alloc(pool, cap * sizeof *e) : NULL;
    if (cap && !e)
        return tq_errf(eb, TQ_ERR_NOMEM, "cannot publish: out of memory");
    int n = 0;
    for (int i = 0; i < orig.num_entries; i++)
        if (!kv_has(m, orig.entries[i].key))
            e[n++] = orig.entries[i];
    for (size_t i = 0; i + 1 < m->n_header_kv; i += 2) {
        e[n].key = amqp_cstring_bytes(m->header_kv[i]);
        e[n].value.kind = AMQP_FIELD_KIND_UTF8;
        e[n++].value.value.bytes = amqp_cstring_bytes(m->header_kv[i + 1]);
    }
    p->_flags &= (amqp_flags_t) ~(AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_USER_ID_FLAG);
    if (n) {
        p->_flags |= AMQP_BASIC_HEADERS_FLAG;
        p->headers.num_entries = n;
        p->headers.entries = e;
    }
    if (m->drop_expiration)
        p->_flags &= (amqp_flags_t)~AMQP_BASIC_EXPIRATION_FLAG;
    return TQ_OK;
}

static int publish_one(tq_amqp *a, const tq_amqp_msg *m, tq_errbuf *eb)
{
    amqp_table_entry_t hdrs[TQ_AMQP_MAX_HEADERS];
    size_t nh = m->n_header_kv / 2; /* checked by the caller */
    amqp_basic_properties_t p;
    amqp_pool_t pool;
    init_amqp_pool(&pool, 1024);
    if (m->props) {
        int rc = copy_props(m, &pool, &p, eb);
        if (rc != TQ_OK) {
            empty_amqp_pool(&pool);
            return rc;
        }
    } else {
        for (size_t i = 0; i < nh; i++) {
            hdrs[i].key = amqp_cstring_bytes(m->header_kv[2 * i]);
            hdrs[i].value.kind = AMQP_FIELD_KIND_UTF8;
            hdrs[i].value.value.bytes = amqp_cstring_bytes(m->header_kv[2 * i + 1]);
        }
        memset(&p, 0, sizeof p);
        if (m->message_id) {
            p._flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
            p.message_id = amqp_cstring_bytes(m->message_id);
        }
        if (m->correlation_id) {
            p._flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
            p.correlation_id = amqp_cstring_bytes(m->correlation_id);
        }
        if (nh) {
            p._flags |= AMQP_BASIC_HEADERS_FLAG;
            p.headers.num_entries = (int)nh;
            p.headers.entries = hdrs;
        }
    }
    /* Both kinds: a content type (the message's default when none came), a timestamp (now,
     * when none came), persistent. */
    if (!(p._flags & AMQP_BASIC_CONTENT_TYPE_FLAG)) {
        p._flags |= AMQP_BASIC_CONTENT_TYPE_FLAG;
        p.content_type = amqp_cstring_bytes(m->content_type ? m->content_type : "application/json");
    }
    if (!(p._flags & AMQP_BASIC_TIMESTAMP_FLAG)) {
        p._flags |= AMQP_BASIC_TIMESTAMP_FLAG;
        p.timestamp = (uint64_t)time(NULL);
    }
    p._flags |= AMQP_BASIC_DELIVERY_MODE_FLAG;
    p.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    amqp_bytes_t body = {.len = m->body_len, .bytes = (void *)(uintptr_t)m->body};
    int st = amqp_basic_publish(
        a->conn, TQ_AMQP_CHANNEL, amqp_cstring_bytes(m->exchange ? m->exchange : ""),
        amqp_cstring_bytes(m->routing_key ? m->routing_key : ""), !m->not_mandatory, 0, &p, body);
    empty_amqp_pool(&pool);
    if (st != AMQP_STATUS_OK)
        return on_library_error(a, st, "could not publish message", eb);
    a->next_tag++;
    return TQ_OK;
}

/* One batch waiting for its publisher confirms. */
typedef struct {
    tq_amqp_msg *msgs;
    unsigned char *state; /* PUB_* per message */
    int *returned;        /* basic.return seen (its ack follows) */
    size_t n;
    uint64_t base; /* delivery tag before the batch's first message */
    size_t remaining;
} confirm_batch;

/* basic.return: the broker sends a message's return before its ack, in publish order, so
 * the earliest unconfirmed, not yet returned message with this id is the one returned. */
static int on_return(tq_amqp *a, const amqp_basic_return_t *m, confirm_batch *b, tq_errbuf *eb)
{
    char text[96];
    bytes_to_str(m->reply_text, text, sizeof text);
    unsigned code = m->reply_code;
    char msgid[256];
    int rc = skip_returned_content(a, TQ_AMQP_CHANNEL, msgid, sizeof msgid, eb);
    if (rc != TQ_OK)
        return rc;
    for (size_t i = 0; i < b->n; i++) {
        tq_amqp_msg *msg = &b->msgs[i];
        /* Only mandatory messages come back: an event and its reply share a message_id. */
        if (b->state[i] == PUB_PENDING && !b->returned[i] && !msg->not_mandatory &&
            msg->message_id && strcmp(msg->message_id, msgid) == 0) {
            b->returned[i] = 1;
            snprintf(msg->reason, sizeof msg->reason, "unroutable: %u %s", code, text);
            break;
        }
    }
    return TQ_OK;
}

/* One frame received while waiting for confirms: TQ_OK to go on waiting, else the error
 * that ends the batch (channel or connection closed). */
static int on_confirm_frame(tq_amqp *a, const amqp_frame_t *f, confirm_batch *b, tq_errbuf *eb)
{
    if (is_blocked_frame(f)) {
        on_blocked(a, f);
        return TQ_OK;
    }
    if (f->frame_type != AMQP_FRAME_METHOD)
        return TQ_OK;
    if (f->channel != TQ_AMQP_CHANNEL && f->payload.method.id != AMQP_CONNECTION_CLOSE_METHOD)
        return TQ_OK;
    switch (f->payload.method.id) {
    case AMQP_BASIC_ACK_METHOD: {
        const amqp_basic_ack_t *m = f->payload.method.decoded;
        apply_confirm(b->msgs, b->state, b->returned, b->n, b->base, m->delivery_tag, m->multiple,
                      1, &b->remaining);
        return TQ_OK;
    }
    case AMQP_BASIC_NACK_METHOD: {
        const amqp_basic_nack_t *m = f->payload.method.decoded;
        apply_confirm(b->msgs, b->state, b->returned, b->n, b->base, m->delivery_tag, m->multiple,
                      0, &b->remaining);
        return TQ_OK;
    }
    case AMQP_BASIC_RETURN_METHOD:
        return on_return(a, f->payload.method.decoded, b, eb);
    case AMQP_CHANNEL_CLOSE_METHOD:
        return on_channel_close(a, f->channel, f->payload.method.decoded, "could not publish", eb);
    case AMQP_CONNECTION_CLOSE_METHOD:
        return on_connection_close(a, f->payload.method.decoded, "could not publish", eb);
    default:
        return TQ_OK;
    }
}

/* While blocked, the wait wakes this often to see whether the caller gave up. */
#define TQ_AMQP_BLOCKED_SLICE_MS 500

/* Waits until every message of the batch has the broker's verdict, or timeout_ms. On a
 * connection with an abort flag (tq_amqp_set_abort: the relay's), the clock stops while it
 * is blocked by a resource alarm: the broker has the messages (or will read them) and
 * confirms them once the alarm clears, so a timeout then would only drop the connection
 * and publish again into the same alarm. Such a wait ends when the alarm clears, the
 * connection dies, or the flag is raised. Without a flag (the consumer's one-message
 * publishes, whose callers have their own fallbacks) the timeout counts as always. */
static int await_confirms(tq_amqp *a, confirm_batch *b, int timeout_ms, tq_errbuf *eb)
{
    if (timeout_ms <= 0)
        timeout_ms = 10000;
    int64_t deadline = tq_mono_ms() + timeout_ms;
    while (b->remaining > 0) {
        if (a->blocked && a->abort) {
            if (atomic_load(a->abort)) {
                a->dead = 1;
                return tq_errf(eb, TQ_ERR_UNAVAILABLE,
                               "could not publish: gave up while rabbitmq is blocked (%s)",
                               a->blocked_reason);
            }
            deadline = tq_mono_ms() + timeout_ms;
            if (a->on_block)
                a->on_block(a->on_block_arg);
        }
        int64_t left = deadline - tq_mono_ms();
        if (left <= 0) {
            /* Late confirms would arrive on a channel whose tags we no longer trust to
             * map onto the next batch's returns: drop the connection instead. */
            a->dead = 1;
            return tq_errf(eb, TQ_ERR_TIMEOUT,
                           "could not publish: %zu of %zu messages unconfirmed after %d ms",
                           b->remaining, b->n, timeout_ms);
        }
        if (a->blocked && a->abort && left > TQ_AMQP_BLOCKED_SLICE_MS)
            left = TQ_AMQP_BLOCKED_SLICE_MS;
        struct timeval tv = {.tv_sec = (time_t)(left / 1000),
                             .tv_usec = (suseconds_t)((left % 1000) * 1000)};
        amqp_frame_t f;
        int st = amqp_simple_wait_frame_noblock(a->conn, &f, &tv);
        if (st == AMQP_STATUS_TIMEOUT)
            continue;
        if (st != AMQP_STATUS_OK)
            return on_library_error(a, st, "could not wait for publisher confirms", eb);
        int rc = on_confirm_frame(a, &f, b, eb);
        if (rc != TQ_OK)
            return rc;
        amqp_maybe_release_buffers(a->conn);
    }
    return TQ_OK;
}

int tq_amqp_publish_confirmed(tq_amqp *a, tq_amqp_msg *msgs, size_t n, int timeout_ms,
                              tq_errbuf *eb)
{
    for (size_t i = 0; i < n; i++) {
        msgs[i].result = TQ_ERR_UNAVAILABLE;
        msgs[i].verdict = TQ_AMQP_UNCONFIRMED;
        msgs[i].reason[0] = '\0';
    }
    if (n == 0)
        return TQ_OK;
    if (!a->confirm)
        return tq_errf(eb, TQ_ERR_INTERNAL, "cannot publish confirmed: confirm mode not selected");
    int rc = tq_amqp_channel(a, eb);
    if (rc < 0) {
        for (size_t i = 0; i < n; i++) {
            msgs[i].result = rc;
            snprintf(msgs[i].reason, sizeof msgs[i].reason, "channel unavailable");
        }
        return rc;
    }
    rc = TQ_OK; /* tq_amqp_channel answered the channel number */

    confirm_batch b = {.msgs = msgs, .n = n, .remaining = n};
    b.state = calloc(n, 1);
    b.returned = calloc(n, sizeof *b.returned);
    if (!b.state || !b.returned) {
        free(b.state);
        free(b.returned);
        return tq_errf(eb, TQ_ERR_NOMEM, "could not allocate confirm state");
    }

    /* Refuse bad input before anything is sent, so a batch is never half on the wire
     * with confirms we would not wait for. */
    for (size_t i = 0; i < n; i++) {
        if (msgs[i].n_header_kv % 2 != 0 || msgs[i].n_header_kv / 2 > TQ_AMQP_MAX_HEADERS) {
            rc = tq_errf(eb, TQ_ERR_INVALID, "cannot publish: bad header list (message %zu)", i);
            goto out;
        }
    }
    b.base = a->next_tag;
    for (size_t i = 0; i < n && rc == TQ_OK; i++)
        rc = publish_one(a, &msgs[i], eb); /* only a dead connection fails here */
    if (rc == TQ_OK)
        rc = await_confirms(a, &b, timeout_ms, eb);
out:
    if (rc != TQ_OK)
        fail_pending(msgs, b.state, b.returned, n, rc, eb ? eb->msg : "batch failed");
    free(b.state);
    free(b.returned);
    if (!a->dead)
        amqp_maybe_release_buffers(a->conn);
    return rc;
}
