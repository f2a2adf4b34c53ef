//! The `tally` binary: reads configuration, picks a store adapter, and runs one command.
//! Exit codes: 0 success, 1 the answer is "no" (a refused check or record, drift found by
//! verify, a failed schema in migrate), 2 an error, with one line on stderr.

mod bench;
mod commands;
mod config;
mod demo;
mod export;
mod import_django;
mod output;
mod plans_file;
mod serve;

use std::path::PathBuf;

/// The server allocates and frees many small buffers per request; mimalloc does that with
/// less contention and less time than the system allocator (measured in docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use tally_store_postgres::{PgConfig, PgStore, Tenancy};
use tally_store_sqlite::SqliteStore;

/// Tally: usage metering and quota enforcement for SaaS products.
#[derive(Parser, Debug)]
#[command(name = "tally", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Configuration file (default: ./tally.toml when it exists).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// `sqlite://PATH` (created when missing; default sqlite://tally.db) or
    /// `postgres://USER@HOST:PORT/DB?sslmode=disable`.
    #[arg(long, global = true, env = "TALLY_DATABASE_URL")]
    pub database_url: Option<String>,
    /// PostgreSQL tenancy: `shared` tables with a tenant_id column, or one `schema` per tenant.
    #[arg(long, global = true, env = "TALLY_TENANCY", default_value = "shared", value_parser = ["shared", "schema"])]
    pub tenancy: String,
    /// PostgreSQL schema holding Tally's shared tables (tests give each run its own).
    #[arg(long, global = true, env = "TALLY_PG_SCHEMA", default_value = "public")]
    pub pg_schema: String,
    /// Oldest accepted event timestamp, as an age: `35d`, `12h`, `90m` or `3600s`.
    #[arg(long, global = true, env = "TALLY_MAX_EVENT_AGE", default_value = "35d")]
    pub max_event_age: String,
}

/// The database used when none is given.
pub const DATABASE_URL_DEFAULT: &str = "sqlite://tally.db";

impl Global {
    /// The database URL in force.
    pub fn database_url(&self) -> &str {
        self.database_url.as_deref().unwrap_or(DATABASE_URL_DEFAULT)
    }
}

