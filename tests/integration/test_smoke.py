"""Smoke tests of the real services that scripts/services.sh runs for trainq.

They prove the test environment itself works before any trainq binary is involved:
Postgres is migrated, dockerd runs the fake trainer image as the consumer will, RabbitMQ
round-trips a persistent message, and the database refuses a third active job per user.
The migration checks also prove scripts/migrate.sh itself: a fresh database migrates, a
second run changes nothing, and the stored functions are the ones in db/procedures/.
"""

import glob
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import unittest
import uuid

import pika

import tqenv


class PostgresSmokeTest(unittest.TestCase):
    def test_postgres_answers_and_every_migration_is_recorded(self):
        self.assertEqual(tqenv.psql("SELECT 1"), "1")
        files = sorted(os.path.basename(p)[:-len(".sql")]
                       for p in glob.glob(os.path.join(tqenv.MIGRATIONS_DIR, "[0-9]*_*.sql")))
        applied = set(tqenv.psql("SELECT version FROM schema_migrations").split())
        missing = [v for v in files if v not in applied]
        self.assertEqual(missing, [], "migrations not recorded in schema_migrations")


PROCEDURES_DIR = os.path.join(tqenv.SOURCE_DIR, "db", "procedures")
MIGRATE_SH = os.path.join(tqenv.SOURCE_DIR, "scripts", "migrate.sh")
CREATE_FUNCTION = re.compile(r"CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+(\w+)\s*\(", re.I)


def sql_files(directory):
    return sorted(glob.glob(os.path.join(directory, "*.sql")))


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def migrate(url, **env):
    proc = subprocess.run(["bash", MIGRATE_SH], capture_output=True, text=True, timeout=120,
                          env=tqenv.child_env(TRAINQ_DATABASE_URL=url, **env))
    if proc.returncode != 0:
        raise AssertionError(f"migrate.sh failed: {proc.stderr}")
    return proc.stdout


def functions_called_by_the_programs():
    """tq_* functions named in the SQL text (string literals) of the C sources."""
    literal = re.compile(r'"((?:[^"\\\n]|\\.)*)"')
    called = set()
    for d in ("consumer", "producer", "shared"):
        for path in glob.glob(os.path.join(tqenv.SOURCE_DIR, d, "*.c")):
            text = " ".join(literal.findall(read(path)))
            called.update(re.findall(r"\b(tq_\w+)\s*\(", text))
    return called


