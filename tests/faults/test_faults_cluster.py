"""Fault scenarios on clustered services (see README.md): a 3-node RabbitMQ cluster and a
Postgres primary with a synchronous streaming-replication standby, started for this module
alone with `scripts/services.sh up --rabbitmq-nodes 3 --postgres-standby` in a private state
dir (the suite's shared services are not touched; dockerd and the trainer image are the
suite's). The programs get TRAINQ_AMQP_URL as the list of the three nodes and
TRAINQ_DATABASE_URL as a libpq multi-host URL with target_session_attrs=read-write.

Skipped when the tools are missing, or with TQ_FAULT_CLUSTER=0."""

import os
import time
import unittest

import faultlib as fl
from faultlib import h

SERVICES = None
SKIP = None


def setUpModule():
    global SERVICES, SKIP
    if os.environ.get("TQ_FAULT_CLUSTER", "1") == "0":
        SKIP = "TQ_FAULT_CLUSTER=0"
    else:
        SKIP = fl.PrivateServices.available()
    if SKIP:
        raise unittest.SkipTest(SKIP)
    SERVICES = fl.PrivateServices(rabbitmq_nodes=3, standby=True).up()
    line = f"fault cluster services_up_s={SERVICES.figures['services_up_s']}"
    print(line, flush=True)
    out = os.environ.get("TQ_FAULT_SUMMARY")
    if out:
        with open(out, "a") as fh:
            fh.write(line + "\n")


def tearDownModule():
    if SERVICES is not None:
        SERVICES.down()


