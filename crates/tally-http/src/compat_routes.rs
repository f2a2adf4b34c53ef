//! The compatibility routes under `/api`, so that the OpenMeter and Lago SDKs work against
//! Tally unchanged (API.md, "Compatibility routes"): CloudEvents and Lago ingestion, the
//! entitlement value, the meter query and Lago's current usage. Same keys, same store, same
//! guarantees as `/v1`; members these clients send that Tally does not use, and unknown query
//! parameters, are accepted and ignored.
//!
//! Dedup ids become idempotency keys in the tenant's key space: `ce:<source>:<id>` and
//! `lago:<transaction_id>`; a repeat of one is a replay whatever its payload
//! (`IdempotencyKey::replays_any_payload`).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tally_domain::limits::{AMOUNT_MAX, EVENT_BATCH_LEN_MAX};
use tally_domain::time::{format_rfc3339, parse_rfc3339, truncate};
use tally_domain::{
    Change, DomainError, IdempotencyKey, Metadata, MetricCode, MetricKind, TenantId, Timestamp, UsageError,
    UsageOutcome, UsageRequest,
};
use tally_service::ServiceError;
use tally_service::compat::WindowSize;
use tally_store::Store;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::json::body_bytes;
use crate::state::AppState;

/// A currency code for answers whose client requires one: Tally does not price, and ISO 4217
/// reserves `XXX` for "no currency".
pub const NO_CURRENCY: &str = "XXX";

/// Which client's shape an ingested event came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dialect {
    CloudEvents,
    Lago,
}

/// One event as received, before the catalog says how much it counts.
struct Incoming {
    tenant: TenantId,
    metric: MetricCode,
    key: IdempotencyKey,
    timestamp: Option<Timestamp>,
    /// `data` (CloudEvents) or `properties` (Lago), always an object: the metadata, where
    /// the amount is, and Lago's echo.
    payload: Value,
    /// Lago's members to echo back.
    lago: Option<LagoEcho>,
}

struct LagoEcho {
    transaction_id: String,
    external_subscription_id: String,
    external_customer_id: Option<String>,
}

fn content_type(req: &Request) -> String {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn unsupported(ct: &str) -> ApiError {
    let shown = if ct.is_empty() { "none".to_owned() } else { format!("{ct:?}") };
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "Unsupported media type",
        format!(
            "the body must be application/cloudevents+json, application/cloudevents-batch+json or \
             application/json; content type was {shown}"
        ),
    )
}

fn at(idx: Option<usize>, field: &str) -> String {
    match idx {
        Some(i) => format!("events[{i}].{field}"),
        None => field.to_owned(),
    }
}

fn string_member<'a>(
    obj: &'a Map<String, Value>,
    name: &str,
    idx: Option<usize>,
) -> Result<&'a str, ApiError> {
    match obj.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        _ => Err(ApiError::invalid(format!("{}: must be a non-empty string", at(idx, name)))),
    }
}

fn optional_string<'a>(
    obj: &'a Map<String, Value>,
    name: &str,
    idx: Option<usize>,
) -> Result<Option<&'a str>, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s)),
        Some(_) => Err(ApiError::invalid(format!("{}: must be a non-empty string", at(idx, name)))),
    }
}

fn object_member(obj: &Map<String, Value>, name: &str, idx: Option<usize>) -> Result<Value, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(Value::Object(Map::new())),
        Some(v @ Value::Object(_)) => Ok(v.clone()),
        Some(_) => Err(ApiError::invalid(format!("{}: must be a JSON object", at(idx, name)))),
    }
}

fn domain(idx: Option<usize>, e: DomainError) -> ApiError {
    let prefix = idx.map(|i| format!("events[{i}]: ")).unwrap_or_default();
    ApiError::invalid(format!("{prefix}{e}"))
}

