-- One lock order for every transaction that changes a job's status: the user's advisory lock
-- (7411, hashtext(user_id)) first, then row locks. The status guard trigger takes the user's
-- lock on every status change, so a transaction that locked the job's row first and then
-- reaches the guard deadlocks with one that holds the user's lock and waits for that row (a
-- claim, a cancel). The reaper's recovery locked the row first; it now takes the user's lock
-- before it (a plain read of user_id takes no row lock, and a job's user never changes).
CREATE OR REPLACE FUNCTION tq_recover_job(p_id uuid, p_reason text, p_max_attempts integer,
                               p_only_expired boolean) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    j training_jobs%ROWTYPE;
    outcome text;
BEGIN
    PERFORM tq_lock_user(user_id) FROM training_jobs WHERE id = p_id;
    SELECT * INTO j FROM training_jobs
     WHERE id = p_id AND status IN ('pending', 'running') FOR UPDATE;
    IF NOT FOUND OR (p_only_expired AND j.lease_expires_at >= now()) THEN
        RETURN 'skipped';
    END IF;
    IF j.cancel_requested_at IS NOT NULL THEN
        outcome := 'cancelled';
        PERFORM set_config('trainq.reason', p_reason || '; cancellation completed', true);
        UPDATE training_jobs SET status = 'cancelled', completed_at = now(), lease_expires_at = NULL,
               fencing_token = fencing_token + 1
         WHERE id = p_id;
    ELSIF j.attempts < p_max_attempts THEN
        outcome := 'retried';
        PERFORM set_config('trainq.reason',
            format('%s; retrying (attempt %s of %s)', p_reason, j.attempts + 1, p_max_attempts), true);
        UPDATE training_jobs SET status = 'queued', worker_id = NULL, lease_expires_at = NULL,
               container_id = NULL, fencing_token = fencing_token + 1,
               parked_at = now(), released_at = NULL
         WHERE id = p_id;
    ELSE
        outcome := 'failed';
        PERFORM set_config('trainq.reason', '', true);
        UPDATE training_jobs SET status = 'failed', completed_at = now(), lease_expires_at = NULL,
               fencing_token = fencing_token + 1,
               error_message = format('%s; gave up after %s attempts', p_reason, j.attempts)
         WHERE id = p_id;
    END IF;
    PERFORM set_config('trainq.reason', '', true);
    PERFORM tq_release_parked(j.user_id);
    RETURN outcome;
END $$;

-- The reaper takes the users' locks of the jobs it recovers in user order, as the sweeper
-- does (0004): both hold several users' locks to the end of their statement, and one order
-- means they never deadlock with each other.
CREATE OR REPLACE FUNCTION tq_reap(p_max_attempts integer) RETURNS TABLE (job_id uuid, outcome text)
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    IF NOT pg_try_advisory_xact_lock(7412, 0) THEN
        RETURN;
    END IF;
    FOR r IN SELECT e.id, e.worker_id FROM (
                 SELECT id, worker_id, user_id FROM training_jobs
                  WHERE status IN ('pending', 'running') AND lease_expires_at < now()
                  ORDER BY lease_expires_at LIMIT 100) e
              ORDER BY e.user_id, e.id
    LOOP
        job_id := r.id;
        outcome := tq_recover_job(r.id, format('worker %s stopped renewing its lease', r.worker_id),
                                  p_max_attempts, true);
        IF outcome <> 'skipped' THEN
            RETURN NEXT;
        END IF;
    END LOOP;
END $$;