class ProceduresTest(unittest.TestCase):
    """db/procedures/ is the one home of stored functions and triggers, reloaded on every
    migrate; the numbered migrations hold only tables, columns, indexes and data."""

    @classmethod
    def setUpClass(cls):
        # A database of its own: these tests migrate from nothing and change function bodies.
        cls.db = "tq_fresh_" + uuid.uuid4().hex[:12]
        tqenv.psql(f"CREATE DATABASE {cls.db} OWNER trainq", superuser=True)
        base, _, _ = tqenv.DATABASE_URL.rpartition("/")
        cls.url = f"{base}/{cls.db}"
        cls.first_run = migrate(cls.url)

    @classmethod
    def tearDownClass(cls):
        tqenv.psql(f"DROP DATABASE IF EXISTS {cls.db} WITH (FORCE)", superuser=True)

    def psql(self, sql, **variables):
        proc = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                               "-d", self.url] + [f"-v{k}={v}" for k, v in variables.items()],
                              input=sql, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise AssertionError(f"psql failed: {proc.stderr}")
        return proc.stdout.strip()

    def snapshot(self):
        """Every function body and every trigger (with its oid: a trigger dropped and made
        again has a new one) of the fresh database."""
        return self.psql(
            "SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ') '"
            "       || md5(pg_get_functiondef(p.oid)) FROM pg_proc p"
            "  JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'"
            " UNION ALL SELECT t.oid || ' ' || pg_get_triggerdef(t.oid) FROM pg_trigger t"
            "  WHERE NOT t.tgisinternal ORDER BY 1").splitlines()

    def test_a_fresh_database_migrates_works_and_a_second_run_changes_nothing(self):
        self.assertIn("migrate: applied 0001_init", self.first_run)
        self.assertRegex(self.first_run, r"reloaded \d+ procedures files")
        files = sorted(os.path.basename(p)[:-4] for p in
                       glob.glob(os.path.join(tqenv.MIGRATIONS_DIR, "[0-9]*_*.sql")))
        self.assertEqual(self.psql("SELECT version FROM schema_migrations ORDER BY 1").split(),
                         files)
        triggers = self.psql("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal "
                             "ORDER BY 1").split()
        self.assertEqual(triggers, ["job_events_append_only", "job_usage_score_add",
                                    "job_usage_score_delete", "job_usage_score_update",
                                    "outbox_notify", "settings_half_life",
                                    "training_jobs_audit", "training_jobs_failure_class",
                                    "training_jobs_guard_active", "training_jobs_usage",
                                    "training_jobs_webhooks", "training_jobs_webhooks_progress"])
        # It works: the guard refuses a third active job, the audit trigger records.
        user, ds = "fresh-" + uuid.uuid4().hex[:8], str(uuid.uuid4())
        insert = ("INSERT INTO training_jobs (id, user_id, dataset_id, name, type, base_model,"
                  " config, status, worker_id, message) VALUES (gen_random_uuid(), :'u',"
                  " :'d', 'n', 'lora', 'gpt2', '{}', 'running', 'w', '{}');")
        self.psql(insert * 2, u=user, d=ds)
        with self.assertRaisesRegex(AssertionError, "already has 2 active jobs"):
            self.psql(insert, u=user, d=ds)
        self.assertEqual(self.psql("SELECT count(*) FROM job_events WHERE user_id = :'u'",
                                   u=user), "2")

        before = self.snapshot()
        second = migrate(self.url)
        self.assertNotIn("applied", second)
        self.assertEqual(self.snapshot(), before, "a second migrate changed a function or "
                         "re-created a trigger")
        # --help is help (it migrated), anything else a one-line refusal
        for arg, rc in (("--help", 0), ("-h", 0), ("--dry-run", 2)):
            proc = subprocess.run(["bash", MIGRATE_SH, arg], capture_output=True, text=True,
                                  timeout=60, env=tqenv.child_env(TRAINQ_DATABASE_URL=self.url))
            self.assertEqual(proc.returncode, rc, (arg, proc.stderr))
            self.assertNotIn("reloaded", proc.stdout + proc.stderr)

    def test_a_procedures_body_changed_on_disk_is_what_the_database_runs(self):
        tmp = tempfile.mkdtemp(prefix="trainq-procs-")
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        for path in sql_files(PROCEDURES_DIR):
            shutil.copy(path, tmp)
        users = os.path.join(tmp, "10_users.sql")
        text = read(users)
        self.assertIn("'default_max_active_per_user'", text)
        with open(users, "w", encoding="utf-8") as f:
            f.write(text.replace("'default_max_active_per_user'", "'tq_reload_test_limit'"))
        self.psql("INSERT INTO settings (key, value) VALUES ('tq_reload_test_limit', '7')")
        self.addCleanup(self.psql, "DELETE FROM settings WHERE key = 'tq_reload_test_limit'")
        self.assertEqual(self.psql("SELECT tq_user_max_active('nobody')"), "2")

        migrate(self.url, TRAINQ_PROCEDURES_DIR=tmp)
        self.assertEqual(self.psql("SELECT tq_user_max_active('nobody')"), "7")
        migrate(self.url)
        self.assertEqual(self.psql("SELECT tq_user_max_active('nobody')"), "2")

    def test_every_function_is_defined_in_one_procedures_file_and_exists_once(self):
        homes = {}
        for path in sql_files(PROCEDURES_DIR):
            for name in CREATE_FUNCTION.findall(read(path)):
                homes.setdefault(name, []).append(os.path.basename(path))
        twice = {n: f for n, f in homes.items() if len(f) > 1}
        self.assertEqual(twice, {}, "functions defined more than once")
        for path in sql_files(tqenv.MIGRATIONS_DIR):
            self.assertEqual(CREATE_FUNCTION.findall(read(path)), [],
                             f"{path} defines a function (they belong in db/procedures/)")
            self.assertNotRegex(read(path), r"(?i)CREATE\s+TRIGGER", path)

        called = functions_called_by_the_programs()
        for name in ("tq_lock_user", "tq_release_parked", "tq_give_back_as", "tq_sweep"):
            self.assertIn(name, called)
        for name in sorted(called):
            self.assertIn(name, homes, f"the programs call {name}, which no procedures file "
                          "defines")
            for url in (tqenv.DATABASE_URL, self.url):
                n = subprocess.run(
                    ["psql", "-X", "-A", "-t", "-d", url, "-c",
                     f"SELECT count(*) FROM pg_proc p JOIN pg_namespace s "
                     f"ON s.oid = p.pronamespace WHERE s.nspname = 'public' "
                     f"AND p.proname = '{name}'"],
                    capture_output=True, text=True, timeout=60, check=True).stdout.strip()
                self.assertEqual(n, "1", f"{name} exists {n} times in {url}")

    def test_every_per_user_lock_goes_through_tq_lock_user(self):
        lock_call = re.compile(r"\bpg_advisory_(?:xact_)?lock\s*\(")
        found = []
        for d, ext in (("db/procedures", "sql"), ("db/migrations", "sql"), ("consumer", "c"),
                       ("producer", "c"), ("shared", "c")):
            for path in glob.glob(os.path.join(tqenv.SOURCE_DIR, d, f"*.{ext}")):
                if lock_call.search(read(path)):
                    found.append(os.path.relpath(path, tqenv.SOURCE_DIR))
        self.assertEqual(found, ["db/procedures/10_users.sql"])


class DockerSmokeTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="trainq-smoke-")
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.datasets = os.path.join(self.tmp, "datasets")
        self.outputs = os.path.join(self.tmp, "outputs")
        os.mkdir(self.datasets)
        os.mkdir(self.outputs)
        with open(os.path.join(self.datasets, "trainer.env"), "w") as f:
            f.write("DURATION=0.5\nEXIT_CODE=3\nMESSAGE=boom\n")
        self.config = os.path.join(self.tmp, "config.json")
        with open(self.config, "w") as f:
            json.dump({"pretrained_model_name_or_path": "smoke", "max_train_steps": 5}, f)

    def test_fake_trainer_runs_through_the_engine_api_and_reports_its_exit_code(self):
        name = "trainq-smoke-" + uuid.uuid4().hex[:12]
        spec = {
            "Image": tqenv.TRAINING_IMAGE,
            "Cmd": ["--config", "/workspace/config.json"],
            "Labels": {"org.trainq.test": "smoke"},
            "HostConfig": {
                "NetworkMode": "none",
                "Mounts": [
                    {"Type": "bind", "Source": self.datasets, "Target": "/workspace/datasets",
                     "ReadOnly": True},
                    {"Type": "bind", "Source": self.outputs, "Target": "/workspace/outputs"},
                    {"Type": "bind", "Source": self.config, "Target": "/workspace/config.json",
                     "ReadOnly": True},
                ],
            },
        }
        status, body = tqenv.docker("POST", f"/containers/create?name={name}", spec)
        self.assertEqual(status, 201, body)
        cid = body["Id"]
        self.addCleanup(tqenv.remove_container, cid)

        status, body = tqenv.docker("POST", f"/containers/{cid}/start")
        self.assertEqual(status, 204, body)
        status, body = tqenv.docker("POST", f"/containers/{cid}/wait", timeout=60)
        self.assertEqual(status, 200, body)
        self.assertEqual(body["StatusCode"], 3)

        out, _ = tqenv.container_logs(cid)
        self.assertIn("fake-trainer: starting", out)
        self.assertIn('"max_train_steps": 5', out)
        for i in range(1, 6):
            self.assertIn(f"progress: step {i}/5", out)
        self.assertEqual(out.rstrip().splitlines()[-1], "boom")
        weights = os.path.join(self.outputs, "pytorch_lora_weights.safetensors")
        self.assertTrue(os.path.isfile(weights) and os.path.getsize(weights) > 0)
        with open(os.path.join(self.outputs, "trainer.log")) as f:
            self.assertIn("boom", f.read())

        status, _ = tqenv.docker_raw("DELETE", f"/containers/{cid}")
        self.assertEqual(status, 204)
        status, _ = tqenv.docker_raw("GET", f"/containers/{cid}/json")
        self.assertEqual(status, 404)


