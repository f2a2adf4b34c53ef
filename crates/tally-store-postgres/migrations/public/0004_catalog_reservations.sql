-- The metric catalog and reservations. Never edit this file once applied.
--
-- tally_metric: a metric's name, unit and kind (counter or gauge). A metric used in a plan
-- but never declared is a counter.
CREATE TABLE tally_metric (
    code       text PRIMARY KEY,
    name       text NOT NULL,
    unit       text NULL,
    kind       text NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);

-- tally_reservation holds quota for work settled later (reserve, then commit). It lives in
-- the base schema in both tenancies, so the sweeper that marks expired rows is one
-- statement; every statement on it names its tenants. Open rows (status 'open', expires_at
-- in the future) count against HARD limits; the partial indexes stay as small as the open
-- reservations.
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
CREATE INDEX tally_reservation_expiry_idx ON tally_reservation (expires_at) WHERE status = 'open';
