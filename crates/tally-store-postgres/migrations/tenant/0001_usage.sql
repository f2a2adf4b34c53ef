-- The quota tables: per-period counters and the immutable events, with the Django seed's
-- index names. Run with search_path set to the schema: the base schema in shared tenancy,
-- the tenant's own schema in schema tenancy. Every index leads with tenant_id, so the
-- tables can later be distributed by tenant.
CREATE TABLE quota_usage_record (
    id            uuid PRIMARY KEY,
    tenant_id     text NOT NULL,
    metric_code   text NOT NULL,
    current_usage bigint NOT NULL,
    period_start  timestamptz NOT NULL,
    period_end    timestamptz NOT NULL,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    CONSTRAINT quota_usage_record_uq UNIQUE (tenant_id, metric_code, period_start)
);
CREATE INDEX quota_usage_record_tenant_metric_idx ON quota_usage_record (tenant_id, metric_code, period_end);
CREATE INDEX quota_usage_record_tenant_period_idx ON quota_usage_record (tenant_id, period_end);

-- usage_after .. timestamp_explicit are the receipt: the answer given when the event was
-- recorded, returned again when its idempotency key is replayed.
CREATE TABLE quota_usage_event (
    id                 uuid PRIMARY KEY,
    tenant_id          text NOT NULL,
    metric_code        text NOT NULL,
    amount             bigint NOT NULL,
    metadata           jsonb NOT NULL,
    idempotency_key    text NULL,
    "timestamp"        timestamptz NOT NULL,
    created_at         timestamptz NOT NULL,
    usage_after        bigint NOT NULL,
    limit_at           bigint NULL,
    enforcement        text NOT NULL,
    period_start       timestamptz NOT NULL,
    period_end         timestamptz NOT NULL,
    timestamp_explicit boolean NOT NULL,
    CONSTRAINT quota_usage_event_idem_uq UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX quota_usage_event_tenant_metric_idx ON quota_usage_event (tenant_id, metric_code, created_at);
