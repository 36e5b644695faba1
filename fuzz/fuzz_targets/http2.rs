//! Drives one `H2Conn` with arbitrary segments in both directions.
//!
//! Input format: one mode byte (`% 3`: `new()`, `mid_stream()`, `after_upgrade()`), then,
//! repeated until the input ends, one control byte
//! * bit 0: direction (0: client -> server, 1: server -> client);
//! * bits 1-2: 0 no gap, 1 a gap of the next byte's value, 2 a gap of (next byte << 14) bytes,
//!   3 call `close()` instead of pushing a segment;
//! * bits 3-7: captured length 0..=30, or 31: 31 + the next byte;
//!
//! then that many captured bytes; when there is a gap, one more byte gives the length of a
//! copied tail, whose bytes follow. `close()` is always called at the end. Besides "no panic,
//! no hang", the target checks the invariants the parser promises whatever the input.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use socktrace::protocol::http2::{H2Conn, H2Stream, Header, Segment};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut input)) = data.split_first() else {
        return;
    };
    let mut conn = match mode % 3 {
        0 => H2Conn::new(),
        1 => H2Conn::mid_stream(),
        _ => H2Conn::after_upgrade(
            vec![Header {
                name: ":path".into(),
                value: "/".into(),
            }],
            1,
        ),
    };
    let mut ts = 1u64;
    let mut fed = 0u64;
    let mut out: Vec<H2Stream> = Vec::new();
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
            2 => u64::from(next().unwrap_or(0)) << 14,
            _ => {
                conn.close(ts);
                out.extend(conn.take_streams());
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
        let mut tail: &[u8] = &[];
        if gap > 0 {
            let t =
                usize::from(input.first().copied().unwrap_or(0)).min(input.len().saturating_sub(1));
            if !input.is_empty() {
                tail = &input[1..1 + t];
                input = &input[1 + t..];
            }
        }
        let seg = Segment::prefix(
            ts,
            Bytes::copy_from_slice(captured),
            len as u64 + gap + tail.len() as u64,
        )
        .with_tail(Bytes::copy_from_slice(tail));
        fed += seg.len;
        if ctrl & 1 == 0 {
            conn.push_client(seg);
        } else {
            conn.push_server(seg);
        }
        out.extend(conn.take_streams());
    }
    conn.close(ts + 1);
    out.extend(conn.take_streams());

    let stats = conn.stats();
    assert!(stats.bytes_skipped <= fed, "{stats:?} fed {fed}");
    for s in &out {
        assert!(
            s.request_body_len.saturating_add(s.response_body_len) <= fed,
            "{s:?}"
        );
        assert!(
            s.response_start_ns <= s.response_end_ns || s.response_end_ns == 0,
            "{s:?}"
        );
    }
});
