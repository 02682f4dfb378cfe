#include "tq_utf8.h"

#include <string.h>

size_t tq_utf8_seq(const unsigned char *s, size_t avail, uint32_t *cp)
{
    if (avail == 0)
        return 0;
    unsigned char c = s[0];
    size_t n;
    uint32_t u, min;

    if (c < 0x80) {
        n = 1, u = c, min = 0;
    } else if (c >= 0xC2 && c <= 0xDF) {
        n = 2, u = c & 0x1F, min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3, u = c & 0x0F, min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4, u = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (n > avail)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        u = (u << 6) | (s[i] & 0x3F);
    }
    if (u < min || u > 0x10FFFF || (u >= 0xD800 && u <= 0xDFFF))
        return 0;
    if (cp)
        *cp = u;
    return n;
}

/* 1 if s[0..avail) is the start of a multi-byte character that the end of the text cut
 * short: a lead byte and only continuation bytes, fewer than the lead byte announces. */
static int cut_short(const unsigned char *s, size_t avail)
{
    size_t need = s[0] >= 0xF0 && s[0] <= 0xF4   ? 4
                  : s[0] >= 0xE0 && s[0] <= 0xEF ? 3
                  : s[0] >= 0xC2 && s[0] <= 0xDF ? 2
                                                 : 0;
    if (need == 0 || avail >= need)
        return 0;
    for (size_t i = 1; i < avail; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    return 1;
}

size_t tq_utf8_prefix(const char *s, size_t max_bytes)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t len = strlen(s), i = 0;
    while (i < len) {
        size_t n = tq_utf8_seq(p + i, len - i, NULL);
        if (n == 0) {
            if (cut_short(p + i, len - i))
                break;
            n = 1;
        }
        if (i + n > max_bytes)
            break;
        i += n;
    }
    return i;
}

void tq_utf8_clip(char *s, size_t max_bytes)
{
    s[tq_utf8_prefix(s, max_bytes)] = '\0';
}

size_t tq_utf8_sanitize(char *s, size_t len)
{
    unsigned char *p = (unsigned char *)s;
    size_t i = 0, bad = 0;
    while (i < len) {
        size_t n = p[i] ? tq_utf8_seq(p + i, len - i, NULL) : 0;
        if (n == 0) {
            p[i++] = '?';
            bad++;
        } else {
            i += n;
        }
    }
    s[len] = '\0';
    return bad;
}
