"""The Compose stack (compose/docker-compose.yml) runs the seed's curl example to completion.

Builds the images if missing or stale (scripts/build-images.sh, cached: a warm run builds
nothing), brings up Postgres, RabbitMQ, the migrations, a producer and a consumer with
docker-compose on the private dockerd, submits the original spec's curl example through the
producer container, follows the job to `completed`, checks what the consumer container left
on the host, and tears everything down (volumes included).

Opt-in (ctest label "deploy", `scripts/test.sh --deploy`): a cold run builds five images
(5 to 10.5 minutes on this machine, mostly downloads from the Debian archive); a warm one
takes well under a minute.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import tqenv  # noqa: E402
from test_producer import SEED_BODY, SEED_DATASET as DATASET  # noqa: E402  (the seed's example)
import test_deploy_trainer_adapter as standins  # noqa: E402  (the trainers' stand-ins)

import jwt  # noqa: E402  (python3-jwt)

SRC = tqenv.SOURCE_DIR
COMPOSE_FILE = os.path.join(SRC, "compose", "docker-compose.yml")
ADAPTER = os.path.join(SRC, "image", "trainer-adapter", "trainq-trainer-adapter")
# Ports of this test's stack (six from the base): away from services.sh's defaults (25432,
# 25672..25675); override when they collide with something else on the machine.
PG_PORT, AMQP_PORT, EPMD_PORT, DIST_PORT, HTTP_PORT, METRICS_PORT = (
    int(os.environ.get("TRAINQ_DEPLOY_PORT_BASE", "25854")) + i for i in range(6))
SECRET = "compose-test-secret-0123456789abcdef"
USER_ID = "demo-user"
UID = 10001  # the images' user (deploy/images/Dockerfile)
ADAPTER_IMAGE = "trainq-adapter-test:latest"
# A training image as image/trainer-adapter/Dockerfile builds one, with the stand-in trainers
# of test_deploy_trainer_adapter in place of diffusers and sd-scripts (no pip, no CUDA).
ADAPTER_DOCKERFILE = """FROM trainq-base:bookworm
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends python3 >/dev/null \\
 && rm -rf /var/lib/apt/lists/*
COPY trainq-trainer-adapter /usr/local/bin/trainq-trainer-adapter
COPY diffusers/ /opt/diffusers/examples/dreambooth/
COPY sd-scripts/ /opt/sd-scripts/
ENV STANDIN_RECORD=/workspace/outputs/standin-record.json \\
    STANDIN_CONTROL=/workspace/datasets/standin.env HOME=/tmp
WORKDIR /workspace
ENTRYPOINT ["/usr/bin/python3", "/usr/local/bin/trainq-trainer-adapter"]
CMD ["--config", "/workspace/config.json"]
"""


def log(msg):
    print("test_compose: " + msg, file=sys.stderr, flush=True)


class ComposeStack(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sock = tqenv.docker_socket_path()
        # One fixed project name: a stack left behind by a killed run is removed before `up`
        # (its ports would collide otherwise).
        cls.project = "trainq-deploy-test"
        base = tqenv.STATE_DIR or tempfile.gettempdir()
        cls.root = tempfile.mkdtemp(prefix="compose-", dir=base)
        os.chmod(cls.root, 0o755)
        concept = os.path.join(cls.root, "datasets", USER_ID, "my-concept")
        os.makedirs(concept)
        with open(os.path.join(concept, "trainer.env"), "w") as f:
            f.write("DURATION=2\nSTEPS=4\nEXIT_CODE=0\n"
                    "MESSAGE=fake-trainer: LoRA weights written\n")
        with open(os.path.join(concept, "0001.png"), "wb") as f:  # the preflight's image
            f.write(b"\x89PNG\r\n\x1a\n")
        with open(os.path.join(concept, "0001.txt"), "w") as f:
            f.write("a photo of my-concept\n")
        for d in ("data", "hf-cache"):
            os.makedirs(os.path.join(cls.root, d))
            os.chown(os.path.join(cls.root, d), UID, UID)
        cls.env = dict(os.environ)
        cls.env.update({
            "DOCKER_HOST": tqenv.DOCKER_HOST,
            "TRAINQ_DOCKER_HOST": tqenv.DOCKER_HOST,
            "TRAINQ_DOCKER_SOCKET": cls.sock,
            "TRAINQ_DOCKER_GID": str(os.stat(cls.sock).st_gid),
            "TRAINQ_DATA_ROOT": cls.root,
            "TRAINQ_JWT_SECRET": SECRET,
            "TRAINQ_COMPOSE_PG_PORT": str(PG_PORT),
            "TRAINQ_COMPOSE_AMQP_PORT": str(AMQP_PORT),
            "TRAINQ_COMPOSE_EPMD_PORT": str(EPMD_PORT),
            "TRAINQ_COMPOSE_DIST_PORT": str(DIST_PORT),
            "TRAINQ_COMPOSE_HTTP_ADDR": "127.0.0.1:%d" % HTTP_PORT,
            "TRAINQ_COMPOSE_METRICS_ADDR": "127.0.0.1:%d" % METRICS_PORT,
            "TRAINQ_COMPOSE_WORKER_ID": "compose-test",
            "TRAINQ_TRAINING_IMAGE": tqenv.TRAINING_IMAGE,
        })
        t0 = time.monotonic()
        cls.run_cmd(["bash", os.path.join(SRC, "scripts", "build-images.sh")], timeout=1500)
        cls.run_cmd(["bash", os.path.join(SRC, "scripts", "build-trainer-image.sh")], timeout=300)
        t1 = time.monotonic()
        log("images ready in %.1f s" % (t1 - t0))
        try:
            cls.compose("down", "-v", "--remove-orphans", "-t", "5", timeout=300)
            cls.compose("up", "-d", timeout=600)
            cls.wait_ready()
        except BaseException:
            cls.dump_logs()
            cls.tearDownClass()
            raise
        log("stack up and ready in %.1f s" % (time.monotonic() - t1))

    @classmethod
    def tearDownClass(cls):
        t = time.monotonic()
        try:
            cls.compose("down", "-v", "--remove-orphans", "-t", "20", timeout=300)
        finally:
            # Containers ran as uid 10001 and wrote 0700 directories: root removes them.
            shutil.rmtree(cls.root, ignore_errors=True)
        log("torn down in %.1f s" % (time.monotonic() - t))

    @classmethod
    def run_cmd(cls, argv, *, timeout, check=True):
        r = subprocess.run(argv, env=cls.env, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError("%s exited %d:\n%s%s" % (" ".join(argv), r.returncode,
                                                          r.stdout[-4000:], r.stderr[-4000:]))
        return r

    @classmethod
    def compose(cls, *args, timeout=300, check=True):
        return cls.run_cmd(["docker-compose", "-f", COMPOSE_FILE, "-p", cls.project, *args],
                           timeout=timeout, check=check)

    @classmethod
    def dump_logs(cls):
        r = cls.compose("logs", "--no-color", "--tail", "40", check=False, timeout=60)
        log("compose logs:\n" + r.stdout[-8000:] + r.stderr[-2000:])

    @classmethod
    def wait_ready(cls):
        deadline = time.monotonic() + 180
        last = None
        while time.monotonic() < deadline:
            try:
                url = "http://127.0.0.1:%d/readyz" % HTTP_PORT
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError as e:
                last = e
            time.sleep(0.5)
        raise AssertionError("producer never became ready: %r" % (last,))

    def psql(self, sql, **variables):
        cmd = ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
               "-d", "postgresql://trainq:trainq@127.0.0.1:%d/trainq" % PG_PORT]
        for k, v in variables.items():
            cmd += ["-v", "%s=%s" % (k, v)]
        r = subprocess.run(cmd, input=sql, capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout.strip()

    def get(self, path, token):
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (HTTP_PORT, path),
                                     headers={"Authorization": "Bearer " + token})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    def token(self, user):
        return jwt.encode({"sub": user, "exp": int(time.time()) + 3600, "aud": "authenticated"},
                          SECRET, algorithm="HS256")

    def follow(self, job, token, timeout=120):
        """Polls the job until it is terminal; returns its record."""
        deadline = time.monotonic() + timeout
        while True:
            rec = self.get("/api/training/jobs/%s" % job, token)["job"]
            if rec["status"] in ("completed", "failed", "cancelled") or time.monotonic() > deadline:
                return rec
            time.sleep(0.5)

    def add_dataset(self, user, name, files):
        """A dataset directory under the stack's datasets root and its row; returns its id."""
        d = os.path.join(self.root, "datasets", user, name)
        os.makedirs(d)
        for fname, text in files.items():
            with open(os.path.join(d, fname), "w") as f:
                f.write(text)
        ds = str(uuid.uuid4())
        self.psql("INSERT INTO datasets (id, user_id, name, storage_path) "
                  "VALUES (:'id', :'u', :'n', :'p')",
                  id=ds, u=user, n=name, p="%s/%s" % (user, name))
        return ds

    def build_adapter_image(self):
        ctx = tempfile.mkdtemp(prefix="adapter-image-", dir=self.root)
        files = {"Dockerfile": ADAPTER_DOCKERFILE}
        with open(ADAPTER) as f:
            files["trainq-trainer-adapter"] = f.read()
        lora = standins.COMMON_DIFFUSERS + standins.RANK
        for script, body in (("train_dreambooth_lora.py", lora),
                             ("train_dreambooth_lora_sdxl.py", lora),
                             ("train_dreambooth.py", standins.COMMON_DIFFUSERS)):
            files["diffusers/" + script] = standins.STANDIN % body
        files["sd-scripts/train_network.py"] = standins.STANDIN % standins.KOHYA
        sha = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
        have = self.run_cmd(["docker", "image", "inspect", "--format",
                             "{{index .Config.Labels \"org.trainq.source-sha\"}}", ADAPTER_IMAGE],
                            timeout=30, check=False).stdout.strip()
        if have == sha:
            return
        for name, text in files.items():
            os.makedirs(os.path.dirname(os.path.join(ctx, name)), exist_ok=True)
            with open(os.path.join(ctx, name), "w") as f:
                f.write(text)
        self.run_cmd(["docker", "build", "--network", "host", "--label",
                      "org.trainq.source-sha=" + sha, "-t", ADAPTER_IMAGE, ctx], timeout=600)

    def test_dashboard_is_served_by_the_producer_container(self):
        """The producer image carries ui/ where the producer looks by default
        (/usr/local/share/trainq/ui, beside its binary): GET /ui/ answers the repository's
        index.html and its script, byte for byte, with the dashboard's headers."""
        for path, name, ctype in (("/ui/", "index.html", "text/html; charset=utf-8"),
                                  ("/ui/app.js", "app.js", "text/javascript; charset=utf-8")):
            url = "http://127.0.0.1:%d%s" % (HTTP_PORT, path)
            with urllib.request.urlopen(url, timeout=10) as r:
                status, headers, body = r.status, r.headers, r.read()
            with open(os.path.join(SRC, "ui", name), "rb") as f:
                self.assertEqual(body, f.read(), path)
            self.assertEqual(status, 200, path)
            self.assertEqual(headers["Content-Type"], ctype, path)
            self.assertIn("default-src 'none'", headers["Content-Security-Policy"], path)
            self.assertEqual(headers["X-Content-Type-Options"], "nosniff", path)

    def test_images_are_non_root_and_labelled(self):
        for name in ("producer", "consumer"):
            r = self.run_cmd(["docker", "image", "inspect", "--format",
                              "{{.Config.User}} {{index .Config.Labels \"org.trainq.source-sha\"}}",
                              "trainq-%s:latest" % name], timeout=30)
            user, sha = r.stdout.split()
            self.assertEqual(user, "10001:10001", name)
            self.assertRegex(sha, r"^[0-9a-f]{16}$", name)
        r = self.compose("ps", "-q", "consumer", timeout=30)
        cid = r.stdout.strip()
        self.assertTrue(cid)
        r = self.run_cmd(["docker", "inspect", "--format",
                          "{{.Config.User}} {{.HostConfig.GroupAdd}} "
                          "{{.HostConfig.NetworkMode}}", cid],
                         timeout=30)
        gid = os.stat(self.sock).st_gid
        self.assertEqual(r.stdout.split(), ["10001:10001", "[%d]" % gid, "host"])

    def test_seed_curl_example_runs_to_completion(self):
        self.psql("INSERT INTO datasets (id, user_id, name, storage_path) "
                  "VALUES (:'ds', :'u', 'my-concept', 'demo-user/my-concept')",
                  ds=DATASET, u=USER_ID)
        token = self.token(USER_ID)
        # The seed's curl command as written (only the port and the token differ).
        r = subprocess.run(
            ["curl", "-X", "POST", "http://localhost:%d/api/training/submit" % HTTP_PORT,
             "-H", "Content-Type: application/json",
             "-H", "Authorization: Bearer %s" % token,
             "-d", SEED_BODY, "-s", "-w", "\n%{http_code}"],
            capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        body, _, code = r.stdout.rpartition("\n")
        self.assertEqual(code, "200", body)
        job = json.loads(body)["job_id"]

        status = self.follow(job, token)["status"]
        if status != "completed":
            self.dump_logs()
        self.assertEqual(status, "completed")

        events = [e["to_status"]
                  for e in self.get("/api/training/jobs/%s/events" % job, token)["events"]]
        self.assertEqual(events, ["queued", "pending", "running", "completed"])
        # The consumer container wrote config.json and the outputs directory at host paths
        # (same path inside and out), as uid 10001; the training container ran as that uid too.
        config_path = os.path.join(self.root, "data", "configs", job + ".json")
        with open(config_path) as f:
            config = json.load(f)
        self.assertEqual(config["pretrained_model_name_or_path"], "stabilityai/sdxl-base-1.0")
        self.assertEqual(config["rank"], 16)
        self.assertEqual(config["instance_prompt"], "my-concept")
        outputs = os.path.join(self.root, "data", "outputs", job)
        self.assertEqual(os.stat(outputs).st_uid, UID)
        self.assertTrue(os.listdir(outputs), "the fake trainer wrote nothing into outputs")
        for name in os.listdir(outputs):
            self.assertEqual(os.stat(os.path.join(outputs, name)).st_uid, UID, name)
        # The config.json this consumer wrote is one the real trainers' adapter can map
        # (image/trainer-adapter; --dry-run prints the command line and starts nothing).
        r = subprocess.run([sys.executable, ADAPTER, "--config", config_path, "--dry-run"],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("train_dreambooth_lora_sdxl.py --pretrained_model_name_or_path "
                      "stabilityai/sdxl-base-1.0", r.stderr)


    def test_trainer_adapter_image_runs_in_the_stack(self):
        """After the seed's job (tests run in name order): the consumer is recreated with a
        training image whose entrypoint is trainq-trainer-adapter and whose trainers are the
        stand-ins; a job runs through the real mounts as uid 10001, and a hub failure comes
        back as the job's exit code 4."""
        self.build_adapter_image()
        type(self).env["TRAINQ_TRAINING_IMAGE"] = ADAPTER_IMAGE
        type(self).env["TRAINQ_TRAINING_CMD"] = "--config /workspace/config.json"
        self.compose("up", "-d", timeout=300)  # recreates the consumer only (its env changed)
        user = "adapter-user"
        token = self.token(user)
        good = self.add_dataset(user, "concept", {"0001.png": "x", "0001.txt": "a photo"})
        bad = self.add_dataset(user, "hub-down", {
            "0001.png": "x",
            "standin.env": "STANDIN_EXIT=1\nSTANDIN_OUTPUT=huggingface_hub.errors."
                           "RepositoryNotFoundError: 401 Client Error\n"})
        jobs = {}
        for ds in (good, bad):
            body = json.loads(SEED_BODY)
            body["dataset_id"] = ds
            r = subprocess.run(
                ["curl", "-s", "-X", "POST", "http://127.0.0.1:%d/api/training/submit" % HTTP_PORT,
                 "-H", "Content-Type: application/json", "-H", "Authorization: Bearer " + token,
                 "-d", json.dumps(body)], capture_output=True, text=True, timeout=30)
            jobs[ds] = json.loads(r.stdout)["job_id"]
        done = self.follow(jobs[good], token)
        if done["status"] != "completed":
            self.dump_logs()
        self.assertEqual(done["status"], "completed", done.get("error_message"))
        outputs = os.path.join(self.root, "data", "outputs", jobs[good])
        with open(os.path.join(outputs, "standin-record.json")) as f:
            rec = json.load(f)
        self.assertEqual(rec["script"], "train_dreambooth_lora_sdxl.py")
        a = rec["args"]
        self.assertEqual((a["instance_data_dir"], a["output_dir"], a["instance_prompt"], a["rank"]),
                         ("/workspace/datasets", "/workspace/outputs", "my-concept", 16))
        self.assertEqual(rec["env"], {"PYTHONUNBUFFERED": "1", "HF_HOME": "/workspace/models"})

        failed = self.follow(jobs[bad], token)
        self.assertEqual(failed["status"], "failed")
        self.assertEqual(failed["exit_code"], 4)
        self.assertIn("RepositoryNotFoundError", failed["error_message"])


if __name__ == "__main__":
    unittest.main()
