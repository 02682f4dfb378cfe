/*
 * Integration test of consumer/docker.c against a real dockerd (no mocks).
 *
 * Needs TRAINQ_DOCKER_HOST (e.g. unix:///tmp/dk/docker.sock); without it prints "skipped"
 * and exits 77. Uses the image $TRAINQ_TEST_IMAGE (default trainq-fake-trainer:latest, from
 * scripts/build-trainer-image.sh) through the fake trainer contract: it reads
 * /workspace/datasets/trainer.env (DURATION, EXIT_CODE, MESSAGE, STEPS), logs progress and
 * MESSAGE, writes into /workspace/outputs and exits EXIT_CODE.
 * Every container it makes carries the label trainq.worker=<unique run id> and is removed at
 * the end, pass or fail.
 */
#define _XOPEN_SOURCE 700 /* nftw with FTW_DEPTH/FTW_PHYS */
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "docker.h"
#include "tq_clock.h"

static int failures;
static tq_docker *D;
static const char *IMAGE;
static char WORKER[64];
static char ROOT[64] = "/tmp/trainq-docker-it-XXXXXX";
static char SOCK_DIR[128];

#define CHECK(cond, eb)                                                                            \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "FAIL %s:%d: %s (last error: %s)\n", __FILE__, __LINE__, #cond,        \
                    (eb).msg);                                                                     \
            failures++;                                                                            \
            return;                                                                                \
        }                                                                                          \
    } while (0)

/* A job's host side: <ROOT>/<tag>/datasets/trainer.env and an empty <ROOT>/<tag>/outputs. */
typedef struct {
    char name[96];
    char ds[192], out[192], cfg[192];
    tq_mount mounts[3];
    tq_label labels[3];
    char user[32];
    tq_container_spec spec;
} job;

static int job_init(job *j, const char *tag, const char *trainer_env)
{
    char dir[128], path[224];
    memset(j, 0, sizeof *j);
    snprintf(j->name, sizeof j->name, "trainq-it-%ld-%s", (long)getpid(), tag);
    snprintf(dir, sizeof dir, "%s/%s", ROOT, tag);
    snprintf(j->ds, sizeof j->ds, "%s/datasets", dir);
    snprintf(j->out, sizeof j->out, "%s/outputs", dir);
    if (mkdir(dir, 0755) != 0 || mkdir(j->ds, 0755) != 0 || mkdir(j->out, 0755) != 0)
        return -1;
    snprintf(path, sizeof path, "%s/trainer.env", j->ds);
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs(trainer_env, f);
    if (fclose(f) != 0)
        return -1;
    /* The trainer contract: without /workspace/config.json the fake trainer exits 2. */
    snprintf(j->cfg, sizeof j->cfg, "%s/config.json", dir);
    f = fopen(j->cfg, "w");
    if (!f)
        return -1;
    fputs("{\"max_train_steps\": 2}\n", f);
    if (fclose(f) != 0)
        return -1;
    j->mounts[0] = (tq_mount){j->ds, "/workspace/datasets", 1};
    j->mounts[1] = (tq_mount){j->out, "/workspace/outputs", 0};
    j->mounts[2] = (tq_mount){j->cfg, "/workspace/config.json", 1};
    j->labels[0] = (tq_label){"trainq.job", tag};
    j->labels[1] = (tq_label){"trainq.worker", WORKER};
    j->labels[2] = (tq_label){"trainq.user", "docker-it"};
    /* All capabilities are dropped, so the container must run as the owner of outputs/. */
    snprintf(j->user, sizeof j->user, "%u:%u", (unsigned)getuid(), (unsigned)getgid());
    j->spec.name = j->name;
    j->spec.image = IMAGE;
    j->spec.mounts = j->mounts;
    j->spec.n_mounts = 3;
    j->spec.labels = j->labels;
    j->spec.n_labels = 3;
    j->spec.user = j->user;
    j->spec.pids_limit = 64;
    return 0;
}

