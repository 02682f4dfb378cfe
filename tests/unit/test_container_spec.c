/* What a job's training container looks like (consumer/container_spec: tq_job_container_build). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "container_spec.h"

#define JOB "123e4567-e89b-12d3-a456-426614174000"

static tq_config config(void)
{
    tq_config c;
    memset(&c, 0, sizeof c);
    c.training_image = "trainer:1";
    c.training_cmd = "  python  train.py --config /workspace/config.json ";
    c.slots = 2;
    c.memory_bytes = 1LL << 30;
    c.shm_bytes = 1LL << 26;
    c.cpus = 1.5;
    c.pids_limit = 512;
    return c;
}

static const tq_job_container_in IN = {.job_id = JOB,
                                       .user_id = "alice",
                                       .worker_id = "gpu-host-1",
                                       .slot = 1,
                                       .dataset = "/data/ds/a",
                                       .outputs = "/data/out/" JOB,
                                       .models = "/data/hf",
                                       .config_file = "/data/configs/" JOB ".json"};

static const char *label(const tq_container_spec *s, const char *key)
{
    for (size_t i = 0; i < s->n_labels; i++)
        if (strcmp(s->labels[i].key, key) == 0)
            return s->labels[i].value;
    return NULL;
}

static void test_job_container_is_named_labelled_and_confined(void **state)
{
    (void)state;
    tq_config cfg = config();
    tq_job_container jc;
    tq_errbuf eb = {{0}};
    assert_int_equal(tq_job_container_build(&jc, &cfg, &IN, &eb), TQ_OK);
    const tq_container_spec *s = &jc.spec;
    assert_string_equal(s->name, "training-" JOB);
    assert_string_equal(s->image, "trainer:1");
    assert_int_equal(s->n_cmd, 4);
    assert_string_equal(s->cmd[0], "python");
    assert_string_equal(s->cmd[3], "/workspace/config.json");
    assert_string_equal(label(s, "trainq.job"), JOB);
    assert_string_equal(label(s, "trainq.user"), "alice");
    assert_string_equal(label(s, "trainq.worker"), "gpu-host-1");
    assert_string_equal(label(s, "trainq.slot"), "1");
    assert_string_equal(label(s, "trainq.managed"), "true");
    assert_int_equal(s->n_env, 3);
    assert_string_equal(s->env[0], "TRAINQ_JOB_ID=" JOB);
    assert_string_equal(s->env[1], "TRAINQ_CONFIG=/workspace/config.json");
    assert_string_equal(s->env[2], "HF_HOME=/workspace/models");
    char user[TQ_CONTAINER_USER_BUF];
    snprintf(user, sizeof user, "%u:%u", (unsigned)getuid(), (unsigned)getgid());
    assert_string_equal(s->user, user);
    assert_string_equal(s->network_mode, "none");
    assert_int_equal(s->memory_bytes, 1LL << 30);
    assert_int_equal(s->shm_bytes, 1LL << 26);
    assert_int_equal(s->nano_cpus, 1500000000LL);
    assert_int_equal(s->pids_limit, 512);
    assert_int_equal(s->gpu_mode, TQ_GPUS_CFG_NONE);
    assert_null(s->gpu_ids);
    /* the spec passes the checks every create runs */
    assert_int_equal(tq_container_spec_check(s, "/run/docker.sock", &eb), TQ_OK);
}

static void test_job_container_mounts_follow_the_layout(void **state)
{
    (void)state;
    tq_config cfg = config();
    tq_job_container jc;
    tq_errbuf eb = {{0}};
    assert_int_equal(tq_job_container_build(&jc, &cfg, &IN, &eb), TQ_OK);
    const tq_container_spec *s = &jc.spec;
    assert_int_equal(s->n_mounts, TQ_CONTAINER_N_MOUNTS);
    const struct {
        const char *source, *target;
        int read_only;
    } want[] = {{IN.dataset, TQ_CONTAINER_DATASETS_TARGET, 1},
                {IN.outputs, TQ_CONTAINER_OUTPUTS_TARGET, 0},
                {IN.models, TQ_CONTAINER_MODELS_TARGET, 0},
                {IN.config_file, TQ_CONTAINER_CONFIG_TARGET, 1}};
    for (size_t i = 0; i < TQ_CONTAINER_N_MOUNTS; i++) {
        assert_string_equal(s->mounts[i].source, want[i].source);
        assert_string_equal(s->mounts[i].target, want[i].target);
        assert_int_equal(s->mounts[i].read_only, want[i].read_only);
    }
    cfg.models_read_only = 1;
    assert_int_equal(tq_job_container_build(&jc, &cfg, &IN, &eb), TQ_OK);
    assert_int_equal(jc.spec.mounts[2].read_only, 1);
}

static void test_job_container_gpus_follow_the_configuration(void **state)
{
    (void)state;
    tq_config cfg = config();
    tq_job_container jc;
    tq_errbuf eb = {{0}};
    cfg.gpus_mode = TQ_GPUS_CFG_ALL;
    assert_int_equal(tq_job_container_build(&jc, &cfg, &IN, &eb), TQ_OK);
    assert_int_equal(jc.spec.gpu_mode, TQ_GPUS_CFG_ALL);
    assert_null(jc.spec.gpu_ids);

    cfg.gpus_mode = TQ_GPUS_CFG_IDS;
    cfg.gpus = "3,7";
    assert_int_equal(tq_job_container_build(&jc, &cfg, &IN, &eb), TQ_OK);
    assert_int_equal(jc.spec.gpu_mode, TQ_GPUS_CFG_IDS);
    assert_string_equal(jc.spec.gpu_ids, "7"); /* slot 1 */
    char *body = tq_docker_create_body(&jc.spec);
    assert_non_null(body);
    assert_non_null(strstr(body, "\"DeviceIDs\":[\"7\"]"));
    free(body);

    tq_job_container_in nine = IN;
    nine.slot = 9;
    assert_int_equal(tq_job_container_build(&jc, &cfg, &nine, &eb), TQ_ERR_INVALID);
    assert_string_equal(eb.msg, "cannot launch job " JOB ": slot 9 has no gpu");
}

static void test_job_container_refuses_an_unusable_training_command(void **state)
{
    (void)state;
    tq_config cfg = config();
    tq_job_container jc;
    tq_errbuf eb = {{0}};
    cfg.training_cmd = "   ";
    assert_int_equal(tq_job_container_build(&jc, &cfg, &IN, &eb), TQ_ERR_INVALID);
    assert_string_equal(eb.msg, "invalid training command: empty");
    static char many[TQ_CONTAINER_MAX_ARGS * 2 + 3];
    for (size_t i = 0; i < TQ_CONTAINER_MAX_ARGS + 1; i++)
        memcpy(many + 2 * i, "a ", 2);
    cfg.training_cmd = many;
    assert_int_equal(tq_job_container_build(&jc, &cfg, &IN, &eb), TQ_ERR_INVALID);
    assert_non_null(strstr(eb.msg, "more than 32 words"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_job_container_is_named_labelled_and_confined),
        cmocka_unit_test(test_job_container_mounts_follow_the_layout),
        cmocka_unit_test(test_job_container_gpus_follow_the_configuration),
        cmocka_unit_test(test_job_container_refuses_an_unusable_training_command),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
