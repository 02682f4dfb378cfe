#include "tq_program.h"

#include <pthread.h>
#include <stdio.h>

#include "tq_log.h"

int tq_program_start(tq_config *c, unsigned prog, const char *name, int argc, char **argv,
                     sigset_t *sigs)
{
    tq_errbuf eb = {{0}};
    int rc = tq_config_load(c, prog, argc, argv, &eb);
    if (rc != TQ_OK) {
        if (rc != TQ_CONFIG_EXIT)
            fprintf(stderr, "%s: %s\n", name, eb.msg);
        tq_config_free(c);
        return rc == TQ_CONFIG_EXIT ? 0 : 2;
    }
    int lvl = tq_log_level_parse(c->log_level);
    tq_log_init(name, lvl < 0 ? TQ_LOG_INFO : (tq_log_level)lvl);

    sigemptyset(sigs);
    sigaddset(sigs, SIGTERM);
    sigaddset(sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    return -1;
}
