"""Fault scenarios that restart the services under load (see README.md): RabbitMQ,
Postgres and dockerd, each with `scripts/services.sh restart <service>` mid-load."""

import time
import unittest

import faultlib as fl
from faultlib import h, tqenv


class ServiceFaults(fl.FaultCase):

    def _restart(self, f, service):
        t = time.monotonic()
        tqenv.services("restart", service, timeout=240)
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

    def test_3_dockerd_restart(self):
        """dockerd restarts while containers run (they are stopped with it): every job ends
        terminal with a reason or is retried; nothing runs twice."""
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
