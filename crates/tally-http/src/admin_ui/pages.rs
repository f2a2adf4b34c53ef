//! The admin pages: tenants, plans, usage records and usage events. GET only, read-only.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use futures::StreamExt;
use maud::{Markup, html};
use tally_domain::limits::ADMIN_PAGE_LEN;
use tally_domain::{EventKind, MetricCode, PlanCode, QuotaLimit, TenantId, UsageEvent};
use tally_service::ServiceError;
use tally_service::admin_ui::ResolvedSearch;
use tally_service::closing::{PeriodFilter, PeriodView};
use tally_store::{AdminSearch, EventListQuery, RecordCursor, RecordListQuery, Store};
use uuid::Uuid;

use super::params::{self, ListParams, given, link};
use super::svg::{usage_bar, usage_chart};
use super::view::{day, enforcement_word, int, limit_text, page, respond, table, time};
use super::{Operator, service_error_page};
use crate::state::AppState;

const STYLESHEET: &str = include_str!("admin.css");

/// Tenant views read at once for a page of the tenants search.
const TENANT_READS_IN_FLIGHT: usize = 8;

/// The most recent periods the tenant page lists (the API's `GET .../periods` pages on).
const TENANT_PERIODS_LEN: u32 = ADMIN_PAGE_LEN;

/// `GET /admin/admin.css`.
pub async fn stylesheet() -> Response {
    let mut resp = STYLESHEET.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/css; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    resp
}

/// `GET /admin`: the tenants list is the home page.
pub async fn home() -> Redirect {
    Redirect::to("/admin/tenants")
}

type Outcome = Result<Response, Response>;

fn bad_query(op: &Operator, rejection: &QueryRejection) -> Response {
    super::view::error_page(
        StatusCode::BAD_REQUEST,
        &format!("the query string could not be read: {rejection}"),
        Some(&op.signed()),
    )
}

fn ok(op: &Operator) -> impl Fn(ServiceError) -> Response + '_ {
    move |e| service_error_page(&e, op)
}

fn invalid(op: &Operator) -> impl Fn(tally_domain::DomainError) -> Response + '_ {
    move |e| service_error_page(&ServiceError::Invalid(e), op)
}

fn done(result: Outcome) -> Response {
    result.unwrap_or_else(|e| e)
}

/// The search of a list: an exact tenant wins over a typed term.
async fn search_of<S: Store>(
    state: &AppState<S>,
    op: &Operator,
    p: &ListParams,
) -> Result<Option<ResolvedSearch>, Response> {
    if let Some(tenant) = params::tenant(p).map_err(invalid(op))? {
        return Ok(Some(ResolvedSearch {
            search: AdminSearch { tenant_ids: vec![tenant], metric_codes: Vec::new() },
            tenants_truncated: false,
        }));
    }
    let term = given(&p.q).unwrap_or("");
    state.tally.resolve_admin_search(term).await.map_err(ok(op))
}

fn search_notice(p: &ListParams, resolved: Option<&ResolvedSearch>) -> Markup {
    html! {
        @if let Some(t) = given(&p.tenant_id) {
            p.notice { "Showing tenant " strong { (t) } " only." }
        }
        @if resolved.is_some_and(|r| r.tenants_truncated) {
            p.notice role="status" {
                "More than " (tally_domain::limits::ADMIN_SEARCH_TENANTS_MAX)
                " tenants start with this term: only the first of them are searched. Type more of the tenant id."
            }
        }
    }
}

fn metric_select(known: &[MetricCode], current: Option<&str>) -> Markup {
    html! {
        label {
            "Metric"
            select name="metric_code" id="metric_code" {
                option value="" { "Any metric" }
                @for m in known {
                    option value=(m.as_str()) selected[current == Some(m.as_str())] { (m.as_str()) }
                }
                @if let Some(c) = current && !known.iter().any(|m| m.as_str() == c) {
                    option value=(c) selected { (c) }
                }
            }
        }
    }
}

