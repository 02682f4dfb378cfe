/* Unit tests for the launch preparation (config.json, dataset confinement, files, command
 * splitting) and the consumer's metrics. tq_launch_container itself needs a daemon and is
 * covered by the consumer's integration tests. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cmetrics.h"
#include "launch.h"

#define JOB_ID "3f2a8c1e-9b7d-4e6f-a1b2-c3d4e5f60718"

/* The typed job a claim hands to launch: parsed by tq_job.c, as the consumer's decode of
 * the row's message does, so every default is tq_job.c's. */
static tq_submission make_job(const char *type)
{
    json_error_t err;
    json_t *j =
        json_pack_ex(&err, 0,
                     "{s:s, s:s, s:s, s:s,"
                     " s:{s:f, s:i, s:i, s:i, s:i, s:i}, s:[s, s]}",
                     "dataset_id", "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", "name", "my style",
                     "type", type, "base_model", "runwayml/stable-diffusion-v1-5", "config",
                     "learning_rate", 2e-4, "batch_size", 2, "steps", 1500, "resolution", 768,
                     "lora_rank", 32, "lora_alpha", 16, "trigger_words", "sks", "watercolor");
    assert_non_null(j);
    tq_submission sub;
    assert_int_equal(tq_submission_from_json(j, &sub, NULL), TQ_OK);
    json_decref(j);
    return sub;
}

/* The object's keys, sorted and joined with ",". */
static void keys_of(const json_t *o, char *out, size_t cap)
{
    json_t *copy = json_deep_copy(o);
    const char *k;
    json_t *v;
    json_object_foreach(copy, k, v) json_object_set_new(copy, k, json_null());
    char *s = json_dumps(copy, JSON_SORT_KEYS | JSON_COMPACT);
    json_decref(copy);
    out[0] = '\0';
    size_t off = 0;
    /* {"a":null,"b":null} -> a,b */
    for (const char *p = s; *p; p++) {
        if (*p != '"')
            continue;
        const char *e = strchr(p + 1, '"');
        int n = snprintf(out + off, cap - off, "%s%.*s", off ? "," : "", (int)(e - p - 1), p + 1);
        off += (size_t)n;
        p = e;
    }
    free(s);
}

static void config_json_of_a_lora_job_has_the_diffusers_arguments(void **state)
{
    (void)state;
    tq_submission job = make_job("lora");
    json_t *c = tq_launch_training_config(&job, JOB_ID, NULL);
    assert_non_null(c);
    char keys[2048];
    keys_of(c, keys, sizeof keys);
    assert_string_equal(keys, "cache_dir,checkpointing_steps,instance_prompt,job_id,job_name,"
                              "learning_rate,lora_alpha,max_train_steps,mixed_precision,"
                              "network_alpha,output_dir,pretrained_model_name_or_path,rank,"
                              "resolution,seed,train_batch_size,train_data_dir,training_type,"
                              "validation_prompt");
    assert_string_equal(json_string_value(json_object_get(c, "pretrained_model_name_or_path")),
                        "runwayml/stable-diffusion-v1-5");
    assert_string_equal(json_string_value(json_object_get(c, "train_data_dir")),
                        "/workspace/datasets");
    assert_string_equal(json_string_value(json_object_get(c, "output_dir")), "/workspace/outputs");
    assert_string_equal(json_string_value(json_object_get(c, "cache_dir")), "/workspace/models");
    assert_int_equal(json_integer_value(json_object_get(c, "resolution")), 768);
    assert_int_equal(json_integer_value(json_object_get(c, "train_batch_size")), 2);
    assert_true(json_is_real(json_object_get(c, "learning_rate")));
    assert_true(json_real_value(json_object_get(c, "learning_rate")) == 2e-4);
    assert_int_equal(json_integer_value(json_object_get(c, "max_train_steps")), 1500);
    assert_int_equal(json_integer_value(json_object_get(c, "checkpointing_steps")), 300);
    assert_int_equal(json_integer_value(json_object_get(c, "rank")), 32);
    assert_int_equal(json_integer_value(json_object_get(c, "lora_alpha")), 16);
    assert_int_equal(json_integer_value(json_object_get(c, "network_alpha")), 16);
    assert_string_equal(json_string_value(json_object_get(c, "instance_prompt")),
                        "sks, watercolor");
    assert_string_equal(json_string_value(json_object_get(c, "validation_prompt")),
                        "sks, watercolor");
    assert_string_equal(json_string_value(json_object_get(c, "mixed_precision")), "fp16");
    assert_string_equal(json_string_value(json_object_get(c, "job_id")), JOB_ID);
    assert_string_equal(json_string_value(json_object_get(c, "job_name")), "my style");
    assert_string_equal(json_string_value(json_object_get(c, "training_type")), "lora");
    json_int_t seed = json_integer_value(json_object_get(c, "seed"));
    assert_true(seed >= 0 && seed <= 0x7fffffff);
    json_decref(c);
    tq_submission_free(&job);
}

