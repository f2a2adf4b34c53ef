//! What each request carries, as a pure function of its ticket (its number in the run).
//!
//! Tickets walk the (tenant, metric) pairs round-robin, so that N requests spread exactly
//! evenly (tenant = ticket mod tenants, so the requests in flight at once go to different
//! tenants), except the hot share, which goes to tenant 0 and metric m1. Amounts in a range and
//! the hot draw come from a hash of the ticket. Nothing is stored per request: the answer is
//! matched to its events by recomputing them from the ticket.

use std::fmt::Write;

use super::options::{Idempotency, Mode, Settings};

/// Seeds of the per-ticket draws, so that the hot draw and the amount draw are independent.
const SEED_HOT: u64 = 0x9e37_79b9_7f4a_7c15;
const SEED_AMOUNT: u64 = 0xd1b5_4a32_d192_ed03;

/// SplitMix64: a cheap, well-mixed hash of a counter.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One event of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub metric: u32,
    pub amount: i64,
}

/// The request generator.
#[derive(Clone, Debug)]
pub struct Workload {
    tenants: u64,
    metrics: u64,
    batch: u64,
    amount_low: i64,
    amount_span: u64,
    /// A ticket is hot when its hash is below this (`None`: never; `u64::MAX` and share 1.0: always).
    hot_below: Option<u64>,
    hot_all: bool,
    mode: Mode,
    keyed: bool,
    /// Prefix of idempotency keys, fresh on every invocation so that keys never repeat across
    /// runs, even with the same --run-id.
    key_prefix: String,
}

impl Workload {
    pub fn new(settings: &Settings, key_prefix: String) -> Workload {
        let hot_all = settings.hot_share >= 1.0;
        let hot_below =
            (settings.hot_share > 0.0 && !hot_all).then_some((settings.hot_share * u64::MAX as f64) as u64);
        Workload {
            tenants: u64::from(settings.tenants),
            metrics: u64::from(settings.metrics),
            batch: u64::from(settings.batch_size),
            amount_low: settings.amount.low,
            amount_span: (settings.amount.high - settings.amount.low) as u64 + 1,
            hot_below,
            hot_all,
            mode: settings.mode,
            keyed: settings.mode == Mode::Record && settings.idempotency != Idempotency::None,
            key_prefix,
        }
    }

    /// Events per request.
    pub fn batch_len(&self) -> usize {
        self.batch as usize
    }

    /// Whether the batch route is used.
    pub fn batched(&self) -> bool {
        self.batch > 1
    }

    fn is_hot(&self, ticket: u64) -> bool {
        self.hot_all || self.hot_below.is_some_and(|below| splitmix64(ticket ^ SEED_HOT) < below)
    }

    /// The tenant (index) of a request.
    pub fn tenant(&self, ticket: u64) -> u32 {
        if self.is_hot(ticket) { 0 } else { (ticket % self.tenants) as u32 }
    }

    /// Event `i` of a request.
    pub fn event(&self, ticket: u64, i: usize) -> Event {
        let metric = if self.is_hot(ticket) {
            0
        } else {
            ((ticket / self.tenants).wrapping_mul(self.batch).wrapping_add(i as u64) % self.metrics) as u32
        };
        let amount = if self.amount_span == 1 {
            self.amount_low
        } else {
            let draw = splitmix64(ticket.wrapping_mul(self.batch).wrapping_add(i as u64) ^ SEED_AMOUNT);
            self.amount_low + (draw % self.amount_span) as i64
        };
        Event { metric, amount }
    }

    /// Index of a (tenant, metric) pair in per-pair tables.
    pub fn pair(&self, tenant: u32, metric: u32) -> usize {
        tenant as usize * self.metrics as usize + metric as usize
    }

