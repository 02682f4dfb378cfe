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

-- Fair share compares users by their decayed usage: the GPU-seconds of their ended attempts,
-- each weighed by 2^(-age / half-life). Since the weight's factor 2^(-now / half-life) is the
-- same for every user, the order is that of a score that changes only when an attempt ends:
--   score = log2(sum of gpu_seconds * 2^(epoch(ended_at) / half-life))
-- (logarithmic, so that it never overflows), kept per user in user_usage_scores
-- (db/migrations/0021_usage_scores.sql) by the triggers below. The decayed usage itself is
-- 2^(score - epoch(now) / half-life). The pick and queue_position read one row per user
-- instead of summing job_usage for every queued user.
--
-- What must stay true: user_usage_scores is a function of job_usage and the half-life; every
-- change of either goes through a trigger here.

-- The score one attempt adds: log2(gpu_seconds) + epoch(ended_at) / half-life; NULL for an
-- attempt without GPU-seconds (a CPU slot), which adds nothing.
CREATE OR REPLACE FUNCTION tq_usage_term(p_gpu_seconds double precision, p_ended timestamptz,
                                         p_half_life double precision)
RETURNS double precision
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_gpu_seconds > 0
                THEN ln(p_gpu_seconds) / ln(2) + extract(epoch FROM p_ended) / p_half_life END
$$;

-- log2(2^a + 2^b), NULL standing for 2^-infinity (no usage). Terms more than 1000 apart
-- (float8 has 53 bits) leave the larger as it is; power() would underflow.
CREATE OR REPLACE FUNCTION tq_log2_add(a double precision, b double precision)
RETURNS double precision
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN a IS NULL THEN b
                WHEN b IS NULL THEN a
                WHEN abs(a - b) > 1000 THEN GREATEST(a, b)
                ELSE GREATEST(a, b) + ln(1 + power(2::double precision, -abs(a - b))) / ln(2)
           END
$$;

-- Computes the scores of p_users (NULL: every user) again from job_usage.
CREATE OR REPLACE FUNCTION tq_usage_scores_recompute(p_users text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    h constant double precision := tq_half_life_seconds();
BEGIN
    DELETE FROM user_usage_scores WHERE p_users IS NULL OR user_id = ANY (p_users);
    -- log-sum-exp: each term taken relative to the user's largest, so nothing overflows
    INSERT INTO user_usage_scores (user_id, score)
    SELECT t.user_id,
           max(t.m) + ln(sum(CASE WHEN t.x - t.m < -1000 THEN 0
                                  ELSE power(2::double precision, t.x - t.m) END)) / ln(2)
      FROM (SELECT x.user_id, x.x, max(x.x) OVER (PARTITION BY x.user_id) AS m
              FROM (SELECT u.user_id, tq_usage_term(u.gpu_seconds, u.ended_at, h) AS x
                      FROM job_usage u
                     WHERE p_users IS NULL OR u.user_id = ANY (p_users)) x
             WHERE x.x IS NOT NULL) t
     GROUP BY t.user_id;
END $$;

-- A new attempt adds its term (the common case: one row when a job leaves pending/running).
CREATE OR REPLACE FUNCTION tq_usage_scores_add() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    x constant double precision :=
        tq_usage_term(NEW.gpu_seconds, NEW.ended_at, tq_half_life_seconds());
BEGIN
    IF x IS NOT NULL THEN
        INSERT INTO user_usage_scores AS s (user_id, score) VALUES (NEW.user_id, x)
            ON CONFLICT (user_id) DO UPDATE SET score = tq_log2_add(s.score, EXCLUDED.score);
    END IF;
    RETURN NULL;
END $$;

-- A changed or deleted attempt (by hand: the programs only insert) cannot be subtracted in
-- log space without losing precision: its users are computed again.
CREATE OR REPLACE FUNCTION tq_usage_scores_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        PERFORM tq_usage_scores_recompute(
            ARRAY(SELECT user_id FROM old_rows UNION SELECT user_id FROM new_rows));
    ELSE
        PERFORM tq_usage_scores_recompute(ARRAY(SELECT DISTINCT user_id FROM old_rows));
    END IF;
    RETURN NULL;
END $$;

-- A new half-life weighs every attempt anew.
CREATE OR REPLACE FUNCTION tq_usage_scores_half_life() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (TG_OP <> 'DELETE' AND NEW.key = 'fair_share_half_life_seconds')
       OR (TG_OP <> 'INSERT' AND OLD.key = 'fair_share_half_life_seconds') THEN
        PERFORM tq_usage_scores_recompute(NULL);
    END IF;
    RETURN NULL;
END $$;

SELECT tq_ensure_trigger('job_usage', 'job_usage_score_add', 'AFTER INSERT',
    'FOR EACH ROW EXECUTE FUNCTION tq_usage_scores_add()');
-- (a trigger with transition tables takes one event)
SELECT tq_ensure_trigger('job_usage', 'job_usage_score_update', 'AFTER UPDATE',
    'REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT'
    ' EXECUTE FUNCTION tq_usage_scores_changed()');
SELECT tq_ensure_trigger('job_usage', 'job_usage_score_delete', 'AFTER DELETE',
    'REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT'
    ' EXECUTE FUNCTION tq_usage_scores_changed()');
SELECT tq_ensure_trigger('settings', 'settings_half_life', 'AFTER INSERT OR DELETE OR UPDATE',
    'FOR EACH ROW EXECUTE FUNCTION tq_usage_scores_half_life()');

-- The usage recorded before user_usage_scores existed (migration 0021 leaves this mark).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM settings WHERE key = 'usage_scores_stale') THEN
        PERFORM tq_usage_scores_recompute(NULL);
        DELETE FROM settings WHERE key = 'usage_scores_stale';
    END IF;
