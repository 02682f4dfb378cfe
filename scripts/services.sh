#!/usr/bin/env bash
# Runs the real services trainq needs — Postgres 15, RabbitMQ 3.10 and dockerd — as private
# instances on loopback, with all state under $TRAINQ_STATE_DIR (default <repo>/.state).
#
#   services.sh up | down | status | env       (status exits 1 unless all three are up)
#   services.sh up [--rabbitmq-nodes N] [--postgres-standby] [postgres|rabbitmq|docker ...]
#   services.sh start|stop|restart postgres|postgres-standby|rabbitmq|rabbitmq-I|docker
#   services.sh promote-standby | kill postgres    (failover: standby up, primary SIGKILLed)
#   services.sh psql ARGS...          psql as the postgres superuser (unix socket), db trainq
#   services.sh rabbitmqctl ARGS...   rabbitmqctl bound to our node, cookie and epmd
#   services.sh rabbitmqctl-node I ARGS...   the same for node I of a cluster
#   services.sh docker ARGS...        docker CLI on our daemon
#
# Ports (environment-overridable): TRAINQ_PG_PORT=25432, TRAINQ_AMQP_PORT=25672,
# TRAINQ_RABBITMQ_DIST_PORT=25674, TRAINQ_EPMD_PORT=25675; a cluster's node I adds
# (I-1) * TRAINQ_RABBITMQ_PORT_STEP (10) to the AMQP and dist ports; the standby listens on
# TRAINQ_PG_STANDBY_PORT (TRAINQ_PG_PORT + 1).
#
# What must stay true:
#  - `up` is idempotent: a service that already answers is left alone.
#  - `down` stops exactly what was started here, found through pid files under the state dir,
#    and waits until those processes are gone; it works when only some services are up.
#  - Data survives stop/start (fault tests restart services while the system runs).
#  - Daemons never inherit our stdout/stderr or lock fd, so a caller capturing our output
#    (ctest, CI) is not kept waiting for EOF by a daemon.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF="$REPO/scripts/services.sh"
STATE=${TRAINQ_STATE_DIR:-$REPO/.state}
mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd)
STATE_HASH=$(printf '%s' "$STATE" | sha256sum | cut -c1-12)

PG_PORT=${TRAINQ_PG_PORT:-25432}
AMQP_PORT=${TRAINQ_AMQP_PORT:-25672}
DIST_PORT=${TRAINQ_RABBITMQ_DIST_PORT:-25674}
EPMD_PORT=${TRAINQ_EPMD_PORT:-25675}
NODENAME=${TRAINQ_RABBITMQ_NODENAME:-trainq@localhost}
WAIT_SECS=${TRAINQ_SERVICES_TIMEOUT:-60}

PG_BIN=/usr/lib/postgresql/15/bin
RABBIT_BIN=/usr/lib/rabbitmq/bin
if [[ -x /usr/bin/docker ]]; then DOCKER_CLI=/usr/bin/docker; else DOCKER_CLI=docker; fi

die() { echo "services: $*" >&2; exit 1; }
say() { echo "services: $*" >&2; }

# A private directory with a short path, for unix sockets (sun_path is 108 bytes) when the
# state dir's own path is too long. Owned by root, 0755 so the postgres user can traverse it.
short_dir() {
  local d="/run/trainq-$STATE_HASH"
  [[ -w /run ]] || d="/tmp/trainq-$STATE_HASH"
  mkdir -p "$d"
  chmod 0755 "$d"
  printf '%s' "$d"
}

# ---------------------------------------------------------------- Postgres

