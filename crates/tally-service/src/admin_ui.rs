//! The admin UI's use cases: signing in (admin password or admin key) with server-side
//! sessions, a growing delay after failed sign-ins, the cross-tenant lists of records and
//! events, and the tenant and plan overviews with their usage pictures.
//!
//! The UI is read-only: nothing here changes usage, plans or tenants. The only writes are
//! the admin password (from the CLI) and the sessions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand::RngCore;
use tally_domain::limits::{
    ADMIN_CHART_PERIODS, ADMIN_PASSWORD_BYTES_MAX, ADMIN_PASSWORD_CHARS_MIN, ADMIN_SEARCH_BYTES_MAX,
    ADMIN_SEARCH_TENANTS_MAX, ADMIN_SESSION_SECONDS, LOGIN_DELAY_BASE_MS, LOGIN_DELAY_MAX_MS,
    LOGIN_FAILURE_WINDOW_SECONDS, LOGIN_THROTTLE_CLIENTS_MAX, PAGE_LEN_MAX,
};
use tally_domain::{
    AuditAction, AuditEntry, DomainError, KeyScope, MetricCode, Period, PeriodKind, Plan, PlanCode,
    RecordedEvent, TenantId, UsageRecord,
};
use tally_store::{AdminSearch, AdminSession, EventListQuery, RecordListQuery, Store};
use uuid::Uuid;

use crate::admin::TenantView;
use crate::keys::{hash_key, to_hex};
use crate::usage::{MetricUsage, TenantUsage};
use crate::{ServiceError, Tally};

/// Random bytes in a session token and in a CSRF token.
pub const SESSION_TOKEN_BYTES: usize = 32;

/// A search term resolved to what it matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedSearch {
    /// The tenants and metrics the term matches, as the store takes them.
    pub search: AdminSearch,
    /// More than `ADMIN_SEARCH_TENANTS_MAX` tenants start with the term: only the first
    /// ones are searched.
    pub tenants_truncated: bool,
}

/// A session just started: the token goes to the browser, once.
#[derive(Clone, Debug)]
pub struct NewSession {
    /// The cookie value.
    pub token: String,
    /// The stored session.
    pub session: AdminSession,
}

/// One metric on a tenant page: its current period and the usage of its last periods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricPicture {
    /// The current period, its usage and its limit.
    pub usage: MetricUsage,
    /// The last `ADMIN_CHART_PERIODS` periods, oldest first, ending with the current one;
    /// a period without a record counts 0. Empty for a gauge, whose level has no periods.
    pub history: Vec<(Period, i64)>,
}

/// What the tenant page shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantOverview {
    /// The tenant, its subscription and overrides.
    pub view: TenantView,
    /// Each metric of its entitlement, by code; empty without a subscription.
    pub metrics: Vec<MetricPicture>,
}

/// What the plan page shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanOverview {
    /// The plan as it is now.
    pub plan: Plan,
    /// Every version, newest first.
    pub versions: Vec<Plan>,
    /// Subscribed tenants, by id, at most `PAGE_LEN_MAX`.
    pub subscribers: Vec<TenantId>,
}

/// `n_bytes` random bytes as lowercase hex.
pub fn random_hex(n_bytes: usize) -> String {
    let mut bytes = vec![0u8; n_bytes];
    rand::rng().fill_bytes(&mut bytes);
    let mut out = String::with_capacity(2 * n_bytes);
    to_hex(&bytes, &mut out);
    out
}

