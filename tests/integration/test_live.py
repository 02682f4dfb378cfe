"""Watching a job (issue 12, the producer's side): the job API's progress and queue
fields, the log tail, the Server-Sent Events streams and the artifacts, read with an
independent client (http.client) against a real producer and Postgres.

A job's output is written the way a consumer writes it: through tq_output_log and
tq_output_progress (db/procedures/70_output.sql) with the claim's fencing token, after
the job was made pending with psql; status changes are plain UPDATEs, which the database's
triggers turn into job_events rows and NOTIFYs as for any program.

Needs TRAINQ_BIN_DIR, TRAINQ_DATABASE_URL (migrated), TRAINQ_AMQP_URL, TRAINQ_SERVICES.
"""

import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import tempfile
import time
import unittest
import uuid

import tqharness as h
from test_producer import (DocChecks, SECRET, add_dataset, body_for, new_user,
                           start_producer, stop_producer, wait_ready)

KEEPALIVE_S = 1
STREAMS_PER_USER = 3
LOG_BUDGET = 1024 * 1024


class Sse:
    """One Server-Sent Events connection (http.client reads the chunked body)."""

    def __init__(self, port, path, token, last_id=None, timeout=20.0):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        hdrs = {"Accept": "text/event-stream", "Authorization": "Bearer " + token}
        if last_id is not None:
            hdrs["Last-Event-ID"] = last_id
        self.conn.request("GET", path, headers=hdrs)
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.comments = []
        self.retry = None
        self.last_id = last_id

    def body(self):
        return self.resp.read()

    def next(self):
        """The next event {id, event, data} (data parsed as JSON unless a log), or None at
        the end of the stream. Comments are collected in .comments."""
        ev, data = {}, []
        while True:
            line = self.resp.readline()
            if not line:
                return None
            line = line.decode().rstrip("\n")
            if line == "":
                if "event" in ev:
                    raw = "\n".join(data)
                    ev["data"] = raw if ev["event"] == "log" else json.loads(raw)
                    if "id" in ev:
                        self.last_id = ev["id"]
                    return ev
                ev, data = {}, []
                continue
            if line.startswith(":"):
                self.comments.append(line)
                continue
            k, _, v = line.partition(":")
            v = v[1:] if v.startswith(" ") else v
            if k == "data":
                data.append(v)
            elif k == "retry":
                self.retry = int(v)
            else:
                ev[k] = v

    def events(self, n):
        out = []
        for _ in range(n):
            e = self.next()
            if e is None:
                break
            out.append(e)
        return out

    def close(self):
        self.conn.close()


def set_status(job_id, status, reason=None):
    """A status change as a consumer makes it (pending takes a new fencing token)."""
    extra = ""
    if status == "pending":
        extra = ", worker_id = 'test-worker', fencing_token = fencing_token + 1"
    elif status == "running":
        extra = ", started_at = now()"
    elif status in ("completed", "failed", "cancelled"):
        extra = ", completed_at = now()"
    h.psql("BEGIN; SELECT set_config('trainq.reason', :'reason', true);"
           f"UPDATE training_jobs SET status = :'st'{extra} WHERE id = :'id'; COMMIT",
           variables={"id": job_id, "st": status, "reason": reason or ""})


def fencing(job_id):
    return h.psql("SELECT fencing_token FROM training_jobs WHERE id = :'id'",
                  variables={"id": job_id})


def write_log(job_id, lines, budget=LOG_BUDGET):
    return h.psql("SELECT tq_output_log(:'id', :'tok'::bigint, :'lines', :'max'::bigint)",
                  variables={"id": job_id, "tok": fencing(job_id), "lines": lines,
                             "max": str(budget)})


def write_progress(job_id, step, total, loss=None, eta=None):
    return h.psql("SELECT tq_output_progress(:'id', :'tok'::bigint, :'step'::int, :'total'::int,"
                  " NULLIF(:'loss', '')::float8, NULLIF(:'eta', '')::float8, 100)",
                  variables={"id": job_id, "tok": fencing(job_id), "step": str(step),
                             "total": str(total), "loss": "" if loss is None else repr(loss),
                             "eta": "" if eta is None else repr(eta)})


def write_big_log(job_id, rows=20):
    """rows log rows of 400 kB each (2000 lines of 199 bytes), under a budget far above the
    default: more than the kernel's socket buffers hold."""
    for _ in range(rows):
        h.psql("SELECT tq_output_log(:'id', fencing_token, (SELECT string_agg("
               "repeat('y', 199), E'\\n') FROM generate_series(1, 2000)), 1 << 30)"
               " FROM training_jobs WHERE id = :'id'", variables={"id": job_id})


