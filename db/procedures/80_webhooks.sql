-- Webhook deliveries are written in the transaction of the status change that causes them
-- (db/migrations/0009_webhooks.sql, docs/webhooks.md). The event of a status s is 'job.' ||
-- s; 'pending' has none (a claim, not something a web app acts on).

-- The job's next sequence number: its events so far, this one included (tq_audit_status
-- wrote it: trigger training_jobs_audit fires before training_jobs_webhooks, by name).
-- Status changes of a job are serialised by its row lock, so the numbers are 1, 2, ... in
-- the order of the changes.
CREATE OR REPLACE FUNCTION tq_webhook_enqueue() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ev text;
    seq bigint;
    n1 bigint;
    n2 bigint;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.status IS NOT DISTINCT FROM OLD.status THEN
        RETURN NULL;
    END IF;
    IF NEW.status NOT IN ('queued', 'running', 'completed', 'failed', 'cancelled') THEN
        RETURN NULL;
    END IF;
    ev := 'job.' || NEW.status;
    SELECT count(*) INTO seq FROM job_events WHERE job_id = NEW.id;
    INSERT INTO webhook_deliveries (user_id, job_id, endpoint_id, target, url, event, sequence)
    SELECT NEW.user_id, NEW.id, e.id, e.id::text, e.url, ev, seq
      FROM webhook_endpoints e
     WHERE e.user_id = NEW.user_id AND e.disabled_at IS NULL AND ev = ANY (e.events);
    GET DIAGNOSTICS n1 = ROW_COUNT;
    INSERT INTO webhook_deliveries (user_id, job_id, endpoint_id, target, url, event, sequence)
    SELECT NEW.user_id, NEW.id, NULL, 'job', w.url, ev, seq
      FROM job_webhooks w
     WHERE w.job_id = NEW.id AND ev = ANY (w.events);
    GET DIAGNOSTICS n2 = ROW_COUNT;
    -- Wakes the producers' delivery workers at commit; a missed one waits for their poll.
    IF n1 + n2 > 0 THEN
        PERFORM pg_notify('trainq_webhook', '');
    END IF;
    RETURN NULL;
END $$;

SELECT tq_ensure_trigger('training_jobs', 'training_jobs_webhooks',
    'AFTER INSERT OR UPDATE OF status', 'FOR EACH ROW EXECUTE FUNCTION tq_webhook_enqueue()');
