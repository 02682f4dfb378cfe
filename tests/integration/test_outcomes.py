"""Outcomes of attempts (issue 14 items 5-8): failure classes, the preflight, resume and the
retry policy — trainq-consumer against the real Postgres, RabbitMQ, dockerd and the fake
trainer, whose trainer.env makes a real OOM kill (ALLOC_MB under TRAINQ_MEMORY_LIMIT), a
config error (CONFIG_ERROR: exit 2) or a hub failure in its last line.

What a container did is read from dockerd's own event log (GET /events, by the trainq.job
label), so "no container was created" is dockerd's word, not ours.
"""

import json
import os
import time
from datetime import datetime
import unittest
import urllib.parse

import tqenv
import tqharness as h
from test_consumer import TERMINAL, ConsumerCase, run_id
from test_producer import SECRET, start_producer, stop_producer, wait_ready
from test_stranded import metrics

HUB_503 = ("huggingface_hub.utils._errors.HfHubHTTPError: 503 Server Error: Service "
           "Unavailable for url: https://huggingface.co/api/models/stabilityai/sdxl-base-1.0")
HUB_404 = ("huggingface_hub.utils._errors.RepositoryNotFoundError: 404 Client Error. "
           "Repository Not Found for url: https://huggingface.co/api/models/nobody/nothing")


def container_creates(job_id, since):
    """dockerd's create events of the job's containers since `since` (Unix s)."""
    flt = urllib.parse.quote(json.dumps({"type": ["container"], "event": ["create"],
                                         "label": [f"trainq.job={job_id}"]}))
    status, raw = tqenv.docker_raw(
        "GET", f"/events?since={int(since) - 1}&until={int(time.time()) + 1}&filters={flt}")
    assert status == 200, (status, raw[:200])
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


def ts(s):
    return datetime.fromisoformat(s).timestamp()


class OutcomesCase(ConsumerCase):
    def env_dataset(self, user, images=1, **env):
        """A dataset whose trainer.env is exactly env (and `images` PNG files)."""
        ds = self.dataset(user)
        path = os.path.join(self.root, user, ds)
        with open(os.path.join(path, "trainer.env"), "w") as f:
            f.write("".join(f"{k}={v}\n" for k, v in env.items()))
        if images == 0:
            os.unlink(os.path.join(path, "0001.png"))
        return ds

    def failed_events(self, job_id):
        out = tqenv.psql(
            "SELECT coalesce(json_agg(e ORDER BY e.id), '[]') FROM job_events e "
            "WHERE job_id = :'id'", variables={"id": job_id})
        return json.loads(out)


