-- Retention of webhook deliveries (tq_retention_prune, db/procedures/95_retention.sql):
-- delivered and failed rows go once their last activity (the last attempt; a row failed
-- without one, "not sent" when its endpoint was disabled, counts from its event) is older
-- than the outbox retention. Oldest first on this index: a batch is a range of it, never a
-- scan of the table (test_indexes). Pending rows are not in it and are never pruned.
CREATE INDEX IF NOT EXISTS webhook_deliveries_done
    ON webhook_deliveries ((COALESCE(last_attempt_at, event_at)))
    WHERE state <> 'pending';
