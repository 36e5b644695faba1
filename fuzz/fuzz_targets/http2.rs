//! Drives one `H2Conn` with arbitrary segments in both directions.
//!
//! Input format: one mode byte (`% 3`: `new()`, `mid_stream()`, `after_upgrade()`), then
//! segments in the format of `segments.rs` (large gaps `next byte << 14`, with tails).
//! `close()` is always called at the end. Besides "no panic, no hang", the target checks the
//! invariants the parser promises whatever the input.

#![no_main]

mod segments;

use libfuzzer_sys::fuzz_target;
use segments::{Segments, Step};
use socktrace::protocol::http2::{H2Conn, H2Stream, Header};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else {
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
    let mut fed = 0u64;
    let mut out: Vec<H2Stream> = Vec::new();
    let mut steps = Segments::new(input, 1, 14, true);
    for step in steps.by_ref() {
        match step {
            Step::Close { ts } => conn.close(ts),
            Step::Push {
                server_to_client,
                seg,
            } => {
                fed += seg.len;
                if server_to_client {
                    conn.push_server(seg);
                } else {
                    conn.push_client(seg);
                }
            }
        }
        out.extend(conn.take_streams());
    }
    conn.close(steps.ts() + 1);
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
