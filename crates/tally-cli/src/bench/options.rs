//! The options of `tally bench`, their bounds, and their validation into [`Settings`].

use std::time::Duration;

use anyhow::{Context, bail};
use hyper::Uri;
use serde_json::{Value, json};
use tally_domain::limits::{AMOUNT_MAX, AMOUNT_MIN, EVENT_BATCH_LEN_MAX, PLAN_LIMITS_LEN_MAX};

/// Server used when `--url` is not given.
pub const URL_DEFAULT: &str = "http://127.0.0.1:8080";
/// Keep-alive connections when `--connections` is not given.
pub const CONNECTIONS_DEFAULT: u32 = 64;
/// Most connections one run may open (each is a socket and a task).
pub const CONNECTIONS_MAX: u32 = 10_000;
/// Measured seconds when neither `--duration` nor `--requests` is given.
pub const DURATION_SECS_DEFAULT: f64 = 10.0;
/// Longest measured run, in seconds (one day).
pub const DURATION_SECS_MAX: f64 = 86_400.0;
/// Most measured requests one run may send.
pub const REQUESTS_MAX: u64 = 1_000_000_000_000;
/// Warm-up seconds, sent but not measured, when `--warmup` is not given.
pub const WARMUP_SECS_DEFAULT: f64 = 1.0;
/// Longest warm-up, in seconds.
pub const WARMUP_SECS_MAX: f64 = 3_600.0;
/// Tenants when `--tenants` is not given (pgbench's spread: 1000 tenants × 5 metrics).
pub const TENANTS_DEFAULT: u32 = 1_000;
/// Most tenants one run may create.
pub const TENANTS_MAX: u32 = 1_000_000;
/// Metrics on the plan when `--metrics` is not given.
pub const METRICS_DEFAULT: u32 = 5;
/// Most metrics: a plan holds at most this many limits.
pub const METRICS_MAX: u32 = PLAN_LIMITS_LEN_MAX as u32;
/// Most (tenant, metric) pairs, each with its own counters in the client.
pub const PAIRS_MAX: u64 = 10_000_000;
/// The HARD limit when `--limit` is not given: high enough that a throughput run is never
/// refused.
pub const LIMIT_DEFAULT: i64 = 1_000_000_000_000;
/// Events per request when `--batch-size` is not given (1: the single-event route).
pub const BATCH_SIZE_DEFAULT: u32 = 1;
/// Most events per batch request: the API's own bound.
pub const BATCH_SIZE_MAX: u32 = EVENT_BATCH_LEN_MAX as u32;
/// Threads that run the connections when `--client-threads` is not given: one core's worth,
/// so that the client never takes more than half of a 2-core machine from the server.
pub const CLIENT_THREADS_DEFAULT: u32 = 1;
/// Most client threads.
pub const CLIENT_THREADS_MAX: u32 = 64;
/// Longest `--run-id`: it goes into plan codes (64 chars) and tenant ids (64 chars) with
/// a prefix and a tenant number.
pub const RUN_ID_LEN_MAX: usize = 32;
/// Length of a generated run id (hex digits).
pub const RUN_ID_GENERATED_LEN: usize = 8;

/// Enforcement of the plan's limits.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnforcementChoice {
    Hard,
    Soft,
    None,
    /// hard, soft and none in thirds, by metric (m1 hard, m2 soft, m3 none, m4 hard, ...).
    Mix,
}

/// Idempotency keys on usage events.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idempotency {
    /// A fresh key on every event.
    Unique,
    /// No key.
    None,
    /// Fresh keys, and ~5% of answered requests are sent again with the same key and body:
    /// the answer must be a replay of the first.
    Retry,
}

/// What the load sends.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `POST .../usage` (or `.../usage/batch` with `--batch-size` > 1).
    Record,
    /// `POST .../usage/check`: changes nothing.
    Check,
    /// `POST .../reservations` then, when it was held, `POST .../reservations/{id}/commit` of
    /// all of it: one unit is a reserve+commit pair.
    Reserve,
    /// `GET /healthz` through the same server, middleware and key: the HTTP stack's floor,
    /// the denominator of every route's cost. Changes nothing.
    Healthz,
}

impl Mode {
    /// The mode records nothing (its checks expect no usage to move).
    pub fn records_nothing(self) -> bool {
        matches!(self, Mode::Check | Mode::Healthz)
    }
}

