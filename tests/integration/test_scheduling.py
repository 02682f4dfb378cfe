"""Who runs next (issue 14): priority, fair share, no head-of-line blocking, usage, quota.

Against the real Postgres, RabbitMQ, dockerd and the fake trainer image, with consumers from
the build tree. The order is checked from the audit table (the claims, `pending` events),
the burst is measured from outside: the time from publishing the other user's job to its
claim, with and without 1 000 jobs of one user published straight to AMQP ahead of it.
"""

import json
import time
import unittest
import uuid
from datetime import datetime

import tqharness as h
import tqenv
from test_consumer import ConsumerCase, TERMINAL, run_id
from test_producer import SECRET, start_producer, stop_producer

BURST = 1000


def ts(s):
    return datetime.fromisoformat(s).timestamp()


class SchedulingCase(ConsumerCase):

    def claim_time(self, job_id, timeout=60):
        """Epoch of the job's first claim (its `pending` event)."""
        def got():
            out = tqenv.psql("SELECT extract(epoch FROM min(at)) FROM job_events "
                             "WHERE job_id = :'id' AND to_status = 'pending'",
                             variables={"id": job_id})
            return float(out) if out else None
        return h.wait_until(got, timeout=timeout, interval=0.05, what=f"claim of {job_id}")

    def publish_many(self, msgs, confirm=True):
        """Publishes like any service would; without confirm the messages go out as fast as
        the socket takes them (a burst), still in order on the one channel."""
        import pika
        conn = h.amqp_connection()
        try:
            ch = conn.channel()
            if confirm:
                ch.confirm_delivery()
            for m in msgs:
                props = pika.BasicProperties(content_type="application/json", delivery_mode=2,
                                             message_id=m["job_id"])
                ch.basic_publish("trainq.jobs", "lora", json.dumps(m), props, mandatory=True)
        finally:
            conn.close()

    def other_users_wait(self, burst):
        """Seconds from publishing user B's one job to its claim, with `burst` jobs of user
        A published straight to AMQP just before it, on 2 consumers x 2 slots (A holds 2 of
        the 4 slots with long jobs, so B always has room)."""
        a, b = self.user("burst-a"), self.user("burst-b")
        ds_a = self.dataset(a, duration=60)
        ds_b = self.dataset(b, duration=1)
        self.consumer(f"hol-1-{run_id()}", slots=2)
        self.consumer(f"hol-2-{run_id()}", slots=2)
        first = [self.message(a, ds_a) for _ in range(2)]
        self.publish_many(first)
        for m in first:
            self.wait_status(m["job_id"], "running")
        mb = self.message(b, ds_b)
        burst_msgs = [self.message(a, ds_a) for _ in range(burst)]
        t0 = time.time()
        self.publish_many(burst_msgs + [mb], confirm=False)
        t1 = time.time()
        return self.claim_time(mb["job_id"]) - t1, t1 - t0


    def claims_in_order(self, job_ids):
        """The given jobs by the time of their first claim."""
        return sorted(job_ids, key=lambda j: self.claim_time(j))

    def limits(self, user, **cols):
        names = ", ".join(cols)
        vals = ", ".join(f":'{k}'" for k in cols)
        sets = ", ".join(f"{k} = EXCLUDED.{k}" for k in cols)
        tqenv.psql(f"INSERT INTO user_limits (user_id, {names}) VALUES (:'u', {vals}) "
                   f"ON CONFLICT (user_id) DO UPDATE SET {sets}",
                   variables={"u": user, **{k: str(v) for k, v in cols.items()}})

    def seed_usage(self, user, gpu_seconds, hours_ago):
        """An attempt of the user's past (GPU slots cannot run here: the consumers of the
        tests have none), as tq_record_usage would have written it."""
        tqenv.psql("INSERT INTO job_usage (job_id, user_id, worker_id, attempt, gpus, started_at,"
                   " ended_at, wall_seconds, gpu_seconds, outcome) VALUES (gen_random_uuid(),"
                   " :'u', 'history', 1, 1, now() - make_interval(hours => :'h'::int)"
                   " - make_interval(secs => :'g'::double precision),"
                   " now() - make_interval(hours => :'h'::int), :'g', :'g', 'completed')",
                   variables={"u": user, "g": str(gpu_seconds), "h": str(hours_ago)})

    def tearDown(self):
        if getattr(self, "users", None):
            tqenv.psql("DELETE FROM job_usage WHERE user_id = ANY(string_to_array(:'u', ','));"
                       "DELETE FROM user_limits WHERE user_id = ANY(string_to_array(:'u', ','))",
                       variables={"u": ",".join(self.users)})
        super().tearDown()


