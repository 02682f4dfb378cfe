"""Fault scenarios that restart the services under load (see README.md): RabbitMQ,
Postgres and dockerd, each with `scripts/services.sh restart <service>` mid-load."""

import json
import time
import unittest

import faultlib as fl
from faultlib import h, tqenv


class ServiceFaults(fl.FaultCase):

    def _restart(self, f, service):
        t = time.monotonic()
        try:
            tqenv.services("restart", service, timeout=240)
        except Exception:
            # never leave the service down for the scenarios and tests that follow
            tqenv.services("start", service, timeout=240)
            raise
        f.notes.append(f"restart_{service}_s={time.monotonic() - t:.1f}")

    def test_1_rabbitmq_restart(self):
        """RabbitMQ restarts while jobs are submitted and running: producers keep accepting
        (the outbox holds the jobs), relays and consumers reconnect, nothing is lost."""
        def fault(f):
            f.wait_accepted(8)
            self._restart(f, "rabbitmq")
        self.run_scenario("rabbitmq-restart", fault)

    def test_2_postgres_restart(self):
        """Postgres restarts mid-load: submissions get 503 meanwhile (retried by the
        submitter), consumers stop consuming and resume, outcomes are recorded after."""
        def fault(f):
            f.wait_accepted(8)
            f.pg.close()
            self._restart(f, "postgres")
        self.run_scenario("postgres-restart", fault)

    def test_4_postgres_outage_longer_than_lease(self):
        """Postgres is down for longer than the lease (stop, lease + 2 heartbeats, start)
        while every consumer stays alive and its containers keep running. When it is back,
        heartbeats and reapers race for the expired leases: whichever wins, each job must
        end exactly once (adopted or retried), never two followers or a killed container."""
        def fault(f):
            f.wait_accepted(8)
            # a long job that started moments ago: still running when Postgres is back
            h.wait_until(lambda: f.pg.rows(
                f"SELECT id FROM training_jobs WHERE user_id = ANY({fl.qlist(f.users)})"
                " AND status = 'running' AND started_at > now() - interval '2 seconds'"
                f" AND dataset_id::text = ANY({fl.qlist(f.long_datasets())})"),
                timeout=60, interval=0.1, what="a long job just started")
            f.pg.close()
            t = time.monotonic()
            try:
                tqenv.services("stop", "postgres", timeout=120)
                down_at = time.monotonic()
                # The fault is the duration itself: the outage must outlast the lease (and
                # a heartbeat or two, so every lease held has expired when it is back).
                h.wait_until(lambda: time.monotonic() - down_at > fl.LEASE + 2 * fl.HEARTBEAT,
                             timeout=30, interval=0.2, what="the outage to outlast the lease")
            finally:
                tqenv.services("start", "postgres", timeout=120)
            f.notes.append(f"postgres_down_s={time.monotonic() - t:.1f}")
        # A quarter of the jobs train for 12 s, so containers are still running when the
        # leases are found expired (the other datasets keep their 1-3 s).
        self.run_scenario("postgres-outage-over-lease", fault, durations=(1.0, 2.0, 12.0, 1.5))

    def test_5_postgres_sessions_cut(self):
        """Every session of trainq's role is cut, six times a second apart, mid-load (a
        failover, a pooler restart): more times than the queue's delivery limit (5). Claims
        retry on a fresh connection, deliveries that still cannot be claimed are given back
        without spending their delivery count, and no valid job is dead-lettered or
        stranded."""
        def fault(f):
            f.wait_accepted(8)
            cut = 0
            for _ in range(6):
                out = tqenv.psql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                                 " WHERE usename = 'trainq' AND pid <> pg_backend_pid()",
                                 superuser=True)
                cut += int(out or 0)
                time.sleep(1)
            f.pg.close()
            f.notes.append(f"sessions_cut={cut}")
        self.run_scenario("postgres-sessions-cut", fault)
        dead = [json.loads(b) for _, b in h.get_messages(
            "trainq.jobs.dead", want=lambda m: False, timeout=1, ack=False)]
        users = set(self.fleet.users)
        self.assertEqual([m for m in dead if m.get("user_id") in users], [],
                         "a valid job of the scenario was dead-lettered")

    def test_3_dockerd_restart(self):
        """dockerd restarts while containers run (without live-restore it stops them): the
        jobs it took down are retried (job.interrupted), not failed; nothing runs twice."""
        def fault(f):
            f.wait_accepted(8)
            h.wait_until(lambda: any(c["State"] == "running"
                                     and c["Labels"].get("trainq.user") in f.users
                                     for c in fl.containers(["trainq.managed=true"])),
                         timeout=60, interval=0.1, what="a running training container")
            self._restart(f, "docker")
        self.run_scenario("dockerd-restart", fault)


if __name__ == "__main__":
    unittest.main()
