//! Arbitrary strings into the public cursor and query-value decoders: the events cursor of
//! `GET /v1/tenants/{id}/events` (`tally_service::usage::decode_event_cursor`), a query's
//! `limit` and an RFC 3339 instant. Never a panic; a decoded cursor encodes to one that
//! decodes to the same cursor, and the instant it holds lies in years 1 to 9999.
//! (The admin UI's cursor decoders live in a private module of tally-http and are not here.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_domain::limits::PAGE_LEN_MAX;
use tally_domain::time::{from_micros, to_micros};
use tally_http::dto::{parse_instant, parse_limit};
use tally_service::usage::{decode_event_cursor, encode_event_cursor};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };

    if let Ok(c) = decode_event_cursor(s) {
        assert!(from_micros(to_micros(c.timestamp)).is_ok());
        let encoded = encode_event_cursor(&c);
        assert_eq!(decode_event_cursor(&encoded).ok(), Some(c), "{s:?} -> {encoded:?}");
    }

    if let Ok(n) = parse_limit(Some(s), 100) {
        assert!((1..=PAGE_LEN_MAX).contains(&n));
        assert_eq!(s.parse::<u32>().ok(), Some(n));
    }

    if let Ok(Some(t)) = parse_instant("from", Some(s)) {
        assert_eq!(t.timestamp_subsec_nanos() % 1_000, 0, "not truncated to micros");
    }
});
