"""trainq-producer against real Postgres and RabbitMQ.

Every status code of POST /api/training/submit and of the job API, the seed's curl example
end to end (HTTP → Postgres → outbox relay → RabbitMQ), tokens minted by PyJWT (an
implementation independent of ours), the shared rate limit, idempotent retries, keep-alive,
CORS, response shapes checked against docs/openapi.yaml, and the faults: no loss when the
producer is killed before publishing, 503 (not a hang) while Postgres is down.

Needs TRAINQ_BIN_DIR (the CMake build dir), TRAINQ_DATABASE_URL (migrated),
TRAINQ_AMQP_URL and TRAINQ_SERVICES (scripts/services.sh). Tests run serially.
"""

import datetime
import json
import os
import signal
import socket
import threading
import tempfile
import time
import unittest
import uuid

import tqharness as h

PRODUCER = "producer/trainq-producer"
SECRET = "producer-test-secret-" + uuid.uuid4().hex
SEED_DATASET = "550e8400-e29b-41d4-a716-446655440000"
QUEUE = "trainq.jobs"

# The seed's curl example body, byte for byte.
SEED_BODY = """{
    "dataset_id": "550e8400-e29b-41d4-a716-446655440000",
    "name": "My SDXL LoRA",
    "type": "lora",
    "base_model": "stabilityai/sdxl-base-1.0",
    "config": {
      "learning_rate": 0.0001,
      "batch_size": 2,
      "steps": 1000,
      "resolution": 512,
      "lora_rank": 16,
      "lora_alpha": 32
    },
    "trigger_words": ["my-concept"]
  }"""

JSON_HEADERS = {"Content-Type": "application/json"}


def new_user():
    return "user-" + uuid.uuid4().hex[:12]


def add_dataset(user, dataset_id=None):
    dataset_id = dataset_id or str(uuid.uuid4())
    h.psql("INSERT INTO datasets (id, user_id, name, storage_path) VALUES "
           "(:'id', :'user', 'test dataset', :'path') "
           "ON CONFLICT (id) DO UPDATE SET user_id = EXCLUDED.user_id",
           variables={"id": dataset_id, "user": user, "path": "ds/" + dataset_id})
    return dataset_id


def body_for(dataset_id, **over):
    b = {"dataset_id": dataset_id, "type": "lora", "base_model": "stabilityai/sdxl-base-1.0",
         "config": {}}
    b.update(over)
    return b


def producer_env(**extra):
    env = {"TRAINQ_HTTP_ADDR": "127.0.0.1:0", "TRAINQ_JWT_ALG": "HS256",
           "TRAINQ_JWT_SECRET": SECRET, "TRAINQ_JWT_PUBLIC_KEY_FILE": None,
           "TRAINQ_JWT_AUDIENCE": None, "TRAINQ_JWT_ISSUER": None,
           "TRAINQ_SUBMIT_RATE_PER_MINUTE": "1000", "TRAINQ_READ_RATE_PER_MINUTE": "100000",
           "TRAINQ_CORS_ORIGINS": "*", "TRAINQ_HTTP_THREADS": "4", "TRAINQ_LOG_LEVEL": "info"}
    env.update(extra)
    return env


def start_producer(**extra):
    p = h.Program(PRODUCER, env=producer_env(**extra)).start()
    line = p.wait_event("http.listening", timeout=30)
    p.port = line["port"]
    return p


def stop_producer(test, p):
    """SIGTERM must exit 0 with no sanitizer report."""
    try:
        code = p.stop(signal.SIGTERM, timeout=30)
        test.assertEqual(code, 0, "producer did not exit 0 on SIGTERM:\n"
                         + p.stderr_text()[-3000:])
        p.assert_no_sanitizer_report()
    finally:
        p.cleanup()


def wait_ready(port, timeout=60):
    return h.wait_until(lambda: h.http_once(port, "GET", "/readyz").status == 200,
                        timeout=timeout, interval=0.25, what="/readyz 200")


def outbox_published(job_id):
    return h.psql("SELECT published_at IS NOT NULL FROM outbox WHERE job_id = :'id'"
                  " AND exchange = 'trainq.jobs'",
                  variables={"id": job_id})


class DocChecks:
    doc = None

    def assertShape(self, resp, path, method):
        if DocChecks.doc is None:
            DocChecks.doc = h.load_openapi()
        schema = h.response_schema(DocChecks.doc, path, method, resp.status)
        if schema is None:
            return
        problems = h.check_schema(DocChecks.doc, schema, resp.json)
        self.assertEqual(problems, [], f"{method} {path} {resp.status} does not match "
                         f"docs/openapi.yaml: {resp.raw[:500]!r}")


# ====================================================================== shared producer

