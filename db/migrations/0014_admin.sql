-- The operators' view (docs/api.md, "Admin API"; the dashboard under /ui/).
--
-- workers: what a consumer reports on every heartbeat besides being alive (busy slots, the
-- GPU ids of its slots) and the one thing it reads back: whether an operator asked it to
-- drain (stop taking new jobs, finish the running ones).
ALTER TABLE workers
    ADD COLUMN busy integer NOT NULL DEFAULT 0 CHECK (busy >= 0),
    ADD COLUMN gpus text NOT NULL DEFAULT '',
    ADD COLUMN healthy boolean NOT NULL DEFAULT true,
    ADD COLUMN draining boolean NOT NULL DEFAULT false;

-- Every message a consumer dead-lettered, with its reason, recorded after the broker
-- confirmed the copy on trainq.jobs.dead (the queue stays the source of the bytes; this is
-- what an operator reads and acts on). body is the message as text, non-UTF-8 bytes
-- replaced by '?', capped by the consumer.
CREATE TABLE dead_letters (
    id             bigserial PRIMARY KEY,
    message_id     text NOT NULL,
    routing_key    text NOT NULL,
    reason         text NOT NULL,
    worker_id      text NOT NULL,
    body           text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    republished_at timestamptz
);
CREATE INDEX dead_letters_created ON dead_letters (created_at DESC, id DESC);
