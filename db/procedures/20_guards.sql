-- Invariants the database enforces on every write, whatever program or operator makes it:
--  * at most tq_user_max_active(user) active (pending|running) jobs per user;
--  * every status change is appended to job_events in the same transaction;
--  * job_events is append-only.
-- Triggers through tq_ensure_trigger (00_triggers.sql), so that a reload leaves them alone.

-- Serialise all status changes of one user (tq_lock_user, 10_users.sql) and refuse a
-- transition that would make more than tq_user_max_active(user) jobs active. The lock is
-- held to commit, and the count runs in a fresh snapshot (volatile plpgsql under READ
-- COMMITTED), so two racing transactions on different hosts cannot both see room for one
-- more.
CREATE OR REPLACE FUNCTION tq_guard_active() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    n_active integer;
    lim integer;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.status IS NOT DISTINCT FROM OLD.status THEN
        RETURN NEW;
    END IF;
    PERFORM tq_lock_user(NEW.user_id);
    IF NEW.status IN ('pending', 'running')
       AND (TG_OP = 'INSERT' OR OLD.status NOT IN ('pending', 'running')) THEN
        IF current_setting('transaction_isolation') <> 'read committed' THEN
            RAISE EXCEPTION 'active-job guard needs READ COMMITTED isolation';
        END IF;
        SELECT count(*) INTO n_active FROM training_jobs
         WHERE user_id = NEW.user_id AND status IN ('pending', 'running') AND id <> NEW.id;
        lim := tq_user_max_active(NEW.user_id);
        IF n_active >= lim THEN
            RAISE EXCEPTION 'user % already has % active jobs (limit %)', NEW.user_id, n_active, lim
                USING ERRCODE = 'TQ001';
        END IF;
    END IF;
    -- never before the row's created_at, which is clock_timestamp() (30_jobs.sql), later
    -- than the transaction's now() that inserts it
    NEW.updated_at := GREATEST(now(), NEW.created_at);
    RETURN NEW;
END $$;

SELECT tq_ensure_trigger('training_jobs', 'training_jobs_guard_active',
    'BEFORE INSERT OR UPDATE OF status', 'FOR EACH ROW EXECUTE FUNCTION tq_guard_active()');

-- The reason of a transition: the session's trainq.reason (set with set_config(...,
-- true) inside the transaction), else the job's error_message for failures.
CREATE OR REPLACE FUNCTION tq_audit_status() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    r text := NULLIF(current_setting('trainq.reason', true), '');
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.status IS NOT DISTINCT FROM OLD.status THEN
        RETURN NULL;
    END IF;
    IF r IS NULL AND NEW.status = 'failed' THEN
        r := NEW.error_message;
    END IF;
    INSERT INTO job_events (job_id, user_id, from_status, to_status, worker_id, fencing_token, reason,
                            failure_class)
    VALUES (NEW.id, NEW.user_id, CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END, NEW.status,
            NEW.worker_id, NEW.fencing_token, r,
            tq_event_failure_class(TG_OP, CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END,
                                   NEW.status, NEW.failure_class)); -- 62_outcomes.sql
    -- Wakes the producers' event streams (producer/stream.c) at commit; the payload is the
    -- user, whose events they read after their cursor. A missed one only waits for a poll.
    PERFORM tq_notify('trainq_job_event', NEW.user_id);
    RETURN NULL;
END $$;

SELECT tq_ensure_trigger('training_jobs', 'training_jobs_audit',
    'AFTER INSERT OR UPDATE OF status', 'FOR EACH ROW EXECUTE FUNCTION tq_audit_status()');

-- The audit trail is append-only. The one exception: retention deletes the audit rows of
-- the finished jobs it prunes (tq_retention_prune, db/procedures/95_retention.sql, which
-- sets trainq.retention for that statement only).
CREATE OR REPLACE FUNCTION tq_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('trainq.retention', true) = 'prune' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END $$;

SELECT tq_ensure_trigger('job_events', 'job_events_append_only',
    'BEFORE DELETE OR UPDATE', 'FOR EACH ROW EXECUTE FUNCTION tq_refuse_change()');
