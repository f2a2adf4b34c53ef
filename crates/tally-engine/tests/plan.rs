//! The decision step without a database: what a batch needs, and what it answers and writes
//! given what was loaded.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use chrono::Duration;
use proptest::prelude::*;
use tally_domain::{
    Amount, Change, CommitRequest, CorrectionRequest, Entitlement, EntitlementLookup, EventKind,
    EventReceipt, IdempotencyKey, LimitEnforcement, Metadata, MetricCode, Name, Period, PeriodKind, Plan,
    PlanCode, QuotaLimit, Reason, RecordKey, RecordedEvent, Reservation, ReservationStatus, ReserveRequest,
    Subscription, TenantId, Timestamp, Ttl, UsageError, UsageEvent, UsageRequest, Watermark,
    WebhookEventType, WebhookId, WebhookSpec,
};
use tally_engine::{
    Answer, Ctx, FireStates, Loaded, LoadedReservation, LockedRecord, RecordState, Unplanned, WebhookRule,
    WriteOp, needs, plan,
};
use uuid::Uuid;

fn t(s: &str) -> Timestamp {
    tally_domain::time::parse_rfc3339(s).unwrap()
}

fn now() -> Timestamp {
    t("2026-11-29T10:00:00Z")
}

fn ctx() -> Ctx {
    Ctx::new(now(), Duration::days(35))
}

fn tenant(s: &str) -> TenantId {
    TenantId::parse(s).unwrap()
}

fn metric(s: &str) -> MetricCode {
    MetricCode::parse(s).unwrap()
}

fn key(s: &str) -> IdempotencyKey {
    IdempotencyKey::parse(s).unwrap()
}

/// `acme` on a plan with `api_calls` (HARD, 10 a month) and `seats` (a HARD gauge of 5).
fn ents() -> HashMap<TenantId, EntitlementLookup> {
    let limits = vec![
        QuotaLimit::new(metric("api_calls"), Some(10), LimitEnforcement::Hard, PeriodKind::Month).unwrap(),
        QuotaLimit::new(metric("seats"), Some(5), LimitEnforcement::Hard, PeriodKind::None).unwrap(),
        QuotaLimit::new(metric("logs"), None, LimitEnforcement::None, PeriodKind::Day).unwrap(),
    ];
    let plan = Plan {
        code: PlanCode::parse("pro").unwrap(),
        name: Name::parse("Pro").unwrap(),
        limits,
        close_after: None,
        version: 1,
        created_at: now(),
        updated_at: now(),
    };
    let sub = Subscription {
        tenant_id: tenant("acme"),
        plan_code: plan.code.clone(),
        anchor: t("2026-11-01T00:00:00Z"),
        started_at: t("2026-11-01T00:00:00Z"),
    };
    let mut m = HashMap::new();
    m.insert(tenant("acme"), EntitlementLookup::Found(Entitlement::resolve(sub, &plan, &[])));
    m.insert(tenant("nosub"), EntitlementLookup::NoSubscription);
    m
}

fn month() -> Period {
    Period::new(t("2026-11-01T00:00:00Z"), t("2026-12-01T00:00:00Z")).unwrap()
}

fn rk(m: &str) -> RecordKey {
    let period = if m == "seats" { Period::unbounded() } else { month() };
    RecordKey { tenant_id: tenant("acme"), metric_code: metric(m), period }
}

fn usage(m: &str, n: i64, k: Option<&str>) -> WriteOp {
    WriteOp::Usage(UsageRequest {
        tenant_id: tenant("acme"),
        metric_code: metric(m),
        change: Change::Add(n),
        idempotency_key: k.map(key),
        metadata: Metadata::default(),
        timestamp: None,
    })
}

fn locked(current: i64, reserved: i64, state: RecordState) -> LockedRecord {
    LockedRecord { reserved, ..LockedRecord::at(Uuid::now_v7(), current, state) }
}

fn loaded_with(records: Vec<(RecordKey, LockedRecord)>) -> Loaded {
    Loaded { records: records.into_iter().collect(), ..Loaded::default() }
}

