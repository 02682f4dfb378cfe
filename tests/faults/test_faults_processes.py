"""Fault scenarios that crash trainq's own processes under load (see README.md).

  producer SIGKILL mid-request, restarted; consumer SIGKILL just after a claim, just after a
  container start and while a job runs, each restarted with the same worker id; a lost host
  (consumer SIGKILLed and its containers removed, never restarted).
"""

import time
import unittest

import faultlib as fl
from faultlib import h, tqenv


class ProcessFaults(fl.FaultCase):

    def test_1_producer_kill(self):
        """SIGKILL a producer while a submission to it is in flight, then restart it. The
        submitter retries the same Idempotency-Key on the other producer, so a job whose 200
        was lost is neither lost nor stored twice; the outbox relay of either instance
        publishes whatever the dead one committed."""
        def fault(f):
            f.wait_accepted(6)
            f.submitter.arm_p0.set()
            self.assertTrue(f.submitter.sending_p0.wait(30), "no request went to producer 0")
            killed_at = time.time()
            f.kill(f.producers[0])
            f.submitter.arm_p0.clear()
            f.notes.append("killed=producer0")
            f.start_producer(0)
            # The request in flight at the kill: committed before it (its 200 was lost and
            # the retry on the other producer replayed it) or not (stored by the retry)?
            i = f.submitter.p0_index
            jid = h.wait_until(lambda: f.submitter.accepted_index(i), timeout=60,
                               interval=0.1, what=f"submission {i} accepted after the kill")
            before = f.pg.value(f"SELECT created_at < to_timestamp({killed_at}) FROM "
                                f"training_jobs WHERE id = {fl.q(jid)}")
            f.notes.append("inflight_request=" + ("committed-before-kill" if before == "t"
                                                  else "stored-by-retry"))
        self.run_scenario("producer-kill", fault)

    # ------------------------------------------------------------ consumer kills

    def test_2_consumer_kill_after_claim(self):
        """SIGKILL consumer A the moment a `pending` row of it appears (claimed, container
        not started yet); restart it with the same worker id: adoption repairs the claim."""
        def fault(f):
            wid = f.worker_id("a")
            f.wait_accepted(6)
            before = {r["id"] for r in f.pg.rows(
                f"SELECT id::text FROM training_jobs WHERE worker_id = {fl.q(wid)}"
                " AND status IN ('pending', 'running')")}
            deadline = time.monotonic() + 60
            job = None
            while time.monotonic() < deadline and job is None:
                for r in f.pg.rows(f"SELECT id::text FROM training_jobs WHERE worker_id = "
                                   f"{fl.q(wid)} AND status = 'pending'"):
                    if r["id"] not in before:
                        job = r["id"]
                        break
            self.assertIsNotNone(job, "consumer A claimed nothing within 60 s")
            f.kill(f.consumers[wid])
            st, info = tqenv.docker("GET", f"/containers/training-{job}/json")
            f.notes.append(f"container_at_kill={info['State']['Status'] if st == 200 else 'none'}")
            self._kill_and_restart_after(f, wid, "after-claim")
        self.run_scenario("consumer-kill-after-claim", fault)

    def _kill_and_restart_after(self, f, wid, stage):
        f.notes.append(f"stage={stage}")
        f.start_consumer(wid)

    def test_3_consumer_kill_after_container_start(self):
        """SIGKILL consumer A the moment a new container labelled with its worker id shows up
        in Docker (before or just after it records `running`); restart it: it adopts the
        container, which runs to completion exactly once."""
        def fault(f):
            wid = f.worker_id("a")
            f.wait_accepted(6)
            before = {c["Labels"].get("trainq.job")
                      for c in fl.containers([f"trainq.worker={wid}"])}
            deadline = time.monotonic() + 60
            job = None
            while time.monotonic() < deadline and job is None:
                for c in fl.containers([f"trainq.worker={wid}"]):
                    j = c["Labels"].get("trainq.job")
                    if j not in before and c["State"] in ("created", "running"):
                        job = j
                        break
            self.assertIsNotNone(job, "consumer A started no container within 60 s")
            f.kill(f.consumers[wid])
            status = f.pg.value(f"SELECT status FROM training_jobs WHERE id = {fl.q(job)}")
            f.notes.append(f"db_status_at_kill={status}")
            self._kill_and_restart_after(f, wid, "after-container-start")
        self.run_scenario("consumer-kill-after-start", fault)

    def test_4_consumer_kill_while_running(self):
        """SIGKILL consumer A while one of its jobs has been running for half a second;
        restart it: it adopts the container and records the outcome."""
        def fault(f):
            wid = f.worker_id("a")
            f.wait_accepted(6)
            h.wait_until(lambda: f.pg.rows(
                f"SELECT id FROM training_jobs WHERE worker_id = {fl.q(wid)}"
                " AND status = 'running' AND started_at < now() - interval '0.5 seconds'"),
                timeout=60, interval=0.02, what="a job of consumer A running for 0.5 s")
            f.kill(f.consumers[wid])
            self._kill_and_restart_after(f, wid, "while-running")
        self.run_scenario("consumer-kill-while-running", fault)

    def test_5_lost_host(self):
        """Consumer A is SIGKILLed and its containers removed (the host is gone); it never
        comes back. B's reaper recovers A's jobs once their lease (4 s) expires: retried with
        the reason recorded, and everything completes on B."""
        def fault(f):
            wid = f.worker_id("a")
            f.wait_accepted(6)
            h.wait_until(lambda: f.pg.rows(
                f"SELECT id FROM training_jobs WHERE worker_id = {fl.q(wid)}"
                " AND status = 'running'"),
                timeout=60, interval=0.05, what="a job of consumer A running")
            f.kill(f.consumers[wid])
            del f.consumers[wid]

            def gone():
                left = fl.containers([f"trainq.worker={wid}"])
                for c in left:
                    tqenv.remove_container(c["Id"])
                return not left
            h.wait_until(gone, timeout=30, interval=0.2, what="lost host's containers removed")
            f.notes.append("killed=consumer-a(never-restarted)")
        figures = self.run_scenario("lost-host", fault)
        self.assertGreaterEqual(figures["recovered"], 1, "the lost host had a running job")
        reasons = self.recovery_reasons()
        self.assertTrue(any("stopped renewing its lease" in r for r in reasons),
                        f"no recovery names the expired lease: {reasons}")

    def test_6_broken_host(self):
        """A third consumer joins whose training image is missing (a broken host). It fails
        no job: each one it takes is given back and runs elsewhere; after 2 failed launches
        in a row it starts no new job (its intake goes on) and /healthz says why."""
        def fault(f):
            wid = f.worker_id("c")
            p = f.start_consumer(wid, TRAINQ_TRAINING_IMAGE="trainq-no-such-image:1",
                                 TRAINQ_HOST_ERROR_LIMIT=2, TRAINQ_HOST_PROBE_SECONDS=600)
            p.wait_event("host.unhealthy", timeout=90)
            f.notes.append("broken=consumer-c")
            port = p.wait_event("consumer.starting")["metrics_port"]
            st = h.http_once(port, "GET", "/healthz")
            self.assertEqual(st.status, 503, "the broken host must report unhealthy")
        figures = self.run_scenario("broken-host", fault)
        broken = [p for p in self.fleet.procs if "consumer-fault-c-" in p.name]
        self.assertTrue(broken and not any(p.events("job.started") for p in broken),
                        "the broken host started a job")
        self.assertEqual(figures["failed"], 0)


if __name__ == "__main__":
    unittest.main()
