"""Signed webhooks (issue 13, docs/webhooks.md): a receiver on 127.0.0.1 started by the test
gets every status event of a job, signed per Standard Webhooks, verified here by an
independent implementation (Python hmac) and by the official `standardwebhooks` npm package
(tests/tools/verify-webhooks.js, when tests/tools/node_modules is installed); retries after
500s and a receiver that is down; at least once across a producer SIGKILL; ordering by
sequence; and the SSRF rule: loopback refused without the test option, at registration (no
connection made) and at connect time. No traffic leaves 127.0.0.0/8: private and link-local
targets are only refused at registration (pure checks, also unit-tested in
tests/unit/test_webhooks_url.c).

Status changes are made the way the programs make them: submit and cancel over HTTP, and
plain UPDATEs with psql for pending/running/completed/failed (test_live.py's set_status),
which the database's triggers turn into job_events and webhook deliveries.

Needs TRAINQ_BIN_DIR, TRAINQ_DATABASE_URL (migrated), TRAINQ_AMQP_URL, TRAINQ_SERVICES.
"""

import base64
import hashlib
import hmac
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import unittest
import uuid

import tqharness as h
from test_live import set_status, write_progress
from test_producer import (DocChecks, PRODUCER, SECRET, add_dataset, body_for, new_user,
                           producer_env, start_producer, stop_producer, wait_ready)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = os.path.join(REPO, "tests", "tools")
LOOPBACK = {"TRAINQ_WEBHOOK_ALLOW_LOOPBACK": "true", "TRAINQ_WEBHOOK_RETRY_MIN_SECONDS": "1",
            "TRAINQ_WEBHOOK_RETRY_MAX_SECONDS": "2"}


class Receiver:
    """An HTTP receiver on 127.0.0.1 that records every request (headers, raw body) and
    answers with the next status of `script` (then `default`); `hold` seconds of delay
    before the first answer simulate a slow app."""

    def __init__(self, port=0, script=(), default=200, hold=0.0):
        self.got = []
        self.connections = 0
        self.script = list(script)
        self.default = default
        self.hold = hold
        self.each = 0.0  # seconds every request is held
        self.inflight = 0
        self.max_inflight = 0
        self.lock = threading.Lock()
        rec = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                with rec.lock:
                    rec.connections += 1
                super().setup()

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                with rec.lock:
                    status = rec.script.pop(0) if rec.script else rec.default
                    rec.got.append({"headers": {k.lower(): v for k, v in self.headers.items()},
                                    "body": body, "at": time.time(), "status": status})
                    hold, rec.hold = rec.hold or rec.each, 0.0
                    rec.inflight += 1
                    rec.max_inflight = max(rec.max_inflight, rec.inflight)
                try:
                    if hold:
                        time.sleep(hold)
                finally:
                    with rec.lock:
                        rec.inflight -= 1
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
        self.srv.daemon_threads = True
        self.port = self.srv.server_address[1]
        self.t = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.t.start()

    def url(self, path="/hook"):
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()

    def events(self):
        with self.lock:
            return list(self.got)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def hmac_ok(secret, rec, now=None):
    """Standard Webhooks v1 by hand (the spec, not our C code)."""
    key = base64.b64decode(secret[len("whsec_"):])
    hd = rec["headers"]
    signed = f"{hd['webhook-id']}.{hd['webhook-timestamp']}.".encode() + rec["body"]
    want = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    sigs = [s.split(",", 1)[1] for s in hd["webhook-signature"].split() if s.startswith("v1,")]
    fresh = abs((now or time.time()) - int(hd["webhook-timestamp"])) <= 300
    return fresh and any(hmac.compare_digest(want, s) for s in sigs)