fn done(ops: &[WriteOp], loaded: &Loaded) -> tally_engine::Plan {
    match plan(ops, &ents(), &[], loaded, &ctx()) {
        Ok(p) => p,
        Err(e) => panic!("not planned: {e:?}"),
    }
}

fn usage_answer(a: &Answer) -> &Result<tally_domain::UsageOutcome, UsageError> {
    match a {
        Answer::Usage(r) => r,
        other => panic!("not a usage answer: {other:?}"),
    }
}

#[test]
fn needs_lists_each_record_and_key_once_in_key_order() {
    let ops =
        vec![usage("logs", 1, Some("b")), usage("api_calls", 1, Some("a")), usage("api_calls", 2, Some("a"))];
    let n = needs(&ops, &ents(), &ctx(), false);
    let logs_day = RecordKey {
        tenant_id: tenant("acme"),
        metric_code: metric("logs"),
        period: PeriodKind::Day.containing(now(), now()).unwrap(),
    };
    assert_eq!(n.records, vec![rk("api_calls"), logs_day]);
    assert_eq!(n.event_keys, vec![(tenant("acme"), key("a")), (tenant("acme"), key("b"))]);
    assert!(!n.fire_states && n.reservations.is_empty() && n.open_reservations.is_empty());
}

#[test]
fn needs_asks_no_record_for_what_cannot_be_recorded_but_still_looks_up_its_key() {
    let mut old = usage("api_calls", 1, Some("old"));
    if let WriteOp::Usage(r) = &mut old {
        r.timestamp = Some(now() - Duration::days(40));
    }
    let unknown = WriteOp::Usage(UsageRequest {
        tenant_id: tenant("ghost"),
        metric_code: metric("api_calls"),
        change: Change::Add(1),
        idempotency_key: None,
        metadata: Metadata::default(),
        timestamp: None,
    });
    let n = needs(&[old, unknown, usage("nolimit", 1, None)], &ents(), &ctx(), true);
    assert!(n.records.is_empty(), "{n:?}");
    assert_eq!(n.event_keys, vec![(tenant("acme"), key("old"))]);
    assert!(n.fire_states);
}

#[test]
fn a_hard_limit_allows_exactly_up_to_it_within_one_batch() {
    let l = loaded_with(vec![(rk("api_calls"), locked(7, 0, RecordState::Existing))]);
    let p =
        done(&[usage("api_calls", 2, None), usage("api_calls", 2, None), usage("api_calls", 1, None)], &l);
    assert_eq!(usage_answer(&p.answers[0]).as_ref().unwrap().current_usage, 9);
    assert!(matches!(usage_answer(&p.answers[1]), Err(UsageError::QuotaExceeded { current: 9, .. })));
    assert_eq!(usage_answer(&p.answers[2]).as_ref().unwrap().current_usage, 10);
    assert_eq!(p.writes.events.len(), 2);
    assert_eq!(p.writes.records.len(), 1);
    assert_eq!(p.writes.records[0].current_usage, 10);
    assert!(!p.writes.records[0].insert);
}

#[test]
fn a_refusal_on_a_record_created_here_deletes_it_again() {
    let l = loaded_with(vec![(rk("api_calls"), locked(0, 0, RecordState::Created))]);
    let p = done(&[usage("api_calls", 11, None)], &l);
    assert!(usage_answer(&p.answers[0]).is_err());
    assert!(p.writes.events.is_empty() && p.writes.records.is_empty());
    assert_eq!(p.writes.delete_records.len(), 1);
}

#[test]
fn an_absent_record_is_inserted_only_when_used() {
    let l = loaded_with(vec![(rk("api_calls"), locked(0, 0, RecordState::Absent))]);
    let refused = done(&[usage("api_calls", 11, None)], &l);
    assert!(refused.writes.is_empty(), "{:?}", refused.writes);
    let used = done(&[usage("api_calls", 3, None)], &l);
    assert_eq!(used.writes.records.len(), 1);
    assert!(used.writes.records[0].insert);
    assert!(used.writes.delete_records.is_empty());
}

