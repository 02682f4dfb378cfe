-- Who asked for a job's cancellation: 'user' (its owner, POST /api/training/jobs/{id}/cancel)
-- or 'operator' (POST /api/admin/jobs/{id}/cancel); NULL when nobody did. The first request
-- is kept. The audit row of the cancellation says which ("cancelled by user", "cancelled by
-- an operator"), also when the consumer ends a running job for it (consumer/cdb.c,
-- tq_cdb_finish), where it said "cancelled by user" for an operator's cancel as well.
-- No CHECK constraint: the two writers are the producer's cancel, and a constraint on
-- training_jobs is checked on every insert of a submission.
ALTER TABLE training_jobs ADD COLUMN IF NOT EXISTS cancel_requested_by text;
