-- trainq schema, version 1: the tables. The functions and triggers that guard them live in
-- db/procedures/, reloaded by scripts/migrate.sh on every run (databases migrated before
-- that got first versions of them from 0001-0005; the reload replaces those).
--
-- What must stay true (guarded in the database, not only in application code):
--  * at most N active (pending|running) jobs per user: trigger training_jobs_guard_active
--    (db/procedures/20_guards.sql) serialises every status change of one user on the
--    user's lock and refuses the N+1th;
--  * every status change is appended to job_events in the same transaction (trigger);
--  * a job row and the outbox row that dispatches it are written in one transaction by the
--    producer; the relay marks outbox rows published only after a broker confirm.

-- Cluster-wide knobs kept in the database so every producer and consumer sees the same value.
CREATE TABLE settings (
    key        text PRIMARY KEY,
    value      text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO settings (key, value) VALUES ('default_max_active_per_user', '2');

CREATE TABLE user_limits (
    user_id        text PRIMARY KEY CHECK (length(user_id) BETWEEN 1 AND 128),
    max_active     integer CHECK (max_active >= 0),          -- NULL: the default
    submit_per_min integer CHECK (submit_per_min >= 0),      -- NULL: the producer's default
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE datasets (
    id           uuid PRIMARY KEY,
    user_id      text NOT NULL CHECK (length(user_id) BETWEEN 1 AND 128),
    name         text NOT NULL,
    -- relative to the consumer's datasets root; the consumer refuses paths that escape it
    storage_path text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX datasets_user ON datasets (user_id);

CREATE TABLE training_jobs (
    id               uuid PRIMARY KEY,
    user_id          text NOT NULL CHECK (length(user_id) BETWEEN 1 AND 128),
    -- no foreign key: a job published straight to AMQP may name a dataset that does not
    -- exist; it still gets a row, in state failed with that reason
    dataset_id       uuid NOT NULL,
    name             text NOT NULL,
    type             text NOT NULL CHECK (type IN ('lora', 'dreambooth')),
    base_model       text NOT NULL,
    config           jsonb NOT NULL,
    trigger_words    text[] NOT NULL DEFAULT '{}',
    status           text NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'pending', 'running', 'completed', 'failed', 'cancelled')),
    container_id     text,
    error_message    text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    completed_at     timestamptz,
    -- where it came from: 'http' (producer) or 'amqp' (published directly by a service)
    source           text NOT NULL DEFAULT 'http' CHECK (source IN ('http', 'amqp')),
    -- claim / lease / fencing
    worker_id        text,
    attempts         integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL DEFAULT 3,
    fencing_token    bigint NOT NULL DEFAULT 0,
    lease_expires_at timestamptz,
    -- queued and acked because the user was at the limit; released (republished) in
    -- submission order when one of the user's jobs ends
    parked_at        timestamptz,
    cancel_requested_at timestamptz,
    exit_code        integer,
    progress         real CHECK (progress IS NULL OR (progress >= 0 AND progress <= 1)),
    idempotency_key  text,
    request_hash     text,
    CONSTRAINT terminal_has_time CHECK (
        status NOT IN ('completed', 'failed', 'cancelled') OR completed_at IS NOT NULL),
    CONSTRAINT active_has_worker CHECK (
        status NOT IN ('pending', 'running') OR worker_id IS NOT NULL)
);
CREATE UNIQUE INDEX training_jobs_idem ON training_jobs (user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX training_jobs_user_created ON training_jobs (user_id, created_at DESC, id DESC);
CREATE INDEX training_jobs_active ON training_jobs (user_id) WHERE status IN ('pending', 'running');
CREATE INDEX training_jobs_parked ON training_jobs (user_id, created_at, id)
    WHERE status = 'queued' AND parked_at IS NOT NULL;
CREATE INDEX training_jobs_worker ON training_jobs (worker_id) WHERE status IN ('pending', 'running');
CREATE INDEX training_jobs_lease ON training_jobs (lease_expires_at) WHERE status IN ('pending', 'running');

-- Append-only audit of every status change (written by trigger, never by hand).
CREATE TABLE job_events (
    id          bigserial PRIMARY KEY,
    job_id      uuid NOT NULL,
    user_id     text NOT NULL,
    from_status text,
    to_status   text NOT NULL,
    worker_id   text,
    fencing_token bigint NOT NULL,
    reason      text,
    at          timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX job_events_job ON job_events (job_id, id);
CREATE INDEX job_events_user ON job_events (user_id, id);

CREATE TABLE outbox (
    id           bigserial PRIMARY KEY,
    job_id       uuid NOT NULL,
    routing_key  text NOT NULL,
    payload      text NOT NULL,          -- the trainq.job.v1 body, exactly as published
    created_at   timestamptz NOT NULL DEFAULT now(),
    available_at timestamptz NOT NULL DEFAULT now(),  -- pushed back after a failed publish
    attempts     integer NOT NULL DEFAULT 0,
    last_error   text,
    published_at timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (available_at, id) WHERE published_at IS NULL;

-- Fixed one-minute windows per user and bucket ('submit' | 'read'), shared by all producers.
CREATE TABLE rate_limits (
    user_id      text NOT NULL,
    bucket       text NOT NULL,
    window_start timestamptz NOT NULL,
    count        integer NOT NULL,
    PRIMARY KEY (user_id, bucket, window_start)
);

CREATE TABLE workers (
    worker_id    text PRIMARY KEY,
    hostname     text NOT NULL,
    slots        integer NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    stopped_at   timestamptz
);
