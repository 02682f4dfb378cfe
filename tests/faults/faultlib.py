"""Fault-injection harness for trainq: a mixed load on real services, a fault, then checks.

A Fleet is 2 producers, 2 consumers x 2 slots, 4 users with datasets whose trainer.env makes
the fake trainer run 1-3 s. A Submitter thread posts the jobs over HTTP to the producers in
turn (each with an Idempotency-Key, retried on the other producer after a connection error
or a 503, so a job is "accepted" exactly when some producer answered 200). A DockerWatcher
thread lists the training containers a few times a second. After the fault the scenario
waits for every accepted job to become terminal, then Fleet.check() measures, from
Postgres (training_jobs, job_events, outbox), RabbitMQ (queue depths) and Docker (the
watcher's samples) plus the consumers' own logs:

  lost        accepted jobs with no row, or not terminal when the wait ended
  events_lost status changes of accepted jobs without their job event row, or event rows
              that never reached a quorum queue bound to trainq.events (job.#)
  doubles     a job with two live containers at once (Docker), two claims in a row without
              an end between them (job_events), or two consumer processes following the same
              job at once (logs: job.started/adopt.container .. job.finished/job.fenced)
  violations  moments where a user had more than 2 active jobs (job_events replayed per user
              in id order, which is commit order: the guard serialises a user's changes) or
              more than 2 running containers (Docker)
  unreasoned  recovery transitions (pending|running -> queued|failed) with an empty reason,
              and failed jobs with no error_message
  stuck       active jobs whose lease expired more than a lease ago, messages left in
              trainq.jobs, unpublished outbox rows, accepted jobs still queued
  stranded    sampled during the scenario (StrandWatcher): a queued job that for longer than
              STRANDED_BOUND was its user's next job, runnable (user below the limit, no
              quota, no backoff) while the live workers had a free slot, with no message in
              trainq.jobs and none on its way (outbox row unpublished or published within
              the bound) — a free slot must pick such a job first
  hooks_lost  webhook deliveries (webhook_deliveries rows of the users' endpoints, one per
              status event) that the fleet's receiver never answered 2xx by the end
  hooks_dup   2xx requests at that receiver beyond the first per webhook-id (at least once
              allows them after a crash; reported, not asserted)

Only this suite's users, workers and containers are looked at, so leftovers of other tests
in the same database do not count. Tests import this module; it is not a test itself.
"""

import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from datetime import datetime

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

import tqenv  # noqa: E402
import tqharness as h  # noqa: E402

USERS = 4
JOBS = int(os.environ.get("TQ_FAULT_JOBS", "24"))
SLOTS = 2
LIMIT = 2  # the cluster default of active jobs per user
LEASE = 4
HEARTBEAT = 1
SWEEP = 1
DURATIONS = (1.0, 2.0, 3.0, 1.5)
# Which user submits job i: user 0 half of the jobs (always at its limit: parked jobs,
# releases), user 1 a quarter, users 2 and 3 an eighth each.
USER_PATTERN = (0, 1, 0, 2, 0, 1, 0, 3)
SUBMIT_INTERVAL = 0.1  # seconds between submissions: ~3 s of submitting, so jobs queue up
                       # behind the 4 slots and users sit at their limit (parking, releases)
# Priorities and a quota in the mix (issue 14): users 0 and 2 may ask for 'high'
# (user_limits.max_priority); submission i asks for PRIORITY_PATTERN[i % 7] (coprime with
# USER_PATTERN, so every user gets a mix), 'normal' instead of 'high' for the other users
# (above their max_priority it would be refused 403, not accepted).
HIGH_USERS = (0, 2)
PRIORITY_PATTERN = ("normal", "high", "low", "normal", "low", "high", "normal")
PRIORITY_VALUE = {"low": 0, "normal": 1, "high": 2}  # training_jobs.priority
# User 1 has a daily GPU quota over seeded past usage that the scenario cannot reach (its
# consumers have CPU slots: 0 GPU-seconds an attempt), so every pick and the strand check
# evaluate tq_user_over_quota as a real comparison (false) and fair share sees that user's
# recent usage, while none of its jobs is held back (a held job would be lost or stuck).
QUOTA_USER = 1
QUOTA_GPU_SECONDS = 3600
QUOTA_HISTORY = 600  # GPU-seconds, ended an hour ago
STRANDED = 5  # TRAINQ_STRANDED_SECONDS of the fleet's consumers
# How long a job may look stranded before it counts: the sweeper's threshold, one sweep, the
# dispatcher's queue-depth reading (every 2 s) and the release's way through outbox and relay.
STRANDED_BOUND = STRANDED + SWEEP + 2 + 5
SETTLE_TIMEOUT = float(os.environ.get("TQ_FAULT_SETTLE_SECONDS", "120"))
TERMINAL = ("completed", "failed", "cancelled")
ACTIVE = ("pending", "running")
SECRET = "faults-secret-" + uuid.uuid4().hex
IMAGE = tqenv.TRAINING_IMAGE


def q(value):
    """A SQL string literal (values here are ids this suite made, but quote them anyway)."""
    return "'" + str(value).replace("'", "''") + "'"


def qlist(values):
    return "ARRAY[" + ",".join(q(v) for v in values) + "]::text[]" if values else "ARRAY[]::text[]"


def ts(s):
    """Epoch seconds of a Postgres/log ISO timestamp."""
    s = s.replace("Z", "+00:00")
    return datetime.fromisoformat(s).timestamp()


# ---------------------------------------------------------------- the audit replay

def replay_audit(events, limit=LIMIT):
    """Replays job_events rows (dicts, ordered by id) of some users.

    Per user, id order is commit order: the active-job guard takes a per-user advisory lock
    before the audit row is written, so a user's status changes never interleave. Returns
    {violations, peak, doubles, chain_breaks, recovered, unreasoned, problems}:
    violations  events after which a user had more than `limit` active (pending|running) jobs
    doubles     claims (-> pending) of a job whose previous state was still active
    chain_breaks  events whose from_status is not the to_status of the job's previous event
    recovered   pending|running -> queued|failed (this suite's trainers all exit 0, so each
                is a recovery), unreasoned: those with an empty reason."""
    active, peak, state = {}, {}, {}
    r = {"violations": 0, "doubles": 0, "chain_breaks": 0, "recovered": 0, "unreasoned": 0,
         "problems": []}
    problems = r["problems"]
    for e in events:
        u, j = e["user_id"], e["job_id"]
        was = e["from_status"] in ACTIVE
        now = e["to_status"] in ACTIVE
        active[u] = active.get(u, 0) + (1 if now and not was else -1 if was and not now else 0)
        peak[u] = max(peak.get(u, 0), active[u])
        if active[u] > limit:
            r["violations"] += 1
            problems.append(f"violation: user {u} had {active[u]} active jobs at event "
                            f"{e['id']} ({e['at']})")
        prev = state.get(j)
        if prev != e["from_status"]:
            r["chain_breaks"] += 1
            problems.append(f"audit: job {j} event {e['id']} goes {e['from_status']} -> "
                            f"{e['to_status']} but the previous event left it {prev}")
        if e["to_status"] == "pending" and (prev in ACTIVE or was):
            r["doubles"] += 1
            problems.append(f"double: job {j} claimed again at event {e['id']} while "
                            f"{prev if prev in ACTIVE else e['from_status']} "
                            f"(worker {e['worker_id']})")
        state[j] = e["to_status"]
        if was and e["to_status"] in ("queued", "failed"):
            r["recovered"] += 1
            if not (e["reason"] or "").strip():
                r["unreasoned"] += 1
                problems.append(f"reason: job {j} {e['from_status']} -> {e['to_status']} at "
                                f"event {e['id']} has no reason")
    r["peak"] = peak
    return r


