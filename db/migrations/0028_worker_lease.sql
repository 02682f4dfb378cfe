-- A worker's TRAINQ_LEASE_SECONDS, written with each heartbeat: a heartbeat older than it
-- means the worker is gone (its jobs are the reaper's), which GET /api/admin/workers says
-- as `gone` and the dashboard shows, instead of a fixed 60 s that was wrong both ways.
ALTER TABLE workers ADD COLUMN IF NOT EXISTS lease_seconds integer;
