"""Every query the programs run is backed by an index (issue 11, item 4): in a database of its
own, filled with generated rows (200 000 jobs over 46 days, one user with 50 000 of them,
11 000 queued over 2 000 users, 800 000 audit rows, a usage row per attempt, 100 000 dead
letters, outbox, output, artifacts, rate-limit, webhook and worker rows) and ANALYZEd, each statement of
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
       "webhook_user_secrets", "datasets", "job_usage", "dead_letters"}

# Generated with the triggers off (session_replication_role = replica): the rows are what
# the programs would have left, written in seconds. Job i belongs to user u0 for
# i < BIG_USER_JOBS, else to u(i % USERS); one job every 20 s (200 000 jobs: 46 days, so the
# admin's last day and last hour are the small slices they are in production). The status
# comes from a hash of i (not from i % 1000, which would tie it to the user): 5.5 % of the
# jobs are queued (11 000 over all 2 000 users; a seventh of them parked, a tenth of them
# high and a tenth low priority, some held back by not_before), 0.2 % active, the rest
# finished. Every started attempt has its job_usage row; dead letters over 30 days.
FILL = """
SET session_replication_role = replica;
INSERT INTO datasets (id, user_id, name, storage_path)
SELECT md5('ds' || u)::uuid, 'u' || u, 'd', 'ds/' || u FROM generate_series(0, {users} - 1) u;
INSERT INTO user_limits (user_id, max_active, max_priority, gpu_seconds_per_day)
SELECT 'u' || u, 2, CASE WHEN u % 3 = 0 THEN 'high' END,
       CASE WHEN u % 5 = 0 THEN 36000 END
  FROM generate_series(0, {users} - 1, 10) u;
INSERT INTO training_jobs (id, user_id, dataset_id, name, type, base_model, config, status,
    created_at, updated_at, started_at, completed_at, worker_id, fencing_token,
    lease_expires_at, parked_at, idempotency_key, request_hash, message, progress,
    progress_updated_at, priority, gpus, not_before, attempts, failure_class,
    failure_message, source)
SELECT id, 'u' || uu, md5('ds' || uu)::uuid, 'job', 'lora', 'm', '{{}}', st, ts, ts,
       CASE WHEN st <> 'queued' THEN ts + interval '5 seconds' END,
       CASE WHEN st IN ('completed', 'failed', 'cancelled') THEN ts + interval '1 hour' END,
       CASE WHEN st IN ('pending', 'running') THEN 'w' || (i % 200) END, 1,
       CASE WHEN st IN ('pending', 'running') THEN now() + interval '1 hour' END,
       CASE WHEN st = 'queued' AND i % 7 = 0 THEN ts END,
       CASE WHEN i % 10 = 0 THEN 'k' || i END, md5('c' || i),
       json_build_object('schema', 'trainq.job.v1', 'job_id', id, 'user_id', 'u' || uu,
                         'dataset_id', md5('ds' || uu)::uuid, 'name', 'job', 'type', 'lora',
                         'base_model', 'm', 'config', '{{}}'::json,
                         'trigger_words', '[]'::json)::text,
       CASE WHEN st = 'running' THEN 0.5 END,
       CASE WHEN st = 'running' THEN now() END,
       CASE WHEN st <> 'queued' THEN 1 WHEN i % 10 = 1 THEN 2 WHEN i % 10 = 2 THEN 0 ELSE 1 END,
       CASE WHEN st IN ('pending', 'running') THEN 1 ELSE 0 END,
       CASE WHEN st = 'queued' AND i % 13 = 0 THEN now() + interval '1 minute' END,
       CASE WHEN st = 'queued' AND i % 5 = 0 THEN 1 WHEN st = 'queued' THEN 0 ELSE 1 END,
       CASE WHEN st = 'failed' THEN (ARRAY['oom', 'trainer_error', 'host_lost'])[1 + i % 3]
            WHEN st = 'cancelled' THEN 'cancelled'
            WHEN st = 'queued' AND i % 5 = 0 THEN 'host_lost' END,
       CASE WHEN st IN ('failed', 'cancelled') THEN 'why' END,
       CASE WHEN i % 4 = 0 THEN 'amqp' ELSE 'http' END
  FROM (SELECT i, md5('job' || i)::uuid AS id,
               CASE WHEN i < {big_user} THEN 0 ELSE i % {users} END AS uu,
               now() - ({jobs} - i) * interval '20 seconds' AS ts,
               CASE WHEN h < 55 THEN 'queued' WHEN h = 55 THEN 'running'
                    WHEN h = 56 THEN 'pending'
                    ELSE (ARRAY['completed', 'failed', 'cancelled'])[1 + h % 3] END AS st
          FROM (SELECT i, ((hashint4(i) % 1000) + 1000) % 1000 AS h
                  FROM generate_series(0, {jobs} - 1) i) x) g;
INSERT INTO job_events (job_id, user_id, from_status, to_status, fencing_token, at,
                        failure_class)
