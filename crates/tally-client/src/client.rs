//! [`Client`]: one method per route of `/v1`, with timeouts, retries that keep their
//! idempotency key, and the fail-open queue.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, UNAVAILABLE_STATUSES};
use crate::pending::{
    PENDING_USAGE_MAX, PendingQueue, PendingUsage, REPLAY_BATCH_LEN, RejectedUsage, ReplayError, ReplayReport,
};
use crate::retry::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, RetryPolicy};
use crate::types::{
    AuditPage, AuditQuery, BatchResponse, BatchResult, CheckRequest, CheckResponse, CommitRequest,
    DeliveriesPage, Delivery, EventsPage, EventsQuery, Health, History, HistoryQuery, Limit, Metric,
    MetricRequest, Metrics, OverrideRequest, PageQuery, Plan, PlanRequest, Plans, Put, Reservation,
    Reservations, ReserveRequest, Subscription, SubscriptionRequest, Tenant, TenantRequest, TenantUsage,
    TenantsPage, UsageRecord, UsageRequest, UsageResponse, Webhook, WebhookRequest, Webhooks,
};

/// The `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("tally-client/", env!("CARGO_PKG_VERSION"));

/// What a usage call does when Tally cannot be reached (no answer, or 502/503/504, once the
/// retries are spent). Chosen per call: see [`Client::record_with`],
/// [`Client::record_batch_with`] and [`Client::check_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unreachable {
    /// Return the error: the caller refuses (or decides itself). The default.
    #[default]
    FailClosed,
    /// Report "allowed" and queue the usage, with its idempotency key, for
    /// [`Client::replay_pending`]. The queue is bounded ([`PENDING_USAGE_MAX`] events by
    /// default) and in memory only: it is lost if the process dies.
    FailOpen,
}

/// The answer to a usage write made with a [`Unreachable`] policy. Every variant means the
/// usage is allowed: a HARD limit's refusal is `Err(Error::QuotaExceeded)`.
#[derive(Debug)]
#[must_use]
pub enum Recorded<T> {
    /// Tally recorded it (or had already: `replayed: true`) and answered.
    Stored(T),
    /// Tally could not be reached; allowed by [`Unreachable::FailOpen`] and queued for
    /// [`Client::replay_pending`].
    Queued(Unrecorded),
    /// Tally could not be reached and the queue was full: allowed by
    /// [`Unreachable::FailOpen`], but **not recorded and not queued**.
    Dropped(Unrecorded),
}

/// Usage that was allowed without Tally's answer.
#[derive(Debug)]
#[non_exhaustive]
pub struct Unrecorded {
    /// The idempotency key of each event, in order.
    pub idempotency_keys: Vec<String>,
    /// Why Tally could not be reached.
    pub cause: Error,
}

impl<T> Recorded<T> {
    /// Tally's answer, when it gave one.
    pub fn stored(&self) -> Option<&T> {
        match self {
            Recorded::Stored(t) => Some(t),
            Recorded::Queued(_) | Recorded::Dropped(_) => None,
        }
    }

    /// Tally's answer, when it gave one.
    pub fn into_stored(self) -> Option<T> {
        match self {
            Recorded::Stored(t) => Some(t),
            Recorded::Queued(_) | Recorded::Dropped(_) => None,
        }
    }

    /// True when the usage waits in the fail-open queue.
    pub fn is_queued(&self) -> bool {
        matches!(self, Recorded::Queued(_))
    }

    /// What was allowed without Tally, when Tally could not be reached.
    pub fn unrecorded(&self) -> Option<&Unrecorded> {
        match self {
            Recorded::Stored(_) => None,
            Recorded::Queued(u) | Recorded::Dropped(u) => Some(u),
        }
    }
}

/// The answer to a check made with a [`Unreachable`] policy.
#[derive(Debug)]
#[must_use]
pub enum Checked {
    /// Tally answered.
    Answered(CheckResponse),
    /// Tally could not be reached; [`Unreachable::FailOpen`] answers "allowed".
    Unverified(Error),
}

impl Checked {
    /// Tally's `allowed`, or true when it could not be reached (fail open).
    pub fn allowed(&self) -> bool {
        match self {
            Checked::Answered(c) => c.allowed,
            Checked::Unverified(_) => true,
        }
    }

    /// Tally's answer, when it gave one.
    pub fn answer(&self) -> Option<&CheckResponse> {
        match self {
            Checked::Answered(c) => Some(c),
            Checked::Unverified(_) => None,
        }
    }
}

/// A new idempotency key: a UUID v7 (time-ordered), as the client makes for every usage write
/// and reservation sent without one.
pub fn generate_idempotency_key() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Builds a [`Client`]: [`Client::builder`].
#[derive(Clone)]
#[must_use]
pub struct ClientBuilder {
    base_url: String,
    api_key: Option<String>,
    connect_timeout: Duration,
    timeout: Duration,
    retry: RetryPolicy,
    pending_capacity: usize,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .field("pending_capacity", &self.pending_capacity)
            .finish()
    }
}

