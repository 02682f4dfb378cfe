"""Smoke tests of the real services that scripts/services.sh runs for trainq.

They prove the test environment itself works before any trainq binary is involved:
Postgres is migrated, dockerd runs the fake trainer image as the consumer will, RabbitMQ
round-trips a persistent message, and the database refuses a third active job per user.
"""

import glob
import json
import os
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
               "config, status, worker_id) VALUES (gen_random_uuid(), :'user', :'ds', 'smoke', "
               "'lora', 'runwayml/stable-diffusion-v1-5', '{}'::jsonb, :'status', "
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
