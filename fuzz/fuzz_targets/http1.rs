//! Drives one `Http1Conn` with arbitrary segments in both directions, in the format of
//! `segments.rs` (large gaps `next byte << 20`, copied tails). `close()` is always called at the
//! end. Besides "no panic, no hang", the target checks the invariants the parser promises
//! whatever the input.

#![no_main]

mod segments;

use libfuzzer_sys::fuzz_target;
use segments::{Segments, Step};
use socktrace::protocol::http1::{Exchange, Http1Conn, MAX_HEAD_LEN};

fuzz_target!(|data: &[u8]| {
    let mut conn = Http1Conn::new();
    let mut fed = 0u64;
    let mut out: Vec<Exchange> = Vec::new();
    let mut steps = Segments::new(data, 0, 20, true);
    for step in steps.by_ref() {
        match step {
            Step::Close { ts } => conn.close(ts),
            Step::Push {
                server_to_client,
                seg,
            } => {
                fed += seg.len;
                if server_to_client {
                    conn.push_response(seg);
                } else {
                    conn.push_request(seg);
                }
            }
        }
        out.extend(conn.take_exchanges());
    }
    conn.close(steps.ts() + 1);
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
