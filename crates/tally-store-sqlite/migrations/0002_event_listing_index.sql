-- The index behind listing one tenant's events newest first, keyset-paginated on
-- (timestamp, id). Never edit this file once applied.

CREATE INDEX quota_usage_event_tenant_ts_idx ON quota_usage_event (tenant_id, timestamp DESC, id DESC);
