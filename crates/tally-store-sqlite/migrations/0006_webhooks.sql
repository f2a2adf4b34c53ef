-- Threshold webhooks, their threshold states and their deliveries (the outbox). Never edit
-- this file once applied.
--
-- tally_webhook is admin configuration: thresholds is a JSON array of percentages
-- (ascending), events a JSON array of event type names.
--
-- tally_webhook_state is one row per (webhook, tenant, metric, period start, event type,
-- threshold) that ever fired: fired 1, or 0 once a gauge re-armed. It is written by the
-- usage transactions, under the lock of the usage record it is about.
--
-- tally_webhook_delivery is the outbox: one row per message, written in the usage
-- transaction that caused it, then claimed and sent by the delivery worker. Ids are UUID v7
-- (hyphenated lowercase text sorts as the UUID does, so id order is creation order).
-- next_attempt_at is set while pending; tally_webhook_delivery_due_idx serves the claims
-- and stays as small as the pending deliveries; tally_webhook_delivery_log_idx serves a
-- webhook's delivery log, newest first.
--
-- No foreign keys: a webhook deleted while a usage transaction runs must never make that
-- usage fail. Deleting a webhook deletes its states and deliveries in the same transaction,
-- and claims join tally_webhook, so a delivery whose webhook is gone is never sent.

CREATE TABLE tally_webhook (
    id         TEXT PRIMARY KEY,
    url        TEXT NOT NULL,
    thresholds TEXT NOT NULL,
    events     TEXT NOT NULL,
    secret     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE tally_webhook_state (
    webhook_id   TEXT NOT NULL,
    tenant_id    TEXT NOT NULL,
    metric_code  TEXT NOT NULL,
    period_start INTEGER NOT NULL,
    event_type   TEXT NOT NULL,
    threshold    INTEGER NOT NULL,
    fired        INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (webhook_id, tenant_id, metric_code, period_start, event_type, threshold)
);

CREATE TABLE tally_webhook_delivery (
    id                 TEXT PRIMARY KEY,
    webhook_id         TEXT NOT NULL,
    event_type         TEXT NOT NULL,
    tenant_id          TEXT NOT NULL,
    metric_code        TEXT NOT NULL,
    body               TEXT NOT NULL,
    status             TEXT NOT NULL,
    attempts           INTEGER NOT NULL,
    last_response_code INTEGER NULL,
    last_error         TEXT NULL,
    next_attempt_at    INTEGER NULL,
    window_start       INTEGER NOT NULL,
    created_at         INTEGER NOT NULL,
    last_attempt_at    INTEGER NULL
);

CREATE INDEX tally_webhook_delivery_due_idx ON tally_webhook_delivery (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX tally_webhook_delivery_log_idx ON tally_webhook_delivery (webhook_id, id DESC);
