-- The admin UI's sign-in sessions. The browser holds the token; this table holds its
-- SHA-256 only (lowercase hex), so a leaked table cannot be replayed. Expired rows are
-- found, and removed, by expires_at. The admin password's hash (a PHC string) lives in
-- tally_settings under the key admin_password_phc.
CREATE TABLE tally_admin_session (
    token_hash text PRIMARY KEY,
    csrf_token text NOT NULL,
    principal  text NOT NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX tally_admin_session_expires_idx ON tally_admin_session (expires_at);