# initdb/postgres refuse to run as root, so they run as the postgres OS user, which must own
# the data dir and be able to traverse every parent directory. When the state dir is not
# traversable by postgres (e.g. the repo lives under a 0700 home), the Postgres files live in
# /var/tmp/trainq-pg-<hash of state dir> instead and $STATE/postgres is a symlink to it.
pg_setup_paths() {
  PG_LINK="$STATE/postgres"
  if [[ -L "$PG_LINK" ]]; then
    PG_BASE=$(readlink -f "$PG_LINK")
  else
    mkdir -p "$PG_LINK"
    chmod 0755 "$PG_LINK"
    if runuser -u postgres -- test -x "$PG_LINK" 2>/dev/null; then
      PG_BASE="$PG_LINK"
    else
      PG_BASE="/var/tmp/trainq-pg-$STATE_HASH"
      rmdir "$PG_LINK" 2>/dev/null || die "postgres: $PG_LINK is not traversable by the postgres user and not empty"
      mkdir -p "$PG_BASE"
      ln -s "$PG_BASE" "$PG_LINK"
      say "postgres: state dir not traversable by the postgres user; using $PG_BASE (symlinked from $PG_LINK)"
    fi
  fi
  PG_DATA="$PG_BASE/data"
  PG_LOG="$PG_BASE/postgres.log"
  PG_SOCK="$PG_BASE/run"
  # ".s.PGSQL.<port>" is appended to the socket dir; stay well under 108 bytes.
  if (( ${#PG_SOCK} + 20 > 100 )); then
    PG_SOCK="$(short_dir)/pg"
  fi
}

pg_pid() { # [data dir]: the postmaster's pid, the primary's by default
  local data=${1:-$PG_DATA} pid
  [[ -f "$data/postmaster.pid" ]] || return 1
  pid=$(head -n1 "$data/postmaster.pid" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && printf '%s' "$pid"
}

pg_ready() { # [port]
  "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "${1:-$PG_PORT}" -d postgres -t 2 >/dev/null 2>&1
}

pg_wait_ready() {
  local i
  for ((i = 0; i < WAIT_SECS * 2; i++)); do
    pg_ready && return 0
    sleep 0.5
  done
  die "postgres does not answer on 127.0.0.1:$PG_PORT, see $PG_LOG"
}

pg_super() { # psql as superuser over the unix socket (trust only there)
  "$PG_BIN/psql" -X -q -h "$PG_SOCK" -p "$PG_PORT" -U postgres "$@"
}

pg_start() {
  pg_setup_paths
  if pg_pid >/dev/null; then
    pg_wait_ready
    return 0
  fi
  mkdir -p "$PG_BASE" "$PG_SOCK"
  chown postgres:postgres "$PG_BASE" "$PG_SOCK"
  chmod 0700 "$PG_BASE"
  chmod 0755 "$PG_SOCK"
  # Why pg_ctl gave up, from the server's log: a port another socket holds (a listener, or
  # one in TIME_WAIT when the port is in the ephemeral range) fails at once, not by timeout.
  pg_start_why() {
    if tail -c +"$((pg_log_at + 1))" "$PG_LOG" 2>/dev/null \
      | grep -q "could not bind IPv4 address.*Address already in use"; then
      echo ": port $PG_PORT is in use (TRAINQ_PG_PORT; a socket in TIME_WAIT clears within a minute)"
    else
      echo " within ${WAIT_SECS}s"
    fi
  }
  if [[ ! -s "$PG_DATA/PG_VERSION" ]]; then
    rm -rf "$PG_DATA"
    runuser -u postgres -- "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -E UTF8 --no-locale \
      --auth-local=trust --auth-host=scram-sha-256 >"$PG_BASE/initdb.log" 2>&1 9>&- \
      || die "postgres: initdb failed, see $PG_BASE/initdb.log"
    # trust for the superuser on the unix socket only; passwords everywhere else.
    cat >"$PG_DATA/pg_hba.conf" <<'HBA'
# TYPE  DATABASE  USER      ADDRESS        METHOD
local   all       postgres                 trust
local   all       all                      scram-sha-256
host    all       all       127.0.0.1/32   scram-sha-256
HBA
    echo "include_if_exists = 'trainq.conf'" >>"$PG_DATA/postgresql.conf"
    chown postgres:postgres "$PG_DATA/pg_hba.conf"
  fi
  # Re-copied on every start so edits to compose/postgresql.conf take effect.
  install -o postgres -g postgres -m 0600 "$REPO/compose/postgresql.conf" "$PG_DATA/trainq.conf"
  pg_log_at=$(stat -c %s "$PG_LOG" 2>/dev/null || echo 0) # this start's lines follow
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -s \
    -o "-c port=$PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories='$PG_SOCK'" \
    -w -t "$WAIT_SECS" start </dev/null >/dev/null 2>&1 9>&- \
    || die "postgres did not start$(pg_start_why), see $PG_LOG"
  pg_wait_ready
  pg_super -d postgres -v ON_ERROR_STOP=1 <<'SQL' >/dev/null || die "postgres: could not create role/database trainq, see $PG_LOG"
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'trainq') THEN
    CREATE ROLE trainq LOGIN PASSWORD 'trainq';
  END IF;
END
$$;
SELECT 'CREATE DATABASE trainq OWNER trainq'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'trainq')\gexec
SQL
}

pg_stop() {
  pg_setup_paths
  pgctl_stop "$PG_DATA" postgres
}

pgctl_stop() { # data-dir name: a fast shutdown, SIGKILL if it does not end in time
  local pid
  pid=$(pg_pid "$1") || return 0
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$1" -m fast -s -w -t "$WAIT_SECS" stop \
    </dev/null >/dev/null 2>&1 9>&- || true
  wait_gone "$pid" "$2" || { kill -KILL "$pid" 2>/dev/null || true; wait_gone "$pid" "$2" 5 || true; }
}

pg_status() {
  pg_setup_paths
  local pid
  if pid=$(pg_pid) && pg_ready; then
    echo "postgres: up (pid $pid, 127.0.0.1:$PG_PORT, data $PG_DATA)"
  else
    echo "postgres: down"
    return 1
  fi
}

# ---------------------------------------------------------------- Postgres standby

# `up --postgres-standby` adds a streaming-replication standby of the primary above:
# pg_basebackup of the primary into $PG_BASE/standby, port TRAINQ_PG_STANDBY_PORT (default
# primary + 1), the same socket dir, application_name trainq_standby. The primary then
# waits for it on every commit (synchronous_standby_names), so a commit the primary
# confirmed is on the standby too: after the primary dies, `promote-standby` makes the
# standby the primary without losing a confirmed transaction. $SB_FILE records the setup.
SB_PORT=${TRAINQ_PG_STANDBY_PORT:-$((PG_PORT + 1))}
SB_FILE="$STATE/postgres-standby"
SB_APP=trainq_standby

sb_enabled() { [[ -f "$SB_FILE" ]]; }

sb_setup_paths() {
  pg_setup_paths
  SB_DATA="$PG_BASE/standby"
  SB_LOG="$PG_BASE/standby.log"
}

sb_start() {
  sb_setup_paths
  touch "$SB_FILE"
  if pg_pid "$SB_DATA" >/dev/null; then
    return 0
  fi
  if [[ ! -s "$SB_DATA/PG_VERSION" ]]; then
    pg_pid >/dev/null || die "postgres standby: the primary must be up to clone it"
    # The superuser replicates over the unix socket, trusted there like every local
    # superuser session (pg_hba: "all" does not cover the replication pseudo-database).
    if ! grep -q '^local[[:space:]]\+replication' "$PG_DATA/pg_hba.conf"; then
      echo "local   replication  postgres               trust" >>"$PG_DATA/pg_hba.conf"
      pg_super -d postgres -c 'SELECT pg_reload_conf()' >/dev/null
    fi
    rm -rf "$SB_DATA"
    runuser -u postgres -- "$PG_BIN/pg_basebackup" -h "$PG_SOCK" -p "$PG_PORT" -U postgres \
      -D "$SB_DATA" -X stream -R --checkpoint=fast >"$PG_BASE/basebackup.log" 2>&1 9>&- \
      || die "postgres standby: pg_basebackup failed, see $PG_BASE/basebackup.log"
    # The copy must not wait for a standby of its own once promoted: drop the primary's
    # synchronous_standby_names from it, and name this standby for the primary's list.
    sed -i '/^synchronous_standby_names/d' "$SB_DATA/postgresql.auto.conf"
    echo "primary_conninfo = 'host=$PG_SOCK port=$PG_PORT user=postgres application_name=$SB_APP'" \
      >>"$SB_DATA/postgresql.auto.conf"
  fi
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$SB_DATA" -l "$SB_LOG" -s \
    -o "-c port=$SB_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories='$PG_SOCK'" \
    -w -t "$WAIT_SECS" start </dev/null >/dev/null 2>&1 9>&- \
    || die "postgres standby did not start within ${WAIT_SECS}s, see $SB_LOG"
  if pg_pid >/dev/null && [[ "$(pg_super -d postgres -At -c 'SELECT pg_is_in_recovery()')" == f ]]; then
    pg_super -d postgres -c "ALTER SYSTEM SET synchronous_standby_names = '$SB_APP'" \
      -c 'SELECT pg_reload_conf()' >/dev/null || die "postgres: could not make the standby synchronous"
    local i
    for ((i = 0; i < WAIT_SECS * 2; i++)); do
      [[ "$(pg_super -d postgres -At -c "SELECT sync_state FROM pg_stat_replication WHERE application_name = '$SB_APP'")" == sync ]] && return 0
      sleep 0.5
    done
    die "postgres standby is not a synchronous standby after ${WAIT_SECS}s, see $SB_LOG"
  fi
}

sb_stop() {
  sb_setup_paths
  pgctl_stop "$SB_DATA" postgres-standby
}

sb_status() {
  sb_setup_paths
  local pid
  if pid=$(pg_pid "$SB_DATA") && pg_ready "$SB_PORT"; then
    echo "postgres-standby: up (pid $pid, 127.0.0.1:$SB_PORT, data $SB_DATA)"
  else
    echo "postgres-standby: down"
    return 1
  fi
}

sb_promote() {
  sb_setup_paths
  pg_pid "$SB_DATA" >/dev/null || die "postgres standby is not running"
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$SB_DATA" -s -w -t "$WAIT_SECS" promote \
    </dev/null >/dev/null 2>&1 9>&- || die "postgres standby: promotion failed, see $SB_LOG"
}

# SIGKILL of the primary's postmaster and its children: a crashed machine, not a shutdown
# (for the failover fault scenario). The pids come from the primary's own postmaster.pid.
pg_kill() {
  pg_setup_paths
  local pid
  local -a kids
  pid=$(pg_pid) || return 0
  read -r -a kids <<<"$(ps -o pid= --ppid "$pid" 2>/dev/null | tr -s ' \n' ' ')"
  kill -KILL "$pid" "${kids[@]}" 2>/dev/null || true
  wait_gone "$pid" postgres 10 || true
}

# ---------------------------------------------------------------- RabbitMQ

# Node 1 is the one node of the default setup: its dir, name and ports are exactly those of
# a single node. `up --rabbitmq-nodes N` adds nodes 2..N (recorded in $RMQ_NODES_FILE, so
# every later command knows them): dir $STATE/rabbitmq-I, name <name>-I@<host>, AMQP and
# distribution ports + (I-1) * TRAINQ_RABBITMQ_PORT_STEP (default 10). All nodes share one
# epmd (TRAINQ_EPMD_PORT) and one Erlang cookie: HOME of every node is node 1's dir.
RMQ_HOME="$STATE/rabbitmq"
RMQ_EPMD_PIDFILE="$RMQ_HOME/epmd.pid"
RMQ_NODES_FILE="$RMQ_HOME/nodes"
PORT_STEP=${TRAINQ_RABBITMQ_PORT_STEP:-10}

rmq_nodes() { # how many nodes this state dir has (1 unless `up --rabbitmq-nodes N` said more)
  local n=""
  [[ -s "$RMQ_NODES_FILE" ]] && n=$(tr -dc '0-9' <"$RMQ_NODES_FILE")
  printf '%s' "${n:-1}"
}

rmq_node() { # I: the rmq_* functions below act on node I (1-based)
  RN=$1
  if ((RN == 1)); then
    RMQ_DIR="$RMQ_HOME"
    RN_NAME="$NODENAME"
  else
    RMQ_DIR="$STATE/rabbitmq-$RN"
    RN_NAME="${NODENAME%@*}-$RN@${NODENAME#*@}"
  fi
  RN_AMQP=$((AMQP_PORT + PORT_STEP * (RN - 1)))
  RN_DIST=$((DIST_PORT + PORT_STEP * (RN - 1)))
  RMQ_PIDFILE="$RMQ_DIR/rabbitmq.pid"
  RMQ_LOG_DIR="$RMQ_DIR/log"
  RMQ_OUT="$RMQ_LOG_DIR/startup.log"
  # The CLI is itself an Erlang node; its distribution port is taken from
  # RABBITMQ_DIST_PORT + 10000..10010 (35672.. by default), so keep it away from our ports.
  # -start_epmd false: while the node is down the CLI would otherwise leave an epmd daemon
  # behind that nobody stops (rmq_launch runs our own epmd before the node).
  RMQCTL=(env HOME="$RMQ_HOME" ERL_EPMD_PORT="$EPMD_PORT" ERL_EPMD_ADDRESS=127.0.0.1
    RABBITMQ_DIST_PORT="$RN_DIST" ERL_FLAGS="-start_epmd false"
    ERL_CRASH_DUMP="$RMQ_LOG_DIR/cli_crash.dump" "$RABBIT_BIN/rabbitmqctl" -n "$RN_NAME")
}
rmq_node 1

rmqctl() { # bounded: the CLI can hang on a half-started node
  timeout $((WAIT_SECS + 10)) "${RMQCTL[@]}" -q "$@"
}

pid_alive() { # pidfile [name-substring]
  local pid
  [[ -f "$1" ]] || return 1
  pid=$(tr -dc '0-9' <"$1")
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  if [[ -n "${2:-}" ]]; then
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2" || return 1
  fi
  printf '%s' "$pid"
}

port_listening() { # port
  ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
}

rmq_epmd() { # our own epmd, bound to loopback, so `down` can stop exactly it
  # If something already listens on the port (another instance's epmd), the node simply
  # registers there.
  if ! pid_alive "$RMQ_EPMD_PIDFILE" epmd >/dev/null && ! port_listening "$EPMD_PORT"; then
    mkdir -p "$RMQ_HOME/log"
    setsid epmd -port "$EPMD_PORT" -address 127.0.0.1 </dev/null >>"$RMQ_HOME/log/epmd.log" 2>&1 9>&- &
    echo $! >"$RMQ_EPMD_PIDFILE"
    local i
    for ((i = 0; i < 50; i++)); do port_listening "$EPMD_PORT" && break; sleep 0.1; done
  fi
}

rmq_cookie() { # one cookie for a cluster, written before nodes that would race to create it
  local c="$RMQ_HOME/.erlang.cookie"
  [[ -s "$c" ]] && return 0
  mkdir -p "$RMQ_HOME"
  (umask 077; head -c 32 /dev/urandom | sha256sum | tr 'a-f' 'A-F' | tr -dc 'A-Z0-9' | head -c 20 >"$c")
  chmod 0400 "$c"
}

# Starts the selected node in the background; 1 when it was already running. rmq_wait next.
rmq_launch() {
  mkdir -p "$RMQ_DIR" "$RMQ_DIR/mnesia" "$RMQ_LOG_DIR"
  if pid_alive "$RMQ_PIDFILE" beam >/dev/null; then
    return 1
  fi
  echo '[].' >"$RMQ_DIR/enabled_plugins"
  { cat "$REPO/compose/rabbitmq.conf"
    echo
    echo "# added by scripts/services.sh"
    echo "listeners.tcp.1 = 127.0.0.1:$RN_AMQP"
  } >"$RMQ_DIR/rabbitmq.conf"
  rmq_epmd
  rm -f "$RMQ_PIDFILE"
  # /usr/sbin/rabbitmq-server switches to the rabbitmq user and cannot use our dirs; the
  # real script runs as root. setsid: the node must outlive this shell and its process group.
  # Distribution binds to loopback through inet_dist_listen_options. The AMQP listener is
  # listeners.tcp.1 in the generated rabbitmq.conf (it wins over RABBITMQ_NODE_PORT).
  env HOME="$RMQ_HOME" ERL_EPMD_PORT="$EPMD_PORT" ERL_EPMD_ADDRESS=127.0.0.1 \
    RABBITMQ_NODENAME="$RN_NAME" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$RN_AMQP" \
    RABBITMQ_DIST_PORT="$RN_DIST" \
    RABBITMQ_MNESIA_BASE="$RMQ_DIR/mnesia" RABBITMQ_LOG_BASE="$RMQ_LOG_DIR" \
    RABBITMQ_CONFIG_FILE="$RMQ_DIR/rabbitmq" RABBITMQ_PID_FILE="$RMQ_PIDFILE" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$RMQ_DIR/enabled_plugins" \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_listen_options [{ip,{127,0,0,1}}]" \
    setsid "$RABBIT_BIN/rabbitmq-server" </dev/null >>"$RMQ_OUT" 2>&1 9>&- &
  return 0
}

# Node 1 as a single node always did; nodes 2..N of a cluster join node 1 once (a node
# that has joined rejoins by itself on every later start).
rmq_setup() {
  if ((RN == 1)); then
    # Idempotent: add_user fails if the user exists, which is fine; permissions are re-set.
    # Users and permissions are cluster-wide: nodes that join later get them.
    rmqctl add_user trainq trainq >/dev/null 2>&1 || true
    rmqctl set_permissions -p / trainq '.*' '.*' '.*' >/dev/null \
      || die "rabbitmq: could not set permissions for user trainq, see $RMQ_OUT"
    return 0
  fi
  [[ -f "$RMQ_DIR/joined" ]] && return 0
  local first
  first=$(rmq_node 1; printf '%s' "$RN_NAME")
  { rmqctl stop_app && rmqctl reset && rmqctl join_cluster "$first" && rmqctl start_app; } \
    >>"$RMQ_OUT" 2>&1 || die "rabbitmq: node $RN_NAME could not join $first, see $RMQ_OUT"
  touch "$RMQ_DIR/joined"
}

rmq_start_nodes() { # I... : launches them together, then waits for each
  local i
  local -a fresh=()
  # Nodes of a cluster that stopped at different times wait for each other at boot (the
  # last one down must come up first), so they start side by side, not one after another.
  (($# > 1)) && rmq_cookie
  for i in "$@"; do
    rmq_node "$i"
    if rmq_launch; then fresh+=("$i"); fi
  done
  for i in "$@"; do
    rmq_node "$i"
    rmq_wait || die "rabbitmq node $RN_NAME did not start within ${WAIT_SECS}s, see $RMQ_OUT and $RMQ_LOG_DIR/"
  done
  for i in "${fresh[@]}"; do
    rmq_node "$i"
    rmq_setup
  done
  rmq_node 1
}

rmq_start() { # every node
  local n i
  n=$(rmq_nodes)
  rmq_check_ports "$n"
  rmq_start_nodes $(seq 1 "$n")
}

rmq_check_ports() { # N: the nodes' AMQP and dist ports and the epmd port must all differ
  local i p
  local -A seen=([$EPMD_PORT]=epmd)
  for ((i = 1; i <= $1; i++)); do
    for p in $((AMQP_PORT + PORT_STEP * (i - 1))):amqp $((DIST_PORT + PORT_STEP * (i - 1))):dist; do
      [[ -z "${seen[${p%%:*}]:-}" ]] || die "rabbitmq: port ${p%%:*} is both node $i's ${p#*:} port and ${seen[${p%%:*}]} (choose another TRAINQ_RABBITMQ_PORT_STEP)"
      seen[${p%%:*}]="node $i's ${p#*:} port"
    done
  done
}

rmq_wait() {
  local i
  # `rabbitmqctl wait` returns as soon as the app is booted; the pid file may appear late.
  for ((i = 0; i < WAIT_SECS * 5; i++)); do [[ -s "$RMQ_PIDFILE" ]] && break; sleep 0.2; done
  [[ -s "$RMQ_PIDFILE" ]] || return 1
  rmqctl wait "$RMQ_PIDFILE" --timeout "$WAIT_SECS" >/dev/null 2>&1 || return 1
  for ((i = 0; i < 50; i++)); do port_listening "$RN_AMQP" && return 0; sleep 0.2; done
  return 1
}

rmq_stop_node() { # the selected node only (epmd stays: the other nodes use it)
  local pid
  if pid=$(pid_alive "$RMQ_PIDFILE" beam); then
    rmqctl stop "$RMQ_PIDFILE" >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
    wait_gone "$pid" rabbitmq || { kill -KILL "$pid" 2>/dev/null || true; wait_gone "$pid" rabbitmq 5 || true; }
  fi
  rm -f "$RMQ_PIDFILE"
}

rmq_stop() { # every node, node 1 last, then our epmd
  local n i epid
  n=$(rmq_nodes)
  for ((i = n; i >= 1; i--)); do
    rmq_node "$i"
    rmq_stop_node
  done
  rmq_node 1
  if epid=$(pid_alive "$RMQ_EPMD_PIDFILE" epmd); then
    kill -TERM "$epid" 2>/dev/null || true
    wait_gone "$epid" epmd 10 || kill -KILL "$epid" 2>/dev/null || true
  fi
  # No `epmd -kill` fallback: without our pid file the epmd on that port is someone else's.
  rm -f "$RMQ_EPMD_PIDFILE"
}

rmq_status_node() {
  local pid
  if pid=$(pid_alive "$RMQ_PIDFILE" beam) && port_listening "$RN_AMQP"; then
    echo "rabbitmq: up (pid $pid, 127.0.0.1:$RN_AMQP, node $RN_NAME)"
  elif (($(rmq_nodes) == 1)); then
    echo "rabbitmq: down"
    return 1
  else
    echo "rabbitmq: down (node $RN_NAME)"
    return 1
  fi
}

rmq_status() {
  local n i rc=0
  n=$(rmq_nodes)
  for ((i = 1; i <= n; i++)); do
    rmq_node "$i"
    rmq_status_node || rc=1
  done
  rmq_node 1
  return $rc
}

rmq_urls() { # the AMQP url of every node, comma-separated (one url for one node)
  local n i sep=""
  n=$(rmq_nodes)
  for ((i = 1; i <= n; i++)); do
    printf '%samqp://trainq:trainq@127.0.0.1:%s/%%2f' "$sep" $((AMQP_PORT + PORT_STEP * (i - 1)))
    sep=,
  done
}

# ---------------------------------------------------------------- dockerd

DK_DIR="$STATE/docker"
DK_PIDFILE="$DK_DIR/docker.pid"
DK_LOG="$DK_DIR/dockerd.log"

dk_setup_paths() {
  DK_SOCK="$DK_DIR/docker.sock"
  DK_EXEC="$DK_DIR/exec"
  # containerd puts its sockets under exec-root (containerd/containerd.sock.ttrpc), and
  # sun_path is 108 bytes: move socket and exec-root to /run/trainq-<hash> when too long.
  if (( ${#DK_SOCK} > 90 )); then DK_SOCK="$(short_dir)/docker.sock"; fi
  if (( ${#DK_EXEC} + 40 > 100 )); then DK_EXEC="$(short_dir)/exec"; fi
  DOCKER_HOST_URL="unix://$DK_SOCK"
}

dk_ready() {
  timeout 10 "$DOCKER_CLI" -H "$DOCKER_HOST_URL" version >/dev/null 2>&1
}

dk_start() {
  dk_setup_paths
  mkdir -p "$DK_DIR/data" "$DK_EXEC"
  if pid_alive "$DK_PIDFILE" dockerd >/dev/null && dk_ready; then
    return 0
  fi
  if ! pid_alive "$DK_PIDFILE" dockerd >/dev/null; then
    rm -f "$DK_PIDFILE" "$DK_SOCK"
    setsid dockerd --host "$DOCKER_HOST_URL" --data-root "$DK_DIR/data" --exec-root "$DK_EXEC" \
      --pidfile "$DK_PIDFILE" --iptables=false --ip6tables=false --bridge=none \
      </dev/null >>"$DK_LOG" 2>&1 9>&- &
  fi
  local i
  for ((i = 0; i < WAIT_SECS * 2; i++)); do
    dk_ready && return 0
    sleep 0.5
  done
  die "dockerd did not answer on $DOCKER_HOST_URL within ${WAIT_SECS}s, see $DK_LOG"
}

dk_stop() {
  dk_setup_paths
  local pid
  pid=$(pid_alive "$DK_PIDFILE" dockerd) || return 0
  kill -TERM "$pid" 2>/dev/null || true
  # dockerd gives running containers up to 15 s to stop, then its containerd exits too.
  wait_gone "$pid" dockerd $((WAIT_SECS)) || { kill -KILL "$pid" 2>/dev/null || true; wait_gone "$pid" dockerd 5 || true; }
}

dk_status() {
  dk_setup_paths
  local pid
  if pid=$(pid_alive "$DK_PIDFILE" dockerd) && dk_ready; then
    echo "docker: up (pid $pid, $DOCKER_HOST_URL)"
  else
    echo "docker: down"
    return 1
  fi
}

# ---------------------------------------------------------------- common

wait_gone() { # pid name [seconds]
  local pid=$1 name=$2 secs=${3:-$WAIT_SECS} i
  for ((i = 0; i < secs * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  say "$name (pid $pid) did not exit within ${secs}s"
  return 1
}

lock() {
  exec 9>"$STATE/.services.lock"
  flock -w 300 9 || die "could not lock $STATE/.services.lock"
}

one() { # action name
  case "$2" in
    postgres) "pg_$1" ;;
    postgres-standby) "sb_$1" ;;
    rabbitmq) "rmq_$1" ;;
    rabbitmq-[0-9]*)
      local i=${2#rabbitmq-}
      ((i >= 1 && i <= $(rmq_nodes))) || die "no rabbitmq node $i (this state dir has $(rmq_nodes))"
      case "$1" in
        start) rmq_start_nodes "$i" ;;
        stop) rmq_node "$i"; rmq_stop_node ;;
        status) rmq_node "$i"; rmq_status_node ;;
      esac ;;
    docker | dockerd) "dk_$1" ;;
    *) die "unknown service \"$2\" (postgres|postgres-standby|rabbitmq|rabbitmq-I|docker)" ;;
  esac
}

print_env() {
  dk_setup_paths
  local q
  printf 'export TRAINQ_STATE_DIR=%q\n' "$STATE"
  if sb_enabled; then
    # libpq tries the hosts in order and keeps the one that takes writes: the primary, or
    # the standby once promoted.
    printf 'export TRAINQ_DATABASE_URL=%q\n' \
      "postgresql://trainq:trainq@127.0.0.1:$PG_PORT,127.0.0.1:$SB_PORT/trainq?target_session_attrs=read-write"
  else
    printf 'export TRAINQ_DATABASE_URL=%q\n' "postgresql://trainq:trainq@127.0.0.1:$PG_PORT/trainq"
  fi
  printf 'export TRAINQ_AMQP_URL=%q\n' "$(rmq_urls)"
  printf 'export TRAINQ_DOCKER_HOST=%q\n' "$DOCKER_HOST_URL"
  printf 'export TRAINQ_SERVICES=%q\n' "$SELF"
  printf 'export TRAINQ_PG_PORT=%q TRAINQ_AMQP_PORT=%q TRAINQ_RABBITMQ_DIST_PORT=%q TRAINQ_EPMD_PORT=%q TRAINQ_RABBITMQ_NODENAME=%q\n' \
    "$PG_PORT" "$AMQP_PORT" "$DIST_PORT" "$EPMD_PORT" "$NODENAME"
  q=$(printf '%q' "$SELF")
  printf 'export TRAINQ_RABBITMQCTL=%q\n' "bash $q rabbitmqctl"
}

cmd=${1:-}
shift || true
case "$cmd" in
  up)
    # up [--rabbitmq-nodes N] [--postgres-standby] [postgres|rabbitmq|docker ...]
    nodes="" standby=0 only=()
    while (($#)); do
      case "$1" in
        --rabbitmq-nodes)
          [[ "${2:-}" =~ ^[1-9]$ ]] || die "--rabbitmq-nodes takes a count from 1 to 9"
          nodes=$2; shift 2 ;;
        --postgres-standby) standby=1; shift ;;
        postgres | rabbitmq | docker) only+=("$1"); shift ;;
        *) die "up: unknown argument \"$1\" (--rabbitmq-nodes N, --postgres-standby, postgres|rabbitmq|docker)" ;;
      esac
    done
    ((${#only[@]})) || only=(postgres rabbitmq docker)
    lock
    if [[ -n "$nodes" ]]; then
      have=$(rmq_nodes)
      ((nodes >= have)) || die "up: this state dir has a $have-node cluster; \`down\` and remove $STATE to shrink it"
      mkdir -p "$RMQ_HOME"
      ((nodes == 1)) || echo "$nodes" >"$RMQ_NODES_FILE"
    fi
    for svc in "${only[@]}"; do
      case "$svc" in
        postgres) pg_start; if ((standby)) || sb_enabled; then sb_start; fi ;;
        rabbitmq) rmq_start ;;
        docker) dk_start ;;
      esac
    done
    dk_setup_paths
    msg=""
    for svc in "${only[@]}"; do
      case "$svc" in
        postgres) msg+=", postgres 127.0.0.1:$PG_PORT$(if sb_enabled; then echo " (standby 127.0.0.1:$SB_PORT)"; fi)" ;;
        rabbitmq) msg+=", rabbitmq $(rmq_urls | sed 's|amqp://trainq:trainq@||g; s|/%2f||g')" ;;
        docker) msg+=", docker $DOCKER_HOST_URL" ;;
      esac
    done
    say "up: ${msg#, }"
    ;;
  down)
    lock
    rc=0
    dk_stop || rc=1
    rmq_stop || rc=1
    if sb_enabled; then sb_stop || rc=1; fi
    pg_stop || rc=1
    exit $rc
    ;;
  promote-standby)
    lock
    sb_promote
    say "promote-standby: 127.0.0.1:$SB_PORT is the primary now"
    ;;
  kill)
    [[ "${1:-}" == postgres ]] || die "usage: services.sh kill postgres (SIGKILL of the primary)"
    lock
    pg_kill
    ;;
  start | stop)
    [[ $# -eq 1 ]] || die "usage: services.sh $cmd postgres|postgres-standby|rabbitmq|rabbitmq-I|docker"
    lock
    one "$cmd" "$1"
    ;;
  restart)
    [[ $# -eq 1 ]] || die "usage: services.sh restart postgres|postgres-standby|rabbitmq|rabbitmq-I|docker"
    lock
    one stop "$1"
    one start "$1"
    ;;
  status)
    rc=0
    pg_status || rc=1
    if sb_enabled; then sb_status || rc=1; fi
    rmq_status || rc=1
    dk_status || rc=1
    exit $rc
    ;;
  env)
    print_env
    ;;
  psql)
    pg_setup_paths
    port=$PG_PORT
    # after a failover the promoted standby is the server to talk to
    if sb_enabled && ! pg_ready && pg_ready "$SB_PORT"; then port=$SB_PORT; fi
    exec "$PG_BIN/psql" -X -h "$PG_SOCK" -p "$port" -U postgres -d trainq "$@"
    ;;
  rabbitmqctl)
    mkdir -p "$RMQ_DIR/log"
    exec "${RMQCTL[@]}" "$@"
    ;;
  rabbitmqctl-node)
    if ! [[ "${1:-}" =~ ^[1-9]$ ]] || (($1 > $(rmq_nodes))); then die "usage: services.sh rabbitmqctl-node I ARGS (I from 1 to $(rmq_nodes))"; fi
    rmq_node "$1"
    shift
    mkdir -p "$RMQ_LOG_DIR"
    exec "${RMQCTL[@]}" "$@"
    ;;
  docker)
    dk_setup_paths
    exec "$DOCKER_CLI" -H "$DOCKER_HOST_URL" "$@"
    ;;
  *)
    sed -n '2,17p' "$SELF" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
