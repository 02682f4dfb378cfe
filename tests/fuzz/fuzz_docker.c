/*
 * fuzz_docker — what the consumer reads from dockerd: the inspect and list JSON replies,
 * Docker's timestamps, and the multiplexed log stream.
 *
 * Every input goes to all four parsers:
 *   - tq_docker_parse_inspect / tq_docker_parse_list on the whole input: every fixed-size
 *     string in the result must be NUL-terminated, times non-negative, counts sane (a
 *     name may still start with '/' after the one leading '/' is cut: "//x" is not a name
 *     dockerd would ever produce, so that is not checked);
 *   - tq_docker_parse_time_ms on the input up to its first NUL: -1 or a value, never a
 *     sanitizer report;
 *   - the log demuxer fed the whole input in pieces whose sizes come from a PRNG seeded by
 *     the first two bytes, and again in one piece: the two results must be identical
 *     (framing must not depend on how the socket chunked the stream), valid UTF-8 with no
 *     NUL, and no longer than the tail cap plus one partial header.
 */
#include "fuzz_util.h"

#include "docker.h"
#include "tq_err.h"

static void check_inspect(const uint8_t *data, size_t size)
{
    tq_container_state st;
    tq_errbuf eb;
    int rc = tq_docker_parse_inspect((const char *)data, size, &st, &eb);
    FUZZ_CHECK(rc == TQ_OK || rc == TQ_ERR_INVALID, "inspect rc=%d", rc);
    if (rc != TQ_OK) {
        FUZZ_CHECK(FUZZ_TERMINATED(eb.msg), "inspect errbuf");
        return;
    }
    FUZZ_CHECK(FUZZ_TERMINATED(st.id) && FUZZ_TERMINATED(st.status) &&
                   FUZZ_TERMINATED(st.job_label) && FUZZ_TERMINATED(st.error),
               "inspect strings");
    FUZZ_CHECK(st.started_at_ms >= 0 && st.finished_at_ms >= 0, "inspect times %lld %lld",
               st.started_at_ms, st.finished_at_ms);
    FUZZ_CHECK(st.running == 0 || st.running == 1, "running %d", st.running);
}

static void check_list(const uint8_t *data, size_t size)
{
    tq_container_summary *v = NULL;
    size_t n = 12345;
    tq_errbuf eb;
    int rc = tq_docker_parse_list((const char *)data, size, &v, &n, &eb);
    FUZZ_CHECK(rc == TQ_OK || rc == TQ_ERR_INVALID, "list rc=%d", rc);
    if (rc != TQ_OK) {
        FUZZ_CHECK(v == NULL && n == 0, "list output on failure");
        return;
    }
    FUZZ_CHECK((v == NULL) == (n == 0), "list: out NULL exactly when n is 0");
    FUZZ_CHECK(n <= size, "list: %zu entries from %zu bytes", n, size);
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK(FUZZ_TERMINATED(v[i].id) && FUZZ_TERMINATED(v[i].name) &&
                       FUZZ_TERMINATED(v[i].state) && FUZZ_TERMINATED(v[i].job_label) &&
                       FUZZ_TERMINATED(v[i].worker_label),
                   "list entry %zu", i);
    free(v);
}

static void check_time(const uint8_t *data, size_t size)
{
    char buf[64];
    size_t n = size < sizeof buf - 1 ? size : sizeof buf - 1;
    memcpy(buf, data, n);
    buf[n] = '\0';
    long long t = tq_docker_parse_time_ms(buf);
    FUZZ_CHECK(t >= -1 || strchr(buf, '+') != NULL, "time %lld for %s", t, buf);
    FUZZ_CHECK(tq_docker_parse_time_ms(NULL) == -1, "NULL time");
}

static uint32_t xorshift(uint32_t *s)
{
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x;
}

static void check_demux(const uint8_t *data, size_t size)
{
    /* tq_log_demux holds the 4 KiB tail inline: heap, so ASan sees overruns of it */
    tq_log_demux *whole = malloc(sizeof *whole), *pieces = malloc(sizeof *pieces);
    FUZZ_CHECK(whole && pieces, "oom");
    tq_log_demux_init(whole);
    tq_log_demux_init(pieces);

    tq_log_demux_feed(whole, data, size);

    uint32_t seed = 0x9E3779B9u ^ (size > 0 ? data[0] : 0) ^ ((size > 1 ? data[1] : 0u) << 8);
    /* piece sizes: mostly tiny (header splits), sometimes up to 8 KiB (tail overflow) */
    size_t off = 0;
    tq_log_demux_feed(pieces, data, 0); /* an empty piece changes nothing */
    while (off < size) {
        uint32_t r = xorshift(&seed);
        size_t take = (r & 3) ? 1 + (r >> 8) % 13 : 1 + (r >> 8) % 8192;
        if (take > size - off)
            take = size - off;
        /* each piece in its own allocation: a read past its end is caught */
        uint8_t *piece = malloc(take);
        FUZZ_CHECK(piece != NULL, "oom");
        memcpy(piece, data + off, take);
        tq_log_demux_feed(pieces, piece, take);
        free(piece);
        off += take;
    }

    char *a = tq_log_demux_finish(whole);
    char *b = tq_log_demux_finish(pieces);
    FUZZ_CHECK(a && b, "finish returned NULL");
    size_t al = strlen(a);
    FUZZ_CHECK(strcmp(a, b) == 0, "chunking changed the log text (%zu vs %zu bytes)", al,
               strlen(b));
    FUZZ_CHECK(al <= TQ_DOCKER_LOG_TAIL_MAX + 8, "log text %zu bytes", al);
    FUZZ_CHECK(fuzz_utf8_ok(a, al, 0), "log text is not valid utf-8");
    FUZZ_CHECK(whole->len <= TQ_DOCKER_LOG_TAIL_MAX && whole->hdr_have < 8, "demux state");
    free(a);
    free(b);
    free(whole);
    free(pieces);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_inspect(data, size);
    check_list(data, size);
    check_time(data, size);
    check_demux(data, size);
    return 0;
}
