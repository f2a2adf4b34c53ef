//! API keys and the admin audit log.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::DomainError;
use crate::ids::TenantId;
use crate::time::Timestamp;

/// What a key may do.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KeyScope {
    /// Everything.
    Admin,
    /// Record, check and read one tenant's usage.
    Tenant(TenantId),
}

impl KeyScope {
    /// `admin` or `tenant`.
    pub fn kind(&self) -> &'static str {
        match self {
            KeyScope::Admin => "admin",
            KeyScope::Tenant(_) => "tenant",
        }
    }
    /// The tenant of a tenant key.
    pub fn tenant(&self) -> Option<&TenantId> {
        match self {
            KeyScope::Admin => None,
            KeyScope::Tenant(t) => Some(t),
        }
    }
}

/// An API key as stored: its SHA-256 hash, never the key itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    /// Public id, shown in lists and in the audit log.
    pub id: Uuid,
    /// What it may do.
    pub scope: KeyScope,
    /// Lowercase hex SHA-256 of the secret key.
    pub key_hash: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last authenticated a request (updated at most once a minute).
    pub last_used_at: Option<Timestamp>,
    /// When it was revoked; a revoked key authenticates nothing.
    pub revoked_at: Option<Timestamp>,
    /// Its own rate limit, which wins over the server's default for its scope.
    pub rate_limit: Option<RateLimit>,
}

/// A rate: `count` requests per `unit` (`1000/s`, `600/m`, `10000/h`), with a burst of
/// twice `count` (a token bucket that holds `2 × count` and refills `count` per unit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RateLimit {
    count: u32,
    unit_seconds: u32,
}

