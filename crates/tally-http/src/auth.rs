//! Who is calling: an admin key (configured, or made by `tally keys create --admin`) or a
//! tenant key, presented as `Authorization: Bearer <key>`. Keys are compared as SHA-256
//! hashes, in constant time; no key ever sits in memory or in the store in clear.
//!
//! Every extractor here goes through `Principal`, which applies the key's rate limit
//! (`rate_limit.rs`) right after authenticating it and before anything else of the request
//! (path, query, body) is read: the order is auth → rate limit → permission → the rest.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use tally_domain::{KeyScope, TenantId};
use tally_service::keys::{constant_time_eq, hash_key};
use tally_store::Store;
use uuid::Uuid;

use crate::error::ApiError;
use crate::rate_limit::{CONFIGURED_ADMIN_BUCKET, LimitScope, RateLimiter};
use crate::state::AppState;

/// `last_used_at` is written at most this often per key, off the request path.
pub const KEY_TOUCH_INTERVAL: Duration = Duration::from_secs(60);
/// Longest Authorization header value looked at.
pub const AUTH_HEADER_BYTES_MAX: usize = 512;

/// The authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// May do everything; `key_id` is `None` for the configured admin key.
    Admin {
        /// The stored key, if it is one.
        key_id: Option<Uuid>,
    },
    /// May record, check and read one tenant's usage.
    Tenant {
        /// The stored key.
        key_id: Uuid,
        /// Its tenant.
        tenant: TenantId,
    },
}

impl Principal {
    /// The key to name in the audit log; 403 for a tenant key.
    pub fn require_admin(&self) -> Result<Option<Uuid>, ApiError> {
        match self {
            Principal::Admin { key_id } => Ok(*key_id),
            Principal::Tenant { .. } => Err(ApiError::forbidden("this operation needs an admin key")),
        }
    }

    /// Allows an admin, or a tenant key on its own tenant (compared as sent, before validation).
    pub fn require_tenant(&self, tenant: &str) -> Result<(), ApiError> {
        match self {
            Principal::Admin { .. } => Ok(()),
            Principal::Tenant { tenant: own, .. } if own.as_str() == tenant => Ok(()),
            Principal::Tenant { .. } => Err(ApiError::forbidden("a tenant key may only use its own tenant")),
        }
    }
}

/// Remembers when each key's `last_used_at` was last written.
#[derive(Clone, Default)]
pub struct KeyTouches(Arc<Mutex<HashMap<Uuid, Instant>>>);

impl KeyTouches {
    /// Whether `key` is due for a write now (and notes that it was).
    pub fn due(&self, key: Uuid) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match map.get(&key) {
            Some(last) if now.duration_since(*last) < KEY_TOUCH_INTERVAL => false,
            _ => {
                map.insert(key, now);
                true
            }
        }
    }
}

/// The presented bearer token.
pub fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let raw = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <key> header"))?;
    if raw.len() > AUTH_HEADER_BYTES_MAX {
        return Err(ApiError::unauthorized("unknown key"));
    }
    let value = raw.to_str().map_err(|_| ApiError::unauthorized("unknown key"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| ApiError::unauthorized("expected Authorization: Bearer <key>"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::unauthorized("expected Authorization: Bearer <key>"));
    }
    Ok(token.trim())
}

impl<S: Store> FromRequestParts<AppState<S>> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState<S>) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        if let Some(admin_hash) = &state.admin_key_hash
            && constant_time_eq(hash_key(token).as_bytes(), admin_hash.as_bytes())
        {
            limit(&state.rate_limiter, LimitScope::Admin, CONFIGURED_ADMIN_BUCKET, None)?;
            return Ok(Principal::Admin { key_id: None });
        }
        let key =
            state.tally.authenticate(token).await?.ok_or_else(|| ApiError::unauthorized("unknown key"))?;
        limit(&state.rate_limiter, LimitScope::of(&key.scope), key.id, key.rate_limit)?;
        if state.touches.due(key.id) {
            let tally = state.tally.clone();
            let id = key.id;
            tokio::spawn(async move {
                let now = tally.now();
                if let Err(e) = tally.store().touch_key(id, now).await {
                    tracing::warn!(error = %e, "could not note a key's last use");
                }
            });
        }
        Ok(match key.scope {
            KeyScope::Admin => Principal::Admin { key_id: Some(key.id) },
            KeyScope::Tenant(tenant) => Principal::Tenant { key_id: key.id, tenant },
        })
    }
}

/// Takes a token from the key's bucket, or answers 429 `rate_limited`. Without a limit for
/// the key (neither its own nor its scope's default) this is one branch: no lock, no clock.
#[inline]
fn limit(
    limiter: &RateLimiter,
    scope: LimitScope,
    bucket: Uuid,
    own: Option<tally_domain::RateLimit>,
) -> Result<(), ApiError> {
    let Some(rate) = limiter.limit_for(scope, own) else {
        return Ok(());
    };
    limiter.take(bucket, rate).map_err(|limited| {
        crate::rate_limit::count_limited(scope);
        ApiError::rate_limited(&limited)
    })
}

/// An admin caller, checked before anything else of the request is read: a tenant key gets
/// 403 whatever its body or query holds. Holds the key to name in the audit log (`None` for
/// the configured admin key).
pub struct Admin(pub Option<Uuid>);

impl<S: Store> FromRequestParts<AppState<S>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState<S>) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, state).await?;
        principal.require_admin().map(Admin)
    }
}

/// A caller allowed on the route's `{tenant_id}`: an admin, or that tenant's own key. Checked
/// before the body or query is read, so another tenant's key gets 403 whatever it sent.
/// Carries the path parameters it read, so the handler does not read them again.
pub struct TenantAccess(pub Principal, pub crate::extract::Params);

impl<S: Store> FromRequestParts<AppState<S>> for TenantAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState<S>) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, state).await?;
        let params = crate::extract::Params::from_request_parts(parts, state).await?;
        principal.require_tenant(params.get("tenant_id"))?;
        Ok(TenantAccess(principal, params))
    }
}
