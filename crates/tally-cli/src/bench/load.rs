//! The load: one task per connection, shared atomic counters, the live progress line, and the
//! accounting of what the server accepted, per (tenant, metric) pair, for the checks.

use std::borrow::Cow;
use std::io::{IsTerminal, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Method, StatusCode, Uri};
use serde::Deserialize;

use super::client::{Conn, Endpoint, RECONNECT_PAUSE, REQUEST_TIMEOUT};
use super::histogram::AtomicHistogram;
use super::options::{Idempotency, Mode, Settings, StopRule};
use super::workload::{Workload, splitmix64};

/// How often the progress line is written.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// Sends of one request after its connection failed (with idempotency keys only, so that a
/// re-send can never record twice).
pub const RESEND_MAX: u32 = 3;
/// Connection attempts in a row after which a connection task gives up (the run then fails).
pub const CONNECT_ATTEMPTS_MAX: u32 = 50;
/// Share of answered requests sent again with `--idempotency retry`, in 1/1000.
pub const REPLAY_PER_MILLE: u64 = 50;
/// Status codes counted one by one (everything below this).
const STATUS_SLOTS: usize = 600;
/// Replay failures kept for the report.
const REPLAY_FAILURES_KEPT: usize = 20;
/// Seed of the replay draw.
const SEED_REPLAY: u64 = 0x2545_f491_4f6c_dd1d;

/// Counters of one phase (warm-up or measured).
pub struct Stats {
    pub latency: AtomicHistogram,
    /// Answers by status code.
    pub status: Vec<AtomicU64>,
    /// Requests whose connection failed before an answer.
    pub conn_errors: AtomicU64,
    /// Requests without an answer within [`REQUEST_TIMEOUT`].
    pub timeouts: AtomicU64,
    /// Answered requests.
    pub requests: AtomicU64,
    /// Accepted events (record) or answered checks (check).
    pub events: AtomicU64,
    /// Batch items by status: 200 accepted, else the item's error status.
    pub items: Vec<AtomicU64>,
    /// `check` answers.
    pub allowed: AtomicU64,
    pub refused: AtomicU64,
    /// Nanoseconds from the phase's start to its last answer.
    pub last_answer_ns: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        let slots = || (0..STATUS_SLOTS).map(|_| AtomicU64::new(0)).collect();
        Stats {
            latency: AtomicHistogram::default(),
            status: slots(),
            conn_errors: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            events: AtomicU64::new(0),
            items: slots(),
            allowed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            last_answer_ns: AtomicU64::new(0),
        }
    }
}

impl Stats {
    /// Counts of every status seen, in code order.
    pub fn status_counts(&self) -> Vec<(u16, u64)> {
        counts(&self.status)
    }

    /// Counts of batch item outcomes, in code order.
    pub fn item_counts(&self) -> Vec<(u16, u64)> {
        counts(&self.items)
    }

    /// Everything that is neither a 200 nor a 429.
    pub fn errors(&self) -> u64 {
        let other: u64 =
            self.status_counts().iter().filter(|(c, _)| *c != 200 && *c != 429).map(|(_, n)| n).sum();
        other + self.conn_errors.load(Ordering::Relaxed) + self.timeouts.load(Ordering::Relaxed)
    }
}

fn counts(slots: &[AtomicU64]) -> Vec<(u16, u64)> {
    slots
        .iter()
        .enumerate()
        .filter_map(|(code, n)| {
            let n = n.load(Ordering::Relaxed);
            (n > 0).then_some((code as u16, n))
        })
        .collect()
}

/// What the client saw of one (tenant, metric) pair, over the whole run (warm-up included).
#[derive(Default)]
pub struct PairCounters {
    pub sent_events: AtomicU64,
    pub accepted_events: AtomicU64,
    pub accepted_amount: AtomicI64,
    /// Amount of events whose request got no answer and may have been recorded.
    pub unknown_amount: AtomicI64,
    /// Smallest amount refused by a HARD limit (429, or `allowed: false`); 0 when none.
    pub min_refused: AtomicI64,
}

impl PairCounters {
    fn refused(&self, amount: i64) {
        let _ = self
            .min_refused
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| (m == 0 || amount < m).then_some(amount));
    }
}

