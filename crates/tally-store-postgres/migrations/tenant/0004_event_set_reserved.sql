-- is_set marks an event that set a gauge's level (`"set": N`) rather than adding an amount:
-- its amount is the change it made and usage_after the level it set, so a replay of the
-- same `set` is recognised. Existing events added amounts. A constant default adds the
-- column without rewriting the table. Never edit this file once applied.
ALTER TABLE quota_usage_event ADD COLUMN is_set boolean NOT NULL DEFAULT false;

-- reserved_at is what open reservations held in the event's period right after it, so
-- that a replay answers the same `remaining`.
ALTER TABLE quota_usage_event ADD COLUMN reserved_at bigint NOT NULL DEFAULT 0;