class ClusterFaults(fl.FaultCase):

    def _bounce_node(self, f, i, down_for=8.0, reconnect_within=30.0):
        """Stops RabbitMQ node i under load, keeps it down for `down_for` seconds and until
        every program connection it held is back on the other nodes (at most
        `reconnect_within`: self.reconnected stays None then), starts it again (it rejoins
        the cluster and catches up on the queue's log) and waits for all replicas."""
        before = sum(SERVICES.connections().values())
        self.reconnected = None
        t = time.monotonic()
        try:
            SERVICES.services("stop", f"rabbitmq-{i}")
            stopped = time.monotonic()
            f.notes.append(f"node{i}_stop_s={stopped - t:.1f}")
            while True:
                waited = time.monotonic() - stopped
                if waited >= down_for and (self.reconnected is not None
                                           or waited >= reconnect_within):
                    break
                if self.reconnected is None:
                    conns = SERVICES.connections(avoid=i)
                    if conns[i] == 0 and sum(conns.values()) >= before:
                        self.reconnected = time.monotonic() - stopped
                time.sleep(0.5)
            r = self.reconnected
            f.notes.append(f"node{i}_reconnected_s={'never' if r is None else f'{r:.1f}'}")
        finally:
            t = time.monotonic()
            SERVICES.services("start", f"rabbitmq-{i}")
            SERVICES.wait_queue_online()
            f.notes.append(f"node{i}_start_s={time.monotonic() - t:.1f}")

    def test_0_one_node_url_uses_the_queue_a_list_declared(self):
        """trainq.jobs declared by a program given the three-node list (3 replicas) is used,
        not redeclared, by a consumer given one node's URL: RabbitMQ refuses a redeclaration
        whose x-quorum-initial-group-size differs (406), which would keep that consumer from
        ever consuming."""
        f = self.fleet = fl.Fleet("cluster-one-url")
        f.start_producer(0)
        h.wait_until(lambda: SERVICES.queue_info().get("name") == "trainq.jobs", timeout=30,
                     interval=0.5, what="trainq.jobs declared by the producer")
        before = SERVICES.queue_arguments()
        self.assertEqual(before.get("x-quorum-initial-group-size"), 3, before)
        one = os.environ["TRAINQ_AMQP_URL"].split(",")[1]
        f.start_consumer(f.worker_id("one"), wait_ready=False, TRAINQ_AMQP_URL=one)
        p = f.consumers[f.worker_id("one")]
        p.wait_event("consumer.ready", timeout=30)
        self.assertEqual(SERVICES.queue_arguments(), before)

    def test_1_rabbitmq_queue_leader_stops(self):
        """The node that leads trainq.jobs stops while jobs are submitted and running, and
        comes back: the queue elects a new leader among the other two, relays and consumers
        connected to the stopped node reconnect to another node of the list, nothing is lost
        and nothing runs twice."""
        def fault(f):
            f.wait_accepted(8)
            leader = SERVICES.queue_leader()
            conns = SERVICES.connections()
            f.notes.append(f"leader=node{leader} connections_moved={conns[leader]}"
                           f" connections={sum(conns.values())}")
            self._bounce_node(f, leader)
            new = SERVICES.queue_leader()
            f.notes.append(f"new_leader=node{new}")
        self.run_scenario("rabbitmq-leader-stop", fault)
        self.assertIsNotNone(self.reconnected, "the programs' connections to the stopped node "
                             "were not all back on the other nodes while it was down")

    def test_2_rabbitmq_follower_stops(self):
        """A node that follows trainq.jobs stops under load and comes back: the leader keeps
        its quorum (2 of 3), programs on the stopped node move to another node."""
        moved = []

        def fault(f):
            f.wait_accepted(8)
            leader = SERVICES.queue_leader()
            # the follower that serves most of the programs' connections: they must move
            conns = SERVICES.connections()
            follower = max((i for i in conns if i != leader), key=lambda i: conns[i])
            moved.append(conns[follower])
            f.notes.append(f"leader=node{leader} stopped=node{follower}"
                           f" connections_moved={conns[follower]} connections={sum(conns.values())}")
            self._bounce_node(f, follower)
        self.run_scenario("rabbitmq-follower-stop", fault)
        self.assertIsNotNone(self.reconnected, "the programs' connections to the stopped node "
                             "were not all back on the other nodes while it was down")
        self.assertGreater(moved[0], 0, "no program was connected to the stopped node, so "
                           "the scenario did not prove that connections fail over")

    def test_3_rabbitmq_rolling_restart(self):
        """All three nodes restart one after another under load (a rolling upgrade): each
        time the queue keeps its quorum, the programs move off the node going down, and
        the next node goes down only once every replica is back online."""
        late = []

        def fault(f):
            f.wait_accepted(4)
            for i in range(1, SERVICES.nodes + 1):
                self._bounce_node(f, i, down_for=2.0)
                if self.reconnected is None:
                    late.append(i)
        self.run_scenario("rabbitmq-rolling-restart", fault)
        self.assertEqual(late, [], "connections of these stopped nodes did not move")

    def test_4_postgres_primary_killed_standby_promoted(self):
        """The Postgres primary is SIGKILLed under submit load and the synchronous standby is
        promoted: every submission answered 200 exists on the new primary (a confirmed commit
        was on the standby), requests in flight got 503 and were retried with their
        Idempotency-Key (none stored twice), the programs reconnect through the multi-host
        URL, consumers carry on and no job runs twice. Runs last: the standby stays primary."""
        def fault(f):
            f.wait_accepted(8)
            f.pg.close()
            t = time.monotonic()
            SERVICES.services("kill", "postgres")
            killed = time.monotonic()
            SERVICES.services("promote-standby")
            f.notes.append(f"kill_s={killed - t:.1f} promote_s={time.monotonic() - killed:.1f}")
            h.wait_until(lambda: f.pg.value("SELECT NOT pg_is_in_recovery()") == "t",
                         timeout=60, interval=0.5, what="the promoted standby to take writes")
        figures = self.run_scenario("postgres-failover", fault)
        with self.fleet.submitter.lock:
            statuses = dict(self.fleet.submitter.statuses)
        # the failover must have been felt (else the scenario proved nothing)
        self.assertGreater(sum(n for k, n in statuses.items() if k != 200), 0,
                           f"no submission saw the failover: {statuses}")
        self.assertEqual(figures["lost"], 0)


if __name__ == "__main__":
    unittest.main()
