//! Per-key rate limits: one token bucket per key, in memory, per instance (N instances behind
//! a load balancer allow N times the rate).
//!
//! A key's limit is its own `rate_limit` if it has one, else the server's default for its
//! scope (`--rate-limit-tenant-key`, `--rate-limit-admin-key`), else none. A bucket holds
//! at most the burst (2 × the count) and refills `per_second` tokens continuously, on the
//! process's monotonic clock (never the service's clock, which tests move by hand); a request
//! takes one token, and with less than one left it is answered 429 `rate_limited`.
//!
//! The check runs in the `Principal` extractor (`auth.rs`), right after the key is known and
//! before anything else of the request is read, so a limited request records nothing. With no
//! limit for the key it is one branch on two `Option`s: no lock, no allocation, no clock.
//!
//! The buckets sit in `RATE_LIMIT_BUCKETS_SHARDS` maps, each behind its own mutex (the shard
//! is picked from the key id's low bits, which are random in a UUID v7), holding at most
//! `RATE_LIMIT_BUCKETS_MAX` buckets in all. When a shard is full, a new key first drops every
//! bucket that has refilled completely (a full bucket answers exactly as a missing one, so
//! that changes no decision); if that frees less than an eighth of the shard, the least
//! recently used buckets go until an eighth is free (such a key starts full again when it
//! comes back). Each sweep frees an eighth of the shard, so its cost is spread over as many
//! new keys.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tally_domain::limits::RATE_LIMIT_BUCKETS_MAX;
use tally_domain::{KeyScope, RateLimit};
use uuid::Uuid;

/// Mutexes the buckets are spread over, so that concurrent requests of different keys seldom
/// wait for one another.
pub const RATE_LIMIT_BUCKETS_SHARDS: usize = 16;

/// The bucket of the admin key given by `--admin-key` / `TALLY_ADMIN_KEY`, which has no stored
/// row (stored keys are UUID v7, never nil).
pub const CONFIGURED_ADMIN_BUCKET: Uuid = Uuid::nil();

/// Buckets one shard holds at most.
const SHARD_CAPACITY: usize = RATE_LIMIT_BUCKETS_MAX.div_ceil(RATE_LIMIT_BUCKETS_SHARDS);

/// Which default applies to a key, and the label of `tally_rate_limited_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitScope {
    /// An admin key (configured or stored).
    Admin,
    /// A tenant key.
    Tenant,
}

impl LimitScope {
    /// The scope of a stored key.
    pub fn of(scope: &KeyScope) -> LimitScope {
        match scope {
            KeyScope::Admin => LimitScope::Admin,
            KeyScope::Tenant(_) => LimitScope::Tenant,
        }
    }

    /// `admin` or `tenant`.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitScope::Admin => "admin",
            LimitScope::Tenant => "tenant",
        }
    }
}

/// What a limited request is answered with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limited {
    /// The limit that refused it.
    pub limit: RateLimit,
    /// Whole seconds (rounded up, at least 1) until the bucket holds one token again: both
    /// `Retry-After` and `RateLimit-Reset`.
    pub retry_after: u64,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    limit: RateLimit,
}

impl Bucket {
    /// Tokens at `now`, refilled since `last` (never above the burst).
    fn refilled(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        (self.tokens + elapsed * self.limit.per_second()).min(self.limit.burst() as f64)
    }
}

type Shard = Mutex<HashMap<Uuid, Bucket>>;

/// The defaults and the buckets; cloning shares the buckets.
#[derive(Clone)]
pub struct RateLimiter {
    tenant_default: Option<RateLimit>,
    admin_default: Option<RateLimit>,
    shards: Arc<[Shard]>,
}

impl Default for RateLimiter {
    fn default() -> RateLimiter {
        RateLimiter::new(None, None)
    }
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("tenant_default", &self.tenant_default)
            .field("admin_default", &self.admin_default)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// A limiter with these defaults for keys without a limit of their own (`None`: off).
    pub fn new(tenant_default: Option<RateLimit>, admin_default: Option<RateLimit>) -> RateLimiter {
        let shards: Vec<Shard> = (0..RATE_LIMIT_BUCKETS_SHARDS).map(|_| Mutex::new(HashMap::new())).collect();
        RateLimiter { tenant_default, admin_default, shards: shards.into() }
    }

    /// The default for tenant keys.
    pub fn tenant_default(&self) -> Option<RateLimit> {
        self.tenant_default
    }

    /// The default for admin keys.
    pub fn admin_default(&self) -> Option<RateLimit> {
        self.admin_default
    }

    /// The limit of a key: its own, else the default for its scope.
    #[inline]
    pub fn limit_for(&self, scope: LimitScope, own: Option<RateLimit>) -> Option<RateLimit> {
        own.or(match scope {
            LimitScope::Admin => self.admin_default,
            LimitScope::Tenant => self.tenant_default,
        })
    }

