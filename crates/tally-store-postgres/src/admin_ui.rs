//! The admin UI on PostgreSQL: every tenant's usage records and events, filtered, sorted and
//! keyset-paginated; the tenant and metric look-ups behind its search; its password and its
//! sessions.
//!
//! The list statements are built from the filters present only, every value a bound
//! parameter. Text is sorted and compared by its bytes (`COLLATE "C"`), whatever the
//! database's collation, as the other adapters do.
//!
//! In schema tenancy a list reads the tenants' own tables: a `UNION ALL` with one arm per
//! schema, each arm with the same `WHERE`, `ORDER BY` and `LIMIT` (so each walks its own
//! indexes and stops after a page), under one outer `ORDER BY ... LIMIT`. A search for
//! tenants only reads those tenants' schemas; any other list reads every tenant's schema,
//! at most `UNION_ARMS_MAX` schemas per statement, the pages of the statements merged here.
//! Schema names come only from the tenants' internal ids.

use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, Postgres};
use tally_domain::quota::schema_name_for;
use tally_domain::{AuditEntry, MetricCode, RecordedEvent, TenantId, Timestamp, UsageRecord};
use tally_store::{
    AdminSearch, AdminSession, AdminUiStore, EventListQuery, RecordListQuery, RecordSort, SortKey,
    StoreError, TimeRange,
};
use uuid::Uuid;

use crate::admin::{WHOLE_LIST_LEN_MAX, insert_audit};
use crate::migrate::list_tenant_schemas;
use crate::rows::{EVENT_COLUMNS, RECORD_COLUMNS, event_from_row, get, map_err, record_from_row};
use crate::scope::{Scope, internal_id_from_db};
use crate::usage::list_limit;
use crate::{PgStore, Tenancy};

/// Tenant schemas one list statement reads at most; more are read by several statements,
/// whose pages are merged. It bounds the statement's text and its planning time.
pub(crate) const UNION_ARMS_MAX: usize = 100;

/// The `tally_settings` key of the admin password's hash.
const ADMIN_PASSWORD_KEY: &str = "admin_password_phc";

/// A value bound to a dynamic statement.
enum Arg {
    Text(String),
    Texts(Vec<String>),
    Time(Timestamp),
    Int(i64),
    Id(Uuid),
}

/// The values bound to a dynamic statement, in placeholder order.
#[derive(Default)]
struct Args(Vec<Arg>);

impl Args {
    /// Binds `arg` and returns its placeholder (`$n`).
    fn push(&mut self, arg: Arg) -> String {
        self.0.push(arg);
        format!("${}", self.0.len())
    }