#[test]
fn a_record_that_was_not_loaded_is_asked_for() {
    let Err(Unplanned::Need(need)) =
        plan(&[usage("api_calls", 1, None)], &ents(), &[], &Loaded::default(), &ctx())
    else {
        panic!("planned without its record");
    };
    assert_eq!(need.records, vec![rk("api_calls")]);
}

fn stored_event(k: &str, amount: i64, timestamp: Timestamp, explicit: bool) -> RecordedEvent {
    RecordedEvent {
        event: UsageEvent {
            id: Uuid::now_v7(),
            tenant_id: tenant("acme"),
            metric_code: metric("api_calls"),
            amount,
            metadata: Metadata::default(),
            idempotency_key: Some(key(k)),
            timestamp,
            created_at: timestamp,
            kind: EventKind::Usage,
            reason: None,
        },
        receipt: EventReceipt {
            usage_after: 4,
            limit: Some(10),
            enforcement: LimitEnforcement::Hard,
            period: month(),
            timestamp_explicit: explicit,
            set: false,
            reserved: 0,
        },
    }
}

#[test]
fn a_replay_answers_the_original_even_once_its_timestamp_left_the_window_or_the_plan_lost_the_metric() {
    let old = now() - Duration::days(40);
    let mut l = Loaded::default();
    l.events.insert((tenant("acme"), key("k1")), stored_event("k1", 2, old, true));
    let mut retry = usage("api_calls", 2, Some("k1"));
    if let WriteOp::Usage(r) = &mut retry {
        r.timestamp = Some(old);
    }
    let p = done(&[retry.clone()], &l);
    let outcome = usage_answer(&p.answers[0]).as_ref().unwrap();
    assert!(outcome.replayed);
    assert_eq!(outcome.current_usage, 4);
    assert!(p.writes.is_empty());
    // The same request without its stored event is out of the window.
    let fresh = done(&[retry], &Loaded::default());
    assert!(matches!(usage_answer(&fresh.answers[0]), Err(UsageError::EventOutOfWindow { .. })));
    // A tenant that lost its subscription still gets its replays.
    let mut gone = ents();
    gone.insert(tenant("acme"), EntitlementLookup::NoSubscription);
    l.events.insert((tenant("acme"), key("k2")), stored_event("k2", 1, now(), false));
    let p = plan(&[usage("api_calls", 1, Some("k2"))], &gone, &[], &l, &ctx()).unwrap();
    assert!(usage_answer(&p.answers[0]).as_ref().unwrap().replayed);
}

#[test]
fn a_key_with_another_payload_conflicts_and_a_key_repeated_in_the_batch_replays() {
    let mut l = loaded_with(vec![(rk("api_calls"), locked(0, 0, RecordState::Existing))]);
    l.events.insert((tenant("acme"), key("k1")), stored_event("k1", 2, now(), false));
    let p = done(
        &[
            usage("api_calls", 3, Some("k1")),
            usage("api_calls", 1, Some("k2")),
            usage("api_calls", 1, Some("k2")),
        ],
        &l,
    );
    assert!(matches!(usage_answer(&p.answers[0]), Err(UsageError::IdempotencyConflict { .. })));
    let first = usage_answer(&p.answers[1]).as_ref().unwrap();
    let again = usage_answer(&p.answers[2]).as_ref().unwrap();
    assert!(!first.replayed && again.replayed);
    assert_eq!(first.event_id, again.event_id);
    assert_eq!(p.writes.events.len(), 1);
}

#[test]
fn events_are_written_in_key_order_whatever_the_arrival_order() {
    let l = loaded_with(vec![(rk("api_calls"), locked(0, 0, RecordState::Existing))]);
    let p = done(
        &[
            usage("api_calls", 1, Some("c")),
            usage("api_calls", 1, Some("a")),
            usage("api_calls", 1, Some("b")),
        ],
        &l,
    );
    let keys: Vec<&str> =
        p.writes.events.iter().map(|e| e.event.idempotency_key.as_ref().unwrap().as_str()).collect();
    assert_eq!(keys, vec!["a", "b", "c"]);
    // The answers keep arrival order: the counter grew 1, 2, 3.
    let after: Vec<i64> = p.answers.iter().map(|a| usage_answer(a).as_ref().unwrap().current_usage).collect();
    assert_eq!(after, vec![1, 2, 3]);
}

