//! The write side of the hot path, shared by every adapter: the group-commit queue, the
//! writers that drain it, and the one transaction runner (with the one place for retries)
//! that carries out `tally_engine`'s decision through an adapter's [`WriteTx`].
//!
//! A batch is one transaction in (at most) two round trips:
//! 1. `WriteTx::begin`: begin, lock the batch's records in the global key order, read the
//!    open holds on them, the idempotency keys already taken, the reservations it settles
//!    and `tally_config_version`;
//! 2. `WriteTx::commit`: the writes (events, counters, reservations, the webhook outbox) and
//!    the commit.
//!
//! Between the two, `tally_engine::plan` decides every operation in Rust, against the
//! entitlements and webhook rules of the configuration cache. Entries older than the version
//! round trip 1 read are read again inside the transaction first (an extra round trip, only
//! after a configuration change), and a record the decision needs that was not locked yet
//! (a reservation's, or one a reloaded plan points to) is locked by `WriteTx::load_more`
//! without waiting out of order.
//!
//! Requests wait in a bounded queue; each writer takes every job waiting (up to
//! `GROUP_COMMIT_OPS_MAX` operations) and runs them as one batch. There is no artificial
//! delay: under light load a batch holds one request, under heavy load batches grow with the
//! queue. A store error that is not an outage is retried job by job, so one bad request
//! cannot fail the others in its batch.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use tally_domain::limits::APPLY_RETRY_MAX;
use tally_domain::{EntitlementLookup, TenantId, Timestamp, UsageError};
use tally_engine::{Answer, Ctx, Entitlements, Loaded, Needs, Unplanned, WebhookRule, WriteOp, Writes};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::cache::ConfigCache;
use crate::error::StoreError;

/// Most operations one group-commit transaction holds (a batch request's 1000 items fit).
pub const GROUP_COMMIT_OPS_MAX: usize = 1_024;
/// Jobs that may wait for a writer; beyond it callers wait to enqueue (backpressure).
pub const GROUP_COMMIT_QUEUE_LEN_MAX: usize = 16_384;
/// Writers when the store takes concurrent transactions (PostgreSQL).
pub const GROUP_COMMIT_WRITERS_DEFAULT: usize = 2;
/// Extra loads one attempt may make before it gives up (config reload, records, states).
pub const LOAD_STEPS_MAX: usize = 4;

/// One transaction of an adapter's write side, as the runner drives it. The adapter holds
/// its connection (a writer task's own, or SQLite's writer thread's).
pub trait WriteTx: Send {
    /// Work of the adapter's own that its writer runs between batches (SQLite's admin
    /// writes); `std::convert::Infallible` when there is none.
    type Other: Send + 'static;

    /// Runs one job of the adapter's own, outside any batch.
    fn run_other(&mut self, job: Self::Other) -> impl Future<Output = ()> + Send;

    /// The entitlements of `tenants` (one entry per tenant found or not: `TenantMissing`),
    /// read inside the open transaction, or on their own when none is open.
    fn load_entitlements(
        &mut self,
        tenants: &[TenantId],
    ) -> impl Future<Output = Result<Vec<(TenantId, EntitlementLookup)>, StoreError>> + Send;

    /// Every registered webhook's rule, read like `load_entitlements`.
    fn load_webhook_rules(&mut self) -> impl Future<Output = Result<Vec<WebhookRule>, StoreError>> + Send;

    /// Round trip 1: begins a transaction and loads what `needs` asks for, locking the
    /// records (in `needs.records` order, then those of `needs.reservations`) and the
    /// reservations. `Retry` when it lost a race (nothing is left open).
    fn begin(
        &mut self,
        needs: &Needs,
        now: Timestamp,
    ) -> impl Future<Output = Result<Loaded, StoreError>> + Send;

