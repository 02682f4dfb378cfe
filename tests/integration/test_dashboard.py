"""The dashboard (issue 15): its static files under /ui/ (headers, content types, no way out
of the directory), the admin API behind the operators' pages (403 to users; reads; cancel,
retry, republish, drain) against a real consumer, and the whole dashboard in a real browser
(Debian's chromium driven by puppeteer-core, tests/tools/dashboard-browser.js), with axe-core
on every page and screenshots at 1280x800 and 390x844 in $TRAINQ_TEST_OUTPUT (default
<build>/test-output/dashboard).

Needs TRAINQ_BIN_DIR, TRAINQ_DATABASE_URL (migrated), TRAINQ_AMQP_URL, TRAINQ_SERVICES; the
browser test needs chromium and `npm ci` in tests/tools (scripts/install-deps.sh).
"""

import http.client
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import unittest
import uuid
from datetime import datetime

import tqenv
import tqharness as h
from test_consumer import TERMINAL, run_id
from test_live import set_status
from test_live_output import LiveCase
from test_producer import SECRET, add_dataset, body_for, new_user, start_producer, stop_producer

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TOOLS = os.path.join(REPO, "tests", "tools")
OPERATOR = {"trainq_role": "admin"}


def raw_get(port, target):
    """GET with the request target sent byte for byte (no client normalises the dots)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), head.decode("latin-1"), body


class TestDashboardFiles(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="tq-ui-")
        cls.ui = os.path.join(cls.tmp, "ui")
        shutil.copytree(os.path.join(REPO, "ui"), cls.ui)
        with open(os.path.join(cls.tmp, "secret.html"), "w") as f:
            f.write("outside the ui directory")
        os.symlink(os.path.join(cls.tmp, "secret.html"), os.path.join(cls.ui, "link.html"))
        os.symlink("/etc/passwd", os.path.join(cls.ui, "passwd.js"))
        with open(os.path.join(cls.ui, ".hidden.js"), "w") as f:
            f.write("hidden")
        with open(os.path.join(cls.ui, "notes.txt"), "w") as f:
            f.write("no such type")
        os.mkdir(os.path.join(cls.ui, "sub.css"))
        cls.p = start_producer(TRAINQ_UI_DIR=cls.ui)

    @classmethod
    def tearDownClass(cls):
        stop_producer(unittest.TestCase(), cls.p)
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_files_are_served_with_their_type_and_a_strict_policy(self):
        for target, ctype in (("/ui/", "text/html; charset=utf-8"),
                              ("/ui", "text/html; charset=utf-8"),
                              ("/ui/index.html", "text/html; charset=utf-8"),
                              ("/ui/app.js", "text/javascript; charset=utf-8"),
                              ("/ui/app.css", "text/css; charset=utf-8"),
                              ("/ui/favicon.svg", "image/svg+xml")):
            with self.subTest(target=target):
                r = h.http_once(self.p.port, "GET", target)
                self.assertEqual(r.status, 200)
                self.assertEqual(r.header("Content-Type"), ctype)
                csp = r.header("Content-Security-Policy")
                self.assertIn("default-src 'none'", csp)
                self.assertIn("script-src 'self'", csp)
                self.assertIn("style-src 'self'", csp)
                self.assertIn("connect-src 'self'", csp)
                self.assertNotIn("unsafe-inline", csp)
                self.assertEqual(r.header("X-Content-Type-Options"), "nosniff")
                self.assertEqual(r.header("Referrer-Policy"), "no-referrer")
        with open(os.path.join(self.ui, "app.js"), "rb") as f:
            self.assertEqual(h.http_once(self.p.port, "GET", "/ui/app.js").raw, f.read())

    def test_the_pages_load_nothing_from_elsewhere_and_have_no_inline_code(self):
        html = h.http_once(self.p.port, "GET", "/ui/").raw.decode()
        self.assertNotIn("<style", html)
        self.assertNotIn(" style=", html)
        self.assertNotIn("<script>", html)
        self.assertNotIn(" on", html.replace(" one", ""))  # no onclick= and the like
        for name in os.listdir(os.path.join(REPO, "ui")):
            with open(os.path.join(REPO, "ui", name), encoding="utf-8") as f:
                text = f.read()
            for bad in ("http://", "https://", "//fonts.", "@import", "innerHTML", "eval("):
                if bad == "http://" and "www.w3.org/2000/svg" in text:
                    text = text.replace("http://www.w3.org/2000/svg", "")
                self.assertNotIn(bad, text, f"{name} has {bad}")

    def test_no_path_leaves_the_ui_directory(self):
        for target in ("/ui/../../../../etc/passwd", "/ui/..%2f..%2f..%2fetc%2fpasswd",
                       "/ui/%2e%2e/%2e%2e/etc/passwd", "/ui/..", "/ui/.%2e/secret.html",
                       "/ui/link.html", "/ui/passwd.js", "/ui/.hidden.js", "/ui/notes.txt",
                       "/ui/sub.css", "/ui/sub.css/x.css", "/ui/..\\secret.html",
                       "/ui//etc/passwd", "/ui/nope.html"):
            with self.subTest(target=target):
                status, head, body = raw_get(self.p.port, target)
                self.assertIn(status, (400, 404), head)
                self.assertNotIn(b"root:", body)
                self.assertNotIn(b"outside the ui directory", body)
                self.assertNotIn(b"hidden", body)
        # %00 is left as sent (producer/http.c, unescape), never a name cut short to a file
        # that exists: no file has such a name
        for target in ("/ui/%00.html", "/ui/app.js%00.html"):
            with self.subTest(target=target):
                status, head, body = raw_get(self.p.port, target)
                self.assertEqual(status, 404, head)

    def test_a_missing_ui_directory_is_refused_at_start(self):
        p = h.Program("producer/trainq-producer", env={
            "TRAINQ_HTTP_ADDR": "127.0.0.1:0", "TRAINQ_JWT_SECRET": SECRET,
            "TRAINQ_UI_DIR": os.path.join(self.tmp, "nope")}).start()
        try:
            self.assertEqual(p.proc.wait(10), 2)
            self.assertIn("TRAINQ_UI_DIR", p.stderr_text())
        finally:
            p.cleanup()

    def test_the_dashboard_can_be_turned_off(self):
        p = start_producer(TRAINQ_UI_DIR="-")
        try:
            self.assertEqual(h.http_once(p.port, "GET", "/ui/").status, 404)
        finally:
            stop_producer(self, p)

    def test_by_default_the_repository_ui_is_found_beside_the_binary(self):
        p = start_producer(TRAINQ_UI_DIR=None)
        try:
            r = h.http_once(p.port, "GET", "/ui/app.js")
            self.assertEqual(r.status, 200)
            with open(os.path.join(REPO, "ui", "app.js"), "rb") as f:
                self.assertEqual(r.raw, f.read())
        finally:
            stop_producer(self, p)


class AdminCase(LiveCase):

    def setUp(self):
        super().setUp()
        self.p = start_producer()
        self.http = h.Http(self.p.port)
        self.op_token = h.mint("operator-" + run_id(), SECRET, **OPERATOR)

    def tearDown(self):
        self.http.close()
        stop_producer(self, self.p)
        super().tearDown()

    def admin(self, method, path, token=None):
        return self.http.request(method, path, token=token or self.op_token)


class TestAdminApi(AdminCase):

    def test_every_admin_endpoint_refuses_a_user_and_answers_an_operator(self):
        user_token = h.mint(new_user(), SECRET)
        wrong_role = h.mint(new_user(), SECRET, trainq_role="user")
        job = str(uuid.uuid4())
        for method, path in (("GET", "/api/admin/overview"), ("GET", "/api/admin/workers"),
                             ("GET", "/api/admin/users"), ("GET", "/api/admin/dead-letters"),
                             ("GET", "/api/admin/jobs"),
                             ("POST", f"/api/admin/jobs/{job}/cancel"),
                             ("POST", f"/api/admin/jobs/{job}/retry"),
                             ("POST", "/api/admin/dead-letters/1/republish"),
                             ("POST", "/api/admin/workers/w/drain"),
                             ("POST", "/api/admin/workers/w/undrain")):
            with self.subTest(path=path):
                self.assertEqual(self.http.request(method, path).status, 401)
                for t in (user_token, wrong_role):
                    r = self.http.request(method, path, token=t)
                    self.assertEqual(r.status, 403, r)
                    self.assertEqual(r.json["error"], "operator token required")
                self.assertIn(self.admin(method, path).status, (200, 404, 409))
        me = self.http.request("GET", "/api/training/me", token=self.op_token).json
        self.assertTrue(me["operator"])
        self.assertFalse(self.http.request("GET", "/api/training/me", token=user_token).json["operator"])
        # an array claim holding the value is an operator's too
        arr = h.mint(new_user(), SECRET, trainq_role=["viewer", "admin"])
        self.assertEqual(self.admin("GET", "/api/admin/overview", token=arr).status, 200)

    def test_the_claim_is_configurable(self):
        p = start_producer(TRAINQ_ADMIN_CLAIM="role", TRAINQ_ADMIN_CLAIM_VALUE="ops")
        try:
            http = h.Http(p.port)
            self.assertEqual(http.request("GET", "/api/admin/workers", token=self.op_token).status, 403)
            t = h.mint(new_user(), SECRET, role="ops")
            self.assertEqual(http.request("GET", "/api/admin/workers", token=t).status, 200)
            http.close()
        finally:
            stop_producer(self, p)

    def queue_jobs(self, user, n):
        """n queued jobs of the user."""
        ds = self.dataset(user)
        ids = []
        for i in range(n):
            m = self.message(user, ds)
            self.insert_job(m, i)
            ids.append(m["job_id"])
        return ids

    def test_overview_counts_queued_jobs_by_waiting_reason_and_users(self):
        before = self.admin("GET", "/api/admin/overview").json["queue"]
        u = self.user("ov")
        ids = self.queue_jobs(u, 3)
        # a user at the active limit (2 pending): its third job waits under user_limit (the
        # count said 0 whatever the queue held, reading a column nothing sets any more)
        lim = self.user("lim")
        held = self.queue_jobs(lim, 3)
        self.addCleanup(lambda: [set_status(j, "cancelled") for j in held])
        for j in held[:2]:
            set_status(j, "pending")
        job = self.http.request("GET", f"/api/training/jobs/{held[2]}",
                                token=h.mint(lim, SECRET)).json["job"]
        self.assertEqual(job["waiting_reason"], "user_limit")
        # a user over the daily GPU quota: both queued jobs count under quota
        q = self.user("quota")
        self.addCleanup(tqenv.psql, "DELETE FROM job_usage WHERE user_id = :'u';"
                        "DELETE FROM user_limits WHERE user_id = :'u'", variables={"u": q})
        tqenv.psql("INSERT INTO user_limits (user_id, gpu_seconds_per_day) VALUES (:'u', 10);"
                   "INSERT INTO job_usage (job_id, user_id, worker_id, attempt, gpus, started_at,"
                   " ended_at, wall_seconds, gpu_seconds, outcome) VALUES (gen_random_uuid(),"
                   " :'u', 'history', 1, 1, now() - interval '2 hours', now() - interval '1 hour',"
                   " 3600, 3600, 'completed')", variables={"u": q})
        qids = self.queue_jobs(q, 2)
        job = self.http.request("GET", f"/api/training/jobs/{qids[0]}", token=h.mint(q, SECRET)).json["job"]
        self.assertEqual(job["waiting_reason"], "quota")
        o = self.admin("GET", "/api/admin/overview").json
        self.assertEqual({k: o["queue"][k] - before[k] for k in before},
                         {"capacity": 3, "user_limit": 1, "quota": 2, "pending": 2,
                          "running": 0})
        self.assertEqual(len(o["per_minute"]), 60)
        self.assertGreaterEqual(o["per_minute"][-1]["submitted"], 3)
        users = {x["user_id"]: x for x in self.admin("GET", "/api/admin/users").json["users"]}
        self.assertEqual((users[u]["queued"], users[u]["active"]), (3, 0))
        jobs = self.admin("GET", "/api/admin/jobs?status=queued&limit=500").json["jobs"]
        self.assertTrue(set(ids) <= {j["id"] for j in jobs})
        self.assertEqual(self.admin("GET", "/api/admin/jobs?status=nope").status, 400)

    def test_an_operator_cancels_another_users_job(self):
        u = self.user("cx")
        m = self.message(u, self.dataset(u))
        self.insert_job(m, 0)
        r = self.admin("POST", f"/api/admin/jobs/{m['job_id']}/cancel")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(self.job(m["job_id"])["status"], "cancelled")
        r = self.admin("POST", f"/api/admin/jobs/{m['job_id']}/cancel")
        self.assertEqual((r.status, r.json["error"], r.json["status"]),
                         (409, "job is already cancelled", "cancelled"))
        # the audit trail says who: an operator, for a queued job and for a running one
        # (which the consumer ends; it said "cancelled by user" for both)
        run = self.message(u, self.dataset_env(u, FORMAT="plain", STEPS=100, DURATION=30))
        self.consumer(f"cx-{run_id()}", slots=1)
        self.publish(run)
        self.wait_status(run["job_id"], "running")
        self.assertEqual(self.admin("POST", f"/api/admin/jobs/{run['job_id']}/cancel").status,
                         202)
        self.assertEqual(self.wait_status(run["job_id"], TERMINAL, timeout=30)["status"],
                         "cancelled")
        for job in (m["job_id"], run["job_id"]):
            self.assertEqual(tqenv.psql("SELECT reason FROM job_events WHERE job_id = :'j'"
                                        " AND to_status = 'cancelled'", variables={"j": job}),
                             "cancelled by an operator", job)
            self.assertEqual(self.job(job)["failure_message"], "cancelled by an operator", job)
        self.assertEqual(self.admin("POST", f"/api/admin/jobs/{uuid.uuid4()}/cancel").status, 404)

    def test_a_failed_job_is_retried_and_runs_again(self):
        u = self.user("retry")
        ds = self.dataset_env(u, FORMAT="plain", STEPS=2, DURATION=1, EXIT_CODE=3)
        self.consumer(f"retry-{run_id()}", slots=1)
        m = self.message(u, ds)
        self.publish(m)
        self.wait_status(m["job_id"], "failed", timeout=60)
        self.assertEqual(self.admin("POST", f"/api/admin/jobs/{m['job_id']}/retry").status, 200)
        with open(os.path.join(self.root, u, ds, "trainer.env"), "w") as f:
            f.write("FORMAT=plain\nSTEPS=2\nDURATION=1\nEXIT_CODE=0\n")
        j = self.wait_status(m["job_id"], "completed", timeout=60)
        self.assertIsNone(j["error_message"])
        ev = [e for e in self.events([u]) if e["job_id"] == m["job_id"]]
        self.assertIn(("failed", "queued", "retried by an operator"),
                      [(e["from_status"], e["to_status"], e["reason"]) for e in ev])
        r = self.admin("POST", f"/api/admin/jobs/{m['job_id']}/retry")
        self.assertEqual(r.status, 409)
        self.assertIn("only failed jobs", r.json["error"])

    def test_the_consumer_records_dead_letters_and_an_operator_republishes_one(self):
        old_id = "old-" + run_id()
        tqenv.psql("INSERT INTO dead_letters (message_id, routing_key, reason, worker_id, body,"
                   " created_at) VALUES (:'m', 'lora', 'old', 'w', '', now() - interval '31 days')",
                   variables={"m": old_id})
        self.consumer(f"dlq-{run_id()}", slots=1)
        bad_id = "not-a-job-" + run_id()
        self.publish(b"{not json", message_id=bad_id)
        u = self.user("dl")
        ds = self.dataset_env(u, FORMAT="plain", STEPS=2, DURATION=1)
        # a valid job whose message arrives with a bad signature header would be refused; a
        # message with a job id but an unknown field is dead-lettered and can be republished
        # once its job is queued again
        m = self.message(u, ds)
        self.insert_job(m, 0)
        bad = dict(m, surprise=1)
        self.publish(bad)
        rows = h.wait_until(lambda: (d := self.admin("GET", "/api/admin/dead-letters").json["dead_letters"])
                            and {x["message_id"] for x in d} >= {bad_id, m["job_id"]} and d,
                            timeout=30, what="both dead letters recorded")
        by_id = {x["message_id"]: x for x in rows}
        # recording one drops those older than 30 days
        self.assertEqual(tqenv.psql("SELECT count(*) FROM dead_letters WHERE message_id = :'m'",
                                    variables={"m": old_id}), "0")
        self.assertIn("json", by_id[bad_id]["reason"].lower())
        self.assertEqual(by_id[bad_id]["body"], "{not json")
        self.assertTrue(by_id[m["job_id"]]["reason"])
        r = self.admin("POST", f"/api/admin/dead-letters/{by_id[bad_id]['id']}/republish")
        self.assertEqual(r.status, 409)
        self.assertIn("no job id", r.json["error"])
        r = self.admin("POST", f"/api/admin/dead-letters/{by_id[m['job_id']]['id']}/republish")
        self.assertEqual(r.status, 200, r)
        # the job's stored (valid) message went out again: it runs
        self.wait_status(m["job_id"], "completed", timeout=60)
        self.assertEqual(self.admin("POST", f"/api/admin/dead-letters/{by_id[m['job_id']]['id']}/republish").status, 409)
        self.assertEqual(self.admin("POST", "/api/admin/dead-letters/999999999/republish").status, 404)
        self.assertEqual(self.admin("POST", "/api/admin/dead-letters/x1/republish").status, 400)
        # refused for its signature (as test_signing's consumers record them): the relay
        # would sign it with trainq's key, so it is not republished, whatever its body
        forged = self.message(u, ds)
        for reason in ("unsigned message: x-trainq-signature is required",
                       'unknown publisher key id "k9"', "bad signature"):
            dl = tqenv.psql("INSERT INTO dead_letters (message_id, routing_key, reason, worker_id,"
                            " body) VALUES (:'m', 'lora', :'r', 'w', :'b') RETURNING id",
                            variables={"m": forged["job_id"], "r": reason,
                                       "b": json.dumps(forged)}).split()[0]
            r = self.admin("POST", f"/api/admin/dead-letters/{dl}/republish")
            self.assertEqual(r.status, 409, r)
            self.assertIn("refused for its signature", r.json["error"])
        self.assertEqual(tqenv.psql("SELECT count(*) FROM outbox WHERE job_id = :'j'",
                                    variables={"j": forged["job_id"]}), "0")

    def worker(self, wid):
        return {w["worker_id"]: w for w in
                self.admin("GET", "/api/admin/workers").json["workers"]}.get(wid)

    def test_a_killed_worker_is_gone_after_its_lease_and_a_restart_shows(self):
        """`gone` follows the worker's own TRAINQ_LEASE_SECONDS (4 here; the dashboard said
        healthy for a fixed 60 s); a restart under the same id moves started_at."""
        wid = f"gone-{run_id()}"
        c = self.consumer(wid, slots=1, TRAINQ_GPUS="none")
        w = h.wait_until(lambda: self.worker(wid), timeout=10, what="the worker's heartbeat")
        self.assertEqual((w["lease_seconds"], w["gone"], w["healthy"]), (4, False, True))
        c.kill()
        w = h.wait_until(lambda: (x := self.worker(wid)) and x["gone"] and x, timeout=15,
                         what="the killed worker gone")
        self.assertGreater(w["heartbeat_age_seconds"], 4)
        self.assertTrue(w["healthy"], "healthy is what it last reported")
        self.consumer(wid, slots=1, TRAINQ_GPUS="none")
        back = h.wait_until(lambda: (x := self.worker(wid)) and not x["gone"] and x, timeout=15,
                            what="the worker back")
        when = lambda x: datetime.fromisoformat(x["started_at"])
        self.assertGreater(when(back), when(w))

    def test_a_drained_worker_finishes_its_job_and_takes_no_new_one(self):
        wid = f"drain-{run_id()}"
        self.consumer(wid, slots=2, TRAINQ_GPUS="none")
        u1, u2 = self.user("d1"), self.user("d2")
        running = self.message(u1, self.dataset_env(u1, FORMAT="plain", STEPS=4, DURATION=4))
        self.publish(running)
        self.wait_status(running["job_id"], "running", timeout=30)
        workers = {w["worker_id"]: w for w in self.admin("GET", "/api/admin/workers").json["workers"]}
        w = h.wait_until(lambda: (x := {w["worker_id"]: w for w in self.admin("GET", "/api/admin/workers").json["workers"]}.get(wid)) and x["busy"] == 1 and x,
                         timeout=10, what="the heartbeat reports one busy slot")
        self.assertEqual((w["slots"], w["free"], w["gpus"], w["healthy"], w["draining"]),
                         (2, 1, "none", True, False))
        self.assertIn(running["job_id"], w["jobs"])
        del workers
        self.assertEqual(self.admin("POST", f"/api/admin/workers/{wid}/drain").status, 200)
        self.procs[-1].wait_event("worker.drain", timeout=10)
        time.sleep(1.5)
        waiting = self.message(u2, self.dataset_env(u2, FORMAT="plain", STEPS=1, DURATION=0.5))
        self.publish(waiting)
        self.wait_status(running["job_id"], "completed", timeout=60)
        time.sleep(3)
        self.assertEqual(self.job(waiting["job_id"]) and self.job(waiting["job_id"])["status"] or "queued", "queued",
                         "a draining worker took a new job")
        w = {w["worker_id"]: w for w in self.admin("GET", "/api/admin/workers").json["workers"]}[wid]
        self.assertTrue(w["draining"])
        # restarted, it stays drained: not even in the moment before its first heartbeat
        # has read the drain does it pick the job that waits (operations.md)
        self.assertEqual(self.procs[-1].stop(), 0)
        again = self.consumer(wid, slots=2, TRAINQ_GPUS="none")
        again.wait_event("worker.drain", timeout=10)
        time.sleep(2)
        self.assertEqual(self.job(waiting["job_id"])["status"], "queued",
                         "a drained worker took a new job once restarted")
        self.assertEqual(self.admin("POST", f"/api/admin/workers/{wid}/undrain").status, 200)
        self.wait_status(waiting["job_id"], "completed", timeout=60)
        self.assertEqual(self.admin("POST", "/api/admin/workers/no-such-worker/drain").status, 404)


def chromium():
    return os.environ.get("CHROMIUM") or shutil.which("chromium")


class TestDashboardInBrowser(AdminCase):

    def test_a_user_and_an_operator_use_the_dashboard_in_chromium(self):
        browser = chromium()
        self.assertTrue(browser, "chromium is not installed (scripts/install-deps.sh)")
        self.assertTrue(os.path.isdir(os.path.join(TOOLS, "node_modules", "puppeteer-core")),
                        "tests/tools has no node_modules (scripts/install-deps.sh runs npm ci)")
        out = os.environ.get("TRAINQ_TEST_OUTPUT") or os.path.join(
            os.environ.get("TRAINQ_BIN_DIR", REPO), "test-output")
        out = os.path.join(out, "dashboard")
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        wid = f"ui-{run_id()}"
        self.consumer(wid, slots=2)
        u = self.user("ui")
        ds = self.dataset_env(u, FORMAT="diffusers", STEPS=8, DURATION=8)
        slow = self.dataset_env(u, FORMAT="diffusers", STEPS=60, DURATION=60)
        # a job of the user that failed: the trainer refuses its config (exit 2, config_error)
        failed = self.message(u, self.dataset_env(u, CONFIG_ERROR="unknown key rank_dropout"))
        self.publish(failed)
        self.assertEqual(self.wait_status(failed["job_id"], ("completed", "failed", "cancelled"),
                                          timeout=60)["failure_class"], "config_error")
        dead_id = "ui-dead-" + run_id()
        self.publish(b"\xff not json", message_id=dead_id)
        h.wait_until(lambda: tqenv.psql("SELECT count(*) FROM dead_letters WHERE message_id = :'m'",
                                        variables={"m": dead_id}) == "1",
                     timeout=30, what="the dead letter recorded")
        env = dict(os.environ,
                   TQ_UI_BASE=f"http://127.0.0.1:{self.p.port}",
                   TQ_UI_USER_TOKEN=h.mint(u, SECRET, exp_in=3600),
                   TQ_UI_OPERATOR_TOKEN=self.op_token,
                   TQ_UI_EXPIRED_TOKEN=h.mint(u, SECRET, exp_in=-60),
                   TQ_UI_DATASET=ds, TQ_UI_SLOW_DATASET=slow, TQ_UI_WORKER=wid,
                   TQ_UI_DEAD_ID=dead_id, TQ_UI_FAILED_JOB=failed["job_id"], TQ_UI_OUT=out, CHROMIUM=browser)
        proc = subprocess.run(["node", os.path.join(TOOLS, "dashboard-browser.js")], env=env,
                              cwd=TOOLS, capture_output=True, text=True, timeout=600)
        with open(os.path.join(out, "result.json")) as f:
            result = json.load(f)
        self.assertEqual(result["failures"], [], proc.stderr[-4000:])
        self.assertEqual(proc.returncode, 0, proc.stderr[-4000:])
        self.assertEqual(result["foreign"], [])
        self.assertEqual(result["consoleErrors"], [])
        shots = sorted(f for f in os.listdir(out) if f.endswith(".png"))
        for page in ("signin", "workers", "new-job-400", "jobs-queued", "jobs-running",
                     "job-completed", "job-failed", "jobs-list", "usage", "operations", "dead-letters",
                     "all-jobs"):
            for size in ("1280x800", "390x844"):
                self.assertIn(f"{page}-{size}.png", shots)
        for label, violations in result["axe"].items():
            self.assertFalse([v for v in violations if v["impact"] in ("serious", "critical")], label)


if __name__ == "__main__":
    unittest.main()
