//! A typed async client for Tally's `/v1` HTTP API: usage metering and quota enforcement.
//!
//! One method of [`Client`] per route: usage (record, batch, check, usage, history, events,
//! reset), reservations (reserve, commit, release, list), administration (plans, tenants,
//! subscriptions, overrides, the metric catalog, webhooks and their deliveries, the audit log)
//! and operations (`/healthz`, `/readyz`). Requests and answers are plain structs that mirror
//! the API's JSON member for member ([`types`]); errors are one enum, [`Error`], that keeps
//! Tally's answers (`application/problem+json`) apart from failures to get one.
//!
//! # Quick start
//!
//! ```no_run
//! use tally_client::{CheckRequest, Client, Error, UsageRequest};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Error> {
//!     let tally = Client::new("http://127.0.0.1:8080", "tly_...")?;
//!
//!     // May tenant acme use 5 more api_calls? (Changes nothing.)
//!     let check = tally.check("acme", &CheckRequest::new("api_calls", 5)).await?;
//!     println!("allowed: {}, remaining: {:?}", check.allowed, check.remaining);
//!
//!     // Record one; a HARD limit's refusal is Error::QuotaExceeded, and nothing is recorded.
//!     match tally.record("acme", &UsageRequest::new("api_calls", 1)).await {
//!         Ok(r) => println!("{} used of {:?}", r.current_usage, r.limit),
//!         Err(Error::QuotaExceeded(q)) => println!("refused; free again at {:?}", q.period_end),
//!         Err(e) => return Err(e),
//!     }
//!     Ok(())
//! }
//! ```
//!
//! # Idempotency and retries
//!
//! Every usage write ([`Client::record`], each event of [`Client::record_batch`]) and every
//! reservation ([`Client::reserve`]) is sent with an `idempotency_key`: the request's own, or
//! a new UUID v7 ([`generate_idempotency_key`]) for the call. When Tally cannot be reached the
//! call is sent again, per the client's [`RetryPolicy`] ([`RETRY_ATTEMPTS_DEFAULT`] attempts,
//! backoff from [`RETRY_BACKOFF_INITIAL`] doubling up to [`RETRY_BACKOFF_MAX`], with
//! jitter), **with the same key**: a request that did reach Tally before its answer was lost
//! is answered `replayed: true` and counted once.
//!
//! Retried: no answer (connection refused, timeout, connection broken) and 503 `unavailable`
//! (also 502 and 504 from a proxy, for calls safe to resend). Never retried: any 4xx, and in
//! particular a 429 `quota_exceeded`, which is Tally's answer "no", not a failure. Calls that
//! are not safe to resend after an ambiguous failure (reset, redeliver, deletes) are retried
//! only when no connection was made or on a 503. Health probes make one attempt.
//!
//! Timeouts: [`DEFAULT_CONNECT_TIMEOUT`] to connect and [`DEFAULT_REQUEST_TIMEOUT`] per
//! attempt; both settable on the [`ClientBuilder`].
//!
//! ```no_run
//! use std::time::Duration;
//! use tally_client::{Client, RetryPolicy};
//!
//! # fn main() -> Result<(), tally_client::Error> {
//! let tally = Client::builder("http://127.0.0.1:8080")
//!     .api_key("tly_...")
//!     .connect_timeout(Duration::from_millis(500))
//!     .timeout(Duration::from_secs(2))
//!     .retry(RetryPolicy { max_attempts: 2, ..RetryPolicy::default() })
//!     .build()?;
//! # let _ = tally;
//! # Ok(())
//! # }
//! ```
//!
//! # When Tally cannot be reached
//!
//! Usage calls take a per-call [`Unreachable`] policy ([`Client::record_with`],
//! [`Client::record_batch_with`], [`Client::check_with`]; the plain methods fail closed):
//!
//! - [`Unreachable::FailClosed`]: the call returns the error; the caller refuses.
//! - [`Unreachable::FailOpen`]: the call answers "allowed" and queues the usage, with its
//!   idempotency key, in a bounded in-memory queue ([`PENDING_USAGE_MAX`] events by default;
//!   beyond it the usage is allowed but dropped, [`Recorded::Dropped`]). Replay it with
//!   [`Client::replay_pending`] once Tally is back (inspect it with [`Client::pending_len`]
//!   and [`Client::pending`]).
//!
//! **The queue lives in memory only: what it holds is lost if the process dies** before a
//! replay succeeded. A queued event is replayed exactly as first sent; if it had no
//! `timestamp` it counts in the period in which it is replayed, so set
//! [`UsageRequest::timestamp`] to count it when it happened.
//!
//! ```no_run
//! use tally_client::{Client, Recorded, Unreachable, UsageRequest};
//!
//! # async fn serve_request(tally: &Client) -> Result<(), tally_client::Error> {
//! let usage = UsageRequest::new("api_calls", 1).with_timestamp(tally_client::chrono::Utc::now());
//! match tally.record_with("acme", &usage, Unreachable::FailOpen).await {
//!     Ok(Recorded::Stored(r)) => println!("recorded, {:?} left", r.remaining),
//!     Ok(Recorded::Queued(u)) => println!("Tally is down ({}); queued", u.cause),
//!     Ok(Recorded::Dropped(u)) => println!("Tally is down and the queue is full: lost {:?}", u.idempotency_keys),
//!     Err(e) if e.is_quota_exceeded() => println!("refused by a HARD limit"),
//!     Err(e) => return Err(e),
//! }
//! // Later, from a timer:
//! match tally.replay_pending().await {
//!     Ok(report) => println!("{} recorded, {} refused", report.recorded, report.rejected.len()),
//!     Err(e) => println!("still down: {e}; {} queued", tally.pending_len()),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Errors
//!
//! [`Error::QuotaExceeded`] carries the 429's members (`metric_code`, `current_usage`,
//! `limit`, `requested`, `period_end`) and its `Retry-After`; [`Error::Api`] any other
//! [`Problem`] (`status`, `code`, `detail` and the code's extra members);
//! [`Error::Transport`] a failure to get an answer. [`Error::is_unavailable`] tells whether
//! Tally could not be reached.
//!
//! # Features
//!
//! - `rustls`: `https` base URLs (reqwest's `rustls`). Without it the client speaks plain
//!   HTTP only, to a Tally on the same host or private network, or behind a TLS-terminating
//!   proxy there.

#![warn(missing_docs)]

mod client;
mod error;
mod pending;
mod retry;
pub mod types;

/// The `chrono` this crate's timestamps are made of ([`chrono::DateTime<chrono::Utc>`]).
pub use chrono;

pub use client::{
    Checked, Client, ClientBuilder, Recorded, USER_AGENT, Unreachable, Unrecorded, generate_idempotency_key,
};
pub use error::{Error, Problem, QuotaExceeded, UNAVAILABLE_STATUSES, UNEXPECTED_BODY_CHARS_MAX};
pub use pending::{
    PENDING_USAGE_MAX, PendingUsage, REPLAY_BATCH_LEN, RejectedUsage, ReplayError, ReplayReport,
};
pub use retry::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, RETRY_ATTEMPTS_DEFAULT, RETRY_BACKOFF_INITIAL,
    RETRY_BACKOFF_MAX, RetryPolicy,
};
pub use types::*;