fn reserve(amount: i64, k: Option<&str>) -> WriteOp {
    WriteOp::Reserve(ReserveRequest {
        tenant_id: tenant("acme"),
        metric_code: metric("api_calls"),
        amount: Amount::new(amount).unwrap(),
        ttl: Ttl::new(Some(60)).unwrap(),
        idempotency_key: k.map(key),
    })
}

fn open_reservation(amount: i64, expires_at: Timestamp) -> Reservation {
    Reservation {
        id: Uuid::now_v7(),
        tenant_id: tenant("acme"),
        metric_code: metric("api_calls"),
        amount,
        period: month(),
        idempotency_key: None,
        ttl_seconds: 60,
        created_at: now() - Duration::seconds(10),
        expires_at,
        status: ReservationStatus::Open,
        settled_at: None,
        committed_event_id: None,
        committed_amount: None,
        usage_at_creation: 0,
        reserved_at_creation: amount,
        limit_at_creation: Some(10),
    }
}

#[test]
fn a_hold_counts_against_usage_later_in_the_same_batch() {
    let l = loaded_with(vec![(rk("api_calls"), locked(2, 0, RecordState::Created))]);
    let p = done(&[reserve(6, Some("r1")), usage("api_calls", 3, None), usage("api_calls", 2, None)], &l);
    let Answer::Reserve(Ok(r)) = &p.answers[0] else { panic!("{:?}", p.answers[0]) };
    assert_eq!((r.reservation.usage_at_creation, r.reservation.reserved_at_creation), (2, 6));
    assert!(matches!(usage_answer(&p.answers[1]), Err(UsageError::QuotaExceeded { .. })));
    assert_eq!(usage_answer(&p.answers[2]).as_ref().unwrap().remaining, Some(0));
    assert_eq!(p.writes.new_reservations.len(), 1);
    assert!(p.writes.delete_records.is_empty(), "a hold keeps its record");
}

#[test]
fn a_commit_records_usage_in_its_period_and_a_second_commit_replays_it() {
    let r = open_reservation(5, now() + Duration::seconds(50));
    let mut l = loaded_with(vec![(rk("api_calls"), locked(4, 5, RecordState::Existing))]);
    l.reservations.insert(r.id, LoadedReservation { reservation: r.clone(), committed_event: None });
    let commit = |amount: Option<i64>| {
        WriteOp::Commit(CommitRequest {
            tenant_id: tenant("acme"),
            reservation_id: r.id,
            amount: amount.map(|a| Amount::new(a).unwrap()),
            metadata: Metadata::default(),
        })
    };
    let p = done(&[commit(Some(3)), commit(Some(3)), commit(Some(4)), usage("api_calls", 3, None)], &l);
    let first = usage_answer(&p.answers[0]).as_ref().unwrap();
    assert_eq!((first.current_usage, first.replayed), (7, false));
    assert_eq!(first.remaining, Some(3), "the rest of the hold is released");
    assert!(usage_answer(&p.answers[1]).as_ref().unwrap().replayed);
    assert!(matches!(usage_answer(&p.answers[2]), Err(UsageError::ReservationClosed { .. })));
    assert_eq!(usage_answer(&p.answers[3]).as_ref().unwrap().current_usage, 10);
    assert_eq!(p.writes.settled_reservations.len(), 1);
    assert_eq!(p.writes.settled_reservations[0].status, ReservationStatus::Committed);
    assert_eq!(p.writes.events.len(), 2);
}