    fn bind(self, mut query: Query<'_, Postgres, PgArguments>) -> Query<'_, Postgres, PgArguments> {
        for arg in self.0 {
            query = match arg {
                Arg::Text(text) => query.bind(text),
                Arg::Texts(texts) => query.bind(texts),
                Arg::Time(at) => query.bind(at),
                Arg::Int(n) => query.bind(n),
                Arg::Id(id) => query.bind(id),
            };
        }
        query
    }
}

/// ` WHERE a AND b ...`, or nothing.
fn where_clause(conditions: &[String]) -> String {
    if conditions.is_empty() { String::new() } else { format!(" WHERE {}", conditions.join(" AND ")) }
}

fn push_range(conditions: &mut Vec<String>, args: &mut Args, column: &str, range: TimeRange) {
    if let Some(from) = range.from {
        conditions.push(format!("{column} >= {}", args.push(Arg::Time(from))));
    }
    if let Some(to) = range.to {
        conditions.push(format!("{column} < {}", args.push(Arg::Time(to))));
    }
}

/// `(tenant_id = ANY($n) OR metric_code = ANY($m))`, leaving out an empty list; the caller has
/// answered a search with both lists empty already.
fn search_condition(search: &AdminSearch, args: &mut Args) -> String {
    debug_assert!(!matches_nothing(Some(search)), "an empty search is answered without a query");
    let mut either = Vec::with_capacity(2);
    if !search.tenant_ids.is_empty() {
        let ids = search.tenant_ids.iter().map(|t| t.as_str().to_owned()).collect();
        either.push(format!("tenant_id = ANY({}::text[])", args.push(Arg::Texts(ids))));
    }
    if !search.metric_codes.is_empty() {
        let codes = search.metric_codes.iter().map(|m| m.as_str().to_owned()).collect();
        either.push(format!("metric_code = ANY({}::text[])", args.push(Arg::Texts(codes))));
    }
    format!("({})", either.join(" OR "))
}

/// Whether the search, if any, can match nothing (both lists empty).
fn matches_nothing(search: Option<&AdminSearch>) -> bool {
    search.is_some_and(|s| s.tenant_ids.is_empty() && s.metric_codes.is_empty())
}

/// The expression a records list is sorted by: text by its bytes, as SQLite sorts it.
fn sort_expression(sort: RecordSort) -> String {
    match sort {
        RecordSort::TenantId | RecordSort::MetricCode => format!("{} COLLATE \"C\"", sort.column()),
        _ => sort.column().to_owned(),
    }
}

/// A cursor's key as a bound value; a key that is not of the sort's kind is an error.
fn cursor_key(sort: RecordSort, key: &SortKey) -> Result<Arg, StoreError> {
    match (sort, key) {
        (RecordSort::CreatedAt | RecordSort::PeriodEnd, SortKey::Time(at)) => Ok(Arg::Time(*at)),
        (RecordSort::CurrentUsage, SortKey::Int(n)) => Ok(Arg::Int(*n)),
        (RecordSort::TenantId | RecordSort::MetricCode, SortKey::Text(text)) => Ok(Arg::Text(text.clone())),
        (sort, key) => {
            Err(StoreError::Other(format!("a cursor at {key:?} cannot continue a list sorted by {sort:?}")))
        }
    }
}

/// The `WHERE` clause of a records page (shared by every arm of a union).
fn records_where(query: &RecordListQuery, args: &mut Args) -> Result<String, StoreError> {
    let mut conditions = Vec::new();
    if let Some(metric) = &query.metric_code {
        conditions.push(format!("metric_code = {}", args.push(Arg::Text(metric.as_str().to_owned()))));
    }
    push_range(&mut conditions, args, "period_end", query.period_end);
    push_range(&mut conditions, args, "created_at", query.created_at);
    if let Some(search) = &query.search {
        conditions.push(search_condition(search, args));
    }
    if let Some(cursor) = &query.after {
        let key = cursor_key(query.sort, &cursor.key)?;
        let op = if query.descending { "<" } else { ">" };
        let (key, id) = (args.push(key), args.push(Arg::Id(cursor.id)));
        conditions.push(format!("({}, id) {op} ({key}, {id})", sort_expression(query.sort)));
    }
    Ok(where_clause(&conditions))
}

/// The `WHERE` clause of an events page (shared by every arm of a union).
fn events_where(query: &EventListQuery, args: &mut Args) -> String {
    let mut conditions = Vec::new();
    if let Some(metric) = &query.metric_code {
        conditions.push(format!("metric_code = {}", args.push(Arg::Text(metric.as_str().to_owned()))));
    }
    push_range(&mut conditions, args, "created_at", query.created_at);
    if let Some(search) = &query.search {
        conditions.push(search_condition(search, args));
    }
    if let Some((created_at, id)) = query.after {
        let (at, id) = (args.push(Arg::Time(created_at)), args.push(Arg::Id(id)));
        conditions.push(format!("(created_at, id) < ({at}, {id})"));
    }
    where_clause(&conditions)
}

/// One page over `tables`: a plain `SELECT` for one table, else a `UNION ALL` of one arm per
/// table, each with the same `WHERE`, `ORDER BY` and `LIMIT`, under one outer `ORDER BY ...
/// LIMIT`. `order` names output columns only, so it serves inside and outside.
fn page_sql(columns: &str, tables: &[String], where_sql: &str, order: &str, limit: &str) -> String {
    let arm =
        |table: &String| format!("SELECT {columns} FROM {table}{where_sql} ORDER BY {order} LIMIT {limit}");
    match tables {
        [table] => arm(table),
        _ => {
            let arms: Vec<String> = tables.iter().map(|table| format!("({})", arm(table))).collect();
            format!(
                "SELECT {columns} FROM ({}) AS u ORDER BY {order} LIMIT {limit}",
                arms.join(" UNION ALL ")
            )
        }
    }
}

/// `column DESC, id DESC` or `column ASC, id ASC`.
fn order_by(expression: &str, descending: bool) -> String {
    let direction = if descending { "DESC" } else { "ASC" };
    format!("{expression} {direction}, id {direction}")
}

impl PgStore {
    /// The schemas an admin list reads: the base schema in shared tenancy; in schema tenancy
    /// those of the searched tenants when the search names tenants only, else every
    /// tenant's. Schema names come from internal ids only.
    async fn admin_scopes(&self, search: Option<&AdminSearch>) -> Result<Vec<Scope>, StoreError> {
        if self.tenancy() == Tenancy::Shared {
            return Ok(vec![Scope::Base]);
        }
        let mut conn = self.pool().acquire().await.map_err(map_err)?;
        let schemas = match search {
            Some(search) if search.metric_codes.is_empty() => {
                let ids: Vec<&str> = search.tenant_ids.iter().map(TenantId::as_str).collect();
                let rows = self
                    .log
                    .query(
                        "SELECT internal_id FROM tally_tenant WHERE tenant_id = ANY($1) ORDER BY tenant_id",
                    )
                    .bind(ids)
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(map_err)?;
                let mut schemas = Vec::with_capacity(rows.len());
                for row in &rows {
                    schemas.push(schema_name_for(internal_id_from_db(get(row, "internal_id")?)));
                }
                schemas
            }
            _ => list_tenant_schemas(&self.log, &mut conn)
                .await?
                .into_iter()
                .map(|(_, schema)| schema)
                .collect(),
        };
        Ok(schemas.into_iter().map(Scope::Tenant).collect())
    }