class ProducerApiTest(unittest.TestCase, DocChecks):
    @classmethod
    def setUpClass(cls):
        cls.p = start_producer()
        cls.port = cls.p.port
        wait_ready(cls.port)

    @classmethod
    def tearDownClass(cls):
        code = cls.p.stop(signal.SIGTERM, timeout=30)
        text = cls.p.stderr_text()
        found = cls.p.sanitizer_report()
        cls.p.cleanup()
        assert code == 0, f"producer exited {code} on SIGTERM:\n{text[-3000:]}"
        assert not found, f"sanitizer report in producer stderr:\n{text[-6000:]}"

    def setUp(self):
        self.user = new_user()
        self.token = h.mint(self.user, SECRET)
        self.c = h.Http(self.port)

    def tearDown(self):
        self.c.close()

    def submit(self, body, token=None, headers=None, raw=None):
        hdrs = dict(JSON_HEADERS)
        hdrs.update(headers or {})
        data = raw if raw is not None else json.dumps(body)
        return self.c.request("POST", "/api/training/submit", body=data, headers=hdrs,
                              token=self.token if token is None else token)

    def get(self, path, token=None):
        return self.c.request("GET", path, token=self.token if token is None else token)

    # ------------------------------------------------------------ the seed's contract

    def test_seed_curl_example_is_accepted_and_its_message_arrives_on_the_queue(self):
        add_dataset(self.user, SEED_DATASET)
        h.purge_queue(QUEUE)
        r = self.submit(None, raw=SEED_BODY)
        self.assertEqual(r.status, 200, r)
        self.assertShape(r, "/api/training/submit", "POST")
        self.assertEqual(r.json["success"], True)
        self.assertEqual(r.json["status"], "queued")
        self.assertEqual(r.json["message"], "Training job queued")
        job_id = r.json["job_id"]
        self.assertEqual(str(uuid.UUID(job_id)), job_id)

        # durable before the reply: the row and its outbox entry exist
        row = h.psql("SELECT status, source, name, type, base_model, config::text, "
                     "array_to_json(trigger_words)::text, user_id FROM training_jobs "
                     "WHERE id = :'id'", variables={"id": job_id}).split("|")
        self.assertEqual(row[:5], ["queued", "http", "My SDXL LoRA", "lora",
                                   "stabilityai/sdxl-base-1.0"])
        self.assertEqual(json.loads(row[5]), {"learning_rate": 0.0001, "batch_size": 2,
                                              "steps": 1000, "resolution": 512,
                                              "lora_rank": 16, "lora_alpha": 32})
        self.assertEqual(json.loads(row[6]), ["my-concept"])
        self.assertEqual(row[7], self.user)

        msgs = h.get_messages(QUEUE, want=lambda m: any(
            p.message_id == job_id for p, _ in m), timeout=20)
        mine = [(p, b) for p, b in msgs if p.message_id == job_id]
        self.assertEqual(len(mine), 1, "exactly one message for the job")
        props, body = mine[0]
        self.assertEqual(props.content_type, "application/json")
        self.assertEqual(props.delivery_mode, 2)
        msg = json.loads(body)
        self.assertEqual(msg["schema"], "trainq.job.v1")
        self.assertEqual(msg["job_id"], job_id)
        self.assertEqual(msg["user_id"], self.user)
        self.assertEqual(msg["dataset_id"], SEED_DATASET)
        self.assertEqual(msg["name"], "My SDXL LoRA")
        self.assertEqual(msg["type"], "lora")
        self.assertEqual(msg["base_model"], "stabilityai/sdxl-base-1.0")
        self.assertEqual(msg["config"], {"learning_rate": 0.0001, "batch_size": 2,
                                         "steps": 1000, "resolution": 512, "lora_rank": 16,
                                         "lora_alpha": 32})
        self.assertEqual(msg["trigger_words"], ["my-concept"])
        self.assertTrue(msg["submitted_at"].endswith("Z"))
        h.wait_until(lambda: outbox_published(job_id) == "t", what="outbox row published")

    def test_the_row_keeps_the_published_message_byte_for_byte_and_a_freed_slot_republishes_nothing(self):
        """The row keeps the body the producer published (tq_insert_job): it is what a
        free slot picks and launches. A freed slot (tq_release_parked, as a consumer's job
        end runs it) only wakes the pickers: nothing is published again."""
        ds = add_dataset(self.user)
        h.purge_queue(QUEUE)
        r = self.submit(body_for(ds, name="Grüße \"quoted\" ✓", config={"steps": 300,
                                 "learning_rate": 0.0003}, trigger_words=["ü", "a b"]))
        self.assertEqual(r.status, 200, r)
        job_id = r.json["job_id"]
        self.addCleanup(h.psql, "UPDATE training_jobs SET status = 'cancelled', "
                        "completed_at = now() WHERE id = :'id'", variables={"id": job_id})

        def published():
            msgs = h.get_messages(QUEUE, want=lambda m: any(
                p.message_id == job_id for p, _ in m), timeout=20)
            mine = [b for p, b in msgs if p.message_id == job_id]
            self.assertEqual(len(mine), 1)
            return mine[0]

        first = published()
        self.assertEqual(h.psql("SELECT message FROM training_jobs WHERE id = :'id'",
                                variables={"id": job_id}).encode(), first)
        # its user has room: the job is counted as runnable, and nothing is republished
        self.assertEqual(h.psql("SELECT tq_release_parked(:'u')", variables={"u": self.user}),
                         "1")
        self.assertEqual(h.psql("SELECT count(DISTINCT payload) || '/' || count(*) FROM outbox "
                                "WHERE job_id = :'id' AND exchange = 'trainq.jobs'",
                                variables={"id": job_id}), "1/1")

    def test_defaults_of_the_seed_are_applied_stored_and_published(self):
        ds = add_dataset(self.user)
        h.purge_queue(QUEUE)
        r = self.submit(body_for(ds, type="dreambooth", config={"steps": 200}))
        self.assertEqual(r.status, 200, r)
        job_id = r.json["job_id"]
        cfg = json.loads(h.psql("SELECT config::text FROM training_jobs WHERE id = :'id'",
                                variables={"id": job_id}))
        want = {"learning_rate": 0.0001, "batch_size": 1, "steps": 200, "resolution": 512,
                "lora_rank": 16, "lora_alpha": 32}
        self.assertEqual(cfg, want)
        msgs = h.get_messages(QUEUE, want=lambda m: any(p.message_id == job_id for p, _ in m))
        msg = [json.loads(b) for p, b in msgs if p.message_id == job_id][0]
        self.assertEqual(msg["config"], want)
        self.assertEqual(msg["type"], "dreambooth")
        self.assertEqual(msg["trigger_words"], [])
        self.assertEqual(msg["name"], "dreambooth stabilityai/sdxl-base-1.0")
        rk = h.psql("SELECT routing_key FROM outbox WHERE job_id = :'id'"
                    " AND exchange = 'trainq.jobs'",
                    variables={"id": job_id})
        self.assertEqual(rk, "dreambooth")

    # ------------------------------------------------------------ 400 / 413 / 415

    def test_every_failing_field_is_listed_in_one_400(self):
        r = self.submit({"dataset_id": "nope", "name": "", "type": "gan",
                         "base_model": "not a model!",
                         "config": {"learning_rate": 1, "batch_size": 2.5, "steps": 5,
                                    "resolution": 500, "lora_rank": 999, "lora_alpha": "x",
                                    "stpes": 1},
                         "trigger_words": ["ok", ""], "extra": 1})
        self.assertEqual(r.status, 400, r)
        self.assertShape(r, "/api/training/submit", "POST")
        self.assertEqual(r.json["error"], "validation failed")
        fields = [d["field"] for d in r.json["details"]]
        for f in ("dataset_id", "name", "type", "base_model", "config.learning_rate",
                  "config.batch_size", "config.steps", "config.resolution", "config.lora_rank",
                  "config.lora_alpha", "config.stpes", "trigger_words[1]", "extra"):
            self.assertIn(f, fields)
        self.assertEqual(h.psql("SELECT count(*) FROM training_jobs WHERE user_id = :'u'",
                                variables={"u": self.user}), "0")

    def test_missing_required_fields_are_each_reported(self):
        r = self.submit({})
        self.assertEqual(r.status, 400, r)
        fields = {d["field"] for d in r.json["details"]}
        self.assertEqual(fields, {"dataset_id", "type", "base_model", "config"})

    def test_unparseable_json_is_400_invalid_json_with_details(self):
        r = self.submit(None, raw='{"dataset_id": ')
        self.assertEqual(r.status, 400, r)
        self.assertShape(r, "/api/training/submit", "POST")
        self.assertEqual(r.json["error"], "invalid JSON")
        self.assertEqual(r.json["details"][0]["field"], "body")
        r = self.submit(None, raw="[1,2]")
        self.assertEqual(r.status, 400, r)
        self.assertEqual(r.json["details"][0]["field"], "body")

    def test_body_over_the_cap_is_413(self):
        big = json.dumps(body_for(str(uuid.uuid4()), name="x" * 70000))
        r = h.refused_or(self.port, "POST", "/api/training/submit", body=big,
                         headers=JSON_HEADERS, token=self.token)
        if r is not None:  # None: refused and closed before the body was all sent
            self.assertEqual(r.status, 413, r)
            self.assertShape(r, "/api/training/submit", "POST")

    def test_non_json_content_type_is_415(self):
        ds = add_dataset(self.user)
        r = self.submit(body_for(ds), headers={"Content-Type": "text/plain"})
        self.assertEqual(r.status, 415, r)
        self.assertShape(r, "/api/training/submit", "POST")
        # a charset parameter is fine
        r = self.submit(body_for(ds), headers={"Content-Type": "application/json; charset=utf-8"})
        self.assertEqual(r.status, 200, r)

    # ------------------------------------------------------------ 403 / 404

    def test_unknown_dataset_is_404_and_another_users_dataset_is_403(self):
        r = self.submit(body_for(str(uuid.uuid4())))
        self.assertEqual(r.status, 404, r)
        self.assertEqual(r.json, {"success": False, "error": "dataset not found"})
        self.assertShape(r, "/api/training/submit", "POST")
        other = add_dataset(new_user())
        r = self.submit(body_for(other))
        self.assertEqual(r.status, 403, r)
        self.assertEqual(r.json, {"success": False, "error": "dataset belongs to another user"})
        self.assertShape(r, "/api/training/submit", "POST")

    # ------------------------------------------------------------ 401

    def assert401(self, r, invalid_token=True):
        self.assertEqual(r.status, 401, r)
        self.assertShape(r, "/api/training/submit", "POST")
        www = r.header("WWW-Authenticate")
        self.assertIsNotNone(www)
        self.assertTrue(www.startswith("Bearer"), www)
        if invalid_token:
            self.assertIn('error="invalid_token"', www)
        else:
            self.assertNotIn("error=", www)

    def test_requests_without_a_valid_token_are_401_with_www_authenticate(self):
        ds = add_dataset(self.user)
        body = json.dumps(body_for(ds))
        r = self.c.request("POST", "/api/training/submit", body=body, headers=JSON_HEADERS)
        self.assert401(r, invalid_token=False)
        cases = {
            "garbage": "not.a.token",
            "alg none": h.mint_none(self.user),
            "wrong key": h.mint(self.user, "some-other-secret-0123456789"),
            "expired": h.mint(self.user, SECRET, exp_in=-3600),
            "no exp": h.mint(self.user, SECRET, exp_in=None),
            "not yet valid": h.mint(self.user, SECRET, nbf=int(time.time()) + 3600),
            "HS512 when HS256 is pinned": h.mint(self.user, SECRET, alg="HS512"),
            "no sub": h.mint("", SECRET),
        }
        for what, tok in cases.items():
            with self.subTest(what):
                r = self.c.request("POST", "/api/training/submit", body=body,
                                   headers=JSON_HEADERS, token=tok)
                self.assert401(r)
        # No bearer token at all (another scheme, or the scheme alone): a bare challenge,
        # no error code (RFC 6750 section 3.1), and the body says which.
        for auth, msg in (("Basic dXNlcjpwYXNz", "authorization scheme must be bearer"),
                          ("Bearer ", "missing bearer token"),
                          ("Bearer    ", "missing bearer token")):
            with self.subTest(auth):
                r = self.c.request("POST", "/api/training/submit", body=body,
                                   headers={**JSON_HEADERS, "Authorization": auth})
                self.assert401(r, invalid_token=False)
                self.assertEqual(r.json["error"], msg)
        self.assertEqual(h.psql("SELECT count(*) FROM training_jobs WHERE user_id = :'u'",
                                variables={"u": self.user}), "0")
        # the job API is protected the same way
        r = self.c.request("GET", "/api/training/jobs")
        self.assertEqual(r.status, 401)

    # ------------------------------------------------------------ idempotency

    def test_idempotent_retry_returns_the_same_job_and_creates_nothing(self):
        ds = add_dataset(self.user)
        key = "retry-" + uuid.uuid4().hex
        r1 = self.submit(body_for(ds, config={"steps": 300}), headers={"Idempotency-Key": key})
        self.assertEqual(r1.status, 200, r1)
        # same request spelled differently (explicit default, other key order) still matches
        r2 = self.submit({"config": {"steps": 300, "batch_size": 1}, "type": "lora",
                          "base_model": "stabilityai/sdxl-base-1.0", "dataset_id": ds},
                         headers={"Idempotency-Key": key})
        self.assertEqual(r2.status, 200, r2)
        self.assertShape(r2, "/api/training/submit", "POST")
        self.assertEqual(r2.json["job_id"], r1.json["job_id"])
        self.assertEqual(r2.header("Idempotent-Replayed"), "true")
        n = h.psql("SELECT count(*) FROM training_jobs WHERE user_id = :'u'",
                   variables={"u": self.user})
        self.assertEqual(n, "1")
        self.assertEqual(h.psql("SELECT count(*) FROM outbox WHERE job_id = :'id'"
                                " AND exchange = 'trainq.jobs'",
                                variables={"id": r1.json["job_id"]}), "1")
        r3 = self.submit(body_for(ds, config={"steps": 400}), headers={"Idempotency-Key": key})
        self.assertEqual(r3.status, 422, r3)
        self.assertShape(r3, "/api/training/submit", "POST")
        self.assertEqual(r3.json["error"], "idempotency key reused with a different request")
        # keys are per user
        other = new_user()
        ds2 = add_dataset(other)
        r4 = self.submit(body_for(ds2, config={"steps": 300}), token=h.mint(other, SECRET),
                         headers={"Idempotency-Key": key})
        self.assertEqual(r4.status, 200, r4)
        self.assertNotEqual(r4.json["job_id"], r1.json["job_id"])
        # a malformed key is a validation error
        r5 = self.submit(body_for(ds), headers={"Idempotency-Key": "x" * 129})
        self.assertEqual(r5.status, 400, r5)
        self.assertEqual(r5.json["details"][0]["field"], "Idempotency-Key")

    def test_concurrent_retries_with_one_key_make_one_job(self):
        ds = add_dataset(self.user)
        key = "race-" + uuid.uuid4().hex
        body = json.dumps(body_for(ds))
        results = []

        def one():
            r = h.http_once(self.port, "POST", "/api/training/submit", body=body,
                            headers={**JSON_HEADERS, "Idempotency-Key": key}, token=self.token)
            results.append((r.status, r.json.get("job_id")))

        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual([s for s, _ in results], [200] * 8, results)
        self.assertEqual(len({j for _, j in results}), 1, results)
        self.assertEqual(h.psql("SELECT count(*) FROM training_jobs WHERE user_id = :'u'",
                                variables={"u": self.user}), "1")

    # ------------------------------------------------------------ server behaviour

    def test_one_keep_alive_connection_serves_many_requests(self):
        ds = add_dataset(self.user)
        statuses = []
        for r in (self.submit(body_for(ds)),
                  self.submit({}),
                  self.c.request("POST", "/api/training/submit", body="{}",
                                 headers=JSON_HEADERS),
                  self.get("/api/training/jobs"),
                  self.get("/api/training/jobs/" + str(uuid.uuid4())),
                  self.c.request("GET", "/nowhere"),
                  self.c.request("PUT", "/api/training/submit", body="{}"),
                  self.submit(body_for(str(uuid.uuid4()))),
                  self.c.request("GET", "/healthz")):
            statuses.append(r.status)
            self.assertNotEqual((r.header("Connection") or "").lower(), "close", r)
        self.assertEqual(statuses, [200, 400, 401, 200, 404, 404, 405, 404, 200])
        self.assertEqual(self.c.connects, 1, "the connection was not kept alive")

    def test_request_id_is_echoed_when_sane_and_generated_otherwise(self):
        r = self.c.request("GET", "/healthz", headers={"X-Request-Id": "abc-123.X_y"})
        self.assertEqual(r.header("X-Request-Id"), "abc-123.X_y")
        line = self.p.wait_event("http.request",
                                 pred=lambda e: e.get("request_id") == "abc-123.X_y")
        self.assertEqual(line["status"], 200)
        self.assertEqual(line["route"], "/healthz")
        self.assertEqual(line["method"], "GET")
        self.assertIn("ms", line)
        for bad in ("has space", "x" * 65, "semi;colon"):
            r = self.c.request("GET", "/healthz", headers={"X-Request-Id": bad})
            rid = r.header("X-Request-Id")
            self.assertNotEqual(rid, bad)
            self.assertTrue(rid and len(rid) <= 64)
        r = self.get("/api/training/jobs")
        rid = r.header("X-Request-Id")
        line = self.p.wait_event("http.request", pred=lambda e: e.get("request_id") == rid)
        self.assertEqual(line["user"], self.user)

    def test_oversized_headers_and_urls_are_refused_by_the_server(self):
        r = h.refused_or(self.port, "GET", "/healthz", headers={"X-Big": "a" * 60000})
        self.assertIn(r.status if r else 431, (431,))
        r = h.refused_or(self.port, "GET", "/healthz?" + "a" * 60000)
        self.assertIn(r.status if r else 414, (414, 431))
        self.assertEqual(h.http_once(self.port, "GET", "/healthz").status, 200)

    def test_unknown_route_is_404_and_wrong_method_is_405_with_allow(self):
        r = self.c.request("GET", "/api/training/nothing")
        self.assertEqual(r.status, 404)
        self.assertEqual(r.json["success"], False)
        r = self.c.request("GET", "/api/training/submit")
        self.assertEqual(r.status, 405)
        self.assertEqual(r.json["success"], False)
        self.assertIn("POST", r.header("Allow"))
        r = self.c.request("DELETE", "/api/training/jobs")
        self.assertEqual(r.status, 405)
        self.assertIn("GET", r.header("Allow"))

    def test_cors_preflight_on_every_route_and_headers_on_every_response(self):
        for path in ("/api/training/submit", "/api/training/jobs",
                     "/api/training/jobs/" + str(uuid.uuid4()),
                     "/api/training/jobs/" + str(uuid.uuid4()) + "/cancel",
                     "/api/training/jobs/" + str(uuid.uuid4()) + "/events"):
            with self.subTest(path):
                r = self.c.request("OPTIONS", path, headers={
                    "Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
                self.assertEqual(r.status, 204)
                self.assertEqual(r.header("Access-Control-Allow-Origin"), "*")
                self.assertIn("OPTIONS", r.header("Access-Control-Allow-Methods"))
                allow_h = r.header("Access-Control-Allow-Headers")
                for hname in ("Authorization", "Content-Type", "Idempotency-Key",
                              "X-Request-Id"):
                    self.assertIn(hname, allow_h)
                self.assertEqual(r.header("Access-Control-Max-Age"), "600")
        r = self.c.request("OPTIONS", "/api/training/submit")
        self.assertIn("POST", r.header("Access-Control-Allow-Methods"))
        r = self.c.request("POST", "/api/training/submit", body="{}", headers=JSON_HEADERS)
        self.assertEqual(r.status, 401)
        self.assertEqual(r.header("Access-Control-Allow-Origin"), "*")
        # a cross-origin script reads only the headers exposed: every one docs/api.md
        # promises a client
        exposed = {x.strip().lower() for x in r.header("Access-Control-Expose-Headers").split(",")}
        for hname in ("Retry-After", "X-Request-Id", "WWW-Authenticate", "Content-Range",
                      "Accept-Ranges", "Content-Disposition", "X-RateLimit-Limit",
                      "X-RateLimit-Remaining", "Idempotent-Replayed"):
            self.assertIn(hname.lower(), exposed)

    def test_health_ready_and_metrics(self):
        r = self.c.request("GET", "/healthz")
        self.assertEqual(r.status, 200)
        self.assertShape(r, "/healthz", "GET")
        r = self.c.request("GET", "/readyz")
        self.assertEqual(r.status, 200, r)
        self.assertShape(r, "/readyz", "GET")
        ready = dict(r.json)
        # "unknown" only until the relay's first backlog count, moments after start
        self.assertIn(ready.pop("outbox"), ("ok", "unknown"))
        self.assertEqual(ready, {"status": "ready", "postgres": "ok", "amqp": "ok",
                                 "reasons": []})
        self.c.request("GET", "/nowhere")
        # the routes past the first 16 have their own label too (they were all "other")
        self.assertEqual(self.c.request("GET", "/api/admin/workers").status, 401)
        r = self.c.request("GET", "/metrics")
        self.assertEqual(r.status, 200)
        self.assertTrue(r.header("Content-Type").startswith("text/plain"))
        text = r.raw.decode()
        for name in ("trainq_http_requests_total{route=\"/healthz\",code=\"200\"}",
                     "trainq_http_requests_total{route=\"other\",code=\"404\"}",
                     "trainq_http_requests_total{route=\"/api/admin/workers\",code=\"401\"}",
                     "trainq_http_request_duration_seconds_bucket{route=\"/healthz\",le=\"0.001\"}",
                     "trainq_http_request_duration_seconds_bucket{route=\"/healthz\",le=\"+Inf\"}",
                     "trainq_http_request_duration_seconds_count{route=\"/healthz\"}",
                     "trainq_outbox_backlog ", "trainq_relay_published_total ",
                     "trainq_relay_nacks_total ", "trainq_relay_returns_total ",
                     "trainq_relay_reconnects_total ", "trainq_outbox_backlog_age_seconds ",
                     "trainq_relay_amqp_blocked 0", "trainq_relay_amqp_blocked_total 0",
                     "trainq_relay_amqp_blocked_seconds_total 0",
                     "trainq_db_connections_refused_total 0"):
            self.assertIn(name, text)
        # counters are numbers and the histogram is cumulative
        for line in text.splitlines():
            if line and not line.startswith("#"):
                float(line.rsplit(" ", 1)[1])

    # ------------------------------------------------------------ job API

    def submit_job(self, ds, **over):
        r = self.submit(body_for(ds, **over))
        self.assertEqual(r.status, 200, r)
        return r.json["job_id"]

    def test_the_openapi_schema_refuses_what_the_server_refuses(self):
        """A client generated from docs/openapi.yaml must not pass submissions the server
        then refuses: its patterns for base_model, name and trigger_words agree with the
        server on values at each rule's edge (lengths aside: the schema counts characters,
        the server bytes, as the schema says)."""
        import jsonschema  # python3-jsonschema
        doc = h.load_openapi()
        props = h._resolve(doc, {"$ref": "#/components/schemas/Submission"})["properties"]
        ds = add_dataset(self.user)
        cases = {"base_model": ["gpt2", "a/b", "a.b-c_d", "a_", "x" * 96, "o/" + "y" * 96,
                                "a/b--c", "a..b", "ab-", "ab.", "-a", "a/b/c", "x" * 97, "a/"],
                 "name": ["plain", "é ü", "tab\there", "nul\u0000", "del\u007f", "c1\u0085"],
                 "trigger_words": [["ok"], ["new\nline"], ["\u009f"]]}
        for field, values in cases.items():
            schema = dict(props[field])
            for v in values:
                with self.subTest(field=field, value=v):
                    try:
                        jsonschema.validate(v, schema)
                        schema_ok = True
                    except jsonschema.ValidationError:
                        schema_ok = False
                    r = self.submit(body_for(ds, **{field: v}))
                    self.assertIn(r.status, (200, 400), r)
                    self.assertEqual(schema_ok, r.status == 200, r)

    def test_a_body_that_says_it_is_not_json_is_415_on_every_route(self):
        ds = add_dataset(self.user)
        job = self.submit_job(ds)
        for path in (f"/api/training/jobs/{job}/cancel", "/api/training/submit",
                     "/api/training/webhooks"):
            with self.subTest(path):
                r = self.c.request("POST", path, body="{}", token=self.token,
                                   headers={"Content-Type": "text/plain"})
                self.assertEqual(r.status, 415, r)
                # without a token it is the 401 first, as for any other request
                r = self.c.request("POST", path, body="{}",
                                   headers={"Content-Type": "text/plain"})
                self.assertEqual(r.status, 401, r)
        self.assertEqual(self.get(f"/api/training/jobs/{job}").json["job"]["status"], "queued")
        # a route that reads no body takes none whatever its Content-Type says
        r = self.c.request("POST", f"/api/training/jobs/{job}/cancel", token=self.token,
                           headers={"Content-Type": "text/plain"})
        self.assertEqual(r.status, 200, r)

    def test_get_job_shows_the_seed_fields_and_hides_other_users_jobs(self):
        ds = add_dataset(self.user)
        job_id = self.submit_job(ds, name="mine", trigger_words=["a", "b"])
        r = self.get("/api/training/jobs/" + job_id)
        self.assertEqual(r.status, 200, r)
        self.assertShape(r, "/api/training/jobs/{id}", "GET")
        job = r.json["job"]
        self.assertEqual(job["id"], job_id)
        self.assertEqual(job["status"], "queued")
        self.assertEqual(job["name"], "mine")
        self.assertEqual(job["trigger_words"], ["a", "b"])
        self.assertEqual(job["config"]["lora_rank"], 16)
        # upper-case id is the same job
        r = self.get("/api/training/jobs/" + job_id.upper())
        self.assertEqual(r.status, 200)
        r = self.get("/api/training/jobs/" + job_id, token=h.mint(new_user(), SECRET))
        self.assertEqual(r.status, 404)
        self.assertShape(r, "/api/training/jobs/{id}", "GET")
        r = self.get("/api/training/jobs/not-a-uuid")
        self.assertEqual(r.status, 400)
        self.assertShape(r, "/api/training/jobs/{id}", "GET")

    def test_list_is_newest_first_filters_by_status_and_pages_with_a_cursor(self):
        ds = add_dataset(self.user)
        ids = [self.submit_job(ds) for _ in range(5)]
        h.psql("UPDATE training_jobs SET status = 'cancelled', completed_at = now() "
               "WHERE id = :'id'", variables={"id": ids[1]})
        r = self.get("/api/training/jobs?limit=2")
        self.assertEqual(r.status, 200, r)
        self.assertShape(r, "/api/training/jobs", "GET")
        seen = [j["id"] for j in r.json["jobs"]]
        cursor = r.json["next_cursor"]
        self.assertIsNotNone(cursor)
        while cursor:
            r = self.get("/api/training/jobs?limit=2&cursor=" + cursor)
            self.assertEqual(r.status, 200, r)
            self.assertShape(r, "/api/training/jobs", "GET")
            seen += [j["id"] for j in r.json["jobs"]]
            cursor = r.json["next_cursor"]
        self.assertEqual(seen, list(reversed(ids)))
        r = self.get("/api/training/jobs?status=cancelled")
        self.assertEqual([j["id"] for j in r.json["jobs"]], [ids[1]])
        self.assertIsNone(r.json["next_cursor"])
        r = self.get("/api/training/jobs")
        self.assertEqual(len(r.json["jobs"]), 5)
        self.assertEqual(len(self.get("/api/training/jobs?limit=").json["jobs"]), 5,
                         "an empty limit is the default")
        # An encoded NUL must not cut a value short: `queued%00x` is not `queued`, `%00`
        # is not an absent limit.
        for bad, field in (("status=bogus", "status"), ("limit=0", "limit"),
                           ("limit=101", "limit"), ("limit=x", "limit"), ("cursor=zzz", "cursor"),
                           ("status=cancelled%00x", "status"), ("limit=%00", "limit"),
                           ("limit=2%002", "limit"), ("limit=+2", "limit"),
                           ("limit=%202", "limit"), ("limit=99999999999999999999", "limit")):
            with self.subTest(bad):
                r = self.get("/api/training/jobs?" + bad)
                self.assertEqual(r.status, 400, r)
                self.assertShape(r, "/api/training/jobs", "GET")
                self.assertEqual([d["field"] for d in r.json["details"]], [field], r)
        r = self.get(f"/api/training/jobs/{ids[1]}%00x")
        self.assertEqual((r.status, r.json["details"][0]["field"]), (400, "id"), r)

    def test_cancel_queued_at_once_active_on_request_terminal_409(self):
        ds = add_dataset(self.user)
        queued = self.submit_job(ds)
        # updated_at is never before created_at (a fresh row's created_at is the insert's
        # clock, after the transaction's start)
        r = self.c.request("GET", f"/api/training/jobs/{queued}", token=self.token)
        at = {k: datetime.datetime.fromisoformat(r.json["job"][k])
              for k in ("created_at", "updated_at")}
        self.assertGreaterEqual(at["updated_at"], at["created_at"])
        r = self.c.request("POST", f"/api/training/jobs/{queued}/cancel", token=self.token)
        self.assertEqual(r.status, 200, r)
        self.assertShape(r, "/api/training/jobs/{id}/cancel", "POST")
        self.assertEqual(r.json["status"], "cancelled")
        row = h.psql("SELECT status, completed_at IS NOT NULL, parked_at IS NULL "
                     "FROM training_jobs WHERE id = :'id'", variables={"id": queued})
        self.assertEqual(row, "cancelled|t|t")
        # the job and its audit trail say the same: cancelled
        r = self.c.request("GET", f"/api/training/jobs/{queued}", token=self.token)
        self.assertEqual(r.json["job"]["failure_class"], "cancelled")
        r = self.c.request("GET", f"/api/training/jobs/{queued}/events", token=self.token)
        last = r.json["events"][-1]
        self.assertEqual((last["to_status"], last["failure_class"]), ("cancelled", "cancelled"))
        r = self.c.request("POST", f"/api/training/jobs/{queued}/cancel", token=self.token)
        self.assertEqual(r.status, 409, r)
        self.assertShape(r, "/api/training/jobs/{id}/cancel", "POST")
        self.assertEqual(r.json["status"], "cancelled")

        running = self.submit_job(ds)
        h.psql("UPDATE training_jobs SET status = 'running', worker_id = 'w-test', "
               "started_at = now() WHERE id = :'id'", variables={"id": running})
        r = self.c.request("POST", f"/api/training/jobs/{running}/cancel", token=self.token)
        self.assertEqual(r.status, 202, r)
        self.assertShape(r, "/api/training/jobs/{id}/cancel", "POST")
        self.assertEqual(r.json["status"], "running")
        self.assertEqual(r.json["message"], "cancellation requested")
        row = h.psql("SELECT status, cancel_requested_at IS NOT NULL FROM training_jobs "
                     "WHERE id = :'id'", variables={"id": running})
        self.assertEqual(row, "running|t")
        r = self.c.request("POST", f"/api/training/jobs/{uuid.uuid4()}/cancel", token=self.token)
        self.assertEqual(r.status, 404)
        r = self.c.request("POST", f"/api/training/jobs/{running}/cancel",
                           token=h.mint(new_user(), SECRET))
        self.assertEqual(r.status, 404)

    def test_cancel_takes_the_users_lock_before_the_row_so_it_cannot_deadlock_with_a_claim(self):
        # Session A plays the consumer's claim: the user's advisory lock, then the job's row.
        # The cancel runs while A holds the user's lock. Locking the row first and then
        # meeting the status guard's user lock, the cancel would hold the row A waits for
        # while waiting for A: a deadlock, which A (the shorter deadlock_timeout) detects.
        ds = add_dataset(self.user)
        job_id = self.submit_job(ds)
        a = h.PsqlSession(superuser=True)
        try:
            a.run("SET deadlock_timeout = '100ms'")
            a.run("BEGIN")
            a.run(f"SELECT tq_lock_user('{self.user}')")
            waiting_before = h.lock_waiters()
            result = {}

            def cancel():
                c = h.Http(self.port)
                try:
                    result["r"] = c.request("POST", f"/api/training/jobs/{job_id}/cancel",
                                            token=self.token)
                finally:
                    c.close()

            t = threading.Thread(target=cancel)
            t.start()
            h.wait_until(lambda: h.lock_waiters() > waiting_before, timeout=20,
                         what="the cancel waiting for a lock")
            claimed = a.run(f"SELECT status FROM training_jobs WHERE id = '{job_id}' FOR UPDATE")
            committed = a.run("COMMIT")
            t.join(timeout=30)
        finally:
            a.close()
        self.assertNotIn("deadlock", claimed + committed)
        self.assertEqual(claimed, "queued")
        self.assertEqual(result["r"].status, 200, result["r"])
        self.assertEqual(result["r"].json["status"], "cancelled")

    def test_events_record_every_transition_with_its_reason(self):
        ds = add_dataset(self.user)
        job_id = self.submit_job(ds)
        self.c.request("POST", f"/api/training/jobs/{job_id}/cancel", token=self.token)
        r = self.get(f"/api/training/jobs/{job_id}/events")
        self.assertEqual(r.status, 200, r)
        self.assertShape(r, "/api/training/jobs/{id}/events", "GET")
        ev = r.json["events"]
        self.assertEqual([(e["from_status"], e["to_status"]) for e in ev],
                         [(None, "queued"), ("queued", "cancelled")])
        self.assertEqual(ev[1]["reason"], "cancelled by user")
        r = self.get(f"/api/training/jobs/{job_id}/events", token=h.mint(new_user(), SECRET))
        self.assertEqual(r.status, 404)

    def test_delete_removes_finished_jobs_only_and_keeps_their_events(self):
        ds = add_dataset(self.user)
        job_id = self.submit_job(ds)
        r = self.c.request("DELETE", f"/api/training/jobs/{job_id}", token=self.token)
        self.assertEqual(r.status, 409, r)
        self.assertShape(r, "/api/training/jobs/{id}", "DELETE")
        self.assertEqual(r.json["status"], "queued")
        self.c.request("POST", f"/api/training/jobs/{job_id}/cancel", token=self.token)
        r = self.c.request("DELETE", f"/api/training/jobs/{job_id}",
                           token=h.mint(new_user(), SECRET))
        self.assertEqual(r.status, 404)
        r = self.c.request("DELETE", f"/api/training/jobs/{job_id}", token=self.token)
        self.assertEqual(r.status, 200, r)
        self.assertShape(r, "/api/training/jobs/{id}", "DELETE")
        self.assertEqual(self.get(f"/api/training/jobs/{job_id}").status, 404)
        r = self.get(f"/api/training/jobs/{job_id}/events")
        self.assertEqual(r.status, 200)
        self.assertEqual(len(r.json["events"]), 2)


# ====================================================================== own producers

class ProducerConfigTest(unittest.TestCase, DocChecks):
    """Cases that need a producer configured differently from the shared one."""

    def setUp(self):
        self.procs = []

    def tearDown(self):
        for p in self.procs:
            stop_producer(self, p)

    def start(self, **env):
        p = start_producer(**env)
        self.procs.append(p)
        return p

    def test_rs256_accepts_its_key_and_refuses_hs_rs_confusion_and_alg_none(self):
        with tempfile.TemporaryDirectory() as d:
            priv, pub = h.gen_rsa_keypair(d)
            p = self.start(TRAINQ_JWT_ALG="RS256", TRAINQ_JWT_SECRET=None,
                           TRAINQ_JWT_PUBLIC_KEY_FILE=pub)
            with open(priv) as f:
                priv_pem = f.read()
            with open(pub, "rb") as f:
                pub_pem = f.read()
        user = new_user()
        c = h.Http(p.port)
        good = h.mint(user, priv_pem, alg="RS256")
        r = c.request("GET", "/api/training/jobs", token=good)
        self.assertEqual(r.status, 200, r)
        other_priv = None
        with tempfile.TemporaryDirectory() as d:
            other_priv_path, _ = h.gen_rsa_keypair(d)
            with open(other_priv_path) as f:
                other_priv = f.read()
        for what, tok in {
            "HS256 signed with the public key text": h.mint_hs_raw(user, pub_pem),
            "HS256 signed with the PEM minus newline": h.mint_hs_raw(user, pub_pem.strip()),
            "alg none": h.mint_none(user),
            "RS256 from another key": h.mint(user, other_priv, alg="RS256"),
            "RS256 expired": h.mint(user, priv_pem, alg="RS256", exp_in=-600),
        }.items():
            with self.subTest(what):
                r = c.request("GET", "/api/training/jobs", token=tok)
                self.assertEqual(r.status, 401, r)
                self.assertIn('error="invalid_token"', r.header("WWW-Authenticate"))
        c.close()

    def test_audience_and_issuer_are_checked_when_configured(self):
        p = self.start(TRAINQ_JWT_AUDIENCE="authenticated", TRAINQ_JWT_ISSUER="https://iss.example")
        user = new_user()
        ok = h.mint(user, SECRET, aud="authenticated", iss="https://iss.example")
        self.assertEqual(h.http_once(p.port, "GET", "/api/training/jobs", token=ok).status, 200)
        for tok in (h.mint(user, SECRET, aud="other", iss="https://iss.example"),
                    h.mint(user, SECRET, aud="authenticated", iss="https://evil.example"),
                    h.mint(user, SECRET, aud=None, iss="https://iss.example")):
            self.assertEqual(h.http_once(p.port, "GET", "/api/training/jobs", token=tok).status,
                             401)

    def test_audience_authenticated_is_required_by_default_and_dash_accepts_any(self):
        user = new_user()
        p = self.start()  # TRAINQ_JWT_AUDIENCE unset
        for aud, want in (("authenticated", 200), (["anon", "authenticated"], 200),
                          (None, 401), ("anon", 401), ("service_role", 401)):
            with self.subTest(aud=aud):
                tok = h.mint(user, SECRET, aud=aud)
                self.assertEqual(
                    h.http_once(p.port, "GET", "/api/training/jobs", token=tok).status, want)
        any_aud = self.start(TRAINQ_JWT_AUDIENCE="-")
        for aud in (None, "anon", "authenticated"):
            with self.subTest(any_aud=aud):
                tok = h.mint(user, SECRET, aud=aud)
                self.assertEqual(
                    h.http_once(any_aud.port, "GET", "/api/training/jobs", token=tok).status, 200)
        empty = h.Program(PRODUCER, env=producer_env(TRAINQ_JWT_AUDIENCE="")).start()
        try:
            empty.proc.wait(30)
            self.assertEqual(empty.proc.returncode, 2)
            self.assertIn("audience", empty.stderr_text())
        finally:
            empty.cleanup()

    def test_cors_allow_list_echoes_listed_origins_only(self):
        p = self.start(TRAINQ_CORS_ORIGINS="https://app.example, https://admin.example")
        c = h.Http(p.port)
        r = c.request("OPTIONS", "/api/training/submit", headers={"Origin": "https://admin.example"})
        self.assertEqual(r.status, 204)
        self.assertEqual(r.header("Access-Control-Allow-Origin"), "https://admin.example")
        self.assertIn("Origin", r.header("Vary"))
        r = c.request("GET", "/healthz", headers={"Origin": "https://app.example"})
        self.assertEqual(r.header("Access-Control-Allow-Origin"), "https://app.example")
        r = c.request("GET", "/healthz", headers={"Origin": "https://evil.example"})
        self.assertIsNone(r.header("Access-Control-Allow-Origin"))
        self.assertIn("Origin", r.header("Vary"))
        c.close()
        p2 = self.start(TRAINQ_CORS_ORIGINS="")
        r = h.http_once(p2.port, "OPTIONS", "/api/training/submit",
                        headers={"Origin": "https://app.example"})
        self.assertEqual(r.status, 204)
        self.assertIsNone(r.header("Access-Control-Allow-Origin"))

    def test_rate_limit_is_shared_by_two_producers(self):
        # stay inside one fixed window: wait if it is about to roll over
        sec = float(h.psql("SELECT extract(second FROM now())"))
        if sec > 45:
            time.sleep(60.5 - sec)
        a = self.start(TRAINQ_SUBMIT_RATE_PER_MINUTE="3")
        b = self.start(TRAINQ_SUBMIT_RATE_PER_MINUTE="3")
        user = new_user()
        tok = h.mint(user, SECRET)
        ds = add_dataset(user)
        body = json.dumps(body_for(ds))
        codes = []
        last = None
        for i in range(4):
            port = (a if i % 2 == 0 else b).port
            last = h.http_once(port, "POST", "/api/training/submit", body=body,
                               headers=JSON_HEADERS, token=tok)
            codes.append(last.status)
        self.assertEqual(codes, [200, 200, 200, 429])
        self.assertShape(last, "/api/training/submit", "POST")
        self.assertEqual(last.json["error"], "rate limit exceeded")
        retry = int(last.header("Retry-After"))
        self.assertTrue(1 <= retry <= 60, retry)
        self.assertEqual(h.psql("SELECT count(*) FROM training_jobs WHERE user_id = :'u'",
                                variables={"u": user}), "3")
        # another user is not affected; a per-user override raises the limit
        other = new_user()
        ds2 = add_dataset(other)
        r = h.http_once(b.port, "POST", "/api/training/submit",
                        body=json.dumps(body_for(ds2)), headers=JSON_HEADERS,
                        token=h.mint(other, SECRET))
        self.assertEqual(r.status, 200)
        h.psql("INSERT INTO user_limits (user_id, submit_per_min) VALUES (:'u', 10)",
               variables={"u": user})
        r = h.http_once(a.port, "POST", "/api/training/submit", body=body,
                        headers=JSON_HEADERS, token=tok)
        self.assertEqual(r.status, 200, r)


class ProducerFaultTest(unittest.TestCase):
    """Crashes and outages. No other producer runs meanwhile, so no other relay can
    publish what is being tested."""

    def setUp(self):
        self.procs = []

    def tearDown(self):
        for p in self.procs:
            if p.running():
                stop_producer(self, p)
            else:
                p.cleanup()

    def start(self, **env):
        p = start_producer(**env)
        self.procs.append(p)
        return p

    def test_a_job_accepted_by_a_killed_producer_is_published_by_another(self):
        h.purge_queue(QUEUE)
        # a broker that cannot be reached: the relay of this instance publishes nothing
        p1 = self.start(TRAINQ_AMQP_URL="amqp://trainq:trainq@127.0.0.1:1/%2f")
        user = new_user()
        ds = add_dataset(user)
        r = h.http_once(p1.port, "POST", "/api/training/submit", body=json.dumps(body_for(ds)),
                        headers=JSON_HEADERS, token=h.mint(user, SECRET))
        self.assertEqual(r.status, 200, r)
        job_id = r.json["job_id"]
        ready = h.http_once(p1.port, "GET", "/readyz")
        self.assertEqual(ready.status, 503)
        self.assertEqual(ready.json["amqp"], "unavailable")
        time.sleep(1.0)
        self.assertEqual(outbox_published(job_id), "f")
        p1.kill()
        self.assertEqual(h.queue_depth(QUEUE) or 0, 0)

        self.start()
        msgs = h.get_messages(QUEUE, want=lambda m: any(p.message_id == job_id for p, _ in m),
                              timeout=30)
        self.assertTrue(any(p.message_id == job_id for p, _ in msgs), "job was lost")
        h.wait_until(lambda: outbox_published(job_id) == "t", what="outbox row marked")

    def test_postgres_outage_gives_503_quickly_and_the_producer_recovers(self):
        p = self.start()
        wait_ready(p.port)
        user = new_user()
        tok = h.mint(user, SECRET)
        ds = add_dataset(user)
        body = json.dumps(body_for(ds))
        c = h.Http(p.port)
        self.assertEqual(c.request("POST", "/api/training/submit", body=body,
                                   headers=JSON_HEADERS, token=tok).status, 200)
        h.services("stop", "postgres")
        try:
            r = c.request("GET", "/readyz")
            self.assertEqual(r.status, 503, r)
            self.assertEqual(r.json["postgres"], "unavailable")
            for _ in range(3):  # each HTTP thread finds its connection dead
                t0 = time.monotonic()
                r = h.http_once(p.port, "POST", "/api/training/submit", body=body,
                                headers=JSON_HEADERS, token=tok, timeout=10)
                took = time.monotonic() - t0
                self.assertEqual(r.status, 503, r)
                self.assertEqual(r.json, {"success": False,
                                          "error": "service temporarily unavailable"})
                self.assertIsNotNone(r.header("Retry-After"))
                self.assertLess(took, 6.0)
            self.assertEqual(h.http_once(p.port, "GET", "/healthz").status, 200)
            # the backlog is unknown now, not the last count
            h.wait_until(lambda: self.metric(p.port, "trainq_outbox_backlog") == -1,
                         timeout=15, what="trainq_outbox_backlog -1")
            self.assertEqual(h.http_once(p.port, "GET", "/readyz").json["outbox"], "unknown")
        finally:
            h.services("start", "postgres")
        wait_ready(p.port)
        r = c.request("POST", "/api/training/submit", body=body, headers=JSON_HEADERS,
                      token=tok)
        self.assertEqual(r.status, 200, r)
        c.close()
        # one warning per outage and one line when it is over, not one per retry a second
        for what in ("stream", "webhook"):
            p.wait_event(what + ".listen_ok", timeout=10)
            downs = p.events(what + ".listen_lost") + p.events(what + ".listen_failed")
            self.assertEqual(len(downs), 1, downs)
        self.assertLessEqual(len(p.events("webhook.take_failed")), 1)

    def metric(self, port, name):
        for line in h.http_once(port, "GET", "/metrics").raw.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def test_readyz_names_postgres_alone_when_only_postgres_is_away_at_start(self):
        """The relay tries RabbitMQ only once Postgres answers: until then the broker's
        state is unknown, not "unavailable" (it was blamed beside Postgres)."""
        p = self.start(TRAINQ_DATABASE_URL="postgresql://trainq@127.0.0.1:1/trainq")
        r = h.http_once(p.port, "GET", "/readyz", timeout=15)
        self.assertEqual(r.status, 503, r)
        self.assertEqual((r.json["postgres"], r.json["amqp"], r.json["reasons"]),
                         ("unavailable", "unknown", ["postgres unavailable"]))

    def test_a_role_at_its_connection_limit_is_named_as_no_free_connections(self):
        """A CONNECTION LIMIT on the role (53300, "too many connections for role") is told
        apart from an outage in /readyz and counted, as max_connections' is (it was
        "postgres unavailable", uncounted)."""
        p = self.start()
        wait_ready(p.port)
        h.psql("ALTER ROLE trainq CONNECTION LIMIT 0", superuser=True)
        try:
            h.psql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                   " WHERE application_name LIKE 'trainq-producer%'", superuser=True)
            r = h.wait_until(lambda: (x := h.http_once(p.port, "GET", "/readyz", timeout=15))
                             .status == 503 and x, timeout=20, what="/readyz 503")
            self.assertIn("postgres has no free connections (too many clients)",
                          r.json["reasons"], r)
        finally:
            h.psql("ALTER ROLE trainq CONNECTION LIMIT -1", superuser=True)
        wait_ready(p.port)
        self.assertGreaterEqual(self.metric(p.port, "trainq_db_connections_refused_total"), 1)

    def test_readyz_and_the_backlog_follow_a_broker_outage(self):
        """While RabbitMQ is away the stored rows' age grows and /readyz says the outbox is
        behind (the relay counted nothing then: it kept its last count, 0, and said ok); once
        the broker is back and the rows are out, /readyz is ready again within a couple of
        seconds (it kept reporting the outage's rows for up to 5 s)."""
        p = self.start(TRAINQ_READY_MAX_BACKLOG_AGE_SECONDS="2")
        wait_ready(p.port)
        user = new_user()
        ds = add_dataset(user)
        h.services("stop", "rabbitmq")
        try:
            r = h.http_once(p.port, "POST", "/api/training/submit",
                            body=json.dumps(body_for(ds)), headers=JSON_HEADERS,
                            token=h.mint(user, SECRET))
            self.assertEqual(r.status, 200, r)
            job_id = r.json["job_id"]

            def behind():
                r = h.http_once(p.port, "GET", "/readyz")
                return r if r.json.get("outbox") == "behind" else None
            r = h.wait_until(behind, timeout=20, what="/readyz: outbox behind")
            self.assertEqual(r.status, 503)
            self.assertTrue(any(x.startswith("outbox backlog") for x in r.json["reasons"]), r)
            self.assertGreaterEqual(self.metric(p.port, "trainq_outbox_backlog"), 1)
            self.assertGreater(self.metric(p.port, "trainq_outbox_backlog_age_seconds"), 2)
        finally:
            h.services("start", "rabbitmq")
        h.wait_until(lambda: outbox_published(job_id) == "t", timeout=90, what="published")
        t0 = time.monotonic()
        h.wait_until(lambda: h.http_once(p.port, "GET", "/readyz").status == 200, timeout=15,
                     what="/readyz ready again")
        self.assertLess(time.monotonic() - t0, 3.0)
        self.assertEqual(self.metric(p.port, "trainq_outbox_backlog"), 0)

    def test_sigterm_lets_an_in_flight_request_finish_then_exits_0(self):
        p = self.start()
        user = new_user()
        ds = add_dataset(user)
        body = json.dumps(body_for(ds)).encode()
        head = (f"POST /api/training/submit HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {h.mint(user, SECRET)}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        s = socket.create_connection(("127.0.0.1", p.port), timeout=20)
        try:
            s.sendall(head.encode() + body[:10])
            time.sleep(0.3)  # the request is now in flight: headers read, body pending
            p.send_signal(signal.SIGTERM)
            p.wait_event("producer.stopping")
            time.sleep(0.3)
            self.assertTrue(p.running(), "exited with a request in flight")
            # no new connections are accepted while draining
            with self.assertRaises(OSError):
                socket.create_connection(("127.0.0.1", p.port), timeout=2).recv(1)
            s.sendall(body[10:])
            reply = b""
            while b"\r\n\r\n" not in reply:
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
        finally:
            s.close()
        self.assertTrue(reply.startswith(b"HTTP/1.1 200"), reply[:200])
        p.proc.wait(30)
        self.assertEqual(p.proc.returncode, 0, p.stderr_text()[-3000:])
        p.assert_no_sanitizer_report()
        self.assertTrue(p.events("producer.stopped"))

    def test_an_address_this_host_cannot_have_stops_the_start_with_exit_2(self):
        """It would fail the same way on every restart: one line and exit 2 (the systemd unit
        does not restart it), where a taken address is exit 1 (below). In a network
        namespace of the test's own, where a documentation address is nobody's."""
        p = h.Program(PRODUCER, env=producer_env(TRAINQ_HTTP_ADDR="[2001:db8::1]:3000"),
                      wrap=h.own_netns_or_skip(self))
        self.procs.append(p.start())
        p.proc.wait(30)
        self.assertEqual(p.proc.returncode, 2, p.stderr_text()[-2000:])
        self.assertEqual(p.plain_lines(), ["trainq-producer: could not listen on"
                                           " [2001:db8::1]:3000: Cannot assign requested address"])
        self.assertFalse(p.events("http.listening"))

    def test_a_second_producer_on_a_taken_address_fails_instead_of_sharing_it(self):
        # With SO_REUSEPORT the kernel would split the connections between the two, a
        # stale producer or another configuration answering part of them unseen.
        first = self.start()
        second = h.Program(PRODUCER, env=producer_env(
            TRAINQ_HTTP_ADDR=f"127.0.0.1:{first.port}")).start()
        self.procs.append(second)
        second.proc.wait(30)
        self.assertEqual(second.proc.returncode, 1)  # it may be free at the next start
        err = second.stderr_text()
        self.assertIn(f"could not listen on 127.0.0.1:{first.port}", err)
        self.assertIn("Address already in use", err)
        self.assertEqual(h.http_once(first.port, "GET", "/healthz").status, 200)
        # and the same address again at once after a stop (SO_REUSEADDR: TIME_WAIT is fine)
        port = first.port
        stop_producer(self, first)
        self.procs.remove(first)
        again = self.start(TRAINQ_HTTP_ADDR=f"127.0.0.1:{port}")
        self.assertEqual(again.port, port)

    def test_bad_configuration_fails_at_start_with_one_line(self):
        # docs/configuration.md: one line "trainq-producer: invalid VAR ...", exit 2 — for
        # the checks after the option table too (the key file, the proxy list, the origins)
        for env, want in [({"TRAINQ_JWT_SECRET": "short"}, "invalid TRAINQ_JWT_SECRET"),
                          ({"TRAINQ_HTTP_TRUSTED_PROXIES": "garbage"},
                           "invalid TRAINQ_HTTP_TRUSTED_PROXIES entry \"garbage\""),
                          ({"TRAINQ_CORS_ORIGINS": "not an origin"},
                           "invalid TRAINQ_CORS_ORIGINS entry \"not an origin\""),
                          ({"TRAINQ_JWT_ALG": "RS256", "TRAINQ_JWT_SECRET": None,
                            "TRAINQ_JWT_PUBLIC_KEY_FILE": "/dev/null"}, "TRAINQ_JWT_PUBLIC_KEY")]:
            p = h.Program(PRODUCER, env=producer_env(**env)).start()
            self.procs.append(p)
            p.proc.wait(30)
            self.assertEqual(p.proc.returncode, 2, env)
            lines = p.stderr_text().strip().splitlines()
            self.assertEqual(len(lines), 1, (env, lines))
            self.assertTrue(lines[0].startswith("trainq-producer: "), (env, lines))
            self.assertIn(want, lines[0])


if __name__ == "__main__":
    unittest.main()
