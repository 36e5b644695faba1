//! Drives one `RedisConn` with arbitrary segments in both directions, in the format of
//! `segments.rs` (large gaps `next byte << 20`, copied tails). `close()` is always called at the
//! end. Besides "no panic, no hang", the target checks the invariants the parser promises
//! whatever the input: counters within what was fed, timestamps from the segments, command
//! names from the client's own bytes, and bounded text sizes.

#![no_main]

mod segments;

use libfuzzer_sys::fuzz_target;
use segments::{Segments, Step, contains};
use socktrace::protocol::redis::{Call, MAX_ERROR, MAX_NAME, RedisConn};

fuzz_target!(|data: &[u8]| {
    let mut conn = RedisConn::new();
    let mut fed = 0u64;
    let mut back = 0u64;
    let mut segs = 0u64;
    // Every copied client byte (prefix then tail), upper-cased as command names are.
    let mut client_bytes = Vec::new();
    let mut out: Vec<Call> = Vec::new();
    let mut steps = Segments::new(data, 0, 20, true);
    for step in steps.by_ref() {
        match step {
            Step::Close { ts } => conn.close(ts),
            Step::Push {
                server_to_client,
                seg,
            } => {
                fed += seg.len;
                segs += 1;
                if server_to_client {
                    back += seg.len;
                    conn.push_server(seg);
                } else {
                    client_bytes.extend(seg.data.iter().map(u8::to_ascii_uppercase));
                    client_bytes.extend(seg.tail.iter().map(u8::to_ascii_uppercase));
                    conn.push_client(seg);
                }
            }
        }
        out.extend(conn.take_calls());
    }
    let ts = steps.ts();
    conn.close(ts + 1);
    out.extend(conn.take_calls());

    let stats = conn.stats();
    // Every counted reply, push or attribute took at least one server byte (a reply cut by a
    // gap can be counted from its first byte).
    assert!(stats.bytes_skipped <= fed, "{stats:?} fed {fed}");
    assert!(stats.resyncs <= fed + segs, "{stats:?} fed {fed}");
    assert!(stats.unmatched_responses <= back, "{stats:?} server {back}");
    assert!(stats.pushes <= back, "{stats:?} server {back}");
    assert!(stats.attributes <= back, "{stats:?} server {back}");
    assert!(stats.dropped_calls <= fed / 2 + 1, "{stats:?} fed {fed}");
    assert!(
        out.len() as u64 <= (fed - back) / 2 + 1,
        "{} calls from {fed}",
        out.len()
    );
    for c in &out {
        assert!(c.start_ns <= c.end_ns, "{c:?}");
        assert!((1..=ts).contains(&c.start_ns) && c.end_ns <= ts, "{c:?}");
        assert!(c.command.len() <= 2 * MAX_NAME + 1, "{c:?}");
        for word in c.command.split(' ') {
            assert!(
                contains(&client_bytes, word.as_bytes()),
                "{c:?} not from the client"
            );
        }
        if let Some(e) = &c.error {
            assert!(e.len() <= MAX_ERROR, "{c:?}");
        }
        assert!(c.keys <= c.args, "{c:?}");
    }
});
