-- A submission over HTTP in one round trip: producer/pdb.c (tq_pdb_submit) calls tq_submit
-- once inside its transaction instead of sending the idempotency lookup, the dataset check,
-- the reason, the job insert and the outbox insert one by one (5 round trips → 1; issue 11).
--
-- What must stay true:
--  * the job row (tq_insert_jobs, from the message), its outbox row with the same bytes and
--    (by trigger tq_audit_status) its audit row are written in the caller's transaction, so
--    they commit together before the producer answers 200;
--  * a request that carries an Idempotency-Key already used by this user creates nothing:
--    'replayed' with that job's id when the canonical request hashes the same, 'conflict'
--    (with the id) when it does not;
--  * the dataset must exist ('dataset_missing') and be the user's ('dataset_forbidden');
--    nothing is written otherwise;
--  * with p_hook_url (the submit body's webhook_url; p_hook_events its webhook_events), the
--    job's own webhook row (job_webhooks) and the user's default secret (p_new_secret, kept
--    if they have one) go in before the job row, whose insert trigger tq_webhook_enqueue
--    reads them for job.queued (db/procedures/80_webhooks.sql); job_webhooks' foreign key
--    is deferred to commit for that reason. They come after the idempotency lookup and the
--    dataset check, so a replay, a conflict or a refused dataset writes nothing;
--  * two concurrent requests with the same key: the second one's tq_insert_jobs raises
--    unique_violation, which the producer retries (its idempotency lookup then finds the
--    first one's job);
--  * it sends no NOTIFY: the transaction's notifications are deferred (tq_notify,
--    00_triggers.sql) and named in deferred_notify, and the caller wakes their listeners
--    with tq_wake once the commit has returned (producer/wake.c). A submission's commit
--    then never waits on the notification lock, which serialises notifying commits.
-- submitted_id: the new job (p_job_id), or the job the key already names.
-- deferred_notify: the channels to wake after the commit (comma-separated), '' if none.
-- (The signature before the webhooks, gone so no caller meets a copy without them.)
DROP FUNCTION IF EXISTS tq_submit(text, uuid, uuid, text, text, text, text);
DROP FUNCTION IF EXISTS tq_submit(text, uuid, uuid, text, text, text, text, text, jsonb, text);
-- (Before p_cap. A caller of the older signature, 11 arguments, resolves to this one.)
DROP FUNCTION IF EXISTS tq_submit(text, uuid, uuid, text, text, text, text, text, jsonb, text, text);
-- (Before deferred_notify: CREATE OR REPLACE cannot change the OUT columns.)
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'tq_submit'
                  AND NOT 'deferred_notify' = ANY (COALESCE(proargnames, '{}'))) THEN
        DROP FUNCTION tq_submit(text, uuid, uuid, text, text, text, text, text, jsonb, text, text);
    END IF;
END $$;
CREATE OR REPLACE FUNCTION tq_submit(p_user text, p_job_id uuid, p_dataset_id uuid,
                                     p_routing_key text, p_message text,
                                     p_idempotency_key text, p_canonical text,
                                     p_hook_url text, p_hook_events jsonb, p_new_secret text,
                                     p_priority text, p_cap text DEFAULT NULL,
                                     OUT outcome text, OUT submitted_id text,
                                     OUT max_priority text, OUT deferred_notify text)
LANGUAGE plpgsql AS $$
DECLARE
    v_id    uuid;
    v_same  boolean;
    v_owner text;
    -- p_cap: the user's max_priority as the producer's rate-limit statement read it from
    -- user_limits a moment before (one probe of user_limits per submission, not three)
    -- (normalised: a value that is no priority's name counts as none given)
    v_cap   constant text := COALESCE(tq_priority_name(tq_priority_rank(p_cap)),
                                      tq_user_max_priority(p_user));
    v_canonical text := p_canonical;
BEGIN
    -- p_priority: the submission's, NULL when it named none. An explicit one must be within
    -- the user's cap (65_schedule.sql), normal too, before anything else: a request that
    -- asks for more than the user may have is refused, also under a key used before.
    IF p_priority IS NOT NULL AND tq_priority_rank(p_priority) > tq_priority_rank(v_cap) THEN
        outcome := 'priority_forbidden';
        max_priority := v_cap;
        RETURN;
    END IF;
    -- None named is normal, or the user's cap when that is lower (tq_insert_jobs). The
    -- request hash is over the submission with its defaults applied, so under a cap of low
    -- "no priority" and "low" are the same request: p_canonical (tq_submission_to_json)
    -- spells a priority other than normal last, and so it is spelled here.
    IF p_priority IS NULL AND tq_priority_rank(v_cap) < tq_priority_rank('normal') THEN
        v_canonical := left(p_canonical, -1) || ',"priority":' || to_json(v_cap)::text || '}';
    END IF;
    IF p_idempotency_key IS NOT NULL THEN
        SELECT j.id, j.request_hash IS NOT DISTINCT FROM md5(v_canonical)
          INTO v_id, v_same
          FROM training_jobs j
         WHERE j.user_id = p_user AND j.idempotency_key = p_idempotency_key;
        IF FOUND THEN
            submitted_id := v_id::text;
            outcome := CASE WHEN v_same THEN 'replayed' ELSE 'conflict' END;
            RETURN;
        END IF;
    END IF;

    SELECT d.user_id INTO v_owner FROM datasets d WHERE d.id = p_dataset_id;
    IF NOT FOUND THEN
        outcome := 'dataset_missing';
        RETURN;
    END IF;
    IF v_owner <> p_user THEN
        outcome := 'dataset_forbidden';
        RETURN;
    END IF;

    PERFORM set_config('trainq.reason', 'submitted over http', true);
    PERFORM set_config('trainq.notify', 'deferred', true);
    IF p_hook_url IS NOT NULL THEN
        INSERT INTO webhook_user_secrets (user_id, secret) VALUES (p_user, p_new_secret)
        ON CONFLICT (user_id) DO NOTHING;
        INSERT INTO job_webhooks (job_id, url, events)
        VALUES (p_job_id, p_hook_url, ARRAY(SELECT jsonb_array_elements_text(p_hook_events)));
    END IF;
    PERFORM tq_insert_jobs(ARRAY[p_message], 'http', p_idempotency_key, md5(v_canonical),
                           p_default_priority => LEAST(1, tq_priority_rank(v_cap))::smallint);
    INSERT INTO outbox (job_id, routing_key, payload)
    VALUES (p_job_id, p_routing_key, p_message);
    outcome := 'created';
    submitted_id := p_job_id::text;
    deferred_notify := COALESCE(current_setting('trainq.notify_deferred', true), '');
END $$;

-- The wake-ups of submissions that have committed (tq_submit's deferred_notify), for many
-- at once: producer/wake.c gathers them and sends one call per round. p_channels: the
-- channels (JSON array of strings); p_users (JSON array): the users whose streams
-- trainq_job_event wakes, one notification each; an empty array wakes every stream (the
-- producer's list of them overflowed). Its own transaction, committed without waiting for
-- the WAL flush: it writes nothing that must survive a crash, so the notification lock is
-- held only for the moment of the commit.
CREATE OR REPLACE FUNCTION tq_wake(p_channels jsonb, p_users jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    ch text;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    FOR ch IN SELECT jsonb_array_elements_text(p_channels) LOOP
        IF ch = 'trainq_job_event' AND jsonb_array_length(p_users) > 0 THEN
            PERFORM pg_notify(ch, u) FROM jsonb_array_elements_text(p_users) AS u;
        ELSE
            PERFORM pg_notify(ch, '');
        END IF;
    END LOOP;
END $$;
