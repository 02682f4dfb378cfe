-- Retention (issue 11, item 5): what keeps outbox, rate_limits and, when the operator asks
-- for it, finished jobs from growing without bound. Called by every producer's retention
-- thread (producer/retention.c, through tq_pdb_retention_prune) every
-- TRAINQ_RETENTION_INTERVAL_SECONDS, over and over while a batch comes back full.
--
-- What must stay true:
--  * one call is one short transaction that deletes at most p_batch outbox rows, p_batch
--    rate-limit rows and p_job_batch jobs (with their rows in other tables), each chosen
--    FOR UPDATE SKIP LOCKED: several producers prune at once without waiting on each other,
--    and nothing the relay, a claim or a request holds is waited for;
--  * an outbox row goes only once published (published_at set) and older than
--    p_outbox_seconds: an unpublished row is never pruned, whatever its age;
--  * a webhook delivery goes once it is delivered or failed and its last attempt (its event
--    when it failed unsent) is older than p_outbox_seconds: a pending delivery is never
--    pruned, whatever its age (GET /api/training/webhooks/{id}/deliveries shows the rest);
--  * a rate-limit row goes once its one-minute window ended more than a minute ago (a
--    counter of a past window is never read again: tq_pdb_rate_hit counts in the current
--    window only);
--  * with p_job_seconds > 0 (0: keep jobs forever), a job goes only when it is terminal
--    (completed, failed, cancelled) since more than p_job_seconds and has no unpublished
--    outbox row; with it go its audit rows (job_events, whose append-only trigger lets a
--    delete through only under trainq.retention = 'prune', set here for that statement),
--    its outbox rows, and by ON DELETE CASCADE its output, artifacts and webhook rows.
--    A job its user deleted (its row gone, its audit rows kept: deleted_jobs, migration
--    0026) goes the same way p_job_seconds after the delete.
--    Once its audit rows are gone, tq_insert_job no longer knows the id: a message for it
--    that arrived after the retention period would make the job anew (docs/operations.md,
--    "Retention": keep p_job_seconds well above how long a message can wait in the queue).
-- Every selection runs on an index (db/migrations/0011_indexes.sql, 0018; test_indexes.py).
-- The audit rows of the jobs ids, which their guard trigger lets only retention delete
-- (trainq.retention = 'prune', for this statement alone).
CREATE OR REPLACE FUNCTION tq_prune_job_events(ids uuid[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('trainq.retention', 'prune', true);
    DELETE FROM job_events WHERE job_id = ANY (ids);
    PERFORM set_config('trainq.retention', '', true);
END $$;

-- (The signature before webhook_rows, dropped: OUT columns cannot change in place.)
DROP FUNCTION IF EXISTS tq_retention_prune(int, int, int, int);
CREATE OR REPLACE FUNCTION tq_retention_prune(p_outbox_seconds int, p_job_seconds int,
                                              p_batch int, p_job_batch int,
                                              OUT outbox_rows bigint, OUT rate_rows bigint,
                                              OUT jobs bigint, OUT webhook_rows bigint)
LANGUAGE plpgsql AS $$
DECLARE
    ids uuid[];
BEGIN
    -- Oldest first on outbox_published (a range of the index, never the table): the order
    -- makes the planner walk the index even when most rows are due.
    DELETE FROM outbox WHERE id IN (
        SELECT o.id FROM outbox o
         WHERE o.published_at < now() - make_interval(secs => p_outbox_seconds)
         ORDER BY o.published_at LIMIT p_batch FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS outbox_rows = ROW_COUNT;

    DELETE FROM rate_limits WHERE ctid = ANY (ARRAY(
        SELECT r.ctid FROM rate_limits r
         WHERE r.window_start < date_trunc('minute', now()) - interval '1 minute'
         ORDER BY r.window_start LIMIT p_batch FOR UPDATE SKIP LOCKED));
    GET DIAGNOSTICS rate_rows = ROW_COUNT;

    -- Oldest first on webhook_deliveries_done (0018), as the outbox above; the ids as an
    -- array, so the delete is p_batch probes of the primary key (with IN (…) the planner
    -- may join against a scan of the whole table).
    DELETE FROM webhook_deliveries WHERE id = ANY (ARRAY(
        SELECT d.id FROM webhook_deliveries d
         WHERE d.state <> 'pending'
           AND COALESCE(d.last_attempt_at, d.event_at)
               < now() - make_interval(secs => p_outbox_seconds)
         ORDER BY COALESCE(d.last_attempt_at, d.event_at) LIMIT p_batch
           FOR UPDATE SKIP LOCKED));
    GET DIAGNOSTICS webhook_rows = ROW_COUNT;

    jobs := 0;
    IF p_job_seconds > 0 THEN
        SELECT array_agg(f.id) INTO ids FROM (
            SELECT j.id FROM training_jobs j
             WHERE j.status IN ('completed', 'failed', 'cancelled')
               AND j.completed_at < now() - make_interval(secs => p_job_seconds)
               AND NOT EXISTS (SELECT 1 FROM outbox o
                                WHERE o.job_id = j.id AND o.published_at IS NULL)
             ORDER BY j.completed_at LIMIT p_job_batch FOR UPDATE SKIP LOCKED) f;
        IF ids IS NOT NULL THEN
            PERFORM tq_prune_job_events(ids);
            DELETE FROM outbox WHERE job_id = ANY (ids);
            DELETE FROM training_jobs WHERE id = ANY (ids);
            GET DIAGNOSTICS jobs = ROW_COUNT;
        END IF;
        -- deleted by their users long enough ago: what is left of them (deleted_jobs_at)
        SELECT array_agg(f.job_id) INTO ids FROM (
            SELECT d.job_id FROM deleted_jobs d
             WHERE d.deleted_at < now() - make_interval(secs => p_job_seconds)
               -- a message of it still to go out (one a relay held while the job was
               -- deleted): the audit rows stay to mark it a duplicate when it arrives
               AND NOT EXISTS (SELECT 1 FROM outbox o
                                WHERE o.job_id = d.job_id AND o.published_at IS NULL)
             ORDER BY d.deleted_at LIMIT p_job_batch FOR UPDATE SKIP LOCKED) f;
        IF ids IS NOT NULL THEN
            PERFORM tq_prune_job_events(ids);
            DELETE FROM outbox WHERE job_id = ANY (ids) AND published_at IS NOT NULL;
            DELETE FROM deleted_jobs WHERE job_id = ANY (ids);
            jobs := jobs + cardinality(ids);
        END IF;
    END IF;
END $$;
