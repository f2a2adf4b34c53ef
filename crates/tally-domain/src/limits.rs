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
/// Length of a correction's or a reopening's reason, in characters.
pub const REASON_CHARS_MAX: usize = 500;
/// Longest `close_after` a plan may set, in seconds (one year and a day).
pub const CLOSE_AFTER_SECONDS_MAX: i64 = 366 * 24 * 3600;
/// How often the automatic closing job runs, in milliseconds.
pub const AUTO_CLOSE_INTERVAL_MS: u64 = 60_000;
/// A period whose end lies within this many seconds after a batch's instant may be closed
/// by an instance whose clock runs ahead (clocks are assumed within it of each other): a
/// write into it reads the tenant's watermark under a share lock. It equals the future
/// window, so an event accepted at most that far ahead is always covered.
pub const CLOSE_CLOCK_SKEW_SECONDS_MAX: i64 = EVENT_FUTURE_SECONDS_MAX;
/// Rows one export page reads at a time (periods or events).
pub const EXPORT_PAGE_LEN: u32 = 1_000;
/// The most requests a rate limit may allow per unit (`N/s`, `N/m`, `N/h`).
pub const RATE_LIMIT_COUNT_MAX: u32 = 1_000_000;
/// Keys whose token buckets one instance keeps at once; beyond it the least recently used
/// bucket is dropped (it starts full again when its key comes back).
pub const RATE_LIMIT_BUCKETS_MAX: usize = 100_000;
/// Length of a tenant id in bytes.
pub const TENANT_ID_LEN_MAX: usize = 64;
/// Length of a metric code in bytes.
pub const METRIC_CODE_LEN_MAX: usize = 64;
/// Length of a plan code in bytes.
pub const PLAN_CODE_LEN_MAX: usize = 64;
/// Length of an idempotency key in bytes.
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 255;
/// A reservation's default time to live, in seconds.
pub const RESERVATION_TTL_SECONDS_DEFAULT: i64 = 300;
/// A reservation's longest time to live, in seconds (one day).
pub const RESERVATION_TTL_SECONDS_MAX: i64 = 86_400;
/// Open reservations one tenant may hold at once (each is a row HARD decisions sum).
pub const RESERVATIONS_OPEN_MAX: i64 = 10_000;
/// Reservations the sweeper marks expired per statement.
pub const RESERVATION_SWEEP_BATCH_LEN: i64 = 1_000;
/// How often the sweeper runs, in milliseconds.
pub const RESERVATION_SWEEP_INTERVAL_MS: u64 = 1_000;
/// Length of a metric's unit (`seat`, `byte`, ...) in bytes.
pub const METRIC_UNIT_LEN_MAX: usize = 32;
/// Metrics the catalog holds.
pub const METRICS_LEN_MAX: usize = 10_000;
/// Length of a display name (plan, tenant or metric) in bytes.
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
/// Rows on one page of the admin UI's lists.
pub const ADMIN_PAGE_LEN: u32 = 50;
/// Tenants one admin UI search may match; a term that matches more shows the first ones and
/// says so.
pub const ADMIN_SEARCH_TENANTS_MAX: u32 = 200;
/// Length of an admin UI search term, in bytes.
pub const ADMIN_SEARCH_BYTES_MAX: usize = 64;
/// Periods shown in a tenant page's usage chart.
pub const ADMIN_CHART_PERIODS: usize = 12;
/// How long an admin UI session lasts after sign-in, in seconds (8 hours).
pub const ADMIN_SESSION_SECONDS: i64 = 8 * 3600;
/// Shortest admin UI password, in characters.
pub const ADMIN_PASSWORD_CHARS_MIN: usize = 12;
/// Longest admin UI password (or key) accepted by the sign-in form, in bytes.
pub const ADMIN_PASSWORD_BYTES_MAX: usize = 1024;
/// The delay before answering the first failed sign-in of a client, in milliseconds; each
/// further failure doubles it.
pub const LOGIN_DELAY_BASE_MS: u64 = 250;
/// The longest delay before answering a sign-in, in milliseconds.
pub const LOGIN_DELAY_MAX_MS: u64 = 8_000;
/// A client's failed sign-ins are forgotten this long after its last one, in seconds.
pub const LOGIN_FAILURE_WINDOW_SECONDS: u64 = 15 * 60;
/// Clients whose failed sign-ins are remembered at once; the oldest is forgotten first.
pub const LOGIN_THROTTLE_CLIENTS_MAX: usize = 10_000;
/// Webhooks that may be registered (each is read by every usage transaction that could fire).
pub const WEBHOOKS_LEN_MAX: usize = 100;
/// Thresholds on one webhook.
pub const WEBHOOK_THRESHOLDS_LEN_MAX: usize = 10;
/// The highest threshold, in percent of a limit (SOFT limits may be passed).
pub const WEBHOOK_THRESHOLD_MAX: u16 = 1_000;
/// Length of a webhook's URL, in bytes.
pub const WEBHOOK_URL_LEN_MAX: usize = 2_048;
/// Shortest webhook secret, in characters.
pub const WEBHOOK_SECRET_LEN_MIN: usize = 16;
/// Longest webhook secret, in characters.
pub const WEBHOOK_SECRET_LEN_MAX: usize = 256;
/// The wait before retrying a failed delivery the first time, in milliseconds; it doubles.
pub const WEBHOOK_RETRY_INITIAL_MS: u64 = 5_000;
/// The longest wait between two attempts of a delivery, in milliseconds (1 hour).
pub const WEBHOOK_RETRY_MAX_DELAY_MS: u64 = 3_600_000;
/// How long a delivery is retried before it is marked failed, in milliseconds (24 hours).
pub const WEBHOOK_RETRY_WINDOW_MS: u64 = 24 * 3_600_000;
/// How long an attempt waits for the receiver's answer, in milliseconds.
pub const WEBHOOK_TIMEOUT_MS: u64 = 10_000;
/// Deliveries one worker claims at once; they are sent concurrently.
pub const WEBHOOK_CLAIM_BATCH_LEN: i64 = 32;
/// How often the delivery worker looks for due deliveries, in milliseconds.
pub const WEBHOOK_POLL_INTERVAL_MS: u64 = 250;
/// A claimed delivery is due again this long after its attempt's timeout, in milliseconds,
/// if the instance that claimed it never reported (it crashed): at least once, never lost.
pub const WEBHOOK_CLAIM_GRACE_MS: u64 = 5_000;
/// Bytes of a receiver's error kept on a delivery.
pub const WEBHOOK_ERROR_LEN_MAX: usize = 300;
/// Length of a metric's `value_property` (a JSON pointer), in bytes.
pub const VALUE_PROPERTY_LEN_MAX: usize = 256;