    /// Runs one page statement per group of at most `arms_max` tables and returns every row
    /// (the caller merges the pages).
    async fn page_rows(
        &self,
        tables: &[String],
        arms_max: usize,
        build: impl Fn(&[String]) -> Result<(String, Args), StoreError>,
    ) -> Result<Vec<PgRow>, StoreError> {
        let mut rows = Vec::new();
        for group in tables.chunks(arms_max.max(1)) {
            let (sql, args) = build(group)?;
            // Planned at each execution for the tables as they are (see the crate docs, *Fresh plans*).
            let query = args.bind(self.log.query(AssertSqlSafe(sql)).persistent(false));
            rows.extend(query.fetch_all(self.pool()).await.map_err(map_err)?);
        }
        Ok(rows)
    }
}

/// A `tally_admin_session` row.
fn session_from_row(row: &PgRow) -> Result<AdminSession, StoreError> {
    Ok(AdminSession {
        token_hash: get(row, "token_hash")?,
        csrf_token: get(row, "csrf_token")?,
        principal: get(row, "principal")?,
        created_at: get(row, "created_at")?,
        expires_at: get(row, "expires_at")?,
    })
}

impl PgStore {
    /// `list_records_admin`, reading at most `arms_max` schemas per statement.
    async fn list_records_in(
        &self,
        query: &RecordListQuery,
        arms_max: usize,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        // A mismatched cursor is refused before anything else, as in the other adapters.
        if let Some(cursor) = &query.after {
            cursor_key(query.sort, &cursor.key)?;
        }
        if matches_nothing(query.search.as_ref()) {
            return Ok(Vec::new());
        }
        let scopes = self.admin_scopes(query.search.as_ref()).await?;
        let tables: Vec<String> = scopes.iter().map(Scope::records).collect();
        let order = order_by(&sort_expression(query.sort), query.descending);
        let rows = self
            .page_rows(&tables, arms_max, |group| {
                let mut args = Args::default();
                let where_sql = records_where(query, &mut args)?;
                let limit = args.push(Arg::Int(list_limit(query.limit)));
                Ok((page_sql(RECORD_COLUMNS, group, &where_sql, &order, &limit), args))
            })
            .await?;
        let mut records = rows.iter().map(record_from_row).collect::<Result<Vec<_>, _>>()?;
        if tables.len() > arms_max {
            records.sort_by(|a, b| {
                let order = (query.sort.key_of(a), a.id).cmp(&(query.sort.key_of(b), b.id));
                if query.descending { order.reverse() } else { order }
            });
            records.truncate(usize::try_from(list_limit(query.limit)).unwrap_or(usize::MAX));
        }
        Ok(records)
    }

