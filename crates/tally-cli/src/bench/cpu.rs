//! CPU time of other processes over the measured window (`--cpu-pid`, `--cpu-postgres`):
//! user + system time from `/proc/<pid>/stat`, read when the measured load starts and when
//! it ends, so the setup, the warm-up and the checks are not counted. Linux only; elsewhere
//! the figures are absent.

use std::time::Instant;

/// `/proc` counts CPU time in clock ticks of `USER_HZ`, which Linux fixes at 100 for user space.
const USER_HZ: u64 = 100;

/// User + system CPU time of `pid` so far, in microseconds; `None` when it cannot be read.
fn cpu_us_of(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields count from after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of the whole line, utime 14 and stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 1_000_000 / USER_HZ)
}

/// The pids of every process whose command is `postgres`.
fn postgres_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == "postgres")
        })
        .collect()
}

/// One reading: the server's CPU and the sum over PostgreSQL's processes.
#[derive(Clone, Copy, Debug, Default)]
struct Reading {
    server_us: Option<u64>,
    postgres_us: Option<u64>,
}

fn read(pid: Option<u32>, postgres: bool) -> Reading {
    Reading {
        server_us: pid.and_then(cpu_us_of),
        postgres_us: postgres.then(|| postgres_pids().into_iter().filter_map(cpu_us_of).sum()),
    }
}

/// CPU spent over the measured window, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuUsed {
    pub server_us: Option<u64>,
    pub postgres_us: Option<u64>,
}

/// Reads at `start` and at `end`; answers once `end` has passed.
pub async fn sample(pid: Option<u32>, postgres: bool, start: Instant, end: Instant) -> CpuUsed {
    if pid.is_none() && !postgres {
        return CpuUsed::default();
    }
    tokio::time::sleep_until(start.into()).await;
    let first = read(pid, postgres);
    tokio::time::sleep_until(end.into()).await;
    let last = read(pid, postgres);
    let diff = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?));
    CpuUsed {
        server_us: diff(first.server_us, last.server_us),
        postgres_us: diff(first.postgres_us, last.postgres_us),
    }
}

/// Microseconds per request, to one decimal.
pub fn per_request(us: Option<u64>, requests: u64) -> Option<f64> {
    let us = us?;
    (requests > 0).then(|| (us as f64 / requests as f64 * 10.0).round() / 10.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn this_process_has_a_cpu_time_that_grows() {
        let me = std::process::id();
        let before = cpu_us_of(me).expect("readable on Linux");
        let mut x = 0u64;
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(cpu_us_of(me).unwrap() >= before);
        assert_eq!(per_request(Some(1_000), 10), Some(100.0));
        assert_eq!(per_request(Some(1_000), 0), None);
        assert_eq!(per_request(None, 10), None);
    }
}
