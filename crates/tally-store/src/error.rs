//! `StoreError`: what a store adapter can fail with, free of any database crate.

/// A store failure. Adapters turn their driver's errors into these themselves.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or did not answer in time; the operation may be retried.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The thing asked for does not exist; names what.
    #[error("{0} not found")]
    NotFound(String),
    /// The change contradicts stored state (a named unique constraint, a plan in use, ...).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A transaction lost a race (a concurrent idempotency key, a deadlock) and was rolled
    /// back; the adapter re-runs it, at most `APPLY_RETRY_MAX` times.
    #[error("transaction lost a race and was rolled back")]
    Retry,
    /// A stored row no longer passes the domain's validation.
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// Anything else the store reported.
    #[error("store failed: {0}")]
    Other(String),
}

impl StoreError {
    /// A `NotFound` for `what`.
    pub fn not_found(what: impl Into<String>) -> StoreError {
        StoreError::NotFound(what.into())
    }
}

impl From<tally_domain::DomainError> for StoreError {
    fn from(e: tally_domain::DomainError) -> StoreError {
        StoreError::Corrupt(e.to_string())
    }
}