    /// Loads more into `loaded` inside the open transaction. It must never wait for a lock
    /// out of the global order: a lock taken by another transaction is `Retry`.
    fn load_more(
        &mut self,
        needs: &Needs,
        now: Timestamp,
        loaded: &mut Loaded,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Round trip 2: writes `writes` and commits. `Retry` when a concurrent transaction took
    /// an idempotency key meanwhile (then nothing was written). Afterwards no transaction is
    /// open, whatever the outcome.
    fn commit(
        &mut self,
        writes: &Writes,
        now: Timestamp,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Rolls back the open transaction, if any.
    fn rollback(&mut self) -> impl Future<Output = ()> + Send;
}

/// The entitlements one batch is decided against, each with the version it was read at.
struct BatchEntitlements {
    entries: HashMap<TenantId, (i64, Arc<EntitlementLookup>)>,
}

impl Entitlements for BatchEntitlements {
    fn lookup(&self, tenant: &TenantId) -> Option<&EntitlementLookup> {
        self.entries.get(tenant).map(|(_, e)| &**e)
    }
}

impl BatchEntitlements {
    fn stale(&self, version: i64) -> bool {
        self.entries.values().any(|(v, _)| *v != version)
    }
}

fn distinct_tenants(ops: &[WriteOp]) -> Vec<TenantId> {
    let mut tenants: Vec<TenantId> = Vec::with_capacity(1);
    for op in ops {
        let t = op.tenant_id();
        if !tenants.contains(t) {
            tenants.push(t.clone());
        }
    }
    tenants.sort();
    tenants
}

/// The batch's entitlements from the cache, fetching the missing ones (outside any
/// transaction) through `tx`.
async fn entitlements<T: WriteTx>(
    tx: &mut T,
    cache: &ConfigCache,
    tenants: &[TenantId],
) -> Result<BatchEntitlements, StoreError> {
    let mut entries = HashMap::with_capacity(tenants.len());
    let mut missing = Vec::new();
    for tenant in tenants {
        match cache.entitlement_for_write(tenant) {
            Some(tagged) => {
                entries.insert(tenant.clone(), (tagged.version, tagged.value));
            }
            None => missing.push(tenant.clone()),
        }
    }
    if !missing.is_empty() {
        let tag = cache.fetch_tag();
        for (tenant, lookup) in tx.load_entitlements(&missing).await? {
            let lookup = Arc::new(lookup);
            cache.put_entitlement(tenant.clone(), lookup.clone(), tag);
            entries.insert(tenant, (tag.version, lookup));
        }
    }
    Ok(BatchEntitlements { entries })
}

async fn webhook_rules<T: WriteTx>(
    tx: &mut T,
    cache: &ConfigCache,
) -> Result<(i64, Arc<Vec<WebhookRule>>), StoreError> {
    if let Some(tagged) = cache.rules_for_write() {
        return Ok((tagged.version, tagged.value));
    }
    let tag = cache.fetch_tag();
    let rules = Arc::new(tx.load_webhook_rules().await?);
    cache.put_rules(rules.clone(), tag);
    Ok((tag.version, rules))
}

/// Decides and writes `ops` in one transaction through `tx`, re-running it when it lost a
/// race (at most `APPLY_RETRY_MAX` times). Returns one answer per operation, in order; an
/// `Err` means nothing was written.
pub async fn run_batch<T: WriteTx>(
    tx: &mut T,
    cache: &ConfigCache,
    ops: &[WriteOp],
    ctx: &Ctx,
) -> Result<Vec<Answer>, StoreError> {
    run_batch_with_wholes(tx, cache, ops, ctx, &[]).await
}

/// `run_batch`, where each range of `wholes` is written whole or not at all: when any of
/// its operations is refused by a closed period, none of them is written, and each answers
/// that refusal (a multi-event request of the compatibility routes).
pub async fn run_batch_with_wholes<T: WriteTx>(
    tx: &mut T,
    cache: &ConfigCache,
    ops: &[WriteOp],
    ctx: &Ctx,
    wholes: &[std::ops::Range<usize>],
) -> Result<Vec<Answer>, StoreError> {
    if ops.is_empty() {
        return Ok(Vec::new());
    }
    let tenants = distinct_tenants(ops);
    for attempt in 0..=APPLY_RETRY_MAX {
        match attempt_batch(tx, cache, ops, ctx, &tenants, wholes).await {
            Err(StoreError::Retry) => {
                tracing::debug!(attempt, "write transaction lost a race; re-running it")
            }
            other => return other,
        }
    }
    Err(StoreError::Unavailable(format!(
        "the write transaction lost a race {} times in a row",
        APPLY_RETRY_MAX + 1
    )))
}

/// The whole ranges among `wholes` (not yet in `removed`) in which an operation answered
/// `PeriodClosed`, with that refusal. `answers[k]` answers the `k`-th operation not removed.
fn closed_wholes(
    answers: &[Answer],
    wholes: &[std::ops::Range<usize>],
    removed: &[(std::ops::Range<usize>, UsageError)],
) -> Vec<(std::ops::Range<usize>, UsageError)> {
    let is_removed = |i: usize| removed.iter().any(|(r, _)| r.contains(&i));
    let mut at = Vec::with_capacity(answers.len());
    let mut original = 0..;
    for _ in answers {
        let i = original.by_ref().find(|i| !is_removed(*i)).unwrap_or(usize::MAX);
        at.push(i);
    }
    let mut found = Vec::new();
    for range in wholes {
        if removed.iter().any(|(r, _)| r == range) {
            continue;
        }
        let closed = at.iter().zip(answers).find_map(|(i, a)| match a {
            Answer::Usage(Err(e @ UsageError::PeriodClosed { .. })) if range.contains(i) => Some(e.clone()),
            _ => None,
        });
        if let Some(e) = closed {
            found.push((range.clone(), e));
        }
    }
    found
}

/// The answers of every operation: those of the operations planned, in order, and the
/// refusal of its range for each removed one.
fn stitched(n: usize, planned: Vec<Answer>, removed: &[(std::ops::Range<usize>, UsageError)]) -> Vec<Answer> {
    let mut planned = planned.into_iter();
    (0..n)
        .map(|i| match removed.iter().find(|(r, _)| r.contains(&i)) {
            Some((_, e)) => Answer::Usage(Err(e.clone())),
            None => planned.next().unwrap_or(Answer::Usage(Err(UsageError::UsageRecordNotFound))),
        })
        .collect()
}

async fn attempt_batch<T: WriteTx>(
    tx: &mut T,
    cache: &ConfigCache,
    ops: &[WriteOp],
    ctx: &Ctx,
    tenants: &[TenantId],
    wholes: &[std::ops::Range<usize>],
) -> Result<Vec<Answer>, StoreError> {
    let mut ents = entitlements(tx, cache, tenants).await?;
    let (mut rules_version, mut rules) = webhook_rules(tx, cache).await?;
    let needs = tally_engine::needs(ops, &ents, ctx, !rules.is_empty());
    let mut loaded = tx.begin(&needs, ctx.now).await?;
    let version = loaded.config_version;
    if ents.stale(version) || rules_version != version {
        // The configuration moved since the cache read it: decide against what this
        // transaction sees (it is at least `version`).
        cache.observe(version);
        let tag = cache.fetch_tag();
        let reloaded = match tx.load_entitlements(tenants).await {
            Ok(r) => r,
            Err(e) => {
                tx.rollback().await;
                return Err(e);
            }
        };
        ents.entries.clear();
        for (tenant, lookup) in reloaded {
            let lookup = Arc::new(lookup);
            cache.put_entitlement(tenant.clone(), lookup.clone(), tag);
            ents.entries.insert(tenant, (version, lookup));
        }
        rules = match tx.load_webhook_rules().await {
            Ok(r) => Arc::new(r),
            Err(e) => {
                tx.rollback().await;
                return Err(e);
            }
        };
        cache.put_rules(rules.clone(), tag);
        rules_version = version;
        debug_assert_eq!(rules_version, version);
    }
    // Whole ranges refused by a closed period are taken out and the rest planned again.
    let mut removed: Vec<(std::ops::Range<usize>, UsageError)> = Vec::new();
    let mut kept: Option<Vec<WriteOp>> = None;
    for _ in 0..=LOAD_STEPS_MAX + wholes.len() {
        let current = kept.as_deref().unwrap_or(ops);
        match tally_engine::plan(current, &ents, &rules, &loaded, ctx) {
            Ok(plan) => {
                let closed = closed_wholes(&plan.answers, wholes, &removed);
                if !closed.is_empty() {
                    removed.extend(closed);
                    let out = |i: &usize| removed.iter().any(|(r, _)| r.contains(i));
                    kept = Some(
                        ops.iter().enumerate().filter(|(i, _)| !out(i)).map(|(_, op)| op.clone()).collect(),
                    );
                    continue;
                }
                tx.commit(&plan.writes, ctx.now).await?;
                return Ok(if removed.is_empty() {
                    plan.answers
                } else {
                    stitched(ops.len(), plan.answers, &removed)
                });
            }
            Err(Unplanned::Need(more)) => {
                if let Err(e) = tx.load_more(&more, ctx.now, &mut loaded).await {
                    tx.rollback().await;
                    return Err(e);
                }
            }
            Err(Unplanned::Corrupt(why)) => {
                tx.rollback().await;
                return Err(StoreError::Corrupt(why));
            }
        }
    }
    tx.rollback().await;
    Err(StoreError::Other(format!("a batch still needed more loaded after {LOAD_STEPS_MAX} loads")))
}

/// What a caller waits for: one answer per operation of its job.
pub type JobReply = Result<Vec<Answer>, StoreError>;

/// One caller's operations, decided together with whatever else is waiting.
pub struct Job<X> {
    kind: JobKind<X>,
}

enum JobKind<X> {
    Ops { ops: Vec<WriteOp>, ctx: Ctx, whole: bool, reply: oneshot::Sender<JobReply> },
    Other(X),
}

/// The shared end of the queue the writers take jobs from.
pub type JobQueue<X> = Arc<Mutex<mpsc::Receiver<Job<X>>>>;

/// The queue in front of a store's writers. Cloning is cheap.
pub struct Committer<X> {
    tx: mpsc::Sender<Job<X>>,
}

impl<X> Clone for Committer<X> {
    fn clone(&self) -> Self {
        Committer { tx: self.tx.clone() }
    }
}

impl<X> std::fmt::Debug for Committer<X> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer").finish_non_exhaustive()
    }
}

