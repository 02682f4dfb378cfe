"""Publisher signatures (TRAINQ_PUBLISH_KEYS) against the real services and binaries.

With keys configured, the consumer runs a job only if its body carries an HMAC-SHA256 of a
listed key (headers x-trainq-key-id, x-trainq-signature; docs/message-contract.md); every
other message lands on trainq.jobs.dead with the reason in x-trainq-reason and leaves no
trace in Postgres. The producer's and consumers' relays sign what they publish with the
first key. pika stands in for another service, signing with Python's hmac module, so the
signature format is checked by an implementation independent of trainq's.
"""

import hashlib
import hmac
import json
import os
import shlex
import urllib.parse
import uuid

import tqenv
import tqharness as h
from test_consumer import TERMINAL, ConsumerCase, run_id
from test_hostile_amqp import publish

SECRET = "signing-it-jwt-secret-" + uuid.uuid4().hex
NEW = ("new", "n" * 8 + uuid.uuid4().hex)   # 40 bytes
OLD = ("old", "o" * 8 + uuid.uuid4().hex)
DEAD = "trainq.jobs.dead"


def keys(*pairs):
    return ",".join(f"{i}:{s}" for i, s in pairs)


def sign(secret, body):
    return "v1=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class SigningTest(ConsumerCase):

    def publish_signed(self, msg, key):
        body = json.dumps(msg).encode()
        publish(body, msg["job_id"],
                headers={"x-trainq-key-id": key[0], "x-trainq-signature": sign(key[1], body)})

    def producer(self, **extra):
        env = {"TRAINQ_HTTP_ADDR": "127.0.0.1:0", "TRAINQ_JWT_ALG": "HS256",
               "TRAINQ_JWT_SECRET": SECRET, "TRAINQ_JWT_PUBLIC_KEY_FILE": None,
               "TRAINQ_SUBMIT_RATE_PER_MINUTE": "1000", "TRAINQ_LOG_LEVEL": "info"}
        env.update(extra)
        p = h.Program("producer/trainq-producer", env=env, name="producer-signing")
        self.procs.append(p)
        p.start()
        return p.wait_event("http.listening", timeout=30)["port"]

    def count_rows(self, job_ids):
        return int(tqenv.psql(
            "SELECT (SELECT count(*) FROM training_jobs WHERE id::text = ANY(string_to_array(:'i', ',')))"
            " + (SELECT count(*) FROM job_events WHERE job_id::text = ANY(string_to_array(:'i', ',')))",
            variables={"i": ",".join(job_ids)}))

    # ------------------------------------------------------------ the tests

    def test_a_job_submitted_over_http_is_relayed_signed_and_completes(self):
        u = self.user("sig-http")
        ds = self.dataset(u, duration=0.3)
        port = self.producer(TRAINQ_PUBLISH_KEYS=keys(NEW, OLD))
        r = h.http_once(port, "POST", "/api/training/submit", token=h.mint(u, SECRET),
                        headers={"Content-Type": "application/json"},
                        body=json.dumps({"dataset_id": ds, "type": "lora", "base_model": "gpt2",
                                         "config": {"steps": 100}}))
        self.assertEqual(r.status, 200, r)
        # Before any consumer runs: the relayed message is signed with the first key, over
        # the body bytes exactly as they travel (checked here with Python's hmac).
        # Other suites share the broker: pick this job's message out of whatever is queued.
        jid = r.json["job_id"]
        got = h.get_messages("trainq.jobs", timeout=30, ack=False,
                             want=lambda ms: any(p.message_id == jid for p, _ in ms))
        mine = [(p, b) for p, b in got if p.message_id == jid]
        self.assertEqual(len(mine), 1, [p.message_id for p, _ in got])
        [(props, body)] = mine
        self.assertEqual(props.headers["x-trainq-key-id"], "new")
        self.assertEqual(props.headers["x-trainq-signature"], sign(NEW[1], body))
        c = self.consumer(f"sig-http-{run_id()}", TRAINQ_PUBLISH_KEYS=keys(NEW, OLD))
        j = self.wait_status(r.json["job_id"], TERMINAL)
        self.assertEqual(j["status"], "completed", j)
        self.assertEqual(j["source"], "http")
        self.assertEqual(h.get_messages(DEAD, timeout=1), [])
        self.assertEqual(c.events("consumer.unauthenticated_publishers"), [])

    def test_signed_direct_publishes_run_with_either_key_while_keys_rotate(self):
        u = self.user("sig-rot")
        ds = self.dataset(u, duration=1.0)
        # 3 slots for a user limited to 2: the third job waits at the limit as a row and is
        # picked from it when a slot of the user frees, without being published again.
        c = self.consumer(f"sig-rot-{run_id()}", slots=3, TRAINQ_PUBLISH_KEYS=keys(NEW, OLD))
        by_new, by_old, parked = self.message(u, ds), self.message(u, ds), self.message(u, ds)
        self.publish_signed(by_new, NEW)
        self.publish_signed(by_old, OLD)
        self.publish_signed(parked, OLD)
        for m in (by_new, by_old, parked):
            j = self.wait_status(m["job_id"], TERMINAL)
            self.assertEqual((j["status"], j["source"]), ("completed", "amqp"), j)
        ev = self.events([u])
        first_end = min(e["id"] for e in ev if e["to_status"] in TERMINAL)
        third = [e["id"] for e in ev if e["job_id"] == parked["job_id"]
                 and e["to_status"] == "pending"]
        self.assertEqual(len(third), 1)
        self.assertGreater(third[0], first_end, "the third job did not wait for the limit")
        self.assertEqual(h.psql("SELECT count(*) FROM outbox WHERE job_id = :'id'"
                                " AND exchange = 'trainq.jobs'",
                                variables={"id": parked["job_id"]}), "0")
        self.assertEqual(h.get_messages(DEAD, timeout=1), [])

    def test_unsigned_unknown_key_and_tampered_messages_are_dead_lettered_before_the_database(self):
        u = self.user("sig-bad")
        ds = self.dataset(u, duration=0.3)
        c = self.consumer(f"sig-bad-{run_id()}", TRAINQ_PUBLISH_KEYS=keys(NEW, OLD))
        stranger = ("stranger", "s" * 40)
        cases = []  # (message, body, headers, expected reason)

        def case(headers_of, reason, body_of=None):
            m = self.message(u, ds)
            body = json.dumps(m).encode()
            cases.append((m, body_of(body) if body_of else body, headers_of(body), reason))

        case(lambda b: None, "unsigned message: x-trainq-signature is required")
        case(lambda b: {"x-trainq-signature": sign(NEW[1], b)},
             "unsigned message: x-trainq-key-id is required")
        case(lambda b: {"x-trainq-key-id": "stranger", "x-trainq-signature": sign(stranger[1], b)},
             'unknown publisher key id "stranger"')
        # a listed id, but signed with a secret the consumer does not hold
        case(lambda b: {"x-trainq-key-id": "new", "x-trainq-signature": sign(stranger[1], b)},
             "bad signature")
        # tampered: the signature of the body as signed, on a body that was changed after
        case(lambda b: {"x-trainq-key-id": "new", "x-trainq-signature": sign(NEW[1], b)},
             "bad signature", body_of=lambda b: b.replace(b'"steps": 200', b'"steps": 9000'))
        case(lambda b: {"x-trainq-key-id": "new", "x-trainq-signature": "v1=" + "0" * 10},
             "bad signature: expected v1=")
        case(lambda b: {"x-trainq-key-id": 7, "x-trainq-signature": sign(NEW[1], b)},
             "bad signature: header x-trainq-key-id must be a string")
        for m, body, headers, _ in cases:
            publish(body, m["job_id"], headers=headers)
        got = h.get_messages(DEAD, want=lambda ms: len(ms) >= len(cases), timeout=30)
        self.assertEqual(len(got), len(cases))
        by_id = {p.message_id: (p, b) for p, b in got}
        for m, body, _, reason in cases:
            p, dead_body = by_id[m["job_id"]]
            self.assertTrue(p.headers["x-trainq-reason"].startswith(reason),
                            (reason, p.headers["x-trainq-reason"]))
            self.assertEqual(dead_body, body)
        self.assertEqual(self.count_rows([m["job_id"] for m, *_ in cases]), 0,
                         "a message that failed its signature check reached the database")
        # The consumer is unharmed and still runs what is signed.
        good = self.message(u, ds)
        self.publish_signed(good, NEW)
        self.assertEqual(self.wait_status(good["job_id"], TERMINAL)["status"], "completed")
        self.assertEqual(len(c.events("job.dead_lettered")), len(cases))

    def test_without_keys_the_consumer_warns_once_and_runs_unsigned_messages(self):
        u = self.user("sig-off")
        c = self.consumer(f"sig-off-{run_id()}")
        m = self.message(u, self.dataset(u, duration=0.3))
        self.publish(m)
        self.assertEqual(self.wait_status(m["job_id"], TERMINAL)["status"], "completed")
        warned = c.events("consumer.unauthenticated_publishers")
        self.assertEqual(len(warned), 1)
        self.assertEqual(warned[0]["level"], "warn")

    def test_the_documented_rabbitmq_permissions_confine_a_service_and_suffice_for_trainq(self):
        """The set_permissions commands of docs/operations.md, run as written."""
        import pika
        with open(os.path.join(h.SOURCE_DIR, "docs", "operations.md")) as f:
            doc = f.read().replace("\\\n", " ")
        perms = {}
        for line in doc.splitlines():
            if line.startswith("rabbitmqctl set_permissions "):
                words = shlex.split(line)
                perms[words[4]] = words[5:8]
        self.assertIn("trainq", perms)
        self.assertIn("billing", perms)
        rid = run_id()
        users = {role: (f"{role}-it-{rid}", uuid.uuid4().hex) for role in ("trainq", "billing")}
        url = urllib.parse.urlparse(tqenv.AMQP_URL)
        urls = {role: url._replace(netloc=f"{name}:{pw}@{url.hostname}:{url.port}").geturl()
                for role, (name, pw) in users.items()}
        try:
            for role, (name, pw) in users.items():
                tqenv.rabbitmqctl("add_user", name, pw)
                tqenv.rabbitmqctl("set_permissions", "-p", "/", name, *perms[role])
            u = self.user("sig-perm")
            ds = self.dataset(u, duration=0.3)
            kl = keys(NEW, ("billing", "b" * 40))
            self.consumer(f"sig-perm-{run_id()}", TRAINQ_AMQP_URL=urls["trainq"],
                          TRAINQ_PUBLISH_KEYS=kl)
            port = self.producer(TRAINQ_AMQP_URL=urls["trainq"], TRAINQ_PUBLISH_KEYS=kl)
            r = h.http_once(port, "POST", "/api/training/submit", token=h.mint(u, SECRET),
                            headers={"Content-Type": "application/json"},
                            body=json.dumps({"dataset_id": ds, "type": "lora",
                                             "base_model": "gpt2", "config": {}}))
            self.assertEqual(r.status, 200, r)

            params = pika.URLParameters(urls["billing"])
            conn = pika.BlockingConnection(params)
            try:
                ch = conn.channel()
                ch.confirm_delivery()
                direct, unsigned = self.message(u, ds), self.message(u, ds)
                body = json.dumps(direct).encode()
                ch.basic_publish("trainq.jobs", "lora", body, pika.BasicProperties(
                    delivery_mode=2, content_type="application/json",
                    message_id=direct["job_id"],
                    headers={"x-trainq-key-id": "billing",
                             "x-trainq-signature": sign("b" * 40, body)}), mandatory=True)
                ch.basic_publish("trainq.jobs", "lora", json.dumps(unsigned).encode(),
                                 pika.BasicProperties(message_id=unsigned["job_id"]),
                                 mandatory=True)
                refused = {
                    "read the queue": lambda c: c.basic_get("trainq.jobs"),
                    "declare": lambda c: c.queue_declare("billing-own-queue"),
                    "publish to the dead-letter exchange":
                        lambda c: (c.confirm_delivery(),
                                   c.basic_publish("trainq.jobs.dlx", "", b"{}")),
                }
                for what, act in refused.items():
                    with self.assertRaises(pika.exceptions.ChannelClosedByBroker, msg=what) as cm:
                        act(conn.channel())
                    self.assertEqual(cm.exception.reply_code, 403, what)
            finally:
                conn.close()
            for job_id in (r.json["job_id"], direct["job_id"]):
                self.assertEqual(self.wait_status(job_id, TERMINAL)["status"], "completed")
            [(props, _)] = h.get_messages(DEAD, timeout=30)  # the consumer could dead-letter
            self.assertEqual(props.message_id, unsigned["job_id"])
        finally:
            for name, _ in users.values():
                tqenv.rabbitmqctl("delete_user", name)

    def test_a_bad_key_list_stops_either_program_with_one_line_and_exit_2(self):
        bad = {
            "a:short": 'invalid TRAINQ_PUBLISH_KEYS: key "a" has a secret of 5 bytes',
            keys(NEW, ("new", "x" * 40)): 'invalid TRAINQ_PUBLISH_KEYS: key id "new" is listed twice',
            ":" + "x" * 40: "invalid TRAINQ_PUBLISH_KEYS: entry 1 has an empty key id",
        }
        for value, line in bad.items():
            for prog in ("consumer/trainq-consumer", "producer/trainq-producer"):
                p = h.Program(prog, env={"TRAINQ_PUBLISH_KEYS": value, "TRAINQ_JWT_SECRET": SECRET,
                                         "TRAINQ_WORKER_ID": "sig-cfg"}, name="sig-cfg")
                self.procs.append(p)
                p.start()
                self.assertEqual(p.proc.wait(timeout=30), 2, p.stderr_text())
                text = p.stderr_text().strip()
                self.assertEqual(len(text.splitlines()), 1, text)
                self.assertIn(line, text)
                self.assertNotIn("x" * 40, text, "a secret was echoed")


if __name__ == "__main__":
    import unittest
    unittest.main()