impl ClientBuilder {
    /// The key sent as `Authorization: Bearer <key>`: an admin key, or a tenant key (which
    /// may use only its own tenant's usage, check, history, events and reservation routes).
    pub fn api_key(mut self, key: impl Into<String>) -> ClientBuilder {
        self.api_key = Some(key.into());
        self
    }

    /// How long establishing a connection may take ([`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn connect_timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.connect_timeout = timeout;
        self
    }

    /// How long one attempt may take, answer included ([`DEFAULT_REQUEST_TIMEOUT`]). A call
    /// may take up to `max_attempts` times this, plus the backoff.
    pub fn timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.timeout = timeout;
        self
    }

    /// How calls are retried ([`RetryPolicy::default`]; [`RetryPolicy::never`] for none).
    pub fn retry(mut self, policy: RetryPolicy) -> ClientBuilder {
        self.retry = policy;
        self
    }

    /// How many usage events the fail-open queue holds ([`PENDING_USAGE_MAX`]).
    pub fn pending_capacity(mut self, events: usize) -> ClientBuilder {
        self.pending_capacity = events;
        self
    }

    /// The client.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the base URL is not an absolute `http` URL (or `https` with the
    /// `rustls` feature), or the key cannot be sent in a header.
    pub fn build(self) -> Result<Client, Error> {
        let base = Url::parse(&self.base_url)
            .map_err(|e| Error::Config(format!("base URL {:?}: {e}", self.base_url)))?;
        match base.scheme() {
            "http" => {}
            "https" if cfg!(feature = "rustls") => {}
            "https" => {
                return Err(Error::Config(
                    "https base URLs need the `rustls` feature of tally-client".to_owned(),
                ));
            }
            other => return Err(Error::Config(format!("base URL scheme {other:?}: use http or https"))),
        }
        if base.cannot_be_a_base() || base.host().is_none() {
            return Err(Error::Config(format!("base URL {:?} has no host", self.base_url)));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(Error::Config(format!("base URL {:?}: no query or fragment", self.base_url)));
        }
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json, application/problem+json"));
        if let Some(key) = &self.api_key {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| Error::Config("the API key is not a valid header value".to_owned()))?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(USER_AGENT)
            .connect_timeout(self.connect_timeout)
            .timeout(self.timeout)
            // The API never redirects; following one would resend a body to another place.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base,
                retry: self.retry,
                pending: PendingQueue::new(self.pending_capacity),
                replaying: tokio::sync::Mutex::new(()),
            }),
        })
    }
}

/// A client of Tally's `/v1` API.
///
/// Cheap to clone: clones share the connection pool and the fail-open queue. Build it once
/// ([`Client::new`] or [`Client::builder`]) and keep it.
///
/// Every call is retried per the client's [`RetryPolicy`] when Tally cannot be reached; a
/// usage write or a reservation is sent with an idempotency key (a UUID v7 when the request
/// has none), the same on every attempt, so it is counted once however often it is sent.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    retry: RetryPolicy,
    pending: PendingQueue,
    /// One replay at a time, so that no queued event is sent twice at once.
    replaying: tokio::sync::Mutex<()>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.inner.base.as_str())
            .field("retry", &self.inner.retry)
            .field("pending", &self.inner.pending.len())
            .finish_non_exhaustive()
    }
}

/// Whether an attempt may be sent again after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resend {
    /// Whatever happened to the last attempt: reads, checks, PUTs, and writes that carry an
    /// idempotency key (or that Tally replays, like a commit).
    Always,
    /// Only when the last attempt certainly did nothing: no connection was made, or Tally
    /// answered 503 `unavailable`.
    IfNotApplied,
    /// Never: one attempt (health probes, which report what they see).
    Never,
}

/// One answer, read whole.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

fn retryable_status(status: u16, resend: Resend) -> bool {
    match resend {
        Resend::Never => false,
        Resend::IfNotApplied => status == 503,
        Resend::Always => UNAVAILABLE_STATUSES.contains(&status),
    }
}

fn retryable_transport(e: &reqwest::Error, resend: Resend) -> bool {
    if e.is_builder() || e.is_redirect() {
        return false;
    }
    match resend {
        Resend::Never => false,
        Resend::IfNotApplied => e.is_connect(),
        Resend::Always => true,
    }
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs))
}

fn decode<T: DeserializeOwned>(answer: &Answer) -> Result<T, Error> {
    serde_json::from_slice(&answer.body).map_err(|e| {
        Error::unexpected(answer.status.as_u16(), format!("body does not match the API: {e}"), &answer.body)
    })
}

fn encode<B: Serialize + ?Sized>(body: &B) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(body).map_err(|e| Error::InvalidRequest(format!("cannot encode the body: {e}")))
}

