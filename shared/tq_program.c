#include "tq_program.h"

#include <pthread.h>
#include <stdio.h>

#include "tq_log.h"

int tq_program_start(const tq_options *t, void *cfg, const char *name, int argc, char **argv,
                     sigset_t *sigs)
{
    tq_errbuf eb = {{0}};
    int rc = tq_config_load(t, cfg, argc, argv, &eb);
    if (rc != TQ_OK) {
        if (rc != TQ_ERR_EXIT_OK)
            fprintf(stderr, "%s: %s\n", name, eb.msg[0] ? eb.msg : tq_strerror(rc));
        tq_config_free(t, cfg);
        return rc;
    }
    const char *level = tq_config_str(t, cfg, "TRAINQ_LOG_LEVEL");
    int lvl = level ? tq_log_level_parse(level) : TQ_LOG_INFO;
    tq_log_init(name, lvl < 0 ? TQ_LOG_INFO : (tq_log_level)lvl);

    sigemptyset(sigs);
    sigaddset(sigs, SIGTERM);
    sigaddset(sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    return TQ_OK;
}

int tq_program_exit_code(int rc)
{
    return rc == TQ_ERR_EXIT_OK ? 0 : 2;
}
