//! Truncated and mutated recordings, garbage: never a panic, memory bounded, invariants kept.

use bytes::Bytes;

use super::super::{H2Conn, MAX_HEADER_BLOCK, MAX_OPEN_STREAMS, Segment};
use crate::protocol::testutil::{self, RecEvent, To};

/// Replays and checks the invariants the parser promises whatever the input.
fn replay_checked(mut conn: H2Conn, events: &[RecEvent]) {
    let mut fed = 0u64;
    let mut out = Vec::new();
    for ev in events {
        fed += ev.seg.len;
        match ev.to {
            To::Server => conn.push_client(ev.seg.clone()),
            To::Client => conn.push_server(ev.seg.clone()),
        }
        out.extend(conn.take_streams());
        assert!(conn.open.len() <= MAX_OPEN_STREAMS);
        for side in &conn.sides {
            assert!(
                side.block
                    .as_ref()
                    .is_none_or(|b| b.buf.len() <= MAX_HEADER_BLOCK)
            );
            assert!(side.buf.len() <= MAX_HEADER_BLOCK);
        }
    }
    conn.close(u64::MAX);
    out.extend(conn.take_streams());
    let stats = conn.stats();
    assert!(stats.bytes_skipped <= fed, "{stats:?} fed {fed}");
    for s in &out {
        assert!(
            s.request_start_ns <= s.request_end_ns || s.request_end_ns == 0,
            "{s:?}"
        );
        assert!(
            s.response_start_ns <= s.response_end_ns || s.response_end_ns == 0,
            "{s:?}"
        );
        assert!(s.request_body_len + s.response_body_len <= fed);
    }
}

/// All bytes of a recording as one list of (direction, byte index) positions to mutate.
fn flat_len(events: &[RecEvent]) -> usize {
    events.iter().map(|e| e.seg.data.len()).sum()
}

fn mutate(events: &[RecEvent], mut at: usize, f: impl Fn(u8) -> u8) -> Vec<RecEvent> {
    let mut out = events.to_vec();
    for ev in &mut out {
        let n = ev.seg.data.len();
        if at < n {
            let mut d = ev.seg.data.to_vec();
            d[at] = f(d[at]);
            ev.seg = Segment::full(ev.seg.ts_ns, d);
            break;
        }
        at -= n;
    }
    out
}

fn truncate(events: &[RecEvent], mut at: usize) -> Vec<RecEvent> {
    let mut out = Vec::new();
    for ev in events {
        let n = ev.seg.data.len();
        if at < n {
            out.push(RecEvent {
                to: ev.to,
                seg: Segment::full(ev.seg.ts_ns, ev.seg.data.slice(..at)),
            });
            break;
        }
        out.push(ev.clone());
        at -= n;
    }
    out
}

/// Offsets to try: all of them for small recordings, a spread for big ones, always the first
/// 2 KiB (preface, settings, first header blocks).
fn offsets(len: usize) -> Vec<usize> {
    if len <= 12_000 {
        return (0..len).collect();
    }
    let mut v: Vec<usize> = (0..2048).collect();
    v.extend((2048..len).step_by(len / 500));
    v
}

#[test]
fn every_truncation_and_mutation_of_recordings() {
    for name in testutil::recordings("http2") {
        let events = testutil::load_rec("http2", &name);
        let len = flat_len(&events);
        for at in offsets(len) {
            replay_checked(H2Conn::new(), &truncate(&events, at));
            replay_checked(H2Conn::new(), &mutate(&events, at, |b| b ^ 0xff));
            replay_checked(
                H2Conn::mid_stream(),
                &mutate(&events, at, |b| b.wrapping_add(1)),
            );
        }
    }
}

#[test]
fn random_garbage_in_every_mode() {
    let mut x = 99u64;
    let mut next = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) as u32
    };
    for round in 0..300 {
        let mut events = Vec::new();
        for i in 0..40 {
            let n = (next() % 300) as usize;
            let data: Vec<u8> = (0..n).map(|_| next() as u8).collect();
            let gap = if next() % 4 == 0 {
                u64::from(next() % 100_000)
            } else {
                0
            };
            let tail: Vec<u8> = if gap > 0 {
                (0..next() % 64).map(|_| next() as u8).collect()
            } else {
                Vec::new()
            };
            events.push(RecEvent {
                to: if next() % 2 == 0 {
                    To::Server
                } else {
                    To::Client
                },
                seg: Segment::prefix(i, Bytes::from(data), n as u64 + gap).with_tail(tail),
            });
        }
        let conn = match round % 3 {
            0 => H2Conn::new(),
            1 => H2Conn::mid_stream(),
            _ => H2Conn::after_upgrade(Vec::new(), 1),
        };
        replay_checked(conn, &events);
    }
}

/// Garbage that is *almost* HTTP/2: valid frame headers with random payloads and lengths.
#[test]
fn frame_shaped_garbage() {
    let mut x = 7u64;
    let mut next = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) as u32
    };
    for round in 0..300 {
        let mut events = Vec::new();
        for i in 0..30 {
            let mut data = Vec::new();
            for _ in 0..(next() % 4) {
                let len = next() % 64;
                data.extend_from_slice(&len.to_be_bytes()[1..]);
                data.push((next() % 11) as u8);
                data.push(next() as u8);
                data.extend_from_slice(&(next() % 16).to_be_bytes());
                data.extend((0..len).map(|_| next() as u8));
            }
            events.push(RecEvent {
                to: if next() % 2 == 0 {
                    To::Server
                } else {
                    To::Client
                },
                seg: Segment::full(i, data),
            });
        }
        let conn = if round % 2 == 0 {
            H2Conn::new()
        } else {
            H2Conn::mid_stream()
        };
        replay_checked(conn, &events);
    }
}