class FailureClassTest(OutcomesCase):
    def test_a_real_oom_kill_fails_as_oom_naming_the_step_batch_size_and_resolution(self):
        u = self.user("oom")
        ds = self.env_dataset(u, DURATION=2, STEPS=4, ALLOC_STEP=2, ALLOC_MB=512)
        p = self.consumer(f"oom-{run_id()}", TRAINQ_MEMORY_LIMIT="64m")
        m = self.message(u, ds, config={"steps": 200, "batch_size": 4, "resolution": 768})
        self.publish(m)
        job = self.wait_status(m["job_id"], TERMINAL, timeout=90)
        self.assertEqual(job["status"], "failed", job)
        self.assertEqual(job["exit_code"], 137)
        self.assertEqual(job["failure_class"], "oom", job)
        self.assertEqual(job["failure_message"],
                         "out of memory at step 2 of 4 with batch_size 4 at resolution 768 "
                         "(memory limit 64 MiB): lower batch_size to 2 (or the resolution)")
        self.assertIn("(killed: out of memory)", job["error_message"])
        self.assertEqual(job["attempts"], 1, "an oom is not retried by default")
        ev = self.failed_events(m["job_id"])
        self.assertEqual([e["failure_class"] for e in ev if e["to_status"] == "failed"], ["oom"])
        self.assertTrue(all(e["failure_class"] is None for e in ev if e["to_status"] != "failed"))
        mx = metrics(p)
        self.assertEqual(mx['trainq_consumer_attempt_failures_total{class="oom"}'], 1)
        self.assertEqual(mx['trainq_consumer_attempt_failures_total{class="trainer_error"}'], 0)
        ended = p.wait_event("job.finished")
        self.assertEqual(ended["failure_class"], "oom")
        # The producer's job object carries the class and the advice.
        prod = start_producer()
        try:
            wait_ready(prod.port)
            r = h.http_once(prod.port, "GET", f"/api/training/jobs/{m['job_id']}",
                            token=h.mint(u, SECRET))
            self.assertEqual(r.status, 200, r.raw)
            got = r.json["job"]
            self.assertEqual(got["failure_class"], "oom")
            self.assertEqual(got["failure_message"], job["failure_message"])
            r = h.http_once(prod.port, "GET", f"/api/training/jobs/{m['job_id']}/events",
                            token=h.mint(u, SECRET))
            self.assertEqual([e["failure_class"] for e in r.json["events"]
                              if e["to_status"] == "failed"], ["oom"])
        finally:
            stop_producer(self, prod)

    def test_memory_under_the_limit_is_no_oom(self):
        u = self.user("fits")
        ds = self.env_dataset(u, DURATION=0.5, STEPS=2, ALLOC_MB=16)
        self.consumer(f"fits-{run_id()}", TRAINQ_MEMORY_LIMIT="128m")
        m = self.message(u, ds)
        self.publish(m)
        job = self.wait_status(m["job_id"], TERMINAL, timeout=60)
        self.assertEqual(job["status"], "completed", job)
        self.assertIsNone(job["failure_class"])

    def test_exit_2_is_a_config_error_with_the_trainers_reason_and_is_not_retried(self):
        u = self.user("cfg")
        ds = self.env_dataset(u, CONFIG_ERROR="unknown key rank_dropout")
        self.consumer(f"cfg-{run_id()}")
        m = self.message(u, ds)
        self.publish(m)
        job = self.wait_status(m["job_id"], TERMINAL, timeout=60)
        self.assertEqual(job["status"], "failed", job)
        self.assertEqual(job["exit_code"], 2)
        self.assertEqual(job["failure_class"], "config_error")
        self.assertEqual(job["failure_message"],
                         "the trainer refused its config (exit code 2): fake-trainer: invalid "
                         "config: unknown key rank_dropout: fix the job's config")
        self.assertEqual(job["attempts"], 1)

    def test_a_trainers_own_failure_is_trainer_error(self):
        u = self.user("trainer")
        ds = self.env_dataset(u, EXIT_CODE=1, MESSAGE="Traceback: boom")
        self.consumer(f"trainer-{run_id()}")
        m = self.message(u, ds)
        self.publish(m)
        job = self.wait_status(m["job_id"], TERMINAL, timeout=60)
        self.assertEqual((job["status"], job["failure_class"]), ("failed", "trainer_error"))
        self.assertEqual(job["failure_message"], "training exited with code 1")