/// Hashes an admin password as an argon2id PHC string, after checking its length.
pub fn hash_admin_password(password: &str) -> Result<String, ServiceError> {
    let chars = password.chars().count();
    if chars < ADMIN_PASSWORD_CHARS_MIN || password.len() > ADMIN_PASSWORD_BYTES_MAX {
        return Err(ServiceError::Invalid(DomainError::invalid(
            "password",
            format!(
                "must be {ADMIN_PASSWORD_CHARS_MIN} characters or more and at most {ADMIN_PASSWORD_BYTES_MAX} bytes, got {chars} characters"
            ),
        )));
    }
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| ServiceError::Internal(format!("salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ServiceError::Internal(format!("argon2: {e}")))
}

/// Whether `password` matches the PHC string `phc` (a malformed `phc` matches nothing).
pub fn verify_admin_password(password: &str, phc: &str) -> bool {
    if password.len() > ADMIN_PASSWORD_BYTES_MAX {
        return false;
    }
    PasswordHash::new(phc)
        .is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
}

impl<S: Store> Tally<S> {
    /// Sets (or replaces) the admin UI password, stored as an argon2id hash and audited.
    pub async fn set_admin_password(&self, password: &str) -> Result<(), ServiceError> {
        let phc = hash_admin_password(password)?;
        let audit =
            AuditEntry::new(self.now(), None, AuditAction::AdminPasswordSet, None, serde_json::json!({}));
        Ok(self.store.set_admin_password(&phc, &audit).await?)
    }

    /// Whether `password` is the admin UI password (false when none was set).
    pub async fn check_admin_password(&self, password: &str) -> Result<bool, ServiceError> {
        let Some(phc) = self.store.find_admin_password().await? else { return Ok(false) };
        // argon2 takes tens of milliseconds of CPU: keep it off the async workers.
        let password = password.to_owned();
        tokio::task::spawn_blocking(move || verify_admin_password(&password, &phc))
            .await
            .map_err(|e| ServiceError::Internal(format!("password check: {e}")))
    }

    /// Starts a session for `principal` (`password` or `key:<id>`), after clearing expired ones.
    pub async fn start_admin_session(&self, principal: &str) -> Result<NewSession, ServiceError> {
        let now = self.now();
        self.store.delete_expired_admin_sessions(now).await?;
        let token = random_hex(SESSION_TOKEN_BYTES);
        let session = AdminSession {
            token_hash: hash_key(&token),
            csrf_token: random_hex(SESSION_TOKEN_BYTES),
            principal: principal.to_owned(),
            created_at: now,
            expires_at: now + chrono::Duration::seconds(ADMIN_SESSION_SECONDS),
        };
        self.store.insert_admin_session(&session).await?;
        Ok(NewSession { token, session })
    }

    /// The live session whose token this is; `None` when it expired, was ended, or was opened
    /// with a stored admin key that has since been revoked.
    pub async fn admin_session(&self, token: &str) -> Result<Option<AdminSession>, ServiceError> {
        if token.len() != 2 * SESSION_TOKEN_BYTES {
            return Ok(None);
        }
        let Some(session) = self.store.find_admin_session(&hash_key(token), self.now()).await? else {
            return Ok(None);
        };
        // A session opened with a stored admin key ends when that key is revoked (or gone).
        if let Some(id) = session.principal.strip_prefix("key:") {
            let live = self
                .store
                .list_keys()
                .await?
                .iter()
                .any(|k| k.id.to_string() == id && k.revoked_at.is_none() && k.scope == KeyScope::Admin);
            if !live {
                self.store.delete_admin_session(&session.token_hash).await?;
                return Ok(None);
            }
        }
        Ok(Some(session))
    }

    /// Ends the session whose token this is; it cannot be used again.
    pub async fn end_admin_session(&self, token: &str) -> Result<(), ServiceError> {
        Ok(self.store.delete_admin_session(&hash_key(token)).await?)
    }

    /// Resolves a search term: tenants whose id starts with it (case-sensitive, at most
    /// `ADMIN_SEARCH_TENANTS_MAX`) and known metric codes that start with it. A blank term
    /// is no search.
    pub async fn resolve_admin_search(&self, term: &str) -> Result<Option<ResolvedSearch>, ServiceError> {
        let term = term.trim();
        if term.is_empty() {
            return Ok(None);
        }
        if term.chars().any(char::is_control) {
            return Err(ServiceError::Invalid(DomainError::invalid(
                "q",
                "a search term must not contain control characters",
            )));
        }
        if term.len() > ADMIN_SEARCH_BYTES_MAX {
            return Err(ServiceError::Invalid(DomainError::invalid(
                "q",
                format!("a search term is at most {ADMIN_SEARCH_BYTES_MAX} bytes, got {}", term.len()),
            )));
        }
        let mut tenant_ids = self.store.list_tenant_ids_by_prefix(term, ADMIN_SEARCH_TENANTS_MAX + 1).await?;
        let tenants_truncated = tenant_ids.len() > ADMIN_SEARCH_TENANTS_MAX as usize;
        tenant_ids.truncate(ADMIN_SEARCH_TENANTS_MAX as usize);
        let metric_codes = self
            .store
            .list_metric_codes()
            .await?
            .into_iter()
            .filter(|m| m.as_str().starts_with(term))
            .collect();
        Ok(Some(ResolvedSearch { search: AdminSearch { tenant_ids, metric_codes }, tenants_truncated }))
    }

    /// Every metric code usage can have been recorded for, sorted.
    pub async fn known_metric_codes(&self) -> Result<Vec<MetricCode>, ServiceError> {
        Ok(self.store.list_metric_codes().await?)
    }

    /// A page of the records of every tenant.
    pub async fn admin_records(&self, query: &RecordListQuery) -> Result<Vec<UsageRecord>, ServiceError> {
        check_admin_limit(query.limit)?;
        Ok(self.store.list_records_admin(query).await?)
    }

    /// A page of the events of every tenant.
    pub async fn admin_events(&self, query: &EventListQuery) -> Result<Vec<RecordedEvent>, ServiceError> {
        check_admin_limit(query.limit)?;
        Ok(self.store.list_events_admin(query).await?)
    }

    /// One event; `NotFound` when the tenant has no such event.
    pub async fn admin_event(&self, tenant: &TenantId, id: Uuid) -> Result<RecordedEvent, ServiceError> {
        self.store.find_event(tenant, id).await?.ok_or_else(|| ServiceError::NotFound(format!("event {id}")))
    }

    /// The tenant page: the tenant, and for each metric of its entitlement the current
    /// usage against its limit and the usage of its last `ADMIN_CHART_PERIODS` periods.
    pub async fn tenant_overview(&self, tenant: &TenantId) -> Result<TenantOverview, ServiceError> {
        let view = self.get_tenant(tenant).await?;
        let Some(subscription) = view.subscription.clone() else {
            return Ok(TenantOverview { view, metrics: Vec::new() });
        };
        let TenantUsage { metrics: usages, .. } = self.usage(tenant).await?;
        let mut metrics = Vec::with_capacity(usages.len());
        for usage in usages {
            if usage.period_kind == PeriodKind::None {
                // A gauge has one level and no periods to chart.
                metrics.push(MetricPicture { usage, history: Vec::new() });
                continue;
            }
            let periods = last_periods(&usage, subscription.anchor)?;
            let records = self
                .store
                .list_by_tenant_and_metric(
                    tenant,
                    &usage.metric_code,
                    periods.first().map(Period::start),
                    None,
                    ADMIN_CHART_PERIODS as u32 + 1,
                )
                .await?;
            let history = periods
                .into_iter()
                .map(|p| {
                    let used =
                        records.iter().filter(|r| r.period_start == p.start()).map(|r| r.current_usage).sum();
                    (p, used)
                })
                .collect();
            metrics.push(MetricPicture { usage, history });
        }
        Ok(TenantOverview { view, metrics })
    }

    /// The plan page: the plan, its versions and its subscribers.
    pub async fn plan_overview(&self, code: &PlanCode) -> Result<PlanOverview, ServiceError> {
        let plan = self.get_plan(code).await?;
        let versions = self.plan_versions(code).await?;
        let subscribers = self.store.list_subscribers(code, PAGE_LEN_MAX).await?;
        Ok(PlanOverview { plan, versions, subscribers })
    }
}

fn check_admin_limit(limit: u32) -> Result<(), ServiceError> {
    if limit == 0 || limit > PAGE_LEN_MAX + 1 {
        return Err(ServiceError::Invalid(DomainError::invalid(
            "limit",
            format!("must be 1..={PAGE_LEN_MAX}"),
        )));
    }
    Ok(())
}

/// The `ADMIN_CHART_PERIODS` periods ending with the current one, oldest first.
fn last_periods(usage: &MetricUsage, anchor: tally_domain::Timestamp) -> Result<Vec<Period>, ServiceError> {
    let mut periods = vec![usage.period];
    while periods.len() < ADMIN_CHART_PERIODS {
        let Some(earliest) = periods.last().map(Period::start) else { break };
        let before = earliest - chrono::Duration::microseconds(1);
        periods.push(usage.period_kind.containing(before, anchor)?);
    }
    periods.reverse();
    Ok(periods)
}

/// Failed sign-ins per client, for the growing delay: the n-th failure in a row makes the
/// client's next attempt wait `LOGIN_DELAY_BASE_MS * 2^(n-1)`, at most `LOGIN_DELAY_MAX_MS`.
/// Kept in memory per process (a restart forgets it), bounded by
/// `LOGIN_THROTTLE_CLIENTS_MAX` clients.
#[derive(Clone, Default)]
pub struct LoginThrottle(Arc<Mutex<HashMap<String, (u32, Instant)>>>);

impl LoginThrottle {
    /// How long `client`'s next attempt must wait, at `now`.
    pub fn delay(&self, client: &str, now: Instant) -> Duration {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(client) {
            Some((failures, last)) if now.duration_since(*last).as_secs() < LOGIN_FAILURE_WINDOW_SECONDS => {
                delay_after(*failures)
            }
            _ => Duration::ZERO,
        }
    }

    /// Notes a failed attempt of `client` at `now`.
    pub fn failed(&self, client: &str, now: Instant) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let window = Duration::from_secs(LOGIN_FAILURE_WINDOW_SECONDS);
        map.retain(|_, (_, last)| now.duration_since(*last) < window);
        if map.len() >= LOGIN_THROTTLE_CLIENTS_MAX && !map.contains_key(client) {
            let oldest = map.iter().min_by_key(|(_, (_, last))| *last).map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                map.remove(&oldest);
            }
        }
        let entry = map.entry(client.to_owned()).or_insert((0, now));
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
    }

    /// Forgets `client`'s failures (after a successful sign-in).
    pub fn succeeded(&self, client: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(client);
    }
}

