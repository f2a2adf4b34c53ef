//! The configuration cache every store carries: API keys, entitlements (subscription, plan,
//! overrides), tenants and the webhook rules, read on the hot path without a query.
//!
//! Every entry is tagged with the configuration version (`tally_config_version`) that was
//! known when its fetch began: a lower bound of the version its data reflects, since the
//! version only grows. Two things keep the entries honest:
//! - Reads outside a write (auth, `check`, `usage`) revalidate: the version is read at most
//!   every `CACHE_REVALIDATE_INTERVAL`, and every entry is dropped when it moved, so a change
//!   made anywhere (another instance, the CLI) is seen within that interval plus one request.
//! - Writes decide only against entries tagged with the version their transaction read (in
//!   its first round trip). An older entry is read again inside the transaction before
//!   anything is decided, so a lowered limit binds every instance from the first batch that
//!   begins after the change committed.
//!
//! A fetch that raced with a clear does not put its answer back: entries are only stored
//! under the local generation in which their fetch started.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tally_domain::{ApiKey, EntitlementLookup, Tenant, TenantId};
use tally_engine::WebhookRule;

use crate::{Store, StoreError};

/// How often reads outside a write read the store's configuration version.
pub const CACHE_REVALIDATE_INTERVAL: Duration = Duration::from_millis(250);
/// Entries per map; a full map is emptied rather than grown (it refills from the store).
pub const CACHE_ENTRIES_MAX: usize = 100_000;
/// The version tag of a fetch made before any version was read: older than every version.
pub const VERSION_UNKNOWN: i64 = -1;

/// A cached value and the configuration version known when it was fetched.
#[derive(Debug)]
pub struct Tagged<T> {
    /// A lower bound of the configuration version the value reflects.
    pub version: i64,
    /// The value.
    pub value: Arc<T>,
}

impl<T> Clone for Tagged<T> {
    fn clone(&self) -> Self {
        Tagged { version: self.version, value: self.value.clone() }
    }
}

/// Where a fetch started: the local generation and the version known then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchTag {
    generation: u64,
    /// The version known when the fetch began.
    pub version: i64,
}

/// One bounded map.
struct Map<K, V> {
    entries: RwLock<HashMap<K, V>>,
}

impl<K: Eq + Hash + Clone, V: Clone> Map<K, V> {
    fn new() -> Map<K, V> {
        Map { entries: RwLock::new(HashMap::new()) }
    }
    fn get<Q>(&self, k: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).get(k).cloned()
    }
    fn put(&self, k: K, v: V) {
        let mut map = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if map.len() >= CACHE_ENTRIES_MAX {
            map.clear();
        }
        map.insert(k, v);
    }
    fn clear(&self) {
        self.entries.write().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// The caches of one store (its clones share them).
pub struct ConfigCache {
    keys: Map<String, Option<ApiKey>>,
    entitlements: Map<TenantId, Tagged<EntitlementLookup>>,
    tenants: Map<TenantId, Option<Tenant>>,
    rules: RwLock<Option<Tagged<Vec<WebhookRule>>>>,
    /// Local generation, bumped on every clear.
    generation: AtomicU64,
    /// The store's version the entries belong to, and when reads last read it.
    checked: Mutex<(Option<i64>, Instant)>,
    /// Only one task reads the version at a time.
    revalidating: tokio::sync::Mutex<()>,
}

impl Default for ConfigCache {
    fn default() -> ConfigCache {
        ConfigCache {
            keys: Map::new(),
            entitlements: Map::new(),
            tenants: Map::new(),
            rules: RwLock::new(None),
            generation: AtomicU64::new(0),
            checked: Mutex::new((None, Instant::now())),
            revalidating: tokio::sync::Mutex::new(()),
        }
    }
}

impl std::fmt::Debug for ConfigCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigCache").field("version", &self.known_version()).finish_non_exhaustive()
    }
}

impl ConfigCache {
    /// Drops every entry.
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.keys.clear();
        self.entitlements.clear();
        self.tenants.clear();
        *self.rules.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The configuration version last seen, or `VERSION_UNKNOWN`.
    pub fn known_version(&self) -> i64 {
        self.checked.lock().unwrap_or_else(|p| p.into_inner()).0.unwrap_or(VERSION_UNKNOWN)
    }