static void config_json_of_a_dreambooth_job_names_the_instance_data_dir(void **state)
{
    (void)state;
    tq_submission job = make_job("dreambooth");
    json_t *c = tq_launch_training_config(&job, JOB_ID, "/somewhere/else");
    assert_non_null(c);
    char keys[2048];
    keys_of(c, keys, sizeof keys);
    assert_string_equal(keys,
                        "cache_dir,checkpointing_steps,instance_data_dir,instance_prompt,job_id,"
                        "job_name,learning_rate,lora_alpha,max_train_steps,mixed_precision,"
                        "network_alpha,output_dir,pretrained_model_name_or_path,rank,"
                        "resolution,seed,train_batch_size,train_data_dir,training_type");
    assert_string_equal(json_string_value(json_object_get(c, "instance_data_dir")),
                        "/somewhere/else");
    assert_string_equal(json_string_value(json_object_get(c, "train_data_dir")), "/somewhere/else");
    assert_string_equal(json_string_value(json_object_get(c, "instance_prompt")),
                        "sks, watercolor");
    assert_string_equal(json_string_value(json_object_get(c, "training_type")), "dreambooth");
    json_decref(c);
    tq_submission_free(&job);
}

static void config_json_is_the_same_bytes_for_the_same_job(void **state)
{
    (void)state;
    tq_submission job = make_job("lora");
    json_t *a = tq_launch_training_config(&job, JOB_ID, NULL);
    json_t *b = tq_launch_training_config(&job, JOB_ID, NULL);
    char *sa = json_dumps(a, JSON_SORT_KEYS);
    char *sb = json_dumps(b, JSON_SORT_KEYS);
    assert_string_equal(sa, sb);
    /* Insertion order is fixed too, so even unsorted output matches. */
    free(sa);
    free(sb);
    sa = json_dumps(a, 0);
    sb = json_dumps(b, 0);
    assert_string_equal(sa, sb);
    free(sa);
    free(sb);

    /* Another job id gets another seed. */
    json_t *c = tq_launch_training_config(&job, "00000000-0000-0000-0000-000000000001", NULL);
    assert_int_not_equal(json_integer_value(json_object_get(a, "seed")),
                         json_integer_value(json_object_get(c, "seed")));
    json_decref(a);
    json_decref(b);
    json_decref(c);
    tq_submission_free(&job);
}

static void config_json_fills_defaults_and_refuses_a_job_without_type(void **state)
{
    (void)state;
    /* The defaults come from tq_job.c's parse, the one place that applies them. */
    json_t *body =
        json_pack("{s:s, s:s, s:s, s:{}}", "dataset_id", "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
                  "type", "lora", "base_model", "org/model", "config");
    tq_submission job;
    assert_int_equal(tq_submission_from_json(body, &job, NULL), TQ_OK);
    json_t *c = tq_launch_training_config(&job, JOB_ID, NULL);
    assert_non_null(c);
    assert_int_equal(json_integer_value(json_object_get(c, "max_train_steps")), 1000);
    assert_int_equal(json_integer_value(json_object_get(c, "checkpointing_steps")), 200);
    assert_int_equal(json_integer_value(json_object_get(c, "resolution")), 512);
    assert_int_equal(json_integer_value(json_object_get(c, "rank")), 16);
    assert_int_equal(json_integer_value(json_object_get(c, "lora_alpha")), 32);
    assert_string_equal(json_string_value(json_object_get(c, "instance_prompt")), "");
    assert_string_equal(json_string_value(json_object_get(c, "job_name")), "lora org/model");
    json_decref(c);

    /* A type outside the enum, a job without base_model or without id: refused. */
    tq_job_type type = job.type;
    job.type = (tq_job_type)7; /* "textual_inversion" has no place in the enum */
    assert_null(tq_launch_training_config(&job, JOB_ID, NULL));
    job.type = type;
    char *base = job.base_model;
    job.base_model = NULL;
    assert_null(tq_launch_training_config(&job, JOB_ID, NULL));
    job.base_model = base;
    assert_null(tq_launch_training_config(&job, NULL, NULL));
    tq_submission_free(&job);
    /* A job without type never becomes a typed job at all. */
    json_object_del(body, "type");
    assert_int_equal(tq_submission_from_json(body, &job, NULL), TQ_ERR_INVALID);
    json_decref(body);
}

/* ---- the file system fixture -------------------------------------------------------- */

typedef struct {
    char tmp[PATH_MAX];  /* mkdtemp */
    char root[PATH_MAX]; /* tmp/data/ds: the datasets root */
} fs_fixture;

static void pathf(char *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void pathf(char *out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, PATH_MAX, fmt, ap);
    va_end(ap);
    assert_true(n > 0 && n < PATH_MAX);
}

static void mkdir_ok(const char *p)
{
    assert_int_equal(mkdir(p, 0755), 0);
}

