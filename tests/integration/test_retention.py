"""Retention (issue 11, item 5; docs/operations.md, "Retention"): a real producer's retention
thread against the real Postgres prunes published outbox rows older than
TRAINQ_OUTBOX_RETENTION_SECONDS, rate-limit rows of past windows and, with
TRAINQ_JOB_RETENTION_SECONDS, finished jobs with their audit, output and artifact rows; and
keeps unpublished outbox rows, jobs that are not finished or finished too recently, and
(the default) every job.

Jobs are made the way the programs make them: submitted over HTTP, moved with plain UPDATEs
(test_live.set_status) whose triggers write the audit rows, their output written through
tq_output_log / tq_output_progress; then their times are set back with psql in one
transaction, as if they had happened days ago.

Needs TRAINQ_BIN_DIR, TRAINQ_DATABASE_URL (migrated), TRAINQ_AMQP_URL, TRAINQ_SERVICES.
"""

import time
import unittest

import tqharness as h
from test_live import set_status, write_log, write_progress
from test_producer import (SECRET, add_dataset, body_for, new_user, start_producer,
                           stop_producer, wait_ready)

HOUR = 3600
DAY = 86400


def q(sql, **variables):
    return h.psql(sql, variables=variables)


class RetentionTest(unittest.TestCase):
    def setUp(self):
        self.user = new_user()
        self.token = h.mint(self.user, SECRET)
        self.ds = add_dataset(self.user)
        self.producers = []
        self.addCleanup(self._cleanup)

    def _cleanup(self):
        # Leave nothing for later suites' relays: this user's held-back rows go out as sent.
        q("UPDATE outbox SET published_at = now(), available_at = now() WHERE published_at IS NULL"
          " AND job_id IN (SELECT id FROM training_jobs WHERE user_id = :'u')", u=self.user)
        q("UPDATE training_jobs SET status = 'cancelled', completed_at = now()"
          " WHERE user_id = :'u' AND status NOT IN ('completed', 'failed', 'cancelled')",
          u=self.user)
        for p in self.producers:
            if p.running():
                stop_producer(self, p)
            else:
                p.cleanup()

    def producer(self, **env):
        p = start_producer(TRAINQ_RETENTION_INTERVAL_SECONDS="1",
                           TRAINQ_OUTBOX_RETENTION_SECONDS=str(HOUR), **env)
        wait_ready(p.port)
        p.c = h.Http(p.port)
        self.addCleanup(p.c.close)
        self.producers.append(p)
        return p

    def submit(self, p):
        r = p.c.request("POST", "/api/training/submit", json_body=body_for(self.ds),
                        token=self.token)
        self.assertEqual(r.status, 200, r)
        job = r.json["job_id"]
        h.wait_until(lambda: q("SELECT bool_and(published_at IS NOT NULL) FROM outbox"
                               " WHERE job_id = :'id'", id=job) == "t",
                     timeout=20, interval=0.1, what="the job's outbox row published")
        return job

    def finished(self, p, status="completed"):
        """A job that ran, wrote log lines and progress, listed an artifact and ended."""
        job = self.submit(p)
        set_status(job, "pending")
        set_status(job, "running")
        write_log(job, "step 1\nstep 2\n")
        write_progress(job, 5, 10)
        q("INSERT INTO job_artifacts (job_id, name, size_bytes, sha256)"
          " VALUES (:'id', 'lora.safetensors', 3, repeat('a', 64))", id=job)
        set_status(job, status)
        return job

    def rows(self, job):
        """job row, audit rows, outbox rows (its job messages; its events are outbox rows
        too, one per status change), output rows, artifact rows of job."""
        return q("SELECT (SELECT count(*) FROM training_jobs WHERE id = :'id')"
                 " || ' ' || (SELECT count(*) FROM job_events WHERE job_id = :'id')"
                 " || ' ' || (SELECT count(*) FROM outbox WHERE job_id = :'id'"
                 "            AND exchange = 'trainq.jobs')"
                 " || ' ' || (SELECT count(*) FROM job_output WHERE job_id = :'id')"
                 " || ' ' || (SELECT count(*) FROM job_artifacts WHERE job_id = :'id')",
                 id=job).split()

    def test_old_finished_jobs_published_outbox_and_past_rate_windows_go_and_the_rest_stays(self):
        p = self.producer(TRAINQ_JOB_RETENTION_SECONDS=str(DAY))
        old = self.finished(p)
        old_failed = self.finished(p, "failed")
        held = self.finished(p, "cancelled")  # its outbox row is not published yet
        recent = self.finished(p)
        running = self.submit(p)
        set_status(running, "pending")
        set_status(running, "running")
        queued = self.submit(p)
        for j in (old, old_failed, held, recent):
            self.assertEqual(self.rows(j)[0:2], ["1", "4"], j)  # queued ... end
        self.assertNotEqual(self.rows(old)[3], "0")
        # Everything set back in one transaction, so a pass sees all of it or none.
        q("BEGIN;"
          " UPDATE training_jobs SET completed_at = now() - interval '2 days'"
          "  WHERE id IN (:'old', :'old_failed', :'held');"
          " UPDATE training_jobs SET completed_at = now() - interval '1 hour' WHERE id = :'recent';"
          " UPDATE training_jobs SET started_at = now() - interval '3 days',"
          "  created_at = now() - interval '3 days' WHERE id IN (:'running', :'queued');"
          " UPDATE outbox SET published_at = now() - interval '2 days'"
          "  WHERE job_id IN (:'old', :'old_failed', :'queued');"
          " UPDATE outbox SET published_at = now() - interval '2 hours' WHERE job_id = :'recent';"
          " UPDATE outbox SET published_at = now() - interval '10 minutes'"
          "  WHERE job_id = :'running';"
          " UPDATE outbox SET published_at = NULL, available_at = now() + interval '1 day',"
          "  created_at = now() - interval '2 days' WHERE job_id = :'held';"
          " INSERT INTO rate_limits (user_id, bucket, window_start, count) VALUES"
          "  (:'u', 'submit', date_trunc('minute', now()) - interval '10 minutes', 7),"
          "  (:'u', 'read', date_trunc('minute', now()) - interval '3 days', 1),"
          "  (:'u', 'read', date_trunc('minute', now()), 1)"
          "  ON CONFLICT DO NOTHING;"
          " COMMIT",
          old=old, old_failed=old_failed, held=held, recent=recent, running=running,
          queued=queued, u=self.user)

        h.wait_until(lambda: self.rows(old)[0] == "0" and self.rows(old_failed)[0] == "0",
                     timeout=30, interval=0.2, what="the old finished jobs pruned")
        h.wait_until(lambda: q("SELECT count(*) FROM outbox WHERE job_id IN (:'r', :'q')",
                               r=recent, q=queued) == "0",
                     timeout=30, interval=0.2, what="old published outbox rows pruned")
        # gone with their audit trail, outbox, output and artifact rows
        self.assertEqual(self.rows(old), ["0"] * 5)
        self.assertEqual(self.rows(old_failed), ["0"] * 5)
        # kept: finished too recently (its outbox row, published 2 h ago, went on its own)
        self.assertEqual(self.rows(recent), ["1", "4", "0", self.rows(recent)[3], "1"])
        self.assertNotEqual(self.rows(recent)[3], "0")
        # kept: finished long ago but its outbox row is unpublished; the row stays too
        self.assertEqual(self.rows(held)[0:3], ["1", "4", "1"])
        # kept: not finished, however old (the running job's outbox row is recent)
        self.assertEqual(self.rows(running)[0:3], ["1", "3", "1"])
        self.assertEqual(self.rows(queued)[0:3], ["1", "1", "0"])
        windows = q("SELECT string_agg(bucket || ':' || (date_trunc('minute', now())"
                    " - window_start <= interval '1 minute')::text, ',' ORDER BY bucket)"
                    " FROM rate_limits WHERE user_id = :'u'", u=self.user)
        self.assertNotIn(":false", windows)  # past windows gone ...
        self.assertIn("read:true", windows)  # ... the current one kept
        # and it says so (other suites' leftovers may be counted too)
        logged = p.events("retention.pruned")
        self.assertGreaterEqual(sum(e["jobs"] for e in logged), 2, logged)
        self.assertGreaterEqual(sum(e["outbox_rows"] for e in logged), 4, logged)
        self.assertGreaterEqual(sum(e["rate_limit_rows"] for e in logged), 2, logged)

    def test_a_deleted_jobs_audit_rows_go_after_the_job_retention(self):
        """DELETE keeps a job's audit rows (the trail, and what refuses a late message for
        its id); job retention prunes them that long after the delete. Before, nothing did:
        retention found jobs through their rows, and a deleted job has none."""
        p = self.producer(TRAINQ_JOB_RETENTION_SECONDS=str(DAY))
        old, recent = self.finished(p), self.finished(p)
        for j in (old, recent):
            r = p.c.request("DELETE", f"/api/training/jobs/{j}", token=self.token)
            self.assertEqual(r.status, 200, r)
            self.assertEqual(self.rows(j)[0:2], ["0", "4"], j)
        tomb = "SELECT count(*) FROM deleted_jobs WHERE job_id = :'id'"
        q("UPDATE deleted_jobs SET deleted_at = now() - interval '2 days' WHERE job_id = :'id'",
          id=old)
        h.wait_until(lambda: self.rows(old)[1] == "0", timeout=30, interval=0.2,
                     what="the deleted job's audit rows pruned")
        self.assertEqual(q(tomb, id=old), "0")
        self.assertEqual((self.rows(recent)[1], q(tomb, id=recent)), ("4", "1"))

    def test_two_producers_prune_one_backlog_together_without_a_failure(self):
        # 12 000 old published outbox rows (several batches) and 250 finished jobs (three
        # batches), pruned by two producers at once: each row goes once, none waits on the
        # other's locks long enough to fail, and what they log adds up.
        n_jobs = 250
        q("INSERT INTO outbox (job_id, routing_key, payload, created_at, published_at)"
          " SELECT gen_random_uuid(), 'lora', '{}', now() - interval '3 days',"
          "  now() - interval '3 days' FROM generate_series(1, 12000);"
          " SELECT count(tq_insert_job(json_build_object('schema', 'trainq.job.v1',"
          "  'job_id', gen_random_uuid(), 'user_id', :'u', 'dataset_id', :'ds'::uuid,"
          "  'name', 'old', 'type', 'lora', 'base_model', 'm', 'config', '{}'::json,"
          "  'trigger_words', '[]'::json)::text, 'http')) FROM generate_series(1, :n);"
          " UPDATE training_jobs SET status = 'cancelled', completed_at = now()"
          "  WHERE user_id = :'u' AND name = 'old';"
          " UPDATE training_jobs SET completed_at = now() - interval '2 days'"
          "  WHERE user_id = :'u' AND name = 'old'",
          u=self.user, ds=self.ds, n=str(n_jobs))
        self.assertEqual(q("SELECT count(*) FROM job_events e JOIN training_jobs j"
                           " ON j.id = e.job_id WHERE j.user_id = :'u'", u=self.user),
                         str(2 * n_jobs))
        a = self.producer(TRAINQ_JOB_RETENTION_SECONDS=str(DAY))
        b = self.producer(TRAINQ_JOB_RETENTION_SECONDS=str(DAY))
        h.wait_until(lambda: q("SELECT (SELECT count(*) FROM training_jobs WHERE user_id = :'u')"
                               " + (SELECT count(*) FROM outbox"
                               "    WHERE published_at < now() - interval '2 days')",
                               u=self.user) == "0",
                     timeout=60, interval=0.3, what="the backlog pruned")
        self.assertEqual(q("SELECT count(*) FROM job_events WHERE user_id = :'u'", u=self.user),
                         "0")
        time.sleep(1.5)  # a pass logs when it ends
        logged = a.events("retention.pruned") + b.events("retention.pruned")
        self.assertGreaterEqual(sum(e["jobs"] for e in logged), n_jobs, logged)
        self.assertGreaterEqual(sum(e["outbox_rows"] for e in logged), 12000, logged)
        self.assertEqual(a.events("retention.failed") + b.events("retention.failed"), [])

    def test_finished_webhook_deliveries_go_after_the_outbox_retention_pending_ones_stay(self):
        # Deliveries of one job's own URL (no endpoint): delivered, failed after attempts and
        # failed unsent (no attempt: counted from its event) two days ago go; a delivery of
        # ten minutes ago and a pending one however old (its next attempt a day away, so no
        # sender takes it) stay.
        self.addCleanup(q, "DELETE FROM webhook_deliveries WHERE user_id = :'u'", u=self.user)
        ids = q("INSERT INTO webhook_deliveries (user_id, job_id, target, url, event, sequence,"
                " event_at, state, due_at, attempts, last_attempt_at, delivered_at)"
                " SELECT :'u', gen_random_uuid(), 'job', 'http://127.0.0.1:9/h', 'job.queued', 1,"
                "  now() - v.ev * interval '1 hour', v.st, now() + interval '1 day', v.att,"
                "  now() - v.last * interval '1 hour',"
                "  CASE WHEN v.st = 'delivered' THEN now() - v.last * interval '1 hour' END"
                " FROM (VALUES (1, 'delivered', 48, 48, 1), (2, 'failed', 60, 48, 5),"
                "  (3, 'failed', 48, NULL, 0), (4, 'delivered', 1, 0.17, 1),"
                "  (5, 'pending', 72, 48, 3)) v(k, st, ev, last, att)"
                " ORDER BY v.k RETURNING id", u=self.user).split()
        self.assertEqual(len(ids), 5)
        p = self.producer()  # outbox retention 1 hour
        left = lambda: q("SELECT string_agg(id::text, ',' ORDER BY id) FROM webhook_deliveries"
                         " WHERE user_id = :'u'", u=self.user)
        h.wait_until(lambda: left() == ",".join(ids[3:]), timeout=30, interval=0.2,
                     what="the old finished deliveries pruned")
        time.sleep(1.5)  # a pass logs when it ends
        logged = p.events("retention.pruned")
        self.assertGreaterEqual(sum(e["webhook_rows"] for e in logged), 3, logged)
        self.assertEqual(left(), ",".join(ids[3:]))

    def test_finished_jobs_are_kept_forever_by_default(self):
        p = self.producer()
        old = self.finished(p)
        marker = self.submit(p)
        q("BEGIN;"
          " UPDATE training_jobs SET completed_at = now() - interval '3650 days' WHERE id = :'old';"
          " UPDATE outbox SET published_at = now() - interval '2 days' WHERE job_id = :'m';"
          " COMMIT", old=old, m=marker)
        # a pass ran: the marker's published outbox row went
        h.wait_until(lambda: q("SELECT count(*) FROM outbox WHERE job_id = :'m'", m=marker) == "0",
                     timeout=30, interval=0.2, what="a retention pass")
        kept = self.rows(old)
        self.assertEqual(kept[0:2], ["1", "4"])
        self.assertEqual(kept[4], "1")
        # and outside retention the audit trail is append-only as before
        r = h.psql("DELETE FROM job_events WHERE job_id = :'id'", check=False,
                   variables={"id": old})
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("append-only", r.stderr)
        self.assertEqual(self.rows(old)[1], "4")


if __name__ == "__main__":
    unittest.main()
