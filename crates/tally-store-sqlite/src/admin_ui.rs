//! The admin UI on SQLite: every tenant's usage records and events, filtered, sorted and
//! keyset-paginated; the tenant and metric look-ups behind its search; its password and its
//! sessions.
//!
//! The list queries are built from the filters present only, every value a bound parameter.
//! Text sorts and the tenant prefix compare bytes (SQLite's `BINARY` collation), as the
//! other adapters do.

use sqlx::sqlite::SqliteConnection;
use sqlx::{QueryBuilder, Sqlite};
use tally_domain::limits::PAGE_LEN_MAX;
use tally_domain::{AuditEntry, MetricCode, RecordedEvent, TenantId, Timestamp, UsageRecord};
use tally_store::{
    AdminSearch, AdminSession, AdminUiStore, EventListQuery, RecordCursor, RecordListQuery, RecordSort,
    SortKey, StoreError, TimeRange,
};
use uuid::Uuid;

use crate::error::store_error;
use crate::rows::{self, EventRow, RecordRow, event_columns, insert_audit, instant, micros, record_columns};
use crate::{SQLITE_BIND_PARAMS_MAX, SqliteStore, StatementLog};

/// Rows an admin list returns at most: a full page and one more, which tells the caller that
/// another page follows.
const ADMIN_LIST_LEN_MAX: u32 = PAGE_LEN_MAX + 1;

/// Metric codes `list_metric_codes` returns at most: admin-made names, never near this many.
const METRIC_CODES_LEN_MAX: i64 = 10_000;

/// The `tally_settings` key of the admin password's hash.
const ADMIN_PASSWORD_KEY: &str = "admin_password_phc";

/// Values a search may bind, leaving room for the other filters of its statement.
const SEARCH_BINDS_MAX: usize = SQLITE_BIND_PARAMS_MAX - 16;

fn list_limit(limit: u32) -> i64 {
    i64::from(limit.min(ADMIN_LIST_LEN_MAX))
}

/// Starts each condition of a `WHERE` clause: ` WHERE ` the first time, ` AND ` after. (A
/// constant `WHERE 1 = 1` would do, but it keeps SQLite 3.51 from walking the index that
/// serves the `ORDER BY`.)
struct Conditions {
    any: bool,
}

impl Conditions {
    fn new() -> Conditions {
        Conditions { any: false }
    }

    fn next<'q>(&mut self, qb: &'q mut QueryBuilder<Sqlite>) -> &'q mut QueryBuilder<Sqlite> {
        qb.push(if self.any { " AND " } else { " WHERE " });
        self.any = true;
        qb
    }
}

/// `column >= from AND column < to`, for the ends given.
fn push_range(qb: &mut QueryBuilder<Sqlite>, wh: &mut Conditions, column: &str, range: TimeRange) {
    if let Some(from) = range.from {
        wh.next(qb).push(format_args!("{column} >= ")).push_bind(micros(from));
    }
    if let Some(to) = range.to {
        wh.next(qb).push(format_args!("{column} < ")).push_bind(micros(to));
    }
}

/// `(tenant_id IN (...) OR metric_code IN (...))`, leaving out an empty list; the caller has
/// answered a search with both lists empty already.
fn push_search(
    qb: &mut QueryBuilder<Sqlite>,
    wh: &mut Conditions,
    search: &AdminSearch,
) -> Result<(), StoreError> {
    let n_binds = search.tenant_ids.len() + search.metric_codes.len();
    if n_binds > SEARCH_BINDS_MAX {
        return Err(StoreError::Other(format!("a search for {n_binds} values, at most {SEARCH_BINDS_MAX}")));
    }
    debug_assert!(n_binds > 0, "an empty search matches nothing and is answered without a query");
    wh.next(qb).push("(");
    if !search.tenant_ids.is_empty() {
        qb.push("tenant_id IN (");
        let mut ids = qb.separated(", ");
        for tenant in &search.tenant_ids {
            ids.push_bind(tenant.as_str().to_owned());
        }
        qb.push(")");
    }
    if !search.tenant_ids.is_empty() && !search.metric_codes.is_empty() {
        qb.push(" OR ");
    }
    if !search.metric_codes.is_empty() {
        qb.push("metric_code IN (");
        let mut codes = qb.separated(", ");
        for metric in &search.metric_codes {
            codes.push_bind(metric.as_str().to_owned());
        }
        qb.push(")");
    }
    qb.push(")");
    Ok(())
}