fn day_inputs(label: &str, from_name: &str, from: Option<&str>, to_name: &str, to: Option<&str>) -> Markup {
    html! {
        label { (label) " from" input type="date" name=(from_name) id=(from_name) value=[from]; }
        label { "to" input type="date" name=(to_name) id=(to_name) value=[to]; }
    }
}

fn quick_links(
    base: &str,
    p: &ListParams,
    now: tally_domain::Timestamp,
    extra: &[(&str, Option<&str>)],
) -> Markup {
    html! {
        div.quick {
            span { "Created:" }
            @for (label, from, to) in params::quick_windows(now) {
                @let pairs: Vec<(&str, Option<&str>)> = [
                    ("q", given(&p.q)), ("tenant_id", given(&p.tenant_id)), ("metric_code", given(&p.metric_code)),
                    ("created_from", Some(from.as_str())), ("created_to", Some(to.as_str())),
                ].into_iter().chain(extra.iter().copied()).collect();
                a href=(link(base, &pairs)) { (label) }
            }
            a href=(base) { "Clear all filters" }
        }
    }
}

fn pager(first: Option<String>, next: Option<String>) -> Markup {
    html! {
        nav.pager aria-label="Pages" {
            @if let Some(f) = first { a href=(f) rel="first" id="first-page" { "« First page" } }
            @if let Some(n) = next { a href=(n) rel="next" id="next-page" { "Next page »" } }
        }
    }
}

