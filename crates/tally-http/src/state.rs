//! The state every handler shares.

use metrics_exporter_prometheus::PrometheusHandle;
use tally_service::Tally;
use tally_service::admin_ui::LoginThrottle;
use tally_service::keys::hash_key;
use tally_store::Store;

use crate::auth::KeyTouches;
use crate::rate_limit::RateLimiter;

/// Shared by all handlers; cloning is cheap.
pub struct AppState<S: Store> {
    /// The use cases.
    pub tally: Tally<S>,
    /// SHA-256 of the configured admin key (`TALLY_ADMIN_KEY` / `--admin-key`), if any.
    pub admin_key_hash: Option<String>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// When set, `/metrics` needs `Authorization: Bearer <token>`.
    pub metrics_token_hash: Option<String>,
    /// `last_used_at` bookkeeping.
    pub touches: KeyTouches,
    /// Admin UI cookies carry `Secure` (`--cookie-secure`: the UI is served over HTTPS).
    pub cookie_secure: bool,
    /// The growing delay after failed admin UI sign-ins.
    pub login_throttle: LoginThrottle,
    /// Extra root certificates (PEM) that webhook deliveries trust (`--webhook-ca-file`).
    pub webhook_roots_pem: Option<Vec<u8>>,
    /// Per-key token buckets and the default limit of each scope (off unless set).
    pub rate_limiter: RateLimiter,
}

impl<S: Store> Clone for AppState<S> {
    fn clone(&self) -> Self {
        AppState {
            tally: self.tally.clone(),
            admin_key_hash: self.admin_key_hash.clone(),
            metrics: self.metrics.clone(),
            metrics_token_hash: self.metrics_token_hash.clone(),
            touches: self.touches.clone(),
            cookie_secure: self.cookie_secure,
            login_throttle: self.login_throttle.clone(),
            webhook_roots_pem: self.webhook_roots_pem.clone(),
            rate_limiter: self.rate_limiter.clone(),
        }
    }
}

impl<S: Store> AppState<S> {
    /// State over `tally`, with the process's metrics recorder.
    pub fn new(tally: Tally<S>) -> AppState<S> {
        AppState {
            tally,
            admin_key_hash: None,
            metrics: crate::metrics::handle(),
            metrics_token_hash: None,
            touches: KeyTouches::default(),
            cookie_secure: false,
            login_throttle: LoginThrottle::default(),
            webhook_roots_pem: None,
            rate_limiter: RateLimiter::default(),
        }
    }

    /// Accepts `key` as the admin key (kept only as its hash).
    pub fn with_admin_key(mut self, key: Option<&str>) -> AppState<S> {
        self.admin_key_hash = key.filter(|k| !k.is_empty()).map(hash_key);
        self
    }

    /// Marks the admin UI's cookies `Secure`.
    pub fn with_cookie_secure(mut self, secure: bool) -> AppState<S> {
        self.cookie_secure = secure;
        self
    }

    /// Makes webhook deliveries trust these root certificates (a PEM bundle) besides the
    /// system's.
    pub fn with_webhook_roots(mut self, pem: Option<Vec<u8>>) -> AppState<S> {
        self.webhook_roots_pem = pem;
        self
    }

    /// Limits every tenant key and every admin key (the configured one included) without a
    /// rate limit of its own to these (`--rate-limit-tenant-key`, `--rate-limit-admin-key`;
    /// `None`: no limit). A key's own limit applies whatever these are.
    pub fn with_rate_limits(
        mut self,
        tenant_key: Option<tally_domain::RateLimit>,
        admin_key: Option<tally_domain::RateLimit>,
    ) -> AppState<S> {
        self.rate_limiter = RateLimiter::new(tenant_key, admin_key);
        self
    }

    /// Guards `/metrics` with a bearer token (kept only as its hash).
    pub fn with_metrics_token(mut self, token: Option<&str>) -> AppState<S> {
        self.metrics_token_hash = token.filter(|k| !k.is_empty()).map(hash_key);
        self
    }
}
