#!/usr/bin/env bash
# The whole of trainq on one machine, on a demo job:
#   installs what it needs, builds, starts Postgres/RabbitMQ/dockerd (scripts/services.sh),
#   migrates, creates a demo user and dataset, starts a producer and a consumer, submits the
#   original spec's curl example (only the token differs), follows the job to the end and
#   prints its record, its audit trail and its output files.
#
#   scripts/demo.sh [--keep]     --keep leaves the services, producer and consumer running
#
# The producer listens on 127.0.0.1:3000, as in the spec's example (TRAINQ_DEMO_PORT another
# port, for a machine where 3000 is taken); the consumer's metrics on a free port, printed
# at the end. The services' ports: scripts/services.sh.
#
# Without a `training-image` image (or a GPU) on the daemon, the fake trainer image built
# from busybox-static stands in for it: same container contract, no download.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
KEEP=0
[[ "${1:-}" == "--keep" ]] && KEEP=1

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { echo "demo: $*" >&2; exit 1; }

say "installing dependencies (Debian packages)"
bash scripts/install-deps.sh --no-test-tools

say "building"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target trainq-producer trainq-consumer >/dev/null

say "starting Postgres, RabbitMQ and dockerd (state in ${TRAINQ_STATE_DIR:-.state})"
bash scripts/services.sh up
eval "$(bash scripts/services.sh env)"
bash scripts/migrate.sh
bash scripts/build-trainer-image.sh

STATE=$TRAINQ_STATE_DIR
DEMO=$STATE/demo
mkdir -p "$DEMO/datasets/demo-user/my-concept" "$DEMO/data" "$DEMO/hf-cache"
# The fake trainer reads its behaviour from the dataset: a few seconds of "training".
printf 'DURATION=4\nSTEPS=4\nEXIT_CODE=0\nMESSAGE=fake-trainer: LoRA weights written\n' \
  >"$DEMO/datasets/demo-user/my-concept/trainer.env"
printf 'a photo of my-concept\n' >"$DEMO/datasets/demo-user/my-concept/0001.txt"
# The consumer's preflight wants at least one image (a PNG signature is enough for it).
printf '\211PNG\r\n\032\n' >"$DEMO/datasets/demo-user/my-concept/0001.png"

USER_ID=demo-user
DATASET=550e8400-e29b-41d4-a716-446655440000   # the id in the spec's curl example
psql -X -q -d "$TRAINQ_DATABASE_URL" -v ON_ERROR_STOP=1 -v ds="$DATASET" -v u="$USER_ID" <<'SQL'
INSERT INTO datasets (id, user_id, name, storage_path)
VALUES (:'ds', :'u', 'my-concept', 'demo-user/my-concept')
ON CONFLICT (id) DO UPDATE SET user_id = EXCLUDED.user_id, storage_path = EXCLUDED.storage_path;
SQL

if docker -H "$TRAINQ_DOCKER_HOST" image inspect training-image >/dev/null 2>&1; then
  IMAGE=training-image
  CMD="python train_lora.py --config /workspace/config.json"
else
  IMAGE=trainq-fake-trainer:latest
  CMD="--config /workspace/config.json"
fi