END $$;

-- The key fair share sorts by, from a user's score (NULL: no usage) and
-- epoch(now()) / half-life: the score, or -infinity when the decayed usage is under 2^-20
-- GPU-seconds (about a microsecond), which counts as none, so that submission order decides
-- between such users.
CREATE OR REPLACE FUNCTION tq_usage_key(p_score double precision, p_now double precision)
RETURNS double precision
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_score IS NULL OR p_score - p_now < -20 THEN '-Infinity'::double precision
                ELSE p_score END
$$;

-- epoch(now()) / half-life: the second argument of tq_usage_key.
CREATE OR REPLACE FUNCTION tq_usage_now() RETURNS double precision
LANGUAGE sql STABLE AS $$
    SELECT extract(epoch FROM now()) / tq_half_life_seconds()
$$;

-- The user's decayed usage now (GPU-seconds), as fair share weighs it.
CREATE OR REPLACE FUNCTION tq_recent_usage(p_user text) RETURNS double precision
LANGUAGE sql STABLE AS $$
    SELECT COALESCE((SELECT CASE WHEN k = '-Infinity' THEN 0 ELSE power(2, k - n) END
                       FROM (SELECT tq_usage_key(s.score, n.n) AS k, n.n
                               FROM user_usage_scores s, (SELECT tq_usage_now() AS n) n
                              WHERE s.user_id = p_user) x), 0)
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

