//! Drives one `PgConn` with arbitrary segments in both directions, in the format of
//! `segments.rs` (large gaps `next byte << 20`, copied tails). `close()` is always called at the
//! end. Besides "no panic, no hang", the target checks the invariants the parser promises
//! whatever the input: counters within what was fed, timestamps from the segments, texts from
//! the client's own bytes, and bounded text sizes.

#![no_main]

mod segments;

use libfuzzer_sys::fuzz_target;
use segments::{Segments, Step, contains};
use socktrace::protocol::postgres::{MAX_KEEP, PgConn, Statement};

fuzz_target!(|data: &[u8]| {
    let mut conn = PgConn::new();
    let mut fed = 0u64;
    let mut back = 0u64;
    let mut front_bytes = Vec::new();
    let mut out: Vec<Statement> = Vec::new();
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
                    back += seg.len;
                    conn.push_backend(seg);
                } else {
                    // Every copied client byte, prefix then tail.
                    front_bytes.extend_from_slice(&seg.data);
                    front_bytes.extend_from_slice(&seg.tail);
                    conn.push_frontend(seg);
                }
            }
        }
        out.extend(conn.take_statements());
    }
    let ts = steps.ts();
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
