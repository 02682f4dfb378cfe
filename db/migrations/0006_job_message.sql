-- The trainq.job.v1 body of every job, exactly as shared/tq_msg.c encoded it when the job
-- was created (by the producer for a submission, by the claiming consumer for a message
-- published straight to AMQP), written by tq_insert_job (db/procedures/30_jobs.sql). A
-- release republishes these bytes, so a released job carries the same canonical body as
-- its first publication and no second encoder exists. Rows older than this column get
-- theirs, and the column its NOT NULL, in 0007.
ALTER TABLE training_jobs ADD COLUMN message text;
