-- The per-user rules: how many jobs a user may have active, and the one lock that
-- serialises every status change of one user.
--
-- Loaded by scripts/migrate.sh on every run, in file-name order (C locale) after the
-- numbered migrations: this file comes first because the others call its functions.

-- The per-user active limit: override, else the cluster default.
CREATE OR REPLACE FUNCTION tq_user_max_active(p_user text) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT COALESCE(
        (SELECT max_active FROM user_limits WHERE user_id = p_user),
        (SELECT value::integer FROM settings WHERE key = 'default_max_active_per_user'),
        2)
$$;

-- The per-user lock, held to commit. Every transaction that changes a job's status takes it
-- first, before any row lock: claims, releases, give-backs, recoveries, the producer's
-- cancel and delete, and the status guard (20_guards.sql) on every status change. A
-- transaction that locked a job's row first and then reached the guard would deadlock with
-- one that holds the user's lock and waits for that row.
-- The key (7411, hashtext(user)) is spelled here only: every caller goes through this
-- function, so no code can take a different lock for the same user.
CREATE OR REPLACE FUNCTION tq_lock_user(p_user text) RETURNS void
LANGUAGE sql AS $$ SELECT pg_advisory_xact_lock(7411, hashtext(p_user)) $$;

-- Every advisory lock key of trainq is spelled in this file (scripts/migrate.sh's own key
-- and the reaper's (7412, 0) in 40_dispatch.sql aside). The webhook senders' per-user
-- lock (7414, hashtext(user)), held to commit: takers of one user's deliveries queue on it,
-- so the counts of the user's and its endpoint's leases that each makes next are exact
-- (tq_webhook_take, 80_webhooks.sql; the concurrency caps of docs/webhooks.md). Not the
-- user's job lock (7411): a lease must not wait for a claim, nor a claim for a lease.
-- (7413 was the per-endpoint lock before the user's cap; an endpoint belongs to one user.)
DROP FUNCTION IF EXISTS tq_lock_webhook_endpoint(uuid);
CREATE OR REPLACE FUNCTION tq_lock_webhook_user(p_user text) RETURNS void
LANGUAGE sql AS $$ SELECT pg_advisory_xact_lock(7414, hashtext(p_user)) $$;

-- The user's lock without waiting (tq_pick, 65_schedule.sql): a picker that already holds
-- other users' locks must not wait for one out of user_id order; a user whose lock is held
-- is being claimed or released by someone else and is skipped this time. false: not taken.
CREATE OR REPLACE FUNCTION tq_try_lock_user(p_user text) RETURNS boolean
LANGUAGE sql AS $$ SELECT pg_try_advisory_xact_lock(7411, hashtext(p_user)) $$;