    /// `list_events_admin`, reading at most `arms_max` schemas per statement.
    async fn list_events_in(
        &self,
        query: &EventListQuery,
        arms_max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if matches_nothing(query.search.as_ref()) {
            return Ok(Vec::new());
        }
        let scopes = self.admin_scopes(query.search.as_ref()).await?;
        let tables: Vec<String> = scopes.iter().map(Scope::events).collect();
        let order = order_by("created_at", true);
        let rows = self
            .page_rows(&tables, arms_max, |group| {
                let mut args = Args::default();
                let where_sql = events_where(query, &mut args);
                let limit = args.push(Arg::Int(list_limit(query.limit)));
                Ok((page_sql(EVENT_COLUMNS, group, &where_sql, &order, &limit), args))
            })
            .await?;
        let mut events = rows.iter().map(event_from_row).collect::<Result<Vec<_>, _>>()?;
        if tables.len() > arms_max {
            events.sort_by_key(|e| std::cmp::Reverse((e.event.created_at, e.event.id)));
            events.truncate(usize::try_from(list_limit(query.limit)).unwrap_or(usize::MAX));
        }
        Ok(events)
    }
}

impl AdminUiStore for PgStore {
    async fn list_records_admin(&self, query: &RecordListQuery) -> Result<Vec<UsageRecord>, StoreError> {
        self.list_records_in(query, UNION_ARMS_MAX).await
    }

    async fn list_events_admin(&self, query: &EventListQuery) -> Result<Vec<RecordedEvent>, StoreError> {
        self.list_events_in(query, UNION_ARMS_MAX).await
    }

    async fn find_event(&self, tenant: &TenantId, id: Uuid) -> Result<Option<RecordedEvent>, StoreError> {
        let Some(scope) = self.scope_of(self.pool(), tenant).await? else { return Ok(None) };
        crate::rows::event_by_id(&self.log, self.pool(), &scope, tenant, id).await
    }

    async fn list_tenant_ids_by_prefix(&self, prefix: &str, limit: u32) -> Result<Vec<TenantId>, StoreError> {
        // starts_with compares characters, never patterns (no % or _) and never by a
        // case-folding collation; the order is by bytes, as in the other adapters.
        let ids: Vec<String> = self
            .log
            .query_scalar(
                "SELECT tenant_id FROM tally_tenant WHERE starts_with(tenant_id, $1)
                  ORDER BY tenant_id COLLATE \"C\" LIMIT $2",
            )
            .bind(prefix)
            .bind(list_limit(limit))
            .fetch_all(self.pool())
            .await
            .map_err(map_err)?;
        ids.iter().map(|id| TenantId::parse(id).map_err(StoreError::from)).collect()
    }

