#!/usr/bin/env bash
# trainq benchmarks, each next to its floor in the same run (docs/performance.md).
#
#   scripts/bench.sh [--quick] [--keep] [--only=ROWS] [--memory] [--big] [--many]   (ROWS: e.g. 1,8)
#
#   1. starts its own Postgres/RabbitMQ/dockerd (scripts/services.sh) in its own state dir
#      and on its own ports, so it never meets a test run's services
#   2. builds the release build build-bench/ (-DCMAKE_BUILD_TYPE=Release): producer,
#      consumer and tests/bench's bench-fixed200
#   3. migrates, builds the fake trainer image, runs tests/bench/bench.py
#   4. prints one markdown table (also written to build-bench/bench.md, raw figures in
#      build-bench/bench.json) and brings the services down (unless --keep)
#
# --memory runs tests/bench/memory.py instead of bench.py: peak memory of producer and
# consumer under 5 000 open connections, 1 000 requests in flight and an outbox backlog of up
# to 1 GB (bounded: about 10 minutes; table in build-bench/memory.md).
# --big adds row 11 (opt-in, several minutes more): submit, GET /jobs/{id}, the list's first
# and 100th page of a user with 50 000 jobs, claim and release transactions, on the database
# as it is and again with 1 M jobs / 5 M audit rows in it (`--big --only=11` runs it alone).
# --many adds row 12 (opt-in): a backlog of 1 000 users × 3 jobs and of 10 users × 300 drained
# by 20 consumers × 2 slots (0.2 s jobs), each for its first 90 s: jobs done, jobs/s, idle
# slot-seconds, the mean time of a pick.
# Row 14 (default): row 5's drain with mixed low/normal/high backlogs: idle slots, inversions.
# --quick runs a seconds-long version of every row (CI smoke). The script reports numbers; it
# fails only when the machinery breaks (build, services, a program or tool that errors).
#
# Environment (all optional):
#   TRAINQ_BENCH_STATE_DIR (default /tmp/bench-state)   TRAINQ_BENCH_PG_PORT (43432)
#   TRAINQ_BENCH_AMQP_PORT (43672)  TRAINQ_BENCH_DIST_PORT (43674)  TRAINQ_BENCH_EPMD_PORT (43675)
#   TRAINQ_BENCH_NODENAME (bench@localhost)  TRAINQ_BENCH_DURATION (15, seconds per wrk/pgbench)
#   TRAINQ_BENCH_CONNECTIONS (64)  TRAINQ_BENCH_HTTP_THREADS (4)  TRAINQ_BUILD_JOBS (nproc)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

quick=()
only=()
keep=0
memory=0
big=()
many=()
for a in "$@"; do
  case "$a" in
    --quick) quick=(--quick) ;;
    --keep) keep=1 ;;
    --only=*) only=(--only "${a#--only=}") ;;
    --memory) memory=1 ;;
    --big) big=(--big) ;;
    --many) many=(--many) ;;
    -h | --help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench.sh: unknown option $a (--quick, --keep, --only=ROWS, --memory, --big, --many)" >&2; exit 2 ;;
  esac
done

die() { echo "bench.sh: $*" >&2; exit 1; }

# Our own services, never the defaults of tests/CI (25xxx) or whatever the caller exported.
export TRAINQ_STATE_DIR=${TRAINQ_BENCH_STATE_DIR:-/tmp/bench-state}
export TRAINQ_PG_PORT=${TRAINQ_BENCH_PG_PORT:-43432}
export TRAINQ_AMQP_PORT=${TRAINQ_BENCH_AMQP_PORT:-43672}
export TRAINQ_RABBITMQ_DIST_PORT=${TRAINQ_BENCH_DIST_PORT:-43674}
export TRAINQ_EPMD_PORT=${TRAINQ_BENCH_EPMD_PORT:-43675}
export TRAINQ_RABBITMQ_NODENAME=${TRAINQ_BENCH_NODENAME:-bench@localhost}
unset TRAINQ_DATABASE_URL TRAINQ_AMQP_URL TRAINQ_DOCKER_HOST TRAINQ_TRAINING_IMAGE
BUILD="$REPO/build-bench"
JOBS=${TRAINQ_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}
mkdir -p "$TRAINQ_STATE_DIR"

for tool in wrk pgbench psql cmake curl; do
  command -v "$tool" >/dev/null || die "$tool not found (scripts/install-deps.sh installs it)"
done
/usr/bin/python3 -c 'import jwt, pika, celery' 2>/dev/null \
  || die "python3-jwt, python3-pika and python3-celery are needed (scripts/install-deps.sh)"

finish() {
  local rc=$?
  if ((keep == 0)); then
    bash "$REPO/scripts/services.sh" down >/dev/null 2>&1 || echo "bench.sh: services.sh down failed" >&2
  else
    echo "bench.sh: services left running in $TRAINQ_STATE_DIR (--keep)" >&2
  fi
  exit $rc
}
trap finish EXIT
trap 'exit 130' INT TERM

echo "bench.sh: building $BUILD (Release)" >&2
cmake -S "$REPO" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >"$TRAINQ_STATE_DIR/cmake.log" 2>&1 \
  || die "cmake configure failed, see $TRAINQ_STATE_DIR/cmake.log"
cmake --build "$BUILD" -j"$JOBS" --target trainq-producer trainq-consumer bench-fixed200 bench-progress \
  >"$TRAINQ_STATE_DIR/build.log" 2>&1 || die "build failed, see $TRAINQ_STATE_DIR/build.log"

echo "bench.sh: starting services in $TRAINQ_STATE_DIR" >&2
bash "$REPO/scripts/services.sh" up
eval "$(bash "$REPO/scripts/services.sh" env)"
bash "$REPO/scripts/migrate.sh" >/dev/null
bash "$REPO/scripts/build-trainer-image.sh"
export TRAINQ_TRAINING_IMAGE=trainq-fake-trainer:latest

if ((memory)); then
  /usr/bin/python3 "$REPO/tests/bench/memory.py" "${quick[@]}" --bin-dir "$BUILD" \
    --out "$BUILD/memory.md" --work-dir "$TRAINQ_STATE_DIR/memory" \
    || die "the memory bench broke (machinery, not numbers); logs under $TRAINQ_STATE_DIR/memory"
  echo "bench.sh: table written to $BUILD/memory.md" >&2
  exit 0
fi
/usr/bin/python3 "$REPO/tests/bench/bench.py" "${quick[@]}" "${only[@]}" "${big[@]}" "${many[@]}" --bin-dir "$BUILD" \
  --out "$BUILD/bench.md" --work-dir "$TRAINQ_STATE_DIR/bench" \
  --duration "${TRAINQ_BENCH_DURATION:-15}" --connections "${TRAINQ_BENCH_CONNECTIONS:-64}" \
  --http-threads "${TRAINQ_BENCH_HTTP_THREADS:-4}" \
  || die "the bench broke (machinery, not numbers); logs under $TRAINQ_STATE_DIR/bench"
echo "bench.sh: table written to $BUILD/bench.md" >&2
