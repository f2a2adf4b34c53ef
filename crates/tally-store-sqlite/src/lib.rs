//! The SQLite store adapter: `SqliteStore`, a file database in WAL mode behind a pool of
//! connections, one in-process writer at a time, and its own embedded migrations.
//!
//! Every write runs under the store's writer lock (an in-process mutex) and, when it takes
//! more than one statement, inside `BEGIN IMMEDIATE`, which takes SQLite's write lock up
//! front; other processes on the same file wait for it up to `SQLITE_BUSY_TIMEOUT`. Reads
//! never wait for writers (WAL). Ids are stored as hyphenated lowercase text, timestamps as
//! integer microseconds since the Unix epoch.
#![warn(missing_docs)]

mod admin;
mod admin_ui;
mod catalog;
mod error;
mod migrate;
mod periods;
mod reservations;
mod rows;
mod statements;
mod usage;
mod webhooks;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};
use std::convert::Infallible;

use tally_store::{Committer, ConfigCache, SchemaReport, StoreError, write_forever};
use tokio::sync::{Mutex, MutexGuard};
use uuid::Uuid;

use crate::error::store_error;
pub use crate::statements::StatementLog;

/// Connections the pool opens at most.
pub const SQLITE_POOL_CONNECTIONS: u32 = 8;
/// Connections the pool keeps open at least.
pub const SQLITE_POOL_CONNECTIONS_MIN: u32 = 4;
const _: () = assert!(SQLITE_POOL_CONNECTIONS_MIN <= SQLITE_POOL_CONNECTIONS);
/// How long a statement waits for another process's write lock before it fails busy.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts `open` makes when the file is busy being created by another process.
pub const SQLITE_OPEN_ATTEMPTS_MAX: u32 = 3;
/// The pause between two such attempts.
pub const SQLITE_OPEN_RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long a call waits for a free connection of the pool.
pub const SQLITE_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a write waits for the in-process writer lock.
pub const SQLITE_WRITER_WAIT_MAX: Duration = Duration::from_secs(30);
/// Bind parameters in one statement (SQLite's `SQLITE_MAX_VARIABLE_NUMBER`, 32766 since
/// 3.32; the bundled library is newer). Bulk statements are cut into chunks below it.
pub(crate) const SQLITE_BIND_PARAMS_MAX: usize = 32_766;

/// A Tally store on one SQLite database file. Cloning is cheap: clones share the pool,
/// the writer lock, the write queue with its writer task, the configuration cache and, for
/// `open_temp_file`, the file's lifetime. The writer task ends when the last clone is
/// dropped.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    writer: Arc<Mutex<()>>,
    /// The hot path's write queue, drained by the one writer task (see `writer`).
    committer: Committer<Infallible>,
    cache: Arc<ConfigCache>,
    /// Every statement this store sends goes through it (see `statements`).
    log: StatementLog,
    /// Declared last, so that the pool handle is dropped before the file is removed.
    _temp_file: Option<Arc<TempFile>>,
}

impl SqliteStore {
    /// Opens (creating it when missing) the database at `sqlite://PATH`, `sqlite:PATH` or a
    /// bare path, in WAL mode with `synchronous=FULL`, foreign keys on and a busy timeout of
    /// `SQLITE_BUSY_TIMEOUT`, behind a pool of `SQLITE_POOL_CONNECTIONS`, and applies the
    /// pending migrations. In-memory databases are refused: each pooled connection would
    /// see a database of its own.
    pub async fn open(url: &str) -> Result<SqliteStore, StoreError> {
        let path = database_path(url)?;
        let mut attempt = 1;
        loop {
            // Two processes creating one new file at once can find it locked while the other
            // switches it to WAL, a moment the busy timeout does not cover: try again.
            let opened = async {
                let store = SqliteStore::connect(&path, None).await?;
                store.migrate().await?;
                Ok::<_, StoreError>(store)
            };
            match opened.await {
                Err(StoreError::Unavailable(_)) if attempt < SQLITE_OPEN_ATTEMPTS_MAX => {
                    attempt += 1;
                    tokio::time::sleep(SQLITE_OPEN_RETRY_PAUSE).await;
                }
                result => return result,
            }
        }
    }

    /// A fresh, migrated database file under `std::env::temp_dir()` with a unique name. The
    /// file (and its `-wal` and `-shm` companions) is removed when the last clone is dropped.
    pub async fn open_temp_file() -> Result<SqliteStore, StoreError> {
        let path = std::env::temp_dir().join(format!("tally-{}.sqlite3", Uuid::new_v4()));
        // The guard exists before the file does, so that a failed open leaves nothing behind.
        let guard = Arc::new(TempFile { path: path.clone() });
        let store = SqliteStore::connect(&path, Some(guard)).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Applies the pending migrations, each in its own transaction with its tracking row.
    /// Idempotent: a second run applies nothing. Returns one report, for schema `main`; a
    /// failed migration is an `Err` (the migrations before it stay applied).
    pub async fn migrate(&self) -> Result<Vec<SchemaReport>, StoreError> {
        Ok(vec![migrate::migrate(self).await?])
    }

    /// The highest applied migration version (0 for a database never migrated).
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        migrate::schema_version(&self.log, &self.pool).await
    }

    /// The pool, for tests and tools that must touch rows behind Tally's back.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// This store's statement log (shared with its clones): off until `start`ed, it then
    /// records the SQL text of every statement the store sends. A test tool.
    pub fn statement_log(&self) -> StatementLog {
        self.log.clone()
    }

