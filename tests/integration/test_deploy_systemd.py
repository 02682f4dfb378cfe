"""deploy/systemd: the units pass `systemd-analyze verify` without a warning, carry their
hardening options, and trainq-consumer-instance maps an instance name to the consumer's GPU
set, worker id and metrics address (or refuses it with exit 2).

`systemd-analyze verify` runs with --root on a scratch tree holding systemd's own units, the
trainq units and executables at their ExecStart paths (verify checks that those exist), so
nothing is installed on this machine. It needs no running systemd.
"""

import os
import shutil
import stat
import subprocess
import tempfile
import unittest

SRC = os.environ.get("TRAINQ_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
UNITS = os.path.join(SRC, "deploy", "systemd")
INSTANCE = os.path.join(UNITS, "trainq-consumer-instance")
SYSTEMD_UNITS = "/lib/systemd/system"

# Options each unit must keep (the review of docs/deployment.md's hardening table).
HARDENING = ["NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
             "PrivateDevices=yes", "CapabilityBoundingSet=",
             "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
             "SystemCallFilter=@system-service", "SystemCallFilter=~@privileged", "User=trainq",
             "EnvironmentFile=/etc/trainq/trainq.env", "RestartPreventExitStatus=2"]


def unit_lines(name):
    with open(os.path.join(UNITS, name)) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


class Verify(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if shutil.which("systemd-analyze") is None:
            raise AssertionError(
                "systemd-analyze not found (scripts/install-deps.sh installs systemd)")
        cls.root = tempfile.mkdtemp(prefix="tq-systemd-")
        shutil.copytree(SYSTEMD_UNITS, os.path.join(cls.root, "usr/lib/systemd/system"),
                        symlinks=True)
        etc = os.path.join(cls.root, "etc/systemd/system")
        os.makedirs(etc)
        for name in ("trainq-producer.service", "trainq-consumer@.service"):
            shutil.copy(os.path.join(UNITS, name), etc)
        for path in ("usr/local/bin/trainq-producer", "usr/local/bin/trainq-consumer"):
            os.makedirs(os.path.dirname(os.path.join(cls.root, path)), exist_ok=True)
            with open(os.path.join(cls.root, path), "w") as f:
                f.write("#!/bin/sh\n")
            os.chmod(os.path.join(cls.root, path), 0o755)
        lib = os.path.join(cls.root, "usr/local/lib/trainq")
        os.makedirs(lib)
        shutil.copy(INSTANCE, lib)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)

    def verify(self, unit):
        r = subprocess.run(["systemd-analyze", "verify", "--man=no", "--generators=no",
                            "--root=" + self.root, unit],
                           capture_output=True, text=True, timeout=60)
        return r.returncode, (r.stdout + r.stderr).strip()

    def test_units_verify_clean(self):
        # "0_1" is the documented spelling of GPUs 0,1; "0\x2c1" is systemd-escape's.
        for unit in ("trainq-producer.service", "trainq-consumer@0.service",
                     "trainq-consumer@0_1.service", "trainq-consumer@0\\x2c1.service",
                     "trainq-consumer@all.service"):
            with self.subTest(unit=unit):
                self.assertEqual(self.verify(unit), (0, ""))

    def test_verify_catches_a_broken_unit(self):
        # The check above means something: a misspelt option and a missing ExecStart binary
        # both produce output (the first only a warning, hence "no output" as the criterion).
        etc = os.path.join(self.root, "etc/systemd/system")
        with open(os.path.join(UNITS, "trainq-producer.service")) as f:
            text = f.read()
        with open(os.path.join(etc, "tq-typo.service"), "w") as f:
            f.write(text.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
        with open(os.path.join(etc, "tq-nobin.service"), "w") as f:
            f.write(text.replace("/usr/local/bin/trainq-producer", "/usr/local/bin/trainq-missing"))
        try:
            rc, out = self.verify("tq-typo.service")
            self.assertIn("Unknown key 'NoNewPrivilege'", out)
            rc, out = self.verify("tq-nobin.service")
            self.assertNotEqual(rc, 0)
            self.assertIn("trainq-missing", out)
        finally:
            os.unlink(os.path.join(etc, "tq-typo.service"))
            os.unlink(os.path.join(etc, "tq-nobin.service"))

    def test_hardening_options_present(self):
        for name in ("trainq-producer.service", "trainq-consumer@.service"):
            lines = unit_lines(name)
            for opt in HARDENING:
                with self.subTest(unit=name, option=opt):
                    self.assertIn(opt, lines)
        consumer = unit_lines("trainq-consumer@.service")
        self.assertIn("SupplementaryGroups=docker", consumer)
        self.assertIn("StateDirectory=trainq", consumer)  # the writable data dir
        self.assertIn("ExecStart=/usr/local/lib/trainq/trainq-consumer-instance %I", consumer)


class Instance(unittest.TestCase):
    """trainq-consumer-instance with a stand-in consumer that prints what it was given."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="tq-instance-")
        cls.stub = os.path.join(cls.dir, "consumer")
        with open(cls.stub, "w") as f:
            f.write('#!/bin/sh\necho "$TRAINQ_GPUS|$TRAINQ_WORKER_ID|$TRAINQ_METRICS_ADDR|$#"\n')
        os.chmod(cls.stub, stat.S_IRWXU)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def run_instance(self, *args, **env):
        e = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TRAINQ_CONSUMER_BIN": self.stub,
             "TRAINQ_WORKER_ID_PREFIX": "gpuhost"}
        e.update(env)
        return subprocess.run([INSTANCE, *args], env=e, capture_output=True, text=True, timeout=30)

    def test_instances_map_to_gpus_worker_and_port(self):
        cases = {
            "0": "0|gpuhost-gpu-0|127.0.0.1:9101|0",
            "0_1": "0,1|gpuhost-gpu-0-1|127.0.0.1:9101|0",
            "2:3": "2,3|gpuhost-gpu-2-3|127.0.0.1:9103|0",
            "0,1": "0,1|gpuhost-gpu-0-1|127.0.0.1:9101|0",     # %I of 0\x2c1
            "all": "all|gpuhost-gpu-all|127.0.0.1:9101|0",
            "none": "none|gpuhost-gpu-cpu|127.0.0.1:9101|0",
        }
        for inst, want in cases.items():
            with self.subTest(instance=inst):
                r = self.run_instance(inst)
                self.assertEqual((r.returncode, r.stdout.strip(), r.stderr), (0, want, ""))

    def test_metrics_host_and_base_port(self):
        r = self.run_instance("4_5", TRAINQ_METRICS_HOST="0.0.0.0", TRAINQ_METRICS_BASE_PORT="9200")
        self.assertEqual(r.stdout.strip(), "4,5|gpuhost-gpu-4-5|0.0.0.0:9204|0")

    def test_bad_instances_exit_2_with_one_line(self):
        # "08" and "010": the shell would read them as octal (010 is port base+8)
        for inst in ("", "0;1", "0__1", "a", "-1", "0,", "12345678", "0/1", "08", "010", "1_02"):
            with self.subTest(instance=inst):
                r = self.run_instance(inst)
                self.assertEqual(r.returncode, 2, r.stdout)
                self.assertEqual(r.stdout, "")
                self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
                self.assertIn("trainq-consumer-instance: invalid instance", r.stderr)
        r = self.run_instance("0", TRAINQ_METRICS_BASE_PORT="x")
        self.assertEqual(r.returncode, 2)
        r = self.run_instance("70000")
        self.assertEqual(r.returncode, 2)
        self.assertIn("beyond 65535", r.stderr)
        r = self.run_instance()
        self.assertEqual(r.returncode, 2)


if __name__ == "__main__":
    unittest.main()
