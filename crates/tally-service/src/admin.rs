//! Admin use cases: plans, tenants, subscriptions, overrides and the audit log. Every change
//! is written to the audit log with the key that made it, in the same transaction.

use tally_domain::limits::PAGE_LEN_MAX;
use tally_domain::{
    AuditAction, AuditEntry, MetricCode, Name, Override, Plan, PlanCode, PlanSpec, QuotaLimit, Subscription,
    Tenant, TenantId, Timestamp,
};
use tally_store::{PutOutcome, Store};
use uuid::Uuid;

use crate::usage::check_page_limit;
use crate::{ServiceError, Tally};

/// A tenant with its subscription and overrides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantView {
    /// The tenant.
    pub tenant: Tenant,
    /// Its subscription, if any.
    pub subscription: Option<Subscription>,
    /// Its overrides, by metric.
    pub overrides: Vec<Override>,
}

/// A page of tenants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantPage {
    /// Tenants by id.
    pub tenants: Vec<TenantView>,
    /// The id to continue after; `None` at the end.
    pub next_cursor: Option<String>,
}

/// A page of audit entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditPage {
    /// Newest first.
    pub entries: Vec<AuditEntry>,
    /// Where the next page starts; `None` at the end.
    pub next_cursor: Option<String>,
}

fn limits_json(limits: &[QuotaLimit]) -> serde_json::Value {
    serde_json::to_value(limits).unwrap_or(serde_json::Value::Null)
}

impl<S: Store> Tally<S> {
    fn audit(
        &self,
        key_id: Option<Uuid>,
        action: AuditAction,
        tenant: Option<&TenantId>,
        details: serde_json::Value,
    ) -> AuditEntry {
        AuditEntry::new(self.now(), key_id, action, tenant.cloned(), details)
    }

    /// Creates or replaces a plan; a put that changes nothing changes nothing.
    pub async fn put_plan(
        &self,
        code: &PlanCode,
        spec: &PlanSpec,
        key_id: Option<Uuid>,
    ) -> Result<PutOutcome<Plan>, ServiceError> {
        self.check_limits_against_catalog(&spec.limits).await?;
        let details = serde_json::json!({"plan_code": code.as_str(), "name": spec.name.as_str(), "limits": limits_json(&spec.limits)});
        let audit = self.audit(key_id, AuditAction::PlanPut, None, details);
        let out = self.store.put_plan(code, spec, self.now(), &audit).await?;
        self.invalidate();
        Ok(out)
    }

    /// The plan; `NotFound` when missing.
    pub async fn get_plan(&self, code: &PlanCode) -> Result<Plan, ServiceError> {
        self.store.find_plan(code).await?.ok_or_else(|| ServiceError::NotFound(format!("plan {code}")))
    }

    /// Every plan, by code.
    pub async fn list_plans(&self) -> Result<Vec<Plan>, ServiceError> {
        Ok(self.store.list_plans().await?)
    }

    /// Every version of a plan, newest first.
    pub async fn plan_versions(&self, code: &PlanCode) -> Result<Vec<Plan>, ServiceError> {
        Ok(self.store.list_plan_versions(code).await?)
    }

    /// Deletes a plan nobody subscribes to.
    pub async fn delete_plan(&self, code: &PlanCode, key_id: Option<Uuid>) -> Result<(), ServiceError> {
        let audit = self.audit(
            key_id,
            AuditAction::PlanDelete,
            None,
            serde_json::json!({"plan_code": code.as_str()}),
        );
        self.store.delete_plan(code, &audit).await.map_err(|e| match e {
            tally_store::StoreError::Conflict(_) => ServiceError::Conflict(format!(
                "plan {code} has subscribers; move them to another plan first"
            )),
            other => other.into(),
        })?;
        self.invalidate();
        Ok(())
    }

    /// Creates a tenant or renames it.
    pub async fn put_tenant(
        &self,
        tenant: &TenantId,
        name: &Name,
    ) -> Result<PutOutcome<TenantView>, ServiceError> {
        let out = self.store.put_tenant(tenant, name, self.now()).await?;
        self.invalidate();
        let view = |t: Tenant| async { self.view(t).await };
        Ok(match out {
            PutOutcome::Created(t) => PutOutcome::Created(view(t).await?),
            PutOutcome::Updated(t) => PutOutcome::Updated(view(t).await?),
            PutOutcome::Unchanged(t) => PutOutcome::Unchanged(view(t).await?),
        })
    }

    async fn view(&self, tenant: Tenant) -> Result<TenantView, ServiceError> {
        let subscription = self.store.find_subscription(&tenant.tenant_id).await?;
        let overrides = self.store.list_overrides(&tenant.tenant_id).await?;
        Ok(TenantView { tenant, subscription, overrides })
    }