SECRET=demo-secret-please-change-0123456789
export TRAINQ_JWT_SECRET=$SECRET
LOGS=$DEMO/logs
mkdir -p "$LOGS"
PIDS=()
cleanup() {
  if [[ $KEEP == 0 ]]; then
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    bash scripts/services.sh down >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

PORT=${TRAINQ_DEMO_PORT:-3000}
[[ $PORT =~ ^[0-9]+$ ]] && ((PORT > 0 && PORT < 65536)) || die "TRAINQ_DEMO_PORT must be a port number"
say "starting trainq-producer on 127.0.0.1:$PORT and trainq-consumer (image $IMAGE)"
TRAINQ_HTTP_ADDR=127.0.0.1:$PORT ./build/producer/trainq-producer </dev/null >/dev/null 2>"$LOGS/producer.log" &
PIDS+=($!)
TRAINQ_WORKER_ID=demo-worker TRAINQ_SLOTS=2 TRAINQ_DATASETS_ROOT="$DEMO/datasets" \
  TRAINQ_DATA_DIR="$DEMO/data" TRAINQ_HF_CACHE_DIR="$DEMO/hf-cache" \
  TRAINQ_TRAINING_IMAGE=$IMAGE TRAINQ_TRAINING_CMD="$CMD" TRAINQ_METRICS_ADDR=127.0.0.1:0 \
  ./build/consumer/trainq-consumer </dev/null >/dev/null 2>"$LOGS/consumer.log" &
PIDS+=($!)
for _ in $(seq 100); do
  curl -fs -m 1 "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  kill -0 "${PIDS[0]}" 2>/dev/null || break # it stopped: the log says why (a taken port, say)
  sleep 0.1
done
# The reason a program stopped: its last error (a log line's msg, or a plain line).
why() { { sed -n 's/.*"level":"error".*"msg":"\([^"]*\)".*/\1/p' "$1"; grep -v '^{' "$1"; } | tail -1; }
curl -fs -m 1 "http://127.0.0.1:$PORT/readyz" >/dev/null ||
  die "producer not ready: $(why "$LOGS/producer.log") (log: $LOGS/producer.log)"

# A token as the web app's auth provider (Supabase-style HS256) would issue it.
TOKEN=$(/usr/bin/python3 -c 'import jwt, sys, time
print(jwt.encode({"sub": sys.argv[1], "exp": int(time.time()) + 3600, "aud": "authenticated"},
                 sys.argv[2], algorithm="HS256"))' "$USER_ID" "$SECRET")

say "submitting the spec's curl example"
set -x
curl -X POST "http://localhost:$PORT/api/training/submit" \
  -H "Content-Type: application/json" \
  -H "Authorization: Bearer $TOKEN" \
  -d '{
    "dataset_id": "550e8400-e29b-41d4-a716-446655440000",
    "name": "My SDXL LoRA",
    "type": "lora",
    "base_model": "stabilityai/sdxl-base-1.0",
    "config": {
      "learning_rate": 0.0001,
      "batch_size": 2,
      "steps": 1000,
      "resolution": 512,
      "lora_rank": 16,
      "lora_alpha": 32
    },
    "trigger_words": ["my-concept"]
  }' -s -o "$DEMO/submit.json" -w '%{http_code}\n'
{ set +x; } 2>/dev/null
cat "$DEMO/submit.json"; echo
JOB=$(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["job_id"])' "$DEMO/submit.json")

say "following job $JOB"
STATUS=""
for _ in $(seq 600); do
  STATUS=$(curl -fs -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PORT/api/training/jobs/$JOB" \
    | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["job"]["status"])')
  printf '\r  status: %-10s' "$STATUS"
  case $STATUS in completed|failed|cancelled) break ;; esac
  sleep 0.5
done
echo

say "job record (GET /api/training/jobs/$JOB)"
curl -fs -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PORT/api/training/jobs/$JOB" \
  | /usr/bin/python3 -m json.tool
say "audit trail (GET /api/training/jobs/$JOB/events)"
curl -fs -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PORT/api/training/jobs/$JOB/events" \
  | /usr/bin/python3 -c 'import json,sys
for e in json.load(sys.stdin)["events"]:
    print("  %s  %9s -> %-10s %s" % (e["at"], e["from_status"] or "-", e["to_status"], e["reason"] or ""))'
say "output files ($DEMO/data/outputs/$JOB)"
ls -l "$DEMO/data/outputs/$JOB"
say "generated config.json"
cat "$DEMO/data/configs/$JOB.json"

[[ $STATUS == completed ]] || die "job ended $STATUS (logs in $LOGS)"
say "demo job completed"
if [[ $KEEP == 1 ]]; then
  MPORT=$(grep -o '"metrics_port":[0-9]*' "$LOGS/consumer.log" | head -1 | cut -d: -f2)
  echo "producer on http://127.0.0.1:$PORT, consumer metrics on http://127.0.0.1:${MPORT:-?}/metrics"
  echo "stop with: kill ${PIDS[*]}; TRAINQ_STATE_DIR=$STATE scripts/services.sh down"
  trap - EXIT
fi
