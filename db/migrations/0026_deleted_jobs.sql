-- A job its user DELETEs (DELETE /api/training/jobs/{id}) keeps its audit rows: they are
-- the trail, and tq_insert_jobs reads them to refuse a late message for the id. But job
-- retention found jobs through training_jobs, so the audit rows of a deleted job were
-- never pruned, whatever TRAINQ_JOB_RETENTION_SECONDS said: job_events grew without
-- bound. The delete now leaves a tombstone here; retention (tq_retention_prune,
-- db/procedures/95_retention.sql) prunes the job's remaining rows that long after the
-- delete, oldest first on this index, and the tombstone with them.
CREATE TABLE IF NOT EXISTS deleted_jobs (
    job_id     uuid PRIMARY KEY,
    deleted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS deleted_jobs_at ON deleted_jobs (deleted_at);

-- Jobs deleted before this migration: their audit rows without a job row. One pass over
-- job_events (a hash anti-join), once; dated by their last event.
INSERT INTO deleted_jobs (job_id, deleted_at)
SELECT e.job_id, max(e.at) FROM job_events e
 WHERE NOT EXISTS (SELECT 1 FROM training_jobs j WHERE j.id = e.job_id)
 GROUP BY e.job_id
ON CONFLICT (job_id) DO NOTHING;
