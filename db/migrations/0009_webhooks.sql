-- Signed webhooks (issue 13, docs/webhooks.md): where a user wants to be called back, and
-- the deliveries, an outbox written by the trigger tq_webhook_enqueue
-- (db/procedures/80_webhooks.sql) in the same transaction as the status change that causes
-- them, so a crash cannot lose one. The producers' delivery workers (producer/webhooks.c)
-- send them.

-- Endpoints a user registered (POST /api/training/webhooks). The secret ("whsec_" +
-- base64) signs every delivery to the endpoint; it is shown only at creation and rotation.
CREATE TABLE webhook_endpoints (
    id              uuid PRIMARY KEY,
    user_id         text NOT NULL CHECK (length(user_id) BETWEEN 1 AND 128),
    url             text NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    events          text[] NOT NULL CHECK (cardinality(events) >= 1),
    description     text NOT NULL DEFAULT '' CHECK (length(description) <= 500),
    secret          text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    disabled_at     timestamptz,
    disabled_reason text,
    -- failed attempts since the last success; at TRAINQ_WEBHOOK_DISABLE_AFTER the producer
    -- disables the endpoint
    failures_in_row integer NOT NULL DEFAULT 0
);
CREATE INDEX webhook_endpoints_user ON webhook_endpoints (user_id, created_at, id);

-- The user's default secret: signs the deliveries to a job's own webhook_url (submit).
CREATE TABLE webhook_user_secrets (
    user_id    text PRIMARY KEY CHECK (length(user_id) BETWEEN 1 AND 128),
    secret     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- A job's own webhook (the submit body's webhook_url / webhook_events). Written by the
-- producer before tq_insert_job in the submit transaction, so the insert's trigger finds
-- it; the foreign key is checked at commit for that reason.
CREATE TABLE job_webhooks (
    job_id uuid PRIMARY KEY REFERENCES training_jobs (id) ON DELETE CASCADE
        DEFERRABLE INITIALLY DEFERRED,
    url    text NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    events text[] NOT NULL CHECK (cardinality(events) >= 1)
);

-- Per job: the last sequence number given to one of its events, and when and at which
-- progress the last job.progress event was made (at most one per 10 % or 60 s).
CREATE TABLE webhook_job_state (
    job_id        uuid PRIMARY KEY REFERENCES training_jobs (id) ON DELETE CASCADE,
    seq           bigint NOT NULL DEFAULT 0,
    progress      real,
    progress_at   timestamptz
);

-- The deliveries (one per event and target). webhook-id is 'msg_' || id: unique per event
-- and endpoint, the same on every retry. sequence numbers a job's events (1, 2, ...) so a
-- receiver can order them; target is the endpoint id, or 'job' for the job's own URL.
-- state pending → delivered | failed. A worker that takes a row moves due_at past its
-- request's deadline (a lease): if it dies, the row is due again and sent again (at least
-- once).
CREATE TABLE webhook_deliveries (
    id              bigserial PRIMARY KEY,
    user_id         text NOT NULL,
    job_id          uuid NOT NULL, -- no foreign key: a deleted job's deliveries still go
    endpoint_id     uuid REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    target          text NOT NULL,
    url             text NOT NULL,
    event           text NOT NULL,
    sequence        bigint NOT NULL CHECK (sequence >= 1),
    event_at        timestamptz NOT NULL DEFAULT now(),
    state           text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'delivered', 'failed')),
    due_at          timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    last_attempt_at timestamptz,
    last_status     integer,
    last_error      text,
    last_latency_ms integer,
    delivered_at    timestamptz,
    -- set while a worker holds the row (its request in flight), cleared when it records
    -- the outcome: what the per-endpoint cap counts
    leased_until    timestamptz
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (due_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_order ON webhook_deliveries (job_id, target, sequence)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id DESC);
CREATE INDEX webhook_deliveries_leased ON webhook_deliveries (endpoint_id)
    WHERE leased_until IS NOT NULL;
