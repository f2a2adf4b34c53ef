-- The configuration version: one row whose counter grows, in the same transaction, with
-- every change to plans, tenants, subscriptions, overrides and keys, so that every process
-- on this file can tell with one primary-key read whether its caches are stale.
-- Usage never changes it. Never edit this file once applied.

CREATE TABLE tally_config_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);

INSERT INTO tally_config_version (id, version) VALUES (1, 0);