static int fs_setup(void **state)
{
    fs_fixture *f = calloc(1, sizeof *f);
    char tmpl[] = "/tmp/tq_launch_XXXXXX";
    if (!f || !mkdtemp(tmpl))
        return -1;
    /* Resolved so expected paths compare equal to realpath() output. */
    if (!realpath(tmpl, f->tmp))
        return -1;
    char p[PATH_MAX], q[PATH_MAX];
    pathf(p, "%s/data", f->tmp);
    mkdir_ok(p);
    pathf(f->root, "%s/data/ds", f->tmp);
    mkdir_ok(f->root);
    pathf(p, "%s/a", f->root);
    mkdir_ok(p);
    pathf(p, "%s/a/nested", f->root);
    mkdir_ok(p);
    pathf(p, "%s/file", f->root);
    FILE *fp = fopen(p, "w");
    assert_non_null(fp);
    fclose(fp);
    pathf(p, "%s/data/ds2", f->tmp);
    mkdir_ok(p);
    pathf(p, "%s/data/ds2/x", f->tmp);
    mkdir_ok(p);
    pathf(p, "%s/outside", f->tmp);
    mkdir_ok(p);
    pathf(p, "%s/outside/sub", f->tmp);
    mkdir_ok(p);
    /* link_in -> a (relative, stays inside); link_out -> tmp/outside */
    pathf(p, "%s/link_in", f->root);
    assert_int_equal(symlink("a", p), 0);
    pathf(p, "%s/link_out", f->root);
    pathf(q, "%s/outside", f->tmp);
    assert_int_equal(symlink(q, p), 0);
    /* link_sib -> data/ds2/x: shares the root's string prefix, not its directory */
    pathf(p, "%s/link_sib", f->root);
    pathf(q, "%s/data/ds2/x", f->tmp);
    assert_int_equal(symlink(q, p), 0);
    pathf(p, "%s/link_up", f->root);
    assert_int_equal(symlink("..", p), 0);
    /* rootlink -> data/ds: a datasets root configured through a symlink */
    pathf(p, "%s/rootlink", f->tmp);
    assert_int_equal(symlink(f->root, p), 0);
    *state = f;
    return 0;
}

static int rm_rf(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return 0;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        if (!d)
            return -1;
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            char p[PATH_MAX];
            snprintf(p, sizeof p, "%s/%s", path, e->d_name);
            rm_rf(p);
        }
        closedir(d);
        return rmdir(path);
    }
    return unlink(path);
}

static int fs_teardown(void **state)
{
    fs_fixture *f = *state;
    rm_rf(f->tmp);
    free(f);
    return 0;
}

