-- Job events on AMQP (issue 18, docs/message-contract.md "Job events"): every status change,
-- and opt-in progress, is written to the outbox (db/procedures/85_events.sql) in the
-- transaction of the change, and the relays (shared/tq_relay.c) publish it to exchange
-- trainq.events and, for a job published with reply_to, to that queue.

-- Where a job published straight to AMQP wants its status changes sent: the message's
-- reply_to and correlation_id properties, recorded by the claim that creates the row
-- (tq_insert_job). NULL for HTTP submissions. AMQP short strings: at most 255 bytes.
ALTER TABLE training_jobs
    ADD COLUMN reply_to text CHECK (octet_length(reply_to) BETWEEN 1 AND 255),
    ADD COLUMN correlation_id text CHECK (octet_length(correlation_id) <= 255);

-- What an outbox row is published as. Job messages keep the defaults (exchange trainq.jobs,
-- message_id = job_id, mandatory: a return is retried). Events go to 'trainq.events' (not
-- mandatory: nobody need be bound) with message_id = the event id; replies go through the
-- default exchange ('') to the reply queue (routing_key), mandatory, and a return is
-- logged and dropped, never retried (a reply queue that is gone must block nothing).
ALTER TABLE outbox
    ADD COLUMN exchange text NOT NULL DEFAULT 'trainq.jobs',
    ADD COLUMN message_id text,
    ADD COLUMN correlation_id text;
