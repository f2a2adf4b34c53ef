//! Caches of configuration read on the hot path — API keys, entitlements (subscription,
//! plan, overrides) and tenants — outside the deciding transaction.
//!
//! Every entry is dropped as soon as the store's `config_version` moves, which any process
//! sharing the store bumps in the same transaction as a change; the version is read at most
//! every `CACHE_REVALIDATE_INTERVAL`, so a change made anywhere (another instance, the CLI)
//! is seen within that interval plus one request, well under a second. HARD decisions never
//! use these caches: the usage transaction reads the limits itself.
//!
//! A fetch that raced with a clear does not put its (possibly stale) answer back: entries are
//! only stored under the generation in which their fetch started.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use tally_domain::{ApiKey, Tenant, TenantId};
use tally_store::{EntitlementLookup, Store, StoreError};

/// How often the store's configuration version is read.
pub const CACHE_REVALIDATE_INTERVAL: Duration = Duration::from_millis(250);
/// Entries per cache; a full cache is emptied rather than grown (it refills from the store).
pub const CACHE_ENTRIES_MAX: usize = 100_000;

/// One bounded map.
struct Map<K, V> {
    entries: RwLock<HashMap<K, V>>,
}

impl<K: Eq + Hash + Clone, V: Clone> Map<K, V> {
    fn new() -> Map<K, V> {
        Map { entries: RwLock::new(HashMap::new()) }
    }
    fn get(&self, k: &K) -> Option<V> {
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

/// The caches of one service instance.
pub struct ConfigCache {
    keys: Map<String, Option<ApiKey>>,
    entitlements: Map<TenantId, EntitlementLookup>,
    tenants: Map<TenantId, Option<Tenant>>,
    /// Local generation, bumped on every clear.
    generation: AtomicU64,
    /// The store's version the entries belong to, and when it was last read.
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
            generation: AtomicU64::new(0),
            checked: Mutex::new((None, Instant::now())),
            revalidating: tokio::sync::Mutex::new(()),
        }
    }
}

impl ConfigCache {
    /// Drops every entry.
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.keys.clear();
        self.entitlements.clear();
        self.tenants.clear();
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
        let generation = self.generation.load(Ordering::SeqCst);
        let v = fetch().await?;
        if self.generation.load(Ordering::SeqCst) == generation {
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
        let k = key_hash.to_owned();
        self.cached(store, &self.keys, &k, || store.find_key_by_hash(key_hash)).await
    }

    /// The tenant's entitlement.
    pub async fn entitlement<S: Store>(
        &self,
        store: &S,
        tenant: &TenantId,
    ) -> Result<EntitlementLookup, StoreError> {
        self.cached(store, &self.entitlements, tenant, || store.find_entitlement(tenant)).await
    }

    /// The tenant, if it exists.
    pub async fn tenant<S: Store>(&self, store: &S, tenant: &TenantId) -> Result<Option<Tenant>, StoreError> {
        self.cached(store, &self.tenants, tenant, || store.find_tenant(tenant)).await
    }
}