-- Where queued jobs stand in the order of tq_pick: for each of p_ids that is queued, 1 + the
-- queued jobs that come before it (priority, its user's usage key, submission), not
-- counting jobs of other users held back by their quota (a held user's own jobs do count
-- for it). Jobs of p_ids that are not queued are left out. An estimate of order, not a
-- promise: the per-user limit lets a later job of another user start before jobs of a user
-- at the limit. One ranking of the queue serves a whole page of a list: its cost is that of
-- reading the queued rows once, whatever the page's length.
DROP FUNCTION IF EXISTS tq_queue_position(uuid);
CREATE OR REPLACE FUNCTION tq_queue_positions(p_ids uuid[])
RETURNS TABLE (id uuid, queue_position bigint)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    -- a constant of the query (in a subquery the planner would pull it up into every row:
    -- a settings lookup per queued job)
    usage_now constant double precision := tq_usage_now();
BEGIN
    IF NOT EXISTS (SELECT 1 FROM training_jobs t
                    WHERE t.id = ANY (p_ids) AND t.status = 'queued') THEN
        RETURN; -- nothing to rank: the queue is not read
    END IF;
    RETURN QUERY
    WITH held AS MATERIALIZED (
        -- the users over their quota (tq_user_over_quota, over the few users with a quota)
        SELECT l.user_id FROM user_limits l
         WHERE l.gpu_seconds_per_day <= tq_usage_last_day(l.user_id)
    ), asked AS MATERIALIZED (
        SELECT DISTINCT t.user_id FROM training_jobs t
         WHERE t.id = ANY (p_ids) AND t.status = 'queued'
    ), queue AS (
        SELECT q.id, q.user_id, q.priority, q.created_at,
               tq_usage_key(s.score, usage_now) AS k,
               q.user_id IN (SELECT h.user_id FROM held h) AS held
          FROM training_jobs q
          LEFT JOIN user_usage_scores s ON s.user_id = q.user_id
         WHERE q.status = 'queued'
    ), ranked AS (
        -- free: the jobs of users not held up to this one (itself included if free); own:
        -- a held job's rank among its user's jobs
        SELECT x.id, x.held,
               count(*) FILTER (WHERE NOT x.held) OVER (
                   ORDER BY x.priority DESC, x.k, x.created_at, x.id
                   ROWS UNBOUNDED PRECEDING) AS free,
               row_number() OVER (PARTITION BY x.user_id
                                  ORDER BY x.priority DESC, x.created_at, x.id) AS own
          FROM queue x
         WHERE NOT x.held OR x.user_id IN (SELECT a.user_id FROM asked a)
    )
    SELECT r.id, CASE WHEN r.held THEN r.free + r.own ELSE r.free END
      FROM ranked r WHERE r.id = ANY (p_ids);
END $$;

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
    -- few times faster than row by row. The audit rows say where the jobs came from, as a
    -- submission's say 'submitted over http' (35_submit.sql).
    PERFORM set_config('trainq.reason', 'published to amqp', true);
    added := ARRAY(SELECT tq_insert_jobs(bodies, 'amqp', NULL, NULL, reply_tos, correlation_ids));
    PERFORM set_config('trainq.reason', '', true);
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
-- the queue; for each: look at room and quota without a lock (users at their limit or over
-- their quota are passed over, not locked), try the user's lock, count again, lock the
-- job's row (SKIP LOCKED: a cancel or another picker holds it), check, claim. At most 50
-- candidates that had room are tried.
-- Room and quota are looked at in the loop, one user at a time in the order of the queue,
-- not as a filter of the query: the planner pushed such a filter down to every queued job
-- (a quota sum per job, 0.5 s for 11 000 queued jobs in test_indexes' database), and a
-- filter ahead of the sort would look at every user even when the first one can start.
-- The users with queued jobs are found by a skip scan of training_jobs_queued (one index
-- descent per user, the recursive CTE `u`) and each one's head by a LIMIT 1 on the same
-- index, so a pick reads about one entry per waiting user however long their backlogs are:
-- a DISTINCT ON over the queued rows read every one (10 users with 300 jobs each: 5.9 ms
-- against 1.7 ms; it grew with the backlog, this grows with the users).
CREATE OR REPLACE FUNCTION tq_user_can_start(p_user text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT (SELECT count(*) FROM training_jobs a
             WHERE a.user_id = p_user AND a.status IN ('pending', 'running'))
           < tq_user_max_active(p_user)
       AND NOT tq_user_over_quota(p_user)
$$;

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
    tried integer := 0;
    usage_now constant double precision := tq_usage_now();
BEGIN
    FOR c IN
        WITH RECURSIVE u AS (
            (SELECT t.user_id FROM training_jobs t WHERE t.status = 'queued'
              ORDER BY t.user_id LIMIT 1)
            UNION ALL
            SELECT (SELECT t.user_id FROM training_jobs t
                     WHERE t.status = 'queued' AND t.user_id > u.user_id
                     ORDER BY t.user_id LIMIT 1)
              FROM u WHERE u.user_id IS NOT NULL
        ), heads AS (
            SELECT h.* FROM u CROSS JOIN LATERAL (
                SELECT t.user_id, t.priority, t.created_at, t.id FROM training_jobs t
                 WHERE t.user_id = u.user_id AND t.status = 'queued'
                   AND (t.not_before IS NULL OR t.not_before <= now())
                 ORDER BY t.priority DESC, t.created_at, t.id
                 LIMIT 1) h
        )
        SELECT h.user_id FROM heads h
          LEFT JOIN user_usage_scores s ON s.user_id = h.user_id
         ORDER BY h.priority DESC, tq_usage_key(s.score, usage_now), h.created_at, h.id
    LOOP
        IF NOT tq_user_can_start(c.user_id) THEN
            CONTINUE;
        END IF;
        tried := tried + 1;
        EXIT WHEN tried > 50;
        IF NOT tq_try_lock_user(c.user_id) THEN
            busy := true;
            CONTINUE;
        END IF;
        -- again under the lock, in this statement's fresh snapshot
        IF NOT tq_user_can_start(c.user_id) THEN
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
            -- the job asked for what its user may not (over HTTP that is a 403): its class
            -- is the request's, config_error (tq_failure_class, 62_outcomes.sql)
            PERFORM set_config('trainq.failure_class', 'config_error', true);
            UPDATE training_jobs SET status = 'failed', error_message = reason,
                   completed_at = now()
             WHERE id = j.id;
            PERFORM set_config('trainq.failure_class', '', true);
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

-- Usage: one job_usage row per attempt that started (its container running), when the job
-- leaves running (any way: finished, failed, cancelled, retried, recovered by the reaper).
-- A claim that ends before its container ran (given back for a host's fault, the preflight,
-- a cancel while pending) is no attempt and charges its user nothing. Its start is the
-- claim's `pending` event (the slot was held from then) and its end the event just written for this change (the audit trigger
-- training_jobs_audit runs before this one: triggers fire in name order), so usage and the
-- audit trail agree to the microsecond.
CREATE OR REPLACE FUNCTION tq_record_usage() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz;
    t1 timestamptz;
BEGIN
    -- A run that ended while its row still said pending (the mark-running write failed,
    -- the container ran all the same) ran too: its exit code says so.
    IF NOT (OLD.status = 'running' OR (OLD.status = 'pending' AND NEW.exit_code IS NOT NULL))
       OR NEW.status IN ('pending', 'running') THEN
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
