//! Quota limits, plans, subscriptions and per-tenant overrides.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::DomainError;
use crate::ids::{MetricCode, Name, PlanCode, TenantId, check_limit_value};
use crate::limits::PLAN_LIMITS_LEN_MAX;
use crate::period::PeriodKind;
use crate::time::Timestamp;

/// What happens when usage would pass a limit (the seed's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitEnforcement {
    /// Refuse usage that would take the counter above the limit.
    Hard,
    /// Record it, and say `exceeded: true` once above the limit.
    Soft,
    /// Record it; tracking only.
    None,
}

impl LimitEnforcement {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitEnforcement::Hard => "hard",
            LimitEnforcement::Soft => "soft",
            LimitEnforcement::None => "none",
        }
    }
}

impl fmt::Display for LimitEnforcement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LimitEnforcement {
    type Err = DomainError;
    fn from_str(raw: &str) -> Result<LimitEnforcement, DomainError> {
        match raw {
            "hard" => Ok(LimitEnforcement::Hard),
            "soft" => Ok(LimitEnforcement::Soft),
            "none" => Ok(LimitEnforcement::None),
            _ => Err(DomainError::invalid("enforcement", "must be one of hard, soft, none")),
        }
    }
}

/// One metric's limit: on a plan, or as a tenant's override.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaLimit {
    /// The metric limited.
    pub metric_code: MetricCode,
    /// The most usage allowed per period; `None` is unlimited.
    pub limit: Option<i64>,
    /// What happens at the limit.
    pub enforcement: LimitEnforcement,
    /// The period usage is counted over.
    pub period: PeriodKind,
}

impl QuotaLimit {
    /// Checks the limit value (`>= 0` or unlimited).
    pub fn new(
        metric_code: MetricCode,
        limit: Option<i64>,
        enforcement: LimitEnforcement,
        period: PeriodKind,
    ) -> Result<QuotaLimit, DomainError> {
        Ok(QuotaLimit { metric_code, limit: check_limit_value(limit)?, enforcement, period })
    }

    /// True when a finite limit is passed (`current_usage > limit`), whatever the enforcement.
    pub fn is_exceeded(&self, current_usage: i64) -> bool {
        self.limit.is_some_and(|limit| current_usage > limit)
    }

    /// True when usage under `enforcement` is refused rather than recorded once it would
    /// pass this limit: only a finite limit under `Hard`.
    pub fn should_enforce(&self, enforcement: LimitEnforcement) -> bool {
        self.limit.is_some() && enforcement == LimitEnforcement::Hard
    }

    /// `max(limit - current_usage, 0)`, or `None` when unlimited.
    pub fn remaining(&self, current_usage: i64) -> Option<i64> {
        self.remaining_with(current_usage, 0)
    }

    /// `max(limit - current_usage - reserved, 0)`, or `None` when unlimited.
    pub fn remaining_with(&self, current_usage: i64, reserved: i64) -> Option<i64> {
        self.limit.map(|limit| limit.saturating_sub(current_usage).saturating_sub(reserved).max(0))
    }
}

/// A pricing plan: limits per metric, versioned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Stable code, such as `pro`.
    pub code: PlanCode,
    /// Display name.
    pub name: Name,
    /// One entry per metric, in the order given.
    pub limits: Vec<QuotaLimit>,
    /// Periods that ended at least this long ago are closed automatically; `None`: never.
    #[serde(default)]
    pub close_after: Option<crate::closing::CloseAfter>,
    /// Starts at 1; +1 on each change.
    pub version: i64,
    /// When the plan was first created.
    pub created_at: Timestamp,
    /// When the plan last changed.
    pub updated_at: Timestamp,
}

/// A plan's content, as a client puts it: validated, without version or times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanSpec {
    /// Display name.
    pub name: Name,
    /// Limits, at most one per metric.
    pub limits: Vec<QuotaLimit>,
    /// Periods that ended at least this long ago are closed automatically; `None`: never.
    pub close_after: Option<crate::closing::CloseAfter>,
}

impl PlanSpec {
    /// Checks the number of limits and that no metric appears twice.
    pub fn new(name: Name, limits: Vec<QuotaLimit>) -> Result<PlanSpec, DomainError> {
        if limits.len() > PLAN_LIMITS_LEN_MAX {
            return Err(DomainError::invalid(
                "limits",
                format!("at most {PLAN_LIMITS_LEN_MAX} limits per plan, got {}", limits.len()),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for limit in &limits {
            if !seen.insert(limit.metric_code.as_str()) {
                return Err(DomainError::invalid(
                    "limits",
                    format!("metric {} appears more than once", limit.metric_code),
                ));
            }
        }
        Ok(PlanSpec { name, limits, close_after: None })
    }

    /// The same spec, closing periods `close_after` after they end.
    pub fn with_close_after(self, close_after: Option<crate::closing::CloseAfter>) -> PlanSpec {
        PlanSpec { close_after, ..self }
    }
}

impl Plan {
    /// The plan's limit for `metric`, if it has one.
    pub fn limit_for(&self, metric: &MetricCode) -> Option<&QuotaLimit> {
        self.limits.iter().find(|l| &l.metric_code == metric)
    }

    /// Whether the plan already says what `spec` says (a `PUT` of it changes nothing).
    pub fn matches(&self, spec: &PlanSpec) -> bool {
        self.name == spec.name && self.limits == spec.limits && self.close_after == spec.close_after
    }
}

/// A tenant: a customer of the SaaS product using Tally.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    /// External id.
    pub tenant_id: TenantId,
    /// Display name.
    pub name: Name,
    /// Internal id; names the tenant's schema in schema tenancy (`tenant_<16 hex>`).
    pub internal_id: u64,
    /// When the tenant was created.
    pub created_at: Timestamp,
}

impl Tenant {
    /// The PostgreSQL schema holding this tenant's quota tables in schema tenancy. Built
    /// from the internal id only, so no external input ever reaches SQL as an identifier.
    pub fn schema_name(&self) -> String {
        schema_name_for(self.internal_id)
    }
}

/// The schema name for an internal tenant id.
pub fn schema_name_for(internal_id: u64) -> String {
    format!("tenant_{internal_id:016x}")
}

/// A tenant's subscription to a plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// The subscriber.
    pub tenant_id: TenantId,
    /// The plan subscribed to.
    pub plan_code: PlanCode,
    /// Month and year periods start on the anchor's day and time.
    pub anchor: Timestamp,
    /// When the current plan was taken; changes only when the plan does.
    pub started_at: Timestamp,
}

/// A tenant's own limit for one metric: replaces the plan's entry, or adds a metric.
pub type Override = QuotaLimit;

/// What a tenant may use: its subscription, its plan and its overrides, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entitlement {
    /// The subscription.
    pub subscription: Subscription,
    /// Effective limits by metric: the plan's, with overrides applied.
    pub limits: BTreeMap<MetricCode, QuotaLimit>,
}

