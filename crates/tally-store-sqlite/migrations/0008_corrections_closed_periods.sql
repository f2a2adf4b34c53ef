-- Corrections and closed periods. Never edit this file once applied.
--
-- quota_usage_event.kind is 'usage' or 'correction'; reason is a correction's reason (NULL
-- for usage). Existing events are usage.
ALTER TABLE quota_usage_event ADD COLUMN kind TEXT NOT NULL DEFAULT 'usage';
ALTER TABLE quota_usage_event ADD COLUMN reason TEXT NULL;

-- A record's period is closed while closed_at is set; reopened_at is when it was last
-- opened again (the automatic close leaves a reopened period open).
ALTER TABLE quota_usage_record ADD COLUMN closed_at INTEGER NULL;
ALTER TABLE quota_usage_record ADD COLUMN reopened_at INTEGER NULL;

-- The tenant's watermark: every period ending at or before closed_before is closed (unless
-- reopened); closed_before_at is when it last moved.
ALTER TABLE tally_tenant ADD COLUMN closed_before INTEGER NULL;
ALTER TABLE tally_tenant ADD COLUMN closed_before_at INTEGER NULL;

-- A plan's close_after, in seconds (NULL: periods are closed only by hand).
ALTER TABLE tally_plan ADD COLUMN close_after_seconds INTEGER NULL;
ALTER TABLE tally_plan_version ADD COLUMN close_after_seconds INTEGER NULL;

-- A tenant's periods newest first, as billing reads them (GET .../periods, tally export).
CREATE INDEX quota_usage_record_tenant_start_idx ON quota_usage_record (tenant_id, period_start, metric_code);