    async fn list_metric_codes(&self) -> Result<Vec<MetricCode>, StoreError> {
        let codes: Vec<Option<String>> = self
            .log
            .query_scalar(
                "SELECT code FROM (
                    SELECT l->>'metric_code' AS code FROM tally_plan_version AS v, jsonb_array_elements(v.limits) AS l
                    UNION SELECT l->>'metric_code' FROM tally_plan AS p, jsonb_array_elements(p.limits) AS l
                    UNION SELECT metric_code FROM tally_override
                 ) AS m ORDER BY code COLLATE \"C\" LIMIT $1",
            )
            .bind(WHOLE_LIST_LEN_MAX)
            .fetch_all(self.pool())
            .await
            .map_err(map_err)?;
        codes
            .into_iter()
            .map(|code| match code {
                Some(code) => MetricCode::parse(&code).map_err(StoreError::from),
                None => Err(StoreError::Corrupt("a plan limit without a metric_code".to_owned())),
            })
            .collect()
    }

    async fn set_admin_password(&self, phc_hash: &str, audit: &AuditEntry) -> Result<(), StoreError> {
        let mut tx = self.log.begin(self.pool(), "BEGIN").await.map_err(map_err)?;
        let changed = self
            .log
            .query(
                "INSERT INTO tally_settings AS s (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value
                  WHERE s.value IS DISTINCT FROM EXCLUDED.value",
            )
            .bind(ADMIN_PASSWORD_KEY)
            .bind(phc_hash)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        if changed.rows_affected() == 0 {
            self.log.rollback(tx).await.map_err(map_err)?;
            return Ok(());
        }
        insert_audit(&self.log, &mut tx, audit).await?;
        self.log.commit(tx).await.map_err(map_err)
    }

    async fn find_admin_password(&self) -> Result<Option<String>, StoreError> {
        self.log
            .query_scalar::<String>("SELECT value FROM tally_settings WHERE key = $1")
            .bind(ADMIN_PASSWORD_KEY)
            .fetch_optional(self.pool())
            .await
            .map_err(map_err)
    }

