#!/usr/bin/env bash
# Prints docs/configuration.md from the binaries' own option tables (--config-markdown:
# producer/poptions.c, consumer/coptions.c), so the documentation is the code's.
# `tests/CMakeLists.txt` runs it with --check to fail when the committed file differs.
#   Usage: gen-config-doc.sh BUILD_DIR [--check]
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${1:?usage: gen-config-doc.sh BUILD_DIR [--check]}
gen() {
  cat <<'HEAD'
# Configuration

Every option of both programs is an environment variable and the matching command-line flag
(`--flag=value` or `--flag value`; the flag wins). A bad value stops the program at start with
one line naming the variable, the value and what was expected, and exit code 2:

    $ TRAINQ_HTTP_THREADS=0 trainq-producer
    trainq-producer: invalid TRAINQ_HTTP_THREADS "0": expected an integer from 1 to 256

(A required option that is missing is reported first.) A switch (default `true` or `false`
below) takes `true` or `false`, also `1`/`0` and `yes`/`no`. A number is written as it reads:
digits, a leading `-`, and for a fraction one `.` between digits (no blanks, `+`, hex or
exponent).

`--help` prints the same options (without the values column); this file is generated from
the same table by
`scripts/gen-config-doc.sh build > docs/configuration.md` (a test fails when it is stale).

The per-user active-job limit (default 2) lives in Postgres, so that every consumer enforces
the same number: `settings.default_max_active_per_user`, and per user
`user_limits.max_active` (`user_limits.submit_per_min` overrides the submit rate limit).

## trainq-producer

HEAD
  "$BUILD/producer/trainq-producer" --config-markdown
  printf '\n## trainq-consumer\n\n'
  "$BUILD/consumer/trainq-consumer" --config-markdown
}
if [[ "${2:-}" == "--check" ]]; then
  if ! diff -u "$REPO/docs/configuration.md" <(gen); then
    echo "docs/configuration.md is stale: run scripts/gen-config-doc.sh $BUILD > docs/configuration.md" >&2
    exit 1
  fi
  echo "docs/configuration.md matches the option table"
else
  gen
fi
