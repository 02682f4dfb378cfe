"""Watching a job live, the consumer's side (issue 12): the consumer follows each running
container's output and writes its progress (training_jobs columns, 'progress' rows of
job_output) and its log lines ('log' rows), and records the job's output files
(job_artifacts) — against the real Postgres, RabbitMQ, dockerd and the fake trainer, whose
trainer.env picks the progress format (image/fake-trainer/train.sh). Everything is read back
with psql, as the producer reads it.
"""

import hashlib
import json
import os
import re
import subprocess
import time
import unittest

import tqenv
import tqharness as h
from test_consumer import TERMINAL, ConsumerCase, run_id
from test_producer import SECRET, body_for, start_producer, stop_producer, wait_ready


def loss_text(fmt, i):
    """The loss as the fake trainer prints it at step i (its awk: 0.5 / (1 + i))."""
    return ("%.3e" if fmt == "ai-toolkit" else "%.4g") % (0.5 / (1 + i))


class LiveCase(ConsumerCase):

    def dataset_env(self, user, **env):
        ds = self.dataset(user)
        path = os.path.join(self.root, user, ds, "trainer.env")
        with open(path, "w") as f:
            f.write("".join(f"{k}={v}\n" for k, v in env.items()))
        return ds

    def log_text(self, job_id):
        return tqenv.psql(
            "SELECT coalesce(string_agg(body, E'\\n' ORDER BY seq), '') FROM job_output "
            "WHERE job_id = :'id' AND kind = 'log'", variables={"id": job_id})

    def step(self, job_id):
        """The job's current_step, 0 while it has none (or no row yet: not claimed)."""
        return ((self.job(job_id) or {}).get("current_step")) or 0

    def output_rows(self, job_id, kind):
        out = tqenv.psql(
            "SELECT coalesce(json_agg(o ORDER BY seq), '[]') FROM job_output o "
            "WHERE job_id = :'id' AND kind = :'k'", variables={"id": job_id, "k": kind})
        return json.loads(out)

    def sample_while_running(self, job_ids, timeout=60):
        """Progress columns of each job, sampled until all are terminal."""
        seen = {j: [] for j in job_ids}
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = tqenv.psql(
                "SELECT coalesce(json_agg(json_build_object('id', id, 'status', status, "
                "'progress', progress, 'step', current_step, 'total', total_steps)), '[]') "
                "FROM training_jobs WHERE id = ANY(string_to_array(:'ids', ',')::uuid[])",
                variables={"ids": ",".join(job_ids)})
            rows = json.loads(out)
            for r in rows:
                seen[r["id"]].append(r)
            if rows and all(r["status"] in TERMINAL for r in rows):
                return seen
            time.sleep(0.2)
        self.fail(f"jobs not finished within {timeout}s: {seen}")