#[test]
fn committing_an_expired_reservation_marks_it_expired_and_releasing_frees_the_hold() {
    let expired = open_reservation(5, now() - Duration::seconds(1));
    let open = open_reservation(4, now() + Duration::seconds(30));
    let mut l = loaded_with(vec![(rk("api_calls"), locked(1, 4, RecordState::Existing))]);
    for r in [&expired, &open] {
        l.reservations.insert(r.id, LoadedReservation { reservation: r.clone(), committed_event: None });
    }
    let commit = WriteOp::Commit(CommitRequest {
        tenant_id: tenant("acme"),
        reservation_id: expired.id,
        amount: None,
        metadata: Metadata::default(),
    });
    let release = WriteOp::Release { tenant_id: tenant("acme"), reservation_id: open.id };
    let other = WriteOp::Release { tenant_id: tenant("globex"), reservation_id: open.id };
    let p = done(&[commit, other, usage("api_calls", 9, None), release, usage("api_calls", 9, None)], &l);
    assert!(matches!(usage_answer(&p.answers[0]), Err(UsageError::ReservationClosed { .. })));
    assert_eq!(p.answers[1], Answer::Release(Err(UsageError::ReservationNotFound { id: open.id })));
    assert!(matches!(usage_answer(&p.answers[2]), Err(UsageError::QuotaExceeded { .. })));
    assert_eq!(p.answers[3], Answer::Release(Ok(())));
    assert_eq!(usage_answer(&p.answers[4]).as_ref().unwrap().current_usage, 10);
    let statuses: Vec<ReservationStatus> = p.writes.settled_reservations.iter().map(|r| r.status).collect();
    assert!(
        statuses.contains(&ReservationStatus::Expired) && statuses.contains(&ReservationStatus::Released)
    );
}

#[test]
fn a_replayed_reservation_holds_nothing_more() {
    let mut r = open_reservation(3, now() + Duration::seconds(50));
    r.idempotency_key = Some(key("job"));
    let mut l = loaded_with(vec![(rk("api_calls"), locked(0, 3, RecordState::Existing))]);
    l.reservations_by_key.insert((tenant("acme"), key("job")), r.clone());
    let p = done(&[reserve(3, Some("job")), reserve(4, Some("job"))], &l);
    let Answer::Reserve(Ok(replay)) = &p.answers[0] else { panic!("{:?}", p.answers[0]) };
    assert!(replay.replayed && replay.reservation.id == r.id);
    assert!(matches!(p.answers[1], Answer::Reserve(Err(UsageError::IdempotencyConflict { .. }))));
    assert!(p.writes.is_empty());
}

fn rules() -> Vec<WebhookRule> {
    vec![WebhookRule {
        id: WebhookId::parse("hook").unwrap(),
        spec: WebhookSpec::new("http://127.0.0.1:9/x", &[80], &[WebhookEventType::ThresholdCrossed]).unwrap(),
    }]
}

#[test]
fn a_crossing_asks_for_threshold_states_and_then_fires_once() {
    let mut l = loaded_with(vec![(rk("api_calls"), locked(6, 0, RecordState::Existing))]);
    let ops = [usage("api_calls", 1, None), usage("api_calls", 1, None), usage("api_calls", 1, None)];
    let Err(Unplanned::Need(need)) = plan(&ops, &ents(), &rules(), &l, &ctx()) else {
        panic!("decided a crossing without the thresholds' states");
    };
    assert!(need.fire_states && need.records.is_empty());
    l.fire_states = Some(FireStates::new());
    let p = plan(&ops, &ents(), &rules(), &l, &ctx()).unwrap();
    assert_eq!(p.writes.deliveries.len(), 1);
    assert_eq!(p.writes.fire_states.len(), 1);
    // Already fired: nothing more.
    l.fire_states = Some(p.writes.fire_states.iter().cloned().collect());
    let again = plan(&ops, &ents(), &rules(), &l, &ctx()).unwrap();
    assert!(again.writes.deliveries.is_empty() && again.writes.fire_states.is_empty());
    // No crossing: states are not needed.
    let quiet = loaded_with(vec![(rk("api_calls"), locked(0, 0, RecordState::Existing))]);
    assert!(plan(&[usage("api_calls", 1, None)], &ents(), &rules(), &quiet, &ctx()).is_ok());
}

