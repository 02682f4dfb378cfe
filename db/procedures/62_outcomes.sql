-- Outcomes of attempts (issue 14 items 5-7): the failure class of every attempt that ended
-- without success, set on the job row by one trigger whatever statement ends the attempt
-- (the consumer's finish and retry, a give-back, the reaper's recovery, a claim-time
-- failure), and the per-class retry decision.
--
-- What must stay true:
--  * a job leaving pending/running for queued or failed, and every cancelled job, has a
--    failure_class; a completed job has none;
--  * the class comes from the writer (set_config('trainq.failure_class', ..., true) in the
--    same transaction); a writer that says nothing is the reaper: the worker stopped
--    renewing its lease, so the class is host_lost.

CREATE OR REPLACE FUNCTION tq_failure_class() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    cls text := NULLIF(current_setting('trainq.failure_class', true), '');
    msg text := NULLIF(current_setting('trainq.failure_message', true), '');
BEGIN
    IF NEW.status IS NOT DISTINCT FROM OLD.status THEN
        RETURN NEW;
    END IF;
    IF NEW.status = 'completed' THEN
        NEW.failure_class := NULL;
        NEW.failure_message := NULL;
    ELSIF NEW.status = 'cancelled' THEN
        -- also a queued job cancelled by its user: no earlier attempt's class stays behind
        NEW.failure_class := 'cancelled';
        NEW.failure_message := left(COALESCE(msg, NULLIF(current_setting('trainq.reason', true), '')),
                                    8192);
    ELSIF OLD.status IN ('pending', 'running') AND NEW.status IN ('queued', 'failed') THEN
        NEW.failure_class := COALESCE(cls, 'host_lost');
        NEW.failure_message := left(COALESCE(msg, NULLIF(current_setting('trainq.reason', true), ''),
                                             NEW.error_message), 8192);
    ELSIF NEW.status = 'failed' THEN
        -- Failed at the claim, before any attempt: its dataset row is missing or not the
        -- user's (60_claim.sql), or it ran out of attempts (the last attempt's class stays).
        NEW.failure_class := COALESCE(cls, CASE WHEN NEW.error_message LIKE 'dataset %'
                                                THEN 'dataset_error' END, OLD.failure_class);
        NEW.failure_message := left(COALESCE(msg, NEW.error_message), 8192);
    END IF;
    RETURN NEW;
END $$;

SELECT tq_ensure_trigger('training_jobs', 'training_jobs_failure_class',
    'BEFORE UPDATE OF status', 'FOR EACH ROW EXECUTE FUNCTION tq_failure_class()');

-- The class job_events records for a transition (tq_audit_status, 20_guards.sql): the
-- job's class when the transition ends an attempt, fails the job or cancels it (a queued
-- job too: the job row then says cancelled, and its audit trail says the same), else NULL.
CREATE OR REPLACE FUNCTION tq_event_failure_class(p_op text, p_old_status text,
                                                  p_new_status text, p_class text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_new_status IN ('failed', 'cancelled')
                  OR (p_op = 'UPDATE' AND p_old_status IN ('pending', 'running')
                      AND p_new_status = 'queued')
                THEN p_class END
$$;

-- Sets the class and message the next status change of this transaction records.
CREATE OR REPLACE FUNCTION tq_set_failure(p_class text, p_message text) RETURNS void
LANGUAGE sql AS $$
    SELECT set_config('trainq.failure_class', COALESCE(p_class, ''), true),
           set_config('trainq.failure_message', COALESCE(p_message, ''), true);
$$;

-- How many attempts of the job already ended with p_class (from the audit trail): the
-- retry policy's count (consumer option TRAINQ_RETRY_POLICY).
CREATE OR REPLACE FUNCTION tq_class_failures(p_id uuid, p_class text) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT count(*)::int FROM job_events WHERE job_id = p_id AND failure_class = p_class
$$;

-- tq_give_back (40_dispatch.sql) with the class of the failure (host_error, or
-- dataset_error/host_error from the preflight): the attempt never started.
CREATE OR REPLACE FUNCTION tq_give_back_as(p_class text, p_id uuid, p_fencing bigint,
                                           p_reason text, p_max_host_retries integer)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    outcome text;
BEGIN
    PERFORM tq_set_failure(p_class, p_reason);
    outcome := tq_give_back(p_id, p_fencing, p_reason, p_max_host_retries);
    PERFORM tq_set_failure(NULL, NULL);
    RETURN outcome;
END $$;

-- A retry of a job whose attempt ended on this worker (the caller holds the user's lock and
-- the row lock with its fencing token): tq_recover_job with the class, and the job held
-- back from the pick (not_before, 65_schedule.sql) p_delay_seconds (hub_error's backoff; 0
-- for none).
CREATE OR REPLACE FUNCTION tq_retry_as(p_class text, p_message text, p_id uuid, p_reason text,
                                       p_max_attempts integer, p_delay_seconds integer)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    outcome text;
BEGIN
    PERFORM tq_set_failure(p_class, p_message);
    outcome := tq_recover_job(p_id, p_reason, p_max_attempts, false);
    PERFORM tq_set_failure(NULL, NULL);
    IF outcome = 'retried' AND p_delay_seconds > 0 THEN
        UPDATE training_jobs SET not_before = now() + make_interval(secs => p_delay_seconds)
         WHERE id = p_id;
    END IF;
    RETURN outcome;
END $$;
