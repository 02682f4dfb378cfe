-- Secret rotation with overlap (docs/webhooks.md, "Rotate the secret"): after
-- rotate-secret, deliveries to the endpoint are signed with the new secret and, until
-- previous_secret_until, also with the one it replaced (two "v1," signatures), so a receiver
-- can switch its configuration without refusing a delivery meanwhile.
-- TRAINQ_WEBHOOK_SECRET_OVERLAP_SECONDS sets the window when the secret is rotated.
ALTER TABLE webhook_endpoints
    ADD COLUMN previous_secret       text,
    ADD COLUMN previous_secret_until timestamptz,
    ADD CONSTRAINT webhook_endpoints_previous_secret
        CHECK ((previous_secret IS NULL) = (previous_secret_until IS NULL));

-- The senders' take (producer/pdb.c, tq_pdb_hooks_take) asks for the first due pending row
-- in (due_at, id) order. Rows written by one transaction share due_at, so an index on
-- due_at alone made it read and sort all of them on every take (28 ms for a backlog of
-- 2 000, growing with it); in (due_at, id) order it stops at the first row that qualifies.
CREATE INDEX webhook_deliveries_due_id ON webhook_deliveries (due_at, id) WHERE state = 'pending';
DROP INDEX webhook_deliveries_due;
