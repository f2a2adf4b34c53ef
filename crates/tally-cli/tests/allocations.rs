//! Heap allocations per request on the hot routes, counted by a global allocator that counts
//! every allocation made outside the client's thread, while the real server (`tally_http::serve`
//! over an SQLite file) answers a warm load over one keep-alive connection. The counts are
//! pinned as constants: a change that allocates more on the hot path fails here, and one that
//! allocates less should lower the constant. docs/BENCHMARKS.md quotes the figures, and those
//! of the same test run on the code before the hot-path rework (usage POST 659, check 200,
//! GET /healthz 124, batch item 113); each constant is the measured count plus about 3%.
//!
//! Background tasks (the configuration-version poll, the metrics upkeep) allocate a little
//! meanwhile; at 2,000 requests per route that is well under one allocation per request.
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tally_http::AppState;
use tally_service::{ServiceConfig, SystemClock, Tally};
use tally_store_sqlite::SqliteStore;

/// Allocations per `POST /v1/tenants/{id}/usage` (a unique key, a warm record).
const ALLOCS_PER_USAGE_POST_MAX: u64 = 330;
/// Allocations per `POST /v1/tenants/{id}/usage/check`.
const ALLOCS_PER_CHECK_MAX: u64 = 160;
/// Allocations per item of `POST /v1/tenants/{id}/usage/batch` with 100 items.
const ALLOCS_PER_BATCH_ITEM_MAX: u64 = 110;
/// Allocations per `GET /healthz`: the HTTP stack's floor.
const ALLOCS_PER_HEALTHZ_MAX: u64 = 105;

/// Requests measured per route, after as many of warm-up.
const REQUESTS: u64 = 2_000;
/// Items per batch request.
const BATCH_ITEMS: u64 = 100;
const ADMIN_KEY: &str = "allocations-admin-key";

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The client's thread: its allocations are not the server's.
    static CLIENT: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if !CLIENT.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded to the system allocator unchanged; counting has no effect
// on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract is passed on as it is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A blocking HTTP/1.1 keep-alive client that allocates nothing the count sees.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn send(&mut self, method: &str, path: &str, body: &str) -> u16 {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: tally\r\nAuthorization: Bearer {ADMIN_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.stream.write_all(head.as_bytes()).unwrap();
        self.stream.write_all(body.as_bytes()).unwrap();
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            let n = self.stream.read(&mut chunk).unwrap();
            assert!(n > 0, "the server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end]).unwrap().to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                while self.buf.len() < end + 4 + length {
                    let n = self.stream.read(&mut chunk).unwrap();
                    assert!(n > 0, "the server closed the connection mid-body");
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                return head[9..12].parse().unwrap();
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Allocations per request of `requests(i)` for i in 0..REQUESTS, after as many of warm-up.
fn per_request(client: &mut Client, mut request: impl FnMut(&mut Client, u64) -> u16) -> u64 {
    for i in 0..REQUESTS {
        assert_eq!(request(client, i), 200, "warm-up request {i}");
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for i in REQUESTS..2 * REQUESTS {
        assert_eq!(request(client, i), 200, "request {i}");
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) / REQUESTS
}

#[test]
fn hot_routes_allocate_at_most_their_pinned_counts() {
    let server = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let addr = server.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let store = SqliteStore::open_temp_file().await.unwrap();
        let tally = Tally::with_clock(store, Arc::new(SystemClock), ServiceConfig::default());
        let state = AppState::new(tally).with_admin_key(Some(ADMIN_KEY));
        tokio::spawn(tally_http::serve(listener, state, std::future::pending::<()>()));
        addr
    });

    CLIENT.with(|c| c.set(true));
    let mut client = Client { stream: TcpStream::connect(addr).unwrap(), buf: Vec::with_capacity(1 << 16) };
    client.stream.set_nodelay(true).unwrap();
    let plan = r#"{"name":"Bench","limits":[{"metric_code":"api_calls","limit":1000000000000,"enforcement":"hard"}]}"#;
    for (path, body) in [
        ("/v1/plans/bench", plan),
        ("/v1/tenants/acme", r#"{"name":"Acme"}"#),
        ("/v1/tenants/acme/subscription", r#"{"plan_code":"bench"}"#),
    ] {
        let status = client.send("PUT", path, body);
        assert!((200..300).contains(&status), "PUT {path}: {status}");
    }

    let mut body = String::with_capacity(64 * 1024);
    let usage = per_request(&mut client, |c, i| {
        body.clear();
        body.push_str(&format!(r#"{{"metric_code":"api_calls","amount":1,"idempotency_key":"k-{i}"}}"#));
        c.send("POST", "/v1/tenants/acme/usage", &body)
    });
    let check = per_request(&mut client, |c, _| {
        c.send("POST", "/v1/tenants/acme/usage/check", r#"{"metric_code":"api_calls","amount":1}"#)
    });
    let healthz = per_request(&mut client, |c, _| c.send("GET", "/healthz", ""));
    let batch_request = per_request(&mut client, |c, i| {
        body.clear();
        body.push_str(r#"{"events":["#);
        for item in 0..BATCH_ITEMS {
            if item > 0 {
                body.push(',');
            }
            body.push_str(&format!(
                r#"{{"metric_code":"api_calls","amount":1,"idempotency_key":"b-{i}-{item}"}}"#
            ));
        }
        body.push_str("]}");
        c.send("POST", "/v1/tenants/acme/usage/batch", &body)
    });
    let batch_item = batch_request / BATCH_ITEMS;
    eprintln!(
        "allocations per request: usage POST {usage}, check {check}, GET /healthz {healthz}, batch item {batch_item} ({batch_request} per batch of {BATCH_ITEMS})"
    );
    assert!(usage <= ALLOCS_PER_USAGE_POST_MAX, "usage POST: {usage} > {ALLOCS_PER_USAGE_POST_MAX}");
    assert!(check <= ALLOCS_PER_CHECK_MAX, "check: {check} > {ALLOCS_PER_CHECK_MAX}");
    assert!(healthz <= ALLOCS_PER_HEALTHZ_MAX, "healthz: {healthz} > {ALLOCS_PER_HEALTHZ_MAX}");
    assert!(
        batch_item <= ALLOCS_PER_BATCH_ITEM_MAX,
        "batch item: {batch_item} > {ALLOCS_PER_BATCH_ITEM_MAX}"
    );
}