fn instant(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// `url` with the given query parameters, those that are `Some`.
fn with_query(mut url: Url, pairs: &[(&str, Option<String>)]) -> Url {
    if pairs.iter().any(|(_, v)| v.is_some()) {
        let mut query = url.query_pairs_mut();
        for (name, value) in pairs {
            if let Some(value) = value {
                query.append_pair(name, value);
            }
        }
    }
    url
}

/// The request with an idempotency key: its own, or a new UUID v7.
fn keyed(request: &UsageRequest) -> UsageRequest {
    let mut request = request.clone();
    if request.idempotency_key.is_none() {
        request.idempotency_key = Some(generate_idempotency_key());
    }
    request
}

#[derive(Serialize)]
struct BatchEnvelope<'a> {
    events: &'a [UsageRequest],
}

impl Client {
    /// A client of the Tally at `base_url` (`http://127.0.0.1:8080`) using `api_key`, with
    /// the default timeouts and retries.
    ///
    /// # Errors
    ///
    /// [`Error::Config`]: see [`ClientBuilder::build`].
    pub fn new(base_url: impl Into<String>, api_key: impl Into<String>) -> Result<Client, Error> {
        Client::builder(base_url).api_key(api_key).build()
    }

    /// A builder for a client of the Tally at `base_url`, with the defaults:
    /// [`DEFAULT_CONNECT_TIMEOUT`], [`DEFAULT_REQUEST_TIMEOUT`], [`RetryPolicy::default`],
    /// [`PENDING_USAGE_MAX`], and no key.
    pub fn builder(base_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base_url: base_url.into(),
            api_key: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            timeout: DEFAULT_REQUEST_TIMEOUT,
            retry: RetryPolicy::default(),
            pending_capacity: PENDING_USAGE_MAX,
        }
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &Url {
        &self.inner.base
    }

    // -----------------------------------------------------------------------------------
    // Plumbing

    /// The base URL with these path segments appended, each percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.inner.base.clone();
        // `build` refused a base that cannot have a path, so this always succeeds.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// Sends the request, retried per the policy; a success answer, or the error.
    async fn execute(
        &self,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
        resend: Resend,
    ) -> Result<Answer, Error> {
        let policy = self.inner.retry;
        let attempts = match resend {
            Resend::Never => 1,
            Resend::Always | Resend::IfNotApplied => policy.max_attempts.max(1),
        };
        let mut attempt = 1;
        loop {
            let result = self.attempt(&method, &url, body.as_deref()).await;
            let again = attempt < attempts
                && match &result {
                    Ok(answer) => retryable_status(answer.status.as_u16(), resend),
                    Err(e) => retryable_transport(e, resend),
                };
            if !again {
                return match result {
                    Ok(answer) if answer.status.is_success() => Ok(answer),
                    Ok(answer) => Err(Error::from_answer(
                        answer.status.as_u16(),
                        retry_after(&answer.headers),
                        &answer.body,
                    )),
                    Err(e) => Err(Error::Transport(e)),
                };
            }
            tokio::time::sleep(policy.backoff(attempt)).await;
            attempt += 1;
        }
    }

    /// One attempt: the status, headers and whole body, or why none came.
    async fn attempt(
        &self,
        method: &Method,
        url: &Url,
        body: Option<&[u8]>,
    ) -> Result<Answer, reqwest::Error> {
        let mut request = self.inner.http.request(method.clone(), url.clone());
        if let Some(body) = body {
            request = request.header(CONTENT_TYPE, "application/json").body(body.to_vec());
        }
        let response = request.send().await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await?.to_vec();
        Ok(Answer { status, headers, body })
    }

    async fn get<T: DeserializeOwned>(&self, url: Url) -> Result<T, Error> {
        decode(&self.execute(Method::GET, url, None, Resend::Always).await?)
    }

