//! Arbitrary (kind, at, anchor) into `PeriodKind::containing`: never a panic, and when it
//! answers `Ok(p)`, `p.start() <= at < p.end()`, the period containing `p.start()` is `p`,
//! and the next period (the one containing `p.end()`) starts at `p.end()`.
//!
//! Input: byte 0 picks the kind (low 3 bits, mod 5) and the mode (bits 3 and 4); then three
//! little-endian i64s (missing bytes are zero): `at` micros, `anchor` micros, `now` micros.
//! Instants are built with `tally_domain::time::from_micros` (years 1 to 9999, what Tally
//! stores), skipping those it refuses; by default each i64 is first folded into that range
//! so that most inputs count, with bit 4 set it is taken as it is. With bit 3 set, `at` and
//! `anchor` are any instant chrono can hold, where only "no panic" and containment are checked.
#![no_main]

use chrono::DateTime;
use libfuzzer_sys::fuzz_target;
use tally_domain::time::{TIMESTAMP_MICROS_MAX, TIMESTAMP_MICROS_MIN, from_micros};
use tally_domain::{PeriodKind, Timestamp};

const KINDS: [PeriodKind; 5] =
    [PeriodKind::Hour, PeriodKind::Day, PeriodKind::Week, PeriodKind::Month, PeriodKind::Year];

fn word(data: &[u8], i: usize) -> i64 {
    let mut buf = [0u8; 8];
    for (j, b) in buf.iter_mut().enumerate() {
        *b = data.get(1 + i * 8 + j).copied().unwrap_or(0);
    }
    i64::from_le_bytes(buf)
}

/// `raw` folded into `TIMESTAMP_MICROS_MIN..=TIMESTAMP_MICROS_MAX`.
fn fold(raw: i64) -> i64 {
    let span = i128::from(TIMESTAMP_MICROS_MAX) - i128::from(TIMESTAMP_MICROS_MIN) + 1;
    let folded = i128::from(TIMESTAMP_MICROS_MIN) + i128::from(raw).rem_euclid(span);
    i64::try_from(folded).expect("in range")
}

fn in_range(kind: PeriodKind, at: Timestamp, anchor: Timestamp, now: Timestamp) {
    let Ok(p) = kind.containing(at, anchor) else { return };
    assert!(p.start() <= at && at < p.end(), "{kind:?} {at} {anchor}: {p:?} does not contain at");
    assert!(p.contains(at));
    let again = kind.containing(p.start(), anchor);
    assert_eq!(again.ok(), Some(p), "{kind:?} {at} {anchor}: the period of its own start differs");
    if let Ok(next) = kind.containing(p.end(), anchor) {
        assert_eq!(next.start(), p.end(), "{kind:?} {at} {anchor}: a gap or overlap after {p:?}");
    }
    let secs = p.seconds_until_end(now);
    assert!(secs >= 0);
    if now >= p.end() {
        assert_eq!(secs, 0);
    }
}

fn any_range(kind: PeriodKind, at: Timestamp, anchor: Timestamp) {
    if let Ok(p) = kind.containing(at, anchor) {
        assert!(p.start() <= at && at < p.end(), "{kind:?} {at} {anchor}: {p:?} does not contain at");
        let _ = kind.containing(p.start(), anchor);
        let _ = kind.containing(p.end(), anchor);
    }
}

fuzz_target!(|data: &[u8]| {
    let head = data.first().copied().unwrap_or(0);
    let kind = KINDS[usize::from(head & 7) % KINDS.len()];
    let (at, anchor, now) = (word(data, 0), word(data, 1), word(data, 2));
    if head & 8 == 0 {
        let (at, anchor, now) =
            if head & 16 == 0 { (fold(at), fold(anchor), fold(now)) } else { (at, anchor, now) };
        let (Ok(at), Ok(anchor), Ok(now)) = (from_micros(at), from_micros(anchor), from_micros(now)) else {
            return;
        };
        in_range(kind, at, anchor, now);
    } else {
        let (Some(at), Some(anchor)) =
            (DateTime::from_timestamp_micros(at), DateTime::from_timestamp_micros(anchor))
        else {
            return;
        };
        any_range(kind, at, anchor);
    }
});
