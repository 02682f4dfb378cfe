"""User isolation and container safety, against real services (run it against the ASan build).

- User A cannot read, list, cancel or delete user B's jobs (404 like a missing job, and B's
  row byte-for-byte unchanged), nor read their events (even after B deleted the job), nor
  submit with B's dataset (403); idempotency keys do not leak across users; user ids full
  of LIKE wildcards see only their own jobs.
- SQL metacharacters and unicode in every string field (name, trigger words, base_model
  where its rule allows, the user id itself) are stored and returned verbatim: the GET and
  list output and the row read with psql equal the input.
- A dataset whose storage_path escapes the datasets root (`../x`, absolute `/etc`, the root
  itself, symlinks to outside) makes the job fail with a reason, and no container is
  created for it (Docker label filter), although the outside target is a valid dataset.
- A running training container, inspected through the Docker API: not privileged, CapDrop
  ALL, NetworkMode none, no-new-privileges, no host namespaces, no mount of the Docker
  socket (or its directory), the dataset mounted read-only. Configuring a cache directory
  that holds the Docker socket never yields a container with that mount.
"""

import json
import os
import shutil
import signal
import tempfile
import unittest
import urllib.parse
import uuid

import tqenv
import tqharness as h

PRODUCER = "producer/trainq-producer"
CONSUMER = "consumer/trainq-consumer"
SECRET = "isolation-secret-" + uuid.uuid4().hex
SUBMIT = "/api/training/submit"
JSON = {"Content-Type": "application/json"}
TERMINAL = ("completed", "failed", "cancelled")


def row(job_id):
    out = tqenv.psql("SELECT row_to_json(j) FROM training_jobs j WHERE id = :'id'",
                     variables={"id": job_id})
    return json.loads(out) if out else None


def containers_of_job(job_id):
    flt = urllib.parse.quote(json.dumps({"label": [f"trainq.job={job_id}"]}))
    st, lst = tqenv.docker("GET", f"/containers/json?all=1&filters={flt}")
    return lst or []


def start_producer():
    env = {"TRAINQ_HTTP_ADDR": "127.0.0.1:0", "TRAINQ_JWT_ALG": "HS256",
           "TRAINQ_JWT_SECRET": SECRET, "TRAINQ_JWT_PUBLIC_KEY_FILE": None,
           "TRAINQ_JWT_AUDIENCE": None, "TRAINQ_JWT_ISSUER": None,
           "TRAINQ_SUBMIT_RATE_PER_MINUTE": "100000", "TRAINQ_READ_RATE_PER_MINUTE": "100000",
           "TRAINQ_HTTP_THREADS": "2", "TRAINQ_LOG_LEVEL": "info"}
    p = h.Program(PRODUCER, env=env, name="producer-isolation").start()
    p.port = p.wait_event("http.listening", timeout=30)["port"]
    return p


def stop_checked(p):
    code = p.stop(signal.SIGTERM, timeout=30)
    text = p.stderr_text()
    found = p.sanitizer_report()
    p.cleanup()
    assert code == 0, f"{p.name} exited {code} on SIGTERM:\n{text[-4000:]}"
    assert not found, f"sanitizer report in {p.name} stderr:\n{text[-8000:]}"


class User:
    def __init__(self, port, user_id=None):
        self.id = user_id or "iso-" + uuid.uuid4().hex[:12]
        self.token = h.mint(self.id, SECRET)
        self.port = port

    def dataset(self, storage_path=None):
        ds = str(uuid.uuid4())
        tqenv.psql("INSERT INTO datasets (id, user_id, name, storage_path) "
                   "VALUES (:'id', :'u', 'd', :'p')",
                   variables={"id": ds, "u": self.id, "p": storage_path or "ds/" + ds})
        return ds

    def req(self, method, path, body=None, headers=None):
        hdrs = dict(JSON if body is not None else {})
        hdrs.update(headers or {})
        return h.http_once(self.port, method, path, token=self.token, headers=hdrs,
                           body=json.dumps(body) if body is not None else None)

    def submit(self, ds, **over):
        body = {"dataset_id": ds, "type": "lora", "base_model": "gpt2", "config": {}}
        body.update(over)
        return self.req("POST", SUBMIT, body)


