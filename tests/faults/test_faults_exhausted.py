"""Exhausted dependencies (issue 17, item 3), brought about for real on the suite's services:
RabbitMQ's memory alarm (connection.blocked) under the fault suite's mixed load, Postgres
at max_connections ("too many clients", SQLSTATE 53300), and a dockerd that stops answering
(SIGSTOP of the suite's dockerd for a few seconds, then SIGCONT).

Both take a shared service away from everyone (an alarm blocks every publisher of the node;
held connections starve every other program), so they live in the fault suite: label
"faults", RESOURCE_LOCK services, never beside the integration suites.
"""

import json
import os
import signal
import time
import unittest
import uuid

import faultlib as fl
from faultlib import h, tqenv

BACKLOG_AGE = 3  # TRAINQ_READY_MAX_BACKLOG_AGE_SECONDS of the producers here
# RabbitMQ's default watermark (services.sh leaves it alone): what the alarm is lifted to.
WATERMARK_DEFAULT = "0.4"


def readyz(port):
    r = h.http_once(port, "GET", "/readyz")
    return r.status, r.json, r.header("Retry-After")


def metric(port, name):
    r = h.http_once(port, "GET", "/metrics")
    for line in r.raw.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not in /metrics")


class ExhaustedDependencies(fl.FaultCase):

    def test_1_rabbitmq_memory_alarm(self):
        """A memory alarm mid-load: the producers keep answering 200 (the jobs wait in the
        outbox), the relays wait on their blocked connections instead of reconnecting,
        /readyz says "rabbitmq blocked: ..." and then that the outbox falls behind, the
        blocked metrics count it; after the alarm every job is published and run."""
        seen = {}

        def fault(f):
            f.wait_accepted(6)
            p = f.producers[0]
            reconnects0 = metric(p.port, "trainq_relay_reconnects_total")
            accepted0 = f.submitter.count()
            tqenv.rabbitmqctl("set_vm_memory_high_watermark", "0.00001")
            try:
                def blocked():
                    st, body, _ = readyz(p.port)
                    return st == 503 and any(x.startswith("rabbitmq blocked: ")
                                             for x in body["reasons"])
                h.wait_until(blocked, timeout=30, interval=0.2,
                             what="/readyz 503 with 'rabbitmq blocked: <reason>'")
                st, body, retry = readyz(p.port)
                seen["blocked_body"] = body
                self.assertEqual(body["amqp"], "blocked")
                self.assertEqual(retry, "5")
                self.assertEqual(metric(p.port, "trainq_relay_amqp_blocked"), 1)
                self.assertGreaterEqual(metric(p.port, "trainq_relay_amqp_blocked_total"), 1)
                # Submissions go on: every one answered 200 while the alarm lasts.
                f.wait_accepted(min(accepted0 + 6, fl.JOBS), timeout=30)

                def behind():
                    st, body, _ = readyz(p.port)
                    return st == 503 and any(x.startswith("outbox backlog: ")
                                             for x in body["reasons"])
                h.wait_until(behind, timeout=BACKLOG_AGE + 20, interval=0.5,
                             what="/readyz 503 naming the outbox backlog")
                seen["behind_body"] = readyz(p.port)[1]
                self.assertGreater(metric(p.port, "trainq_outbox_backlog"), 0)
                self.assertGreaterEqual(metric(p.port, "trainq_outbox_backlog_age_seconds"),
                                        BACKLOG_AGE)
                # No reconnect storm: the relay keeps its one blocked connection.
                self.assertEqual(metric(p.port, "trainq_relay_reconnects_total"), reconnects0)
                f.notes.append(f"blocked_accepted={f.submitter.count() - accepted0}")
            finally:
                tqenv.rabbitmqctl("set_vm_memory_high_watermark", WATERMARK_DEFAULT)
            h.wait_until(lambda: readyz(p.port)[0] == 200, timeout=60, interval=0.5,
                         what="/readyz 200 after the alarm")
            self.assertGreaterEqual(metric(p.port, "trainq_relay_amqp_blocked_seconds_total"), 1)
            self.assertEqual(metric(p.port, "trainq_relay_amqp_blocked"), 0)
            for ev in ("relay.blocked", "relay.unblocked"):
                self.assertTrue(p.events(ev), f"producer logged no {ev}")

        figures = self.run_scenario("rabbitmq-memory-alarm", fault,
                                    producer_extra={"TRAINQ_READY_MAX_BACKLOG_AGE_SECONDS":
                                                    BACKLOG_AGE})
        print("  blocked /readyz:", json.dumps(seen.get("blocked_body")), flush=True)
        print("  behind /readyz:", json.dumps(seen.get("behind_body")), flush=True)
        with self.fleet.submitter.lock:
            n503 = self.fleet.submitter.statuses.get(503, 0)
        self.assertEqual(n503, 0, "a submission was refused with 503 during the alarm")
        self.assertEqual(figures["lost"], 0)

    def test_2_postgres_too_many_clients(self):
        """Every free connection of Postgres held by other sessions: a producer that needs a
        connection answers submissions 503 + Retry-After with a clear error (never 500),
        stores nothing, /readyz names the cause and the metric counts it; once the
        connections are freed the same submission is accepted and published."""
        secret = "exhausted-secret-" + uuid.uuid4().hex
        user = "exhausted-" + uuid.uuid4().hex[:8]
        ds = str(uuid.uuid4())
        h.psql("INSERT INTO datasets (id, user_id, name, storage_path) "
               "VALUES (:'id', :'u', 'exhausted', :'p')",
               variables={"id": ds, "u": user, "p": f"{user}/{ds}"})
        token = h.mint(user, secret)
        max_conn = int(h.psql("SHOW max_connections").strip())
        hogs = []
        p = None
        try:
            # Fill every slot a non-superuser may take; the reserved ones stay for psql -U
            # superuser (the cleanup below).
            for _ in range(max_conn + 5):
                s = h.PsqlSession()
                try:
                    s.run("SELECT 1")
                except AssertionError as e:
                    self.assertRegex(str(e), "too many clients|remaining connection slots")
                    s.close()
                    break
                hogs.append(s)
            else:
                self.fail(f"Postgres took {max_conn + 5} sessions: max_connections not reached")
            p = h.Program("producer/trainq-producer", name="producer-exhausted", env={
                "TRAINQ_HTTP_ADDR": "127.0.0.1:0", "TRAINQ_JWT_ALG": "HS256",
                "TRAINQ_JWT_SECRET": secret, "TRAINQ_JWT_PUBLIC_KEY_FILE": None,
                "TRAINQ_JWT_AUDIENCE": None, "TRAINQ_JWT_ISSUER": None,
                "TRAINQ_LOG_LEVEL": "info"}).start()
            port = p.wait_event("http.listening", timeout=30)["port"]
            st, body, retry = readyz(port)
            self.assertEqual(st, 503, body)
            self.assertIn("postgres has no free connections (too many clients)", body["reasons"])
            self.assertEqual(retry, "5")
            sub = {"dataset_id": ds, "type": "lora", "base_model": "gpt2",
               "config": {"steps": 100}}
            key = uuid.uuid4().hex
            c = h.Http(port)
            for _ in range(3):
                r = c.request("POST", "/api/training/submit", json_body=sub, token=token,
                              headers={"Idempotency-Key": key})
                self.assertEqual(r.status, 503, r)
                self.assertEqual(r.header("Retry-After"), "5")
                self.assertEqual(r.json["error"], "database has no free connections, retry later")
            c.close()
            self.assertGreaterEqual(metric(port, "trainq_db_connections_refused_total"), 4)
        except BaseException:
            if p and p.running():
                p.kill()
            raise
        finally:
            for s in hogs:
                s.close()
        try:
            n = h.psql("SELECT count(*) FROM training_jobs WHERE user_id = :'u'",
                       variables={"u": user}).strip()
            self.assertEqual(n, "0", "a refused submission left a row")
            h.wait_until(lambda: readyz(port)[0] == 200, timeout=30, interval=0.3,
                         what="/readyz 200 once connections are free")
            r = h.http_once(port, "POST", "/api/training/submit", json_body=sub, token=token,
                            headers={"Idempotency-Key": key})
            self.assertEqual(r.status, 200, r)
            job = r.json["job_id"]
            h.wait_until(lambda: h.psql("SELECT published_at IS NOT NULL FROM outbox "
                                        "WHERE job_id = :'j' AND exchange = 'trainq.jobs'",
                                        variables={"j": job}).strip()
                         == "t", timeout=30, what="the job's outbox row published")
            self.assertEqual(p.stop(), 0)
            p.assert_no_sanitizer_report()
        finally:
            if p and p.running():
                p.kill()
            h.psql("DELETE FROM training_jobs WHERE user_id = :'u'", variables={"u": user})
            h.psql("DELETE FROM datasets WHERE user_id = :'u'", variables={"u": user})
            h.purge_queue()

    def test_3_dockerd_paused(self):
        """dockerd frozen (SIGSTOP) for a few seconds mid-load: the consumers' health ping
        (2 s bound) notices, /healthz answers 503 naming dockerd and docker_up is 0, they stop
        consuming; Engine API calls in flight wait (bounded) and go on after SIGCONT;
        nothing is lost or run twice."""
        pidfile = os.path.join(tqenv.STATE_DIR, "docker", "docker.pid")
        with open(pidfile) as fh:
            pid = int(fh.read().strip())
        seen = {}

        def fault(f):
            f.wait_accepted(8)
            ports = [c.wait_event("consumer.starting").get("metrics_port")
                     for c in f.consumers.values()]
            os.kill(pid, signal.SIGSTOP)
            try:
                t = time.monotonic()

                def down():
                    r = h.http_once(ports[0], "GET", "/healthz", timeout=5)
                    return r.status == 503 and "docker" in r.raw.decode() and r
                r = h.wait_until(down, timeout=20, interval=0.3,
                                 what="consumer /healthz 503 naming dockerd")
                seen["healthz"] = r.raw.decode()
                self.assertEqual(metric(ports[0], "trainq_consumer_docker_up"), 0)
                time.sleep(max(0.0, 6 - (time.monotonic() - t)))
            finally:
                os.kill(pid, signal.SIGCONT)
            for port in ports:
                h.wait_until(lambda: h.http_once(port, "GET", "/healthz", timeout=5).status
                             == 200, timeout=60, interval=0.5, what="consumer /healthz 200")
            # The gauge follows the housekeeper's next ping (a launch that failed while
            # dockerd was frozen may have set it to 0 again just before).
            h.wait_until(lambda: metric(ports[0], "trainq_consumer_docker_up") == 1,
                         timeout=30, interval=0.5, what="trainq_consumer_docker_up 1")
            f.notes.append("dockerd_paused_s=6")

        self.run_scenario("dockerd-paused", fault)
        print("  paused /healthz:", seen.get("healthz"), flush=True)


if __name__ == "__main__":
    unittest.main()