/// Flags of `serve` and `demo`.
#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// Address to listen on.
    #[arg(long, env = "TALLY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// The admin key (else keys made by `tally keys create`; with none, the first start makes one).
    #[arg(long, env = "TALLY_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// Log lines as `text` or `json`, on stderr.
    #[arg(long, env = "TALLY_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// When set, `/metrics` needs `Authorization: Bearer <token>`.
    #[arg(long, env = "TALLY_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Concurrent group-commit transactions on PostgreSQL (default 2). SQLite has one writer
    /// whatever this says: its writes serialize anyway. Fewer writers make bigger batches.
    #[arg(long, env = "TALLY_WRITERS", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub writers: Option<u16>,
    /// Mark the admin UI's cookies `Secure` (set it when the UI is reached over HTTPS).
    #[arg(long, env = "TALLY_COOKIE_SECURE")]
    pub cookie_secure: bool,
    /// The wait before retrying a failed webhook delivery; each wait doubles the last
    /// (`250ms`, `5s`, `1m`, `1h`).
    #[arg(long, env = "TALLY_WEBHOOK_RETRY_INITIAL", default_value = "5s")]
    pub webhook_retry_initial: String,
    /// The longest wait between two attempts of a delivery.
    #[arg(long, env = "TALLY_WEBHOOK_RETRY_MAX_DELAY", default_value = "1h")]
    pub webhook_retry_max_delay: String,
    /// How long a delivery is retried before it is marked failed.
    #[arg(long, env = "TALLY_WEBHOOK_RETRY_WINDOW", default_value = "24h")]
    pub webhook_retry_window: String,
    /// How long a delivery attempt waits for the receiver's answer.
    #[arg(long, env = "TALLY_WEBHOOK_TIMEOUT", default_value = "10s")]
    pub webhook_timeout: String,
    /// A PEM file of root certificates that https webhook receivers may be signed by,
    /// besides the system's (an internal CA).
    #[arg(long, env = "TALLY_WEBHOOK_CA_FILE")]
    pub webhook_ca_file: Option<std::path::PathBuf>,
    /// The rate limit of every tenant key without one of its own (`1000/s`, `600/m`,
    /// `10000/h`; the burst is twice the count). Off by default. Per instance.
    #[arg(long, env = "TALLY_RATE_LIMIT_TENANT_KEY")]
    pub rate_limit_tenant_key: Option<String>,
    /// The rate limit of every admin key without one of its own. Off by default.
    #[arg(long, env = "TALLY_RATE_LIMIT_ADMIN_KEY")]
    pub rate_limit_admin_key: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the HTTP API (SQLite is created and migrated at start; PostgreSQL is migrated
    /// unless --no-migrate).
    Serve {
        #[command(flatten)]
        server: ServerArgs,
        /// Do not migrate PostgreSQL at start (the schema must be current).
        #[arg(long, env = "TALLY_NO_MIGRATE")]
        no_migrate: bool,
        /// Print the effective configuration (secrets as ***) and exit.
        #[arg(long)]
        print_config: bool,
    },
    /// Serve a ready demo: plans, 51 tenants, past usage, and keys to try.
    Demo {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Apply pending migrations: the shared schema, then every tenant schema.
    Migrate {
        /// Apply tenant migrations only up to this version (staged rollouts, benchmarks).
        #[arg(long)]
        target_version: Option<i64>,
    },
    /// Manage plans.
    #[command(subcommand)]
    Plans(PlansCmd),
    /// Manage tenants.
    #[command(subcommand)]
    Tenants(TenantsCmd),
    /// Subscribe a tenant to a plan (or change its plan).
    Subscribe {
        tenant: String,
        plan: String,
        /// Month and year periods start on this day and time (default: kept, or now).
        #[arg(long)]
        anchor: Option<String>,
    },
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Record usage.
    Record {
        tenant: String,
        metric: String,
        /// Positive; a gauge (a metric limited with period none) also takes a negative amount.
        #[arg(allow_negative_numbers = true)]
        amount: String,
        /// Idempotency key: a retry with the same key and payload records nothing.
        #[arg(long)]
        key: Option<String>,
        /// A JSON object kept with the event.
        #[arg(long)]
        metadata: Option<String>,
        /// When the usage happened (RFC 3339; default now).
        #[arg(long)]
        at: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Ask whether usage would be allowed, changing nothing (exit 0 allowed, 1 refused).
    Check {
        tenant: String,
        metric: String,
        /// Positive; negative for a gauge's decrease.
        #[arg(allow_negative_numbers = true)]
        amount: String,
        #[arg(long)]
        json: bool,
    },
    /// Current usage of every metric of a tenant.
    Usage {
        tenant: String,
        #[arg(long)]
        json: bool,
    },
    /// A tenant's usage events, newest first.
    Events {
        tenant: String,
        #[arg(long)]
        metric: Option<String>,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        #[arg(long, default_value_t = tally_domain::limits::PAGE_LEN_DEFAULT)]
        limit: u32,
        #[arg(long)]
        cursor: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Correct a counter by a signed amount, with a reason (audited; never refused by a
    /// limit; refused in a closed period).
    Correct {
        tenant: String,
        metric: String,
        /// Signed and nonzero: `-500` takes 500 back.
        #[arg(allow_negative_numbers = true)]
        amount: String,
        /// Why (1–500 characters).
        #[arg(long)]
        reason: String,
        /// The instant whose period moves (RFC 3339; default now).
        #[arg(long)]
        at: Option<String>,
        /// Idempotency key, in the tenant's usage key space.
        #[arg(long)]
        key: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Close, reopen and list a tenant's periods.
    #[command(subcommand)]
    Periods(PeriodsCmd),
    /// Export what billing reads.
    #[command(subcommand)]
    Export(export::ExportCmd),
    /// Rebuild every usage record from the events and audited resets; exit 1 on drift.
    Verify {
        #[arg(long)]
        json: bool,
    },
    /// The admin UI.
    #[command(subcommand)]
    Admin(AdminCmd),
    /// Load-test a running server over HTTP, then check no HARD limit was overshot and
    /// accepted == recorded (exit 1 if not).
    Bench(bench::BenchArgs),
    /// Import the data of the system Tally replaces.
    #[command(subcommand)]
    Import(import_django::ImportCmd),
}

#[derive(Subcommand, Debug)]
pub enum PlansCmd {
    /// Create or replace the plans of a TOML file; applying it twice changes nothing.
    Apply { file: PathBuf },
    /// List plans.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum TenantsCmd {
    /// Create a tenant (or rename it), optionally subscribing it to a plan.
    Create {
        tenant: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        plan: Option<String>,
        #[arg(long)]
        anchor: Option<String>,
    },
    /// List tenants.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show a tenant, its subscription and overrides.
    Show {
        tenant: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum PeriodsCmd {
    /// Close every period of TENANT ending at or before BEFORE (RFC 3339, at most now).
    Close {
        tenant: String,
        #[arg(long)]
        before: String,
        #[arg(long)]
        json: bool,
    },
    /// Reopen one closed period.
    Reopen {
        tenant: String,
        metric: String,
        /// The period's first instant (RFC 3339).
        period_start: String,
        /// Why (1–500 characters).
        #[arg(long)]
        reason: String,
        #[arg(long)]
        json: bool,
    },
    /// A tenant's periods with their closing state, newest first.
    List {
        tenant: String,
        /// Only closed (`true`) or open (`false`) periods.
        #[arg(long)]
        closed: Option<bool>,
        #[arg(long)]
        metric: Option<String>,
        #[arg(long, default_value_t = tally_domain::limits::PAGE_LEN_DEFAULT)]
        limit: u32,
        #[arg(long)]
        cursor: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum AdminCmd {
    /// Set the admin UI password, read from stdin (its first line); stored as an argon2 hash.
    SetPassword,
}

#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// Create a key; the key itself is the last line of stdout, shown this once.
    Create {
        #[arg(long, conflicts_with = "tenant", required_unless_present = "tenant")]
        admin: bool,
        #[arg(long)]
        tenant: Option<String>,
        /// The key's own rate limit (`1000/s`, `600/m`, `10000/h`), which wins over the
        /// server's `--rate-limit-*-key` default.
        #[arg(long)]
        rate_limit: Option<String>,
    },
    /// List keys (never the keys themselves).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id.
    Revoke { id: String },
}

/// An open store of either kind.
pub enum Backend {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// The database URL with any password replaced by `***`, for messages.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
        && let Some((user, _password)) = userinfo.split_once(':')
    {
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_owned()
}

/// Opens the store named by `--database-url`. SQLite is created and migrated on open;
/// PostgreSQL is only connected (and must have been migrated, unless `for_migrate`).
pub async fn open_backend(global: &Global, for_migrate: bool) -> anyhow::Result<Backend> {
    open_backend_with(global, for_migrate, None).await
}

/// `open_backend`, with `writers` PostgreSQL writer tasks (default
/// `GROUP_COMMIT_WRITERS_DEFAULT`); SQLite always has its one writer.
pub async fn open_backend_with(
    global: &Global,
    for_migrate: bool,
    writers: Option<u16>,
) -> anyhow::Result<Backend> {
    let url = global.database_url();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let tenancy: Tenancy = global.tenancy.parse().map_err(|e| anyhow::anyhow!("--tenancy: {e}"))?;
        let mut config = PgConfig::new(url, tenancy);
        config.base_schema = global.pg_schema.clone();
        if let Some(n) = writers {
            config.writers = usize::from(n);
        }
        let store = PgStore::connect(config)
            .await
            .with_context(|| format!("connecting to PostgreSQL at {}", redact_url(url)))?;
        if !for_migrate {
            let version = store
                .schema_version()
                .await
                .with_context(|| format!("reading the schema version at {}", redact_url(url)))?;
            if version == 0 {
                bail!("the database at {} is not migrated: run `tally migrate` first", redact_url(url));
            }
        }
        Ok(Backend::Postgres(store))
    } else if url.starts_with("sqlite:") || !url.contains("://") {
        let store =
            SqliteStore::open(url).await.with_context(|| format!("opening SQLite database at {url}"))?;
        Ok(Backend::Sqlite(store))
    } else {
        bail!("--database-url must start with sqlite:// or postgres://, got {}", redact_url(url))
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Err(e) = config::apply_config_file(config::config_path_from_args(&args).as_deref()) {
        eprintln!("error: {e:#}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&format!("{e:#}")));
            ExitCode::from(2)
        }
    }
}

/// Errors print on one line, whatever the messages they wrap hold.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redact_url("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite://tally.db"), "sqlite://tally.db");
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
