-- The admin API's reads and actions (producer/admin.c through producer/pdb.c; docs/api.md,
-- "Admin API"). Each read returns one json value the producer sends as it is; each action
-- returns an outcome text the producer maps to a status code:
--   'ok' | 'not_found' | 'conflict:<why>'.
--
-- What must stay true:
--   - an action that changes a job's status takes the user's lock first (tq_lock_user,
--     10_users.sql) and then the row's, as every other status change does;
--   - a job sent to the queue again gets its outbox row in the same transaction as its
--     status change, so a retried job is never left queued without a message.
--
-- Idempotent (migrate.sh reloads this file on every run): CREATE OR REPLACE only.

-- Failed and cancelled jobs of the last 24 h by class (db/procedures/62_outcomes.sql sets
-- failure_class; a job failed before classes existed counts under its status).
CREATE OR REPLACE FUNCTION tq_admin_failures() RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT COALESCE(json_agg(json_build_object('class', c, 'count', n) ORDER BY n DESC, c), '[]')
      FROM (SELECT COALESCE(failure_class, status) AS c, count(*) AS n
              FROM training_jobs
             WHERE status IN ('failed', 'cancelled') AND completed_at > now() - interval '24 hours'
             GROUP BY 1) t
$$;

-- Queue depth by waiting reason (tq_waiting_reason, 65_schedule.sql, once per waiting user:
-- the reason the job view gives each of the user's queued jobs), active jobs, failures, submissions and completions per
-- minute over the last hour, and dispatch latency (created → started) of the last hour.
CREATE OR REPLACE FUNCTION tq_admin_overview() RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        -- a queued job waits for its user's reason (tq_waiting_reason, the job view's
        -- waiting_reason): one call per waiting user, not per job
        'queue', (SELECT json_build_object(
                     'capacity', COALESCE(sum(n) FILTER (WHERE reason = 'capacity'), 0)::bigint,
                     'user_limit', COALESCE(sum(n) FILTER (WHERE reason = 'user_limit'), 0)::bigint,
                     'quota', COALESCE(sum(n) FILTER (WHERE reason = 'quota'), 0)::bigint,
                     'pending', (SELECT count(*) FROM training_jobs WHERE status = 'pending'),
                     'running', (SELECT count(*) FROM training_jobs WHERE status = 'running'))
                    FROM (SELECT n, tq_waiting_reason(user_id) AS reason
                            FROM (SELECT user_id, count(*) AS n
                                    FROM training_jobs WHERE status = 'queued'
                                   GROUP BY 1) g) t),
        'failures_24h', tq_admin_failures(),
        'per_minute', (SELECT json_agg(json_build_object(
                           'minute', m,
                           'submitted', (SELECT count(*) FROM training_jobs
                                          WHERE created_at >= m AND created_at < m + interval '1 minute'),
                           'completed', (SELECT count(*) FROM training_jobs
                                          WHERE status = 'completed' AND completed_at >= m
                                            AND completed_at < m + interval '1 minute'))
                           ORDER BY m)
                         FROM generate_series(date_trunc('minute', now()) - interval '59 minutes',
                                              date_trunc('minute', now()), interval '1 minute') m),
        'dispatch_latency_seconds', (SELECT json_build_object(
                           'jobs', count(*),
                           'p50', percentile_cont(0.5) WITHIN GROUP (ORDER BY s),
                           'p95', percentile_cont(0.95) WITHIN GROUP (ORDER BY s))
                         FROM (SELECT extract(epoch FROM started_at - created_at) AS s
                                 FROM training_jobs WHERE started_at > now() - interval '1 hour') t))
$$;

-- Every worker seen in the last day: heartbeat age, slots busy and free, GPU ids, health,
-- draining, and the jobs it holds.
CREATE OR REPLACE FUNCTION tq_admin_workers() RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT COALESCE(json_agg(json_build_object(
               'worker_id', w.worker_id, 'hostname', w.hostname, 'slots', w.slots,
               'busy', w.busy, 'free', GREATEST(w.slots - w.busy, 0), 'gpus', w.gpus,
               'healthy', w.healthy AND w.stopped_at IS NULL, 'draining', w.draining,
               'heartbeat_at', w.heartbeat_at,
               'heartbeat_age_seconds', extract(epoch FROM now() - w.heartbeat_at),
               -- not stopped, and no heartbeat within its lease: killed or cut off, its
               -- jobs are the reaper's (60 s for a worker of a release that did not say)
               'lease_seconds', w.lease_seconds,
               'gone', w.stopped_at IS NULL AND w.heartbeat_at
                       < now() - make_interval(secs => COALESCE(w.lease_seconds, 60)),
               'started_at', w.started_at, 'stopped_at', w.stopped_at,
               'jobs', (SELECT COALESCE(json_agg(id ORDER BY started_at), '[]') FROM training_jobs
                         WHERE worker_id = w.worker_id AND status IN ('pending', 'running')))
           ORDER BY w.worker_id), '[]')
      FROM workers w WHERE w.heartbeat_at > now() - interval '1 day'
$$;

