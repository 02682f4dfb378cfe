-- A job's status event before its progress event when one statement changes both (the
-- consumer's mark-running sets status 'running' and progress 0 in one UPDATE). AFTER
-- triggers of one event fire in name order, and the progress trigger's old name,
-- training_jobs_webhook_progress, sorts before training_jobs_webhooks ('_' < 's'): it took
-- the job's next sequence number first, so job.progress (sequence n) came before
-- job.running (n + 1), against docs/webhooks.md ("order a job's events by sequence").
-- Renamed here, so the trigger the procedures reload ensures (80_webhooks.sql) is this one
-- and no reload has to drop a trigger (00_triggers.sql: that would lock the table).
-- A fresh database has no trigger yet at this point: the reload creates it with the name.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'training_jobs'::regclass
                  AND tgname = 'training_jobs_webhook_progress') THEN
        ALTER TRIGGER training_jobs_webhook_progress ON training_jobs
            RENAME TO training_jobs_webhooks_progress;
    END IF;
END $$;
