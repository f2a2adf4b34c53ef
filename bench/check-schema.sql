-- Tally's reservation table (as migrations/public/0004 creates it), beside the reference
-- tables of bench/schema.sql, so that bench/check.sql runs the check's own statement on the
-- same tables Tally reads. No reservation is open, as in bench/compare's check run.
DROP TABLE IF EXISTS tally_reservation;
CREATE TABLE tally_reservation (
    id                   uuid PRIMARY KEY,
    tenant_id            text NOT NULL,
    metric_code          text NOT NULL,
    amount               bigint NOT NULL,
    period_start         timestamptz NOT NULL,
    period_end           timestamptz NOT NULL,
    idempotency_key      text NULL,
    ttl_seconds          bigint NOT NULL,
    created_at           timestamptz NOT NULL,
    expires_at           timestamptz NOT NULL,
    status               text NOT NULL,
    settled_at           timestamptz NULL,
    committed_event_id   uuid NULL,
    committed_amount     bigint NULL,
    usage_at_creation    bigint NOT NULL,
    reserved_at_creation bigint NOT NULL,
    limit_at_creation    bigint NULL,
    CONSTRAINT tally_reservation_idem_uq UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX tally_reservation_open_idx ON tally_reservation (tenant_id, metric_code, period_start, expires_at)
    WHERE status = 'open';
