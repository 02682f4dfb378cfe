-- Every job has its message (0006). In a migration of its own, after 0006, so that it also
-- completes databases that applied an earlier 0006 and then got rows without a message from
-- programs that did not write one yet.
--
-- Rows without one get, once, the body of their first outbox row (what the producer
-- published for a submission), else the body rebuilt from the row with the keys of
-- docs/message-contract.md, as the SQL encoder that the column replaced (tq_job_message)
-- rebuilt it for every release. New rows always come with theirs (tq_insert_job).
UPDATE training_jobs j SET message = COALESCE(
    (SELECT o.payload FROM outbox o
      WHERE o.job_id = j.id AND o.payload LIKE '{"schema":"trainq.job.v1",%'
      ORDER BY o.id LIMIT 1),
    json_build_object(
        'schema', 'trainq.job.v1',
        'job_id', j.id,
        'user_id', j.user_id,
        'submitted_at', to_char(j.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
        'dataset_id', j.dataset_id,
        'name', j.name,
        'type', j.type,
        'base_model', j.base_model,
        'config', j.config,
        'trigger_words', to_json(j.trigger_words))::text)
  WHERE message IS NULL;

ALTER TABLE training_jobs ALTER COLUMN message SET NOT NULL;

-- Retired writers of the body: releases republish training_jobs.message, and the claim
-- creates a direct-published job's row with tq_insert_job like the producer.
DROP FUNCTION IF EXISTS tq_job_message(uuid);
DROP FUNCTION IF EXISTS tq_claim_ensure_row(jsonb, text);
