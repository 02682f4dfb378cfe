#include "admit.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ addresses */

/* An address reduced to what identifies a host: family and 4 or 16 bytes (a v4-mapped
 * IPv6 address is its IPv4 address, so a dual-stack listener counts one client once). */
typedef struct {
    int family; /* 0: unknown (unix socket or absent) */
    uint8_t b[sizeof(struct in6_addr)];
} addr_key;

#define V4_BYTES sizeof(struct in_addr)
#define V6_BYTES sizeof(struct in6_addr)
/* Where a v4-mapped IPv6 address (::ffff:a.b.c.d) holds its IPv4 address. */
#define V4_MAPPED_AT (V6_BYTES - V4_BYTES)

static void key_of(const struct sockaddr *sa, addr_key *k)
{
    memset(k, 0, sizeof *k);
    if (!sa)
        return;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)(const void *)sa;
        k->family = AF_INET;
        memcpy(k->b, &s4->sin_addr, V4_BYTES);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)(const void *)sa;
        if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
            k->family = AF_INET;
            memcpy(k->b, &s6->sin6_addr.s6_addr[V4_MAPPED_AT], V4_BYTES);
        } else {
            k->family = AF_INET6;
            memcpy(k->b, &s6->sin6_addr, V6_BYTES);
        }
    }
}

static int key_parse(const char *s, size_t n, addr_key *k)
{
    char buf[TQ_ADMIT_ADDR_MAX];
    while (n && (*s == ' ' || *s == '\t'))
        s++, n--;
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    if (n == 0 || n >= sizeof buf)
        return -1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    memset(k, 0, sizeof *k);
    struct in6_addr a6;
    if (inet_pton(AF_INET, buf, k->b) == 1) {
        k->family = AF_INET;
        return 0;
    }
    if (inet_pton(AF_INET6, buf, &a6) == 1) {
        if (IN6_IS_ADDR_V4MAPPED(&a6)) {
            k->family = AF_INET;
            memcpy(k->b, &a6.s6_addr[V4_MAPPED_AT], V4_BYTES);
        } else {
            k->family = AF_INET6;
            memcpy(k->b, &a6, V6_BYTES);
        }
        return 0;
    }
    return -1;
}

static void key_text(const addr_key *k, char out[TQ_ADMIT_ADDR_MAX])
{
    if (!k->family || !inet_ntop(k->family, k->b, out, TQ_ADMIT_ADDR_MAX))
        snprintf(out, TQ_ADMIT_ADDR_MAX, "unknown");
}

static int key_eq(const addr_key *a, const addr_key *b)
{
    return a->family == b->family && memcmp(a->b, b->b, sizeof a->b) == 0;
}

/* ------------------------------------------------------------------ trusted proxies */

typedef struct {
    addr_key net;
    int bits;
} cidr;

struct tq_netlist {
    size_t n;
    cidr e[];
};

static int cidr_has(const cidr *c, const addr_key *k)
{
    if (c->net.family != k->family)
        return 0;
    int full = c->bits / 8, rest = c->bits % 8;
    if (memcmp(c->net.b, k->b, (size_t)full) != 0)
        return 0;
    if (rest == 0)
        return 1;
    uint8_t mask = (uint8_t)(0xffu << (8 - rest));
    return (c->net.b[full] & mask) == (k->b[full] & mask);
}

