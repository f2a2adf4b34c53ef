-- The metric catalog, gauges and reservations. Never edit this file once applied.
--
-- tally_metric declares a metric's name, unit and kind (counter or gauge). A metric used in
-- a plan but never declared is a counter.
--
-- quota_usage_event.reserved_at is what open reservations held in the event's period right
-- after it, so that a replay answers the same `remaining`.
--
-- tally_reservation holds quota for work settled later (reserve, then commit): open rows
-- (status 'open', expires_at in the future) count against HARD limits. The partial index
-- serves that sum on the hot path and stays as small as the open reservations.
--
-- quota_usage_event.is_set marks an event that set a gauge's level (`"set": N`) rather than
-- adding an amount: its amount is the change it made and usage_after the level it set, so
-- a replay of the same `set` is recognised. Existing events added amounts (0).

CREATE TABLE tally_metric (
    code       TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    unit       TEXT NULL,
    kind       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

ALTER TABLE quota_usage_event ADD COLUMN is_set INTEGER NOT NULL DEFAULT 0;
ALTER TABLE quota_usage_event ADD COLUMN reserved_at INTEGER NOT NULL DEFAULT 0;

CREATE TABLE tally_reservation (
    id                 TEXT PRIMARY KEY,
    tenant_id          TEXT NOT NULL,
    metric_code        TEXT NOT NULL,
    amount             INTEGER NOT NULL,
    period_start       INTEGER NOT NULL,
    period_end         INTEGER NOT NULL,
    idempotency_key    TEXT NULL,
    ttl_seconds        INTEGER NOT NULL,
    created_at         INTEGER NOT NULL,
    expires_at         INTEGER NOT NULL,
    status             TEXT NOT NULL,
    settled_at         INTEGER NULL,
    committed_event_id TEXT NULL,
    committed_amount   INTEGER NULL,
    usage_at_creation  INTEGER NOT NULL,
    reserved_at_creation INTEGER NOT NULL,
    limit_at_creation  INTEGER NULL,
    CONSTRAINT tally_reservation_idem_uq UNIQUE (tenant_id, idempotency_key)
);

CREATE INDEX tally_reservation_open_idx ON tally_reservation (tenant_id, metric_code, period_start, expires_at)
    WHERE status = 'open';
CREATE INDEX tally_reservation_expiry_idx ON tally_reservation (expires_at) WHERE status = 'open';
