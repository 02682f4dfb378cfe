-- training_jobs.max_attempts (0001, DEFAULT 3) was never read: the consumer's
-- TRAINQ_MAX_ATTEMPTS is the one cap on a job's attempts (tq_retry, db/procedures/62_outcomes.sql,
-- is passed it), and a per-row copy that disagreed with it (3 against the default 4) only
-- misled whoever read the table.
ALTER TABLE training_jobs DROP COLUMN IF EXISTS max_attempts;