class TestProgressAndLog(LiveCase):

    def test_every_format_reports_live_progress_and_logs_each_line_once(self):
        steps = 4
        formats = ("plain", "diffusers", "kohya", "ai-toolkit", "none")
        jobs = {}
        self.consumer(f"live-{run_id()}", slots=len(formats))
        for fmt in formats:
            u = self.user(f"fmt-{fmt}")
            m = self.message(u, self.dataset_env(u, FORMAT=fmt, STEPS=steps, DURATION=6,
                                                 MESSAGE=f"bye from {fmt}"))
            jobs[fmt] = m["job_id"]
            self.publish(m)
        seen = self.sample_while_running(list(jobs.values()), timeout=90)
        for fmt, jid in jobs.items():
            with self.subTest(fmt=fmt):
                j = self.job(jid)
                self.assertEqual(j["status"], "completed")
                self.assertEqual(j["progress"], 1)
                running = [s for s in seen[jid] if s["status"] == "running"]
                self.assertTrue(running, "never seen running")
                # started at 0, before any progress line
                self.assertEqual(running[0]["progress"], 0)
                log = self.log_text(jid)
                lines = log.split("\n")
                self.assertIn("fake-trainer: starting", lines, "the first lines are replayed")
                # stdout and stderr are separate pipes: Docker may pass the bar's last '\n'
                # (stderr) on after the message (stdout) printed after it
                self.assertIn(f"bye from {fmt}", lines[-2:], "the last line is flushed")
                if fmt == "none":
                    self.assertIsNone(j["current_step"])
                    self.assertTrue(all(s["progress"] == 0 for s in running))
                    continue
                # live: a step strictly between the first and the last was seen running
                mid = {s["step"] for s in running if s["step"] is not None}
                self.assertTrue(mid & set(range(1, steps)), f"no live progress: {running}")
                self.assertEqual((j["current_step"], j["total_steps"]), (steps, steps))
                if fmt == "plain":
                    self.assertIsNone(j["loss"])
                    self.assertIsNone(j["eta_seconds"])
                    for i in range(1, steps + 1):
                        self.assertEqual(lines.count(f"progress: step {i}/{steps}"), 1)
                    continue
                self.assertAlmostEqual(j["loss"], float(loss_text(fmt, steps)), places=12)
                self.assertEqual(j["eta_seconds"], 0)
                bars = [l for l in lines if f"/{steps} [" in l]
                self.assertEqual(len(bars), 1, f"redraws logged: {bars}")
                self.assertIn(f"| {steps}/{steps} [", bars[0], "the final bar state is logged")
                samples = self.output_rows(jid, "progress")
                self.assertGreaterEqual(len(samples), 2)
                last = json.loads(samples[-1]["body"])
                self.assertEqual((last["current_step"], last["total_steps"]), (steps, steps))
                # the log survives the container's removal
                st, _ = tqenv.docker("GET", f"/containers/training-{jid}/json")
                self.assertEqual(st, 404)

    def test_log_rows_reach_postgres_within_two_seconds_of_printing(self):
        u = self.user("latency")
        m = self.message(u, self.dataset_env(u, FORMAT="plain", STEPS=8, DURATION=8))
        self.consumer(f"lat-{run_id()}", slots=1)
        self.publish(m)
        self.wait_status(m["job_id"], "running", timeout=30)
        self.wait_status(m["job_id"], TERMINAL, timeout=60)
        rows = [r for r in self.output_rows(m["job_id"], "log") if "progress: step" in r["body"]]
        # one step a second is printed, each row is written within 2 s of the last: rows
        # must not bunch up (at most a second's lines in a row) nor lag
        self.assertGreaterEqual(len(rows), 6, rows)
        for r in rows:
            self.assertLessEqual(r["body"].count("progress: step"), 2, r)