/// Whether the search, if any, can match nothing (both lists empty).
fn matches_nothing(search: Option<&AdminSearch>) -> bool {
    search.is_some_and(|s| s.tenant_ids.is_empty() && s.metric_codes.is_empty())
}

/// `(column, id) < (key, id)` (`>` when ascending): strictly after the cursor in the list's
/// order. A cursor whose key is not of the sort's kind is an error.
fn push_record_cursor(
    qb: &mut QueryBuilder<Sqlite>,
    wh: &mut Conditions,
    sort: RecordSort,
    descending: bool,
    cursor: &RecordCursor,
) -> Result<(), StoreError> {
    let op = if descending { "<" } else { ">" };
    wh.next(qb).push(format_args!("({}, id) {op} (", sort.column()));
    match (sort, &cursor.key) {
        (RecordSort::CreatedAt | RecordSort::PeriodEnd, SortKey::Time(at)) => qb.push_bind(micros(*at)),
        (RecordSort::CurrentUsage, SortKey::Int(n)) => qb.push_bind(*n),
        (RecordSort::TenantId | RecordSort::MetricCode, SortKey::Text(text)) => qb.push_bind(text.clone()),
        (sort, key) => {
            return Err(StoreError::Other(format!(
                "a cursor at {key:?} cannot continue a list sorted by {sort:?}"
            )));
        }
    };
    qb.push(", ").push_bind(cursor.id.to_string()).push(")");
    Ok(())
}

/// One page of the records list: `SELECT ... LIMIT ?` appended to `qb`.
fn push_records_page(qb: &mut QueryBuilder<Sqlite>, query: &RecordListQuery) -> Result<(), StoreError> {
    qb.push(concat!("SELECT ", record_columns!(), " FROM quota_usage_record"));
    // Newest first is the default order: a walk down the created index that stops after the
    // page (as for events, named, and not for a search of tenants only).
    let tenants_only = query.search.as_ref().is_some_and(|s| s.metric_codes.is_empty());
    let by_created_index = query.sort == RecordSort::CreatedAt && !tenants_only;
    if by_created_index {
        qb.push(" INDEXED BY quota_usage_record_created_idx");
    }
    let mut wh = Conditions::new();
    if let Some(metric) = &query.metric_code {
        wh.next(qb).push("metric_code = ").push_bind(metric.as_str().to_owned());
    }
    push_range(qb, &mut wh, "period_end", query.period_end);
    push_range(qb, &mut wh, "created_at", query.created_at);
    if let Some(search) = &query.search {
        push_search(qb, &mut wh, search)?;
    }
    if let Some(cursor) = &query.after {
        if by_created_index && let SortKey::Time(at) = cursor.key {
            // Bounds the index range; the row-value term below is the exact keyset order.
            let op = if query.descending { "<=" } else { ">=" };
            wh.next(qb).push(format_args!("created_at {op} ")).push_bind(micros(at));
        }
        push_record_cursor(qb, &mut wh, query.sort, query.descending, cursor)?;
    }
    let direction = if query.descending { "DESC" } else { "ASC" };
    qb.push(format_args!(" ORDER BY {} {direction}, id {direction} LIMIT ", query.sort.column()));
    qb.push_bind(list_limit(query.limit));
    Ok(())
}

/// One page of the events list, newest first: `SELECT ... LIMIT ?` appended to `qb`.
///
/// The page is a walk down `quota_usage_event_created_idx` that stops once the page is full,
/// named because without statistics SQLite 3.51 would rather read every event matching a
/// metric and sort them all. The one exception is a search for tenants only: a tenant's
/// events are usually a small part of all events, so they are read by the tenant index and
/// sorted, where a walk down the created index might pass every other tenant's events first.
fn push_events_page(qb: &mut QueryBuilder<Sqlite>, query: &EventListQuery) -> Result<(), StoreError> {
    let tenants_only = query.search.as_ref().is_some_and(|s| s.metric_codes.is_empty());
    qb.push(concat!("SELECT ", event_columns!(), " FROM quota_usage_event"));
    if !tenants_only {
        qb.push(" INDEXED BY quota_usage_event_created_idx");
    }
    let mut wh = Conditions::new();
    if let Some(metric) = &query.metric_code {
        wh.next(qb).push("metric_code = ").push_bind(metric.as_str().to_owned());
    }
    push_range(qb, &mut wh, "created_at", query.created_at);
    if let Some(search) = &query.search {
        push_search(qb, &mut wh, search)?;
    }
    if let Some((created_at, id)) = query.after {
        // The first term bounds the index range; the second is the exact keyset order.
        // UUID v7 text compares in time order: fixed-width lowercase hex.
        let at = micros(created_at);
        wh.next(qb).push("created_at <= ").push_bind(at);
        qb.push(" AND (created_at, id) < (").push_bind(at).push(", ").push_bind(id.to_string()).push(")");
    }
    qb.push(" ORDER BY created_at DESC, id DESC LIMIT ").push_bind(list_limit(query.limit));
    Ok(())
}