class LiveTest(unittest.TestCase, DocChecks):
    @classmethod
    def setUpClass(cls):
        cls.artifacts = tempfile.mkdtemp(prefix="trainq-artifacts-")
        cls.p = start_producer(TRAINQ_STREAM_KEEPALIVE_SECONDS=str(KEEPALIVE_S),
                               TRAINQ_STREAMS_PER_USER=str(STREAMS_PER_USER),
                               TRAINQ_ARTIFACTS_DIR=cls.artifacts)
        cls.port = cls.p.port
        wait_ready(cls.port)

    @classmethod
    def tearDownClass(cls):
        code = cls.p.stop(signal.SIGTERM, timeout=30)
        text = cls.p.stderr_text()
        found = cls.p.sanitizer_report()
        cls.p.cleanup()
        shutil.rmtree(cls.artifacts, ignore_errors=True)
        assert code == 0, f"producer exited {code} on SIGTERM:\n{text[-3000:]}"
        assert not found, f"sanitizer report in producer stderr:\n{text[-6000:]}"

    def setUp(self):
        self.user = new_user()
        self.token = h.mint(self.user, SECRET)
        self.c = h.Http(self.port)
        self.ds = add_dataset(self.user)
        self.streams = []

    def tearDown(self):
        for s in self.streams:
            s.close()
        self.c.close()

    def get(self, path, token=None, headers=None):
        return self.c.request("GET", path, token=token or self.token, headers=headers)

    def submit(self, **over):
        r = self.c.request("POST", "/api/training/submit", json_body=body_for(self.ds, **over),
                           token=self.token)
        self.assertEqual(r.status, 200, r)
        job_id = r.json["job_id"]
        self.addCleanup(h.psql, "UPDATE training_jobs SET status = 'cancelled', completed_at ="
                        " now() WHERE id = :'id' AND status NOT IN ('completed', 'failed',"
                        " 'cancelled')", variables={"id": job_id})
        return job_id

    def job(self, job_id):
        r = self.get(f"/api/training/jobs/{job_id}")
        self.assertEqual(r.status, 200, r)
        self.assertShape(r, "/api/training/jobs/{id}", "GET")
        return r.json["job"]

    def stream_opens(self, port):
        """1 when the caller may open one more stream on the producer at port."""
        s = Sse(port, "/api/training/stream", self.token, timeout=5)
        self.streams.append(s)
        if s.status != 200:
            s.body()
        return s.status == 200

    def stream(self, path, last_id=None, token=None):
        s = Sse(self.port, path, token or self.token, last_id=last_id)
        self.streams.append(s)
        return s

    # ------------------------------------------------------------ job fields

    def test_a_running_job_carries_its_progress_fields_and_no_queue_fields(self):
        job_id = self.submit()
        j = self.job(job_id)
        for f in ("current_step", "total_steps", "loss", "eta_seconds", "progress_updated_at"):
            self.assertIn(f, j)
            self.assertIsNone(j[f], f)
        set_status(job_id, "pending")
        set_status(job_id, "running")
        self.assertNotEqual(write_progress(job_id, 450, 1000, loss=0.0912, eta=163.0), "")
        j = self.job(job_id)
        self.assertEqual(j["current_step"], 450)
        self.assertEqual(j["total_steps"], 1000)
        self.assertAlmostEqual(j["loss"], 0.0912)
        self.assertAlmostEqual(j["eta_seconds"], 163.0)
        self.assertAlmostEqual(j["progress"], 0.45, places=5)
        self.assertTrue(j["progress_updated_at"].endswith("+00:00"), j)
        self.assertIsNone(j["queue_position"])
        self.assertIsNone(j["waiting_reason"])
        # loss and eta may be unknown
        write_progress(job_id, 460, 1000)
        j = self.job(job_id)
        self.assertIsNone(j["loss"])
        self.assertIsNone(j["eta_seconds"])
        # the list carries the same fields
        r = self.get("/api/training/jobs")
        self.assertEqual(r.status, 200, r)
        self.assertShape(r, "/api/training/jobs", "GET")
        mine = [x for x in r.json["jobs"] if x["id"] == job_id][0]
        self.assertEqual(mine["current_step"], 460)

    def test_queue_position_and_waiting_reason_follow_the_order_of_the_pick(self):
        """Positions follow the pick's order (priority, the user's recent usage, submission):
        three jobs of one user stand one after the other, a job raised to high goes before
        them; the reason says user_limit at the user's active limit and quota over it."""
        a, b, c = self.submit(), self.submit(), self.submit()
        pa = self.job(a)["queue_position"]
        self.assertGreaterEqual(pa, 1)
        # the first job in the pick's order stands at 1
        first = h.psql("SELECT id FROM training_jobs WHERE status = 'queued' AND NOT"
                       " tq_user_over_quota(user_id) ORDER BY priority DESC,"
                       " tq_recent_usage(user_id), created_at, id LIMIT 1")
        r = self.get(f"/api/training/jobs/{first}", token=h.mint(
            h.psql("SELECT user_id FROM training_jobs WHERE id = :'id'",
                   variables={"id": first}), SECRET))
        self.assertEqual(r.json["job"]["queue_position"], 1)
        self.assertEqual(self.job(b)["queue_position"], pa + 1)
        self.assertEqual(self.job(c)["queue_position"], pa + 2)
        for j in (a, b, c):
            self.assertEqual(self.job(j)["waiting_reason"], "capacity")
        # c raised to high: before every normal job, a and b one place down
        h.psql("UPDATE training_jobs SET priority = 2 WHERE id = :'id'", variables={"id": c})
        self.assertLess(self.job(c)["queue_position"], self.job(a)["queue_position"])
        self.assertEqual(self.job(c)["priority"], "high")
        self.assertEqual(self.job(a)["queue_position"], pa + 1)
        user = h.psql("SELECT user_id FROM training_jobs WHERE id = :'id'", variables={"id": a})
        try:
            h.psql("INSERT INTO user_limits (user_id, max_active) VALUES (:'u', 0)",
                   variables={"u": user})
            self.assertEqual(self.job(b)["waiting_reason"], "user_limit")
            h.psql("UPDATE user_limits SET gpu_seconds_per_day = 0 WHERE user_id = :'u'",
                   variables={"u": user})
            self.assertEqual(self.job(b)["waiting_reason"], "quota")
        finally:
            h.psql("DELETE FROM user_limits WHERE user_id = :'u'", variables={"u": user})
        # once it has left queued: both null
        set_status(a, "cancelled")
        ja = self.job(a)
        self.assertIsNone(ja["queue_position"])
        self.assertIsNone(ja["waiting_reason"])

    # ------------------------------------------------------------ logs

    def test_logs_tail_returns_the_newest_lines_while_running_and_after_the_end(self):
        job_id = self.submit()
        path = f"/api/training/jobs/{job_id}/logs"
        r = self.get(path)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.raw, b"")
        set_status(job_id, "pending")
        write_log(job_id, "l1\nl2")
        write_log(job_id, "l3")
        write_log(job_id, "l4\nl5\nl6")
        r = self.get(path)
        self.assertEqual(r.status, 200)
        self.assertTrue(r.header("Content-Type").startswith("text/plain"), r.header("Content-Type"))
        self.assertEqual(r.raw, b"l1\nl2\nl3\nl4\nl5\nl6\n")
        self.assertEqual(self.get(path + "?tail=2").raw, b"l5\nl6\n")
        self.assertEqual(self.get(path + "?tail=4").raw, b"l3\nl4\nl5\nl6\n")
        self.assertEqual(self.get(path + "?tail=10000").raw.count(b"\n"), 6)
        set_status(job_id, "completed")
        self.assertEqual(self.get(path + "?tail=1").raw, b"l6\n", "gone with the container")
        for bad in ("0", "10001", "abc", "-1", "1.5", "+2", "%202", "99999999999999999999"):
            r = self.get(path + "?tail=" + bad)
            self.assertEqual(r.status, 400, bad)
            self.assertShape(r, "/api/training/jobs/{id}/logs", "GET")
            self.assertEqual(r.json["details"][0]["field"], "tail")
        # empty is the default, as for ?limit=
        self.assertEqual(self.get(path + "?tail=").raw, b"l1\nl2\nl3\nl4\nl5\nl6\n")
        # the default is 200 lines
        job2 = self.submit()
        set_status(job2, "pending")
        write_log(job2, "\n".join(f"x{i}" for i in range(250)))
        lines = self.get(f"/api/training/jobs/{job2}/logs").raw.decode().splitlines()
        self.assertEqual(lines, [f"x{i}" for i in range(50, 250)])

    def test_another_users_job_is_not_found_on_every_new_endpoint(self):
        job_id = self.submit()
        other = h.mint(new_user(), SECRET)
        for suffix in ("/logs", "/artifacts", "/artifacts/model.bin"):
            r = self.get(f"/api/training/jobs/{job_id}{suffix}", token=other)
            self.assertEqual(r.status, 404, suffix)
        s = self.stream(f"/api/training/jobs/{job_id}/stream", token=other)
        self.assertEqual(s.status, 404)
        self.assertEqual(json.loads(s.body())["error"], "job not found")
        s = self.stream(f"/api/training/jobs/{uuid.uuid4()}/stream")
        self.assertEqual(s.status, 404)
        r = self.get(f"/api/training/jobs/{job_id}/stream", token="not-a-token")
        self.assertEqual(r.status, 401)

    # ------------------------------------------------------------ the job stream

    def test_job_stream_sends_status_progress_and_log_then_ends_after_the_terminal_status(self):
        job_id = self.submit()
        s = self.stream(f"/api/training/jobs/{job_id}/stream")
        self.assertEqual(s.status, 200)
        self.assertTrue(s.resp.getheader("Content-Type").startswith("text/event-stream"))
        e = s.next()
        self.assertEqual((e["event"], e["data"]["status"], e["data"]["job_id"]),
                         ("status", "queued", job_id))
        self.assertIsNone(e["data"]["from_status"])
        self.assertIn("at", e["data"])
        set_status(job_id, "pending", reason="claimed by test-worker")
        e = s.next()
        self.assertEqual((e["event"], e["data"]["status"], e["data"]["reason"]),
                         ("status", "pending", "claimed by test-worker"))
        write_progress(job_id, 3, 5, loss=0.5, eta=10)
        e = s.next()
        self.assertEqual(e["event"], "progress")
        self.assertEqual((e["data"]["current_step"], e["data"]["total_steps"]), (3, 5))
        self.assertAlmostEqual(e["data"]["progress"], 0.6, places=5)
        self.assertEqual(e["data"]["loss"], 0.5)
        write_log(job_id, "hello\nworld")
        e = s.next()
        self.assertEqual((e["event"], e["data"]), ("log", "hello\nworld"))
        ids = [e["id"]]
        set_status(job_id, "running")
        e = s.next()
        self.assertEqual(e["data"]["status"], "running")
        ids.append(e["id"])
        write_log(job_id, "bye")
        set_status(job_id, "completed")
        rest = s.events(10)
        self.assertEqual([(x["event"], x["data"] if x["event"] == "log" else x["data"]["status"])
                          for x in rest], [("log", "bye"), ("status", "completed")])
        self.assertIsNone(s.next(), "the stream ends after the terminal status")
        self.assertEqual(s.retry, 2000)
        # A reconnect after the end is 204 No Content: what makes EventSource stop
        # reconnecting (a 200 that ends at once has it come back every 2 s for ever).
        s2 = self.stream(f"/api/training/jobs/{job_id}/stream", last_id=s.last_id)
        self.assertEqual(s2.status, 204)
        self.assertEqual(s2.body(), b"")
        # one from before the end gets the rest, then the stream ends
        s3 = self.stream(f"/api/training/jobs/{job_id}/stream", last_id=ids[1])
        self.assertEqual(s3.status, 200)
        self.assertEqual([(x["event"], x["data"] if x["event"] == "log" else x["data"]["status"])
                          for x in s3.events(10)], [("log", "bye"), ("status", "completed")])

    def test_a_reconnect_with_last_event_id_misses_and_repeats_nothing(self):
        job_id = self.submit()
        path = f"/api/training/jobs/{job_id}/stream"
        s = self.stream(path)
        self.assertEqual(s.next()["data"]["status"], "queued")
        set_status(job_id, "pending")
        self.assertEqual(s.next()["data"]["status"], "pending")
        last = s.last_id
        s.close()
        # while the client is away
        write_log(job_id, "while away 1")
        set_status(job_id, "running")
        write_log(job_id, "while away 2")
        s2 = self.stream(path, last_id=last)
        got = s2.events(3)
        self.assertEqual([(x["event"], x["data"] if x["event"] == "log" else x["data"]["status"])
                          for x in got],
                         [("status", "running"), ("log", "while away 1"), ("log", "while away 2")])
        r = self.get(path, headers={"Last-Event-ID": "x.1"})
        self.assertEqual(r.status, 400)
        self.assertEqual(r.json["details"][0]["field"], "Last-Event-ID")

    def test_a_client_reconnecting_to_a_restarted_producer_misses_no_status_event(self):
        other = start_producer()
        try:
            wait_ready(other.port)
            job_id = self.submit()
            path = f"/api/training/jobs/{job_id}/stream"
            s = Sse(other.port, path, self.token)
            self.streams.append(s)
            self.assertEqual(s.next()["data"]["status"], "queued")
            t0 = time.monotonic()
            code = other.stop(signal.SIGTERM, timeout=30)
            self.assertEqual(code, 0, other.stderr_text()[-3000:])
            self.assertIsNone(s.next(), "SIGTERM ends the stream")
            self.assertLess(time.monotonic() - t0, 5, "streams end at once on SIGTERM")
            other.assert_no_sanitizer_report()
        finally:
            other.cleanup()
        # changes while no producer serves the client
        set_status(job_id, "pending")
        set_status(job_id, "running")
        # the client reconnects to the restarted producer (a new process, a new port) ...
        again = start_producer()
        try:
            wait_ready(again.port)
            s2 = Sse(again.port, path, self.token, last_id=s.last_id)
            self.streams.append(s2)
            self.assertEqual([x["data"]["status"] for x in s2.events(2)], ["pending", "running"])
            set_status(job_id, "completed")
            e = s2.next()
            self.assertEqual(e["data"]["status"], "completed")
            self.assertIsNone(s2.next())
        finally:
            stop_producer(self, again)
        # ... and any other instance gives the same story from the same id
        s3 = self.stream(path, last_id=s.last_id)
        self.assertEqual([x["data"]["status"] for x in s3.events(5)],
                         ["pending", "running", "completed"])

    def test_the_all_jobs_stream_sends_status_and_progress_of_every_job_of_the_user(self):
        s = self.stream("/api/training/stream")
        self.assertEqual(s.status, 200)
        a, b = self.submit(), self.submit()
        got = s.events(2)
        self.assertEqual([(x["event"], x["data"]["job_id"], x["data"]["status"]) for x in got],
                         [("status", a, "queued"), ("status", b, "queued")])
        set_status(a, "pending")
        e = s.next()
        self.assertEqual((e["data"]["job_id"], e["data"]["status"]), (a, "pending"))
        write_progress(a, 1, 4)
        e = s.next()
        self.assertEqual((e["event"], e["data"]["job_id"], e["data"]["current_step"]),
                         ("progress", a, 1))
        last = s.last_id
        s.close()
        set_status(b, "cancelled")
        s2 = self.stream("/api/training/stream", last_id=last)
        e = s2.next()
        self.assertEqual((e["data"]["job_id"], e["data"]["status"]), (b, "cancelled"))
        # another user's job never shows up
        other = new_user()
        ds = add_dataset(other)
        r = self.c.request("POST", "/api/training/submit", json_body=body_for(ds),
                           token=h.mint(other, SECRET))
        self.assertEqual(r.status, 200)
        set_status(a, "running")
        e = s2.next()
        self.assertEqual((e["data"]["job_id"], e["data"]["status"]), (a, "running"))

    def test_a_submit_commits_without_notify_and_the_producer_wakes_its_listeners_after(self):
        """tq_submit defers its NOTIFYs (tq_notify, db/procedures/00_triggers.sql), so the
        submission's own commit never queues on the notification lock; producer/wake.c
        sends them after the commit from its own backend, with the user as
        trainq_job_event's payload. psql prints each notification with the PID of the
        backend that sent it."""
        listener = h.PsqlSession()
        heard = {}
        pat = re.compile(r'Asynchronous notification "(\w+)"(?: with payload "([^"]*)")?'
                         r' received from server process with PID (\d+)')

        def listen():
            for m in pat.finditer(listener.run("SELECT 1")):
                heard.setdefault((m[1], m[2] or ""), set()).add(int(m[3]))
            return ("trainq_outbox", "") in heard and ("trainq_job_event", self.user) in heard

        try:
            listener.run("LISTEN trainq_outbox")
            listener.run("LISTEN trainq_job_event")
            job_id = self.submit()
            h.wait_until(listen, timeout=10, what="the wake-ups of the submission")
        finally:
            listener.close()
        waker = h.psql("SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT tq_wake(%'")
        submitters = h.psql("SELECT pid FROM pg_stat_activity"
                            " WHERE query LIKE '%FROM tq_submit(%'").split()
        self.assertTrue(waker.isdigit(), f"no tq_wake backend: {waker!r}")
        self.assertTrue(submitters, "no tq_submit backend")
        self.assertNotIn(waker, submitters)
        for key in (("trainq_outbox", ""), ("trainq_job_event", self.user)):
            self.assertEqual(heard[key], {int(waker)}, f"{key} sent by {heard[key]}")
        # and the wake-up reached the relay: the job's message is published
        h.wait_until(lambda: h.psql("SELECT count(*) FROM outbox WHERE job_id = :'id'"
                                    " AND exchange = 'trainq.jobs' AND published_at IS NOT NULL",
                                    variables={"id": job_id}) == "1",
                     timeout=10, what="the job's message published")

    def test_a_job_event_without_a_user_wakes_every_stream(self):
        """What tq_wake sends when one round gathered more users than producer/wake.c
        keeps (an empty trainq_job_event payload): every stream reads its events at once,
        not at its next poll (every 5 s). Three rounds, each a change made without any
        NOTIFY and then one empty notification: each change arrives within 1.5 s of it (a
        poll alone would bring all three that fast about 3 times in 100)."""
        s = self.stream("/api/training/stream")
        self.assertEqual(s.status, 200)
        job_id = self.submit()
        self.assertEqual(s.next()["data"]["status"], "queued")
        for status in ("pending", "running", "completed"):
            extra = {"pending": ", worker_id = 'test-worker', fencing_token = fencing_token + 1",
                     "running": ", started_at = now()",
                     "completed": ", completed_at = now()"}[status]
            h.psql("BEGIN; SELECT set_config('trainq.notify', 'deferred', true);"
                   f" UPDATE training_jobs SET status = :'st'{extra} WHERE id = :'id'; COMMIT",
                   variables={"id": job_id, "st": status})
            t0 = time.monotonic()
            h.psql("NOTIFY trainq_job_event, ''")
            e = s.next()
            took = time.monotonic() - t0
            self.assertEqual((e["data"]["job_id"], e["data"]["status"]), (job_id, status))
            self.assertLess(took, 1.5, f"{status} arrived {took:.2f} s after the wake-up")

    def test_streams_per_user_are_capped_with_429_and_a_closed_one_frees_its_place(self):
        job_id = self.submit()
        path = f"/api/training/jobs/{job_id}/stream"
        open_ = []
        for _ in range(STREAMS_PER_USER):
            s = self.stream(path)
            self.assertEqual(s.status, 200)
            self.assertEqual(s.next()["data"]["status"], "queued")
            open_.append(s)
        r = self.get(path)
        self.assertEqual(r.status, 429, r)
        self.assertShape(r, "/api/training/jobs/{id}/stream", "GET")
        self.assertTrue(int(r.header("Retry-After")) >= 1)
        r = self.get("/api/training/stream")
        self.assertEqual(r.status, 429)
        # another user is not affected
        other = new_user()
        s = self.stream("/api/training/stream", token=h.mint(other, SECRET))
        self.assertEqual(s.status, 200)
        open_[0].close()
        # the server notices the closed client at its next write (a keepalive at the latest)
        h.wait_until(lambda: self.stream_opens(self.port), timeout=10, what="a place freed")

    def test_a_silent_stream_gets_keepalive_comments(self):
        job_id = self.submit()
        s = self.stream(f"/api/training/jobs/{job_id}/stream")
        self.assertEqual(s.next()["data"]["status"], "queued")
        t0 = time.monotonic()
        while len(s.comments) < 2:
            line = s.resp.readline()
            self.assertTrue(line, "stream ended")
            if line.startswith(b":"):
                s.comments.append(line.decode().strip())
        self.assertEqual(s.comments[:2], [": keepalive", ": keepalive"])
        self.assertLess(time.monotonic() - t0, KEEPALIVE_S * 2 + 2)

    def test_a_client_that_does_not_read_blocks_no_one_else(self):
        job_id = self.submit()
        set_status(job_id, "pending")
        # the producer's own buffer for the stream fills and stays bounded
        write_big_log(job_id)
        # a client that never reads: its socket buffers fill
        slow = self.stream(f"/api/training/jobs/{job_id}/stream")
        self.assertEqual(slow.status, 200)
        t0 = time.monotonic()
        for _ in range(5):
            write_log(job_id, "more")
            r = self.get(f"/api/training/jobs/{job_id}")
            self.assertEqual(r.status, 200)
        last_event = h.psql("SELECT max(id) FROM job_events WHERE job_id = :'id'",
                            variables={"id": job_id})
        other = self.stream(f"/api/training/jobs/{job_id}/stream", last_id=f"{last_event}.20")
        e = other.next()
        self.assertEqual((e["event"], e["data"]), ("log", "more"))
        self.assertLess(time.monotonic() - t0, 10)

    def test_a_stream_survives_losing_its_postgres_connections(self):
        """The notifier's LISTEN connection and its reading connection are cut (as by a
        Postgres restart or failover); it listens again and the stream carries on."""
        job_id = self.submit()
        s = self.stream(f"/api/training/jobs/{job_id}/stream")
        self.assertEqual(s.next()["data"]["status"], "queued")
        lost = len(self.p.events("stream.listen_lost"))
        n = h.psql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                   " WHERE application_name = 'trainq-producer' AND pid <> pg_backend_pid()",
                   superuser=True)
        self.assertGreaterEqual(int(n), 2, "the listening and the reading connection")
        self.p.wait_event("stream.listen_lost", timeout=10, after=lost)
        set_status(job_id, "pending")
        e = s.next()
        self.assertEqual((e["event"], e["data"]["status"]), ("status", "pending"))
        time.sleep(1.5)  # listening again (RELISTEN_MS) and caught up
        t0 = time.monotonic()
        set_status(job_id, "running")
        self.assertEqual(s.next()["data"]["status"], "running")
        self.assertLess(time.monotonic() - t0, 2, "woken by NOTIFY, not by the 5 s poll")

    def test_the_connection_deadlines_do_not_cut_a_healthy_long_lived_stream(self):
        """The header and body deadlines (producer/admit.c) and the idle timeout are for
        requests; a stream outlives all of them, silent in between (no keepalive yet)."""
        other = start_producer(TRAINQ_HTTP_HEADER_TIMEOUT_SECONDS="1",
                               TRAINQ_HTTP_BODY_TIMEOUT_SECONDS="1",
                               TRAINQ_REQUEST_TIMEOUT_SECONDS="2",
                               TRAINQ_STREAM_KEEPALIVE_SECONDS="60")
        try:
            wait_ready(other.port)
            job_id = self.submit()
            s = Sse(other.port, f"/api/training/jobs/{job_id}/stream", self.token, timeout=30)
            self.streams.append(s)
            self.assertEqual(s.next()["data"]["status"], "queued")
            time.sleep(4)
            set_status(job_id, "pending")
            e = s.next()
            self.assertEqual((e["event"], e["data"]["status"]), ("status", "pending"))
            self.assertEqual(s.comments, [], "no keepalive was due")
        finally:
            stop_producer(self, other)

    def test_a_large_log_arrives_whole_and_in_order_before_the_end(self):
        """8 MB of log (rows of 400 kB, more than one read takes and more than the stream's
        buffer holds): every line once, in order, then the terminal status."""
        job_id = self.submit()
        set_status(job_id, "pending")
        write_big_log(job_id)
        write_log(job_id, "last line", budget=1 << 30)
        set_status(job_id, "completed")
        s = self.stream(f"/api/training/jobs/{job_id}/stream")
        lines, statuses, seqs = [], [], []
        while True:
            e = s.next()
            if e is None:
                break
            if e["event"] == "log":
                lines.extend(e["data"].split("\n"))
                seqs.append(int(e["id"].split(".")[1]))
            elif e["event"] == "status":
                statuses.append(e["data"]["status"])
        self.assertEqual(statuses, ["queued", "pending", "completed"])
        self.assertEqual(len(lines), 20 * 2000 + 1)
        self.assertEqual(lines[-1], "last line")
        self.assertEqual(set(lines[:-1]), {"y" * 199})
        self.assertEqual(seqs, sorted(seqs))
        self.assertEqual(len(seqs), 21)

    def test_a_stream_ends_when_its_token_expires(self):
        """A token is checked when a stream opens; the stream must not outlive it (an
        expired session would go on receiving live data). It ends within a second of the
        token's exp plus the leeway, and the reconnect with the same token is 401."""
        other = start_producer(TRAINQ_JWT_LEEWAY_SECONDS="0")
        try:
            wait_ready(other.port)
            short = h.mint(self.user, SECRET, exp_in=3)
            s = Sse(other.port, "/api/training/stream", short)
            self.streams.append(s)
            self.assertEqual(s.status, 200)
            t0 = time.monotonic()
            self.assertIsNone(s.next(), "the stream went on")
            self.assertLess(time.monotonic() - t0, 6)
            again = Sse(other.port, "/api/training/stream", short)
            self.streams.append(again)
            self.assertEqual(again.status, 401)
        finally:
            stop_producer(self, other)

    def test_a_client_that_leaves_frees_its_place_at_once(self):
        """A stream waiting for events is out of the server's event loop, which would see
        its client's close only at its next write: with a keepalive a minute away, a user
        who reloads a page with two streams open would get 429 for that minute. Both places
        must come back within a couple of seconds."""
        other = start_producer(TRAINQ_STREAM_KEEPALIVE_SECONDS="60",
                               TRAINQ_STREAMS_PER_USER="2")
        try:
            wait_ready(other.port)
            path = "/api/training/stream"
            first = [Sse(other.port, path, self.token) for _ in range(2)]
            self.streams.extend(first)
            self.assertEqual([s.status for s in first], [200, 200])
            c = h.Http(other.port)
            self.assertEqual(c.request("GET", path, token=self.token).status, 429)
            time.sleep(0.5)  # both suspended, waiting for events
            for s in first:
                s.close()
            t0 = time.monotonic()
            h.wait_until(lambda: self.stream_opens(other.port), timeout=10, interval=0.3,
                         what="a place freed")
            again = Sse(other.port, path, self.token)
            self.streams.append(again)
            self.assertEqual(again.status, 200, "the second closed stream still counts")
            self.assertLess(time.monotonic() - t0, 3)
            c.close()
        finally:
            stop_producer(self, other)

    def test_a_client_that_stops_reading_is_closed_and_frees_its_place(self):
        """A stream whose client reads nothing while the producer has plenty to send is
        closed by the idle timeout (TRAINQ_REQUEST_TIMEOUT_SECONDS + the keepalive
        interval): its place under TRAINQ_STREAMS_PER_USER comes back."""
        other = start_producer(TRAINQ_REQUEST_TIMEOUT_SECONDS="2",
                               TRAINQ_STREAM_KEEPALIVE_SECONDS="1",
                               TRAINQ_STREAMS_PER_USER="1")
        try:
            wait_ready(other.port)
            job_id = self.submit()
            set_status(job_id, "pending")
            write_big_log(job_id)
            path = f"/api/training/jobs/{job_id}/stream"
            stuck = Sse(other.port, path, self.token)
            self.streams.append(stuck)
            self.assertEqual(stuck.status, 200)
            c = h.Http(other.port)
            self.assertEqual(c.request("GET", path, token=self.token).status, 429)
            t0 = time.monotonic()
            h.wait_until(lambda: self.stream_opens(other.port), timeout=20, interval=0.5,
                         what="the stuck stream closed")
            self.assertGreater(time.monotonic() - t0, 1.5, "closed before its idle timeout")
            c.close()
        finally:
            stop_producer(self, other)

    # ------------------------------------------------------------ artifacts

    def put_artifact(self, job_id, name, content, listed=True):
        d = os.path.join(self.artifacts, job_id)
        os.makedirs(d, exist_ok=True)
        if content is not None:
            with open(os.path.join(d, name), "wb") as f:
                f.write(content)
        if listed:
            h.psql("INSERT INTO job_artifacts (job_id, name, size_bytes, sha256) VALUES "
                   "(:'id', :'name', :'size'::bigint, :'sha')",
                   variables={"id": job_id, "name": name, "size": str(len(content or b"")),
                              "sha": hashlib.sha256(content or b"").hexdigest()})

    def test_artifacts_are_listed_and_downloaded_with_ranges(self):
        job_id = self.submit()
        r = self.get(f"/api/training/jobs/{job_id}/artifacts")
        self.assertEqual(r.status, 200, r)
        self.assertShape(r, "/api/training/jobs/{id}/artifacts", "GET")
        self.assertEqual(r.json["artifacts"], [])
        data = bytes(range(256)) * 40
        self.put_artifact(job_id, "model.safetensors", data)
        self.put_artifact(job_id, "log.txt", b"done\n")
        r = self.get(f"/api/training/jobs/{job_id}/artifacts")
        self.assertShape(r, "/api/training/jobs/{id}/artifacts", "GET")
        self.assertEqual([(a["name"], a["size_bytes"], a["sha256"]) for a in r.json["artifacts"]],
                         [("log.txt", 5, hashlib.sha256(b"done\n").hexdigest()),
                          ("model.safetensors", len(data), hashlib.sha256(data).hexdigest())])
        self.assertTrue(r.json["downloadable"])
        url = f"/api/training/jobs/{job_id}/artifacts/model.safetensors"
        r = self.get(url)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.raw, data)
        self.assertEqual(r.header("Accept-Ranges"), "bytes")
        self.assertEqual(r.header("Content-Type"), "application/octet-stream")
        self.assertIn('filename="model.safetensors"', r.header("Content-Disposition"))
        for rng, start, end in (("bytes=2-5", 2, 5), ("bytes=10000-", 10000, len(data) - 1),
                                ("bytes=-7", len(data) - 7, len(data) - 1),
                                ("bytes=100-999999", 100, len(data) - 1)):
            r = self.get(url, headers={"Range": rng})
            self.assertEqual(r.status, 206, rng)
            self.assertEqual(r.raw, data[start:end + 1], rng)
            self.assertEqual(r.header("Content-Range"), f"bytes {start}-{end}/{len(data)}")
        for rng in ("bytes=10240-", "bytes=99999-100000", "bytes=-0"):
            r = self.get(url, headers={"Range": rng})
            self.assertEqual(r.status, 416, rng)
            self.assertEqual(r.header("Content-Range"), f"bytes */{len(data)}")
        # several ranges or another unit: the whole file
        r = self.get(url, headers={"Range": "bytes=0-1,5-6"})
        self.assertEqual((r.status, r.raw), (200, data))
        # a file in a subdirectory of the outputs, named as the consumer records it
        os.makedirs(os.path.join(self.artifacts, job_id, "checkpoint-1"))
        self.put_artifact(job_id, "checkpoint-1/state.bin", b"state")
        r = self.get(f"/api/training/jobs/{job_id}/artifacts/checkpoint-1/state.bin")
        self.assertEqual((r.status, r.raw), (200, b"state"))

    def test_artifact_downloads_stay_inside_the_jobs_directory(self):
        job_id = self.submit()
        self.put_artifact(job_id, "ok.bin", b"ok")
        secret = os.path.join(self.artifacts, "secret.txt")
        with open(secret, "wb") as f:
            f.write(b"not yours")
        jd = os.path.join(self.artifacts, job_id)
        # listed, but a symlink out of the job's directory
        os.symlink(secret, os.path.join(jd, "link.bin"))
        self.put_artifact(job_id, "link.bin", None)
        # on disk, but not listed
        with open(os.path.join(jd, "unlisted.bin"), "wb") as f:
            f.write(b"x")
        base = f"/api/training/jobs/{job_id}/artifacts/"
        self.assertEqual(self.get(base + "ok.bin").raw, b"ok")
        # listed, but behind a directory symlink that leads out of the job's directory
        os.symlink(self.artifacts, os.path.join(jd, "up"))
        self.put_artifact(job_id, "up/secret.txt", None)
        for name in ("link.bin", "unlisted.bin", "..", "%2e%2e", "..%2Fsecret.txt",
                     "%2E%2E%2Fsecret.txt", "nothing", "up/secret.txt", "./ok.bin",
                     "sub/../ok.bin", "ok.bin/"):  # a trailing slash: an empty component
            r = self.get(base + name)
            self.assertEqual(r.status, 404, name)
            self.assertNotIn(b"not yours", r.raw)
        # a job directory that is a symlink is not followed either
        job2 = self.submit()
        other = os.path.join(self.artifacts, "elsewhere")
        os.makedirs(other)
        with open(os.path.join(other, "m.bin"), "wb") as f:
            f.write(b"elsewhere")
        os.symlink(other, os.path.join(self.artifacts, job2))
        self.put_artifact(job2, "m.bin", None)
        self.assertEqual(self.get(f"/api/training/jobs/{job2}/artifacts/m.bin").status, 404)

    def test_downloads_without_an_artifacts_directory_answer_a_clear_404(self):
        other = start_producer()
        try:
            wait_ready(other.port)
            job_id = self.submit()
            self.put_artifact(job_id, "a.bin", b"a")
            c = h.Http(other.port)
            r = c.request("GET", f"/api/training/jobs/{job_id}/artifacts/a.bin", token=self.token)
            self.assertEqual(r.status, 404)
            self.assertShape(r, "/api/training/jobs/{id}/artifacts/{name}", "GET")
            self.assertIn("TRAINQ_ARTIFACTS_DIR", r.json["error"])
            r = c.request("GET", f"/api/training/jobs/{job_id}/artifacts", token=self.token)
            self.assertEqual(r.status, 200)
            self.assertFalse(r.json["downloadable"])
            c.close()
        finally:
            stop_producer(self, other)


if __name__ == "__main__":
    unittest.main()