/// A CloudEvent: `subject` → tenant, `type` → metric, `time` → timestamp, `data` → metadata
/// and amount, dedup on (`source`, `id`).
fn cloud_event(v: &Value, idx: Option<usize>) -> Result<Incoming, ApiError> {
    let Value::Object(obj) = v else {
        return Err(ApiError::invalid(format!("{}: must be a CloudEvent object", at(idx, "event"))));
    };
    let id = string_member(obj, "id", idx)?;
    let source = string_member(obj, "source", idx)?;
    let tenant = TenantId::parse(string_member(obj, "subject", idx)?).map_err(|e| domain(idx, e))?;
    let metric = MetricCode::parse(string_member(obj, "type", idx)?).map_err(|e| domain(idx, e))?;
    let key = IdempotencyKey::parse(&format!("ce:{source}:{id}")).map_err(|e| domain(idx, e))?;
    let timestamp =
        optional_string(obj, "time", idx)?.map(parse_rfc3339).transpose().map_err(|e| domain(idx, e))?;
    let payload = object_member(obj, "data", idx)?;
    Ok(Incoming { tenant, metric, key, timestamp, payload, lago: None })
}

/// Lago's timestamp: RFC 3339, or unix seconds as a number or a string, maybe fractional.
fn lago_timestamp(v: Option<&Value>, idx: Option<usize>) -> Result<Option<Timestamp>, ApiError> {
    let bad = || ApiError::invalid(format!("{}: must be RFC 3339 or unix seconds", at(idx, "timestamp")));
    let seconds = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_f64().ok_or_else(bad)?,
        Some(Value::String(s)) => match s.trim().parse::<f64>() {
            Ok(secs) => secs,
            Err(_) => return parse_rfc3339(s).map(Some).map_err(|e| domain(idx, e)),
        },
        Some(_) => return Err(bad()),
    };
    if !seconds.is_finite() || !(0.0..=253_402_300_799.0).contains(&seconds) {
        return Err(bad());
    }
    let micros = (seconds * 1_000_000.0).round() as i64;
    tally_domain::time::from_micros(micros).map(Some).map_err(|_| bad())
}

/// A Lago event: the customer id, else the subscription id → tenant; `code` → metric;
/// `properties` → metadata and amount; dedup on `transaction_id`.
fn lago_event(v: &Value, idx: Option<usize>) -> Result<Incoming, ApiError> {
    let Value::Object(obj) = v else {
        return Err(ApiError::invalid(format!("{}: must be a Lago event object", at(idx, "event"))));
    };
    let transaction_id = string_member(obj, "transaction_id", idx)?;
    let customer = optional_string(obj, "external_customer_id", idx)?;
    let subscription = optional_string(obj, "external_subscription_id", idx)?;
    let who = customer.or(subscription).ok_or_else(|| {
        ApiError::invalid(format!(
            "{}: is required (or external_customer_id)",
            at(idx, "external_subscription_id")
        ))
    })?;
    let tenant = TenantId::parse(who).map_err(|e| domain(idx, e))?;
    let metric = MetricCode::parse(string_member(obj, "code", idx)?).map_err(|e| domain(idx, e))?;
    let key = IdempotencyKey::parse(&format!("lago:{transaction_id}")).map_err(|e| domain(idx, e))?;
    let timestamp = lago_timestamp(obj.get("timestamp"), idx)?;
    let payload = object_member(obj, "properties", idx)?;
    Ok(Incoming {
        tenant,
        metric,
        key,
        timestamp,
        lago: Some(LagoEcho {
            transaction_id: transaction_id.to_owned(),
            external_subscription_id: subscription.unwrap_or(who).to_owned(),
            external_customer_id: customer.map(str::to_owned),
        }),
        payload,
    })
}

/// The amount at `pointer` in an event's payload: an integer, a number without a fraction,
/// or a string holding one.
fn amount_at(payload: &Value, pointer: &str, idx: Option<usize>) -> Result<i64, ApiError> {
    let found = payload.pointer(pointer).ok_or_else(|| {
        ApiError::invalid(format!(
            "{}: holds no value at {pointer} (the metric's value_property)",
            at(idx, "data")
        ))
    })?;
    let number = match found {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18).map(|f| f as i64)),
        Value::String(s) => s.trim().parse::<i64>().ok().or_else(|| {
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite() && f.fract() == 0.0 && f.abs() < 9.2e18)
                .map(|f| f as i64)
        }),
        _ => None,
    };
    number.ok_or_else(|| {
        ApiError::invalid(format!(
            "{}: the value at {pointer} must be a whole number, got {found}",
            at(idx, "data")
        ))
    })
}