/// The delay after `failures` failed attempts in a row.
pub fn delay_after(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let factor = 1u64.checked_shl(failures.saturating_sub(1).min(30)).unwrap_or(u64::MAX);
    Duration::from_millis(LOGIN_DELAY_BASE_MS.saturating_mul(factor).min(LOGIN_DELAY_MAX_MS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_with_each_failure_up_to_its_ceiling() {
        assert_eq!(delay_after(0), Duration::ZERO);
        assert_eq!(delay_after(1), Duration::from_millis(LOGIN_DELAY_BASE_MS));
        assert_eq!(delay_after(2), Duration::from_millis(2 * LOGIN_DELAY_BASE_MS));
        assert_eq!(delay_after(3), Duration::from_millis(4 * LOGIN_DELAY_BASE_MS));
        assert_eq!(delay_after(40), Duration::from_millis(LOGIN_DELAY_MAX_MS));
    }

    #[test]
    fn a_client_waits_longer_after_each_failure_and_not_after_a_success() {
        let throttle = LoginThrottle::default();
        let t0 = Instant::now();
        assert_eq!(throttle.delay("1.2.3.4", t0), Duration::ZERO);
        throttle.failed("1.2.3.4", t0);
        let first = throttle.delay("1.2.3.4", t0);
        throttle.failed("1.2.3.4", t0);
        let second = throttle.delay("1.2.3.4", t0);
        assert!(second > first && first > Duration::ZERO, "{first:?} then {second:?}");
        assert_eq!(throttle.delay("5.6.7.8", t0), Duration::ZERO, "other clients are not slowed");
        throttle.succeeded("1.2.3.4");
        assert_eq!(throttle.delay("1.2.3.4", t0), Duration::ZERO);
    }

    #[test]
    fn failures_are_forgotten_after_the_window() {
        let throttle = LoginThrottle::default();
        let t0 = Instant::now();
        throttle.failed("c", t0);
        let later = t0 + Duration::from_secs(LOGIN_FAILURE_WINDOW_SECONDS + 1);
        assert_eq!(throttle.delay("c", later), Duration::ZERO);
    }

    #[test]
    fn a_password_hash_verifies_only_its_password() {
        let phc = hash_admin_password("correct horse battery").expect("hash");
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(verify_admin_password("correct horse battery", &phc));
        assert!(!verify_admin_password("correct horse batterx", &phc));
        assert!(!verify_admin_password("correct horse battery", "not a hash"));
    }

    #[test]
    fn a_short_password_is_refused() {
        assert!(matches!(hash_admin_password("short"), Err(ServiceError::Invalid(_))));
    }
}
