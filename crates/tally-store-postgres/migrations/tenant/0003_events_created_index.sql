-- Serves the admin UI's list of every tenant's events, newest first, keyset-paginated on
-- (created_at, id): a page is a walk down this index that stops after the page. It is the
-- one index that does not lead with tenant_id, because its list is the one reader across
-- tenants; on a table distributed by tenant it is an index of each shard all the same.
CREATE INDEX quota_usage_event_created_idx ON quota_usage_event (created_at DESC, id DESC);

-- The same for the admin UI's list of every tenant's records, newest first (its default
-- order): a record is created once per tenant, metric and period and its created_at never
-- changes, so this index costs nothing on the hot path (counter updates stay HOT).
CREATE INDEX quota_usage_record_created_idx ON quota_usage_record (created_at DESC, id DESC);