    /// The tenant with its subscription and overrides; `NotFound` when missing.
    pub async fn get_tenant(&self, tenant: &TenantId) -> Result<TenantView, ServiceError> {
        let t = self.require_tenant(tenant).await?;
        self.view(t).await
    }

    /// A page of tenants by id; `cursor` is the last id of the previous page.
    pub async fn list_tenants(&self, limit: u32, cursor: Option<&str>) -> Result<TenantPage, ServiceError> {
        let limit = check_page_limit(limit)?;
        let after = cursor
            .map(|c| {
                TenantId::parse(c).map_err(|_| {
                    tally_domain::DomainError::invalid("cursor", "is not a cursor this server issued")
                })
            })
            .transpose()?;
        let mut tenants = self.store.list_tenants(after.as_ref(), limit + 1).await?;
        let next_cursor = if tenants.len() > limit as usize {
            tenants.truncate(limit as usize);
            tenants.last().map(|t| t.tenant_id.to_string())
        } else {
            None
        };
        let mut views = Vec::with_capacity(tenants.len());
        for t in tenants {
            views.push(self.view(t).await?);
        }
        Ok(TenantPage { tenants: views, next_cursor })
    }

    /// Subscribes a tenant to a plan (or changes its plan, keeping the current usage).
    pub async fn subscribe(
        &self,
        tenant: &TenantId,
        plan: &PlanCode,
        anchor: Option<Timestamp>,
        key_id: Option<Uuid>,
    ) -> Result<Subscription, ServiceError> {
        let details = serde_json::json!({
            "plan_code": plan.as_str(),
            "anchor": anchor.map(tally_domain::time::format_rfc3339),
        });
        let audit = self.audit(key_id, AuditAction::SubscriptionPut, Some(tenant), details);
        let sub = self.store.put_subscription(tenant, plan, anchor, self.now(), &audit).await?;
        self.invalidate();
        Ok(sub)
    }

    /// Ends a tenant's subscription.
    pub async fn unsubscribe(&self, tenant: &TenantId, key_id: Option<Uuid>) -> Result<(), ServiceError> {
        self.require_tenant(tenant).await?;
        let audit = self.audit(key_id, AuditAction::SubscriptionDelete, Some(tenant), serde_json::json!({}));
        self.store.delete_subscription(tenant, &audit).await?;
        self.invalidate();
        Ok(())
    }

    /// Sets a tenant's own limit for one metric.
    pub async fn put_override(
        &self,
        tenant: &TenantId,
        limit: &QuotaLimit,
        key_id: Option<Uuid>,
    ) -> Result<(), ServiceError> {
        self.check_limits_against_catalog(std::slice::from_ref(limit)).await?;
        let details = serde_json::to_value(limit).unwrap_or(serde_json::Value::Null);
        let audit = self.audit(key_id, AuditAction::OverridePut, Some(tenant), details);
        self.store.put_override(tenant, limit, &audit).await?;
        self.invalidate();
        Ok(())
    }

    /// Removes a tenant's override of one metric.
    pub async fn delete_override(
        &self,
        tenant: &TenantId,
        metric: &MetricCode,
        key_id: Option<Uuid>,
    ) -> Result<(), ServiceError> {
        self.require_tenant(tenant).await?;
        let details = serde_json::json!({"metric_code": metric.as_str()});
        let audit = self.audit(key_id, AuditAction::OverrideDelete, Some(tenant), details);
        self.store.delete_override(tenant, metric, &audit).await?;
        self.invalidate();
        Ok(())
    }

    /// A page of the audit log, newest first.
    pub async fn audit_log(
        &self,
        tenant: Option<&TenantId>,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<AuditPage, ServiceError> {
        let limit = check_page_limit(limit)?;
        let before = cursor
            .map(|c| {
                Uuid::try_parse(c).map_err(|_| {
                    tally_domain::DomainError::invalid("cursor", "is not a cursor this server issued")
                })
            })
            .transpose()?;
        let mut entries = self.store.list_audit(tenant, before, limit + 1).await?;
        let next_cursor = if entries.len() > limit as usize {
            entries.truncate(limit as usize);
            entries.last().map(|e| e.id.to_string())
        } else {
            None
        };
        Ok(AuditPage { entries, next_cursor })
    }

    /// Tenants subscribed to a plan, at most `PAGE_LEN_MAX`.
    pub async fn subscribers(&self, plan: &PlanCode) -> Result<Vec<TenantId>, ServiceError> {
        Ok(self.store.list_subscribers(plan, PAGE_LEN_MAX).await?)
    }
}
