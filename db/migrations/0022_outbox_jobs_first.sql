-- Job messages and replies before events (shared/tq_relay.c, SQL_CLAIM). In id order alone,
-- a burst of events — an operator cancelling 28 000 queued jobs writes as many
-- job.cancelled events — held every job submitted after it until the relay had published
-- the burst (up to 2.4 s behind 13 000 events here; docs/performance.md). The claim orders by
-- (exchange = 'trainq.events', id): a job's message waits only for other jobs' messages,
-- events keep their id order among themselves, and they wait only while job messages fill
-- whole batches. This index is that order over the unpublished rows; it replaces
-- outbox_unpublished_id (migration 0010), which served the claim's old order, so the insert
-- of an outbox row writes no more index entries than before.
CREATE INDEX outbox_unpublished_order ON outbox ((exchange = 'trainq.events'), id)
    WHERE published_at IS NULL;
DROP INDEX IF EXISTS outbox_unpublished_id;