class TestOrder(SchedulingCase):

    def blocked_slot(self):
        """One consumer with one slot, busy for a moment with a job of its own user, so that
        what is queued meanwhile is picked in the order of the queue."""
        blocker = self.user("blocker")
        mb = self.message(blocker, self.dataset(blocker, duration=3))
        self.consumer(f"order-{run_id()}", slots=1)
        self.publish(mb)
        self.wait_status(mb["job_id"], "running")
        return mb

    def test_a_high_priority_job_starts_before_older_normal_and_low_jobs(self):
        """Priority inversion: older normal and low jobs of other users wait while a newer
        high job (its user may ask for high) takes the slot first; then normal, then low."""
        low, normal, high = self.user("low"), self.user("normal"), self.user("high")
        self.limits(high, max_priority="high")
        self.blocked_slot()
        ml = self.message(low, self.dataset(low), priority="low")
        mn = self.message(normal, self.dataset(normal))
        mh = self.message(high, self.dataset(high), priority="high")
        self.publish(ml)
        self.publish(mn)
        self.publish(mh)
        order = self.claims_in_order([ml["job_id"], mn["job_id"], mh["job_id"]])
        self.assertEqual(order, [mh["job_id"], mn["job_id"], ml["job_id"]])
        self.assertEqual(self.job(mh["job_id"])["priority"], 2)

    def test_a_priority_above_the_users_max_priority_fails_the_direct_job(self):
        """A message asking for more than user_limits.max_priority (default normal) is not
        run: its job fails, the reason names the priority."""
        u = self.user("greedy")
        m = self.message(u, self.dataset(u), priority="high")
        self.consumer(f"prio-{run_id()}", slots=1)
        self.publish(m)
        j = self.wait_status(m["job_id"], TERMINAL)
        self.assertEqual(j["status"], "failed")
        self.assertIn("priority high is above the user's max_priority normal", j["error_message"])
        # a failure like any other: classed (docs/api.md, "Failure classes"), on the job
        # and on the audit event that failed it
        self.assertEqual(j["failure_class"], "config_error")
        self.assertEqual(tqenv.psql("SELECT failure_class FROM job_events WHERE job_id = :'id'"
                                    " AND to_status = 'failed'", variables={"id": m["job_id"]}),
                         "config_error")

    def test_a_user_capped_at_low_gets_low_when_asking_for_nothing(self):
        """max_priority low: a job that names no priority is the user's low job and runs, by
        AMQP and by HTTP (it was normal, above the cap: a 200 and then a failure at its
        pick); an explicit normal over HTTP is the 403 it always was."""
        u = self.user("capped")
        self.limits(u, max_priority="low")
        ds = self.dataset(u)
        m = self.message(u, ds)
        self.assertNotIn("priority", m)
        self.consumer(f"capped-{run_id()}", slots=1)
        self.publish(m)
        self.assertEqual(self.wait_status(m["job_id"], TERMINAL)["status"], "completed")
        self.assertEqual(self.job(m["job_id"])["priority"], 0)
        p = start_producer()
        self.addCleanup(stop_producer, self, p)
        body = {"dataset_id": ds, "type": "lora", "base_model": "stabilityai/sdxl-base-1.0",
                "config": {}}
        r = h.http_once(p.port, "POST", "/api/training/submit", json_body=body,
                        token=h.mint(u, SECRET))
        self.assertEqual(r.status, 200, r)
        jid = r.json["job_id"]
        self.assertEqual(self.wait_status(jid, TERMINAL)["status"], "completed")
        r = h.http_once(p.port, "GET", f"/api/training/jobs/{jid}", token=h.mint(u, SECRET))
        self.assertEqual(r.json["job"]["priority"], "low")
        r = h.http_once(p.port, "POST", "/api/training/submit",
                        json_body=dict(body, priority="normal"), token=h.mint(u, SECRET))
        self.assertEqual((r.status, r.json["error"]), (403, "priority not allowed"), r)
        # safe retries compare requests with their defaults applied: under a cap of low, none
        # named and "low" are one request; "normal" is refused, not replayed
        key = {"Idempotency-Key": "capped-" + run_id()}
        first = h.http_once(p.port, "POST", "/api/training/submit", json_body=body,
                            token=h.mint(u, SECRET), headers=key)
        self.assertEqual(first.status, 200, first)
        again = h.http_once(p.port, "POST", "/api/training/submit",
                            json_body=dict(body, priority="low"), token=h.mint(u, SECRET),
                            headers=key)
        self.assertEqual((again.status, again.json["job_id"]), (200, first.json["job_id"]), again)
        r = h.http_once(p.port, "POST", "/api/training/submit",
                        json_body=dict(body, priority="normal"), token=h.mint(u, SECRET),
                        headers=key)
        self.assertEqual(r.status, 403, r)

    def test_fair_share_starts_the_user_with_the_least_decayed_recent_usage_first(self):
        """Three users, one job each, submitted heaviest past first: the one without usage
        starts first, then the one whose big usage is 10 half-lives old (1/1024 of it is
        left), then the one with moderate usage an hour ago."""
        fresh, old, recent = self.user("fresh"), self.user("old"), self.user("recent")
        self.seed_usage(old, 100000, hours_ago=240)   # ~98 GPU-seconds left after decay
        self.seed_usage(recent, 1000, hours_ago=1)    # ~971 left
        self.blocked_slot()
        msgs = {u: self.message(u, self.dataset(u)) for u in (recent, old, fresh)}
        for u in (recent, old, fresh):
            self.publish(msgs[u])
            time.sleep(0.05)
        order = self.claims_in_order([m["job_id"] for m in msgs.values()])
        self.assertEqual(order, [msgs[fresh]["job_id"], msgs[old]["job_id"],
                                 msgs[recent]["job_id"]])

    def test_the_per_user_limit_holds_with_priorities_and_every_job_runs_once(self):
        """2 consumers x 2 slots, two users with 6 jobs each of mixed priority: never more
        than 2 active per user (audit trail), each job claimed once, all complete."""
        a, b = self.user("mix-a"), self.user("mix-b")
        self.limits(a, max_priority="high")
        self.limits(b, max_priority="high")
        self.consumer(f"mix-1-{run_id()}", slots=2)
        self.consumer(f"mix-2-{run_id()}", slots=2)
        msgs = [self.message(u, self.dataset(u, duration=0.5), priority=p)
                for u in (a, b) for p in ("low", "normal", "high", "low", "high", "normal")]
        self.publish_many(msgs, confirm=False)
        for m in msgs:
            self.assertEqual(self.wait_status(m["job_id"], TERMINAL, timeout=120)["status"],
                             "completed")
        ev = self.events([a, b])
        peaks = self.max_active_per_user(ev)
        self.assertEqual(peaks[a], 2)
        self.assertEqual(peaks[b], 2)
        claims = [e["job_id"] for e in ev if e["to_status"] == "pending"]
        self.assertEqual(sorted(claims), sorted(m["job_id"] for m in msgs))


