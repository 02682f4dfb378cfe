/*
 * The environment of the option tests (test_coptions.c, test_poptions.c): every TRAINQ_*
 * variable they touch is cleared before each test and the required ones set, so no test
 * sees another's settings or the caller's.
 */
#ifndef TQ_TEST_OPTIONS_ENV_H
#define TQ_TEST_OPTIONS_ENV_H

#include <stdlib.h>

static const char *const all_vars[] = {
    "TRAINQ_DATABASE_URL",
    "TRAINQ_AMQP_URL",
    "TRAINQ_HTTP_ADDR",
    "TRAINQ_JWT_SECRET",
    "TRAINQ_JWT_ALG",
    "TRAINQ_JWT_PUBLIC_KEY_FILE",
    "TRAINQ_GPUS",
    "TRAINQ_SLOTS",
    "TRAINQ_HEARTBEAT_SECONDS",
    "TRAINQ_LEASE_SECONDS",
    "TRAINQ_WORKER_ID",
    "TRAINQ_MEMORY_LIMIT",
    "TRAINQ_DOCKER_HOST",
    "TRAINQ_LOG_LEVEL",
    "TRAINQ_REMOVE_CONTAINERS",
    "TRAINQ_CPUS",
    "TRAINQ_DATA_DIR",
    "TRAINQ_MAX_BODY_BYTES",
    "TRAINQ_HTTP_THREADS",
    "TRAINQ_METRICS_ADDR",
    "TRAINQ_JWT_AUDIENCE",
    "TRAINQ_MODELS_READ_ONLY",
    "TRAINQ_PUBLISH_KEYS",
    "TRAINQ_PUBLISH_KEYS_FILE",
    "TRAINQ_HTTP_TRUSTED_PROXIES",
    "TRAINQ_CORS_ORIGINS",
    "TRAINQ_TRAINING_IMAGE",
    "TRAINQ_RETRY_POLICY",
    "TRAINQ_WEBHOOK_USER_CONCURRENCY",
};

static int reset_env(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof all_vars / sizeof all_vars[0]; i++)
        unsetenv(all_vars[i]);
    setenv("TRAINQ_DATABASE_URL", "postgresql://u:p@127.0.0.1:5432/db", 1);
    setenv("TRAINQ_AMQP_URL", "amqp://u:p@127.0.0.1:5672/%2f", 1);
    setenv("TRAINQ_JWT_SECRET", "0123456789abcdef-secret", 1);
    setenv("TRAINQ_WORKER_ID", "w1", 1);
    return 0;
}

typedef struct {
    const char *var, *value; /* set before loading */
    const char *expect;      /* substring of the one error line */
} bad_case;

static const char SECRET_A[] = "0123456789abcdef0123456789abcdef"; /* 32 bytes */
static const char SECRET_B[] = "fedcba9876543210fedcba9876543210-b";

#endif
