"""trainq-consumer against the real Postgres, RabbitMQ, dockerd and the fake trainer image.

Each test uses its own users, datasets and data directory; jobs are published straight to
the exchange with pika (as any service may), with their rows created beforehand where a
test needs a definite submission order. The invariants of docs/architecture.md are checked from the
audit table (job_events), not from snapshots.
"""

import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import unittest
import urllib.parse
import uuid

import tqharness as h
import tqenv

IMAGE = tqenv.TRAINING_IMAGE
TERMINAL = ("completed", "failed", "cancelled")


def run_id():
    return uuid.uuid4().hex[:8]


class ConsumerCase(unittest.TestCase):
    """A data directory, datasets and consumer processes, cleaned up after each test."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="tq-consumer-")
        self.root = os.path.join(self.tmp, "datasets")
        os.makedirs(self.root)
        self.procs = []
        self.users = []
        h.purge_queue()
        h.purge_queue("trainq.jobs.dead")

    def tearDown(self):
        for p in self.procs:
            if p.running():
                p.stop(timeout=30)
        # Containers of this test's workers (labels) go; leftover jobs become terminal so
        # that no later test runs them.
        for p in self.procs:
            wid = p.env.get("TRAINQ_WORKER_ID")
            flt = urllib.parse.quote(json.dumps({"label": [f"trainq.worker={wid}"]}))
            st, lst = tqenv.docker("GET", f"/containers/json?all=1&filters={flt}")
            for c in lst or []:
                tqenv.remove_container(c["Id"])
        if self.users:
            tqenv.psql("UPDATE training_jobs SET status = 'cancelled', completed_at = now() "
                       "WHERE user_id = ANY(string_to_array(:'u', ',')) "
                       "AND status NOT IN ('completed', 'failed', 'cancelled')",
                       variables={"u": ",".join(self.users)})
        for p in self.procs:
            try:
                p.assert_no_sanitizer_report()
            finally:
                if os.environ.get("TQ_KEEP_LOGS"): print(p.stderr_text()[-60000:])
                p.cleanup()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ------------------------------------------------------------ fixtures

    def user(self, name):
        u = f"it-{name}-{run_id()}"
        self.users.append(u)
        return u

    def dataset(self, user, duration=1.0, exit_code=0, message="fake-trainer: done"):
        ds = str(uuid.uuid4())
        rel = f"{user}/{ds}"
        path = os.path.join(self.root, rel)
        os.makedirs(path)
        with open(os.path.join(path, "trainer.env"), "w") as f:
            f.write(f"DURATION={duration}\nEXIT_CODE={exit_code}\nMESSAGE={message}\nSTEPS=3\n")
        with open(os.path.join(path, "0001.png"), "wb") as f:  # the preflight wants an image
            f.write(b"\x89PNG\r\n\x1a\n")
        tqenv.psql("INSERT INTO datasets (id, user_id, name, storage_path) "
                   "VALUES (:'id', :'u', 'test dataset', :'p')",
                   variables={"id": ds, "u": user, "p": rel})
        return ds

    def consumer(self, worker, slots=2, start=True, **extra):
        env = {
            "TRAINQ_WORKER_ID": worker,
            "TRAINQ_SLOTS": slots,
            "TRAINQ_GPUS": "none",
            "TRAINQ_DATASETS_ROOT": self.root,
            "TRAINQ_DATA_DIR": os.path.join(self.tmp, "data"),
            "TRAINQ_HF_CACHE_DIR": os.path.join(self.tmp, "hf"),
            "TRAINQ_TRAINING_IMAGE": IMAGE,
            "TRAINQ_TRAINING_CMD": "--config /workspace/config.json",
            "TRAINQ_METRICS_ADDR": "127.0.0.1:0",
            "TRAINQ_HEARTBEAT_SECONDS": 1,
            "TRAINQ_LEASE_SECONDS": 4,
            "TRAINQ_SWEEP_SECONDS": 1,
            "TRAINQ_STOP_GRACE_SECONDS": 2,
            "TRAINQ_LOG_LEVEL": "debug",
        }
        env.update(extra)
        p = h.Program("consumer/trainq-consumer", env=env, name=f"consumer-{worker}")
        self.procs.append(p)
        if start:
            p.start()
            p.wait_event("consumer.ready", timeout=30)
        return p

    def message(self, user, dataset, job_id=None, **overrides):
        body = {
            "schema": "trainq.job.v1",
            "job_id": job_id or str(uuid.uuid4()),
            "user_id": user,
            "dataset_id": dataset,
            "name": "integration job",
            "type": "lora",
            "base_model": "stabilityai/sdxl-base-1.0",
            "config": {"steps": 200},
            "trigger_words": ["tq"],
        }
        body.update(overrides)
        return body

    def insert_job(self, msg, created_offset_ms):
        """The row a producer would have written, with a definite submission time (and the
        message a release republishes)."""
        tqenv.psql(
            "INSERT INTO training_jobs (id, user_id, dataset_id, name, type, base_model, config,"
            " trigger_words, message, created_at) VALUES (:'id', :'u', :'d', 'ordered', 'lora',"
            " 'stabilityai/sdxl-base-1.0', '{\"steps\": 200}', '{tq}', :'m',"
            " now() + make_interval(secs => :'off'::int / 1000.0))",
            variables={"id": msg["job_id"], "u": msg["user_id"], "d": msg["dataset_id"],
                       "m": json.dumps(msg, separators=(",", ":")), "off": created_offset_ms})

    AUTO = object()

    def publish(self, *msgs, message_id=AUTO, routing_key="lora", props=None):
        """Publishes like any service would; message_id defaults to the body's job_id,
        None sends no message_id at all; props: more pika.BasicProperties fields."""
        import pika
        conn = h.amqp_connection()
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            for m in msgs:
                body = m if isinstance(m, (bytes, str)) else json.dumps(m)
                mid = message_id
                if mid is self.AUTO:
                    mid = m["job_id"] if isinstance(m, dict) else None
                bp = pika.BasicProperties(content_type="application/json", delivery_mode=2,
                                          message_id=mid, **(props or {}))
                ch.basic_publish("trainq.jobs", routing_key, body, bp, mandatory=True)
        finally:
            conn.close()

    def job(self, job_id):
        out = tqenv.psql("SELECT row_to_json(j) FROM training_jobs j WHERE id = :'id'",
                         variables={"id": job_id})
        return json.loads(out) if out else None

    def wait_status(self, job_id, statuses, timeout=60):
        statuses = (statuses,) if isinstance(statuses, str) else statuses
        return h.wait_until(lambda: (j := self.job(job_id)) and j["status"] in statuses and j,
                            timeout=timeout, interval=0.2,
                            what=f"job {job_id} to become {'/'.join(statuses)}")

    def events(self, users):
        out = tqenv.psql(
            "SELECT coalesce(json_agg(e ORDER BY e.id), '[]') FROM job_events e "
            "WHERE user_id = ANY(string_to_array(:'u', ','))",
            variables={"u": ",".join(users)})
        return json.loads(out)

    # ------------------------------------------------------------ audit replays

    @staticmethod
    def max_active_per_user(events):
        active, peak = {}, {}
        for e in events:
            u = e["user_id"]
            was = e["from_status"] in ("pending", "running")
            now = e["to_status"] in ("pending", "running")
            active[u] = active.get(u, 0) + (1 if now and not was else -1 if was and not now else 0)
            peak[u] = max(peak.get(u, 0), active[u])
        return peak

    @staticmethod
    def max_active_per_worker(events):
        """Concurrent active jobs per worker, from claim to end, ordered by time."""
        owner, active, peak = {}, {}, {}
        for e in sorted(events, key=lambda e: (e["at"], e["id"])):
            j = e["job_id"]
            if e["to_status"] == "pending":
                owner[j] = e["worker_id"]
                active[owner[j]] = active.get(owner[j], 0) + 1
                peak[owner[j]] = max(peak.get(owner[j], 0), active[owner[j]])
            elif e["from_status"] in ("pending", "running") and \
                    e["to_status"] not in ("pending", "running") and j in owner:
                active[owner[j]] -= 1
        return peak


class DockerDelay:
    """A unix socket in front of the real dockerd that holds the create of one container
    (by its name in `POST .../containers/create?name=`) for `delay` seconds and passes every
    other byte through as it is (hijacked attach streams included)."""

    def __init__(self, path, name, delay):
        self.path, self.name, self.delay = path, name, delay
        self.upstream = urllib.parse.urlparse(tqenv.DOCKER_HOST).path
        self.held = threading.Event()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self.sock.close()

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _serve(self, client):
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            data = client.recv(65536)
            if not data:
                client.close()
                return
            head += data
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        if line.startswith("POST ") and "/containers/create?" in line and f"name={self.name}" in line:
            self.held.set()
            time.sleep(self.delay)
        up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        up.connect(self.upstream)
        up.sendall(head)
        threading.Thread(target=self._pipe, args=(up, client), daemon=True).start()
        self._pipe(client, up)


class TestCapacityAndFairness(ConsumerCase):

    def test_a_slow_container_start_holds_only_its_own_slot(self):
        """Two users' jobs on a 2-slot consumer, the first one's container held 6 s at its
        create (a proxy in front of dockerd: a large image, a busy daemon). The second is
        picked and running while the first is still being created: each slot's runner starts
        its own job (consumer/start.c), the dispatcher does not wait for one start to pick
        for the next free slot."""
        slow_user, fast_user = self.user("slow"), self.user("fast")
        slow = self.message(slow_user, self.dataset(slow_user, duration=1))
        fast = self.message(fast_user, self.dataset(fast_user, duration=1))
        proxy = DockerDelay(os.path.join(self.tmp, "docker.sock"), f"training-{slow['job_id']}",
                            6.0)
        self.addCleanup(proxy.close)
        self.insert_job(slow, -2000)  # first in the queue: picked first
        self.insert_job(fast, -1000)
        self.consumer(f"slowstart-{run_id()}", slots=2,
                      TRAINQ_DOCKER_HOST=f"unix://{proxy.path}")
        for m in (slow, fast):
            self.assertEqual(self.wait_status(m["job_id"], TERMINAL)["status"], "completed")
        self.assertTrue(proxy.held.is_set(), "the slow job's create never reached the proxy")
        out = tqenv.psql(
            "SELECT job_id, to_status, extract(epoch FROM min(at)) FROM job_events"
            " WHERE job_id IN (:'a', :'b') AND to_status IN ('pending', 'running')"
            " GROUP BY job_id, to_status", variables={"a": slow["job_id"], "b": fast["job_id"]})
        at = {(r[0], r[1]): float(r[2]) for r in (line.split("|") for line in out.splitlines())}
        s, f = slow["job_id"], fast["job_id"]
        self.assertLess(at[(s, "pending")], at[(f, "pending")], "the slow job was not picked first")
        self.assertGreaterEqual(at[(s, "running")] - at[(s, "pending")], 5.0)
        self.assertLess(at[(f, "running")], at[(s, "running")],
                        f"the second job waited for the first one's start: {at}")
        self.assertLess(at[(f, "pending")] - at[(s, "pending")], 3.0)

    def test_a_job_cancelled_while_its_container_is_created_stops_as_it_starts(self):
        """A cancellation requested while the job is pending (its container being created:
        held 3 s by a proxy in front of dockerd) is seen when the job is marked running, and
        the container is stopped then, not at a heartbeat: with heartbeats a minute apart,
        the job must end cancelled within seconds of its start."""
        u = self.user("cancelstart")
        m = self.message(u, self.dataset(u, duration=60))
        proxy = DockerDelay(os.path.join(self.tmp, "docker-cancel.sock"),
                            f"training-{m['job_id']}", 3.0)
        self.addCleanup(proxy.close)
        self.insert_job(m, -1000)
        self.consumer(f"cancelstart-{run_id()}", slots=1, TRAINQ_HEARTBEAT_SECONDS="60",
                      TRAINQ_LEASE_SECONDS="180", TRAINQ_DOCKER_HOST=f"unix://{proxy.path}")
        h.wait_until(proxy.held.is_set, timeout=30, what="the create held at the proxy")
        # what the producer's cancel of an active job writes (producer/pdb.c, cancel_fn)
        tqenv.psql("UPDATE training_jobs SET cancel_requested_at = now() WHERE id = :'id'"
                   " AND status = 'pending'", variables={"id": m["job_id"]})
        j = self.wait_status(m["job_id"], TERMINAL, timeout=40)
        self.assertEqual(j["status"], "cancelled", j)
        out = tqenv.psql(
            "SELECT extract(epoch FROM max(at) - min(at)) FROM job_events WHERE job_id = :'id'"
            " AND to_status IN ('running', 'cancelled')", variables={"id": m["job_id"]})
        self.assertLess(float(out), 10.0, "the container ran on until a heartbeat")

    def test_two_consumers_three_users_limit_order_and_no_idle_slot(self):
        """2 consumers x 2 slots, 3 users x 5 jobs: at most 2 active per user (from the audit
        table), every job completes, each user's jobs start in submission order, and no slot
        idles while a runnable job waits."""
        users = [self.user(n) for n in ("alice", "bob", "carol")]
        jobs = {u: [] for u in users}
        order = 0
        for i in range(5):
            for u in users:
                ds = self.dataset(u, duration=1.5)
                m = self.message(u, ds)
                self.insert_job(m, order)
                order += 10
                jobs[u].append(m)
        self.consumer(f"cap-a-{run_id()}", slots=2)
        self.consumer(f"cap-b-{run_id()}", slots=2)
        for i in range(5):
            for u in users:
                self.publish(jobs[u][i])
        all_ids = [m["job_id"] for u in users for m in jobs[u]]
        for jid in all_ids:
            self.assertEqual(self.wait_status(jid, TERMINAL, timeout=120)["status"], "completed")

        ev = self.events(users)
        peaks = self.max_active_per_user(ev)
        for u in users:
            self.assertLessEqual(peaks[u], 2, f"user {u} had {peaks[u]} active jobs")
            self.assertEqual(peaks[u], 2, f"user {u} never used both of its slots")
            claims = [e["job_id"] for e in ev if e["user_id"] == u and e["to_status"] == "pending"]
            self.assertEqual(claims, [m["job_id"] for m in jobs[u]],
                             f"user {u}'s jobs did not start in submission order")
        workers = self.max_active_per_worker(ev)
        self.assertEqual(len(workers), 2, "both consumers should have worked")
        for w, n in workers.items():
            self.assertLessEqual(n, 2, f"worker {w} ran {n} jobs on 2 slots")

        # Idle-slot time while runnable work waited: replay the audit trail. A job is
        # runnable when its user is under the limit; a slot is idle when fewer than 4 jobs
        # are active. Dispatch takes a few hundred ms, so allow a little per job.
        t = lambda e: e["at"]
        from datetime import datetime
        ts = lambda s: datetime.fromisoformat(s).timestamp()
        active = {u: 0 for u in users}
        waiting = {u: 5 for u in users}
        idle, last = 0.0, None
        timeline = sorted(ev, key=lambda e: (t(e), e["id"]))
        # From the first claim on: before it the test itself was still inserting rows.
        first = next(i for i, e in enumerate(timeline) if e["to_status"] == "pending")
        for e in timeline[first:]:
            now = ts(e["at"])
            if last is not None:
                runnable = sum(min(waiting[u], 2 - active[u]) for u in users)
                free = 4 - sum(active.values())
                if runnable > 0 and free > 0:
                    idle += (now - last) * min(runnable, free)
            last = now
            u = e["user_id"]
            if e["to_status"] == "pending":
                active[u] += 1
                waiting[u] -= 1
            elif e["from_status"] in ("pending", "running") and e["to_status"] in TERMINAL:
                active[u] -= 1
        print(f"idle slot-seconds while runnable jobs waited: {idle:.2f}")
        self.assertLess(idle, 0.5 * len(all_ids),
                        f"slots idled {idle:.2f} slot-seconds while runnable jobs waited")

    def test_one_slot_consumer_never_runs_two_containers(self):
        """A 1-slot consumer runs jobs of three users strictly one after another."""
        users = [self.user(n) for n in ("x", "y", "z")]
        msgs = [self.message(u, self.dataset(u, duration=1)) for u in users]
        c = self.consumer(f"one-{run_id()}", slots=1)
        self.publish(*msgs)
        for m in msgs:
            self.assertEqual(self.wait_status(m["job_id"], TERMINAL)["status"], "completed")
        peaks = self.max_active_per_worker(self.events(users))
        self.assertEqual(list(peaks.values()), [1])
        self.assertEqual(len(c.events("job.started")), 3)


class TestOutcomes(ConsumerCase):

    def test_nonzero_exit_fails_job_with_log_tail(self):
        u = self.user("fail")
        m = self.message(u, self.dataset(u, duration=0.3, exit_code=3, message="cuda-ish boom"))
        self.consumer(f"fail-{run_id()}")
        self.publish(m)
        j = self.wait_status(m["job_id"], TERMINAL)
        self.assertEqual(j["status"], "failed")
        self.assertEqual(j["exit_code"], 3)
        self.assertIn("cuda-ish boom", j["error_message"])
        self.assertIn("exit", j["error_message"])
        self.assertIsNotNone(j["completed_at"])

    def test_log_tail_of_arbitrary_bytes_is_recorded_as_valid_utf8(self):
        """The tail keeps the last 4096 bytes: its front cut falls inside a 2-byte character,
        and the trainer also prints bytes that are not UTF-8 at all (Postgres would refuse
        the reason). The failure is recorded, with whole characters and a replacement for
        the rest."""
        u = self.user("utf8tail")
        ds = self.dataset(u, duration=0.3, exit_code=3)
        end = b"\xff\xfe\xc3( \xe2\x82 \xc0\xaf bad"  # invalid, cut short, overlong
        run = "é".encode() * 2600  # the tail's 4096 bytes start 4096-len(end)-1 into it
        assert (4096 - len(end) - 1) % 2 == 1, "the cut must fall inside an é"
        path = os.path.join(self.root, u, ds, "trainer.env")
        with open(path, "wb") as f:
            f.write(b"DURATION=0.3\nEXIT_CODE=3\nSTEPS=1\nMESSAGE=" + run + end + b"\n")
        m = self.message(u, ds)
        self.consumer(f"utf8tail-{run_id()}")
        self.publish(m)
        j = self.wait_status(m["job_id"], TERMINAL)
        self.assertEqual(j["status"], "failed")
        self.assertEqual(j["exit_code"], 3)
        err = j["error_message"]
        self.assertTrue(err.startswith("training exited with code 3: " + "é" * 2000), err[:80])
        # dockerd's json-file log driver already turns invalid UTF-8 into U+FFFD; the
        # consumer's own sanitiser (tq_utf8_sanitize, unit-tested) turns it into '?'.
        self.assertRegex(err, "é{2000,}[?\ufffd]+\\( [?\ufffd]+ [?\ufffd]+ bad\n?$")

    def test_dataset_path_cut_inside_a_character_is_recorded(self):
        """A storage path quoted in the reason is cut at 200 bytes: never inside a
        character, or the failure could not be stored."""
        u = self.user("utf8path")
        prefix = f"{u}/"
        if (200 - len(prefix.encode())) % 2 == 0:
            prefix += "x"  # the 200-byte cut must fall inside an é
        ds = str(uuid.uuid4())
        tqenv.psql("INSERT INTO datasets (id, user_id, name, storage_path) "
                   "VALUES (:'id', :'u', 'test dataset', :'p')",
                   variables={"id": ds, "u": u, "p": prefix + "é" * 150})
        # the root holds another user's: an empty one would be the host's fault
        self.dataset(self.user("utf8other"))
        m = self.message(u, ds)
        self.consumer(f"utf8path-{run_id()}")
        self.publish(m)
        j = self.wait_status(m["job_id"], TERMINAL)
        self.assertEqual(j["status"], "failed")
        whole = (200 - len(prefix.encode())) // 2
        self.assertEqual(j["error_message"],
                         f'dataset directory "{prefix}{"é" * whole}" does not exist')

    def test_cancel_running_job_stops_container_and_starts_the_users_next_job(self):
        u = self.user("cancel")
        msgs = []
        for i in range(3):
            m = self.message(u, self.dataset(u, duration=60))
            self.insert_job(m, i * 10)
            msgs.append(m)
        c = self.consumer(f"cancel-{run_id()}", slots=3)
        self.publish(*msgs)
        first, second, third = (m["job_id"] for m in msgs)
        self.wait_status(first, "running")
        self.wait_status(second, "running")
        time.sleep(1.5)  # picks meanwhile: the third waits at its user's limit
        self.assertEqual(self.job(third)["status"], "queued")
        container = self.job(first)["container_id"]
        # What POST /api/training/jobs/{id}/cancel records for an active job.
        tqenv.psql("UPDATE training_jobs SET cancel_requested_at = now() WHERE id = :'id'",
                   variables={"id": first})
        j = self.wait_status(first, TERMINAL, timeout=30)
        self.assertEqual(j["status"], "cancelled")
        h.wait_until(lambda: tqenv.docker("GET", f"/containers/{container}/json")[0] == 404,
                     timeout=20, what="cancelled container removed")
        self.wait_status(third, "running", timeout=20)
        self.assertEqual(self.max_active_per_user(self.events([u]))[u], 2)
        reasons = [e["reason"] for e in self.events([u])
                   if e["job_id"] == first and e["to_status"] == "cancelled"]
        self.assertEqual(reasons, ["cancelled by user"])

    def test_overrunning_job_is_stopped_and_failed(self):
        u = self.user("overrun")
        m = self.message(u, self.dataset(u, duration=60))
        self.consumer(f"overrun-{run_id()}", TRAINQ_MAX_RUN_SECONDS=2)
        self.publish(m)
        j = self.wait_status(m["job_id"], TERMINAL, timeout=30)
        self.assertEqual(j["status"], "failed")
        self.assertIn("maximum run time of 2 s", j["error_message"])


class TestMessages(ConsumerCase):

    def test_duplicate_delivery_runs_one_container(self):
        u = self.user("dup")
        m = self.message(u, self.dataset(u, duration=2))
        c = self.consumer(f"dup-{run_id()}", slots=2)
        self.publish(m, m)
        self.wait_status(m["job_id"], TERMINAL)
        c.wait_event("job.duplicate", timeout=20)
        claims = [e for e in self.events([u]) if e["to_status"] == "pending"]
        self.assertEqual(len(claims), 1)
        self.assertEqual(len(c.events("job.started")), 1)

    def test_invalid_messages_are_dead_lettered_with_reason(self):
        u = self.user("bad")
        ds = self.dataset(u)
        good_id = str(uuid.uuid4())
        cases = [
            (b"not json at all", "x-1", "body"),
            (self.message(u, ds, config={"steps": 5}), self.AUTO, "config.steps"),
            (self.message(u, ds, type="textual_inversion"), self.AUTO, "type"),
            (self.message(u, ds, schema="trainq.job.v0"), self.AUTO, "schema"),
            (self.message(u, ds, job_id=good_id), "other-id", "message_id"),
            (self.message(u, ds), None, "message_id"),
        ]
        self.consumer(f"bad-{run_id()}")
        for body, mid, _ in cases:
            self.publish(body, message_id=mid)
        got = h.get_messages("trainq.jobs.dead", want=lambda ms: len(ms) >= len(cases),
                             timeout=30)
        self.assertEqual(len(got), len(cases))
        reasons = [p.headers["x-trainq-reason"] for p, _ in got]
        for (_, _, needle), reason in zip(cases, reasons):
            self.assertIn(needle, reason)
        self.assertIsNone(self.job(good_id), "a dead-lettered message must not create a job")

    def test_direct_publish_creates_row_and_runs(self):
        u = self.user("direct")
        m = self.message(u, self.dataset(u, duration=0.5))
        del m["name"]  # defaults apply exactly as for HTTP submissions
        m["config"] = {}
        self.consumer(f"direct-{run_id()}")
        self.publish(m)
        j = self.wait_status(m["job_id"], TERMINAL)
        self.assertEqual(j["status"], "completed")
        self.assertEqual(j["source"], "amqp")
        self.assertEqual(j["name"], "lora stabilityai/sdxl-base-1.0")
        self.assertEqual(j["config"], {"learning_rate": 0.0001, "batch_size": 1, "steps": 1000,
                                       "resolution": 512, "lora_rank": 16, "lora_alpha": 32})

    def test_a_parked_direct_job_is_released_with_the_bytes_first_published(self):
        """A job published straight to AMQP in trainq's canonical encoding (compact, keys in
        the contract's order, every default written) waits at its user's limit with exactly
        the body first published as its row's message, and starts from it; nothing is
        published again for it (the row is all a free slot needs)."""
        u = self.user("rebytes")
        running = [self.message(u, self.dataset(u, duration=60)) for _ in range(2)]
        job_id = str(uuid.uuid4())
        body = json.dumps({
            "schema": "trainq.job.v1", "job_id": job_id, "user_id": u,
            "submitted_at": "2026-01-02T03:04:05.678Z", "dataset_id": self.dataset(u),
            "name": "Grüße ✓", "type": "lora", "base_model": "stabilityai/sdxl-base-1.0",
            "config": {"learning_rate": 0.0003, "batch_size": 2, "steps": 300,
                       "resolution": 512, "lora_rank": 16, "lora_alpha": 32},
            "trigger_words": ["ü", "a b"]}, separators=(",", ":"), ensure_ascii=False)
        self.consumer(f"rebytes-{run_id()}", slots=3)
        self.publish(*running)
        self.publish(body.encode(), message_id=job_id)
        for m in running:
            self.wait_status(m["job_id"], "running")
        h.wait_until(lambda: self.job(job_id) and self.job(job_id)["status"] == "queued",
                     what="third job queued")
        self.assertEqual(tqenv.psql("SELECT message FROM training_jobs WHERE id = :'id'",
                                    variables={"id": job_id}), body)
        tqenv.psql("UPDATE training_jobs SET cancel_requested_at = now() WHERE id = :'id'",
                   variables={"id": running[0]["job_id"]})
        self.wait_status(job_id, ("running",) + TERMINAL, timeout=30)
        self.assertEqual(tqenv.psql("SELECT message FROM training_jobs WHERE id = :'id'",
                                    variables={"id": job_id}), body)
        self.assertEqual(tqenv.psql("SELECT count(*) FROM outbox WHERE job_id = :'id'"
                                    " AND exchange = 'trainq.jobs'",
                                    variables={"id": job_id}), "0")

    def test_direct_publish_stores_the_canonical_message(self):
        """The row of a message from another service holds the body shared/tq_msg.c encodes
        for it (what a release republishes), not the bytes as they were published: keys in
        contract order, defaults filled in, the job id lowercased, 1e-4 written shortest."""
        u = self.user("canon")
        ds = self.dataset(u, duration=0.2)
        jid = str(uuid.uuid4())
        body = ('{"trigger_words":["tq"],"config":{"steps":200,"learning_rate":1.0e-4},'
                f'"base_model":"stabilityai/sdxl-base-1.0","type":"lora","dataset_id":"{ds}",'
                f'"user_id":"{u}","job_id":"{jid.upper()}","schema":"trainq.job.v1"}}')
        self.consumer(f"canon-{run_id()}")
        self.publish(body, message_id=jid.upper())
        j = self.wait_status(jid, TERMINAL)
        self.assertEqual(j["status"], "completed")
        self.assertEqual(
            j["message"],
            f'{{"schema":"trainq.job.v1","job_id":"{jid}","user_id":"{u}",'
            f'"dataset_id":"{ds}","name":"lora stabilityai/sdxl-base-1.0","type":"lora",'
            '"base_model":"stabilityai/sdxl-base-1.0","config":{"learning_rate":0.0001,'
            '"batch_size":1,"steps":200,"resolution":512,"lora_rank":16,"lora_alpha":32},'
            '"trigger_words":["tq"]}')

    def test_claimed_job_is_launched_from_its_stored_message(self):
        """The consumer launches what the row's message says (decoded once, defaults from
        tq_job.c), whatever a later delivery of the same job carries."""
        u = self.user("stored")
        ds = self.dataset(u, duration=0.2)
        m = self.message(u, ds)
        self.insert_job(m, 0)
        stored = dict(m, config={"steps": 300, "lora_rank": 8}, trigger_words=["a", "b"])
        tqenv.psql("UPDATE training_jobs SET message = :'m' WHERE id = :'id'",
                   variables={"m": json.dumps(stored), "id": m["job_id"]})
        self.consumer(f"stored-{run_id()}")
        self.publish(m)  # steps 200, trigger word "tq"
        self.assertEqual(self.wait_status(m["job_id"], TERMINAL)["status"], "completed")
        with open(os.path.join(self.tmp, "data", "configs", m["job_id"] + ".json")) as f:
            conf = json.load(f)
        self.assertEqual((conf["max_train_steps"], conf["rank"], conf["lora_alpha"]),
                         (300, 8, 32))
        self.assertEqual(conf["instance_prompt"], "a, b")

    def test_a_stored_message_that_does_not_decode_fails_the_job(self):
        """A row whose message was damaged by hand is failed with the reason, once, and
        starts no container; the consumer carries on."""
        u = self.user("damaged")
        ds = self.dataset(u, duration=0.2)
        m = self.message(u, ds)
        self.insert_job(m, 0)
        tqenv.psql("UPDATE training_jobs SET message = '{\"schema\": \"trainq.job.v0\"}' "
                   "WHERE id = :'id'", variables={"id": m["job_id"]})
        c = self.consumer(f"damaged-{run_id()}")
        self.publish(m)
        j = self.wait_status(m["job_id"], TERMINAL)
        self.assertEqual(j["status"], "failed")
        self.assertIn("stored job is invalid", j["error_message"])
        self.assertIsNone(j["container_id"])
        ok = self.message(u, ds)
        self.publish(ok)
        self.assertEqual(self.wait_status(ok["job_id"], TERMINAL)["status"], "completed")
        self.assertEqual(len(c.events("job.started")), 1)

    def test_dataset_missing_or_foreign_fails_job(self):
        u, other = self.user("ds"), self.user("ds-other")
        foreign = self.dataset(other)
        m1 = self.message(u, str(uuid.uuid4()))
        m2 = self.message(u, foreign)
        self.consumer(f"ds-{run_id()}")
        self.publish(m1, m2)
        j1 = self.wait_status(m1["job_id"], TERMINAL)
        j2 = self.wait_status(m2["job_id"], TERMINAL)
        self.assertEqual((j1["status"], j2["status"]), ("failed", "failed"))
        self.assertIn("not found", j1["error_message"])
        self.assertIn("belongs to another user", j2["error_message"])

    def test_dataset_storage_path_longer_than_1023_bytes_fails_job(self):
        # Cut to 1023 bytes it would still look valid (and could name another directory).
        u = self.user("longpath")
        ds = str(uuid.uuid4())
        tqenv.psql("INSERT INTO datasets (id, user_id, name, storage_path) "
                   "VALUES (:'id', :'u', 'test dataset', :'p')",
                   variables={"id": ds, "u": u, "p": f"{u}/" + "a/" * 1000})
        m = self.message(u, ds)
        self.consumer(f"longpath-{run_id()}")
        self.publish(m)
        j = self.wait_status(m["job_id"], TERMINAL)
        self.assertEqual(j["status"], "failed")
        self.assertEqual(j["error_message"],
                         f"dataset {ds} storage_path is longer than 1023 bytes")
        self.assertIsNone(j["container_id"])


class TestRecovery(ConsumerCase):

    def test_killed_consumer_adopts_its_container_on_restart(self):
        u = self.user("adopt")
        m = self.message(u, self.dataset(u, duration=6))
        wid = f"adopt-{run_id()}"
        c1 = self.consumer(wid)
        self.publish(m)
        j = self.wait_status(m["job_id"], "running")
        c1.kill()
        c2 = self.consumer(wid)
        c2.wait_event("adopt.container", timeout=20)
        j = self.wait_status(m["job_id"], TERMINAL, timeout=30)
        self.assertEqual(j["status"], "completed")
        self.assertEqual(j["attempts"], 1)
        claims = [e for e in self.events([u]) if e["to_status"] == "pending"]
        self.assertEqual(len(claims), 1, "the job must have run exactly once")

    def test_job_that_finished_while_its_consumer_was_down_is_recorded_on_restart(self):
        """Adoption lists only live containers and those of held jobs: an exited container
        of a job the worker still holds is among them, and its outcome is recorded."""
        u = self.user("exited")
        m = self.message(u, self.dataset(u, duration=1.5))
        wid = f"exited-{run_id()}"
        c1 = self.consumer(wid)
        self.publish(m)
        j = self.wait_status(m["job_id"], "running")
        c1.kill()
        h.wait_until(lambda: tqenv.docker("GET", f"/containers/{j['container_id']}/json")[1]
                     ["State"]["Status"] == "exited", timeout=20, what="the container to exit")
        c2 = self.consumer(wid)
        c2.wait_event("adopt.container", timeout=20)
        j = self.wait_status(m["job_id"], TERMINAL, timeout=30)
        self.assertEqual((j["status"], j["attempts"]), ("completed", 1))

    def test_lost_consumer_is_reaped_by_another_within_lease(self):
        u = self.user("lost")
        m = self.message(u, self.dataset(u, duration=4))
        lost = self.consumer(f"lost-{run_id()}")
        self.publish(m)
        j = self.wait_status(m["job_id"], "running")
        # The host is gone: its consumer and its container.
        lost.kill()
        tqenv.remove_container(j["container_id"])
        t0 = time.monotonic()
        self.consumer(f"rescuer-{run_id()}")
        j = self.wait_status(m["job_id"], TERMINAL, timeout=60)
        self.assertEqual(j["status"], "completed")
        self.assertEqual(j["attempts"], 2)
        self.assertLess(time.monotonic() - t0, 4 + 2 + 4 + 15, "recovery took too long")
        reasons = [e["reason"] for e in self.events([u]) if e["to_status"] == "queued"]
        self.assertTrue(any(r and "stopped renewing its lease" in r for r in reasons), reasons)

    def test_a_job_taken_from_a_dead_worker_on_a_shared_daemon_gets_its_own_container(self):
        """Two consumers on one dockerd (one per GPU set of a host): the first dies with its
        container running, the second is given the job after the lease. It replaces that
        container instead of following it (it runs on the first worker's GPUs), and the first
        worker, back, finds nothing of its own to stop: the job completes on attempt 2.
        Before, the second followed the first's container and the first, restarted, killed
        it as a job it no longer held: exit 137, failed as out of memory."""
        u = self.user("shared")
        m = self.message(u, self.dataset(u, duration=14))
        dead = f"dead-{run_id()}"
        c1 = self.consumer(dead)
        self.publish(m)
        first = self.wait_status(m["job_id"], "running")
        c1.kill()
        c2 = self.consumer(f"heir-{run_id()}")
        c2.wait_event("launch.replaced", timeout=40)
        j = self.wait_status(m["job_id"], "running")
        self.assertEqual(j["attempts"], 2)
        self.assertNotEqual(j["container_id"], first["container_id"])
        st, info = tqenv.docker("GET", f"/containers/{j['container_id']}/json")
        self.assertEqual((st, info["Config"]["Labels"]["trainq.worker"]), (200, j["worker_id"]))
        self.assertEqual(tqenv.docker("GET", f"/containers/{first['container_id']}/json")[0], 404)
        back = self.consumer(dead)
        back.wait_event("consumer.ready", timeout=30)
        j = self.wait_status(m["job_id"], TERMINAL, timeout=60)
        self.assertEqual((j["status"], j["attempts"], j["exit_code"]), ("completed", 2, 0))
        self.assertEqual(back.events("adopt.stopped"), [])

    def test_stored_jobs_start_while_rabbitmq_is_down(self):
        """Who runs next is decided in Postgres: with the broker stopped, a job whose row is
        stored (an HTTP submission whose message waits in the outbox) is picked by a free
        slot and runs. Before, the dispatcher only retried the broker and no slot picked."""
        u = self.user("nobroker")
        c = self.consumer(f"nobroker-{run_id()}")
        c.wait_event("consumer.ready", timeout=30)
        tqenv.services("stop", "rabbitmq")
        try:
            c.wait_event("amqp.down", timeout=30)
            m = self.message(u, self.dataset(u, duration=1))
            self.insert_job(m, 0)
            j = self.wait_status(m["job_id"], TERMINAL, timeout=40)
            self.assertEqual((j["status"], j["attempts"]), ("completed", 1))
        finally:
            tqenv.services("start", "rabbitmq")
        c.wait_event("amqp.up", timeout=60)

    def test_a_metrics_address_in_use_stops_the_start_with_exit_1(self):
        """Another process on the metrics port is not a bad setting (exit 2, which the
        systemd unit does not restart) but something that may be gone at the next start."""
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        self.addCleanup(busy.close)
        port = busy.getsockname()[1]
        p = self.consumer(f"busy-{run_id()}", start=False,
                          TRAINQ_METRICS_ADDR=f"127.0.0.1:{port}").start()
        p.proc.wait(30)
        self.assertEqual(p.proc.returncode, 1)
        lines = p.stderr_text().strip().splitlines()
        self.assertEqual(lines[-1], f"trainq-consumer: could not listen on 127.0.0.1:{port}"
                         " for metrics: Address already in use")

    def test_a_metrics_address_this_host_cannot_have_stops_the_start_with_exit_2(self):
        """An address no interface has fails the same way on every start: one line and exit
        2, which the systemd unit does not restart, not exit 1 and a restart loop. Run in a
        network namespace of the test's own, where a documentation address is nobody's."""
        wrap = h.own_netns_or_skip(self)
        p = self.consumer(f"noaddr-{run_id()}", start=False,
                          TRAINQ_METRICS_ADDR="[2001:db8::1]:9101")
        p.wrap = wrap
        p.start()
        p.proc.wait(30)
        self.assertEqual(p.proc.returncode, 2, p.stderr_text()[-2000:])
        self.assertEqual(p.plain_lines(), ["trainq-consumer: could not listen on [2001:db8::1]:9101"
                                           " for metrics: Cannot assign requested address"])
        self.assertFalse(p.events("consumer.ready"))

    def test_dockerd_restart_under_a_running_job_retries_it(self):
        """dockerd (no live-restore) takes its containers down when it stops: the job was not
        at fault, so it is retried with the reason recorded, and the consumer resumes once
        dockerd answers again."""
        u = self.user("dockerd")
        m = self.message(u, self.dataset(u, duration=5))
        c = self.consumer(f"dockerd-{run_id()}")
        self.publish(m)
        self.wait_status(m["job_id"], "running")
        tqenv.services("restart", "docker")
        j = self.wait_status(m["job_id"], TERMINAL, timeout=90)
        self.assertEqual(j["status"], "completed")
        self.assertEqual(j["attempts"], 2)
        reasons = [e["reason"] for e in self.events([u]) if e["to_status"] == "queued"]
        self.assertTrue(any(r and "while dockerd was unreachable" in r for r in reasons), reasons)
        c.wait_event("job.interrupted", timeout=5)

    def test_amqp_up_metric_follows_the_broker_connection(self):
        c = self.consumer(f"amqpup-{run_id()}")
        port = c.wait_event("consumer.starting").get("metrics_port")

        def amqp_up():
            r = h.http_once(port, "GET", "/metrics", timeout=5)
            for line in r.raw.decode().splitlines():
                if line.startswith("trainq_consumer_amqp_up "):
                    return line.split()[1]
            return None

        h.wait_until(lambda: amqp_up() == "1", timeout=10, what="amqp_up 1 while connected")
        tqenv.services("stop", "rabbitmq")
        try:
            h.wait_until(lambda: amqp_up() == "0", timeout=30, what="amqp_up 0 without a broker")
        finally:
            tqenv.services("start", "rabbitmq")
        h.wait_until(lambda: amqp_up() == "1", timeout=60, what="amqp_up 1 after reconnecting")

    def test_clean_restart_slower_than_the_lease_keeps_the_job(self):
        """A deploy: SIGTERM, then a restart later than the lease while another consumer's
        reaper runs. The stop extended the lease (restart grace), so the job is adopted, not
        retried elsewhere: one claim, one attempt."""
        u = self.user("grace")
        m = self.message(u, self.dataset(u, duration=12))
        wid = f"grace-{run_id()}"
        c1 = self.consumer(wid, TRAINQ_RESTART_GRACE_SECONDS=60)
        self.publish(m)
        self.assertEqual(self.wait_status(m["job_id"], "running")["worker_id"], wid)
        self.consumer(f"reaper-{run_id()}")  # after: the job must be c1's, not its
        self.assertEqual(c1.stop(signal.SIGTERM), 0)
        c1.wait_event("consumer.leases_extended", timeout=5)
        time.sleep(4 + 3)  # longer than TRAINQ_LEASE_SECONDS=4, reaper sweeps every second
        j = self.job(m["job_id"])
        self.assertEqual((j["status"], j["worker_id"], j["attempts"]), ("running", wid, 1),
                         "the job was taken away from the stopped worker")
        c2 = self.consumer(wid)
        c2.wait_event("adopt.container", timeout=20)
        j = self.wait_status(m["job_id"], TERMINAL, timeout=30)
        self.assertEqual((j["status"], j["attempts"]), ("completed", 1))
        claims = [e for e in self.events([u]) if e["to_status"] == "pending"]
        self.assertEqual(len(claims), 1, "the job must not have been retried elsewhere")

    def test_sigterm_leaves_containers_running_and_exits_zero(self):
        u = self.user("term")
        m = self.message(u, self.dataset(u, duration=5))
        wid = f"term-{run_id()}"
        c1 = self.consumer(wid)
        self.publish(m)
        j = self.wait_status(m["job_id"], "running")
        self.assertEqual(c1.stop(signal.SIGTERM), 0)
        st, info = tqenv.docker("GET", f"/containers/{j['container_id']}/json")
        self.assertEqual(st, 200)
        self.assertTrue(info["State"]["Running"], "SIGTERM must leave the container running")
        self.consumer(wid)
        self.assertEqual(self.wait_status(m["job_id"], TERMINAL, timeout=30)["status"],
                         "completed")


class TestWorkerIdentity(ConsumerCase):
    """Two consumers with one TRAINQ_WORKER_ID would each take the other's jobs and
    containers for their own (adoption, the heartbeat's lease check): the later one stops
    with exit 2, and a restart after a crash is not mistaken for one."""

    def row(self, wid):
        h.wait_until(lambda: tqenv.psql("SELECT 1 FROM workers WHERE worker_id = :'w'",
                                        variables={"w": wid}).strip(), timeout=10,
                     what=f"worker {wid}'s first heartbeat")
        out = tqenv.psql("SELECT extract(epoch FROM started_at), stopped_at IS NULL"
                         " FROM workers WHERE worker_id = :'w'", variables={"w": wid})
        started, live = out.strip().split("|")
        return float(started), live == "t"

    def wait_exit(self, p, timeout):
        p.proc.wait(timeout)
        return p.proc.returncode

    def test_a_second_consumer_with_a_running_ones_id_exits_2_naming_it(self):
        wid = f"w-twin-{run_id()}"
        a = self.consumer(wid)
        a_started, _ = self.row(wid)
        b = self.consumer(wid, start=False)
        b.start()
        self.assertEqual(self.wait_exit(b, 30), 2, b.stderr_text()[-3000:])
        dup = b.events("worker.duplicate_id")
        self.assertEqual(len(dup), 1, b.stderr_text()[-3000:])
        self.assertIn(f"worker id {wid} is in use by a running consumer on host "
                      f"{socket.gethostname()}", dup[0]["msg"])
        self.assertIn("TRAINQ_WORKER_ID", dup[0]["msg"])
        self.assertEqual(b.events("consumer.ready"), [])  # it never consumed
        # the first one goes on, its row its own and not marked stopped
        time.sleep(2.5)
        self.assertTrue(a.running())
        self.assertEqual(a.events("worker.duplicate_id"), [])
        self.assertEqual(self.row(wid), (a_started, True))
        b.assert_no_sanitizer_report()

    def test_a_restart_after_a_crash_is_not_taken_for_a_second_consumer(self):
        wid = f"w-crash-{run_id()}"
        user = self.user("crash")
        ds = self.dataset(user, duration=0.5)
        a = self.consumer(wid)
        self.row(wid)
        h.wait_until(lambda: float(tqenv.psql(
            "SELECT extract(epoch FROM now() - heartbeat_at) FROM workers WHERE worker_id = :'w'",
            variables={"w": wid})) < 0.5, timeout=10, what="a fresh heartbeat")
        a.kill()  # its row still looks alive: not marked stopped, heartbeat fresh
        t0 = time.monotonic()
        b = self.consumer(wid)
        # it watched the dead one's row for up to two heartbeats and 3 s, then went on
        self.assertEqual(len(b.events("worker.id_watch")), 1, b.stderr_text()[-3000:])
        self.assertLess(time.monotonic() - t0, 15)
        msg = self.message(user, ds)
        self.publish(msg)
        self.assertEqual(self.wait_status(msg["job_id"], TERMINAL)["status"], "completed")
        self.assertEqual(b.events("worker.duplicate_id"), [])
        self.assertTrue(b.running())

    def test_two_consumers_started_at_once_with_one_id_leave_one_running(self):
        wid = f"w-once-{run_id()}"
        a = self.consumer(wid, start=False)
        b = self.consumer(wid, start=False)
        a.start()
        b.start()
        # whichever check sees the other first (the start's, or a heartbeat's), one stays
        h.wait_until(lambda: not a.running() or not b.running(), timeout=30,
                     what="one of the two consumers to stop")
        gone, kept = (a, b) if not a.running() else (b, a)
        self.assertEqual(self.wait_exit(gone, 30), 2, gone.stderr_text()[-3000:])
        self.assertIn(f"worker id {wid} is in use by a running consumer",
                      gone.events("worker.duplicate_id")[0]["msg"])
        self.assert_keeps_its_row(kept, wid)
        gone.assert_no_sanitizer_report()

    def test_a_paused_consumer_back_beside_its_replacement_makes_the_replacement_stop(self):
        wid = f"w-paused-{run_id()}"
        a = self.consumer(wid)
        a_started, _ = self.row(wid)
        a.send_signal(signal.SIGSTOP)  # a host suspended: its row goes stale
        try:
            h.wait_until(lambda: float(tqenv.psql(
                "SELECT extract(epoch FROM now() - heartbeat_at) FROM workers"
                " WHERE worker_id = :'w'", variables={"w": wid})) > 5.5, timeout=15,
                what="the paused consumer's heartbeat to be older than the start's watch")
            b = self.consumer(wid)  # an operator starts a replacement under the same id
            self.assertEqual(b.events("worker.id_watch"), [])  # stale: taken at once
            h.wait_until(lambda: self.row(wid)[0] != a_started, timeout=10,
                         what="the replacement's first heartbeat")
            # the replacement takes a job meanwhile (a stored row: a message could go to the
            # paused one's channel)
            user = self.user("paused")
            msg = self.message(user, self.dataset(user, duration=8))
            self.insert_job(msg, 0)
            self.wait_status(msg["job_id"], "running", timeout=30)
            container = b.wait_event("job.started", timeout=10)
        finally:
            a.send_signal(signal.SIGCONT)
        # both heartbeats now see the other's writes: the later one stops, the other says so
        self.assertEqual(self.wait_exit(b, 30), 2, b.stderr_text()[-3000:])
        self.assertIn("this one started later and stops",
                      b.events("worker.duplicate_id")[0]["msg"])
        a.wait_event("worker.duplicate_id", timeout=10)
        self.assertIn("the other one started later and stops",
                      a.events("worker.duplicate_id")[0]["msg"])
        # the container it started is gone (nothing would adopt it), and the job runs again
        # on the consumer that stayed once its claim expires, to completion, one attempt more
        self.assertEqual(len(b.events("job.abandoned")), 1, b.stderr_text()[-3000:])
        flt = urllib.parse.quote(json.dumps({"label": [f"trainq.job={msg['job_id']}"]}))
        st, lst = tqenv.docker("GET", f"/containers/json?all=1&filters={flt}")
        self.assertNotIn(container["container"], [c["Id"] for c in lst or []])
        job = self.wait_status(msg["job_id"], TERMINAL, timeout=60)
        self.assertEqual((job["status"], job["attempts"]), ("completed", 2))
        self.assert_keeps_its_row(a, wid)
        b.assert_no_sanitizer_report()

    def assert_keeps_its_row(self, kept, wid):
        time.sleep(2)  # its heartbeats take the row back
        first = self.row(wid)
        time.sleep(3)  # three more: nobody else writes it, and it is not marked stopped
        self.assertTrue(kept.running(), kept.stderr_text()[-3000:])
        self.assertEqual(self.row(wid), first)
        self.assertTrue(first[1])
        # it says so once, if its heartbeat saw the other (not when that one stopped at start)
        said = kept.events("worker.duplicate_id")
        self.assertLessEqual(len(said), 1)
        for e in said:
            self.assertIn("the other one started later and stops", e["msg"])

if __name__ == "__main__":
    unittest.main()
