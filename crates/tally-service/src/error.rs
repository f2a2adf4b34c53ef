//! `ServiceError`: every way a use case can fail, each with one HTTP status and code.

use tally_domain::{DomainError, UsageError};
use tally_store::StoreError;

/// A use case's failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// Bad input: a field broke a rule.
    #[error(transparent)]
    Invalid(#[from] DomainError),
    /// Recording or checking usage was refused.
    #[error(transparent)]
    Usage(UsageError),
    /// Something named does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The change contradicts stored state.
    #[error("{0}")]
    Conflict(String),
    /// The store cannot be reached; the request may be retried.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A failure that is not the caller's.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<UsageError> for ServiceError {
    fn from(e: UsageError) -> ServiceError {
        match e {
            UsageError::Invalid(d) => ServiceError::Invalid(d),
            UsageError::TenantNotFound { tenant } => ServiceError::NotFound(format!("tenant {tenant}")),
            UsageError::UsageRecordNotFound => ServiceError::NotFound("usage record".to_owned()),
            other => ServiceError::Usage(other),
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> ServiceError {
        match e {
            StoreError::NotFound(what) => ServiceError::NotFound(what),
            StoreError::Conflict(what) => ServiceError::Conflict(what),
            StoreError::Unavailable(why) => ServiceError::Unavailable(why),
            StoreError::Retry => ServiceError::Unavailable("too much contention; retry".to_owned()),
            StoreError::Corrupt(why) | StoreError::Other(why) => ServiceError::Internal(why),
        }
    }
}
