"""Shared harness for trainq's integration tests: real binaries, real services.

Builds on tqenv (environment, psql, services.sh). Stdlib plus python3-pika, python3-jwt
and python3-yaml (for docs/openapi.yaml).

    import tqharness as h
    p = h.Program("producer/trainq-producer", env={"TRAINQ_HTTP_ADDR": "127.0.0.1:0"})
    p.start(); line = p.wait_event("http.listening"); port = line["port"]
    c = h.Http(port); status, headers, body = c.request("GET", "/healthz")
    p.stop()                       # SIGTERM, returns the exit code
    p.assert_no_sanitizer_report()

Processes write stderr (JSON log lines) to a temporary file, never a pipe, so a chatty
child can never block on a full pipe while a test waits for something else.
"""

import atexit
import base64
import hashlib
import hmac
import http.client
import json
import os
import re
import signal
import subprocess
import tempfile
import time
import urllib.parse

import tqenv

BIN_DIR = tqenv.BIN_DIR
SOURCE_DIR = tqenv.SOURCE_DIR
DATABASE_URL = tqenv.DATABASE_URL
AMQP_URL = tqenv.AMQP_URL
SERVICES = tqenv.SERVICES
psql = tqenv.psql
services = tqenv.services

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "LeakSanitizer has encountered a fatal error",
                     "WARNING: ThreadSanitizer", "SUMMARY: UndefinedBehaviorSanitizer")


def binary(rel):
    """Absolute path of a built binary, e.g. binary("producer/trainq-producer")."""
    return os.path.join(BIN_DIR, rel)


# ---------------------------------------------------------------- processes

