//! Every hard bound the service enforces, in one file.
//!
//! Every loop over input, every list query and every retry takes its bound from here.

/// Events in one batch request (`POST .../usage/batch`).
pub const EVENT_BATCH_LEN_MAX: usize = 1_000;
/// Serialized (compact, UTF-8) size of an event's metadata object.
pub const EVENT_METADATA_BYTES_MAX: usize = 4 * 1024;
/// Smallest amount one usage event may carry.
pub const AMOUNT_MIN: i64 = 1;
/// Largest amount one usage event may carry.
pub const AMOUNT_MAX: i64 = 1_000_000_000_000;
/// Length of a tenant id in bytes.
pub const TENANT_ID_LEN_MAX: usize = 64;
/// Length of a metric code in bytes.
pub const METRIC_CODE_LEN_MAX: usize = 64;
/// Length of a plan code in bytes.
pub const PLAN_CODE_LEN_MAX: usize = 64;
/// Length of an idempotency key in bytes.
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 255;
/// Length of a display name (plan or tenant) in bytes.
pub const NAME_LEN_MAX: usize = 200;
/// Limits on one plan.
pub const PLAN_LIMITS_LEN_MAX: usize = 100;
/// A request body, in bytes.
pub const REQUEST_BODY_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Items on one page of any list.
pub const PAGE_LEN_MAX: u32 = 1_000;
/// Items on a page when the caller does not say.
pub const PAGE_LEN_DEFAULT: u32 = 100;
/// How far in the future an event's timestamp may lie, in seconds.
pub const EVENT_FUTURE_SECONDS_MAX: i64 = 5 * 60;
/// How far in the past an event's timestamp may lie by default, in seconds (35 days).
pub const EVENT_AGE_SECONDS_DEFAULT: i64 = 35 * 24 * 3600;
/// Postgres identifiers stop at 63 bytes, so a tenant's schema is named from its internal
/// id (`tenant_<16 hex>`), never from the external tenant id.
pub const TENANT_SCHEMA_NAME_LEN: usize = "tenant_".len() + 16;
const _: () = assert!(TENANT_SCHEMA_NAME_LEN <= 63);
/// How many times a store re-runs a usage transaction that lost a race on an idempotency key.
pub const APPLY_RETRY_MAX: u32 = 8;
/// Steps a period search may take before it gives up (it needs at most two).
pub const PERIOD_SEARCH_STEPS_MAX: u32 = 4;
