-- A key's own rate limit (`1000/s`, `600/m`, `10000/h`); NULL: the server's default for its
-- scope. Never edit this file once applied.
ALTER TABLE tally_api_key ADD COLUMN rate_limit TEXT NULL;
