-- Dispatch helpers shared by every consumer (and usable by an operator with psql).

-- When a parked job was last released (republished); a release is not repeated within a
-- couple of seconds so job ends and the sweeper do not flood the queue with copies.
ALTER TABLE training_jobs ADD COLUMN released_at timestamptz;

-- The trainq.job.v1 body of a job, rebuilt from its row (jobs published straight to AMQP
-- have no outbox row to copy). Keys follow docs/message-contract.md.
CREATE FUNCTION tq_job_message(p_id uuid) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'schema', 'trainq.job.v1',
        'job_id', j.id,
        'user_id', j.user_id,
        'submitted_at', to_char(j.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
        'dataset_id', j.dataset_id,
        'name', j.name,
        'type', j.type,
        'base_model', j.base_model,
        'config', j.config,
        'trigger_words', to_json(j.trigger_words))::text
    FROM training_jobs j WHERE j.id = p_id
$$;

-- Release (republish through the outbox) the oldest parked jobs of a user, as many as the
-- user has free active slots. Must run in the transaction that freed the slot (or found it
-- free), after that change, so that the release is durable exactly when the slot is.
-- Takes the same per-user lock as the active-job guard: releases and claims of one user
-- are serialised, which is what keeps each user's jobs in submission order.
CREATE FUNCTION tq_release_parked(p_user text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n_free integer;
    n integer;
BEGIN
    PERFORM pg_advisory_xact_lock(7411, hashtext(p_user));
    SELECT tq_user_max_active(p_user) - count(*) INTO n_free
      FROM training_jobs WHERE user_id = p_user AND status IN ('pending', 'running');
    IF n_free <= 0 THEN
        RETURN 0;
    END IF;
    WITH next AS (
        SELECT id, type FROM training_jobs
         WHERE user_id = p_user AND status = 'queued' AND parked_at IS NOT NULL
         ORDER BY created_at, id
         LIMIT n_free
    ), fresh AS (
        UPDATE training_jobs t SET released_at = now()
          FROM next
         WHERE t.id = next.id
           AND (t.released_at IS NULL OR t.released_at < now() - interval '2 seconds')
        RETURNING t.id, t.type
    )
    INSERT INTO outbox (job_id, routing_key, payload)
    SELECT id, type, tq_job_message(id) FROM fresh;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

-- Take an active job away from its worker: retry it (queued and parked, so it keeps its
-- place in its user's order and is released at once if the user has room), fail it after
-- p_max_attempts, or finish a requested cancellation. The fencing token moves on, so a
-- worker that comes back late cannot overwrite the outcome. With p_only_expired the lease
-- is re-checked under the row lock (the reaper's race with a renewing worker).
CREATE FUNCTION tq_recover_job(p_id uuid, p_reason text, p_max_attempts integer,
                               p_only_expired boolean) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    j training_jobs%ROWTYPE;
    outcome text;
BEGIN
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
-- try-lock: the others skip this round).
CREATE FUNCTION tq_reap(p_max_attempts integer) RETURNS TABLE (job_id uuid, outcome text)
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    IF NOT pg_try_advisory_xact_lock(7412, 0) THEN
        RETURN;
    END IF;
    FOR r IN SELECT id, worker_id FROM training_jobs
              WHERE status IN ('pending', 'running') AND lease_expires_at < now()
              ORDER BY lease_expires_at LIMIT 100
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
-- crash lost). Returns how many jobs it released.
CREATE FUNCTION tq_sweep() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    u record;
    n integer := 0;
BEGIN
    FOR u IN SELECT DISTINCT user_id FROM training_jobs
              WHERE status = 'queued' AND parked_at IS NOT NULL
                AND (released_at IS NULL OR released_at < now() - interval '30 seconds')
    LOOP
        n := n + tq_release_parked(u.user_id);
    END LOOP;
    RETURN n;
END $$;
