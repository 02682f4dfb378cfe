-- Nothing stranded (issue "nothing stranded, nothing failed by a broken host"): the columns
-- and indexes of the stranded sweep and of give-backs. The functions this migration first
-- created (tq_lock_user, tq_give_back, the two-argument tq_sweep) live in db/procedures/
-- (10_users.sql, 40_dispatch.sql).

-- How often a job was given back because a host could not start it (image missing, runtime
-- missing, disk full). Bounded separately from `attempts`, which counts runs that started:
-- a broken host must not use up a good job's attempts, but a job no host can start must
-- still end, with the reason.
ALTER TABLE training_jobs ADD COLUMN host_retries integer NOT NULL DEFAULT 0;

-- The stranded sweep looks up a job's latest publish; the cancel path deletes by job_id.
CREATE INDEX outbox_job ON outbox (job_id);
-- Queued jobs that are not parked: expected to be in the queue (the stranded sweep's scan).
CREATE INDEX training_jobs_unparked ON training_jobs (created_at, id)
    WHERE status = 'queued' AND parked_at IS NULL;
