//! The one place where `sqlx::Error` becomes `StoreError`.

use sqlx::error::DatabaseError;
use tally_store::StoreError;

/// SQLite's primary result codes that matter here (the low byte of an extended code).
const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;
const SQLITE_IOERR: i32 = 10;
const SQLITE_CORRUPT: i32 = 11;
const SQLITE_FULL: i32 = 13;
const SQLITE_CANTOPEN: i32 = 14;
const SQLITE_NOTADB: i32 = 26;

/// The constraint name of the PostgreSQL adapter for each unique key, by the columns that
/// SQLite names in its message (`UNIQUE constraint failed: table.col, table.col`), which
/// never names the constraint itself.
const UNIQUE_CONSTRAINTS: &[(&str, &str)] = &[
    ("quota_usage_event.tenant_id, quota_usage_event.idempotency_key", "quota_usage_event_idem_uq"),
    (
        "quota_usage_record.tenant_id, quota_usage_record.metric_code, quota_usage_record.period_start",
        "quota_usage_record_uq",
    ),
    ("tally_admin_session.token_hash", "tally_admin_session_pkey"),
];

/// The idempotency key constraint of the events table.
pub(crate) const EVENT_IDEMPOTENCY_CONSTRAINT: &str = "quota_usage_event_idem_uq";

/// Maps a driver error: unique violations are a `Conflict` naming the constraint, a busy or
/// locked database and a lost connection are `Unavailable`, undecodable rows are `Corrupt`.
pub(crate) fn store_error(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) => database_error(db.as_ref()),
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Io(_) => StoreError::Unavailable(e.to_string()),
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => StoreError::Corrupt(e.to_string()),
        _ => StoreError::Other(e.to_string()),
    }
}

/// The constraint a unique violation broke, when the error is one.
pub(crate) fn unique_violation(e: &sqlx::Error) -> Option<String> {
    let db = e.as_database_error()?;
    db.is_unique_violation().then(|| constraint_name(db.message()))
}

fn database_error(db: &dyn DatabaseError) -> StoreError {
    if db.is_unique_violation() {
        return StoreError::Conflict(constraint_name(db.message()));
    }
    let code = db.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0);
    let text = format!("sqlite error {code}: {}", db.message());
    match code & 0xff {
        SQLITE_BUSY | SQLITE_LOCKED | SQLITE_IOERR | SQLITE_FULL | SQLITE_CANTOPEN => {
            StoreError::Unavailable(text)
        }
        SQLITE_CORRUPT | SQLITE_NOTADB => StoreError::Corrupt(text),
        _ => StoreError::Other(text),
    }
}

/// The constraint's name when known, else SQLite's message.
fn constraint_name(message: &str) -> String {
    UNIQUE_CONSTRAINTS
        .iter()
        .find(|(columns, name)| message.contains(name) || message.ends_with(columns))
        .map_or_else(|| message.to_owned(), |(_, name)| (*name).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_messages_name_the_postgres_constraint() {
        let m = "UNIQUE constraint failed: quota_usage_event.tenant_id, quota_usage_event.idempotency_key";
        assert_eq!(constraint_name(m), EVENT_IDEMPOTENCY_CONSTRAINT);
        let m = "UNIQUE constraint failed: quota_usage_record.tenant_id, quota_usage_record.metric_code, \
                 quota_usage_record.period_start";
        assert_eq!(constraint_name(m), "quota_usage_record_uq");
        let m = "UNIQUE constraint failed: tally_admin_session.token_hash";
        assert_eq!(constraint_name(m), "tally_admin_session_pkey");
        let m = "UNIQUE constraint failed: tally_api_key.key_hash";
        assert_eq!(constraint_name(m), m);
    }

    #[test]
    fn pool_and_decode_failures_are_unavailable_and_corrupt() {
        assert!(matches!(store_error(sqlx::Error::PoolTimedOut), StoreError::Unavailable(_)));
        assert!(matches!(store_error(sqlx::Error::Decode("bad".into())), StoreError::Corrupt(_)));
        assert!(matches!(store_error(sqlx::Error::RowNotFound), StoreError::Other(_)));
    }
}
