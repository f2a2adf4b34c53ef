//! Tally's HTTP API with axum: the JSON API under `/v1`, problem+json for every error
//! (the framework's own rejections included), bearer-key auth, the OpenAPI document and its
//! reference page, Prometheus metrics, request ids and timeouts.

pub mod admin_routes;
pub mod admin_ui;
pub mod auth;
pub mod closing_routes;
pub mod compat_routes;
pub mod docs_page;
pub mod dto;
pub mod error;
pub mod extract;
pub mod json;
pub mod key_routes;
pub mod metrics;
pub mod openapi;
pub mod ops_routes;
pub mod rate_limit;
pub mod reservation_routes;
pub mod router;
pub mod state;
pub mod usage_routes;
pub mod webhook_routes;
pub mod webhook_sender;

use std::future::Future;

use tally_store::Store;
use tokio::net::TcpListener;

pub use error::ApiError;
pub use router::{route_table, router};
pub use state::AppState;

/// Serves the API on `listener` until `shutdown` resolves, then stops accepting and lets
/// in-flight requests finish. Beside it run the metrics upkeep, the reservation sweeper, the
/// webhook delivery worker and the automatic close of periods (`close_after`).
pub async fn serve<S: Store>(
    listener: TcpListener,
    state: AppState<S>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let sender =
        webhook_sender::HttpSender::new(state.webhook_roots_pem.as_deref()).map_err(std::io::Error::other)?;
    let sweeper = tokio::spawn(tally_service::reservations::sweep_forever(state.tally.clone()));
    let closer = tokio::spawn(tally_service::closing::close_forever(
        state.tally.clone(),
        tally_service::closing::AUTO_CLOSE_INTERVAL,
    ));
    let deliveries = tokio::spawn(tally_service::webhooks::deliver_forever(
        state.tally.clone(),
        std::sync::Arc::new(sender),
    ));
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let upkeep = tokio::spawn(metrics::upkeep_forever());
    let served = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    upkeep.abort();
    sweeper.abort();
    closer.abort();
    deliveries.abort();
    served
}
