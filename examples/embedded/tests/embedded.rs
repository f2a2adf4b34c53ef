//! The embedded engine keeps the server's guarantees: a HARD limit is never overshot under
//! concurrency, a retried request is never counted twice, and what was recorded survives a
//! restart of the process (a new `Quotas` on the same file).
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test

use tally_example_embedded::Quotas;

fn temp_url(name: &str) -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("tally-embedded-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("quotas.db").display());
    (dir, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hard_limit_holds_under_concurrency_and_retries_replay() {
    let (dir, url) = temp_url("hard");
    let quotas = Quotas::open(&url).await.unwrap();
    quotas.define_plan("pro", "api_calls", 100).await.unwrap();
    quotas.add_customer("acme", "pro").await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..150 {
        let q = quotas.clone();
        let key = format!("req-{i}");
        tasks.push(tokio::spawn(async move {
            let answer = q.try_use("acme", "api_calls", 1, Some(&key)).await.unwrap();
            (key, answer.is_ok())
        }));
    }
    let mut accepted = Vec::new();
    for t in tasks {
        let (key, ok) = t.await.unwrap();
        if ok {
            accepted.push(key);
        }
    }
    assert_eq!(accepted.len(), 100);
    assert_eq!(quotas.used("acme", "api_calls").await.unwrap(), 100);
    assert!(!quotas.would_allow("acme", "api_calls", 1).await.unwrap());
    // A retry of an accepted request replays its answer and records nothing.
    let retried = quotas.try_use("acme", "api_calls", 1, Some(&accepted[0])).await.unwrap().unwrap();
    assert!(retried.replayed);
    assert_eq!(quotas.used("acme", "api_calls").await.unwrap(), 100);
    // tally verify's check holds on the embedded engine too.
    let report = quotas.engine().verify().await.unwrap();
    assert!(report.drifts.is_empty(), "{report:?}");
    drop(quotas);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_survives_reopening_the_file() {
    let (dir, url) = temp_url("reopen");
    {
        let quotas = Quotas::open(&url).await.unwrap();
        quotas.define_plan("starter", "exports", 3).await.unwrap();
        quotas.add_customer("acme", "starter").await.unwrap();
        for job in ["a", "b", "c"] {
            assert!(quotas.try_use("acme", "exports", 1, Some(job)).await.unwrap().is_ok());
        }
        assert!(quotas.try_use("acme", "exports", 1, Some("d")).await.unwrap().is_err());
    }
    let reopened = Quotas::open(&url).await.unwrap();
    assert_eq!(reopened.used("acme", "exports").await.unwrap(), 3);
    let replay = reopened.try_use("acme", "exports", 1, Some("a")).await.unwrap().unwrap();
    assert!(replay.replayed, "keys are kept in the file");
    let _ = std::fs::remove_dir_all(dir);
}