def npm_verify(items):
    """[(secret, rec)] through the `standardwebhooks` npm package; None when not installed."""
    if not shutil.which("node") or not os.path.isdir(
            os.path.join(TOOLS, "node_modules", "standardwebhooks")):
        return None
    req = [{"secret": s, "headers": {k: r["headers"][k] for k in
                                     ("webhook-id", "webhook-timestamp", "webhook-signature")},
            "body": r["body"].decode()} for s, r in items]
    out = subprocess.run(["node", os.path.join(TOOLS, "verify-webhooks.js")], cwd=TOOLS,
                         input=json.dumps(req), capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise AssertionError("verify-webhooks.js failed: " + out.stderr[-2000:])
    return json.loads(out.stdout)


class WebhooksTest(unittest.TestCase, DocChecks):
    def setUp(self):
        self.user = new_user()
        self.token = h.mint(self.user, SECRET)
        self.ds = add_dataset(self.user)
        self.producers = []
        self.receivers = []
        self.addCleanup(self._cleanup)

    def _cleanup(self):
        # Leave nothing for later tests' workers to send.
        h.psql("UPDATE webhook_deliveries SET state = 'failed' WHERE user_id = :'u'"
               " AND state = 'pending'", variables={"u": self.user})
        h.psql("UPDATE training_jobs SET status = 'cancelled', completed_at = now()"
               " WHERE user_id = :'u' AND status NOT IN ('completed', 'failed', 'cancelled')",
               variables={"u": self.user})
        for p in self.producers:
            if p.running():
                stop_producer(self, p)
            else:
                p.cleanup()
        for r in self.receivers:
            r.close()

    def producer(self, **env):
        p = start_producer(**env)
        wait_ready(p.port)
        p.c = h.Http(p.port)
        self.addCleanup(p.c.close)
        self.producers.append(p)
        return p

    def receiver(self, **kw):
        r = Receiver(**kw)
        self.receivers.append(r)
        return r

    def call(self, p, method, path, body=None, status=None):
        r = p.c.request(method, path, json_body=body, token=self.token)
        if status is not None:
            self.assertEqual(r.status, status, r)
        return r

    def endpoint(self, p, url, events=None):
        body = {"url": url, "description": "test"}
        if events:
            body["events"] = events
        r = self.call(p, "POST", "/api/training/webhooks", body, 201)
        self.assertShape(r, "/api/training/webhooks", "POST")
        wh = r.json["webhook"]
        self.assertRegex(wh["secret"], r"^whsec_[A-Za-z0-9+/]+=*$")
        self.assertEqual(len(base64.b64decode(wh["secret"][6:])), 32)
        return wh

    def submit(self, p, **over):
        r = self.call(p, "POST", "/api/training/submit", body_for(self.ds, **over), 200)
        return r.json["job_id"]

    def wait_got(self, rec, n, timeout=30.0, pred=None):
        def enough():
            got = [g for g in rec.events() if pred is None or pred(g)]
            return got if len(got) >= n else None
        return h.wait_until(enough, timeout=timeout, interval=0.1,
                            what=f"{n} webhook requests")

    def deliveries(self, p, wh_id):
        r = self.call(p, "GET", f"/api/training/webhooks/{wh_id}/deliveries", status=200)
        self.assertShape(r, "/api/training/webhooks/{id}/deliveries", "GET")
        return r.json["deliveries"]

    def assertSigned(self, secret, recs):
        for rec in recs:
            self.assertTrue(hmac_ok(secret, rec), f"bad signature: {rec['headers']}")
        res = npm_verify([(secret, r) for r in recs])
        if res is None:
            print("test_webhooks: tests/tools/node_modules not installed; "
                  "standardwebhooks (npm) verification skipped")
            return
        for rec, v in zip(recs, res):
            self.assertTrue(v["ok"], f"standardwebhooks refused {rec['headers']}: {v}")
            self.assertEqual(v["payload"], json.loads(rec["body"]))
        # and it refuses a tampered body
        bad = dict(recs[0], body=recs[0]["body"].replace(b"job.", b"jab."))
        self.assertFalse(npm_verify([(secret, bad)])[0]["ok"])

    # ------------------------------------------------------------------ events

    def test_every_status_event_arrives_signed_with_the_job_object_and_nothing_repeats(self):
        p = self.producer(**LOOPBACK)
        rec = self.receiver()
        wh = self.endpoint(p, rec.url())
        job = self.submit(p)
        set_status(job, "pending")
        set_status(job, "running")
        set_status(job, "completed")
        got = self.wait_got(rec, 3)
        bodies = [json.loads(g["body"]) for g in got]
        self.assertEqual([b["type"] for b in bodies],
                         ["job.queued", "job.running", "job.completed"])
        seqs = [b["sequence"] for b in bodies]
        self.assertEqual(seqs, sorted(seqs))
        self.assertEqual(len(set(seqs)), 3)
        self.assertSigned(wh["secret"], got)
        ids = [g["headers"]["webhook-id"] for g in got]
        self.assertEqual(len(set(ids)), 3)
        # data is the job object as GET returns it
        r = self.call(p, "GET", f"/api/training/jobs/{job}", status=200)
        self.assertEqual(bodies[-1]["data"], r.json["job"])
        for b in bodies:
            self.assertEqual(set(b), {"type", "timestamp", "data", "sequence"})
            self.assertEqual(b["data"]["id"], job)
        # delivered once: nothing repeats, and the listing says so
        time.sleep(3)
        self.assertEqual(len(rec.events()), 3)
        ds = self.deliveries(p, wh["id"])
        self.assertEqual(sorted(d["id"] for d in ds), sorted(ids))
        for d in ds:
            self.assertEqual((d["state"], d["status_code"], d["attempts"]), ("delivered", 200, 1))
        # listing has no secret
        r = self.call(p, "GET", "/api/training/webhooks", status=200)
        self.assertShape(r, "/api/training/webhooks", "GET")
        self.assertEqual([w["id"] for w in r.json["webhooks"]], [wh["id"]])
        self.assertNotIn("secret", r.json["webhooks"][0])

    def test_a_jobs_own_webhook_url_gets_failed_and_cancelled_signed_with_the_default_secret(self):
        p = self.producer(**LOOPBACK)
        rec = self.receiver()
        a = self.submit(p, webhook_url=rec.url("/a"))
        b = self.submit(p, webhook_url=rec.url("/b"),
                        webhook_events=["job.cancelled", "job.failed"])
        r = self.call(p, "GET", "/api/training/webhooks/default-secret", status=200)
        self.assertShape(r, "/api/training/webhooks/default-secret", "GET")
        secret = r.json["secret"]
        set_status(a, "pending")
        set_status(a, "running")
        self.call(p, "POST", f"/api/training/jobs/{b}/cancel", status=200)
        h.psql("BEGIN; UPDATE training_jobs SET status = 'failed', completed_at = now(),"
               " error_message = 'exit 1' WHERE id = :'id'; COMMIT", variables={"id": a})
        got = self.wait_got(rec, 4)
        time.sleep(1)
        got = rec.events()
        by_job = {}
        for g in got:
            body = json.loads(g["body"])
            by_job.setdefault(body["data"]["id"], []).append(body["type"])
        self.assertEqual(by_job[a], ["job.queued", "job.running", "job.failed"])
        self.assertEqual(by_job[b], ["job.cancelled"])  # its filter: no job.queued
        self.assertSigned(secret, got)
        # the same secret the next time: it is the user's, made once
        r2 = self.call(p, "GET", "/api/training/webhooks/default-secret", status=200)
        self.assertEqual(r2.json["secret"], secret)

    def test_progress_is_opt_in_and_sent_once_per_tenth(self):
        p = self.producer(**LOOPBACK)
        rec = self.receiver()
        plain = self.receiver()
        wh = self.endpoint(p, rec.url(), events=["job.progress", "job.completed"])
        self.endpoint(p, plain.url())  # the default: no job.progress
        job = self.submit(p)
        set_status(job, "pending")
        set_status(job, "running")
        for step in (5, 7, 9, 15, 18, 95):  # tenths 0, 0, 0, 1, 1, 9: three events
            write_progress(job, step, 100)
        set_status(job, "completed")
        got = self.wait_got(rec, 4)
        time.sleep(1.5)
        got = rec.events()
        bodies = [json.loads(g["body"]) for g in got]
        self.assertEqual([b["type"] for b in bodies], ["job.progress"] * 3 + ["job.completed"])
        seqs = [b["sequence"] for b in bodies]
        self.assertEqual(seqs, sorted(seqs))
        self.assertEqual(len(set(seqs)), 4)
        self.assertSigned(wh["secret"], got)
        plain_types = [json.loads(g["body"])["type"] for g in plain.events()]
        self.assertNotIn("job.progress", plain_types)
        self.assertEqual(plain_types, ["job.queued", "job.running", "job.completed"])

    def test_running_comes_before_the_progress_its_own_statement_sets(self):
        # The consumer marks a job running with progress 0 in one UPDATE (consumer/cdb.c):
        # both triggers fire on it, and the status event must take the smaller sequence,
        # or a receiver ordering by sequence sees progress before running (80_webhooks.sql).
        p = self.producer(**LOOPBACK)
        rec = self.receiver()
        wh = self.endpoint(p, rec.url(), events=["job.running", "job.progress"])
        job = self.submit(p)
        set_status(job, "pending")
        h.psql("UPDATE training_jobs SET status = 'running', started_at = now(), progress = 0,"
               " progress_updated_at = now() WHERE id = :'id'", variables={"id": job})
        got = self.wait_got(rec, 2)
        time.sleep(1.0)
        bodies = sorted((json.loads(g["body"]) for g in rec.events()),
                        key=lambda b: b["sequence"])
        self.assertEqual([b["type"] for b in bodies], ["job.running", "job.progress"])
        self.assertEqual(bodies[1]["sequence"], bodies[0]["sequence"] + 1)
        self.assertSigned(wh["secret"], got)

    def test_the_seeds_request_without_webhook_fields_makes_no_delivery(self):
        p = self.producer(**LOOPBACK)
        job = self.submit(p)
        set_status(job, "cancelled")
        n = h.psql("SELECT count(*) FROM webhook_deliveries WHERE job_id = :'id'",
                   variables={"id": job})
        self.assertEqual(n, "0")

    def test_a_replayed_or_refused_submit_with_a_webhook_writes_no_webhook_row(self):
        # The submit's one round trip (tq_submit) writes the job's webhook row only for a
        # job it creates: a replay under the same Idempotency-Key, a reused key and a dataset
        # refused leave job_webhooks, the user's secret and the deliveries as they were.
        p = self.producer(**LOOPBACK)
        rec = self.receiver()

        def rows():
            return h.psql("SELECT (SELECT count(*) FROM job_webhooks w JOIN training_jobs j"
                          "  ON j.id = w.job_id WHERE j.user_id = :'u')"
                          " || ' ' || (SELECT count(*) FROM job_webhooks)"
                          " || ' ' || (SELECT count(*) FROM webhook_user_secrets"
                          "  WHERE user_id = :'u')"
                          " || ' ' || (SELECT count(*) FROM webhook_deliveries"
                          "  WHERE user_id = :'u')", variables={"u": self.user})

        def send(body, status, key="k-" + self.user):
            r = p.c.request("POST", "/api/training/submit", json_body=body, token=self.token,
                            headers={"Idempotency-Key": key})
            self.assertEqual(r.status, status, r)
            return r

        other = add_dataset(new_user())
        send(body_for(other, webhook_url=rec.url("/x")), 403, key="refused")
        send(body_for(str(uuid.uuid4()), webhook_url=rec.url("/x")), 404, key="missing")
        self.assertEqual(rows().split()[0::2], ["0", "0"])
        first = send(body_for(self.ds, webhook_url=rec.url("/a")), 200)
        before = rows()
        self.assertEqual(before.split()[0::2], ["1", "1"])  # its row and the user's secret
        again = send(body_for(self.ds, webhook_url=rec.url("/a")), 200)
        self.assertEqual(again.json["job_id"], first.json["job_id"])
        moved = send(body_for(self.ds, webhook_url=rec.url("/elsewhere")), 200)
        self.assertEqual(moved.json["job_id"], first.json["job_id"])
        send(body_for(self.ds, config={"steps": 400}, webhook_url=rec.url("/a")), 422)
        self.assertEqual(rows(), before)
        url = h.psql("SELECT url FROM job_webhooks WHERE job_id = :'id'",
                     variables={"id": first.json["job_id"]})
        self.assertEqual(url, rec.url("/a"))

    def test_bad_webhook_fields_are_400_naming_the_field(self):
        p = self.producer(**LOOPBACK)
        rec = self.receiver()
        cases = [({"webhook_url": "ftp://127.0.0.1/x"}, "webhook_url"),
                 ({"webhook_url": 7}, "webhook_url"),
                 ({"webhook_url": rec.url(), "webhook_events": ["job.started"]},
                  "webhook_events"),
                 ({"webhook_url": rec.url(), "webhook_events": []}, "webhook_events"),
                 ({"webhook_events": ["job.failed"]}, "webhook_events"),
                 ({"webhook_url": "https://user:pw@hooks.example.com/"}, "webhook_url"),
                 ({"webhook_url": "https://169.254.169.254/latest"}, "webhook_url"),
                 ({"webhook_url": "https:///x"}, "webhook_url")]  # curl would read host "x"
        for over, field in cases:
            r = self.call(p, "POST", "/api/training/submit", body_for(self.ds, **over), 400)
            self.assertEqual([d["field"] for d in r.json["details"]], [field], (over, r))
        for body, field in [({"url": "https://10.0.0.8/h"}, "url"),
                            ({"url": "https://[fe80::1]/h"}, "url"),
                            ({"url": rec.url(), "events": ["job.progress", "job.x"]}, "events"),
                            ({"url": rec.url(), "secret": "mine"}, "secret"),
                            ({"url": "https:///x"}, "url")]:
            r = self.call(p, "POST", "/api/training/webhooks", body, 400)
            self.assertEqual([d["field"] for d in r.json["details"]], [field], (body, r))
        # a body that says it is not JSON is 415, as on submit
        r = p.c.request("POST", "/api/training/webhooks", body=json.dumps({"url": rec.url()}),
                        headers={"Content-Type": "text/plain"}, token=self.token)
        self.assertEqual(r.status, 415, r)
        self.assertEqual(self.call(p, "GET", "/api/training/webhooks", status=200)
                         .json["webhooks"], [])
        self.assertEqual(h.psql("SELECT count(*) FROM training_jobs WHERE user_id = :'u'",
                                variables={"u": self.user}), "0")
        self.assertEqual(rec.connections, 0)
        r = self.call(p, "POST", "/api/training/webhooks", {"url": "https://0.0.0.0/h"}, 400)
        self.assertEqual(r.json["details"][0]["message"],
                         "must not point to an unspecified address")
        # an event named twice is one subscription
        wh = self.endpoint(p, rec.url(), events=["job.failed", "job.queued", "job.failed"])
        self.assertEqual(wh["events"], ["job.failed", "job.queued"])
        job = self.submit(p, webhook_url=rec.url("/j"),
                          webhook_events=["job.queued", "job.queued"])
        self.assertEqual(h.psql("SELECT events FROM job_webhooks WHERE job_id = :'id'",
                                variables={"id": job}), "{job.queued}")

    def test_users_see_only_their_own_webhooks(self):
        p = self.producer(**LOOPBACK)
        wh = self.endpoint(p, "https://hooks.example.com/x")
        other = h.mint(new_user(), SECRET)
        for method, path in [("GET", f"/api/training/webhooks/{wh['id']}/deliveries"),
                             ("POST", f"/api/training/webhooks/{wh['id']}/rotate-secret"),
                             ("DELETE", f"/api/training/webhooks/{wh['id']}")]:
            r = p.c.request(method, path, token=other)
            self.assertEqual(r.status, 404, (method, path, r))
        r = p.c.request("GET", "/api/training/webhooks", token=other)
        self.assertEqual(r.json["webhooks"], [])
        r = self.call(p, "POST", f"/api/training/webhooks/{wh['id']}/rotate-secret", status=200)
        self.assertNotEqual(r.json["secret"], wh["secret"])
        self.call(p, "DELETE", f"/api/training/webhooks/{wh['id']}", status=200)
        self.assertEqual(self.call(p, "GET", "/api/training/webhooks", status=200)
                         .json["webhooks"], [])

    def test_after_rotation_deliveries_verify_with_the_old_and_the_new_secret_until_the_overlap_ends(self):
        p = self.producer(**LOOPBACK)  # the default overlap: 24 h
        rec = self.receiver()
        wh = self.endpoint(p, rec.url(), events=["job.queued"])
        t0 = time.time()
        r = self.call(p, "POST", f"/api/training/webhooks/{wh['id']}/rotate-secret", status=200)
        self.assertShape(r, "/api/training/webhooks/{id}/rotate-secret", "POST")
        new = r.json["secret"]
        until = h.psql("SELECT extract(epoch FROM previous_secret_until) FROM webhook_endpoints"
                       " WHERE id = :'id'", variables={"id": wh["id"]})
        self.assertAlmostEqual(float(until) - t0, 86400, delta=60)
        self.assertIsNotNone(r.json["previous_secret_expires_at"])
        listed = self.call(p, "GET", "/api/training/webhooks", status=200).json["webhooks"][0]
        self.assertEqual(listed["previous_secret_expires_at"], r.json["previous_secret_expires_at"])
        self.submit(p)
        got = self.wait_got(rec, 1)
        self.assertEqual(len(got[0]["headers"]["webhook-signature"].split()), 2)
        self.assertSigned(new, got)
        self.assertSigned(wh["secret"], got)  # a receiver still configured with the old one

        # A producer with a 1 s overlap: once it ends, only the new secret signs.
        q = self.producer(TRAINQ_WEBHOOK_SECRET_OVERLAP_SECONDS="1", **LOOPBACK)
        r = self.call(q, "POST", f"/api/training/webhooks/{wh['id']}/rotate-secret", status=200)
        newer = r.json["secret"]
        time.sleep(1.5)
        self.assertIsNone(self.call(q, "GET", "/api/training/webhooks", status=200)
                          .json["webhooks"][0]["previous_secret_expires_at"])
        self.submit(q)
        late = self.wait_got(rec, 2)[1:]
        self.assertEqual(len(late[0]["headers"]["webhook-signature"].split()), 1)
        self.assertSigned(newer, late)
        self.assertFalse(hmac_ok(new, late[0]))
        res = npm_verify([(new, late[0]), (wh["secret"], late[0])])
        if res is not None:
            self.assertEqual([v["ok"] for v in res], [False, False])

    # ------------------------------------------------------------------ delivery

    def test_500s_are_retried_with_the_same_id_and_later_events_wait_in_sequence_order(self):
        p = self.producer(**LOOPBACK)
        rec = self.receiver(script=[500, 503])
        wh = self.endpoint(p, rec.url())
        job = self.submit(p)
        set_status(job, "pending")
        set_status(job, "running")
        set_status(job, "completed")
        got = self.wait_got(rec, 5, timeout=60)
        time.sleep(1)
        got = rec.events()
        types = [json.loads(g["body"])["type"] for g in got]
        self.assertEqual(types, ["job.queued"] * 3 + ["job.running", "job.completed"])
        self.assertEqual(len({g["headers"]["webhook-id"] for g in got[:3]}), 1)
        seqs = [json.loads(g["body"])["sequence"] for g in got]
        self.assertEqual(seqs, sorted(seqs))
        self.assertSigned(wh["secret"], got)
        ds = {d["event"]: d for d in self.deliveries(p, wh["id"])}
        self.assertEqual((ds["job.queued"]["attempts"], ds["job.queued"]["state"]),
                         (3, "delivered"))

    def test_a_receiver_that_is_down_gets_everything_afterwards_with_the_same_ids(self):
        p = self.producer(**LOOPBACK)
        port = free_port()
        url = f"http://127.0.0.1:{port}/hook"
        wh = self.endpoint(p, url)
        job = self.submit(p)
        self.call(p, "POST", f"/api/training/jobs/{job}/cancel", status=200)
        def queued_failed_twice():
            ds = {d["event"]: d for d in self.deliveries(p, wh["id"])}
            q = ds.get("job.queued")
            return ds if q and q["attempts"] >= 2 and q["error"] else None
        before = h.wait_until(queued_failed_twice, timeout=30, what="two failed attempts")
        self.assertEqual(set(before), {"job.queued", "job.cancelled"})
        self.assertTrue(all(d["state"] == "pending" and d["next_attempt_at"]
                            for d in before.values()))
        # in sequence order: the later event waits behind the one being retried
        self.assertEqual(before["job.cancelled"]["attempts"], 0)
        rec = self.receiver(port=port)
        got = self.wait_got(rec, 2, timeout=30)
        self.assertEqual({g["headers"]["webhook-id"] for g in got},
                         {d["id"] for d in before.values()})
        self.assertEqual([json.loads(g["body"])["type"] for g in got],
                         ["job.queued", "job.cancelled"])
        self.assertSigned(wh["secret"], got)

    def test_a_status_change_reaches_the_receiver_within_milliseconds_not_a_poll(self):
        # Senders are woken by the commit's notification: with the 0.5 s poll alone the
        # median would be ~250 ms.
        p = self.producer(**LOOPBACK)
        rec = self.receiver()
        self.endpoint(p, rec.url(), events=["job.queued"])
        for _ in range(16):
            self.submit(p)
            time.sleep(0.15)
        got = self.wait_got(rec, 16)
        made = dict(l.split("|") for l in h.psql(
            "SELECT 'msg_' || id || '|' || extract(epoch FROM event_at) FROM webhook_deliveries"
            " WHERE user_id = :'u'", variables={"u": self.user}).splitlines())
        lat = sorted(g["at"] - float(made[g["headers"]["webhook-id"]]) for g in got)
        self.assertLess(lat[len(lat) // 2], 0.1, lat)

    def test_a_receiver_down_for_two_minutes_gets_every_event_in_sequence_order_after(self):
        # Two minutes of the default schedule (5 s doubling) is about 5 attempts of the first
        # event of each job; scaled here to ~20 s with delays of 1 s doubling to 4 s: 10 s of
        # refused connections, then 10 s of 503s, then the receiver answers 200.
        p = self.producer(**dict(LOOPBACK, TRAINQ_WEBHOOK_RETRY_MAX_SECONDS="4"))
        port = free_port()
        rec = self.receiver(port=port)
        wh = self.endpoint(p, rec.url())
        first = self.submit(p)
        self.wait_got(rec, 1)
        rec.close()  # down: connections refused
        a, b, c = self.submit(p), self.submit(p), self.submit(p)
        for s in ("pending", "running", "completed"):
            set_status(first, s)
        for s in ("pending", "running"):
            set_status(a, s)
            set_status(b, s)
        self.call(p, "POST", f"/api/training/jobs/{c}/cancel", status=200)
        set_status(a, "completed")
        set_status(b, "failed", reason="exit 1")
        time.sleep(10)
        self.assertEqual(len(rec.events()), 1)
        rec = self.receiver(port=port, default=503)  # up, but failing
        time.sleep(10)
        rec.default = 200
        rows = h.psql("SELECT 'msg_' || id FROM webhook_deliveries WHERE endpoint_id = :'e'"
                      " ORDER BY id", variables={"e": wh["id"]}).split()
        self.assertEqual(len(rows), 11)  # first, a and b: 3 events each; c: 2
        done = self.wait_got(rec, 10, timeout=40, pred=lambda g: g["status"] == 200)
        time.sleep(1.5)
        got = rec.events()
        ok = [g for g in got if g["status"] == 200]
        self.assertEqual(len(ok), len(done))  # nothing repeats after a 2xx
        ids = [g["headers"]["webhook-id"] for g in ok]
        self.assertEqual(len(ids), len(set(ids)))
        self.assertEqual(set(ids), set(rows[1:]))  # all but the one delivered before
        self.assertLessEqual({g["headers"]["webhook-id"] for g in got if g["status"] == 503},
                             set(ids))  # retried with the same webhook-id
        by_job = {}
        for g in ok:
            body = json.loads(g["body"])
            by_job.setdefault(body["data"]["id"], []).append((body["sequence"], body["type"]))
        want = {first: ["job.running", "job.completed"],
                a: ["job.queued", "job.running", "job.completed"],
                b: ["job.queued", "job.running", "job.failed"],
                c: ["job.queued", "job.cancelled"]}
        self.assertEqual({j: [t for _, t in v] for j, v in by_job.items()}, want)
        for v in by_job.values():
            self.assertEqual([s for s, _ in v], sorted(s for s, _ in v))
        self.assertSigned(wh["secret"], ok)
        self.assertTrue(all(d["state"] == "delivered" for d in self.deliveries(p, wh["id"])))

    def test_a_slow_receiver_does_not_hold_up_another(self):
        p = self.producer(**LOOPBACK)
        slow = self.receiver(hold=12.0)
        self.endpoint(p, slow.url())
        self.submit(p)
        self.wait_got(slow, 1)  # its sender is now stuck in that request
        other_user = self.user
        fast = self.receiver()
        self.user = new_user()  # another user's endpoint and job
        self.token = h.mint(self.user, SECRET)
        self.ds = add_dataset(self.user)
        self.addCleanup(h.psql, "UPDATE webhook_deliveries SET state = 'failed'"
                        " WHERE user_id = :'u' AND state = 'pending'",
                        variables={"u": other_user})
        self.endpoint(p, fast.url())
        t0 = time.time()
        self.submit(p)
        got = self.wait_got(fast, 1, timeout=10)
        self.assertLess(got[0]["at"] - t0, 5.0)
        self.assertEqual(len(slow.events()), 1)

    def test_requests_to_one_endpoint_are_capped_across_producers(self):
        env = dict(LOOPBACK, TRAINQ_WEBHOOK_ENDPOINT_CONCURRENCY="2", TRAINQ_WEBHOOK_SENDERS="4")
        p = self.producer(**env)
        self.producer(**env)  # 8 senders in all
        rec = self.receiver()
        rec.each = 1.0
        self.endpoint(p, rec.url(), events=["job.queued"])
        for _ in range(8):
            self.submit(p)
        self.wait_got(rec, 8, timeout=30)
        self.assertEqual(rec.max_inflight, 2)

    def test_one_users_slow_receivers_hold_at_most_the_user_cap_of_senders(self):
        """Three endpoints and a job's own URL of one user, all slow: at most
        TRAINQ_WEBHOOK_USER_CONCURRENCY of the user's requests are in flight, all producers
        together, so another user's delivery goes out at once on a free sender. Before the
        user's cap, the four took all four senders (the endpoint cap is per endpoint, and a
        job's own URL had none)."""
        env = dict(LOOPBACK, TRAINQ_WEBHOOK_USER_CONCURRENCY="2", TRAINQ_WEBHOOK_SENDERS="2")
        p = self.producer(**env)
        self.producer(**env)  # 4 senders in all
        slow = self.receiver()
        slow.each = 6.0
        for i in range(3):
            self.endpoint(p, slow.url(f"/e{i}"), events=["job.queued"])
        self.submit(p, webhook_url=slow.url("/own"), webhook_events=["job.queued"])
        slow_user = self.user
        self.addCleanup(h.psql, "UPDATE webhook_deliveries SET state = 'failed'"
                        " WHERE user_id = :'u' AND state = 'pending'",
                        variables={"u": slow_user})
        self.wait_got(slow, 2)
        time.sleep(1.5)
        self.assertEqual((slow.max_inflight, len(slow.events())), (2, 2))
        fast = self.receiver()
        self.user = new_user()
        self.token = h.mint(self.user, SECRET)
        self.ds = add_dataset(self.user)
        self.endpoint(p, fast.url())
        t0 = time.time()
        self.submit(p)
        got = self.wait_got(fast, 1, timeout=10)
        self.assertLess(got[0]["at"] - t0, 3.0)
        # the slow user's other two follow as its first two end: none is lost
        got = self.wait_got(slow, 4, timeout=40)
        self.assertEqual(sorted(g["headers"]["webhook-id"] for g in got),
                         sorted(set(g["headers"]["webhook-id"] for g in got)))
        self.assertEqual(slow.max_inflight, 2)

    def test_a_delivery_in_flight_when_the_producer_is_killed_is_sent_again_with_its_id(self):
        p = self.producer(**LOOPBACK)
        rec = self.receiver(hold=60.0)  # the first request hangs: the producer dies in it
        wh = self.endpoint(p, rec.url())
        job = self.submit(p)
        first = self.wait_got(rec, 1)[0]
        p.kill()
        q = self.producer(**LOOPBACK)
        # due again after the lease (30 s): sent by the new producer, same webhook-id
        again = self.wait_got(rec, 2, timeout=60)[1]
        self.assertEqual(again["headers"]["webhook-id"], first["headers"]["webhook-id"])
        self.assertEqual(json.loads(again["body"])["data"]["id"], job)
        self.assertSigned(wh["secret"], [again])
        h.wait_until(lambda: self.deliveries(q, wh["id"])[0]["state"] == "delivered",
                     timeout=10, what="delivered")

    def test_410_gone_disables_the_endpoint_and_nothing_more_is_sent(self):
        p = self.producer(**LOOPBACK)
        rec = self.receiver(script=[410])
        wh = self.endpoint(p, rec.url())
        job = self.submit(p)
        self.wait_got(rec, 1)

        def disabled():
            ws = self.call(p, "GET", "/api/training/webhooks", status=200).json["webhooks"]
            return ws[0] if ws[0]["disabled"] else None
        w = h.wait_until(disabled, timeout=10, what="the endpoint disabled")
        self.assertIn("410", w["disabled_reason"])
        self.assertIsNotNone(w["disabled_at"])
        d = self.deliveries(p, wh["id"])
        self.assertEqual([(x["state"], x["status_code"], x["attempts"]) for x in d],
                         [("failed", 410, 1)])
        set_status(job, "pending")
        set_status(job, "running")
        time.sleep(2)
        self.assertEqual(len(rec.events()), 1)
        self.assertEqual(len(self.deliveries(p, wh["id"])), 1)

    def test_410_gone_from_a_jobs_own_url_stops_that_job_there(self):
        """A job's own webhook_url that answers 410 gets nothing more of that job: not the
        events pending then, nor any later one (they were written and sent again, one 410
        each). Another job's URL on the same receiver is not affected."""
        p = self.producer(**LOOPBACK)
        rec = self.receiver(default=410)
        ok = self.receiver()
        events = ["job.queued", "job.running", "job.completed", "job.progress"]
        job = self.submit(p, webhook_url=rec.url("/gone"), webhook_events=events)
        other = self.submit(p, webhook_url=ok.url("/fine"), webhook_events=events)
        self.wait_got(rec, 1)
        h.wait_until(lambda: h.psql("SELECT stopped_at IS NOT NULL FROM job_webhooks"
                                    " WHERE job_id = :'id'", variables={"id": job}) == "t",
                     timeout=10, what="the job's webhook stopped")
        for j in (job, other):
            set_status(j, "pending")
            set_status(j, "running")
        h.psql("UPDATE training_jobs SET progress = 0.5 WHERE id IN (:'a', :'b')",
               variables={"a": job, "b": other})
        self.wait_got(ok, 3)
        time.sleep(2)
        self.assertEqual(len(rec.events()), 1, [e["body"] for e in rec.events()])
        self.assertEqual(h.psql("SELECT count(*) FROM webhook_deliveries WHERE job_id = :'id'",
                                variables={"id": job}), "1")
        self.assertIn("410", h.psql("SELECT stopped_reason FROM job_webhooks WHERE job_id = :'id'",
                                    variables={"id": job}))

    def test_a_run_of_failures_disables_the_endpoint(self):
        p = self.producer(TRAINQ_WEBHOOK_DISABLE_AFTER="3", **LOOPBACK)
        rec = self.receiver(default=500)
        wh = self.endpoint(p, rec.url())
        job = self.submit(p)
        self.call(p, "POST", f"/api/training/jobs/{job}/cancel", status=200)

        def disabled():
            ws = self.call(p, "GET", "/api/training/webhooks", status=200).json["webhooks"]
            return ws[0] if ws[0]["disabled"] else None
        w = h.wait_until(disabled, timeout=30, what="the endpoint disabled")
        self.assertIn("3 failed attempts in a row", w["disabled_reason"])
        ds = {d["event"]: d for d in self.deliveries(p, wh["id"])}
        self.assertEqual((ds["job.queued"]["state"], ds["job.queued"]["attempts"],
                          ds["job.queued"]["status_code"]), ("failed", 3, 500))
        self.assertEqual((ds["job.cancelled"]["state"], ds["job.cancelled"]["attempts"]),
                         ("failed", 0))
        time.sleep(3)
        self.assertEqual(len(rec.events()), 3)

    # ------------------------------------------------------------------ SSRF

    def test_an_operator_allowed_block_and_http_are_admitted_and_nothing_else(self):
        rec = self.receiver()
        p = self.producer(TRAINQ_WEBHOOK_ALLOW_HTTP="true",
                          TRAINQ_WEBHOOK_ALLOW_CIDRS="127.0.0.1/32")
        wh = self.endpoint(p, rec.url())
        r = self.call(p, "POST", "/api/training/webhooks",
                      {"url": f"http://127.0.0.2:{rec.port}/"}, 400)
        self.assertEqual(r.json["details"][0]["field"], "url")
        self.submit(p)
        got = self.wait_got(rec, 1)
        self.assertEqual(json.loads(got[0]["body"])["type"], "job.queued")
        self.assertSigned(wh["secret"], got)

    def test_a_bad_allow_cidrs_stops_the_producer_with_exit_2(self):
        bad = h.Program(PRODUCER,
                        env=producer_env(TRAINQ_WEBHOOK_ALLOW_CIDRS="10.0.0.0/99")).start()
        try:
            bad.proc.wait(30)
            self.assertEqual(bad.proc.returncode, 2)
            self.assertIn("invalid TRAINQ_WEBHOOK_ALLOW_CIDRS", bad.stderr_text())
        finally:
            bad.cleanup()

    def test_loopback_is_refused_without_the_test_option_and_no_connection_is_made(self):
        rec = self.receiver()
        p = self.producer()  # TRAINQ_WEBHOOK_ALLOW_LOOPBACK unset
        for url in (rec.url(), f"https://127.0.0.1:{rec.port}/hook",
                    f"https://localhost:{rec.port}/hook", f"https://[::1]:{rec.port}/"):
            r = self.call(p, "POST", "/api/training/webhooks", {"url": url}, 400)
            self.assertEqual(r.json["details"][0]["field"], "url", (url, r))
            r = self.call(p, "POST", "/api/training/submit",
                          body_for(self.ds, webhook_url=url), 400)
            self.assertEqual(r.json["details"][0]["field"], "webhook_url", (url, r))
        # An endpoint that got in some other way (an operator, an older rule) is refused at
        # connect time, on the resolved address: the attempt fails, nothing connects.
        wid = h.psql("INSERT INTO webhook_endpoints (id, user_id, url, events, secret)"
                     " VALUES (gen_random_uuid(), :'u', :'url', '{job.queued}',"
                     " 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw') RETURNING id",
                     variables={"u": self.user, "url": f"https://127.0.0.1:{rec.port}/"})
        self.submit(p)
        d = h.wait_until(lambda: [x for x in self.deliveries(p, wid) if x["attempts"] >= 1
                                  and x["error"]] or None, timeout=20, what="a refused attempt")
        self.assertIn("refused: loopback address", d[0]["error"])
        self.assertIsNone(d[0]["status_code"])
        self.assertEqual(rec.connections, 0)
        self.assertEqual(rec.events(), [])


if __name__ == "__main__":
    unittest.main()