static int dir_has_entries(const char *path)
{
    DIR *d = opendir(path);
    if (!d)
        return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            n++;
    closedir(d);
    return n > 0;
}

static void test_ping_and_images(void)
{
    tq_errbuf eb = {{0}};
    CHECK(tq_docker_ping(D, &eb) == TQ_OK, eb);
    CHECK(tq_docker_image_exists(D, "trainq-no-such-image:0", &eb) == TQ_ERR_NOT_FOUND, eb);
    int rc = tq_docker_image_exists(D, IMAGE, &eb);
    if (rc != TQ_OK)
        fprintf(stderr,
                "test image %s is missing: build it with scripts/build-trainer-image.sh "
                "or set TRAINQ_TEST_IMAGE\n",
                IMAGE);
    CHECK(rc == TQ_OK, eb);
}

static void test_create_with_missing_image_is_not_found(void)
{
    tq_errbuf eb = {{0}};
    job j;
    CHECK(job_init(&j, "noimage", "DURATION=0\n") == 0, eb);
    j.spec.image = "trainq-no-such-image:0";
    char id[65];
    CHECK(tq_docker_create(D, &j.spec, id, &eb) == TQ_ERR_NOT_FOUND, eb);
    CHECK(strstr(eb.msg, "image \"trainq-no-such-image:0\" not found") != NULL, eb);
}

static void test_mounting_the_docker_socket_is_refused(void)
{
    tq_errbuf eb = {{0}};
    job j;
    CHECK(job_init(&j, "sock", "DURATION=0\n") == 0, eb);
    j.mounts[1].source = tq_docker_socket_path(D);
    char id[65];
    CHECK(tq_docker_create(D, &j.spec, id, &eb) == TQ_ERR_INVALID, eb);
    j.mounts[1].source = SOCK_DIR;
    CHECK(tq_docker_create(D, &j.spec, id, &eb) == TQ_ERR_INVALID, eb);
    tq_container_state st;
    CHECK(tq_docker_inspect(D, j.name, &st, &eb) == TQ_ERR_NOT_FOUND, eb);
}

static void test_failing_job_lifecycle(void)
{
    tq_errbuf eb = {{0}};
    job j;
    CHECK(job_init(&j, "fail", "DURATION=0.3\nEXIT_CODE=3\nMESSAGE=boom\nSTEPS=2\n") == 0, eb);
    j.spec.memory_bytes = 64LL << 20;
    char id[65], id2[65];
    CHECK(tq_docker_create(D, &j.spec, id, &eb) == TQ_OK, eb);
    CHECK(strlen(id) == 64, eb);
    /* The duplicate-name 409 is what makes redelivered jobs harmless. */
    CHECK(tq_docker_create(D, &j.spec, id2, &eb) == TQ_ERR_CONFLICT, eb);

    char filter[128];
    snprintf(filter, sizeof filter, "trainq.worker=%s", WORKER);
    tq_container_summary *v = NULL;
    size_t n = 0, found = 0;
    CHECK(tq_docker_list(D, filter, &v, &n, &eb) == TQ_OK, eb);
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i].id, id) == 0 && strcmp(v[i].name, j.name) == 0 &&
            strcmp(v[i].state, "created") == 0 && strcmp(v[i].job_label, "fail") == 0 &&
            strcmp(v[i].worker_label, WORKER) == 0)
            found++;
    free(v);
    CHECK(found == 1, eb);
    CHECK(tq_docker_list(D, "trainq.worker=nobody-has-this-label", &v, &n, &eb) == TQ_OK, eb);
    CHECK(n == 0 && v == NULL, eb);

    CHECK(tq_docker_start(D, j.name, &eb) == TQ_OK, eb);
    int code = -1;
    CHECK(tq_docker_wait(D, id, 30000, &code, &eb) == TQ_OK, eb);
    CHECK(code == 3, eb);

    char *logs = NULL;
    CHECK(tq_docker_logs_tail(D, id, 50, 0, &logs, &eb) == TQ_OK, eb);
    int has_boom = strstr(logs, "boom") != NULL;
    if (!has_boom)
        fprintf(stderr, "logs were: [%s]\n", logs);
    free(logs);
    CHECK(has_boom, eb);

    tq_container_state st;
    CHECK(tq_docker_inspect(D, id, &st, &eb) == TQ_OK, eb);
    CHECK(strcmp(st.id, id) == 0, eb);
    CHECK(strcmp(st.status, "exited") == 0 && !st.running, eb);
    CHECK(st.exit_code == 3 && !st.oom_killed, eb);
    CHECK(strcmp(st.job_label, "fail") == 0, eb);
    CHECK(st.memory_bytes == 64LL << 20, eb);
    CHECK(st.started_at_ms > 0 && st.finished_at_ms >= st.started_at_ms, eb);

    CHECK(tq_docker_remove(D, id, 0, &eb) == TQ_OK, eb);
    CHECK(tq_docker_inspect(D, id, &st, &eb) == TQ_ERR_NOT_FOUND, eb);
    CHECK(tq_docker_remove(D, id, 0, &eb) == TQ_OK, eb); /* already gone */
    CHECK(tq_docker_logs_tail(D, id, 10, 0, &logs, &eb) == TQ_ERR_NOT_FOUND, eb);
    CHECK(tq_docker_start(D, id, &eb) == TQ_ERR_NOT_FOUND, eb);
}

