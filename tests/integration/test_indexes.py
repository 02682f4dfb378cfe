"""Every query the programs run is backed by an index (issue 11, item 4): in a database of its
own, filled with generated rows (200 000 jobs, one user with 50 000 of them, 800 000 audit
rows, outbox, output, artifacts, rate-limit and webhook rows) and ANALYZEd, each statement of
QUERIES below runs once inside a rolled-back transaction with auto_explain logging the plan
of it and of every statement nested in the functions and triggers it calls; the test fails
on any Seq Scan of a big table, naming the statement and the plan's query text.

QUERIES is the list of what the programs send, copied from their one SQL module each:
producer/pdb.c, consumer/cdb.c, shared/tq_relay.c (parameters written in as literals; the
programs send them as parameters of unnamed statements, planned with their values the same
way). The stored functions (db/procedures/) are called the way the programs call them, so
their statements and the triggers they fire are checked in the same run; a test below fails
when a tq_* function named in the programs' SQL is called by none of QUERIES.

Needs TRAINQ_DATABASE_URL (a server where `services.sh psql` is a superuser: auto_explain),
TRAINQ_SERVICES. TRAINQ_INDEX_TEST_JOBS sets the number of jobs (default 200 000).
"""

import json
import os
import re
import subprocess
import unittest
import uuid

import tqenv
from test_smoke import functions_called_by_the_programs, migrate

