/*
 * tq_program — the start of both programs' main().
 */
#ifndef TQ_PROGRAM_H
#define TQ_PROGRAM_H

#include <signal.h>

#include "tq_config.h"

/* Loads cfg with the program's options t (printing --help/--version, or the one error line
 * "NAME: invalid TRAINQ_X ..." to stderr), starts logging at its TRAINQ_LOG_LEVEL, blocks
 * SIGTERM and SIGINT in this thread and every thread started after it — the caller
 * sigwait()s on *sigs — and ignores SIGPIPE (peers that go away are seen as write errors).
 * Returns TQ_OK to go on; anything else means cfg is already freed and main returns
 * tq_program_exit_code(rc). */
int tq_program_start(const tq_options *t, void *cfg, const char *name, int argc, char **argv,
                     sigset_t *sigs);

/* The exit code for what tq_program_start returned: 0 after --help/--version
 * (TQ_ERR_EXIT_OK), 2 for a configuration that cannot be used. */
int tq_program_exit_code(int rc);

#endif
