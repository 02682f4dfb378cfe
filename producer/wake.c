#include "wake.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "pdb.h"
#include "tq_clock.h"
#include "tq_log.h"
#include "tq_job.h"

/* Distinct channels and users one round carries. More users than this in one round wake
 * every stream instead (an empty user list): one notification, not thousands. */
#define WAKE_CHANNELS_MAX 8
#define WAKE_CHANNEL_BUF 64
#define WAKE_USERS_MAX 256
/* One warning per this while wake-ups fail (the database away: submissions fail too). */
#define WAKE_WARN_EVERY_MS 10000
/* Rounds start at least this far apart. Under load a round then carries the wake-ups of
 * every submission of those milliseconds, and each listener (a relay above all, whose every
 * wake-up is a publishing round) wakes that much less often; a submission's listeners wait
 * at most this much longer. */
#define WAKE_GAP_MS 5

typedef struct {
    char channels[WAKE_CHANNELS_MAX][WAKE_CHANNEL_BUF];
    size_t n_channels;
    char (*users)[TQ_USER_ID_BUF]; /* WAKE_USERS_MAX of them */
    size_t n_users;
    int every_user; /* more than WAKE_USERS_MAX users */
} wake_set;

struct tq_wake {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    wake_set pending; /* under mu */
    int stop;         /* under mu */
};

static int set_init(wake_set *s)
{
    memset(s, 0, sizeof *s);
    s->users = calloc(WAKE_USERS_MAX, sizeof *s->users);
    return s->users ? TQ_OK : TQ_ERR_NOMEM;
}

static int set_empty(const wake_set *s)
{
    return s->n_channels == 0;
}

static void set_clear(wake_set *s)
{
    s->n_channels = 0;
    s->n_users = 0;
    s->every_user = 0;
}

static void add_channel(wake_set *s, const char *name, size_t len)
{
    if (len == 0 || len >= WAKE_CHANNEL_BUF)
        return;
    for (size_t i = 0; i < s->n_channels; i++)
        if (strlen(s->channels[i]) == len && memcmp(s->channels[i], name, len) == 0)
            return;
    if (s->n_channels == WAKE_CHANNELS_MAX) {
        tq_log(TQ_LOG_WARN, "wake.channels", "more than %d channels to wake; %.*s waits for polls",
               WAKE_CHANNELS_MAX, (int)len, name);
        return;
    }
    memcpy(s->channels[s->n_channels], name, len);
    s->channels[s->n_channels++][len] = '\0';
}

/* Users are few per round under any real load (a round lasts one short transaction); a
 * linear scan over at most WAKE_USERS_MAX is cheaper than hashing them. */
static void add_user(wake_set *s, const char *user)
{
    if (s->every_user)
        return;
    for (size_t i = 0; i < s->n_users; i++)
        if (strcmp(s->users[i], user) == 0)
            return;
    if (s->n_users == WAKE_USERS_MAX) {
        s->every_user = 1;
        return;
    }
    snprintf(s->users[s->n_users++], TQ_USER_ID_BUF, "%s", user);
}

void tq_wake_note(tq_wake *w, const char *user, const char *channels)
{
    if (!w || !channels || !*channels)
        return;
    pthread_mutex_lock(&w->mu);
    for (const char *p = channels; *p;) {
        size_t len = strcspn(p, ",");
        add_channel(&w->pending, p, len);
        p += len;
        if (*p == ',')
            p++;
    }
    add_user(&w->pending, user);
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* One round: the set as two JSON arrays, one tq_pdb_wake. */
static int send_round(const wake_set *s, tq_errbuf *eb)
{
    json_t *ch = json_array(), *us = json_array();
    for (size_t i = 0; ch && i < s->n_channels; i++)
        json_array_append_new(ch, json_string(s->channels[i]));
    for (size_t i = 0; us && !s->every_user && i < s->n_users; i++)
        json_array_append_new(us, json_string(s->users[i]));
    char *cj = ch ? json_dumps(ch, JSON_COMPACT) : NULL;
    char *uj = us ? json_dumps(us, JSON_COMPACT) : NULL;
    int rc = cj && uj ? tq_pdb_wake(cj, uj, eb) : tq_errf(eb, TQ_ERR_NOMEM, "out of memory");
    free(cj);
    free(uj);
    json_decref(ch);
    json_decref(us);
    return rc;
}

static void *wake_main(void *arg)
{
    tq_wake *w = arg;
    wake_set round;
    if (set_init(&round) != TQ_OK) {
        tq_log(TQ_LOG_ERROR, "wake.start", "out of memory: listeners wait for their polls");
        return NULL;
    }
    int64_t last_warn = tq_mono_ms() - WAKE_WARN_EVERY_MS;
    int64_t last_round = 0;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (set_empty(&w->pending) && !w->stop)
            pthread_cond_wait(&w->cv, &w->mu);
        if (set_empty(&w->pending))
            break; /* stopping, nothing left */
        int64_t wait = last_round + WAKE_GAP_MS - tq_mono_ms();
        if (wait > 0 && !w->stop) {
            struct timespec ts = tq_mono_deadline(wait);
            pthread_cond_timedwait(&w->cv, &w->mu, &ts);
            continue; /* a note's signal ends the wait early: look again */
        }
        last_round = tq_mono_ms();
        /* Swap the gathered set out, so notes keep gathering while this round runs. */
        wake_set t = round;
        round = w->pending;
        w->pending = t;
        set_clear(&w->pending);
        pthread_mutex_unlock(&w->mu);
        tq_errbuf eb = {{0}};
        if (send_round(&round, &eb) != TQ_OK && tq_mono_ms() - last_warn >= WAKE_WARN_EVERY_MS) {
            tq_log(TQ_LOG_WARN, "wake.failed",
                   "could not wake listeners (they catch up at their next poll): %s", eb.msg);
            last_warn = tq_mono_ms();
        }
        set_clear(&round);
        pthread_mutex_lock(&w->mu);
    }
    pthread_mutex_unlock(&w->mu);
    free(round.users);
    return NULL;
}

int tq_wake_start(tq_wake **out, tq_errbuf *eb)
{
    *out = NULL;
    tq_wake *w = calloc(1, sizeof *w);
    if (!w || set_init(&w->pending) != TQ_OK) {
        free(w);
        return tq_errf(eb, TQ_ERR_NOMEM, "out of memory");
    }
    if (tq_cond_init_monotonic(&w->cv) != TQ_OK) { /* WAKE_GAP_MS is on the monotonic clock */
        free(w->pending.users);
        free(w);
        return tq_errf(eb, TQ_ERR_NOMEM, "could not make a condition variable");
    }
    pthread_mutex_init(&w->mu, NULL);
    if (pthread_create(&w->thread, NULL, wake_main, w) != 0) {
        pthread_cond_destroy(&w->cv);
        pthread_mutex_destroy(&w->mu);
        free(w->pending.users);
        free(w);
        return tq_errf(eb, TQ_ERR_INTERNAL, "could not start the wake-up thread");
    }
    *out = w;
    return TQ_OK;
}

void tq_wake_stop(tq_wake *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->mu);
    w->stop = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w->pending.users);
    free(w);
}