-- Per user with anything active, queued or started today: active, queued, GPU-hours today
-- (run time of the user's jobs since midnight UTC, each job counted as one GPU slot).
CREATE OR REPLACE FUNCTION tq_admin_users() RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT COALESCE(json_agg(json_build_object('user_id', user_id, 'active', active,
                                               'queued', queued, 'gpu_hours_today', gpu_hours)
                             ORDER BY active DESC, queued DESC, user_id), '[]')
      FROM (SELECT user_id,
                   count(*) FILTER (WHERE status IN ('pending', 'running')) AS active,
                   count(*) FILTER (WHERE status = 'queued') AS queued,
                   round((sum(extract(epoch FROM
                       COALESCE(completed_at, now()) - GREATEST(started_at, date_trunc('day', now()))))
                       FILTER (WHERE started_at IS NOT NULL) / 3600)::numeric, 3) AS gpu_hours
              FROM training_jobs
             -- arms that match partial indexes (training_jobs_queued, training_jobs_active,
             -- training_jobs_finished); completed_at is set only on the finished statuses
             WHERE status = 'queued' OR status IN ('pending', 'running')
                OR (status IN ('completed', 'failed', 'cancelled')
                    AND completed_at >= date_trunc('day', now()))
             GROUP BY user_id) t
$$;

CREATE OR REPLACE FUNCTION tq_admin_dead_letters(p_limit integer) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT COALESCE(json_agg(json_build_object(
               'id', id, 'message_id', message_id, 'routing_key', routing_key, 'reason', reason,
               'worker_id', worker_id, 'body', body, 'created_at', created_at,
               'republished_at', republished_at) ORDER BY created_at DESC, id DESC), '[]')
      FROM (SELECT * FROM dead_letters ORDER BY created_at DESC, id DESC LIMIT p_limit) d
$$;

-- A failed job back to queued, as if just submitted: the outcome of its last run cleared,
-- attempts reset, its stored message published again through the outbox.
CREATE OR REPLACE FUNCTION tq_admin_retry(p_id uuid) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    u text;
    st text;
BEGIN
    SELECT user_id INTO u FROM training_jobs WHERE id = p_id;
    IF u IS NULL THEN
        RETURN 'not_found';
    END IF;
    PERFORM tq_lock_user(u);
    SELECT status INTO st FROM training_jobs WHERE id = p_id FOR UPDATE;
    IF st <> 'failed' THEN
        RETURN 'conflict:job is ' || st || ', only failed jobs are retried';
    END IF;
    PERFORM set_config('trainq.reason', 'retried by an operator', true);
    UPDATE training_jobs
       SET status = 'queued', completed_at = NULL, started_at = NULL, error_message = NULL,
           failure_class = NULL, failure_message = NULL,
           exit_code = NULL, worker_id = NULL, container_id = NULL, attempts = 0,
           host_retries = 0, parked_at = NULL, released_at = NULL, cancel_requested_at = NULL,
           cancel_requested_by = NULL,
           lease_expires_at = NULL, progress = NULL, current_step = NULL, total_steps = NULL,
           loss = NULL, eta_seconds = NULL, progress_updated_at = NULL
     WHERE id = p_id;
    INSERT INTO outbox (job_id, routing_key, payload)
    SELECT id, type, message FROM training_jobs WHERE id = p_id;
    RETURN 'ok';
END $$;

-- A dead-lettered message to the exchange again through the outbox: its job's stored
-- message when the job exists and is still queued (the consumer decides again), else its
-- recorded body when its message_id is a job id that has no row yet; anything else cannot
-- be republished (a job that already ran or ended, a message without a job id).
CREATE OR REPLACE FUNCTION tq_admin_republish(p_id bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    d dead_letters%ROWTYPE;
    job uuid;
    st text;
BEGIN
    SELECT * INTO d FROM dead_letters WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 'not_found';
    END IF;
    IF d.republished_at IS NOT NULL THEN
        RETURN 'conflict:already republished';
    END IF;
    -- Refused for its signature (shared/tq_sign.h's reasons): the relay would sign it with
    -- trainq's own key, so anyone who can publish an unsigned body could have it run by an
    -- operator's click. Only its publisher can vouch for it: by publishing it again, signed.
    IF d.reason ~ '^(unsigned message:|unknown publisher key id|bad signature)' THEN
        RETURN 'conflict:the message was refused for its signature: only its publisher can '
               'publish it again, signed';
    END IF;
    IF d.message_id !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
        RETURN 'conflict:the message has no job id';
    END IF;
    job := d.message_id::uuid;
    SELECT status INTO st FROM training_jobs WHERE id = job;
    IF st IS NOT NULL AND st <> 'queued' THEN
        RETURN 'conflict:its job is ' || st;
    END IF;
    IF st IS NULL THEN
        INSERT INTO outbox (job_id, routing_key, payload) VALUES (job, d.routing_key, d.body);
    ELSE
        INSERT INTO outbox (job_id, routing_key, payload)
        SELECT id, type, message FROM training_jobs WHERE id = job;
    END IF;
    UPDATE dead_letters SET republished_at = now() WHERE id = p_id;
    RETURN 'ok';
END $$;

-- A consumer records a message it dead-lettered (consumer/cdb.c); rows older than 30 days
-- go at the same time, so the table stays bounded without a job of its own (the queue
-- trainq.jobs.dead keeps the messages themselves as long as the operator lets it).
CREATE OR REPLACE FUNCTION tq_dead_letter_record(p_message_id text, p_routing_key text,
                                                 p_reason text, p_worker text, p_body text)
    RETURNS bigint
LANGUAGE sql AS $$
    WITH gone AS (DELETE FROM dead_letters WHERE created_at < now() - interval '30 days')
    INSERT INTO dead_letters (message_id, routing_key, reason, worker_id, body)
    VALUES (p_message_id, p_routing_key, p_reason, p_worker, p_body)
    RETURNING id
$$;

-- Sets a worker's drain flag; the worker reads it on its next heartbeat.
CREATE OR REPLACE FUNCTION tq_admin_drain(p_worker text, p_drain boolean) RETURNS text
LANGUAGE sql AS $$
    WITH u AS (UPDATE workers SET draining = p_drain WHERE worker_id = p_worker RETURNING 1)
    SELECT CASE WHEN EXISTS (SELECT 1 FROM u) THEN 'ok' ELSE 'not_found' END
$$;