    async fn insert_admin_session(&self, session: &AdminSession) -> Result<(), StoreError> {
        self.log
            .query(
                "INSERT INTO tally_admin_session (token_hash, csrf_token, principal, created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(session.token_hash.as_str())
            .bind(session.csrf_token.as_str())
            .bind(session.principal.as_str())
            .bind(session.created_at)
            .bind(session.expires_at)
            .execute(self.pool())
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn find_admin_session(
        &self,
        token_hash: &str,
        now: Timestamp,
    ) -> Result<Option<AdminSession>, StoreError> {
        let row = self
            .log
            .query(
                "SELECT token_hash, csrf_token, principal, created_at, expires_at FROM tally_admin_session
                  WHERE token_hash = $1 AND expires_at > $2",
            )
            .bind(token_hash)
            .bind(now)
            .fetch_optional(self.pool())
            .await
            .map_err(map_err)?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn delete_admin_session(&self, token_hash: &str) -> Result<(), StoreError> {
        self.log
            .query("DELETE FROM tally_admin_session WHERE token_hash = $1")
            .bind(token_hash)
            .execute(self.pool())
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn delete_expired_admin_sessions(&self, now: Timestamp) -> Result<u64, StoreError> {
        let done = self
            .log
            .query("DELETE FROM tally_admin_session WHERE expires_at <= $1")
            .bind(now)
            .execute(self.pool())
            .await
            .map_err(map_err)?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tally_contract::{admin_events, admin_records, metric, now, tenant};
    use tally_store::RecordCursor;

    use super::*;

    fn records_query(sort: RecordSort, descending: bool, limit: u32) -> RecordListQuery {
        RecordListQuery {
            metric_code: None,
            period_end: TimeRange::default(),
            created_at: TimeRange::default(),
            search: None,
            sort,
            descending,
            after: None,
            limit,
        }
    }

    #[tokio::test]
    async fn pages_read_by_several_statements_merge_into_the_pages_of_one() {
        let store = PgStore::open_test(Tenancy::Schema).await;
        // Three tenants' schemas, read one or two per statement.
        admin_records(&store).await;
        admin_events(&store).await;
        let everything = Some(AdminSearch { tenant_ids: vec![], metric_codes: vec![metric("api_calls")] });
        for sort in [RecordSort::CreatedAt, RecordSort::CurrentUsage, RecordSort::TenantId] {
            for descending in [true, false] {
                for search in [None, everything.clone()] {
                    let mut query = records_query(sort, descending, 5);
                    query.search = search;
                    let one = store.list_records_in(&query, UNION_ARMS_MAX).await.unwrap();
                    assert_eq!(one.len(), 5);
                    query.after = Some(RecordCursor { key: sort.key_of(&one[1]), id: one[1].id });
                    let after_one = store.list_records_in(&query, UNION_ARMS_MAX).await.unwrap();
                    query.after = None;
                    for arms_max in [1, 2] {
                        assert_eq!(store.list_records_in(&query, arms_max).await.unwrap(), one, "{sort:?}");
                        query.after = Some(RecordCursor { key: sort.key_of(&one[1]), id: one[1].id });
                        assert_eq!(store.list_records_in(&query, arms_max).await.unwrap(), after_one);
                        query.after = None;
                    }
                }
            }
        }
        let mut query = EventListQuery {
            metric_code: None,
            created_at: TimeRange::default(),
            search: None,
            after: None,
            limit: 4,
        };
        let one = store.list_events_in(&query, UNION_ARMS_MAX).await.unwrap();
        assert_eq!(one.len(), 4);
        for arms_max in [1, 2] {
            assert_eq!(store.list_events_in(&query, arms_max).await.unwrap(), one);
        }
        query.after = Some((one[3].event.created_at, one[3].event.id));
        let next = store.list_events_in(&query, UNION_ARMS_MAX).await.unwrap();
        assert_eq!(store.list_events_in(&query, 2).await.unwrap(), next);
        assert!(
            next.iter()
                .all(|e| (e.event.created_at, e.event.id) < (one[3].event.created_at, one[3].event.id))
        );
    }

    #[test]
    fn one_table_is_a_plain_select_and_several_a_union_of_limited_arms() {
        let one = page_sql("id", &["quota_usage_event".to_owned()], " WHERE a = $1", "created_at DESC", "$2");
        assert_eq!(one, "SELECT id FROM quota_usage_event WHERE a = $1 ORDER BY created_at DESC LIMIT $2");
        let tables = ["\"tenant_00000000000000aa\".t".to_owned(), "\"tenant_00000000000000bb\".t".to_owned()];
        let two = page_sql("id", &tables, "", "id DESC", "$1");
        assert_eq!(
            two,
            "SELECT id FROM ((SELECT id FROM \"tenant_00000000000000aa\".t ORDER BY id DESC LIMIT $1) UNION ALL \
             (SELECT id FROM \"tenant_00000000000000bb\".t ORDER BY id DESC LIMIT $1)) AS u ORDER BY id DESC LIMIT $1"
        );
    }

    #[test]
    fn only_the_filters_given_reach_sql_and_every_value_is_bound() {
        let mut args = Args::default();
        let query = EventListQuery {
            metric_code: None,
            created_at: TimeRange::default(),
            search: None,
            after: None,
            limit: 10,
        };
        assert_eq!(events_where(&query, &mut args), "");
        assert!(args.0.is_empty());
        let query = EventListQuery {
            metric_code: Some(metric("api_calls")),
            created_at: TimeRange { from: Some(now()), to: None },
            search: Some(AdminSearch { tenant_ids: vec![tenant("acme")], metric_codes: vec![] }),
            after: Some((now(), Uuid::nil())),
            limit: 10,
        };
        let mut args = Args::default();
        assert_eq!(
            events_where(&query, &mut args),
            " WHERE metric_code = $1 AND created_at >= $2 AND (tenant_id = ANY($3::text[])) \
             AND (created_at, id) < ($4, $5)"
        );
        assert_eq!(args.0.len(), 5);
    }
}
