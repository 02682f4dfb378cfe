-- Indexes for retention and for the queries test_indexes.py found on a sequential scan of a
-- big table (issue 11, items 4 and 5). Numbered 0011: assigned to this branch.

-- Retention's pick of finished jobs (tq_retention_prune, db/procedures/95_retention.sql):
-- the oldest terminal jobs first, without reading the live ones.
CREATE INDEX training_jobs_finished ON training_jobs (completed_at)
    WHERE status IN ('completed', 'failed', 'cancelled');

-- Retention's pick of rate-limit rows of past windows.
CREATE INDEX rate_limits_window ON rate_limits (window_start);

-- Retention's pick of published outbox rows, oldest first. The relay's mark of a row
-- (published_at set) already rewrites every index entry of the row (the column is in the
-- predicate of outbox_unpublished), so this adds one index insert per published row.
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;
