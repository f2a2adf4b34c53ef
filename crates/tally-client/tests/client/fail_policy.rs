//! What a call does when Tally cannot be reached: fail closed (an error) or fail open
//! (allowed, queued, replayed later with the same key, counted once).

use std::net::SocketAddr;
use std::time::Duration;

use tally_client::{
    CheckRequest, Checked, Client, Error, EventsQuery, Recorded, RetryPolicy, Unreachable, UsageRequest,
};
use tokio::net::TcpListener;

use crate::helpers::{ADMIN_KEY, FAST_RETRY, TestServer, client_for, hard, lose_first_answer, seed};

/// An address where nothing listens (a port that was free a moment ago).
async fn nothing_listens() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// Binds `addr` again, waiting a little should the port still be held.
async fn bind_again(addr: SocketAddr) -> TcpListener {
    for _ in 0..50 {
        if let Ok(listener) = TcpListener::bind(addr).await {
            return listener;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("could not bind {addr} again")
}

#[tokio::test]
async fn fail_closed_returns_the_error_and_queues_nothing() {
    let addr = nothing_listens().await;
    let tally = client_for(&format!("http://{addr}"));
    let usage = UsageRequest::new("api_calls", 1);

    let err = tally.record_with("acme", &usage, Unreachable::FailClosed).await.unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err:?}");
    assert!(err.is_unavailable() && !err.is_quota_exceeded());
    assert_eq!((err.status(), err.code()), (None, None));
    let plain = tally.record("acme", &usage).await.unwrap_err();
    assert!(plain.is_unavailable(), "the plain call fails closed: {plain:?}");
    let batch = tally
        .record_batch_with("acme", std::slice::from_ref(&usage), Unreachable::FailClosed)
        .await
        .unwrap_err();
    assert!(batch.is_unavailable());
    let check = tally.check_with("acme", &CheckRequest::new("api_calls", 1), Unreachable::FailClosed).await;
    assert!(check.unwrap_err().is_unavailable());
    assert_eq!(tally.pending_len(), 0, "fail closed queues nothing");
    assert_eq!(tally.dropped_count(), 0);
}

#[tokio::test]
async fn fail_open_allows_queues_and_replays_once_the_server_is_up() {
    let addr = nothing_listens().await;
    let tally = client_for(&format!("http://{addr}"));

    // Allowed, and queued with the key it was sent with (generated, since none was given).
    let usage = UsageRequest::new("api_calls", 2);
    let outcome = tally.record_with("acme", &usage, Unreachable::FailOpen).await.unwrap();
    let Recorded::Queued(unrecorded) = &outcome else { panic!("{outcome:?}") };
    assert!(unrecorded.cause.is_unavailable(), "{:?}", unrecorded.cause);
    let [key] = unrecorded.idempotency_keys.as_slice() else { panic!("{unrecorded:?}") };
    assert!(outcome.is_queued() && outcome.stored().is_none());
    // A second event, for a metric the plan will not have: refused on replay.
    let doomed = UsageRequest::new("nope", 1).with_idempotency_key("doomed");
    assert!(tally.record_with("acme", &doomed, Unreachable::FailOpen).await.unwrap().is_queued());
    assert_eq!(tally.pending_len(), 2);
    let pending = tally.pending();
    assert_eq!(pending[0].tenant_id, "acme");
    assert_eq!(pending[0].request.idempotency_key.as_ref(), Some(key));
    assert_eq!((pending[0].request.amount, pending[1].request.metric_code.as_str()), (Some(2), "nope"));

    // A check fails open too: allowed, unverified.
    let check =
        tally.check_with("acme", &CheckRequest::new("api_calls", 1), Unreachable::FailOpen).await.unwrap();
    assert!(matches!(check, Checked::Unverified(_)) && check.allowed() && check.answer().is_none());

    // Still down: the replay stops and keeps everything, in order.
    let stopped = tally.replay_pending().await.unwrap_err();
    assert!(stopped.cause.is_unavailable(), "{stopped}");
    assert_eq!((stopped.report.recorded, stopped.report.remaining), (0, 2));
    assert_eq!(tally.pending(), pending);

    // The server comes up where the client points.
    let server = TestServer::start_on(bind_again(addr).await).await;
    seed(&tally, "pro", "acme", vec![hard("api_calls", 100)]).await;
    let report = tally.replay_pending().await.unwrap();
    assert_eq!((report.recorded, report.already_recorded, report.remaining), (1, 0, 0), "{report:?}");
    assert_eq!(report.rejected.len(), 1);
    assert_eq!(report.rejected[0].usage.request.idempotency_key.as_deref(), Some("doomed"));
    assert_eq!(report.rejected[0].problem.code, "quota_not_found");
    assert_eq!(tally.pending_len(), 0);

    // Recorded exactly once, under the queued key; a second replay has nothing to send.
    let events = tally.events("acme", &EventsQuery::default()).await.unwrap().events;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].idempotency_key.as_ref(), events[0].amount), (Some(key), 2));
    let nothing = tally.replay_pending().await.unwrap();
    assert_eq!((nothing.recorded, nothing.already_recorded, nothing.rejected.len()), (0, 0, 0));
    assert_eq!(tally.usage("acme").await.unwrap().metrics[0].current_usage, 2);

    // Now reachable: fail open answers what Tally answers.
    let stored =
        tally.record_with("acme", &UsageRequest::new("api_calls", 1), Unreachable::FailOpen).await.unwrap();
    assert_eq!(stored.into_stored().map(|r| r.current_usage), Some(3));
    drop(server);
}

