"""Hostile AMQP messages against a real trainq-consumer (run it against the ASan build).

The corpus is data, in the repo: tests/corpus/amqp/cases.jsonl, one message a line. Each is
published straight to exchange `trainq.jobs` with pika, as any service may. Every one is
invalid and must be re-published to `trainq.jobs.dead` with its body unchanged and header
`x-trainq-reason` naming the problem (the case's `reason` is a substring of it), must not
create a job row, and must not stop the consumer. Then the special cases: duplicate
deliveries (one run), a job_id naming another user's job (dead-lettered, that job
unchanged), another user's dataset and a missing dataset (job failed with the reason, no
container), an unroutable routing key (returned to the publisher). Finally the consumer is
healthy, runs a valid job to completion, exits 0 on SIGTERM and has no sanitizer report.

Corpus line keys: id, reason (substring of x-trainq-reason), why; body (text) | body_hex |
base (a valid message) with set / set_raw / delete; prefix_hex, bytes_subst (raw bytes);
message_id (default: the job id; null: none); routing_key (default lora); headers.
Placeholders: @JOB@ (fresh uuid), @JOB2@ (another), @USER@, @DS@, @CASE@ (the case id);
@R(c,n)@ is c repeated n times; {"$repeat_item": x, "$count": n} is a list of n x.
"""

import json
import os
import shutil
import signal
import tempfile
import time
import unittest
import urllib.parse
import uuid

import tqenv
import tqharness as h

CORPUS = os.path.join(h.SOURCE_DIR, "tests", "corpus", "amqp", "cases.jsonl")
DEAD = "trainq.jobs.dead"
TERMINAL = ("completed", "failed", "cancelled")
expand = h.expand  # corpus expansion, shared with the other corpus


def put_field(msg, path, value):
    if path.startswith("config.") and isinstance(msg.get("config"), dict):
        msg["config"][path[len("config."):]] = value
    else:
        msg[path] = value


def build(case, ctx):
    """(body bytes, message_id or None, routing key, headers) of a corpus case."""
    case = expand(case, ctx)
    if "body" in case:
        body = case["body"].encode("utf-8")
    elif "body_hex" in case:
        body = bytes.fromhex(case["body_hex"])
    else:
        msg = {"schema": "trainq.job.v1", "job_id": ctx["@JOB@"], "user_id": ctx["@USER@"],
               "submitted_at": "2024-01-02T03:04:05.678Z", "dataset_id": ctx["@DS@"],
               "name": "hostile amqp " + case["id"], "type": "lora", "base_model": "gpt2",
               "config": {"steps": 100}, "trigger_words": ["hostile"]}
        raws = {}
        for path, value in (case.get("set") or {}).items():
            put_field(msg, path, value)
        for i, (path, raw) in enumerate((case.get("set_raw") or {}).items()):
            marker = f"@RAW{i}@"
            put_field(msg, path, marker)
            raws[json.dumps(marker)] = raw
        for path in case.get("delete") or ():
            msg.pop(path, None)
        text = json.dumps(msg, ensure_ascii=False)
        for marker, raw in raws.items():
            text = text.replace(marker, raw)
        body = text.encode("utf-8")
    for k, v in (case.get("bytes_subst") or {}).items():
        body = body.replace(k.encode(), bytes.fromhex(v))
    if "prefix_hex" in case:
        body = bytes.fromhex(case["prefix_hex"]) + body
    mid = case.get("message_id", ctx["@JOB@"])
    return body, mid, case.get("routing_key", "lora"), case.get("headers")


def publish(body, message_id, routing_key="lora", headers=None, mandatory=True,
            correlation_id=None, reply_to=None):
    import pika
    conn = h.amqp_connection()
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        props = pika.BasicProperties(content_type="application/json", delivery_mode=2,
                                     message_id=message_id, headers=headers,
                                     correlation_id=correlation_id, reply_to=reply_to)
        ch.basic_publish("trainq.jobs", routing_key, body, props, mandatory=mandatory)
    finally:
        conn.close()


