#include "tq_uuid.h"

#include "tq_err.h"

#include <uuid/uuid.h>

void tq_uuid_generate(char out[TQ_UUID_BUF])
{
    uuid_t u;
    uuid_generate_random(u);
    uuid_unparse_lower(u, out);
}

static int is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

int tq_uuid_valid(const char *s)
{
    if (!s)
        return 0;
    for (int i = 0; i < TQ_UUID_LEN; i++) {
        /* a NUL before position 36 fails both branches, so short strings stop here */
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return 0;
        } else if (!is_hex(s[i])) {
            return 0;
        }
    }
    return s[TQ_UUID_LEN] == '\0';
}

int tq_uuid_canonical(const char *s, char out[TQ_UUID_BUF])
{
    if (!tq_uuid_valid(s)) {
        out[0] = '\0';
        return TQ_ERR_INVALID;
    }
    for (int i = 0; i < TQ_UUID_LEN; i++) {
        char c = s[i];
        out[i] = (c >= 'A' && c <= 'F') ? (char)(c - 'A' + 'a') : c;
    }
    out[TQ_UUID_LEN] = '\0';
    return TQ_OK;
}