class TestUsageAndQuota(SchedulingCase):

    def setUp(self):
        super().setUp()
        self.producer = start_producer()

    def tearDown(self):
        stop_producer(self, self.producer)
        super().tearDown()

    def api(self, user, path):
        r = h.http_once(self.producer.port, "GET", path, token=h.mint(user, SECRET))
        return r.status, r.json

    def test_usage_per_attempt_matches_the_audit_trail_and_the_usage_endpoint(self):
        """A completed and a failed job on a CPU slot: one job_usage row each, whose wall
        time is the audit trail's claim-to-end time and whose GPU-seconds are 0; a GPU claim
        (2 GPUs, made by hand) counts 2 x its wall time; GET /api/training/usage sums them
        per day. A claim that ends before it runs (given back, cancelled while pending)
        is no attempt: no row."""
        u = self.user("usage")
        ok = self.message(u, self.dataset(u, duration=1))
        bad = self.message(u, self.dataset(u, duration=0.5, exit_code=3))
        c = self.consumer(f"usage-{run_id()}", slots=2)
        self.publish(ok, bad)
        self.assertEqual(self.wait_status(ok["job_id"], TERMINAL)["status"], "completed")
        self.assertEqual(self.wait_status(bad["job_id"], TERMINAL)["status"], "failed")
        c.stop()  # nobody else may pick the next job
        # A claim on 2 GPUs, by hand: the trigger records whatever changes a job's status.
        g = self.message(u, self.dataset(u))
        self.insert_job(g, 0)
        tqenv.psql("UPDATE training_jobs SET status = 'pending', worker_id = 'by-hand', gpus = 2,"
                   " attempts = 1, fencing_token = fencing_token + 1 WHERE id = :'id'",
                   variables={"id": g["job_id"]})
        time.sleep(0.1)
        tqenv.psql("UPDATE training_jobs SET status = 'running', started_at = now()"
                   " WHERE id = :'id'", variables={"id": g["job_id"]})
        time.sleep(0.2)
        tqenv.psql("UPDATE training_jobs SET status = 'completed', completed_at = now()"
                   " WHERE id = :'id'", variables={"id": g["job_id"]})
        rows = json.loads(tqenv.psql(
            "SELECT json_agg(u ORDER BY u.id) FROM job_usage u WHERE user_id = :'u'",
            variables={"u": u}))
        self.assertEqual(len(rows), 3)
        ev = self.events([u])
        for r in rows:
            mine = [e for e in ev if e["job_id"] == r["job_id"]]
            claim = [e for e in mine if e["to_status"] == "pending"][-1]
            end = [e for e in mine if e["from_status"] in ("pending", "running")
                   and e["to_status"] not in ("pending", "running")][-1]
            wall = ts(end["at"]) - ts(claim["at"])
            self.assertAlmostEqual(r["wall_seconds"], wall, delta=1e-5)
            self.assertEqual(r["outcome"], end["to_status"])
            self.assertAlmostEqual(r["gpu_seconds"],
                                   (2 if r["job_id"] == g["job_id"] else 0) * wall, delta=1e-5)
        self.assertGreater(rows[0]["wall_seconds"], 0.5)
        st, body = self.api(u, "/api/training/usage")
        self.assertEqual(st, 200, body)
        doc = h.load_openapi()
        h.check_schema(doc, h.response_schema(doc, "/api/training/usage", "get", 200), body)
        tot = body["totals"]
        self.assertEqual(tot["jobs"], {"completed": 2, "failed": 1, "cancelled": 0})
        self.assertEqual(tot["attempts"], 3)
        # to the millisecond, no float noise (7.4259830000000004 was seen)
        for k in ("wall_seconds", "gpu_seconds"):
            self.assertEqual(tot[k], round(sum(r[k] for r in rows), 3), k)
            self.assertTrue(all(d[k] == round(d[k], 3) for d in body["days"]), body["days"])
        self.assertEqual(sum(d["attempts"] for d in body["days"]), 3)
        # Another user sees none of it; a bad range is a 400 naming the field.
        st, other = self.api(self.user("nosy"), "/api/training/usage")
        self.assertEqual((st, other["totals"]["attempts"], other["days"]), (200, 0, []))
        st, err = self.api(u, "/api/training/usage?from=yesterday")
        self.assertEqual(st, 400)
        self.assertEqual(err["details"][0]["field"], "from")
        # a claim cancelled before its container ran is no attempt: nothing recorded
        x = self.message(u, self.dataset(u))
        self.insert_job(x, 0)
        tqenv.psql("UPDATE training_jobs SET status = 'pending', worker_id = 'by-hand', gpus = 2,"
                   " attempts = 1, fencing_token = fencing_token + 1 WHERE id = :'id'",
                   variables={"id": x["job_id"]})
        tqenv.psql("UPDATE training_jobs SET status = 'cancelled', completed_at = now()"
                   " WHERE id = :'id'", variables={"id": x["job_id"]})
        self.assertEqual(tqenv.psql("SELECT count(*) FROM job_usage WHERE job_id = :'id'",
                                    variables={"id": x["job_id"]}), "0")

    def test_a_user_over_the_daily_quota_waits_with_reason_quota_until_the_window_frees(self):
        """gpu_seconds_per_day 100 and 150 GPU-seconds used an hour ago: the job stays queued
        (waiting_reason quota) while another user's job runs; once that usage is more than
        24 hours old, it runs."""
        q, other = self.user("quota"), self.user("free")
        self.limits(q, gpu_seconds_per_day=100)
        self.seed_usage(q, 150, hours_ago=1)
        mq = self.message(q, self.dataset(q))
        mo = self.message(other, self.dataset(other))
        self.consumer(f"quota-{run_id()}", slots=2)
        self.publish(mq)
        self.publish(mo)
        self.assertEqual(self.wait_status(mo["job_id"], TERMINAL)["status"], "completed")
        st, body = self.api(q, f"/api/training/jobs/{mq['job_id']}")
        self.assertEqual(st, 200, body)
        doc = h.load_openapi()
        h.check_schema(doc, h.response_schema(doc, "/api/training/jobs/{id}", "get", 200), body)
        job = body["job"]
        self.assertEqual((job["status"], job["waiting_reason"]), ("queued", "quota"))
        self.assertEqual(job["queue_position"], 1)
        tqenv.psql("UPDATE job_usage SET ended_at = ended_at - interval '24 hours' "
                   "WHERE user_id = :'u'", variables={"u": q})
        self.assertEqual(self.wait_status(mq["job_id"], TERMINAL)["status"], "completed")