SELECT j.id, j.user_id, NULL,
       CASE WHEN j.status = 'queued' OR k = 1 THEN 'queued' WHEN k = 2 THEN 'pending'
            WHEN k = 3 THEN 'running' ELSE j.status END, 1,
       CASE WHEN k = 4 AND j.completed_at IS NOT NULL THEN j.completed_at
            ELSE j.created_at + k * interval '1 ms' END,
       CASE WHEN k = 4 THEN j.failure_class END
  FROM training_jobs j, generate_series(1, 4) k;
INSERT INTO job_usage (job_id, user_id, worker_id, attempt, gpus, started_at, ended_at,
                       wall_seconds, gpu_seconds, outcome)
SELECT id, user_id, 'w' || (get_byte(decode(md5(id::text), 'hex'), 4) % 200), 1, 1,
       COALESCE(started_at, created_at), COALESCE(completed_at, created_at + interval '1 hour'),
       3600, 3600, CASE WHEN status = 'queued' THEN 'queued' ELSE status END
  FROM training_jobs
 WHERE status IN ('completed', 'failed', 'cancelled') OR (status = 'queued' AND attempts > 0)
 ORDER BY 7;
INSERT INTO outbox (job_id, routing_key, payload, created_at, available_at, published_at)
SELECT id, 'lora', message, created_at, created_at,
       CASE WHEN status = 'queued' AND parked_at IS NULL AND i % 50 = 0 THEN NULL
            ELSE created_at + interval '1 second' END
  FROM (SELECT *, row_number() OVER (ORDER BY created_at) AS i FROM training_jobs) t
 ORDER BY created_at;
INSERT INTO job_output (job_id, seq, kind, body, bytes)
SELECT id, k, CASE WHEN k = 1 THEN 'progress' ELSE 'log' END,
       CASE WHEN k = 1 THEN '{{"step":1}}' ELSE 'line' END, 4
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
-- a few requests in flight, as the senders' caps read them
UPDATE webhook_deliveries SET leased_until = now() + interval '30 seconds'
 WHERE id IN (SELECT id FROM webhook_deliveries WHERE state = 'pending' ORDER BY id LIMIT 8);
INSERT INTO dead_letters (message_id, routing_key, reason, worker_id, body, created_at,
                          republished_at)
SELECT CASE WHEN d % 4 = 0 THEN 'not-a-job-' || d ELSE md5('job' || (d * 7) % {jobs})::uuid::text END,
       'lora', 'invalid message: base_model: is required', 'w' || (d % 200), '{{"x":1}}',
       now() - (100000 - d) * interval '25 seconds',
       CASE WHEN d % 9 = 0 THEN now() - (100000 - d) * interval '25 seconds' END
  FROM generate_series(0, 99999) d;
INSERT INTO workers (worker_id, hostname, slots, busy, gpus, healthy, draining, heartbeat_at,
                     stopped_at)
SELECT 'w' || w, 'h' || w, 2, w % 3, '0,1', w % 17 <> 0, w % 23 = 0,
       now() - CASE WHEN w < 150 THEN interval '2 seconds' ELSE interval '3 days' END,
       CASE WHEN w >= 150 THEN now() - interval '3 days' END
  FROM generate_series(0, 199) w;
RESET session_replication_role;
-- the usage scores, as the job_usage triggers (off above) would have kept them
SELECT tq_usage_scores_recompute(NULL);
VACUUM ANALYZE;
"""

# The rows the statements name (picked after the fill; see pick()).
PICK = """
SELECT json_build_object(
  'done', (SELECT id FROM training_jobs WHERE user_id = 'u0' AND status = 'completed'
            ORDER BY created_at LIMIT 1 OFFSET 100),
  'failed', (SELECT id FROM training_jobs WHERE user_id = 'u7' AND status = 'failed' LIMIT 1),
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
  'dead', (SELECT d.id FROM dead_letters d JOIN training_jobs j ON j.id::text = d.message_id
            WHERE j.status = 'queued' AND d.republished_at IS NULL LIMIT 1),
  'job_ids', (SELECT string_agg(id::text, ',') FROM training_jobs
               WHERE worker_id = 'w5' AND status IN ('pending', 'running')))
