//! The shared contract suite on SQLite: a file database in WAL mode with a pool, never `:memory:`.

mod adapter;
mod hot_path;

tally_contract::contract_suite!(|| async {
    tally_store_sqlite::SqliteStore::open_temp_file().await.expect("open sqlite")
});
