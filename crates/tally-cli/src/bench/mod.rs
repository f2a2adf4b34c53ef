//! `tally bench`: the load generator. It drives a running server over HTTP/1.1 keep-alive
//! connections (hyper's connection API, one task per connection, bodies written by hand, so
//! that the client costs little of the cores it shares with the server), measures throughput
//! and latency, and then checks through the API that no HARD limit was overshot and that the
//! usage recorded equals what the client saw accepted.
//!
//! Phases: setup (plan `bench_<run-id>` with metrics m1..mN, tenants `bench-<run-id>-<i>` and
//! their subscriptions), usage read before the load, warm-up, measured load, usage read after,
//! checks, report. Exit 0 when every check passes, 1 when one fails, 2 on an error.

mod checks;
mod client;
mod cpu;
mod histogram;
mod load;
mod options;
mod report;
mod setup;
mod workload;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;

pub use options::BenchArgs;

use client::Endpoint;
use load::Load;
use options::{Mode, Settings, StopRule, value_name};
use workload::Workload;

/// Attempts of one setup or check call (PUTs and GETs: safe to resend).
const ADMIN_ATTEMPTS_MAX: u32 = 5;

/// Length of the random part of idempotency keys (hex digits), fresh on every invocation.
const KEY_PREFIX_RANDOM_LEN: usize = 12;

/// Runs the benchmark: 0 when every check passed, 1 when one failed; an `Err` is an error (2).
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::from_args(&args)?;
    let endpoint = Arc::new(Endpoint::resolve(&settings.target, &settings.admin_key).await?);
    // Setup and checks go through tally-client; the load itself through the lean hyper
    // connections of `client.rs`, one request in flight each.
    let admin = tally_client::Client::builder(format!(
        "http://{}{}",
        settings.target.authority, settings.target.base_path
    ))
    .api_key(settings.admin_key.clone())
    .retry(tally_client::RetryPolicy {
        max_attempts: ADMIN_ATTEMPTS_MAX,
        ..tally_client::RetryPolicy::default()
    })
    .build()
    .context("building the admin client")?;
    eprintln!("{}", banner(&settings));

    let setup_started = Instant::now();
    if !settings.no_setup {
        setup::create(&settings, &admin).await.context("setting up the plan and tenants")?;
    }
    let all_tenants: Vec<u32> = (0..settings.tenants).collect();
    let before =
        checks::read_usage(&settings, &admin, &all_tenants).await.context("reading usage before the load")?;
    let setup_s = setup_started.elapsed().as_secs_f64();
    eprintln!(
        "setup: plan {}, {} tenants {} in {setup_s:.2} s",
        settings.plan_code(),
        settings.tenants,
        if settings.no_setup { "read" } else { "created" }
    );

    let key_prefix = format!("b{}", &uuid::Uuid::new_v4().simple().to_string()[..KEY_PREFIX_RANDOM_LEN]);
    let workload = Workload::new(&settings, key_prefix);
    let load = Arc::new(Load::new(settings.clone(), endpoint.clone(), workload)?);
    let cpu = load.measure_end().map(|end| {
        tokio::spawn(cpu::sample(settings.cpu_pid, settings.cpu_postgres, load.measure_start, end))
    });
    run_load(&load, settings.client_threads).await?;
    let cpu_used = match cpu {
        Some(task) => task.await.unwrap_or_default(),
        None => cpu::CpuUsed::default(),
    };

    let used = checks::tenants_used(&load);
    let after = checks::read_usage(&settings, &admin, &used).await.context("reading usage after the load")?;
    let check_report = checks::evaluate(&load, &before, &after, &used);
    let mut figures = report::Figures::of(&load, setup_s);
    figures.server_cpu_us = cpu::per_request(cpu_used.server_us, figures.requests);
    figures.postgres_cpu_us = cpu::per_request(cpu_used.postgres_us, figures.requests);
    if settings.json {
        println!("{}", report::to_json(&load, &figures, &check_report));
    } else {
        println!("{}", report::to_text(&load, &figures, &check_report));
    }
    Ok(if check_report.passed() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Runs the load on its own runtime of `threads` threads (1: a current-thread runtime, where
/// connection tasks never wake each other across threads), off the caller's runtime.
async fn run_load(load: &Arc<Load>, threads: usize) -> anyhow::Result<()> {
    let load = load.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let runtime = if threads == 1 {
            tokio::runtime::Builder::new_current_thread().enable_all().build()
        } else {
            tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
        }
        .context("starting the load's runtime")?;
        runtime.block_on(load.run())
    })
    .await;
    joined.context("the load's thread failed")?
}

/// The first line on stderr: what this run does.
fn banner(s: &Settings) -> String {
    let length = match s.stop {
        StopRule::After(d) => format!("{:.1} s", d.as_secs_f64()),
        StopRule::Requests(n) => format!("{n} requests"),
    };
    let route = match (s.mode, s.batch_size) {
        (Mode::Check, _) => "POST usage/check".to_owned(),
        (Mode::Healthz, _) => "GET /healthz".to_owned(),
        (Mode::Reserve, _) => "POST reservations + POST reservations/{id}/commit".to_owned(),
        (Mode::Record, 1) => "POST usage".to_owned(),
        (Mode::Record, n) => format!("POST usage/batch × {n}"),
    };
    format!(
        "tally bench: {} — {route}, {} connections, {length} after {:.1} s warm-up; {} tenants × {} metrics, \
         amount {}, {} limit {}, hot share {}, idempotency {}; run {}",
        s.url,
        s.connections,
        s.warmup.as_secs_f64(),
        s.tenants,
        s.metrics,
        s.amount,
        value_name(&s.enforcement),
        s.limit,
        s.hot_share,
        value_name(&s.idempotency),
        s.run_id
    )
}
