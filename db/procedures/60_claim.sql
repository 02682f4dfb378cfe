-- The consumer's claim of one delivered job: consumer/cdb.c tq_cdb_claim calls tq_claim and
-- nothing else, one statement, so one round trip and one (implicit) transaction.
--
-- tq_claim(message, worker, lease, path_max) runs these steps in order, each its own
-- function below, under the user's lock taken first:
--   1. ensure the row   tq_insert_job          a message published straight to AMQP by
--                       (30_jobs.sql)          another service gets its row (idempotent)
--   2. check the job    tq_claim_check_job     deleted / someone else's / not queued
--   3. check the dataset tq_claim_check_dataset missing / someone else's / path too long:
--                                              the job fails durably
--   4. room or park     tq_claim_room_or_park  the user is at the limit, or older jobs of
--                                              the user wait: parked (stays queued)
--   5. claim            tq_claim_take          queued -> pending on this worker
-- and returns one row: outcome ('claimed' | 'parked' | 'duplicate' | 'failed' |
-- 'mismatch', parsed by tq_claim_outcome_parse), reason, and for 'claimed' the fencing
-- token, attempts, the dataset's storage_path, the job's creation time and its message.
--
-- What must stay true:
--   - the user's lock (tq_lock_user) is the first lock taken: releases (tq_release_parked)
--     take it and then lock parked rows, and the status guard takes it on every status
--     change, so taking a row lock first could deadlock with them;
--   - the room count runs after the lock, in a fresh snapshot (READ COMMITTED: each
--     statement of these VOLATILE functions takes a new one), so it sees every claim and
--     release that held the lock before us; the schema's guard (TQ001) still refuses a third
--     active job if this count were wrong, and the consumer reports that as a bug;
--   - the reason strings are part of the contract (job_events, logs and tests read them).
--
-- Idempotent (migrate.sh reloads this file on every run): CREATE OR REPLACE only.

