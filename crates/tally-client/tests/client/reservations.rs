//! Reservations against the real server: reserve, replay, list, commit, release.

use serde_json::json;
use tally_client::{CheckRequest, CommitRequest, EventsQuery, ReserveRequest};

use crate::helpers::{TestServer, hard, seed};

#[tokio::test]
async fn reserve_commit_and_release() {
    let server = TestServer::start().await;
    let tally = server.client();
    seed(&tally, "pro", "acme", vec![hard("tokens", 1000)]).await;

    let request = ReserveRequest::new("tokens", 400).with_ttl_seconds(600).with_idempotency_key("job-9");
    let held = tally.reserve("acme", &request).await.unwrap();
    assert_eq!((held.metric_code.as_str(), held.amount, held.current_usage), ("tokens", 400, 0));
    assert_eq!(
        (held.reserved, held.limit, held.remaining, held.replayed),
        (400, Some(1000), Some(600), false)
    );
    let ttl = held.expires_at - chrono::Utc::now();
    assert!(ttl.num_seconds() > 500 && ttl.num_seconds() <= 600, "{ttl}");

    // A replay of the creation answers the same reservation and holds nothing more.
    let replay = tally.reserve("acme", &request).await.unwrap();
    assert_eq!((replay.reservation_id.as_str(), replay.replayed), (held.reservation_id.as_str(), true));
    let open = tally.list_reservations("acme").await.unwrap().reservations;
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].idempotency_key.as_deref(), Some("job-9"));
    assert_eq!((open[0].reservation_id.as_str(), open[0].amount), (held.reservation_id.as_str(), 400));

    // HARD counts the hold.
    let check = tally.check("acme", &CheckRequest::new("tokens", 700)).await.unwrap();
    assert!(!check.allowed);
    assert_eq!((check.reserved, check.remaining), (400, Some(600)));
    let too_much = tally.reserve("acme", &ReserveRequest::new("tokens", 700)).await.unwrap_err();
    assert_eq!(too_much.quota_exceeded().map(|q| (q.current_usage, q.requested)), Some((0, 700)));

    // Commit what was used; the rest is released. Committing again replays.
    let commit = CommitRequest { amount: Some(300), metadata: Some(json!({"model": "m1"})) };
    let used = tally.commit("acme", &held.reservation_id, &commit).await.unwrap();
    assert_eq!(
        (used.amount, used.current_usage, used.remaining, used.replayed),
        (300, 300, Some(700), false)
    );
    let twice = tally.commit("acme", &held.reservation_id, &commit).await.unwrap();
    assert_eq!((twice.event_id.as_str(), twice.replayed), (used.event_id.as_str(), true));
    assert!(tally.list_reservations("acme").await.unwrap().reservations.is_empty());
    let events = tally.events("acme", &EventsQuery::default()).await.unwrap().events;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].metadata, json!({"model": "m1"}));

    // Released: no longer held, and committing it is a conflict.
    let other = tally.reserve("acme", &ReserveRequest::new("tokens", 100)).await.unwrap();
    assert_eq!(other.reserved, 100);
    assert_eq!(tally.list_reservations("acme").await.unwrap().reservations.len(), 1);
    tally.release("acme", &other.reservation_id).await.unwrap();
    assert!(tally.list_reservations("acme").await.unwrap().reservations.is_empty());
    let closed = tally.commit("acme", &other.reservation_id, &CommitRequest::default()).await.unwrap_err();
    let problem = closed.problem().unwrap();
    assert_eq!((problem.status, problem.code.as_str()), (409, "conflict"));
    assert_eq!(problem.reservation_status.as_deref(), Some("released"));
    assert_eq!(tally.check("acme", &CheckRequest::new("tokens", 700)).await.unwrap().reserved, 0);
}

#[tokio::test]
async fn a_reservation_without_a_key_gets_a_generated_one() {
    let server = TestServer::start().await;
    let tally = server.client();
    seed(&tally, "pro", "acme", vec![hard("tokens", 1000)]).await;
    let held = tally.reserve("acme", &ReserveRequest::new("tokens", 10)).await.unwrap();
    let open = tally.list_reservations("acme").await.unwrap().reservations;
    let key = open[0].idempotency_key.clone().expect("a generated key");
    assert_eq!(uuid::Uuid::parse_str(&key).unwrap().get_version_num(), 7);
    let all = tally.commit("acme", &held.reservation_id, &CommitRequest::default()).await.unwrap();
    assert_eq!(all.amount, 10, "a commit without an amount takes all of it");
}