/// What a tenant prefix matches, as a range of the primary key.
#[derive(Debug, PartialEq, Eq)]
enum PrefixRange {
    /// Every tenant (the empty prefix).
    All,
    /// No tenant: the prefix holds a character no tenant id holds.
    Nothing,
    /// The ids in `[prefix, end)` by bytes: exactly those that start with the prefix.
    Below(String),
}

/// Tenant ids are ASCII `[A-Za-z0-9_.-]`, all below 0x7F, so the ids that start with a prefix
/// of those characters are those from the prefix up to (not including) the prefix with its
/// last byte raised by one. Being a range of the primary key, the search reads only the
/// matches, and no character of the prefix means anything but itself (not even `%` or `_`,
/// as `LIKE` would have them, nor upper case for lower case).
fn prefix_range(prefix: &str) -> PrefixRange {
    let Some(last) = prefix.bytes().last() else { return PrefixRange::All };
    let tenant_byte = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
    if !prefix.bytes().all(tenant_byte) {
        return PrefixRange::Nothing;
    }
    let mut end = prefix[..prefix.len() - 1].to_owned();
    end.push(char::from(last + 1));
    PrefixRange::Below(end)
}

/// The ids of the tenants whose id starts with `prefix`: `SELECT ... LIMIT ?` appended to
/// `qb`; false (and nothing appended) when no tenant id can start with `prefix`.
fn push_tenant_prefix(qb: &mut QueryBuilder<Sqlite>, prefix: &str, limit: u32) -> bool {
    qb.push("SELECT tenant_id FROM tally_tenant");
    match prefix_range(prefix) {
        PrefixRange::Nothing => return false,
        PrefixRange::All => {}
        PrefixRange::Below(end) => {
            qb.push(" WHERE tenant_id >= ").push_bind(prefix.to_owned());
            qb.push(" AND tenant_id < ").push_bind(end);
        }
    }
    qb.push(" ORDER BY tenant_id LIMIT ").push_bind(list_limit(limit));
    true
}

/// A `tally_admin_session` row: token hash, CSRF token, principal, created_at, expires_at.
type SessionRow = (String, String, String, i64, i64);

fn session(row: SessionRow) -> Result<AdminSession, StoreError> {
    let (token_hash, csrf_token, principal, created_at, expires_at) = row;
    Ok(AdminSession {
        token_hash,
        csrf_token,
        principal,
        created_at: instant("created_at", created_at)?,
        expires_at: instant("expires_at", expires_at)?,
    })
}

/// Stores the password hash unless it is the stored one already, and audits a change.
async fn set_admin_password_in_tx(
    log: &StatementLog,
    conn: &mut SqliteConnection,
    phc_hash: &str,
    audit: &AuditEntry,
) -> Result<(), StoreError> {
    let done = log
        .query(
            "INSERT INTO tally_settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE \
             SET value = excluded.value WHERE tally_settings.value IS NOT excluded.value",
        )
        .bind(ADMIN_PASSWORD_KEY)
        .bind(phc_hash)
        .execute(&mut *conn)
        .await
        .map_err(store_error)?;
    if done.rows_affected() == 0 {
        return Ok(());
    }
    insert_audit(log, conn, audit).await
}

impl AdminUiStore for SqliteStore {
    async fn list_records_admin(&self, query: &RecordListQuery) -> Result<Vec<UsageRecord>, StoreError> {
        if matches_nothing(query.search.as_ref()) {
            return Ok(Vec::new());
        }
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("");
        push_records_page(&mut qb, query)?;
        let found: Vec<RecordRow> =
            self.log.built_as(&mut qb).persistent(false).fetch_all(&self.pool).await.map_err(store_error)?;
        found.into_iter().map(rows::record).collect()
    }

