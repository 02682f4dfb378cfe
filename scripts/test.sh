#!/usr/bin/env bash
# THE test command for trainq (CI runs it through .ci/run).
#
#   scripts/test.sh [--quick] [--keep] [--faults] [--deploy]
#
#   1. installs missing Debian packages and the npm test tools (scripts/install-deps.sh)
#   2. checks that every C file is as clang-format makes it (scripts/check-format.sh), lints
#      docs/openapi.yaml with Redocly's recommended rules (scripts/lint-openapi.sh); builds
#      build/ (normal) and build-asan/ (-DTRAINQ_SANITIZE=ON)
#   3. unless --quick: starts Postgres, RabbitMQ and dockerd (scripts/services.sh up), applies
#      migrations, builds the fake trainer image
#   4. ctest -L unit in build/; then in build-asan/ the unit and integration tests (only unit
#      tests with --quick) under ASan/UBSan/LSan with the TRAINQ_* environment of `services.sh env`
#   5. unless --quick: a short libFuzzer run of every harness (scripts/fuzz.sh)
#   6. with --faults: the fault suite (tests/faults, label "faults") in build-asan/, which
#      prints one summary line per scenario
#   7. with --deploy: the deployment suite (tests/deploy, label "deploy"): container images
#      (scripts/build-images.sh, cached) and the Compose stack running the seed's curl example
#
# Services are brought down on exit, also on failure or Ctrl-C, unless --keep or
# TRAINQ_KEEP_SERVICES=1. The last line is "trainq: N passed, M failed" (counted from ctest,
# plus one for each lint step; a failed build/setup step counts as one failure). Exit status is
# non-zero if anything failed. A label with no tests is fine.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

quick=0
faults=0
deploy=0
keep=${TRAINQ_KEEP_SERVICES:-0}
for a in "$@"; do
  case "$a" in
    --quick) quick=1 ;;
    --keep) keep=1 ;;
    --faults) faults=1 ;;
    --deploy) deploy=1 ;;
    -h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "test.sh: unknown option $a (--quick, --keep, --faults, --deploy)" >&2; exit 2 ;;
  esac
done

JOBS=${TRAINQ_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}
LOG_DIR="$REPO/build/test-logs"
passed=0
failed=0
services_started=0

finish() {
  local rc=$?
  trap - EXIT INT TERM
  if ((services_started == 1 && keep == 0)); then
    step "stopping services"
    bash "$REPO/scripts/services.sh" down || { echo "test.sh: services.sh down failed" >&2; rc=1; }
  elif ((services_started == 1)); then
    echo "test.sh: services left running (stop them with scripts/services.sh down)"
  fi
  if ((failed > 0 && rc == 0)); then rc=1; fi
  if ((rc != 0 && failed == 0)); then failed=1; fi
  echo
  echo "trainq: $passed passed, $failed failed"
  exit "$rc"
}
trap finish EXIT
trap 'echo "test.sh: interrupted" >&2; exit 130' INT TERM

step() { echo "==> $*"; }

fail_step() { # message [log file]
  echo "test.sh: $1" >&2
  if [[ -n "${2:-}" && -f "$2" ]]; then
    echo "---- last lines of $2 ----" >&2
    tail -n 80 "$2" >&2
  fi
  failed=$((failed + 1))
  exit 1
}

# Adds the counts of one ctest run (its output in $1) to passed/failed.
count_ctest() {
  local line total nfail
  line=$(grep -E '^[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' "$1" | tail -n1)
  if [[ -z "$line" ]]; then
    return 0 # "No tests were found": nothing to add
  fi
  nfail=$(sed -E 's/^[0-9]+% tests passed, ([0-9]+) tests? failed out of ([0-9]+).*/\1/' <<<"$line")
  total=$(sed -E 's/^[0-9]+% tests passed, ([0-9]+) tests? failed out of ([0-9]+).*/\2/' <<<"$line")
  passed=$((passed + total - nfail))
  failed=$((failed + nfail))
}

