-- Wake the outbox relays (shared/tq_relay.c, LISTEN trainq_outbox) at once instead of
-- waiting for their poll.
CREATE OR REPLACE FUNCTION tq_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM tq_notify('trainq_outbox', '');
    RETURN NULL;
END $$;

SELECT tq_ensure_trigger('outbox', 'outbox_notify',
    'AFTER INSERT', 'FOR EACH STATEMENT EXECUTE FUNCTION tq_outbox_notify()');