# ====================================================================== HTTP isolation

class HttpIsolationTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.p = start_producer()

    @classmethod
    def tearDownClass(cls):
        stop_checked(cls.p)

    def setUp(self):
        self.a = User(self.p.port)
        self.b = User(self.p.port)
        self.b_ds = self.b.dataset()
        self.a_ds = self.a.dataset()

    def b_job(self, status="queued"):
        r = self.b.submit(self.b_ds, name="b's job", trigger_words=["secret"])
        self.assertEqual(r.status, 200, r)
        jid = r.json["job_id"]
        if status == "running":
            tqenv.psql("UPDATE training_jobs SET status = 'running', worker_id = 'w-iso', "
                       "started_at = now() WHERE id = :'id'", variables={"id": jid})
        elif status != "queued":
            tqenv.psql("UPDATE training_jobs SET status = :'s', completed_at = now() "
                       "WHERE id = :'id'", variables={"id": jid, "s": status})
        return jid

    def test_a_cannot_read_cancel_or_delete_bs_jobs(self):
        for status in ("queued", "running", "completed", "failed", "cancelled"):
            jid = self.b_job(status)
            before = row(jid)
            for spelled in (jid, jid.upper()):
                for method, path in (("GET", f"/api/training/jobs/{spelled}"),
                                     ("GET", f"/api/training/jobs/{spelled}/events"),
                                     ("POST", f"/api/training/jobs/{spelled}/cancel"),
                                     ("DELETE", f"/api/training/jobs/{spelled}")):
                    with self.subTest(status=status, method=method, path=path):
                        r = self.a.req(method, path)
                        self.assertEqual(r.status, 404, r)
                        self.assertEqual(r.json, {"success": False, "error": "job not found"})
                        self.assertNotIn(b"secret", r.raw)
                        self.assertNotIn(self.b.id.encode(), r.raw)
            self.assertEqual(row(jid), before, f"B's {status} job was changed by A")
            # B still sees and controls it
            self.assertEqual(self.b.req("GET", f"/api/training/jobs/{jid}").status, 200)

    def test_a_cannot_list_bs_jobs_with_any_filter_or_cursor(self):
        b_jobs = {self.b_job(s) for s in ("queued", "running", "completed", "failed")}
        a_job = self.a.submit(self.a_ds).json["job_id"]
        # a cursor pointing into B's rows: paging continues over A's rows only
        micros = tqenv.psql("SELECT (extract(epoch FROM created_at) * 1000000)::bigint + 1 "
                            "FROM training_jobs WHERE id = :'id'",
                            variables={"id": sorted(b_jobs)[0]})
        queries = ["", "?status=queued", "?status=running", "?status=completed",
                   "?status=failed", "?limit=100", f"?cursor={micros}_{sorted(b_jobs)[0]}",
                   f"?cursor=9999999999999999_{sorted(b_jobs)[0]}"]
        for q in queries:
            with self.subTest(q):
                r = self.a.req("GET", "/api/training/jobs" + q)
                self.assertIn(r.status, (200,), r)
                ids = {j["id"] for j in r.json["jobs"]}
                self.assertFalse(ids & b_jobs, f"A's list {q} shows B's jobs")
                self.assertTrue(all(j["user_id"] == self.a.id for j in r.json["jobs"]))
        r = self.a.req("GET", "/api/training/jobs")
        self.assertEqual([j["id"] for j in r.json["jobs"]], [a_job])

    def test_a_cannot_submit_with_bs_dataset(self):
        for spelled in (self.b_ds, self.b_ds.upper()):
            with self.subTest(spelled):
                r = self.a.submit(spelled)
                self.assertEqual(r.status, 403, r)
                self.assertEqual(r.json, {"success": False,
                                          "error": "dataset belongs to another user"})
        self.assertEqual(tqenv.psql("SELECT count(*) FROM training_jobs WHERE user_id = :'u'",
                                    variables={"u": self.a.id}), "0")

    def test_events_of_a_deleted_job_stay_private(self):
        jid = self.b_job("cancelled")
        self.assertEqual(self.b.req("DELETE", f"/api/training/jobs/{jid}").status, 200)
        self.assertEqual(self.b.req("GET", f"/api/training/jobs/{jid}/events").status, 200)
        r = self.a.req("GET", f"/api/training/jobs/{jid}/events")
        self.assertEqual(r.status, 404, r)
        self.assertNotIn(b"secret", r.raw)

    def test_idempotency_keys_do_not_cross_users(self):
        key = "shared-" + uuid.uuid4().hex
        rb = self.b.submit(self.b_ds, name="b", **{})
        rb = self.b.req("POST", SUBMIT, {"dataset_id": self.b_ds, "type": "lora",
                                         "base_model": "gpt2", "config": {}},
                        headers={"Idempotency-Key": key})
        self.assertEqual(rb.status, 200, rb)
        # A replays B's key with B's exact body: must not get B's job back
        ra = self.a.req("POST", SUBMIT, {"dataset_id": self.b_ds, "type": "lora",
                                         "base_model": "gpt2", "config": {}},
                        headers={"Idempotency-Key": key})
        self.assertEqual(ra.status, 403, ra)
        self.assertNotIn(rb.json["job_id"].encode(), ra.raw)
        ra = self.a.req("POST", SUBMIT, {"dataset_id": self.a_ds, "type": "lora",
                                         "base_model": "gpt2", "config": {}},
                        headers={"Idempotency-Key": key})
        self.assertEqual(ra.status, 200, ra)
        self.assertNotEqual(ra.json["job_id"], rb.json["job_id"])
        self.assertIsNone(ra.header("Idempotent-Replayed"))

    def test_wildcard_user_ids_see_only_their_own_jobs(self):
        """User ids made of LIKE/regex/SQL metacharacters: each sees exactly its own jobs
        and its id is stored verbatim."""
        mine = {}
        for uid in ("%", "_", "%%", ".*", "'", "a'--", "b\";--", "\\", "$1", "*",
                    "o'brien';DROP_TABLE_training_jobs;--", "%" + uuid.uuid4().hex[:4]):
            u = User(self.p.port, user_id=uid)
            tqenv.psql("DELETE FROM datasets WHERE user_id = :'u'", variables={"u": uid})
            tqenv.psql("UPDATE training_jobs SET status = 'cancelled', completed_at = now() "
                       "WHERE user_id = :'u' AND status NOT IN ('completed','failed','cancelled')",
                       variables={"u": uid})
            tqenv.psql("DELETE FROM training_jobs WHERE user_id = :'u'", variables={"u": uid})
            r = u.submit(u.dataset(), name=f"job of {uid}")
            self.assertEqual(r.status, 200, (uid, r))
            mine[uid] = (u, r.json["job_id"])
        for uid, (u, jid) in mine.items():
            with self.subTest(uid):
                r = u.req("GET", "/api/training/jobs?limit=100")
                self.assertEqual(r.status, 200, r)
                self.assertEqual([j["id"] for j in r.json["jobs"]], [jid])
                self.assertEqual(r.json["jobs"][0]["user_id"], uid)
                self.assertEqual(row(jid)["user_id"], uid)
                for other, (_, ojid) in mine.items():
                    if other != uid:
                        self.assertEqual(u.req("GET", f"/api/training/jobs/{ojid}").status, 404)


