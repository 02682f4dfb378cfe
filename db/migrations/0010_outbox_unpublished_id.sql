-- The relay's claim (shared/tq_relay.c, SQL_CLAIM: WHERE published_at IS NULL AND
-- available_at <= now() ORDER BY id LIMIT n FOR UPDATE SKIP LOCKED) was planned as a walk
-- of outbox_pkey from the lowest id, visiting every published row that retention has not
-- pruned yet (7 days): with 10 000 published rows one empty claim read ~20 000 buffers and
-- took 10 ms, and it ran once per relay batch under load (issue 11: the largest Postgres
-- symbol of the submit profile, heap_hot_search_buffer). This partial index holds only the
-- unpublished rows in id order, so the claim reads the backlog and nothing else, however
-- many published rows are kept. Numbered 0010: 0009 is taken by the webhooks branch.
CREATE INDEX outbox_unpublished_id ON outbox (id) WHERE published_at IS NULL;
