//! The client against the real server (started in-process on a free port over a fresh SQLite
//! file), against scripted stub servers, and with nothing listening at all.

#![allow(clippy::unwrap_used)]

mod helpers;

mod admin;
mod fail_policy;
mod reservations;
mod retries;
mod usage;