class TestClusterMetrics(SchedulingCase):

    def test_a_consumer_reports_the_clusters_usage_totals_without_user_labels(self):
        """Attempts that ended over a minute ago, any worker's, are in every consumer's
        trainq_cluster_* counters (whole seconds), with no per-user label."""
        u = self.user("metrics")
        before = float(tqenv.psql("SELECT COALESCE(sum(gpu_seconds), 0) FROM job_usage"
                                  " WHERE ended_at < now() - interval '1 minute'"))
        self.seed_usage(u, 4321, hours_ago=2)
        c = self.consumer(f"metrics-{run_id()}")
        port = c.wait_event("consumer.starting").get("metrics_port")

        def sample(name):
            r = h.http_once(port, "GET", "/metrics", timeout=5)
            for line in r.raw.decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
            return None

        h.wait_until(lambda: (sample("trainq_cluster_gpu_seconds_total") or 0)
                     >= int(before + 4321), timeout=15, what="the cluster's GPU-seconds")
        self.assertGreaterEqual(sample("trainq_cluster_attempts_total"), 1)
        self.assertGreaterEqual(sample("trainq_cluster_attempt_seconds_total"), 4321 - 1)
        text = h.http_once(port, "GET", "/metrics", timeout=5).raw.decode()
        self.assertNotIn(u, text)
        self.assertIn("# TYPE trainq_cluster_gpu_seconds_total counter", text)


