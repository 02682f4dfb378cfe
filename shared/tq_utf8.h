/*
 * tq_utf8 — the one UTF-8 decoder of trainq, and the cuts and repairs built on it.
 *
 * Postgres (a UTF8 database) refuses a text parameter holding invalid UTF-8, so a reason
 * cut inside a character, or a container's log bytes passed on as they are, would make
 * the failure itself impossible to record. Text from outside (container logs, daemon
 * messages) is sanitised, and every cut of text that may be stored falls on a character
 * boundary.
 */
#ifndef TQ_UTF8_H
#define TQ_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* Length (1-4) of the well-formed UTF-8 sequence at s, reading at most avail bytes, with
 * its code point in *cp (cp may be NULL); 0 when it is malformed or cut short by avail:
 * overlong forms, surrogates and code points past U+10FFFF are malformed. A NUL byte is a
 * well-formed U+0000 (callers that cannot hold one check for it). */
size_t tq_utf8_seq(const unsigned char *s, size_t avail, uint32_t *cp);

/* Bytes of the longest prefix of the NUL-terminated s that is at most max_bytes long and
 * does not end inside a character: a well-formed character is never split, and a
 * character already cut short at the end of s (by an earlier snprintf) is left out.
 * Malformed bytes elsewhere count as one byte each. For "%.*s" with (int) of the result. */
size_t tq_utf8_prefix(const char *s, size_t max_bytes);

/* The two arguments of "%.*s" printing at most max bytes of s, whole characters only:
 * tq_errf(eb, e, "path \"%.*s\"", TQ_UTF8_ARG(path, 200)). s is evaluated twice. */
#define TQ_UTF8_ARG(s, max) (int)tq_utf8_prefix((s), (max)), (s)

/* Cuts s in place to tq_utf8_prefix(s, max_bytes) bytes. */
void tq_utf8_clip(char *s, size_t max_bytes);

/* Replaces, in place, every byte of s[0..len) that is not part of a well-formed character
 * (malformed or truncated sequences, overlong forms, surrogates, NUL bytes) with '?', and
 * writes a NUL at s[len] (s must hold len + 1 bytes). The length never changes, so a
 * buffer cut to a size stays that size. Returns the number of bytes replaced. */
size_t tq_utf8_sanitize(char *s, size_t len);

#endif
