-- Who runs next (issue 14): priority, fair share, usage and quotas.
--
-- The order of starting is decided in Postgres (db/procedures/65_schedule.sql, tq_pick): a
-- free slot takes the next runnable queued job by priority, then the least decayed recent
-- GPU usage of its user, then submission order. The broker message is intake only: the
-- consumer makes the row durable (queued) and acks (docs/architecture.md).

-- 0 low, 1 normal (the default), 2 high: a number so that the order is an index scan.
ALTER TABLE training_jobs
    ADD COLUMN priority smallint NOT NULL DEFAULT 1 CHECK (priority BETWEEN 0 AND 2),
    -- GPUs the current claim holds (0 on a CPU slot): set by the claim, read when the
    -- attempt ends (job_usage)
    ADD COLUMN gpus integer NOT NULL DEFAULT 0 CHECK (gpus >= 0),
    -- A job given back by a host that could not start it waits until then (backoff).
    ADD COLUMN not_before timestamptz;

-- The order of the queue: per user, priority first, then submission (tq_pick).
CREATE INDEX training_jobs_queued ON training_jobs (user_id, priority DESC, created_at, id)
    WHERE status = 'queued';

ALTER TABLE user_limits
    -- the highest priority the user may ask for; NULL: normal
    ADD COLUMN max_priority text CHECK (max_priority IN ('low', 'normal', 'high')),
    -- GPU-seconds the user may use in any rolling 24 hours; NULL: no quota
    ADD COLUMN gpu_seconds_per_day double precision CHECK (gpu_seconds_per_day >= 0);

-- The half-life of the recent usage that fair share compares (seconds).
INSERT INTO settings (key, value) VALUES ('fair_share_half_life_seconds', '86400')
    ON CONFLICT (key) DO NOTHING;

-- One row per attempt, written by a trigger when the job leaves pending/running: the GPUs
-- it held and the wall time between its claim and its end (both read from job_events, so
-- the figures are those of the audit trail). outcome is the status it went to ('queued'
-- for a retry or a give-back).
CREATE TABLE job_usage (
    id           bigserial PRIMARY KEY,
    job_id       uuid NOT NULL,
    user_id      text NOT NULL,
    worker_id    text,
    attempt      integer NOT NULL,
    gpus         integer NOT NULL,
    started_at   timestamptz NOT NULL,
    ended_at     timestamptz NOT NULL,
    wall_seconds double precision NOT NULL CHECK (wall_seconds >= 0),
    gpu_seconds  double precision NOT NULL CHECK (gpu_seconds >= 0),
    outcome      text NOT NULL
);
CREATE INDEX job_usage_user_ended ON job_usage (user_id, ended_at);
CREATE INDEX job_usage_ended ON job_usage (ended_at);

-- The claim per delivered message (60_claim.sql before 0012) is gone: a free slot picks.
DROP FUNCTION IF EXISTS tq_claim(text, text, integer, integer);
DROP FUNCTION IF EXISTS tq_claim(text, text, integer, integer, text, text); -- with reply_to (0015)
DROP FUNCTION IF EXISTS tq_claim_check_job(uuid, text, uuid);
DROP FUNCTION IF EXISTS tq_claim_room_or_park(uuid, text);
DROP FUNCTION IF EXISTS tq_claim_take(uuid, text, text, integer);