static void test_successful_job_writes_outputs_without_capabilities(void)
{
    tq_errbuf eb = {{0}};
    job j;
    CHECK(job_init(&j, "ok", "DURATION=0.2\nEXIT_CODE=0\nMESSAGE=all good\nSTEPS=2\n") == 0, eb);
    char id[65];
    CHECK(tq_docker_create(D, &j.spec, id, &eb) == TQ_OK, eb);
    CHECK(tq_docker_start(D, id, &eb) == TQ_OK, eb);
    int code = -1;
    CHECK(tq_docker_wait(D, id, 30000, &code, &eb) == TQ_OK, eb);
    CHECK(code == 0, eb);
    CHECK(dir_has_entries(j.out), eb);
    CHECK(tq_docker_remove(D, id, 0, &eb) == TQ_OK, eb);
}

typedef struct {
    const char *id;
    int rc, code;
    long long returned_ms;
    tq_errbuf eb;
} waiter;

static void *wait_thread(void *arg)
{
    waiter *w = arg;
    w->rc = tq_docker_wait(D, w->id, 20000, &w->code, &w->eb);
    w->returned_ms = tq_mono_ms();
    return NULL;
}

static void test_stop_ends_a_long_job_within_its_grace(void)
{
    tq_errbuf eb = {{0}};
    job j;
    CHECK(job_init(&j, "long", "DURATION=60\nEXIT_CODE=0\nMESSAGE=never\nSTEPS=100\n") == 0, eb);
    char id[65];
    CHECK(tq_docker_create(D, &j.spec, id, &eb) == TQ_OK, eb);
    CHECK(tq_docker_start(D, id, &eb) == TQ_OK, eb);
    CHECK(tq_docker_start(D, id, &eb) == TQ_OK, eb); /* 304: already running */
    int code = -1;
    long long t0 = tq_mono_ms();
    CHECK(tq_docker_wait(D, id, 300, &code, &eb) == TQ_ERR_TIMEOUT, eb);
    CHECK(tq_mono_ms() - t0 < 3000, eb);
    tq_container_state st;
    CHECK(tq_docker_inspect(D, id, &st, &eb) == TQ_OK && st.running, eb);

    /* A monitor thread blocks in wait while another thread stops the container. */
    waiter w = {.id = id, .rc = 1};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, wait_thread, &w) == 0, eb);
    usleep(200 * 1000);
    t0 = tq_mono_ms();
    int rc = tq_docker_stop(D, id, 1, &eb);
    long long stop_ms = tq_mono_ms() - t0;
    pthread_join(th, NULL);
    CHECK(rc == TQ_OK, eb);
    CHECK(stop_ms < 4000, eb);
    CHECK(w.rc == TQ_OK, w.eb);
    CHECK(w.returned_ms - t0 < 4000, w.eb);
    CHECK(w.code == 137 || w.code == 143 || w.code == 0, w.eb);
    CHECK(tq_docker_inspect(D, id, &st, &eb) == TQ_OK && !st.running, eb);
    CHECK(strcmp(st.status, "exited") == 0, eb);
    CHECK(tq_docker_stop(D, id, 1, &eb) == TQ_OK, eb); /* 304: not running */
    fprintf(stderr, "stop with grace 1 s took %lld ms (exit %d)\n", stop_ms, w.code);
    CHECK(tq_docker_remove(D, id, 0, &eb) == TQ_OK, eb);
}

