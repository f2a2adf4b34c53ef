-- Closed periods. Never edit this file once applied.
--
-- The tenant's watermark: every period ending at or before closed_before is closed (unless
-- its record says it was reopened); closed_before_at is when it last moved. A write into a
-- period that may be closed reads them under a share lock of the tenant's row, which a close
-- takes exclusively before it closes the records. NULL: the tenant never closed a period.
ALTER TABLE tally_tenant ADD COLUMN closed_before timestamptz NULL;
ALTER TABLE tally_tenant ADD COLUMN closed_before_at timestamptz NULL;

-- A plan's close_after, in seconds (NULL: periods are closed only by hand).
ALTER TABLE tally_plan ADD COLUMN close_after_seconds bigint NULL;
ALTER TABLE tally_plan_version ADD COLUMN close_after_seconds bigint NULL;