def overlapping(intervals):
    """Pairs of (start, end, who) intervals that overlap by more than 50 ms (log timestamps
    of a clean hand-over may touch)."""
    iv = sorted(intervals)
    out = []
    if not iv:
        return out
    latest = iv[0]
    for b in iv[1:]:
        if b[0] < latest[1] - 0.05:
            out.append((latest, b))
        if b[1] > latest[1]:
            latest = b
    return out


# ---------------------------------------------------------------- a fast psql session

class Pg:
    """One long-lived psql process: ~1 ms a query, so a loop can catch a claim within
    milliseconds. Reconnects after Postgres restarts (the next query starts a new psql)."""

    MARK = b"__tq_fault_end__"

    def __init__(self):
        self.proc = None
        self.buf = b""

    def _start(self):
        self.close()
        self.proc = subprocess.Popen(
            ["psql", "-X", "-q", "-A", "-t", "-d", tqenv.DATABASE_URL, "-v", "ON_ERROR_STOP=0"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.buf = b""

    def close(self):
        if self.proc is not None:
            try:
                self.proc.kill()
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                pass
            for f in (self.proc.stdin, self.proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass
            self.proc = None

    def query(self, sql, timeout=15.0):
        """Runs sql; returns its text output. Raises RuntimeError on an SQL error (psql's
        :ERROR after the statement, so data that merely contains "ERROR:" is fine) or when
        Postgres is unreachable (the session restarts on the next call)."""
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        end = re.compile(re.escape(self.MARK) + rb" (true|false)\n")
        try:
            self.proc.stdin.write(sql.encode() + b"\n\\echo " + self.MARK + b" :ERROR\n")
            self.proc.stdin.flush()
            deadline = time.monotonic() + timeout
            while not end.search(self.buf):
                left = deadline - time.monotonic()
                r, _, _ = select.select([self.proc.stdout], [], [], max(left, 0))
                if not r:
                    raise RuntimeError(f"psql: no answer within {timeout}s")
                chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
                if not chunk:
                    raise RuntimeError("psql exited: " + self.buf.decode(errors="replace"))
                self.buf += chunk
        except (OSError, RuntimeError):
            self.close()
            raise
        m = end.search(self.buf)
        out, failed, self.buf = self.buf[:m.start()], m.group(1) == b"true", self.buf[m.end():]
        text = out.decode(errors="replace")
        if failed:
            raise RuntimeError(text.strip())
        return text.strip()

    def rows(self, sql):
        """The rows of a SELECT as dicts."""
        out = self.query(f"SELECT coalesce(json_agg(t), '[]') FROM ({sql}) t;")
        return json.loads(out)

    def value(self, sql):
        return self.query(sql.rstrip(";") + ";")


# ---------------------------------------------------------------- Docker

def containers(label_filters, timeout=5):
    """Every container (also exited) matching all label filters, from the Engine API."""
    flt = urllib.parse.quote(json.dumps({"label": list(label_filters)}))
    st, lst = tqenv.docker("GET", f"/containers/json?all=1&filters={flt}", timeout=timeout)
    if st != 200:
        raise RuntimeError(f"docker list: HTTP {st}: {lst!r}")
    return lst or []


LIVE_STATES = ("created", "running", "restarting", "paused")


class DockerWatcher(threading.Thread):
    """Samples the suite's training containers every `interval` s until stopped.

    Per sample: live containers per job (a second live container of one job is a double)
    and running containers per user (more than LIMIT is a violation of the GPU share)."""

    def __init__(self, users, interval=0.2):
        super().__init__(daemon=True)
        self.users = set(users)
        self.interval = interval
        self.stop_ev = threading.Event()
        self.samples = 0
        self.errors = 0
        self.double_jobs = {}   # job -> container ids seen live together
        self.user_peak = {}     # user -> most running containers in one sample
        self.over_limit = []    # (time, user, n)
        self.lock = threading.Lock()

    def sample(self):
        lst = containers(["trainq.managed=true"])
        per_job, per_user = {}, {}
        for c in lst:
            labels = c.get("Labels") or {}
            user = labels.get("trainq.user")
            if user not in self.users:
                continue
            job = labels.get("trainq.job")
            state = c.get("State")
            if state in LIVE_STATES:
                per_job.setdefault(job, []).append(c["Id"][:12])
            if state == "running":
                per_user[user] = per_user.get(user, 0) + 1
        with self.lock:
            self.samples += 1
            for job, ids in per_job.items():
                if len(ids) > 1:
                    self.double_jobs.setdefault(job, set()).update(ids)
            for user, n in per_user.items():
                self.user_peak[user] = max(self.user_peak.get(user, 0), n)
                if n > LIMIT:
                    self.over_limit.append((time.time(), user, n))
        return lst

    def run(self):
        while not self.stop_ev.is_set():
            try:
                self.sample()
            except Exception:  # dockerd restarting: the next sample counts
                with self.lock:
                    self.errors += 1
            self.stop_ev.wait(self.interval)

    def stop(self):
        self.stop_ev.set()
        self.join(15)


class StrandWatcher(threading.Thread):
    """Samples the "never stranded" invariant twice a second (module doc). A job counts once
    it has looked stranded in every sample for longer than STRANDED_BOUND; samples taken while
    Postgres or RabbitMQ do not answer are skipped (nothing can move then)."""

    # the next job of its user in the pick's order (65_schedule.sql), runnable (the user has
    # room, no quota, no give-back backoff) while the live workers have a free slot, and
    # nothing happened to it lately: a free slot should have picked it
    SQL = ("SELECT j.id::text FROM training_jobs j WHERE j.user_id = ANY({users})"
           " AND j.status = 'queued' AND (j.not_before IS NULL OR j.not_before < now())"
           " AND NOT EXISTS (SELECT 1 FROM training_jobs o WHERE o.user_id = j.user_id"
           "     AND o.status = 'queued' AND (-o.priority, o.created_at, o.id)"
           "         < (-j.priority, j.created_at, j.id))"
           " AND (SELECT count(*) FROM training_jobs a"
           "      WHERE a.user_id = j.user_id AND a.status IN ('pending', 'running'))"
           "     < tq_user_max_active(j.user_id) AND NOT tq_user_over_quota(j.user_id)"
           " AND (SELECT COALESCE(sum(w.slots), 0) FROM workers w WHERE w.stopped_at IS NULL"
           "      AND w.heartbeat_at > now() - interval '5 seconds')"
           "     > (SELECT count(*) FROM training_jobs a WHERE a.status IN ('pending', 'running'))"
           " AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.job_id = j.id"
           "     AND o.exchange = 'trainq.jobs'"
           "     AND (o.published_at IS NULL OR o.published_at > now() - make_interval(secs => {b})))"
           " AND NOT EXISTS (SELECT 1 FROM job_events e WHERE e.job_id = j.id"
           "     AND e.at > now() - make_interval(secs => {b}))")

    def __init__(self, users, interval=0.5):
        super().__init__(daemon=True)
        self.users = users
        self.interval = interval
        self.stop_ev = threading.Event()
        self.pg = Pg()
        self.since = {}      # job -> monotonic time it was first seen stranded (in a row)
        self.stranded = {}   # job -> seconds it stayed stranded (worst seen), once over bound
        self.samples = 0
        self.lock = threading.Lock()

    def observe(self, seen, now, queue_ready=0):
        """One sample: `seen` the jobs that look stranded now, `queue_ready` the ready
        messages in trainq.jobs (any: each of them may be one of those jobs)."""
        with self.lock:
            self.samples += 1
            if queue_ready:
                self.since.clear()
                return
            for j in list(self.since):
                if j not in seen:
                    del self.since[j]
            for j in seen:
                t = now - self.since.setdefault(j, now)
                if t > STRANDED_BOUND:
                    self.stranded[j] = max(self.stranded.get(j, 0), t)

    def sample(self):
        ready = h.queue_depth()
        rows = [] if ready else self.pg.rows(
            self.SQL.format(users=qlist(self.users), b=STRANDED_BOUND))
        self.observe({r["id"] for r in rows}, time.monotonic(), ready)

    def run(self):
        while not self.stop_ev.is_set():
            try:
                self.sample()
            except Exception:  # a service restarting: nothing moves, the next sample counts
                with self.lock:
                    self.since.clear()
            self.stop_ev.wait(self.interval)

    def stop(self):
        self.stop_ev.set()
        self.join(15)
        self.pg.close()


# ---------------------------------------------------------------- submissions

class Submitter(threading.Thread):
    """Submits JOBS jobs through the producers in turn. A job counts as accepted only when a
    producer answered 200; after a connection error, 5xx or 429 the same request (same
    Idempotency-Key, same body) goes to the other producer, so a request whose reply was lost
    is not submitted twice."""

    def __init__(self, fleet, n=JOBS, interval=SUBMIT_INTERVAL, per_job_timeout=90.0):
        super().__init__(daemon=True)
        self.fleet = fleet
        self.n = n
        self.interval = interval
        self.per_job_timeout = per_job_timeout
        self.accepted = {}       # job_id -> {"user", "index", "producer"}
        self.rejected = []       # (index, status, body) of final non-200 answers
        self.retries = 0         # answers/errors that led to a retry
        self.statuses = {}       # status (or exception name) -> count
        self.lock = threading.Lock()
        self.arm_p0 = threading.Event()      # set by a scenario that wants a mid-request kill
        self.sending_p0 = threading.Event()  # set just before a request to producer 0
        self.stop_ev = threading.Event()
        self.p0_index = None                 # the submission in flight when sending_p0 was set

    def accepted_index(self, i):
        """The job id accepted for submission i, or None."""
        with self.lock:
            for jid, a in self.accepted.items():
                if a["index"] == i:
                    return jid
        return None

    def _count(self, key):
        with self.lock:
            self.statuses[key] = self.statuses.get(key, 0) + 1

    def submit_one(self, i):
        f = self.fleet
        ui = USER_PATTERN[i % len(USER_PATTERN)]
        user = f.users[ui]
        # the k-th job of a user; durations rotate differently per user, so slots free up
        # at different times and users really compete (not in lockstep)
        k = sum(1 for n in range(i) if USER_PATTERN[n % len(USER_PATTERN)] == ui)
        prio = PRIORITY_PATTERN[i % len(PRIORITY_PATTERN)]
        if prio == "high" and ui not in HIGH_USERS:
            prio = "normal"
        ds = f.datasets[user][(k + ui) % len(f.datasets[user])]
        body = {"dataset_id": ds, "name": f"fault job {i}", "type": "lora",
                "base_model": "stabilityai/sdxl-base-1.0", "config": {"steps": 100},
                "trigger_words": ["tq"], "priority": prio}
        key = f"{f.run}-{i}"
        deadline = time.monotonic() + self.per_job_timeout
        attempt = 0
        while time.monotonic() < deadline and not self.stop_ev.is_set():
            pi = (i + attempt) % len(f.producers)
            attempt += 1
            p = f.producers[pi]
            if p is None or not p.running() or not getattr(p, "port", None):
                time.sleep(0.05)
                continue
            if pi == 0 and self.arm_p0.is_set() and not self.sending_p0.is_set():
                self.p0_index = i
                self.sending_p0.set()
            try:
                r = h.http_once(p.port, "POST", "/api/training/submit", json_body=body,
                                token=f.tokens[user], headers={"Idempotency-Key": key},
                                timeout=20)
            except Exception as e:  # killed producer: refused, reset, closed mid-reply
                self._count(type(e).__name__)
                with self.lock:
                    self.retries += 1
                time.sleep(0.1)
                continue
            self._count(r.status)
            if r.status == 200:
                jid = r.json["job_id"]
                with self.lock:
                    self.accepted[jid] = {"user": user, "index": i, "producer": pi,
                                          "priority": prio}
                return
            if r.status in (429, 500, 502, 503, 504):
                with self.lock:
                    self.retries += 1
                wait = 0.25
                try:
                    wait = min(float(r.header("Retry-After") or 0.25), 1.0)
                except ValueError:
                    pass
                time.sleep(wait)
                continue
            with self.lock:
                self.rejected.append((i, r.status, r.raw[:300]))
            return
        with self.lock:
            self.rejected.append((i, "gave-up", b"no 200 within the per-job timeout"))

    def run(self):
        for i in range(self.n):
            if self.stop_ev.is_set():
                return
            self.submit_one(i)
            time.sleep(self.interval)

    def count(self):
        with self.lock:
            return len(self.accepted)


# ---------------------------------------------------------------- the fleet

def _parse_job_from_msg(msg):
    m = re.search(r"job ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})", msg or "")
    return m.group(1) if m else None


class Fleet:
    """Producers, consumers, users and datasets of one scenario (and its cleanup)."""

    def __init__(self, scenario, durations=DURATIONS, producer_extra=None):
        self.scenario = scenario
        self.producer_extra = dict(producer_extra or {})
        self.durations = durations
        self.run = uuid.uuid4().hex[:8]
        self.tmp = tempfile.mkdtemp(prefix=f"tq-fault-{scenario}-")
        self.root = os.path.join(self.tmp, "datasets")
        os.makedirs(self.root)
        self.pg = Pg()
        self.users = [f"fault-{scenario[:24]}-{i}-{self.run}" for i in range(USERS)]
        self.tokens = {u: h.mint(u, SECRET, exp_in=3600) for u in self.users}
        self.datasets = {}
        self.producers = [None, None]
        self.consumers = {}      # worker id -> current Program
        self.procs = []          # every Program ever started (killed ones too)
        self.killed = {}         # Program -> wall-clock time of SIGKILL
        self.t0 = time.monotonic()
        self.notes = []          # free-form facts printed with the summary
        self._make_datasets()
        self.hooks = HookReceiver()  # every user's status events go to it (webhooks)
        self.pg.query("INSERT INTO webhook_endpoints (id, user_id, url, events, secret) VALUES "
                      + ", ".join(f"(gen_random_uuid(), {q(u)}, {q(self.hooks.url)}, "
                                  "'{job.queued,job.running,job.completed,job.failed,"
                                  "job.cancelled}', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw')"
                                  for u in self.users) + ";")
        self.pg.query("INSERT INTO user_limits (user_id, max_priority) VALUES "
                      + ", ".join(f"({q(self.users[i])}, 'high')" for i in HIGH_USERS) + ";"
                      f"INSERT INTO user_limits (user_id, gpu_seconds_per_day) VALUES"
                      f" ({q(self.users[QUOTA_USER])}, {QUOTA_GPU_SECONDS});"
                      "INSERT INTO job_usage (job_id, user_id, worker_id, attempt, gpus,"
                      " started_at, ended_at, wall_seconds, gpu_seconds, outcome) VALUES"
                      f" (gen_random_uuid(), {q(self.users[QUOTA_USER])}, 'history', 1, 1,"
                      f" now() - make_interval(secs => 3600 + {QUOTA_HISTORY}),"
                      f" now() - interval '1 hour', {QUOTA_HISTORY}, {QUOTA_HISTORY},"
                      " 'completed');")

    # ------------------------------------------------------------ fixtures

    def _make_datasets(self):
        values = []
        for u in self.users:
            self.datasets[u] = []
            for d in self.durations:
                ds = str(uuid.uuid4())
                rel = f"{u}/{ds}"
                path = os.path.join(self.root, rel)
                os.makedirs(path)
                with open(os.path.join(path, "trainer.env"), "w") as f:
                    f.write(f"DURATION={d}\nEXIT_CODE=0\nMESSAGE=fake-trainer: done\nSTEPS=3\n")
                with open(os.path.join(path, "0001.png"), "wb") as f:  # the preflight's image
                    f.write(b"\x89PNG\r\n\x1a\n")
                self.datasets[u].append(ds)
                values.append(f"({q(ds)}, {q(u)}, 'fault dataset', {q(rel)})")
        self.pg.query("INSERT INTO datasets (id, user_id, name, storage_path) VALUES "
                      + ", ".join(values) + ";")

    def long_datasets(self, at_least=5.0):
        """Ids of datasets whose trainer runs at least `at_least` seconds."""
        return [ds for u in self.users for ds, d in zip(self.datasets[u], self.durations)
                if d >= at_least]

    def producer_env(self):
        env = {"TRAINQ_HTTP_ADDR": "127.0.0.1:0", "TRAINQ_JWT_ALG": "HS256",
               "TRAINQ_JWT_SECRET": SECRET, "TRAINQ_JWT_PUBLIC_KEY_FILE": None,
               "TRAINQ_JWT_AUDIENCE": None, "TRAINQ_JWT_ISSUER": None,
               "TRAINQ_SUBMIT_RATE_PER_MINUTE": "100000",
               "TRAINQ_READ_RATE_PER_MINUTE": "100000", "TRAINQ_HTTP_THREADS": "4",
               "TRAINQ_LOG_LEVEL": "info", "TRAINQ_WEBHOOK_ALLOW_LOOPBACK": "true",
               "TRAINQ_WEBHOOK_RETRY_MIN_SECONDS": "1", "TRAINQ_WEBHOOK_RETRY_MAX_SECONDS": "2"}
        env.update(self.producer_extra)
        return env

    def start_producer(self, i):
        p = h.Program("producer/trainq-producer", env=self.producer_env(),
                      name=f"producer{i}-{self.scenario}")
        p.start()
        self.procs.append(p)
        p.port = p.wait_event("http.listening", timeout=30)["port"]
        self.producers[i] = p
        return p

    def worker_id(self, letter):
        return f"fault-{letter}-{self.run}"

    def consumer_env(self, wid):
        return {
            "TRAINQ_WORKER_ID": wid,
            "TRAINQ_SLOTS": SLOTS,
            "TRAINQ_GPUS": "none",
            "TRAINQ_DATASETS_ROOT": self.root,
            "TRAINQ_DATA_DIR": os.path.join(self.tmp, "data-" + wid),
            "TRAINQ_HF_CACHE_DIR": os.path.join(self.tmp, "hf"),
            "TRAINQ_TRAINING_IMAGE": IMAGE,
            "TRAINQ_TRAINING_CMD": "--config /workspace/config.json",
            "TRAINQ_METRICS_ADDR": "127.0.0.1:0",
            "TRAINQ_HEARTBEAT_SECONDS": HEARTBEAT,
            "TRAINQ_LEASE_SECONDS": LEASE,
            "TRAINQ_SWEEP_SECONDS": SWEEP,
            "TRAINQ_STOP_GRACE_SECONDS": 2,
            "TRAINQ_STRANDED_SECONDS": STRANDED,
            "TRAINQ_LOG_LEVEL": "info",
        }

    def start_consumer(self, wid, wait_ready=True, **extra):
        n = sum(1 for p in self.procs if p.env.get("TRAINQ_WORKER_ID") == wid)
        env = self.consumer_env(wid)
        env.update(extra)
        p = h.Program("consumer/trainq-consumer", env=env, name=f"consumer-{wid}-{n}")
        p.start()
        self.procs.append(p)
        self.consumers[wid] = p
        if wait_ready:
            p.wait_event("consumer.ready", timeout=60)
        return p

    def bind_events_queue(self):
        """A quorum queue bound to every job event (trainq.events, job.#), as a service
        would bind one: check() counts the events of accepted jobs that never reach it."""
        name = f"fault-events-{self.scenario}-{uuid.uuid4().hex[:6]}"
        conn = h.amqp_connection()
        try:
            ch = conn.channel()
            ch.exchange_declare("trainq.events", "topic", durable=True)
            ch.queue_declare(name, durable=True, arguments={"x-queue-type": "quorum"})
            ch.queue_bind(name, "trainq.events", "job.#")
        finally:
            conn.close()
        return name

    def start(self):
        """Both producers ready, both consumers consuming, queues empty."""
        h.purge_queue()
        self.events_queue = self.bind_events_queue()
        self.start_producer(0)
        self.start_producer(1)
        for p in self.producers:
            h.wait_until(lambda: h.http_once(p.port, "GET", "/readyz").status == 200,
                         timeout=60, interval=0.2, what="producer /readyz 200")
        self.start_consumer(self.worker_id("a"))
        self.start_consumer(self.worker_id("b"))
        self.watcher = DockerWatcher(self.users)
        self.watcher.start()
        self.strands = StrandWatcher(self.users)
        self.strands.start()
        self.submitter = Submitter(self)
        self.t0 = time.monotonic()
        self.submitter.start()

    def kill(self, p):
        """SIGKILL: the crash case. Remembers when, for the claim-overlap check."""
        self.killed[p] = time.time()
        p.kill()

    def wait_accepted(self, n, timeout=60):
        h.wait_until(lambda: self.submitter.count() >= n, timeout=timeout, interval=0.05,
                     what=f"{n} accepted submissions")

    # ------------------------------------------------------------ waiting

    def job_rows(self):
        ids = list(self.submitter.accepted)
        if not ids:
            return []
        return self.pg.rows(
            "SELECT id::text, user_id, status, worker_id, attempts, error_message, parked_at,"
            " released_at, lease_expires_at, container_id FROM training_jobs"
            f" WHERE id::text = ANY({qlist(ids)})")

    def settle(self, timeout=SETTLE_TIMEOUT):
        """Waits for the submitter, then for every accepted job to be terminal (bounded).
        Returns True when settled."""
        self.submitter.join(self.submitter.per_job_timeout * 2)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                rows = self.job_rows()
                if len(rows) == len(self.submitter.accepted) and \
                        all(r["status"] in TERMINAL for r in rows):
                    return True
            except RuntimeError:
                pass  # Postgres still coming back
            time.sleep(0.25)
        return False

    # ------------------------------------------------------------ checks

    def events(self):
        return self.pg.rows(
            "SELECT id, job_id::text, user_id, from_status, to_status, worker_id, fencing_token,"
            " reason, at FROM job_events"
            f" WHERE user_id = ANY({qlist(self.users)}) ORDER BY id")

    def claim_intervals(self):
        """Per job, the [start, end] wall-clock intervals during which a consumer process
        followed it (from job.started / adopt.container to job.finished / job.fenced /
        job.interrupted / job.abandoned / the runner's lease_lost "killed" / the process's death). A process that
        starts following a job it already follows opens a second interval."""
        out = {}
        now = time.time()
        for p in self.procs:
            if not p.name.startswith("consumer-"):
                continue
            open_ = {}
            end_of_proc = self.killed.get(p, now)
            for e in p.events():
                ev = e.get("event")
                j = e.get("job_id") or _parse_job_from_msg(e.get("msg"))
                if not j:
                    continue
                if ev in ("job.started", "adopt.container"):
                    open_.setdefault(j, []).append(ts(e["ts"]))
                elif ev in ("job.finished", "job.fenced", "job.interrupted",
                            "job.abandoned") or (
                        ev == "job.lease_lost" and "killed" in (e.get("msg") or "")):
                    # the runner's own lease_lost ("container killed") ends its follow; the
                    # heartbeat's ("no longer held") is only the notice that leads to it
                    if open_.get(j):
                        out.setdefault(j, []).append((open_[j].pop(0), ts(e["ts"]), p.name))
            for j, starts in open_.items():
                for start in starts:
                    out.setdefault(j, []).append((start, end_of_proc, p.name))
        return out

    @staticmethod
    def unacked():
        """messages_unacknowledged of trainq.jobs (rabbitmqctl), 0 when unknown."""
        try:
            out = tqenv.rabbitmqctl("list_queues", "-q", "--no-table-headers", "name",
                                    "messages_unacknowledged", timeout=60)
        except Exception:
            return 0
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == "trainq.jobs" and parts[1].isdigit():
                return int(parts[1])
        return 0

    def unacked_holders(self):
        """Which of our processes holds unacked deliveries (channel -> local port -> pid)."""
        try:
            out = tqenv.rabbitmqctl("list_channels", "-q", "--no-table-headers", "connection",
                                    "consumer_count", "messages_unacknowledged",
                                    "prefetch_count", timeout=60)
        except Exception as e:
            return f"(rabbitmqctl list_channels failed: {e})"
        try:
            ss = subprocess.run(["ss", "-tnp"], capture_output=True, text=True,
                                timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            ss = ""
        pids = {p.pid: p.name for p in self.procs if p.proc is not None}
        lines = []
        for line in out.splitlines():
            m = re.search(r"127\.0\.0\.1:(\d+) -> ", line)
            parts = line.split()
            if not m or len(parts) < 3 or parts[-2] == "0":
                continue
            who = "?"
            for sl in ss.splitlines():
                if f"127.0.0.1:{m.group(1)} " in sl:
                    pm = re.search(r"pid=(\d+)", sl)
                    if pm:
                        who = pids.get(int(pm.group(1)), f"pid {pm.group(1)}")
            lines.append(f"  {line.strip()}  <- {who}")
        return "\n".join(lines) or "  (none found)"

    def check(self, settled):
        """Every figure of the summary line, plus the problems behind non-zero ones."""
        sub = self.submitter
        problems = []
        rows = {}
        for _ in range(40):
            try:
                rows = {r["id"]: r for r in self.job_rows()}
                ev = self.events()
                break
            except RuntimeError:
                time.sleep(0.5)
        else:
            raise AssertionError("Postgres did not answer the checks")
        accepted = list(sub.accepted)
        by_status = {}
        for r in rows.values():
            by_status[r["status"]] = by_status.get(r["status"], 0) + 1

        # lost: accepted but no row, or not terminal when we stopped waiting
        missing = [j for j in accepted if j not in rows]
        unsettled = [j for j, r in rows.items() if r["status"] not in TERMINAL]
        for j in missing:
            problems.append(f"lost: job {j} was accepted with 200 but has no row")
        for j in unsettled:
            r = rows[j]
            problems.append(f"unsettled: job {j} still {r['status']} (worker {r['worker_id']},"
                            f" parked_at {r['parked_at']}, released_at {r['released_at']},"
                            f" lease {r['lease_expires_at']}, attempts {r['attempts']})")
        extra = self.pg.value(
            f"SELECT count(*) FROM training_jobs WHERE user_id = ANY({qlist(self.users)})"
            f" AND NOT (id::text = ANY({qlist(accepted)}))")
        if int(extra):
            problems.append(f"phantom: {extra} job rows of this scenario's users were never "
                            "answered with 200 (a retried request was stored twice?)")

        audit = replay_audit(ev)
        problems += audit["problems"]
        violations, audit_doubles = audit["violations"], audit["doubles"]
        chain_breaks, recovered = audit["chain_breaks"], audit["recovered"]
        unreasoned, peak = audit["unreasoned"], audit["peak"]
        failure_reasons = {}
        for r in rows.values():
            if r["status"] == "failed":
                first = (r["error_message"] or "").strip().splitlines()[:1]
                key = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "<job>", first[0] if first else "")
                failure_reasons[key[:160]] = failure_reasons.get(key[:160], 0) + 1
        for j, r in rows.items():
            if r["status"] == "failed" and not (r["error_message"] or "").strip():
                unreasoned += 1
                problems.append(f"reason: failed job {j} has no error_message")

        # priorities: each accepted job's row holds the priority it asked for; the quota user
        # was never held back (its usage stays under the quota: CPU slots add 0 GPU-seconds)
        prio_by = {}
        for r in self.pg.rows("SELECT id::text, priority FROM training_jobs"
                              f" WHERE id::text = ANY({qlist(accepted)})"):
            want = PRIORITY_VALUE[sub.accepted[r["id"]]["priority"]]
            prio_by[want] = prio_by.get(want, 0) + 1
            if int(r["priority"]) != want:
                problems.append(f"priority: job {r['id']} asked for {want}, row holds "
                                f"{r['priority']}")
        if self.pg.value(f"SELECT tq_user_over_quota({q(self.users[QUOTA_USER])})") != "f":
            problems.append(f"quota: {self.users[QUOTA_USER]} went over {QUOTA_GPU_SECONDS}"
                            " GPU-seconds a day with CPU slots only")
        self.notes.append("priorities=" + ",".join(
            f"{n}:{prio_by.get(v, 0)}" for n, v in PRIORITY_VALUE.items()))

        # Docker: two live containers of one job; more running containers than the limit
        w = self.watcher
        with w.lock:
            docker_doubles = len(w.double_jobs)
            for j, ids in w.double_jobs.items():
                problems.append(f"double: job {j} had live containers {sorted(ids)} at once")
            for (t, u, n) in w.over_limit[:5]:
                problems.append(f"violation: user {u} had {n} running containers at {t:.1f}")
            docker_violations = len(w.over_limit)
            samples, sample_errors = w.samples, w.errors

        # logs: two followers of one job at the same time (two processes, or two slots of
        # one process); 50 ms of slack for log timestamps of a hand-over
        claim_doubles = 0
        for j, iv in self.claim_intervals().items():
            if j not in rows:
                continue
            for a, b in overlapping(iv):
                claim_doubles += 1
                problems.append(f"double: job {j} followed by {a[2]} ({a[0]:.2f}-{a[1]:.2f})"
                                f" and {b[2]} ({b[0]:.2f}-{b[1]:.2f}) at once")

        # stuck: expired leases, queue not drained, outbox not published, queued jobs
        stuck = 0
        n = int(self.pg.value(
            f"SELECT count(*) FROM training_jobs WHERE user_id = ANY({qlist(self.users)})"
            f" AND status IN ('pending', 'running')"
            f" AND lease_expires_at < now() - make_interval(secs => {LEASE})"))
        if n:
            stuck += n
            problems.append(f"stuck: {n} active jobs with a lease expired over {LEASE} s ago")
        n = int(self.pg.value(
            f"SELECT count(*) FROM outbox WHERE job_id::text = ANY({qlist(accepted)})"
            " AND published_at IS NULL"))
        if n:
            stuck += n
            problems.append(f"stuck: {n} outbox rows of accepted jobs never published")
        queued = [j for j, r in rows.items() if r["status"] == "queued"]
        stuck += len(queued)
        if queued:
            problems.append(f"stuck: {len(queued)} accepted jobs still queued")
        try:
            h.wait_until(lambda: h.queue_depth() == 0, timeout=30, interval=0.5,
                         what="trainq.jobs to drain")
        except AssertionError:
            stuck += 1
            problems.append(f"stuck: trainq.jobs still holds {h.queue_depth()} ready messages")

        # Deliveries a consumer still holds once every job ended: a held message of a
        # finished job is acked within moments (duplicate), so allow a short while.
        try:
            h.wait_until(lambda: self.unacked() == 0, timeout=20, interval=1,
                         what="no unacknowledged deliveries")
        except AssertionError:
            stuck += 1
            problems.append(f"stuck: trainq.jobs has {self.unacked()} unacknowledged "
                            "deliveries 20 s after every job ended; holders:\n"
                            + self.unacked_holders())

        self.strands.stop()
        with self.strands.lock:
            stranded = dict(self.strands.stranded)
            strand_samples = self.strands.samples
        for j, t in sorted(stranded.items()):
            problems.append(f"stranded: job {j} was runnable with a free slot and not picked "
                            f"for {t:.1f} s (bound {STRANDED_BOUND} s)")

        # events lost: a status change of an accepted job without its event row, or an event
        # row (its id: a republish repeats it) that never reached the bound queue
        audit_n = sum(1 for e in ev if e["job_id"] in rows)
        want = {r["message_id"] for r in self.pg.rows(
            "SELECT message_id FROM outbox WHERE exchange = 'trainq.events'"
            f" AND job_id::text = ANY({qlist(accepted)})")}
        got = {p.message_id for p, _ in h.get_messages(
            self.events_queue, want=lambda m: {p.message_id for p, _ in m} >= want, timeout=30)}
        events_lost = max(0, audit_n - len(want)) + len(want - got)
        if events_lost:
            problems.append(f"events lost: {audit_n} status changes, {len(want)} event rows, "
                            f"{len(want - got)} of them never reached {self.events_queue}")

        lost = len(missing) + len(unsettled)
        doubles = audit_doubles + docker_doubles + claim_doubles
        hooks, hooks_lost, hooks_dup = self.hooks.counts(self.pg, self.users, problems)
        return {
            "accepted": len(accepted),
            "completed": by_status.get("completed", 0),
            "failed": by_status.get("failed", 0),
            "cancelled": by_status.get("cancelled", 0),
            "lost": lost,
            "events_lost": events_lost,
            "doubles": doubles,
            "violations": violations + docker_violations,
            "recovered": recovered,
            "unreasoned": unreasoned,
            "stuck": stuck,
            "stranded": len(stranded),
            "strand_samples": strand_samples,
            "audit_breaks": chain_breaks,
            "retried_submits": sub.retries,
            "rejected": len(sub.rejected),
            "max_active": max(peak.values()) if peak else 0,
            "docker_samples": samples,
            "docker_sample_errors": sample_errors,
            "settled": settled,
            "failure_reasons": failure_reasons,
            "problems": problems,
            "hooks": hooks,
            "hooks_lost": hooks_lost,
            "hooks_dup": hooks_dup,
        }

    def summary(self, figures):
        secs = time.monotonic() - self.t0
        keys = ("accepted", "completed", "failed", "lost", "events_lost", "doubles", "violations",
                "stranded",
                "recovered", "unreasoned", "stuck", "retried_submits", "max_active")
        line = f"fault scenario={self.scenario} " + " ".join(
            f"{k}={figures[k]}" for k in keys) + f" seconds={secs:.1f}"
        counts = {}
        spurious = 0
        for p in self.procs:
            finished = set()
            for e in p.events():
                ev = e.get("event")
                if ev == "job.finished":
                    finished.add(e.get("job_id"))
            for e in p.events():
                ev = e.get("event")
                if ev == "job.lease_lost" and _parse_job_from_msg(e.get("msg")) in finished:
                    # The same process recorded the job's end (a real loss ends in job.fenced):
                    # the heartbeat raced the finish, logged just before or after it.
                    spurious += 1
                    continue
                if ev in self.EVIDENCE:
                    counts[ev] = counts.get(ev, 0) + 1
        line += "".join(f" {self.EVIDENCE[k]}={counts.get(k, 0)}" for k in self.EVIDENCE)
        line += f" lease_lost_racing_finish={spurious}"
        line += "".join(f" {k}={figures[k]}" for k in ("hooks", "hooks_lost", "hooks_dup"))
        with self.submitter.lock:
            other = sorted((str(k), n) for k, n in self.submitter.statuses.items() if k != 200)
        if other:
            line += " http_retried=" + ",".join(f"{k}:{n}" for k, n in other)
        if self.notes:
            line += " " + " ".join(self.notes)
        return line

    # consumer log events worth a figure: what recovery path actually ran
    EVIDENCE = {"adopt.container": "adopted", "adopt.repaired": "repaired",
                "job.lease_lost": "lease_lost", "job.fenced": "fenced",
                "job.parked": "parked", "job.duplicate": "duplicates",
                "job.requeued": "requeued", "job.interrupted": "interrupted",
                "job.claim_retry": "claim_retried", "job.claim_deferred": "claim_deferred",
                "host.unhealthy": "host_unhealthy",
                "job.intake_deferred": "intake_deferred", "job.pick_failed": "pick_failed"}

    # ------------------------------------------------------------ cleanup

    def teardown(self):
        """Stops what is still running with SIGTERM (must exit 0), removes this scenario's
        containers, ends its leftover jobs. Returns a list of problems (exit codes,
        sanitizer reports)."""
        problems = []
        try:
            self.submitter.stop_ev.set()
        except AttributeError:
            pass
        for w in (getattr(self, "watcher", None), getattr(self, "strands", None)):
            if w:
                w.stop()
        try:
            conn = h.amqp_connection()
            conn.channel().queue_delete(self.events_queue)
            conn.close()
        except Exception:  # never bound (start failed) or the broker is down: not a problem
            pass
        for p in self.procs:
            if p.running():
                try:
                    code = p.stop(signal.SIGTERM, timeout=45)
                except AssertionError as e:
                    problems.append(str(e))
                    continue
                if code != 0:
                    problems.append(f"{p.name} exited {code} on SIGTERM:\n"
                                    + p.stderr_text()[-3000:])
        for p in self.procs:
            found = p.sanitizer_report()
            if found:
                problems.append(f"{p.name}: sanitizer report {found}:\n"
                                + p.stderr_text()[-6000:])
        try:
            for u in self.users:
                for c in containers([f"trainq.user={u}"]):
                    tqenv.remove_container(c["Id"])
        except Exception as e:  # dockerd down after a failed scenario
            problems.append(f"cleanup: could not remove containers: {e}")
        self.hooks.close()
        try:
            # No webhook left for later scenarios' producers to retry against a closed port.
            self.pg.query(f"UPDATE webhook_endpoints SET disabled_at = now(), disabled_reason ="
                          f" 'fault scenario over' WHERE user_id = ANY({qlist(self.users)});"
                          "UPDATE webhook_deliveries SET state = 'failed' WHERE user_id ="
                          f" ANY({qlist(self.users)}) AND state = 'pending';")
            self.pg.query(
                "UPDATE training_jobs SET status = 'cancelled', completed_at = now()"
                f" WHERE user_id = ANY({qlist(self.users)})"
                " AND status NOT IN ('completed', 'failed', 'cancelled');")
        except RuntimeError as e:
            problems.append(f"cleanup: {e}")
        self.pg.close()
        keep = os.environ.get("TQ_KEEP_LOGS")
        for p in self.procs:
            if keep:
                dst = os.path.join(keep, f"{self.scenario}-{p.name}.log")
                try:
                    os.makedirs(keep, exist_ok=True)
                    shutil.copyfile(p._err.name, dst)
                except (OSError, AttributeError):
                    pass
            p.cleanup()
        shutil.rmtree(self.tmp, ignore_errors=True)
        return problems


# ---------------------------------------------------------------- webhooks

class HookReceiver:
    """The webhook receiver of a fleet (127.0.0.1, port 0): answers every POST 204 and
    counts the answers per webhook-id. Signatures are the integration tests' business."""

    def __init__(self):
        import http.server
        self.ok = {}
        self.lock = threading.Lock()
        rec = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                self.rfile.read(min(int(self.headers.get("Content-Length") or 0), 1 << 20))
                hid = self.headers.get("webhook-id", "")
                with rec.lock:
                    rec.ok[hid] = rec.ok.get(hid, 0) + 1
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.srv.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}/hook"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def counts(self, pg, users, problems, timeout=60):
        """(deliveries, lost, duplicates) once no delivery of users is pending (a producer
        killed mid-request leaves its row leased for 30 s) or timeout passed."""
        pending = f"SELECT count(*) FROM webhook_deliveries WHERE user_id = ANY({qlist(users)})" \
                  " AND state = 'pending'"
        try:
            h.wait_until(lambda: pg.value(pending) == "0", timeout=timeout, interval=0.5,
                         what="webhook deliveries to finish")
        except AssertionError:
            pass
        ids = [r["id"] for r in pg.rows("SELECT 'msg_' || id AS id FROM webhook_deliveries"
                                        f" WHERE user_id = ANY({qlist(users)})")]
        with self.lock:
            lost = [i for i in ids if i not in self.ok]
            dup = sum(n - 1 for n in self.ok.values())
        for i in lost[:10]:
            problems.append(f"hooks_lost: delivery {i} never answered 2xx at the receiver")
        return len(ids), len(lost), dup

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


# ---------------------------------------------------------------- the test base

import unittest  # noqa: E402


class FaultCase(unittest.TestCase):
    """Runs one scenario per test: fleet up, load, fault(fleet), settle, check, summary."""

    maxDiff = None

    def setUp(self):
        self.fleet = None

    def tearDown(self):
        if self.fleet is None:
            return
        problems = self.fleet.teardown()
        self.fleet = None
        if problems:
            self.fail("after the scenario:\n" + "\n".join(problems))

    def run_scenario(self, name, fault, durations=DURATIONS, producer_extra=None):
        """fault(fleet) injects the fault mid-load (it may block while a service restarts).
        producer_extra: more environment for the producers. Returns the figures after
        asserting the invariants."""
        f = self.fleet = Fleet(name, durations, producer_extra)
        f.start()
        fault(f)
        settled = f.settle()
        figures = f.check(settled)
        lines = [f.summary(figures)] + [
            f"  scenario={name} failed_jobs={n} reason={reason!r}"
            for reason, n in sorted(figures["failure_reasons"].items())]
        print("\n".join(lines), flush=True)
        out = os.environ.get("TQ_FAULT_SUMMARY")
        if out:
            with open(out, "a") as fh:
                fh.write("\n".join(lines) + "\n")
        detail = "\n".join(figures["problems"][:40])
        self.assertEqual(figures["rejected"], 0,
                         f"{name}: submissions refused for good: {f.submitter.rejected}")
        self.assertEqual(figures["accepted"], JOBS, f"{name}: not every submission was accepted")
        with f.submitter.lock:
            n500 = f.submitter.statuses.get(500, 0)
        self.assertEqual(n500, 0, f"{name}: the producers answered 500 {n500} time(s) during "
                         "the fault (docs/architecture.md: 503 while a dependency is down, never 500)")
        self.assertEqual(figures["lost"], 0, f"{name}: LOST jobs (accepted with 200, not "
                         f"terminal after {SETTLE_TIMEOUT:.0f} s):\n{detail}")
        self.assertEqual(figures["events_lost"], 0, f"{name}: job events lost:\n{detail}")
        self.assertEqual(figures["doubles"], 0, f"{name}: a job ran twice at once:\n{detail}")
        self.assertEqual(figures["hooks_lost"], 0, f"{name}: webhook deliveries lost:\n{detail}")
        self.assertEqual(figures["violations"], 0,
                         f"{name}: per-user limit of {LIMIT} exceeded:\n{detail}")
        self.assertEqual(figures["unreasoned"], 0,
                         f"{name}: recovered/failed jobs without a reason:\n{detail}")
        self.assertEqual(figures["stuck"], 0, f"{name}: something stuck:\n{detail}")
        self.assertEqual(figures["stranded"], 0, f"{name}: a valid job was stranded:\n{detail}")
        self.assertGreater(figures["strand_samples"], 0,
                           f"{name}: the never-stranded invariant was never sampled")
        self.assertEqual(figures["audit_breaks"], 0, f"{name}: job_events chain broken:\n{detail}")
        # Every trainer here exits 0 and each scenario is one transient fault, well within
        # max_attempts (4): a failed job means the system gave a job up for a fault it was
        # meant to ride out (e.g. a container dockerd took down counted as a training failure).
        reasons = "; ".join(f"{n}x {r}" for r, n in figures["failure_reasons"].items())
        self.assertEqual(figures["failed"], 0,
                         f"{name}: jobs failed although one transient fault should only "
                         f"retry them: {reasons}")
        if figures["problems"]:
            # Anything else the checks noticed (e.g. phantom rows) fails too, with its line.
            self.fail(f"{name}: {detail}")
        return figures

    # ------------------------------------------------------------ helpers for faults

    def recovery_reasons(self):
        return [e["reason"] or "" for e in self.fleet.events()
                if e["from_status"] in ACTIVE and e["to_status"] in ("queued", "failed")]


# ---------------------------------------------------------------- private clustered services

class PrivateServices:
    """A RabbitMQ cluster and/or a Postgres primary with a synchronous standby, started with
    scripts/services.sh in a state dir of their own (never the suite's shared services), for
    the scenarios of test_faults_cluster.py. up() points tqenv/tqharness (and every program
    the fleet starts) at them; down() stops them, removes the state dir and points back.
    dockerd and the trainer image stay the suite's own (TRAINQ_DOCKER_HOST).

    Ports (environment): TQ_CLUSTER_PG_PORT (25440; the standby takes +1) and
    TQ_CLUSTER_AMQP_PORT (25700; node I listens on + 5 * (I-1), distribution on + 2,
    epmd on + 3), so they never meet the default services' 25432 / 25672-25675."""

    STEP = 5

    def __init__(self, rabbitmq_nodes=3, standby=True):
        self.nodes = rabbitmq_nodes
        self.standby = standby
        pg = int(os.environ.get("TQ_CLUSTER_PG_PORT", "25440"))
        amqp = int(os.environ.get("TQ_CLUSTER_AMQP_PORT", "25700"))
        self.base = "tqfault"
        self.env = {"TRAINQ_PG_PORT": str(pg), "TRAINQ_PG_STANDBY_PORT": str(pg + 1),
                    "TRAINQ_AMQP_PORT": str(amqp), "TRAINQ_RABBITMQ_DIST_PORT": str(amqp + 2),
                    "TRAINQ_EPMD_PORT": str(amqp + 3),
                    "TRAINQ_RABBITMQ_PORT_STEP": str(self.STEP),
                    "TRAINQ_RABBITMQ_NODENAME": f"{self.base}@localhost"}
        self.state = None
        self.saved = None
        self.figures = {}

    @staticmethod
    def available():
        """Why the clustered services cannot run here (None when they can)."""
        for tool in ("/usr/lib/postgresql/15/bin/pg_basebackup",
                     "/usr/lib/rabbitmq/bin/rabbitmq-server"):
            if not os.access(tool, os.X_OK):
                return f"{tool} is missing"
        return None

    def _run(self, *args, timeout=300):
        env = dict(os.environ)
        env.update(self.env)
        env["TRAINQ_STATE_DIR"] = self.state
        return subprocess.run(["bash", tqenv.SERVICES_SH, *args], env=env, check=True,
                              capture_output=True, text=True, timeout=timeout).stdout

    def node_name(self, i):
        return f"{self.base}@localhost" if i == 1 else f"{self.base}-{i}@localhost"

    def up(self):
        self.state = tempfile.mkdtemp(prefix="tq-cluster-")
        os.chmod(self.state, 0o755)  # the postgres user keeps its data under it
        args = ["up", "--rabbitmq-nodes", str(self.nodes)]
        if self.standby:
            args.append("--postgres-standby")
        t = time.monotonic()
        try:
            self._run(*args, "postgres", "rabbitmq")
        except subprocess.CalledProcessError as e:
            self.down()
            raise RuntimeError(f"services.sh {' '.join(args)} failed: {e.stderr[-2000:]}")
        self.figures["services_up_s"] = round(time.monotonic() - t, 1)
        env = {}
        for line in self._run("env").splitlines():
            words = shlex.split(line)
            if words and words[0] == "export":
                for w in words[1:]:
                    k, _, v = w.partition("=")
                    env[k] = v
        new = {k: v for k, v in env.items()
               if k not in ("TRAINQ_DOCKER_HOST", "TRAINQ_RABBITMQCTL")}
        new.update(self.env)
        mig = dict(os.environ)
        mig.update(new)
        subprocess.run(["bash", os.path.join(tqenv.SOURCE_DIR, "scripts", "migrate.sh")],
                       env=mig, check=True, capture_output=True, timeout=120)
        self.saved = ({k: os.environ.get(k) for k in new}, dict(tqenv.ENV),
                      tqenv.DATABASE_URL, tqenv.AMQP_URL, tqenv.STATE_DIR, h.AMQP_URL,
                      h.amqp_connection)
        os.environ.update(new)
        tqenv.ENV.update(new)
        tqenv.DATABASE_URL = new["TRAINQ_DATABASE_URL"]
        tqenv.AMQP_URL = h.AMQP_URL = new["TRAINQ_AMQP_URL"]
        tqenv.STATE_DIR = self.state
        urls = new["TRAINQ_AMQP_URL"].split(",")
        h.amqp_connection = lambda: _amqp_connection_any(urls)
        return self

    def down(self):
        if self.saved:
            env, ENV, tqenv.DATABASE_URL, tqenv.AMQP_URL, tqenv.STATE_DIR, h.AMQP_URL, \
                h.amqp_connection = self.saved
            for k, v in env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            tqenv.ENV.clear()
            tqenv.ENV.update(ENV)
            self.saved = None
        if self.state:
            try:
                self._run("down", timeout=300)
            finally:
                shutil.rmtree(self.state, ignore_errors=True)
                self.state = None

    # ------------------------------------------------------------ faults

    def queue_info(self, queue="trainq.jobs"):
        """list_queues' leader and online members of `queue`, from any node that answers
        ({} when none does)."""
        for i in range(1, self.nodes + 1):
            try:
                out = self._run("rabbitmqctl-node", str(i), "list_queues", "-q", "name",
                                "leader", "online", "--formatter", "json", timeout=60)
                for q in json.loads(out):
                    if q.get("name") == queue:
                        return q
            except (subprocess.SubprocessError, ValueError):
                continue
        return {}

    def queue_arguments(self, queue="trainq.jobs"):
        """The x-arguments `queue` was declared with, {name: value}."""
        out = self._run("rabbitmqctl-node", "1", "list_queues", "-q", "name", "arguments",
                        "--formatter", "json", timeout=60)
        for q in json.loads(out):
            if q.get("name") == queue:
                return {a[0]: a[2] for a in q.get("arguments") or []}
        return {}

    def queue_leader(self, queue="trainq.jobs", timeout=30):
        """Index (1-based) of the node that leads `queue`."""
        deadline = time.monotonic() + timeout
        while True:
            leader = self.queue_info(queue).get("leader")
            for k in range(1, self.nodes + 1):
                if leader == self.node_name(k):
                    return k
            if time.monotonic() > deadline:
                raise AssertionError(f"no node named the leader of {queue}")
            time.sleep(1)

    def wait_queue_online(self, queue="trainq.jobs", timeout=60):
        """Waits until every replica of `queue` is online again (after a node came back)."""
        h.wait_until(lambda: len(self.queue_info(queue).get("online") or []) == self.nodes,
                     timeout=timeout, interval=1, what=f"all {self.nodes} replicas of {queue}")

    def connections(self, avoid=None):
        """{node index: number of trainq program connections (connection_name trainq*)}
        from any node that answers (list_connections is cluster-wide; the server port
        tells the node). Node `avoid` (a stopped one: the CLI waits for it) is asked last."""
        ports = {int(self.env["TRAINQ_AMQP_PORT"]) + self.STEP * (i - 1): i
                 for i in range(1, self.nodes + 1)}
        for i in sorted(range(1, self.nodes + 1), key=lambda k: k == avoid):
            try:
                out = self._run("rabbitmqctl-node", str(i), "list_connections", "-q", "port",
                                "client_properties", "--formatter", "json", timeout=60)
                rows = json.loads(out)
            except (subprocess.SubprocessError, ValueError):
                continue
            count = {k: 0 for k in ports.values()}
            for r in rows:
                props = r.get("client_properties") or []
                name = next((p[2] for p in props if isinstance(p, list) and len(p) == 3
                             and p[0] == "connection_name"), "")
                if str(name).startswith("trainq") and r.get("port") in ports:
                    count[ports[r["port"]]] += 1
            return count
        raise AssertionError("no rabbitmq node answered list_connections")

    def services(self, *args, timeout=300):
        return self._run(*args, timeout=timeout)


def _amqp_connection_any(urls):
    """tqharness.amqp_connection for a cluster: the first node of the list that accepts."""
    import pika
    last = None
    for url in urls:
        params = pika.URLParameters(url)
        params.socket_timeout = 10
        params.blocked_connection_timeout = 10
        params.connection_attempts = 1
        try:
            return pika.BlockingConnection(params)
        except pika.exceptions.AMQPConnectionError as e:
            last = e
    raise last
