-- The one way a job row is created: by the producer for a submission over HTTP
-- (producer/pdb.c) and by the claiming consumer for a message published straight to AMQP.
--
-- What must stay true:
--  * training_jobs.message is the trainq.job.v1 body exactly as shared/tq_msg.c encoded it
--    (the producer passes the bytes it also writes to the outbox); every release
--    republishes these bytes, so there is one encoder and a released job carries the same
--    body as its first publication (docs/message-contract.md);
--  * the row's columns are read from that body, so the row and its message cannot disagree;
--  * a job id is created once: a second call with the same id (a redelivery, a re-publish)
--    changes nothing, and a job deleted through the API (its audit trail stays) is not
--    brought back by a stale message.

-- The priority helpers are here rather than in 65_schedule.sql, beside tq_insert_jobs
-- below, which uses them (and 65_schedule.sql loads after this file).
-- 'low' | 'normal' | 'high' <-> 0 | 1 | 2 (training_jobs.priority). NULL for anything else.
CREATE OR REPLACE FUNCTION tq_priority_rank(p text) RETURNS smallint
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE p WHEN 'low' THEN 0 WHEN 'normal' THEN 1 WHEN 'high' THEN 2 END::smallint
$$;

CREATE OR REPLACE FUNCTION tq_priority_name(p smallint) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE p WHEN 0 THEN 'low' WHEN 1 THEN 'normal' WHEN 2 THEN 'high' END
$$;

-- The highest priority the user may ask for: user_limits.max_priority, else normal.
CREATE OR REPLACE FUNCTION tq_user_max_priority(p_user text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT COALESCE((SELECT max_priority FROM user_limits WHERE user_id = p_user), 'normal')
$$;

-- tq_insert_jobs inserts a batch (the consumer's intake, 65_schedule.sql: one statement for
-- the batch, the triggers still per row) and returns the ids it created; tq_insert_job one
-- message, true when it created the row. A clash on (user_id, idempotency_key) is an error
-- (unique_violation) for the caller to handle. p_reply_tos / p_correlation_ids (parallel to
-- p_messages, NULL or '' for none): the AMQP properties of a message published straight to
-- AMQP (0015_events.sql), stored with the row before its insert trigger writes the first
-- event, so even 'queued' is replied to. p_default_priority: the priority of a message that
-- names none, when the caller has read the user's cap already (tq_submit); NULL: read here.
DROP FUNCTION IF EXISTS tq_insert_job(text, text, text, text);
DROP FUNCTION IF EXISTS tq_insert_jobs(text[], text, text, text);
-- (Before p_default_priority. A caller of the older signature resolves to this one.)
DROP FUNCTION IF EXISTS tq_insert_jobs(text[], text, text, text, text[], text[]);
CREATE OR REPLACE FUNCTION tq_insert_jobs(p_messages text[], p_source text,
                                          p_idempotency_key text DEFAULT NULL,
                                          p_request_hash text DEFAULT NULL,
                                          p_reply_tos text[] DEFAULT NULL,
                                          p_correlation_ids text[] DEFAULT NULL,
                                          p_default_priority smallint DEFAULT NULL)
RETURNS SETOF uuid
-- PL/pgSQL, not SQL: a SQL function's statement is parsed and planned again on every call,
-- a PL/pgSQL one once per session. And always the generic plan: with the messages an array
-- parameter, the generic plan's estimate (unnest: 10 rows) never beats a custom plan's
-- (1 row), so the plan cache would plan this INSERT again on every call.
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    RETURN QUERY
    INSERT INTO training_jobs (id, user_id, dataset_id, name, type, base_model, config,
                               trigger_words, source, idempotency_key, request_hash, message,
                               priority, reply_to, correlation_id, created_at)
    SELECT (m->>'job_id')::uuid, m->>'user_id', (m->>'dataset_id')::uuid, m->>'name',
           m->>'type', m->>'base_model', m->'config',
           ARRAY(SELECT e FROM jsonb_array_elements_text(COALESCE(m->'trigger_words', '[]'))
                          WITH ORDINALITY AS w(e, k) ORDER BY k),
           p_source, p_idempotency_key, p_request_hash, x.body,
           -- no priority given: normal, or the user's max_priority when that is lower (a
           -- user capped at low is not failed for a submission that asked for nothing)
           COALESCE(tq_priority_rank(m->>'priority'), p_default_priority,
                    LEAST(1, tq_priority_rank(tq_user_max_priority(m->>'user_id')))),
           NULLIF(p_reply_tos[x.n], ''), NULLIF(p_correlation_ids[x.n], ''),
           -- the clock, not the transaction's start: the rows of one intake batch keep the
           -- order of their messages, which is their order of starting within a user
           clock_timestamp()
      FROM unnest(p_messages) WITH ORDINALITY AS x(body, n),
           -- OFFSET 0 keeps the planner from folding the subquery into the select list,
           -- which would parse the body's JSON once for every field read from it (nine
           -- times) instead of once
           LATERAL (SELECT x.body::jsonb AS m OFFSET 0) j
     WHERE NOT EXISTS (SELECT 1 FROM job_events WHERE job_id = (m->>'job_id')::uuid)
     ORDER BY x.n
    ON CONFLICT (id) DO NOTHING
    RETURNING id;
END $$;

CREATE OR REPLACE FUNCTION tq_insert_job(p_message text, p_source text,
                                         p_idempotency_key text DEFAULT NULL,
                                         p_request_hash text DEFAULT NULL,
                                         p_reply_to text DEFAULT NULL,
                                         p_correlation_id text DEFAULT NULL) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    SELECT count(*) INTO n
      FROM tq_insert_jobs(ARRAY[p_message], p_source, p_idempotency_key, p_request_hash,
                          ARRAY[p_reply_to], ARRAY[p_correlation_id]);
    RETURN n > 0;
END $$;
