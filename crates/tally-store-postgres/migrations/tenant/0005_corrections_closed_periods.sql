-- Corrections and closed periods. Never edit this file once applied.
--
-- quota_usage_event.kind is 'usage' or 'correction'; reason is a correction's reason (NULL
-- for usage). Existing events are usage. A constant default adds the column without
-- rewriting the table.
ALTER TABLE quota_usage_event ADD COLUMN kind text NOT NULL DEFAULT 'usage';
ALTER TABLE quota_usage_event ADD COLUMN reason text NULL;

-- A record's period is closed while closed_at is set; reopened_at is when it was last
-- opened again (the automatic close leaves a reopened period open).
ALTER TABLE quota_usage_record ADD COLUMN closed_at timestamptz NULL;
ALTER TABLE quota_usage_record ADD COLUMN reopened_at timestamptz NULL;

-- A tenant's periods newest first, as billing reads them (GET .../periods, tally export).
CREATE INDEX quota_usage_record_tenant_start_idx ON quota_usage_record (tenant_id, period_start, metric_code);