#[test]
fn a_gauge_moves_both_ways_never_below_zero() {
    let l = loaded_with(vec![(rk("seats"), locked(2, 0, RecordState::Existing))]);
    let set = WriteOp::Usage(UsageRequest {
        tenant_id: tenant("acme"),
        metric_code: metric("seats"),
        change: Change::Set(5),
        idempotency_key: None,
        metadata: Metadata::default(),
        timestamp: None,
    });
    let p = done(&[usage("seats", -3, None), set, usage("seats", 1, None), usage("seats", -5, None)], &l);
    assert!(matches!(usage_answer(&p.answers[0]), Err(UsageError::GaugeBelowZero { .. })));
    assert_eq!(usage_answer(&p.answers[1]).as_ref().unwrap().amount, 3);
    assert!(matches!(usage_answer(&p.answers[2]), Err(UsageError::QuotaExceeded { .. })));
    assert_eq!(usage_answer(&p.answers[3]).as_ref().unwrap().current_usage, 0);
    assert_eq!(p.writes.records[0].current_usage, 0);
}

#[test]
fn no_subscription_unknown_tenant_and_unknown_metric_answer_in_place() {
    let l = loaded_with(vec![(rk("api_calls"), locked(0, 0, RecordState::Existing))]);
    let op = |t: &str, m: &str| {
        WriteOp::Usage(UsageRequest {
            tenant_id: tenant(t),
            metric_code: metric(m),
            change: Change::Add(1),
            idempotency_key: None,
            metadata: Metadata::default(),
            timestamp: None,
        })
    };
    let p = done(
        &[op("nosub", "api_calls"), op("ghost", "api_calls"), op("acme", "nope"), op("acme", "api_calls")],
        &l,
    );
    assert!(matches!(usage_answer(&p.answers[0]), Err(UsageError::NoSubscription { .. })));
    assert!(matches!(usage_answer(&p.answers[1]), Err(UsageError::TenantNotFound { .. })));
    assert!(matches!(usage_answer(&p.answers[2]), Err(UsageError::QuotaNotFound { .. })));
    assert!(usage_answer(&p.answers[3]).is_ok());
}

proptest! {
    /// Whatever the amounts and their order, a HARD limit is never passed, every accepted
    /// amount is one event, and the counter written is the sum of what was accepted.
    #[test]
    fn a_batch_never_passes_a_hard_limit(start in 0i64..=10, amounts in proptest::collection::vec(1i64..=6, 0..40)) {
        let l = loaded_with(vec![(rk("api_calls"), locked(start, 0, RecordState::Existing))]);
        let ops: Vec<WriteOp> = amounts.iter().map(|&a| usage("api_calls", a, None)).collect();
        let p = done(&ops, &l);
        let accepted: i64 = p.answers.iter().filter_map(|a| usage_answer(a).as_ref().ok()).map(|o| o.amount).sum();
        let events: i64 = p.writes.events.iter().map(|e| e.event.amount).sum();
        prop_assert_eq!(accepted, events);
        prop_assert!(start + accepted <= 10);
        let written = p.writes.records.first().map_or(start, |r| r.current_usage);
        prop_assert_eq!(written, start + accepted);
        // Each refusal was a real one: the amount did not fit at its turn.
        let mut level = start;
        for (a, ans) in amounts.iter().zip(&p.answers) {
            match usage_answer(ans) {
                Ok(_) => level += a,
                Err(_) => prop_assert!(level + a > 10),
            }
        }
    }
}

fn correct_op(amount: i64, at: Option<Timestamp>) -> WriteOp {
    WriteOp::Correct(CorrectionRequest {
        tenant_id: tenant("acme"),
        metric_code: metric("api_calls"),
        amount,
        reason: Reason::parse("refund").unwrap(),
        idempotency_key: None,
        timestamp: at,
        key_id: None,
    })
}

fn october() -> Period {
    Period::new(t("2026-10-01T00:00:00Z"), t("2026-11-01T00:00:00Z")).unwrap()
}

fn october_key() -> RecordKey {
    RecordKey { tenant_id: tenant("acme"), metric_code: metric("api_calls"), period: october() }
}