    /// Writes the request's JSON body into `out` (cleared first).
    pub fn write_body(&self, ticket: u64, out: &mut String) {
        out.clear();
        if self.batched() {
            out.push_str(r#"{"events":["#);
            for i in 0..self.batch_len() {
                if i > 0 {
                    out.push(',');
                }
                self.write_event(ticket, i, Some(i), out);
            }
            out.push_str("]}");
        } else {
            self.write_event(ticket, 0, None, out);
        }
    }

    fn write_event(&self, ticket: u64, i: usize, item: Option<usize>, out: &mut String) {
        let event = self.event(ticket, i);
        // Writing into a String cannot fail.
        let _ = write!(out, r#"{{"metric_code":"m{}","amount":{}"#, event.metric + 1, event.amount);
        if self.mode == Mode::Reserve {
            out.push_str(r#","ttl_seconds":60"#);
        }
        if self.keyed && self.mode == Mode::Record {
            let _ = match item {
                Some(i) => write!(out, r#","idempotency_key":"{}-{ticket}-{i}""#, self.key_prefix),
                None => write!(out, r#","idempotency_key":"{}-{ticket}""#, self.key_prefix),
            };
        }
        out.push('}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::options::{AmountRange, BenchArgs};
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn workload(extra: &[&str]) -> Workload {
        let mut argv = vec!["bench", "--admin-key", "k"];
        argv.extend_from_slice(extra);
        let settings = Settings::from_args(&Cli::try_parse_from(argv).unwrap().args).unwrap();
        Workload::new(&settings, "kp".to_owned())
    }

    #[test]
    fn requests_spread_exactly_evenly_over_the_pairs() {
        let w = workload(&["--tenants", "20", "--metrics", "5"]);
        let mut per_pair = vec![0u32; 100];
        for ticket in 0..2000 {
            per_pair[w.pair(w.tenant(ticket), w.event(ticket, 0).metric)] += 1;
        }
        assert!(per_pair.iter().all(|&n| n == 20), "{per_pair:?}");
        // Consecutive tickets (the requests in flight together) go to different tenants.
        let tenants: std::collections::HashSet<u32> = (0..20).map(|t| w.tenant(t)).collect();
        assert_eq!(tenants.len(), 20);
    }

    #[test]
    fn batches_spread_their_events_over_the_metrics() {
        let w = workload(&["--tenants", "20", "--metrics", "5", "--batch-size", "10"]);
        let mut per_pair = vec![0u32; 100];
        for ticket in 0..500 {
            for i in 0..10 {
                per_pair[w.pair(w.tenant(ticket), w.event(ticket, i).metric)] += 1;
            }
        }
        assert!(per_pair.iter().all(|&n| n == 50), "{per_pair:?}");
    }

    #[test]
    fn the_hot_share_goes_to_one_pair() {
        let w = workload(&["--hot-share", "0.3"]);
        let hot = (0..100_000u64).filter(|&t| w.tenant(t) == 0 && w.event(t, 0).metric == 0).count();
        // 30% hot, plus the round-robin's own 1 in 5000.
        assert!((29_000..31_000).contains(&hot), "{hot}");
        let all = workload(&["--hot-share", "1"]);
        assert!((0..1000).all(|t| all.tenant(t) == 0 && all.event(t, 0).metric == 0));
    }

    #[test]
    fn amounts_stay_in_their_range_and_cover_it() {
        let w = workload(&["--amount", "3..6"]);
        let range = AmountRange { low: 3, high: 6 };
        let seen: std::collections::BTreeSet<i64> = (0..1000).map(|t| w.event(t, 0).amount).collect();
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), (range.low..=range.high).collect::<Vec<_>>());
    }

    #[test]
    fn bodies_are_valid_json_with_the_right_members() {
        let mut out = String::new();
        workload(&["--tenants", "3"]).write_body(4, &mut out);
        assert_eq!(out, r#"{"metric_code":"m2","amount":1,"idempotency_key":"kp-4"}"#);
        workload(&["--idempotency", "none"]).write_body(4, &mut out);
        assert_eq!(out, r#"{"metric_code":"m1","amount":1}"#);
        workload(&["--mode", "check", "--amount", "9"]).write_body(0, &mut out);
        assert_eq!(out, r#"{"metric_code":"m1","amount":9}"#);
        workload(&["--batch-size", "3", "--tenants", "1"]).write_body(1, &mut out);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let events = v["events"].as_array().unwrap();
        assert_eq!(events.len(), 3);
        assert_eq!(events[0]["metric_code"], "m4");
        assert_eq!(events[2]["idempotency_key"], "kp-1-2");
    }
}
