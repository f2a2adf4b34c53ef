//! The statement log, and the one door every statement of this adapter goes through.
//!
//! `StatementLog` records the SQL text of every statement the adapter sends, when switched
//! on. It is a test tool: it shows what an operation runs, so that a test can check, say,
//! that every statement of the hot path filters on its tenants. It is off by default, and
//! then costs one relaxed atomic load per statement.
//!
//! Every statement is built by a method of `StatementLog` (`query`, `query_as`,
//! `query_scalar`, `raw_sql`, `built`, `built_as`, `begin`, `commit`, `rollback`), which
//! records it; the rest of the crate never calls sqlx's constructors itself (a test reads
//! the sources to make sure). sqlx's own statements (connection setup, the `ROLLBACK` of a
//! transaction dropped unfinished) are not the adapter's and are not recorded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use sqlx::query::{Query, QueryAs, QueryScalar};
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{FromRow, QueryBuilder, RawSql, SqlSafeStr, SqlStr, Sqlite, SqlitePool, Transaction};

/// The SQL text of every statement a store sends while recording is on. A store and its
/// clones share one log; separate stores have separate logs. Cloning shares the log.
#[derive(Clone, Debug, Default)]
pub struct StatementLog {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    on: AtomicBool,
    statements: Mutex<Vec<String>>,
}

impl StatementLog {
    /// Records every statement sent from now on, until `stop`.
    pub fn start(&self) {
        self.inner.on.store(true, Ordering::Relaxed);
    }

    /// Stops recording; what was recorded stays until `take`.
    pub fn stop(&self) {
        self.inner.on.store(false, Ordering::Relaxed);
    }

    /// Whether statements are being recorded.
    pub fn is_on(&self) -> bool {
        self.inner.on.load(Ordering::Relaxed)
    }

    /// The statements recorded so far, oldest first, leaving the log empty.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.inner.statements.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn record(&self, sql: &str) {
        self.inner.statements.lock().unwrap_or_else(PoisonError::into_inner).push(sql.to_owned());
    }

    fn note(&self, sql: impl SqlSafeStr) -> SqlStr {
        let sql = sql.into_sql_str();
        if self.is_on() {
            self.record(sql.as_str());
        }
        sql
    }

    /// `sqlx::query`, recorded.
    pub(crate) fn query<'a>(&self, sql: impl SqlSafeStr) -> Query<'a, Sqlite, SqliteArguments> {
        sqlx::query(self.note(sql))
    }

    /// `sqlx::query_as`, recorded.
    pub(crate) fn query_as<'a, O>(&self, sql: impl SqlSafeStr) -> QueryAs<'a, Sqlite, O, SqliteArguments>
    where
        O: for<'r> FromRow<'r, SqliteRow>,
    {
        sqlx::query_as(self.note(sql))
    }

    /// `sqlx::query_scalar`, recorded.
    pub(crate) fn query_scalar<'a, O>(
        &self,
        sql: impl SqlSafeStr,
    ) -> QueryScalar<'a, Sqlite, O, SqliteArguments>
    where
        (O,): for<'r> FromRow<'r, SqliteRow>,
    {
        sqlx::query_scalar(self.note(sql))
    }

    /// `sqlx::raw_sql` (any number of statements, sent as one text), recorded.
    pub(crate) fn raw_sql(&self, sql: impl SqlSafeStr) -> RawSql {
        sqlx::raw_sql(self.note(sql))
    }

    /// `QueryBuilder::build`, recorded.
    pub(crate) fn built<'q>(&self, qb: &'q mut QueryBuilder<Sqlite>) -> Query<'q, Sqlite, SqliteArguments> {
        if self.is_on() {
            self.record(qb.sql().as_str());
        }
        qb.build()
    }

    /// `QueryBuilder::build_query_as`, recorded.
    pub(crate) fn built_as<'q, O>(
        &self,
        qb: &'q mut QueryBuilder<Sqlite>,
    ) -> QueryAs<'q, Sqlite, O, SqliteArguments>
    where
        O: FromRow<'q, SqliteRow>,
    {
        if self.is_on() {
            self.record(qb.sql().as_str());
        }
        qb.build_query_as()
    }

    /// A transaction on a pooled connection, opened with `statement`, recorded.
    pub(crate) async fn begin(
        &self,
        pool: &SqlitePool,
        statement: &'static str,
    ) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        pool.begin_with(self.note(statement)).await
    }

    /// Commits, recorded.
    pub(crate) async fn commit(&self, tx: Transaction<'_, Sqlite>) -> Result<(), sqlx::Error> {
        if self.is_on() {
            self.record("COMMIT");
        }
        tx.commit().await
    }

    /// Rolls back, recorded.
    pub(crate) async fn rollback(&self, tx: Transaction<'_, Sqlite>) -> Result<(), sqlx::Error> {
        if self.is_on() {
            self.record("ROLLBACK");
        }
        tx.rollback().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_off_by_default_shared_by_clones_and_emptied_by_take() {
        let log = StatementLog::default();
        let _ = log.query("SELECT 1");
        assert!(!log.is_on());
        assert!(log.take().is_empty());
        let clone = log.clone();
        clone.start();
        let _ = log.query("SELECT 2");
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT ");
        qb.push_bind(3_i64);
        let _ = log.built(&mut qb);
        assert_eq!(clone.take(), ["SELECT 2", "SELECT ?"]);
        assert!(log.take().is_empty());
        log.stop();
        let _ = log.query("SELECT 4");
        assert!(clone.take().is_empty());
        assert!(StatementLog::default().take().is_empty(), "separate logs are separate");
    }
}