impl Entitlement {
    /// Resolves a plan and a tenant's overrides into effective limits.
    pub fn resolve(subscription: Subscription, plan: &Plan, overrides: &[Override]) -> Entitlement {
        let mut limits: BTreeMap<MetricCode, QuotaLimit> =
            plan.limits.iter().map(|l| (l.metric_code.clone(), l.clone())).collect();
        for o in overrides {
            limits.insert(o.metric_code.clone(), o.clone());
        }
        Entitlement { subscription, limits }
    }

    /// The effective limit for `metric`.
    pub fn limit_for(&self, metric: &MetricCode) -> Option<&QuotaLimit> {
        self.limits.get(metric)
    }
}

/// A tenant's entitlement as found in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntitlementLookup {
    /// No such tenant.
    TenantMissing,
    /// The tenant exists with no subscription.
    NoSubscription,
    /// The tenant's subscription, plan and overrides, resolved.
    Found(Entitlement),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(metric: &str, value: Option<i64>, enforcement: LimitEnforcement) -> QuotaLimit {
        QuotaLimit::new(MetricCode::parse(metric).expect("metric"), value, enforcement, PeriodKind::Month)
            .expect("limit")
    }

    #[test]
    fn exceeded_means_strictly_above_a_finite_limit() {
        let l = limit("api_calls", Some(10), LimitEnforcement::Soft);
        assert!(!l.is_exceeded(10));
        assert!(l.is_exceeded(11));
        assert!(!limit("api_calls", None, LimitEnforcement::Hard).is_exceeded(i64::MAX));
    }

    #[test]
    fn only_finite_hard_limits_are_enforced() {
        let finite = limit("a", Some(1), LimitEnforcement::Hard);
        assert!(finite.should_enforce(LimitEnforcement::Hard));
        assert!(!finite.should_enforce(LimitEnforcement::Soft));
        assert!(!finite.should_enforce(LimitEnforcement::None));
        assert!(!limit("a", None, LimitEnforcement::Hard).should_enforce(LimitEnforcement::Hard));
    }

    #[test]
    fn negative_limits_are_refused() {
        let err = QuotaLimit::new(
            MetricCode::parse("a").expect("m"),
            Some(-1),
            LimitEnforcement::Hard,
            PeriodKind::Day,
        )
        .expect_err("negative");
        assert_eq!(err.to_string(), "limit: must be >= 0 or null, got -1");
    }

    #[test]
    fn a_plan_names_each_metric_once() {
        let name = Name::parse("Pro").expect("name");
        let twice =
            vec![limit("a", Some(1), LimitEnforcement::Hard), limit("a", Some(2), LimitEnforcement::Soft)];
        assert!(PlanSpec::new(name, twice).is_err());
    }

    #[test]
    fn overrides_replace_plan_entries_and_add_metrics() {
        let t0 = crate::time::parse_rfc3339("2026-01-01T00:00:00Z").expect("t");
        let plan = Plan {
            code: PlanCode::parse("pro").expect("code"),
            name: Name::parse("Pro").expect("name"),
            limits: vec![
                limit("a", Some(1), LimitEnforcement::Hard),
                limit("b", Some(2), LimitEnforcement::Hard),
            ],
            close_after: None,
            version: 1,
            created_at: t0,
            updated_at: t0,
        };
        let sub = Subscription {
            tenant_id: TenantId::parse("acme").expect("tenant"),
            plan_code: plan.code.clone(),
            anchor: t0,
            started_at: t0,
        };
        let e = Entitlement::resolve(
            sub,
            &plan,
            &[limit("b", Some(20), LimitEnforcement::Soft), limit("c", None, LimitEnforcement::None)],
        );
        let get = |m: &str| e.limit_for(&MetricCode::parse(m).expect("m")).cloned();
        assert_eq!(get("a").and_then(|l| l.limit), Some(1));
        assert_eq!(get("b").map(|l| (l.limit, l.enforcement)), Some((Some(20), LimitEnforcement::Soft)));
        assert_eq!(get("c").map(|l| l.enforcement), Some(LimitEnforcement::None));
        assert!(get("d").is_none());
    }

    #[test]
    fn schema_names_come_from_the_internal_id_only() {
        assert_eq!(schema_name_for(0xdead_beef), "tenant_00000000deadbeef");
        assert_eq!(schema_name_for(u64::MAX).len(), crate::limits::TENANT_SCHEMA_NAME_LEN);
    }
}
