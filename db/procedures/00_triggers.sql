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
