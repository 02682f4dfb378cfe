#!/bin/bash
# Postgres for the Compose stack: initdb on first start (role and database trainq), then
# `exec postgres` as PID 1 so `docker stop` is a fast shutdown.
#   TRAINQ_PG_PORT (5432), TRAINQ_PG_LISTEN (127.0.0.1: host networking must not expose the
#   database beyond loopback unless asked), TRAINQ_DB_PASSWORD (trainq).
# Same authentication as scripts/services.sh: trust only for the superuser on the unix socket,
# scram-sha-256 for everyone else.
set -euo pipefail
PORT=${TRAINQ_PG_PORT:-5432}
LISTEN=${TRAINQ_PG_LISTEN:-127.0.0.1}
PASSWORD=${TRAINQ_DB_PASSWORD:-trainq}
[[ $PORT =~ ^[0-9]{1,5}$ ]] || { echo "postgres-entrypoint: invalid TRAINQ_PG_PORT \"$PORT\"" >&2; exit 2; }
SOCK=/tmp
if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
  initdb -D "$PGDATA" -U postgres -E UTF8 --no-locale --auth-local=trust \
    --auth-host=scram-sha-256 >/dev/null
  cat >"$PGDATA/pg_hba.conf" <<'HBA'
local   all       postgres                 trust
local   all       all                      scram-sha-256
host    all       all       127.0.0.1/32   scram-sha-256
HBA
  echo "include_if_exists = '/etc/trainq/postgresql.conf'" >>"$PGDATA/postgresql.conf"
  pg_ctl -D "$PGDATA" -s -w -o "-c listen_addresses='' -c unix_socket_directories=$SOCK -c port=$PORT" start
  # The password travels as a psql variable, quoted by psql (:'pw'), never spliced into SQL.
  psql -X -q -h "$SOCK" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -v pw="$PASSWORD" <<'SQL'
CREATE ROLE trainq LOGIN PASSWORD :'pw';
CREATE DATABASE trainq OWNER trainq;
SQL
  pg_ctl -D "$PGDATA" -s -w -m fast stop
fi
# jit=off: the image has no JIT provider (postgres.Dockerfile).
exec postgres -D "$PGDATA" -c port="$PORT" -c listen_addresses="$LISTEN" \
  -c unix_socket_directories="$SOCK" -c jit=off