    async fn list_events_admin(&self, query: &EventListQuery) -> Result<Vec<RecordedEvent>, StoreError> {
        if matches_nothing(query.search.as_ref()) {
            return Ok(Vec::new());
        }
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("");
        push_events_page(&mut qb, query)?;
        let found: Vec<EventRow> =
            self.log.built_as(&mut qb).persistent(false).fetch_all(&self.pool).await.map_err(store_error)?;
        found.into_iter().map(rows::event).collect()
    }

    async fn find_event(&self, tenant: &TenantId, id: Uuid) -> Result<Option<RecordedEvent>, StoreError> {
        rows::event_by_id(&self.log, &self.pool, tenant, id).await
    }

    async fn list_tenant_ids_by_prefix(&self, prefix: &str, limit: u32) -> Result<Vec<TenantId>, StoreError> {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("");
        if !push_tenant_prefix(&mut qb, prefix, limit) {
            return Ok(Vec::new());
        }
        let found: Vec<(String,)> =
            self.log.built_as(&mut qb).persistent(false).fetch_all(&self.pool).await.map_err(store_error)?;
        found.iter().map(|(id,)| Ok(TenantId::parse(id)?)).collect()
    }

    async fn list_metric_codes(&self) -> Result<Vec<MetricCode>, StoreError> {
        let found: Vec<Option<String>> = self
            .log
            .query_scalar(
                "SELECT json_extract(l.value, '$.metric_code') FROM tally_plan_version AS v, json_each(v.limits) AS l \
                 UNION SELECT json_extract(l.value, '$.metric_code') FROM tally_plan AS p, json_each(p.limits) AS l \
                 UNION SELECT metric_code FROM tally_override \
                 ORDER BY 1 LIMIT ?1",
            )
            .bind(METRIC_CODES_LEN_MAX)
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        found
            .into_iter()
            .map(|code| match code {
                Some(code) => Ok(MetricCode::parse(&code)?),
                None => Err(StoreError::Corrupt("a plan limit without a metric_code".to_owned())),
            })
            .collect()
    }

    async fn set_admin_password(&self, phc_hash: &str, audit: &AuditEntry) -> Result<(), StoreError> {
        let mut w = self.begin_write().await?;
        let outcome = set_admin_password_in_tx(&self.log, w.conn(), phc_hash, audit).await;
        w.finish(outcome).await
    }

