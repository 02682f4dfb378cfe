"""image/trainer-adapter: config.json -> the real trainers' command lines, exit-code mapping,
pass-through of progress, refusal of what cannot be mapped.

The trainers are stand-ins: Python scripts under the real names whose argparse parsers declare
the arguments the adapter uses exactly as the real scripts define them (names, types, choices,
required), copied from diffusers' examples/dreambooth/train_dreambooth_lora.py,
train_dreambooth_lora_sdxl.py, train_dreambooth.py and kohya-ss/sd-scripts' train_network.py
(+ library/train_util.py, config_util.py). An argument the real script does not define makes
argparse exit 2, which fails the test. Each stand-in records its argv, parsed arguments, a
few environment variables and the kohya dataset TOML, prints a tqdm-like bar with carriage
returns, and then behaves as STANDIN_* says (exit code, output, sleep, SIGKILL), from the
environment or from the file $STANDIN_CONTROL names. tests/deploy/test_compose.py puts the
same stand-ins and the adapter into an image and runs them through the Compose stack.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import unittest

SRC = os.environ.get("TRAINQ_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
ADAPTER = os.path.join(SRC, "image", "trainer-adapter", "trainq-trainer-adapter")
LAUNCH_C = os.path.join(SRC, "consumer", "launch.c")

COMMON_DIFFUSERS = '''
parser.add_argument("--pretrained_model_name_or_path", type=str, default=None, required=True)
parser.add_argument("--instance_data_dir", type=str, default=None, required=True)
parser.add_argument("--instance_prompt", type=str, default=None, required=True)
parser.add_argument("--validation_prompt", type=str, default=None)
parser.add_argument("--output_dir", type=str, default="lora-dreambooth-model")
parser.add_argument("--seed", type=int, default=None)
parser.add_argument("--resolution", type=int, default=512)
parser.add_argument("--train_batch_size", type=int, default=4)
parser.add_argument("--max_train_steps", type=int, default=None)
parser.add_argument("--checkpointing_steps", type=int, default=500)
parser.add_argument("--resume_from_checkpoint", type=str, default=None)
parser.add_argument("--learning_rate", type=float, default=5e-4)
parser.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"])
'''
RANK = 'parser.add_argument("--rank", type=int, default=4)\n'
KOHYA = '''
parser.add_argument("--pretrained_model_name_or_path", type=str, default=None)
parser.add_argument("--dataset_config", type=Path, default=None)
parser.add_argument("--output_dir", type=str, default=None)
parser.add_argument("--output_name", type=str, default=None)
parser.add_argument("--save_model_as", type=str, default="safetensors",
                    choices=[None, "ckpt", "pt", "safetensors"])
parser.add_argument("--network_module", type=str, default=None)
parser.add_argument("--network_dim", type=int, default=None)
parser.add_argument("--network_alpha", type=float, default=1)
parser.add_argument("--learning_rate", type=float, default=2.0e-6)
parser.add_argument("--max_train_steps", type=int, default=1600)
parser.add_argument("--train_batch_size", type=int, default=1)
parser.add_argument("--save_every_n_steps", type=int, default=None)
parser.add_argument("--save_state", action="store_true")
parser.add_argument("--resume", type=str, default=None)
parser.add_argument("--seed", type=int, default=None)
parser.add_argument("--mixed_precision", type=str, default="no", choices=["no", "fp16", "bf16"])
'''
STANDIN = '''import argparse, json, os, signal, sys, time
from pathlib import Path
# In a container the STANDIN_* settings come from a KEY=VALUE file (tests/deploy).
if os.path.isfile(os.environ.get("STANDIN_CONTROL", "")):
    for line in open(os.environ["STANDIN_CONTROL"]):
        k, _, v = line.rstrip("\\n").partition("=")
        os.environ[k] = v
parser = argparse.ArgumentParser()
%s
args = parser.parse_args()
rec = {"script": os.path.basename(__file__), "argv": sys.argv[1:],
       "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
       "env": {k: os.environ.get(k) for k in ("PYTHONUNBUFFERED", "HF_HOME")}}
if getattr(args, "dataset_config", None):
    rec["dataset_toml"] = open(args.dataset_config).read()
with open(os.environ["STANDIN_RECORD"], "w") as f:
    json.dump(rec, f)
for i in range(1, 4):
    sys.stderr.write("\\rSteps: %%3d%%%%| | %%d/3 [00:0%%d<00:00, loss=0.1]" %% (i * 33, i, i))
    sys.stderr.flush()
sys.stderr.write("\\n")
print("standin: trained")
sys.stdout.write(os.environ.get("STANDIN_OUTPUT", ""))
sys.stdout.flush()
time.sleep(float(os.environ.get("STANDIN_SLEEP", "0")))
if os.environ.get("STANDIN_KILL"):
    os.kill(os.getpid(), signal.SIGKILL)
sys.exit(int(os.environ.get("STANDIN_EXIT", "0")))
'''

JOB_ID = "0b9c9a8e-1f0e-4c7b-9d7e-3b0f8e2f1a11"
SD15 = "runwayml/stable-diffusion-v1-5"


def seed_config(**over):
    """config.json as consumer/launch.c writes it for the seed's curl example."""
    c = {"cache_dir": "/workspace/models", "checkpointing_steps": 200,
         "instance_prompt": "my-concept", "job_id": JOB_ID, "job_name": "My SDXL LoRA",
         "learning_rate": 0.0001, "lora_alpha": 32, "max_train_steps": 1000,
         "mixed_precision": "fp16", "network_alpha": 32, "output_dir": "/workspace/outputs",
         "pretrained_model_name_or_path": "stabilityai/sdxl-base-1.0", "rank": 16,
         "resolution": 512, "seed": 1234567, "train_batch_size": 2,
         "train_data_dir": "/workspace/datasets", "training_type": "lora",
         "validation_prompt": "my-concept"}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


