-- Dispatch: releasing parked jobs, giving a claim back, recovering a job from a lost
-- worker, the reaper and the sweeper. Shared by every consumer (and usable by an operator
-- with psql). The claim itself is tq_claim (60_claim.sql).
--
-- What must stay true:
--  * lock order: the user's lock (tq_lock_user, 10_users.sql) before any row lock, in
--    every transaction that changes a job's status; a function that takes several users'
--    locks takes them in user_id order;
--  * a parked job keeps its place in its user's submission order and is released (put
--    back in the outbox) when the user has room, in the transaction that made the room;
--  * a release republishes training_jobs.message, the bytes of the job's first
--    publication (30_jobs.sql), never a new encoding.

-- Release (republish through the outbox) the oldest parked jobs of a user, as many as the
-- user has free active slots. Must run in the transaction that freed the slot (or found it
-- free), after that change, so that the release is durable exactly when the slot is.
-- Takes the user's lock, as the active-job guard does: releases and claims of one user are
-- serialised, which is what keeps each user's jobs in submission order.
-- Skips parked rows that another transaction holds (a claim of that very job, or a cancel):
-- waiting for them while holding the user's lock could deadlock with a transaction that
-- locked the row first and then needs that lock. The skipped job is being handled by
-- whoever holds it; the sweeper covers the rest. A release is not repeated within a couple
-- of seconds, so job ends and the sweeper do not flood the queue with copies.
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
    WITH next AS (
        SELECT id FROM training_jobs
         WHERE user_id = p_user AND status = 'queued' AND parked_at IS NOT NULL
         ORDER BY created_at, id
         LIMIT n_free
         FOR UPDATE SKIP LOCKED
    ), fresh AS (
        UPDATE training_jobs t SET released_at = now()
          FROM next
         WHERE t.id = next.id
           AND (t.released_at IS NULL OR t.released_at < now() - interval '2 seconds')
        RETURNING t.id, t.type, t.message
    )
    INSERT INTO outbox (job_id, routing_key, payload)
    SELECT id, type, message FROM fresh;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

-- Give a claimed job back: it could not start on this host for a reason of the host's
-- (dockerd away, image or runtime missing, container name still being removed). It keeps its
-- place in its user's order (parked, released if the user has room, after a short backoff)
-- and its attempts.
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
               parked_at = now(), released_at = NULL
         WHERE id = p_id;
    END IF;
    PERFORM set_config('trainq.reason', '', true);
    PERFORM tq_release_parked(j.user_id);
    IF outcome = 'requeued' THEN
        -- Whatever kept it from starting may still be there a moment later (a name being
        -- removed, a host about to notice it is broken): its release waits 2, 4, 8 … 60 s.
        UPDATE outbox SET available_at = now() + make_interval(secs => least(60, 2 ^ (j.host_retries + 1)))
         WHERE job_id = p_id AND published_at IS NULL AND exchange = 'trainq.jobs';
    END IF;
    RETURN outcome;
END $$;

-- Take an active job away from its worker: retry it (queued and parked, so it keeps its
-- place in its user's order and is released at once if the user has room), fail it after
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

-- The sweeper: releases parked jobs of every user who has room (repairs a release that a
-- crash lost), with the stranded repair. p_stranded_seconds bounds how long a queued job
-- may go without being claimed, parked or republished. p_in_queue is the number of ready
-- messages in trainq.jobs (a passive declare; NULL when unknown): the queue is FIFO, so the
-- newest p_in_queue unparked jobs may still be waiting there behind a backlog and are left
-- alone; older ones have certainly left it (or were never there) and are parked, then
-- released in their user's order. With p_in_queue NULL only parked jobs are swept.
-- Returns how many jobs it released.
--
-- What must stay true: every job that is `queued` is either in the trainq.jobs queue
-- (published recently, or behind a backlog), parked, or found here within
-- p_stranded_seconds (+ one sweep interval) and republished. The queue is a cache of the
-- job rows and the outbox: a message that left it without a claim (dead-lettered by the
-- delivery limit, purged, lost with a broker's disk) is repaired from the row.
CREATE OR REPLACE FUNCTION tq_sweep(p_stranded_seconds integer, p_in_queue bigint) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    u record;
    n integer := 0;
    t interval := make_interval(secs => p_stranded_seconds);
BEGIN
    IF p_in_queue IS NOT NULL THEN
        -- No job message of the job unpublished (the relay will publish it) or published
        -- within t (it may be on its way through the queue); its events (85_events.sql) do
        -- not count.
        WITH stranded AS (
            SELECT j.id FROM training_jobs j
             WHERE j.status = 'queued' AND j.parked_at IS NULL AND j.created_at < now() - t
               AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.job_id = j.id
                                  AND o.exchange = 'trainq.jobs'
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
    -- the reaper (tq_reap), never wait for each other in a cycle.
    FOR u IN SELECT DISTINCT user_id FROM training_jobs
              WHERE status = 'queued' AND parked_at IS NOT NULL
                AND (released_at IS NULL OR released_at < now() - t)
              ORDER BY user_id
    LOOP
        n := n + tq_release_parked(u.user_id);
    END LOOP;
    RETURN n;
END $$;
