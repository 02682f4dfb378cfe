-- Dispatch: when a parked job was last released.
-- The dispatch functions this migration first created (tq_release_parked, tq_recover_job,
-- tq_reap, tq_sweep) live in db/procedures/40_dispatch.sql.

-- When a parked job was last released (republished); a release is not repeated within a
-- couple of seconds so job ends and the sweeper do not flood the queue with copies.
ALTER TABLE training_jobs ADD COLUMN released_at timestamptz;
