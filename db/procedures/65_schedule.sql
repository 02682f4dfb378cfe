-- Who runs next: intake of broker messages, the pick of a free slot, usage and quotas
-- (issue 14; docs/architecture.md, "Who runs next").
--
-- The broker message is intake only: tq_intake makes a batch of delivered jobs durable as
-- queued rows, and the consumer acks them. A free slot asks tq_pick for the next runnable
-- job, in this order:
--   1. priority (high, normal, low);
--   2. fair share: the least recent usage of the job's user (GPU-seconds of ended
--      attempts, each weighed by 2^(-age / half-life); settings
--      'fair_share_half_life_seconds', default 24 h);
--   3. submission order (created_at, id).
-- A user at the active-job limit (tq_user_max_active) or over the daily GPU-seconds quota
-- (user_limits.gpu_seconds_per_day, a rolling 24 hours) has no runnable job.
--
-- What must stay true:
--   - the user's lock before any row lock (10_users.sql); tq_pick only try-locks users (it
--     visits them in the order of the queue, not in user_id order, so it never waits for
--     one), tq_intake takes the users of its batch in user_id order, as the sweeper and
--     the reaper do;
--   - room and quota are counted after the user's lock, in a fresh snapshot (each statement
--     of a VOLATILE plpgsql function takes one under READ COMMITTED); the guard trigger
--     (20_guards.sql) still refuses a third active job;
--   - every transaction that may make a job runnable (a new row, a freed slot, a give-back)
--     sends NOTIFY trainq_runnable, which wakes the dispatchers of hosts with free slots;
--     they also look every second, so a lost notification costs at most that.
--
-- Idempotent (migrate.sh reloads this file on every run): CREATE OR REPLACE only.

-- tq_priority_rank, tq_priority_name and tq_user_max_priority are in 30_jobs.sql, which
-- loads first, beside tq_insert_jobs, which uses them.

CREATE OR REPLACE FUNCTION tq_half_life_seconds() RETURNS double precision
LANGUAGE sql STABLE AS $$
    SELECT GREATEST(COALESCE(
        (SELECT value::double precision FROM settings WHERE key = 'fair_share_half_life_seconds'),
        86400), 1)
$$;

-- The user's recent usage for fair share: decayed GPU-seconds of the attempts that ended
-- within 30 half-lives (older ones weigh less than 1e-9 of their value).
CREATE OR REPLACE FUNCTION tq_recent_usage(p_user text) RETURNS double precision
LANGUAGE sql STABLE AS $$
    SELECT COALESCE(sum(u.gpu_seconds * power(2, -extract(epoch FROM now() - u.ended_at) / h.s)),
                    0)
      -- the half-life read once (OFFSET 0 keeps the subquery from being pulled up): in the
      -- sum it ran its settings lookup once per usage row, ~140 000 times in one pick over
      -- 2 000 users (test_indexes.py)
      FROM (SELECT tq_half_life_seconds() AS s OFFSET 0) h, job_usage u
     WHERE u.user_id = p_user
       AND u.ended_at > now() - make_interval(secs => 30 * h.s)
$$;

-- GPU-seconds of the user's attempts that ended in the last 24 hours.
CREATE OR REPLACE FUNCTION tq_usage_last_day(p_user text) RETURNS double precision
LANGUAGE sql STABLE AS $$
    SELECT COALESCE(sum(gpu_seconds), 0) FROM job_usage
     WHERE user_id = p_user AND ended_at > now() - interval '24 hours'
$$;

