//! The harness: the real server in-process on a free port (as crates/tally-cli/tests/api
//! starts it), a hyper stub that answers what a test scripts, and a TCP proxy that loses the
//! answer of the first connection.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tally_client::{
    Client, Enforcement, Limit, PeriodKind, PlanRequest, RetryPolicy, SubscriptionRequest, TenantRequest,
};
use tally_http::AppState;
use tally_service::{ServiceConfig, SystemClock, Tally};
use tally_store_sqlite::SqliteStore;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// The admin key every test server accepts.
pub const ADMIN_KEY: &str = "test-admin-key";

/// Retries as the default policy does, with short waits so that tests stay fast.
pub const FAST_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 3,
    initial_backoff: Duration::from_millis(10),
    max_backoff: Duration::from_millis(40),
};

/// A client of `base_url` with the admin key and fast retries.
pub fn client_for(base_url: &str) -> Client {
    Client::builder(base_url).api_key(ADMIN_KEY).retry(FAST_RETRY).build().unwrap()
}

/// A real Tally over a fresh SQLite file; dropping it stops the server.
pub struct TestServer {
    pub url: String,
    pub addr: SocketAddr,
    _shutdown: oneshot::Sender<()>,
}

impl TestServer {
    /// On a free port.
    pub async fn start() -> TestServer {
        TestServer::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap()).await
    }

    /// On this listener, as `tally serve` runs it (the store brings its caches and group commit).
    pub async fn start_on(listener: TcpListener) -> TestServer {
        let addr = listener.local_addr().unwrap();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let store = SqliteStore::open_temp_file().await.unwrap();
        let tally = Tally::with_clock(store, Arc::new(SystemClock), ServiceConfig::default());
        let state = AppState::new(tally).with_admin_key(Some(ADMIN_KEY));
        tokio::spawn(tally_http::serve(listener, state, async move {
            stopped.await.ok();
        }));
        TestServer { url: format!("http://{addr}"), addr, _shutdown: shutdown }
    }

    /// An admin client with fast retries.
    pub fn client(&self) -> Client {
        client_for(&self.url)
    }
}

/// Creates plan `plan_code` with `limits`, tenant `tenant_id`, and subscribes it (anchored a
/// day ago).
pub async fn seed(client: &Client, plan_code: &str, tenant_id: &str, limits: Vec<Limit>) {
    let plan = PlanRequest { name: format!("Plan {plan_code}"), limits };
    client.put_plan(plan_code, &plan).await.unwrap();
    client.put_tenant(tenant_id, &TenantRequest::default()).await.unwrap();
    // Anchored a day ago, so that the current monthly period holds the last few minutes.
    let anchor = chrono::Utc::now() - chrono::Duration::days(1);
    let subscription = SubscriptionRequest { plan_code: plan_code.to_owned(), anchor: Some(anchor) };
    client.put_subscription(tenant_id, &subscription).await.unwrap();
}

/// A monthly HARD limit.
pub fn hard(metric_code: &str, limit: i64) -> Limit {
    Limit::new(metric_code, Some(limit), Enforcement::Hard, PeriodKind::Month)
}

// ---------------------------------------------------------------------------------------
// A scripted HTTP server

/// One scripted answer.
#[derive(Clone, Debug)]
pub struct Canned {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Canned {
    /// A JSON answer.
    pub fn json(status: u16, body: Value) -> Canned {
        Canned {
            status,
            headers: vec![("content-type", "application/json".to_owned())],
            body: body.to_string(),
        }
    }

    /// A problem+json answer, as Tally's.
    pub fn problem(status: u16, code: &str, detail: &str) -> Canned {
        Canned {
            status,
            headers: vec![("content-type", "application/problem+json".to_owned())],
            body: json!({"type": "about:blank", "title": code, "status": status, "detail": detail, "code": code})
                .to_string(),
        }
    }
}

/// A request the stub received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub body: Vec<u8>,
}

impl Seen {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

struct StubState {
    script: Mutex<VecDeque<Canned>>,
    last: Mutex<Option<Canned>>,
    seen: Mutex<Vec<Seen>>,
}

/// An HTTP/1.1 server (hyper) answering the scripted answers in order, then the last one
/// again, and recording every request.
pub struct Stub {
    pub url: String,
    state: Arc<StubState>,
}

impl Stub {
    pub async fn start(script: Vec<Canned>) -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(StubState {
            script: Mutex::new(script.into()),
            last: Mutex::new(None),
            seen: Mutex::new(Vec::new()),
        });
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, hyper::Error>(state.answer(req).await) }
                    });
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                        .ok();
                });
            }
        });
        Stub { url, state }
    }

    /// Every request received so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
}

impl StubState {
    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
        self.seen.lock().unwrap().push(Seen {
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            authorization: parts
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body,
        });
        let canned = {
            let next = self.script.lock().unwrap().pop_front();
            let mut last = self.last.lock().unwrap();
            if let Some(next) = next {
                *last = Some(next);
            }
            last.clone().unwrap_or_else(|| Canned::json(200, json!({})))
        };
        let mut resp = Response::builder().status(canned.status);
        for (name, value) in &canned.headers {
            resp = resp.header(*name, value.as_str());
        }
        resp.body(Full::new(Bytes::from(canned.body))).unwrap()
    }
}

// ---------------------------------------------------------------------------------------
// A proxy that loses one answer

/// A TCP proxy to `upstream` that forwards the first connection's request, waits until the
/// server starts answering (so the request was applied), then closes that connection without
/// passing the answer on: the client sees a network error after the server did the work.
/// Every later connection is forwarded both ways. Returns the proxy's URL and a count of the
/// connections it accepted.
pub async fn lose_first_answer(upstream: SocketAddr) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(upstream).await else { return };
                if n == 0 {
                    let (mut client_read, client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let forward =
                        tokio::spawn(
                            async move { tokio::io::copy(&mut client_read, &mut server_write).await },
                        );
                    let mut first = [0u8; 1];
                    let _ = server_read.read(&mut first).await;
                    forward.abort();
                    drop(client_write);
                } else {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    (url, connections)
}

/// Polls `probe` every 50 ms until it returns `Some`, for at most `within`.
pub async fn eventually<T, F, Fut>(within: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(found) = probe().await {
            return Some(found);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
