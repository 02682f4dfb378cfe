"""trainq benchmarks, each measured next to its floor in the same run (scripts/bench.sh).

Runs against services that scripts/bench.sh started (TRAINQ_* in the environment) and the
release binaries in --bin-dir. Prints one markdown table and writes it to --out. It never
fails on numbers: only broken machinery (a program that does not start, a job that never
finishes, a tool that errors) makes it exit non-zero.

Rows (docs/performance.md explains each):
  1 submit throughput/latency (wrk) vs fixed-200 on the same HTTP stack and pgbench of the
    submit's SQL          2 submit → message on the queue      3 dispatch latency vs bare
    create+start and `docker run -d`    4 release latency      5 backlog drain
  6 footprint             7 python3-celery on the same broker
  8 Server-Sent Events: status change → event at the client with 100 open streams, and the
    producer's CPU and memory with them open
"""

import argparse
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
ENV = {k: v for k, v in os.environ.items() if k.startswith("TRAINQ_")}
DATABASE_URL = ENV["TRAINQ_DATABASE_URL"]
AMQP_URL = ENV["TRAINQ_AMQP_URL"]
DOCKER_HOST = ENV["TRAINQ_DOCKER_HOST"]
IMAGE = ENV.get("TRAINQ_TRAINING_IMAGE", "trainq-fake-trainer:latest")
TERMINAL = ("completed", "failed", "cancelled")
BASE_MODEL = "stabilityai/sdxl-base-1.0"


class Broken(Exception):
    """The machinery failed (not a slow number): bench.sh exits non-zero."""


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- small helpers

def psql(sql, timeout=120):
    p = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1",
                        "-d", DATABASE_URL], input=sql, capture_output=True, text=True,
                       timeout=timeout)
    if p.returncode != 0:
        raise Broken(f"psql failed: {p.stderr.strip()[:500]}")
    return p.stdout.strip()


def rows(sql):
    out = psql(sql)
    return [line.split("\t") for line in out.splitlines() if line]


def pct(values, q):
    """Percentile with linear interpolation (q in 0..100); None for no values."""
    v = sorted(values)
    if not v:
        return None
    if len(v) == 1:
        return v[0]
    k = (len(v) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def wait_until(pred, timeout, what, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise Broken(f"timed out after {timeout}s waiting for {what}")


def proc_status(pid, key):
    """A kB field of /proc/<pid>/status (VmHWM, VmRSS) in kB, or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_cpu_seconds(pid):
    """utime + stime of a process (all its threads) in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2:].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def mint(sub, secret, exp_in=7200):
    import jwt  # python3-jwt
    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now, "exp": now + exp_in, "aud": "authenticated"},
                      secret, algorithm="HS256")


def sfmt(v, unit="", nd=1):
    """Signed: +12.3 ms / -4.0 ms."""
    return "n/a" if v is None else f"{v:+,.{nd}f}{unit}"


def fmt(v, unit="", nd=1):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.{nd}f}{unit}"
    return f"{v:,}{unit}"


# ---------------------------------------------------------------- programs

class Program:
    """A child process with its stderr (JSON log lines) in a file."""

    def __init__(self, argv, env, name, logdir):
        self.argv, self.env, self.name = argv, env, name
        self.logpath = os.path.join(logdir, f"{name}.log")
        self.proc = None
        self._f = None

    def start(self):
        self._f = open(self.logpath, "ab")
        self.proc = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=self._f, stderr=self._f, start_new_session=True)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def events(self, name):
        out = []
        with open(self.logpath, "r", errors="replace") as f:
            for line in f:
                if line.startswith("{"):
                    try:
                        e = json.loads(line)
                    except ValueError:
                        continue
                    if e.get("event") == name:
                        out.append(e)
        return out

    def wait_event(self, name, timeout=30):
        def found():
            if not self.running():
                raise Broken(f"{self.name} exited ({self.proc.returncode}) before logging {name};"
                             f" see {self.logpath}")
            ev = self.events(name)
            return ev[0] if ev else None
        return wait_until(found, timeout, f"{self.name} to log {name}")

    def stop(self, timeout=30):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._f:
            self._f.close()
            self._f = None


# ---------------------------------------------------------------- Docker Engine API

class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=60):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