-- Whether the user is over their daily quota (none set: never).
CREATE OR REPLACE FUNCTION tq_user_over_quota(p_user text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT COALESCE((SELECT l.gpu_seconds_per_day <= tq_usage_last_day(p_user)
                       FROM user_limits l
                      WHERE l.user_id = p_user AND l.gpu_seconds_per_day IS NOT NULL), false)
$$;

-- Why a queued job of the user waits: 'quota', 'user_limit' or 'capacity' (docs/api.md).
CREATE OR REPLACE FUNCTION tq_waiting_reason(p_user text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN tq_user_over_quota(p_user) THEN 'quota'
        WHEN (SELECT count(*) FROM training_jobs
               WHERE user_id = p_user AND status IN ('pending', 'running'))
             >= tq_user_max_active(p_user) THEN 'user_limit'
        ELSE 'capacity' END
$$;

-- Where a queued job stands in the order of tq_pick: 1 + the queued jobs that come before
-- it (priority, its user's recent usage, submission), not counting jobs of other users held
-- back by their quota. NULL when the job is not queued. An estimate of order, not a
-- promise: the per-user limit lets a later job of another user start before jobs of a user
-- at the limit.
CREATE OR REPLACE FUNCTION tq_queue_position(p_id uuid) RETURNS bigint
LANGUAGE sql STABLE AS $$
    WITH me AS (
        SELECT j.id, j.user_id, j.priority, j.created_at, tq_recent_usage(j.user_id) AS usage
          FROM training_jobs j WHERE j.id = p_id AND j.status = 'queued'
    ), users AS MATERIALIZED (
        -- MATERIALIZED: the usage and quota functions once per queued user; a CTE inlined
        -- into the join below may evaluate them once per queued job instead
        SELECT q.user_id,
               CASE WHEN q.user_id = (SELECT user_id FROM me) THEN (SELECT usage FROM me)
                    ELSE tq_recent_usage(q.user_id) END AS usage,
               q.user_id <> (SELECT user_id FROM me) AND tq_user_over_quota(q.user_id) AS held
          FROM (SELECT DISTINCT user_id FROM training_jobs WHERE status = 'queued') q
    )
    SELECT 1 + count(*) FILTER (
               WHERE NOT u.held
                 AND (-q.priority, u.usage, q.created_at, q.id)
                     < (-me.priority, me.usage, me.created_at, me.id))
      FROM me
      LEFT JOIN training_jobs q ON q.status = 'queued' AND q.id <> me.id
      LEFT JOIN users u ON u.user_id = q.user_id
     GROUP BY me.id
$$;

-- Intake: makes each delivered job (p_messages, a JSON array of canonical trainq.job.v1
-- bodies, as tq_msg_encode wrote them) durable as a queued row, idempotently, through
-- tq_insert_jobs (30_jobs.sql). One row per message, by its 0-based index: 'accepted' (its
-- row is new), 'known' (the producer's own publication of a job it stored: the expected
-- path of every HTTP submission), 'duplicate' (the job exists already, or was deleted:
-- the message is dropped) or 'mismatch' (job_id names a job of another user or dataset:
-- the consumer dead-letters the message). The users' locks in
-- user_id order (see the top). Wakes the pickers when a job was added.
DROP FUNCTION IF EXISTS tq_intake(jsonb);
CREATE OR REPLACE FUNCTION tq_intake(p_messages jsonb, p_replies jsonb DEFAULT NULL)
RETURNS TABLE (idx integer, outcome text, reason text)
LANGUAGE plpgsql AS $$
DECLARE
    bodies constant text[] := ARRAY(SELECT x.body
                                      FROM jsonb_array_elements_text(p_messages)
                                           WITH ORDINALITY AS x(body, n)
                                     ORDER BY x.n);
    -- p_replies[i]: [reply_to, correlation_id] of message i's delivery, or null
    reply_tos constant text[] := ARRAY(SELECT r->>0
                                         FROM jsonb_array_elements(COALESCE(p_replies, '[]'))
                                              WITH ORDINALITY AS y(r, n)
                                        ORDER BY y.n);
    correlation_ids constant text[] := ARRAY(SELECT r->>1
                                               FROM jsonb_array_elements(COALESCE(p_replies, '[]'))
                                                    WITH ORDINALITY AS y(r, n)
                                              ORDER BY y.n);
    u text;
    added uuid[];
BEGIN
    FOR u IN SELECT DISTINCT b::jsonb->>'user_id' FROM unnest(bodies) AS b ORDER BY 1 LOOP
        PERFORM tq_lock_user(u);
    END LOOP;
    -- One statement for the batch (the triggers still run per row): a burst is stored a
    -- few times faster than row by row.
    added := ARRAY(SELECT tq_insert_jobs(bodies, 'amqp', NULL, NULL, reply_tos, correlation_ids));
    IF cardinality(added) > 0 THEN
        PERFORM tq_notify('trainq_runnable', '');
    END IF;
    -- A new statement, so a fresh snapshot: it sees the rows just inserted and every other.
    -- A job twice in one batch is accepted once (its first message), a duplicate after.
    RETURN QUERY
    SELECT (m.n - 1)::integer,
           CASE WHEN m.first AND m.id = ANY (added) THEN 'accepted'
                WHEN t.id IS NOT NULL AND (t.user_id <> m.b->>'user_id'
                                           OR t.dataset_id <> (m.b->>'dataset_id')::uuid)
                    THEN 'mismatch'
                WHEN m.first AND t.source = 'http' AND t.status = 'queued' THEN 'known'
                ELSE 'duplicate' END,
           CASE WHEN m.first AND m.id = ANY (added) THEN NULL
                WHEN t.id IS NULL THEN 'job was deleted'
                WHEN t.user_id <> m.b->>'user_id' OR t.dataset_id <> (m.b->>'dataset_id')::uuid
                    THEN format('job_id %s already names a job of another user or dataset', m.id)
                ELSE format('job is %s', t.status) END
      FROM (SELECT x.n, y.b, (y.b->>'job_id')::uuid AS id,
                   row_number() OVER (PARTITION BY y.b->>'job_id' ORDER BY x.n) = 1 AS first
              FROM unnest(bodies) WITH ORDINALITY AS x(body, n)
                   CROSS JOIN LATERAL (SELECT x.body::jsonb AS b) y) m
      LEFT JOIN training_jobs t ON t.id = m.id
     ORDER BY m.n;
END $$;

-- The pick: claims the next runnable job for a free slot of p_worker holding p_gpus GPUs.
-- One row: outcome 'claimed' (with the job and the claim, as tq_claim returns them),
-- 'failed' (the job at the head failed durably — dataset missing or foreign, priority
-- above the user's max_priority — : pick again), 'busy' (nothing claimed, but a candidate
-- user's lock was held by another transaction — a claim, an intake, a job's end —: ask
-- again in a moment) or 'none' (nothing runnable).
-- Candidates are each user's first queued job (priority, then submission), in the order of
-- the queue; for each: try the user's lock, re-count room and quota, lock the job's row
-- (SKIP LOCKED: a cancel or another picker holds it), check, claim.
CREATE OR REPLACE FUNCTION tq_pick(p_worker text, p_lease integer, p_path_max integer,
                                   p_gpus integer,
                                   OUT outcome text, OUT reason text, OUT job_id uuid,
                                   OUT fencing_token bigint, OUT attempts integer,
                                   OUT storage_path text, OUT created_epoch double precision,
                                   OUT message text)
LANGUAGE plpgsql AS $$
DECLARE
    c record;
    j record;
    busy boolean := false;
BEGIN
    FOR c IN
        WITH heads AS (
            SELECT DISTINCT ON (t.user_id) t.user_id, t.priority, t.created_at, t.id
              FROM training_jobs t
             WHERE t.status = 'queued' AND (t.not_before IS NULL OR t.not_before <= now())
             ORDER BY t.user_id, t.priority DESC, t.created_at, t.id
        )
        SELECT h.user_id FROM heads h
         WHERE (SELECT count(*) FROM training_jobs a
                 WHERE a.user_id = h.user_id AND a.status IN ('pending', 'running'))
               < tq_user_max_active(h.user_id)
           AND NOT tq_user_over_quota(h.user_id)
         ORDER BY h.priority DESC, tq_recent_usage(h.user_id), h.created_at, h.id
         LIMIT 50
    LOOP
        IF NOT tq_try_lock_user(c.user_id) THEN
            busy := true;
            CONTINUE;
        END IF;
        IF (SELECT count(*) FROM training_jobs a
             WHERE a.user_id = c.user_id AND a.status IN ('pending', 'running'))
           >= tq_user_max_active(c.user_id) OR tq_user_over_quota(c.user_id) THEN
            CONTINUE;
        END IF;
        SELECT t.id, t.dataset_id, t.priority INTO j FROM training_jobs t
         WHERE t.user_id = c.user_id AND t.status = 'queued'
           AND (t.not_before IS NULL OR t.not_before <= now())
         ORDER BY t.priority DESC, t.created_at, t.id
         LIMIT 1
           FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            busy := true; -- held by a cancel or a delete, or gone meanwhile
            CONTINUE;
        END IF;
        job_id := j.id;
        IF j.priority > tq_priority_rank(tq_user_max_priority(c.user_id)) THEN
            reason := format('priority %s is above the user''s max_priority %s',
                             tq_priority_name(j.priority), tq_user_max_priority(c.user_id));
            UPDATE training_jobs SET status = 'failed', error_message = reason,
                   completed_at = now()
             WHERE id = j.id;
            outcome := 'failed';
            RETURN;
        END IF;
        SELECT d.storage_path, d.reason INTO storage_path, reason
          FROM tq_claim_check_dataset(j.id, c.user_id, j.dataset_id, p_path_max) d;
        IF reason IS NOT NULL THEN
            outcome := 'failed';
            RETURN;
        END IF;
        PERFORM set_config('trainq.reason', format('claimed by worker %s', p_worker), true);
        UPDATE training_jobs t SET status = 'pending', worker_id = p_worker,
               fencing_token = t.fencing_token + 1, attempts = t.attempts + 1,
               lease_expires_at = now() + make_interval(secs => p_lease), parked_at = NULL,
               released_at = NULL, container_id = NULL, exit_code = NULL, not_before = NULL,
               gpus = p_gpus
         WHERE t.id = j.id
         RETURNING t.fencing_token, t.attempts, extract(epoch FROM t.created_at), t.message
          INTO fencing_token, attempts, created_epoch, message;
        PERFORM set_config('trainq.reason', '', true);
        outcome := 'claimed';
        RETURN;
    END LOOP;
    outcome := CASE WHEN busy THEN 'busy' ELSE 'none' END;
END $$;

-- Usage: one job_usage row per attempt, when the job leaves pending/running (any way:
-- finished, failed, cancelled, retried, given back, recovered by the reaper). Its start is
-- the claim's `pending` event and its end the event just written for this change (the
-- audit trigger training_jobs_audit runs before this one: triggers fire in name order), so
-- usage and the audit trail agree to the microsecond.
CREATE OR REPLACE FUNCTION tq_record_usage() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz;
    t1 timestamptz;
BEGIN
    IF OLD.status NOT IN ('pending', 'running') OR NEW.status IN ('pending', 'running') THEN
        RETURN NULL;
    END IF;
    SELECT max(at) INTO t0 FROM job_events
     WHERE job_id = NEW.id AND to_status = 'pending' AND fencing_token = OLD.fencing_token;
    SELECT at INTO t1 FROM job_events WHERE job_id = NEW.id ORDER BY id DESC LIMIT 1;
    IF t0 IS NULL OR t1 IS NULL OR t1 < t0 THEN
        t0 := COALESCE(t0, t1, now());
        t1 := GREATEST(COALESCE(t1, now()), t0);
    END IF;
    INSERT INTO job_usage (job_id, user_id, worker_id, attempt, gpus, started_at, ended_at,
                           wall_seconds, gpu_seconds, outcome)
    VALUES (NEW.id, NEW.user_id, OLD.worker_id, OLD.attempts, OLD.gpus, t0, t1,
            extract(epoch FROM t1 - t0), OLD.gpus * extract(epoch FROM t1 - t0), NEW.status);
    RETURN NULL;
END $$;

SELECT tq_ensure_trigger('training_jobs', 'training_jobs_usage',
    'AFTER UPDATE OF status', 'FOR EACH ROW EXECUTE FUNCTION tq_record_usage()');

-- The caller's usage per UTC day in [p_from, p_to) (GET /api/training/usage): jobs that
-- ended that day by outcome (from job_events), attempts and GPU-seconds and wall seconds of
-- the attempts that ended that day (job_usage).
CREATE OR REPLACE FUNCTION tq_usage_days(p_user text, p_from timestamptz, p_to timestamptz)
RETURNS TABLE (day date, completed bigint, failed bigint, cancelled bigint, attempts bigint,
               gpu_seconds double precision, wall_seconds double precision)
LANGUAGE sql STABLE AS $$
    WITH ends AS (
        SELECT (e.at AT TIME ZONE 'UTC')::date AS day, e.to_status
          FROM job_events e
         WHERE e.user_id = p_user AND e.at >= p_from AND e.at < p_to
           AND e.to_status IN ('completed', 'failed', 'cancelled')
    ), att AS (
        SELECT (u.ended_at AT TIME ZONE 'UTC')::date AS day, count(*) AS n,
               sum(u.gpu_seconds) AS gs, sum(u.wall_seconds) AS ws
          FROM job_usage u
         WHERE u.user_id = p_user AND u.ended_at >= p_from AND u.ended_at < p_to
         GROUP BY 1
    ), days AS (SELECT day FROM ends UNION SELECT day FROM att)
    SELECT d.day,
           (SELECT count(*) FROM ends WHERE ends.day = d.day AND to_status = 'completed'),
           (SELECT count(*) FROM ends WHERE ends.day = d.day AND to_status = 'failed'),
           (SELECT count(*) FROM ends WHERE ends.day = d.day AND to_status = 'cancelled'),
           COALESCE(a.n, 0), COALESCE(a.gs, 0), COALESCE(a.ws, 0)
      FROM days d LEFT JOIN att a ON a.day = d.day
     ORDER BY d.day
$$;