# ====================================================================== verbatim storage

HOSTILE_TEXT = [
    "'; DROP TABLE training_jobs; --",
    "Robert'); DELETE FROM datasets WHERE ('1'='1",
    "\" OR \"\"=\" ; SELECT pg_sleep(10); --",
    "$1 $$ $tag$ :'name' :name \\x27 \\\\ \\ %s %n %x %% _ *",
    "E'\\x00' U&'\\0000' || chr(0) || '",
    "\u65e5\u672c\u8a9e \U0001F3A8 caf\u00e9 \u00fc\u00f1\u00ee\u00e7\u00f8d\u00e9",
    "\u202etxt.exe \u200b \u200d \ufeff \u2028 \u2029",
    "<script>alert(document.cookie)</script> & &amp; {{7*7}} ${7*7}",
    "\U0001F469\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466" * 8,
    "{\"json\": [1, 2]} [] {} null true",
]
HOSTILE_WORDS = ["' OR '1'='1", "\\", "%_", "\"; --", "$$;", ",", "{a,b}", "\"quoted\"",
                 "NULL", "null", " leading", "trailing ", "\U0001F600" * 25, "a" * 100]
HOSTILE_MODELS = ["a_b.c-d/e.f_g", "O_o/x.y_z", "0/0", "a" * 96 + "/" + "b" * 96, "x_",
                  "A.B-C_D"]


class VerbatimTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.p = start_producer()

    @classmethod
    def tearDownClass(cls):
        stop_checked(cls.p)

    def check_roundtrip(self, u, ds, **fields):
        r = u.submit(ds, **fields)
        self.assertEqual(r.status, 200, (fields, r))
        jid = r.json["job_id"]
        job = u.req("GET", f"/api/training/jobs/{jid}").json["job"]
        listed = [j for j in u.req("GET", "/api/training/jobs?limit=100").json["jobs"]
                  if j["id"] == jid][0]
        db = json.loads(tqenv.psql(
            "SELECT json_build_object('name', name, 'base_model', base_model, "
            "'trigger_words', to_json(trigger_words), 'user_id', user_id) "
            "FROM training_jobs WHERE id = :'id'", variables={"id": jid}))
        for k, v in fields.items():
            self.assertEqual(job[k], v, f"GET {k}")
            self.assertEqual(listed[k], v, f"list {k}")
            self.assertEqual(db[k], v, f"row {k}")
        self.assertEqual(db["user_id"], u.id)
        # the outbox message carries them verbatim too
        msg = json.loads(tqenv.psql("SELECT payload FROM outbox WHERE job_id = :'id'"
                                    " AND exchange = 'trainq.jobs'",
                                    variables={"id": jid}) or "{}")
        for k, v in fields.items():
            if msg:
                self.assertEqual(msg.get(k), v, f"outbox message {k}")
        return jid

    def test_names_are_stored_and_returned_verbatim(self):
        u = User(self.p.port)
        ds = u.dataset()
        for text in HOSTILE_TEXT:
            with self.subTest(text[:30]):
                self.check_roundtrip(u, ds, name=text[:200] if len(text.encode()) <= 200
                                     else text.encode()[:200].decode(errors="ignore"))

    def test_trigger_words_are_stored_and_returned_verbatim(self):
        u = User(self.p.port)
        ds = u.dataset()
        self.check_roundtrip(u, ds, trigger_words=HOSTILE_WORDS[:20])
        for w in HOSTILE_TEXT:
            w = w.encode()[:100].decode(errors="ignore")
            with self.subTest(w[:30]):
                self.check_roundtrip(u, ds, trigger_words=[w, w])

    def test_base_models_at_the_edge_of_the_rule_are_verbatim(self):
        u = User(self.p.port)
        ds = u.dataset()
        for m in HOSTILE_MODELS:
            with self.subTest(m[:30]):
                self.check_roundtrip(u, ds, base_model=m)

    def test_user_id_with_metacharacters_is_verbatim(self):
        u = User(self.p.port, user_id="o'brien\";--%_\\$1{}[]<>|&`" + uuid.uuid4().hex[:6])
        ds = u.dataset()
        jid = self.check_roundtrip(u, ds, name="'; --")
        self.assertEqual(u.req("GET", f"/api/training/jobs/{jid}").json["job"]["user_id"], u.id)


# ====================================================================== consumer safety

class ConsumerSafetyTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        h.purge_queue()
        cls.tmp = tempfile.mkdtemp(prefix="tq-isolation-")
        cls.root = os.path.join(cls.tmp, "datasets")
        os.makedirs(cls.root)
        # a perfectly valid dataset OUTSIDE the root: if a path escaped, the job would run
        cls.outside = os.path.join(cls.tmp, "outside")
        os.makedirs(cls.outside)
        with open(os.path.join(cls.outside, "trainer.env"), "w") as f:
            f.write("DURATION=0.2\nEXIT_CODE=0\nMESSAGE=escaped\nSTEPS=1\n")
        with open(os.path.join(cls.outside, "0001.png"), "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n")
        cls.user = "iso-c-" + uuid.uuid4().hex[:10]
        cls.workers, cls.procs = [], []
        cls.c = cls.consumer()
        cls.c.wait_event("consumer.ready", timeout=30)

    @classmethod
    def consumer(cls, **extra):
        wid = "iso-" + uuid.uuid4().hex[:8]
        cls.workers.append(wid)
        env = {"TRAINQ_WORKER_ID": wid, "TRAINQ_SLOTS": 2, "TRAINQ_GPUS": "none",
               "TRAINQ_DATASETS_ROOT": cls.root,
               "TRAINQ_DATA_DIR": os.path.join(cls.tmp, "data-" + wid),
               "TRAINQ_HF_CACHE_DIR": os.path.join(cls.tmp, "hf"),
               "TRAINQ_TRAINING_IMAGE": tqenv.TRAINING_IMAGE,
               "TRAINQ_TRAINING_CMD": "--config /workspace/config.json",
               "TRAINQ_METRICS_ADDR": "127.0.0.1:0", "TRAINQ_HEARTBEAT_SECONDS": 1,
               "TRAINQ_LEASE_SECONDS": 6, "TRAINQ_SWEEP_SECONDS": 1,
               "TRAINQ_STOP_GRACE_SECONDS": 2, "TRAINQ_LOG_LEVEL": "info"}
        env.update(extra)
        p = h.Program(CONSUMER, env=env, name="consumer-" + wid).start()
        cls.procs.append(p)
        return p

    @classmethod
    def tearDownClass(cls):
        problems = []
        for p in cls.procs:
            if p.running():
                code = p.stop(signal.SIGTERM, timeout=30)
                if code != 0:
                    problems.append(f"{p.name} exited {code}:\n{p.stderr_text()[-3000:]}")
            if p.sanitizer_report():
                problems.append(f"{p.name} sanitizer report:\n{p.stderr_text()[-6000:]}")
        for wid in cls.workers:
            flt = urllib.parse.quote(json.dumps({"label": [f"trainq.worker={wid}"]}))
            st, lst = tqenv.docker("GET", f"/containers/json?all=1&filters={flt}")
            for ct in lst or []:
                tqenv.remove_container(ct["Id"])
        tqenv.psql("UPDATE training_jobs SET status = 'cancelled', completed_at = now() "
                   "WHERE user_id LIKE 'iso-c-%' AND status NOT IN "
                   "('completed', 'failed', 'cancelled')")
        for p in cls.procs:
            p.cleanup()
        shutil.rmtree(cls.tmp, ignore_errors=True)
        assert not problems, "\n".join(problems)

    def restart_main_consumer(self):
        type(self).c = self.consumer()
        self.c.wait_event("consumer.ready", timeout=30)

    def dataset(self, storage_path, user=None):
        ds = str(uuid.uuid4())
        tqenv.psql("INSERT INTO datasets (id, user_id, name, storage_path) "
                   "VALUES (:'id', :'u', 'd', :'p')",
                   variables={"id": ds, "u": user or self.user, "p": storage_path})
        return ds

    def real_dataset(self, duration=0.5, user=None):
        rel = f"{user or self.user}/{uuid.uuid4()}"
        os.makedirs(os.path.join(self.root, rel))
        with open(os.path.join(self.root, rel, "trainer.env"), "w") as f:
            f.write(f"DURATION={duration}\nEXIT_CODE=0\nMESSAGE=ok\nSTEPS=2\n")
        with open(os.path.join(self.root, rel, "0001.png"), "wb") as f:  # the preflight's image
            f.write(b"\x89PNG\r\n\x1a\n")
        return self.dataset(rel, user=user)

    def publish(self, m):
        import pika
        conn = h.amqp_connection()
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            ch.basic_publish("trainq.jobs", m["type"], json.dumps(m).encode(),
                             pika.BasicProperties(content_type="application/json",
                                                  delivery_mode=2, message_id=m["job_id"]),
                             mandatory=True)
        finally:
            conn.close()

    def message(self, ds, user=None, **over):
        m = {"schema": "trainq.job.v1", "job_id": str(uuid.uuid4()), "user_id": user or self.user,
             "dataset_id": ds, "type": "lora", "base_model": "gpt2", "config": {"steps": 100}}
        m.update(over)
        return m

    def wait_status(self, jid, statuses, timeout=60):
        return h.wait_until(lambda: (j := row(jid)) and j["status"] in statuses and j,
                            timeout=timeout, interval=0.2, what=f"job {jid} in {statuses}")

    def test_dataset_paths_escaping_the_root_fail_without_container(self):
        os.symlink(self.outside, os.path.join(self.root, "link-out"))
        os.symlink("/etc", os.path.join(self.root, "link-etc"))
        os.makedirs(os.path.join(self.root, "chain"))
        os.symlink(os.path.join(self.root, "link-out"), os.path.join(self.root, "chain", "hop"))
        rel_outside = os.path.relpath(self.outside, self.root)  # "../outside"
        paths = {
            "relative ../": rel_outside,
            "relative ../ after a dir": f"{self.user}/../../outside",
            "dot-dot at the end": "link-out/..",
            "absolute /etc": "/etc",
            "absolute outside dir": self.outside,
            "absolute / (everything)": "/",
            "the root itself (relative .)": ".",
            "the root itself (absolute)": self.root,
            "the root itself (trailing slash)": self.root + "/",
            "symlink to outside": "link-out",
            "symlink to /etc": "link-etc",
            "symlink chain to outside": "chain/hop",
            "absolute path through a symlink": os.path.join(self.root, "link-out"),
            "prefix sibling of the root": self.root + "-evil",
        }
        os.makedirs(self.root + "-evil", exist_ok=True)
        with open(os.path.join(self.root + "-evil", "trainer.env"), "w") as f:
            f.write("DURATION=0.2\nEXIT_CODE=0\nMESSAGE=escaped\nSTEPS=1\n")
        jobs = {}
        for what, sp in paths.items():
            m = self.message(self.dataset(sp))
            jobs[what] = (m["job_id"], sp)
            self.publish(m)
        for what, (jid, sp) in jobs.items():
            with self.subTest(what, storage_path=sp):
                j = self.wait_status(jid, TERMINAL)
                self.assertEqual(j["status"], "failed", f"{sp!r}: {j}")
                reason = j["error_message"] or ""
                self.assertTrue("escapes the datasets root" in reason or
                                "is not a directory" in reason or "does not exist" in reason,
                                f"{sp!r}: reason {reason!r}")
                self.assertIsNone(j["container_id"])
                self.assertEqual(containers_of_job(jid), [], f"{sp!r}: a container was created")
        self.assertEqual(len([e for e in self.c.events("job.started")
                              if e.get("job_id") in {j for j, _ in jobs.values()}]), 0)
        self.assertTrue(self.c.running())

    def test_running_container_is_locked_down(self):
        m = self.message(self.real_dataset(duration=30))
        self.publish(m)
        j = self.wait_status(m["job_id"], ("running",) + TERMINAL)
        self.assertEqual(j["status"], "running", j)
        st, info = tqenv.docker("GET", f"/containers/{j['container_id']}/json")
        self.assertEqual(st, 200, info)
        self.assertTrue(info["State"]["Running"])
        hc = info["HostConfig"]
        self.assertIs(hc["Privileged"], False)
        self.assertIn("ALL", hc.get("CapDrop") or [])
        self.assertFalse(hc.get("CapAdd"), hc.get("CapAdd"))
        self.assertEqual(hc["NetworkMode"], "none")
        self.assertIn("no-new-privileges", " ".join(hc.get("SecurityOpt") or []))
        # (CgroupnsMode is left out: on a cgroup v1 host dockerd's default is "host")
        for ns in ("PidMode", "IpcMode", "UTSMode", "UsernsMode"):
            self.assertNotEqual(hc.get(ns), "host", ns)
        self.assertFalse(hc.get("Devices"), "host devices passed through")
        sock = tqenv.docker_socket_path()
        sock_dir = os.path.dirname(sock)
        sources = [mt.get("Source", "") for mt in info.get("Mounts", [])]
        sources += [b.split(":")[0] for b in hc.get("Binds") or []]
        for src in sources:
            real = os.path.realpath(src) if src else src
            self.assertFalse(src.endswith(".sock") or real.endswith(".sock"), src)
            self.assertNotIn(real, (sock, sock_dir, "/", "/run", "/var/run"), src)
            self.assertFalse(sock.startswith(real.rstrip("/") + "/"),
                             f"mount {src} contains the docker socket")
        ds_mounts = [mt for mt in info["Mounts"] if mt["Destination"] == "/workspace/datasets"]
        self.assertEqual(len(ds_mounts), 1)
        self.assertFalse(ds_mounts[0]["RW"], "dataset mounted read-write")
        self.assertEqual(info["Config"]["Labels"].get("trainq.user"), self.user)
        # done: cancel it the way the API would
        tqenv.psql("UPDATE training_jobs SET cancel_requested_at = now() WHERE id = :'id'",
                   variables={"id": m["job_id"]})
        self.assertEqual(self.wait_status(m["job_id"], TERMINAL, timeout=30)["status"], "cancelled")

    def test_hostile_user_id_over_amqp_is_stored_verbatim_and_labelled(self):
        # Every character a user id may hold that SQL, JSON, labels and shells treat specially
        # (a user id is 1..128 bytes of visible ASCII, the rule of the token's sub: spaces and
        # non-ASCII are dead-lettered, tests/corpus/amqp/cases.jsonl).
        uid = "iso-c-o'brien\";DROP/**/TABLE/**/training_jobs;--%_\\$(x)`y`" + uuid.uuid4().hex[:4]
        ds = self.real_dataset(duration=0.3, user=uid)
        m = self.message(ds, user=uid, name="'); DELETE FROM datasets;--",
                         trigger_words=["' OR 1=1", "\u202e"])
        self.publish(m)
        j = self.wait_status(m["job_id"], TERMINAL)
        self.assertEqual(j["status"], "completed", j)
        self.assertEqual(j["user_id"], uid)
        self.assertEqual(j["name"], m["name"])
        self.assertEqual(j["trigger_words"], m["trigger_words"])
        self.assertEqual(tqenv.psql("SELECT count(*) FROM datasets WHERE id = :'d'",
                                    variables={"d": ds}), "1")

    def test_cache_dir_holding_the_docker_socket_is_never_mounted(self):
        sock_dir = os.path.dirname(tqenv.docker_socket_path())
        link = os.path.join(self.tmp, "hf-link-to-socket-dir")
        os.symlink(sock_dir, link)
        # only the misconfigured consumer may take the job
        self.assertEqual(self.c.stop(signal.SIGTERM, timeout=30), 0)
        self.addCleanup(self.restart_main_consumer)
        for what, hf in (("socket dir", sock_dir), ("symlink to socket dir", link)):
            with self.subTest(what):
                c = self.consumer(TRAINQ_HF_CACHE_DIR=hf)
                m = self.message(self.real_dataset(duration=0.3))
                started = False
                try:
                    c.wait_event("consumer.ready", timeout=30)
                    started = True
                except AssertionError:
                    pass  # refusing to start with such a cache dir is fine too
                if started:
                    self.publish(m)
                    j = self.wait_status(m["job_id"], TERMINAL + ("running",), timeout=60)
                    for ct in containers_of_job(m["job_id"]):
                        st, info = tqenv.docker("GET", f"/containers/{ct['Id']}/json")
                        srcs = [os.path.realpath(mt["Source"]) for mt in info.get("Mounts", [])]
                        self.assertNotIn(os.path.realpath(sock_dir), srcs,
                                         f"{what}: the docker socket directory was mounted "
                                         f"into training container {ct['Id'][:12]}")
                    if j["status"] == "failed":
                        self.assertIn("socket", j["error_message"] or "")
                    c.stop(signal.SIGTERM, timeout=30)
                    h.purge_queue()


if __name__ == "__main__":
    unittest.main()