#[test]
fn a_write_into_a_period_that_may_be_closed_asks_for_its_tenants_watermark() {
    let at = Some(t("2026-10-20T00:00:00Z"));
    // needs() sees it coming for a correction, and a current-period write asks nothing.
    assert_eq!(needs(&[correct_op(-1, at)], &ents(), &ctx(), false).watermarks, vec![tenant("acme")]);
    assert!(needs(&[usage("api_calls", 1, None)], &ents(), &ctx(), false).watermarks.is_empty());
    // plan() asks for it when it was not read, and decides once it was.
    let mut l = loaded_with(vec![(october_key(), locked(5, 0, RecordState::Existing))]);
    let Err(Unplanned::Need(need)) = plan(&[correct_op(-1, at)], &ents(), &[], &l, &ctx()) else {
        panic!("decided without the watermark");
    };
    assert_eq!(need.watermarks, vec![tenant("acme")]);
    l.watermarks.insert(tenant("acme"), None);
    let p = done(&[correct_op(-1, at)], &l);
    assert_eq!(usage_answer(&p.answers[0]).as_ref().unwrap().current_usage, 4);
}

#[test]
fn the_watermark_or_the_record_closes_a_period_and_a_reopened_one_takes_writes() {
    let at = Some(t("2026-10-20T00:00:00Z"));
    let mark = Watermark { closed_before: t("2026-11-01T00:00:00Z"), moved_at: t("2026-11-02T00:00:00Z") };
    let closed_by = |record: LockedRecord, mark: Option<Watermark>| {
        let mut l = loaded_with(vec![(october_key(), record)]);
        l.watermarks.insert(tenant("acme"), mark);
        let p = done(&[correct_op(1, at)], &l);
        match usage_answer(&p.answers[0]) {
            Err(UsageError::PeriodClosed { closed_at, period, .. }) => {
                assert_eq!(*period, october());
                assert!(p.writes.events.is_empty() && p.writes.audit.is_empty());
                Some(*closed_at)
            }
            Ok(_) => None,
            Err(e) => panic!("{e:?}"),
        }
    };
    // A record created in this transaction under the watermark: closed since it moved.
    assert_eq!(closed_by(locked(0, 0, RecordState::Created), Some(mark)), Some(mark.moved_at));
    // A record marked closed: closed since then, whatever the watermark.
    let marked =
        LockedRecord { closed_at: Some(t("2026-11-03T00:00:00Z")), ..locked(3, 0, RecordState::Existing) };
    assert_eq!(closed_by(marked, None), Some(t("2026-11-03T00:00:00Z")));
    // Reopened: open under the watermark.
    let reopened = LockedRecord { reopened: true, ..locked(3, 0, RecordState::Existing) };
    assert_eq!(closed_by(reopened, Some(mark)), None);
    // Above the watermark: open.
    let lower = Watermark { closed_before: t("2026-10-01T00:00:00Z"), ..mark };
    assert_eq!(closed_by(locked(3, 0, RecordState::Existing), Some(lower)), None);
}

#[test]
fn a_correction_is_never_refused_by_a_limit_and_is_audited_with_the_change() {
    let l = loaded_with(vec![(rk("api_calls"), locked(10, 0, RecordState::Existing))]);
    let p = done(&[correct_op(5, None), usage("api_calls", 1, None), correct_op(-16, None)], &l);
    let up = usage_answer(&p.answers[0]).as_ref().unwrap();
    assert_eq!((up.current_usage, up.exceeded, up.kind), (15, true, EventKind::Correction));
    assert!(matches!(usage_answer(&p.answers[1]), Err(UsageError::QuotaExceeded { .. })));
    assert!(matches!(
        usage_answer(&p.answers[2]),
        Err(UsageError::CorrectionBelowZero { current: 15, amount: -16, .. })
    ));
    assert_eq!(p.writes.audit.len(), 1);
    let details = &p.writes.audit[0].details;
    assert_eq!((details["usage_before"].as_i64(), details["usage_after"].as_i64()), (Some(10), Some(15)));
    assert_eq!(p.writes.events[0].event.reason.as_ref().map(Reason::as_str), Some("refund"));
}
