/*
 * tq_json — small helpers over jansson shared by both programs.
 */
#ifndef TQ_JSON_H
#define TQ_JSON_H

#include <jansson.h>

/*
 * obj[key] = v, stealing v (json_object_set_new), for building an object line by line:
 * v may be NULL (the constructor that made it ran out of memory). Returns 0, or -1 when v
 * is NULL or the set failed, and then also sets *failed to 1 when failed is not NULL, so a
 * builder can check once at the end. jansson's *_set_new steals v even when it fails, so
 * nothing is leaked either way.
 */
int tq_json_put(json_t *obj, const char *key, json_t *v, int *failed);

#endif