impl RateLimit {
    /// Reads `N/s`, `N/m` or `N/h`, with `N` in `1..=RATE_LIMIT_COUNT_MAX`.
    pub fn parse(raw: &str) -> Result<RateLimit, DomainError> {
        let bad = || {
            DomainError::invalid(
                "rate_limit",
                format!(
                    "must be N/s, N/m or N/h with N between 1 and {}, got {raw:?}",
                    crate::limits::RATE_LIMIT_COUNT_MAX
                ),
            )
        };
        let (count, unit) = raw.split_once('/').ok_or_else(bad)?;
        if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) || count.len() > 10 {
            return Err(bad());
        }
        let count: u32 = count.parse().map_err(|_| bad())?;
        if !(1..=crate::limits::RATE_LIMIT_COUNT_MAX).contains(&count) {
            return Err(bad());
        }
        let unit_seconds = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            _ => return Err(bad()),
        };
        Ok(RateLimit { count, unit_seconds })
    }

    /// Requests per unit.
    pub fn count(self) -> u32 {
        self.count
    }

    /// The unit, in seconds (1, 60 or 3600).
    pub fn unit_seconds(self) -> u32 {
        self.unit_seconds
    }

    /// Tokens the bucket holds at most: twice the count.
    pub fn burst(self) -> u64 {
        2 * u64::from(self.count)
    }

    /// Tokens added per second.
    pub fn per_second(self) -> f64 {
        f64::from(self.count) / f64::from(self.unit_seconds)
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.unit_seconds {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl FromStr for RateLimit {
    type Err = DomainError;
    fn from_str(raw: &str) -> Result<RateLimit, DomainError> {
        RateLimit::parse(raw)
    }
}

/// What an audit entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuditAction {
    /// A usage record was reset.
    Reset,
    /// A plan was created or replaced.
    PlanPut,
    /// A plan was deleted.
    PlanDelete,
    /// A subscription was created or changed.
    SubscriptionPut,
    /// A subscription was removed.
    SubscriptionDelete,
    /// An override was set.
    OverridePut,
    /// An override was removed.
    OverrideDelete,
    /// A key was created.
    KeyCreate,
    /// A key was revoked.
    KeyRevoke,
    /// The admin UI's password was set or changed.
    AdminPasswordSet,
    /// A metric was declared or changed in the catalog.
    MetricPut,
    /// A webhook was registered or changed.
    WebhookPut,
    /// A webhook was removed.
    WebhookDelete,
    /// A delivery was sent again by hand.
    WebhookRedeliver,
    /// A counter was corrected by a signed amount.
    UsageCorrect,
    /// A tenant's periods were closed up to a watermark.
    PeriodClose,
    /// One closed period was opened again.
    PeriodReopen,
}

impl AuditAction {
    /// The wire name (`reset`, `plan.put`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Reset => "reset",
            AuditAction::PlanPut => "plan.put",
            AuditAction::PlanDelete => "plan.delete",
            AuditAction::SubscriptionPut => "subscription.put",
            AuditAction::SubscriptionDelete => "subscription.delete",
            AuditAction::OverridePut => "override.put",
            AuditAction::OverrideDelete => "override.delete",
            AuditAction::KeyCreate => "key.create",
            AuditAction::KeyRevoke => "key.revoke",
            AuditAction::AdminPasswordSet => "admin.password_set",
            AuditAction::MetricPut => "metric.put",
            AuditAction::WebhookPut => "webhook.put",
            AuditAction::WebhookDelete => "webhook.delete",
            AuditAction::WebhookRedeliver => "webhook.redeliver",
            AuditAction::UsageCorrect => "usage.correct",
            AuditAction::PeriodClose => "period.close",
            AuditAction::PeriodReopen => "period.reopen",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_limit_reads_and_writes_its_three_units() {
        let r = RateLimit::parse("1000/s").unwrap();
        assert_eq!(
            (r.count(), r.unit_seconds(), r.burst(), r.to_string()),
            (1000, 1, 2000, "1000/s".to_owned())
        );
        assert_eq!(RateLimit::parse("600/m").unwrap().per_second(), 10.0);
        assert_eq!(RateLimit::parse("7200/h").unwrap().to_string(), "7200/h");
        for bad in ["", "/s", "0/s", "10", "10/d", "-1/s", "1.5/s", "10 /s", "99999999999/s", "1000001/s"] {
            assert!(RateLimit::parse(bad).is_err(), "{bad:?}");
        }
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AuditAction {
    type Err = DomainError;
    fn from_str(raw: &str) -> Result<AuditAction, DomainError> {
        let all = [
            AuditAction::Reset,
            AuditAction::PlanPut,
            AuditAction::PlanDelete,
            AuditAction::SubscriptionPut,
            AuditAction::SubscriptionDelete,
            AuditAction::OverridePut,
            AuditAction::OverrideDelete,
            AuditAction::KeyCreate,
            AuditAction::KeyRevoke,
            AuditAction::AdminPasswordSet,
            AuditAction::MetricPut,
            AuditAction::WebhookPut,
            AuditAction::WebhookDelete,
            AuditAction::WebhookRedeliver,
            AuditAction::UsageCorrect,
            AuditAction::PeriodClose,
            AuditAction::PeriodReopen,
        ];
        all.into_iter()
            .find(|a| a.as_str() == raw)
            .ok_or_else(|| DomainError::invalid("action", format!("unknown audit action {raw:?}")))
    }
}

/// One entry of the admin audit log: who changed what, when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Time-ordered id (UUID v7).
    pub id: Uuid,
    /// When.
    pub at: Timestamp,
    /// The key that did it; `None` for the CLI acting on the database directly.
    pub key_id: Option<Uuid>,
    /// What (`AuditAction::as_str`).
    pub action: String,
    /// The tenant concerned, if any.
    pub tenant_id: Option<TenantId>,
    /// The change itself.
    pub details: serde_json::Value,
}

impl AuditEntry {
    /// A new entry.
    pub fn new(
        at: Timestamp,
        key_id: Option<Uuid>,
        action: AuditAction,
        tenant_id: Option<TenantId>,
        details: serde_json::Value,
    ) -> AuditEntry {
        AuditEntry { id: Uuid::now_v7(), at, key_id, action: action.as_str().to_owned(), tenant_id, details }
    }
}