class Docker:
    """Keep-alive Engine API client (like the consumer's libcurl handle)."""

    def __init__(self):
        self.path = urllib.parse.urlparse(DOCKER_HOST).path
        self.conn = UnixHTTPConnection(self.path)

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        hdrs = {"Host": "docker"}
        if data is not None:
            hdrs["Content-Type"] = "application/json"
        for attempt in range(2):
            try:
                self.conn.request(method, "/v1.41" + path, body=data, headers=hdrs)
                resp = self.conn.getresponse()
                raw = resp.read()
                break
            except (ConnectionError, http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = UnixHTTPConnection(self.path)
                if attempt:
                    raise
        return resp.status, (json.loads(raw) if raw and raw[:1] in b"{[" else raw)


def docker_time(s):
    """Docker's RFC 3339 nanosecond time → epoch seconds (float)."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", s)
    if not m:
        raise Broken(f"cannot parse docker time {s!r}")
    import calendar
    base = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
    frac = float("0" + m.group(2)) if m.group(2) else 0.0
    tz = m.group(3)
    off = 0
    if tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        off = sign * (int(tz[1:3]) * 3600 + int(tz[4:6]) * 60)
    return base + frac - off


# ---------------------------------------------------------------- the bench

class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.bin = os.path.abspath(args.bin_dir)
        self.work = tempfile.mkdtemp(prefix="run-", dir=args.work_dir)
        self.logdir = os.path.join(self.work, "logs")
        self.root = os.path.join(self.work, "datasets")
        self.data = os.path.join(self.work, "data")
        self.hf = os.path.join(self.work, "hf")
        for d in (self.logdir, self.root, self.data, self.hf):
            os.makedirs(d)
        self.run = uuid.uuid4().hex[:6]
        self.secret = secrets.token_hex(24)
        self.threads = args.http_threads
        self.results = {}
        self.procs = []
        self.consumer_hwm = []
        self.docker = Docker()
        self.n_users = 20 if self.quick else 200
        self.duration = 2 if self.quick else args.duration
        self.producer = None
        self.port = None
        self.anon_peak = {"producer": 0, "consumer": 0}
        self._sampling = threading.Event()

    # ------------------------------------------------------------ fixtures

    def env(self, **extra):
        e = dict(os.environ)
        e.update({k: str(v) for k, v in extra.items()})
        return e

    def start(self, argv, name, **env):
        p = Program(argv, self.env(**env), name, self.logdir).start()
        self.procs.append(p)
        return p

    def sample_anon(self):
        """Peak RssAnon (the process's own memory; VmHWM also counts shared library pages)
        of producer and consumers, sampled every 100 ms."""
        while not self._sampling.wait(0.1):
            for p in list(self.procs):
                kind = ("producer" if p.name == "producer"
                        else "consumer" if p.name.startswith("consumer-") else None)
                if kind and p.running():
                    v = proc_status(p.pid, "RssAnon") or 0
                    self.anon_peak[kind] = max(self.anon_peak[kind], v)

    @staticmethod
    def pool_user(i):
        return f"bench-u{i}"

    @staticmethod
    def pool_dataset(i):
        # Deterministic, so pgbench can name the same rows: 'bbbbbbbb-0000-4000-8000-' || n
        return f"bbbbbbbb-0000-4000-8000-{i:012d}"

    def make_pool(self):
        """Users bench-u1..N, each owning dataset pool_dataset(i) (kept across runs)."""
        values = ",".join(f"('{self.pool_dataset(i)}', '{self.pool_user(i)}', 'bench', 'pool/{i}')"
                          for i in range(1, self.n_users + 1))
        psql("INSERT INTO datasets (id, user_id, name, storage_path) VALUES "
             + values + " ON CONFLICT (id) DO NOTHING")

    def dataset(self, user, duration):
        """A dataset (row + directory with trainer.env) whose fake training lasts `duration` s."""
        ds = str(uuid.uuid4())
        rel = f"{user}/{ds}"
        os.makedirs(os.path.join(self.root, rel))
        with open(os.path.join(self.root, rel, "trainer.env"), "w") as f:
            f.write(f"DURATION={duration}\nEXIT_CODE=0\nSTEPS=1\nMESSAGE=bench done\n")
        psql(f"INSERT INTO datasets (id, user_id, name, storage_path) VALUES "
             f"('{ds}', '{user}', 'bench', '{rel}')")
        return ds

    def user(self, tag):
        return f"bench-{tag}-{self.run}-{uuid.uuid4().hex[:4]}"

    def body(self, ds, name="bench job"):
        return json.dumps({"dataset_id": ds, "name": name, "type": "lora", "base_model": BASE_MODEL,
                           "trigger_words": ["tqbench"],
                           "config": {"steps": 100, "learning_rate": 0.0001, "batch_size": 1,
                                      "resolution": 512}})

    def submit(self, conn, user, ds, name="bench job"):
        conn.request("POST", "/api/training/submit", body=self.body(ds, name),
                     headers={"Content-Type": "application/json",
                              "Authorization": f"Bearer {mint(user, self.secret)}"})
        r = conn.getresponse()
        raw = r.read()
        if r.status != 200:
            raise Broken(f"submit answered {r.status}: {raw[:300]!r}")
        return json.loads(raw)["job_id"]

    def start_producer(self):
        p = self.start([os.path.join(self.bin, "producer", "trainq-producer")], "producer",
                       TRAINQ_HTTP_ADDR="127.0.0.1:0", TRAINQ_JWT_SECRET=self.secret,
                       TRAINQ_HTTP_THREADS=self.threads,
                       TRAINQ_SUBMIT_RATE_PER_MINUTE=1000000, TRAINQ_LOG_LEVEL="info")
        ev = p.wait_event("http.listening")
        self.producer, self.port = p, int(ev["port"])
        return p

    def start_consumer(self, worker, slots, remove=True):
        p = self.start([os.path.join(self.bin, "consumer", "trainq-consumer")], f"consumer-{worker}",
                       TRAINQ_WORKER_ID=worker, TRAINQ_SLOTS=slots, TRAINQ_GPUS="none",
                       TRAINQ_DATASETS_ROOT=self.root, TRAINQ_DATA_DIR=self.data,
                       TRAINQ_HF_CACHE_DIR=self.hf, TRAINQ_TRAINING_IMAGE=IMAGE,
                       TRAINQ_TRAINING_CMD="--config /workspace/config.json",
                       TRAINQ_METRICS_ADDR="127.0.0.1:0", TRAINQ_STOP_GRACE_SECONDS=2,
                       TRAINQ_REMOVE_CONTAINERS="true" if remove else "false",
                       TRAINQ_LOG_LEVEL="info")
        p.wait_event("consumer.ready", timeout=60)
        return p

    def stop_consumer(self, p):
        hwm = proc_status(p.pid, "VmHWM")
        if hwm:
            self.consumer_hwm.append(hwm)
        p.stop()

    def http(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def wait_published(self, timeout=300):
        wait_until(lambda: psql("SELECT count(*) FROM outbox WHERE published_at IS NULL") == "0",
                   timeout, "the outbox to drain", interval=0.2)

    def purge(self, queue="trainq.jobs"):
        import pika
        conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        try:
            ch = conn.channel()
            try:
                return ch.queue_purge(queue).method.message_count
            except pika.exceptions.ChannelClosedByBroker:
                return 0
        finally:
            conn.close()

    def retire_queued(self, like):
        """Jobs that were only there to be measured as submissions must never run."""
        psql("SELECT set_config('trainq.reason', 'bench: not meant to run', false);"
             " UPDATE training_jobs SET status = 'cancelled', completed_at = now(), parked_at = NULL"
             f" WHERE status = 'queued' AND user_id LIKE '{like}'")

    def wait_terminal(self, job_ids, timeout):
        ids = ",".join(f"'{j}'" for j in job_ids)

        def done():
            n = psql(f"SELECT count(*) FROM training_jobs WHERE id IN ({ids})"
                     " AND status IN ('completed', 'failed', 'cancelled')")
            return int(n) == len(job_ids)
        wait_until(done, timeout, f"{len(job_ids)} job(s) to finish", interval=0.1)
        bad = rows(f"SELECT id, status, coalesce(error_message, '') FROM training_jobs"
                   f" WHERE id IN ({ids}) AND status <> 'completed'")
        if bad:
            raise Broken(f"bench jobs did not complete: {bad[:3]}")

    def event_at(self, job_ids, to_status):
        ids = ",".join(f"'{j}'" for j in job_ids)
        return {r[0]: float(r[1]) for r in rows(
            f"SELECT job_id, extract(epoch FROM min(at)) FROM job_events WHERE job_id IN ({ids})"
            f" AND to_status = '{to_status}' GROUP BY job_id")}

    def published_at(self, job_ids):
        ids = ",".join(f"'{j}'" for j in job_ids)
        return {r[0]: float(r[1]) for r in rows(
            f"SELECT job_id, extract(epoch FROM max(published_at)) FROM outbox"
            f" WHERE job_id IN ({ids}) AND published_at IS NOT NULL GROUP BY job_id")}

    # ------------------------------------------------------------ row 1

    def wrk_data(self):
        path = os.path.join(self.work, "wrk-data.lua")
        with open(path, "w") as f:
            f.write("return { users = {\n")
            for i in range(1, self.n_users + 1):
                f.write(f'  {{token = "{mint(self.pool_user(i), self.secret)}",'
                        f' dataset = "{self.pool_dataset(i)}"}},\n')
            f.write("} }\n")
        return path

    def wrk(self, port, data):
        cmd = ["wrk", "-t2", f"-c{self.args.connections}", f"-d{self.duration}s", "--latency",
               "--timeout", "10s", "-s", os.path.join(HERE, "submit.lua"),
               f"http://127.0.0.1:{port}"]
        p = subprocess.run(cmd, env=self.env(TQ_BENCH_WRK_DATA=data), capture_output=True,
                           text=True, timeout=self.duration + 120)
        if p.returncode != 0:
            raise Broken(f"wrk failed: {p.stderr.strip()[:500]}")
        for line in p.stdout.splitlines():
            if line.startswith("BENCH "):
                r = json.loads(line[6:])
                r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
                r["errors"] = sum(r[k] for k in ("err_connect", "err_read", "err_write",
                                                 "err_status", "err_timeout"))
                return r
        raise Broken(f"wrk printed no summary: {p.stdout[-500:]}")

    def pgbench_script(self, one_txn):
        """The statements one submit commits (producer/pdb.c: tq_pdb_rate_hit then
        tq_pdb_submit without Idempotency-Key), with the same parameters as text."""
        # tq_insert_job reads the row from the message: each transaction's own ids go in.
        msg = json.dumps({"schema": "trainq.job.v1", "job_id": "@JOB@",
                          "user_id": "@USER@", "submitted_at": "2026-01-01T00:00:00.000Z",
                          "dataset_id": "@DS@", "name": "bench 0-1", "type": "lora",
                          "base_model": BASE_MODEL,
                          "config": {"steps": 100, "learning_rate": 0.0001, "batch_size": 1,
                                     "resolution": 512},
                          "trigger_words": ["tqbench"]}, separators=(",", ":"))
        config = '{"steps":100,"learning_rate":0.0001,"batch_size":1,"resolution":512}'
        canon = json.dumps({"dataset_id": self.pool_dataset(1), "name": "bench 0-1",
                            "type": "lora", "base_model": BASE_MODEL, "config": json.loads(config),
                            "trigger_words": ["tqbench"]}, separators=(",", ":"))
        job = ("('cccccccc-' || lpad(to_hex(:r1::int), 4, '0') || '-4000-8000-' || "
               "lpad(to_hex(:r2::bigint), 12, '0'))")
        ds = "('bbbbbbbb-0000-4000-8000-' || lpad(:n::text, 12, '0'))"
        body = (f"replace(replace(replace('{msg}', '@JOB@', {job}), '@USER@', 'bench-u' || :n),"
                f" '@DS@', {ds})")
        split = "" if one_txn else "COMMIT;\nBEGIN;\n"
        # tq_pdb_rate_hit commits its counter without waiting for the WAL flush; in the
        # folded variant that would cover the job too, so only the 2-transaction script has it.
        rate_async = "" if one_txn else "SET LOCAL synchronous_commit = off;\n"
        return f"""\\set n random(1, {self.n_users})
\\set r1 random(0, 65535)
\\set r2 random(0, 281474976710655)
\\set trim random(1, 64)
BEGIN;
{rate_async}WITH w AS (  INSERT INTO rate_limits (user_id, bucket, window_start, count)  VALUES ('bench-u' || :n, 'submit', date_trunc('minute', now()), 1)  ON CONFLICT (user_id, bucket, window_start)  DO UPDATE SET count = rate_limits.count + 1  RETURNING count, window_start) SELECT w.count,  COALESCE(CASE WHEN 'submit' = 'submit' THEN   (SELECT submit_per_min FROM user_limits WHERE user_id = 'bench-u' || :n) END, '1000000'::int),  GREATEST(1, ceil(extract(epoch FROM   (w.window_start + interval '1 minute' - now()))))::int FROM w;
\\if :trim = 1
DELETE FROM rate_limits WHERE window_start < now() - interval '5 minutes';
\\endif
{split}SELECT user_id FROM datasets WHERE id = ('bbbbbbbb-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid;
SELECT set_config('trainq.reason', 'submitted over http', true);
SELECT tq_insert_job({body}, 'http', NULL, md5('{canon}'));
INSERT INTO outbox (job_id, routing_key, payload) VALUES ({job}::uuid, 'lora', {body});
COMMIT;
"""

    def pgbench(self, one_txn):
        path = os.path.join(self.work, f"pgbench-{'1' if one_txn else '2'}txn.sql")
        with open(path, "w") as f:
            f.write(self.pgbench_script(one_txn))
        u = urllib.parse.urlparse(DATABASE_URL)
        env = self.env(PGPASSWORD=urllib.parse.unquote(u.password or ""))
        c = self.threads
        cmd = ["pgbench", "-n", "-M", "extended", "-c", str(c), "-j", str(min(c, 2)),
               "-T", str(self.duration), "-f", path, "-h", u.hostname, "-p", str(u.port),
               "-U", urllib.parse.unquote(u.username), u.path.lstrip("/")]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True,
                           timeout=self.duration + 120)
        if p.returncode != 0:
            raise Broken(f"pgbench failed: {p.stderr.strip()[-800:]}")
        tps = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", p.stdout)
        lat = re.search(r"latency average = ([0-9.]+) ms", p.stdout)
        failed = re.search(r"number of failed transactions: (\d+)", p.stdout)
        if not tps:
            raise Broken(f"cannot read pgbench output: {p.stdout[-500:]}")
        # Its rows must never reach a consumer: no producer runs yet, so every unpublished
        # outbox row is pgbench's.
        psql("DELETE FROM outbox WHERE published_at IS NULL")
        self.retire_queued("bench-u%")
        return {"tps": float(tps.group(1)), "lat_ms": float(lat.group(1)) if lat else None,
                "failed": int(failed.group(1)) if failed else 0}

    def row1(self):
        log("row 1: submit throughput (fixed-200 floor, pgbench floors, producer)")
        self.make_pool()
        data = self.wrk_data()
        # (a) the HTTP stack alone
        fx = subprocess.Popen([os.path.join(self.bin, "tests", "bench", "bench-fixed200"), "0",
                               str(self.threads)], stdout=subprocess.PIPE, text=True)
        try:
            line = fx.stdout.readline()
            if not line.startswith("listening "):
                raise Broken("bench-fixed200 did not start")
            fixed = self.wrk(int(line.split()[1]), data)
        finally:
            fx.send_signal(signal.SIGTERM)
            fx.wait(30)
        # (b) Postgres alone, same SQL, as many clients as the producer has DB connections
        pg2 = self.pgbench(one_txn=False)
        pg1 = self.pgbench(one_txn=True)
        # the producer
        p = self.start_producer()
        c = self.http()
        self.submit(c, self.pool_user(1), self.pool_dataset(1), "warm-up")  # connections warm
        c.close()
        t0 = psql("SELECT extract(epoch FROM clock_timestamp())")
        cpu0 = proc_cpu_seconds(p.pid)
        sub = self.wrk(self.port, data)
        cpu1 = proc_cpu_seconds(p.pid)
        ok = int(psql(f"SELECT count(*) FROM training_jobs WHERE user_id LIKE 'bench-u%'"
                      f" AND source = 'http' AND name LIKE 'bench %-%'"
                      f" AND created_at >= to_timestamp({t0})"))
        self.wait_published()
        lag = [float(r[0]) * 1e3 for r in rows(
            "SELECT extract(epoch FROM o.published_at - j.created_at) FROM training_jobs j"
            " JOIN outbox o ON o.job_id = j.id WHERE j.user_id LIKE 'bench-u%'"
            f" AND j.created_at >= to_timestamp({t0})")]
        self.purge()
        self.retire_queued("bench-u%")
        self.results[1] = {"fixed": fixed, "pg2": pg2, "pg1": pg1, "sub": sub, "committed": ok,
                           "cpu": cpu1 - cpu0, "sat_lag": lag}

    # ------------------------------------------------------------ row 2

    def row2(self):
        log("row 2: submit → message on the queue, moderate load")
        import pika
        rate = 20 if self.quick else 100
        secs = 2 if self.quick else 10
        users = [self.user("r2") for _ in range(8)]
        dss = [self.dataset(u, 0.1) for u in users]
        seen = {}
        stop = threading.Event()
        ready = threading.Event()
        err = []

        def observe():
            try:
                conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
                ch = conn.channel()

                def on_msg(chan, method, props, body):
                    seen[props.message_id] = time.time()
                ch.basic_consume("trainq.jobs", on_msg, auto_ack=True)
                ready.set()
                while not stop.is_set():
                    conn.process_data_events(time_limit=0.05)
                conn.close()
            except Exception as e:  # noqa: BLE001 - reported as broken machinery
                err.append(e)
                ready.set()

        th = threading.Thread(target=observe, daemon=True)
        th.start()
        ready.wait(20)
        if err:
            raise Broken(f"queue observer failed: {err[0]}")
        jobs = []
        lock = threading.Lock()
        per = 4

        def load(k):
            c = self.http()
            n = rate * secs // per
            t_start = time.monotonic()
            for i in range(n):
                due = t_start + (i * per + k) / rate
                d = due - time.monotonic()
                if d > 0:
                    time.sleep(d)
                u = (i * per + k) % len(users)
                j = self.submit(c, users[u], dss[u], f"r2 {k}-{i}")
                with lock:
                    jobs.append(j)
            c.close()

        ths = [threading.Thread(target=load, args=(k,)) for k in range(per)]
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        self.wait_published()
        wait_until(lambda: all(j in seen for j in jobs), 60, "the observer to see every message")
        stop.set()
        th.join(10)
        created = {r[0]: float(r[1]) for r in rows(
            "SELECT id, extract(epoch FROM created_at) FROM training_jobs WHERE id IN ("
            + ",".join(f"'{j}'" for j in jobs) + ")")}
        pub = self.published_at(jobs)
        self.retire_queued("bench-r2-%")
        self.results[2] = {
            "rate": rate, "n": len(jobs),
            "queue": [(seen[j] - created[j]) * 1e3 for j in jobs],
            "relay": [(pub[j] - created[j]) * 1e3 for j in jobs if j in pub]}

    # ------------------------------------------------------------ row 3

    def bare_spec(self, name, ds_dir):
        out = os.path.join(self.work, "bare", name, "outputs")
        os.makedirs(out)
        cfg = os.path.join(self.work, "bare", name, "config.json")
        with open(cfg, "w") as f:
            json.dump({"pretrained_model_name_or_path": BASE_MODEL, "max_train_steps": 100}, f)
        mounts = [(ds_dir, "/workspace/datasets", True), (out, "/workspace/outputs", False),
                  (self.hf, "/workspace/models", False), (cfg, "/workspace/config.json", True)]
        return mounts

    def bare_body(self, name, mounts):
        """The create body the consumer sends (consumer/container_spec.c, launch.c)."""
        return {
            "Labels": {"trainq.job": name, "trainq.user": "bench", "trainq.worker": "bench-bare",
                       "trainq.slot": "0", "trainq.managed": "false"},
            "Image": IMAGE,
            "Env": [f"TRAINQ_JOB_ID={name}", "TRAINQ_CONFIG=/workspace/config.json",
                    "HF_HOME=/workspace/models"],
            "Tty": False, "OpenStdin": False, "AttachStdin": False,
            "Cmd": ["--config", "/workspace/config.json"],
            "User": f"{os.getuid()}:{os.getgid()}",
            "HostConfig": {
                "Mounts": [{"Type": "bind", "Source": s, "Target": t, "ReadOnly": ro}
                           for s, t, ro in mounts],
                "NetworkMode": "none", "Privileged": False, "AutoRemove": False,
                "SecurityOpt": ["no-new-privileges"], "CapDrop": ["ALL"],
                "LogConfig": {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "2"}},
                "ShmSize": 2 * 1024 ** 3, "PidsLimit": 4096}}

    def reap(self, cid):
        """Waits for the container's end and removes it; returns ms from Docker's
        State.FinishedAt to the wait call returning (the floor of noticing an exit)."""
        self.docker.call("POST", f"/containers/{cid}/wait?condition=not-running")
        t = time.time()
        st, info = self.docker.call("GET", f"/containers/{cid}/json")
        self.docker.call("DELETE", f"/containers/{cid}?force=1&v=1")
        if st != 200:
            return None
        return (t - docker_time(info["State"]["FinishedAt"])) * 1e3

    def bare_create_start(self, n, ds_dir):
        out = []
        self.bare_wait = []
        for i in range(n):
            name = f"bench-bare-{self.run}-{i}"
            body = self.bare_body(name, self.bare_spec(name, ds_dir))
            t0 = time.perf_counter()
            st, res = self.docker.call("POST", f"/containers/create?name={name}", body)
            if st != 201:
                raise Broken(f"docker create answered {st}: {res!r}"[:400])
            st2, res2 = self.docker.call("POST", f"/containers/{res['Id']}/start")
            t1 = time.perf_counter()
            if st2 != 204:
                raise Broken(f"docker start answered {st2}: {res2!r}"[:400])
            out.append((t1 - t0) * 1e3)
            w = self.reap(res["Id"])
            if w is not None:
                self.bare_wait.append(w)
        return out

    def cli_run(self, n, ds_dir):
        docker = shutil.which("docker") or "docker"
        out = []
        for i in range(n):
            name = f"bench-cli-{self.run}-{i}"
            argv = [docker, "-H", DOCKER_HOST, "run", "-d", "--name", name, "--network", "none",
                    "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                    "--user", f"{os.getuid()}:{os.getgid()}", "--log-driver", "json-file",
                    "--log-opt", "max-size=10m", "--log-opt", "max-file=2", "--shm-size", "2g",
                    "--pids-limit", "4096", "-e", "TRAINQ_CONFIG=/workspace/config.json",
                    "-e", "HF_HOME=/workspace/models", "-e", f"TRAINQ_JOB_ID={name}"]
            for s, t, ro in self.bare_spec(name, ds_dir):
                argv += ["--mount", f"type=bind,source={s},target={t}" + (",readonly" if ro else "")]
            argv += [IMAGE, "--config", "/workspace/config.json"]
            t0 = time.perf_counter()
            p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
            t1 = time.perf_counter()
            if p.returncode != 0:
                raise Broken(f"docker run failed: {p.stderr.strip()[:400]}")
            out.append((t1 - t0) * 1e3)
            self.reap(p.stdout.strip())
        return out

    def row3(self):
        log("row 3: dispatch latency (consumer vs bare create+start vs docker run -d)")
        n = 3 if self.quick else 15
        cons = self.start_consumer(f"bench-w1-{self.run}", 2)
        c = self.http()
        jobs = []
        for i in range(n):
            u = self.user("r3")
            j = self.submit(c, u, self.dataset(u, 0.2), f"r3 {i}")
            jobs.append(j)
            self.wait_terminal([j], 60)
            # The container is removed after the outcome is recorded: measure the next
            # dispatch on an idle dockerd, as the floors are.
            wait_until(lambda: self.docker.call("GET", f"/containers/training-{j}/json")[0] == 404,
                       30, "the finished container to be removed")
        c.close()
        self.stop_consumer(cons)
        run = self.event_at(jobs, "running")
        pend = self.event_at(jobs, "pending")
        pub = self.published_at(jobs)
        ours = [(run[j] - pub[j]) * 1e3 for j in jobs]
        claim = [(pend[j] - pub[j]) * 1e3 for j in jobs]
        launch = [(run[j] - pend[j]) * 1e3 for j in jobs]
        ds_dir = os.path.dirname(os.path.join(self.root, psql(
            f"SELECT storage_path FROM datasets d JOIN training_jobs j ON j.dataset_id = d.id"
            f" WHERE j.id = '{jobs[0]}'"), "x"))
        bare = self.bare_create_start(n, ds_dir)
        cli = self.cli_run(n, ds_dir)
        self.results[3] = {"ours": ours, "bare": bare, "cli": cli, "claim": claim,
                           "launch": launch, "bare_wait": self.bare_wait}

    # ------------------------------------------------------------ row 4

    def row4(self):
        log("row 4: release latency (a job waiting at its user's limit)")
        rounds = 1 if self.quick else 6
        cons = self.start_consumer(f"bench-w2-{self.run}", 4, remove=False)
        c = self.http()
        lat = []
        parts = []
        containers = []
        try:
            for i in range(rounds):
                u = self.user("r4")
                a = self.submit(c, u, self.dataset(u, 1.5), f"r4 a{i}")
                wait_until(lambda: self.event_at([a], "running"), 30, "job A to run")
                b = self.submit(c, u, self.dataset(u, 2.5), f"r4 b{i}")
                wait_until(lambda: self.event_at([b], "running"), 30, "job B to run")
                x = self.submit(c, u, self.dataset(u, 0.2), f"r4 c{i}")
                # C waits as a queued row while A and B are active (nothing is parked or
                # republished since 0012: a freed slot picks the row)
                parked = psql(f"SELECT status FROM training_jobs WHERE id = '{x}'") == "queued"
                was_parked = psql(f"SELECT count(*) FROM job_events WHERE job_id = '{x}'"
                                  " AND to_status = 'running' AND at < (SELECT min(at) FROM"
                                  f" job_events WHERE job_id = '{a}' AND to_status IN"
                                  " ('completed','failed','cancelled'))") == "0"
                self.wait_terminal([a, b, x], 60)
                cid = psql(f"SELECT container_id FROM training_jobs WHERE id = '{a}'")
                st, info = self.docker.call("GET", f"/containers/{cid}/json")
                if st != 200:
                    raise Broken(f"inspect of job A's container answered {st}")
                fin = docker_time(info["State"]["FinishedAt"])
                run_c = self.event_at([x], "running")[x]
                pend_c = max(float(v) for (v,) in rows(
                    f"SELECT extract(epoch FROM at) FROM job_events WHERE job_id = '{x}'"
                    " AND to_status = 'pending'"))
                done_a = min(float(v) for (v,) in rows(
                    f"SELECT extract(epoch FROM at) FROM job_events WHERE job_id = '{a}'"
                    " AND to_status IN ('completed', 'failed', 'cancelled')"))
                if parked and was_parked:
                    lat.append((run_c - fin) * 1e3)
                    parts.append(((done_a - fin) * 1e3, (pend_c - done_a) * 1e3,
                                  (run_c - pend_c) * 1e3))
                for j in (a, b, x):
                    containers.append(psql(f"SELECT container_id FROM training_jobs"
                                           f" WHERE id = '{j}'"))
        finally:
            c.close()
            self.stop_consumer(cons)
            for cid in containers:
                if cid:
                    self.docker.call("DELETE", f"/containers/{cid}?force=1&v=1")
        if not lat:
            raise Broken("no round of row 4 had its third job waiting")
        self.results[4] = {"ours": lat, "parts": parts}

    # ------------------------------------------------------------ row 5

    def idle_slot_seconds(self, jobs, slots, t0, t1):
        """Replays job_events: integrates min(free slots, runnable waiting jobs) over
        [t0, t1]; runnable = queued (in the queue or parked) with the user below 2 active."""
        ids = ",".join(f"'{j}'" for j in jobs)
        ev = rows(f"SELECT extract(epoch FROM e.at), e.job_id, e.user_id, e.to_status"
                  f" FROM job_events e WHERE e.job_id IN ({ids}) AND e.at >= to_timestamp({t0})"
                  " ORDER BY e.at, e.id")
        state = {j: "queued" for j in jobs}
        user = dict(rows(f"SELECT id, user_id FROM training_jobs WHERE id IN ({ids})"))
        limit = 2

        def idle_now():
            active, queued = {}, {}
            for j, s in state.items():
                u = user[j]
                if s in ("pending", "running"):
                    active[u] = active.get(u, 0) + 1
                elif s == "queued":
                    queued[u] = queued.get(u, 0) + 1
            busy = sum(active.values())
            runnable = sum(min(q, max(0, limit - active.get(u, 0))) for u, q in queued.items())
            return min(max(0, slots - busy), runnable)

        total, last = 0.0, t0
        for at, j, _u, to in ev:
            at = float(at)
            total += idle_now() * max(0.0, min(at, t1) - last)
            last = max(last, min(at, t1))
            state[j] = to
        return total

    def drain(self, n_consumers):
        per_user = 2 if self.quick else 5
        n_users = 4 if self.quick else 8
        users = [self.user(f"r5n{n_consumers}") for _ in range(n_users)]
        dss = [self.dataset(u, 0.2) for u in users]
        c = self.http()
        jobs = [self.submit(c, users[k % n_users], dss[k % n_users], f"r5 {k}")
                for k in range(per_user * n_users)]
        c.close()
        self.wait_published()
        t_start = float(psql("SELECT extract(epoch FROM clock_timestamp())"))
        cons = [None] * n_consumers
        ths = [threading.Thread(target=lambda k=k: cons.__setitem__(
            k, self.start_consumer(f"bench-d{k}-{self.run}-{n_consumers}", 2)))
            for k in range(n_consumers)]
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        if not all(cons):
            raise Broken("a drain consumer did not start")
        try:
            self.wait_terminal(jobs, 600)
        finally:
            for p in cons:
                self.stop_consumer(p)
        ids = ",".join(f"'{j}'" for j in jobs)
        t0, t1 = (float(x) for x in rows(
            "SELECT extract(epoch FROM min(at) FILTER (WHERE to_status = 'pending')),"
            " extract(epoch FROM max(at) FILTER (WHERE to_status IN"
            f" ('completed','failed','cancelled'))) FROM job_events WHERE job_id IN ({ids})")[0])
        idle = self.idle_slot_seconds(jobs, 2 * n_consumers, t0, t1)
        return {"jobs": len(jobs), "secs": t1 - t0, "rate": len(jobs) / (t1 - t0),
                "idle": idle, "slot_secs": 2 * n_consumers * (t1 - t0), "start": t_start}

    def row5(self):
        log("row 5: backlog drain with 1 and 2 consumers")
        self.results[5] = {n: self.drain(n) for n in (1, 2)}

    # ------------------------------------------------------------ row 10

    def burst_wait(self, burst):
        """Seconds from publishing user B's one job (straight to AMQP) to its claim, with
        `burst` jobs of user A published just before it on the same channel, on 2 consumers
        x 2 slots where A holds 2 slots with long jobs; and how long the publishing took."""
        import pika
        a, b = self.user("r10a"), self.user("r10b")
        ds_a, ds_b = self.dataset(a, 600), self.dataset(b, 0.2)
        cons = [self.start_consumer(f"bench-r10-{i}-{self.run}", 2) for i in (1, 2)]

        def msg(u, ds):
            return {"schema": "trainq.job.v1", "job_id": str(uuid.uuid4()), "user_id": u,
                    "dataset_id": ds, "type": "lora", "base_model": BASE_MODEL, "config": {}}

        def publish(msgs):
            conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
            try:
                ch = conn.channel()
                for m in msgs:
                    ch.basic_publish("trainq.jobs", "lora", json.dumps(m), pika.BasicProperties(
                        content_type="application/json", delivery_mode=2,
                        message_id=m["job_id"]))
            finally:
                conn.close()
        try:
            first = [msg(a, ds_a) for _ in range(2)]
            publish(first)
            ids = ",".join(f"'{m['job_id']}'" for m in first)
            wait_until(lambda: psql(f"SELECT count(*) FROM training_jobs WHERE id IN ({ids})"
                                    " AND status = 'running'") == "2", 60, "A's two jobs running")
            mb = msg(b, ds_b)
            t0 = time.time()
            publish([msg(a, ds_a) for _ in range(burst)] + [mb])
            t1 = time.time()
            wait_until(lambda: self.event_at([mb["job_id"]], "pending"), 60, "B's claim")
            return self.event_at([mb["job_id"]], "pending")[mb["job_id"]] - t1, t1 - t0
        finally:
            for p in cons:
                self.stop_consumer(p)
            self.retire_queued(f"bench-r10%-{self.run}-%")

    def row10(self):
        log("row 10: another user's job behind a burst of one user's direct jobs")
        burst = 100 if self.quick else 1000
        alone, _ = self.burst_wait(0)
        behind, took = self.burst_wait(burst)
        self.results[10] = {"burst": burst, "alone": alone, "behind": behind, "publish": took}

    # ------------------------------------------------------------ row 7

    def row7(self):
        log("row 7: python3-celery on the same broker")
        n = 200 if self.quick else 3000
        u = urllib.parse.urlparse(AMQP_URL)
        broker = f"amqp://{u.username}:{u.password}@{u.hostname}:{u.port}//"
        queue = f"tqbench.celery.{self.run}"
        marks_prefix = os.path.join(self.work, "celery-marks")
        env = self.env(BENCH_BROKER=broker, BENCH_QUEUE=queue, BENCH_N=n, BENCH_MARKS=marks_prefix,
                       C_FORCE_ROOT="1", PYTHONPATH=HERE)
        pub = subprocess.run(["/usr/bin/python3", "-c",
                              "import os, time, json\n"
                              "import celery_app as a\n"
                              "n = int(os.environ['BENCH_N'])\n"
                              "a.noop.delay(-1)\n"  # connection and declarations warm
                              "t0 = time.perf_counter()\n"
                              "for i in range(n): a.noop.delay(i)\n"
                              "print(json.dumps({'secs': time.perf_counter() - t0}))\n"],
                             env=env, capture_output=True, text=True, timeout=600)
        if pub.returncode != 0:
            raise Broken(f"celery publisher failed: {pub.stderr.strip()[-600:]}")
        pub_secs = json.loads(pub.stdout.strip().splitlines()[-1])["secs"]
        # celery's default pool (prefork), one process per CPU as on this machine.
        w = self.start(["/usr/bin/python3", "-m", "celery", "-A", "celery_app", "worker",
                        "--pool=prefork", f"--concurrency={os.cpu_count() or 2}", "-Q", queue,
                        "--without-heartbeat", "--without-gossip", "--without-mingle",
                        "-l", "warning"], "celery-worker", **{
                            k: v for k, v in env.items() if k.startswith(("BENCH_", "C_FORCE",
                                                                           "PYTHONPATH"))})

        def marks():
            out = []
            d = os.path.dirname(marks_prefix)
            for name in os.listdir(d):
                if name.startswith(os.path.basename(marks_prefix) + "."):
                    with open(os.path.join(d, name)) as f:
                        out += [float(x) for x in f.read().split()]
            return out
        try:
            wait_until(lambda: len(marks()) >= n, 600, "the celery worker to finish",
                       interval=0.2)
        finally:
            w.stop()
        m = sorted(marks())
        self.results[7] = {"n": n, "publish": n / pub_secs,
                           "worker": (len(m) - 1) / (m[-1] - m[0]) if m[-1] > m[0] else None}
        try:
            import pika
            conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
            conn.channel().queue_delete(queue)
            conn.close()
        except Exception:  # noqa: BLE001 - leftover queue only
            pass

    # ------------------------------------------------------------ row 9

    def row9(self):
        """Reading trainer output: tq_log_splitter + tq_progress_parse (+ the log batch) per
        MB of a generated tqdm stream, next to memchr over the same bytes
        (tests/bench/progress_cost.c)."""
        log("row 9: progress parsing and line splitting per MB of trainer output")
        out = subprocess.run([os.path.join(self.bin, "tests", "bench", "bench-progress"),
                              "8" if self.quick else "64"],
                             capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise Broken(f"bench-progress failed: {out.stderr.strip()[-600:]}")
        self.results[9] = json.loads(out.stdout.strip().splitlines()[-1])

    # ------------------------------------------------------------ table

    def table(self):
        R = self.results
        lines = []
        add = lines.append
        add("| # | measure | trainq | floor / peer | ratio or delta | target | met |")
        add("|---|---|---|---|---|---|---|")

        def yes(b):
            return "n/a" if b is None else ("yes" if b else "**no**")

        r1 = R.get(1)
        if r1:
            s, fx, pg2, pg1 = r1["sub"], r1["fixed"], r1["pg2"], r1["pg1"]
            ratio = s["rps"] / pg2["tps"] if pg2["tps"] else None
            add(f"| 1 | submit req/s, wrk {self.args.connections} conns {self.duration}s |"
                f" {fmt(s['rps'])} | fixed-200 (same MHD stack): {fmt(fx['rps'])} |"
                f" {fmt(s['rps'] / fx['rps'], nd=3)} × HTTP floor | — | — |")
            add(f"| 1 | submit ÷ pgbench of the same SQL ({self.threads} clients) |"
                f" {fmt(s['rps'])} | pgbench as committed (2 txns/submit): {fmt(pg2['tps'])} tps;"
                f" folded into 1 txn: {fmt(pg1['tps'])} tps |"
                f" {fmt(ratio, nd=2)} (vs 1-txn: {fmt(s['rps'] / pg1['tps'], nd=2)}) |"
                f" ≥ 0.70 | {yes(ratio >= 0.7 if ratio else None)} |")
            p99 = s["p99_us"] / 1e3
            add(f"| 1 | submit latency p50 / p99 | {fmt(s['p50_us'] / 1e3, ' ms', 2)} /"
                f" {fmt(p99, ' ms', 2)} | fixed-200: {fmt(fx['p50_us'] / 1e3, ' ms', 2)} /"
                f" {fmt(fx['p99_us'] / 1e3, ' ms', 2)}; pgbench mean {fmt(pg2['lat_ms'], ' ms', 2)} |"
                f" — | p99 < 20 ms | {yes(p99 < 20)} |")
            add(f"| 1 | submit errors (non-2xx, socket) | {s['errors']} of {s['requests']:,}"
                f" ({r1['committed']:,} jobs committed) | fixed-200: {fx['errors']};"
                f" pgbench failed txns: {pg2['failed']} | — | 0 | {yes(s['errors'] == 0)} |")
        r2 = R.get(2)
        if r2:
            q, rl = r2["queue"], r2["relay"]
            add(f"| 2 | submit committed → message on the queue, {r2['rate']} req/s"
                f" (n={r2['n']}), p50 / p99 | {fmt(pct(q, 50), ' ms', 1)} / {fmt(pct(q, 99), ' ms', 1)}"
                f" | relay confirmed (outbox.published_at − created_at): {fmt(pct(rl, 50), ' ms', 1)} /"
                f" {fmt(pct(rl, 99), ' ms', 1)} | — | — | — |")
        if r1:
            lag = r1["sat_lag"]
            add(f"| 2 | same, relay confirmed under row 1's full load (n={len(lag):,}) p50 / p99 |"
                f" {fmt(pct(lag, 50), ' ms', 1)} / {fmt(pct(lag, 99), ' ms', 1)} | — | — | — | — |")
        r3 = R.get(3)
        if r3:
            o, b, c = (statistics.median(r3[k]) for k in ("ours", "bare", "cli"))
            add(f"| 3 | dispatch: published → running, median (p90) n={len(r3['ours'])} |"
                f" {fmt(o, ' ms')} ({fmt(pct(r3['ours'], 90), ' ms')}) | bare create+start"
                f" {fmt(b, ' ms')} ({fmt(pct(r3['bare'], 90), ' ms')}); `docker run -d` CLI"
                f" {fmt(c, ' ms')} ({fmt(pct(r3['cli'], 90), ' ms')}) |"
                f" {sfmt(o - b, ' ms')} vs bare; {sfmt(o - c, ' ms')} vs CLI | ≤ bare + 15 ms |"
                f" {yes(o <= b + 15)} |")
            add(f"| 3 | dispatch breakdown, medians | published → pending (delivery + claim)"
                f" {fmt(statistics.median(r3['claim']), ' ms')}; pending → running (create +"
                f" start + mark running) {fmt(statistics.median(r3['launch']), ' ms')} | — | — |"
                " — | — |")
        r4 = R.get(4)
        if r4 and r3:
            o = statistics.median(r4["ours"])
            b = statistics.median(r3["bare"])
            add(f"| 4 | release: container exit → user's waiting job running, median (max)"
                f" n={len(r4['ours'])} | {fmt(o, ' ms')} ({fmt(max(r4['ours']), ' ms')}) |"
                f" bare create+start {fmt(b, ' ms')} | {sfmt(o - b, ' ms')} |"
                f" ≤ create+start + 50 ms | {yes(o <= b + 50)} |")
            med = [statistics.median(p[k] for p in r4["parts"]) for k in range(3)]
            bw = statistics.median(r3["bare_wait"]) if r3.get("bare_wait") else None
            add(f"| 4 | release breakdown, medians | exit → outcome recorded {fmt(med[0], ' ms')};"
                f" → picked (claimed) {fmt(med[1], ' ms')};"
                f" → running {fmt(med[2], ' ms')} | bare: exit → wait returns {fmt(bw, ' ms')};"
                f" create+start {fmt(b, ' ms')} | — | — | — |")
        r5 = R.get(5)
        if r5:
            for n, d in sorted(r5.items()):
                add(f"| 5 | drain {d['jobs']} jobs (0.2 s) across users, {n} consumer(s) × 2 slots |"
                    f" {fmt(d['secs'], ' s', 2)}, {fmt(d['rate'], ' jobs/s', 2)} |"
                    f" idle slot-seconds while runnable work waited: {fmt(d['idle'], ' s', 2)}"
                    f" of {fmt(d['slot_secs'], ' s', 1)} |"
                    f" {fmt(100 * d['idle'] / d['slot_secs'] if d['slot_secs'] else None, ' %')}"
                    " idle | — | — |")
        if r1 or self.consumer_hwm:
            prod = R.get(6, {}).get("producer_hwm")
            cons = max(self.consumer_hwm) if self.consumer_hwm else None
            add(f"| 6 | peak RSS (VmHWM) producer / consumer | {fmt(prod and prod / 1024, ' MB', 1)}"
                f" / {fmt(cons and cons / 1024, ' MB', 1)} | — | — | < 20 MB / < 10 MB |"
                f" {yes(None if prod is None or cons is None else prod < 20480 and cons < 10240)} |")
            pa, ca = self.anon_peak["producer"], self.anon_peak["consumer"]
            add(f"| 6 | of which the process's own memory: peak RssAnon producer / consumer"
                f" (sampled every 100 ms; the rest of VmHWM is shared library pages) |"
                f" {fmt(pa / 1024, ' MB', 1)} / {fmt(ca / 1024, ' MB', 1)} | — | — | — | — |")
        if r1:
            per_k = r1["cpu"] / max(1, r1["committed"]) * 1000
            add(f"| 6 | producer CPU seconds per 1000 submissions | {fmt(per_k, ' s', 3)} | — |"
                f" — | — | — |")
        r7 = R.get(7)
        if r7:
            sub = R[1]["sub"]["rps"] if r1 else None
            drain = R[5][1]["rate"] if r5 else None
            add(f"| 7 | python3-celery `delay()` publish rate (n={r7['n']}, 1 client) |"
                f" our submit: {fmt(sub, '/s')} | celery: {fmt(r7['publish'], '/s')} |"
                f" {fmt(sub / r7['publish'] if sub else None, nd=2)} × | — | — |")
            add(f"| 7 | celery no-op worker (prefork, 1 process per CPU) vs our drain (1 consumer) |"
                f" our drain: {fmt(drain, ' jobs/s', 2)} | celery: {fmt(r7['worker'], ' tasks/s')} |"
                f" — | — | — |")
        r8 = R.get(8)
        if r8:
            lat = r8["lat"]
            add(f"| 8 | status change → SSE event at the client, {r8['n']} open streams"
                f" (n={len(lat)}, bursts of {r8['n']} changes) p50 / p99 |"
                f" {fmt(pct(lat, 50), ' ms', 1)} / {fmt(pct(lat, 99), ' ms', 1)} | — | — |"
                f" — | — |")
            add(f"| 8 | producer with {r8['n']} open streams: CPU idle / during the bursts;"
                f" VmRSS (RssAnon) | {fmt(100 * r8['cpu_idle'] / r8['idle_s'], ' %', 2)} /"
                f" {fmt(100 * r8['cpu_busy'] / r8['busy_s'], ' %', 1)};"
                f" {fmt(r8['rss_kb'] / 1024, ' MB', 1)} ({fmt(r8['anon_kb'] / 1024, ' MB', 1)})"
                f" | before the streams opened: {fmt(r8['rss_before_kb'] / 1024, ' MB', 1)}"
                f" ({fmt(r8['anon_before_kb'] / 1024, ' MB', 1)}) | — | — | — |")
        r9 = R.get(9)
        if r9:
            add(f"| 9 | reading trainer output: split + progress parse per MB of a tqdm stream"
                f" ({r9['mb']:.0f} MB; + log batch: {r9['consumer_s_per_mb'] * 1e3:.2f} ms/MB) |"
                f" {r9['parse_s_per_mb'] * 1e3:.2f} ms/MB ({r9['parse_mb_s']:.0f} MB/s) |"
                f" memchr \\r \\n: {r9['floor_s_per_mb'] * 1e3:.3f} ms/MB |"
                f" {r9['parse_s_per_mb'] / r9['floor_s_per_mb']:.0f} × | — | — |")
        r10 = R.get(10)
        if r10:
            extra = r10["behind"] - r10["alone"]
            add(f"| 10 | another user's job: published → claimed behind {r10['burst']:,} direct jobs"
                f" of one user (published in {fmt(r10['publish'], ' s', 2)}) |"
                f" {fmt(r10['behind'], ' s', 3)} | alone: {fmt(r10['alone'], ' s', 3)} |"
                f" +{fmt(extra, ' s', 3)} | < +1 s | {yes(extra < 1.0)} |")
        return "\n".join(lines)

    # ------------------------------------------------------------ row 8

    def row8(self):
        """100 clients each follow one job's stream (GET /api/training/jobs/{id}/stream,
        one thread each, an independent client). Idle: the producer's CPU and memory with the
        streams open. Then every job goes queued → pending → running → completed, one
        transaction each, from one psql session (a burst of 100 changes per step); the
        latency of a change is the client's receive time minus job_events.at (the
        change's clock_timestamp() in its transaction, so it includes the commit)."""
        n = 100
        log(f"row 8: Server-Sent Events, {n} streams")
        p = self.start([os.path.join(self.bin, "producer", "trainq-producer")], "producer-sse",
                       TRAINQ_HTTP_ADDR="127.0.0.1:0", TRAINQ_JWT_SECRET=self.secret,
                       TRAINQ_HTTP_THREADS=self.threads, TRAINQ_SUBMIT_RATE_PER_MINUTE=1000000,
                       TRAINQ_READ_RATE_PER_MINUTE=1000000,
                       TRAINQ_HTTP_MAX_CONNECTIONS_PER_CLIENT=4 * n, TRAINQ_LOG_LEVEL="info")
        port = int(p.wait_event("http.listening")["port"])
        tag = f"sse{self.run}"
        users = [f"bench-{tag}-{i}" for i in range(n)]
        dss = [str(uuid.uuid4()) for _ in range(n)]
        psql("INSERT INTO datasets (id, user_id, name, storage_path) VALUES "
             + ",".join(f"('{d}', '{u}', 'bench', 'sse/{d}')" for u, d in zip(users, dss)))
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        jobs = [self.submit(c, u, d, "bench sse") for u, d in zip(users, dss)]
        c.close()
        # keep the relay's messages off the queue: nobody consumes in this row
        self.wait_published()
        self.purge()
        got = {j: {} for j in jobs}
        ready = threading.Barrier(n + 1)
        rss_before = proc_status(p.pid, "VmRSS")
        anon_before = proc_status(p.pid, "RssAnon")

        def follow(user, job):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            conn.request("GET", f"/api/training/jobs/{job}/stream",
                         headers={"Accept": "text/event-stream",
                                  "Authorization": f"Bearer {mint(user, self.secret)}"})
            r = conn.getresponse()
            event, first = None, True
            while True:
                line = r.readline()
                if not line:
                    break
                t = time.time()
                line = line.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "status":
                    got[job][json.loads(line[6:])["status"]] = t
                    if first:
                        first = False
                        ready.wait(60)
            conn.close()

        threads = [threading.Thread(target=follow, args=(u, j), daemon=True)
                   for u, j in zip(users, jobs)]
        for t in threads:
            t.start()
        ready.wait(60)
        rss0 = proc_status(p.pid, "VmRSS")
        anon0 = proc_status(p.pid, "RssAnon")
        idle = 3 if self.quick else 15
        cpu0 = proc_cpu_seconds(p.pid)
        time.sleep(idle)
        cpu_idle = proc_cpu_seconds(p.pid) - cpu0
        ids = ",".join(f"'{j}'" for j in jobs)
        steps = [("pending", ", worker_id = 'bench-sse', fencing_token = fencing_token + 1"),
                 ("running", ", started_at = now()"), ("completed", ", completed_at = now()")]
        cpu0 = proc_cpu_seconds(p.pid)
        t0 = time.monotonic()
        for st, extra in steps:
            psql("".join(f"UPDATE training_jobs SET status = '{st}'{extra} WHERE id = '{j}';\n"
                         for j in jobs))
            wait_until(lambda: all(st in got[j] for j in jobs), 60, f"every stream's {st}")
        busy = time.monotonic() - t0
        cpu_busy = proc_cpu_seconds(p.pid) - cpu0
        for t in threads:
            t.join(30)
        at = {(r[0], r[1]): float(r[2]) for r in rows(
            "SELECT job_id, to_status, extract(epoch FROM at) FROM job_events"
            f" WHERE job_id IN ({ids}) AND to_status IN ('pending', 'running', 'completed')")}
        lat = [(got[j][st] - at[(j, st)]) * 1e3 for j in jobs for st, _ in steps
               if (j, st) in at and st in got[j]]
        p.stop()
        self.results[8] = {"n": n, "lat": lat, "rss_kb": rss0, "anon_kb": anon0,
                           "rss_before_kb": rss_before, "anon_before_kb": anon_before,
                           "cpu_idle": cpu_idle, "idle_s": idle, "cpu_busy": cpu_busy,
                           "busy_s": busy, "ended": sum(not t.is_alive() for t in threads)}

    # ------------------------------------------------------------ main

    def run_all(self):
        head = [f"trainq bench ({'quick' if self.quick else 'full'}), "
                f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {os.cpu_count()} CPUs,"
                f" producer {self.threads} HTTP threads / DB connections", ""]
        sampler = threading.Thread(target=self.sample_anon, daemon=True)
        sampler.start()
        only = self.args.only
        want = lambda n: not only or n in only
        try:
            for n, row in ((1, self.row1), (2, self.row2), (3, self.row3), (4, self.row4),
                           (5, self.row5)):
                if want(n):
                    row()
            if self.producer:
                self.results[6] = {"producer_hwm": proc_status(self.producer.pid, "VmHWM")}
                self.producer.stop()
            self._sampling.set()
            if want(7):
                self.row7()
            if want(8):
                self.row8()
            if want(9):
                self.row9()
            if want(10):
                self.row10()
        finally:
            self._sampling.set()
            for p in self.procs:
                p.stop()
            # Leave no bench job behind to run later.
            try:
                self.purge()
                self.retire_queued("bench-%")
            except Exception:  # noqa: BLE001 - best effort
                pass
        table = "\n".join(head) + self.table() + "\n"
        with open(self.args.out, "w") as f:
            f.write(table)
        print(table)
        with open(os.path.join(os.path.dirname(self.args.out), "bench.json"), "w") as f:
            json.dump({str(k): v for k, v in self.results.items()}, f, indent=1, default=str)
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--work-dir", required=True)
    ap.add_argument("--duration", type=int, default=15)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--http-threads", type=int, default=4)
    ap.add_argument("--keep", action="store_true", help="keep logs and scratch files")
    ap.add_argument("--only", type=lambda v: {int(x) for x in v.split(",") if x},
                    default=set(), help="comma-separated rows to run (default: all)")
    args = ap.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    try:
        Bench(args).run_all()
    except Broken as e:
        log(f"broken: {e}")
        sys.exit(1)


if __name__ == "__main__":
    main()