/// Drive a running Tally server over HTTP and check its answers: throughput, latency, and
/// afterwards, through the API, that no HARD limit was overshot and accepted == recorded.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// The server's base URL (http only).
    #[arg(long, default_value = URL_DEFAULT)]
    pub url: String,
    /// Admin key: creates the plan and tenants, sends the load, reads usage for the checks.
    #[arg(long, env = "TALLY_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// HTTP/1.1 keep-alive connections, each with one request in flight.
    #[arg(long, default_value_t = CONNECTIONS_DEFAULT)]
    pub connections: u32,
    /// Threads running the connections (1: one core at most, and no cross-thread wake-ups).
    #[arg(long, value_name = "N", default_value_t = CLIENT_THREADS_DEFAULT)]
    pub client_threads: u32,
    /// Measured seconds (default 10 unless --requests is given).
    #[arg(long, value_name = "SECS", conflicts_with = "requests")]
    pub duration: Option<f64>,
    /// Measured requests, instead of a duration.
    #[arg(long, value_name = "N")]
    pub requests: Option<u64>,
    /// Seconds of load before measuring (its usage counts in the checks, not in the figures).
    #[arg(long, value_name = "SECS", default_value_t = WARMUP_SECS_DEFAULT)]
    pub warmup: f64,
    /// Tenants, named bench-<run-id>-<i>.
    #[arg(long, default_value_t = TENANTS_DEFAULT)]
    pub tenants: u32,
    /// Metrics on the plan, m1..mN.
    #[arg(long, default_value_t = METRICS_DEFAULT)]
    pub metrics: u32,
    /// Amount of each event: N, or an inclusive range A..B drawn per event.
    #[arg(long, default_value = "1")]
    pub amount: String,
    /// Enforcement of the plan's limits.
    #[arg(long, value_enum, default_value_t = EnforcementChoice::Hard)]
    pub enforcement: EnforcementChoice,
    /// Limit of HARD and SOFT metrics per period (a small one makes an overshoot test).
    #[arg(long, default_value_t = LIMIT_DEFAULT)]
    pub limit: i64,
    /// Fraction (0.0–1.0) of requests sent to one tenant and metric (bench-<run-id>-0, m1).
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    pub hot_share: f64,
    /// Events per request; above 1 the batch route is used.
    #[arg(long, value_name = "N", default_value_t = BATCH_SIZE_DEFAULT)]
    pub batch_size: u32,
    /// Idempotency keys on events.
    #[arg(long, value_enum, default_value_t = Idempotency::Unique)]
    pub idempotency: Idempotency,
    /// Record usage, or ask `check` (which must record nothing).
    #[arg(long, value_enum, default_value_t = Mode::Record)]
    pub mode: Mode,
    /// Names this run's plan (bench_<run-id>) and tenants: [a-z0-9_], default random.
    #[arg(long)]
    pub run_id: Option<String>,
    /// The final report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Do not create the plan and tenants: they exist already (same --run-id, --tenants and
    /// --metrics).
    #[arg(long)]
    pub no_setup: bool,
    /// Report this process's CPU time (user + system) per measured request: the server's pid.
    #[arg(long, value_name = "PID")]
    pub cpu_pid: Option<u32>,
    /// Report the CPU time of every `postgres` process per measured request.
    #[arg(long)]
    pub cpu_postgres: bool,
}

/// The command-line spelling of an option's value (`hard`, `unique`, ...).
pub fn value_name<T: clap::ValueEnum>(value: &T) -> String {
    value.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default()
}

/// When the measured load stops.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StopRule {
    After(Duration),
    Requests(u64),
}

/// The amount of each event: `low..=high`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AmountRange {
    pub low: i64,
    pub high: i64,
}

impl AmountRange {
    /// Parses `N`, `A..B` or `A..=B` (both inclusive).
    pub fn parse(raw: &str) -> anyhow::Result<AmountRange> {
        let number = |s: &str| -> anyhow::Result<i64> {
            let n: i64 = s
                .trim()
                .parse()
                .with_context(|| format!("--amount: {raw:?} is not a number N or a range A..B"))?;
            if !(AMOUNT_MIN..=AMOUNT_MAX).contains(&n) {
                bail!("--amount: {n} is outside {AMOUNT_MIN}..={AMOUNT_MAX}");
            }
            Ok(n)
        };
        let (low, high) = match raw.split_once("..") {
            Some((a, b)) => (number(a)?, number(b.strip_prefix('=').unwrap_or(b))?),
            None => {
                let n = number(raw)?;
                (n, n)
            }
        };
        if low > high {
            bail!("--amount: the range {raw:?} is empty ({low} > {high})");
        }
        Ok(AmountRange { low, high })
    }

