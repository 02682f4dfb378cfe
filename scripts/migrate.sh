#!/usr/bin/env bash
# Applies db/migrations/NNNN_*.sql in order, each exactly once, to $TRAINQ_DATABASE_URL.
#
# What must stay true:
#  - A migration and its schema_migrations row commit in one transaction, so a failure leaves
#    neither (migration files therefore must not contain BEGIN/COMMIT themselves).
#  - Safe to run concurrently (every producer/consumer start may call it): one psql session
#    holds pg_advisory_lock(MIGRATE_LOCK_KEY) for the whole run and decides what is pending
#    only after taking the lock.
#  - Safe to run twice: applied versions are skipped.
#  - Stored functions and triggers live in db/procedures/*.sql, reloaded (in name order, in one
#    transaction, after the migrations) on EVERY run, so the code a reader finds there is the
#    code that runs. Each procedures file must therefore be idempotent: CREATE OR REPLACE
#    FUNCTION, DROP TRIGGER IF EXISTS before CREATE TRIGGER, DROP FUNCTION IF EXISTS when a
#    signature changes. Numbered migrations hold tables, columns, indexes and data changes.
# Version = file name without ".sql" (e.g. 0001_init). TRAINQ_MIGRATIONS_DIR and
# TRAINQ_PROCEDURES_DIR override the directories (tests).
set -euo pipefail

case "${1:-}" in
  '') ;;
  -h | --help)
    echo "usage: TRAINQ_DATABASE_URL=postgresql://... scripts/migrate.sh"
    echo "Applies db/migrations once each, then reloads db/procedures (see the header of this file)."
    exit 0 ;;
  *) echo "migrate: unknown argument \"$1\" (it takes none; see --help)" >&2; exit 2 ;;
esac

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${TRAINQ_MIGRATIONS_DIR:-$REPO/db/migrations}
PROC_DIR=${TRAINQ_PROCEDURES_DIR:-$REPO/db/procedures}
URL=${TRAINQ_DATABASE_URL:?migrate: TRAINQ_DATABASE_URL is not set}
# Fixed key shared by every trainq program that migrates; do not change.
MIGRATE_LOCK_KEY=7421003
PSQL=${TRAINQ_PSQL:-psql}

die() { echo "migrate: $*" >&2; exit 1; }

[[ -d "$DIR" ]] || die "migrations directory $DIR does not exist"
DIR=$(cd "$DIR" && pwd)

mapfile -t files < <(find "$DIR" -maxdepth 1 -type f -name '[0-9][0-9][0-9][0-9]_*.sql' \
  -printf '%f\n' | LC_ALL=C sort)

declare -A seen=()
for f in "${files[@]}"; do
  num=${f%%_*}
  [[ -z "${seen[$num]:-}" ]] || die "two migrations share number $num: ${seen[$num]} and $f"
  seen[$num]=$f
  [[ "$f" =~ ^[0-9]{4}_[A-Za-z0-9_.-]+\.sql$ ]] || die "bad migration file name \"$f\""
  if grep -Eiq '^[[:space:]]*(BEGIN|COMMIT|ROLLBACK|START[[:space:]]+TRANSACTION)[[:space:]]*;' "$DIR/$f"; then
    die "$f contains transaction control; migrate.sh wraps each file in its own transaction"
  fi
done

procs=()
if [[ -d "$PROC_DIR" ]]; then
  PROC_DIR=$(cd "$PROC_DIR" && pwd)
  mapfile -t procs < <(find "$PROC_DIR" -maxdepth 1 -type f -name '*.sql' -printf '%f\n' | LC_ALL=C sort)
fi
for f in "${procs[@]}"; do
  [[ "$f" =~ ^[A-Za-z0-9_.-]+\.sql$ ]] || die "bad procedures file name \"$f\""
  if grep -Eiq '^[[:space:]]*(BEGIN|COMMIT|ROLLBACK|START[[:space:]]+TRANSACTION)[[:space:]]*;' "$PROC_DIR/$f"; then
    die "$f contains transaction control; migrate.sh loads the procedures in one transaction"
  fi
done

script=$(mktemp)
trap 'rm -f "$script"' EXIT

{
  echo '\set ON_ERROR_STOP 1'
  echo 'SET client_min_messages = warning;'
  echo "SELECT pg_advisory_lock($MIGRATE_LOCK_KEY);"
  echo 'CREATE TABLE IF NOT EXISTS schema_migrations ('
  echo '  version    text PRIMARY KEY,'
  echo '  applied_at timestamptz NOT NULL DEFAULT now()'
  echo ');'
  for f in "${files[@]}"; do
    v=${f%.sql}
    # Names are validated above: no quotes can reach the generated SQL.
    echo "SELECT NOT EXISTS (SELECT 1 FROM schema_migrations WHERE version = '$v') AS tq_pending \\gset"
    echo '\if :tq_pending'
    echo 'BEGIN;'
    echo "\\i '$DIR/$f'"
    echo "INSERT INTO schema_migrations (version, applied_at) VALUES ('$v', now());"
    echo 'COMMIT;'
    echo "\\echo migrate: applied $v"
    echo '\endif'
  done
  if ((${#procs[@]} > 0)); then
    echo 'BEGIN;'
    for f in "${procs[@]}"; do
      echo "\\i '$PROC_DIR/$f'"
    done
    echo 'COMMIT;'
    echo "\\echo migrate: reloaded ${#procs[@]} procedures files"
  fi
  echo "SELECT pg_advisory_unlock($MIGRATE_LOCK_KEY);"
} >"$script"

"$PSQL" -X -q -At -v ON_ERROR_STOP=1 -d "$URL" -f "$script" >"$script.out" 2>&1 || {
  rc=$?
  grep -v '^[tf]$' "$script.out" >&2 || true
  rm -f "$script.out"
  die "failed (psql exit $rc); nothing of the failing migration was kept"
}
grep '^migrate: ' "$script.out" || true
rm -f "$script.out"
echo "migrate: schema up to date (${#files[@]} migrations in $DIR)"
