"""The outbox relay (shared/tq_relay) against real Postgres and RabbitMQ.

Drives tests/relay_it (one relay per process). Needs TRAINQ_DATABASE_URL (schema applied),
TRAINQ_AMQP_URL and TRAINQ_BIN_DIR; the RabbitMQ restart case also needs TRAINQ_SERVICES
(scripts/services.sh: `stop rabbitmq` / `start rabbitmq`). Skips when they are unset.

Other tests may leave rows in `outbox`; every check here looks only at the job ids this
test inserted, and those rows are deleted afterwards.
"""
import json
import os
import shlex
import signal
import subprocess
import tempfile
import time
import unittest
import urllib.parse

DB = os.environ.get("TRAINQ_DATABASE_URL")
AMQP = os.environ.get("TRAINQ_AMQP_URL")
BIN = os.environ.get("TRAINQ_BIN_DIR")
SERVICES = os.environ.get("TRAINQ_SERVICES")
QUEUE = "trainq.jobs"

try:
    import pika
except ImportError:  # pragma: no cover - python3-pika is a listed dependency
    pika = None


def find_driver():
    if not BIN:
        return None
    for cand in (os.path.join(BIN, "tests", "relay_it"), os.path.join(BIN, "relay_it")):
        if os.access(cand, os.X_OK):
            return cand
    return None


DRIVER = find_driver()


