"""Environment and connections for trainq's integration tests (stdlib only).

Every TRAINQ_* value comes from the environment that scripts/test.sh exports from
`scripts/services.sh env`. When a test is run by hand without it, the values are read from
`services.sh env` itself, so `python3 -m unittest test_smoke` works after `services.sh up`.

    import tqenv
    tqenv.psql("SELECT 1")                       -> "1"
    tqenv.docker("GET", "/version")              -> (200, {...})
    tqenv.services("restart", "postgres")
"""

import http.client
import json
import os
import shlex
import socket
import subprocess
import urllib.parse

SOURCE_DIR = os.environ.get("TRAINQ_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
BIN_DIR = os.environ.get("TRAINQ_BIN_DIR") or os.path.join(SOURCE_DIR, "build")
SERVICES_SH = os.path.join(SOURCE_DIR, "scripts", "services.sh")
MIGRATIONS_DIR = os.path.join(SOURCE_DIR, "db", "migrations")
TRAINING_IMAGE = os.environ.get("TRAINQ_TRAINING_IMAGE", "trainq-fake-trainer:latest")


def _load_env():
    """TRAINQ_* from the environment, completed from `services.sh env` when missing."""
    env = {k: v for k, v in os.environ.items() if k.startswith("TRAINQ_")}
    needed = ("TRAINQ_DATABASE_URL", "TRAINQ_AMQP_URL", "TRAINQ_DOCKER_HOST", "TRAINQ_SERVICES")
    if all(k in env for k in needed):
        return env
    out = subprocess.run(["bash", SERVICES_SH, "env"], check=True, capture_output=True,
                         text=True, timeout=30).stdout
    for line in out.splitlines():
        words = shlex.split(line)
        if not words or words[0] != "export":
            continue
        for word in words[1:]:
            key, _, value = word.partition("=")
            env.setdefault(key, value)
    return env


ENV = _load_env()
DATABASE_URL = ENV["TRAINQ_DATABASE_URL"]
AMQP_URL = ENV["TRAINQ_AMQP_URL"]
DOCKER_HOST = ENV["TRAINQ_DOCKER_HOST"]
SERVICES = ENV.get("TRAINQ_SERVICES", SERVICES_SH)
STATE_DIR = ENV.get("TRAINQ_STATE_DIR", "")


def child_env(**extra):
    """os.environ plus every TRAINQ_* value, for starting trainq binaries."""
    env = dict(os.environ)
    env.update(ENV)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def services(*args, timeout=180):
    """Runs `services.sh ARGS...` (e.g. "restart", "rabbitmq"); returns its stdout."""
    return subprocess.run(["bash", SERVICES, *args], check=True, capture_output=True,
                          text=True, timeout=timeout).stdout


def psql(sql, *, superuser=False, timeout=60, check=True, variables=None):
    """Runs SQL with psql (-X -A -t, ON_ERROR_STOP). Returns stdout stripped.

    superuser=True connects as postgres over the unix socket (via services.sh psql), e.g. to
    terminate backends. With check=False returns the CompletedProcess instead.
    variables: {name: value} passed as psql -v name=value (use :'name' in SQL to quote).
    """
    if superuser:
        cmd = ["bash", SERVICES, "psql"]
    else:
        cmd = ["psql", "-X", "-d", DATABASE_URL]
    cmd += ["-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
    for k, v in (variables or {}).items():
        cmd += ["-v", f"{k}={v}"]
    proc = subprocess.run(cmd, input=sql, capture_output=True, text=True, timeout=timeout)
    if not check:
        return proc
    if proc.returncode != 0:
        raise RuntimeError(f"psql failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout.strip()


def rabbitmqctl(*args, timeout=120):
    return services("rabbitmqctl", *args, timeout=timeout)


# ---------------------------------------------------------------- Docker Engine API

def docker_socket_path():
    parsed = urllib.parse.urlparse(DOCKER_HOST)
    if parsed.scheme != "unix":
        raise ValueError(f"TRAINQ_DOCKER_HOST must be unix://PATH, got {DOCKER_HOST!r}")
    return parsed.path


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


DOCKER_API = "/v1.41"


def docker_raw(method, path, body=None, *, timeout=60, headers=None):
    """One Docker Engine API request. Returns (status, raw bytes). path excludes /v1.41."""
    conn = _UnixHTTPConnection(docker_socket_path(), timeout)
    try:
        hdrs = {"Host": "docker"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        hdrs.update(headers or {})
        conn.request(method, DOCKER_API + path, body=data, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def docker(method, path, body=None, *, timeout=60):
    """Like docker_raw, but decodes a JSON answer (None when empty)."""
    status, raw = docker_raw(method, path, body, timeout=timeout)
    if not raw:
        return status, None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def demux_logs(raw):
    """Splits a non-TTY container log stream (8-byte frame headers) into (stdout, stderr)."""
    out, err = bytearray(), bytearray()
    i = 0
    while i + 8 <= len(raw):
        stream = raw[i]
        size = int.from_bytes(raw[i + 4:i + 8], "big")
        chunk = raw[i + 8:i + 8 + size]
        (err if stream == 2 else out).extend(chunk)
        i += 8 + size
    return out.decode(errors="replace"), err.decode(errors="replace")


def container_logs(container_id, *, timeout=60):
    status, raw = docker_raw(
        "GET", f"/containers/{container_id}/logs?stdout=1&stderr=1", timeout=timeout)
    if status != 200:
        raise RuntimeError(f"docker logs {container_id}: HTTP {status}: {raw[:200]!r}")
    return demux_logs(raw)


def remove_container(container_id):
    docker_raw("DELETE", f"/containers/{container_id}?force=1&v=1")
