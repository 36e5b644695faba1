//! Garbage, truncation and gaps: never a panic, bounded memory, counters instead of errors.

use super::super::MAX_KEEP;
use super::*;

fn feed_random(seed: u64, rounds: usize) {
    let base = load_rec("pymysql_client");
    let mut rng = Rng(seed);
    for _ in 0..rounds {
        let mut conn = MysqlConn::new();
        let mut ts = 0;
        for _ in 0..rng.below(40) {
            ts += 1;
            let mut data: Vec<u8> = if rng.below(3) == 0 {
                // A slice of a real recording: plausible headers.
                let ev = &base[rng.below(base.len())];
                let d = &ev.seg.data;
                let a = rng.below(d.len());
                d[a..(a + rng.below(300)).min(d.len())].to_vec()
            } else {
                (0..rng.below(64)).map(|_| rng.next() as u8).collect()
            };
            if rng.below(4) == 0 && !data.is_empty() {
                data[0] = rng.below(4) as u8;
            }
            let gap = match rng.below(5) {
                0 => rng.below(100) as u64,
                1 => rng.next() % (1 << 40),
                _ => 0,
            };
            let len = data.len() as u64 + gap;
            let seg = Segment::prefix(ts, Bytes::from(data), len);
            if rng.below(2) == 0 {
                conn.push_client(seg);
            } else {
                conn.push_server(seg);
            }
            for c in conn.take_calls() {
                assert!(c.start_ns <= c.end_ns || c.partial, "{c:?}");
                assert!(c.query.as_ref().is_none_or(|q| q.len() <= MAX_KEEP));
            }
            assert!(conn.buffered() <= 2 * (MAX_KEEP + 1) + 8192);
        }
        conn.close(ts + 1);
        conn.take_calls();
    }
}

#[test]
fn random_input_never_panics() {
    feed_random(1, 3000);
    feed_random(99, 3000);
}

#[test]
fn every_truncation_of_a_recording() {
    for name in ["cli_queries", "connector_prepared"] {
        let events = load_rec(name);
        let total: usize = events.iter().map(|e| e.seg.data.len()).sum();
        for cut in (0..total).step_by(7) {
            // Everything up to `cut` bytes of the whole conversation.
            let mut left = cut;
            let mut evs = Vec::new();
            for e in &events {
                if left == 0 {
                    break;
                }
                let n = e.seg.data.len().min(left);
                left -= n;
                evs.push(Event {
                    to: e.to,
                    seg: Segment::full(e.seg.ts_ns, e.seg.data.slice(..n)),
                });
            }
            let (calls, _) = replay(&evs);
            assert!(calls.iter().all(|c| c.start_ns <= c.end_ns));
        }
    }
}

#[test]
fn garbage_before_the_greeting_and_huge_lengths() {
    let mut conn = MysqlConn::new();
    conn.push_server(seg(1, b"HTTP/1.1 200 OK\r\n\r\n"));
    conn.push_client(seg(2, &[0xff, 0xff, 0xff, 0, 3, b'S']));
    conn.push_client(Segment::prefix(3, Bytes::new(), u64::MAX / 2));
    conn.push_server(Segment::prefix(
        4,
        Bytes::from_static(&[1, 0, 0, 1, 0xff]),
        u64::MAX,
    ));
    conn.close(5);
    let calls = conn.take_calls();
    assert!(calls.iter().all(|c| c.partial), "{calls:?}");
    assert!(conn.buffered() <= 2 * (MAX_KEEP + 1));
}