class TestSubmitPriority(SchedulingCase):

    def test_submit_priority_above_max_priority_is_403_naming_the_field(self):
        """priority high without max_priority high: 403 naming priority; with it: 200 and
        the job says high; an unknown priority is a 400."""
        p = start_producer()
        try:
            u = self.user("submitter")
            ds = self.dataset(u)
            body = {"dataset_id": ds, "type": "lora", "base_model": "stabilityai/sdxl-base-1.0",
                    "config": {}, "priority": "high"}
            tok = h.mint(u, SECRET)
            r = h.http_once(p.port, "POST", "/api/training/submit", json_body=body, token=tok)
            self.assertEqual(r.status, 403, r.raw)
            self.assertEqual(r.json["details"][0]["field"], "priority")
            r = h.http_once(p.port, "POST", "/api/training/submit",
                            json_body=dict(body, priority="urgent"), token=tok)
            self.assertEqual(r.status, 400, r.raw)
            self.assertEqual(r.json["details"][0]["field"], "priority")
            self.limits(u, max_priority="high")
            r = h.http_once(p.port, "POST", "/api/training/submit", json_body=body, token=tok)
            self.assertEqual(r.status, 200, r.raw)
            jid = r.json["job_id"]
            r = h.http_once(p.port, "GET", f"/api/training/jobs/{jid}", token=tok)
            job = r.json.get("job", r.json)
            self.assertEqual(job["priority"], "high")
            self.assertEqual(json.loads(self.job(jid)["message"])["priority"], "high")
        finally:
            stop_producer(self, p)


