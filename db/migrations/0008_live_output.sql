-- Live progress and logs of a running job (issue "Watch a job live"), and its artifacts.
--
-- The consumer that holds a job's claim follows its container's output and writes, at most
-- once a second per job, the progress it parsed (the columns below, and a 'progress' row of
-- job_output) and the log lines it collected (a 'log' row of job_output). Writes are fenced
-- with the claim's token (db/procedures/70_output.sql), so a host that lost its lease
-- writes nothing. The producer reads them for the job API, the logs endpoint and the
-- Server-Sent Events streams.
ALTER TABLE training_jobs
    ADD COLUMN current_step integer CHECK (current_step IS NULL OR current_step >= 0),
    ADD COLUMN total_steps integer CHECK (total_steps IS NULL OR total_steps >= 1),
    ADD COLUMN loss double precision,
    ADD COLUMN eta_seconds double precision CHECK (eta_seconds IS NULL OR eta_seconds >= 0),
    ADD COLUMN progress_updated_at timestamptz,
    -- The last job_output.seq of the job. Incremented under the job's row lock by every
    -- append, so that a job's output rows commit in seq order and a reader that resumes
    -- "after seq N" can never miss a row that commits later with a smaller seq.
    ADD COLUMN output_seq bigint NOT NULL DEFAULT 0,
    -- Bytes of 'log' rows kept for the job (trimmed to the consumer's TRAINQ_LOG_MAX_BYTES).
    ADD COLUMN log_bytes bigint NOT NULL DEFAULT 0;

-- A job's output in one per-job order: 'progress' rows (body: a JSON object of the
-- progress fields) and 'log' rows (body: complete lines joined by '\n', no trailing one).
CREATE TABLE job_output (
    job_id     uuid NOT NULL REFERENCES training_jobs (id) ON DELETE CASCADE,
    seq        bigint NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('progress', 'log')),
    body       text NOT NULL,
    bytes      integer NOT NULL CHECK (bytes >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, seq)
);

-- The output files of a finished job, as the consumer found them in its outputs directory.
CREATE TABLE job_artifacts (
    job_id     uuid NOT NULL REFERENCES training_jobs (id) ON DELETE CASCADE,
    name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 255),
    size_bytes bigint NOT NULL CHECK (size_bytes >= 0),
    sha256     text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, name)
);