class RabbitMQSmokeTest(unittest.TestCase):
    def test_a_persistent_message_round_trips_with_its_properties(self):
        conn = pika.BlockingConnection(pika.URLParameters(tqenv.AMQP_URL))
        self.addCleanup(lambda: conn.is_open and conn.close())
        ch = conn.channel()
        ch.confirm_delivery()
        queue = ch.queue_declare(queue="", exclusive=True, auto_delete=True).method.queue
        job_id = str(uuid.uuid4())
        body = json.dumps({"schema": "trainq.job.v1", "job_id": job_id}).encode()
        ch.basic_publish(
            exchange="", routing_key=queue, body=body, mandatory=True,
            properties=pika.BasicProperties(
                delivery_mode=2, message_id=job_id,
                content_type="application/json"))

        deadline = time.monotonic() + 10
        method = None
        while method is None and time.monotonic() < deadline:
            method, props, got = ch.basic_get(queue=queue, auto_ack=False)
            if method is None:
                time.sleep(0.05)
        self.assertIsNotNone(method, "message did not arrive within 10 s")
        self.assertEqual(got, body)
        self.assertEqual(props.message_id, job_id)
        self.assertEqual(props.delivery_mode, 2)
        self.assertEqual(props.content_type, "application/json")
        ch.basic_ack(method.delivery_tag)
        self.assertEqual(ch.queue_declare(queue=queue, passive=True).method.message_count, 0)


@unittest.skipUnless(os.path.exists(os.path.join(tqenv.MIGRATIONS_DIR, "0001_init.sql")),
                     "db/migrations/0001_init.sql not written yet")
class ActiveJobGuardTest(unittest.TestCase):
    """Invariant 1 at the database level: no code path can make a third active row."""

    def setUp(self):
        self.user = "smoke-" + uuid.uuid4().hex
        self.dataset = str(uuid.uuid4())
        self.addCleanup(self._cleanup)
        tqenv.psql("INSERT INTO datasets (id, user_id, name, storage_path) "
                   "VALUES (:'ds', :'user', 'smoke', 'smoke/dataset')",
                   variables={"ds": self.dataset, "user": self.user})

    def _cleanup(self):
        # job_events is append-only by trigger; only the superuser may bypass that, for tests.
        tqenv.psql("SET session_replication_role = replica;"
                   "DELETE FROM job_events WHERE user_id = :'user';"
                   "DELETE FROM outbox WHERE job_id IN "
                   "  (SELECT id FROM training_jobs WHERE user_id = :'user');"
                   "DELETE FROM training_jobs WHERE user_id = :'user';"
                   "DELETE FROM datasets WHERE user_id = :'user';",
                   superuser=True, variables={"user": self.user})

    def _insert_job(self, status, check=True):
        worker = "smoke-worker" if status in ("pending", "running") else None
        sql = ("\\set VERBOSITY verbose\n"
               "INSERT INTO training_jobs (id, user_id, dataset_id, name, type, base_model, "
               "config, message, status, worker_id) VALUES (gen_random_uuid(), :'user', :'ds', "
               "'smoke', 'lora', 'runwayml/stable-diffusion-v1-5', '{}'::jsonb, '{}', :'status', "
               + ("NULL" if worker is None else ":'worker'") + ")")
        return tqenv.psql(sql, check=check, variables={
            "user": self.user, "ds": self.dataset, "status": status,
            "worker": worker or ""})

    def _count(self, statuses):
        return int(tqenv.psql(
            "SELECT count(*) FROM training_jobs WHERE user_id = :'user' AND status = ANY (:'st')",
            variables={"user": self.user, "st": "{" + ",".join(statuses) + "}"}))

    def test_a_third_active_job_of_one_user_is_refused_but_a_queued_one_is_accepted(self):
        self._insert_job("running")
        self._insert_job("pending")
        proc = self._insert_job("pending", check=False)
        self.assertNotEqual(proc.returncode, 0, "third active job was accepted")
        self.assertIn("TQ001", proc.stderr)
        proc = self._insert_job("running", check=False)
        self.assertNotEqual(proc.returncode, 0, "third active job was accepted")
        self._insert_job("queued")
        self._insert_job("queued")
        self.assertEqual(self._count(["pending", "running"]), 2)
        self.assertEqual(self._count(["queued"]), 2)
        # Every accepted row went through the audit trigger.
        self.assertEqual(tqenv.psql("SELECT count(*) FROM job_events WHERE user_id = :'user'",
                                    variables={"user": self.user}), "4")


if __name__ == "__main__":
    unittest.main()
