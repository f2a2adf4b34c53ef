//! `tally serve` and `tally demo`: the HTTP server, its first admin key, logging and graceful
//! shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tally_domain::{KeyScope, RateLimit};
use tally_http::AppState;
use tally_service::{ServiceConfig, SystemClock, Tally};
use tally_store::Store;
use tokio::net::TcpListener;

/// After SIGTERM or SIGINT, in-flight requests get this long to finish before the process exits.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What `serve` needs besides the store.
pub struct ServeOptions {
    pub admin_key: Option<String>,
    pub metrics_token: Option<String>,
    /// Admin UI cookies carry `Secure`.
    pub cookie_secure: bool,
    /// Extra root certificates (PEM) for https webhook receivers.
    pub webhook_roots_pem: Option<Vec<u8>>,
    /// The rate limit of tenant keys without one of their own (`--rate-limit-tenant-key`).
    pub rate_limit_tenant_key: Option<RateLimit>,
    /// The rate limit of admin keys without one of their own (`--rate-limit-admin-key`).
    pub rate_limit_admin_key: Option<RateLimit>,
    pub config: ServiceConfig,
    pub store_name: String,
    pub schema_version: i64,
}

/// Installs the log subscriber: text or JSON lines on stderr, filtered by `RUST_LOG` (default info).
pub fn init_logging(format: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match format {
        "json" => builder.json().try_init(),
        "text" => builder.try_init(),
        other => anyhow::bail!("--log-format must be text or json, got {other:?}"),
    };
    result.map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, not when
/// it is first awaited, so a signal that arrives just after start-up is not lost (it would
/// otherwise kill the process without a graceful stop).
pub fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            tracing::info!("shutdown signal received; finishing in-flight requests");
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async move {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutdown signal received; finishing in-flight requests");
        })
    }
}

/// Creates the first admin key when none is configured and none is stored; returns it.
pub async fn ensure_admin_key<S: Store>(
    tally: &Tally<S>,
    configured: bool,
) -> anyhow::Result<Option<String>> {
    if configured {
        return Ok(None);
    }
    let keys = tally.list_keys().await.context("listing keys")?;
    if keys.iter().any(|k| k.scope == KeyScope::Admin && k.revoked_at.is_none()) {
        return Ok(None);
    }
    let (_key, secret) =
        tally.create_key(KeyScope::Admin, None).await.context("creating the first admin key")?;
    Ok(Some(secret))
}

/// Binds the listener.
pub async fn bind(listen: &str) -> anyhow::Result<TcpListener> {
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("--listen: {listen:?} is not an address like 127.0.0.1:8080"))?;
    TcpListener::bind(addr).await.with_context(|| format!("listening on {addr}"))
}

/// Serves until a signal, then drains for at most `SHUTDOWN_GRACE`.
pub async fn run_server<S: Store>(store: S, listener: TcpListener, opts: ServeOptions) -> anyhow::Result<()> {
    let tally = Tally::with_clock(store, Arc::new(SystemClock), opts.config);
    let state = AppState::new(tally)
        .with_admin_key(opts.admin_key.as_deref())
        .with_metrics_token(opts.metrics_token.as_deref())
        .with_cookie_secure(opts.cookie_secure)
        .with_webhook_roots(opts.webhook_roots_pem)
        .with_rate_limits(opts.rate_limit_tenant_key, opts.rate_limit_admin_key);
    let addr = listener.local_addr().context("reading the bound address")?;
    let signal = shutdown_signal()?;
    tracing::info!(address = %addr, store = %opts.store_name, schema_version = opts.schema_version, "tally listening on http://{addr}");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tally_http::serve(listener, state, async move {
        let _ = rx.await;
    }));
    signal.await;
    let _ = tx.send(());
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(Ok(Ok(()))) => tracing::info!("stopped cleanly"),
        Ok(Ok(Err(e))) => return Err(e).context("serving"),
        Ok(Err(e)) => anyhow::bail!("server task failed: {e}"),
        Err(_) => {
            tracing::warn!("in-flight requests did not finish within {}s; exiting", SHUTDOWN_GRACE.as_secs())
        }
    }
    Ok(())
}
