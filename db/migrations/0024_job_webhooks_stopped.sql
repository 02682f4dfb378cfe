-- A job's own webhook_url that answered 410 Gone is stopped for the rest of the job
-- (docs/webhooks.md): the sender sets stopped_at, and tq_webhook_write
-- (db/procedures/80_webhooks.sql) writes no more deliveries to it. Before, only the
-- deliveries pending at that moment failed, and every later event of the job was sent again.
ALTER TABLE job_webhooks ADD COLUMN stopped_at timestamptz,
                         ADD COLUMN stopped_reason text;