/// Everything the connection tasks share.
pub struct Load {
    pub settings: Settings,
    pub endpoint: Arc<Endpoint>,
    pub workload: Workload,
    /// Per tenant, the URI of the route the load uses.
    uris: Vec<Uri>,
    pub pairs: Vec<PairCounters>,
    pub warmup: Stats,
    pub measured: Stats,
    ticket: AtomicU64,
    /// Measured requests still to start (`--requests`).
    budget: AtomicI64,
    stop: AtomicBool,
    pub start: Instant,
    pub measure_start: Instant,
    measure_end: Option<Instant>,
    pub replays_sent: AtomicU64,
    pub replays_failed: AtomicU64,
    pub replay_failures: std::sync::Mutex<Vec<String>>,
    /// Events whose request got no answer (see [`PairCounters::unknown_amount`]).
    pub unknown_events: AtomicU64,
    /// 200 answers whose body could not be read as the API describes.
    pub bad_answers: AtomicU64,
}

/// Answers parsed from 200 bodies: only the members the accounting needs.
#[derive(Deserialize)]
struct ItemAnswer<'a> {
    #[serde(borrow, default)]
    event_id: Option<Cow<'a, str>>,
    #[serde(default)]
    replayed: bool,
    #[serde(default)]
    error: Option<ItemError>,
}

#[derive(Deserialize)]
struct ItemError {
    status: u16,
}

#[derive(Deserialize)]
struct BatchAnswer<'a> {
    #[serde(borrow)]
    results: Vec<ItemAnswer<'a>>,
}

#[derive(Deserialize)]
struct CheckAnswer {
    allowed: bool,
}

/// The outcome of one request, after any re-sends.
enum Outcome {
    Answer {
        status: StatusCode,
        body: Bytes,
        /// An earlier send of this request may have been applied (its answer was lost).
        maybe_applied_before: bool,
    },
    /// No answer: with keys, after [`RESEND_MAX`] sends; without, after the first failure.
    Lost,
}

