//! Checks, then records, one unit of a metric for a tenant, failing open when Tally cannot be
//! reached, and shows the tenant's usage.
//!
//! ```sh
//! cargo run -p tally-cli -- demo     # prints a URL and keys
//! TALLY_URL=http://127.0.0.1:8080 TALLY_KEY=tly_... \
//!     cargo run -p tally-client --example record_and_check -- acme api_calls
//! ```
//!
//! Arguments: tenant (default `acme`) and metric (default `api_calls`).

use std::process::ExitCode;

use tally_client::{CheckRequest, Checked, Client, Error, Recorded, Unreachable, UsageRequest};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> Result<ExitCode, Error> {
    let url = std::env::var("TALLY_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".to_owned());
    let key =
        std::env::var("TALLY_KEY").map_err(|_| Error::Config("set TALLY_KEY to an API key".to_owned()))?;
    let mut args = std::env::args().skip(1);
    let tenant = args.next().unwrap_or_else(|| "acme".to_owned());
    let metric = args.next().unwrap_or_else(|| "api_calls".to_owned());
    let tally = Client::new(url, key)?;

    match tally.check_with(&tenant, &CheckRequest::new(&metric, 1), Unreachable::FailOpen).await? {
        Checked::Answered(c) => println!(
            "check: allowed={} current_usage={} limit={:?} remaining={:?}",
            c.allowed, c.current_usage, c.limit, c.remaining
        ),
        Checked::Unverified(e) => println!("check: Tally cannot be reached ({e}); allowed"),
    }

    let usage = UsageRequest::new(&metric, 1).with_metadata(serde_json::json!({"source": "example"}));
    match tally.record_with(&tenant, &usage, Unreachable::FailOpen).await {
        Ok(Recorded::Stored(r)) => {
            println!(
                "recorded: current_usage={} remaining={:?} replayed={}",
                r.current_usage, r.remaining, r.replayed
            );
        }
        Ok(Recorded::Queued(u)) | Ok(Recorded::Dropped(u)) => {
            println!("Tally cannot be reached ({}); allowed without recording", u.cause);
            // A real service would call replay_pending() later; this one tries once more.
            match tally.replay_pending().await {
                Ok(report) => println!("replayed: {} recorded", report.recorded + report.already_recorded),
                Err(e) => println!("still unreachable: {e}; {} event(s) lost on exit", tally.pending_len()),
            }
            return Ok(ExitCode::SUCCESS);
        }
        Err(Error::QuotaExceeded(q)) => {
            println!(
                "refused: {} used of {}, {} requested; free again at {:?}",
                q.current_usage, q.limit, q.requested, q.period_end
            );
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e),
    }

    for m in tally.usage(&tenant).await?.metrics {
        println!("{:<20} {:>12} / {:?} ({:?})", m.metric_code, m.current_usage, m.limit, m.enforcement);
    }
    Ok(ExitCode::SUCCESS)
}
