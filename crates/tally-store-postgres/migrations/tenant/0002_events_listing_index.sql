-- Serves the events listing: one tenant's events newest first, keyset-paginated on
-- ("timestamp", id).
CREATE INDEX quota_usage_event_tenant_ts_idx ON quota_usage_event (tenant_id, "timestamp" DESC, id DESC);
