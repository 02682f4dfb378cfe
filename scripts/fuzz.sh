#!/usr/bin/env bash
# Builds the libFuzzer harnesses (tests/fuzz) in build-fuzz/ with clang and runs each one
# for a fixed time. docs/fuzzing.md has the longer story (campaigns, reproducing crashes).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]      default 30
#
# Environment:
#   TRAINQ_FUZZ_TARGETS   space-separated subset (default: all of them)
#   TRAINQ_FUZZ_JOBS      targets run at once (default: number of CPUs, at most 4)
#   TRAINQ_FUZZ_BUILD_DIR build tree (default: build-fuzz)
#   TRAINQ_FUZZ_CORPUS    directory to keep the grown corpora in, one sub-directory per
#                         target (default: a temporary directory, deleted at the end)
#
# Each target starts from a copy of tests/fuzz/corpus/<target>/ (the repo is never
# written), with -timeout=5 -rss_limit_mb=2048. One line per target:
#   fuzz target=fuzz_message runs=123456 seconds=30 result=ok
# result is ok, or crash / leak / timeout / oom / error; then the reproducer (kept under
# build-fuzz/fuzz-artifacts/) and the tail of the log follow. A timeout whose input then
# runs in time on its own is reported as ok with note=timeout-not-reproduced:<file>
# (wall-clock stalls of a loaded machine); that target's run ended early, though. Exit status is non-zero if
# the build failed or any target did not end ok.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECS=${1:-30}
if ! [[ "$SECS" =~ ^[0-9]+$ ]] || ((SECS < 1)); then
  echo "fuzz.sh: SECONDS_PER_TARGET must be a positive integer, got \"$SECS\"" >&2
  exit 2
fi
BUILD=${TRAINQ_FUZZ_BUILD_DIR:-$REPO/build-fuzz}
TARGETS=${TRAINQ_FUZZ_TARGETS:-fuzz_submission fuzz_message fuzz_token fuzz_docker fuzz_progress}
ncpu=$(nproc 2>/dev/null || echo 2)
JOBS=${TRAINQ_FUZZ_JOBS:-$((ncpu < 4 ? ncpu : 4))}
((JOBS >= 1)) || JOBS=1

# Longest input each target generates: a little over the cap each parser enforces, so the
# "too long" paths are reachable without slowing the search down with huge inputs.
max_len() {
  case "$1" in
    fuzz_token) echo 8300 ;;   # TQ_AUTH_TOKEN_MAX 8192 + "Bearer "
    fuzz_docker) echo 12288 ;; # log tail keeps 4096 bytes
    *) echo 8192 ;;
  esac
}

if ! command -v clang >/dev/null 2>&1; then
  echo "fuzz.sh: clang not found (apt-get install clang libclang-rt-14-dev)" >&2
  exit 2
fi

LOGS="$BUILD/fuzz-logs"
ARTIFACTS="$BUILD/fuzz-artifacts"
mkdir -p "$BUILD"
rm -rf "$LOGS"
mkdir -p "$LOGS" "$ARTIFACTS"

echo "==> fuzz: building $BUILD"
# Warnings are errors here too: the tree builds clean with clang as well as gcc.
if ! { cmake -S "$REPO" -B "$BUILD" -DCMAKE_C_COMPILER=clang -DTRAINQ_FUZZ=ON \
  -DTRAINQ_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo &&
  cmake --build "$BUILD" -j "$ncpu" --target fuzz_all; } >"$LOGS/build.log" 2>&1; then
  echo "fuzz.sh: build failed; last lines of $LOGS/build.log:" >&2
  tail -n 40 "$LOGS/build.log" >&2
  exit 1
fi

if [[ -n "${TRAINQ_FUZZ_CORPUS:-}" ]]; then
  WORK=$TRAINQ_FUZZ_CORPUS
  mkdir -p "$WORK"
else
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/trainq-fuzz.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
fi

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
if command -v llvm-symbolizer >/dev/null 2>&1; then
  export ASAN_SYMBOLIZER_PATH=${ASAN_SYMBOLIZER_PATH:-$(command -v llvm-symbolizer)}
fi

run_one() { # target
  local t=$1 bin="$BUILD/tests/fuzz/$1" seeds="$REPO/tests/fuzz/corpus/$1"
  local dict="$REPO/tests/fuzz/dict/$1.dict" args=()
  mkdir -p "$WORK/$t" "$ARTIFACTS/$t"
  if [[ -d "$seeds" ]]; then cp -n "$seeds"/* "$WORK/$t"/ 2>/dev/null; fi
  [[ -f "$dict" ]] && args+=("-dict=$dict")
  local start=$SECONDS
  "$bin" -max_total_time="$SECS" -timeout=5 -rss_limit_mb=2048 -max_len="$(max_len "$t")" \
    -print_final_stats=1 -artifact_prefix="$ARTIFACTS/$t/" "${args[@]}" "$WORK/$t" \
    >"$LOGS/$t.log" 2>&1
  echo "$? $((SECONDS - start))" >"$LOGS/$t.rc"
}

# Runs the targets, JOBS at a time.
running=0
for t in $TARGETS; do
  if [[ ! -x "$BUILD/tests/fuzz/$t" ]]; then
    echo "fuzz.sh: no such target $t" >&2
    echo "2 0" >"$LOGS/$t.rc"
    continue
  fi
  run_one "$t" &
  running=$((running + 1))
  if ((running >= JOBS)); then
    wait -n
    running=$((running - 1))
  fi
done
wait

bad=0
for t in $TARGETS; do
  log="$LOGS/$t.log"
  read -r rc secs <"$LOGS/$t.rc"
  runs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" 2>/dev/null | tail -n1)
  if [[ -z "$runs" ]]; then
    runs=$(grep -oE '^#[0-9]+' "$log" 2>/dev/null | tail -n1 | tr -d '#')
  fi
  artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" 2>/dev/null | tail -n1)
  if ((rc == 0)); then
    result=ok
  else
    bad=$((bad + 1))
    case "$(basename "${artifact:-error}")" in
      crash-*) result=crash ;;
      leak-*) result=leak ;;
      timeout-*) result=timeout ;;
      oom-*) result=oom ;;
      slow-unit-*) result=slow ;;
      *) result=error ;;
    esac
  fi
  note=""
  # libFuzzer's timeout is wall-clock time, so a busy machine (CI, the fault suite) can
  # stall a trivial input past 5 s. Such an input is run once more on its own: if it
  # finishes, the timeout was the machine's, not the code's.
  if [[ "$result" == timeout && -n "$artifact" && -f "$artifact" ]] &&
    "$BUILD/tests/fuzz/$t" -timeout=5 -rss_limit_mb=2048 "$artifact" >"$LOGS/$t.recheck.log" 2>&1; then
    result=ok
    note=" note=timeout-not-reproduced:$artifact"
    bad=$((bad - 1))
  fi
  echo "fuzz target=$t runs=${runs:-0} seconds=$secs result=$result$note"
  if [[ "$result" != ok ]]; then
    [[ -n "$artifact" ]] && echo "  reproducer: $artifact (run: $BUILD/tests/fuzz/$t $artifact)"
    echo "  log: $log; last lines:"
    grep -vE '^(#[0-9]+|INFO:|MS:|base unit:|0x)' "$log" | tail -n 40 | sed 's/^/    /'
  fi
done
exit $((bad > 0 ? 1 : 0))
