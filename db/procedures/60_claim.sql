-- The check of a job's dataset before it is claimed: tq_pick (65_schedule.sql) calls it
-- under the user's lock with the job's row locked. The claim used to be tq_claim here, one
-- per delivered message; 0012 replaced it with the pick (docs/architecture.md, "Who runs
-- next").
--
-- What must stay true: the reason strings are part of the contract (job_events, logs and
-- tests read them).
--
-- Idempotent (migrate.sh reloads this file on every run): CREATE OR REPLACE only.

-- Checked here too: direct publishers are not checked by the producer, and a dataset can
-- disappear between submission and dispatch. A job whose dataset cannot be used fails
-- durably (no slot changes hands). storage_path NULL: reason says why the job failed.
-- p_path_max is the longest storage_path the consumer holds (cdb.h TQ_CLAIM_PATH_BUF - 1):
-- a path cut short could name another directory.
CREATE OR REPLACE FUNCTION tq_claim_check_dataset(p_id uuid, p_user text, p_dataset uuid,
                                                  p_path_max integer,
                                                  OUT storage_path text, OUT reason text)
LANGUAGE plpgsql AS $$
DECLARE
    d record;
BEGIN
    SELECT s.user_id, s.storage_path INTO d FROM datasets s WHERE s.id = p_dataset;
    IF NOT FOUND THEN
        reason := format('dataset %s not found', p_dataset);
    ELSIF d.user_id <> p_user THEN
        reason := format('dataset %s belongs to another user', p_dataset);
    ELSIF octet_length(d.storage_path) > p_path_max THEN
        reason := format('dataset %s storage_path is longer than %s bytes', p_dataset,
                         p_path_max);
    ELSE
        storage_path := d.storage_path;
        RETURN;
    END IF;
    UPDATE training_jobs SET status = 'failed', error_message = reason, completed_at = now(),
           parked_at = NULL
     WHERE id = p_id AND status = 'queued';
END $$;

