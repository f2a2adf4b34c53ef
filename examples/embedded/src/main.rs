//! A command-line walk through Tally embedded in a program: `cargo run -p
//! tally-example-embedded [sqlite://PATH]` (default: a fresh file in the temporary directory).

use tally_example_embedded::Quotas;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = match std::env::args().nth(1) {
        Some(url) => url,
        None => {
            let path = std::env::temp_dir().join(format!("tally-embedded-{}.db", std::process::id()));
            format!("sqlite://{}", path.display())
        }
    };
    let quotas = Quotas::open(&url).await?;
    quotas.define_plan("starter", "exports", 3).await?;
    quotas.add_customer("acme", "starter").await?;
    println!("database: {url}");
    for job in 1..=4 {
        let key = format!("export-job-{job}");
        match quotas.try_use("acme", "exports", 1, Some(&key)).await? {
            Ok(r) => println!("{key}: allowed, {} of {} used", r.current_usage, r.limit.unwrap_or(0)),
            Err(refusal) => println!("{key}: refused: {refusal}"),
        }
    }
    let again = quotas.try_use("acme", "exports", 1, Some("export-job-1")).await?;
    println!("export-job-1 again: replayed = {}", again.map(|r| r.replayed).unwrap_or(false));
    println!("acme has used {} exports this month", quotas.used("acme", "exports").await?);
    Ok(())
}