static void test_kill_and_forced_remove(void)
{
    tq_errbuf eb = {{0}};
    job j;
    CHECK(job_init(&j, "kill", "DURATION=60\nEXIT_CODE=0\nMESSAGE=never\nSTEPS=100\n") == 0, eb);
    char id[65];
    CHECK(tq_docker_create(D, &j.spec, id, &eb) == TQ_OK, eb);
    CHECK(tq_docker_start(D, j.name, &eb) == TQ_OK, eb);
    CHECK(tq_docker_remove(D, id, 0, &eb) == TQ_ERR_CONFLICT, eb); /* running, no force */
    CHECK(tq_docker_kill(D, j.name, &eb) == TQ_OK, eb);
    int code = -1;
    CHECK(tq_docker_wait(D, id, 10000, &code, &eb) == TQ_OK, eb);
    CHECK(code == 137, eb);
    CHECK(tq_docker_kill(D, id, &eb) == TQ_OK, eb); /* 409 not running: already where we want */

    job k;
    CHECK(job_init(&k, "force", "DURATION=60\nEXIT_CODE=0\nMESSAGE=never\nSTEPS=100\n") == 0, eb);
    char kid[65];
    CHECK(tq_docker_create(D, &k.spec, kid, &eb) == TQ_OK, eb);
    CHECK(tq_docker_start(D, kid, &eb) == TQ_OK, eb);
    CHECK(tq_docker_remove(D, kid, 1, &eb) == TQ_OK, eb);
    tq_container_state st;
    CHECK(tq_docker_inspect(D, kid, &st, &eb) == TQ_ERR_NOT_FOUND, eb);
    CHECK(tq_docker_remove(D, id, 0, &eb) == TQ_OK, eb);
}

/* The daemon must accept our DeviceRequests shapes at create. Where no NVIDIA runtime is
 * installed, start fails with the daemon's reason, which must reach the caller intact. */
static void test_gpu_requests_are_accepted_and_start_errors_surface(void)
{
    tq_errbuf eb = {{0}};
    static const char *const tags[] = {"gpuall", "gpuids"};
    for (int i = 0; i < 2; i++) {
        job j;
        CHECK(job_init(&j, tags[i], "DURATION=0\nEXIT_CODE=0\nMESSAGE=gpu\n") == 0, eb);
        j.spec.gpu_mode = i == 0 ? TQ_GPUS_CFG_ALL : TQ_GPUS_CFG_IDS;
        j.spec.gpu_ids = "0";
        char id[65];
        CHECK(tq_docker_create(D, &j.spec, id, &eb) == TQ_OK, eb);
        int rc = tq_docker_start(D, id, &eb);
        if (rc != TQ_OK) {
            CHECK(rc == TQ_ERR_DOCKER, eb);
            CHECK(strstr(eb.msg, "could not start container") != NULL, eb);
            CHECK(strstr(eb.msg, "nvidia") != NULL || strstr(eb.msg, "gpu") != NULL, eb);
            fprintf(stderr, "no gpu runtime here: %s\n", eb.msg);
            tq_container_state st;
            CHECK(tq_docker_inspect(D, id, &st, &eb) == TQ_OK, eb);
            CHECK(!st.running && st.error[0] != '\0', eb);
        }
        CHECK(tq_docker_remove(D, id, 1, &eb) == TQ_OK, eb);
    }
}