def own_netns_or_skip(test):
    """["unshare", "--net"]: a program started under it has a network namespace of its own
    (loopback only, down), which the test creates: what it binds or sends stays there.
    Skips the test where namespaces cannot be made."""
    try:
        ok = subprocess.run(["unshare", "--net", "true"], capture_output=True,
                            timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    if not ok:
        test.skipTest("cannot create a network namespace (unshare --net)")
    return ["unshare", "--net"]


class Program:
    """One child process started from BIN_DIR with the TRAINQ_* environment plus `env`.

    env values of None remove the variable. Log lines are parsed lazily from the stderr
    file; non-JSON lines (sanitizer reports, libraries) are kept in .stderr_text().
    """

    def __init__(self, rel, env=None, args=(), name=None, wrap=()):
        self.path = binary(rel)
        self.args = list(args)
        self.wrap = list(wrap)  # a command the program runs under, e.g. ["unshare", "--net"]
        self.env = tqenv.child_env()
        # Sanitizer runtime options: report leaks, fail loudly, keep going for UBSan.
        self.env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        self.env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        for k, v in (env or {}).items():
            if v is None:
                self.env.pop(k, None)
            else:
                self.env[k] = str(v)
        self.name = name or os.path.basename(rel)
        self.proc = None
        self._err = None
        self._pos = 0
        self._events = []

    def start(self):
        self._err = tempfile.NamedTemporaryFile(prefix=self.name + "-", suffix=".stderr",
                                                delete=False)
        self.proc = subprocess.Popen([*self.wrap, self.path, *self.args], env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self._err)
        _started.append(self.proc)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stderr_text(self):
        if not self._err:
            return ""
        with open(self._err.name, "r", errors="replace") as f:
            return f.read()

    def plain_lines(self):
        """stderr's lines that are not JSON log lines: what a configuration error prints."""
        return [ln for ln in self.stderr_text().splitlines() if not ln.startswith("{")]

    def _read_events(self):
        with open(self._err.name, "r", errors="replace") as f:
            f.seek(self._pos)
            chunk = f.read()
        # only complete lines; the rest is read next time
        cut = chunk.rfind("\n")
        if cut < 0:
            return
        self._pos += len(chunk[:cut + 1].encode("utf-8", errors="replace"))
        for line in chunk[:cut].splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    self._events.append(json.loads(line))
                except ValueError:
                    pass

    def events(self, name=None):
        """Every parsed log line so far (optionally only those with event == name)."""
        self._read_events()
        return [e for e in self._events if name is None or e.get("event") == name]

    def wait_event(self, name, pred=None, timeout=20.0, after=0):
        """Waits for a log line with event == name (and pred(line) true), returns it.

        after: skip the first `after` matching lines (use len(p.events(name)) before acting).
        Fails early when the process exits."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.events(name) if pred is None or pred(e)]
            if len(found) > after:
                return found[after]
            if not self.running():
                self._read_events()
                found = [e for e in self.events(name) if pred is None or pred(e)]
                if len(found) > after:
                    return found[after]
                raise AssertionError(
                    f"{self.name} exited ({self.proc.returncode}) before logging {name}:\n"
                    + self.stderr_text()[-4000:])
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not log {name} within {timeout}s:\n"
                                     + self.stderr_text()[-4000:])
            time.sleep(0.05)

    def send_signal(self, sig):
        if self.running():
            self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=30.0):
        """Sends sig and waits; returns the exit code (SIGKILL after timeout → AssertionError)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(f"{self.name} did not exit within {timeout}s after {sig}")
        return self.proc.returncode

    def kill(self):
        """SIGKILL, no cleanup: the crash case."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def sanitizer_report(self):
        text = self.stderr_text()
        return [m for m in SANITIZER_MARKERS if m in text]

    def assert_no_sanitizer_report(self):
        found = self.sanitizer_report()
        if found:
            raise AssertionError(f"{self.name} stderr has sanitizer output {found}:\n"
                                 + self.stderr_text()[-6000:])

    def stop_clean(self, timeout=30.0):
        """SIGTERM, then cleanup; asserts exit code 0 and no sanitizer report."""
        code = self.stop(signal.SIGTERM, timeout=timeout)
        text = self.stderr_text()
        found = self.sanitizer_report()
        self.cleanup()
        assert code == 0, f"{self.name} exited {code} on SIGTERM:\n{text[-4000:]}"
        assert not found, f"sanitizer report in {self.name} stderr:\n{text[-8000:]}"

    def cleanup(self):
        """Kills the process if still running and removes the stderr file."""
        self.kill()
        if self._err:
            self._err.close()
            try:
                os.unlink(self._err.name)
            except OSError:
                pass


# Every program a test started, killed when the test process exits: a test that fails before
# it stops its program (or a suite killed by ctest's timeout) must not leave a producer or
# consumer behind, whose relay would go on publishing the outbox rows of the next suites,
# on the same database, as if it were theirs.
_started = []


@atexit.register
def _kill_leftovers():
    for p in _started:
        if p.poll() is None:
            p.kill()
            p.wait()


# ---------------------------------------------------------------- HTTP

class Response:
    def __init__(self, status, headers, raw):
        self.status = status
        self.headers = headers  # http.client.HTTPMessage: case-insensitive .get()
        self.raw = raw
        self._json = None

    @property
    def json(self):
        if self._json is None and self.raw:
            self._json = json.loads(self.raw)
        return self._json

    def header(self, name):
        return self.headers.get(name)

    def __repr__(self):
        return f"<Response {self.status} {self.raw[:300]!r}>"


class Http:
    """One keep-alive HTTP/1.1 connection (http.client), reused across requests.

    .connects counts TCP connections opened, so a test can prove keep-alive held."""

    def __init__(self, port, host="127.0.0.1", timeout=30.0):
        self.host, self.port, self.timeout = host, port, timeout
        self.conn = None
        self.connects = 0
        self.sock_ids = []

    def _connection(self):
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        if self.conn.sock is None:
            self.conn.connect()
            self.connects += 1
            self.sock_ids.append(id(self.conn.sock))
        return self.conn

    def request(self, method, path, body=None, headers=None, token=None, json_body=None):
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        if json_body is not None:
            body = json.dumps(json_body)
            hdrs.setdefault("Content-Type", "application/json")
        if isinstance(body, str):
            body = body.encode()
        conn = self._connection()
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            raw = resp.read()
        except (ConnectionError, http.client.HTTPException, OSError):
            self.close()
            raise
        if resp.will_close:
            self.close()
        return Response(resp.status, resp.headers, raw)

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def refused_or(port, method, path, **kw):
    """Like http_once, for requests the server may refuse before reading them whole (an
    oversized header, URL or body): when it answers and closes while the client is still
    sending, the client sees a broken pipe instead of the answer. Returns the Response, or
    None for that case."""
    try:
        return http_once(port, method, path, **kw)
    except (BrokenPipeError, ConnectionResetError):
        return None


def http_once(port, method, path, **kw):
    """One request on a fresh connection."""
    c = Http(port, timeout=kw.pop("timeout", 30.0))
    try:
        return c.request(method, path, **kw)
    finally:
        c.close()


# ---------------------------------------------------------------- JWT

def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# Supabase's user tokens carry aud "authenticated", which the producer requires by default.
AUDIENCE = "authenticated"


def mint(sub, key, alg="HS256", exp_in=600, headers=None, **claims):
    """A JWT from PyJWT (an implementation independent of ours), with aud AUDIENCE unless
    claims say otherwise (aud=None: no aud claim). exp_in=None: no exp."""
    import jwt  # python3-jwt
    payload = {"sub": sub, "iat": int(time.time()), "aud": AUDIENCE}
    if exp_in is not None:
        payload["exp"] = int(time.time()) + exp_in
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if not (k == "aud" and v is None)}
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def mint_none(sub, exp_in=600):
    """An unsigned token (alg none), built by hand: PyJWT refuses to help with this."""
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64url(json.dumps({"sub": sub, "exp": int(time.time()) + exp_in,
                                 "aud": AUDIENCE}).encode())
    return f"{header}.{payload}."


def mint_hs_raw(sub, secret_bytes, alg="HS256", exp_in=600):
    """HS-signed token with an arbitrary byte key (e.g. the text of an RSA public key PEM:
    the HS/RS confusion attack, which PyJWT itself refuses to produce)."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    header = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    payload = b64url(json.dumps({"sub": sub, "exp": int(time.time()) + exp_in,
                                 "aud": AUDIENCE}).encode())
    signing_input = f"{header}.{payload}".encode()
    sig = hmac.new(secret_bytes, signing_input, digest).digest()
    return f"{header}.{payload}.{b64url(sig)}"