"""

# producer/pdb.c's JOB_JSON_POS (the row aliased j, {pos} its queue position) and the two
# positions it is given: QUEUE_POSITION (one job's) and PAGE_POSITION (a page's, from CTE pos,
# PAGE_POSITIONS).
JOB_JSON_POS = """json_build_object('id', id, 'user_id', user_id, 'dataset_id', dataset_id,
  'name', name, 'type', type, 'base_model', base_model, 'config', config,
  'trigger_words', to_json(trigger_words), 'status', status,
  'container_id', container_id, 'error_message', error_message,
  'created_at', created_at, 'updated_at', updated_at, 'started_at', started_at,
  'completed_at', completed_at, 'attempts', attempts, 'worker_id', worker_id,
  'progress', progress, 'exit_code', exit_code,
  'failure_class', failure_class, 'failure_message', failure_message,
  'cancel_requested_at', cancel_requested_at, 'current_step', current_step,
  'total_steps', total_steps, 'loss', loss, 'eta_seconds', eta_seconds,
  'progress_updated_at', progress_updated_at,
  'queue_position', {pos},
  'waiting_reason', CASE WHEN status = 'queued' THEN tq_waiting_reason(user_id) END,
  'priority', tq_priority_name(priority))::text"""
JOB_JSON = JOB_JSON_POS.format(pos="CASE WHEN j.status = 'queued' THEN (SELECT p.queue_position"
                               " FROM tq_queue_positions(ARRAY[j.id]) p) END")
PAGE_JSON = JOB_JSON_POS.format(pos="(SELECT p.queue_position FROM pos p WHERE p.id = j.id)")
PAGE_POSITIONS = (" pos AS MATERIALIZED (SELECT * FROM tq_queue_positions("
                  " ARRAY(SELECT id FROM page WHERE status = 'queued')))")

# producer/pdb.c's STREAM_EVENTS_SQL
def stream_events(where):
    return ("(SELECT COALESCE(json_agg(e ORDER BY e.id), '[]') FROM (SELECT id, job_id,"
            " to_status AS status, from_status, reason, at FROM job_events WHERE " + where +
            " ORDER BY id LIMIT 100) e)::text")


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
    failed = lit(k["failed"])
    new_job = str(uuid.uuid4())
    micros, after_id = k["page100"].split("_")
    ids = lit("{" + (k["job_ids"] or "") + "}")
    dl = k["delivery"]
    ep = lit(k["endpoint"])
    p, c, r = "producer/pdb.c", "consumer/cdb.c", "shared/tq_relay.c"
    batch = [message(str(uuid.uuid4()), f"u{n}", str(uuid.UUID(hex=k["ds7"])) if n == 7 else
                     str(uuid.UUID(hex=k["ds_many"][str(n)]))) for n in (7, 11, 12, 13)]
    batch += [k["queued_msg"], message(k["done"], "u0", ds.strip("'"))]
    replies = [["replies", "corr"], None, None, None, None, None]
    # producer/pdb.c's job list (list_fn) with $2 status, $3 micros, $4 id, $5 limit
    def job_list(status, micros, after):
        return (f"WITH page AS MATERIALIZED (SELECT * FROM training_jobs WHERE user_id = {u}"
                f" AND ({status}::text IS NULL OR status = {status})"
                f" AND ({micros}::bigint IS NULL OR (created_at, id) <"
                f" (timestamptz 'epoch' + {micros}::bigint * interval '1 microsecond',"
                f" {after}::uuid)) ORDER BY created_at DESC, id DESC LIMIT 20::int + 1),"
                f"{PAGE_POSITIONS} SELECT {PAGE_JSON},"
                " (extract(epoch FROM created_at) * 1000000)::bigint::text, id::text"
                " FROM page j ORDER BY created_at DESC, id DESC")
    def lock_job(job):
        return (f"SELECT tq_lock_user({u});"
                f" SELECT status FROM training_jobs WHERE id = {job}::uuid AND user_id = {u}"
                " FOR UPDATE")
    def drop_unpublished(job):
        return ("DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE job_id ="
                f" {job}::uuid AND exchange = 'trainq.jobs' AND published_at IS NULL"
                " FOR UPDATE SKIP LOCKED)")
    def admin_jobs(status):
        return ("WITH page AS MATERIALIZED (SELECT * FROM training_jobs"
                f" WHERE ({status}::text IS NULL OR status = {status})"
                f" ORDER BY created_at DESC, id DESC LIMIT 50::int),{PAGE_POSITIONS}"
                f" SELECT COALESCE(json_agg({PAGE_JSON}::json"
                " ORDER BY j.created_at DESC, j.id DESC), '[]')::text FROM page j")
    lock_job_user = "SELECT tq_lock_user(user_id) FROM training_jobs WHERE id = {}"
    return [
        (p, "rate limit hit",
         "WITH s AS (SELECT set_config('synchronous_commit', 'off', true)),"
         " w AS (INSERT INTO rate_limits (user_id, bucket, window_start, count)"
         "  VALUES ('u0', 'submit', date_trunc('minute', now()), 1)"
         "  ON CONFLICT (user_id, bucket, window_start)"
         "  DO UPDATE SET count = rate_limits.count + 1 RETURNING count, window_start)"
         " SELECT w.count, COALESCE(l.submit_per_min, 10::int),"
         " GREATEST(1, ceil(extract(epoch FROM"
         "  (w.window_start + interval '1 minute' - now()))))::int,"
         " CASE WHEN 'submit' = 'submit' THEN COALESCE(l.max_priority, 'normal') ELSE '' END"
         " FROM w CROSS JOIN s"
         " LEFT JOIN user_limits l ON l.user_id = 'u0' AND 'submit' = 'submit'"),
        (p, "submit (tq_submit, new job with a webhook)",
         f"SELECT outcome, submitted_id, max_priority, deferred_notify FROM tq_submit({u}, {lit(new_job)}::uuid,"
         f" {ds}::uuid, 'lora', {lit(message(new_job, 'u0', ds.strip(chr(39))))}, 'k-new', '{{}}',"
         " 'https://hooks.example.com/x', '[\"job.completed\"]'::jsonb, 'whsec_x', NULL,"
         " 'normal')"),
        (p, "submit (tq_submit, high priority over max_priority)",
         f"SELECT outcome, submitted_id, max_priority, deferred_notify FROM tq_submit('u1',"
         f" {lit(uuid.uuid4())}::uuid, {lit(str(uuid.UUID(hex=k['ds_many']['1'])))}::uuid,"
         " 'lora', '{}', NULL, '{}', NULL, NULL::jsonb, NULL, 'high')"),
        (p, "submit (tq_submit, idempotent replay)",
         f"SELECT outcome, submitted_id, max_priority, deferred_notify FROM tq_submit({u},"
         f" {lit(uuid.uuid4())}::uuid, {ds}::uuid, 'lora', '{{}}',"
         f" {lit(k['idem'])}, '{{}}', NULL, NULL::jsonb, NULL, NULL)"),
        (p, "wake-ups after submits (tq_wake)",
         "SELECT tq_wake('[\"trainq_outbox\", \"trainq_job_event\"]'::jsonb,"
         " '[\"u0\", \"u1\"]'::jsonb)"),
        (p, "GET /jobs/{id} (finished)",
         f"SELECT {JOB_JSON} FROM training_jobs j WHERE id = {done}::uuid AND user_id = {u}"),
        (p, "GET /jobs/{id} (queued)",
         f"SELECT {JOB_JSON} FROM training_jobs j WHERE id = {queued}::uuid AND user_id = {u}"),
        (p, "GET /jobs/{id} (parked)",
         f"SELECT {JOB_JSON} FROM training_jobs j WHERE id = {parked}::uuid AND user_id = {u}"),
        (p, "job list, first page", job_list("NULL", "NULL", "NULL")),
        (p, "job list, 100th page", job_list("NULL", micros, lit(after_id))),
        (p, "job list, status filter", job_list("'failed'", "NULL", "NULL")),
        (p, "job list, queued", job_list("'queued'", "NULL", "NULL")),
        (p, "cancel a queued job (lock, update, drop unpublished)",
         lock_job(queued) + ";"
         " SELECT set_config('trainq.reason', 'cancelled by user', true);"
         " UPDATE training_jobs SET status = 'cancelled', completed_at = now(), parked_at = NULL,"
         " cancel_requested_at = COALESCE(cancel_requested_at, now()),"
         " cancel_requested_by = COALESCE(cancel_requested_by, 'user'), updated_at = now()"
         f" WHERE id = {queued}::uuid; " + drop_unpublished(queued)),
        (p, "cancel a running job",
         lock_job(running) + ";"
         " UPDATE training_jobs SET cancel_requested_at = COALESCE(cancel_requested_at, now()),"
         " cancel_requested_by = COALESCE(cancel_requested_by, 'operator'),"
         f" updated_at = now() WHERE id = {running}::uuid"),
        (p, "job events",
         "SELECT COALESCE(json_agg(json_build_object('id', id, 'from_status',"
         " from_status, 'to_status', to_status, 'reason', reason, 'worker_id',"
         " worker_id, 'failure_class', failure_class, 'at', at) ORDER BY id),"
         " '[]')::text, count(*)"
         f" FROM job_events WHERE job_id = {done}::uuid AND user_id = {u}"),
        (p, "usage (tq_usage_days), the last 30 days of the biggest user",
         "WITH r AS (SELECT to_timestamp((extract(epoch FROM now()) * 1000 - 2592000000)::bigint"
         "  / 1000.0) AS f, to_timestamp((extract(epoch FROM now()) * 1000)::bigint / 1000.0) AS t),"
         f" d AS (SELECT u.* FROM r, tq_usage_days({u}, r.f, r.t) u)"
         " SELECT json_build_object('from', (SELECT f FROM r), 'to', (SELECT t FROM r),"
         "  'days', COALESCE((SELECT json_agg(json_build_object('day', day, 'jobs',"
         "    json_build_object('completed', completed, 'failed', failed, 'cancelled', cancelled),"
         "    'attempts', attempts, 'gpu_seconds', gpu_seconds, 'wall_seconds', wall_seconds)"
         "    ORDER BY day) FROM d), '[]'),"
         "  'totals', (SELECT json_build_object('jobs', json_build_object('completed',"
         "    COALESCE(sum(completed), 0), 'failed', COALESCE(sum(failed), 0), 'cancelled',"
         "    COALESCE(sum(cancelled), 0)), 'attempts', COALESCE(sum(attempts), 0),"
         "    'gpu_seconds', COALESCE(sum(gpu_seconds), 0), 'wall_seconds',"
         "    COALESCE(sum(wall_seconds), 0)) FROM d))::text"),
        (p, "DELETE /jobs/{id}",
         lock_job(done) + f"; DELETE FROM training_jobs WHERE id = {done}::uuid; "
         + drop_unpublished(done)),
        (p, "log tail",
         "SELECT (SELECT COALESCE(json_agg(body ORDER BY seq DESC), '[]') FROM ("
         "  SELECT seq, body, sum(length(body) - length(replace(body, E'\\n', '')) + 1)"
         "    OVER (ORDER BY seq DESC) AS lines FROM job_output"
         "   WHERE job_id = j.id AND kind = 'log') o"
         "  WHERE lines - (length(body) - length(replace(body, E'\\n', '')) + 1)"
         "        < 100::int)::text"
         f" FROM training_jobs j WHERE id = {done}::uuid AND user_id = {u}"),
        (p, "artifact list",
         "SELECT (SELECT COALESCE(json_agg(json_build_object('name', name,"
         " 'size_bytes', size_bytes, 'sha256', sha256, 'created_at', created_at)"
         " ORDER BY name), '[]') FROM job_artifacts WHERE job_id = j.id)::text"
         f" FROM training_jobs j WHERE id = {done}::uuid AND user_id = {u}"),
        (p, "artifact find",
         "SELECT (SELECT size_bytes FROM job_artifacts WHERE job_id = j.id AND name = 'x')"
         f" FROM training_jobs j WHERE id = {done}::uuid AND user_id = {u}"),
        (p, "job stream",
         "WITH o AS (SELECT seq, kind, body FROM ("
         "  SELECT seq, kind, body, sum(bytes) OVER (ORDER BY seq) - bytes AS before"
         f"   FROM (SELECT seq, kind, body, bytes FROM job_output WHERE job_id = {running}::uuid"
         "   AND seq > 0::bigint ORDER BY seq LIMIT 64) l) w"
         "  WHERE before < 65536)"
         "SELECT json_build_object('events', "
         + stream_events(f"job_id = {running}::uuid AND user_id = {u} AND id > 0::bigint") +
         "::json, 'output', (SELECT COALESCE(json_agg(o ORDER BY o.seq), '[]') FROM o),"
         f" 'more_output', EXISTS (SELECT 1 FROM job_output WHERE job_id = {running}::uuid"
         "   AND seq > COALESCE((SELECT max(seq) FROM o), 0::bigint)),"
         f" 'status', (SELECT status FROM training_jobs WHERE id = {running}::uuid))::text"),
        (p, "user stream",
         "SELECT json_build_object('events', "
         + stream_events(f"user_id = {u} AND id > (SELECT max(id) - 10 FROM job_events)") +
         "::json, 'progress', (SELECT COALESCE(json_agg(json_build_object('job_id', id,"
         " 'progress', progress, 'current_step', current_step, 'total_steps', total_steps,"
         " 'loss', loss, 'eta_seconds', eta_seconds, 'progress_updated_at', progress_updated_at,"
         " 'micros', (extract(epoch FROM progress_updated_at) * 1000000)::bigint)"
         " ORDER BY progress_updated_at), '[]') FROM training_jobs WHERE user_id = 'u0'"
         " AND status IN ('pending', 'running') AND progress_updated_at >"
         " timestamptz 'epoch' + 0::bigint * interval '1 microsecond'))::text"),
        (p, "stream start",
         f"SELECT (SELECT COALESCE(max(id), 0) FROM job_events WHERE user_id = {u}),"
         " (extract(epoch FROM clock_timestamp()) * 1000000)::bigint,"
         f" {running}::uuid IS NULL OR EXISTS (SELECT 1 FROM job_events"
         f" WHERE job_id = {running}::uuid AND user_id = {u})"),
        (p, "job's user", f"SELECT user_id FROM training_jobs WHERE id = {done}::uuid"),
        (p, "progress history",
         "SELECT (SELECT COALESCE(json_agg(body::json ORDER BY seq), '[]')"
         " FROM job_output WHERE job_id = j.id AND kind = 'progress')::text"
         f" FROM training_jobs j WHERE id = {running}::uuid AND user_id = {u}"),
        (p, "admin overview (tq_admin_overview)", "SELECT tq_admin_overview()::text"),
        (p, "admin workers (tq_admin_workers)", "SELECT tq_admin_workers()::text"),
        (p, "admin users (tq_admin_users)", "SELECT tq_admin_users()::text"),
        (p, "admin dead letters (tq_admin_dead_letters)",
         "SELECT tq_admin_dead_letters(50::int)::text"),
        (p, "admin jobs", admin_jobs("NULL")),
        (p, "admin jobs, failed", admin_jobs("'failed'")),
        (p, "admin jobs, queued", admin_jobs("'queued'")),
        (p, "admin retry (tq_admin_retry)", f"SELECT tq_admin_retry({failed}::uuid)"),
        (p, "admin republish (tq_admin_republish)",
         f"SELECT tq_admin_republish({k['dead']}::bigint)"),
        (p, "admin drain, undrain (tq_admin_drain)",
         "SELECT tq_admin_drain('w5', true); SELECT tq_admin_drain('w5', false)"),
        (p, "retention (tq_retention_prune)",
         "SELECT outbox_rows, rate_rows, jobs FROM tq_retention_prune(3600, 86400, 2000, 100)"),
        (p, "webhook take (tq_webhook_take: full endpoints and users, candidate, caps, lease)",
         "SELECT tq_webhook_take(2::int, 2::int, 30::int)"),
        (p, "webhook take (what the request needs)",
         "SELECT d.id, d.job_id::text, d.url, d.event,"
         "   COALESCE((SELECT s.secret FROM webhook_endpoints s WHERE s.id = d.endpoint_id),"
         "            (SELECT s.secret FROM webhook_user_secrets s WHERE s.user_id = d.user_id)),"
         f"   (SELECT {JOB_JSON} FROM training_jobs j WHERE j.id = d.job_id),"
         "   to_char(d.event_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),"
         "   d.sequence, d.attempts,"
         "   (SELECT s.previous_secret FROM webhook_endpoints s WHERE s.id = d.endpoint_id"
         "      AND s.previous_secret_until > now())"
         f" FROM webhook_deliveries d WHERE d.id = {dl}::bigint AND d.state = 'pending'"),
        (p, "webhook record, count failures, stop the target",
         "SET LOCAL synchronous_commit = off;"
         " UPDATE webhook_deliveries SET"
         " state = CASE WHEN 'retry' = 'delivered' THEN 'delivered'"
         "   WHEN 1000::bigint < 0 THEN 'failed' ELSE 'pending' END,"
         " delivered_at = CASE WHEN 'retry' = 'delivered' THEN now() END,"
         " due_at = CASE WHEN 'retry' <> 'delivered' AND 1000::bigint >= 0"
         "   THEN now() + make_interval(secs => 1000::bigint / 1000.0) ELSE due_at END,"
         " last_status = NULLIF(500::int, 0), last_error = 'x',"
         " last_latency_ms = 5::int, leased_until = NULL"
         f" WHERE id = {dl}::bigint AND state = 'pending';"
         " UPDATE webhook_endpoints e SET failures_in_row ="
         " CASE WHEN 'retry' = 'delivered' THEN 0 ELSE e.failures_in_row + 1 END"
         f" FROM webhook_deliveries d WHERE d.id = {dl}::bigint AND e.id = d.endpoint_id"
         " AND ('retry' <> 'delivered' OR e.failures_in_row <> 0)"
         " RETURNING e.failures_in_row >= 10::int AND e.disabled_at IS NULL;"
         " UPDATE webhook_endpoints e SET disabled_at = now(), disabled_reason = 'x'"
         f" FROM webhook_deliveries d WHERE d.id = {dl}::bigint AND e.id = d.endpoint_id"
         " AND e.disabled_at IS NULL;"
         " UPDATE webhook_deliveries x SET state = 'failed', last_error = CASE"
         " WHEN x.id = d.id THEN x.last_error ELSE 'not sent: ' || 'x' END"
         f" FROM webhook_deliveries d WHERE d.id = {dl}::bigint"
         " AND x.state = 'pending' AND x.target = d.target"
         " AND (d.endpoint_id IS NOT NULL OR x.job_id = d.job_id)"),
        (p, "webhook endpoints: create, list, deliveries, rotate, delete",
         "INSERT INTO webhook_endpoints (id, user_id, url, events, description, secret)"
         f" VALUES ({lit(uuid.uuid4())}::uuid, {u7}, 'https://h.example.com/',"
         " ARRAY(SELECT jsonb_array_elements_text('[\"job.completed\"]'::jsonb)), 'd', 's');"
         " SELECT COALESCE(json_agg(id ORDER BY created_at, id), '[]')::text"
         f" FROM webhook_endpoints WHERE user_id = {u7};"
         " SELECT (SELECT COALESCE(json_agg(json_build_object('id', 'msg_' || d.id)"
         "  ORDER BY d.id DESC), '[]') FROM (SELECT * FROM webhook_deliveries"
         "  WHERE endpoint_id = e.id ORDER BY id DESC LIMIT 20::int) d)::text"
         f" FROM webhook_endpoints e WHERE e.id = {ep}::uuid AND e.user_id = {u7};"
         " UPDATE webhook_endpoints SET secret = 'x',"
         " previous_secret = CASE WHEN 86400::int > 0 THEN secret END,"
         " previous_secret_until = CASE WHEN 86400::int > 0"
         "   THEN now() + make_interval(secs => 86400::int) END"
         f" WHERE id = {ep}::uuid AND user_id = {u7}"
         " RETURNING COALESCE(to_json(previous_secret_until), 'null')::text;"
         f" DELETE FROM webhook_endpoints WHERE id = {ep}::uuid AND user_id = {u7}"
         " RETURNING 'true'"),
        (p, "webhook default secret",
         "WITH i AS (INSERT INTO webhook_user_secrets (user_id, secret)"
         "  VALUES ('u0', 'x') ON CONFLICT (user_id) DO NOTHING RETURNING secret)"
         " SELECT to_json(COALESCE((SELECT secret FROM i),"
         "  (SELECT secret FROM webhook_user_secrets WHERE user_id = 'u0')))::text"),
        (r, "relay claim",
         "SELECT id, job_id::text, routing_key, payload, exchange,"
         " COALESCE(message_id, job_id::text), correlation_id FROM outbox"
         " WHERE published_at IS NULL AND available_at <= now()"
         " ORDER BY exchange = 'trainq.events', id LIMIT 100::int FOR UPDATE SKIP LOCKED"),
        (r, "relay mark published / failed",
         "UPDATE outbox SET published_at = clock_timestamp() WHERE id = ANY('{1,2,3}'::bigint[]);"
         " UPDATE outbox SET attempts = attempts + 1, last_error = 'x',"
         " available_at = now() + interval '1 second' WHERE id = 4::bigint"),
        (r, "relay backlog",
         "SELECT count(*),"
         " (SELECT coalesce(floor(extract(epoch FROM clock_timestamp() - min(available_at))), 0)"
         "  ::bigint FROM outbox WHERE published_at IS NULL AND available_at <= clock_timestamp())"
         " FROM outbox WHERE published_at IS NULL"),
        (c, "intake (tq_intake: new jobs of four users, a known one, a duplicate)",
         f"SELECT idx, outcome FROM tq_intake({lit(json.dumps(batch))}::jsonb,"
         f" {lit(json.dumps(replies))}::jsonb)"),
        (c, "pick (tq_pick: 11 000 queued jobs over 2 000 users)",
         "SELECT outcome, reason, job_id, fencing_token, attempts, storage_path,"
         " created_epoch, message FROM tq_pick('w-test', 30::int, 4096::int, 1::int)"),
        (c, "dead-letter event (tq_event_dead_letter), record (tq_dead_letter_record)",
         f"SELECT tq_event_dead_letter({lit(str(uuid.uuid4()))}, 'lora',"
         " 'invalid message: base_model: is required', 'replies', 'corr');"
         f" SELECT tq_dead_letter_record({lit(str(uuid.uuid4()))}, 'lora',"
         " 'invalid message: base_model: is required', 'w-test', '{\"x\":1}')"),
        (c, "running",
         lock_job_user.format(running) + ";"
         " WITH r AS (SELECT set_config('trainq.reason', 'started', true))"
         " UPDATE training_jobs SET status = 'running', container_id = 'c',"
         " started_at = now(), progress = 0, current_step = NULL,"
         " total_steps = NULL, loss = NULL, eta_seconds = NULL,"
         f" progress_updated_at = now() FROM r WHERE id = {running} AND fencing_token = 1"
         " AND status = 'pending'"),
        (c, "finish (tq_set_failure) and release (tq_release_parked), artifacts",
         lock_job_user.format(running) + ";"
         " SELECT set_config('trainq.reason', 'exited 1', true);"
         " SELECT tq_set_failure('trainer_error', 'exited 1');"
         " UPDATE training_jobs SET status = 'failed', exit_code = 1::int,"
         " error_message = 'x', completed_at = now(), lease_expires_at = NULL,"
         " progress = CASE WHEN 'failed' = 'completed' THEN 1 ELSE progress END"
         f" WHERE id = {running} AND fencing_token = 1 AND status IN ('pending',"
         " 'running') RETURNING user_id;"
         f" SELECT tq_release_parked({u});"
         " SELECT set_config('trainq.reason', '', true);"
         " INSERT INTO job_artifacts (job_id, name, size_bytes, sha256)"
         f" SELECT {running}, name, size_bytes, sha256 FROM json_to_recordset("
         "'[{\"name\":\"a\",\"size_bytes\":1,\"sha256\":\"" + "a" * 64 + "\"}]'::json)"
         " AS a(name text, size_bytes bigint, sha256 text) ON CONFLICT (job_id, name)"
         " DO UPDATE SET size_bytes = excluded.size_bytes, sha256 = excluded.sha256"),
        (c, "output (tq_output_progress, tq_output_log)",
         f"SELECT tq_output_progress({running}::uuid, 1::bigint, 5::int, 10::int, 0.5::float8,"
         " 3::float8, 100::int);"
         f" SELECT tq_output_log({running}::uuid, 1::bigint, 'a line', 1048576::bigint)"),
        (c, "give back (tq_give_back_as)",
         f"SELECT tq_give_back_as('host_error', {running}::uuid, 1::bigint, 'host', 3::int)"),
        (c, "retry (tq_retry_as), the class count (tq_class_failures), last class",
         lock_job_user.format(running) + ";"
         f" SELECT 1 FROM training_jobs WHERE id = {running} AND fencing_token = 1"
         " AND status IN ('pending', 'running') FOR UPDATE;"
         f" SELECT tq_retry_as('hub_error', 'hub down', {running}, 'lost', 3::int, 30::int);"
         f" SELECT coalesce(failure_class, '') FROM training_jobs WHERE id = {running};"
         f" SELECT tq_class_failures({running}, 'hub_error')"),
        (c, "heartbeat, leases, worker's jobs, usage totals, stopped",
         "INSERT INTO workers (worker_id, hostname, slots, busy, gpus, healthy)"
         " VALUES ('w5', 'h', 2, 1, '0,1', 't')"
         " ON CONFLICT (worker_id) DO UPDATE SET hostname = 'h', slots = 2, busy = 1,"
         " gpus = '0,1', healthy = 't', heartbeat_at = now(), stopped_at = NULL"
         " RETURNING draining;"
         " UPDATE training_jobs SET lease_expires_at = now() + make_interval(secs => 30::int)"
         f" WHERE worker_id = 'w5' AND status IN ('pending', 'running') AND id = ANY({ids}::uuid[])"
         " RETURNING id::text, fencing_token, cancel_requested_at IS NOT NULL;"
         " UPDATE training_jobs SET lease_expires_at ="
         " GREATEST(lease_expires_at, now() + make_interval(secs => 30::int))"
         " WHERE worker_id = 'w5' AND status IN ('pending', 'running')"
         f" AND id = ANY({ids}::uuid[]);"
         " SELECT id::text, fencing_token, cancel_requested_at IS NOT NULL"
         " FROM training_jobs WHERE worker_id = 'w5' AND status IN ('pending', 'running');"
         " UPDATE workers SET stopped_at = now() WHERE worker_id = 'w5'"),
        (c, "usage totals (job_usage after a cursor), from the start and from the last day",
         "WITH n AS (SELECT id, ended_at, gpu_seconds, wall_seconds FROM job_usage"
         " WHERE (ended_at, id) > ('-infinity'::timestamptz, 0::bigint)"
         " AND ended_at < now() - interval '1 minute'"
         " ORDER BY ended_at, id LIMIT 10000),"
         " l AS (SELECT ended_at, id FROM n ORDER BY ended_at DESC, id DESC LIMIT 1)"
         " SELECT count(*), COALESCE(sum(gpu_seconds), 0),"
         " COALESCE(sum(wall_seconds), 0), (SELECT ended_at::text FROM l),"
         " (SELECT id FROM l) FROM n;"
         " WITH n AS (SELECT id, ended_at, gpu_seconds, wall_seconds FROM job_usage"
         " WHERE (ended_at, id) > ((now() - interval '1 day')::timestamptz, 0::bigint)"
         " AND ended_at < now() - interval '1 minute'"
         " ORDER BY ended_at, id LIMIT 10000),"
         " l AS (SELECT ended_at, id FROM n ORDER BY ended_at DESC, id DESC LIMIT 1)"
         " SELECT count(*), COALESCE(sum(gpu_seconds), 0),"
         " COALESCE(sum(wall_seconds), 0), (SELECT ended_at::text FROM l),"
         " (SELECT id FROM l) FROM n"),
        (c, "reaper (tq_reap)", "SELECT count(*) FROM tq_reap(3::int)"),
        (c, "sweeper (tq_sweep)", "SELECT tq_sweep(30::int, 0::bigint)"),
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
        cls.k["ds_many"] = {str(n): superuser_psql(cls.db, f"SELECT md5('ds{n}')").stdout.strip()
                            for n in (1, 11, 12, 13)}

    @classmethod
    def tearDownClass(cls):
        tqenv.psql(f"DROP DATABASE IF EXISTS {cls.db} WITH (FORCE)", superuser=True)

    def plans(self, statements, analyze=False):
        """{name: [(query text, plan)]} of every statement run (nested ones included), each
        entry of statements in its own rolled-back transaction; analyze: with the rows each
        node returned ("Actual Rows", "Actual Loops")."""
        script = ["LOAD 'auto_explain';", "SET auto_explain.log_min_duration = 0;",
                  f"SET auto_explain.log_analyze = {'on' if analyze else 'off'};",
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

    def test_a_pick_reads_the_waiting_users_not_their_backlogs(self):
        # u0 alone has a quarter of the jobs, thousands of them queued: a pick that read
        # every queued row would grow with that backlog (db/procedures/65_schedule.sql).
        queued, users = (int(x) for x in superuser_psql(
            self.db, "SELECT count(*), count(DISTINCT user_id) FROM training_jobs"
            " WHERE status = 'queued'").stdout.split("|"))
        self.assertGreater(queued, 3 * users)
        pick = [(src, name, sql) for src, name, sql in queries(self.k)
                if sql.lstrip().startswith("SELECT outcome") and "tq_pick(" in sql]
        self.assertEqual(len(pick), 1)

        def rows_read(plan):
            n = 0
            if plan.get("Relation Name") == "training_jobs":
                n += plan.get("Actual Rows", 0) * plan.get("Actual Loops", 1)
            return n + sum(rows_read(p) for p in plan.get("Plans", []))
        plans = self.plans(pick, analyze=True)[0]
        read = sum(rows_read(plan) for _, plan in plans)
        self.assertGreater(read, 0, "no rows of training_jobs seen: was the plan analysed?")
        self.assertLess(read, 3 * users + 200,
                        f"the pick read {read} rows of training_jobs for {users} waiting users"
                        f" with {queued} queued jobs")

    def test_every_function_the_programs_call_is_in_the_list(self):
        listed = " ".join(sql for _, _, sql in queries(self.k))
        missing = sorted(f for f in functions_called_by_the_programs()
                         if not re.search(rf"\b{f}\s*\(", listed))
        self.assertEqual(missing, [], "add a statement calling these to QUERIES")


if __name__ == "__main__":
    unittest.main()
