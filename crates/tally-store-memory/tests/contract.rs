//! The shared contract suite on the in-memory store.
tally_store::contract_suite!(|| async { tally_store_memory::MemoryStore::new() });
