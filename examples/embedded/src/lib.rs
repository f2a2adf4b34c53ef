//! Tally as a library: a Rust application enforces quotas in-process with Tally's engine
//! (`tally-domain`, `tally-store`, `tally-service`) and the SQLite store, with the same
//! semantics as `tally serve` — the same decision under the same row lock, the same
//! idempotent replays, the same audit trail — and no HTTP in between.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let quotas = tally_example_embedded::Quotas::open("sqlite://quotas.db").await?;
//! quotas.define_plan("pro", "api_calls", 1000).await?;
//! quotas.add_customer("acme", "pro").await?;
//! match quotas.try_use("acme", "api_calls", 1, Some("request-42")).await? {
//!     Ok(receipt) => println!("allowed; {} used", receipt.current_usage),
//!     Err(refusal) => println!("refused: {refusal}"),
//! }
//! # Ok(()) }
//! ```
//!
//! The database is a plain Tally SQLite file: `tally serve --database-url` on it shows the same
//! usage, and `tally verify` checks it.
#![warn(missing_docs)]

use std::sync::Arc;

use tally_domain::{
    Amount, Change, IdempotencyKey, LimitEnforcement, Metadata, MetricCode, Name, PeriodKind, PlanCode,
    PlanSpec, QuotaLimit, TenantId, UsageError, UsageOutcome, UsageRequest,
};
use tally_service::{ServiceConfig, ServiceError, SystemClock, Tally};
use tally_store_sqlite::SqliteStore;

/// Quotas over one SQLite file, enforced in this process.
#[derive(Clone)]
pub struct Quotas {
    tally: Tally<SqliteStore>,
}

impl Quotas {
    /// Opens (creating and migrating) the SQLite database at `url` (`sqlite://PATH`).
    pub async fn open(url: &str) -> anyhow::Result<Quotas> {
        let store = SqliteStore::open(url).await?;
        // Group commit batches concurrent writes into one transaction, as the server does.
        let tally = Tally::with_clock(store, Arc::new(SystemClock), ServiceConfig::default());
        Ok(Quotas { tally })
    }

    /// Defines (or replaces) plan `code`, allowing `limit` of `metric` a month, HARD.
    pub async fn define_plan(&self, code: &str, metric: &str, limit: i64) -> anyhow::Result<()> {
        let hard = QuotaLimit::new(
            MetricCode::parse(metric)?,
            Some(limit),
            LimitEnforcement::Hard,
            PeriodKind::Month,
        )?;
        let spec = PlanSpec::new(Name::parse(code)?, vec![hard])?;
        self.tally.put_plan(&PlanCode::parse(code)?, &spec, None).await?;
        Ok(())
    }

    /// Creates customer `tenant` (when missing) on plan `plan`.
    pub async fn add_customer(&self, tenant: &str, plan: &str) -> anyhow::Result<()> {
        let id = TenantId::parse(tenant)?;
        self.tally.put_tenant(&id, &Name::parse(tenant)?).await?;
        self.tally.subscribe(&id, &PlanCode::parse(plan)?, None, None).await?;
        Ok(())
    }

    /// Records `amount` of `metric` for `tenant` if its plan allows it: `Ok(Ok(receipt))` when
    /// recorded (or replayed: the same `key` and payload answer the first result again),
    /// `Ok(Err(refusal))` when a HARD limit refused it (nothing was recorded), `Err` on bad input
    /// or a store failure.
    pub async fn try_use(
        &self,
        tenant: &str,
        metric: &str,
        amount: i64,
        key: Option<&str>,
    ) -> anyhow::Result<Result<UsageOutcome, UsageError>> {
        let request = UsageRequest {
            tenant_id: TenantId::parse(tenant)?,
            metric_code: MetricCode::parse(metric)?,
            change: Change::add(Amount::new(amount)?),
            idempotency_key: key.map(IdempotencyKey::parse).transpose()?,
            metadata: Metadata::default(),
            timestamp: None,
        };
        match self.tally.record(request).await {
            Ok(outcome) => Ok(Ok(outcome)),
            Err(ServiceError::Usage(refusal @ UsageError::QuotaExceeded { .. })) => Ok(Err(refusal)),
            Err(other) => Err(other.into()),
        }
    }

    /// What `tenant` has used of `metric` in the current period.
    pub async fn used(&self, tenant: &str, metric: &str) -> anyhow::Result<i64> {
        let metric = MetricCode::parse(metric)?;
        let usage = self.tally.usage(&TenantId::parse(tenant)?).await?;
        Ok(usage.metrics.iter().find(|m| m.metric_code == metric).map_or(0, |m| m.current_usage))
    }

    /// Whether `amount` more would be allowed now, changing nothing.
    pub async fn would_allow(&self, tenant: &str, metric: &str, amount: i64) -> anyhow::Result<bool> {
        let check = self
            .tally
            .check(&TenantId::parse(tenant)?, &MetricCode::parse(metric)?, Change::add(Amount::new(amount)?))
            .await?;
        Ok(check.allowed)
    }

    /// The engine underneath, for everything else the service offers (reservations,
    /// gauges, events, verify).
    pub fn engine(&self) -> &Tally<SqliteStore> {
        &self.tally
    }
}
