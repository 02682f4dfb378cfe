/*
 * tq_program — the start of both programs' main().
 */
#ifndef TQ_PROGRAM_H
#define TQ_PROGRAM_H

#include <signal.h>

#include "tq_config.h"

/* Loads the configuration of `prog` (printing --help/--version, or the one error line
 * "NAME: invalid TRAINQ_X ..." to stderr), starts logging at the configured level, blocks
 * SIGTERM and SIGINT in this thread and every thread started after it — the caller
 * sigwait()s on *sigs — and ignores SIGPIPE (peers that go away are seen as write errors).
 * Returns -1 to go on, else the exit code: 0 after --help/--version, 2 for a bad
 * configuration (c is then already freed). */
int tq_program_start(tq_config *c, unsigned prog, const char *name, int argc, char **argv,
                     sigset_t *sigs);

#endif