impl<X: Send + 'static> Committer<X> {
    /// A queue, and its end for the writers.
    pub fn new() -> (Committer<X>, JobQueue<X>) {
        let (tx, rx) = mpsc::channel(GROUP_COMMIT_QUEUE_LEN_MAX);
        (Committer { tx }, Arc::new(Mutex::new(rx)))
    }

    /// Queues `ops` and waits for their committed answers.
    pub async fn submit(&self, ops: Vec<WriteOp>, ctx: Ctx) -> JobReply {
        self.submit_job(ops, ctx, false).await
    }

    /// `submit`, written whole or not at all when a closed period refuses any of `ops`
    /// (see `run_batch_with_wholes`).
    pub async fn submit_whole(&self, ops: Vec<WriteOp>, ctx: Ctx) -> JobReply {
        self.submit_job(ops, ctx, true).await
    }

    async fn submit_job(&self, ops: Vec<WriteOp>, ctx: Ctx, whole: bool) -> JobReply {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job { kind: JobKind::Ops { ops, ctx, whole, reply } })
            .await
            .map_err(|_| StoreError::Unavailable("the writers have stopped".to_owned()))?;
        answer.await.map_err(|_| StoreError::Unavailable("the writer stopped before answering".to_owned()))?
    }

    /// Queues work of the adapter's own; `false` when the writers have stopped.
    pub async fn submit_other(&self, job: X) -> bool {
        self.tx.send(Job { kind: JobKind::Other(job) }).await.is_ok()
    }
}