static void dataset_paths_are_confined_to_the_datasets_root(void **state)
{
    fs_fixture *f = *state;
    char abs_ok[PATH_MAX], abs_prefix[PATH_MAX], abs_dotdot[PATH_MAX], via_link[PATH_MAX],
        exp_a[PATH_MAX], exp_nested[PATH_MAX], abs_link_root[PATH_MAX], root_slash[PATH_MAX],
        abs_root[PATH_MAX];
    pathf(abs_ok, "%s/a", f->root);
    pathf(abs_prefix, "%s/data/ds2/x", f->tmp);
    pathf(abs_dotdot, "%s/../ds2/x", f->root);
    pathf(via_link, "%s/rootlink", f->tmp);
    pathf(abs_link_root, "%s/rootlink/a/nested", f->tmp);
    pathf(root_slash, "%s/", f->root);
    pathf(abs_root, "%s/", f->root);
    pathf(exp_a, "%s/a", f->root);
    pathf(exp_nested, "%s/a/nested", f->root);

    const struct {
        const char *root, *storage;
        int rc;
        const char *expect; /* resolved path on TQ_OK; message part otherwise */
    } cases[] = {
        {f->root, "a", TQ_OK, exp_a},
        {f->root, "a/nested/", TQ_OK, exp_nested},
        {f->root, "./a", TQ_OK, exp_a},
        {f->root, abs_ok, TQ_OK, exp_a},
        {root_slash, "a", TQ_OK, exp_a},
        {f->root, "link_in", TQ_OK, exp_a},
        {f->root, "link_in/nested", TQ_OK, exp_nested},
        {via_link, "a", TQ_OK, exp_a},
        {via_link, abs_link_root, TQ_OK, exp_nested},
        {via_link, abs_ok, TQ_OK, exp_a},
        {f->root, "../ds2/x", TQ_ERR_FORBIDDEN, "escapes the datasets root"},
        {f->root, "../outside", TQ_ERR_FORBIDDEN, "escapes the datasets root"},
        {f->root, "a/../../ds2/x", TQ_ERR_FORBIDDEN, "escapes the datasets root"},
        {f->root, "..", TQ_ERR_FORBIDDEN, "escapes the datasets root"},
        {f->root, abs_dotdot, TQ_ERR_FORBIDDEN, "escapes the datasets root"},
        {f->root, "link_out", TQ_ERR_FORBIDDEN, "escapes the datasets root"},
        {f->root, "link_out/sub", TQ_ERR_FORBIDDEN, "escapes the datasets root"},
        {f->root, "link_up", TQ_ERR_FORBIDDEN, "escapes the datasets root"},
        {f->root, "link_sib", TQ_ERR_FORBIDDEN, "escapes the datasets root"},
        {f->root, abs_prefix, TQ_ERR_FORBIDDEN, "escapes the datasets root"},
        {f->root, "/etc", TQ_ERR_FORBIDDEN, "escapes the datasets root"},
        {f->root, ".", TQ_ERR_FORBIDDEN, "escapes the datasets root"},
        {f->root, abs_root, TQ_ERR_FORBIDDEN, "escapes the datasets root"},
        {f->root, "missing", TQ_ERR_NOT_FOUND, "dataset directory \"missing\" does not exist"},
        {f->root, "a/missing/deeper", TQ_ERR_NOT_FOUND, "does not exist"},
        {f->root, "file", TQ_ERR_INVALID, "is not a directory"},
        {f->root, "file/x", TQ_ERR_NOT_FOUND, "does not exist"},
        {f->root, "", TQ_ERR_INVALID, "empty"},
        {"relative/root", "a", TQ_ERR_INVALID, "not absolute"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[PATH_MAX] = "junk";
        tq_errbuf eb = {{0}};
        int rc = tq_launch_resolve_dataset(cases[i].root, cases[i].storage, out, sizeof out, &eb);
        if (rc != cases[i].rc)
            fail_msg("case %zu (%s under %s): rc %d, want %d (%s)", i, cases[i].storage,
                     cases[i].root, rc, cases[i].rc, eb.msg);
        if (rc == TQ_OK) {
            assert_string_equal(out, cases[i].expect);
        } else {
            assert_string_equal(out, "");
            if (!strstr(eb.msg, cases[i].expect))
                fail_msg("case %zu: message \"%s\" lacks \"%s\"", i, eb.msg, cases[i].expect);
        }
    }
    /* The exact message the job's failure reason shows. */
    tq_errbuf eb = {{0}};
    char out[PATH_MAX];
    /* An empty root (a mount that is not there): the host's fault, not the dataset's. */
    char empty_root[PATH_MAX];
    pathf(empty_root, "%s/empty-root", f->tmp);
    assert_int_equal(mkdir(empty_root, 0755), 0);
    assert_int_equal(tq_launch_resolve_dataset(empty_root, "u/ds", out, sizeof out, &eb),
                     TQ_ERR_IO);
    assert_non_null(strstr(eb.msg, "is empty (not mounted?)"));
    assert_int_equal(rmdir(empty_root), 0);
    assert_int_equal(tq_launch_resolve_dataset(f->root, "../outside", out, sizeof out, &eb),
                     TQ_ERR_FORBIDDEN);
    assert_string_equal(eb.msg, "dataset path \"../outside\" escapes the datasets root");
    /* A buffer too small is an error, never a cut path. */
    char small[8];
    assert_int_equal(tq_launch_resolve_dataset(f->root, "a", small, sizeof small, &eb),
                     TQ_ERR_TOO_LARGE);
}

static void test_config(const fs_fixture *f, tq_config *cfg, char *data, char *hf)
{
    memset(cfg, 0, sizeof *cfg);
    pathf(data, "%s/state", f->tmp);
    pathf(hf, "%s/state/cache/hf", f->tmp);
    cfg->data_dir = data;
    cfg->datasets_root = (char *)f->root;
    cfg->hf_cache_dir = hf;
}

static void prepare_writes_config_json_and_creates_the_directories(void **state)
{
    fs_fixture *f = *state;
    tq_config cfg;
    char data[PATH_MAX], hf[PATH_MAX], p[PATH_MAX];
    test_config(f, &cfg, data, hf);
    tq_submission job = make_job("dreambooth");
    tq_launch_paths paths;
    tq_errbuf eb = {{0}};

    /* Owner-only whatever the umask, and also for an outputs directory that exists with a
     * looser mode (a retry, an older consumer). */
    mode_t old_umask = umask(0);
    for (int round = 0; round < 2; round++) { /* the second run finds everything in place */
        if (round == 1)
            assert_int_equal(chmod(paths.outputs, 0755), 0);
        int rc = tq_launch_prepare(&cfg, &job, JOB_ID, "link_in", 0, &paths, &eb);
        if (rc != TQ_OK)
            fail_msg("round %d: %d %s", round, rc, eb.msg);
        pathf(p, "%s/a", f->root);
        assert_string_equal(paths.dataset, p);
        pathf(p, "%s/state/outputs/" JOB_ID, f->tmp);
        assert_string_equal(paths.outputs, p);
        pathf(p, "%s/state/configs/" JOB_ID ".json", f->tmp);
        assert_string_equal(paths.config_file, p);

        struct stat st;
        assert_int_equal(stat(paths.outputs, &st), 0);
        assert_true(S_ISDIR(st.st_mode));
        assert_int_equal(st.st_mode & 07777, 0700);
        assert_int_equal(stat(hf, &st), 0);
        assert_true(S_ISDIR(st.st_mode));
        assert_int_equal(stat(paths.config_file, &st), 0);
        assert_int_equal(st.st_mode & 07777, 0600);

        json_error_t jerr;
        json_t *written = json_load_file(paths.config_file, 0, &jerr);
        assert_non_null(written);
        json_t *want = tq_launch_training_config(&job, JOB_ID, NULL);
        assert_true(json_equal(written, want));
        json_decref(want);
        json_decref(written);
    }
    umask(old_umask);
    /* No temporary file is left behind. */
    pathf(p, "%s/state/configs", f->tmp);
    DIR *d = opendir(p);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    assert_int_equal(n, 1);
    tq_submission_free(&job);
}

/* The Hugging Face cache is shared by every user's jobs: read-only on request, so one job
 * cannot alter the model files another job loads. */
static void models_cache_is_mounted_read_only_when_configured(void **state)
{
    (void)state;
    tq_launch_paths paths;
    memset(&paths, 0, sizeof paths);
    snprintf(paths.dataset, sizeof paths.dataset, "/d/ds");
    snprintf(paths.outputs, sizeof paths.outputs, "/d/out");
    snprintf(paths.models, sizeof paths.models, "/d/hf");
    snprintf(paths.config_file, sizeof paths.config_file, "/d/c.json");
    for (int ro = 0; ro < 2; ro++) {
        tq_config cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.models_read_only = ro;
        cfg.training_image = "trainer:1";
        cfg.training_cmd = "python train.py";
        tq_job_container jc;
        const tq_job_container_in in = {.job_id = JOB_ID,
                                        .user_id = "u",
                                        .worker_id = "w",
                                        .dataset = paths.dataset,
                                        .outputs = paths.outputs,
                                        .models = paths.models,
                                        .config_file = paths.config_file};
        tq_errbuf eb = {{0}};
        assert_int_equal(tq_job_container_build(&jc, &cfg, &in, &eb), TQ_OK);
        char *body = tq_docker_create_body(&jc.spec);
        assert_non_null(body);
        json_t *j = json_loads(body, 0, NULL);
        free(body);
        assert_non_null(j);
        json_t *ms = json_object_get(json_object_get(j, "HostConfig"), "Mounts");
        assert_int_equal(json_array_size(ms), 4);
        size_t i;
        json_t *m;
        int seen = 0;
        json_array_foreach(ms, i, m)
        {
            const char *target = json_string_value(json_object_get(m, "Target"));
            int models = strcmp(target, TQ_LAUNCH_MODELS_TARGET) == 0;
            int outputs = strcmp(target, TQ_LAUNCH_OUTPUTS_TARGET) == 0;
            int want = models ? ro : !outputs; /* dataset and config always read-only */
            seen += models;
            assert_int_equal(json_is_true(json_object_get(m, "ReadOnly")), want);
        }
        assert_int_equal(seen, 1);
        json_decref(j);
    }
}

static void prepare_refuses_bad_input_before_writing_anything(void **state)
{
    fs_fixture *f = *state;
    tq_config cfg;
    char data[PATH_MAX], hf[PATH_MAX];
    test_config(f, &cfg, data, hf);
    tq_launch_paths paths;
    tq_errbuf eb = {{0}};
    struct stat st;

    tq_submission job = make_job("lora");
    assert_int_equal(tq_launch_prepare(&cfg, &job, JOB_ID, "link_out", 0, &paths, &eb),
                     TQ_ERR_FORBIDDEN);
    assert_int_equal(tq_launch_prepare(&cfg, &job, JOB_ID, "missing", 0, &paths, &eb),
                     TQ_ERR_NOT_FOUND);
    assert_int_equal(stat(data, &st), -1); /* nothing created for a job that cannot run */

    assert_int_equal(tq_launch_prepare(&cfg, &job, "../../etc", "a", 0, &paths, &eb),
                     TQ_ERR_INVALID);
    assert_int_equal(stat(data, &st), -1);
    tq_submission_free(&job);
}

/* ---- command splitting ------------------------------------------------------------- */

static void training_cmd_is_split_on_spaces_without_a_shell(void **state)
{
    (void)state;
    char buf[256];
    const char *argv[TQ_CONTAINER_MAX_ARGS];
    size_t n;
    tq_errbuf eb;

    assert_int_equal(tq_container_split_cmd("python train_lora.py --config /workspace/config.json",
                                            buf, sizeof buf, argv, TQ_CONTAINER_MAX_ARGS, &n, &eb),
                     TQ_OK);
    assert_int_equal(n, 4);
    assert_string_equal(argv[0], "python");
    assert_string_equal(argv[1], "train_lora.py");
    assert_string_equal(argv[2], "--config");
    assert_string_equal(argv[3], "/workspace/config.json");

    /* Quotes and shell syntax are plain characters. */
    assert_int_equal(tq_container_split_cmd("  sh   -c 'echo;rm' $HOME ", buf, sizeof buf, argv,
                                            TQ_CONTAINER_MAX_ARGS, &n, &eb),
                     TQ_OK);
    assert_int_equal(n, 4);
    assert_string_equal(argv[0], "sh");
    assert_string_equal(argv[1], "-c");
    assert_string_equal(argv[2], "'echo;rm'");
    assert_string_equal(argv[3], "$HOME");

    assert_int_equal(tq_container_split_cmd("", buf, sizeof buf, argv, 4, &n, &eb), TQ_ERR_INVALID);
    assert_int_equal(tq_container_split_cmd("   ", buf, sizeof buf, argv, 4, &n, &eb),
                     TQ_ERR_INVALID);
    assert_int_equal(tq_container_split_cmd("a b c d", buf, sizeof buf, argv, 4, &n, &eb), TQ_OK);
    assert_int_equal(n, 4);
    assert_int_equal(tq_container_split_cmd("a b c d e", buf, sizeof buf, argv, 4, &n, &eb),
                     TQ_ERR_INVALID);
    assert_non_null(strstr(eb.msg, "more than 4 words"));
    assert_int_equal(tq_container_split_cmd("abcdefgh", buf, 8, argv, 4, &n, &eb), TQ_ERR_INVALID);
}

/* ---- metrics ----------------------------------------------------------------------- */

static void assert_contains(const char *hay, const char *needle)
{
    if (!strstr(hay, needle))
        fail_msg("\"%s\" not found in:\n%s", needle, hay);
}

static void metrics_render_counters_and_gauges_with_help_and_type(void **state)
{
    (void)state;
    tq_cmetrics_reset();
    tq_cmetrics_inc(TQ_CM_JOBS_STARTED);
    tq_cmetrics_inc(TQ_CM_JOBS_STARTED);
    tq_cmetrics_inc(TQ_CM_JOBS_STARTED);
    tq_cmetrics_inc(TQ_CM_JOBS_FAILED);
    tq_cmetrics_add(TQ_CM_JOBS_PARKED, 7);
    tq_cmetrics_set(TQ_CM_SLOTS_TOTAL, 4);
    tq_cmetrics_set(TQ_CM_SLOTS_BUSY, 1);
    tq_cmetrics_set(TQ_CM_DOCKER_UP, 1);
    tq_cmetrics_inc((tq_cmetric_id)999); /* ignored, not a crash */
    assert_int_equal(tq_cmetrics_get(TQ_CM_JOBS_STARTED), 3);

    tq_cmetrics_attempt_failed(TQ_FAIL_OOM);
    tq_cmetrics_attempt_failed(TQ_FAIL_OOM);
    tq_cmetrics_attempt_failed(TQ_FAIL_NONE); /* ignored */
    char *m = tq_cmetrics_render();
    assert_non_null(m);
    assert_contains(m, "# HELP trainq_consumer_jobs_started_total ");
    assert_contains(m, "# TYPE trainq_consumer_jobs_started_total counter\n"
                       "trainq_consumer_jobs_started_total 3\n");
    assert_contains(m, "\ntrainq_consumer_jobs_failed_total 1\n");
    assert_contains(m, "\ntrainq_consumer_jobs_completed_total 0\n");
    assert_contains(m, "\ntrainq_consumer_jobs_parked_total 7\n");
    assert_contains(m, "# TYPE trainq_consumer_jobs_dead_lettered_total counter\n");
    assert_contains(m, "# TYPE trainq_consumer_jobs_requeued_total counter\n");
    assert_contains(m, "# TYPE trainq_consumer_slots gauge\ntrainq_consumer_slots 4\n");
    assert_contains(m, "# TYPE trainq_consumer_slots_busy gauge\ntrainq_consumer_slots_busy 1\n");
    assert_contains(m, "# TYPE trainq_consumer_slots_free gauge\ntrainq_consumer_slots_free 3\n");
    assert_contains(m, "\ntrainq_consumer_docker_up 1\n");
    assert_contains(m, "\ntrainq_consumer_db_up 0\n");
    /* Every sample line belongs to a family announced by # TYPE. */
    int types = 0, helps = 0;
    for (const char *p = m; (p = strstr(p, "# TYPE ")) != NULL; p++)
        types++;
    for (const char *p = m; (p = strstr(p, "# HELP ")) != NULL; p++)
        helps++;
    /* + slots_free + the failures by class + the histogram */
    assert_int_equal(types, TQ_CM__COUNT + 3);
    assert_contains(m, "\ntrainq_consumer_attempt_failures_total{class=\"oom\"} 2\n");
    assert_contains(m, "\ntrainq_consumer_attempt_failures_total{class=\"hub_error\"} 0\n");
    assert_int_equal(helps, types);
    assert_int_equal(m[strlen(m) - 1], '\n');
    free(m);
    tq_cmetrics_reset();
}

static void metrics_dispatch_histogram_is_cumulative_with_count_and_sum(void **state)
{
    (void)state;
    tq_cmetrics_reset();
    const double obs[] = {0.001, 0.005, 0.007, 0.3, 100, -1};
    for (size_t i = 0; i < sizeof obs / sizeof obs[0]; i++)
        tq_cmetrics_observe_dispatch(obs[i]);
    char *m = tq_cmetrics_render();
    assert_non_null(m);
    const char *h = "trainq_consumer_dispatch_latency_seconds";
    char line[256];
    assert_contains(m, "# TYPE trainq_consumer_dispatch_latency_seconds histogram\n");
    const struct {
        const char *le;
        int n;
    } want[] = {{"0.005", 3}, {"0.01", 4}, {"0.025", 4}, {"0.25", 4}, {"0.5", 5},
                {"1", 5},     {"30", 5},   {"60", 5},    {"+Inf", 6}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        snprintf(line, sizeof line, "%s_bucket{le=\"%s\"} %d\n", h, want[i].le, want[i].n);
        assert_contains(m, line);
    }
    snprintf(line, sizeof line, "%s_count 6\n", h);
    assert_contains(m, line);
    snprintf(line, sizeof line, "%s_sum 100.313000\n", h);
    assert_contains(m, line);
    free(m);
    tq_cmetrics_reset();
}

typedef struct {
    char *data;
    size_t len;
} body_t;

static size_t collect(char *ptr, size_t size, size_t nmemb, void *ud)
{
    body_t *b = ud;
    size_t n = size * nmemb;
    char *nd = realloc(b->data, b->len + n + 1);
    assert_non_null(nd);
    memcpy(nd + b->len, ptr, n);
    b->data = nd;
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

static long http_get(int port, const char *path, char **body, char *ctype, size_t ccap)
{
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    CURL *c = curl_easy_init();
    assert_non_null(c);
    body_t b = {NULL, 0};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    CURLcode rc = curl_easy_perform(c);
    assert_int_equal(rc, CURLE_OK);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    char *ct = NULL;
    curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &ct);
    if (ctype)
        snprintf(ctype, ccap, "%s", ct ? ct : "");
    curl_easy_cleanup(c);
    *body = b.data ? b.data : strdup("");
    return status;
}

static atomic_int healthy;

static int health(void *arg, char *reason, size_t cap)
{
    (void)arg;
    if (atomic_load(&healthy))
        return 1;
    snprintf(reason, cap, "could not reach the docker daemon");
    return 0;
}

static void metrics_server_serves_metrics_and_healthz_on_a_free_port(void **state)
{
    (void)state;
    tq_cmetrics_reset();
    tq_cmetrics_inc(TQ_CM_JOBS_COMPLETED);
    tq_cmetrics_server *s = NULL;
    int port = 0;
    tq_errbuf eb = {{0}};
    atomic_store(&healthy, 1);
    int rc = tq_cmetrics_start("127.0.0.1", 0, health, NULL, &s, &port, &eb);
    if (rc != TQ_OK)
        fail_msg("start: %s", eb.msg);
    assert_true(port > 0);

    char *body, ct[128];
    assert_int_equal(http_get(port, "/metrics", &body, ct, sizeof ct), 200);
    assert_string_equal(ct, "text/plain; version=0.0.4; charset=utf-8");
    assert_contains(body, "\ntrainq_consumer_jobs_completed_total 1\n");
    free(body);

    assert_int_equal(http_get(port, "/healthz", &body, NULL, 0), 200);
    assert_string_equal(body, "ok\n");
    free(body);

    atomic_store(&healthy, 0);
    assert_int_equal(http_get(port, "/healthz", &body, NULL, 0), 503);
    assert_string_equal(body, "could not reach the docker daemon\n");
    free(body);

    assert_int_equal(http_get(port, "/nope", &body, NULL, 0), 404);
    free(body);

    /* The port is taken now: a second server on it fails with a clear error. */
    tq_cmetrics_server *s2 = NULL;
    assert_int_equal(tq_cmetrics_start("127.0.0.1", port, NULL, NULL, &s2, NULL, &eb), TQ_ERR_IO);
    assert_null(s2);
    assert_non_null(strstr(eb.msg, "could not listen"));

    tq_cmetrics_stop(s);
    tq_cmetrics_stop(NULL);
    tq_cmetrics_reset();
}

static void write_bytes(const char *path, size_t n)
{
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    for (size_t i = 0; i < n; i++)
        fputc('x', fp);
    fclose(fp);
}

static void preflight_wants_a_readable_image_under_the_size_limit(void **state)
{
    fs_fixture *f = *state;
    char d[PATH_MAX], p[PATH_MAX];
    tq_errbuf eb = {{0}};
    pathf(d, "%s/pf", f->tmp);
    mkdir_ok(d);
    /* no image: a caption and trainer.env are not a dataset */
    pathf(p, "%s/0001.txt", d);
    write_bytes(p, 10);
    assert_int_equal(tq_launch_preflight_dataset(d, 0, &eb), TQ_ERR_INVALID);
    assert_non_null(strstr(eb.msg, "holds no image file"));
    /* a symlink to an image elsewhere is not followed, so it does not count */
    pathf(p, "%s/link.png", d);
    assert_int_equal(symlink("/etc/hostname", p), 0);
    assert_int_equal(tq_launch_preflight_dataset(d, 0, &eb), TQ_ERR_INVALID);
    /* one image, any case, in a subdirectory */
    pathf(p, "%s/sub", d);
    mkdir_ok(p);
    pathf(p, "%s/sub/A.WebP", d);
    write_bytes(p, 100);
    assert_int_equal(tq_launch_preflight_dataset(d, 0, &eb), TQ_OK);
    assert_int_equal(tq_launch_preflight_dataset(d, 110, &eb), TQ_OK);
    assert_int_equal(tq_launch_preflight_dataset(d, 109, &eb), TQ_ERR_TOO_LARGE);
    assert_non_null(strstr(eb.msg, "TRAINQ_DATASET_MAX_BYTES"));
    /* missing */
    pathf(p, "%s/nope", d);
    assert_int_not_equal(tq_launch_preflight_dataset(p, 0, &eb), TQ_OK);
    assert_non_null(strstr(eb.msg, "not readable"));
}

static void checkpoints_are_checkpoint_or_state_directories(void **state)
{
    fs_fixture *f = *state;
    char d[PATH_MAX], p[PATH_MAX];
    pathf(d, "%s/outs", f->tmp);
    assert_int_equal(tq_launch_has_checkpoint(d), 0); /* no directory yet */
    mkdir_ok(d);
    pathf(p, "%s/checkpoint-", d); /* no step */
    mkdir_ok(p);
    pathf(p, "%s/checkpoint-9.txt", d); /* a file */
    write_bytes(p, 1);
    pathf(p, "%s/checkpoint-7", d); /* a link */
    assert_int_equal(symlink(f->root, p), 0);
    assert_int_equal(tq_launch_has_checkpoint(d), 0);
    pathf(p, "%s/job-step00000200-state", d);
    mkdir_ok(p);
    assert_int_equal(tq_launch_has_checkpoint(d), 1);
    assert_int_equal(rmdir(p), 0);
    pathf(p, "%s/checkpoint-500", d);
    mkdir_ok(p);
    assert_int_equal(tq_launch_has_checkpoint(d), 1);
}

static void prepare_with_resume_asks_for_the_latest_checkpoint(void **state)
{
    fs_fixture *f = *state;
    tq_config cfg;
    char data[PATH_MAX], hf[PATH_MAX];
    test_config(f, &cfg, data, hf);
    tq_submission job = make_job("lora");
    tq_launch_paths paths;
    tq_errbuf eb = {{0}};
    for (int resume = 0; resume < 2; resume++) {
        assert_int_equal(tq_launch_prepare(&cfg, &job, JOB_ID, "a", resume, &paths, &eb), TQ_OK);
        json_error_t err;
        json_t *c = json_load_file(paths.config_file, 0, &err);
        assert_non_null(c);
        json_t *r = json_object_get(c, "resume_from_checkpoint");
        if (resume)
            assert_string_equal(json_string_value(r), "latest");
        else
            assert_null(r);
        json_decref(c);
    }
    tq_submission_free(&job);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(config_json_of_a_lora_job_has_the_diffusers_arguments),
        cmocka_unit_test(config_json_of_a_dreambooth_job_names_the_instance_data_dir),
        cmocka_unit_test(config_json_is_the_same_bytes_for_the_same_job),
        cmocka_unit_test(config_json_fills_defaults_and_refuses_a_job_without_type),
        cmocka_unit_test_setup_teardown(dataset_paths_are_confined_to_the_datasets_root, fs_setup,
                                        fs_teardown),
        cmocka_unit_test_setup_teardown(prepare_writes_config_json_and_creates_the_directories,
                                        fs_setup, fs_teardown),
        cmocka_unit_test_setup_teardown(prepare_refuses_bad_input_before_writing_anything, fs_setup,
                                        fs_teardown),
        cmocka_unit_test_setup_teardown(preflight_wants_a_readable_image_under_the_size_limit,
                                        fs_setup, fs_teardown),
        cmocka_unit_test_setup_teardown(checkpoints_are_checkpoint_or_state_directories, fs_setup,
                                        fs_teardown),
        cmocka_unit_test_setup_teardown(prepare_with_resume_asks_for_the_latest_checkpoint,
                                        fs_setup, fs_teardown),
        cmocka_unit_test(models_cache_is_mounted_read_only_when_configured),
        cmocka_unit_test(training_cmd_is_split_on_spaces_without_a_shell),
        cmocka_unit_test(metrics_render_counters_and_gauges_with_help_and_type),
        cmocka_unit_test(metrics_dispatch_histogram_is_cumulative_with_count_and_sum),
        cmocka_unit_test(metrics_server_serves_metrics_and_healthz_on_a_free_port),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
