-- Fair share without a sum per user per pick (issue 11, "Known cost").
--
-- A user's decayed usage at time t is  sum_i g_i * 2^(-(t - e_i) / h)  (g_i the GPU-seconds of
-- an attempt that ended at e_i, h the half-life): the factor 2^(-t / h) is common to every
-- user, so users compare the same at every t by  score = log2(sum_i g_i * 2^(e_i / h)),  which
-- changes only when an attempt ends. One row per user with usage holds it, kept by triggers
-- on job_usage and on the half-life setting (db/procedures/65_schedule.sql); the pick and
-- queue_position read it instead of summing job_usage for every queued user.
CREATE TABLE user_usage_scores (
    user_id text PRIMARY KEY,
    score   double precision NOT NULL
);

-- The scores of the usage recorded before this table are computed once, by the procedures
-- (they hold the formula), when migrate.sh reloads them right after this migration.
INSERT INTO settings (key, value) VALUES ('usage_scores_stale', 'true')
    ON CONFLICT (key) DO UPDATE SET value = 'true';