def psql(sql, **params):
    """Runs sql through psql with :'name' variables; returns the rows as lists."""
    args = ["psql", DB, "-X", "-q", "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1"]
    for k, v in params.items():
        args += ["-v", f"{k}={v}"]
    out = subprocess.run(args, input=sql, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise AssertionError(f"psql failed: {out.stderr.strip()}")
    return [line.split("\t") for line in out.stdout.splitlines() if line]


def pg_array(ids):
    return "{" + ",".join(ids) + "}"


def amqp_params():
    u = urllib.parse.urlparse(AMQP)
    vhost = urllib.parse.unquote(u.path[1:]) if len(u.path) > 1 else "/"
    return pika.ConnectionParameters(
        host=u.hostname or "localhost", port=u.port or 5672, virtual_host=vhost,
        credentials=pika.PlainCredentials(urllib.parse.unquote(u.username or "guest"),
                                          urllib.parse.unquote(u.password or "guest")),
        connection_attempts=3, retry_delay=1, socket_timeout=10)


def wait_until(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@unittest.skipUnless(DB and AMQP and DRIVER and pika,
                     "needs TRAINQ_DATABASE_URL, TRAINQ_AMQP_URL, TRAINQ_BIN_DIR with relay_it, pika")
class OutboxRelay(unittest.TestCase):

    def setUp(self):
        rows = psql("SELECT to_regclass('public.outbox') IS NOT NULL")
        self.assertEqual(rows, [["t"]], "schema not applied to TRAINQ_DATABASE_URL")
        self.ids = []
        self.procs = []
        self.logs = []
        self.purge_queue()

    def tearDown(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
            if p.stdout:
                p.stdout.close()
        if self.ids:
            psql("DELETE FROM outbox WHERE job_id = ANY(:'ids'::uuid[])", ids=pg_array(self.ids))
        for f in self.logs:
            f.close()

    # -- helpers ---------------------------------------------------------------------

    def purge_queue(self):
        conn = pika.BlockingConnection(amqp_params())
        try:
            ch = conn.channel()
            try:
                ch.queue_declare(QUEUE, passive=True)
                ch.queue_purge(QUEUE)
            except pika.exceptions.ChannelClosedByBroker:
                pass  # not declared yet: the relay declares it
        finally:
            if conn.is_open:
                conn.close()

    def drain_queue(self):
        """Takes every message off the queue: [(method, properties, body)]."""
        got = []
        conn = pika.BlockingConnection(amqp_params())
        try:
            ch = conn.channel()
            while True:
                m, p, b = ch.basic_get(QUEUE, auto_ack=True)
                if m is None:
                    break
                got.append((m, p, b))
        finally:
            conn.close()
        return got

    def insert(self, n, routing_key="lora"):
        rows = psql("INSERT INTO outbox (job_id, routing_key, payload)"
                    " SELECT gen_random_uuid(), :'rk', json_build_object('test', 'relay', 'n', g)::text"
                    " FROM generate_series(1, :n) g RETURNING job_id",
                    rk=routing_key, n=n)
        ids = [r[0] for r in rows]
        self.assertEqual(len(ids), n)
        self.ids += ids
        return ids

    def published_count(self, ids):
        return int(psql("SELECT count(*) FROM outbox WHERE job_id = ANY(:'ids'::uuid[])"
                        " AND published_at IS NOT NULL", ids=pg_array(ids))[0][0])

    def wait_published(self, ids, timeout=30):
        wait_until(lambda: self.published_count(ids) == len(ids), timeout,
                   f"{len(ids)} outbox rows to be marked published")

    def start_relay(self, name, *extra):
        log = tempfile.TemporaryFile(mode="w+")
        self.logs.append(log)
        p = subprocess.Popen([DRIVER, "--name", name, "--poll-ms", "500", *extra],
                             stdout=subprocess.PIPE, stderr=log, text=True)
        p.log = log
        self.procs.append(p)
        return p

    def stop_relay(self, p):
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=30)
        if p.returncode != 0:
            p.log.seek(0)
            self.fail(f"relay exited {p.returncode}: {p.log.read()[-2000:]}")
        return json.loads(out.strip().splitlines()[-1])

    def messages_by_id(self):
        seen = {}
        for m, p, b in self.drain_queue():
            seen.setdefault(p.message_id, []).append((m, p, b))
        return seen

    # -- cases -----------------------------------------------------------------------

    def test_9_the_claim_reads_the_backlog_not_every_published_row(self):
        """The relay's claim (shared/tq_relay.c, SQL_CLAIM, copied here) with 5 000 published
        rows kept: it must not walk them. Before migration 0010 the only ordered path was
        outbox_pkey, which the planner takes whenever its statistics say many rows are
        unpublished (stale under load) and which visits every published row;
        enable_sort = off makes it take the ordered path here deterministically, and
        outbox_unpublished_order (migration 0022, after outbox_unpublished_id of 0010) is
        now that path. All in one transaction, rolled back."""
        out = psql("BEGIN;"
                   " INSERT INTO outbox (job_id, routing_key, payload, published_at)"
                   " SELECT gen_random_uuid(), 'lora', repeat('x', 400), now()"
                   " FROM generate_series(1, 5000);"
                   " SET LOCAL enable_sort = off;"
                   " EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)"
                   " SELECT id, job_id::text, routing_key, payload FROM outbox"
                   " WHERE published_at IS NULL AND available_at <= now()"
                   " ORDER BY exchange = 'trainq.events', id LIMIT 100 FOR UPDATE SKIP LOCKED;"
                   " ROLLBACK;")
        plan = json.loads("\n".join(r[0] for r in out))[0]["Plan"]
        text = json.dumps(plan)
        self.assertNotIn('"outbox_pkey"', text, "the claim walks the primary key")
        hits = plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]
        self.assertLess(hits, 500, f"the claim read {hits} buffers past 5 000 published rows")

    def test_9_a_job_message_goes_before_a_backlog_of_events(self):
        """3 000 events (a mass cancel's job.cancelled rows) and, committed with them but
        after them in id order, one job message: the job's message is in the first batch
        (fewer than 1 000 of the events are marked before it, whichever relays of the
        suites running beside this one take part), the events all follow."""
        rows = psql("WITH e AS (INSERT INTO outbox (job_id, routing_key, payload, exchange,"
                    "   message_id)"
                    "  SELECT gen_random_uuid(), 'job.cancelled.lora', '{}', 'trainq.events',"
                    "   gen_random_uuid()::text FROM generate_series(1, 3000) RETURNING job_id),"
                    " j AS (INSERT INTO outbox (job_id, routing_key, payload)"
                    "  SELECT gen_random_uuid(), 'lora', '{\"test\": \"relay\"}'"
                    "  FROM (SELECT count(*) FROM e) c RETURNING job_id)"
                    " SELECT job_id, 'e' FROM e UNION ALL SELECT job_id, 'j' FROM j")
        events = [r[0] for r in rows if r[1] == "e"]
        job = [r[0] for r in rows if r[1] == "j"]
        self.ids += events + job
        self.assertEqual((len(events), len(job)), (3000, 1))
        self.assertLess(int(psql("SELECT max(id) FROM outbox WHERE job_id = ANY(:'ids'::uuid[])",
                                 ids=pg_array(events))[0][0]),
                        int(psql("SELECT id FROM outbox WHERE job_id = :'j'::uuid",
                                 j=job[0])[0][0]), "the job's row is not the newest")
        relay = self.start_relay("it-jobs-first")
        self.wait_published(events + job, timeout=60)
        self.stop_relay(relay)
        before = int(psql("SELECT count(*) FROM outbox WHERE job_id = ANY(:'ids'::uuid[])"
                          " AND published_at < (SELECT published_at FROM outbox"
                          "                     WHERE job_id = :'j'::uuid)",
                          ids=pg_array(events), j=job[0])[0][0])
        self.assertLess(before, 1000, "the job's message waited for the events")
        self.assertIn(job[0], self.messages_by_id())

    def test_0_a_batch_the_broker_refuses_closes_only_the_channel_and_the_next_is_confirmed(self):
        probe = f"probe-{os.getpid()}-{time.monotonic_ns()}"
        out = subprocess.run([DRIVER, "--probe-channel-close", probe], capture_output=True,
                             text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr[-2000:])
        r = json.loads(out.stdout.strip().splitlines()[-1])
        self.assertEqual(r["first_rc"], -10, r)  # TQ_ERR_AMQP
        self.assertIn("404", r["first_msg"])
        self.assertEqual(r["alive_after_first"], 1, "a channel close killed the connection")
        self.assertEqual((r["second_rc"], r["second_result"]), (0, 0), r)
        self.assertIs(r["first_unconfirmed"], True, r)
        self.assertIs(r["second_acked"], True, r)
        self.assertEqual(r["reopened"], 1)
        seen = self.messages_by_id()
        self.assertEqual(len(seen.get(probe, [])), 1)
        props = seen[probe][0][1]
        self.assertEqual((props.headers or {}).get("x-trainq-probe"), "1")
        self.assertEqual(props.content_type, "application/json")
        self.assertEqual(props.delivery_mode, 2)

    def test_1_outbox_rows_are_published_with_job_properties_and_marked_published(self):
        lora = self.insert(20, "lora")
        dream = self.insert(5, "dreambooth")
        payload = dict(psql("SELECT job_id, payload FROM outbox WHERE job_id = ANY(:'ids'::uuid[])",
                            ids=pg_array(lora + dream)))
        relay = self.start_relay("it-basic")
        self.wait_published(lora + dream)
        stats = self.stop_relay(relay)
        self.assertGreaterEqual(stats["published"], 25)
        self.assertEqual(stats["errors"], 0)

        seen = self.messages_by_id()
        for ids, key in ((lora, "lora"), (dream, "dreambooth")):
            for job in ids:
                self.assertIn(job, seen, "published row missing from the queue")
                self.assertEqual(len(seen[job]), 1, "published twice")
                m, p, body = seen[job][0]
                self.assertEqual(m.routing_key, key)
                self.assertEqual(m.exchange, "trainq.jobs")
                self.assertEqual(p.content_type, "application/json")
                self.assertEqual(p.delivery_mode, 2)
                self.assertIsNotNone(p.timestamp)
                self.assertEqual(body.decode(), payload[job])

    def test_2_two_relays_at_once_publish_every_row_exactly_once(self):
        a = self.start_relay("it-twin-a", "--batch", "20")
        b = self.start_relay("it-twin-b", "--batch", "20")
        time.sleep(1.0)  # both connected and listening
        ids = []
        for _ in range(10):
            ids += self.insert(50)
            time.sleep(0.05)
        self.wait_published(ids, timeout=60)
        sa, sb = self.stop_relay(a), self.stop_relay(b)
        self.assertGreaterEqual(sa["published"] + sb["published"], len(ids))

        seen = self.messages_by_id()
        dup = [j for j in ids if len(seen.get(j, [])) > 1]
        missing = [j for j in ids if j not in seen]
        self.assertEqual(missing, [])
        self.assertEqual(dup, [], "a row was published by both relays")

    def test_3_unroutable_row_is_returned_and_stays_unpublished_with_reason(self):
        bad = self.insert(1, "nosuchtype")
        good = self.insert(3, "lora")
        relay = self.start_relay("it-unroutable")
        self.wait_published(good)
        wait_until(lambda: psql("SELECT attempts > 0 FROM outbox WHERE job_id = :'id'",
                                id=bad[0]) == [["t"]], 20, "the unroutable row to be attempted")
        stats = self.stop_relay(relay)
        self.assertGreaterEqual(stats["returns"], 1)
        self.assertEqual(stats["nacks"], 0, "a returned message was counted as nacked")

        row = psql("SELECT published_at IS NULL, last_error, available_at > now() - interval '1 second'"
                   " FROM outbox WHERE job_id = :'id'", id=bad[0])[0]
        self.assertEqual(row[0], "t", "an unroutable message was marked published")
        self.assertTrue(row[1].startswith("unroutable"), row[1])
        self.assertEqual(row[2], "t", "the failed row was not pushed back")
        seen = self.messages_by_id()
        self.assertNotIn(bad[0], seen)
        for job in good:
            self.assertEqual(len(seen.get(job, [])), 1)

    def test_4_a_relay_killed_with_sigkill_loses_nothing(self):
        first = self.start_relay("it-killed", "--batch", "10")
        time.sleep(1.0)
        ids = self.insert(300)
        time.sleep(0.1)  # let it be mid-way through the backlog
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        ids += self.insert(50)  # while no relay runs at all
        self.assertLess(self.published_count(ids), len(ids))

        second = self.start_relay("it-survivor")
        self.wait_published(ids, timeout=60)
        self.stop_relay(second)
        seen = self.messages_by_id()
        missing = [j for j in ids if j not in seen]
        self.assertEqual(missing, [], "jobs lost after the relay was killed")

    @unittest.skipUnless(SERVICES, "needs TRAINQ_SERVICES (scripts/services.sh) to stop rabbitmq")
    def test_5_rows_inserted_while_rabbitmq_is_down_are_published_when_it_returns(self):
        svc = shlex.split(SERVICES)
        relay = self.start_relay("it-broker-restart")
        before = self.insert(5)
        self.wait_published(before)
        subprocess.run(svc + ["stop", "rabbitmq"], check=True, timeout=120)
        try:
            during = self.insert(20)
            time.sleep(3)
            self.assertEqual(self.published_count(during), 0,
                             "rows marked published while the broker was down")
            self.assertIsNone(relay.poll(), "the relay died with the broker")
        finally:
            subprocess.run(svc + ["start", "rabbitmq"], check=True, timeout=180)
        self.wait_published(during, timeout=90)
        stats = self.stop_relay(relay)
        self.assertGreaterEqual(stats["reconnects"], 1)
        seen = self.messages_by_id()
        self.assertEqual([j for j in during if j not in seen], [])


if __name__ == "__main__":
    unittest.main()