int tq_netlist_parse(const char *text, tq_netlist **out, tq_errbuf *eb)
{
    *out = NULL;
    size_t cap = 1;
    for (const char *p = text; *p; p++)
        cap += *p == ',';
    tq_netlist *l = calloc(1, sizeof *l + cap * sizeof l->e[0]);
    if (!l)
        return tq_errf(eb, TQ_ERR_NOMEM, "out of memory");
    const char *p = text;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        const char *slash = memchr(p, '/', n);
        size_t alen = slash ? (size_t)(slash - p) : n;
        cidr c = {.bits = -1};
        int blank = strspn(p, " \t") >= n;
        if (!blank) {
            int ok = key_parse(p, alen, &c.net) == 0;
            int maxbits = c.net.family == AF_INET ? 32 : 128;
            c.bits = maxbits;
            if (ok && slash) {
                char *end = NULL;
                long b = strtol(slash + 1, &end, 10);
                while (end && (*end == ' ' || *end == '\t'))
                    end++;
                ok = end != slash + 1 && end == p + n && b >= 0 && b <= maxbits;
                c.bits = (int)b;
            }
            if (!ok) {
                int shown = n > 60 ? 60 : (int)n;
                free(l);
                return tq_errf(eb, TQ_ERR_CONFIG,
                               "invalid TRAINQ_HTTP_TRUSTED_PROXIES entry \"%.*s\": expected an "
                               "IP address or CIDR block",
                               shown, p);
            }
            l->e[l->n++] = c;
        }
        p += n;
        if (*p == ',')
            p++;
    }
    *out = l;
    return TQ_OK;
}

void tq_netlist_free(tq_netlist *l)
{
    free(l);
}

static int list_has(const tq_netlist *l, const addr_key *k)
{
    if (!l || !k->family)
        return 0;
    for (size_t i = 0; i < l->n; i++)
        if (cidr_has(&l->e[i], k))
            return 1;
    return 0;
}

int tq_netlist_contains(const tq_netlist *l, const struct sockaddr *addr)
{
    addr_key k;
    key_of(addr, &k);
    return list_has(l, &k);
}

void tq_client_address(const tq_netlist *trusted, const struct sockaddr *peer, const char *xff,
                       char out[TQ_ADMIT_ADDR_MAX])
{
    addr_key client;
    key_of(peer, &client);
    if (xff && list_has(trusted, &client)) {
        /* Right to left: each trusted hop vouches for the entry before it. */
        const char *end = xff + strlen(xff);
        while (end > xff) {
            const char *start = end;
            while (start > xff && start[-1] != ',')
                start--;
            addr_key k;
            if (key_parse(start, (size_t)(end - start), &k) != 0)
                break;
            client = k;
            if (!list_has(trusted, &k))
                break;
            end = start > xff ? start - 1 : xff;
        }
    }
    key_text(&client, out);
}

/* ------------------------------------------------------------------ the table */

struct tq_admit_conn {
    int used;
    int fd;
    int reserve;
    int cut;        /* reported by a sweep already */
    int kept_alive; /* a request completed on it before */
    tq_admit_phase phase;
    long long deadline_ms; /* 0: none */
    addr_key peer;
    struct tq_admit_conn *next_free;
};

struct tq_admit {
    tq_admit_config cfg;
    pthread_mutex_t mu;
    int open, cap;
    tq_admit_conn *free_list;
    tq_admit_conn slots[];
};

int tq_admit_new(const tq_admit_config *cfg, tq_admit **out, tq_errbuf *eb)
{
    *out = NULL;
    if (cfg->max_connections < 1 || cfg->reserve < 0 || cfg->per_client < 1)
        return tq_errf(eb, TQ_ERR_CONFIG, "invalid connection limits");
    int cap = cfg->max_connections + cfg->reserve + TQ_ADMIT_SLACK;
    tq_admit *a = calloc(1, sizeof *a + (size_t)cap * sizeof a->slots[0]);
    if (!a)
        return tq_errf(eb, TQ_ERR_NOMEM, "out of memory");
    a->cfg = *cfg;
    a->cap = cap;
    pthread_mutex_init(&a->mu, NULL);
    for (int i = cap - 1; i >= 0; i--) {
        a->slots[i].next_free = a->free_list;
        a->free_list = &a->slots[i];
    }
    *out = a;
    return TQ_OK;
}

void tq_admit_free(tq_admit *a)
{
    if (!a)
        return;
    pthread_mutex_destroy(&a->mu);
    free(a);
}

/* Under a->mu. A linear scan: the table is at most a few thousand slots and this runs once
 * per accepted socket, microseconds even when a flood is being refused. */
