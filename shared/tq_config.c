#include "tq_config.h"

#include "tq_amqp.h"

#include <ctype.h>
#include <errno.h>
#include <libpq-fe.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

/* Largest file an option may name (a key list, a PEM public key). */
#define CONFIG_FILE_MAX 65536

int tq_parse_bytes(const char *s, long long *out)
{
    if (!s || !*s || !isdigit((unsigned char)s[0]))
        return TQ_ERR_INVALID;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno)
        return TQ_ERR_INVALID;
    unsigned long long mul = 1;
    if (*end) {
        switch (tolower((unsigned char)*end)) {
        case 'k':
            mul = 1ull << 10;
            break;
        case 'm':
            mul = 1ull << 20;
            break;
        case 'g':
            mul = 1ull << 30;
            break;
        case 't':
            mul = 1ull << 40;
            break;
        default:
            return TQ_ERR_INVALID;
        }
        end++;
        if (*end == 'b' || *end == 'B')
            end++;
        if (*end)
            return TQ_ERR_INVALID;
    }
    if (v > (unsigned long long)LLONG_MAX / mul)
        return TQ_ERR_INVALID;
    *out = (long long)(v * mul);
    return TQ_OK;
}

int tq_parse_hostport(const char *s, char *host, size_t cap, int *port)
{
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s)
        return TQ_ERR_INVALID;
    const char *h = s;
    size_t hl = (size_t)(colon - s);
    if (h[0] == '[') { /* [::1]:3000 */
        if (hl < 3 || h[hl - 1] != ']')
            return TQ_ERR_INVALID;
        h++;
        hl -= 2;
    }
    if (hl == 0 || hl >= cap)
        return TQ_ERR_INVALID;
    for (size_t i = 0; i < hl; i++)
        if (!(isalnum((unsigned char)h[i]) || h[i] == '.' || h[i] == '-' || h[i] == ':'))
            return TQ_ERR_INVALID;
    const char *p = colon + 1;
    if (!*p || strlen(p) > 5)
        return TQ_ERR_INVALID;
    for (const char *q = p; *q; q++)
        if (!isdigit((unsigned char)*q))
            return TQ_ERR_INVALID;
    long v = strtol(p, NULL, 10);
    if (v < 0 || v > 65535)
        return TQ_ERR_INVALID;
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = (int)v;
    return TQ_OK;
}

static int in_choices(const char *choices, const char *v)
{
    size_t n = strlen(v);
    for (const char *p = choices; *p;) {
        const char *e = strchr(p, ',');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l == n && strncmp(p, v, n) == 0)
            return 1;
        if (!e)
            break;
        p = e + 1;
    }
    return 0;
}

static int bad(tq_errbuf *eb, const tq_opt *o, const char *v, const char *expected)
{
    if (o->type == TQ_OPT_SECRET)
        return tq_errf(eb, TQ_ERR_CONFIG, "invalid %s: %s", o->env, expected);
    return tq_errf(eb, TQ_ERR_CONFIG, "invalid %s \"%.200s\": %s", o->env, v, expected);
}

/* What a number in a configuration file looks like: an optional '-', digits, and for a
 * fraction one '.' between digits. strtoll/strtod alone also take " 5", "+5", "0x10",
 * "1e3", "inf" and "nan", none of which an operator means as written. */
static int plain_decimal(const char *v, int fraction)
{
    const char *p = v + (*v == '-');
    size_t digits = strspn(p, "0123456789");
    if (digits == 0)
        return 0;
    p += digits;
    if (fraction && *p == '.') {
        size_t more = strspn(p + 1, "0123456789");
        if (more == 0)
            return 0;
        p += 1 + more;
    }
    return *p == '\0';
}

