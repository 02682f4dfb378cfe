"""trainq benchmarks, each measured next to its floor in the same run (scripts/bench.sh).

Runs against services that scripts/bench.sh started (TRAINQ_* in the environment) and the
release binaries in --bin-dir. Prints one markdown table and writes it to --out. It never
fails on numbers: only broken machinery (a program that does not start, a job that never
finishes, a tool that errors) makes it exit non-zero.

Rows (docs/performance.md explains each):
  1 submit throughput/latency (wrk) vs fixed-200 on the same HTTP stack and pgbench of the
    submit's SQL and the database's floor (bare durable insert + commit, with and without
    NOTIFY)          2 submit → message on the queue      3 dispatch latency vs bare
    create+start and `docker run -d`    4 release latency      5 backlog drain
  6 footprint             7 python3-celery on the same broker
  8 Server-Sent Events: status change → event at the client with 100 open streams, and the
    producer's CPU and memory with them open
  10 webhooks: status change → request at a receiver on 127.0.0.1, and a backlog of 10 000
    deliveries drained next to the receiver's own ceiling (wrk, new connection per request)
  14 backlog drain with mixed priorities: jobs/s, idle slot-seconds, priority inversions
"""

import argparse
import base64
import glob
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


def proc_pss(pid):
    """Proportional set size in kB (/proc/<pid>/smaps_rollup): the process's own pages plus
    its share of each page it maps with others (a library mapped by 4 processes counts a
    quarter), or None."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
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
        # A restart under the same name appends: its events are the ones after this offset
        # (a second producer must not be told the first one's port).
        self._from = self._f.tell()
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
            f.seek(getattr(self, "_from", 0))
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
        self.producer_hwm_before = None  # VmHWM of row 1's first producer (it restarts)
        self.port = None
        self.anon_peak = {"producer": 0, "consumer": 0}
        self.pss_peak = {"producer": 0, "consumer": 0}
        # While a drain's window runs (row 12): the consumers' peak PSS and RssAnon then,
        # with every consumer of the fleet up (sample_anon fills it; None: no window).
        self.window_peak = None
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
        of producer and consumers, sampled every 100 ms through every row of the run."""
        while not self._sampling.wait(0.1):
            for p in list(self.procs):
                kind = ("producer" if p.name == "producer"
                        else "consumer" if p.name.startswith("consumer-") else None)
                if kind and p.running():
                    v = proc_status(p.pid, "RssAnon") or 0
                    self.anon_peak[kind] = max(self.anon_peak[kind], v)
                    pss = proc_pss(p.pid) or 0
                    self.pss_peak[kind] = max(self.pss_peak[kind], pss)
                    wp = self.window_peak
                    if wp is not None and kind == "consumer":
                        wp["pss"], wp["anon"] = max(wp["pss"], pss), max(wp["anon"], v)

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
        with open(os.path.join(self.root, rel, "0001.png"), "wb") as f:  # the preflight's image
            f.write(b"\x89PNG\r\n\x1a\n")
        psql(f"INSERT INTO datasets (id, user_id, name, storage_path) VALUES "
             f"('{ds}', '{user}', 'bench', '{rel}')")
        return ds

    def user(self, tag):
        return f"bench-{tag}-{self.run}-{uuid.uuid4().hex[:4]}"

    def body(self, ds, name="bench job", priority=None):
        b = {"dataset_id": ds, "name": name, "type": "lora", "base_model": BASE_MODEL,
             "trigger_words": ["tqbench"],
             "config": {"steps": 100, "learning_rate": 0.0001, "batch_size": 1, "resolution": 512}}
        if priority:
            b["priority"] = priority
        return json.dumps(b)

    def submit(self, conn, user, ds, name="bench job", priority=None):
        conn.request("POST", "/api/training/submit", body=self.body(ds, name, priority),
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
            f" WHERE job_id IN ({ids}) AND published_at IS NOT NULL"
            " AND exchange = 'trainq.jobs' GROUP BY job_id")}

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

    def wrk(self, port, data, gap_ms=0):
        cmd = ["wrk", "-t2", f"-c{self.args.connections}", f"-d{self.duration}s", "--latency",
               "--timeout", "10s", "-s", os.path.join(HERE, "submit.lua"),
               f"http://127.0.0.1:{port}"]
        p = subprocess.run(cmd, env=self.env(TQ_BENCH_WRK_DATA=data, TQ_BENCH_GAP_MS=gap_ms),
                           capture_output=True,
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
        """The statements one submit sends (producer/pdb.c: tq_pdb_rate_hit then
        tq_pdb_submit, i.e. tq_submit of db/procedures/35_submit.sql, without
        Idempotency-Key), with the same parameters as text; the bench's users have no
        user_limits row, so the cap the rate-limit statement reads and hands on is normal."""
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
        # As the producer sends them (producer/pdb.c): two statements, each its own implicit
        # transaction, prepared (pgbench -M prepared); folded: both in one BEGIN … COMMIT.
        begin, commit = ("BEGIN;\n", "COMMIT;\n") if one_txn else ("", "")
        # tq_pdb_rate_hit commits its counter without waiting for the WAL flush; in the
        # folded variant that would cover the job too, so only the 2-transaction script has it.
        rate_async = "" if one_txn else "set_config('synchronous_commit', 'off', true)"
        rate_s = f"s AS (SELECT {rate_async or '1'}),"
        return f"""\\set n random(1, {self.n_users})
\\set r1 random(0, 65535)
\\set r2 random(0, 281474976710655)
{begin}WITH {rate_s} w AS (  INSERT INTO rate_limits (user_id, bucket, window_start, count)  VALUES ('bench-u' || :n, 'submit', date_trunc('minute', now()), 1)  ON CONFLICT (user_id, bucket, window_start)  DO UPDATE SET count = rate_limits.count + 1  RETURNING count, window_start) SELECT w.count, COALESCE(l.submit_per_min, '1000000'::int),  GREATEST(1, ceil(extract(epoch FROM   (w.window_start + interval '1 minute' - now()))))::int,  CASE WHEN 'submit' = 'submit' THEN COALESCE(l.max_priority, 'normal') ELSE '' END FROM w CROSS JOIN s LEFT JOIN user_limits l ON l.user_id = 'bench-u' || :n AND 'submit' = 'submit';
SELECT outcome, submitted_id FROM tq_submit('bench-u' || :n, {job}::uuid, {ds}::uuid, 'lora', {body}, NULL, '{canon}', NULL, NULL, NULL, NULL, 'normal');
{commit}"""

    def floor_script(self, notify):
        """The database's floor for a submission: one durable insert + commit of a row the
        size of a job (its message as jsonb, as training_jobs.message holds it) into a table
        with a primary key and no triggers, synchronous_commit on. With notify, the same
        transaction also sends a NOTIFY, as the outbox trigger (50_outbox.sql) does in every
        submit (before tq_submit deferred it): the difference is what NOTIFY costs on this
        machine. One statement, its own transaction, prepared: the fastest way to commit a
        row, as the producer's two statements are sent."""
        msg = json.dumps({"schema": "trainq.job.v1", "job_id": "@JOB@",
                          "user_id": "@USER@", "submitted_at": "2026-01-01T00:00:00.000Z",
                          "dataset_id": self.pool_dataset(1), "name": "bench 0-1",
                          "type": "lora", "base_model": BASE_MODEL,
                          "config": {"steps": 100, "learning_rate": 0.0001, "batch_size": 1,
                                     "resolution": 512},
                          "trigger_words": ["tqbench"]}, separators=(",", ":"))
        job = "md5(:r1::text || ':' || :r2::text)::uuid"
        insert = (f"INSERT INTO tq_bench_floor (id, user_id, message) VALUES ({job}, 'bench-u' || :n,"
                  f" replace(replace('{msg}', '@JOB@', {job}::text), '@USER@', 'bench-u' || :n)::jsonb)")
        if notify:
            insert = f"WITH i AS ({insert} RETURNING 1) SELECT pg_notify('tq_bench_floor', '') FROM i"
        return f"""\\set n random(1, {self.n_users})
\\set r1 random(0, 2147483647)
\\set r2 random(0, 281474976710655)
{insert};
"""

    def pgbench_floor(self, notify, rate=None):
        psql("CREATE TABLE IF NOT EXISTS tq_bench_floor (id uuid PRIMARY KEY,"
             " user_id text NOT NULL, message jsonb NOT NULL,"
             " created_at timestamptz NOT NULL DEFAULT now())")
        try:
            return self.pgbench(script=self.floor_script(notify),
                                name=f"floor{'-notify' if notify else ''}", rate=rate)
        finally:
            psql("DROP TABLE IF EXISTS tq_bench_floor")

    def pgbench(self, one_txn=None, script=None, name=None, rate=None):
        """pgbench of a script with the producer's number of clients. rate: paced to that
        many transactions a second (-R, Poisson arrivals); the result then holds p50_ms and
        p99_ms of every transaction's latency as a client sees it (its own time plus the time
        it waited behind earlier ones: pgbench measures it from the scheduled start), from
        pgbench's log."""
        tag = name or ('1' if one_txn else '2') + 'txn'
        path = os.path.join(self.work, f"pgbench-{tag}.sql")
        with open(path, "w") as f:
            f.write(script if script is not None else self.pgbench_script(one_txn))
        u = urllib.parse.urlparse(DATABASE_URL)
        env = self.env(PGPASSWORD=urllib.parse.unquote(u.password or ""))
        c = self.threads
        cmd = ["pgbench", "-n", "-M", "prepared", "-c", str(c), "-j", str(min(c, 2)),
               "-T", str(self.duration), "-f", path, "-h", u.hostname, "-p", str(u.port),
               "-U", urllib.parse.unquote(u.username)]
        logs = os.path.join(self.work, f"pgbench-log-{tag}{'-paced' if rate else ''}")
        if rate:
            cmd += ["-R", f"{rate:.1f}", "-l", "--log-prefix", logs]
        p = subprocess.run(cmd + [u.path.lstrip("/")], env=env, capture_output=True, text=True,
                           timeout=self.duration + 120)
        if p.returncode != 0:
            raise Broken(f"pgbench failed: {p.stderr.strip()[-800:]}")
        tps = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", p.stdout)
        lat = re.search(r"latency average = ([0-9.]+) ms", p.stdout)
        failed = re.search(r"number of failed transactions: (\d+)", p.stdout)
        if not tps:
            raise Broken(f"cannot read pgbench output: {p.stdout[-500:]}")
        # Its rows must never reach a consumer: no producer runs now, so every unpublished
        # outbox row is pgbench's.
        psql("DELETE FROM outbox WHERE published_at IS NULL")
        self.retire_queued("bench-u%")
        out = {"tps": float(tps.group(1)), "lat_ms": float(lat.group(1)) if lat else None,
               "failed": int(failed.group(1)) if failed else 0}
        if rate:
            # Each line: client, transaction, time (µs), script, epoch s, µs, schedule lag (µs);
            # with -R the time runs from the scheduled start, so it holds the lag already.
            lat_ms = []
            for f in glob.glob(logs + ".*"):
                with open(f) as fh:
                    for line in fh:
                        w = line.split()
                        if len(w) >= 7 and w[2].isdigit():
                            lat_ms.append(int(w[2]) / 1e3)
                os.unlink(f)
            if not lat_ms:
                raise Broken("pgbench -R logged no transactions")
            out.update(rate=rate, n=len(lat_ms), p50_ms=pct(lat_ms, 50), p99_ms=pct(lat_ms, 99))
        return out

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
        # (c) the database's floor: a bare durable insert + commit, and the same with NOTIFY
        floor = self.pgbench_floor(notify=False)
        floor_n = self.pgbench_floor(notify=True)
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
        # The same 64 connections paced to about half that rate (each waits after a reply):
        # latency below saturation, where closed-loop p99 is queueing (Little's law).
        gap = max(1, round(2 * self.args.connections * 1000 / max(sub["rps"], 1)))
        t1 = psql("SELECT extract(epoch FROM clock_timestamp())")
        paced = self.wrk(self.port, data, gap_ms=gap)
        paced["gap_ms"] = gap
        self.wait_published()
        hwm = proc_status(p.pid, "VmHWM")
        # The floors of that latency, paced to the rate the producer reached: the submit's
        # SQL alone and the bare insert, each as pgbench's clients see it. With the producer
        # stopped: its relay would publish pgbench's outbox rows.
        p.stop()
        self.producer = None
        self.producer_hwm_before = hwm
        try:
            paced_sql = self.pgbench(one_txn=False, rate=paced["rps"])
            paced_floor = self.pgbench_floor(notify=False, rate=paced["rps"])
        finally:
            self.start_producer()  # the rows after this one use it
        lag = [float(r[0]) * 1e3 for r in rows(
            "SELECT extract(epoch FROM o.published_at - j.created_at) FROM training_jobs j"
            " JOIN outbox o ON o.job_id = j.id AND o.exchange = 'trainq.jobs'"
            " WHERE j.user_id LIKE 'bench-u%'"
            f" AND j.created_at >= to_timestamp({t0}) AND j.created_at < to_timestamp({t1})")]
        self.purge()
        self.retire_queued("bench-u%")
        self.results[1] = {"fixed": fixed, "pg2": pg2, "pg1": pg1, "floor": floor,
                           "floor_notify": floor_n, "sub": sub, "paced": paced,
                           "paced_sql": paced_sql, "paced_floor": paced_floor,
                           "committed": ok,
                           "cpu": cpu1 - cpu0, "sat_lag": lag}

    # ------------------------------------------------------------ row 2

    def row2(self):
        log("row 2: submit → message on the queue, moderate load")
        import pika
        # Row 1's retire_queued cancelled its jobs, and their job.cancelled events (outbox
        # rows, published in id order before any newer row) would hold this row's first
        # second of messages behind them.
        self.wait_published()
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

    def datasets(self, users, duration):
        """self.dataset for many users at once (one INSERT)."""
        dss = [str(uuid.uuid4()) for _ in users]
        for u, ds in zip(users, dss):
            os.makedirs(os.path.join(self.root, u, ds))
            with open(os.path.join(self.root, u, ds, "trainer.env"), "w") as f:
                f.write(f"DURATION={duration}\nEXIT_CODE=0\nSTEPS=1\nMESSAGE=bench done\n")
            with open(os.path.join(self.root, u, ds, "0001.png"), "wb") as f:  # the preflight's
                f.write(b"\x89PNG\r\n\x1a\n")
        psql("INSERT INTO datasets (id, user_id, name, storage_path) VALUES "
             + ",".join(f"('{ds}', '{u}', 'bench', '{u}/{ds}')" for u, ds in zip(users, dss)))
        return dss

    def drain(self, n_consumers, n_users=None, per_user=None, tag="r5", priority=None,
              window=None):
        """priority: None, or priority(k) -> 'low'|'normal'|'high' of the k-th submission
        (every user may then ask for 'high'); the result adds the job ids ("ids").
        window: measure the first `window` seconds from the first claim instead of the whole
        drain (the backlog stays large throughout; what is still queued then is cancelled and
        the running jobs finish before the consumers stop); the result adds the mean time of
        a pick (`tq_pick`, pg_stat_user_functions) over the run."""
        per_user = per_user or (2 if self.quick else 5)
        n_users = n_users or (4 if self.quick else 8)
        if not self.producer or not self.producer.running():  # without row 1, or after 6
            self.start_producer()
        users = [self.user(f"{tag}n{n_consumers}") for _ in range(n_users)]
        dss = self.datasets(users, 0.2)
        if priority:
            psql("INSERT INTO user_limits (user_id, max_priority) VALUES "
                 + ",".join(f"('{u}', 'high')" for u in users))
        c = self.http()
        jobs = [self.submit(c, users[k % n_users], dss[k % n_users], f"{tag} {k}",
                            priority(k) if priority else None)
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
        ids = ",".join(f"'{j}'" for j in jobs)
        try:
            if window:
                picks0 = self.pick_stats()
                self.window_peak = {"pss": 0, "anon": 0}
                wait_until(lambda: psql(
                    "SELECT clock_timestamp() > min(at) + make_interval(secs => %d)"
                    " FROM job_events WHERE to_status = 'pending'"
                    f" AND job_id IN ({ids})" % window) == "t", window + 120,
                    "the drain's window to pass", interval=0.5)
                picks1 = self.pick_stats()
                cut = float(psql("SELECT extract(epoch FROM clock_timestamp())"))
                footprint, self.window_peak = self.window_peak, None
                self.retire_queued(f"bench-{tag}%")
                ids_run = [j for j, st in rows(f"SELECT id, status FROM training_jobs"
                                               f" WHERE id IN ({ids})") if st != "cancelled"]
                self.wait_terminal(ids_run, 300)
            else:
                self.wait_terminal(jobs, 600)
        finally:
            self.window_peak = None
            for p in cons:
                self.stop_consumer(p)
        t0, t1 = (float(x) for x in rows(
            "SELECT extract(epoch FROM min(at) FILTER (WHERE to_status = 'pending')),"
            " extract(epoch FROM max(at) FILTER (WHERE to_status IN"
            f" ('completed','failed','cancelled'))) FROM job_events WHERE job_id IN ({ids})")[0])
        done = len(jobs)
        if window:
            # The window's end: the cancel of what was still queued, or the drain's end.
            t1 = min(t1, cut)
            done = int(psql(f"SELECT count(*) FROM job_events WHERE job_id IN ({ids})"
                            " AND to_status = 'completed'"
                            f" AND at <= to_timestamp({t1})"))
        idle = self.idle_slot_seconds(jobs, 2 * n_consumers, t0, t1)
        out = {"jobs": len(jobs), "done": done, "users": n_users, "secs": t1 - t0,
               "rate": done / (t1 - t0),
               "idle": idle, "slot_secs": 2 * n_consumers * (t1 - t0), "start": t_start}
        if window:
            calls = picks1[0] - picks0[0]
            out["pick_ms"] = (picks1[1] - picks0[1]) / calls if calls else None
            out["picks"] = calls
            out["pss_kb"], out["anon_kb"] = footprint["pss"], footprint["anon"]
        if priority:
            out["ids"] = jobs
        return out

    def row5(self):
        log("row 5: backlog drain with 1 and 2 consumers")
        self.results[5] = {n: self.drain(n) for n in (1, 2)}

    @staticmethod
    def pick_stats():
        """(calls, total ms) of tq_pick so far (track_functions, set by row12)."""
        r = rows("SELECT calls, total_time FROM pg_stat_user_functions"
                 " WHERE funcname = 'tq_pick'")
        return (int(r[0][0]), float(r[0][1])) if r else (0, 0.0)

    def row12(self):
        """Many users, many hosts (issue 11, item 6; opt-in, --many): the same backlog drain
        as row 5 with 20 consumers × 2 slots, once for 1 000 users with 3 jobs each and once
        for 10 users with 300 each (at most 20 of the 40 slots usable: the per-user limit),
        each measured over its first 90 s (the backlog stays in the thousands throughout:
        draining 6 000 jobs would take a quarter of an hour on 2 cores, and its tail, with
        few users left, says nothing about many)."""
        cons, few, many, window = ((4, (10, 20), (100, 2), 30) if self.quick
                                   else (20, (10, 300), (1000, 3), 90))
        log(f"row 12: drain with {cons} consumers × 2 slots: {many[0]} users vs {few[0]} users")
        # The pick's own time, from the consumers' backends (who connect after this).
        track = ("DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET track_functions = %L',"
                 " current_database(), '{}'); END $$;")
        self.superuser_psql(track.format("pl"))
        try:
            self.results[12] = {
                "consumers": cons, "window": window,
                "many": self.drain(cons, n_users=many[0], per_user=many[1], tag="r12m",
                                   window=window),
                "few": self.drain(cons, n_users=few[0], per_user=few[1], tag="r12f",
                                  window=window)}
        finally:
            self.superuser_psql(track.format("none"))

    # ------------------------------------------------------------ row 14

    def row14(self):
        """Idle slots with mixed priorities (issue 14): row 5's drain on 2 consumers × 2
        slots of 6 users whose backlogs mix low, normal and high (0.2 s jobs), all submitted
        before a consumer starts. Besides jobs/s and idle slot-seconds, the order in which
        priorities started: an inversion is a job that started (pending) while a job of a
        higher priority was queued and runnable (its user below the limit of 2)."""
        n_users, per_user = (6, 3) if self.quick else (6, 12)
        names = ("low", "normal", "high")
        # the k-th submission goes to user k % 6; every user gets all three priorities
        prio = lambda k: names[(k // n_users + k) % 3]  # noqa: E731
        log(f"row 14: drain of {n_users} users × {per_user} jobs, mixed priorities,"
            " 2 consumers × 2 slots")
        d = self.drain(2, n_users=n_users, per_user=per_user, tag="r14", priority=prio)
        jobs = d.pop("ids")
        ids = ",".join(f"'{j}'" for j in jobs)
        user = dict(rows(f"SELECT id, user_id FROM training_jobs WHERE id IN ({ids})"))
        rank = dict(rows(f"SELECT id, priority FROM training_jobs WHERE id IN ({ids})"))
        rank = {j: int(v) for j, v in rank.items()}
        ev = rows(f"SELECT extract(epoch FROM e.at), e.job_id, e.to_status FROM job_events e"
                  f" WHERE e.job_id IN ({ids}) AND e.to_status <> 'queued' ORDER BY e.at, e.id")
        state = {j: "queued" for j in jobs}
        inversions, first, last = 0, {}, {}
        for at, j, to in ev:
            if to == "pending" and state[j] == "queued":
                active = {}
                for o, s in state.items():
                    if s in ("pending", "running"):
                        active[user[o]] = active.get(user[o], 0) + 1
                if any(s == "queued" and rank[o] > rank[j] and active.get(user[o], 0) < 2
                       for o, s in state.items()):
                    inversions += 1
                p = names[rank[j]]
                first.setdefault(p, float(at))
                last[p] = float(at)
            state[j] = to
        t0 = min(first.values())
        d.update({"inversions": inversions,
                  "first": {p: first[p] - t0 for p in first},
                  "last": {p: last[p] - t0 for p in last},
                  "by_priority": {p: sum(1 for j in jobs if names[rank[j]] == p) for p in names}})
        self.results[14] = d

    # ------------------------------------------------------------ row 13

    def burst_wait(self, burst):
        """Seconds from publishing user B's one job (straight to AMQP) to its claim, with
        `burst` jobs of user A published just before it on the same channel, on 2 consumers
        x 2 slots where A holds 2 slots with long jobs; and how long the publishing took."""
        import pika
        a, b = self.user("r13a"), self.user("r13b")
        ds_a, ds_b = self.dataset(a, 600), self.dataset(b, 0.2)
        cons = [self.start_consumer(f"bench-r13-{i}-{self.run}", 2) for i in (1, 2)]

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
            like = f"bench-r13%-{self.run}-%"
            self.retire_queued(like)
            # A's 600 s jobs are cancelled before the consumers stop: a stopped consumer leaves
            # its containers running, and the next call's consumers (the same worker ids)
            # would adopt them and have no slot free for B.
            psql("UPDATE training_jobs SET cancel_requested_at = now()"
                 f" WHERE status IN ('pending', 'running') AND user_id LIKE '{like}'")
            wait_until(lambda: psql("SELECT count(*) FROM training_jobs WHERE status IN"
                                    f" ('pending', 'running') AND user_id LIKE '{like}'") == "0",
                       120, "row 13's long jobs cancelled", interval=0.2)
            for p in cons:
                self.stop_consumer(p)

    def row13(self):
        log("row 13: another user's job behind a burst of one user's direct jobs")
        burst = 100 if self.quick else 1000
        alone, _ = self.burst_wait(0)
        behind, took = self.burst_wait(burst)
        self.results[13] = {"burst": burst, "alone": alone, "behind": behind, "publish": took}

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
                f" {fmt(s['rps'])} | pgbench as the producer sends it (2 prepared statements, each its own transaction): {fmt(pg2['tps'])} tps;"
                f" folded into 1 txn: {fmt(pg1['tps'])} tps |"
                f" {fmt(ratio, nd=2)} (vs 1-txn: {fmt(s['rps'] / pg1['tps'], nd=2)}) |"
                f" ≥ 0.70 | {yes(ratio >= 0.7 if ratio else None)} |")
            fl, fn = r1["floor"], r1["floor_notify"]
            fr = s["rps"] / fl["tps"] if fl["tps"] else None
            add(f"| 1 | submit ÷ the database's floor ({self.threads} clients): pgbench of a bare"
                f" durable insert + commit of one job-sized row (one prepared statement), no triggers | {fmt(s['rps'])} |"
                f" floor: {fmt(fl['tps'])} tps; with one NOTIFY in the transaction:"
                f" {fmt(fn['tps'])} tps ({fmt(fn['tps'] / fl['tps'] if fl['tps'] else None, nd=2)}"
                f" × floor) | {fmt(fr, nd=2)} | ≥ 0.50 | {yes(fr >= 0.5 if fr else None)} |")
            p99 = s["p99_us"] / 1e3
            add(f"| 1 | submit latency p50 / p99 | {fmt(s['p50_us'] / 1e3, ' ms', 2)} /"
                f" {fmt(p99, ' ms', 2)} | fixed-200: {fmt(fx['p50_us'] / 1e3, ' ms', 2)} /"
                f" {fmt(fx['p99_us'] / 1e3, ' ms', 2)}; pgbench mean {fmt(pg2['lat_ms'], ' ms', 2)} |"
                f" — | p99 < 20 ms | {yes(p99 < 20)} |")
            pc = r1.get("paced")
            if pc:
                add(f"| 1 | submit latency p50 / p99, {self.args.connections} conns paced to about"
                    f" half the rate above (each waits {pc['gap_ms']} ms after a reply):"
                    f" {fmt(pc['rps'])} req/s | {fmt(pc['p50_us'] / 1e3, ' ms', 2)} /"
                    f" {fmt(pc['p99_us'] / 1e3, ' ms', 2)} | — | — | p99 < 20 ms |"
                    f" {yes(pc['p99_us'] / 1e3 < 20)} |")
            ps, pf = r1.get("paced_sql"), r1.get("paced_floor")
            if ps and pf:
                add(f"| 1 | the floors of that latency: pgbench paced to the same rate"
                    f" ({fmt(ps['rate'])}/s, Poisson arrivals: an open loop, where wrk's paced"
                    f" connections wait for their replies; {self.threads} clients), p50 / p99"
                    f" from each transaction's scheduled start | submit:"
                    f" {fmt(pc['p99_us'] / 1e3, ' ms', 2)} p99 | the submit's SQL:"
                    f" {fmt(ps['p50_ms'], ' ms', 2)} / {fmt(ps['p99_ms'], ' ms', 2)};"
                    f" the bare insert: {fmt(pf['p50_ms'], ' ms', 2)} /"
                    f" {fmt(pf['p99_ms'], ' ms', 2)} |"
                    f" submit ÷ SQL p99: {fmt(pc['p99_us'] / 1e3 / ps['p99_ms'] if ps['p99_ms'] else None, nd=2)} |"
                    f" — | — |")
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
                f" {fmt(pa / 1024 if pa else None, ' MB', 1)} / {fmt(ca / 1024 if ca else None, ' MB', 1)}"
                " | — | — | — | — |")
            pp, cp = self.pss_peak["producer"], self.pss_peak["consumer"]
            add(f"| 6 | peak PSS producer / consumer (smaps_rollup, sampled every 100 ms: own"
                f" pages plus a share of each shared one) |"
                f" {fmt(pp / 1024 if pp else None, ' MB', 1)} /"
                f" {fmt(cp / 1024 if cp else None, ' MB', 1)} | — | — | < 10 MB / < 5 MB |"
                f" {yes(None if not pp or not cp else pp < 10240 and cp < 5120)} |")
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
        r12 = R.get(12)
        if r12:
            for key in ("many", "few"):
                d = r12[key]
                users = d["users"]
                add(f"| 12 | backlog of {d['jobs']:,} jobs (0.2 s) of {users:,} users,"
                    f" {r12['consumers']} consumers × 2 slots, first {r12['window']} s |"
                    f" {d['done']:,} done in {fmt(d['secs'], ' s', 1)},"
                    f" {fmt(d['rate'], ' jobs/s', 2)}; a pick (`tq_pick`) took"
                    f" {fmt(d.get('pick_ms'), ' ms', 2)} on average ({d.get('picks', 0):,}) |"
                    f" idle slot-seconds while runnable work waited: {fmt(d['idle'], ' s', 1)}"
                    f" of {fmt(d['slot_secs'], ' s', 1)} |"
                    f" {fmt(100 * d['idle'] / d['slot_secs'] if d['slot_secs'] else None, ' %')}"
                    " idle | — | — |")
                add(f"| 12 | its consumers' peak PSS / RssAnon during that window (all"
                    f" {r12['consumers']} up, sampled every 100 ms) |"
                    f" {fmt(d['pss_kb'] / 1024, ' MB', 1)} / {fmt(d['anon_kb'] / 1024, ' MB', 1)}"
                    f" | — | — | PSS < 5 MB | {yes(d['pss_kb'] < 5 * 1024)} |")
        r11 = R.get(11)
        if r11:
            e, b = r11["empty"], r11["big"]
            for key, label, unit, higher in (
                    ("submit_rps", "submit req/s (wrk)", "", True),
                    ("get_ms", "GET /jobs/{id} p50", " ms", False),
                    ("list1_ms", "list, first page p50", " ms", False),
                    ("list100_ms", "list, 100th page p50", " ms", False),
                    ("claim_ms", "claim transaction (tq_pick), mean", " ms", False),
                    ("release_ms", "job end + tq_release_parked transaction, mean", " ms", False)):
                ratio = b[key] / e[key] if e[key] else None
                ok = None if ratio is None else (ratio >= 0.8 if higher else ratio <= 1.2)
                add(f"| 11 | {label}: {e['jobs']:,} jobs / {e['events']:,} audit rows →"
                    f" {b['jobs']:,} / {b['events']:,} (a user with {r11['user_jobs']:,}"
                    " jobs) |"
                    f" {fmt(b[key], unit, 2)} | before: {fmt(e[key], unit, 2)} |"
                    f" {fmt(ratio, ' ×', 2)} | within 20 % | {yes(ok)} |")
        r9 = R.get(9)
        if r9:
            add(f"| 9 | reading trainer output: split + progress parse per MB of a tqdm stream"
                f" ({r9['mb']:.0f} MB; + log batch: {r9['consumer_s_per_mb'] * 1e3:.2f} ms/MB) |"
                f" {r9['parse_s_per_mb'] * 1e3:.2f} ms/MB ({r9['parse_mb_s']:.0f} MB/s) |"
                f" memchr \\r \\n: {r9['floor_s_per_mb'] * 1e3:.3f} ms/MB |"
                f" {r9['parse_s_per_mb'] / r9['floor_s_per_mb']:.0f} × | — | — |")
        r10 = R.get(10)
        if r10:
            lat = r10["lat"]
            add(f"| 10 | webhooks: status change → request at a receiver on 127.0.0.1"
                f" (n={len(lat)}, one change at a time) p50 / p99 |"
                f" {fmt(pct(lat, 50), ' ms', 1)} / {fmt(pct(lat, 99), ' ms', 1)} | — | — |"
                f" — | — |")
            add(f"| 10 | webhooks: backlog of {r10['backlog']:,} deliveries to one endpoint drained,"
                f" {r10['senders']} senders, cap {r10['senders']} in flight |"
                f" {fmt(r10['drain_rate'], '/s')} ({fmt(r10['drain_s'], ' s', 1)}) |"
                f" the receiver's ceiling: wrk {r10['senders']} conns, new connection per"
                f" request, same body: {fmt(r10['ceiling'], '/s')} |"
                f" {fmt(r10['drain_rate'] / r10['ceiling'] if r10['ceiling'] else None, nd=2)} ×"
                f" | — | — |")
        r13 = R.get(13)
        if r13:
            extra = r13["behind"] - r13["alone"]
            add(f"| 13 | another user's job: published → claimed behind {r13['burst']:,} direct jobs"
                f" of one user (published in {fmt(r13['publish'], ' s', 2)}) |"
                f" {fmt(r13['behind'], ' s', 3)} | alone: {fmt(r13['alone'], ' s', 3)} |"
                f" +{fmt(extra, ' s', 3)} | < +1 s | {yes(extra < 1.0)} |")
        r14 = R.get(14)
        if r14:
            span = ", ".join(f"{p} {fmt(r14['first'].get(p), ' s', 1)}–"
                             f"{fmt(r14['last'].get(p), ' s', 1)}"
                             for p in ("high", "normal", "low"))
            add(f"| 14 | drain {r14['jobs']} jobs (0.2 s) of {r14['users']} users, mixed"
                f" priorities ({', '.join(f'{n} {p}' for p, n in r14['by_priority'].items())}),"
                f" 2 consumers × 2 slots |"
                f" {fmt(r14['secs'], ' s', 1)}, {fmt(r14['rate'], ' jobs/s', 2)} |"
                f" idle slot-seconds while runnable work waited: {fmt(r14['idle'], ' s', 1)}"
                f" of {fmt(r14['slot_secs'], ' s', 1)}; starts (s after the first): {span} |"
                f" inversions (a start while a higher priority was runnable):"
                f" {r14['inversions']} | 0 | {yes(r14['inversions'] == 0)} |")
        return "\n".join(lines)

    # ------------------------------------------------------------ row 10

    def row10(self):
        """Webhooks (docs/webhooks.md). A receiver process on 127.0.0.1
        (tests/bench/webhook_receiver.py, 204 at once) and one endpoint of one user.
        Backlog: 5 000 jobs inserted queued and then cancelled with no producer running
        (10 000 deliveries), then a producer starts and drains them; the rate is from its
        first to its last request at the receiver. Ceiling: wrk posting a body of the same
        size to the same receiver, as many connections as senders, a new connection per
        request as the senders make. Latency: jobs go pending → running → completed one
        change at a time; a change's latency is the receive time minus job_events.at."""
        n_backlog = 1000 if self.quick else 10000
        n_lat = 20 if self.quick else 100
        senders = 4
        log(f"row 10: webhooks, backlog of {n_backlog}, {n_lat} jobs for latency")
        rp = subprocess.Popen([sys.executable, os.path.join(HERE, "webhook_receiver.py")],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              start_new_session=True)
        try:
            rport = int(rp.stdout.readline())
            self._row10(rport, n_backlog, n_lat, senders)
        finally:
            rp.kill()
            rp.wait(10)

    def _row10(self, rport, n_backlog, n_lat, senders):
        def stats():
            c = http.client.HTTPConnection("127.0.0.1", rport, timeout=60)
            c.request("GET", "/stats")
            out = json.loads(c.getresponse().read())
            c.close()
            return out

        user = f"bench-wh{self.run}"
        ds = str(uuid.uuid4())
        wid = str(uuid.uuid4())
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        job = ("INSERT INTO training_jobs (id, user_id, dataset_id, name, type, base_model,"
               f" config, trigger_words, message) SELECT gen_random_uuid(), '{user}', '{ds}',"
               f" 'bench webhook', 'lora', '{BASE_MODEL}', '{{\"steps\": 100}}', '{{wh}}', '{{}}'")
        psql(f"INSERT INTO datasets (id, user_id, name, storage_path) VALUES ('{ds}', '{user}',"
             f" 'bench', 'wh/{ds}');"
             "INSERT INTO webhook_endpoints (id, user_id, url, events, secret) VALUES"
             f" ('{wid}', '{user}', 'http://127.0.0.1:{rport}/hook',"
             " '{job.queued,job.running,job.completed,job.failed,job.cancelled}', "
             f"'{secret}');"
             f"{job} FROM generate_series(1, {n_backlog // 2});"
             "UPDATE training_jobs SET status = 'cancelled', completed_at = now()"
             f" WHERE user_id = '{user}';", timeout=600)
        backlog = int(psql(f"SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = '{wid}'"))
        p = self.start([os.path.join(self.bin, "producer", "trainq-producer")], "producer-wh",
                       TRAINQ_HTTP_ADDR="127.0.0.1:0", TRAINQ_JWT_SECRET=self.secret,
                       TRAINQ_WEBHOOK_ALLOW_LOOPBACK="true", TRAINQ_WEBHOOK_SENDERS=senders,
                       TRAINQ_WEBHOOK_ENDPOINT_CONCURRENCY=senders,
                       TRAINQ_WEBHOOK_USER_CONCURRENCY=senders, TRAINQ_LOG_LEVEL="warn")
        wait_until(lambda: len(stats()["hooks"]) >= backlog, 1800, "the webhook backlog")
        hooks = stats()["hooks"]
        first, last = min(h[0] for h in hooks), max(h[0] for h in hooks)
        drain_s = last - first
        size = int(statistics.median(h[5] for h in hooks))
        lua = os.path.join(self.work, "wh-post.lua")
        with open(lua, "w") as f:
            f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                    'wrk.headers["Connection"] = "close"\n'
                    f'wrk.body = string.rep("x", {size})\n')
        dur = 3 if self.quick else 10
        w = subprocess.run(["wrk", "-t2", f"-c{senders}", f"-d{dur}s", "-s", lua,
                            f"http://127.0.0.1:{rport}/plain"], capture_output=True, text=True,
                           timeout=dur + 60)
        m = re.search(r"Requests/sec:\s+([\d.]+)", w.stdout)
        if w.returncode != 0 or not m:
            raise Broken(f"wrk failed: {(w.stderr or w.stdout).strip()[-500:]}")
        ceiling = float(m.group(1))
        # latency: one change at a time
        psql(f"{job} FROM generate_series(1, {n_lat})")
        lat_jobs = {r[0] for r in rows(f"SELECT id FROM training_jobs WHERE user_id = '{user}'"
                                       " AND status = 'queued'")}
        wait_until(lambda: len(stats()["hooks"]) >= backlog + n_lat, 120, "the queued events")
        steps = [("pending", ", worker_id = 'bench-wh', fencing_token = fencing_token + 1"),
                 ("running", ", started_at = now()"), ("completed", ", completed_at = now()")]
        for j in lat_jobs:
            for st, extra in steps:
                psql(f"UPDATE training_jobs SET status = '{st}'{extra} WHERE id = '{j}'")
                time.sleep(0.02)
        want = backlog + 3 * n_lat
        wait_until(lambda: len(stats()["hooks"]) >= want, 120, "the latency events")
        ids = ",".join(f"'{j}'" for j in lat_jobs)
        at = {(r[0], r[1]): float(r[2]) for r in rows(
            "SELECT job_id, to_status, extract(epoch FROM at) FROM job_events"
            f" WHERE job_id IN ({ids}) AND to_status IN ('running', 'completed')")}
        lat = [(h[0] - at[(h[3], h[2][4:])]) * 1e3 for h in stats()["hooks"]
               if h[3] in lat_jobs and h[2] in ("job.running", "job.completed")
               and (h[3], h[2][4:]) in at]
        p.stop()
        psql(f"UPDATE webhook_endpoints SET disabled_at = now() WHERE id = '{wid}'")
        self.results[10] = {"lat": lat, "backlog": backlog, "drain_s": drain_s,
                            "drain_rate": backlog / drain_s if drain_s > 0 else None,
                            "ceiling": ceiling, "senders": senders, "body_bytes": size,
                            "received": len(hooks),
                            "distinct": len({h[1] for h in hooks})}

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

    # ------------------------------------------------------------ row 11 (--big)

    def superuser_psql(self, sql, timeout=1800):
        """psql as postgres (services.sh psql): the bulk fill runs with the triggers off."""
        p = subprocess.run(["bash", os.path.join(REPO, "scripts", "services.sh"), "psql", "-q",
                            "-A", "-t", "-v", "ON_ERROR_STOP=1"], input=sql,
                           capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0:
            raise Broken(f"psql (superuser) failed: {p.stderr.strip()[:500]}")
        return p.stdout.strip()

    def fill(self, prefix, users, jobs, events_per_job, first):
        """jobs finished jobs of users prefix0..prefix{users-1} (prefix0 gets the first ones
        when users == 1), events_per_job audit rows and one published outbox row each,
        written with the triggers off (what years of use would have left)."""
        self.superuser_psql(f"""
            SET session_replication_role = replica;
            INSERT INTO training_jobs (id, user_id, dataset_id, name, type, base_model, config,
                status, created_at, updated_at, started_at, completed_at, message)
            SELECT id, u, gen_random_uuid(), 'old', 'lora', 'm', '{{}}',
                   (ARRAY['completed', 'failed', 'cancelled'])[1 + i % 3], ts, ts, ts,
                   ts + interval '1 hour',
                   json_build_object('schema', 'trainq.job.v1', 'job_id', id, 'user_id', u)::text
              FROM (SELECT i, gen_random_uuid() AS id, '{prefix}' || (i % {users}) AS u,
                           now() - interval '400 days' + i * interval '10 ms' AS ts
                      FROM generate_series({first}, {first} + {jobs} - 1) i) g;
            INSERT INTO job_events (job_id, user_id, from_status, to_status, fencing_token, at)
            SELECT j.id, j.user_id, NULL, 'queued', 0, j.created_at + k * interval '1 ms'
              FROM training_jobs j, generate_series(1, {events_per_job}) k
             WHERE j.user_id LIKE '{prefix}%' AND j.name = 'old'
               AND j.created_at >= now() - interval '400 days' + {first} * interval '10 ms';
            INSERT INTO outbox (job_id, routing_key, payload, created_at, published_at)
            SELECT id, 'lora', '{{}}', created_at, created_at FROM training_jobs
             WHERE user_id LIKE '{prefix}%' AND name = 'old'
               AND created_at >= now() - interval '400 days' + {first} * interval '10 ms';
            RESET session_replication_role;
            VACUUM ANALYZE training_jobs, job_events, outbox;
            CHECKPOINT;""")

    def timed_gets(self, port, token, path, n):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        lat = []
        body = None
        for _ in range(n):
            t = time.perf_counter()
            c.request("GET", path, headers={"Authorization": f"Bearer {token}"})
            r = c.getresponse()
            body = r.read()
            lat.append((time.perf_counter() - t) * 1e3)
            if r.status != 200:
                raise Broken(f"GET {path} answered {r.status}: {body[:200]!r}")
        c.close()
        return pct(lat, 50), json.loads(body)

    def txn_latency(self, name, script, seconds):
        """Mean latency (ms) of a rolled-back transaction, pgbench with one client."""
        path = os.path.join(self.work, f"pgbench-{name}.sql")
        with open(path, "w") as f:
            f.write(script)
        u = urllib.parse.urlparse(DATABASE_URL)
        p = subprocess.run(["pgbench", "-n", "-M", "extended", "-c", "1", "-T", str(seconds),
                            "-f", path, "-h", u.hostname, "-p", str(u.port),
                            "-U", urllib.parse.unquote(u.username), u.path.lstrip("/")],
                           env=self.env(PGPASSWORD=urllib.parse.unquote(u.password or "")),
                           capture_output=True, text=True, timeout=seconds + 120)
        lat = re.search(r"latency average = ([0-9.]+) ms", p.stdout)
        if p.returncode != 0 or not lat:
            raise Broken(f"pgbench {name} failed: {(p.stderr or p.stdout).strip()[-500:]}")
        return float(lat.group(1))

    def claim_release_setup(self):
        """A queued job to claim (user rc, at no limit; the pick takes the next runnable job,
        this one or another) and a user rr with a running and a queued job, made through the
        programs' own functions."""
        tag = f"bench-big-{self.run}"
        cu, ru = f"{tag}-claim", f"{tag}-release"
        ids = {}
        for name, u in (("claim", cu), ("run", ru), ("parked", ru)):
            ds = str(uuid.uuid4())
            psql(f"INSERT INTO datasets (id, user_id, name, storage_path) VALUES ('{ds}', '{u}',"
                 f" 'bench', 'big/{ds}')")
            j = str(uuid.uuid4())
            msg = json.dumps({"schema": "trainq.job.v1", "job_id": j, "user_id": u,
                              "submitted_at": "2026-12-01T00:00:00.000Z", "dataset_id": ds,
                              "name": "n", "type": "lora", "base_model": BASE_MODEL,
                              "config": {}, "trigger_words": []}, separators=(",", ":"))
            psql(f"SELECT tq_insert_job('{msg}', 'http')")
            ids[name] = (j, msg)
        psql(f"UPDATE training_jobs SET status = 'pending', worker_id = 'bench-big',"
             f" fencing_token = 1 WHERE id = '{ids['run'][0]}';"
             f" UPDATE training_jobs SET status = 'running' WHERE id = '{ids['run'][0]}';"
             f" UPDATE training_jobs SET parked_at = now() WHERE id = '{ids['parked'][0]}'")
        claim = ("BEGIN;\n"
                 "SELECT outcome FROM tq_pick('bench-big', 30, 4096, 0);\n"
                 "ROLLBACK;\n")
        release = ("BEGIN;\n"
                   "UPDATE training_jobs SET status = 'completed', completed_at = now(),"
                   f" lease_expires_at = NULL WHERE id = '{ids['run'][0]}'"
                   " AND status IN ('pending', 'running') RETURNING user_id;\n"
                   f"SELECT tq_release_parked('{ru}');\nROLLBACK;\n")
        return claim, release

    def measure_big(self, port, token, claim, release):
        secs = 3 if self.quick else 8
        r = {"jobs": int(psql("SELECT count(*) FROM training_jobs")),
             "events": int(psql("SELECT count(*) FROM job_events"))}
        self.timed_gets(port, token, f"/api/training/jobs/{self.big_job}", 20)  # warm-up
        r["submit_rps"] = self.wrk(port, self.wrk_data())["rps"]
        self.retire_queued("bench-u%")
        r["get_ms"], _ = self.timed_gets(port, token, f"/api/training/jobs/{self.big_job}", 200)
        r["list1_ms"], _ = self.timed_gets(port, token, "/api/training/jobs?limit=20", 100)
        cursor = None
        for _ in range(99):  # the 100th page's cursor, walked as a client would
            q = "/api/training/jobs?limit=20" + (f"&cursor={cursor}" if cursor else "")
            _, page = self.timed_gets(port, token, q, 1)
            cursor = page["next_cursor"]
        r["list100_ms"], _ = self.timed_gets(
            port, token, f"/api/training/jobs?limit=20&cursor={cursor}", 100)
        r["claim_ms"] = self.txn_latency("claim", claim, secs)
        r["release_ms"] = self.txn_latency("release", release, secs)
        return r

    def row11(self):
        """Cost as the data grows (issue 11, item 4): the same measures on the bench database
        with one user's 50 000 finished jobs, then after 950 000 more jobs of 10 000 other
        users and 5 audit rows per job (5 M) were added. Opt-in (--big): the fill takes
        minutes; its rows are deleted afterwards."""
        user_jobs, jobs, per = (5000, 100000, 5) if self.quick else (50000, 1000000, 5)
        log(f"row 11: empty vs {jobs:,} jobs / {jobs * per:,} audit rows")
        self.make_pool()
        tag = f"bench-big-{self.run}"
        user = f"{tag}-user"
        t0 = time.monotonic()
        self.fill(user, 1, user_jobs, per, 0)
        self.big_job = psql(f"SELECT id FROM training_jobs WHERE user_id = '{user}0'"
                            " ORDER BY created_at LIMIT 1 OFFSET 777")
        claim, release = self.claim_release_setup()
        p = self.start([os.path.join(self.bin, "producer", "trainq-producer")], "producer-big",
                       TRAINQ_HTTP_ADDR="127.0.0.1:0", TRAINQ_JWT_SECRET=self.secret,
                       TRAINQ_HTTP_THREADS=self.threads, TRAINQ_SUBMIT_RATE_PER_MINUTE=1000000,
                       TRAINQ_READ_RATE_PER_MINUTE=1000000, TRAINQ_LOG_LEVEL="info")
        port = int(p.wait_event("http.listening")["port"])
        token = mint(f"{user}0", self.secret)
        empty = self.measure_big(port, token, claim, release)
        t1 = time.monotonic()
        self.fill(f"{tag}-other", 10000, jobs - user_jobs, per, user_jobs)
        fill_s = time.monotonic() - t1
        big = self.measure_big(port, token, claim, release)
        p.stop()
        self.wait_published()
        self.purge()
        self.retire_queued("bench-%")
        self.superuser_psql(f"""
            SET session_replication_role = replica;
            DELETE FROM job_events WHERE user_id LIKE '{tag}%';
            DELETE FROM outbox WHERE job_id IN (SELECT id FROM training_jobs
                                                 WHERE user_id LIKE '{tag}%');
            DELETE FROM training_jobs WHERE user_id LIKE '{tag}%';
            DELETE FROM datasets WHERE user_id LIKE '{tag}%';
            RESET session_replication_role;
            VACUUM ANALYZE training_jobs, job_events, outbox;""")
        self.results[11] = {"jobs": jobs, "events": jobs * per, "user_jobs": user_jobs,
                            "empty": empty, "big": big, "fill_s": fill_s,
                            "total_s": time.monotonic() - t0}

    # ------------------------------------------------------------ table sizes

    def table_sizes(self):
        """What the run left in the tables retention bounds (docs/operations.md,
        "Retention"): rows and size with indexes and TOAST, after every row ran."""
        names = ("training_jobs", "job_events", "outbox", "rate_limits", "job_output",
                 "job_artifacts", "webhook_deliveries")
        try:
            got = rows(" UNION ALL ".join(
                f"SELECT '{t}', (SELECT count(*) FROM {t}),"
                f" pg_size_pretty(pg_total_relation_size('{t}'))" for t in names))
        except Exception as e:  # noqa: BLE001 - a report, not a row
            return f"\ntable sizes: could not read ({e})\n"
        self.results["tables"] = {r[0]: {"rows": int(r[1]), "size": r[2]} for r in got}
        out = ["", "Table sizes after the run (retention: published outbox rows after"
               " TRAINQ_OUTBOX_RETENTION_SECONDS, past rate-limit windows, finished jobs after"
               " TRAINQ_JOB_RETENTION_SECONDS when set):", "",
               "| table | rows | size (indexes, TOAST included) |", "|---|---|---|"]
        out += [f"| {r[0]} | {int(r[1]):,} | {r[2]} |" for r in got]
        return "\n".join(out) + "\n"

    # ------------------------------------------------------------ main

    def run_all(self):
        head = [f"trainq bench ({'quick' if self.quick else 'full'}), "
                f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {os.cpu_count()} CPUs,"
                f" producer {self.threads} HTTP threads / DB connections", ""]
        sampler = threading.Thread(target=self.sample_anon, daemon=True)
        sampler.start()
        only = self.args.only
        want = lambda n: not only or n in only
        broken = None
        try:
            try:
                for n, row in ((1, self.row1), (2, self.row2), (3, self.row3), (4, self.row4),
                               (5, self.row5)):
                    if want(n):
                        row()
                if self.producer:
                    # (row 1 restarts the producer once: the peak of both)
                    self.results[6] = {"producer_hwm": max(
                        proc_status(self.producer.pid, "VmHWM") or 0,
                        self.producer_hwm_before or 0) or None}
                    self.producer.stop()
                if want(7):
                    self.row7()
                if want(8):
                    self.row8()
                if want(9):
                    self.row9()
                if want(10):
                    self.row10()
                if self.args.big and want(11):
                    self.row11()
                if self.args.many and want(12):
                    self.row12()
                if want(13):
                    self.row13()
                if want(14):
                    self.row14()
            except Broken as e:
                # the rows finished so far are still reported, with where it broke
                broken = e
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
        table = "\n".join(head) + self.table() + "\n" + self.table_sizes()
        if broken:
            table += f"\n**The run broke before its end** (rows above it stand): {broken}\n"
        with open(self.args.out, "w") as f:
            f.write(table)
        print(table)
        with open(os.path.join(os.path.dirname(self.args.out), "bench.json"), "w") as f:
            json.dump({str(k): v for k, v in self.results.items()}, f, indent=1, default=str)
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)
        if broken:
            raise broken


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
    ap.add_argument("--big", action="store_true",
                    help="row 11: the measures on an empty database and with 1 M jobs")
    ap.add_argument("--many", action="store_true",
                    help="row 12: 1 000 users vs 10 users drained by 20 consumers")
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