    async fn send_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: &B,
        resend: Resend,
    ) -> Result<T, Error> {
        decode(&self.execute(method, url, Some(encode(body)?), resend).await?)
    }

    async fn put<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        url: Url,
        body: &B,
    ) -> Result<Put<T>, Error> {
        let answer = self.execute(Method::PUT, url, Some(encode(body)?), Resend::Always).await?;
        Ok(Put { created: answer.status == StatusCode::CREATED, value: decode(&answer)? })
    }

    async fn delete(&self, url: Url) -> Result<(), Error> {
        self.execute(Method::DELETE, url, None, Resend::IfNotApplied).await.map(|_| ())
    }

    // -----------------------------------------------------------------------------------
    // Usage

    /// `POST /v1/tenants/{tenant_id}/usage`: records usage, or refuses it by a HARD limit.
    ///
    /// Sent with the request's idempotency key, or a new UUID v7; every retry sends the same
    /// one, so the usage is counted once (a retry of a request that was recorded answers
    /// `replayed: true`). When Tally cannot be reached this fails closed: see
    /// [`Client::record_with`] for the other choice.
    ///
    /// # Errors
    ///
    /// [`Error::QuotaExceeded`] when a HARD limit refuses (nothing was recorded); another
    /// [`Error::Api`] for other refusals (`no_subscription`, `quota_not_found`,
    /// `idempotency_conflict`, ...); [`Error::Transport`] or a 503 when Tally cannot be
    /// reached after the retries.
    pub async fn record(&self, tenant_id: &str, request: &UsageRequest) -> Result<UsageResponse, Error> {
        self.post_usage(tenant_id, &keyed(request)).await
    }

    /// [`Client::record`] with a policy for when Tally cannot be reached: with
    /// [`Unreachable::FailOpen`] the usage is allowed and queued (with its idempotency key)
    /// for [`Client::replay_pending`].
    ///
    /// # Errors
    ///
    /// As [`Client::record`]; with [`Unreachable::FailOpen`], only Tally's answers (4xx, and
    /// 500).
    pub async fn record_with(
        &self,
        tenant_id: &str,
        request: &UsageRequest,
        on_unreachable: Unreachable,
    ) -> Result<Recorded<UsageResponse>, Error> {
        let request = keyed(request);
        match self.post_usage(tenant_id, &request).await {
            Ok(answer) => Ok(Recorded::Stored(answer)),
            Err(cause) => self.fail_open(on_unreachable, tenant_id, vec![request], cause),
        }
    }

    async fn post_usage(&self, tenant_id: &str, request: &UsageRequest) -> Result<UsageResponse, Error> {
        let url = self.url(&["v1", "tenants", tenant_id, "usage"]);
        self.send_json(Method::POST, url, request, Resend::Always).await
    }

    /// `POST /v1/tenants/{tenant_id}/usage/batch`: up to 1000 events, applied in order, each
    /// on its own; one result per event.
    ///
    /// Each event without an idempotency key gets its own UUID v7, the same on every retry.
    ///
    /// # Errors
    ///
    /// Only for the whole request (400 for more than 1000 events, 403, Tally unreachable):
    /// each event's refusal is in its [`BatchResult`].
    pub async fn record_batch(
        &self,
        tenant_id: &str,
        events: &[UsageRequest],
    ) -> Result<BatchResponse, Error> {
        let events: Vec<UsageRequest> = events.iter().map(keyed).collect();
        self.post_batch(tenant_id, &events).await
    }

    /// [`Client::record_batch`] with a policy for when Tally cannot be reached: with
    /// [`Unreachable::FailOpen`] every event is allowed and queued, all of them or (when
    /// they do not fit) none.
    ///
    /// # Errors
    ///
    /// As [`Client::record_batch`]; with [`Unreachable::FailOpen`], only Tally's answers.
    pub async fn record_batch_with(
        &self,
        tenant_id: &str,
        events: &[UsageRequest],
        on_unreachable: Unreachable,
    ) -> Result<Recorded<BatchResponse>, Error> {
        let events: Vec<UsageRequest> = events.iter().map(keyed).collect();
        match self.post_batch(tenant_id, &events).await {
            Ok(answer) => Ok(Recorded::Stored(answer)),
            Err(cause) => self.fail_open(on_unreachable, tenant_id, events, cause),
        }
    }

    async fn post_batch(&self, tenant_id: &str, events: &[UsageRequest]) -> Result<BatchResponse, Error> {
        let url = self.url(&["v1", "tenants", tenant_id, "usage", "batch"]);
        self.send_json(Method::POST, url, &BatchEnvelope { events }, Resend::Always).await
    }

    /// Fails closed (the error), or open (queued, or dropped when the queue is full).
    fn fail_open<T>(
        &self,
        on_unreachable: Unreachable,
        tenant_id: &str,
        requests: Vec<UsageRequest>,
        cause: Error,
    ) -> Result<Recorded<T>, Error> {
        if on_unreachable == Unreachable::FailClosed || !cause.is_unavailable() {
            return Err(cause);
        }
        let idempotency_keys = requests.iter().filter_map(|r| r.idempotency_key.clone()).collect();
        let queued_at = Utc::now();
        let why = cause.to_string();
        let usages = requests
            .into_iter()
            .map(|request| PendingUsage {
                tenant_id: tenant_id.to_owned(),
                request,
                queued_at,
                cause: why.clone(),
            })
            .collect();
        let unrecorded = Unrecorded { idempotency_keys, cause };
        if self.inner.pending.push_all(usages) {
            Ok(Recorded::Queued(unrecorded))
        } else {
            Ok(Recorded::Dropped(unrecorded))
        }
    }

    /// `POST /v1/tenants/{tenant_id}/usage/check`: would this usage be allowed? Changes
    /// nothing. Fails closed when Tally cannot be reached: see [`Client::check_with`].
    ///
    /// # Errors
    ///
    /// [`Error::Api`] for refusals of the request (`no_subscription`, `quota_not_found`,
    /// ...); [`Error::Transport`] or a 503 when Tally cannot be reached after the retries.
    pub async fn check(&self, tenant_id: &str, request: &CheckRequest) -> Result<CheckResponse, Error> {
        let url = self.url(&["v1", "tenants", tenant_id, "usage", "check"]);
        self.send_json(Method::POST, url, request, Resend::Always).await
    }

    /// [`Client::check`] with a policy for when Tally cannot be reached: with
    /// [`Unreachable::FailOpen`] the answer is [`Checked::Unverified`], which is allowed.
    ///
    /// # Errors
    ///
    /// As [`Client::check`]; with [`Unreachable::FailOpen`], only Tally's answers.
    pub async fn check_with(
        &self,
        tenant_id: &str,
        request: &CheckRequest,
        on_unreachable: Unreachable,
    ) -> Result<Checked, Error> {
        match self.check(tenant_id, request).await {
            Ok(answer) => Ok(Checked::Answered(answer)),
            Err(e) if on_unreachable == Unreachable::FailOpen && e.is_unavailable() => {
                Ok(Checked::Unverified(e))
            }
            Err(e) => Err(e),
        }
    }

    /// `GET /v1/tenants/{tenant_id}/usage`: the current period of every metric of the plan.
    ///
    /// # Errors
    ///
    /// 422 `no_subscription` when the tenant has none; see [`Error`].
    pub async fn usage(&self, tenant_id: &str) -> Result<TenantUsage, Error> {
        self.get(self.url(&["v1", "tenants", tenant_id, "usage"])).await
    }

    /// `GET /v1/tenants/{tenant_id}/usage/{metric_code}/history`: records, newest first.
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub async fn history(
        &self,
        tenant_id: &str,
        metric_code: &str,
        query: &HistoryQuery,
    ) -> Result<History, Error> {
        let url = self.url(&["v1", "tenants", tenant_id, "usage", metric_code, "history"]);
        let url = with_query(
            url,
            &[
                ("from", query.from.as_ref().map(instant)),
                ("to", query.to.as_ref().map(instant)),
                ("limit", query.limit.map(|l| l.to_string())),
            ],
        );
        self.get(url).await
    }

    /// `GET /v1/tenants/{tenant_id}/events`: a page of events, newest first.
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub async fn events(&self, tenant_id: &str, query: &EventsQuery) -> Result<EventsPage, Error> {
        let url = self.url(&["v1", "tenants", tenant_id, "events"]);
        let url = with_query(
            url,
            &[
                ("metric_code", query.metric_code.clone()),
                ("from", query.from.as_ref().map(instant)),
                ("to", query.to.as_ref().map(instant)),
                ("limit", query.limit.map(|l| l.to_string())),
                ("cursor", query.cursor.clone()),
            ],
        );
        self.get(url).await
    }

    /// `POST /v1/tenants/{tenant_id}/usage/{metric_code}/reset` (admin): sets the current
    /// period's usage to 0; kept in the audit log.
    ///
    /// Not resent after an ambiguous failure (only after a refused connection or a 503).
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub async fn reset(&self, tenant_id: &str, metric_code: &str) -> Result<UsageRecord, Error> {
        let url = self.url(&["v1", "tenants", tenant_id, "usage", metric_code, "reset"]);
        decode(&self.execute(Method::POST, url, None, Resend::IfNotApplied).await?)
    }

    // -----------------------------------------------------------------------------------
    // The fail-open queue

    /// How many usage events wait in the fail-open queue.
    pub fn pending_len(&self) -> usize {
        self.inner.pending.len()
    }

    /// The usage events waiting in the fail-open queue, oldest first (a copy).
    pub fn pending(&self) -> Vec<PendingUsage> {
        self.inner.pending.snapshot()
    }

    /// How many usage events were allowed by [`Unreachable::FailOpen`] but dropped because
    /// the queue was full, since the client was built.
    pub fn dropped_count(&self) -> u64 {
        self.inner.pending.dropped()
    }

    /// Sends the fail-open queue to Tally, oldest first, in batches of at most
    /// [`REPLAY_BATCH_LEN`] events of one tenant, each event with the idempotency key it was
    /// first sent with: an event that did reach Tally before is answered `replayed: true`
    /// and counted once.
    ///
    /// Events Tally records (or had recorded) leave the queue; so do events it refuses (a 4xx
    /// for the event, such as a HARD limit reached since), which are listed in
    /// [`ReplayReport::rejected`]. One replay runs at a time; events queued meanwhile are
    /// sent too.
    ///
    /// # Errors
    ///
    /// [`ReplayError`] when Tally cannot be reached (or refuses the key: 401, 403): the
    /// events not replayed stay queued, in order, and the error's `report` says what was done.
    pub async fn replay_pending(&self) -> Result<ReplayReport, ReplayError> {
        let _one_at_a_time = self.inner.replaying.lock().await;
        let mut report = ReplayReport::default();
        loop {
            let chunk = self.inner.pending.front_chunk(REPLAY_BATCH_LEN);
            let Some((_, first)) = chunk.first() else {
                break;
            };
            let tenant_id = first.tenant_id.clone();
            let events: Vec<UsageRequest> = chunk.iter().map(|(_, u)| u.request.clone()).collect();
            let stop = match self.post_batch(&tenant_id, &events).await {
                Ok(answer) if answer.results.len() == chunk.len() => {
                    let mut done = Vec::with_capacity(chunk.len());
                    let mut stop = None;
                    for ((seq, usage), result) in chunk.into_iter().zip(answer.results) {
                        match result {
                            BatchResult::Recorded(r) if r.replayed => {
                                report.already_recorded += 1;
                                done.push(seq);
                            }
                            BatchResult::Recorded(_) => {
                                report.recorded += 1;
                                done.push(seq);
                            }
                            // Tally could not apply it now: it stays, and the replay stops.
                            BatchResult::Failed(problem) if problem.status >= 500 => {
                                stop.get_or_insert(Error::Api(Box::new(problem)));
                            }
                            BatchResult::Failed(problem) => {
                                report.rejected.push(RejectedUsage { usage, problem });
                                done.push(seq);
                            }
                        }
                    }
                    self.inner.pending.remove(&done);
                    stop
                }
                Ok(answer) => Some(Error::UnexpectedResponse {
                    status: 200,
                    reason: format!("{} results for {} events", answer.results.len(), chunk.len()),
                    body: String::new(),
                }),
                // The whole request refused for what it is (not for who sent it): every event
                // of it would be refused again.
                Err(Error::Api(problem))
                    if (400..500).contains(&problem.status)
                        && ![401, 403, 408, 429].contains(&problem.status) =>
                {
                    let seqs: Vec<u64> = chunk.iter().map(|(seq, _)| *seq).collect();
                    report.rejected.extend(
                        chunk
                            .into_iter()
                            .map(|(_, usage)| RejectedUsage { usage, problem: (*problem).clone() }),
                    );
                    self.inner.pending.remove(&seqs);
                    None
                }
                Err(e) => Some(e),
            };
            if let Some(cause) = stop {
                report.remaining = self.pending_len();
                return Err(ReplayError { report, cause });
            }
        }
        report.remaining = self.pending_len();
        Ok(report)
    }

    // -----------------------------------------------------------------------------------
    // Reservations

    /// `POST /v1/tenants/{tenant_id}/reservations`: holds quota before long work.
    ///
    /// Sent with the request's idempotency key, or a new UUID v7, the same on every retry: a
    /// retried creation answers the original reservation (`replayed: true`), holding nothing
    /// more.
    ///
    /// # Errors
    ///
    /// [`Error::QuotaExceeded`] when a HARD limit refuses; see [`Error`].
    pub async fn reserve(&self, tenant_id: &str, request: &ReserveRequest) -> Result<Reservation, Error> {
        let mut request = request.clone();
        if request.idempotency_key.is_none() {
            request.idempotency_key = Some(generate_idempotency_key());
        }
        let url = self.url(&["v1", "tenants", tenant_id, "reservations"]);
        self.send_json(Method::POST, url, &request, Resend::Always).await
    }

    /// `POST /v1/tenants/{tenant_id}/reservations/{reservation_id}/commit`: records what was
    /// used (default: all of it) and releases the rest. Committing again with the same amount
    /// answers the first result with `replayed: true`, so retries are safe.
    ///
    /// # Errors
    ///
    /// 409 `conflict` for a released or expired reservation, or another amount; see [`Error`].
    pub async fn commit(
        &self,
        tenant_id: &str,
        reservation_id: &str,
        request: &CommitRequest,
    ) -> Result<UsageResponse, Error> {
        let url = self.url(&["v1", "tenants", tenant_id, "reservations", reservation_id, "commit"]);
        self.send_json(Method::POST, url, request, Resend::Always).await
    }

    /// `DELETE /v1/tenants/{tenant_id}/reservations/{reservation_id}`: releases it.
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub async fn release(&self, tenant_id: &str, reservation_id: &str) -> Result<(), Error> {
        self.delete(self.url(&["v1", "tenants", tenant_id, "reservations", reservation_id])).await
    }

    /// `GET /v1/tenants/{tenant_id}/reservations`: the open ones.
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub async fn list_reservations(&self, tenant_id: &str) -> Result<Reservations, Error> {
        self.get(self.url(&["v1", "tenants", tenant_id, "reservations"])).await
    }

    // -----------------------------------------------------------------------------------
    // Plans, tenants, subscriptions, overrides (admin)

    /// `PUT /v1/plans/{plan_code}`: creates (`created: true`) or replaces a plan.
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub async fn put_plan(&self, plan_code: &str, plan: &PlanRequest) -> Result<Put<Plan>, Error> {
        self.put(self.url(&["v1", "plans", plan_code]), plan).await
    }

    /// `GET /v1/plans`.
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub async fn list_plans(&self) -> Result<Plans, Error> {
        self.get(self.url(&["v1", "plans"])).await
    }

    /// `GET /v1/plans/{plan_code}`.
    ///
    /// # Errors
    ///
    /// 404 `not_found`; see [`Error`].
    pub async fn get_plan(&self, plan_code: &str) -> Result<Plan, Error> {
        self.get(self.url(&["v1", "plans", plan_code])).await
    }

    /// `DELETE /v1/plans/{plan_code}`.
    ///
    /// # Errors
    ///
    /// 409 `conflict` while a tenant subscribes to it; see [`Error`].
    pub async fn delete_plan(&self, plan_code: &str) -> Result<(), Error> {
        self.delete(self.url(&["v1", "plans", plan_code])).await
    }

    /// `PUT /v1/tenants/{tenant_id}`: creates (`created: true`) or renames a tenant.
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub async fn put_tenant(&self, tenant_id: &str, tenant: &TenantRequest) -> Result<Put<Tenant>, Error> {
        self.put(self.url(&["v1", "tenants", tenant_id]), tenant).await
    }

    /// `GET /v1/tenants`: a page of tenants, by id.
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub async fn list_tenants(&self, page: &PageQuery) -> Result<TenantsPage, Error> {
        let url = with_query(
            self.url(&["v1", "tenants"]),
            &[("limit", page.limit.map(|l| l.to_string())), ("cursor", page.cursor.clone())],
        );
        self.get(url).await
    }

    /// `GET /v1/tenants/{tenant_id}`, with its subscription and overrides.
    ///
    /// # Errors
    ///
    /// 404 `not_found`; see [`Error`].
    pub async fn get_tenant(&self, tenant_id: &str) -> Result<Tenant, Error> {
        self.get(self.url(&["v1", "tenants", tenant_id])).await
    }

    /// `PUT /v1/tenants/{tenant_id}/subscription`.
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub async fn put_subscription(
        &self,
        tenant_id: &str,
        subscription: &SubscriptionRequest,
    ) -> Result<Subscription, Error> {
        let url = self.url(&["v1", "tenants", tenant_id, "subscription"]);
        self.send_json(Method::PUT, url, subscription, Resend::Always).await
    }

    /// `DELETE /v1/tenants/{tenant_id}/subscription`.
    ///
    /// # Errors
    ///
    /// 404 `not_found` when there is none; see [`Error`].
    pub async fn delete_subscription(&self, tenant_id: &str) -> Result<(), Error> {
        self.delete(self.url(&["v1", "tenants", tenant_id, "subscription"])).await
    }

    /// `PUT /v1/tenants/{tenant_id}/overrides/{metric_code}`: the tenant's own limit.
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub async fn put_override(
        &self,
        tenant_id: &str,
        metric_code: &str,
        limit: &OverrideRequest,
    ) -> Result<Limit, Error> {
        let url = self.url(&["v1", "tenants", tenant_id, "overrides", metric_code]);
        self.send_json(Method::PUT, url, limit, Resend::Always).await
    }

    /// `DELETE /v1/tenants/{tenant_id}/overrides/{metric_code}`.
    ///
    /// # Errors
    ///
    /// 404 `not_found` when there is none; see [`Error`].
    pub async fn delete_override(&self, tenant_id: &str, metric_code: &str) -> Result<(), Error> {
        self.delete(self.url(&["v1", "tenants", tenant_id, "overrides", metric_code])).await
    }

    // -----------------------------------------------------------------------------------
    // Metric catalog (admin)

    /// `PUT /v1/metrics/{metric_code}`: declares (`created: true`) or replaces a metric.
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub async fn put_metric(&self, metric_code: &str, metric: &MetricRequest) -> Result<Put<Metric>, Error> {
        self.put(self.url(&["v1", "metrics", metric_code]), metric).await
    }

    /// `GET /v1/metrics`: every metric, declared or limited by a plan.
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub async fn list_metrics(&self) -> Result<Metrics, Error> {
        self.get(self.url(&["v1", "metrics"])).await
    }

    /// `GET /v1/metrics/{metric_code}`.
    ///
    /// # Errors
    ///
    /// 404 `not_found`; see [`Error`].
    pub async fn get_metric(&self, metric_code: &str) -> Result<Metric, Error> {
        self.get(self.url(&["v1", "metrics", metric_code])).await
    }

    // -----------------------------------------------------------------------------------
    // Webhooks (admin)

    /// `PUT /v1/webhooks/{webhook_id}`: registers (`created: true`, with the secret shown
    /// this once) or replaces a webhook.
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub async fn put_webhook(
        &self,
        webhook_id: &str,
        webhook: &WebhookRequest,
    ) -> Result<Put<Webhook>, Error> {
        self.put(self.url(&["v1", "webhooks", webhook_id]), webhook).await
    }

    /// `GET /v1/webhooks` (without secrets).
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub async fn list_webhooks(&self) -> Result<Webhooks, Error> {
        self.get(self.url(&["v1", "webhooks"])).await
    }

    /// `GET /v1/webhooks/{webhook_id}` (without its secret).
    ///
    /// # Errors
    ///
    /// 404 `not_found`; see [`Error`].
    pub async fn get_webhook(&self, webhook_id: &str) -> Result<Webhook, Error> {
        self.get(self.url(&["v1", "webhooks", webhook_id])).await
    }

    /// `DELETE /v1/webhooks/{webhook_id}`.
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub async fn delete_webhook(&self, webhook_id: &str) -> Result<(), Error> {
        self.delete(self.url(&["v1", "webhooks", webhook_id])).await
    }

    /// `GET /v1/webhooks/{webhook_id}/deliveries`: the deliveries log, newest first.
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub async fn list_deliveries(&self, webhook_id: &str, page: &PageQuery) -> Result<DeliveriesPage, Error> {
        let url = with_query(
            self.url(&["v1", "webhooks", webhook_id, "deliveries"]),
            &[("limit", page.limit.map(|l| l.to_string())), ("cursor", page.cursor.clone())],
        );
        self.get(url).await
    }

    /// `POST /v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver`: sends a delivery
    /// again (pending from now on), under the same id.
    ///
    /// # Errors
    ///
    /// 404 `not_found`; see [`Error`].
    pub async fn redeliver(&self, webhook_id: &str, delivery_id: &str) -> Result<Delivery, Error> {
        let url = self.url(&["v1", "webhooks", webhook_id, "deliveries", delivery_id, "redeliver"]);
        decode(&self.execute(Method::POST, url, None, Resend::IfNotApplied).await?)
    }

    // -----------------------------------------------------------------------------------
    // Audit (admin) and operations

    /// `GET /v1/audit`: who changed what, newest first.
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub async fn audit(&self, query: &AuditQuery) -> Result<AuditPage, Error> {
        let url = with_query(
            self.url(&["v1", "audit"]),
            &[
                ("tenant_id", query.tenant_id.clone()),
                ("limit", query.limit.map(|l| l.to_string())),
                ("cursor", query.cursor.clone()),
            ],
        );
        self.get(url).await
    }

    /// `GET /healthz`: the process runs. One attempt, no retry.
    ///
    /// # Errors
    ///
    /// [`Error::Transport`] when nothing answers.
    pub async fn healthz(&self) -> Result<Health, Error> {
        decode(&self.execute(Method::GET, self.url(&["healthz"]), None, Resend::Never).await?)
    }

    /// `GET /readyz`: the store answers. One attempt, no retry.
    ///
    /// # Errors
    ///
    /// 503 `unavailable` when the store does not answer; [`Error::Transport`] when nothing
    /// answers.
    pub async fn readyz(&self) -> Result<Health, Error> {
        decode(&self.execute(Method::GET, self.url(&["readyz"]), None, Resend::Never).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_each_segment_and_keep_a_base_path() {
        let c = Client::builder("http://127.0.0.1:1/tally/").build().expect("a client");
        let url = c.url(&["v1", "tenants", "a/b c", "usage"]);
        assert_eq!(url.as_str(), "http://127.0.0.1:1/tally/v1/tenants/a%2Fb%20c/usage");
        let url = with_query(c.url(&["v1", "audit"]), &[("tenant_id", Some("acme".into())), ("limit", None)]);
        assert_eq!(url.as_str(), "http://127.0.0.1:1/tally/v1/audit?tenant_id=acme");
        let url = with_query(c.url(&["v1", "audit"]), &[("limit", None)]);
        assert_eq!(url.as_str(), "http://127.0.0.1:1/tally/v1/audit");
    }

    #[test]
    fn bad_configurations_are_refused() {
        for bad in ["not a url", "ftp://x", "http://h/?q=1", "mailto:a@b"] {
            let e = Client::builder(bad).build().expect_err(bad);
            assert!(matches!(e, Error::Config(_)), "{bad}: {e:?}");
        }
        let e = Client::new("http://h", "bad\nkey").expect_err("a newline in a key");
        assert!(matches!(e, Error::Config(_)), "{e:?}");
        let https = Client::builder("https://tally.example.com").build();
        assert_eq!(https.is_ok(), cfg!(feature = "rustls"), "{https:?}");
    }

    #[test]
    fn the_key_never_shows_in_debug_output() {
        let b = Client::builder("http://h").api_key("tly_secret");
        assert!(!format!("{b:?}").contains("tly_secret"));
        let c = b.build().expect("a client");
        assert!(!format!("{c:?}").contains("tly_secret"));
    }

    #[test]
    fn keys_are_added_only_when_missing() {
        let generated = keyed(&UsageRequest::new("api_calls", 1));
        let key = generated.idempotency_key.expect("a generated key");
        let uuid = uuid::Uuid::parse_str(&key).expect("a UUID");
        assert_eq!(uuid.get_version_num(), 7);
        let own = keyed(&UsageRequest::new("api_calls", 1).with_idempotency_key("mine"));
        assert_eq!(own.idempotency_key.as_deref(), Some("mine"));
    }

    #[test]
    fn what_is_retried() {
        assert!(retryable_status(503, Resend::Always));
        assert!(retryable_status(503, Resend::IfNotApplied));
        assert!(!retryable_status(503, Resend::Never));
        assert!(retryable_status(502, Resend::Always) && retryable_status(504, Resend::Always));
        assert!(!retryable_status(504, Resend::IfNotApplied));
        for status in [400, 401, 403, 404, 409, 422, 429, 500] {
            assert!(!retryable_status(status, Resend::Always), "{status}");
        }
    }
}
