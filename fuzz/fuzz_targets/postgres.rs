//! Drives one `PgConn` with arbitrary segments in both directions.
//!
//! Input format, repeated until the input ends: one control byte
//! * bit 0: direction (0: client -> server, 1: server -> client);
//! * bits 1-2: 0 no gap, 1 a gap of the next byte's value, 2 a gap of (next byte << 20) bytes,
//!   3 call `close()` instead of pushing a segment;
//! * bits 3-7: captured length 0..=30, or 31: 31 + the next byte;
//!
//! then that many captured bytes. `close()` is always called at the end. Besides "no panic, no
//! hang", the target checks the invariants the parser promises whatever the input: counters
//! within what was fed, timestamps from the segments, texts from the client's own bytes, and
//! bounded text sizes.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use socktrace::protocol::postgres::{MAX_KEEP, PgConn, Segment, Statement};

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

fuzz_target!(|data: &[u8]| {
    let mut conn = PgConn::new();
    let mut input = data;
    let mut ts = 0u64;
    let mut fed = 0u64;
    let mut back = 0u64;
    let mut front_bytes = Vec::new();
    let mut out: Vec<Statement> = Vec::new();
    while let Some((&ctrl, rest)) = input.split_first() {
        input = rest;
        let mut next = || {
            let (&b, rest) = input.split_first()?;
            input = rest;
            Some(b)
        };
        ts += 1;
        let gap = match (ctrl >> 1) & 3 {
            0 => 0,
            1 => u64::from(next().unwrap_or(0)),
            2 => u64::from(next().unwrap_or(0)) << 20,
            _ => {
                conn.close(ts);
                out.extend(conn.take_statements());
                continue;
            }
        };
        let mut len = usize::from(ctrl >> 3);
        if len == 31 {
            len += usize::from(next().unwrap_or(0));
        }
        let len = len.min(input.len());
        let (captured, rest) = input.split_at(len);
        input = rest;
        let seg = Segment::prefix(ts, Bytes::copy_from_slice(captured), len as u64 + gap);
        fed += seg.len;
        if ctrl & 1 == 0 {
            front_bytes.extend_from_slice(captured);
            conn.push_frontend(seg);
        } else {
            back += seg.len;
            conn.push_backend(seg);
        }
        out.extend(conn.take_statements());
    }
    conn.close(ts + 1);
    out.extend(conn.take_statements());

    let stats = conn.stats();
    assert!(stats.bytes_skipped <= fed, "{stats:?} fed {fed}");
    assert!(stats.invalid_messages <= fed, "{stats:?} fed {fed}");
    assert!(
        stats.unmatched_responses <= back / 5,
        "{stats:?} backend {back}"
    );
    assert!(stats.encrypted_sessions <= 1, "{stats:?}");
    assert!(
        out.len() as u64 <= fed / 5 + 1,
        "{} statements from {fed}",
        out.len()
    );
    for s in &out {
        assert!(s.start_ns <= s.end_ns, "{s:?}");
        assert!((1..=ts).contains(&s.start_ns) && s.end_ns <= ts, "{s:?}");
        for text in [&s.query, &s.prepared_name].into_iter().flatten() {
            assert!(text.len() <= MAX_KEEP, "{s:?}");
            if !text.contains('\u{fffd}') {
                assert!(
                    contains(&front_bytes, text.as_bytes()),
                    "{s:?} not from the client"
                );
            }
        }
        if let Some(tag) = &s.command_tag {
            assert!(tag.len() <= 1024, "{s:?}");
        }
    }
});