/// Parses the body into events and their dialect.
fn parse_events(ct: &str, body: &Value) -> Result<(Dialect, Vec<Incoming>, bool), ApiError> {
    let many = |items: &Vec<Value>, f: fn(&Value, Option<usize>) -> Result<Incoming, ApiError>| {
        if items.is_empty() || items.len() > EVENT_BATCH_LEN_MAX {
            return Err(ApiError::invalid(format!(
                "a request holds 1 to {EVENT_BATCH_LEN_MAX} events, got {}",
                items.len()
            )));
        }
        items.iter().enumerate().map(|(i, v)| f(v, Some(i))).collect::<Result<Vec<_>, _>>()
    };
    match (ct, body) {
        ("application/cloudevents+json", Value::Object(_)) => {
            Ok((Dialect::CloudEvents, vec![cloud_event(body, None)?], false))
        }
        ("application/cloudevents+json", _) => {
            Err(ApiError::invalid("application/cloudevents+json carries one event object"))
        }
        ("application/cloudevents-batch+json" | "application/json", Value::Array(items)) => {
            Ok((Dialect::CloudEvents, many(items, cloud_event)?, true))
        }
        ("application/cloudevents-batch+json", _) => {
            Err(ApiError::invalid("application/cloudevents-batch+json carries an array of events"))
        }
        ("application/json", Value::Object(obj)) if obj.contains_key("event") => {
            Ok((Dialect::Lago, vec![lago_event(&obj["event"], None)?], false))
        }
        ("application/json", Value::Object(_)) => {
            Ok((Dialect::CloudEvents, vec![cloud_event(body, None)?], false))
        }
        ("application/json", _) => {
            Err(ApiError::invalid("the body must be a JSON object or an array of events"))
        }
        _ => Err(unsupported(ct)),
    }
}

async fn read_json<S: Store>(req: Request, state: &AppState<S>) -> Result<(String, Value), ApiError> {
    let ct = content_type(&req);
    if !matches!(
        ct.as_str(),
        "application/json" | "application/cloudevents+json" | "application/cloudevents-batch+json"
    ) {
        return Err(unsupported(&ct));
    }
    let bytes = body_bytes(req, state).await?;
    let value: Value =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(format!("malformed JSON: {e}")))?;
    Ok((ct, value))
}

/// Resolves each event against the catalog (its amount) and the caller's rights; any
/// failure fails the whole request before anything is applied.
async fn to_requests<S: Store>(
    state: &AppState<S>,
    principal: &Principal,
    events: &[Incoming],
    many: bool,
) -> Result<Vec<UsageRequest>, ApiError> {
    let mut shapes: HashMap<MetricCode, (Option<String>, MetricKind)> = HashMap::new();
    let mut out = Vec::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        let idx = many.then_some(i);
        principal.require_tenant(e.tenant.as_str())?;
        let (pointer, kind) = match shapes.get(&e.metric) {
            Some(s) => s.clone(),
            None => {
                let s = state.tally.ingest_shape(&e.metric).await?;
                shapes.insert(e.metric.clone(), s.clone());
                s
            }
        };
        let amount = match &pointer {
            Some(p) => amount_at(&e.payload, p, idx)?,
            None => 1,
        };
        let counter_ok = (1..=AMOUNT_MAX).contains(&amount);
        let gauge_ok = amount != 0 && amount.unsigned_abs() <= AMOUNT_MAX.unsigned_abs();
        if !(counter_ok || (kind == MetricKind::Gauge && gauge_ok)) {
            return Err(ApiError::invalid(format!(
                "{}: the amount must be between 1 and {AMOUNT_MAX} (a gauge also takes negatives), got {amount}",
                at(idx, "data")
            )));
        }
        let metadata = Metadata::new(e.payload.clone()).map_err(|err| domain(idx, err))?;
        out.push(UsageRequest {
            tenant_id: e.tenant.clone(),
            metric_code: e.metric.clone(),
            change: Change::Add(amount),
            idempotency_key: Some(e.key.clone()),
            metadata,
            timestamp: e.timestamp.map(truncate),
        });
    }
    Ok(out)
}

/// A 429 naming the refused events (indexes from 0), with the first refusal's details.
fn refused_problem(refused: &[usize], first: UsageError, now: Timestamp) -> ApiError {
    let mut problem = ApiError::from_usage_at(first, now);
    problem.extra.insert("refused".to_owned(), json!(refused));
    if refused.len() > 1 {
        problem.detail =
            format!("{} events were refused by a HARD limit; the others were applied", refused.len());
    }
    problem
}