def gen_rsa_keypair(directory):
    """(private_pem_path, public_pem_path) made with `openssl genpkey` in directory."""
    priv = os.path.join(directory, "rsa_private.pem")
    pub = os.path.join(directory, "rsa_public.pem")
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                    "-out", priv], check=True, capture_output=True, timeout=60)
    subprocess.run(["openssl", "pkey", "-in", priv, "-pubout", "-out", pub], check=True,
                   capture_output=True, timeout=60)
    return priv, pub


# ---------------------------------------------------------------- AMQP (pika)

def amqp_connection():
    import pika
    params = pika.URLParameters(AMQP_URL)
    params.socket_timeout = 10
    params.blocked_connection_timeout = 10
    return pika.BlockingConnection(params)


def purge_queue(queue="trainq.jobs"):
    """Purges the queue if it exists (returns the number of messages dropped, or None)."""
    import pika
    conn = amqp_connection()
    try:
        ch = conn.channel()
        try:
            return ch.queue_purge(queue).method.message_count
        except pika.exceptions.ChannelClosedByBroker:
            return None
    finally:
        conn.close()


def get_messages(queue="trainq.jobs", want=None, timeout=20.0, ack=True):
    """Polls queue with basic.get until `want(messages)` is true (default: one message) or
    timeout. Returns [(properties, body_bytes), ...]. Messages are acked (ack=True) or
    requeued after reading."""
    import pika
    want = want or (lambda msgs: len(msgs) >= 1)
    conn = amqp_connection()
    got, tags = [], []
    try:
        ch = conn.channel()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                method, props, body = ch.basic_get(queue, auto_ack=False)
            except pika.exceptions.ChannelClosedByBroker:
                ch = conn.channel()  # queue not declared yet
                method = None
            if method is None:
                if want(got):
                    break
                time.sleep(0.1)
                continue
            got.append((props, body))
            tags.append(method.delivery_tag)
            if want(got):
                break
        for t in tags:
            if ack:
                ch.basic_ack(t)
            else:
                ch.basic_nack(t, requeue=True)
    finally:
        conn.close()
    return got


def queue_depth(queue="trainq.jobs"):
    import pika
    conn = amqp_connection()
    try:
        ch = conn.channel()
        try:
            return ch.queue_declare(queue, passive=True).method.message_count
        except pika.exceptions.ChannelClosedByBroker:
            return None
    finally:
        conn.close()


# ---------------------------------------------------------------- a held-open psql session