static int set_value(void *cfg, const tq_opt *o, const char *v, tq_errbuf *eb)
{
    char *base = (char *)cfg + o->off;
    char expected[200];
    switch (o->type) {
    case TQ_OPT_STR:
    case TQ_OPT_SECRET: {
        if (o->def == NULL && !*v)
            return bad(eb, o, v, "must not be empty");
        char *dup = strdup(v);
        if (!dup)
            return TQ_ERR_NOMEM;
        free(*(char **)base);
        *(char **)base = dup;
        return TQ_OK;
    }
    case TQ_OPT_ENUM: {
        if (!in_choices(o->choices, v)) {
            snprintf(expected, sizeof expected, "expected one of %s", o->choices);
            return bad(eb, o, v, expected);
        }
        char *dup = strdup(v);
        if (!dup)
            return TQ_ERR_NOMEM;
        free(*(char **)base);
        *(char **)base = dup;
        return TQ_OK;
    }
    case TQ_OPT_INT: {
        char *end;
        errno = 0;
        long long x = strtoll(v, &end, 10);
        snprintf(expected, sizeof expected, "expected an integer from %lld to %lld", o->min,
                 o->max);
        if (!plain_decimal(v, 0) || *end || errno || x < o->min || x > o->max)
            return bad(eb, o, v, expected);
        *(int *)base = (int)x;
        return TQ_OK;
    }
    case TQ_OPT_BYTES: {
        long long x;
        snprintf(expected, sizeof expected,
                 "expected a size from %lld to %lld bytes (suffix k, m, g allowed)", o->min,
                 o->max);
        if (tq_parse_bytes(v, &x) != TQ_OK || x < o->min || x > o->max)
            return bad(eb, o, v, expected);
        *(long long *)base = x;
        return TQ_OK;
    }
    case TQ_OPT_DOUBLE: {
        char *end;
        errno = 0;
        double x = strtod(v, &end);
        snprintf(expected, sizeof expected, "expected a number from %lld to %lld", o->min, o->max);
        if (!plain_decimal(v, 1) || *end || errno || !isfinite(x) || x < (double)o->min ||
            x > (double)o->max)
            return bad(eb, o, v, expected);
        *(double *)base = x;
        return TQ_OK;
    }
    case TQ_OPT_BOOL: {
        if (strcmp(v, "true") == 0 || strcmp(v, "1") == 0 || strcmp(v, "yes") == 0)
            *(int *)base = 1;
        else if (strcmp(v, "false") == 0 || strcmp(v, "0") == 0 || strcmp(v, "no") == 0)
            *(int *)base = 0;
        else
            return bad(eb, o, v, "expected true or false (or 1/0, yes/no)");
        return TQ_OK;
    }
    }
    return TQ_ERR_INTERNAL;
}

static void print_help(FILE *out, const char *prog_name, const tq_options *t)
{
    fprintf(out, "usage: %s [--FLAG=VALUE ...]\n\n", prog_name);
    fprintf(out, "Every option is an environment variable or a flag (the flag wins).\n\n");
    for (size_t i = 0; i < t->n_opts; i++) {
        const tq_opt *o = &t->opts[i];
        fprintf(out, "  --%-26s %-32s %s", o->flag, o->env, o->help);
        if (o->def == NULL)
            fprintf(out, " (required)\n");
        else if (o->type == TQ_OPT_SECRET || !*o->def)
            fprintf(out, "\n");
        else
            fprintf(out, " (default %s)\n", o->def);
    }
    fprintf(out, "\n  --help                      this text\n  --version                   "
                 "print the version\n");
}

/* What a value may be, as the loader checks it: a number's range, an enum's choices; "" for
 * the rest (strings, switches), whose rules the help text says. */
static void values_of(const tq_opt *o, char *out, size_t cap)
{
    switch (o->type) {
    case TQ_OPT_INT:
    case TQ_OPT_DOUBLE:
        snprintf(out, cap, "%lld – %lld", o->min, o->max);
        break;
    case TQ_OPT_BYTES:
        if (o->max == LLONG_MAX)
            snprintf(out, cap, "%lld bytes or more (k, m, g suffixes)", o->min);
        else
            snprintf(out, cap, "%lld – %lld bytes (k, m, g suffixes)", o->min, o->max);
        break;
    case TQ_OPT_ENUM:
        snprintf(out, cap, "one of %s", o->choices);
        break;
    default:
        out[0] = '\0';
    }
}

void tq_config_print_markdown(FILE *out, const tq_options *t)
{
    fprintf(out, "| variable | flag | default | values | meaning |\n|---|---|---|---|---|\n");
    for (size_t i = 0; i < t->n_opts; i++) {
        const tq_opt *o = &t->opts[i];
        const char *def = o->def == NULL ? "(required)" : (*o->def ? o->def : "(empty)");
        char values[160];
        values_of(o, values, sizeof values);
        fprintf(out, "| `%s` | `--%s` | `%s` | %s | %s |\n", o->env, o->flag, def, values, o->help);
    }
}

