//! The shared contract suite on PostgreSQL, in both tenancy modes, and the adapter's own
//! tests of migrations and tenancy.

mod shared {
    tally_contract::contract_suite!(|| tally_store_postgres::PgStore::open_test(
        tally_store_postgres::Tenancy::Shared
    ));
}

mod schema {
    tally_contract::contract_suite!(|| tally_store_postgres::PgStore::open_test(
        tally_store_postgres::Tenancy::Schema
    ));
}

mod hot_path;
mod locking;
mod migrations;
