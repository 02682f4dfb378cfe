#include "tq_json.h"

int tq_json_put(json_t *obj, const char *key, json_t *v, int *failed)
{
    if (v && json_object_set_new(obj, key, v) == 0)
        return 0;
    if (failed)
        *failed = 1;
    return -1;
}