run_ctest() { # build-dir log-name ctest-args...
  local dir=$1 name=$2 rc
  shift 2
  step "ctest in ${dir#"$REPO"/} $*"
  (cd "$dir" && ctest --output-on-failure --no-tests=ignore "$@") 2>&1 | tee "$LOG_DIR/$name.log"
  rc=${PIPESTATUS[0]}
  count_ctest "$LOG_DIR/$name.log"
  if ((rc != 0)) && ! grep -qE '^[0-9]+% tests passed, [1-9][0-9]* tests? failed' "$LOG_DIR/$name.log"; then
    # ctest failed without a failing test (e.g. it could not run at all).
    failed=$((failed + 1))
  fi
}

build() { # dir cmake-args...
  local dir=$1 name
  shift
  name=$(basename "$dir")
  step "building $name"
  cmake -S "$REPO" -B "$dir" "$@" >"$LOG_DIR/$name-configure.log" 2>&1 \
    || fail_step "cmake configure of $name failed" "$LOG_DIR/$name-configure.log"
  cmake --build "$dir" -j "$JOBS" >"$LOG_DIR/$name-build.log" 2>&1 \
    || fail_step "build of $name failed" "$LOG_DIR/$name-build.log"
}

mkdir -p "$LOG_DIR"

step "checking Debian packages"
bash "$REPO/scripts/install-deps.sh" || fail_step "install-deps.sh failed"

# The code as .clang-format lays it out (scripts/check-format.sh --fix rewrites it).
step "checking the C formatting"
if bash "$REPO/scripts/check-format.sh"; then
  passed=$((passed + 1))
else
  echo "test.sh: C files differ from clang-format (see above)" >&2
  failed=$((failed + 1))
fi

# The API document as client generators read it: any problem, warnings included, fails.
step "linting docs/openapi.yaml"
if bash "$REPO/scripts/lint-openapi.sh"; then
  passed=$((passed + 1))
else
  echo "test.sh: docs/openapi.yaml does not lint clean (see above)" >&2
  failed=$((failed + 1))
fi

build "$REPO/build"
build "$REPO/build-asan" -DTRAINQ_SANITIZE=ON

if ((quick == 0)); then
  step "starting services"
  services_started=1
  bash "$REPO/scripts/services.sh" up || fail_step "services.sh up failed"
  eval "$(bash "$REPO/scripts/services.sh" env)" || fail_step "services.sh env failed"
  step "migrating"
  bash "$REPO/scripts/migrate.sh" || fail_step "migrate.sh failed"
  step "building the fake trainer image"
  bash "$REPO/scripts/build-trainer-image.sh" || fail_step "build-trainer-image.sh failed"
fi

export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1:abort_on_error=0:print_summary=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-print_suppressions=0}

run_ctest "$REPO/build" unit -L unit -j "$JOBS"
if ((quick == 0)); then
  # A short libFuzzer run of every harness (tests/fuzz, docs/fuzzing.md): one line per target.
  step "fuzzing each target for ${TRAINQ_FUZZ_SECONDS:-15} s"
  if bash "$REPO/scripts/fuzz.sh" "${TRAINQ_FUZZ_SECONDS:-15}"; then
    passed=$((passed + 1))
  else
    echo "test.sh: fuzzing found a problem (see above)" >&2
    failed=$((failed + 1))
  fi
fi
if ((quick == 1)); then
  run_ctest "$REPO/build-asan" asan-unit -L unit -j "$JOBS"
else
  run_ctest "$REPO/build-asan" asan-all -L 'unit|integration' -j "$JOBS"
  if ((faults == 1)); then
    # Each scenario appends its summary line here; ctest shows a passing test's output only
    # with -V, so the lines are printed afterwards.
    export TQ_FAULT_SUMMARY="$LOG_DIR/faults-summary.txt"
    rm -f "$TQ_FAULT_SUMMARY"
    run_ctest "$REPO/build-asan" asan-faults -L faults
    step "fault scenarios"
    cat "$TQ_FAULT_SUMMARY" 2>/dev/null || echo "(no fault summary was written)"
  fi
  if ((deploy == 1)); then
    run_ctest "$REPO/build-asan" deploy -L deploy
  fi
fi

((failed == 0))
