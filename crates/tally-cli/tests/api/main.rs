//! Black-box tests of the HTTP API: each starts the real server on a free port over a fresh
//! store and talks to it with a real client, once over SQLite and once over PostgreSQL.

#[macro_use]
mod helpers;

mod admin;
mod admin_ui;
mod auth;
mod bad_input;
mod batch;
mod closing;
mod compat;
mod concurrency;
mod errors;
mod gauges;
mod idempotency;
mod isolation;
mod keys;
mod ops;
mod rate_limits;
mod reads;
mod receiver;
mod reservations;
mod usage;
mod webhooks;
