-- The admin UI's tables and index. Never edit this file once applied.
--
-- quota_usage_event_created_idx serves the list of every tenant's events, newest first,
-- keyset-paginated on (created_at, id): a page is a walk down this index that stops after
-- the page, whatever the number of events.
--
-- tally_admin_session holds the UI's sign-in sessions: the browser holds the token, this
-- table its SHA-256 only (lowercase hex). Expired rows are removed by expires_at.
--
-- The admin password's hash (a PHC string) lives in tally_settings, key admin_password_phc.

CREATE INDEX quota_usage_event_created_idx ON quota_usage_event (created_at DESC, id DESC);

-- The same for the list of every tenant's records, newest first (its default order). A
-- record's created_at never changes, so counter updates never touch this index.
CREATE INDEX quota_usage_record_created_idx ON quota_usage_record (created_at DESC, id DESC);

CREATE TABLE tally_admin_session (
    token_hash TEXT PRIMARY KEY,
    csrf_token TEXT NOT NULL,
    principal  TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);

CREATE INDEX tally_admin_session_expires_idx ON tally_admin_session (expires_at);
