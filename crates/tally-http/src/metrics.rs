//! Prometheus metrics: one recorder per process, installed on first use.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Request latency buckets, in seconds.
pub const LATENCY_BUCKETS_SECONDS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Batch size buckets, in events.
pub const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

/// How often the histograms' pending samples are folded into their buckets. Without it they
/// pile up between two scrapes of `/metrics`, and a server nobody scrapes grows by ~40 bytes
/// per request (found by tests/faults/soak).
pub const METRICS_UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Folds pending samples every `METRICS_UPKEEP_INTERVAL`, for as long as the process runs.
pub async fn upkeep_forever() {
    let handle = handle();
    let mut tick = tokio::time::interval(METRICS_UPKEEP_INTERVAL);
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

/// The process's metrics handle; installs the recorder the first time.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS_SECONDS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full("tally_batch_size".to_owned()), BATCH_SIZE_BUCKETS)
                });
            let builder = match builder {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics buckets refused; using defaults");
                    PrometheusBuilder::new()
                }
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (only in tests that embed several
            // servers); then metrics still render, from this handle, empty.
            let _ = metrics::set_global_recorder(recorder);
            crate::rate_limit::register_metrics();
            handle
        })
        .clone()
}