    /// Takes one token from `bucket`'s bucket under `limit`, now.
    pub fn take(&self, bucket: Uuid, limit: RateLimit) -> Result<(), Limited> {
        self.take_at(bucket, limit, Instant::now())
    }

    /// `take`, at `now` (for tests of the arithmetic).
    pub fn take_at(&self, bucket: Uuid, limit: RateLimit, now: Instant) -> Result<(), Limited> {
        let shard = &self.shards[(bucket.as_u128() as usize) % self.shards.len()];
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        let b = match map.get_mut(&bucket) {
            Some(b) => {
                if b.limit != limit {
                    // The key's limit changed (a restart with other defaults cannot reach
                    // here; a key's own limit can): keep what it used, within the new burst.
                    b.tokens = b.tokens.min(limit.burst() as f64);
                    b.limit = limit;
                }
                b.tokens = b.refilled(now);
                b.last = now;
                b
            }
            None => {
                if map.len() >= SHARD_CAPACITY {
                    make_room(&mut map, now);
                }
                map.entry(bucket).or_insert(Bucket { tokens: limit.burst() as f64, last: now, limit })
            }
        };
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - b.tokens) / limit.per_second();
        // Whole seconds, rounded up; at least 1 (also guards a NaN, which `as` makes 0).
        let retry_after = (wait.ceil() as u64).max(1);
        Err(Limited { limit, retry_after })
    }

    /// Buckets held now, in all shards.
    pub fn buckets(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len()).sum()
    }
}

/// Frees at least an eighth of a full shard: first the buckets that have refilled completely
/// (dropping one changes no decision), then the least recently used.
fn make_room(map: &mut HashMap<Uuid, Bucket>, now: Instant) {
    let target = SHARD_CAPACITY - SHARD_CAPACITY.div_ceil(8);
    map.retain(|_, b| b.refilled(now) < b.limit.burst() as f64);
    if map.len() <= target {
        return;
    }
    let mut touched: Vec<Instant> = map.values().map(|b| b.last).collect();
    let excess = map.len() - target;
    // The `excess`-th oldest touch: everything at or before it goes.
    let (_, cut, _) = touched.select_nth_unstable(excess - 1);
    let cut = *cut;
    map.retain(|_, b| b.last > cut);
}

/// `tally_rate_limited_total{scope}`: requests answered 429 `rate_limited`.
pub fn count_limited(scope: LimitScope) {
    match scope {
        LimitScope::Admin => metrics::counter!("tally_rate_limited_total", "scope" => "admin").increment(1),
        LimitScope::Tenant => metrics::counter!("tally_rate_limited_total", "scope" => "tenant").increment(1),
    }
}

