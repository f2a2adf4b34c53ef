//! Tally's use cases over any store: record, check, usage, history, events, reset, plans,
//! tenants, subscriptions, overrides, keys, audit and verify. Time comes from an injectable
//! `Clock`; the store is a generic parameter, so there is no `dyn` on the hot path. Writes
//! go through the store's group-commit queue (`UsageWriter::write`), and configuration is
//! read through the store's cache (`ConfigVersion::config_cache`).
#![warn(missing_docs)]

pub mod admin;
pub mod admin_ui;
pub mod catalog;
pub mod clock;
pub mod closing;
pub mod compat;
pub mod error;
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
}

impl<S: Store> Clone for Tally<S> {
    fn clone(&self) -> Self {
        Tally { store: self.store.clone(), clock: self.clock.clone(), config: self.config.clone() }
    }
}

impl<S: Store> Tally<S> {
    /// Use cases over `store`, with the system clock and default settings.
    pub fn new(store: S) -> Tally<S> {
        Tally::with_clock(store, Arc::new(SystemClock), ServiceConfig::default())
    }

    /// Use cases over `store` with the given clock and settings.
    pub fn with_clock(store: S, clock: Arc<dyn Clock>, config: ServiceConfig) -> Tally<S> {
        Tally { store, clock, config }
    }

    /// Drops the store's cached configuration after a change made through this instance
    /// (other instances notice through the store's configuration version).
    pub(crate) fn invalidate(&self) {
        self.store.config_cache().clear();
    }

    /// The event-time window and instant of one write.
    pub(crate) fn write_ctx(&self) -> tally_store::Ctx {
        tally_store::Ctx::new(self.now(), self.config.max_event_age)
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
