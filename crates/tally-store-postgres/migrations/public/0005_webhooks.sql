-- Threshold webhooks, their threshold states and their deliveries (the outbox). Never edit
-- this file once applied.
--
-- All three live in the base schema in both tenancies, like tally_reservation: the delivery
-- worker claims across tenants with one statement. Every statement of the hot path on
-- tally_webhook_state and tally_webhook_delivery names its tenants; tally_webhook is admin
-- configuration, read whole by a usage transaction that may fire a threshold.
--
-- tally_webhook_state is one row per (webhook, tenant, metric, period start, event type,
-- threshold) that ever fired: fired true, or false once a gauge re-armed. It is written by
-- the usage transactions, under the lock of the usage record it is about.
--
-- tally_webhook_delivery is the outbox: one row per message, written in the usage
-- transaction that caused it, then claimed (FOR UPDATE SKIP LOCKED, so that server
-- instances never claim the same one) and sent by the delivery worker. Ids are UUID v7, so
-- id order is creation order. tally_webhook_delivery_due_idx serves the claims and stays as
-- small as the pending deliveries; tally_webhook_delivery_log_idx serves a webhook's
-- delivery log, newest first.
--
-- No foreign keys: a webhook deleted while a usage transaction runs must never make that
-- usage fail. Deleting a webhook deletes its states and deliveries in the same transaction,
-- and claims join tally_webhook, so a delivery whose webhook is gone is never sent.
CREATE TABLE tally_webhook (
    id         text PRIMARY KEY,
    url        text NOT NULL,
    thresholds integer[] NOT NULL,
    events     text[] NOT NULL,
    secret     text NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);

CREATE TABLE tally_webhook_state (
    webhook_id   text NOT NULL,
    tenant_id    text NOT NULL,
    metric_code  text NOT NULL,
    period_start timestamptz NOT NULL,
    event_type   text NOT NULL,
    threshold    integer NOT NULL,
    fired        boolean NOT NULL,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (webhook_id, tenant_id, metric_code, period_start, event_type, threshold)
);

CREATE TABLE tally_webhook_delivery (
    id                 uuid PRIMARY KEY,
    webhook_id         text NOT NULL,
    event_type         text NOT NULL,
    tenant_id          text NOT NULL,
    metric_code        text NOT NULL,
    body               text NOT NULL,
    status             text NOT NULL,
    attempts           integer NOT NULL,
    last_response_code integer NULL,
    last_error         text NULL,
    next_attempt_at    timestamptz NULL,
    window_start       timestamptz NOT NULL,
    created_at         timestamptz NOT NULL,
    last_attempt_at    timestamptz NULL
);
CREATE INDEX tally_webhook_delivery_due_idx ON tally_webhook_delivery (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX tally_webhook_delivery_log_idx ON tally_webhook_delivery (webhook_id, id DESC);
