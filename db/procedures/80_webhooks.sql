-- Webhook deliveries are written in the transaction of the status change (or progress
-- update) that causes them (db/migrations/0009_webhooks.sql, docs/webhooks.md). The event of
-- a status s is 'job.' || s; 'pending' has none (a claim, not something a web app acts
-- on). job.progress is opt-in and made at most once per 10 % or 60 s of a job.

-- Whether event ev of job j has a target: one of the user's enabled endpoints, or the job's
-- own URL, wants it. (PL/pgSQL, planned once per session: it runs in every status change.)
CREATE OR REPLACE FUNCTION tq_webhook_wanted(j training_jobs, ev text) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM webhook_endpoints e WHERE e.user_id = j.user_id
                     AND e.disabled_at IS NULL AND ev = ANY (e.events))
        OR EXISTS (SELECT 1 FROM job_webhooks w WHERE w.job_id = j.id AND w.stopped_at IS NULL
                     AND ev = ANY (w.events));
END $$;

-- Writes one delivery of event ev of job j per target, with sequence number seq (the
-- job's next, tq_job_event_seq in 85_events.sql: webhooks and AMQP events share one
-- numbering, so a job's numbers may skip ones its webhooks did not get). Returns the
-- number of deliveries written.
DROP FUNCTION IF EXISTS tq_webhook_write(training_jobs, text);
CREATE OR REPLACE FUNCTION tq_webhook_write(j training_jobs, ev text, seq bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    n1 bigint;
    n2 bigint;
BEGIN
    IF NOT tq_webhook_wanted(j, ev) THEN
        RETURN 0;
    END IF;
    INSERT INTO webhook_deliveries (user_id, job_id, endpoint_id, target, url, event, sequence)
    SELECT j.user_id, j.id, e.id, e.id::text, e.url, ev, seq
      FROM webhook_endpoints e
     WHERE e.user_id = j.user_id AND e.disabled_at IS NULL AND ev = ANY (e.events);
    GET DIAGNOSTICS n1 = ROW_COUNT;
    INSERT INTO webhook_deliveries (user_id, job_id, endpoint_id, target, url, event, sequence)
    SELECT j.user_id, j.id, NULL, 'job', w.url, ev, seq
      FROM job_webhooks w
     WHERE w.job_id = j.id AND w.stopped_at IS NULL AND ev = ANY (w.events);
    GET DIAGNOSTICS n2 = ROW_COUNT;
    -- Wakes the producers' senders at commit (producer/webhooks.c); a missed one waits for
    -- their poll. Postgres folds identical notifications of one transaction into one, so a
    -- transaction that changes many jobs still sends a single one, and the empty payload
    -- keeps that fold a cheap comparison.
    IF n1 + n2 > 0 THEN
        PERFORM tq_notify('trainq_webhook', '');
    END IF;
    RETURN n1 + n2;
END $$;

-- Every status change also makes an AMQP event (85_events.sql), with the same number.
CREATE OR REPLACE FUNCTION tq_webhook_enqueue() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    seq bigint;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.status IS NOT DISTINCT FROM OLD.status THEN
        RETURN NULL;
    END IF;
    -- the insert's event is the job's first (tq_job_event_seq: it writes no row)
    seq := CASE WHEN TG_OP = 'INSERT' THEN 1 ELSE tq_job_event_seq(NEW.id) END;
    IF NEW.status IN ('queued', 'running', 'completed', 'failed', 'cancelled') THEN
        PERFORM tq_webhook_write(NEW, 'job.' || NEW.status, seq);
    END IF;
    PERFORM tq_event_write(NEW, NEW.status, seq);
    RETURN NULL;
END $$;

SELECT tq_ensure_trigger('training_jobs', 'training_jobs_webhooks',
    'AFTER INSERT OR UPDATE OF status', 'FOR EACH ROW EXECUTE FUNCTION tq_webhook_enqueue()');

-- job.progress of a running job: the first progress, then whenever it enters a new tenth
-- or 60 s after the last one. The same throttle makes the opt-in AMQP progress events
-- (tq_events_progress_on, 85_events.sql).
CREATE OR REPLACE FUNCTION tq_webhook_progress() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    st webhook_job_state;
    wh boolean;
    amqp boolean;
    seq bigint;
BEGIN
    IF NEW.progress IS NULL OR NEW.progress IS NOT DISTINCT FROM OLD.progress
       OR NEW.status <> 'running' THEN
        RETURN NULL;
    END IF;
    SELECT * INTO st FROM webhook_job_state WHERE job_id = NEW.id;
    IF st.progress_at IS NOT NULL
       AND floor(NEW.progress * 10) <= floor(st.progress * 10)
       AND st.progress_at > now() - interval '60 seconds' THEN
        RETURN NULL;
    END IF;
    wh := tq_webhook_wanted(NEW, 'job.progress');
    amqp := tq_events_progress_on();
    IF NOT wh AND NOT amqp THEN
        RETURN NULL;
    END IF;
    seq := tq_job_event_seq(NEW.id);
    PERFORM tq_webhook_write(NEW, 'job.progress', seq);
    IF amqp THEN
        PERFORM tq_event_write(NEW, 'progress', seq);
    END IF;
    UPDATE webhook_job_state SET progress = NEW.progress, progress_at = now()
     WHERE job_id = NEW.id;
    RETURN NULL;
END $$;

-- Named to sort after training_jobs_webhooks: AFTER triggers of one statement fire in name
-- order, and a status change's event must take its sequence number before the progress
-- that the same statement sets (mark-running sets progress 0). Its name before that,
-- training_jobs_webhook_progress, sorted first ('_' < 's'): job.progress took sequence n
-- and job.running n + 1. That trigger is dropped here when present (only then, so no
-- reload locks the table for it): a database from before, or a program of an older
-- release that reloaded its own procedures meanwhile.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'training_jobs'::regclass
                  AND tgname = 'training_jobs_webhook_progress') THEN
        DROP TRIGGER training_jobs_webhook_progress ON training_jobs;
    END IF;
END $$;
SELECT tq_ensure_trigger('training_jobs', 'training_jobs_webhooks_progress',
    'AFTER UPDATE OF progress', 'FOR EACH ROW EXECUTE FUNCTION tq_webhook_progress()');

-- A sender's take (producer/pdb.c, tq_pdb_hooks_take): the id of one due delivery, leased
-- for lease_s seconds (due again then, attempts + 1), or NULL. The candidate is the first
-- pending one of its job and target (a target gets a job's events in sequence order) whose
-- endpoint has fewer than cap deliveries leased and whose user fewer than user_cap (the
-- user's cap also bounds a job's own webhook_url, which has no endpoint): one user's slow
-- receivers can hold at most user_cap senders, all producers together.
-- What is full is read once from the leased rows (few: one per request in flight) and the
-- candidate scan only compares with it; that is judged in this statement's snapshot, so
-- only roughly. The exact cap: takers of one user's deliveries queue on the user's advisory
-- lock, and each counts the leases (the user's, and the endpoint's, which belongs to that
-- user) in a statement that starts after the previous taker committed — so the caller must
-- commit right after this call (everything else it needs it reads afterwards): the lock is
-- held until then, and it is what one user's takers wait for. Not worth an fsync: a lease
-- lost in a Postgres crash only sends the row again (at least once, same webhook-id).
DROP FUNCTION IF EXISTS tq_webhook_take(int, int);
CREATE OR REPLACE FUNCTION tq_webhook_take(cap int, user_cap int, lease_s int) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    did bigint;
    ep uuid;
    uid text;
    full_eps uuid[];
    full_users text[];
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    SELECT coalesce(array_agg(f.endpoint_id), '{}') INTO full_eps
      FROM (SELECT endpoint_id FROM webhook_deliveries
             WHERE leased_until > now() AND endpoint_id IS NOT NULL
             GROUP BY endpoint_id HAVING count(*) >= cap) f;
    SELECT coalesce(array_agg(f.user_id), '{}') INTO full_users
      FROM (SELECT user_id FROM webhook_deliveries WHERE leased_until > now()
             GROUP BY user_id HAVING count(*) >= user_cap) f;
    SELECT d.id, d.endpoint_id, d.user_id INTO did, ep, uid FROM webhook_deliveries d
     WHERE d.state = 'pending' AND d.due_at <= now()
       AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e WHERE e.state = 'pending'
             AND e.job_id = d.job_id AND e.target = d.target AND e.sequence < d.sequence)
       AND d.user_id <> ALL (full_users)
       AND (d.endpoint_id IS NULL OR d.endpoint_id <> ALL (full_eps))
     ORDER BY d.due_at, d.id LIMIT 1 FOR UPDATE OF d SKIP LOCKED;
    IF did IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM tq_lock_webhook_user(uid);
    IF (SELECT count(*) FROM webhook_deliveries
         WHERE user_id = uid AND leased_until > now()) >= user_cap THEN
        RETURN NULL; -- another taker filled it meanwhile: the next round
    END IF;
    IF ep IS NOT NULL AND (SELECT count(*) FROM webhook_deliveries
                            WHERE endpoint_id = ep AND leased_until > now()) >= cap THEN
        RETURN NULL;
    END IF;
    UPDATE webhook_deliveries d SET due_at = now() + make_interval(secs => lease_s),
           leased_until = now() + make_interval(secs => lease_s),
           attempts = d.attempts + 1, last_attempt_at = now()
     WHERE d.id = did;
    RETURN did;
END $$;
