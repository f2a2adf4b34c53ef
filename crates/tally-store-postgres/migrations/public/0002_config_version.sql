-- The configuration version: one row whose counter grows, in the same transaction, with
-- every change to plans, tenants, subscriptions, overrides and keys, so that every server
-- sharing this database can tell with one primary-key read whether its caches are stale.
-- Usage never changes it. Readers never wait: a plain SELECT takes no row lock.
CREATE TABLE tally_config_version (
    id      smallint PRIMARY KEY CHECK (id = 1),
    version bigint NOT NULL
);
INSERT INTO tally_config_version (id, version) VALUES (1, 0);