class PreflightTest(OutcomesCase):
    def test_a_bad_dataset_fails_as_dataset_error_before_any_container_is_created(self):
        u = self.user("pre")
        missing = self.dataset(u)
        tqenv.psql("UPDATE datasets SET storage_path = :'p' WHERE id = :'id'",
                   variables={"p": f"{u}/no-such-directory", "id": missing})
        no_images = self.env_dataset(u, images=0, DURATION=0.2)
        too_big = self.env_dataset(u, DURATION=0.2)
        with open(os.path.join(self.root, u, too_big, "0002.png"), "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n" + b"\0" * 4096)
        good = self.env_dataset(u, DURATION=0.2)
        self.consumer(f"pre-{run_id()}", slots=1, TRAINQ_DATASET_MAX_BYTES="2k")
        t0 = time.time()
        msgs = {k: self.message(u, d) for k, d in
                (("missing", missing), ("no_images", no_images), ("too_big", too_big),
                 ("good", good))}
        self.publish(*msgs.values())
        jobs = {k: self.wait_status(m["job_id"], TERMINAL, timeout=60) for k, m in msgs.items()}
        self.assertEqual(jobs["good"]["status"], "completed")
        want = {"missing": "does not exist", "no_images": "holds no image file",
                "too_big": "larger than TRAINQ_DATASET_MAX_BYTES"}
        for k, text in want.items():
            j = jobs[k]
            self.assertEqual((j["status"], j["failure_class"]), ("failed", "dataset_error"), j)
            self.assertIn(text, j["failure_message"])
            self.assertIsNone(j["container_id"])
            self.assertEqual(container_creates(j["id"], t0), [], f"{k}: a container was created")
            # failed within moments of the claim: no container start to wait for
            ev = self.failed_events(j["id"])
            claimed = next(e for e in ev if e["to_status"] == "pending")
            failed = next(e for e in ev if e["to_status"] == "failed")
            self.assertEqual(failed["failure_class"], "dataset_error")
            lag = ts(failed["at"]) - ts(claimed["at"])
            self.assertLess(lag, 1.0, f"{k}: {lag:.3f} s from claim to failure")
        # dockerd's events do show the good job's container: the check above can see one
        self.assertEqual(len(container_creates(msgs["good"]["job_id"], t0)), 1)

    def test_a_missing_training_image_is_host_error_and_creates_no_container(self):
        u = self.user("noimg")
        ds = self.env_dataset(u, DURATION=0.2)
        self.consumer(f"noimg-{run_id()}", TRAINQ_TRAINING_IMAGE="trainq-no-such-image:1",
                      TRAINQ_MAX_HOST_RETRIES=1)
        t0 = time.time()
        m = self.message(u, ds)
        self.publish(m)
        job = self.wait_status(m["job_id"], TERMINAL, timeout=60)
        self.assertEqual((job["status"], job["failure_class"]), ("failed", "host_error"), job)
        self.assertIn('training image "trainq-no-such-image:1" not found', job["failure_message"])
        self.assertEqual(container_creates(m["job_id"], t0), [])


class ResumeTest(OutcomesCase):
    def test_a_retry_after_host_error_with_checkpoints_resumes_from_the_latest(self):
        u = self.user("resume")
        ds = self.env_dataset(u, DURATION=0.3, STEPS=2)
        broken = self.consumer(f"broken-{run_id()}", slots=1,
                               TRAINQ_TRAINING_IMAGE="trainq-no-such-image:1",
                               TRAINQ_HOST_ERROR_LIMIT=100)
        m = self.message(u, ds)
        self.publish(m)
        h.wait_until(lambda: (self.job(m["job_id"]) or {}).get("failure_class") == "host_error",
                     timeout=30, interval=0.2, what="a give-back with host_error")
        broken.stop(timeout=30)
        # The first run left checkpoints on the outputs directory both hosts share.
        outputs = os.path.join(self.tmp, "data", "outputs", m["job_id"])
        os.makedirs(os.path.join(outputs, "checkpoint-40"), exist_ok=True)
        os.makedirs(os.path.join(outputs, "checkpoint-80"), exist_ok=True)
        # A fresh job whose outputs already hold a checkpoint is no retry: it starts afresh.
        fresh = self.message(u, self.env_dataset(u, DURATION=0.3, STEPS=2))
        os.makedirs(os.path.join(self.tmp, "data", "outputs", fresh["job_id"], "checkpoint-1"))
        good = self.consumer(f"good-{run_id()}", slots=2)
        self.publish(fresh)
        for j in (m, fresh):
            self.assertEqual(self.wait_status(j["job_id"], TERMINAL, timeout=60)["status"],
                             "completed")
        with open(os.path.join(self.tmp, "data", "configs", m["job_id"] + ".json")) as f:
            self.assertEqual(json.load(f).get("resume_from_checkpoint"), "latest")
        with open(os.path.join(self.tmp, "data", "configs", fresh["job_id"] + ".json")) as f:
            self.assertNotIn("resume_from_checkpoint", json.load(f))
        self.assertEqual(good.wait_event("job.resuming")["job_id"], m["job_id"])
        self.assertEqual(len(good.events("job.resuming")), 1)
        # the trainer saw it: the fake trainer prints its config.json
        log = tqenv.psql("SELECT string_agg(body, '' ORDER BY seq) FROM job_output "
                         "WHERE job_id = :'id' AND kind = 'log'", variables={"id": m["job_id"]})
        self.assertIn('"resume_from_checkpoint": "latest"', log)