class PsqlSession:
    """One psql process kept open, driven through stdin, so a test holds a transaction (and
    its locks) while the system under test runs. superuser=True connects as postgres (e.g.
    to SET deadlock_timeout). stderr is merged into the output, so an ERROR is part of what
    run()/wait() return.

        s = PsqlSession(); s.run("BEGIN"); s.send("SELECT ... FOR UPDATE"); ...; s.wait()
    """

    MARK = "__tq_psql_done__"

    def __init__(self, superuser=False):
        cmd = (["bash", tqenv.SERVICES, "psql"] if superuser
               else ["psql", "-X", "-d", tqenv.DATABASE_URL])
        self.proc = subprocess.Popen(cmd + ["-q", "-A", "-t"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1)

    def send(self, sql):
        """Sends one statement (no trailing semicolon needed) without waiting for it."""
        self.proc.stdin.write(sql.rstrip().rstrip(";") + ";\n\\echo " + self.MARK + "\n")
        self.proc.stdin.flush()

    def wait(self):
        """The output of the statement sent last, once it finished (blocks until then)."""
        out = []
        for line in self.proc.stdout:
            if line.rstrip("\n") == self.MARK:
                return "\n".join(out)
            out.append(line.rstrip("\n"))
        raise AssertionError("psql session ended: " + "\n".join(out))

    def run(self, sql):
        self.send(sql)
        return self.wait()

    def close(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


def lock_waiters():
    """How many lock requests in the database are waiting (not granted)."""
    return int(psql("SELECT count(*) FROM pg_locks WHERE NOT granted"))


# ---------------------------------------------------------------- waiting

def wait_until(pred, timeout=20.0, interval=0.1, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


# ---------------------------------------------------------------- OpenAPI shape checks

def load_openapi(path=None):
    import yaml  # python3-yaml
    with open(path or os.path.join(SOURCE_DIR, "docs", "openapi.yaml")) as f:
        return yaml.safe_load(f)


def _resolve(doc, schema):
    while isinstance(schema, dict) and "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/"), ref
        node = doc
        for part in ref[2:].split("/"):
            node = node[part]
        schema = node
    return schema


_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool,
          "integer": int, "number": (int, float)}


def check_schema(doc, schema, value, where="$"):
    """Returns a list of problems of value against an OpenAPI 3.0 schema: required
    properties, types (nullable honoured), enums, additionalProperties: false, items,
    oneOf/anyOf/allOf. Enough to keep the document and the server honest with each other."""
    schema = _resolve(doc, schema)
    errs = []
    if value is None:
        if schema.get("nullable"):
            return []
        if not schema.get("type") and not any(k in schema for k in ("oneOf", "anyOf", "allOf")):
            return []
        return [f"{where}: null but not nullable"]
    if "allOf" in schema:
        for sub in schema["allOf"]:
            errs += check_schema(doc, sub, value, where)
    for key in ("oneOf", "anyOf"):
        if key in schema:
            results = [check_schema(doc, sub, value, where) for sub in schema[key]]
            ok = [r for r in results if not r]
            if key == "oneOf" and len(ok) != 1 or key == "anyOf" and not ok:
                errs.append(f"{where}: matches {len(ok)} of {key} "
                            f"({'; '.join(e for r in results for e in r[:1])})")
    t = schema.get("type")
    if t:
        py = _TYPES[t]
        if isinstance(value, bool) and t in ("integer", "number"):
            return errs + [f"{where}: boolean where {t} expected"]
        if t == "integer" and isinstance(value, float) and not value.is_integer():
            return errs + [f"{where}: {value!r} is not an integer"]
        if not isinstance(value, py) and not (t == "integer" and isinstance(value, float)):
            return errs + [f"{where}: {type(value).__name__} where {t} expected"]
    if "enum" in schema and value not in schema["enum"]:
        errs.append(f"{where}: {value!r} not in {schema['enum']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for req in schema.get("required", []):
            if req not in value:
                errs.append(f"{where}: missing required property {req!r}")
        for k, v in value.items():
            if k in props:
                errs += check_schema(doc, props[k], v, f"{where}.{k}")
            elif schema.get("additionalProperties") is False:
                errs.append(f"{where}: unexpected property {k!r}")
            elif isinstance(schema.get("additionalProperties"), dict):
                errs += check_schema(doc, schema["additionalProperties"], v, f"{where}.{k}")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            errs += check_schema(doc, schema["items"], v, f"{where}[{i}]")
    return errs


def response_schema(doc, path, method, status):
    """The JSON schema of a documented response (None when the document has no body for
    it). Raises KeyError when the status is not documented for that operation."""
    op = doc["paths"][path][method.lower()]
    responses = op["responses"]
    resp = responses.get(str(status)) or responses.get(int(status)) or responses.get("default")
    if resp is None:
        raise KeyError(f"{method} {path}: status {status} not documented")
    resp = _resolve(doc, resp)
    content = resp.get("content") or {}
    for ctype, media in content.items():
        if "json" in ctype:
            return media.get("schema")
    return None


# ---------------------------------------------------------------- corpus files

_REPEAT = re.compile(r"@R\((.),(\d+)\)@", re.S)


def expand(x, ctx):
    """Expands a corpus case (tests/corpus/README.md): "@R(c,n)@" in strings becomes c
    repeated n times, every key of ctx is replaced by its value, and {"$repeat_item": v,
    "$count": n} becomes a list of n copies of v."""
    if isinstance(x, str):
        x = _REPEAT.sub(lambda m: m.group(1) * int(m.group(2)), x)
        for k, v in ctx.items():
            x = x.replace(k, v)
        return x
    if isinstance(x, list):
        return [expand(i, ctx) for i in x]
    if isinstance(x, dict):
        if "$repeat_item" in x:
            return [expand(x["$repeat_item"], ctx)] * x["$count"]
        return {expand(k, ctx): expand(v, ctx) for k, v in x.items()}
    return x