#define STRESS_THREADS 8
#define STRESS_ROUNDS 25

static void *stress_thread(void *arg)
{
    int *bad = arg;
    char filter[128];
    snprintf(filter, sizeof filter, "trainq.worker=%s", WORKER);
    for (int i = 0; i < STRESS_ROUNDS; i++) {
        tq_errbuf eb = {{0}};
        tq_container_summary *v = NULL;
        size_t n = 0;
        if (tq_docker_ping(D, &eb) != TQ_OK || tq_docker_list(D, filter, &v, &n, &eb) != TQ_OK)
            (*bad)++;
        free(v);
        tq_container_state st;
        if (tq_docker_inspect(D, "trainq-it-does-not-exist", &st, &eb) != TQ_ERR_NOT_FOUND)
            (*bad)++;
    }
    return NULL;
}

static void test_one_handle_serves_many_threads(void)
{
    tq_errbuf eb = {{0}};
    pthread_t th[STRESS_THREADS];
    int bad[STRESS_THREADS] = {0};
    for (int i = 0; i < STRESS_THREADS; i++)
        CHECK(pthread_create(&th[i], NULL, stress_thread, &bad[i]) == 0, eb);
    int total = 0;
    for (int i = 0; i < STRESS_THREADS; i++) {
        pthread_join(th[i], NULL);
        total += bad[i];
    }
    CHECK(total == 0, eb);
}

/* Adoption at start lists this worker's live containers and the containers of the jobs it
 * holds, never its whole history: 60 exited containers overflow a 16 KiB reply cap
 * (each listing entry is ~1 KB), the adoption query still fits it. */