static const tq_opt *find_flag(const tq_options *t, const char *name, size_t len)
{
    for (size_t i = 0; i < t->n_opts; i++)
        if (strlen(t->opts[i].flag) == len && strncmp(t->opts[i].flag, name, len) == 0)
            return &t->opts[i];
    return NULL;
}

static int is_string(const tq_opt *o)
{
    return o->type == TQ_OPT_STR || o->type == TQ_OPT_SECRET || o->type == TQ_OPT_ENUM;
}

const char *tq_config_str(const tq_options *t, const void *cfg, const char *env)
{
    for (size_t i = 0; i < t->n_opts; i++)
        if (is_string(&t->opts[i]) && strcmp(t->opts[i].env, env) == 0)
            return *(char *const *)((const char *)cfg + t->opts[i].off);
    return NULL;
}

int tq_config_read_file(const char *what, const char *path, char **out, tq_errbuf *eb)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return tq_errf(eb, TQ_ERR_CONFIG, "cannot read %s \"%s\": %s", what, path, strerror(errno));
    char *buf = malloc(CONFIG_FILE_MAX + 1);
    if (!buf) {
        fclose(f);
        return TQ_ERR_NOMEM;
    }
    size_t n = fread(buf, 1, CONFIG_FILE_MAX, f);
    int toolong = !feof(f);
    fclose(f);
    if (toolong || n == 0) {
        free(buf);
        return tq_errf(eb, TQ_ERR_CONFIG, "cannot use %s \"%s\": %s", what, path,
                       n == 0 ? "file is empty" : "file is larger than 64 KiB");
    }
    buf[n] = '\0';
    *out = buf;
    return TQ_OK;
}

/* The list in TRAINQ_PUBLISH_KEYS or in the file TRAINQ_PUBLISH_KEYS_FILE names (not both)
 * into *keyring; neither leaves signing off. */
static int load_publish_keys(const char *keys, const char *file, tq_sign_keys *keyring,
                             tq_errbuf *eb)
{
    if (*keys && *file)
        return tq_errf(eb, TQ_ERR_CONFIG,
                       "conflicting TRAINQ_PUBLISH_KEYS_FILE: "
                       "TRAINQ_PUBLISH_KEYS is set too; set only one");
    if (*keys)
        return tq_sign_keys_parse(keys, "TRAINQ_PUBLISH_KEYS", keyring, eb);
    if (!*file)
        return TQ_OK;
    char *text = NULL;
    int rc = tq_config_read_file("TRAINQ_PUBLISH_KEYS_FILE", file, &text, eb);
    if (rc == TQ_OK) {
        rc = tq_sign_keys_parse(text, "TRAINQ_PUBLISH_KEYS_FILE", keyring, eb);
        OPENSSL_cleanse(text, strlen(text));
        free(text);
    }
    return rc;
}

int tq_config_check_common(const char *database_url, const char *amqp_url, const char *publish_keys,
                           const char *publish_keys_file, tq_sign_keys *keyring, tq_errbuf *eb)
{
    /* Checked as libpq will read it, so a typo stops the start here rather than as the
     * first connection's error, later and unnamed. libpq's own reason quotes the string. */
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(database_url, &perr);
    PQfreemem(perr);
    if (!opts)
        return tq_errf(eb, TQ_ERR_CONFIG,
                       "invalid TRAINQ_DATABASE_URL: expected postgresql://user:pass@host:port/db "
                       "or key=value pairs, as libpq reads them");
    PQconninfoFree(opts);
    int rc = load_publish_keys(publish_keys, publish_keys_file, keyring, eb);
    if (rc != TQ_OK)
        return rc;
    /* One node or a comma-separated list of a cluster's nodes, each checked as tq_amqp
     * connects to it; the reason never quotes the url (it holds a password). */
    if (tq_amqp_url_check(amqp_url, eb) != TQ_OK) {
        char why[160];
        snprintf(why, sizeof why, "%.150s", eb->msg);
        return tq_errf(eb, TQ_ERR_CONFIG,
                       "invalid TRAINQ_AMQP_URL: expected amqp://user:pass@host:port/vhost"
                       "[,amqp://...] (%s)",
                       why);
    }
    return TQ_OK;
}

