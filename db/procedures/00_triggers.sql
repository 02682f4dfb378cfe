-- How the procedures files (re)create their triggers. Loaded first: the other files call
-- tq_ensure_trigger.
--
-- Every program start runs scripts/migrate.sh, which reloads these files. Replacing a
-- trigger function (CREATE OR REPLACE FUNCTION) takes no table lock and the trigger keeps
-- calling it, but DROP TRIGGER takes an ACCESS EXCLUSIVE lock on the table until the
-- reload commits, and would wait behind, and then block, every job and outbox transaction
-- (a relay holds outbox rows while it waits for broker confirms). So a trigger is dropped
-- and created again only when it is missing or its definition changed.

-- Makes trigger p_name on p_table exactly
--   CREATE TRIGGER p_name p_when ON p_table p_action
-- (p_when e.g. 'BEFORE INSERT OR UPDATE OF status', p_action e.g. 'FOR EACH ROW EXECUTE
-- FUNCTION f()'), spelled as pg_get_triggerdef prints it (events in its order: INSERT,
-- DELETE, UPDATE), or it is created again on every run (still correct, only slower).
CREATE OR REPLACE FUNCTION tq_ensure_trigger(p_table regclass, p_name text, p_when text,
                                             p_action text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    qualified text;
    want text;
    have text;
BEGIN
    SELECT format('%I.%I', n.nspname, c.relname) INTO qualified
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = p_table;
    want := format('CREATE TRIGGER %I %s ON %s %s', p_name, p_when, qualified, p_action);
    SELECT pg_get_triggerdef(t.oid) INTO have
      FROM pg_trigger t WHERE t.tgrelid = p_table AND t.tgname = p_name AND NOT t.tgisinternal;
    IF have IS DISTINCT FROM want THEN
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', p_name, qualified);
        EXECUTE want;
    END IF;
END $$;

-- Every NOTIFY of a trigger or procedure goes through tq_notify, so that a transaction can
-- defer its wake-ups to after its commit. Why: at commit, a transaction that notified takes
-- the database's notification lock and holds it through its WAL flush, so notifying
-- transactions commit one at a time (docs/performance.md, "What bounds submit").
-- A transaction that set trainq.notify to 'deferred' (set_config(..., true); tq_submit in
-- 35_submit.sql does) sends nothing here: the channel is added to trainq.notify_deferred (a
-- comma-separated list, each channel once), and its caller, once the commit has returned,
-- sends the notifications from a transaction of its own that needs no flush (tq_wake,
-- 35_submit.sql). The caller supplies the payloads then: for trainq_job_event the user, as
-- here. A wake-up that never comes only waits for the listener's poll.
CREATE OR REPLACE FUNCTION tq_notify(p_channel text, p_payload text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    d text;
BEGIN
    IF current_setting('trainq.notify', true) IS DISTINCT FROM 'deferred' THEN
        PERFORM pg_notify(p_channel, p_payload);
        RETURN;
    END IF;
    d := COALESCE(current_setting('trainq.notify_deferred', true), '');
    IF NOT p_channel = ANY (string_to_array(d, ',')) THEN
        PERFORM set_config('trainq.notify_deferred',
                           CASE WHEN d = '' THEN p_channel ELSE d || ',' || p_channel END, true);
    END IF;
END $$;