class TestNoHeadOfLineBlocking(SchedulingCase):

    def test_a_burst_of_1000_direct_jobs_delays_another_users_job_by_less_than_1s(self):
        """Normal dispatch of B's job (no burst) and the same behind 1 000 of A's jobs:
        the difference stays under 1 s."""
        base, _ = self.other_users_wait(0)
        self.tearDown()
        self.setUp()
        loaded, took = self.other_users_wait(BURST)
        print(f"burst: other user's claim {base:.3f} s after its publish alone, {loaded:.3f} s "
              f"behind {BURST} jobs published in {took:.3f} s (extra {loaded - base:.3f} s)")
        self.assertLess(loaded - base, 1.0,
                        f"B's job waited {loaded:.2f} s behind {BURST} jobs vs {base:.2f} s")


class TestOrderInSql(unittest.TestCase):
    """The usage scores and queue positions of db/procedures/65_schedule.sql, each case in one
    rolled-back transaction (other suites' queued jobs are in the same database: every
    expectation is computed in the same statement, from the same snapshot)."""

    # the decayed usage summed straight from job_usage, as fair share defines it
    DIRECT = ("(SELECT COALESCE(sum(gpu_seconds * power(2, -extract(epoch FROM now() - ended_at)"
              " / tq_half_life_seconds())), 0) FROM job_usage WHERE user_id = {u})")

    def check_usage(self, u, label):
        """tq_recent_usage (from the score) against the direct sum; 'ok' when they agree to
        1e-9 relative (or are both 0)."""
        d = self.DIRECT.format(u=u)
        return (f"SELECT '{label}: ' || CASE WHEN abs(tq_recent_usage({u}) - {d})"
                f" <= 1e-9 * GREATEST({d}, 1e-300) OR ({d} = 0 AND tq_recent_usage({u}) = 0)"
                f" THEN 'ok' ELSE tq_recent_usage({u}) || ' <> ' || {d} END;")

    def test_usage_scores_follow_every_change_of_job_usage_and_of_the_half_life(self):
        u = f"'score-{uuid.uuid4().hex[:8]}'"
        usage = ("INSERT INTO job_usage (job_id, user_id, worker_id, attempt, gpus, started_at,"
                 " ended_at, wall_seconds, gpu_seconds, outcome) SELECT gen_random_uuid(), {u},"
                 " 'w', 1, 1, now() - make_interval(hours => i), now() - make_interval(hours => i),"
                 " 10, {g}, 'completed' FROM generate_series({a}, {b}) i;")
        out = tqenv.psql(
            "BEGIN;"
            + self.check_usage(u, "none")
            + usage.format(u=u, g="100 * i", a=0, b=40)
            + usage.format(u=u, g="0", a=1, b=3)  # CPU-slot attempts add nothing
            + self.check_usage(u, "inserted")
            + f"UPDATE job_usage SET ended_at = ended_at - interval '20 hours' WHERE user_id = {u}"
            " AND gpu_seconds > 2000;"
            + self.check_usage(u, "updated")
            + f"DELETE FROM job_usage WHERE user_id = {u} AND gpu_seconds < 500;"
            + self.check_usage(u, "deleted")
            + "UPDATE settings SET value = '3600' WHERE key = 'fair_share_half_life_seconds';"
            + self.check_usage(u, "half-life 1 h")
            + f"DELETE FROM job_usage WHERE user_id = {u};"
            + self.check_usage(u, "all deleted")
            + f"SELECT 'rows left: ' || count(*) FROM user_usage_scores WHERE user_id = {u};"
            "ROLLBACK;")
        self.assertEqual(out.splitlines(), [
            "none: ok", "inserted: ok", "updated: ok", "deleted: ok", "half-life 1 h: ok",
            "all deleted: ok", "rows left: 0"])

    def test_positions_of_a_page_are_each_jobs_own_with_held_users_counting_only_themselves(self):
        """Two users over their quota (held) and two free users with different usage, three
        queued jobs each, asked for all at once (as a page of the admin list is) and one by
        one: both equal the definition (1 + the queued jobs before it in the pick's order,
        by the decayed usage summed straight from job_usage; jobs of other held users not
        counted), computed in the same statement."""
        tag = uuid.uuid4().hex[:8]
        users = [f"pos-{n}-{tag}" for n in ("held1", "held2", "light", "heavy")]
        held = users[:2]
        sql = ["BEGIN;"]
        for u in held:
            sql.append(f"INSERT INTO user_limits (user_id, gpu_seconds_per_day) VALUES ('{u}', 0);")
        sql.append("INSERT INTO job_usage (job_id, user_id, worker_id, attempt, gpus, started_at,"
                   " ended_at, wall_seconds, gpu_seconds, outcome) VALUES (gen_random_uuid(),"
                   f" '{users[3]}', 'w', 1, 1, now(), now(), 1, 500, 'completed');")
        for k in range(3):
            for n, u in enumerate(users):
                sql.append("INSERT INTO training_jobs (id, user_id, dataset_id, name, type,"
                           " base_model, config, status, message, created_at, priority) VALUES"
                           f" (gen_random_uuid(), '{u}', gen_random_uuid(), 'p', 'lora', 'm',"
                           f" '{{}}', 'queued', '{{}}', now() - make_interval(secs => {100 - 10 * k - n}),"
                           f" {2 if (k, n) == (2, 2) else 1});")
        ids = (f"ARRAY(SELECT id FROM training_jobs WHERE user_id = ANY('{{{','.join(users)}}}')"
               " AND status = 'queued')")
        sql.append(
            f"WITH mine AS (SELECT * FROM training_jobs WHERE id = ANY({ids})),"
            f" page AS (SELECT * FROM tq_queue_positions({ids}))"
            " SELECT m.user_id, page.queue_position,"
            " (SELECT p.queue_position FROM tq_queue_positions(ARRAY[m.id]) p),"
            " 1 + (SELECT count(*) FROM training_jobs q WHERE q.status = 'queued' AND q.id <> m.id"
            "   AND (q.user_id = m.user_id OR NOT tq_user_over_quota(q.user_id))"
            "   AND (-q.priority, tq_recent_usage(q.user_id), q.created_at, q.id)"
            "     < (-m.priority, tq_recent_usage(m.user_id), m.created_at, m.id))"
            " FROM mine m LEFT JOIN page ON page.id = m.id ORDER BY m.created_at;")
        sql.append("ROLLBACK;")
        out = [line.split("|") for line in tqenv.psql("".join(sql)).splitlines()]
        self.assertEqual(len(out), 12, out)
        for user, on_page, alone, defined in out:
            self.assertEqual((on_page, alone), (defined, defined), f"{user}: {out}")
        pos = {(user, n): int(row[1]) for n, row in enumerate(out) for user in [row[0]]}
        by_user = {u: sorted(p for (uu, _), p in pos.items() if uu == u) for u in users}
        # the light user's raised job (high) is first of all of these; the heavy user (500
        # GPU-seconds just now) comes after the light one's normal jobs
        self.assertEqual(min(by_user[users[2]]), min(pos.values()))
        self.assertGreater(min(by_user[users[3]]), max(by_user[users[2]]))
        # a held user's jobs count its own, not the other held user's: both stand alike
        self.assertEqual([b - a for a, b in zip(by_user[held[0]], by_user[held[0]][1:])],
                         [b - a for a, b in zip(by_user[held[1]], by_user[held[1]][1:])])


if __name__ == "__main__":
    unittest.main()