class TestBudget(LiveCase):

    def test_chatty_trainer_is_trimmed_and_slows_neither_lease_nor_other_slot(self):
        budget = 65536
        uc, uq = self.user("chatty"), self.user("quiet")
        # 15 steps over 15 s, 10 000 lines each: ~10 000 lines/s, for long enough that the
        # rows written (at most budget / 8 a second) exceed the budget
        chatty = self.message(uc, self.dataset_env(uc, FORMAT="diffusers", STEPS=15,
                                                   DURATION=15, CHATTY_LINES=10000,
                                                   MESSAGE="chatty done"))
        quiet = self.message(uq, self.dataset_env(uq, FORMAT="plain", STEPS=8, DURATION=8))
        self.consumer(f"chat-{run_id()}", slots=2, TRAINQ_LOG_MAX_BYTES=budget)
        self.publish(chatty, quiet)
        self.wait_status(quiet["job_id"], "running", timeout=30)
        # Lease renewals of the quiet job, as Postgres sees them (heartbeat every 1 s).
        renewals, last = [], None
        while (j := self.job(quiet["job_id"]))["status"] not in TERMINAL:
            if j["lease_expires_at"] != last:
                renewals.append(time.time())
                last = j["lease_expires_at"]
            time.sleep(0.1)
        self.wait_status(chatty["job_id"], TERMINAL, timeout=60)
        gaps = [b - a for a, b in zip(renewals, renewals[1:])]
        print(f"\nlease renewal gaps under a chatty trainer: max {max(gaps):.2f}s "
              f"over {len(gaps)}", flush=True)
        self.assertLess(max(gaps), 2.5, gaps)
        # the quiet job's rows: one a second, never bunched behind the chatty one
        qrows = self.output_rows(quiet["job_id"], "log")
        times = [tqenv.psql("SELECT extract(epoch FROM :'t'::timestamptz)",
                            variables={"t": r["created_at"]}) for r in qrows]
        qgaps = [float(b) - float(a) for a, b in zip(times, times[1:])]
        print(f"quiet slot's log rows: max gap {max(qgaps):.2f}s over {len(qgaps)}", flush=True)
        self.assertLess(max(qgaps), 2.5, qgaps)
        self.assertEqual(self.job(quiet["job_id"])["current_step"], 8)
        # the chatty job's log: within the budget, the newest lines kept, the drop said
        cj = self.job(chatty["job_id"])
        self.assertEqual(cj["status"], "completed")
        self.assertEqual(cj["current_step"], 15)
        rows = int(tqenv.psql("SELECT count(*) FROM job_output WHERE job_id = :'id'",
                              variables={"id": chatty["job_id"]}))
        kept = int(tqenv.psql("SELECT coalesce(sum(bytes), 0) FROM job_output "
                              "WHERE job_id = :'id' AND kind = 'log'",
                              variables={"id": chatty["job_id"]}))
        self.assertLess(rows, cj["output_seq"], "no row was trimmed: the test proves nothing")
        self.assertLessEqual(kept, budget)
        self.assertEqual(cj["log_bytes"], kept)
        # trimmed by whole rows of at most budget / 8 (+ the drop line): the rest is kept
        self.assertGreaterEqual(kept, budget - budget // 8 - 128)
        log = self.log_text(chatty["job_id"])
        self.assertIn("chatty done", log.split("\n")[-2:], log[-300:])
        self.assertNotIn("chatter step 1 line 1/", log, "the oldest lines go first")
        self.assertRegex(log, r"\[trainq: \d+ lines dropped here")


class TestRestartAndFencing(LiveCase):

    def test_consumer_restart_mid_job_keeps_following(self):
        u = self.user("restart")
        m = self.message(u, self.dataset_env(u, FORMAT="kohya", STEPS=10, DURATION=10,
                                             MESSAGE="after restart"))
        wid = f"rs-{run_id()}"
        c1 = self.consumer(wid, slots=1)
        self.publish(m)
        h.wait_until(lambda: self.step(m["job_id"]) >= 2, timeout=30,
                     what="progress before the restart")
        c1.kill()
        c2 = self.consumer(wid, slots=1)
        c2.wait_event("adopt.container", timeout=20)
        before = self.job(m["job_id"])["current_step"]
        j = self.wait_status(m["job_id"], TERMINAL, timeout=60)
        self.assertEqual(j["status"], "completed")
        self.assertEqual(j["current_step"], 10)
        self.assertLess(before, 10)
        samples = [json.loads(r["body"])["current_step"]
                   for r in self.output_rows(m["job_id"], "progress")]
        self.assertTrue(any(before < s < 10 for s in samples),
                        f"no live progress after the restart: {samples}")
        log = self.log_text(m["job_id"]).split("\n")
        self.assertIn("[trainq: output followed again from here; lines printed while it was "
                      "not followed are missing]", log)
        self.assertIn("after restart", log[-2:])
        self.assertEqual(len([l for l in log if "| 10/10 [" in l]), 1)

    def test_a_fenced_write_stops_the_output_of_that_job(self):
        u = self.user("fenced")
        m = self.message(u, self.dataset_env(u, FORMAT="plain", STEPS=20, DURATION=20))
        c = self.consumer(f"fe-{run_id()}", slots=1, TRAINQ_LEASE_SECONDS=30)
        self.publish(m)
        h.wait_until(lambda: self.step(m["job_id"]) >= 1, timeout=30,
                     what="first progress")
        # another claim took the job over (what a reaper's recovery does to the token)
        tqenv.psql("UPDATE training_jobs SET fencing_token = fencing_token + 1 "
                   "WHERE id = :'id'", variables={"id": m["job_id"]})
        c.wait_event("job.output_fenced", timeout=10)
        n = self.job(m["job_id"])["output_seq"]
        time.sleep(2.5)
        self.assertEqual(self.job(m["job_id"])["output_seq"], n, "written after fencing")


class TestArtifacts(LiveCase):

    def test_output_files_are_recorded_with_size_and_sha256_without_following_links(self):
        uo, uf = self.user("art-ok"), self.user("art-fail")
        ok = self.message(uo, self.dataset_env(uo, FORMAT="plain", STEPS=3, DURATION=3))
        failed = self.message(uf, self.dataset_env(uf, FORMAT="plain", STEPS=3, DURATION=3,
                                                   EXIT_CODE=3))
        self.consumer(f"art-{run_id()}", slots=2)
        self.publish(ok, failed)
        self.wait_status(ok["job_id"], "running", timeout=30)
        outdir = os.path.join(self.tmp, "data", "outputs", ok["job_id"])
        os.makedirs(os.path.join(outdir, "checkpoint-1"))
        with open(os.path.join(outdir, "checkpoint-1", "state.bin"), "wb") as f:
            f.write(os.urandom(100000))
        secret = os.path.join(self.tmp, "secret")
        with open(secret, "w") as f:
            f.write("not an artifact")
        os.symlink(secret, os.path.join(outdir, "link-to-secret"))
        os.symlink(os.path.join(self.tmp), os.path.join(outdir, "link-to-dir"))
        for m in (ok, failed):
            self.wait_status(m["job_id"], TERMINAL, timeout=60)
        self.assertEqual(self.job(failed["job_id"])["status"], "failed")
        for m in (ok, failed):
            d = os.path.join(self.tmp, "data", "outputs", m["job_id"])
            rows = json.loads(tqenv.psql(
                "SELECT coalesce(json_agg(a ORDER BY name), '[]') FROM job_artifacts a "
                "WHERE job_id = :'id'", variables={"id": m["job_id"]}))
            want = []
            for dirpath, dirs, files in os.walk(d):
                for fn in files:
                    p = os.path.join(dirpath, fn)
                    if os.path.islink(p):
                        continue
                    with open(p, "rb") as f:
                        data = f.read()
                    want.append({"name": os.path.relpath(p, d), "size_bytes": len(data),
                                 "sha256": hashlib.sha256(data).hexdigest()})
            want.sort(key=lambda a: a["name"])
            got = [{k: r[k] for k in ("name", "size_bytes", "sha256")} for r in rows]
            self.assertEqual(got, want)
            names = [a["name"] for a in got]
            self.assertIn("pytorch_lora_weights.safetensors", names)
            self.assertIn("trainer.log", names)
            if m is ok:
                self.assertIn("checkpoint-1/state.bin", names)
                self.assertFalse([n for n in names if n.startswith("link-")])


def parse_sse(text):
    """[(event, data)] of a Server-Sent Events body, comments and ids dropped, multi-line
    data joined with newlines (the format's rules)."""
    events, name, data = [], "message", []
    for line in text.split("\n"):
        if line == "":
            if data:
                events.append((name, "\n".join(data)))
            name, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
    return events


class TestThroughTheProducer(LiveCase):

    def test_a_submitted_job_is_watched_through_the_api_while_it_runs_and_after(self):
        """End to end: submitted over HTTP, run by the consumer, read over HTTP (the
        producer's job fields, log tail and artifacts come from what the consumer wrote)."""
        u = self.user("e2e")
        ds = self.dataset_env(u, FORMAT="ai-toolkit", STEPS=6, DURATION=6, MESSAGE="e2e done")
        self.consumer(f"e2e-{run_id()}", slots=1)
        outputs = os.path.join(self.tmp, "data", "outputs")
        p = start_producer(TRAINQ_ARTIFACTS_DIR=outputs)
        try:
            wait_ready(p.port)
            c = h.Http(p.port)
            tok = h.mint(u, SECRET)
            r = c.request("POST", "/api/training/submit", json_body=body_for(ds), token=tok)
            self.assertEqual(r.status, 200, r)
            jid = r.json["job_id"]
            # An independent client follows the job's event stream from the start: curl -N
            # reads until the producer ends the stream after the terminal status.
            sse = subprocess.Popen(
                ["curl", "-sSN", "--max-time", "90", "-H", f"Authorization: Bearer {tok}",
                 "-H", "Accept: text/event-stream",
                 f"http://127.0.0.1:{p.port}/api/training/jobs/{jid}/stream"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            seen = []
            while True:
                j = c.request("GET", f"/api/training/jobs/{jid}", token=tok).json
                j = j.get("job", j)
                seen.append(j)
                if j["status"] in TERMINAL:
                    break
                time.sleep(0.25)
            self.assertEqual(j["status"], "completed")
            self.assertEqual((j["current_step"], j["total_steps"], j["progress"]), (6, 6, 1))
            self.assertAlmostEqual(j["loss"], float(loss_text("ai-toolkit", 6)), places=12)
            live = {s["current_step"] for s in seen if s["status"] == "running"}
            self.assertTrue(live & set(range(1, 6)), f"no live progress over the API: {live}")
            log = c.request("GET", f"/api/training/jobs/{jid}/logs?tail=1000",
                            token=tok).raw.decode()
            lines = log.splitlines()
            self.assertIn("e2e done", lines[-2:])
            self.assertEqual(len([l for l in lines if "| 6/6 [" in l]), 1, log)
            self.assertFalse([l for l in lines if "| 3/6 [" in l], "a redraw was logged")
            arts = c.request("GET", f"/api/training/jobs/{jid}/artifacts", token=tok).json
            by_name = {a["name"]: a for a in arts["artifacts"]}
            path = os.path.join(outputs, jid, "pytorch_lora_weights.safetensors")
            with open(path, "rb") as f:
                data = f.read()
            a = by_name["pytorch_lora_weights.safetensors"]
            self.assertEqual((a["size_bytes"], a["sha256"]),
                             (len(data), hashlib.sha256(data).hexdigest()))
            r = c.request("GET", f"/api/training/jobs/{jid}/artifacts/"
                          "pytorch_lora_weights.safetensors", token=tok)
            self.assertEqual((r.status, r.raw), (200, data))
            c.close()
            out, err = sse.communicate(timeout=60)
            self.assertEqual(sse.returncode, 0, err)  # ended by the producer, not the timeout
            events = parse_sse(out.decode())
            statuses = [json.loads(d)["status"] for e, d in events if e == "status"]
            self.assertEqual(statuses, ["queued", "pending", "running", "completed"], out)
            steps = [json.loads(d)["current_step"] for e, d in events if e == "progress"]
            self.assertTrue(steps and steps == sorted(steps) and steps[-1] == 6, steps)
            streamed = "\n".join(d for e, d in events if e == "log").splitlines()
            self.assertIn("e2e done", streamed)
            self.assertEqual(streamed, lines[-len(streamed):] if streamed else streamed)
        finally:
            stop_producer(self, p)


if __name__ == "__main__":
    unittest.main()