#[tokio::test]
async fn a_replay_of_usage_that_did_reach_tally_counts_it_once() {
    let server = TestServer::start().await;
    seed(&server.client(), "pro", "acme", vec![hard("api_calls", 100)]).await;
    let (proxy_url, _) = lose_first_answer(server.addr).await;
    // No retries: the lost answer goes straight to the fail-open queue.
    let tally = Client::builder(&proxy_url).api_key(ADMIN_KEY).retry(RetryPolicy::never()).build().unwrap();

    let outcome =
        tally.record_with("acme", &UsageRequest::new("api_calls", 4), Unreachable::FailOpen).await.unwrap();
    assert!(outcome.is_queued(), "{outcome:?}");
    let report = tally.replay_pending().await.unwrap();
    assert_eq!((report.recorded, report.already_recorded), (0, 1), "Tally had it already: {report:?}");
    let events = server.client().events("acme", &EventsQuery::default()).await.unwrap().events;
    assert_eq!(events.len(), 1);
    assert_eq!(server.client().usage("acme").await.unwrap().metrics[0].current_usage, 4);
}

#[tokio::test]
async fn a_4xx_is_an_answer_even_when_failing_open() {
    let server = TestServer::start().await;
    let tally = server.client();
    seed(&tally, "free", "acme", vec![hard("api_calls", 1)]).await;
    tally.record("acme", &UsageRequest::new("api_calls", 1)).await.unwrap();
    let refused = tally.record_with("acme", &UsageRequest::new("api_calls", 1), Unreachable::FailOpen).await;
    assert!(refused.unwrap_err().is_quota_exceeded(), "a refusal is not an outage");
    let check =
        tally.check_with("acme", &CheckRequest::new("api_calls", 1), Unreachable::FailOpen).await.unwrap();
    assert!(!check.allowed(), "Tally answered no");
    let missing = tally.record_with("ghost", &UsageRequest::new("api_calls", 1), Unreachable::FailOpen).await;
    assert!(!missing.unwrap_err().is_unavailable());
    assert_eq!(tally.pending_len(), 0);
}

#[tokio::test]
async fn the_queue_is_bounded_and_a_full_queue_drops() {
    let addr = nothing_listens().await;
    let tally = Client::builder(format!("http://{addr}"))
        .api_key(ADMIN_KEY)
        .retry(FAST_RETRY)
        .pending_capacity(2)
        .build()
        .unwrap();
    let usage = UsageRequest::new("api_calls", 1);
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        outcomes.push(tally.record_with("acme", &usage, Unreachable::FailOpen).await.unwrap());
    }
    let kinds: Vec<_> = outcomes
        .iter()
        .map(|o| match o {
            Recorded::Stored(_) => "stored",
            Recorded::Queued(_) => "queued",
            Recorded::Dropped(_) => "dropped",
        })
        .collect();
    assert_eq!(kinds, ["queued", "queued", "dropped"]);
    assert!(outcomes[2].unrecorded().is_some_and(|u| u.cause.is_unavailable()));
    let keys: Vec<_> = tally.pending().into_iter().filter_map(|p| p.request.idempotency_key).collect();
    assert_eq!(keys.len(), 2);
    assert_ne!(keys[0], keys[1], "each logical call has its own key");
    assert_eq!((tally.pending_len(), tally.dropped_count()), (2, 1));

    // A batch is queued whole or not at all.
    let batch =
        tally.record_batch_with("acme", &[usage.clone(), usage], Unreachable::FailOpen).await.unwrap();
    assert!(matches!(&batch, Recorded::Dropped(u) if u.idempotency_keys.len() == 2), "{batch:?}");
    assert_eq!((tally.pending_len(), tally.dropped_count()), (2, 3));
}