    async fn find_admin_password(&self) -> Result<Option<String>, StoreError> {
        self.log
            .query_scalar("SELECT value FROM tally_settings WHERE key = ?1")
            .bind(ADMIN_PASSWORD_KEY)
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)
    }

    async fn insert_admin_session(&self, session: &AdminSession) -> Result<(), StoreError> {
        let _writer = self.lock_writer().await?;
        self.log
            .query(
                "INSERT INTO tally_admin_session (token_hash, csrf_token, principal, created_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .bind(session.token_hash.as_str())
            .bind(session.csrf_token.as_str())
            .bind(session.principal.as_str())
            .bind(micros(session.created_at))
            .bind(micros(session.expires_at))
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn find_admin_session(
        &self,
        token_hash: &str,
        now: Timestamp,
    ) -> Result<Option<AdminSession>, StoreError> {
        let found: Option<SessionRow> = self
            .log
            .query_as(
                "SELECT token_hash, csrf_token, principal, created_at, expires_at FROM tally_admin_session \
                 WHERE token_hash = ?1 AND expires_at > ?2",
            )
            .bind(token_hash)
            .bind(micros(now))
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?;
        found.map(session).transpose()
    }

    async fn delete_admin_session(&self, token_hash: &str) -> Result<(), StoreError> {
        let _writer = self.lock_writer().await?;
        self.log
            .query("DELETE FROM tally_admin_session WHERE token_hash = ?1")
            .bind(token_hash)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn delete_expired_admin_sessions(&self, now: Timestamp) -> Result<u64, StoreError> {
        let _writer = self.lock_writer().await?;
        let done = self
            .log
            .query("DELETE FROM tally_admin_session WHERE expires_at <= ?1")
            .bind(micros(now))
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use tally_contract::{metric, now, tenant};

    use super::*;

    #[test]
    fn a_prefix_is_a_range_of_ids_or_nothing_when_no_id_can_start_with_it() {
        assert_eq!(prefix_range(""), PrefixRange::All);
        assert_eq!(prefix_range("acme"), PrefixRange::Below("acmf".to_owned()));
        assert_eq!(prefix_range("acme_"), PrefixRange::Below("acme`".to_owned()));
        assert_eq!(prefix_range("a-"), PrefixRange::Below("a.".to_owned()));
        assert_eq!(prefix_range("Z"), PrefixRange::Below("[".to_owned()));
        assert_eq!(prefix_range("z"), PrefixRange::Below("{".to_owned()));
        for nothing in ["%", "ac%", "a b", "é", "a\\", "a'", "\u{7f}"] {
            assert_eq!(prefix_range(nothing), PrefixRange::Nothing, "{nothing:?}");
        }
    }

    /// SQLite's plan for the statement in `qb` (which starts with `EXPLAIN QUERY PLAN`).
    async fn plan_of(store: &SqliteStore, mut qb: QueryBuilder<Sqlite>) -> String {
        let steps: Vec<(i64, i64, i64, String)> = qb.build_query_as().fetch_all(store.pool()).await.unwrap();
        steps.into_iter().map(|(_, _, _, detail)| detail).collect::<Vec<_>>().join("\n")
    }

    fn events_query(limit: u32) -> EventListQuery {
        EventListQuery {
            metric_code: None,
            created_at: TimeRange::default(),
            search: None,
            after: None,
            limit,
        }
    }

    #[tokio::test]
    async fn event_pages_walk_the_created_index_without_sorting() {
        let store = SqliteStore::open_temp_file().await.unwrap();
        let after = Some((now(), Uuid::now_v7()));
        let queries = [
            events_query(1_001),
            EventListQuery { after, ..events_query(51) },
            EventListQuery {
                metric_code: Some(metric("api_calls")),
                created_at: TimeRange { from: Some(now()), to: Some(now()) },
                after,
                ..events_query(51)
            },
            EventListQuery {
                search: Some(AdminSearch {
                    tenant_ids: vec![tenant("acme")],
                    metric_codes: vec![metric("a")],
                }),
                after,
                ..events_query(51)
            },
            EventListQuery {
                search: Some(AdminSearch {
                    tenant_ids: vec![],
                    metric_codes: vec![metric("a"), metric("b")],
                }),
                ..events_query(51)
            },
        ];
        for query in queries {
            let mut qb = QueryBuilder::new("EXPLAIN QUERY PLAN ");
            push_events_page(&mut qb, &query).unwrap();
            let plan = plan_of(&store, qb).await;
            assert!(plan.contains("quota_usage_event_created_idx"), "{query:?}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "no sort step: {query:?}: {plan}");
        }
        // With a cursor, the walk starts at the cursor.
        let mut qb = QueryBuilder::new("EXPLAIN QUERY PLAN ");
        push_events_page(&mut qb, &EventListQuery { after, ..events_query(51) }).unwrap();
        assert!(plan_of(&store, qb).await.contains("quota_usage_event_created_idx (created_at<?)"));
    }

    #[tokio::test]
    async fn a_search_for_tenants_only_reads_their_events_by_a_tenant_index() {
        let store = SqliteStore::open_temp_file().await.unwrap();
        let query = EventListQuery {
            search: Some(AdminSearch {
                tenant_ids: vec![tenant("acme"), tenant("beta")],
                metric_codes: vec![],
            }),
            after: Some((now(), Uuid::now_v7())),
            ..events_query(51)
        };
        let mut qb = QueryBuilder::new("EXPLAIN QUERY PLAN ");
        push_events_page(&mut qb, &query).unwrap();
        let plan = plan_of(&store, qb).await;
        assert!(
            plan.contains("SEARCH quota_usage_event USING INDEX") && plan.contains("(tenant_id=?"),
            "{plan}"
        );
    }

    #[tokio::test]
    async fn a_tenant_prefix_is_one_range_of_the_primary_key() {
        let store = SqliteStore::open_temp_file().await.unwrap();
        let mut qb = QueryBuilder::new("EXPLAIN QUERY PLAN ");
        assert!(push_tenant_prefix(&mut qb, "acme_", 10));
        let plan = plan_of(&store, qb).await;
        assert!(plan.contains("SEARCH tally_tenant USING COVERING INDEX"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }
}