    async fn connect(path: &Path, temp_file: Option<Arc<TempFile>>) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(SQLITE_BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(SQLITE_POOL_CONNECTIONS)
            .min_connections(SQLITE_POOL_CONNECTIONS_MIN)
            .acquire_timeout(SQLITE_ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(store_error)?;
        let writer = Arc::new(Mutex::new(()));
        let log = StatementLog::default();
        let cache = Arc::new(ConfigCache::default());
        let (committer, queue) = Committer::new();
        let task = writer::SqliteWriter::new(pool.clone(), log.clone(), writer.clone());
        tokio::spawn(write_forever(queue, task, cache.clone()));
        Ok(SqliteStore { pool, writer, committer, cache, log, _temp_file: temp_file })
    }

    /// Takes the in-process writer lock, waiting at most `SQLITE_WRITER_WAIT_MAX`.
    pub(crate) async fn lock_writer(&self) -> Result<MutexGuard<'_, ()>, StoreError> {
        tokio::time::timeout(SQLITE_WRITER_WAIT_MAX, self.writer.lock()).await.map_err(|_| {
            StoreError::Unavailable(format!(
                "the sqlite writer lock stayed taken for {} s",
                SQLITE_WRITER_WAIT_MAX.as_secs()
            ))
        })
    }

    /// `BEGIN IMMEDIATE` on a pooled connection; the caller holds the writer lock.
    pub(crate) async fn begin_immediate(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.log.begin(&self.pool, "BEGIN IMMEDIATE").await.map_err(store_error)
    }

    /// The writer lock, then a `BEGIN IMMEDIATE` transaction.
    pub(crate) async fn begin_write(&self) -> Result<WriteTx<'_>, StoreError> {
        let writer = self.lock_writer().await?;
        let tx = self.begin_immediate().await?;
        Ok(WriteTx { tx, log: &self.log, _writer: writer })
    }

    /// A deferred transaction for reads that must see one snapshot.
    pub(crate) async fn begin_read(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.log.begin(&self.pool, "BEGIN").await.map_err(store_error)
    }
}

/// A write transaction holding the writer lock until it is finished.
pub(crate) struct WriteTx<'s> {
    /// Declared first, so that an unfinished transaction is dropped (and rolled back)
    /// before the writer lock is released.
    tx: Transaction<'static, Sqlite>,
    log: &'s StatementLog,
    _writer: MutexGuard<'s, ()>,
}

impl WriteTx<'_> {
    /// The transaction's connection.
    pub(crate) fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }

    /// Commits when `outcome` is `Ok`, rolls back otherwise, and returns `outcome`.
    pub(crate) async fn finish<T>(self, outcome: Result<T, StoreError>) -> Result<T, StoreError> {
        let WriteTx { tx, log, _writer } = self;
        match outcome {
            Ok(value) => {
                log.commit(tx).await.map_err(store_error)?;
                Ok(value)
            }
            Err(e) => {
                rollback(log, tx).await;
                Err(e)
            }
        }
    }
}

/// Rolls back; a failed rollback is logged, since the error that caused it matters more
/// (and SQLite rolls back an unfinished transaction when the connection closes).
pub(crate) async fn rollback(log: &StatementLog, tx: Transaction<'static, Sqlite>) {
    if let Err(e) = log.rollback(tx).await {
        tracing::warn!(error = %e, "sqlite rollback failed");
    }
}

/// A database file that is removed, with its companions, when dropped.
#[derive(Debug)]
struct TempFile {
    path: PathBuf,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut name = self.path.clone().into_os_string();
            name.push(suffix);
            // The file may never have been created, or SQLite may have removed it already.
            let _ = std::fs::remove_file(PathBuf::from(name));
        }
    }
}

/// The file path in `sqlite://PATH`, `sqlite:PATH` or a bare `PATH`.
/// The file a `sqlite:` URL (or a bare path) names; an error for in-memory and URI databases.
pub fn database_path(url: &str) -> Result<PathBuf, StoreError> {
    let stripped = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"));
    let raw = stripped.unwrap_or(url);
    let invalid = |why: &str| StoreError::Other(format!("sqlite url {url:?}: {why}"));
    if raw.is_empty() {
        return Err(invalid("names no file"));
    }
    if raw == ":memory:" || raw.starts_with("file:") {
        return Err(invalid(
            "in-memory and URI databases are not supported; give a file path (every pooled connection must see the same database)",
        ));
    }
    if stripped.is_some() && raw.contains('?') {
        return Err(invalid("query parameters are not supported"));
    }
    Ok(PathBuf::from(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_bare_paths_name_the_same_file() {
        assert_eq!(database_path("sqlite:///var/lib/tally.db"), Ok(PathBuf::from("/var/lib/tally.db")));
        assert_eq!(database_path("sqlite://tally.db"), Ok(PathBuf::from("tally.db")));
        assert_eq!(database_path("sqlite:data/tally.db"), Ok(PathBuf::from("data/tally.db")));
        assert_eq!(database_path("/tmp/t.db"), Ok(PathBuf::from("/tmp/t.db")));
    }

    #[test]
    fn in_memory_empty_and_parameterised_urls_are_refused() {
        for bad in ["sqlite::memory:", ":memory:", "sqlite://", "", "sqlite://t.db?mode=rwc", "file:t.db"] {
            assert!(matches!(database_path(bad), Err(StoreError::Other(_))), "{bad}");
        }
    }
}
