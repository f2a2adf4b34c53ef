//! Validation errors: each names the field and the rule it broke.

/// A value that failed validation on construction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// A field broke a rule; `rule` says which, in words a client can act on.
    #[error("{field}: {rule}")]
    Invalid {
        /// The field, as named on the wire (`tenant_id`, `amount`, ...).
        field: &'static str,
        /// The rule that was broken.
        rule: String,
    },
    /// A counter would leave the range of a signed 64-bit integer.
    #[error("{metric}: counter would overflow ({current} + {amount})")]
    CounterOverflow {
        /// Metric of the counter.
        metric: String,
        /// The counter's value before.
        current: i64,
        /// The amount that would overflow it.
        amount: i64,
    },
    /// A date computation left the calendar's range.
    #[error("period: date out of range")]
    PeriodOutOfRange,
}

impl DomainError {
    /// A validation error for `field`.
    pub fn invalid(field: &'static str, rule: impl Into<String>) -> DomainError {
        DomainError::Invalid { field, rule: rule.into() }
    }
}
