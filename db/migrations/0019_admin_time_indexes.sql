-- The admin API's reads over time (db/procedures/90_admin.sql), found reading all of
-- training_jobs by tests/integration/test_indexes.py (200 000 jobs over 46 days).
--
-- GET /api/admin/jobs (newest first, any user) and the overview's submissions per minute
-- of the last hour: by submission time. training_jobs_user_created leads with user_id and
-- serves neither.
CREATE INDEX training_jobs_created ON training_jobs (created_at, id);

-- The overview's dispatch latency of the jobs started in the last hour.
CREATE INDEX training_jobs_started ON training_jobs (started_at) WHERE started_at IS NOT NULL;