/* The flags in argv over what the environment set. TQ_ERR_EXIT_OK after printing what
 * --help, --version or --config-markdown asked for. */
static int load_flags(const tq_options *t, void *cfg, int argc, char **argv, tq_errbuf *eb)
{
    const char *prog_name = argc > 0 ? argv[0] : "trainq";
    const char *slash = strrchr(prog_name, '/');
    if (slash)
        prog_name = slash + 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            print_help(stdout, prog_name, t);
            return TQ_ERR_EXIT_OK;
        }
        if (strcmp(a, "--version") == 0) {
            printf("%s %s\n", prog_name, TRAINQ_VERSION);
            return TQ_ERR_EXIT_OK;
        }
        if (strcmp(a, "--config-markdown") == 0) {
            tq_config_print_markdown(stdout, t);
            return TQ_ERR_EXIT_OK;
        }
        if (strncmp(a, "--", 2) != 0)
            return tq_errf(eb, TQ_ERR_CONFIG, "unexpected argument \"%.100s\" (see --help)", a);
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const tq_opt *o = find_flag(t, name, nlen);
        if (!o && eq && (strncmp(a, "--help=", 7) == 0 || strncmp(a, "--version=", 10) == 0))
            return tq_errf(eb, TQ_ERR_CONFIG, "--%.*s takes no value", (int)nlen, name);
        if (!o)
            return tq_errf(eb, TQ_ERR_CONFIG, "unknown option \"--%.*s\" (see --help)", (int)nlen,
                           name);
        const char *v;
        if (eq) {
            v = eq + 1;
        } else if (i + 1 < argc) {
            v = argv[++i];
        } else {
            return tq_errf(eb, TQ_ERR_CONFIG, "missing value for --%s", o->flag);
        }
        int rc = set_value(cfg, o, v, eb);
        if (rc)
            return rc;
    }
    return TQ_OK;
}

/* Whether argv sets option o with a flag: then its environment variable is not read at all,
 * so a bad value there (a fleet-wide EnvironmentFile) can be overridden on the command line.
 * Walks argv as load_flags does (a flag without '=' takes the next argument as its value). */
static int flag_given(const tq_options *t, const tq_opt *o, int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--", 2) != 0)
            continue;
        const char *name = argv[i] + 2, *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const tq_opt *f = find_flag(t, name, nlen);
        if (f == o)
            return 1;
        if (f && !eq)
            i++;
    }
    return 0;
}

int tq_config_load(const tq_options *t, void *cfg, int argc, char **argv, tq_errbuf *eb)
{
    memset(cfg, 0, t->size);
    /* Every string option gets a value (its default) so programs never see NULL. */
    for (size_t i = 0; i < t->n_opts; i++) {
        const tq_opt *o = &t->opts[i];
        if (o->def == NULL)
            continue;
        int rc = set_value(cfg, o, o->def, eb);
        if (rc)
            return rc == TQ_ERR_CONFIG ? tq_errf(eb, TQ_ERR_INTERNAL, "bad default for %s", o->env)
                                       : rc;
    }
    for (size_t i = 0; i < t->n_opts; i++) {
        const char *v = getenv(t->opts[i].env);
        if (v && !flag_given(t, &t->opts[i], argc, argv)) {
            int rc = set_value(cfg, &t->opts[i], v, eb);
            if (rc)
                return rc;
        }
    }
    int rc = load_flags(t, cfg, argc, argv, eb);
    if (rc)
        return rc;
    for (size_t i = 0; i < t->n_opts; i++) {
        const tq_opt *o = &t->opts[i];
        if (o->def == NULL && !*(char **)((char *)cfg + o->off))
            return tq_errf(eb, TQ_ERR_CONFIG, "missing %s (or --%s): %s", o->env, o->flag, o->help);
    }
    return t->check ? t->check(cfg, eb) : TQ_OK;
}

void tq_config_free(const tq_options *t, void *cfg)
{
    for (size_t i = 0; i < t->n_opts; i++) {
        if (is_string(&t->opts[i])) {
            char **p = (char **)((char *)cfg + t->opts[i].off);
            free(*p);
            *p = NULL;
        }
    }
    if (t->release)
        t->release(cfg);
}