static int count_of(const tq_admit *a, const addr_key *k)
{
    int n = 0;
    for (int i = 0; i < a->cap; i++)
        if (a->slots[i].used && key_eq(&a->slots[i].peer, k))
            n++;
    return n;
}

tq_admit_verdict tq_admit_check(tq_admit *a, const struct sockaddr *peer)
{
    addr_key k;
    key_of(peer, &k);
    int trusted = list_has(a->cfg.trusted, &k);
    pthread_mutex_lock(&a->mu);
    tq_admit_verdict v = TQ_ADMIT_OK;
    if (a->open >= a->cfg.max_connections + a->cfg.reserve)
        v = TQ_ADMIT_REFUSE_FULL;
    else if (!trusted && count_of(a, &k) >= a->cfg.per_client)
        v = TQ_ADMIT_REFUSE_CLIENT;
    pthread_mutex_unlock(&a->mu);
    return v;
}

static long long deadline_for(const tq_admit *a, const tq_admit_conn *c, tq_admit_phase p,
                              long long now_ms)
{
    switch (p) {
    case TQ_PHASE_HEADERS: {
        long long ms = a->cfg.header_ms;
        if (c->kept_alive && a->cfg.idle_ms > ms)
            ms = a->cfg.idle_ms;
        if (c->reserve && ms > TQ_ADMIT_RESERVE_HEADER_MS)
            ms = TQ_ADMIT_RESERVE_HEADER_MS;
        return now_ms + ms;
    }
    case TQ_PHASE_BODY:
        return now_ms + a->cfg.body_ms;
    case TQ_PHASE_BUSY:
        break;
    }
    return 0;
}

tq_admit_conn *tq_admit_open(tq_admit *a, const struct sockaddr *peer, int fd, long long now_ms)
{
    pthread_mutex_lock(&a->mu);
    tq_admit_conn *c = a->free_list;
    if (c) {
        a->free_list = c->next_free;
        memset(c, 0, sizeof *c);
        c->used = 1;
        c->fd = fd;
        key_of(peer, &c->peer);
        c->reserve = a->open >= a->cfg.max_connections;
        c->phase = TQ_PHASE_HEADERS;
        c->deadline_ms = deadline_for(a, c, TQ_PHASE_HEADERS, now_ms);
        a->open++;
    }
    pthread_mutex_unlock(&a->mu);
    return c;
}

void tq_admit_close(tq_admit *a, tq_admit_conn *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&a->mu);
    if (c->used) {
        c->used = 0;
        c->fd = -1;
        c->next_free = a->free_list;
        a->free_list = c;
        a->open--;
    }
    pthread_mutex_unlock(&a->mu);
}

void tq_admit_set_phase(tq_admit *a, tq_admit_conn *c, tq_admit_phase p, long long now_ms)
{
    if (!c)
        return;
    pthread_mutex_lock(&a->mu);
    if (c->phase == TQ_PHASE_BUSY && p == TQ_PHASE_HEADERS)
        c->kept_alive = 1;
    c->phase = p;
    c->deadline_ms = deadline_for(a, c, p, now_ms);
    pthread_mutex_unlock(&a->mu);
}

int tq_admit_is_reserve(const tq_admit_conn *c)
{
    return c && c->reserve;
}

int tq_admit_open_count(tq_admit *a)
{
    pthread_mutex_lock(&a->mu);
    int n = a->open;
    pthread_mutex_unlock(&a->mu);
    return n;
}

int tq_admit_sweep(tq_admit *a, long long now_ms, void (*cut)(int fd, tq_admit_phase p, void *arg),
                   void *arg)
{
    int n = 0;
    pthread_mutex_lock(&a->mu);
    for (int i = 0; i < a->cap; i++) {
        tq_admit_conn *c = &a->slots[i];
        if (!c->used || c->cut || !c->deadline_ms || now_ms < c->deadline_ms)
            continue;
        c->cut = 1;
        cut(c->fd, c->phase, arg);
        n++;
    }
    pthread_mutex_unlock(&a->mu);
    return n;
}
