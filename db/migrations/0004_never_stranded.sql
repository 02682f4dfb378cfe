-- Nothing stranded (issue "nothing stranded, nothing failed by a broken host").
--
-- What must stay true after this migration: every job that is `queued` is either
--   * in the trainq.jobs queue (published recently, or behind a backlog),
--   * parked (its user is at the limit, or older jobs of the user wait), or
--   * found by the sweeper within p_stranded_seconds (+ one sweep interval) and republished.
-- The queue is a cache of the job rows and the outbox: a message that left it without a claim
-- (dead-lettered by the delivery limit, purged, lost with a broker's disk) is repaired from
-- the row, never by an operator.

-- The per-user lock: every transaction that changes a job's status takes it first, before
-- any row lock (claims, releases, give-backs, recoveries, the producer's cancel and delete,
-- and the status guard of 0001, which spells the same key). One name for the key, so code
-- written from here on cannot take a different one.
CREATE FUNCTION tq_lock_user(p_user text) RETURNS void
LANGUAGE sql AS $$ SELECT pg_advisory_xact_lock(7411, hashtext(p_user)) $$;

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

-- Give a claimed job back: it could not start on this host for a reason of the host's
-- (dockerd away, image or runtime missing, container name still being removed). It keeps its
-- place in its user's order (parked, released if the user has room, after a short backoff)
-- and its attempts.
-- A cancellation requested meanwhile is completed instead of requeueing a job nobody wants;
-- after p_max_host_retries give-backs the job fails with the last reason. Fenced: returns
-- 'fenced' when the claim is no longer the caller's. Returns 'requeued' | 'cancelled' |
-- 'failed' | 'fenced'.
CREATE FUNCTION tq_give_back(p_id uuid, p_fencing bigint, p_reason text,
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
               parked_at = now(), released_at = NULL
         WHERE id = p_id;
    END IF;
    PERFORM set_config('trainq.reason', '', true);
    PERFORM tq_release_parked(j.user_id);
    IF outcome = 'requeued' THEN
        -- Whatever kept it from starting may still be there a moment later (a name being
        -- removed, a host about to notice it is broken): its release waits 2, 4, 8 … 60 s.
        UPDATE outbox SET available_at = now() + make_interval(secs => least(60, 2 ^ (j.host_retries + 1)))
         WHERE job_id = p_id AND published_at IS NULL;
    END IF;
    RETURN outcome;
END $$;

-- The sweeper, now with the stranded repair. p_stranded_seconds bounds how long a queued job
-- may go without being claimed, parked or republished. p_in_queue is the number of ready
-- messages in trainq.jobs (a passive declare; NULL when unknown): the queue is FIFO, so the
-- newest p_in_queue unparked jobs may still be waiting there behind a backlog and are left
-- alone; older ones have certainly left it (or were never there) and are parked, then
-- released in their user's order. With p_in_queue NULL only parked jobs are swept.
-- Returns how many jobs it released.
DROP FUNCTION tq_sweep();
CREATE FUNCTION tq_sweep(p_stranded_seconds integer, p_in_queue bigint) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    u record;
    n integer := 0;
    t interval := make_interval(secs => p_stranded_seconds);
BEGIN
    IF p_in_queue IS NOT NULL THEN
        -- No outbox row of the job unpublished (the relay will publish it) or published
        -- within t (it may be on its way through the queue).
        WITH stranded AS (
            SELECT j.id FROM training_jobs j
             WHERE j.status = 'queued' AND j.parked_at IS NULL AND j.created_at < now() - t
               AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.job_id = j.id
                                  AND (o.published_at IS NULL OR o.published_at > now() - t))
             ORDER BY j.created_at DESC, j.id DESC
            OFFSET p_in_queue
             LIMIT 1000
        )
        UPDATE training_jobs t2 SET parked_at = now(), released_at = NULL
          FROM stranded s
         WHERE t2.id = s.id AND t2.status = 'queued' AND t2.parked_at IS NULL;
    END IF;
    -- Users in one order (their locks are held to the end): two sweepers, or a sweeper and
    -- the reaper (tq_reap, 0005), never wait for each other in a cycle.
    FOR u IN SELECT DISTINCT user_id FROM training_jobs
              WHERE status = 'queued' AND parked_at IS NOT NULL
                AND (released_at IS NULL OR released_at < now() - t)
              ORDER BY user_id
    LOOP
        n := n + tq_release_parked(u.user_id);
    END LOOP;
    RETURN n;
END $$;
