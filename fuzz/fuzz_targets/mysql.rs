//! Drives one `MysqlConn` with arbitrary segments in both directions, in the format of
//! `segments.rs` (large gaps `next byte << 20`, copied tails). `close()` is always called at the
//! end. Besides "no panic, no hang", the target checks the invariants the parser promises
//! whatever the input: counters within what was fed, timestamps from the segments, texts from
//! the client's own bytes, and bounded text sizes. Every input is also tried with the server's
//! greeting of a real MariaDB in front, so that the command phase is reached quickly.

#![no_main]

mod segments;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use segments::{Segments, Step, contains};
use socktrace::protocol::{
    Segment,
    mysql::{Call, MAX_KEEP, MysqlConn},
};

/// A MariaDB 10.11 greeting and a login with database "shop", then its OK.
const GREETING: &[u8] = b"\x64\x00\x00\x00\x0a5.5.5-10.11.19-MariaDB-0+deb12u1\x00\x03\x00\x00\x00abcdefgh\x00\xfe\xf7\x2d\x02\x00\xff\x81\x15\x00\x00\x00\x00\x00\x00\x1d\x00\x00\x00ijklmnopqrst\x00mysql_native_password\x00";

fn run(data: &[u8], prelude: bool) {
    let mut conn = MysqlConn::new();
    let mut fed = 0u64;
    let mut client_bytes = Vec::new();
    let mut out: Vec<Call> = Vec::new();
    if prelude {
        fed += GREETING.len() as u64;
        conn.push_server(Segment::full(0, Bytes::from_static(GREETING)));
    }
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
                    conn.push_server(seg);
                } else {
                    client_bytes.extend_from_slice(&seg.data);
                    client_bytes.extend_from_slice(&seg.tail);
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
    assert!(stats.bytes_skipped <= fed, "{stats:?} fed {fed}");
    assert!(stats.invalid_messages <= fed, "{stats:?} fed {fed}");
    assert!(stats.encrypted_sessions <= 1 && stats.compressed_sessions <= 1);
    // Every call comes from a command of at least 5 bytes (header and command byte).
    assert!(out.len() as u64 <= fed / 5 + 1, "{} calls from {fed}", out.len());
    for c in &out {
        assert!((1..=ts).contains(&c.start_ns) && c.end_ns <= ts, "{c:?}");
        assert!(c.start_ns <= c.end_ns, "{c:?}");
        if let Some(q) = &c.query {
            assert!(q.len() <= MAX_KEEP, "{c:?}");
            if !q.contains('\u{fffd}') {
                assert!(contains(&client_bytes, q.as_bytes()), "{c:?} not from the client");
            }
        }
        // The sanitizer never panics and never grows the text.
        if let Some(q) = &c.query {
            assert!(socktrace::protocol::mysql::sanitize(q).len() <= q.len());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    run(data, false);
    run(data, true);
});