def job_row(job_id):
    out = tqenv.psql("SELECT row_to_json(j) FROM training_jobs j WHERE id = :'id'",
                     variables={"id": job_id})
    return json.loads(out) if out else None


def containers_of_job(job_id):
    flt = urllib.parse.quote(json.dumps({"label": [f"trainq.job={job_id}"]}))
    st, lst = tqenv.docker("GET", f"/containers/json?all=1&filters={flt}")
    return lst or []


class HostileAmqpTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        h.purge_queue()
        h.purge_queue(DEAD)
        cls.tmp = tempfile.mkdtemp(prefix="tq-hostile-amqp-")
        cls.root = os.path.join(cls.tmp, "datasets")
        os.makedirs(cls.root)
        cls.user = "hamqp-" + uuid.uuid4().hex[:10]
        cls.other = "hamqp-other-" + uuid.uuid4().hex[:10]
        cls.users = [cls.user, cls.other]
        cls.ds = cls.dataset(cls.user)
        cls.other_ds = cls.dataset(cls.other)
        cls.worker = "hostile-amqp-" + uuid.uuid4().hex[:6]
        env = {"TRAINQ_WORKER_ID": cls.worker, "TRAINQ_SLOTS": 2, "TRAINQ_GPUS": "none",
               "TRAINQ_DATASETS_ROOT": cls.root, "TRAINQ_DATA_DIR": os.path.join(cls.tmp, "data"),
               "TRAINQ_HF_CACHE_DIR": os.path.join(cls.tmp, "hf"),
               "TRAINQ_TRAINING_IMAGE": tqenv.TRAINING_IMAGE,
               "TRAINQ_TRAINING_CMD": "--config /workspace/config.json",
               "TRAINQ_METRICS_ADDR": "127.0.0.1:0", "TRAINQ_HEARTBEAT_SECONDS": 1,
               "TRAINQ_LEASE_SECONDS": 6, "TRAINQ_SWEEP_SECONDS": 1,
               "TRAINQ_STOP_GRACE_SECONDS": 2, "TRAINQ_LOG_LEVEL": "info"}
        cls.env = env
        cls.dead_procs = []  # consumers that died during a test (reported at the end)
        cls.start_consumer()

    @classmethod
    def start_consumer(cls):
        cls.c = h.Program("consumer/trainq-consumer", env=cls.env, name="consumer-hostile").start()
        cls.metrics_port = cls.c.wait_event("consumer.starting", timeout=30).get("metrics_port")
        cls.c.wait_event("consumer.ready", timeout=30)

    def setUp(self):
        # A consumer killed by an earlier case is replaced so that the other tests still
        # say something; the death itself fails that case and tearDownClass.
        if not self.c.running():
            type(self).dead_procs.append(self.c)
            # the message that killed it is redelivered and would kill the next one too
            h.purge_queue()
            type(self).start_consumer()

    @classmethod
    def dataset(cls, user, duration=0.5):
        ds = str(uuid.uuid4())
        rel = f"{user}/{ds}"
        os.makedirs(os.path.join(cls.root, rel))
        with open(os.path.join(cls.root, rel, "trainer.env"), "w") as f:
            f.write(f"DURATION={duration}\nEXIT_CODE=0\nMESSAGE=hostile done\nSTEPS=2\n")
        with open(os.path.join(cls.root, rel, "0001.png"), "wb") as f:  # the preflight's image
            f.write(b"\x89PNG\r\n\x1a\n")
        tqenv.psql("INSERT INTO datasets (id, user_id, name, storage_path) "
                   "VALUES (:'id', :'u', 'd', :'p')", variables={"id": ds, "u": user, "p": rel})
        return ds

    @classmethod
    def tearDownClass(cls):
        deaths = []
        for p in cls.dead_procs:
            deaths.append(f"consumer died during the run (exit {p.proc.returncode}):\n"
                          + p.stderr_text()[-3000:])
            p.cleanup()
        try:
            code = cls.c.stop(signal.SIGTERM, timeout=30)
            text = cls.c.stderr_text()
            found = cls.c.sanitizer_report()
        finally:
            flt = urllib.parse.quote(json.dumps({"label": [f"trainq.worker={cls.worker}"]}))
            st, lst = tqenv.docker("GET", f"/containers/json?all=1&filters={flt}")
            for ct in lst or []:
                tqenv.remove_container(ct["Id"])
            tqenv.psql("UPDATE training_jobs SET status = 'cancelled', completed_at = now() "
                       "WHERE user_id = ANY(string_to_array(:'u', ',')) "
                       "AND status NOT IN ('completed', 'failed', 'cancelled')",
                       variables={"u": ",".join(cls.users)})
            cls.c.cleanup()
            shutil.rmtree(cls.tmp, ignore_errors=True)
        assert not deaths, "\n".join(deaths)
        assert code == 0, f"consumer exited {code} on SIGTERM:\n{text[-4000:]}"
        assert not found, f"sanitizer report in consumer stderr:\n{text[-8000:]}"

    def ctx(self, case_id=""):
        return {"@JOB2@": str(uuid.uuid4()), "@JOB@": str(uuid.uuid4()), "@USER@": self.user,
                "@DS@": self.ds, "@CASE@": case_id}

    def assert_alive(self):
        self.assertTrue(self.c.running(), "consumer died:\n" + self.c.stderr_text()[-4000:])
        r = h.http_once(self.metrics_port, "GET", "/healthz", timeout=10)
        self.assertEqual(r.status, 200, r)

    def wait_status(self, job_id, statuses, timeout=60):
        return h.wait_until(lambda: (j := job_row(job_id)) and j["status"] in statuses and j,
                            timeout=timeout, interval=0.2, what=f"job {job_id} in {statuses}")

    def valid_message(self, dataset=None, user=None, job_id=None):
        return {"schema": "trainq.job.v1", "job_id": job_id or str(uuid.uuid4()),
                "user_id": user or self.user, "dataset_id": dataset or self.ds,
                "name": "hostile valid", "type": "lora", "base_model": "gpt2",
                "config": {"steps": 100}}

    # ------------------------------------------------------------ the corpus

    def test_corpus_is_dead_lettered_with_reasons(self):
        with open(CORPUS, encoding="utf-8") as f:
            corpus = [json.loads(line) for line in f if line.strip()]
        self.assertGreaterEqual(len(corpus), 50)
        sent = {}  # body -> (case, job ids, message_id)
        t0 = time.monotonic()
        for case in corpus:
            ctx = self.ctx(case["id"])
            body, mid, rk, headers = build(case, ctx)
            self.assertNotIn(body, sent, f"{case['id']}: body not unique in the corpus")
            sent[body] = (case, (ctx["@JOB@"], ctx["@JOB2@"]), mid)
            publish(body, mid, rk, headers)
        got = h.get_messages(DEAD, want=lambda ms: len(ms) >= len(corpus), timeout=40)
        took = time.monotonic() - t0
        by_body = {}
        for props, body in got:
            by_body.setdefault(body, []).append(props)
        failures = []
        for body, (case, jobs, mid) in sent.items():
            with self.subTest(case["id"]):
                probs = []
                props = by_body.get(body)
                if not props:
                    row = job_row(jobs[0])
                    probs.append("not dead-lettered" + (
                        f" (job row created: status {row['status']}, "
                        f"reason {row.get('error_message')!r})" if row else ""))
                else:
                    p = props[0]
                    if len(props) > 1:
                        probs.append(f"dead-lettered {len(props)} times")
                    reason = (p.headers or {}).get("x-trainq-reason") or ""
                    if isinstance(reason, bytes):
                        reason = reason.decode(errors="replace")
                    if case["reason"].lower() not in reason.lower():
                        probs.append(f"x-trainq-reason {reason[:200]!r} lacks {case['reason']!r}")
                    if "all good" in reason:
                        probs.append("the publisher's forged x-trainq-reason survived")
                    if mid and p.message_id != mid:
                        probs.append(f"message_id changed to {p.message_id!r}")
                for j in jobs:
                    if job_row(j) is not None and props:
                        probs.append(f"dead-lettered but a job row {j} exists")
                if probs:
                    failures.append(f"{case['id']}: " + "; ".join(probs))
                self.assertEqual(probs, [], f"{case['id']} ({case.get('why')})")
        print(f"\nhostile amqp corpus: {len(corpus)} messages, {len(got)} dead-lettered, "
              f"{len(failures)} failing, {took:.1f}s")
        for f in failures:
            print("  FAIL " + f)
        if not self.c.running():
            text = self.c.stderr_text()
            last = [e for e in self.c.events("job.dead_lettered")][-1:] or [None]
            self.fail("the consumer died during the corpus (the last message it dead-lettered "
                      f"had message_id {last[0] and last[0].get('message_id')!r}; the first case "
                      f"not dead-lettered above is the likely culprit):\n{text[-3000:]}")
        self.assertEqual(len(self.c.events("job.started")), 0,
                         "an invalid message started a container")
        self.assert_alive()

    # ------------------------------------------------------------ special cases

    def test_duplicate_deliveries_run_once(self):
        m = self.valid_message()
        body = json.dumps(m).encode()
        for _ in range(3):
            publish(body, m["job_id"])
        j = self.wait_status(m["job_id"], TERMINAL)
        self.assertEqual(j["status"], "completed", j)
        # and once more after it finished: dropped, the job stays as it is
        dups = len(self.c.events("job.duplicate"))
        publish(body, m["job_id"])
        self.c.wait_event("job.duplicate", after=dups, timeout=20)
        claims = tqenv.psql("SELECT count(*) FROM job_events WHERE job_id = :'id' "
                            "AND to_status = 'pending'", variables={"id": m["job_id"]})
        self.assertEqual(claims, "1", "a duplicate delivery ran the job again")
        self.assertEqual(job_row(m["job_id"])["status"], "completed")
        self.assertEqual(job_row(m["job_id"])["attempts"], 1)
        started = [e for e in self.c.events("job.started") if e.get("job_id") == m["job_id"]]
        self.assertEqual(len(started), 1)

    def test_job_id_of_another_users_job_is_dead_lettered_and_that_job_unchanged(self):
        victim = str(uuid.uuid4())
        tqenv.psql("INSERT INTO training_jobs (id, user_id, dataset_id, name, type, base_model, "
                   "config, trigger_words, message, status, completed_at) VALUES (:'id', :'u', "
                   ":'d', 'victim job', 'lora', 'gpt2', '{\"steps\": 100}', '{v}', '{}', "
                   "'completed', now())",
                   variables={"id": victim, "u": self.other, "d": self.other_ds})
        before = job_row(victim)
        h.purge_queue(DEAD)
        # the attacker's own user and dataset, the victim's job id
        m = self.valid_message(job_id=victim)
        body = json.dumps(m).encode()
        publish(body, victim)
        # same user as the victim but another dataset: also a mismatch
        m2 = self.valid_message(job_id=victim, user=self.other, dataset=self.dataset(self.other))
        body2 = json.dumps(m2).encode()
        publish(body2, victim)
        got = h.get_messages(DEAD, want=lambda ms: len(ms) >= 2, timeout=30)
        reasons = {b: (p.headers or {}).get("x-trainq-reason", "") for p, b in got}
        self.assertIn(body, reasons, "a message naming another user's job was not dead-lettered")
        self.assertIn(body2, reasons, "a message naming a job of another dataset was not dead-lettered")
        for b in (body, body2):
            self.assertIn("another user or dataset", reasons[b])
        self.assertEqual(job_row(victim), before, "the victim's job was changed")
        self.assertEqual(containers_of_job(victim), [])

    def test_every_failure_of_a_message_is_in_its_reason_uncut(self):
        """x-trainq-reason names every failing field (at most 32, docs/message-contract.md),
        however long their names: not a line cut at a fixed size in the middle of one."""
        m = self.valid_message()
        for i in range(40):
            m[f"unknown_field_with_a_rather_long_name_{i:02d}_" + "x" * 20] = i
        body = json.dumps(m).encode()
        h.purge_queue(DEAD)
        publish(body, m["job_id"])
        got = h.get_messages(DEAD, want=lambda ms: len(ms) >= 1, timeout=30)
        reason = (got[0][0].headers or {}).get("x-trainq-reason", "")
        self.assertTrue(reason.startswith("invalid message: "), reason)
        failures = reason[len("invalid message: "):].split("; ")
        self.assertEqual(len(failures), 32, reason)
        for f in failures:
            self.assertRegex(f, r"^unknown_field_with_a_rather_long_name_\d\d_x{20}: unknown field$")
        self.assertIsNone(job_row(m["job_id"]))
        self.assert_alive()

    def test_a_nul_byte_in_a_property_is_dead_lettered_not_cut(self):
        """As C strings these would end at the NUL: a correlation_id stored short, a
        message_id "<job id>\\0x" taken for the job id. Dead-lettered with the reason."""
        # A queue named as the cut reply_to would be: it must get no reply, nor must the
        # reply queue of a message whose correlation_id holds the NUL.
        replies = "it-nul-replies-" + uuid.uuid4().hex[:8]
        conn = h.amqp_connection()
        try:
            conn.channel().queue_declare(replies, durable=True)
        finally:
            conn.close()
        cases = [("correlation_id", {"correlation_id": "a\nb\x00c", "reply_to": replies}, None),
                 ("message_id", {}, "\x00x"),
                 ("reply_to", {"reply_to": replies + "\x00x"}, None)]
        h.purge_queue(DEAD)
        sent = {}
        for name, props, mid_suffix in cases:
            m = self.valid_message()
            body = json.dumps(m).encode()
            publish(body, m["job_id"] + (mid_suffix or ""), **props)
            sent[body] = (name, m["job_id"])
        got = h.get_messages(DEAD, want=lambda ms: len(ms) >= len(cases), timeout=30)
        reasons = {b: (p.headers or {}).get("x-trainq-reason", "") for p, b in got}
        for body, (name, job_id) in sent.items():
            self.assertEqual(reasons.get(body),
                             f"invalid message: {name}: must not contain a NUL byte")
            self.assertIsNone(job_row(job_id), name)
        # every event row published by now (the relay runs in the consumer), none a reply
        ids = {"j": ",".join(j for _, j in sent.values())}
        h.wait_until(lambda: tqenv.psql("SELECT count(*) FROM outbox WHERE published_at IS NULL"
                                        " AND exchange = 'trainq.events'") == "0",
                     timeout=30, what="the dead letters' events published")
        events = tqenv.psql("SELECT count(*) FROM outbox WHERE exchange = 'trainq.events'"
                            " AND job_id::text = ANY(string_to_array(:'j', ','))",
                            variables=ids)
        self.assertEqual(events, str(len(cases)), "each dead letter has its event")
        replied = tqenv.psql("SELECT count(*) FROM outbox WHERE exchange = ''"
                             " AND job_id::text = ANY(string_to_array(:'j', ','))",
                             variables=ids)
        self.assertEqual(replied, "0", "a reply went to a reply_to cut at its NUL")
        self.assertEqual(h.purge_queue(replies), 0)
        cids = tqenv.psql("SELECT string_agg(DISTINCT coalesce(payload::jsonb->>'correlation_id',"
                          " 'null'), ',') FROM outbox WHERE exchange = 'trainq.events'"
                          " AND job_id::text = ANY(string_to_array(:'j', ','))",
                          variables=ids)
        self.assertEqual(cids, "null", "an event carries a correlation_id cut at its NUL")
        self.assert_alive()

    def test_dataset_of_another_user_or_missing_fails_the_job_without_container(self):
        foreign = self.valid_message(dataset=self.other_ds)
        missing = self.valid_message(dataset=str(uuid.uuid4()))
        publish(json.dumps(foreign).encode(), foreign["job_id"])
        publish(json.dumps(missing).encode(), missing["job_id"])
        j1 = self.wait_status(foreign["job_id"], TERMINAL)
        j2 = self.wait_status(missing["job_id"], TERMINAL)
        self.assertEqual(j1["status"], "failed", j1)
        self.assertIn("belongs to another user", j1["error_message"] or "")
        self.assertEqual(j1["user_id"], self.user)
        self.assertEqual(j2["status"], "failed", j2)
        self.assertIn("not found", j2["error_message"] or "")
        for j in (j1, j2):
            self.assertIsNone(j["container_id"])
            self.assertEqual(containers_of_job(j["id"]), [])

    def test_a_dead_letter_keeps_the_publishers_properties_and_headers(self):
        """An operator fixes a dead letter and publishes it again: it must still carry what
        its publisher set (docs/message-contract.md): every property but user_id, the
        expiration dropped, every header of any type but the broker's own, and trainq's
        reason in place of a forged one. Headers beyond 16 KiB in wire form are a reason of
        their own."""
        import pika
        h.purge_queue(DEAD)
        m = self.valid_message()
        m["config"]["steps"] = 5
        body = json.dumps(m).encode()
        big = self.valid_message()
        big_body = json.dumps(big).encode()
        conn = h.amqp_connection()
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            props = pika.BasicProperties(
                content_type="application/json", content_encoding="identity", delivery_mode=2,
                priority=3, correlation_id="corr-9", reply_to="hostile.replies",
                expiration="600000", message_id=m["job_id"], timestamp=1234567890,
                type="trainq.job.v1", app_id="billing",
                headers={"x-custom": "keep-me", "n": 7, "nested": {"a": [1, "b"]},
                         "x-trainq-reason": "all good"})
            ch.basic_publish("trainq.jobs", "lora", body, props, mandatory=True)
            ch.basic_publish("trainq.jobs", "lora", big_body, pika.BasicProperties(
                content_type="application/json", delivery_mode=2, message_id=big["job_id"],
                headers={"a": "v" * 9000, "b": "v" * 9000}), mandatory=True)
        finally:
            conn.close()
        got = dict((b, p) for p, b in h.get_messages(DEAD, want=lambda ms: len(ms) >= 2,
                                                        timeout=30))
        self.assertIn(body, got)
        p = got[body]
        kept = {k: getattr(p, k) for k in ("content_type", "content_encoding", "delivery_mode",
                                           "priority", "correlation_id", "reply_to",
                                           "message_id", "timestamp", "type", "app_id",
                                           "expiration", "user_id")}
        self.assertEqual(kept, {
            "content_type": "application/json", "content_encoding": "identity",
            "delivery_mode": 2, "priority": 3, "correlation_id": "corr-9",
            "reply_to": "hostile.replies", "message_id": m["job_id"], "timestamp": 1234567890,
            "type": "trainq.job.v1", "app_id": "billing", "expiration": None, "user_id": None})
        hd = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in p.headers.items()}
        self.assertEqual((hd["x-custom"], hd["n"], hd["nested"]), ("keep-me", 7, {"a": [1, "b"]}))
        self.assertIn("config.steps: must be between", hd["x-trainq-reason"])
        self.assertEqual(hd["x-original-routing-key"], "lora")
        self.assertIn(big_body, got, "a message with 18 KB of headers was not dead-lettered")
        self.assertEqual(got[big_body].headers.get("x-trainq-reason"),
                         "invalid message: headers: must be at most 16384 bytes")
        self.assertIsNone(job_row(big["job_id"]))

    def test_unroutable_routing_keys_are_returned_to_the_publisher(self):
        import pika
        m = self.valid_message()
        for rk in ("gan", "", "LORA", "trainq.jobs.dead", "#"):
            with self.subTest(rk):
                with self.assertRaises(pika.exceptions.UnroutableError):
                    publish(json.dumps(m).encode(), m["job_id"], routing_key=rk)
        time.sleep(1)
        self.assertIsNone(job_row(m["job_id"]))

    def test_zz_consumer_is_alive_and_runs_a_valid_job(self):
        self.assert_alive()
        m = self.valid_message()
        publish(json.dumps(m).encode(), m["job_id"])
        j = self.wait_status(m["job_id"], TERMINAL)
        self.assertEqual(j["status"], "completed", j)
        self.assert_alive()


if __name__ == "__main__":
    unittest.main()
