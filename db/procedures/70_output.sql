-- Writing a running job's output (db/migrations/0008_live_output.sql). Called by the
-- consumer that holds the job's claim; every write presents the claim's fencing token and
-- is refused (NULL) when the job is no longer that claim's or no longer active.
--
-- Readers (the producer) are woken by NOTIFY trainq_job_output with the job id as payload;
-- a missed notification only delays them until their poll.

-- Takes the job's next output seq under its row lock (see training_jobs.output_seq), or
-- NULL when the fencing token is stale.
CREATE OR REPLACE FUNCTION tq_output_next_seq(p_id uuid, p_fencing bigint) RETURNS bigint
LANGUAGE sql AS $$
    UPDATE training_jobs SET output_seq = output_seq + 1
     WHERE id = p_id AND fencing_token = p_fencing AND status IN ('pending', 'running')
    RETURNING output_seq
$$;

-- Appends complete log lines (joined by '\n') and trims the job's kept log to the newest
-- p_max_bytes (whole rows: the oldest rows go first; the new row itself always stays, so
-- a writer keeps its rows well below p_max_bytes). The seq of the new row, or NULL.
CREATE OR REPLACE FUNCTION tq_output_log(p_id uuid, p_fencing bigint, p_lines text,
                                         p_max_bytes bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    s bigint := tq_output_next_seq(p_id, p_fencing);
    n integer := octet_length(p_lines);
    kept bigint;
    cut bigint;
BEGIN
    IF s IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO job_output (job_id, seq, kind, body, bytes) VALUES (p_id, s, 'log', p_lines, n);
    UPDATE training_jobs SET log_bytes = log_bytes + n WHERE id = p_id RETURNING log_bytes INTO kept;
    IF kept > p_max_bytes THEN
        -- The newest rows that fit; everything older goes.
        SELECT max(seq) INTO cut FROM (
            SELECT seq, sum(bytes) OVER (ORDER BY seq DESC) AS newer
              FROM job_output WHERE job_id = p_id AND kind = 'log') t
         WHERE newer > p_max_bytes;
        DELETE FROM job_output WHERE job_id = p_id AND kind = 'log' AND seq <= cut AND seq < s;
        UPDATE training_jobs SET log_bytes = (SELECT COALESCE(sum(bytes), 0) FROM job_output
                                               WHERE job_id = p_id AND kind = 'log')
         WHERE id = p_id;
    END IF;
    PERFORM tq_notify('trainq_job_output', p_id::text);
    RETURN s;
END $$;

-- Records the parsed progress: the job's progress columns and a 'progress' row (the bounded
-- history of samples: the newest p_keep rows are kept). progress = step / total. The seq
-- of the new row, or NULL.
CREATE OR REPLACE FUNCTION tq_output_progress(p_id uuid, p_fencing bigint, p_step integer,
                                              p_total integer, p_loss double precision,
                                              p_eta double precision, p_keep integer)
    RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    s bigint := tq_output_next_seq(p_id, p_fencing);
    body text;
BEGIN
    IF s IS NULL THEN
        RETURN NULL;
    END IF;
    UPDATE training_jobs
       SET current_step = p_step, total_steps = p_total, loss = p_loss, eta_seconds = p_eta,
           progress = p_step::real / p_total, progress_updated_at = now()
     WHERE id = p_id;
    body := json_build_object('progress', p_step::real / p_total, 'current_step', p_step,
                              'total_steps', p_total, 'loss', p_loss, 'eta_seconds', p_eta,
                              'progress_updated_at', now())::text;
    INSERT INTO job_output (job_id, seq, kind, body, bytes)
    VALUES (p_id, s, 'progress', body, octet_length(body));
    DELETE FROM job_output WHERE job_id = p_id AND kind = 'progress'
       AND seq <= (SELECT seq FROM job_output WHERE job_id = p_id AND kind = 'progress'
                    ORDER BY seq DESC OFFSET p_keep LIMIT 1);
    PERFORM tq_notify('trainq_job_output', p_id::text);
    RETURN s;
END $$;