    /// Whether every event carries the same amount.
    pub fn is_fixed(&self) -> bool {
        self.low == self.high
    }
}

impl std::fmt::Display for AmountRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_fixed() { write!(f, "{}", self.low) } else { write!(f, "{}..{}", self.low, self.high) }
    }
}

/// Where the server is.
#[derive(Clone, Debug)]
pub struct Target {
    /// Host name or address, without brackets.
    pub host: String,
    pub port: u16,
    /// The `Host` header: the URL's authority.
    pub authority: String,
    /// Path prefix before `/v1`, without a trailing slash (usually empty).
    pub base_path: String,
}

impl Target {
    /// Parses `http://HOST[:PORT][/PREFIX]`.
    pub fn parse(raw: &str) -> anyhow::Result<Target> {
        let uri: Uri = raw.parse().with_context(|| format!("--url: {raw:?} is not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => bail!("--url: https is not supported; give the server's http address"),
            _ => bail!("--url: {raw:?} must start with http://"),
        }
        let authority = uri.authority().with_context(|| format!("--url: {raw:?} names no host"))?;
        if authority.as_str().contains('@') {
            bail!("--url: credentials in the URL are not supported; use --admin-key");
        }
        if uri.query().is_some() {
            bail!("--url: {raw:?} must not carry a query");
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        Ok(Target {
            host,
            port: authority.port_u16().unwrap_or(80),
            authority: authority.as_str().to_owned(),
            base_path: uri.path().trim_end_matches('/').to_owned(),
        })
    }
}

/// The options, checked.
#[derive(Clone, Debug)]
pub struct Settings {
    pub url: String,
    pub target: Target,
    pub admin_key: String,
    pub connections: usize,
    pub client_threads: usize,
    pub stop: StopRule,
    pub warmup: Duration,
    pub tenants: u32,
    pub metrics: u32,
    pub amount: AmountRange,
    pub enforcement: EnforcementChoice,
    pub limit: i64,
    pub hot_share: f64,
    pub batch_size: u32,
    pub idempotency: Idempotency,
    pub mode: Mode,
    pub run_id: String,
    pub json: bool,
    pub no_setup: bool,
    pub cpu_pid: Option<u32>,
    pub cpu_postgres: bool,
}

fn seconds(name: &str, value: f64, min_exclusive: bool, max: f64) -> anyhow::Result<Duration> {
    let low_ok = if min_exclusive { value > 0.0 } else { value >= 0.0 };
    if !value.is_finite() || !low_ok || value > max {
        let low = if min_exclusive { "above 0" } else { "at least 0" };
        bail!("--{name}: {value} must be {low} and at most {max} seconds");
    }
    Ok(Duration::from_secs_f64(value))
}

impl Settings {
    /// Checks every option and their combinations.
    pub fn from_args(args: &BenchArgs) -> anyhow::Result<Settings> {
        let target = Target::parse(&args.url)?;
        let admin_key = match &args.admin_key {
            Some(key) if !key.trim().is_empty() => key.trim().to_owned(),
            _ => bail!("--admin-key (or TALLY_ADMIN_KEY) is needed: bench creates tenants and reads usage"),
        };
        if !(1..=CONNECTIONS_MAX).contains(&args.connections) {
            bail!("--connections: {} is outside 1..={CONNECTIONS_MAX}", args.connections);
        }
        if !(1..=CLIENT_THREADS_MAX).contains(&args.client_threads) {
            bail!("--client-threads: {} is outside 1..={CLIENT_THREADS_MAX}", args.client_threads);
        }
        let stop = match (args.duration, args.requests) {
            (Some(_), Some(_)) => bail!("give --duration or --requests, not both"),
            (_, Some(n)) => {
                if !(1..=REQUESTS_MAX).contains(&n) {
                    bail!("--requests: {n} is outside 1..={REQUESTS_MAX}");
                }
                StopRule::Requests(n)
            }
            (d, None) => StopRule::After(seconds(
                "duration",
                d.unwrap_or(DURATION_SECS_DEFAULT),
                true,
                DURATION_SECS_MAX,
            )?),
        };
        let warmup = seconds("warmup", args.warmup, false, WARMUP_SECS_MAX)?;
        if !(1..=TENANTS_MAX).contains(&args.tenants) {
            bail!("--tenants: {} is outside 1..={TENANTS_MAX}", args.tenants);
        }
        if !(1..=METRICS_MAX).contains(&args.metrics) {
            bail!("--metrics: {} is outside 1..={METRICS_MAX}", args.metrics);
        }
        if u64::from(args.tenants) * u64::from(args.metrics) > PAIRS_MAX {
            bail!(
                "--tenants × --metrics is {}, more than {PAIRS_MAX} pairs",
                u64::from(args.tenants) * u64::from(args.metrics)
            );
        }
        let amount = AmountRange::parse(&args.amount)?;
        if args.limit < 0 {
            bail!("--limit: {} must be at least 0", args.limit);
        }
        if !args.hot_share.is_finite() || !(0.0..=1.0).contains(&args.hot_share) {
            bail!("--hot-share: {} must be between 0.0 and 1.0", args.hot_share);
        }
        if !(1..=BATCH_SIZE_MAX).contains(&args.batch_size) {
            bail!("--batch-size: {} is outside 1..={BATCH_SIZE_MAX}", args.batch_size);
        }
        if args.mode != Mode::Record {
            let mode = value_name(&args.mode);
            if args.batch_size > 1 {
                bail!("--mode {mode} has no batch route: --batch-size must be 1");
            }
            if args.idempotency == Idempotency::Retry {
                bail!("--mode {mode} sends no idempotency keys: --idempotency retry does not apply");
            }
        }
        let run_id = match &args.run_id {
            Some(id) => {
                let ok = !id.is_empty()
                    && id.len() <= RUN_ID_LEN_MAX
                    && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                if !ok {
                    bail!("--run-id: {id:?} must be 1 to {RUN_ID_LEN_MAX} characters of a-z, 0-9 and _");
                }
                id.clone()
            }
            None => uuid::Uuid::new_v4().simple().to_string()[..RUN_ID_GENERATED_LEN].to_owned(),
        };
        Ok(Settings {
            url: args.url.clone(),
            target,
            admin_key,
            connections: args.connections as usize,
            client_threads: args.client_threads as usize,
            stop,
            warmup,
            tenants: args.tenants,
            metrics: args.metrics,
            amount,
            enforcement: args.enforcement,
            limit: args.limit,
            hot_share: args.hot_share,
            batch_size: args.batch_size,
            idempotency: args.idempotency,
            mode: args.mode,
            run_id,
            json: args.json,
            no_setup: args.no_setup,
            cpu_pid: args.cpu_pid,
            cpu_postgres: args.cpu_postgres,
        })
    }

    /// Enforcement of metric `index` (0-based) on the plan this run creates.
    pub fn enforcement_of(&self, index: u32) -> &'static str {
        match self.enforcement {
            EnforcementChoice::Hard => "hard",
            EnforcementChoice::Soft => "soft",
            EnforcementChoice::None => "none",
            EnforcementChoice::Mix => ["hard", "soft", "none"][index as usize % 3],
        }
    }

    /// The plan's code.
    pub fn plan_code(&self) -> String {
        format!("bench_{}", self.run_id)
    }

    /// Tenant `index`'s id.
    pub fn tenant_id(&self, index: u32) -> String {
        format!("bench-{}-{index}", self.run_id)
    }

    /// Metric `index`'s code (0-based index, 1-based name).
    pub fn metric_code(index: u32) -> String {
        format!("m{}", index + 1)
    }

    /// Whether events carry idempotency keys.
    pub fn keyed(&self) -> bool {
        self.mode == Mode::Record && self.idempotency != Idempotency::None
    }

    /// Every option, for the JSON report (never the admin key).
    pub fn to_json(&self) -> Value {
        let (duration_s, requests) = match self.stop {
            StopRule::After(d) => (json!(d.as_secs_f64()), Value::Null),
            StopRule::Requests(n) => (Value::Null, json!(n)),
        };
        json!({
            "url": self.url,
            "connections": self.connections,
            "client_threads": self.client_threads,
            "duration_s": duration_s,
            "requests": requests,
            "warmup_s": self.warmup.as_secs_f64(),
            "tenants": self.tenants,
            "metrics": self.metrics,
            "amount": self.amount.to_string(),
            "enforcement": value_name(&self.enforcement),
            "limit": self.limit,
            "hot_share": self.hot_share,
            "batch_size": self.batch_size,
            "idempotency": value_name(&self.idempotency),
            "mode": value_name(&self.mode),
            "run_id": self.run_id,
            "no_setup": self.no_setup,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn settings(extra: &[&str]) -> anyhow::Result<Settings> {
        let mut argv = vec!["bench", "--admin-key", "k"];
        argv.extend_from_slice(extra);
        let cli = Cli::try_parse_from(argv).map_err(|e| anyhow::anyhow!("{e}"))?;
        Settings::from_args(&cli.args)
    }

    #[test]
    fn defaults() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.connections, 64);
        assert_eq!(s.stop, StopRule::After(Duration::from_secs(10)));
        assert_eq!(s.warmup, Duration::from_secs(1));
        assert_eq!((s.tenants, s.metrics, s.batch_size), (1000, 5, 1));
        assert_eq!(s.amount, AmountRange { low: 1, high: 1 });
        assert_eq!(s.limit, LIMIT_DEFAULT);
        assert_eq!(s.run_id.len(), RUN_ID_GENERATED_LEN);
        assert_eq!(
            (s.target.host.as_str(), s.target.port, s.target.base_path.as_str()),
            ("127.0.0.1", 8080, "")
        );
        assert!(s.keyed());
        assert_eq!(s.to_json()["enforcement"], "hard");
        assert!(s.to_json().get("admin_key").is_none());
    }

    #[test]
    fn amounts() {
        assert_eq!(AmountRange::parse("7").unwrap(), AmountRange { low: 7, high: 7 });
        assert_eq!(AmountRange::parse("1..10").unwrap(), AmountRange { low: 1, high: 10 });
        assert_eq!(AmountRange::parse("1..=10").unwrap(), AmountRange { low: 1, high: 10 });
        assert_eq!(AmountRange::parse("1..10").unwrap().to_string(), "1..10");
        for bad in ["0", "-1", "x", "10..1", "1..", "1..1000000000001", ""] {
            assert!(AmountRange::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn urls() {
        let t = Target::parse("http://localhost:9000/prefix/").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.authority.as_str()), ("localhost", 9000, "localhost:9000"));
        assert_eq!(t.base_path, "/prefix");
        assert_eq!(Target::parse("http://[::1]:81").unwrap().host, "::1");
        assert_eq!(Target::parse("http://example.com").unwrap().port, 80);
        assert!(Target::parse("https://example.com").is_err());
        assert!(Target::parse("example.com:80").is_err());
        assert!(Target::parse("http://u:p@example.com").is_err());
    }

    #[test]
    fn bad_options_are_refused_with_a_reason() {
        for (argv, needle) in [
            (&["--connections", "0"][..], "--connections"),
            (&["--client-threads", "0"], "--client-threads"),
            (&["--duration", "0"], "--duration"),
            (&["--duration", "1", "--requests", "5"], "cannot be used with"),
            (&["--requests", "0"], "--requests"),
            (&["--warmup=-1"], "--warmup"),
            (&["--tenants", "0"], "--tenants"),
            (&["--metrics", "101"], "--metrics"),
            (&["--hot-share", "1.5"], "--hot-share"),
            (&["--batch-size", "1001"], "--batch-size"),
            (&["--mode", "check", "--batch-size", "2"], "--batch-size"),
            (&["--mode", "check", "--idempotency", "retry"], "retry"),
            (&["--run-id", "Bad-Id"], "--run-id"),
            (&["--limit=-1"], "--limit"),
            (&["--enforcement", "strict"], "invalid value"),
            (&["--url", "ftp://x"], "http://"),
        ] {
            let err = settings(argv).unwrap_err().to_string();
            assert!(err.contains(needle), "{argv:?}: {err}");
        }
        let cli = Cli::try_parse_from(["bench"]).unwrap();
        if std::env::var_os("TALLY_ADMIN_KEY").is_none() {
            assert!(Settings::from_args(&cli.args).unwrap_err().to_string().contains("--admin-key"));
        }
    }

    #[test]
    fn mix_enforcement_goes_by_thirds() {
        let s = settings(&["--enforcement", "mix"]).unwrap();
        let got: Vec<_> = (0..5).map(|i| s.enforcement_of(i)).collect();
        assert_eq!(got, ["hard", "soft", "none", "hard", "soft"]);
    }
}
