-- Job events on AMQP (db/migrations/0015_events.sql, docs/message-contract.md "Job events").
--
-- The webhook triggers (80_webhooks.sql) are the one place that sees a status change or a
-- throttled progress step; they take the job's next sequence number (tq_job_event_seq) and
-- hand it to both the webhook deliveries and tq_event_write here, so a job's webhooks and
-- AMQP events share one numbering and one throttle. tq_event_write writes outbox rows in
-- the changing transaction: the relays publish them with confirms, at least once, so a
-- crash or a broker restart loses none, and a retry carries the same event id (it is in
-- the stored body).
--
-- What must stay true:
--  * one event per status change (every status, 'pending' included), numbered by the
--    job's sequence; the event id (a uuid, the message_id) is made once, here;
--  * an event row never makes the status change fail for want of a subscriber: the
--    events exchange is not mandatory, and a returned reply is dropped by the relay.

-- The job's next event number (webhook_job_state.seq), under the job's row lock, which
-- the changing statement holds: a job's events get increasing numbers in the order of
-- its changes. The job's first event, its insert's, is number 1 and writes no row
-- (tq_webhook_enqueue, 80_webhooks.sql): a submission writes one row less. So a job
-- without a row has had exactly that one event, and its next is number 2.
-- (PL/pgSQL, planned once per session: it runs in every status change.)
CREATE OR REPLACE FUNCTION tq_job_event_seq(p_job uuid) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    INSERT INTO webhook_job_state AS s (job_id, seq) VALUES (p_job, 2)
    ON CONFLICT (job_id) DO UPDATE SET seq = s.seq + 1
    RETURNING s.seq INTO n;
    RETURN n;
END $$;

-- Whether throttled job.progress.<type> events are published (settings row
-- 'amqp_progress_events' = 'on'; off by default: progress is many messages).
CREATE OR REPLACE FUNCTION tq_events_progress_on() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT COALESCE((SELECT value = 'on' FROM settings WHERE key = 'amqp_progress_events'), false)
$$;

-- An event's occurred_at: now, UTC, with microseconds (the moment within the transaction).
CREATE OR REPLACE FUNCTION tq_event_now() RETURNS text
LANGUAGE sql VOLATILE AS $$
    SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

-- The outbox rows of one event: to trainq.events with routing key job.<event>.<type>, and
-- to the reply queue when there is one. p_event is a status, 'progress' or
-- 'dead_lettered'; p_job_id may be NULL (a dead-lettered message without a job id).
CREATE OR REPLACE FUNCTION tq_event_publish(p_job_id uuid, p_type text, p_event text,
                                            p_body jsonb, p_reply_to text,
                                            p_correlation_id text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    ev_id text := gen_random_uuid()::text;
    body text := (jsonb_build_object('schema', 'trainq.event.v1', 'event_id', ev_id) || p_body)::text;
    -- outbox.job_id is NOT NULL; the nil uuid stands for "no job id" (the body says null)
    oj uuid := COALESCE(p_job_id, '00000000-0000-0000-0000-000000000000');
BEGIN
    INSERT INTO outbox (job_id, routing_key, payload, exchange, message_id)
    VALUES (oj, 'job.' || p_event || '.' || p_type, body, 'trainq.events', ev_id);
    IF p_reply_to IS NOT NULL THEN
        INSERT INTO outbox (job_id, routing_key, payload, exchange, message_id, correlation_id)
        VALUES (oj, p_reply_to, body, '', ev_id, p_correlation_id);
    END IF;
END $$;

-- The event of job j (a status change, or 'progress') with sequence p_seq. reason: the
-- audit row of the change just written (job_events, tq_audit_status, whose trigger fires
-- before the webhook trigger: names sort 'training_jobs_audit' < 'training_jobs_webhooks').
CREATE OR REPLACE FUNCTION tq_event_write(j training_jobs, p_event text, p_seq bigint)
    RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    a job_events;
    jj jsonb; -- the whole row as JSON, message and all: made only for progress fields
BEGIN
    IF p_event <> 'progress' THEN
        SELECT * INTO a FROM job_events WHERE job_id = j.id ORDER BY id DESC LIMIT 1;
    END IF;
    IF j.progress IS NOT NULL THEN
        jj := to_jsonb(j);
    END IF;
    PERFORM tq_event_publish(j.id, j.type, p_event, jsonb_build_object(
        'event', 'job.' || p_event,
        'job_id', j.id,
        'user_id', j.user_id,
        'type', j.type,
        'status', j.status,
        'previous_status', a.from_status,
        'reason', a.reason,
        'failure_class', j.failure_class,
        'exit_code', j.exit_code,
        'attempt', j.attempts,
        'progress', CASE WHEN j.progress IS NULL THEN NULL ELSE jsonb_build_object(
            'progress', j.progress, 'current_step', jj->'current_step',
            'total_steps', jj->'total_steps', 'loss', jj->'loss',
            'eta_seconds', jj->'eta_seconds') END,
        'sequence', p_seq,
        'correlation_id', j.correlation_id,
        'occurred_at', tq_event_now()),
        j.reply_to, j.correlation_id);
END $$;

-- The event of a message the consumer dead-lettered before any job row existed (invalid
-- body, wrong routing key or message_id; a bad signature gets none): status
-- 'dead_lettered' with the dead-letter reason, to trainq.events (routing key
-- job.dead_lettered.<type>, type 'unknown' when the routing key names none) and to the
-- message's reply_to. Called by consumer/cdb.c tq_cdb_dead_letter_event. What must stay
-- true:
--  * a message_id that names a job that exists (anyone's: an invalid body names no user to
--    compare) gets no event: the job's own events are the truth about it, and anyone who
--    may publish could otherwise have trainq announce that another user's job was
--    dead-lettered;
--  * its sequence is 1 (the contract's minimum); a message fixed and published again under
--    the same job_id becomes a job whose events start at 1 again: a subscriber applies a
--    job's events after a dead_lettered one whatever their sequence (the message never
--    became a job; docs/message-contract.md, "Dead-lettered messages").
CREATE OR REPLACE FUNCTION tq_event_dead_letter(p_message_id text, p_routing_key text,
                                                p_reason text, p_reply_to text,
                                                p_correlation_id text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    jid uuid;
    t text := CASE WHEN p_routing_key IN ('lora', 'dreambooth') THEN p_routing_key
                   ELSE 'unknown' END;
BEGIN
    IF p_message_id ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
        jid := lower(p_message_id)::uuid;
        IF EXISTS (SELECT 1 FROM training_jobs WHERE id = jid) THEN
            RETURN;
        END IF;
    END IF;
    PERFORM tq_event_publish(jid, t, 'dead_lettered', jsonb_build_object(
        'event', 'job.dead_lettered',
        'job_id', jid,
        'user_id', NULL,
        'type', t,
        'status', 'dead_lettered',
        'previous_status', NULL,
        'reason', p_reason,
        'failure_class', NULL,
        'exit_code', NULL,
        'attempt', 0,
        'progress', NULL,
        'sequence', 1,
        'correlation_id', NULLIF(p_correlation_id, ''),
        'occurred_at', tq_event_now()),
        NULLIF(p_reply_to, ''), NULLIF(p_correlation_id, ''));
END $$;
