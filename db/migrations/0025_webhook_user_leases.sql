-- The per-user cap on webhook requests in flight (TRAINQ_WEBHOOK_USER_CONCURRENCY,
-- docs/webhooks.md): a taker counts the user's leased rows (tq_webhook_take,
-- db/procedures/80_webhooks.sql). Leased rows are few (at most one per sender, plus leases
-- of crashed senders until taken again), so this index stays small; it is the user's count
-- what webhook_deliveries_leased is the endpoint's.
CREATE INDEX IF NOT EXISTS webhook_deliveries_leased_user ON webhook_deliveries (user_id)
    WHERE leased_until IS NOT NULL;