/// One waiting caller inside a batch: where its operations sit in the batch.
struct Waiting {
    range: std::ops::Range<usize>,
    whole: bool,
    reply: oneshot::Sender<JobReply>,
}

/// A writer: takes every job waiting, runs them as one batch through `tx`, answers each
/// caller, and runs the adapter's own jobs between batches. Returns when the queue closes.
pub async fn write_forever<T: WriteTx>(queue: JobQueue<T::Other>, mut tx: T, cache: Arc<ConfigCache>) {
    let mut ops: Vec<WriteOp> = Vec::with_capacity(GROUP_COMMIT_OPS_MAX);
    let mut waiting: Vec<Waiting> = Vec::new();
    let mut others: Vec<T::Other> = Vec::new();
    loop {
        let mut ctx: Option<Ctx> = None;
        {
            let mut rx = queue.lock().await;
            let Some(first) = rx.recv().await else { return };
            let mut next = Some(first);
            while let Some(job) = next.take() {
                match job.kind {
                    JobKind::Other(x) => others.push(x),
                    JobKind::Ops { ops: mut job_ops, ctx: job_ctx, whole, reply } => {
                        let start = ops.len();
                        ops.append(&mut job_ops);
                        waiting.push(Waiting { range: start..ops.len(), whole, reply });
                        // The batch is decided at the latest instant among its jobs.
                        ctx = Some(match ctx {
                            Some(c) if c.now >= job_ctx.now => c,
                            _ => job_ctx,
                        });
                    }
                }
                if ops.len() >= GROUP_COMMIT_OPS_MAX {
                    break;
                }
                next = rx.try_recv().ok();
            }
        }
        if let Some(ctx) = ctx {
            metrics_batch(ops.len());
            run_jobs(&mut tx, &cache, &ops, &ctx, &mut waiting).await;
            ops.clear();
        }
        for job in others.drain(..) {
            tx.run_other(job).await;
        }
    }
}

