-- Tally's tables on SQLite: the same names and columns as the PostgreSQL adapter.
-- Ids and UUIDs are TEXT (hyphenated lowercase), timestamps INTEGER microseconds since the
-- Unix epoch, JSON is TEXT and booleans are INTEGER 0/1.
-- Never edit this file once applied; later changes are new, additive migrations.

CREATE TABLE tally_settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE tally_plan (
    code       TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    limits     TEXT NOT NULL,
    version    INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE tally_plan_version (
    code       TEXT NOT NULL,
    version    INTEGER NOT NULL,
    name       TEXT NOT NULL,
    limits     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (code, version)
);

CREATE TABLE tally_tenant (
    tenant_id   TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    internal_id INTEGER NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

CREATE TABLE tally_subscription (
    tenant_id  TEXT PRIMARY KEY REFERENCES tally_tenant (tenant_id),
    plan_code  TEXT NOT NULL REFERENCES tally_plan (code),
    anchor     INTEGER NOT NULL,
    started_at INTEGER NOT NULL
);

CREATE TABLE tally_override (
    tenant_id   TEXT NOT NULL REFERENCES tally_tenant (tenant_id),
    metric_code TEXT NOT NULL,
    "limit"     INTEGER NULL,
    enforcement TEXT NOT NULL,
    period      TEXT NOT NULL,
    PRIMARY KEY (tenant_id, metric_code)
);

CREATE TABLE tally_api_key (
    id           TEXT PRIMARY KEY,
    key_hash     TEXT NOT NULL UNIQUE,
    scope        TEXT NOT NULL,
    tenant_id    TEXT NULL,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER NULL,
    revoked_at   INTEGER NULL
);

CREATE TABLE tally_audit (
    id        TEXT PRIMARY KEY,
    at        INTEGER NOT NULL,
    key_id    TEXT NULL,
    action    TEXT NOT NULL,
    tenant_id TEXT NULL,
    details   TEXT NOT NULL
);

CREATE INDEX tally_audit_tenant_idx ON tally_audit (tenant_id, id);

CREATE TABLE quota_usage_record (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL,
    metric_code   TEXT NOT NULL,
    current_usage INTEGER NOT NULL,
    period_start  INTEGER NOT NULL,
    period_end    INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    CONSTRAINT quota_usage_record_uq UNIQUE (tenant_id, metric_code, period_start)
);

CREATE INDEX quota_usage_record_tenant_metric_idx ON quota_usage_record (tenant_id, metric_code, period_end);
CREATE INDEX quota_usage_record_tenant_period_idx ON quota_usage_record (tenant_id, period_end);

CREATE TABLE quota_usage_event (
    id                 TEXT PRIMARY KEY,
    tenant_id          TEXT NOT NULL,
    metric_code        TEXT NOT NULL,
    amount             INTEGER NOT NULL,
    metadata           TEXT NOT NULL,
    idempotency_key    TEXT NULL,
    timestamp          INTEGER NOT NULL,
    created_at         INTEGER NOT NULL,
    usage_after        INTEGER NOT NULL,
    limit_at           INTEGER NULL,
    enforcement        TEXT NOT NULL,
    period_start       INTEGER NOT NULL,
    period_end         INTEGER NOT NULL,
    timestamp_explicit INTEGER NOT NULL,
    CONSTRAINT quota_usage_event_idem_uq UNIQUE (tenant_id, idempotency_key)
);

CREATE INDEX quota_usage_event_tenant_metric_idx ON quota_usage_event (tenant_id, metric_code, created_at);
