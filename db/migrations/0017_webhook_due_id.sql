-- The webhook senders' take (tq_webhook_take, db/procedures/80_webhooks.sql) asks for the
-- first due pending delivery in (due_at, id) order. Rows written by one transaction share
-- due_at, so the index on due_at alone (0009) made it read and sort all of them on every take
-- (28 ms at a backlog of 2 000, growing with it); in (due_at, id) order it stops at the first
-- row that qualifies. IF [NOT] EXISTS: databases where the procedures file made it already.
CREATE INDEX IF NOT EXISTS webhook_deliveries_due_id ON webhook_deliveries (due_at, id)
    WHERE state = 'pending';
DROP INDEX IF EXISTS webhook_deliveries_due;