    /// Notes that the store is at `version` (read by a write transaction): when it moved,
    /// every entry is dropped.
    pub fn observe(&self, version: i64) {
        let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        if checked.0 != Some(version) {
            self.clear();
            checked.0 = Some(version);
        }
    }

    /// Where a fetch that begins now starts.
    pub fn fetch_tag(&self) -> FetchTag {
        FetchTag { generation: self.generation.load(Ordering::SeqCst), version: self.known_version() }
    }

    fn still(&self, tag: FetchTag) -> bool {
        self.generation.load(Ordering::SeqCst) == tag.generation
    }

    /// Reads the store's version when it is due, and clears the caches when it moved.
    async fn revalidate<S: Store>(&self, store: &S) -> Result<(), StoreError> {
        let due = {
            let checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
            checked.0.is_none() || checked.1.elapsed() >= CACHE_REVALIDATE_INTERVAL
        };
        if !due {
            return Ok(());
        }
        // Another task is already reading it: use the entries as they are.
        let Ok(_guard) = self.revalidating.try_lock() else { return Ok(()) };
        let version = store.config_version().await?;
        let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        if checked.0 != Some(version) {
            self.clear();
        }
        *checked = (Some(version), Instant::now());
        Ok(())
    }

    async fn cached<K, V, S, F, Fut>(
        &self,
        store: &S,
        map: &Map<K, V>,
        key: &K,
        fetch: F,
    ) -> Result<V, StoreError>
    where
        K: Eq + Hash + Clone,
        V: Clone,
        S: Store,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<V, StoreError>>,
    {
        self.revalidate(store).await?;
        if let Some(v) = map.get(key) {
            return Ok(v);
        }
        let tag = self.fetch_tag();
        let v = fetch().await?;
        if self.still(tag) {
            map.put(key.clone(), v.clone());
        }
        Ok(v)
    }

    /// The key with this hash, revoked or not.
    pub async fn key_by_hash<S: Store>(
        &self,
        store: &S,
        key_hash: &str,
    ) -> Result<Option<ApiKey>, StoreError> {
        self.revalidate(store).await?;
        if let Some(v) = self.keys.get(key_hash) {
            return Ok(v);
        }
        let tag = self.fetch_tag();
        let v = store.find_key_by_hash(key_hash).await?;
        if self.still(tag) {
            self.keys.put(key_hash.to_owned(), v.clone());
        }
        Ok(v)
    }

    /// The tenant's entitlement, for reads outside a write.
    pub async fn entitlement<S: Store>(
        &self,
        store: &S,
        tenant: &TenantId,
    ) -> Result<Arc<EntitlementLookup>, StoreError> {
        self.revalidate(store).await?;
        if let Some(v) = self.entitlements.get(tenant) {
            return Ok(v.value);
        }
        let tag = self.fetch_tag();
        let lookup = Arc::new(store.find_entitlement(tenant).await?);
        if self.still(tag) {
            self.entitlements.put(tenant.clone(), Tagged { version: tag.version, value: lookup.clone() });
        }
        Ok(lookup)
    }

    /// The tenant, if it exists.
    pub async fn tenant<S: Store>(&self, store: &S, tenant: &TenantId) -> Result<Option<Tenant>, StoreError> {
        self.cached(store, &self.tenants, tenant, || store.find_tenant(tenant)).await
    }

    /// The cached entitlement of `tenant` with its tag, for a write (no revalidation: the
    /// write compares the tag with the version its transaction reads).
    pub fn entitlement_for_write(&self, tenant: &TenantId) -> Option<Tagged<EntitlementLookup>> {
        self.entitlements.get(tenant)
    }

    /// Stores an entitlement fetched from `tag` on (unless the cache was cleared since).
    pub fn put_entitlement(&self, tenant: TenantId, lookup: Arc<EntitlementLookup>, tag: FetchTag) {
        if self.still(tag) {
            self.entitlements.put(tenant, Tagged { version: tag.version, value: lookup });
        }
    }

    /// The cached webhook rules with their tag.
    pub fn rules_for_write(&self) -> Option<Tagged<Vec<WebhookRule>>> {
        self.rules.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stores the webhook rules fetched from `tag` on (unless the cache was cleared since).
    pub fn put_rules(&self, rules: Arc<Vec<WebhookRule>>, tag: FetchTag) {
        if self.still(tag) {
            *self.rules.write().unwrap_or_else(|p| p.into_inner()) =
                Some(Tagged { version: tag.version, value: rules });
        }
    }
}
