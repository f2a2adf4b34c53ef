//! The metric catalog: declare a metric's name, unit and kind, and keep plans and overrides
//! consistent with it (a gauge's limit has `period: none`, a counter's never).

use tally_domain::limits::METRICS_LEN_MAX;
use tally_domain::{AuditAction, AuditEntry, Metric, MetricCode, MetricKind, MetricSpec, QuotaLimit};
use tally_store::{PutOutcome, Store};
use uuid::Uuid;

use crate::{ServiceError, Tally};

impl<S: Store> Tally<S> {
    /// Declares a metric or changes it; a put that changes nothing changes nothing. Changing
    /// the kind of a metric that a plan limits with a period of the other kind is a
    /// `Conflict`: change the plan first.
    pub async fn put_metric(
        &self,
        code: &MetricCode,
        spec: &MetricSpec,
        key_id: Option<Uuid>,
    ) -> Result<PutOutcome<Metric>, ServiceError> {
        let before = self.store.find_metric(code).await?;
        if before.is_none() && self.store.list_metrics().await?.len() >= METRICS_LEN_MAX {
            return Err(ServiceError::Conflict(format!(
                "the catalog holds {METRICS_LEN_MAX} metrics, the most allowed"
            )));
        }
        if before.as_ref().is_some_and(|m| m.spec.kind != spec.kind) {
            for plan in self.store.list_plans().await? {
                if let Some(limit) = plan.limits.iter().find(|l| &l.metric_code == code)
                    && spec.kind.check_period(code, limit.period).is_err()
                {
                    return Err(ServiceError::Conflict(format!(
                        "plan {} limits {code} with period {}, which a {} cannot have; change the plan first",
                        plan.code, limit.period, spec.kind
                    )));
                }
            }
        }
        let details = serde_json::json!({
            "metric_code": code.as_str(),
            "name": spec.name.as_str(),
            "unit": spec.unit,
            "kind": spec.kind.as_str(),
            "value_property": spec.value_property,
        });
        let audit = AuditEntry::new(self.now(), key_id, AuditAction::MetricPut, None, details);
        let out = self.store.put_metric(code, spec, self.now(), &audit).await?;
        self.invalidate();
        Ok(out)
    }

    /// A metric of the catalog: declared, or limited by a plan without being declared;
    /// `NotFound` when neither.
    pub async fn get_metric(&self, code: &MetricCode) -> Result<CatalogEntry, ServiceError> {
        if let Some(m) = self.store.find_metric(code).await? {
            return Ok(CatalogEntry::declared(m));
        }
        self.implicit_metrics()
            .await?
            .into_iter()
            .find(|e| &e.code == code)
            .ok_or_else(|| ServiceError::NotFound(format!("metric {code}")))
    }

    /// Every metric of the catalog by code: the declared ones, and those a plan limits
    /// without their being declared (`declared: false`).
    pub async fn list_metrics(&self) -> Result<Vec<CatalogEntry>, ServiceError> {
        let mut entries: Vec<CatalogEntry> =
            self.store.list_metrics().await?.into_iter().map(CatalogEntry::declared).collect();
        for implicit in self.implicit_metrics().await? {
            if !entries.iter().any(|e| e.code == implicit.code) {
                entries.push(implicit);
            }
        }
        entries.sort_by(|a, b| a.code.cmp(&b.code));
        Ok(entries)
    }

    /// The metrics the current plans limit, as the catalog shows them when undeclared: a
    /// counter, or a gauge where a limit on it has `period: none`.
    async fn implicit_metrics(&self) -> Result<Vec<CatalogEntry>, ServiceError> {
        let mut out: Vec<CatalogEntry> = Vec::new();
        for plan in self.store.list_plans().await? {
            for limit in &plan.limits {
                let kind = kind_in_force(limit);
                match out.iter_mut().find(|e| e.code == limit.metric_code) {
                    Some(e) if kind == MetricKind::Gauge => e.spec.kind = kind,
                    Some(_) => {}
                    None => out.push(CatalogEntry {
                        code: limit.metric_code.clone(),
                        spec: MetricSpec {
                            name: tally_domain::Name::parse(limit.metric_code.as_str())?,
                            unit: None,
                            kind,
                            value_property: None,
                        },
                        declared: false,
                        created_at: None,
                        updated_at: None,
                    }),
                }
            }
        }
        Ok(out)
    }

    /// Checks limits about to be written against the catalog: a declared gauge takes only
    /// `period: none`, a declared counter never does. Undeclared metrics take any period.
    pub(crate) async fn check_limits_against_catalog(
        &self,
        limits: &[QuotaLimit],
    ) -> Result<(), ServiceError> {
        if limits.is_empty() {
            return Ok(());
        }
        let declared = self.store.list_metrics().await?;
        for limit in limits {
            if let Some(metric) = declared.iter().find(|m| m.code == limit.metric_code) {
                metric.spec.kind.check_period(&limit.metric_code, limit.period)?;
            }
        }
        Ok(())
    }
}

/// A metric as the catalog shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogEntry {
    /// Its code.
    pub code: MetricCode,
    /// Name, unit and kind: as declared, or the code, none and the kind in force.
    pub spec: MetricSpec,
    /// Whether `PUT /v1/metrics` declared it.
    pub declared: bool,
    /// When it was declared (`None` when it was not).
    pub created_at: Option<tally_domain::Timestamp>,
    /// When its declaration last changed.
    pub updated_at: Option<tally_domain::Timestamp>,
}

impl CatalogEntry {
    /// A declared metric.
    pub fn declared(m: Metric) -> CatalogEntry {
        CatalogEntry {
            code: m.code,
            spec: m.spec,
            declared: true,
            created_at: Some(m.created_at),
            updated_at: Some(m.updated_at),
        }
    }
}

/// The kind a metric is used as when `limit` is in force.
pub fn kind_in_force(limit: &QuotaLimit) -> MetricKind {
    if limit.period == tally_domain::PeriodKind::None { MetricKind::Gauge } else { MetricKind::Counter }
}
