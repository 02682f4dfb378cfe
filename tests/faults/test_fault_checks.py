"""The fault suite's own checks, on made-up audit trails and samples: each would catch the
violation it is there for (no services needed, runs in a second)."""

import unittest

import faultlib as fl


def ev(i, job, user, frm, to, reason="r", worker="w"):
    return {"id": i, "job_id": job, "user_id": user, "from_status": frm, "to_status": to,
            "worker_id": worker, "reason": reason, "at": f"t{i}"}


def life(start, job, user, end="completed"):
    """A clean life of a job: queued, pending, running, end."""
    return [ev(start, job, user, None, "queued"), ev(start + 1, job, user, "queued", "pending"),
            ev(start + 2, job, user, "pending", "running"),
            ev(start + 3, job, user, "running", end)]


class ReplayAudit(unittest.TestCase):

    def test_clean_trail_has_no_findings(self):
        r = fl.replay_audit(life(1, "j1", "u") + life(10, "j2", "u"))
        self.assertEqual((r["violations"], r["doubles"], r["chain_breaks"], r["unreasoned"]),
                         (0, 0, 0, 0), r["problems"])
        self.assertEqual(r["peak"], {"u": 1})

    def test_third_active_job_of_a_user_is_a_violation(self):
        trail = []
        for n, j in enumerate(("a", "b", "c")):
            trail += [ev(10 * n + 1, j, "u", None, "queued"),
                      ev(10 * n + 2, j, "u", "queued", "pending")]
        trail.sort(key=lambda e: e["id"])
        r = fl.replay_audit(trail)
        self.assertEqual(r["violations"], 1)
        self.assertEqual(r["peak"], {"u": 3})
        # two users with two each: no violation
        r = fl.replay_audit([e for e in trail if e["job_id"] != "c"])
        self.assertEqual(r["violations"], 0)

    def test_claim_while_active_is_a_double(self):
        trail = life(1, "j", "u")[:3] + [ev(4, "j", "u", "running", "pending")]
        r = fl.replay_audit(trail)
        self.assertEqual(r["doubles"], 1, r["problems"])

    def test_missing_transition_breaks_the_chain(self):
        trail = [ev(1, "j", "u", None, "queued"), ev(2, "j", "u", "running", "completed")]
        self.assertEqual(fl.replay_audit(trail)["chain_breaks"], 1)

    def test_recovery_needs_a_reason(self):
        trail = life(1, "j", "u")[:3] + [ev(4, "j", "u", "running", "queued", reason=""),
                                         ev(5, "j", "u", "queued", "pending"),
                                         ev(6, "j", "u", "pending", "failed", reason=None)]
        r = fl.replay_audit(trail)
        self.assertEqual((r["recovered"], r["unreasoned"]), (2, 2))
        trail[3]["reason"] = "worker w stopped renewing its lease; retrying"
        trail[5]["reason"] = "gave up"
        self.assertEqual(fl.replay_audit(trail)["unreasoned"], 0)


class Overlaps(unittest.TestCase):

    def test_overlap_and_hand_over(self):
        self.assertEqual(fl.overlapping([(0, 5, "a"), (5.0, 9, "b")]), [])
        self.assertEqual(fl.overlapping([(0, 5, "a"), (4.99, 9, "b")]), [])  # 10 ms: clock
        self.assertEqual(len(fl.overlapping([(0, 5, "a"), (3, 9, "b")])), 1)
        # a long interval covering two later ones: both are reported
        self.assertEqual(len(fl.overlapping([(0, 10, "a"), (1, 2, "b"), (3, 4, "c")])), 2)


class Watcher(unittest.TestCase):

    def test_two_live_containers_of_one_job_and_a_third_running_per_user(self):
        def c(cid, job, user, state):
            return {"Id": cid * 8, "State": state,
                    "Labels": {"trainq.job": job, "trainq.user": user}}
        sample = [c("a", "j1", "u", "running"), c("b", "j1", "u", "created"),
                  c("c", "j2", "u", "running"), c("d", "j3", "u", "running"),
                  c("e", "j4", "u", "exited"), c("f", "j5", "other", "running")]
        w = fl.DockerWatcher(["u"])
        orig = fl.containers
        fl.containers = lambda filters, timeout=5: sample
        try:
            w.sample()
        finally:
            fl.containers = orig
        self.assertEqual(set(w.double_jobs), {"j1"})
        self.assertEqual(w.user_peak, {"u": 3})
        self.assertEqual(len(w.over_limit), 1)



class StrandedJobs(unittest.TestCase):
    """StrandWatcher.observe, on made-up samples (no services: the thread is not started)."""

    def watcher(self):
        return fl.StrandWatcher(["u"])

    def test_a_job_that_looks_stranded_for_longer_than_the_bound_counts(self):
        w = self.watcher()
        for t in range(0, int(fl.STRANDED_BOUND) + 3):
            w.observe({"j"}, float(t))
        self.assertEqual(list(w.stranded), ["j"])
        self.assertGreater(w.stranded["j"], fl.STRANDED_BOUND)

    def test_a_job_repaired_within_the_bound_does_not_count(self):
        w = self.watcher()
        for t in range(0, int(fl.STRANDED_BOUND)):
            w.observe({"j"}, float(t))
        w.observe(set(), fl.STRANDED_BOUND)  # republished, or claimed
        for t in range(0, int(fl.STRANDED_BOUND)):
            w.observe({"j"}, fl.STRANDED_BOUND + 1 + t)  # looks stranded again: a new clock
        self.assertEqual(w.stranded, {})

    def test_nothing_counts_while_the_queue_holds_ready_messages(self):
        w = self.watcher()
        for t in range(0, 3 * int(fl.STRANDED_BOUND)):
            w.observe({"j"}, float(t), queue_ready=1 if t % 5 == 0 else 0)
        self.assertEqual(w.stranded, {})


if __name__ == "__main__":
    unittest.main()
