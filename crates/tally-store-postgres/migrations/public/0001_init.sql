-- The base schema's tables: settings, plans with their history, tenants, subscriptions,
-- overrides, API keys and the admin audit log. Run with search_path set to the base schema.
CREATE TABLE tally_settings (
    key   text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE tally_plan (
    code       text PRIMARY KEY,
    name       text NOT NULL,
    limits     jsonb NOT NULL,
    version    bigint NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);

CREATE TABLE tally_plan_version (
    code       text NOT NULL,
    version    bigint NOT NULL,
    name       text NOT NULL,
    limits     jsonb NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (code, version)
);

CREATE TABLE tally_tenant (
    tenant_id   text PRIMARY KEY,
    name        text NOT NULL,
    internal_id bigint NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL
);

CREATE TABLE tally_subscription (
    tenant_id  text PRIMARY KEY REFERENCES tally_tenant (tenant_id),
    plan_code  text NOT NULL REFERENCES tally_plan (code),
    anchor     timestamptz NOT NULL,
    started_at timestamptz NOT NULL
);
CREATE INDEX tally_subscription_plan_idx ON tally_subscription (plan_code);

CREATE TABLE tally_override (
    tenant_id   text NOT NULL REFERENCES tally_tenant (tenant_id),
    metric_code text NOT NULL,
    "limit"     bigint NULL,
    enforcement text NOT NULL,
    period      text NOT NULL,
    PRIMARY KEY (tenant_id, metric_code)
);

CREATE TABLE tally_api_key (
    id           uuid PRIMARY KEY,
    key_hash     text NOT NULL UNIQUE,
    scope        text NOT NULL,
    tenant_id    text NULL,
    created_at   timestamptz NOT NULL,
    last_used_at timestamptz NULL,
    revoked_at   timestamptz NULL
);

CREATE TABLE tally_audit (
    id        uuid PRIMARY KEY,
    at        timestamptz NOT NULL,
    key_id    uuid NULL,
    action    text NOT NULL,
    tenant_id text NULL,
    details   jsonb NOT NULL
);
CREATE INDEX tally_audit_tenant_idx ON tally_audit (tenant_id, id);
