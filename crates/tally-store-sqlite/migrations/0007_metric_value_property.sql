-- The metric catalog gains value_property: a JSON pointer into an ingested event's data
-- (CloudEvents) or properties (Lago) naming its amount; NULL counts each event as 1. Never
-- edit this file once applied.
ALTER TABLE tally_metric ADD COLUMN value_property TEXT NULL;
