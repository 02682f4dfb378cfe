"""Job events on AMQP (issue 18, docs/message-contract.md "Job events"), seen by an
independent AMQP client (pika) as another service would: replies to a job message's
reply_to with its correlation_id, queues bound to exchange trainq.events, a RabbitMQ
restart in the middle, a reply queue that is gone, and a dead-lettered message.

Every body is checked against docs/trainq.event.v1.schema.json.
"""

import json
import os
import time
import unittest
import uuid

import jsonschema  # python3-jsonschema

import tqenv
import tqharness as h
from test_consumer import ConsumerCase, run_id
from test_producer import SECRET, start_producer, stop_producer, wait_ready

with open(os.path.join(tqenv.SOURCE_DIR, "docs", "trainq.event.v1.schema.json")) as f:
    SCHEMA = json.load(f)


def metric(port, name):
    """The value of an unlabelled sample on /metrics (None when absent)."""
    text = h.http_once(port, "GET", "/metrics", timeout=5).raw.decode()
    for ln in text.splitlines():
        if ln.startswith(name + " "):
            return float(ln.split()[1])
    return None


class EventsCase(ConsumerCase):
    def setUp(self):
        super().setUp()
        self.queues = []
        tqenv.psql("DELETE FROM settings WHERE key = 'amqp_progress_events'")

    def tearDown(self):
        tqenv.psql("DELETE FROM settings WHERE key = 'amqp_progress_events'")
        conn = h.amqp_connection()
        try:
            ch = conn.channel()
            for q in self.queues:
                ch.queue_delete(q)
        finally:
            conn.close()
        super().tearDown()

    # ------------------------------------------------------------ fixtures

    def queue(self, *binding_keys):
        """A durable queue of this test (it outlives a broker restart), bound to
        trainq.events with binding_keys (none: a reply queue)."""
        name = f"it-events-{run_id()}"
        conn = h.amqp_connection()
        try:
            ch = conn.channel()
            ch.exchange_declare("trainq.events", "topic", durable=True)
            ch.queue_declare(name, durable=True)
            for k in binding_keys:
                ch.queue_bind(name, "trainq.events", k)
        finally:
            conn.close()
        self.queues.append(name)
        return name

    def publish_job(self, body, reply_to=None, correlation_id=None, routing_key="lora"):
        import pika
        conn = h.amqp_connection()
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            props = pika.BasicProperties(content_type="application/json", delivery_mode=2,
                                         message_id=body["job_id"], reply_to=reply_to,
                                         correlation_id=correlation_id)
            ch.basic_publish("trainq.jobs", routing_key, json.dumps(body), props,
                             mandatory=True)
        finally:
            conn.close()

    def received(self, queue, want=None, timeout=60):
        """[(properties, body dict, routing key)] once want(list) holds; fails otherwise.
        want None: whatever the queue holds now. Every body must match the schema and its
        message_id its event_id."""
        got = []
        conn = h.amqp_connection()
        try:
            ch = conn.channel()
            deadline = time.monotonic() + timeout
            while (want is None or not want(got)) and time.monotonic() < deadline:
                method, props, body = ch.basic_get(queue, auto_ack=True)
                if method is None and want is None:
                    break
                if method is None:
                    time.sleep(0.1)
                    continue
                ev = json.loads(body)
                jsonschema.validate(ev, SCHEMA)
                self.assertEqual(props.message_id, ev["event_id"])
                self.assertEqual(props.delivery_mode, 2)  # persistent
                self.assertEqual(props.content_type, "application/json")
                got.append((props, ev, method.routing_key))
        finally:
            conn.close()
        if want is not None:
            self.assertTrue(want(got), f"{queue}: got only {[g[1]['event'] for g in got]}")
        return got

    def statuses_of(self, got, job_id):
        """The job's statuses in sequence order (events may cross between relays)."""
        evs = sorted((g[1] for g in got if g[1]["job_id"] == job_id),
                     key=lambda e: e["sequence"])
        seqs = [e["sequence"] for e in evs]
        self.assertEqual(len(set(seqs)), len(seqs), f"sequence numbers repeat: {seqs}")
        return [e["status"] for e in evs]

    def outbox_event_ids(self, job_ids):
        out = tqenv.psql(
            "SELECT coalesce(json_agg(message_id), '[]') FROM outbox "
            "WHERE exchange = 'trainq.events' AND job_id::text = ANY(string_to_array(:'j', ','))",
            variables={"j": ",".join(job_ids)})
        return set(json.loads(out))

    def unpublished(self, job_ids):
        return int(tqenv.psql(
            "SELECT count(*) FROM outbox WHERE published_at IS NULL "
            "AND job_id::text = ANY(string_to_array(:'j', ','))",
            variables={"j": ",".join(job_ids)}))

    # ------------------------------------------------------------ tests

    def test_reply_to_gets_every_status_with_the_correlation_id(self):
        u = self.user("reply")
        ds = self.dataset(u, duration=0.5)
        replies = self.queue()
        self.consumer(f"w-reply-{run_id()}")
        msg = self.message(u, ds)
        corr = f"corr-{run_id()}"
        self.publish_job(msg, reply_to=replies, correlation_id=corr)
        got = self.received(replies, lambda g: any(e[1]["status"] == "completed" for e in g))
        self.assertEqual(self.statuses_of(got, msg["job_id"]),
                         ["queued", "pending", "running", "completed"])
        for props, ev, rk in got:
            self.assertEqual(props.correlation_id, corr)
            self.assertEqual(ev["correlation_id"], corr)
            self.assertEqual(rk, replies)  # through the default exchange
            self.assertEqual((ev["job_id"], ev["user_id"], ev["type"]), (msg["job_id"], u, "lora"))
            self.assertIsNone(ev["failure_class"])
        done = [e for _, e, _ in got if e["status"] == "completed"][0]
        self.assertEqual((done["previous_status"], done["exit_code"]), ("running", 0))
        # each event's reason is its audit row's, null where that is (message-contract.md)
        audit = json.loads(tqenv.psql(
            "SELECT json_agg(json_build_object('to', to_status, 'reason', reason) ORDER BY id)"
            " FROM job_events WHERE job_id = :'id'", variables={"id": msg["job_id"]}))
        self.assertEqual([(e["status"], e["reason"]) for _, e, _ in
                          sorted(got, key=lambda g: g[1]["sequence"])],
                         [(a["to"], a["reason"]) for a in audit])
        self.assertEqual(audit[0], {"to": "queued", "reason": "published to amqp"})
        # the reply address is the job's, stored with its row
        row = self.job(msg["job_id"])
        self.assertEqual((row["reply_to"], row["correlation_id"]), (replies, corr))

    def test_a_queue_bound_to_job_failed_gets_only_failures(self):
        u = self.user("failed")
        ok_ds = self.dataset(u, duration=0.3)
        bad_ds = self.dataset(u, duration=0.3, exit_code=3, message="fake-trainer: boom")
        failures = self.queue("job.failed.*")
        everything = self.queue("job.#")
        self.consumer(f"w-failed-{run_id()}")
        ok, bad = self.message(u, ok_ds), self.message(u, bad_ds)
        self.publish_job(ok)
        self.publish_job(bad)
        self.wait_status(ok["job_id"], "completed")
        self.wait_status(bad["job_id"], "failed")
        got = self.received(failures, lambda g: len(g) >= 1)
        time.sleep(2)  # anything else would have arrived by now
        got += self.received(failures)
        self.assertEqual([(g[2], g[1]["job_id"]) for g in got],
                         [("job.failed.lora", bad["job_id"])])
        self.assertEqual(got[0][1]["exit_code"], 3)
        self.assertTrue(got[0][1]["reason"])
        # the job's failure class, set by the same change (62_outcomes.sql)
        self.assertIsNotNone(got[0][1]["failure_class"])
        self.assertEqual(got[0][1]["failure_class"], self.job(bad["job_id"])["failure_class"])
        # job.# saw both jobs whole, with routing keys job.<status>.<type>
        alls = self.received(everything, lambda g: len(g) >= 8)
        for _, ev, rk in alls:
            self.assertEqual(rk, f"job.{ev['status']}.lora")
        self.assertEqual(self.statuses_of(alls, ok["job_id"]),
                         ["queued", "pending", "running", "completed"])
        self.assertEqual(self.statuses_of(alls, bad["job_id"]),
                         ["queued", "pending", "running", "failed"])

    def test_rabbitmq_restarted_in_the_middle_loses_no_event(self):
        u1, u2 = self.user("restart1"), self.user("restart2")
        dss = [self.dataset(u, duration=4) for u in (u1, u2)]
        everything = self.queue("job.#")
        self.consumer(f"w-restart-{run_id()}", slots=4)
        msgs = [self.message(u, ds) for u, ds in zip((u1, u2), dss)]
        for m in msgs:
            self.publish_job(m)
        for m in msgs:
            self.wait_status(m["job_id"], "running")
        tqenv.services("restart", "rabbitmq")  # the jobs end while it is away or coming up
        ids = [m["job_id"] for m in msgs]
        for m in msgs:
            self.wait_status(m["job_id"], "completed", timeout=120)
        h.wait_until(lambda: self.unpublished(ids) == 0, timeout=120,
                     what="every event row published")
        want = self.outbox_event_ids(ids)
        self.assertEqual(len(want), 8)
        got = self.received(everything, lambda g: {e[1]["event_id"] for e in g} >= want,
                            timeout=60)
        # the same event ids, none missing and none invented (a republish repeats an id)
        self.assertEqual({e[1]["event_id"] for e in got}, want)
        for m in msgs:
            self.assertEqual(sorted(set(self.statuses_of(got, m["job_id"]))),
                             ["completed", "pending", "queued", "running"])

    def test_a_deleted_reply_queue_blocks_nothing(self):
        u = self.user("gone")
        ds = self.dataset(u, duration=3)
        everything = self.queue("job.#")
        c = self.consumer(f"w-gone-{run_id()}")
        gone = self.queue()
        first, second = self.message(u, ds), self.message(u, ds)
        self.publish_job(first, reply_to=gone, correlation_id="c-gone")
        self.received(gone, lambda g: any(e[1]["status"] == "running" for e in g), timeout=30)
        conn = h.amqp_connection()  # the service goes away while its job runs
        try:
            conn.channel().queue_delete(gone)
        finally:
            conn.close()
        self.wait_status(first["job_id"], "completed")
        self.publish_job(second)
        self.wait_status(second["job_id"], "completed")
        ids = [first["job_id"], second["job_id"]]
        h.wait_until(lambda: self.unpublished(ids) == 0, timeout=60,
                     what="every outbox row of both jobs published (returned replies dropped)")
        c.wait_event("relay.reply_dropped", timeout=30)
        port = c.wait_event("consumer.starting").get("metrics_port")
        self.assertGreaterEqual(metric(port, "trainq_consumer_relay_replies_dropped_total"), 1)
        got = self.received(everything, lambda g: len(g) >= 8)
        for j in ids:
            self.assertEqual(self.statuses_of(got, j), ["queued", "pending", "running", "completed"])
        # the producer's relay counts what it drops (the consumer's relay stopped first, so
        # that the producer's takes the row)
        c.stop(timeout=30)
        p = start_producer()
        try:
            wait_ready(p.port)
            jid = str(uuid.uuid4())
            tqenv.psql("SELECT tq_event_dead_letter(:'j', 'lora', 'test reply', :'q', 'c')",
                       variables={"j": jid, "q": gone})
            h.wait_until(lambda: self.unpublished([jid]) == 0, timeout=30,
                         what="the reply row published (dropped)")
            self.assertGreaterEqual(metric(p.port, "trainq_relay_replies_dropped_total"), 1)
        finally:
            stop_producer(self, p)

    def test_a_dead_lettered_message_gets_its_event_and_reply(self):
        u = self.user("dead")
        ds = self.dataset(u)
        replies = self.queue()
        dead = self.queue("job.dead_lettered.*")
        self.consumer(f"w-dead-{run_id()}")
        msg = self.message(u, ds, base_model="")  # invalid: never claimed, no row
        self.publish_job(msg, reply_to=replies, correlation_id="c-dead")
        got = self.received(replies, lambda g: len(g) >= 1)
        props, ev, _ = got[0]
        self.assertEqual(props.correlation_id, "c-dead")
        self.assertEqual((ev["event"], ev["status"], ev["job_id"], ev["type"]),
                         ("job.dead_lettered", "dead_lettered", msg["job_id"], "lora"))
        self.assertRegex(ev["reason"], r"^invalid message: .*base_model")
        on_exchange = self.received(dead, lambda g: len(g) >= 1)
        self.assertEqual(on_exchange[0][1]["event_id"], ev["event_id"])
        self.assertEqual(on_exchange[0][2], "job.dead_lettered.lora")
        self.assertIsNone(self.job(msg["job_id"]))
        self.assertEqual(len(h.get_messages("trainq.jobs.dead")), 1)
        # Fixed and published again under the same job_id, the message becomes a job whose
        # events start at 1 again: the documented subscriber (message-contract.md) keeps a
        # dead_lettered event out of its sequence rule and takes every one of them.
        self.assertEqual(ev["sequence"], 1)
        fixed = dict(msg, base_model="gpt2")
        self.publish_job(fixed, reply_to=replies, correlation_id="c-dead")
        self.wait_status(fixed["job_id"], "completed")
        got = self.received(replies, lambda g: len(g) >= 4)
        last = {}
        applied = []
        for _, e, _ in [(None, ev, None)] + got:
            if e["status"] == "dead_lettered":
                applied.append(e["status"])
            elif e["sequence"] > last.get(e["job_id"], 0):
                last[e["job_id"]] = e["sequence"]
                applied.append(e["status"])
        self.assertEqual(applied, ["dead_lettered", "queued", "pending", "running", "completed"])
        # An invalid message naming a job that exists says nothing about that job: no event
        # on the exchange, no reply; the dead letter itself is there with its reason.
        self.publish_job({"job_id": fixed["job_id"], "oops": True}, reply_to=replies,
                         correlation_id="c-again")
        dl = h.get_messages("trainq.jobs.dead", want=lambda ms: len(ms) >= 1, timeout=30)
        self.assertEqual([json.loads(b).get("oops") for _, b in dl], [True])
        self.assertIn("invalid message", (dl[0][0].headers or {}).get("x-trainq-reason", ""))
        h.wait_until(lambda: self.unpublished([fixed["job_id"]]) == 0, timeout=30,
                     what="every outbox row of the job published")
        time.sleep(1)
        self.assertEqual(self.received(replies), [])
        self.assertEqual(len(self.received(dead)), 0)

    def test_a_correlation_id_without_reply_to_is_on_every_event(self):
        """A service that only watches trainq.events matches the events to its requests by
        the correlation_id it published, with no reply queue of its own."""
        u = self.user("corr")
        ds = self.dataset(u)
        watch = self.queue("job.*.lora")
        self.consumer(f"w-corr-{run_id()}")
        msg = self.message(u, ds)
        self.publish_job(msg, correlation_id="order-corr-1")
        self.wait_status(msg["job_id"], "completed")
        got = self.received(watch, lambda g: len([x for x in g if x[1]["job_id"] == msg["job_id"]]) >= 4)
        mine = [e for _, e, _ in got if e["job_id"] == msg["job_id"]]
        self.assertEqual(sorted(e["status"] for e in mine),
                         sorted(["queued", "pending", "running", "completed"]))
        self.assertEqual({e["correlation_id"] for e in mine}, {"order-corr-1"})
        self.assertEqual(self.job(msg["job_id"])["correlation_id"], "order-corr-1")
        self.assertIsNone(self.job(msg["job_id"])["reply_to"])

    def test_an_http_job_cancelled_while_queued_keeps_its_cancelled_event(self):
        """The cancellation drops the job's unpublished job message, never its events."""
        u = self.user("cancel")
        ds = self.dataset(u)
        cancelled = self.queue("job.cancelled.*", "job.queued.*")
        p = start_producer()  # no consumer: the job stays queued
        try:
            wait_ready(p.port)
            tok = h.mint(u, SECRET)
            r = h.http_once(p.port, "POST", "/api/training/submit", token=tok,
                            headers={"Content-Type": "application/json"},
                            body=json.dumps({"dataset_id": ds, "type": "lora",
                                             "base_model": "gpt2", "config": {}}))
            self.assertEqual(r.status, 200, r)
            job = r.json["job_id"]
            r = h.http_once(p.port, "POST", f"/api/training/jobs/{job}/cancel", token=tok)
            self.assertIn(r.status, (200, 202), r)
            got = self.received(cancelled, lambda g: len(g) >= 2)
            self.assertEqual(self.statuses_of(got, job), ["queued", "cancelled"])
            self.assertEqual([g[0].correlation_id for g in got], [None, None])
            self.assertIsNone(self.job(job)["reply_to"])
        finally:
            stop_producer(self, p)

    def test_progress_events_only_when_configured_and_throttled(self):
        u = self.user("progress")
        ds_off, ds_on = self.dataset(u, duration=1), self.dataset(u, duration=1)
        progress = self.queue("job.progress.*")
        self.consumer(f"w-progress-{run_id()}")
        off = self.message(u, ds_off)
        self.publish_job(off)
        self.wait_status(off["job_id"], "completed")
        time.sleep(2)
        self.assertEqual(self.received(progress), [])
        tqenv.psql("INSERT INTO settings (key, value) VALUES ('amqp_progress_events', 'on')")
        on = self.message(u, ds_on)
        self.publish_job(on)
        self.wait_status(on["job_id"], "completed")
        got = self.received(progress, lambda g: len(g) >= 1, timeout=30)
        time.sleep(2)
        got += self.received(progress)
        evs = sorted((e[1] for e in got), key=lambda e: e["sequence"])
        self.assertTrue(all(e["job_id"] == on["job_id"] for e in evs))
        self.assertTrue(all(e["event"] == "job.progress" and e["status"] == "running"
                            and e["progress"] is not None for e in evs))
        # at most one per tenth (0 at the start, then three steps: at most four), in order
        tenths = [int(e["progress"]["progress"] * 10) for e in evs]
        self.assertEqual(tenths, sorted(set(tenths)))
        self.assertLessEqual(len(evs), 4)
        self.assertEqual([g[2] for g in got], ["job.progress.lora"] * len(got))


if __name__ == "__main__":
    unittest.main()
