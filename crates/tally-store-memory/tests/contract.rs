//! The shared contract suite on the in-memory store.
#![allow(clippy::unwrap_used)] // Integration tests: a failed unwrap is a failed test.
tally_store::contract_suite!(|| async { tally_store_memory::MemoryStore::new() });