class RetryPolicyTest(OutcomesCase):
    def test_the_retry_policy_retries_each_class_its_number_of_times(self):
        u = self.user("policy")
        hub = self.message(u, self.env_dataset(u, DURATION=0.2, EXIT_CODE=1, MESSAGE=HUB_503))
        gone = self.message(u, self.env_dataset(u, DURATION=0.2, EXIT_CODE=1, MESSAGE=HUB_404))
        plain = self.message(u, self.env_dataset(u, DURATION=0.2, EXIT_CODE=1,
                                                 MESSAGE="Traceback: boom"))
        self.consumer(f"policy-{run_id()}", slots=2,
                      TRAINQ_RETRY_POLICY="hub_error=2,trainer_error=1",
                      TRAINQ_RETRY_BACKOFF_SECONDS=1, TRAINQ_MAX_ATTEMPTS=5)
        self.publish(hub, gone, plain)
        jobs = {k: self.wait_status(m["job_id"], TERMINAL, timeout=90)
                for k, m in (("hub", hub), ("gone", gone), ("plain", plain))}
        self.assertEqual({k: (j["status"], j["failure_class"], j["attempts"])
                          for k, j in jobs.items()},
                         {"hub": ("failed", "hub_error", 3),
                          "gone": ("failed", "hub_error", 1),  # a 404 will not change
                          "plain": ("failed", "trainer_error", 2)})
        self.assertIn("(503)", jobs["hub"]["failure_message"])
        self.assertIn("check base_model", jobs["gone"]["failure_message"])
        # hub_error's retries wait 1 s, then 2 s: from the attempt's end to the next claim
        ev = self.failed_events(hub["job_id"])
        ends = [e for e in ev if e["from_status"] == "running" and e["to_status"] == "queued"]
        self.assertEqual([e["failure_class"] for e in ends], ["hub_error", "hub_error"])
        claims = [e for e in ev if e["to_status"] == "pending"]
        self.assertEqual(len(claims), 3)
        waits = [ts(c["at"]) - ts(e["at"]) for e, c in zip(ends, claims[1:])]
        self.assertGreaterEqual(waits[0], 0.9, waits)
        self.assertGreaterEqual(waits[1], 1.9, waits)

    def test_the_last_attempt_allowed_is_recorded_as_the_failure_it_is(self):
        # TRAINQ_MAX_ATTEMPTS caps every class's retries; the attempt that meets it is not a
        # retry given up afterwards but the job's failure: its exit code, its log tail,
        # failed_total (docs/api.md, "Failure classes")
        u = self.user("cap")
        m = self.message(u, self.env_dataset(u, DURATION=0.2, EXIT_CODE=1,
                                             MESSAGE="Traceback: boom"))
        c = self.consumer(f"cap-{run_id()}", slots=1, TRAINQ_RETRY_POLICY="trainer_error=5",
                          TRAINQ_MAX_ATTEMPTS=2)
        self.publish(m)
        j = self.wait_status(m["job_id"], TERMINAL, timeout=90)
        self.assertEqual((j["status"], j["failure_class"], j["attempts"], j["exit_code"]),
                         ("failed", "trainer_error", 2, 1))
        self.assertIn("Traceback: boom", j["error_message"])
        last = self.failed_events(m["job_id"])[-1]
        self.assertEqual((last["from_status"], last["to_status"]), ("running", "failed"))
        self.assertIn("gave up after 2 attempts", last["reason"])
        fin = c.wait_event("job.finished", timeout=10)
        self.assertEqual((fin["job_id"], fin["status"], fin["exit_code"]),
                         (m["job_id"], "failed", 1))


if __name__ == "__main__":
    unittest.main()
