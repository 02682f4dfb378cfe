-- Releases skip parked rows that another transaction holds (a claim of that very job, or a
-- cancel): waiting for them while holding the user's advisory lock could deadlock with
-- a transaction that locked the row first and then needs that lock (the status guard takes
-- it). The skipped job is being handled by whoever holds it; the sweeper covers the rest.
CREATE OR REPLACE FUNCTION tq_release_parked(p_user text) RETURNS integer
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
         FOR UPDATE SKIP LOCKED
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
