-- Failure classes (issue 14, "Outcomes"; docs/architecture.md, "Failure classes"): why the
-- job's last attempt ended without success, as one word a program can act on, and the
-- actionable message for a person. Written by the trigger tq_failure_class
-- (db/procedures/62_outcomes.sql) on every status change out of an active state, from what
-- the writer set in the transaction (trainq.failure_class / trainq.failure_message);
-- cleared when the job completes. job_events carries the class of the transition that
-- ended an attempt, so the audit trail says what happened to each one.
ALTER TABLE training_jobs
    ADD COLUMN failure_class text
        CHECK (failure_class IN ('oom', 'trainer_error', 'config_error', 'dataset_error',
                                 'hub_error', 'timeout', 'host_lost', 'host_error',
                                 'cancelled')),
    ADD COLUMN failure_message text CHECK (length(failure_message) <= 8192);

ALTER TABLE job_events ADD COLUMN failure_class text;