impl Load {
    pub fn new(settings: Settings, endpoint: Arc<Endpoint>, workload: Workload) -> anyhow::Result<Load> {
        let route = match (settings.mode, workload.batched()) {
            (Mode::Check, _) => "/usage/check",
            (Mode::Healthz, _) => "",
            (Mode::Reserve, _) => "/reservations",
            (Mode::Record, true) => "/usage/batch",
            (Mode::Record, false) => "/usage",
        };
        let uris = (0..settings.tenants)
            .map(|t| match settings.mode {
                Mode::Healthz => endpoint.uri("/healthz"),
                _ => endpoint.uri(&format!("/v1/tenants/{}{route}", settings.tenant_id(t))),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let pairs = (0..u64::from(settings.tenants) * u64::from(settings.metrics))
            .map(|_| PairCounters::default())
            .collect();
        let start = Instant::now();
        let measure_start = start + settings.warmup;
        let (measure_end, budget) = match settings.stop {
            StopRule::After(d) => (Some(measure_start + d), 0),
            StopRule::Requests(n) => (None, i64::try_from(n).unwrap_or(i64::MAX)),
        };
        Ok(Load {
            settings,
            endpoint,
            workload,
            uris,
            pairs,
            warmup: Stats::default(),
            measured: Stats::default(),
            ticket: AtomicU64::new(0),
            budget: AtomicI64::new(budget),
            stop: AtomicBool::new(false),
            start,
            measure_start,
            measure_end,
            replays_sent: AtomicU64::new(0),
            replays_failed: AtomicU64::new(0),
            replay_failures: std::sync::Mutex::new(Vec::new()),
            unknown_events: AtomicU64::new(0),
            bad_answers: AtomicU64::new(0),
        })
    }

    /// When the measured load ends, when it runs for a set time.
    pub fn measure_end(&self) -> Option<std::time::Instant> {
        self.measure_end
    }

    /// The next request's ticket and whether it is measured, or `None` when the run is over.
    fn next_request(&self) -> Option<(u64, bool)> {
        if self.stop.load(Ordering::Relaxed) {
            return None;
        }
        let now = Instant::now();
        let measured = now >= self.measure_start;
        if measured {
            match self.measure_end {
                Some(end) if now >= end => return None,
                Some(_) => {}
                None if self.budget.fetch_sub(1, Ordering::Relaxed) <= 0 => return None,
                None => {}
            }
        }
        Some((self.ticket.fetch_add(1, Ordering::Relaxed), measured))
    }

    fn stats(&self, measured: bool) -> &Stats {
        if measured { &self.measured } else { &self.warmup }
    }

    /// Runs the load on every connection and the progress line; returns when it is over.
    pub async fn run(self: &Arc<Self>) -> anyhow::Result<()> {
        let progress = tokio::spawn(progress(self.clone()));
        let tasks: Vec<_> =
            (0..self.settings.connections).map(|_| tokio::spawn(connection_task(self.clone()))).collect();
        let mut first_error = None;
        for task in tasks {
            let result = match task.await {
                Ok(r) => r,
                Err(e) => Err(anyhow::anyhow!("a connection task failed: {e}")),
            };
            if let Err(e) = result {
                // One failing connection stops the others: the figures would mean nothing.
                self.stop.store(true, Ordering::Relaxed);
                first_error.get_or_insert(e);
            }
        }
        progress.abort();
        let _ = progress.await;
        if std::io::stderr().is_terminal() {
            eprintln!();
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Sends one request (re-sending it after a lost answer when that is safe).
    async fn exchange(
        &self,
        conn: &mut Option<Conn>,
        tenant: u32,
        body: &Bytes,
        measured: bool,
    ) -> anyhow::Result<Outcome> {
        self.exchange_at(conn, self.uris[tenant as usize].clone(), body, measured).await
    }

    /// `exchange`, to any URI of the server.
    async fn exchange_at(
        &self,
        conn: &mut Option<Conn>,
        uri: hyper::Uri,
        body: &Bytes,
        measured: bool,
    ) -> anyhow::Result<Outcome> {
        let stats = self.stats(measured);
        let resend_safe = self.settings.keyed() || self.settings.mode.records_nothing();
        let (method, body) = match self.settings.mode {
            Mode::Healthz => (Method::GET, Bytes::new()),
            _ => (Method::POST, body.clone()),
        };
        let mut maybe_applied_before = false;
        for _ in 0..=RESEND_MAX {
            let mut c = match conn.take() {
                Some(c) if !c.is_closed() => c,
                _ => self.reconnect(stats).await?,
            };
            let req = self.endpoint.request(method.clone(), uri.clone(), body.clone());
            let sent_at = Instant::now();
            let result = tokio::time::timeout(REQUEST_TIMEOUT, c.send(req)).await;
            let maybe_sent = match result {
                Ok(Ok((status, answer))) => {
                    let done = Instant::now();
                    stats.latency.record(done.duration_since(sent_at).as_nanos() as u64);
                    stats.requests.fetch_add(1, Ordering::Relaxed);
                    if let Some(slot) = stats.status.get(status.as_u16() as usize) {
                        slot.fetch_add(1, Ordering::Relaxed);
                    }
                    let phase_start = if measured { self.measure_start } else { self.start };
                    stats
                        .last_answer_ns
                        .fetch_max(done.duration_since(phase_start).as_nanos() as u64, Ordering::Relaxed);
                    if !c.is_closed() {
                        *conn = Some(c);
                    }
                    return Ok(Outcome::Answer { status, body: answer, maybe_applied_before });
                }
                Ok(Err(e)) => {
                    stats.conn_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e.message, maybe_sent = e.maybe_sent, "a bench request got no answer");
                    e.maybe_sent
                }
                Err(_) => {
                    stats.timeouts.fetch_add(1, Ordering::Relaxed);
                    true
                }
            };
            maybe_applied_before |= maybe_sent;
            if maybe_sent && !resend_safe {
                return Ok(Outcome::Lost);
            }
        }
        Ok(Outcome::Lost)
    }

    async fn reconnect(&self, stats: &Stats) -> anyhow::Result<Conn> {
        let mut failures = 0;
        loop {
            match self.endpoint.connect().await {
                Ok(c) => return Ok(c),
                Err(e) => {
                    stats.conn_errors.fetch_add(1, Ordering::Relaxed);
                    failures += 1;
                    if failures >= CONNECT_ATTEMPTS_MAX || self.stop.load(Ordering::Relaxed) {
                        return Err(e.context(format!("{failures} connection attempts in a row failed")));
                    }
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                }
            }
        }
    }

    /// Counts what an answer accepted. `replay_of`: the first answer, when this is a deliberate
    /// replay of an answered batch (whose accepted events were counted already; single-event
    /// replays go through [`replay_single`]).
    fn account(&self, ticket: u64, outcome: &Outcome, replay_of: Option<&Bytes>, measured: bool) {
        let tenant = self.workload.tenant(ticket);
        let stats = self.stats(measured);
        let (status, body, maybe_applied_before) = match outcome {
            Outcome::Answer { status, body, maybe_applied_before } => (*status, body, *maybe_applied_before),
            Outcome::Lost => {
                if !self.settings.mode.records_nothing() {
                    self.unknown(ticket, 0..self.workload.batch_len());
                }
                return;
            }
        };
        let accept = |i: usize, replayed: bool| {
            // A replay answers an event recorded earlier: it counts only when that earlier
            // answer was lost (so nobody counted it).
            if replayed && !maybe_applied_before {
                return;
            }
            let e = self.workload.event(ticket, i);
            let pair = &self.pairs[self.workload.pair(tenant, e.metric)];
            pair.accepted_events.fetch_add(1, Ordering::Relaxed);
            pair.accepted_amount.fetch_add(e.amount, Ordering::Relaxed);
            stats.events.fetch_add(1, Ordering::Relaxed);
        };
        let refused = |i: usize| {
            let e = self.workload.event(ticket, i);
            self.pairs[self.workload.pair(tenant, e.metric)].refused(e.amount);
        };
        match (self.settings.mode, self.workload.batched()) {
            // The commit's answer (`reserve_and_commit` accounts for the hold's refusals).
            (Mode::Reserve, _) => match status {
                StatusCode::OK => match serde_json::from_slice::<ItemAnswer>(body) {
                    Ok(a) if a.event_id.is_some() => accept(0, a.replayed),
                    _ => self.bad_answer(ticket, 0..1),
                },
                StatusCode::TOO_MANY_REQUESTS => refused(0),
                _ => {}
            },
            (Mode::Healthz, _) => {
                if status == StatusCode::OK {
                    stats.events.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.bad_answers.fetch_add(1, Ordering::Relaxed);
                }
            }
            (Mode::Check, _) => {
                if status != StatusCode::OK {
                    return;
                }
                match serde_json::from_slice::<CheckAnswer>(body) {
                    Ok(a) if a.allowed => {
                        stats.allowed.fetch_add(1, Ordering::Relaxed);
                        stats.events.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {
                        stats.refused.fetch_add(1, Ordering::Relaxed);
                        stats.events.fetch_add(1, Ordering::Relaxed);
                        refused(0);
                    }
                    Err(_) => {
                        self.bad_answers.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            (Mode::Record, false) => match status {
                StatusCode::OK => match serde_json::from_slice::<ItemAnswer>(body) {
                    Ok(a) if a.event_id.is_some() => accept(0, a.replayed),
                    _ => self.bad_answer(ticket, 0..1),
                },
                StatusCode::TOO_MANY_REQUESTS => refused(0),
                _ => {}
            },
            (Mode::Record, true) => {
                if status != StatusCode::OK {
                    return;
                }
                let answer = match serde_json::from_slice::<BatchAnswer>(body) {
                    Ok(a) if a.results.len() == self.workload.batch_len() => a,
                    _ => return self.bad_answer(ticket, 0..self.workload.batch_len()),
                };
                let first = replay_of.and_then(|b| serde_json::from_slice::<BatchAnswer>(b).ok());
                for (i, item) in answer.results.iter().enumerate() {
                    match (&item.event_id, &item.error) {
                        (Some(_), _) => {
                            stats.items[200].fetch_add(1, Ordering::Relaxed);
                            let first_item = first.as_ref().and_then(|f| f.results.get(i));
                            match (replay_of, first_item) {
                                (None, _) => accept(i, item.replayed),
                                // Recorded the first time: this must be its replay.
                                (Some(_), Some(f)) if f.event_id.is_some() => {
                                    self.check_replay(ticket, i, Some(f), item)
                                }
                                // Refused the first time: evaluated afresh, and recorded now.
                                (Some(_), _) => {
                                    if item.replayed {
                                        self.replay_failed(format!(
                                            "ticket {ticket} item {i}: refused first, then answered as a replay"
                                        ));
                                    } else {
                                        accept(i, false);
                                    }
                                }
                            }
                        }
                        (None, Some(err)) => {
                            if let Some(slot) = stats.items.get(err.status as usize) {
                                slot.fetch_add(1, Ordering::Relaxed);
                            }
                            if err.status == 429 {
                                refused(i);
                            }
                            if replay_of.is_some()
                                && first
                                    .as_ref()
                                    .and_then(|f| f.results.get(i))
                                    .is_some_and(|f| f.event_id.is_some())
                            {
                                self.replay_failed(format!(
                                    "ticket {ticket} item {i}: recorded first, then refused with {}",
                                    err.status
                                ));
                            }
                        }
                        (None, None) => self.bad_answer(ticket, i..i + 1),
                    }
                }
            }
        }
    }

    /// A 200 whose body (or item) is not what the API describes: its events may have been
    /// recorded, so they count as unknown.
    fn bad_answer(&self, ticket: u64, items: std::ops::Range<usize>) {
        self.bad_answers.fetch_add(1, Ordering::Relaxed);
        self.unknown(ticket, items);
    }

    /// Events that got no (readable) answer and may have been recorded.
    fn unknown(&self, ticket: u64, items: std::ops::Range<usize>) {
        let tenant = self.workload.tenant(ticket);
        let n = items.len() as u64;
        for i in items {
            let e = self.workload.event(ticket, i);
            self.pairs[self.workload.pair(tenant, e.metric)]
                .unknown_amount
                .fetch_add(e.amount, Ordering::Relaxed);
        }
        self.unknown_events.fetch_add(n, Ordering::Relaxed);
    }

    fn check_replay(&self, ticket: u64, i: usize, first: Option<&ItemAnswer>, again: &ItemAnswer) {
        let same_event = first.and_then(|f| f.event_id.as_deref()) == again.event_id.as_deref();
        if !again.replayed || !same_event {
            if !again.replayed {
                // It was recorded a second time: count it, so the accepted == recorded check
                // stays exact, and fail the replay check.
                let e = self.workload.event(ticket, i);
                let pair = &self.pairs[self.workload.pair(self.workload.tenant(ticket), e.metric)];
                pair.accepted_events.fetch_add(1, Ordering::Relaxed);
                pair.accepted_amount.fetch_add(e.amount, Ordering::Relaxed);
            }
            self.replay_failed(format!(
                "ticket {ticket} item {i}: a re-send with the same key answered replayed={} event_id={:?}, first event_id={:?}",
                again.replayed,
                again.event_id.as_deref(),
                first.and_then(|f| f.event_id.as_deref())
            ));
        }
    }

    fn replay_failed(&self, what: String) {
        self.replays_failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut kept) = self.replay_failures.lock()
            && kept.len() < REPLAY_FAILURES_KEPT
        {
            kept.push(what);
        }
    }
}

/// One connection: requests one after the other until the run is over.
async fn connection_task(load: Arc<Load>) -> anyhow::Result<()> {
    let mut conn: Option<Conn> = None;
    let mut body = String::with_capacity(64 * load.workload.batch_len() + 16);
    let replays = load.settings.idempotency == Idempotency::Retry;
    while let Some((ticket, measured)) = load.next_request() {
        load.workload.write_body(ticket, &mut body);
        let bytes = Bytes::copy_from_slice(body.as_bytes());
        let tenant = load.workload.tenant(ticket);
        for i in 0..load.workload.batch_len() {
            let e = load.workload.event(ticket, i);
            load.pairs[load.workload.pair(tenant, e.metric)].sent_events.fetch_add(1, Ordering::Relaxed);
        }
        let outcome = if load.settings.mode == Mode::Reserve {
            reserve_and_commit(&load, &mut conn, tenant, &bytes, measured).await?
        } else {
            load.exchange(&mut conn, tenant, &bytes, measured).await?
        };
        load.account(ticket, &outcome, None, measured);
        if replays
            && splitmix64(ticket ^ SEED_REPLAY) % 1000 < REPLAY_PER_MILLE
            && let Outcome::Answer { status: StatusCode::OK, body: first, .. } = &outcome
        {
            load.replays_sent.fetch_add(1, Ordering::Relaxed);
            let again = load.exchange(&mut conn, tenant, &bytes, measured).await?;
            match &again {
                Outcome::Answer { status: StatusCode::OK, body, .. } if !load.workload.batched() => {
                    replay_single(&load, ticket, first, body)
                }
                Outcome::Answer { status: StatusCode::OK, .. } => {
                    load.account(ticket, &again, Some(first), measured)
                }
                Outcome::Answer { status, .. } => load
                    .replay_failed(format!("ticket {ticket}: a re-send with the same key answered {status}")),
                Outcome::Lost => {
                    load.replay_failed(format!("ticket {ticket}: a re-send with the same key got no answer"))
                }
            }
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct HoldAnswer<'a> {
    #[serde(borrow)]
    reservation_id: &'a str,
}

/// Holds the event's amount, then commits all of it. The outcome is the commit's answer, or
/// the reservation's when it was refused (429) or failed; a hold whose commit got no answer
/// is unknown, like a lost usage request.
async fn reserve_and_commit(
    load: &Load,
    conn: &mut Option<Conn>,
    tenant: u32,
    hold: &Bytes,
    measured: bool,
) -> anyhow::Result<Outcome> {
    let held = load.exchange(conn, tenant, hold, measured).await?;
    let Outcome::Answer { status: StatusCode::CREATED, body, .. } = &held else {
        return Ok(held);
    };
    let Ok(answer) = serde_json::from_slice::<HoldAnswer>(body) else {
        load.bad_answers.fetch_add(1, Ordering::Relaxed);
        return Ok(Outcome::Answer {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            body: body.clone(),
            maybe_applied_before: false,
        });
    };
    let path = format!(
        "/v1/tenants/{}/reservations/{}/commit",
        load.settings.tenant_id(tenant),
        answer.reservation_id
    );
    let uri = load.endpoint.uri(&path)?;
    load.exchange_at(conn, uri, &Bytes::new(), measured).await
}

/// Checks the replay of a single-event request.
fn replay_single(load: &Load, ticket: u64, first: &Bytes, again: &Bytes) {
    match (serde_json::from_slice::<ItemAnswer>(first), serde_json::from_slice::<ItemAnswer>(again)) {
        (Ok(f), Ok(a)) => load.check_replay(ticket, 0, Some(&f), &a),
        _ => {
            load.bad_answers.fetch_add(1, Ordering::Relaxed);
            load.replay_failed(format!("ticket {ticket}: an answer could not be read"));
        }
    }
}

/// Writes the progress line once a second: `\r`-rewritten on a terminal, plain lines otherwise.
async fn progress(load: Arc<Load>) {
    let terminal = std::io::stderr().is_terminal();
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_INTERVAL, PROGRESS_INTERVAL);
    let mut last_requests = 0u64;
    let mut last_at = Instant::now();
    loop {
        tick.tick().await;
        let now = Instant::now();
        let warming = now < load.measure_start;
        let stats = load.stats(!warming);
        let requests =
            load.warmup.requests.load(Ordering::Relaxed) + load.measured.requests.load(Ordering::Relaxed);
        let rate = (requests - last_requests) as f64 / now.duration_since(last_at).as_secs_f64();
        (last_requests, last_at) = (requests, now);
        let latency = stats.latency.snapshot();
        let p99 = if latency.len() == 0 {
            "-".to_owned()
        } else {
            format!("{:.2} ms", latency.quantile(0.99) as f64 / 1e6)
        };
        let line = format!(
            "[{:6.1}s] {:>8.0} req/s  p99 {p99:>10}  errors {}{}",
            now.duration_since(load.start).as_secs_f64(),
            rate,
            stats.errors(),
            if warming { "  (warm-up)" } else { "" }
        );
        let mut err = std::io::stderr().lock();
        let _ = if terminal { write!(err, "\r{line:<70}") } else { writeln!(err, "{line}") };
        let _ = err.flush();
    }
}
