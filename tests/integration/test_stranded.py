"""Nothing stranded, nothing failed by a broken host: trainq-consumer against the real
Postgres, RabbitMQ and dockerd.

Each test makes the fault happen for real (sessions cut, connections refused, a message
lost from the queue, an image missing, a container name squatted, a user's lock held) and
checks the outcome from the job rows, the audit table and the consumer's own log events.
"""

import json
import os
import signal
import subprocess
import time
import unittest
import urllib.request
import uuid
from datetime import datetime

import tqenv
import tqharness as h
from test_consumer import TERMINAL, ConsumerCase, run_id


def metrics(p):
    port = p.wait_event("consumer.starting")["metrics_port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def healthz(p):
    port = p.wait_event("consumer.starting")["metrics_port"]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def consumer_metric(p, name):
    port = p.wait_event("consumer.starting")["metrics_port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


def postgres_pids():
    """The test cluster's postmaster and every process it started."""
    with open(os.path.join(tqenv.STATE_DIR, "postgres", "data", "postmaster.pid")) as f:
        pm = int(f.readline())
    kids = subprocess.run(["pgrep", "-P", str(pm)], capture_output=True, text=True).stdout
    return [pm] + [int(x) for x in kids.split()]


class TestNeverStranded(ConsumerCase):

    def test_a_postgres_that_answers_nothing_is_reported_not_waited_for(self):
        """Postgres stopped (SIGSTOP: what a stalled disk or a network dropping everything
        looks like to a client, since the server's statement_timeout never runs): the
        consumer's /healthz says so within seconds, and the producer's /readyz answers 503
        in about its 2 s deadline instead of hanging until Postgres resumes. After SIGCONT
        both are healthy again."""
        from test_producer import start_producer, stop_producer
        # a datasets root with something in it: a job left queued by an earlier suite is then
        # this host's dataset_error, not an empty (unmounted?) root that makes it unhealthy
        self.dataset(self.user("frozen"))
        c = self.consumer(f"frozen-{run_id()}")
        p = start_producer()
        self.addCleanup(stop_producer, self, p)
        h.wait_until(lambda: healthz(c)[0] == 200, timeout=30, what="the consumer healthy")
        ready = lambda: h.http_once(p.port, "GET", "/readyz", timeout=15)
        h.wait_until(lambda: ready().status == 200, timeout=30, what="the producer ready")
        pids = postgres_pids()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            r = ready()
            took = time.monotonic() - t0
            self.assertEqual(r.status, 503, r)
            self.assertIn("postgres unavailable", r.json["reasons"])
            # its 2 s deadline (2 s to connect, when it must), once: not again on a fresh
            # connection (+5 s connect timeout)
            self.assertLess(took, 5, "/readyz waited for the stopped Postgres")
            st = h.wait_until(lambda: (x := healthz(c))[0] == 503 and x, timeout=15,
                              interval=0.5, what="the consumer's /healthz 503")
            self.assertIn("postgres not answering", st[1])
            # and in the log and the metric, without anyone asking /healthz (they said up)
            self.assertIn("postgres not answering", c.wait_event("db.down", timeout=10)["msg"])
            self.assertEqual(consumer_metric(c, "trainq_consumer_db_up"), 0)
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        h.wait_until(lambda: healthz(c)[0] == 200, timeout=60, interval=0.5,
                     what="the consumer healthy again")
        c.wait_event("db.up", timeout=30, after=1)  # the one at start, then this one
        self.assertEqual(len(c.events("db.down")), 1, "one line per outage")
        self.assertEqual(consumer_metric(c, "trainq_consumer_db_up"), 1)
        h.wait_until(lambda: ready().status == 200, timeout=60, interval=0.5,
                     what="the producer ready again")


    def terminate_sessions(self, app_like):
        return tqenv.psql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                          "WHERE application_name LIKE :'a'", superuser=True,
                          variables={"a": app_like})

    def test_sessions_cut_while_idle_cost_the_delivery_nothing(self):
        """All of the dispatcher's sessions are cut while it is idle: the dispatcher finds
        its connection dead before using it and opens a fresh one; the next job is stored,
        picked and run without a failed pick or a deferred delivery."""
        u = self.user("cut")
        c = self.consumer(f"cut-{run_id()}")
        warm = self.message(u, self.dataset(u, duration=0.2))
        self.publish(warm)
        self.wait_status(warm["job_id"], "completed")
        cut_at = time.time()
        self.assertEqual(self.terminate_sessions("trainq-consumer"), "1")
        m = self.message(u, self.dataset(u, duration=0.2))
        self.publish(m)
        self.assertEqual(self.wait_status(m["job_id"], TERMINAL)["status"], "completed")
        # The one failure the design admits (shared/tq_db.c, txn_conn): a pick sent in the
        # moment between the signal and the server's goodbye reaching the socket (the
        # dispatcher also picks once a second). Any later one ran on a connection it should
        # have found dead.
        def late(event):
            return [e for e in c.events(event)
                    if datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp()
                    > cut_at + 0.5]
        self.assertEqual(late("job.pick_failed"), [], "a pick ran on the dead connection")
        self.assertEqual(late("job.claim_retry"), [], "the intake ran on the dead connection")
        self.assertEqual(c.events("job.intake_deferred"), [],
                         "a blip of Postgres must not give the delivery back")

    def test_postgres_refusing_connections_never_spends_the_delivery_limit(self):
        """The dispatcher cannot reach Postgres for longer than its retries: the delivery is
        given back as a confirmed copy (no delivery count spent) as often as it takes. More
        give-backs than the queue's delivery limit (5) must still end with the job run, not
        dead-lettered, and with the reply address it was published with: each copy keeps the
        publisher's properties."""
        u = self.user("refuse")
        c = self.consumer(f"refuse-{run_id()}")
        warm = self.message(u, self.dataset(u, duration=0.2))
        self.publish(warm)
        self.wait_status(warm["job_id"], "completed")
        m = self.message(u, self.dataset(u, duration=0.2))
        tqenv.psql("ALTER ROLE trainq CONNECTION LIMIT 0", superuser=True)
        try:
            self.terminate_sessions("trainq-consumer")
            self.publish(m, props={"reply_to": "stranded.replies", "correlation_id": "order-7",
                                   "headers": {"tenant": "acme", "n": 7}})
            # about 2 s a give-back here (the intake's tries, then consuming again at the
            # next heartbeat, 1 s); 15 – 60 s each while a failed periodic pick also stopped
            # the intake (consumer/dispatch.c, fill), which made this wait time out in CI
            h.wait_until(lambda: len(c.events("job.intake_deferred")) >= 6, timeout=180,
                         interval=0.5, what="six deferrals of the delivery")
        finally:
            tqenv.psql("ALTER ROLE trainq CONNECTION LIMIT -1", superuser=True)
        j = self.wait_status(m["job_id"], TERMINAL, timeout=60)
        self.assertEqual(j["status"], "completed")
        self.assertEqual((j["reply_to"], j["correlation_id"]), ("stranded.replies", "order-7"),
                         "a give-back lost the message's reply address")
        self.assertEqual(h.queue_depth("trainq.jobs.dead"), 0,
                         "a valid job reached the dead-letter queue")

    def test_a_job_whose_message_left_the_queue_runs_from_its_row(self):
        """The row and its published outbox entry say the job is queued, but its message is
        gone (dead-lettered, purged, lost with a broker's disk): a free slot picks the row
        at once, and nothing is published again."""
        u = self.user("lost")
        m = self.message(u, self.dataset(u, duration=0.2))
        self.insert_job(m, -60000)
        tqenv.psql("INSERT INTO outbox (job_id, routing_key, payload, published_at) "
                   "VALUES (:'id', 'lora', '{}', now() - interval '1 minute')",
                   variables={"id": m["job_id"]})
        t0 = time.monotonic()
        self.consumer(f"lost-{run_id()}", TRAINQ_SWEEP_SECONDS=600)
        j = self.wait_status(m["job_id"], TERMINAL, timeout=30)
        self.assertEqual(j["status"], "completed")
        self.assertLess(time.monotonic() - t0, 10)
        self.assertEqual(tqenv.psql("SELECT count(*) FROM outbox WHERE job_id = :'id'"
                                    " AND exchange = 'trainq.jobs'",
                                    variables={"id": m["job_id"]}), "1")

    def test_a_message_whose_intake_keeps_failing_is_dead_lettered_alone(self):
        """Storing one job fails with an unexpected database error every time (a trigger
        refuses its row): its batch is stored again message by message, so its batch-mates
        run, while its own deliveries are nacked until the queue's delivery limit
        dead-letters it; the consumer lives on."""
        u = self.user("poison")
        ds = self.dataset(u, duration=0.2)
        m = self.message(u, ds)
        mates = [self.message(u, ds) for _ in range(3)]
        tqenv.psql(
            "CREATE TABLE tq_test_refused_rows (id uuid PRIMARY KEY);"
            "CREATE FUNCTION tq_test_refuse_row() RETURNS trigger LANGUAGE plpgsql"
            " SECURITY DEFINER AS $f$"
            " BEGIN IF EXISTS (SELECT 1 FROM tq_test_refused_rows WHERE id = NEW.id) THEN"
            "  RAISE EXCEPTION 'row refused by the test'; END IF;"
            " RETURN NEW; END $f$;"
            "CREATE TRIGGER tq_test_refuse_row BEFORE INSERT ON training_jobs"
            " FOR EACH ROW EXECUTE FUNCTION tq_test_refuse_row();", superuser=True)
        try:
            tqenv.psql("INSERT INTO tq_test_refused_rows VALUES (:'id')", superuser=True,
                       variables={"id": m["job_id"]})
            c = self.consumer(f"poison-{run_id()}")
            self.publish(mates[0], m, *mates[1:])
            ours = lambda msgs: [b for _, b in msgs if json.loads(b).get("job_id") == m["job_id"]]
            dead = h.get_messages("trainq.jobs.dead", want=lambda msgs: ours(msgs), timeout=30)
            self.assertEqual(len(ours(dead)), 1, "the message was not dead-lettered once")
            self.assertGreaterEqual(len(c.events("job.intake_failed")), 5)
            self.assertIsNone(self.job(m["job_id"]))
            for x in mates:
                self.assertEqual(self.wait_status(x["job_id"], TERMINAL, timeout=30)["status"],
                                 "completed")
            self.assertTrue(c.running(), "the consumer must survive the failed intakes")
        finally:
            tqenv.psql("DROP TRIGGER tq_test_refuse_row ON training_jobs;"
                       "DROP FUNCTION tq_test_refuse_row(); DROP TABLE tq_test_refused_rows",
                       superuser=True)

    def test_a_job_waiting_at_the_users_limit_starts_when_the_slot_frees_without_the_sweeper(self):
        """With the sweeper asleep, a job waiting at its user's limit starts as soon as the
        user's running job ends (the freed slot and NOTIFY trainq_runnable)."""
        u = self.user("rel")
        tqenv.psql("INSERT INTO user_limits (user_id, max_active) VALUES (:'u', 1)",
                   variables={"u": u})
        a = self.message(u, self.dataset(u, duration=30))
        x = self.message(u, self.dataset(u, duration=0.2))
        self.consumer(f"rel-{run_id()}", TRAINQ_SWEEP_SECONDS=600)
        self.publish(a)
        self.wait_status(a["job_id"], "running")
        self.publish(x)
        h.wait_until(lambda: self.job(x["job_id"]), what="x stored")
        time.sleep(1.5)
        self.assertEqual(self.job(x["job_id"])["status"], "queued")
        tqenv.psql("UPDATE training_jobs SET cancel_requested_at = now() WHERE id = :'id'",
                   variables={"id": a["job_id"]})
        self.wait_status(a["job_id"], "cancelled", timeout=20)
        self.assertEqual(self.wait_status(x["job_id"], TERMINAL, timeout=20)["status"],
                         "completed")

    def test_a_slow_sweep_never_delays_the_lease_renewal(self):
        """Another session holds a user's lock, so the reaper's recovery of that user's
        expired claim waits (until lock_timeout). The worker's own heartbeat runs on another
        connection: the running job's lease keeps being renewed, and the sweeper thread's
        wait ends in an error."""
        u1, u2 = self.user("lease"), self.user("slow")
        m = self.message(u1, self.dataset(u1, duration=20))
        lost = self.message(u2, self.dataset(u2))
        self.insert_job(lost, -1000)
        tqenv.psql("UPDATE training_jobs SET status = 'pending', worker_id = 'gone-worker',"
                   " attempts = 1, lease_expires_at = now() - interval '1 minute'"
                   " WHERE id = :'id'", variables={"id": lost["job_id"]})
        holder = subprocess.Popen(
            ["psql", "-X", "-q", "-d", tqenv.DATABASE_URL, "-v", "ON_ERROR_STOP=1", "-c",
             f"SELECT tq_lock_user('{u2}'), pg_sleep(40)"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            # the lock is held before the consumer's first sweep can run
            h.wait_until(lambda: tqenv.psql(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                "WHERE l.locktype = 'advisory' AND l.granted "
                "AND a.query LIKE '%pg_sleep(40)%'") == "1", timeout=10,
                what="the user's lock held by the other session")
            c = self.consumer(f"lease-{run_id()}", TRAINQ_LEASE_SECONDS=4,
                              TRAINQ_HEARTBEAT_SECONDS=1, TRAINQ_SWEEP_SECONDS=1)
            self.publish(m)
            self.wait_status(m["job_id"], "running")
            worst = None
            for _ in range(20):
                left = float(tqenv.psql(
                    "SELECT extract(epoch FROM lease_expires_at - now()) FROM training_jobs "
                    "WHERE id = :'id'", variables={"id": m["job_id"]}))
                worst = left if worst is None else min(worst, left)
                time.sleep(0.5)
            self.assertGreater(worst, 1.0, "the lease was not renewed while the sweep waited")
            c.wait_event("sweeper.failed", lambda e: "lock timeout" in e.get("msg", ""),
                         timeout=15)
        finally:
            holder.kill()
            holder.wait()


class TestBrokenHost(ConsumerCase):

    def setUp(self):
        super().setUp()
        # Jobs other tests left queued (producer-only tests run no consumer) would be picked
        # by the broken host too, and counted in what it must not fail.
        tqenv.psql("UPDATE training_jobs SET status = 'cancelled', completed_at = now()"
                   " WHERE status = 'queued'")

    def test_a_broken_host_gives_jobs_back_and_a_healthy_one_runs_them(self):
        """A consumer whose training image is missing fails no job: it gives each back, stops
        consuming after TRAINQ_HOST_ERROR_LIMIT failures in a row and reports unhealthy;
        every job completes on the healthy consumer beside it."""
        users = [self.user(f"bh{i}") for i in range(3)]
        msgs = [self.message(u, self.dataset(u, duration=0.2)) for u in users for _ in range(2)]
        broken = self.consumer(f"broken-{run_id()}", slots=1,
                               TRAINQ_TRAINING_IMAGE="trainq-no-such-image:1",
                               TRAINQ_HOST_ERROR_LIMIT=2, TRAINQ_HOST_PROBE_SECONDS=600)
        self.publish(*msgs)
        broken.wait_event("host.unhealthy", timeout=30)
        self.consumer(f"healthy-{run_id()}", slots=2)
        for m in msgs:
            self.assertEqual(self.wait_status(m["job_id"], TERMINAL, timeout=60)["status"],
                             "completed")
        status, body = healthz(broken)
        self.assertEqual(status, 503)
        self.assertIn("host cannot start jobs", body)
        self.assertIn("trainq-no-such-image:1", body)
        mx = metrics(broken)
        self.assertEqual(mx["trainq_consumer_host_healthy"], 0)
        self.assertEqual(mx["trainq_consumer_host_errors_total"], 2)
        self.assertEqual(mx.get("trainq_consumer_jobs_failed_total", 0), 0)
        given_back = [e for e in self.events(users)
                      if e["from_status"] == "pending" and e["to_status"] == "queued"]
        self.assertEqual(len(given_back), 2, given_back)
        self.assertTrue(all("not found on worker" in e["reason"] for e in given_back))

    def test_a_job_no_host_can_start_fails_after_max_host_retries(self):
        u = self.user("noimg")
        m = self.message(u, self.dataset(u))
        self.consumer(f"noimg-{run_id()}", TRAINQ_TRAINING_IMAGE="trainq-no-such-image:1",
                      TRAINQ_MAX_HOST_RETRIES=2, TRAINQ_HOST_ERROR_LIMIT=100)
        self.publish(m)
        j = self.wait_status(m["job_id"], TERMINAL)
        self.assertEqual(j["status"], "failed")
        self.assertIn('training image "trainq-no-such-image:1" not found', j["error_message"])
        self.assertIn("no worker could start it (2 tries)", j["error_message"])
        self.assertEqual(j["attempts"], 0, "a launch that never started is not an attempt")
        # ... nor charged to its user (GET /usage, the fair-share score)
        self.assertEqual(tqenv.psql("SELECT count(*) FROM job_usage WHERE job_id = :'id'",
                                    variables={"id": m["job_id"]}), "0")

    def test_a_squatted_container_name_is_tried_again_later_not_failed(self):
        """The name training-<job> is taken by a container that is not this job's (409 on
        create, TQ_ERR_CONFLICT): the job is given back, and runs once the name is free."""
        u = self.user("squat")
        m = self.message(u, self.dataset(u, duration=0.2))
        st, made = tqenv.docker("POST", f"/containers/create?name=training-{m['job_id']}",
                                {"Image": tqenv.TRAINING_IMAGE, "Cmd": ["true"]})
        self.assertEqual(st, 201, made)
        c = self.consumer(f"squat-{run_id()}")
        try:
            self.publish(m)
            c.wait_event("job.requeued", timeout=30)
            self.assertNotEqual(self.job(m["job_id"])["status"], "failed")
        finally:
            tqenv.remove_container(made["Id"])
        self.assertEqual(self.wait_status(m["job_id"], TERMINAL, timeout=60)["status"],
                         "completed")
        self.assertEqual(c.events("host.unhealthy"), [])

    def test_a_job_cancelled_while_pending_is_not_requeued(self):
        """tq_give_back on a claim whose cancellation was requested meanwhile completes the
        cancellation instead of queueing a job nobody wants."""
        u = self.user("cxl")
        m = self.message(u, self.dataset(u))
        self.insert_job(m, 0)
        tqenv.psql("UPDATE training_jobs SET status = 'pending', worker_id = 'w-cxl', "
                   "fencing_token = 7, cancel_requested_at = now() WHERE id = :'id'",
                   variables={"id": m["job_id"]})
        out = tqenv.psql("SELECT tq_give_back(:'id', 7, 'docker unavailable', 10)",
                         variables={"id": m["job_id"]})
        self.assertEqual(out, "cancelled")
        j = self.job(m["job_id"])
        self.assertEqual((j["status"], j["not_before"]), ("cancelled", None))
        self.assertEqual(tqenv.psql("SELECT count(*) FROM outbox WHERE job_id = :'id'"
                                    " AND exchange = 'trainq.jobs'",
                                    variables={"id": m["job_id"]}), "0")
        # fenced: a stale token changes nothing
        self.assertEqual(tqenv.psql("SELECT tq_give_back(:'id', 6, 'x', 10)",
                                    variables={"id": m["job_id"]}), "fenced")


if __name__ == "__main__":
    unittest.main()