JOBS = int(os.environ.get("TRAINQ_INDEX_TEST_JOBS", "200000"))
USERS = 2000
BIG_USER_JOBS = min(50000, JOBS // 4)
BIG = {"training_jobs", "job_events", "outbox", "job_output", "job_artifacts", "rate_limits",
       "webhook_deliveries", "webhook_job_state", "job_webhooks", "webhook_endpoints",
       "webhook_user_secrets", "datasets"}

# Generated with the triggers off (session_replication_role = replica): the rows are what
# the programs would have left, written in seconds. Job i belongs to user u0 for
# i < BIG_USER_JOBS, else to u(i % USERS); 0.5 % of the jobs are queued (a seventh of those
# parked), 0.2 % active, the rest finished.
FILL = """
SET session_replication_role = replica;
INSERT INTO datasets (id, user_id, name, storage_path)
SELECT md5('ds' || u)::uuid, 'u' || u, 'd', 'ds/' || u FROM generate_series(0, {users} - 1) u;
INSERT INTO training_jobs (id, user_id, dataset_id, name, type, base_model, config, status,
    created_at, updated_at, started_at, completed_at, worker_id, fencing_token,
    lease_expires_at, parked_at, idempotency_key, request_hash, message, progress,
    progress_updated_at)
SELECT id, 'u' || uu, md5('ds' || uu)::uuid, 'job', 'lora', 'm', '{{}}', st, ts, ts,
       CASE WHEN st <> 'queued' THEN ts END,
       CASE WHEN st IN ('completed', 'failed', 'cancelled') THEN ts + interval '1 hour' END,
       CASE WHEN st IN ('pending', 'running') THEN 'w' || (i % 20) END, 1,
       CASE WHEN st IN ('pending', 'running') THEN now() + interval '1 hour' END,
       CASE WHEN st = 'queued' AND i % 7 = 0 THEN ts END,
       CASE WHEN i % 10 = 0 THEN 'k' || i END, md5('c' || i),
       json_build_object('schema', 'trainq.job.v1', 'job_id', id, 'user_id', 'u' || uu,
                         'dataset_id', md5('ds' || uu)::uuid, 'name', 'job', 'type', 'lora',
                         'base_model', 'm', 'config', '{{}}'::json,
                         'trigger_words', '[]'::json)::text,
       CASE WHEN st = 'running' THEN 0.5 END,
       CASE WHEN st = 'running' THEN now() END
  FROM (SELECT i, md5('job' || i)::uuid AS id,
               CASE WHEN i < {big_user} THEN 0 ELSE i % {users} END AS uu,
               now() - ({jobs} - i) * interval '1 second' AS ts,
               CASE WHEN i % 1000 < 5 THEN 'queued' WHEN i % 1000 = 5 THEN 'running'
                    WHEN i % 1000 = 6 THEN 'pending'
                    ELSE (ARRAY['completed', 'failed', 'cancelled'])[1 + i % 3] END AS st
          FROM generate_series(0, {jobs} - 1) i) g;
INSERT INTO job_events (job_id, user_id, from_status, to_status, fencing_token, at)
SELECT j.id, j.user_id, NULL, 'queued', 1, j.created_at + k * interval '1 ms'
  FROM training_jobs j, generate_series(1, 4) k;
INSERT INTO outbox (job_id, routing_key, payload, created_at, available_at, published_at)
SELECT id, 'lora', message, created_at, created_at,
       CASE WHEN status = 'queued' AND parked_at IS NULL THEN NULL
            ELSE created_at + interval '1 second' END
  FROM training_jobs ORDER BY created_at;
INSERT INTO job_output (job_id, seq, kind, body, bytes)
SELECT id, k, CASE WHEN k = 1 THEN 'progress' ELSE 'log' END, 'line', 4
  FROM training_jobs, generate_series(1, 2) k WHERE get_byte(decode(md5(id::text), 'hex'), 0) < 64;
INSERT INTO job_artifacts (job_id, name, size_bytes, sha256)
SELECT id, 'lora.safetensors', 1, repeat('a', 64) FROM training_jobs
 WHERE get_byte(decode(md5(id::text), 'hex'), 0) < 64;
INSERT INTO rate_limits (user_id, bucket, window_start, count)
SELECT 'u' || u, 'submit', date_trunc('minute', now()) - w * interval '1 minute', 1
  FROM generate_series(0, {users} - 1) u, generate_series(1, 10) w;
INSERT INTO webhook_endpoints (id, user_id, url, events, secret)
SELECT md5('ep' || u)::uuid, 'u' || u, 'https://hooks.example.com/' || u, '{{job.completed}}', 's'
  FROM generate_series(0, {users} - 1) u;
INSERT INTO webhook_user_secrets (user_id, secret)
SELECT 'u' || u, 's' FROM generate_series(0, {users} - 1) u;
INSERT INTO job_webhooks (job_id, url, events)
SELECT id, 'https://hooks.example.com/j', '{{job.completed}}' FROM training_jobs
 WHERE get_byte(decode(md5(id::text), 'hex'), 1) < 13;
INSERT INTO webhook_job_state (job_id, seq)
SELECT id, 1 FROM training_jobs WHERE get_byte(decode(md5(id::text), 'hex'), 0) < 64;
INSERT INTO webhook_deliveries (user_id, job_id, endpoint_id, target, url, event, sequence,
                                state, delivered_at)
SELECT j.user_id, j.id, e.id, e.id::text, e.url, 'job.completed', 1,
       CASE WHEN get_byte(decode(md5(j.id::text), 'hex'), 2) < 3 THEN 'pending'
            ELSE 'delivered' END, now()
  FROM training_jobs j JOIN webhook_endpoints e ON e.user_id = j.user_id
 WHERE get_byte(decode(md5(j.id::text), 'hex'), 3) < 128;
UPDATE webhook_deliveries SET delivered_at = NULL, due_at = now() - interval '1 second'
 WHERE state = 'pending';
INSERT INTO workers (worker_id, hostname, slots)
SELECT 'w' || w, 'h' || w, 2 FROM generate_series(0, 19) w;
RESET session_replication_role;
VACUUM ANALYZE;
"""

# The rows the statements name (picked after the fill; see pick()).
PICK = """
SELECT json_build_object(
  'done', (SELECT id FROM training_jobs WHERE user_id = 'u0' AND status = 'completed'
            ORDER BY created_at LIMIT 1 OFFSET 100),
  'queued', (SELECT id FROM training_jobs WHERE user_id = 'u0' AND status = 'queued'
              AND parked_at IS NULL LIMIT 1),
  'parked', (SELECT id FROM training_jobs WHERE status = 'queued' AND parked_at IS NOT NULL
              AND user_id = 'u0' LIMIT 1),
  'running', (SELECT id FROM training_jobs WHERE status = 'running' AND user_id = 'u0' LIMIT 1),
  'worker', (SELECT worker_id FROM training_jobs WHERE status = 'running' AND user_id = 'u0'
              LIMIT 1),
  'idem', (SELECT idempotency_key FROM training_jobs WHERE user_id = 'u0'
            AND idempotency_key IS NOT NULL LIMIT 1),
  'queued_msg', (SELECT message FROM training_jobs WHERE user_id = 'u0' AND status = 'queued'
                  AND parked_at IS NULL LIMIT 1),
  'page100', (SELECT (extract(epoch FROM created_at) * 1000000)::bigint || '_' || id
                FROM training_jobs WHERE user_id = 'u0'
               ORDER BY created_at DESC, id DESC LIMIT 1 OFFSET 1979),
  -- an ordinary user's endpoint: u0's holds a quarter of all deliveries, and deleting it
  -- rightly reads the table (the planner's choice for that value, not a missing index)
  'endpoint', (SELECT id FROM webhook_endpoints WHERE user_id = 'u7'),
  'delivery', (SELECT id FROM webhook_deliveries WHERE user_id = 'u0' LIMIT 1),
  'job_ids', (SELECT string_agg(id::text, ',') FROM training_jobs
               WHERE worker_id = 'w5' AND status IN ('pending', 'running')))
"""

JOB_JSON = """json_build_object('id', id, 'user_id', user_id, 'status', status,
  'queue_position', CASE WHEN j.status <> 'queued' THEN NULL WHEN j.parked_at IS NULL THEN
    1 + (SELECT count(*) FROM training_jobs q WHERE q.status = 'queued'
         AND q.parked_at IS NULL AND (q.created_at, q.id) < (j.created_at, j.id))
    ELSE 1 + (SELECT count(*) FROM training_jobs q WHERE q.status = 'queued'
         AND q.parked_at IS NULL)
       + (SELECT count(*) FROM training_jobs q WHERE q.user_id = j.user_id
         AND q.status = 'queued' AND q.parked_at IS NOT NULL
         AND (q.created_at, q.id) < (j.created_at, j.id)) END)::text"""


def message(job_id, user, dataset):
    return json.dumps({"schema": "trainq.job.v1", "job_id": job_id, "user_id": user,
                       "dataset_id": dataset, "name": "n", "type": "lora", "base_model": "m",
                       "config": {}, "trigger_words": []}, separators=(",", ":"))


def lit(v):
    """A SQL string literal."""
    return "NULL" if v is None else "'" + str(v).replace("'", "''") + "'"


def queries(k):
    """(source, name, SQL) of every statement the programs run, on the picked rows k."""
    u, u7, ds = "'u0'", "'u7'", lit(str(uuid.UUID(hex=k["ds0"])))
    ds7 = str(uuid.UUID(hex=k["ds7"]))
    done, queued, parked, running = (lit(k[x]) for x in ("done", "queued", "parked", "running"))
    worker = lit(k["worker"])
    new_job = str(uuid.uuid4())
    micros, after_id = k["page100"].split("_")
    ids = lit("{" + (k["job_ids"] or "") + "}")
    p, c, r = "producer/pdb.c", "consumer/cdb.c", "shared/tq_relay.c"
    return [
        (p, "rate limit hit",
         "WITH s AS (SELECT set_config('synchronous_commit', 'off', true)),"
         " w AS (INSERT INTO rate_limits (user_id, bucket, window_start, count)"
         "  VALUES ('u0', 'submit', date_trunc('minute', now()), 1)"
         "  ON CONFLICT (user_id, bucket, window_start)"
         "  DO UPDATE SET count = rate_limits.count + 1 RETURNING count, window_start)"
         " SELECT w.count, COALESCE((SELECT submit_per_min FROM user_limits"
         "  WHERE user_id = 'u0'), 10) FROM w, s"),
        (p, "submit (tq_submit, new job with a webhook)",
         f"SELECT * FROM tq_submit({u}, {lit(new_job)}, {ds}, 'lora',"
         f" {lit(message(new_job, 'u0', ds.strip(chr(39))))}, 'k-new', '{{}}',"
         " 'https://hooks.example.com/x', '[\"job.completed\"]', 'whsec_x')"),
        (p, "submit (tq_submit, idempotent replay)",
         f"SELECT * FROM tq_submit({u}, {lit(uuid.uuid4())}, {ds}, 'lora', '{{}}',"
         f" {lit(k['idem'])}, '{{}}', NULL, NULL, NULL)"),
        (p, "GET /jobs/{id} (finished)",
         f"SELECT {JOB_JSON} FROM training_jobs j WHERE id = {done} AND user_id = {u}"),
        (p, "GET /jobs/{id} (queued)",
         f"SELECT {JOB_JSON} FROM training_jobs j WHERE id = {queued} AND user_id = {u}"),
        (p, "GET /jobs/{id} (parked)",
         f"SELECT {JOB_JSON} FROM training_jobs j WHERE id = {parked} AND user_id = {u}"),
        (p, "job list, first page",
         f"SELECT {JOB_JSON}, id FROM training_jobs j WHERE user_id = {u}"
         " AND (NULL::text IS NULL OR status = NULL) AND (NULL::bigint IS NULL OR"
         " (created_at, id) < (timestamptz 'epoch', NULL::uuid))"
         " ORDER BY created_at DESC, id DESC LIMIT 20 + 1"),
        (p, "job list, 100th page",
         f"SELECT {JOB_JSON}, id FROM training_jobs j WHERE user_id = {u}"
         " AND (NULL::text IS NULL OR status = NULL) AND"
         f" ({micros}::bigint IS NULL OR (created_at, id) <"
         f" (timestamptz 'epoch' + {micros}::bigint * interval '1 microsecond',"
         f" {lit(after_id)}::uuid)) ORDER BY created_at DESC, id DESC LIMIT 20 + 1"),
        (p, "job list, status filter",
         f"SELECT {JOB_JSON}, id FROM training_jobs j WHERE user_id = {u}"
         " AND ('failed'::text IS NULL OR status = 'failed') AND (NULL::bigint IS NULL OR"
         " (created_at, id) < (timestamptz 'epoch', NULL::uuid))"
         " ORDER BY created_at DESC, id DESC LIMIT 20 + 1"),
        (p, "cancel a queued job (lock, update, drop unpublished)",
         f"SELECT tq_lock_user({u});"
         f" SELECT status FROM training_jobs WHERE id = {queued} AND user_id = {u} FOR UPDATE;"
         " SELECT set_config('trainq.reason', 'cancelled by user', true);"
         " UPDATE training_jobs SET status = 'cancelled', completed_at = now(), parked_at = NULL,"
         " cancel_requested_at = COALESCE(cancel_requested_at, now()), updated_at = now()"
         f" WHERE id = {queued};"
         " DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE job_id ="
         f" {queued} AND published_at IS NULL FOR UPDATE SKIP LOCKED)"),
        (p, "cancel a running job",
         "UPDATE training_jobs SET cancel_requested_at = COALESCE(cancel_requested_at, now()),"
         f" updated_at = now() WHERE id = {running}"),
        (p, "job events",
         "SELECT COALESCE(json_agg(json_build_object('id', id, 'to_status', to_status)"
         " ORDER BY id), '[]')::text, count(*)"
         f" FROM job_events WHERE job_id = {done} AND user_id = {u}"),
        (p, "DELETE /jobs/{id}", f"DELETE FROM training_jobs WHERE id = {done}"),
        (p, "log tail",
         "SELECT (SELECT COALESCE(json_agg(body ORDER BY seq DESC), '[]') FROM ("
         "  SELECT seq, body, sum(1) OVER (ORDER BY seq DESC) AS lines FROM job_output"
         "   WHERE job_id = j.id AND kind = 'log') o WHERE lines < 100)::text"
         f" FROM training_jobs j WHERE id = {done} AND user_id = {u}"),
        (p, "artifact list",
         "SELECT (SELECT COALESCE(json_agg(name ORDER BY name), '[]') FROM job_artifacts"
         f" WHERE job_id = j.id)::text FROM training_jobs j WHERE id = {done} AND user_id = {u}"),
        (p, "artifact find",
         "SELECT (SELECT size_bytes FROM job_artifacts WHERE job_id = j.id AND name = 'x')"
         f" FROM training_jobs j WHERE id = {done} AND user_id = {u}"),
        (p, "job stream",
         f"SELECT (SELECT json_agg(e) FROM (SELECT id FROM job_events WHERE job_id = {running}"
         f" AND user_id = {u} AND id > 0 ORDER BY id LIMIT 100) e),"
         f" (SELECT json_agg(o) FROM (SELECT seq FROM job_output WHERE job_id = {running}"
         " AND seq > 0 ORDER BY seq LIMIT 64) o),"
         f" EXISTS (SELECT 1 FROM job_output WHERE job_id = {running} AND seq > 5),"
         f" (SELECT status FROM training_jobs WHERE id = {running})"),
        (p, "user stream",
         f"SELECT (SELECT json_agg(e) FROM (SELECT id FROM job_events WHERE user_id = {u}"
         " AND id > (SELECT max(id) - 10 FROM job_events) ORDER BY id LIMIT 100) e),"
         f" (SELECT json_agg(id ORDER BY progress_updated_at) FROM training_jobs"
         f"  WHERE user_id = {u} AND status IN ('pending', 'running')"
         "  AND progress_updated_at > timestamptz 'epoch')"),
        (p, "stream start",
         f"SELECT (SELECT COALESCE(max(id), 0) FROM job_events WHERE user_id = {u}),"
         f" EXISTS (SELECT 1 FROM job_events WHERE job_id = {running} AND user_id = {u})"),
        (p, "job's user", f"SELECT user_id FROM training_jobs WHERE id = {done}"),
        (p, "retention (tq_retention_prune)",
         "SELECT * FROM tq_retention_prune(3600, 86400, 2000, 100)"),
        (p, "webhook take (tq_webhook_take: candidate, cap, lease)",
         "SELECT tq_webhook_take(2, 30)"),
        (p, "webhook take (what the request needs)",
         "SELECT d.id, (SELECT s.secret FROM webhook_endpoints s WHERE s.id = d.endpoint_id),"
         " (SELECT s.secret FROM webhook_user_secrets s WHERE s.user_id = d.user_id),"
         f" (SELECT {JOB_JSON} FROM training_jobs j WHERE j.id = d.job_id),"
         " (SELECT s.previous_secret FROM webhook_endpoints s WHERE s.id = d.endpoint_id"
         "  AND s.previous_secret_until > now())"
         f" FROM webhook_deliveries d WHERE d.id = {k['delivery']} AND d.state = 'pending'"),
        (p, "webhook record",
         "UPDATE webhook_deliveries SET state = 'delivered', leased_until = NULL"
         f" WHERE id = {k['delivery']} AND state = 'pending';"
         " UPDATE webhook_endpoints e SET failures_in_row = e.failures_in_row + 1"
         f" FROM webhook_deliveries d WHERE d.id = {k['delivery']} AND e.id = d.endpoint_id"
         " AND ('retry' <> 'delivered' OR e.failures_in_row <> 0);"
         " UPDATE webhook_endpoints e SET disabled_at = now() FROM webhook_deliveries d"
         f" WHERE d.id = {k['delivery']} AND e.id = d.endpoint_id AND e.disabled_at IS NULL;"
         " UPDATE webhook_deliveries x SET state = 'failed' FROM webhook_deliveries d"
         f" WHERE d.id = {k['delivery']} AND x.state = 'pending' AND x.target = d.target"
         " AND (d.endpoint_id IS NOT NULL OR x.job_id = d.job_id)"),
        (p, "webhook endpoints: list, deliveries, rotate, delete",
         f"SELECT count(*) FROM webhook_endpoints WHERE user_id = {u7};"
         " SELECT (SELECT count(*) FROM (SELECT * FROM webhook_deliveries"
         "  WHERE endpoint_id = e.id ORDER BY id DESC LIMIT 20) d)"
         f" FROM webhook_endpoints e WHERE e.id = {lit(k['endpoint'])}::uuid AND e.user_id = {u7};"
         f" UPDATE webhook_endpoints SET secret = 'x', previous_secret = secret,"
         " previous_secret_until = now() + make_interval(secs => 86400)"
         f" WHERE id = {lit(k['endpoint'])}::uuid"
         f" AND user_id = {u7};"
         f" DELETE FROM webhook_endpoints WHERE id = {lit(k['endpoint'])}::uuid"
         f" AND user_id = {u7}"),
        (p, "webhook default secret",
         "WITH i AS (INSERT INTO webhook_user_secrets (user_id, secret) VALUES ('u0', 'x')"
         " ON CONFLICT (user_id) DO NOTHING RETURNING secret)"
         " SELECT COALESCE((SELECT secret FROM i),"
         " (SELECT secret FROM webhook_user_secrets WHERE user_id = 'u0'))"),
        (r, "relay claim",
         "SELECT id, job_id::text, routing_key, payload, exchange,"
         " COALESCE(message_id, job_id::text), correlation_id FROM outbox"
         " WHERE published_at IS NULL AND available_at <= now()"
         " ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED"),
        (r, "relay mark published / failed",
         "UPDATE outbox SET published_at = clock_timestamp() WHERE id = ANY('{1,2,3}'::bigint[]);"
         " UPDATE outbox SET attempts = attempts + 1, last_error = 'x',"
         " available_at = now() + interval '1 second' WHERE id = 4"),
        (r, "relay backlog",
         "SELECT count(*), (SELECT min(available_at) FROM outbox WHERE published_at IS NULL"
         " AND available_at <= clock_timestamp()) FROM outbox WHERE published_at IS NULL"),
        (c, "claim (tq_claim, a queued job)",
         f"SELECT tq_lock_user(user_id) FROM training_jobs WHERE id = {queued};"
         f" SELECT * FROM tq_claim({lit(k['queued_msg'])}, 'w-test', 30, 4096)"),
        (c, "claim (tq_claim, a job published straight to AMQP, with reply_to)",
         f"SELECT * FROM tq_claim({lit(message(str(uuid.uuid4()), 'u7', ds7))},"
         " 'w-test', 30, 4096, 'replies', 'corr')"),
        (c, "dead-letter event (tq_event_dead_letter)",
         f"SELECT tq_event_dead_letter({lit(str(uuid.uuid4()))}, 'lora',"
         " 'invalid message: base_model is required', 'replies', 'corr')"),
        (c, "running",
         "WITH r AS (SELECT set_config('trainq.reason', 'started', true))"
         " UPDATE training_jobs SET status = 'running', container_id = 'c', started_at = now(),"
         f" progress = 0 FROM r WHERE id = {running} AND fencing_token = 1 AND status = 'pending'"),
        (c, "finish and release (tq_release_parked), artifacts",
         "UPDATE training_jobs SET status = 'completed', exit_code = 0, completed_at = now(),"
         f" lease_expires_at = NULL, progress = 1 WHERE id = {running} AND fencing_token = 1"
         " AND status IN ('pending', 'running') RETURNING user_id;"
         f" SELECT tq_release_parked({u});"
         " INSERT INTO job_artifacts (job_id, name, size_bytes, sha256)"
         f" SELECT {running}, name, size_bytes, sha256 FROM json_to_recordset("
         "'[{\"name\":\"a\",\"size_bytes\":1,\"sha256\":\"" + "a" * 64 + "\"}]'::json)"
         " AS a(name text, size_bytes bigint, sha256 text) ON CONFLICT (job_id, name)"
         " DO UPDATE SET size_bytes = excluded.size_bytes"),
        (c, "output (tq_output_progress, tq_output_log)",
         f"SELECT tq_output_progress({running}, 1, 5, 10, 0.5, 3, 100);"
         f" SELECT tq_output_log({running}, 1, 'a line', 1048576)"),
        (c, "give back (tq_give_back)", f"SELECT tq_give_back({running}, 1, 'host', 3)"),
        (c, "retry (tq_recover_job)",
         f"SELECT 1 FROM training_jobs WHERE id = {running} AND fencing_token = 1"
         " AND status IN ('pending', 'running') FOR UPDATE;"
         f" SELECT tq_recover_job({running}, 'lost', 3, false)"),
        (c, "heartbeat, leases, worker's jobs",
         "INSERT INTO workers (worker_id, hostname, slots) VALUES ('w5', 'h', 2)"
         " ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = now(), stopped_at = NULL;"
         " UPDATE training_jobs SET lease_expires_at = now() + interval '30 s'"
         f" WHERE worker_id = 'w5' AND status IN ('pending', 'running') AND id = ANY({ids}::uuid[])"
         " RETURNING id::text, fencing_token, cancel_requested_at IS NOT NULL;"
         " UPDATE training_jobs SET lease_expires_at = GREATEST(lease_expires_at, now())"
         " WHERE worker_id = 'w5' AND status IN ('pending', 'running')"
         f" AND id = ANY({ids}::uuid[]);"
         " SELECT id::text FROM training_jobs WHERE worker_id = 'w5'"
         " AND status IN ('pending', 'running');"
         " UPDATE workers SET stopped_at = now() WHERE worker_id = 'w5'"),
        (c, "reaper (tq_reap)", "SELECT count(*) FROM tq_reap(3)"),
        (c, "sweeper (tq_sweep)", "SELECT tq_sweep(30, 0)"),
    ]


def superuser_psql(db, sql, timeout=600):
    """psql as postgres on db (auto_explain needs LOAD); the completed process."""
    return subprocess.run(["bash", tqenv.SERVICES, "psql", "-d", db, "-q", "-A", "-t",
                           "-v", "ON_ERROR_STOP=1"], input=sql, capture_output=True, text=True,
                          timeout=timeout)


def seq_scans(plan, out):
    if plan.get("Node Type") == "Seq Scan" and plan.get("Relation Name") in BIG:
        out.append(plan["Relation Name"])
    for sub in plan.get("Plans", []):
        seq_scans(sub, out)
    return out


class IndexesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.db = "tq_indexes_" + uuid.uuid4().hex[:12]
        tqenv.psql(f"CREATE DATABASE {cls.db} OWNER trainq", superuser=True)
        base, _, _ = tqenv.DATABASE_URL.rpartition("/")
        migrate(f"{base}/{cls.db}")
        fill = FILL.format(users=USERS, jobs=JOBS, big_user=BIG_USER_JOBS)
        r = superuser_psql(cls.db, fill, timeout=900)
        if r.returncode != 0:
            raise AssertionError(f"fill failed: {r.stderr[-2000:]}")
        r = superuser_psql(cls.db, PICK)
        if r.returncode != 0:
            raise AssertionError(f"pick failed: {r.stderr[-2000:]}")
        cls.k = json.loads(r.stdout)
        cls.k["ds0"] = superuser_psql(cls.db, "SELECT md5('ds0')").stdout.strip()
        cls.k["ds7"] = superuser_psql(cls.db, "SELECT md5('ds7')").stdout.strip()

    @classmethod
    def tearDownClass(cls):
        tqenv.psql(f"DROP DATABASE IF EXISTS {cls.db} WITH (FORCE)", superuser=True)

    def plans(self, statements):
        """{name: [(query text, plan)]} of every statement run (nested ones included), each
        entry of statements in its own rolled-back transaction."""
        script = ["LOAD 'auto_explain';", "SET auto_explain.log_min_duration = 0;",
                  "SET auto_explain.log_nested_statements = on;",
                  "SET auto_explain.log_format = json;", "SET auto_explain.log_level = notice;",
                  "SET client_min_messages = notice;"]
        for i, (_, _, sql) in enumerate(statements):
            script += [f"DO $$ BEGIN RAISE NOTICE '@@{i}'; END $$;", "BEGIN;", sql + ";",
                       "ROLLBACK;"]
        r = superuser_psql(self.db, "\n".join(script))
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        out, cur = {}, None
        for msg in re.split(r"^(?:NOTICE|LOG):  ", r.stderr, flags=re.M):
            m = re.match(r"@@(\d+)", msg)
            if m:
                cur = int(m.group(1))
                continue
            m = re.match(r"duration: [0-9.]+ ms  plan:\n(.*)", msg, re.S)
            if m and cur is not None:
                doc = json.loads(m.group(1))
                out.setdefault(cur, []).append((doc.get("Query Text", ""), doc["Plan"]))
        return out

    def test_no_statement_of_the_programs_scans_a_big_table(self):
        stmts = queries(self.k)
        plans = self.plans(stmts)
        bad = []
        for i, (src, name, _) in enumerate(stmts):
            self.assertIn(i, plans, f"{src}: {name}: no plan logged")
            for text, plan in plans[i]:
                for rel in seq_scans(plan, []):
                    bad.append(f"{src}: {name}: Seq Scan on {rel} in: "
                               f"{' '.join(text.split())[:300]}")
        self.assertEqual(bad, [], "\n" + "\n".join(bad))

    def test_every_function_the_programs_call_is_in_the_list(self):
        listed = " ".join(sql for _, _, sql in queries(self.k))
        missing = sorted(f for f in functions_called_by_the_programs()
                         if not re.search(rf"\b{f}\s*\(", listed))
        self.assertEqual(missing, [], "add a statement calling these to QUERIES")


if __name__ == "__main__":
    unittest.main()
