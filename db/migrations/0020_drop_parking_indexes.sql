-- Parking is gone (db/procedures/65_schedule.sql: a free slot picks from the queued rows,
-- on training_jobs_queued), and nothing sets parked_at any more. Its two indexes were still
-- written: every submission added an entry to training_jobs_unparked. (The column stays:
-- rows parked before the pick design may still carry a time, and the admin overview reads
-- it.)
DROP INDEX IF EXISTS training_jobs_unparked;
DROP INDEX IF EXISTS training_jobs_parked;