-- 1. A message from another service has no row yet: tq_insert_job (30_jobs.sql, the one
-- job-row INSERT, shared with the producer) creates it from the message and stores its
-- canonical bytes (shared/tq_msg.c's encoder, run by the consumer on the decoded message)
-- as the row's message. A job deleted through the API keeps its audit trail: a stale
-- message does not bring it back.

-- 2. Locks the job's row. outcome NULL: it is queued and the message's, go on.
CREATE OR REPLACE FUNCTION tq_claim_check_job(p_id uuid, p_user text, p_dataset uuid,
                                              OUT outcome text, OUT reason text)
LANGUAGE plpgsql AS $$
DECLARE
    j record;
BEGIN
    SELECT t.user_id, t.dataset_id, t.status INTO j
      FROM training_jobs t WHERE t.id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        outcome := 'duplicate';
        reason := 'job was deleted';
    ELSIF j.user_id <> p_user OR j.dataset_id <> p_dataset THEN
        outcome := 'mismatch';
        reason := format('job_id %s already names a job of another user or dataset', p_id);
    ELSIF j.status <> 'queued' THEN
        outcome := 'duplicate';
        reason := format('job is %s', j.status);
    END IF;
END $$;

-- 3. Checked here too: direct publishers are not checked by the producer, and a dataset can
-- disappear between submission and dispatch. A job whose dataset cannot be used fails
-- durably (no slot changes hands). storage_path NULL: reason says why the job failed.
-- p_path_max is the longest storage_path the consumer holds (cdb.h TQ_CLAIM_PATH_BUF - 1):
-- a path cut short could name another directory.
CREATE OR REPLACE FUNCTION tq_claim_check_dataset(p_id uuid, p_user text, p_dataset uuid,
                                                  p_path_max integer,
                                                  OUT storage_path text, OUT reason text)
LANGUAGE plpgsql AS $$
DECLARE
    d record;
BEGIN
    SELECT s.user_id, s.storage_path INTO d FROM datasets s WHERE s.id = p_dataset;
    IF NOT FOUND THEN
        reason := format('dataset %s not found', p_dataset);
    ELSIF d.user_id <> p_user THEN
        reason := format('dataset %s belongs to another user', p_dataset);
    ELSIF octet_length(d.storage_path) > p_path_max THEN
        reason := format('dataset %s storage_path is longer than %s bytes', p_dataset,
                         p_path_max);
    ELSE
        storage_path := d.storage_path;
        RETURN;
    END IF;
    UPDATE training_jobs SET status = 'failed', error_message = reason, completed_at = now(),
           parked_at = NULL
     WHERE id = p_id AND status = 'queued';
END $$;

-- 4. Room, and no older job of the user waiting (submission order)? outcome NULL: claim it.
-- Otherwise the job is parked. This delivery used up any release of the job that sent it
-- here: released_at is cleared so that the next release is not taken for a duplicate in
-- flight and throttled (it would wait for the sweeper). Room with older jobs parked means
-- their release was lost: it is redone now.
CREATE OR REPLACE FUNCTION tq_claim_room_or_park(p_id uuid, p_user text,
                                                 OUT outcome text, OUT reason text)
LANGUAGE plpgsql AS $$
DECLARE
    room boolean;
    older boolean;
BEGIN
    SELECT (SELECT count(*) FROM training_jobs
             WHERE user_id = p_user AND status IN ('pending', 'running'))
           < tq_user_max_active(p_user),
           EXISTS (SELECT 1 FROM training_jobs o, training_jobs me
                    WHERE me.id = p_id AND o.user_id = p_user AND o.status = 'queued'
                      AND o.parked_at IS NOT NULL AND o.id <> me.id
                      AND (o.created_at, o.id) < (me.created_at, me.id))
      INTO room, older;
    IF room AND NOT older THEN
        RETURN;
    END IF;
    UPDATE training_jobs SET parked_at = COALESCE(parked_at, now()), released_at = NULL
     WHERE id = p_id;
    IF room THEN
        PERFORM tq_release_parked(p_user);
    END IF;
    outcome := 'parked';
    reason := CASE WHEN room THEN 'older jobs of the user are waiting'
                   ELSE 'user at the active-job limit' END;
END $$;

-- 5. queued -> pending on p_worker with a new fencing token and lease; then, still room
-- after this claim, the user's next parked jobs go too. The job's message (every row has
-- one: 0007) is what the consumer decodes and launches.
CREATE OR REPLACE FUNCTION tq_claim_take(p_id uuid, p_user text, p_worker text,
                                         p_lease integer,
                                         OUT token bigint, OUT tries integer,
                                         OUT created_epoch double precision,
                                         OUT job_message text)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('trainq.reason', format('claimed by worker %s', p_worker), true);
    UPDATE training_jobs t SET status = 'pending', worker_id = p_worker,
           fencing_token = t.fencing_token + 1, attempts = t.attempts + 1,
           lease_expires_at = now() + make_interval(secs => p_lease), parked_at = NULL,
           released_at = NULL, container_id = NULL, exit_code = NULL
     WHERE t.id = p_id
     RETURNING t.fencing_token, t.attempts, extract(epoch FROM t.created_at), t.message
      INTO token, tries, created_epoch, job_message;
    PERFORM set_config('trainq.reason', '', true);
    PERFORM tq_release_parked(p_user);
END $$;

-- The claim: the steps above, the user's lock first. p_message is the delivered message's
-- canonical body (tq_msg_encode of what tq_msg_decode accepted), so its fields are valid.
-- p_reply_to / p_correlation_id: the delivery's properties, kept by a row it creates.
DROP FUNCTION IF EXISTS tq_claim(text, text, integer, integer);
CREATE OR REPLACE FUNCTION tq_claim(p_message text, p_worker text, p_lease integer,
                                    p_path_max integer, p_reply_to text DEFAULT NULL,
                                    p_correlation_id text DEFAULT NULL,
                                    OUT outcome text, OUT reason text, OUT fencing_token bigint,
                                    OUT attempts integer, OUT storage_path text,
                                    OUT created_epoch double precision, OUT message text)
LANGUAGE plpgsql AS $$
DECLARE
    m constant jsonb := p_message::jsonb;
    v_id constant uuid := (m->>'job_id')::uuid;
    v_user constant text := m->>'user_id';
    v_dataset constant uuid := (m->>'dataset_id')::uuid;
BEGIN
    PERFORM tq_lock_user(v_user);
    PERFORM tq_insert_job(p_message, 'amqp', NULL, NULL, p_reply_to, p_correlation_id);
    SELECT c.outcome, c.reason INTO outcome, reason
      FROM tq_claim_check_job(v_id, v_user, v_dataset) c;
    IF outcome IS NOT NULL THEN
        RETURN;
    END IF;
    SELECT d.storage_path, d.reason INTO storage_path, reason
      FROM tq_claim_check_dataset(v_id, v_user, v_dataset, p_path_max) d;
    IF reason IS NOT NULL THEN
        outcome := 'failed';
        RETURN;
    END IF;
    SELECT r.outcome, r.reason INTO outcome, reason FROM tq_claim_room_or_park(v_id, v_user) r;
    IF outcome IS NOT NULL THEN
        RETURN;
    END IF;
    SELECT t.token, t.tries, t.created_epoch, t.job_message
      INTO fencing_token, attempts, created_epoch, message
      FROM tq_claim_take(v_id, v_user, p_worker, p_lease) t;
    outcome := 'claimed';
END $$;