/// Group-commit batch sizes, in operations.
fn metrics_batch(n: usize) {
    metrics::histogram!("tally_group_commit_size").record(n as f64);
}

/// Runs the batch and answers every waiting caller; empties `waiting`.
async fn run_jobs<T: WriteTx>(
    tx: &mut T,
    cache: &ConfigCache,
    ops: &[WriteOp],
    ctx: &Ctx,
    waiting: &mut Vec<Waiting>,
) {
    let wholes: Vec<std::ops::Range<usize>> =
        waiting.iter().filter(|w| w.whole).map(|w| w.range.clone()).collect();
    match run_batch_with_wholes(tx, cache, ops, ctx, &wholes).await {
        Ok(answers) if answers.len() == ops.len() => {
            let mut answers = answers.into_iter();
            for w in waiting.drain(..) {
                let mine: Vec<Answer> = answers.by_ref().take(w.range.len()).collect();
                let _ = w.reply.send(Ok(mine));
            }
        }
        Ok(_) => {
            for w in waiting.drain(..) {
                let _ = w.reply.send(Err(StoreError::Other("the store answered a batch short".to_owned())));
            }
        }
        Err(e @ StoreError::Unavailable(_)) => {
            for w in waiting.drain(..) {
                let _ = w.reply.send(Err(e.clone()));
            }
        }
        Err(e) if waiting.len() == 1 => {
            for w in waiting.drain(..) {
                let _ = w.reply.send(Err(e.clone()));
            }
        }
        Err(e) => {
            // Isolate the failure: run each caller's operations on their own.
            tracing::warn!(error = %e, n_jobs = waiting.len(), "group commit failed; running its jobs one by one");
            for w in waiting.drain(..) {
                // Alone in its batch, a whole job is one range over all of it.
                let all = std::iter::once(0..w.range.len());
                let whole: Vec<std::ops::Range<usize>> = if w.whole { all.collect() } else { Vec::new() };
                let result = run_batch_with_wholes(tx, cache, &ops[w.range.clone()], ctx, &whole).await;
                let _ = w.reply.send(result);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_domain::{MetricCode, Period};

    fn closed() -> UsageError {
        let t = tally_domain::time::parse_rfc3339("2026-11-01T00:00:00Z").unwrap();
        UsageError::PeriodClosed {
            metric: MetricCode::parse("api_calls").unwrap(),
            period: Period::new(t, t + chrono::Duration::days(1)).unwrap(),
            closed_at: t,
        }
    }

    fn ok() -> Answer {
        Answer::Release(Ok(()))
    }

    #[test]
    fn a_whole_range_with_a_closed_answer_is_taken_out_and_answered_whole() {
        // Ops 0..2 are one whole job, 2..3 another job, 3..5 a second whole job.
        let wholes = [0..2, 3..5];
        let first = [ok(), ok(), ok(), ok(), Answer::Usage(Err(closed()))];
        let removed = closed_wholes(&first, &wholes, &[]);
        assert_eq!(removed, vec![(3..5, closed())]);
        // Planned again without 3..5, the first whole job is still fine.
        let second = [ok(), ok(), ok()];
        assert!(closed_wholes(&second, &wholes, &removed).is_empty());
        let answers = stitched(5, second.to_vec(), &removed);
        assert_eq!(answers.len(), 5);
        assert_eq!(answers[..3], [ok(), ok(), ok()]);
        assert_eq!(answers[3..], [Answer::Usage(Err(closed())), Answer::Usage(Err(closed()))]);
        // An answer after a removed range maps to its own original index.
        let removed_first = vec![(0..2, closed())];
        let after = [ok(), Answer::Usage(Err(closed())), ok()];
        assert_eq!(closed_wholes(&after, &wholes, &removed_first), vec![(3..5, closed())]);
    }
}