/// Registers both series of `tally_rate_limited_total` at 0, so that `/metrics` shows them
/// before the first refusal.
pub fn register_metrics() {
    metrics::describe_counter!(
        "tally_rate_limited_total",
        "Requests answered 429 rate_limited, by key scope."
    );
    for scope in [LimitScope::Admin, LimitScope::Tenant] {
        match scope {
            LimitScope::Admin => {
                metrics::counter!("tally_rate_limited_total", "scope" => "admin").absolute(0)
            }
            LimitScope::Tenant => {
                metrics::counter!("tally_rate_limited_total", "scope" => "tenant").absolute(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;

    fn rate(raw: &str) -> RateLimit {
        RateLimit::parse(raw).unwrap()
    }

    #[test]
    fn a_bucket_allows_the_burst_then_refuses_until_a_token_is_back() {
        let limiter = RateLimiter::default();
        let key = Uuid::now_v7();
        let t0 = Instant::now();
        for _ in 0..4 {
            limiter.take_at(key, rate("2/s"), t0).unwrap();
        }
        let refused = limiter.take_at(key, rate("2/s"), t0).unwrap_err();
        assert_eq!(refused, Limited { limit: rate("2/s"), retry_after: 1 });
        // Half a second later one token is back (2 per second), and only one.
        limiter.take_at(key, rate("2/s"), t0 + Duration::from_millis(500)).unwrap();
        assert!(limiter.take_at(key, rate("2/s"), t0 + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn retry_after_rounds_up_and_is_at_least_one_second() {
        let limiter = RateLimiter::default();
        let key = Uuid::now_v7();
        let t0 = Instant::now();
        // 1/m: burst 2, then a token every 60 s.
        limiter.take_at(key, rate("1/m"), t0).unwrap();
        limiter.take_at(key, rate("1/m"), t0).unwrap();
        let refused = limiter.take_at(key, rate("1/m"), t0 + Duration::from_millis(100)).unwrap_err();
        assert_eq!(refused.retry_after, 60);
        // 1000/s: the token is back within a millisecond; still 1 s.
        let fast = Uuid::now_v7();
        for _ in 0..2000 {
            limiter.take_at(fast, rate("1000/s"), t0).unwrap();
        }
        assert_eq!(limiter.take_at(fast, rate("1000/s"), t0).unwrap_err().retry_after, 1);
    }

    #[test]
    fn buckets_are_per_key_and_a_refill_never_exceeds_the_burst() {
        let limiter = RateLimiter::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let t0 = Instant::now();
        for _ in 0..4 {
            limiter.take_at(a, rate("2/s"), t0).unwrap();
        }
        assert!(limiter.take_at(a, rate("2/s"), t0).is_err());
        limiter.take_at(b, rate("2/s"), t0).unwrap();
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..4 {
            limiter.take_at(a, rate("2/s"), later).unwrap();
        }
        assert!(limiter.take_at(a, rate("2/s"), later).is_err());
    }

    #[test]
    fn a_key_s_own_limit_wins_over_the_default_of_its_scope() {
        let limiter = RateLimiter::new(Some(rate("10/s")), Some(rate("20/s")));
        assert_eq!(limiter.limit_for(LimitScope::Tenant, None), Some(rate("10/s")));
        assert_eq!(limiter.limit_for(LimitScope::Admin, None), Some(rate("20/s")));
        assert_eq!(limiter.limit_for(LimitScope::Tenant, Some(rate("1/h"))), Some(rate("1/h")));
        assert_eq!(limiter.limit_for(LimitScope::Admin, Some(rate("100/s"))), Some(rate("100/s")));
        let off = RateLimiter::default();
        assert_eq!(off.limit_for(LimitScope::Tenant, None), None);
        assert_eq!(off.limit_for(LimitScope::Admin, None), None);
    }

    #[test]
    fn the_map_stays_bounded_and_drops_the_least_recently_used() {
        let limiter = RateLimiter::default();
        let t0 = Instant::now();
        let total = RATE_LIMIT_BUCKETS_MAX + RATE_LIMIT_BUCKETS_MAX / 2;
        // Every key takes its whole burst, so no bucket is full again for a minute.
        let first = Uuid::now_v7();
        for i in 0..total {
            let key = if i == 0 { first } else { Uuid::now_v7() };
            let at = t0 + Duration::from_micros(i as u64);
            limiter.take_at(key, rate("1/m"), at).unwrap();
            limiter.take_at(key, rate("1/m"), at).unwrap();
        }
        assert!(limiter.buckets() <= RATE_LIMIT_BUCKETS_MAX, "{} buckets", limiter.buckets());
        // The oldest key was dropped: it starts full again (kept, it would be empty).
        let at = t0 + Duration::from_micros(total as u64);
        limiter.take_at(first, rate("1/m"), at).unwrap();
    }

    #[test]
    fn making_room_drops_refilled_buckets_before_any_recent_one() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(10);
        let mut map = HashMap::new();
        let mut recent = Vec::new();
        for i in 0..SHARD_CAPACITY {
            let key = Uuid::now_v7();
            if i % 2 == 0 {
                // Used at t0 at 2/s: full again by `now`, although touched long ago.
                map.insert(key, Bucket { tokens: 0.0, last: t0, limit: rate("2/s") });
            } else {
                map.insert(key, Bucket { tokens: 0.0, last: now, limit: rate("2/s") });
                recent.push(key);
            }
        }
        make_room(&mut map, now);
        assert_eq!(map.len(), recent.len());
        assert!(recent.iter().all(|k| map.contains_key(k)));
    }

    #[test]
    fn making_room_in_a_shard_of_busy_buckets_drops_the_oldest_eighth() {
        let t0 = Instant::now();
        let mut map = HashMap::new();
        let mut keys = Vec::new();
        for i in 0..SHARD_CAPACITY {
            let key = Uuid::now_v7();
            let last = t0 + Duration::from_millis(i as u64);
            map.insert(key, Bucket { tokens: 0.0, last, limit: rate("1/h") });
            keys.push(key);
        }
        make_room(&mut map, t0 + Duration::from_millis(SHARD_CAPACITY as u64));
        let kept = SHARD_CAPACITY - SHARD_CAPACITY.div_ceil(8);
        assert_eq!(map.len(), kept);
        assert!(keys[SHARD_CAPACITY - kept..].iter().all(|k| map.contains_key(k)), "the newest are kept");
    }

    #[test]
    fn a_changed_limit_keeps_what_the_key_used() {
        let limiter = RateLimiter::default();
        let key = Uuid::now_v7();
        let t0 = Instant::now();
        for _ in 0..20 {
            limiter.take_at(key, rate("10/m"), t0).unwrap();
        }
        assert!(limiter.take_at(key, rate("10/m"), t0).is_err());
        // Now 2/m: burst 4, still empty.
        assert!(limiter.take_at(key, rate("2/m"), t0).is_err());
    }
}