/// Lago's echo of an event: `lago_id` is the event's id in Tally; `timestamp` is the one sent
/// (the time of the request when none was), `created_at` the time of the request.
fn lago_view(e: &Incoming, outcome: &UsageOutcome, now: Timestamp) -> Value {
    let echo = e.lago.as_ref();
    json!({
        "lago_id": outcome.event_id.to_string(),
        "transaction_id": echo.map(|l| l.transaction_id.clone()),
        "lago_customer_id": Value::Null,
        "lago_subscription_id": Value::Null,
        "external_customer_id": echo.and_then(|l| l.external_customer_id.clone()),
        "external_subscription_id": echo.map(|l| l.external_subscription_id.clone()),
        "code": e.metric.as_str(),
        "timestamp": format_rfc3339(e.timestamp.unwrap_or(now)),
        "precise_total_amount_cents": Value::Null,
        "properties": e.payload,
        "created_at": format_rfc3339(now),
    })
}

/// Applies `events` and answers: 204 (CloudEvents), the Lago echo, or 429 with `refused`.
async fn apply<S: Store>(
    state: &AppState<S>,
    principal: &Principal,
    dialect: Dialect,
    events: Vec<Incoming>,
    many: bool,
    lago_batch: bool,
) -> Result<Response, ApiError> {
    let requests = to_requests(state, principal, &events, many).await?;
    let now = state.tally.now();
    let results = state.tally.ingest(requests).await.map_err(|e| ApiError::from_service_at(e, now))?;
    let mut refused = Vec::new();
    let mut first_refusal = None;
    let mut outcomes = Vec::with_capacity(results.len());
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(o) => outcomes.push(Some(o)),
            Err(ServiceError::Usage(u @ UsageError::QuotaExceeded { .. })) => {
                refused.push(i);
                first_refusal.get_or_insert(u);
                outcomes.push(None);
            }
            Err(other) => return Err(ApiError::from_service_at(other, now)),
        }
    }
    if let Some(first) = first_refusal {
        return Err(refused_problem(&refused, first, now));
    }
    match dialect {
        Dialect::CloudEvents => Ok(StatusCode::NO_CONTENT.into_response()),
        Dialect::Lago => {
            let views: Vec<Value> =
                events.iter().zip(outcomes.iter().flatten()).map(|(e, o)| lago_view(e, o, now)).collect();
            let body = if lago_batch {
                json!({ "events": views })
            } else {
                json!({ "event": views.into_iter().next().unwrap_or(Value::Null) })
            };
            Ok((StatusCode::OK, Json(body)).into_response())
        }
    }
}

/// `POST /api/v1/events`: CloudEvents (one, or a batch) or one Lago event.
pub async fn ingest<S: Store>(
    State(state): State<AppState<S>>,
    principal: Principal,
    req: Request,
) -> Result<Response, ApiError> {
    let (ct, body) = read_json(req, &state).await?;
    let (dialect, events, many) = parse_events(&ct, &body)?;
    apply(&state, &principal, dialect, events, many, false).await
}

/// `POST /api/v1/events/batch`: Lago's `{"events": [...]}`.
pub async fn ingest_lago_batch<S: Store>(
    State(state): State<AppState<S>>,
    principal: Principal,
    req: Request,
) -> Result<Response, ApiError> {
    let (ct, body) = read_json(req, &state).await?;
    if ct != "application/json" {
        return Err(unsupported(&ct));
    }
    let Some(Value::Array(items)) = body.get("events") else {
        return Err(ApiError::invalid("the body must be an object {\"events\": [...]}"));
    };
    if items.is_empty() || items.len() > EVENT_BATCH_LEN_MAX {
        return Err(ApiError::invalid(format!(
            "a request holds 1 to {EVENT_BATCH_LEN_MAX} events, got {}",
            items.len()
        )));
    }
    let events =
        items.iter().enumerate().map(|(i, v)| lago_event(v, Some(i))).collect::<Result<Vec<_>, _>>()?;
    apply(&state, &principal, Dialect::Lago, events, true, true).await
}

/// The query parameters, repeated ones kept in order; unknown ones are ignored.
fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    raw.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default()
}

fn first<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
}