class Adapter(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="tq-adapter-")
        self.diffusers = os.path.join(self.dir, "diffusers")
        self.kohya = os.path.join(self.dir, "sd-scripts")
        os.makedirs(self.diffusers)
        os.makedirs(self.kohya)
        for name, body in (("train_dreambooth_lora.py", COMMON_DIFFUSERS + RANK),
                           ("train_dreambooth_lora_sdxl.py", COMMON_DIFFUSERS + RANK),
                           ("train_dreambooth.py", COMMON_DIFFUSERS)):
            with open(os.path.join(self.diffusers, name), "w") as f:
                f.write(STANDIN % body)
        with open(os.path.join(self.kohya, "train_network.py"), "w") as f:
            f.write(STANDIN % KOHYA)
        self.dataset = os.path.join(self.dir, "dataset")
        os.makedirs(self.dataset)
        for name in ("0001.png", "0001.txt"):
            with open(os.path.join(self.dataset, name), "w") as f:
                f.write("x")
        self.outputs = os.path.join(self.dir, "outputs")
        os.makedirs(self.outputs)
        self.record = os.path.join(self.dir, "record.json")

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def write_config(self, conf):
        conf = dict(conf)
        for key in ("train_data_dir", "instance_data_dir"):
            if conf.get(key) == "/workspace/datasets":
                conf[key] = self.dataset
        if conf.get("output_dir") == "/workspace/outputs":
            conf["output_dir"] = self.outputs
        path = os.path.join(self.dir, "config.json")
        with open(path, "w") as f:
            json.dump(conf, f, indent=2, sort_keys=True)
        return path

    def adapter(self, conf, *args, env=None, raw_config=None, popen=False):
        path = self.write_config(conf) if raw_config is None else raw_config
        e = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "STANDIN_RECORD": self.record,
             "TRAINQ_DIFFUSERS_EXAMPLES": self.diffusers, "TRAINQ_KOHYA_DIR": self.kohya,
             "TRAINQ_LAUNCHER": sys.executable}
        e.update(env or {})
        argv = [sys.executable, ADAPTER, "--config", path, *args]
        if popen:
            return subprocess.Popen(argv, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return subprocess.run(argv, env=e, capture_output=True, timeout=60)

    def recorded(self):
        with open(self.record) as f:
            return json.load(f)

    def assert_refused(self, r, fragment):
        self.assertEqual(r.returncode, 2, r.stderr)
        err = r.stderr.decode()
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn(fragment, err)
        self.assertFalse(os.path.exists(self.record), "the trainer ran")

    # ---- mapping

    def test_seed_example_runs_the_sdxl_lora_script(self):
        r = self.adapter(seed_config())
        self.assertEqual(r.returncode, 0, r.stderr)
        rec = self.recorded()
        self.assertEqual(rec["script"], "train_dreambooth_lora_sdxl.py")
        self.assertEqual(rec["argv"], [
            "--pretrained_model_name_or_path", "stabilityai/sdxl-base-1.0",
            "--instance_data_dir", self.dataset, "--instance_prompt", "my-concept",
            "--output_dir", self.outputs, "--resolution", "512", "--train_batch_size", "2",
            "--learning_rate", "0.0001", "--max_train_steps", "1000",
            "--checkpointing_steps", "200", "--mixed_precision", "fp16", "--rank", "16",
            "--seed", "1234567", "--validation_prompt", "my-concept"])
        self.assertEqual(rec["args"]["learning_rate"], 0.0001)
        self.assertEqual(rec["env"], {"PYTHONUNBUFFERED": "1", "HF_HOME": "/workspace/models"})
        # Progress passes through untouched: the carriage-return redraws arrive as written.
        self.assertIn(b"\rSteps:  33%| | 1/3 [00:01<00:00, loss=0.1]\rSteps:  66%", r.stderr)
        self.assertIn(b"standin: trained\n", r.stdout)
        self.assertIn(b"lora_alpha 32 is not applied", r.stderr)

    def test_sd15_lora_runs_train_dreambooth_lora(self):
        r = self.adapter(seed_config(pretrained_model_name_or_path=SD15,
                                     lora_alpha=16, network_alpha=16))
        self.assertEqual(r.returncode, 0, r.stderr)
        rec = self.recorded()
        self.assertEqual(rec["script"], "train_dreambooth_lora.py")
        self.assertEqual(rec["args"]["rank"], 16)
        self.assertNotIn(b"not applied", r.stderr)

    def test_dreambooth_runs_train_dreambooth_without_rank(self):
        r = self.adapter(seed_config(training_type="dreambooth",
                                     instance_data_dir="/workspace/datasets",
                                     validation_prompt=None,
                                     pretrained_model_name_or_path="stabilityai/sd-2-1"))
        self.assertEqual(r.returncode, 0, r.stderr)
        rec = self.recorded()
        self.assertEqual(rec["script"], "train_dreambooth.py")
        self.assertNotIn("--rank", rec["argv"])
        self.assertEqual(rec["args"]["instance_data_dir"], self.dataset)
        self.assertEqual(rec["args"]["max_train_steps"], 1000)

    def test_kohya_train_network(self):
        r = self.adapter(seed_config(pretrained_model_name_or_path=SD15),
                         env={"TRAINQ_TRAINER": "kohya"})
        self.assertEqual(r.returncode, 0, r.stderr)
        rec = self.recorded()
        self.assertEqual(rec["script"], "train_network.py")
        a = rec["args"]
        def pick(*keys):
            return tuple(a[k] for k in keys)
        self.assertEqual(pick("network_module", "network_dim", "network_alpha"),
                         ("networks.lora", 16, 32.0))
        self.assertEqual(pick("output_dir", "output_name", "save_model_as"),
                         (self.outputs, JOB_ID, "safetensors"))
        self.assertEqual(pick("max_train_steps", "save_every_n_steps", "train_batch_size"),
                         (1000, 200, 2))
        self.assertEqual(pick("learning_rate", "seed", "mixed_precision"),
                         (0.0001, 1234567, "fp16"))
        self.assertTrue(a["save_state"])
        toml = tomllib.loads(rec["dataset_toml"])
        self.assertEqual(toml["general"], {"caption_extension": ".txt"})
        ds = toml["datasets"][0]
        self.assertEqual((ds["resolution"], ds["batch_size"]), (512, 2))
        self.assertEqual(ds["subsets"], [{"image_dir": self.dataset, "num_repeats": 1,
                                          "class_tokens": "my-concept"}])

    def test_resume_latest(self):
        r = self.adapter(seed_config(resume_from_checkpoint="latest"))
        self.assertEqual(self.recorded()["args"]["resume_from_checkpoint"], "latest")
        os.makedirs(os.path.join(self.outputs, JOB_ID + "-step00000200-state"))
        r = self.adapter(seed_config(resume_from_checkpoint="latest",
                                     pretrained_model_name_or_path=SD15),
                         env={"TRAINQ_TRAINER": "kohya"})
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.recorded()["args"]["resume"],
                         os.path.join(self.outputs, JOB_ID + "-step00000200-state"))

    def test_adapter_knows_every_key_launch_c_writes(self):
        with open(LAUNCH_C) as f:
            keys = set(re.findall(r'put\(o, "([a-z_]+)"', f.read()))
        self.assertGreaterEqual(len(keys), 15)
        with open(ADAPTER) as f:
            text = f.read()
        known = set(re.findall(r'"([a-z_]+)"', text.split("KNOWN_KEYS = {", 1)[1].split("}", 1)[0]))
        self.assertEqual(keys - known, set())

    # ---- refusals: exit 2, one line, trainer not started

    def test_refusals(self):
        cases = [
            (seed_config(textual_inversion_steps=5),
             "cannot map config key(s) textual_inversion_steps"),
            (seed_config(training_type="textual_inversion"), "cannot map training_type"),
            (seed_config(mixed_precision="fp8"), "cannot map mixed_precision"),
            (seed_config(resolution=500), "not a multiple of 8"),
            (seed_config(resolution="512"), "resolution must be an integer"),
            (seed_config(learning_rate=float("inf")), "learning_rate must be a number"),
            (seed_config(pretrained_model_name_or_path=""),
             "pretrained_model_name_or_path must be"),
            (seed_config(training_type="dreambooth"), "full DreamBooth of an SDXL model"),
        ]
        for conf, fragment in cases:
            with self.subTest(fragment=fragment):
                self.assert_refused(self.adapter(conf), fragment)
        kohya = {"TRAINQ_TRAINER": "kohya"}
        self.assert_refused(self.adapter(seed_config(), env=kohya), "does not train SDXL")
        dreambooth = seed_config(training_type="dreambooth", pretrained_model_name_or_path=SD15)
        self.assert_refused(self.adapter(dreambooth, env=kohya), "LoRA networks only")
        self.assert_refused(self.adapter(seed_config(), env={"TRAINQ_TRAINER": "ai-toolkit"}),
                            "invalid TRAINQ_TRAINER")
        missing = os.path.join(self.dir, "missing.json")
        self.assert_refused(self.adapter({}, raw_config=missing), "cannot read")
        bad = os.path.join(self.dir, "bad.json")
        with open(bad, "w") as f:
            f.write("[1,2]")
        self.assert_refused(self.adapter({}, raw_config=bad), "not a JSON object")
        with open(bad, "w") as f:
            f.write("{")
        self.assert_refused(self.adapter({}, raw_config=bad), "is not JSON")

    # ---- failures: exit codes

    def test_failure_exit_codes(self):
        cases = [
            ({"STANDIN_EXIT": "1", "STANDIN_OUTPUT": "ValueError: something\n"}, 1),
            ({"STANDIN_EXIT": "2", "STANDIN_OUTPUT": "error: unrecognized arguments\n"}, 2),
            ({"STANDIN_EXIT": "1", "STANDIN_OUTPUT": "torch.cuda.OutOfMemoryError: CUDA out of "
              "memory. Tried to allocate 2.00 GiB\n"}, 5),
            ({"STANDIN_EXIT": "1", "STANDIN_OUTPUT": "huggingface_hub.errors."
              "RepositoryNotFoundError: 401 Client Error. (Request ID: x)\n"}, 4),
            ({"STANDIN_EXIT": "1", "STANDIN_OUTPUT": "requests.exceptions.HTTPError: 503 Server "
              "Error: Service Unavailable for url: https://huggingface.co/x\n"}, 4),
            ({"STANDIN_KILL": "1"}, 137),
        ]
        for env, want in cases:
            with self.subTest(env=env):
                r = self.adapter(seed_config(), env=env)
                self.assertEqual(r.returncode, want, r.stderr)
                self.assertIn(env.get("STANDIN_OUTPUT", "").encode(), r.stdout)

    def test_dataset_errors_exit_3(self):
        os.unlink(os.path.join(self.dataset, "0001.png"))
        r = self.adapter(seed_config())
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertIn(b"holds no image", r.stderr)
        shutil.rmtree(self.dataset)
        r = self.adapter(seed_config())
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertIn(b"does not exist", r.stderr)
        self.assertFalse(os.path.exists(self.record))

    def test_missing_script_or_launcher_exit_127(self):
        os.unlink(os.path.join(self.diffusers, "train_dreambooth_lora_sdxl.py"))
        r = self.adapter(seed_config())
        self.assertEqual(r.returncode, 127, r.stderr)
        self.assertIn(b"is not in this image", r.stderr)
        r = self.adapter(seed_config(pretrained_model_name_or_path=SD15),
                         env={"TRAINQ_LAUNCHER": "/nonexistent/accelerate launch"})
        self.assertEqual(r.returncode, 127, r.stderr)

    def test_sigterm_is_forwarded(self):
        p = self.adapter(seed_config(), env={"STANDIN_SLEEP": "30"}, popen=True)
        try:
            deadline = time.monotonic() + 20
            while not os.path.exists(self.record) and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertTrue(os.path.exists(self.record))
            t0 = time.monotonic()
            p.send_signal(signal.SIGTERM)
            out, err = p.communicate(timeout=10)
            self.assertEqual(p.returncode, 143, err)
            self.assertLess(time.monotonic() - t0, 5)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()


if __name__ == "__main__":
    unittest.main()