/// `GET /admin/records`: usage records of every tenant.
pub async fn records<S: Store>(
    State(state): State<AppState<S>>,
    op: Operator,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Response {
    done(records_page(&state, &op, query).await)
}

async fn records_page<S: Store>(
    state: &AppState<S>,
    op: &Operator,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Outcome {
    let Query(p) = query.map_err(|e| bad_query(op, &e))?;
    let metric = params::metric(&p).map_err(invalid(op))?;
    let created_at = params::day_range("created_from", &p.created_from, "created_to", &p.created_to)
        .map_err(invalid(op))?;
    let period_end =
        params::day_range("period_end_from", &p.period_end_from, "period_end_to", &p.period_end_to)
            .map_err(invalid(op))?;
    let (sort, descending) = params::record_sort(&p).map_err(invalid(op))?;
    let after = given(&p.after)
        .map(|raw| params::decode_record_cursor(raw, sort))
        .transpose()
        .map_err(invalid(op))?;
    let resolved = search_of(state, op, &p).await?;
    let known = state.tally.known_metric_codes().await.map_err(ok(op))?;
    let query = RecordListQuery {
        metric_code: metric,
        period_end,
        created_at,
        search: resolved.as_ref().map(|r| r.search.clone()),
        sort,
        descending,
        after,
        limit: ADMIN_PAGE_LEN + 1,
    };
    let mut rows = state.tally.admin_records(&query).await.map_err(ok(op))?;
    let more = rows.len() > ADMIN_PAGE_LEN as usize;
    rows.truncate(ADMIN_PAGE_LEN as usize);
    let dir = if descending { "desc" } else { "asc" };
    let filters = |after: Option<&str>, sort: &str, dir: &str| -> String {
        link(
            "/admin/records",
            &[
                ("q", given(&p.q)),
                ("tenant_id", given(&p.tenant_id)),
                ("metric_code", given(&p.metric_code)),
                ("created_from", given(&p.created_from)),
                ("created_to", given(&p.created_to)),
                ("period_end_from", given(&p.period_end_from)),
                ("period_end_to", given(&p.period_end_to)),
                ("sort", Some(sort)),
                ("dir", Some(dir)),
                ("after", after),
            ],
        )
    };
    let sort_now = sort.column();
    let next = if more {
        rows.last().map(|r| {
            let key = sort.key_of(r);
            filters(Some(&params::encode_record_cursor(&RecordCursor { key, id: r.id })), sort_now, dir)
        })
    } else {
        None
    };
    let first = given(&p.after).map(|_| filters(None, sort_now, dir));
    let header = |col: &'static str, label: &'static str, num: bool| -> Markup {
        let (next_dir, mark) = if col == sort_now {
            (if descending { "asc" } else { "desc" }, if descending { " ▼" } else { " ▲" })
        } else {
            ("desc", "")
        };
        let aria = if col == sort_now { if descending { "descending" } else { "ascending" } } else { "none" };
        html! { th class=[num.then_some("num")] aria-sort=(aria) { a href=(filters(None, col, next_dir)) data-sort=(col) { (label) (mark) } } }
    };
    let body = html! {
        h1 { "Usage records" }
        form.filters method="get" action="/admin/records" role="search" {
            label { "Search tenant or metric" input type="search" name="q" id="q" value=[given(&p.q)] placeholder="tenant id or metric code prefix" maxlength="64"; }
            (metric_select(&known, given(&p.metric_code)))
            (day_inputs("Created", "created_from", given(&p.created_from), "created_to", given(&p.created_to)))
            (day_inputs("Period end", "period_end_from", given(&p.period_end_from), "period_end_to", given(&p.period_end_to)))
            @if let Some(t) = given(&p.tenant_id) { input type="hidden" name="tenant_id" value=(t); }
            input type="hidden" name="sort" value=(sort_now);
            input type="hidden" name="dir" value=(dir);
            button type="submit" id="apply-filters" { "Filter" }
        }
        (quick_links("/admin/records", &p, state.tally.now(), &[("sort", Some(sort_now)), ("dir", Some(dir))]))
        (search_notice(&p, resolved.as_ref()))
        @if rows.is_empty() {
            p.empty id="no-rows" { "No usage records match." }
        } @else {
            (table(
                html! {
                    th { "id" }
                    (header("tenant_id", "tenant_id", false))
                    (header("metric_code", "metric_code", false))
                    (header("current_usage", "current_usage", true))
                    (header("period_end", "period_end", false))
                    (header("created_at", "created_at", false))
                },
                html! {
                    @for r in &rows {
                        tr.record-row data-id=(r.id) {
                            td { code { (r.id) } }
                            td.wrap { a href=(format!("/admin/tenants/{}", super::urlencode(r.tenant_id.as_str()))) { (r.tenant_id.as_str()) } }
                            td { (r.metric_code.as_str()) }
                            td.num { (int(r.current_usage)) }
                            @if r.period().is_ok_and(|p| p.is_unbounded()) { td { "none (gauge)" } } @else { td { (time(r.period_end)) } }
                            td { (time(r.created_at)) }
                        }
                    }
                },
            ))
        }
        (pager(first, next))
    };
    Ok(respond(StatusCode::OK, page("Usage records", "/admin/records", Some(&op.signed()), body)))
}

/// `GET /admin/events`: usage events of every tenant, newest first.
pub async fn events<S: Store>(
    State(state): State<AppState<S>>,
    op: Operator,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Response {
    done(events_page(&state, &op, query).await)
}

async fn events_page<S: Store>(
    state: &AppState<S>,
    op: &Operator,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Outcome {
    let Query(p) = query.map_err(|e| bad_query(op, &e))?;
    let metric = params::metric(&p).map_err(invalid(op))?;
    let created_at = params::day_range("created_from", &p.created_from, "created_to", &p.created_to)
        .map_err(invalid(op))?;
    let after = given(&p.after).map(params::decode_event_cursor).transpose().map_err(invalid(op))?;
    let resolved = search_of(state, op, &p).await?;
    let known = state.tally.known_metric_codes().await.map_err(ok(op))?;
    let query = EventListQuery {
        metric_code: metric,
        created_at,
        search: resolved.as_ref().map(|r| r.search.clone()),
        after,
        limit: ADMIN_PAGE_LEN + 1,
    };
    let mut rows = state.tally.admin_events(&query).await.map_err(ok(op))?;
    let more = rows.len() > ADMIN_PAGE_LEN as usize;
    rows.truncate(ADMIN_PAGE_LEN as usize);
    let filters = |after: Option<&str>| -> String {
        link(
            "/admin/events",
            &[
                ("q", given(&p.q)),
                ("tenant_id", given(&p.tenant_id)),
                ("metric_code", given(&p.metric_code)),
                ("created_from", given(&p.created_from)),
                ("created_to", given(&p.created_to)),
                ("after", after),
            ],
        )
    };
    let next = if more {
        rows.last().map(|e| filters(Some(&params::encode_event_cursor(e.event.created_at, e.event.id))))
    } else {
        None
    };
    let first = given(&p.after).map(|_| filters(None));
    let body = html! {
        h1 { "Usage events" }
        form.filters method="get" action="/admin/events" role="search" {
            label { "Search tenant or metric" input type="search" name="q" id="q" value=[given(&p.q)] placeholder="tenant id or metric code prefix" maxlength="64"; }
            (metric_select(&known, given(&p.metric_code)))
            (day_inputs("Created", "created_from", given(&p.created_from), "created_to", given(&p.created_to)))
            @if let Some(t) = given(&p.tenant_id) { input type="hidden" name="tenant_id" value=(t); }
            button type="submit" id="apply-filters" { "Filter" }
        }
        (quick_links("/admin/events", &p, state.tally.now(), &[]))
        (search_notice(&p, resolved.as_ref()))
        @if rows.is_empty() {
            p.empty id="no-rows" { "No usage events match." }
        } @else {
            (table(
                html! { th { "id" } th { "tenant_id" } th { "metric_code" } th { "kind" } th.num { "amount" } th { "created_at" } },
                html! {
                    @for r in &rows {
                        @let e = &r.event;
                        tr.event-row data-id=(e.id) data-kind=(e.kind.as_str()) {
                            td { a href=(format!("/admin/tenants/{}/events/{}", super::urlencode(e.tenant_id.as_str()), e.id)) { code { (e.id) } } }
                            td.wrap { a href=(format!("/admin/tenants/{}", super::urlencode(e.tenant_id.as_str()))) { (e.tenant_id.as_str()) } }
                            td { (e.metric_code.as_str()) }
                            td.wrap.kind { (kind_cell(e)) }
                            td.num { (int(e.amount)) }
                            td { (time(e.created_at)) }
                        }
                    }
                },
            ))
        }
        (pager(first, next))
    };
    Ok(respond(StatusCode::OK, page("Usage events", "/admin/events", Some(&op.signed()), body)))
}

/// An event's kind: usage as a word, a correction as a badge followed by its reason.
fn kind_cell(e: &UsageEvent) -> Markup {
    html! {
        @match e.kind {
            EventKind::Usage => { "usage" }
            EventKind::Correction => {
                (kind_badge(e.kind))
                @if let Some(reason) = &e.reason { " " span.reason { (reason.as_str()) } }
            }
        }
    }
}

fn kind_badge(kind: EventKind) -> Markup {
    html! { span class={"badge kind-" (kind.as_str())} { (kind.as_str()) } }
}

/// `GET /admin/tenants/{tenant_id}/events/{event_id}`: one event with its metadata.
pub async fn event<S: Store>(
    State(state): State<AppState<S>>,
    op: Operator,
    Path((tenant, id)): Path<(String, String)>,
) -> Response {
    done(event_page(&state, &op, &tenant, &id).await)
}

async fn event_page<S: Store>(state: &AppState<S>, op: &Operator, tenant: &str, id: &str) -> Outcome {
    let tenant = TenantId::parse(tenant).map_err(invalid(op))?;
    let id = Uuid::try_parse(id)
        .map_err(|_| tally_domain::DomainError::invalid("event_id", "must be a UUID"))
        .map_err(invalid(op))?;
    let recorded = state.tally.admin_event(&tenant, id).await.map_err(ok(op))?;
    let e = &recorded.event;
    let r = &recorded.receipt;
    let metadata = serde_json::to_string_pretty(&e.metadata).unwrap_or_default();
    let title = match e.kind {
        EventKind::Usage => "Usage event",
        EventKind::Correction => "Correction",
    };
    let body = html! {
        h1 { (title) " " code { (e.id) } }
        dl.facts {
            dt { "id" } dd { code { (e.id) } }
            dt { "tenant_id" } dd { a href=(format!("/admin/tenants/{}", super::urlencode(e.tenant_id.as_str()))) { (e.tenant_id.as_str()) } }
            dt { "metric_code" } dd { (e.metric_code.as_str()) }
            dt { "kind" } dd id="kind" data-kind=(e.kind.as_str()) {
                @match e.kind { EventKind::Usage => { "usage" } EventKind::Correction => { (kind_badge(e.kind)) } }
            }
            @if e.kind == EventKind::Correction {
                dt { "reason" } dd id="reason" { @if let Some(r) = &e.reason { (r.as_str()) } @else { "none" } }
            }
            dt { "amount" } dd { (int(e.amount)) }
            dt { "idempotency_key" } dd id="idempotency-key" { @if let Some(k) = &e.idempotency_key { code { (k.as_str()) } } @else { "none" } }
            dt { "timestamp" } dd { (time(e.timestamp)) @if !r.timestamp_explicit { " (time of recording)" } }
            dt { "created_at" } dd { (time(e.created_at)) }
            dt { "period" } dd { @if let Some((start, end)) = r.period.bounds() { (time(start)) " to " (time(end)) } @else { "none (gauge level)" } }
            dt { "usage after" } dd { (int(r.usage_after)) " of " (limit_text(r.limit)) " (" (enforcement_word(r.enforcement)) ")" }
        }
        h2 { "Metadata" }
        pre id="metadata" { (metadata) }
        p { a href=(link("/admin/events", &[("tenant_id", Some(e.tenant_id.as_str()))])) { "All events of this tenant" } }
    };
    Ok(respond(StatusCode::OK, page(title, "/admin/events", Some(&op.signed()), body)))
}

/// `GET /admin/tenants`: tenants by id, searchable by id prefix.
pub async fn tenants<S: Store>(
    State(state): State<AppState<S>>,
    op: Operator,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Response {
    done(tenants_page(&state, &op, query).await)
}

async fn tenants_page<S: Store>(
    state: &AppState<S>,
    op: &Operator,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Outcome {
    let Query(p) = query.map_err(|e| bad_query(op, &e))?;
    let after = given(&p.after).map(TenantId::parse).transpose().map_err(invalid(op))?;
    let (views, next_after, truncated) = match given(&p.q) {
        None => {
            let page = state
                .tally
                .list_tenants(ADMIN_PAGE_LEN, after.as_ref().map(TenantId::as_str))
                .await
                .map_err(ok(op))?;
            let next = page.next_cursor;
            (page.tenants, next, false)
        }
        Some(term) => {
            let resolved = state.tally.resolve_admin_search(term).await.map_err(ok(op))?;
            let ids: Vec<TenantId> = resolved
                .as_ref()
                .map(|r| {
                    r.search
                        .tenant_ids
                        .iter()
                        .filter(|t| after.as_ref().is_none_or(|a| *t > a))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            // Each view is a few primary-key reads: run a few at once, in page order.
            let page_ids: Vec<TenantId> = ids.iter().take(ADMIN_PAGE_LEN as usize).cloned().collect();
            let views: Vec<_> = futures::stream::iter(page_ids)
                .map(|t| {
                    let tally = state.tally.clone();
                    async move { tally.get_tenant(&t).await }
                })
                .buffered(TENANT_READS_IN_FLIGHT)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<_, _>>()
                .map_err(ok(op))?;
            let next = (ids.len() > ADMIN_PAGE_LEN as usize)
                .then(|| views.last().map(|v| v.tenant.tenant_id.as_str().to_owned()))
                .flatten();
            (views, next, resolved.is_some_and(|r| r.tenants_truncated))
        }
    };
    let next = next_after.map(|a| link("/admin/tenants", &[("q", given(&p.q)), ("after", Some(&a))]));
    let first = given(&p.after).map(|_| link("/admin/tenants", &[("q", given(&p.q))]));
    let body = html! {
        h1 { "Tenants" }
        form.filters method="get" action="/admin/tenants" role="search" {
            label { "Tenant id starts with" input type="search" name="q" id="q" value=[given(&p.q)] maxlength="64"; }
            button type="submit" id="apply-filters" { "Search" }
            a href="/admin/tenants" { "Clear" }
        }
        @if truncated {
            p.notice role="status" { "More than " (tally_domain::limits::ADMIN_SEARCH_TENANTS_MAX) " tenants start with this term: only the first of them are listed." }
        }
        @if views.is_empty() {
            p.empty id="no-rows" { "No tenants match." }
        } @else {
            (table(
                html! { th { "tenant_id" } th { "name" } th { "plan" } th { "anchor" } th { "created_at" } },
                html! {
                    @for v in &views {
                        tr.tenant-row {
                            td.wrap { a href=(format!("/admin/tenants/{}", super::urlencode(v.tenant.tenant_id.as_str()))) { (v.tenant.tenant_id.as_str()) } }
                            td.wrap { (v.tenant.name.as_str()) }
                            td { @if let Some(s) = &v.subscription { a href=(format!("/admin/plans/{}", s.plan_code.as_str())) { (s.plan_code.as_str()) } } @else { "none" } }
                            td { @if let Some(s) = &v.subscription { (time(s.anchor)) } }
                            td { (time(v.tenant.created_at)) }
                        }
                    }
                },
            ))
        }
        (pager(first, next))
    };
    Ok(respond(StatusCode::OK, page("Tenants", "/admin/tenants", Some(&op.signed()), body)))
}

fn limits_table(id: &str, limits: &[QuotaLimit]) -> Markup {
    let t = table(
        html! { th { "metric_code" } th.num { "limit" } th { "enforcement" } th { "period" } },
        html! {
            @for l in limits {
                tr {
                    td { (l.metric_code.as_str()) }
                    td.num { (limit_text(l.limit)) }
                    td { span class={"badge enf-" (enforcement_word(l.enforcement))} { (enforcement_word(l.enforcement)) } }
                    td { (l.period.as_str()) }
                }
            }
        },
    );
    html! { div id=(id) { (t) } }
}

/// `GET /admin/tenants/{tenant_id}`: the tenant's plan, overrides and usage pictures.
pub async fn tenant<S: Store>(
    State(state): State<AppState<S>>,
    op: Operator,
    Path(tenant): Path<String>,
) -> Response {
    done(tenant_page(&state, &op, &tenant).await)
}

async fn tenant_page<S: Store>(state: &AppState<S>, op: &Operator, tenant: &str) -> Outcome {
    let tenant = TenantId::parse(tenant).map_err(invalid(op))?;
    let filter = PeriodFilter { limit: TENANT_PERIODS_LEN, ..PeriodFilter::default() };
    let (o, periods) =
        futures::try_join!(state.tally.tenant_overview(&tenant), state.tally.periods(&tenant, &filter))
            .map_err(ok(op))?;
    let t = &o.view.tenant;
    let body = html! {
        h1 { "Tenant " span id="tenant-id" { (t.tenant_id.as_str()) } }
        dl.facts {
            dt { "name" } dd { (t.name.as_str()) }
            dt { "created_at" } dd { (time(t.created_at)) }
            @if let Some(s) = &o.view.subscription {
                dt { "plan" } dd id="plan" { a href=(format!("/admin/plans/{}", s.plan_code.as_str())) { (s.plan_code.as_str()) } }
                dt { "subscription anchor" } dd id="anchor" { (time(s.anchor)) }
                dt { "on this plan since" } dd { (time(s.started_at)) }
            } @else {
                dt { "plan" } dd id="plan" { "no subscription" }
            }
        }
        p {
            a href=(link("/admin/records", &[("tenant_id", Some(t.tenant_id.as_str()))])) { "Usage records" }
            " · "
            a href=(link("/admin/events", &[("tenant_id", Some(t.tenant_id.as_str()))])) { "Usage events" }
        }
        h2 { "Overrides" }
        @if o.view.overrides.is_empty() { p.empty { "No overrides: the plan's limits apply." } } @else { (limits_table("overrides", &o.view.overrides)) }
        h2 { "Usage" }
        p.legend {
            "Bars: usage of the current period (for a gauge, its current level) against its limit; green under "
            (super::svg::NEAR_LIMIT_PERCENT) "%, amber near, red at or over the limit. "
            "Frame: solid for HARD, dashed for SOFT, dotted for NONE. Charts: the last "
            (tally_domain::limits::ADMIN_CHART_PERIODS) " periods, the current one last."
        }
        @if o.metrics.is_empty() { p.empty { "No metrics: the tenant has no subscription." } }
        div.cards {
            @for m in &o.metrics {
                @let u = &m.usage;
                section.card.metric id=(format!("metric-{}", u.metric_code.as_str())) data-metric=(u.metric_code.as_str()) {
                    @if let Some((start, end)) = u.period.bounds() {
                        h3 { (u.metric_code.as_str()) span.legend { (u.period_kind.as_str()) " · " (day(start)) " to " (day(end)) } }
                        (usage_bar(u.metric_code.as_str(), u.current_usage, u.limit, u.enforcement))
                        (usage_chart(u.metric_code.as_str(), &m.history, u.limit))
                    } @else {
                        h3 { (u.metric_code.as_str()) span.legend.gauge { "gauge · current level, no period" } }
                        (usage_bar(u.metric_code.as_str(), u.current_usage, u.limit, u.enforcement))
                    }
                }
            }
        }
        h2 { "Periods" }
        p.legend {
            "The most recent periods with a counter, newest first. A closed period is final: usage, "
            "corrections and commits into it are refused until it is reopened."
        }
        @if periods.periods.is_empty() {
            p.empty id="no-periods" { "No periods yet: nothing has been recorded." }
        } @else {
            div id="periods" { (periods_table(&periods.periods)) }
            @if periods.next_cursor.is_some() {
                p.notice role="status" id="more-periods" {
                    "Only the " (TENANT_PERIODS_LEN) " most recent periods are shown: "
                    code { "GET /v1/tenants/" (t.tenant_id.as_str()) "/periods" } " lists them all."
                }
            }
        }
    };
    Ok(respond(StatusCode::OK, page(t.tenant_id.as_str(), "/admin/tenants", Some(&op.signed()), body)))
}

/// One row per period: metric, bounds, usage of its limit, and whether it is closed.
fn periods_table(periods: &[PeriodView]) -> Markup {
    table(
        html! { th { "metric_code" } th { "period" } th.num { "usage" } th { "state" } },
        html! {
            @for v in periods {
                @let state = period_state(v);
                tr.period-row data-metric=(v.metric_code.as_str()) data-state=(state) {
                    td { (v.metric_code.as_str()) }
                    td {
                        @if let Some((start, end)) = v.period.bounds() { (time(start)) " to " (time(end)) }
                        @else { "none (gauge level)" }
                    }
                    td.num {
                        (int(v.current_usage)) " of " (limit_text(v.limit))
                        @if let Some(e) = v.enforcement { " (" (enforcement_word(e)) ")" }
                    }
                    td.state {
                        @match (v.closed_at, v.reopened_at) {
                            (Some(at), _) => { span.badge.period-closed { "closed" } " " (time(at)) }
                            (None, Some(at)) => { span.badge.period-reopened { "reopened" } " " (time(at)) }
                            (None, None) => { "open" }
                        }
                    }
                }
            }
        },
    )
}

/// `closed`, `reopened` (open again after a close) or `open`.
fn period_state(v: &PeriodView) -> &'static str {
    match (v.closed_at, v.reopened_at) {
        (Some(_), _) => "closed",
        (None, Some(_)) => "reopened",
        (None, None) => "open",
    }
}

/// `GET /admin/plans`.
pub async fn plans<S: Store>(State(state): State<AppState<S>>, op: Operator) -> Response {
    let plans = match state.tally.list_plans().await {
        Ok(p) => p,
        Err(e) => return service_error_page(&e, &op),
    };
    let body = html! {
        h1 { "Plans" }
        @if plans.is_empty() { p.empty id="no-rows" { "No plans yet." } } @else {
            (table(
                html! { th { "plan_code" } th { "name" } th.num { "version" } th.num { "limits" } th { "updated_at" } },
                html! {
                    @for pl in &plans {
                        tr.plan-row {
                            td { a href=(format!("/admin/plans/{}", pl.code.as_str())) { (pl.code.as_str()) } }
                            td.wrap { (pl.name.as_str()) }
                            td.num { (pl.version) }
                            td.num { (pl.limits.len()) }
                            td { (time(pl.updated_at)) }
                        }
                    }
                },
            ))
        }
    };
    respond(StatusCode::OK, page("Plans", "/admin/plans", Some(&op.signed()), body))
}

/// `GET /admin/plans/{plan_code}`: limits, version history, subscribers.
pub async fn plan<S: Store>(
    State(state): State<AppState<S>>,
    op: Operator,
    Path(code): Path<String>,
) -> Response {
    done(plan_page(&state, &op, &code).await)
}

async fn plan_page<S: Store>(state: &AppState<S>, op: &Operator, code: &str) -> Outcome {
    let code = PlanCode::parse(code).map_err(invalid(op))?;
    let o = state.tally.plan_overview(&code).await.map_err(ok(op))?;
    let body = html! {
        h1 { "Plan " (o.plan.code.as_str()) }
        dl.facts {
            dt { "name" } dd { (o.plan.name.as_str()) }
            dt { "version" } dd { (o.plan.version) }
            dt { "created_at" } dd { (time(o.plan.created_at)) }
            dt { "updated_at" } dd { (time(o.plan.updated_at)) }
        }
        h2 { "Limits" }
        (limits_table("limits", &o.plan.limits))
        h2 { "Version history" }
        (table(
            html! { th.num { "version" } th { "name" } th { "limits" } th { "from" } },
            html! {
                @for v in &o.versions {
                    tr.version-row {
                        td.num { (v.version) }
                        td.wrap { (v.name.as_str()) }
                        td.wrap {
                            @for (i, l) in v.limits.iter().enumerate() {
                                @if i > 0 { "; " }
                                (l.metric_code.as_str()) " " (limit_text(l.limit)) " " (enforcement_word(l.enforcement)) "/" (l.period.as_str())
                            }
                        }
                        td { (time(v.updated_at)) }
                    }
                }
            },
        ))
        h2 { "Subscribed tenants (" (o.subscribers.len()) ")" }
        @if o.subscribers.is_empty() { p.empty { "No tenant subscribes to this plan." } } @else {
            ul id="subscribers" {
                @for t in &o.subscribers {
                    li { a href=(format!("/admin/tenants/{}", super::urlencode(t.as_str()))) { (t.as_str()) } }
                }
            }
        }
    };
    Ok(respond(StatusCode::OK, page("Plan", "/admin/plans", Some(&op.signed()), body)))
}