fn instant(pairs: &[(String, String)], name: &str) -> Result<Option<Timestamp>, ApiError> {
    first(pairs, name)
        .map(|raw| parse_rfc3339(raw).map_err(|_| ApiError::invalid(format!("{name}: must be RFC 3339"))))
        .transpose()
}

/// `GET /api/v1|v2/customers/{customer}/entitlements/{metric_code}/value?time=`: access is
/// denied with a 200, never a 4xx.
pub async fn entitlement_value<S: Store>(
    State(state): State<AppState<S>>,
    principal: Principal,
    Path((customer, metric)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    principal.require_tenant(&customer)?;
    let tenant = TenantId::parse(&customer)?;
    let metric = MetricCode::parse(&metric)?;
    let at = instant(&query_pairs(query.as_deref()), "time")?;
    let v = state.tally.entitlement_value(&tenant, &metric, at).await?;
    Ok(Json(json!({
        "hasAccess": v.has_access,
        "balance": v.balance,
        "usage": v.usage,
        "overage": v.overage,
    })))
}

/// `GET /api/v1/meters/{metric_code}/query?from=&to=&windowSize=&subject=`: sums from the
/// event trail. A tenant key reads its own tenant only.
pub async fn meter_query<S: Store>(
    State(state): State<AppState<S>>,
    principal: Principal,
    Path(metric): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let metric = MetricCode::parse(&metric)?;
    let pairs = query_pairs(query.as_deref());
    let mut subjects = Vec::new();
    for (_, raw) in pairs.iter().filter(|(k, _)| k == "subject") {
        principal.require_tenant(raw)?;
        subjects.push(TenantId::parse(raw)?);
    }
    if subjects.is_empty()
        && let Principal::Tenant { tenant, .. } = &principal
    {
        subjects.push(tenant.clone());
    }
    let window = first(&pairs, "windowSize").map(str::parse::<WindowSize>).transpose()?;
    let to = instant(&pairs, "to")?.unwrap_or_else(|| state.tally.now());
    let from = instant(&pairs, "from")?.unwrap_or(chrono::DateTime::UNIX_EPOCH);
    let rows = state.tally.meter_query(&metric, &subjects, from, to, window).await?;
    let data: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "value": r.value,
                "windowStart": format_rfc3339(r.window_start),
                "windowEnd": format_rfc3339(r.window_end),
                "subject": r.subject.as_str(),
                "groupBy": {},
            })
        })
        .collect();
    Ok(Json(json!({
        "from": format_rfc3339(from),
        "to": format_rfc3339(to),
        "windowSize": window.map(WindowSize::as_str),
        "data": data,
    })))
}

/// `GET /api/v1/customers/{customer}/current_usage?external_subscription_id=`: usage only
/// (Tally does not price), in the shape the Lago client reads.
pub async fn current_usage<S: Store>(
    State(state): State<AppState<S>>,
    principal: Principal,
    Path(customer): Path<String>,
) -> Result<Json<Value>, ApiError> {
    principal.require_tenant(&customer)?;
    let tenant = TenantId::parse(&customer)?;
    let u = state.tally.current_usage(&tenant).await?;
    let charges: Vec<Value> = u
        .charges
        .iter()
        .map(|c| {
            json!({
                "units": c.units.to_string(),
                "total_aggregated_units": c.units.to_string(),
                "events_count": c.events_count,
                "amount_cents": 0,
                "amount_currency": NO_CURRENCY,
                "charge": {"lago_id": c.metric_code.as_str(), "charge_model": "standard", "invoice_display_name": Value::Null},
                "billable_metric": {
                    "lago_id": c.metric_code.as_str(),
                    "name": c.name,
                    "code": c.metric_code.as_str(),
                    "aggregation_type": "sum_agg",
                },
                "filters": [],
                "grouped_usage": [],
            })
        })
        .collect();
    Ok(Json(json!({
        "customer_usage": {
            "from_datetime": format_rfc3339(u.from),
            "to_datetime": format_rfc3339(u.to),
            "issuing_date": format_rfc3339(u.to).get(..10).unwrap_or_default(),
            "lago_invoice_id": Value::Null,
            "currency": NO_CURRENCY,
            "amount_cents": 0,
            "total_amount_cents": 0,
            "taxes_amount_cents": 0,
            "charges_usage": charges,
        }
    })))
}
