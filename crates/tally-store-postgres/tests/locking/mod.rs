//! Record locking under concurrency, beyond the contract: batches of several records,
//! most of them in cold periods, raced by many writers in both tenancies; and webhook
//! deliveries claimed by racing workers; racing puts of one new plan, metric or webhook.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};

use chrono::Duration;
use tally_contract::{WriteExt, apply_one, audit, limit, now, req, setup};
use tally_domain::{
    AuditAction, LimitEnforcement, PeriodKind, UsageError, WebhookEventType, WebhookId, WebhookSecret,
    WebhookSpec,
};
use tally_store::{AuditStore, WebhookStore};
use tally_store_postgres::{PgStore, Tenancy};

const TASKS: u64 = 16;
const BATCHES_PER_TASK: u64 = 12;
const LIMIT: i64 = 30;

/// A small deterministic generator, one per task.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_multi_record_batches_on_cold_periods_never_fail_nor_overshoot() {
    for tenancy in [Tenancy::Shared, Tenancy::Schema] {
        let store = PgStore::open_test(tenancy).await;
        let hard = |m| limit(m, Some(LIMIT), LimitEnforcement::Hard, PeriodKind::Month);
        for tenant in ["a", "b", "c"] {
            setup(&store, tenant, "pro", vec![hard("m1"), hard("m2")]).await;
        }
        let mut handles = Vec::new();
        for task in 0..TASKS {
            let store = store.clone();
            handles.push(tokio::spawn(async move {
                let mut state = 0x9E37_79B9_7F4A_7C15 ^ (task + 1);
                let mut accepted = 0i64;
                for _ in 0..BATCHES_PER_TASK {
                    let len = 3 + next(&mut state) % 4;
                    let batch: Vec<_> = (0..len)
                        .map(|_| {
                            let tenant = ["a", "b", "c"][(next(&mut state) % 3) as usize];
                            let metric = ["m1", "m2"][(next(&mut state) % 2) as usize];
                            let mut r = req(tenant, metric, 1);
                            // Three months: most records are created by this race.
                            let months_back = (next(&mut state) % 3) as i64;
                            r.timestamp = Some(now() - Duration::days(31 * months_back));
                            r
                        })
                        .collect();
                    let out = store.apply_usage(&batch, now()).await.expect("no batch fails");
                    for result in out {
                        match result {
                            Ok(_) => accepted += 1,
                            Err(UsageError::QuotaExceeded { .. }) => {}
                            Err(e) => panic!("unexpected {e:?}"),
                        }
                    }
                }
                accepted
            }));
        }
        let mut accepted = 0;
        for h in handles {
            accepted += h.await.unwrap();
        }
        let inputs = store.verify_inputs().await.unwrap();
        let sums: HashMap<_, _> = inputs
            .events
            .iter()
            .map(|e| ((e.tenant_id.clone(), e.metric_code.clone(), e.period_start), e.amount_sum))
            .collect();
        let mut counted = 0;
        for r in &inputs.records {
            let k = &r.key;
            assert!(r.current_usage <= LIMIT, "{tenancy}: {k:?} overshot: {}", r.current_usage);
            let sum = sums.get(&(k.tenant_id.clone(), k.metric_code.clone(), k.period.start()));
            assert_eq!(sum.copied().unwrap_or(0), r.current_usage, "{tenancy}: {k:?}");
            counted += r.current_usage;
        }
        assert_eq!(counted, accepted, "{tenancy}");
        assert_eq!(inputs.events.len(), inputs.records.len(), "{tenancy}: one record per period counted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_claims_take_each_due_delivery_exactly_once() {
    const TENANTS: usize = 6;
    const WORKERS: usize = 8;
    let store = PgStore::open_test(Tenancy::Shared).await;
    let thresholds = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100];
    let spec =
        WebhookSpec::new("http://127.0.0.1:9/hook", &thresholds, &[WebhookEventType::ThresholdCrossed])
            .unwrap();
    let secret = WebhookSecret::parse("whsec_0123456789abcdef").unwrap();
    let a = audit(AuditAction::WebhookPut, None);
    store.put_webhook(&WebhookId::parse("ops").unwrap(), &spec, &secret, true, now(), &a).await.unwrap();
    for idx in 0..TENANTS {
        let tenant = format!("t{idx}");
        setup(&store, &tenant, "pro", vec![limit("m", Some(100), LimitEnforcement::Hard, PeriodKind::Month)])
            .await;
        // One usage crosses all ten thresholds at once.
        apply_one(&store, req(&tenant, "m", 100)).await.unwrap();
    }
    let lease = now() + Duration::seconds(15);
    let mut handles = Vec::new();
    for _ in 0..WORKERS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let claimed = store.claim_deliveries(now(), lease, 3).await.unwrap();
                if claimed.is_empty() {
                    return mine;
                }
                assert!(claimed.iter().all(|(d, _)| d.next_attempt_at == Some(lease)));
                mine.extend(claimed.into_iter().map(|(d, _)| d.id));
            }
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    let distinct: HashSet<_> = all.iter().collect();
    assert_eq!(distinct.len(), all.len(), "a delivery was claimed twice");
    assert_eq!(all.len(), TENANTS * 10, "every due delivery was claimed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_puts_of_one_new_plan_metric_or_webhook_create_it_once() {
    const PUTS: usize = 16;
    let store = PgStore::open_test(Tenancy::Shared).await;
    let plan = tally_domain::PlanSpec::new(
        tally_domain::Name::parse("Pro").unwrap(),
        vec![limit("m", Some(100), LimitEnforcement::Hard, PeriodKind::Month)],
    )
    .unwrap();
    let metric = tally_domain::MetricSpec {
        name: tally_domain::Name::parse("Tokens").unwrap(),
        unit: None,
        kind: tally_domain::MetricKind::Counter,
        value_property: Some("/tokens".to_owned()),
    };
    let hook = WebhookSpec::new("http://127.0.0.1:9/hook", &[80], &WebhookEventType::ALL).unwrap();
    let secret = WebhookSecret::parse("whsec_0123456789abcdef").unwrap();
    let mut handles = Vec::new();
    for _ in 0..PUTS {
        let (store, plan, metric, hook, secret) =
            (store.clone(), plan.clone(), metric.clone(), hook.clone(), secret.clone());
        handles.push(tokio::spawn(async move {
            use tally_store::{MetricStore, PlanStore};
            let p = store
                .put_plan(
                    &tally_domain::PlanCode::parse("pro").unwrap(),
                    &plan,
                    now(),
                    &audit(AuditAction::PlanPut, None),
                )
                .await
                .unwrap();
            let m = store
                .put_metric(
                    &tally_domain::MetricCode::parse("tokens").unwrap(),
                    &metric,
                    now(),
                    &audit(AuditAction::MetricPut, None),
                )
                .await
                .unwrap();
            let w = store
                .put_webhook(
                    &WebhookId::parse("ops").unwrap(),
                    &hook,
                    &secret,
                    false,
                    now(),
                    &audit(AuditAction::WebhookPut, None),
                )
                .await
                .unwrap();
            [p.is_created(), m.is_created(), w.is_created()]
        }));
    }
    let mut created = [0; 3];
    for h in handles {
        for (n, c) in created.iter_mut().zip(h.await.unwrap()) {
            *n += usize::from(c);
        }
    }
    // Each was created by exactly one put; the others found it (after losing the insert, some
    // locked it on their second pass) and changed nothing, so one audit entry each.
    assert_eq!(created, [1, 1, 1]);
    let entries = store.list_audit(None, None, 1_000).await.unwrap();
    for action in ["plan.put", "metric.put", "webhook.put"] {
        assert_eq!(entries.iter().filter(|e| e.action == action).count(), 1, "{action}");
    }
}
