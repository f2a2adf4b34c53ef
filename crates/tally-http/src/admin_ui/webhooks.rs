//! The webhook pages: every webhook, and one webhook's deliveries log (status, attempts, the
//! last answer, the next attempt). Read-only: a failed delivery is sent again through the
//! API (`POST /v1/webhooks/{id}/deliveries/{delivery_id}/redeliver`).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::html;
use serde::Deserialize;
use tally_domain::limits::ADMIN_PAGE_LEN;
use tally_domain::{DeliveryStatus, DomainError, WebhookId};
use tally_service::ServiceError;
use tally_store::Store;
use uuid::Uuid;

use super::params::{given, link};
use super::view::{error_page, page, respond, table, time};
use super::{Operator, service_error_page};
use crate::state::AppState;

/// A delivery status's badge: delivered green, pending amber, failed red.
fn status_class(status: DeliveryStatus) -> &'static str {
    match status {
        DeliveryStatus::Delivered => "state-under",
        DeliveryStatus::Pending => "state-near",
        DeliveryStatus::Failed => "state-over",
    }
}

/// `GET /admin/webhooks`.
pub async fn webhooks<S: Store>(State(state): State<AppState<S>>, op: Operator) -> Response {
    let all = match state.tally.list_webhooks().await {
        Ok(w) => w,
        Err(e) => return service_error_page(&e, &op),
    };
    let body = html! {
        h1 { "Webhooks" }
        @if all.is_empty() { p.empty id="no-rows" { "No webhooks yet." } } @else {
            (table(
                html! { th { "webhook_id" } th { "url" } th { "thresholds" } th { "events" } th { "updated_at" } },
                html! {
                    @for w in &all {
                        tr.webhook-row {
                            td { a href=(format!("/admin/webhooks/{}", w.id.as_str())) { (w.id.as_str()) } }
                            td.wrap { (w.spec.url.as_str()) }
                            td { (w.spec.thresholds.iter().map(|t| format!("{t}%")).collect::<Vec<_>>().join(", ")) }
                            td.wrap { (w.spec.events.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(", ")) }
                            td { (time(w.updated_at)) }
                        }
                    }
                },
            ))
        }
    };
    respond(StatusCode::OK, page("Webhooks", "/admin/webhooks", Some(&op.signed()), body))
}

/// The query of a deliveries page.
#[derive(Debug, Default, Deserialize)]
pub struct DeliveriesParams {
    /// The cursor of the next page.
    pub after: Option<String>,
}

/// `GET /admin/webhooks/{webhook_id}`: the webhook and its deliveries, newest first.
pub async fn webhook<S: Store>(
    State(state): State<AppState<S>>,
    op: Operator,
    Path(id): Path<String>,
    query: Result<Query<DeliveriesParams>, QueryRejection>,
) -> Response {
    let bad = |e: DomainError| service_error_page(&ServiceError::Invalid(e), &op);
    let Ok(Query(p)) = query else {
        return error_page(StatusCode::BAD_REQUEST, "the query string could not be read", Some(&op.signed()));
    };
    let id = match WebhookId::parse(&id) {
        Ok(id) => id,
        Err(e) => return bad(e),
    };
    let after = match given(&p.after).map(Uuid::parse_str).transpose() {
        Ok(a) => a,
        Err(_) => return bad(DomainError::invalid("after", "must be a delivery id")),
    };
    let w = match state.tally.get_webhook(&id).await {
        Ok(w) => w,
        Err(e) => return service_error_page(&e, &op),
    };
    let (deliveries, next) = match state.tally.list_deliveries(&id, after, ADMIN_PAGE_LEN).await {
        Ok(page) => page,
        Err(e) => return service_error_page(&e, &op),
    };
    let base = format!("/admin/webhooks/{}", id.as_str());
    let next_link = next.map(|n| link(&base, &[("after", Some(&n.to_string()))]));
    let body = html! {
        h1 { "Webhook " (w.id.as_str()) }
        dl.facts {
            dt { "url" } dd { (w.spec.url.as_str()) }
            dt { "thresholds" } dd { (w.spec.thresholds.iter().map(|t| format!("{t}%")).collect::<Vec<_>>().join(", ")) }
            dt { "events" } dd { (w.spec.events.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(", ")) }
            dt { "created_at" } dd { (time(w.created_at)) }
            dt { "updated_at" } dd { (time(w.updated_at)) }
        }
        h2 { "Deliveries" }
        @if deliveries.is_empty() { p.empty id="no-rows" { "No deliveries." } } @else {
            (table(
                html! {
                    th { "created_at" } th { "id" } th { "type" } th { "tenant_id" } th { "metric_code" }
                    th { "status" } th.num { "attempts" } th.num { "last answer" } th { "last error" }
                    th { "next attempt" }
                },
                html! {
                    @for d in &deliveries {
                        tr.delivery-row data-status=(d.status.as_str()) {
                            td { (time(d.created_at)) }
                            td { (d.id.to_string()) }
                            td { (d.event_type.as_str()) }
                            td { a href=(format!("/admin/tenants/{}", d.tenant_id.as_str())) { (d.tenant_id.as_str()) } }
                            td { (d.metric_code.as_str()) }
                            td { span class=(format!("badge {}", status_class(d.status))) { (d.status.as_str()) } }
                            td.num { (d.attempts) }
                            td.num { (d.last_response_code.map(|c| c.to_string()).unwrap_or_else(|| "—".to_owned())) }
                            td.wrap { (d.last_error.as_deref().unwrap_or("")) }
                            td { (d.next_attempt_at.map(time).unwrap_or_else(|| "—".to_owned())) }
                        }
                    }
                },
            ))
            @if let Some(n) = next_link {
                nav.pager aria-label="Pages" { a href=(n) rel="next" id="next-page" { "Next page »" } }
            }
        }
        p.notice { "A failed delivery is sent again with POST /v1/webhooks/" (w.id.as_str()) "/deliveries/{id}/redeliver." }
    };
    respond(
        StatusCode::OK,
        page(&format!("Webhook {}", w.id.as_str()), "/admin/webhooks", Some(&op.signed()), body),
    )
}
