//! The write path's decision step, as pure functions with no I/O: a store adapter asks
//! [`needs`] what a batch of write operations must have loaded, loads it in its first round
//! trip (under the records' locks), asks [`plan`] for the answers and the writes, and
//! carries the writes out in its second round trip.
//!
//! Everything a decision depends on is an argument: the operations in arrival order, the
//! tenants' entitlements and the webhook rules (from the version-checked configuration
//! cache), what was loaded, the time and the event-age window. So every store decides
//! exactly alike, and the decision is tested here without a database.
//!
//! Order of checks for each operation (API.md, "Order of checks"): the idempotency lookup
//! first (a replay answers the original, whatever changed since), then the event-time
//! window, then the tenant's subscription and limits.
#![warn(missing_docs)]

mod loaded;
mod needs;
mod op;
pub mod outbox;
mod plan;

pub use loaded::{Loaded, LoadedReservation, LockedRecord, RecordState};
pub use needs::{Needs, needs};
pub use op::{Answer, Ctx, Entitlements, WriteOp};
pub use outbox::{FireKey, FireStates, Signal, WebhookRule};
pub use plan::{Plan, RecordWrite, Unplanned, Writes, plan};
pub use tally_domain::RecordKey;
