-- The trainq.job.v1 body of every job, exactly as shared/tq_msg.c encoded it when the job
-- was created (by the producer for a submission, by the claiming consumer for a message
-- published straight to AMQP). A release republishes these bytes, so a released job
-- carries the same canonical body as its first publication and no second encoder exists.
ALTER TABLE training_jobs ADD COLUMN message text;

-- Jobs created before this migration: their body rebuilt once from the row, with the keys
-- of docs/message-contract.md (the SQL encoder this column replaces, kept here only as the
-- record of what these rows were given).
UPDATE training_jobs j SET message = json_build_object(
        'schema', 'trainq.job.v1',
        'job_id', j.id,
        'user_id', j.user_id,
        'submitted_at', to_char(j.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
        'dataset_id', j.dataset_id,
        'name', j.name,
        'type', j.type,
        'base_model', j.base_model,
        'config', j.config,
        'trigger_words', to_json(j.trigger_words))::text
  WHERE message IS NULL;
