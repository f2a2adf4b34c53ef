//! When and how often a call is sent again, and the timeouts of one attempt.

use std::time::Duration;

/// How long establishing a TCP (and TLS) connection may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one attempt may take, from sending the request to the end of the answer's body.
///
/// Longer than the server's own request timeout (10 s, answered 503 `unavailable`), so the
/// server's answer, which the client retries, arrives before the client gives up. On a hot
/// path, set a shorter one with [`ClientBuilder::timeout`](crate::ClientBuilder::timeout).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Attempts per call, the first one included (so two retries).
pub const RETRY_ATTEMPTS_DEFAULT: u32 = 3;

/// The wait before the first retry; each further wait doubles it.
pub const RETRY_BACKOFF_INITIAL: Duration = Duration::from_millis(100);

/// The longest wait between two attempts.
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// How a call is retried when Tally cannot be reached.
///
/// A call is sent again only after a failure that may be transient: no answer (the
/// connection failed, timed out or broke), or a 503 (502 and 504 too, for calls that are
/// safe to resend). A 4xx is an answer and is never retried; in particular a 429
/// `quota_exceeded` is Tally saying "no". Usage writes and reservations carry the same
/// idempotency key on every attempt, so a retry of a request that did reach Tally is
/// answered `replayed: true` and counted once.
///
/// The wait before retry `n` (1-based) is `initial_backoff × 2^(n-1)`, capped at
/// `max_backoff`, of which a random half is taken off ("equal jitter"), so that clients
/// that failed together do not retry together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per call, the first one included; 1 never retries (0 counts as 1).
    pub max_attempts: u32,
    /// The wait before the first retry.
    pub initial_backoff: Duration,
    /// The longest wait.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: RETRY_ATTEMPTS_DEFAULT,
            initial_backoff: RETRY_BACKOFF_INITIAL,
            max_backoff: RETRY_BACKOFF_MAX,
        }
    }
}

impl RetryPolicy {
    /// One attempt, no retry.
    pub const fn never() -> RetryPolicy {
        RetryPolicy { max_attempts: 1, initial_backoff: Duration::ZERO, max_backoff: Duration::ZERO }
    }

    /// The wait before retry number `retry` (1 for the first retry), jitter included.
    pub fn backoff(&self, retry: u32) -> Duration {
        let full = self.full_backoff(retry);
        let half = full / 2;
        // A random fraction of the other half, from the random bits of a UUID v4.
        let random = (uuid::Uuid::new_v4().as_u128() as u64) as f64 / u64::MAX as f64;
        half + (full - half).mul_f64(random)
    }

    /// The wait before retry number `retry` without jitter: the most it can be.
    pub fn full_backoff(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(30);
        self.initial_backoff.saturating_mul(1u32 << doublings).min(self.max_backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_keeps_at_least_half() {
        let p = RetryPolicy::default();
        assert_eq!(p.full_backoff(1), Duration::from_millis(100));
        assert_eq!(p.full_backoff(2), Duration::from_millis(200));
        assert_eq!(p.full_backoff(5), Duration::from_millis(1600));
        assert_eq!(p.full_backoff(6), RETRY_BACKOFF_MAX);
        assert_eq!(p.full_backoff(u32::MAX), RETRY_BACKOFF_MAX);
        for retry in 1..8 {
            let wait = p.backoff(retry);
            assert!(wait >= p.full_backoff(retry) / 2 && wait <= p.full_backoff(retry), "{retry}: {wait:?}");
        }
    }

    #[test]
    fn never_makes_one_attempt() {
        assert_eq!(RetryPolicy::never().max_attempts, 1);
        assert_eq!(RetryPolicy::never().backoff(1), Duration::ZERO);
    }
}
