//! Drives one `Http1Conn` with arbitrary segments in both directions.
//!
//! Input format, repeated until the input ends: one control byte
//! * bit 0: direction (0: client -> server, 1: server -> client);
//! * bits 1-2: 0 no gap, 1 a gap of the next byte's value, 2 a gap of (next byte << 20) bytes,
//!   3 call `close()` instead of pushing a segment;
//! * bits 3-7: captured length 0..=30, or 31: 31 + the next byte;
//!
//! then that many captured bytes. `close()` is always called at the end. Besides "no panic, no
//! hang", the target checks the invariants the parser promises whatever the input.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use socktrace::protocol::http1::{Exchange, Http1Conn, MAX_HEAD_LEN, Segment};

fuzz_target!(|data: &[u8]| {
    let mut conn = Http1Conn::new();
    let mut input = data;
    let mut ts = 0u64;
    let mut fed = 0u64;
    let mut out: Vec<Exchange> = Vec::new();
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
                out.extend(conn.take_exchanges());
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
            conn.push_request(seg);
        } else {
            conn.push_response(seg);
        }
        out.extend(conn.take_exchanges());
    }
    conn.close(ts + 1);
    out.extend(conn.take_exchanges());

    let stats = conn.stats();
    assert!(stats.bytes_skipped <= fed, "{stats:?} fed {fed}");
    assert!(stats.invalid_heads <= fed, "{stats:?} fed {fed}");
    for x in &out {
        assert!(x.request_start_ns <= x.request_end_ns, "{x:?}");
        assert!(x.request.head_len <= MAX_HEAD_LEN, "{x:?}");
        match &x.response {
            Some(_) => assert!(x.response_start_ns <= x.response_end_ns, "{x:?}"),
            None => assert!(x.partial && x.response_end_ns == 0, "{x:?}"),
        }
    }
});
