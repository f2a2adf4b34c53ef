//! Tally's use cases over any store: record, check, usage, history, events, reset, plans,
//! tenants, subscriptions, overrides, keys, audit and verify. Time comes from an injectable
//! `Clock`; the store is a generic parameter, so there is no `dyn` on the hot path.
#![warn(missing_docs)]

pub mod admin;
pub mod admin_ui;
pub mod cache;
pub mod catalog;
pub mod clock;
pub mod compat;
pub mod error;
pub mod group;
pub mod keys;
pub mod reservations;
pub mod usage;
pub mod verify;
pub mod webhooks;

use std::sync::Arc;

use chrono::Duration;
use tally_domain::Timestamp;
use tally_domain::limits::EVENT_AGE_SECONDS_DEFAULT;
use tally_store::Store;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::ServiceError;

/// Settings of the use cases.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// How far in the past an event's timestamp may lie.
    pub max_event_age: Duration,
    /// How webhook deliveries are retried.
    pub webhook_retry: tally_domain::RetryPolicy,
}

impl Default for ServiceConfig {
    fn default() -> ServiceConfig {
        ServiceConfig {
            max_event_age: Duration::seconds(EVENT_AGE_SECONDS_DEFAULT),
            webhook_retry: tally_domain::RetryPolicy::default(),
        }
    }
}

/// Tally's use cases over one store.
pub struct Tally<S: Store> {
    store: S,
    clock: Arc<dyn Clock>,
    config: ServiceConfig,
    committer: Option<Arc<group::GroupCommitter>>,
    cache: Option<Arc<cache::ConfigCache>>,
}

impl<S: Store> Clone for Tally<S> {
    fn clone(&self) -> Self {
        Tally {
            store: self.store.clone(),
            clock: self.clock.clone(),
            config: self.config.clone(),
            committer: self.committer.clone(),
            cache: self.cache.clone(),
        }
    }
}

impl<S: Store> Tally<S> {
    /// Use cases over `store`, with the system clock and default settings.
    pub fn new(store: S) -> Tally<S> {
        Tally::with_clock(store, Arc::new(SystemClock), ServiceConfig::default())
    }

    /// Use cases over `store` with the given clock and settings.
    pub fn with_clock(store: S, clock: Arc<dyn Clock>, config: ServiceConfig) -> Tally<S> {
        Tally { store, clock, config, committer: None, cache: None }
    }

    /// Coalesces concurrent `record` calls into one transaction per round trip, with
    /// `writers` concurrent transactions (1 for SQLite's single writer). Starts tasks on the
    /// current tokio runtime.
    pub fn with_group_commit(mut self, writers: usize) -> Tally<S> {
        self.committer =
            Some(Arc::new(group::GroupCommitter::start(self.store.clone(), self.clock.clone(), writers)));
        self
    }

    /// Caches keys, entitlements and tenants, revalidated against the store's configuration
    /// version (see `cache`).
    pub fn with_caches(mut self) -> Tally<S> {
        self.cache = Some(Arc::new(cache::ConfigCache::default()));
        self
    }

    /// Drops this instance's cached configuration after a change made through it (other
    /// instances notice through the store's configuration version).
    pub(crate) fn invalidate(&self) {
        if let Some(cache) = &self.cache {
            cache.clear();
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The current instant, from the clock.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The settings.
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }
}
