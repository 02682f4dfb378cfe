-- Dispatch: waking the pickers when a slot frees, giving a claim back, recovering a job
-- from a lost worker, the reaper and the sweeper. Shared by every consumer (and usable by an
-- operator with psql). The claim itself is tq_pick (65_schedule.sql).
--
-- What must stay true:
--  * lock order: the user's lock (tq_lock_user, 10_users.sql) before any row lock, in
--    every transaction that changes a job's status; a function that takes several users'
--    locks takes them in user_id order;
--  * a queued job keeps its place in the order (65_schedule.sql) whatever happens to it:
--    a retry or a give-back leaves priority and created_at as they are;
--  * every transaction that frees a user's slot calls tq_release_parked, which wakes the
--    pickers at its commit.

-- A slot of the user was freed (or found free): wakes the pickers (NOTIFY trainq_runnable,
-- 65_schedule.sql) when the user has queued jobs that may now start. Must run in the
-- transaction that freed the slot, after that change: the notification is sent at its
-- commit, when the room is visible. Takes the user's lock, as the active-job guard does.
-- Returns how many of the user's queued jobs now have room (at most the free slots). The
-- name stays from when a release republished parked jobs through the outbox: a job's row
-- is now all a free slot needs (tq_pick).
CREATE OR REPLACE FUNCTION tq_release_parked(p_user text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n_free integer;
    n integer;
BEGIN
    PERFORM tq_lock_user(p_user);
    SELECT tq_user_max_active(p_user) - count(*) INTO n_free
      FROM training_jobs WHERE user_id = p_user AND status IN ('pending', 'running');
    IF n_free <= 0 THEN
        RETURN 0;
    END IF;
    SELECT count(*) INTO n FROM (SELECT 1 FROM training_jobs
                                  WHERE user_id = p_user AND status = 'queued'
                                  LIMIT n_free) q;
    IF n > 0 THEN
        PERFORM tq_notify('trainq_runnable', '');
    END IF;
    RETURN n;
END $$;

-- Give a claimed job back: it could not start on this host for a reason of the host's
-- (dockerd away, image or runtime missing, container name still being removed). It keeps its
-- place in the order (queued, picked again after a short backoff, not_before) and its
-- attempts.
-- A cancellation requested meanwhile is completed instead of requeueing a job nobody wants;
-- after p_max_host_retries give-backs the job fails with the last reason. Fenced: returns
-- 'fenced' when the claim is no longer the caller's. Returns 'requeued' | 'cancelled' |
-- 'failed' | 'fenced'.
CREATE OR REPLACE FUNCTION tq_give_back(p_id uuid, p_fencing bigint, p_reason text,
                                        p_max_host_retries integer) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    j training_jobs%ROWTYPE;
    outcome text;
BEGIN
    SELECT * INTO j FROM training_jobs WHERE id = p_id;
    IF NOT FOUND THEN
        RETURN 'fenced';
    END IF;
    -- The user's lock before the row lock, as everywhere (claims, releases, the guard).
    PERFORM tq_lock_user(j.user_id);
    SELECT * INTO j FROM training_jobs
     WHERE id = p_id AND fencing_token = p_fencing AND status IN ('pending', 'running')
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 'fenced';
    END IF;
    IF j.cancel_requested_at IS NOT NULL THEN
        outcome := 'cancelled';
        PERFORM set_config('trainq.reason', p_reason || '; cancellation completed', true);
        UPDATE training_jobs SET status = 'cancelled', completed_at = now(),
               lease_expires_at = NULL, fencing_token = fencing_token + 1, parked_at = NULL
         WHERE id = p_id;
    ELSIF j.host_retries + 1 >= p_max_host_retries THEN
        outcome := 'failed';
        PERFORM set_config('trainq.reason', '', true);
        UPDATE training_jobs SET status = 'failed', completed_at = now(), lease_expires_at = NULL,
               fencing_token = fencing_token + 1, host_retries = host_retries + 1,
               attempts = GREATEST(attempts - 1, 0),
               error_message = format('%s; no worker could start it (%s tries)', p_reason,
                                      j.host_retries + 1)
         WHERE id = p_id;
    ELSE
        outcome := 'requeued';
        PERFORM set_config('trainq.reason', p_reason, true);
        -- An attempt that never started does not count against max_attempts.
        UPDATE training_jobs SET status = 'queued', worker_id = NULL, lease_expires_at = NULL,
               container_id = NULL, fencing_token = fencing_token + 1,
               attempts = GREATEST(attempts - 1, 0), host_retries = host_retries + 1,
               -- Whatever kept it from starting may still be there a moment later (a name
               -- being removed, a host about to notice it is broken): 2, 4, 8 … 60 s.
               not_before = now() + make_interval(secs => least(60, 2 ^ (j.host_retries + 1)))
         WHERE id = p_id;
    END IF;
    PERFORM set_config('trainq.reason', '', true);
    PERFORM tq_release_parked(j.user_id);
    RETURN outcome;
END $$;

-- Take an active job away from its worker: retry it (queued, so it keeps its place in the
-- order and is picked at once if the user has room), fail it after
-- p_max_attempts, or finish a requested cancellation. The fencing token moves on, so a
-- worker that comes back late cannot overwrite the outcome. With p_only_expired the lease
-- is re-checked under the row lock (the reaper's race with a renewing worker).
-- The user's lock before the row lock (a plain read of user_id takes no row lock, and a
-- job's user never changes).
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
               container_id = NULL, fencing_token = fencing_token + 1
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

-- The reaper: recovers jobs whose lease expired. One reaper at a time cluster-wide (a
-- try-lock on key (7412, 0): the others skip this round). It takes the users' locks of the
-- jobs it recovers in user order, as the sweeper does: both hold several users' locks to
-- the end of their statement, and one order means they never deadlock with each other.
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

-- The sweeper: wakes the pickers when some queued job has room (a notification that a
-- crash or a lost connection swallowed). Nothing else is left to repair: a queued job's row
-- is all a free slot needs (tq_pick, 65_schedule.sql), so a message that left the queue
-- without a claim (dead-lettered by the delivery limit, purged, lost with a broker's disk)
-- strands nothing. p_stranded_seconds and p_in_queue are kept for the callers and unused.
-- Returns how many users have a queued job with room.
CREATE OR REPLACE FUNCTION tq_sweep(p_stranded_seconds integer, p_in_queue bigint) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    SELECT count(*) INTO n FROM (
        SELECT DISTINCT q.user_id FROM training_jobs q
         WHERE q.status = 'queued'
           AND (SELECT count(*) FROM training_jobs a
                 WHERE a.user_id = q.user_id AND a.status IN ('pending', 'running'))
               < tq_user_max_active(q.user_id)) u;
    IF n > 0 THEN
        PERFORM tq_notify('trainq_runnable', '');
    END IF;
    RETURN n;
END $$;