#define MANY_EXITED 60
static void test_adoption_listing_fits_a_small_cap_with_many_exited_containers(void)
{
    tq_errbuf eb = {{0}};
    char worker[96], wl[128];
    snprintf(worker, sizeof worker, "%s-many", WORKER);
    snprintf(wl, sizeof wl, "trainq.worker=%s", worker);
    static char names[MANY_EXITED + 1][96], tags[MANY_EXITED + 1][16];
    for (int i = 0; i <= MANY_EXITED; i++) {
        snprintf(names[i], sizeof names[i], "trainq-it-%ld-many-%d", (long)getpid(), i);
        snprintf(tags[i], sizeof tags[i], "many-%d", i);
        tq_label labels[2] = {{"trainq.job", tags[i]}, {"trainq.worker", worker}};
        /* without /workspace/config.json the fake trainer exits 2 at once */
        tq_container_spec spec = {
            .name = names[i], .image = IMAGE, .labels = labels, .n_labels = 2, .pids_limit = 64};
        char id[65];
        CHECK(tq_docker_create(D, &spec, id, &eb) == TQ_OK, eb);
        if (i < MANY_EXITED) /* the last one stays "created": live */
            CHECK(tq_docker_start(D, id, &eb) == TQ_OK, eb);
    }
    const char *labels[] = {wl, NULL, NULL};
    const char *exited[] = {"exited", NULL};
    const char *live[] = {"created", "restarting", "running", "removing", "paused", NULL};
    tq_container_summary *v = NULL;
    size_t n = 0;
    int64_t deadline = tq_mono_ms() + 60000;
    for (;;) {
        CHECK(tq_docker_list_where(D, labels, exited, &v, &n, &eb) == TQ_OK, eb);
        free(v);
        if (n == MANY_EXITED || tq_mono_ms() > deadline)
            break;
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    CHECK(n == MANY_EXITED, eb);

    tq_docker *small = NULL;
    CHECK(tq_docker_new(getenv("TRAINQ_DOCKER_HOST"), &small, &eb) == TQ_OK, eb);
    tq_docker_set_limits(small, 16 * 1024, 0);
    /* The whole history does not fit, and says so. */
    int rc = tq_docker_list(small, wl, &v, &n, &eb);
    int too_large = rc == TQ_ERR_TOO_LARGE && strstr(eb.msg, "larger than 16384 bytes");
    /* What adoption asks for does: the live container, and a held job's exited one. */
    int live_ok = tq_docker_list_where(small, labels, live, &v, &n, &eb) == TQ_OK && n == 1 &&
                  strcmp(v[0].name, names[MANY_EXITED]) == 0 && strcmp(v[0].state, "created") == 0;
    free(v);
    char jl[64];
    snprintf(jl, sizeof jl, "trainq.job=%s", tags[7]);
    labels[1] = jl;
    int held_ok = tq_docker_list_where(small, labels, NULL, &v, &n, &eb) == TQ_OK && n == 1 &&
                  strcmp(v[0].name, names[7]) == 0 && strcmp(v[0].state, "exited") == 0;
    free(v);
    tq_docker_free(small);
    labels[1] = NULL;
    if (tq_docker_list(D, wl, &v, &n, &eb) == TQ_OK) {
        for (size_t i = 0; i < n; i++)
            tq_docker_remove(D, v[i].id, 1, &eb);
        free(v);
    }
    CHECK(too_large, eb);
    CHECK(live_ok, eb);
    CHECK(held_ok, eb);
}

static void cleanup_containers(void)
{
    char filter[128];
    snprintf(filter, sizeof filter, "trainq.worker=%s", WORKER);
    tq_container_summary *v = NULL;
    size_t n = 0;
    tq_errbuf eb = {{0}};
    if (tq_docker_list(D, filter, &v, &n, &eb) != TQ_OK) {
        fprintf(stderr, "cleanup: %s\n", eb.msg);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        fprintf(stderr, "cleanup: removing leftover container %s\n", v[i].name);
        if (tq_docker_remove(D, v[i].id, 1, &eb) != TQ_OK)
            fprintf(stderr, "cleanup: %s\n", eb.msg);
    }
    free(v);
}

static int rm_entry(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
    (void)sb;
    (void)type;
    (void)ftw;
    remove(path);
    return 0;
}

int main(void)
{
    const char *host = getenv("TRAINQ_DOCKER_HOST");
    if (!host || !*host) {
        printf("skipped: TRAINQ_DOCKER_HOST is not set\n");
        return 77;
    }
    IMAGE = getenv("TRAINQ_TEST_IMAGE");
    if (!IMAGE || !*IMAGE)
        IMAGE = "trainq-fake-trainer:latest";
    snprintf(WORKER, sizeof WORKER, "docker-it-%ld-%lld", (long)getpid(), (long long)tq_mono_ms());
    tq_errbuf eb = {{0}};
    if (tq_docker_new(host, &D, &eb) != TQ_OK) {
        fprintf(stderr, "FAIL: %s\n", eb.msg);
        return 1;
    }
    snprintf(SOCK_DIR, sizeof SOCK_DIR, "%s", tq_docker_socket_path(D));
    char *slash = strrchr(SOCK_DIR, '/');
    if (slash && slash != SOCK_DIR)
        *slash = '\0';
    if (!mkdtemp(ROOT)) {
        perror("mkdtemp");
        return 1;
    }
    chmod(ROOT, 0755);

    test_ping_and_images();
    if (failures == 0) {
        test_create_with_missing_image_is_not_found();
        test_mounting_the_docker_socket_is_refused();
        test_failing_job_lifecycle();
        test_successful_job_writes_outputs_without_capabilities();
        test_stop_ends_a_long_job_within_its_grace();
        test_kill_and_forced_remove();
        test_gpu_requests_are_accepted_and_start_errors_surface();
        test_one_handle_serves_many_threads();
        test_adoption_listing_fits_a_small_cap_with_many_exited_containers();
    }

    cleanup_containers();
    nftw(ROOT, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    tq_docker_free(D);
    if (failures) {
        fprintf(stderr, "docker_it: %d failure(s)\n", failures);
        return 1;
    }
    printf("docker_it: all passed against %s with image %s\n", host, IMAGE);
    return 0;
}
