//! Robustness in the style of OBI's HTTP fuzz test: every truncation and single-byte mutations
//! of valid recordings, random re-segmentation with capture gaps, and random bytes. The parser
//! must never panic, never grow without bound, and keep its counters within what was fed.

use std::collections::HashSet;

use super::super::MAX_HEAD_LEN;
use super::*;

/// Small recordings covering keep-alive, chunked, bodies, HEAD, 1xx, pipelining and upgrade.
const SMALL: [&str; 7] = [
    "curl_keepalive",
    "curl_post",
    "curl_head",
    "curl_expect_continue",
    "curl_early_hints",
    "python_pipelined",
    "python_upgrade",
];

/// Deterministic xorshift64*, so that failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Invariants that must hold whatever the input.
fn check_bounds(what: &str, events: &[Event], xs: &[Exchange], conn: &Http1Conn) {
    let total: u64 = events
        .iter()
        .map(|e| e.seg.len)
        .fold(0, u64::saturating_add);
    let req_bytes: u64 = events
        .iter()
        .filter(|e| e.to == To::Server)
        .map(|e| e.seg.len)
        .fold(0, u64::saturating_add);
    let stats = conn.stats();
    assert!(
        stats.bytes_skipped <= total,
        "{what}: skipped {} of {total}",
        stats.bytes_skipped
    );
    assert!(
        stats.resyncs <= total.saturating_add(events.len() as u64),
        "{what}: {stats:?}"
    );
    assert!(stats.invalid_heads <= total, "{what}: {stats:?}");
    // A request line plus its end is at least "A * HTTP/1.1\n" (13 bytes); a cut one at least that.
    assert!(
        xs.len() as u64 <= req_bytes / 13 + 1,
        "{what}: {} exchanges from {req_bytes} bytes",
        xs.len()
    );
    assert!(
        stats.unanswered_requests_dropped <= req_bytes / 13 + 1,
        "{what}: {stats:?}"
    );
    let req_ts: HashSet<u64> = events
        .iter()
        .filter(|e| e.to == To::Server)
        .map(|e| e.seg.ts_ns)
        .collect();
    let resp_ts: HashSet<u64> = events
        .iter()
        .filter(|e| e.to == To::Client)
        .map(|e| e.seg.ts_ns)
        .collect();
    for x in xs {
        assert!(req_ts.contains(&x.request_start_ns), "{what}: {x:?}");
        assert!(req_ts.contains(&x.request_end_ns), "{what}: {x:?}");
        assert!(x.request_start_ns <= x.request_end_ns, "{what}: {x:?}");
        assert!(x.request.head_len <= MAX_HEAD_LEN, "{what}: {x:?}");
        match &x.response {
            Some(r) => {
                assert!(resp_ts.contains(&x.response_start_ns), "{what}: {x:?}");
                assert!(resp_ts.contains(&x.response_end_ns), "{what}: {x:?}");
                assert!(x.response_start_ns <= x.response_end_ns, "{what}: {x:?}");
                assert!(r.head_len <= MAX_HEAD_LEN, "{what}: {x:?}");
            }
            None => {
                assert!(x.partial, "{what}: unanswered but not partial: {x:?}");
                assert_eq!(
                    (x.response_start_ns, x.response_end_ns, x.response_body_len),
                    (0, 0, 0)
                );
            }
        }
    }
    // close() leaves nothing behind.
    assert_eq!(
        (conn.req.buffered(), conn.resp.buffered()),
        (0, 0),
        "{what}"
    );
}

/// The recording cut after `keep` bytes (over both directions, in order): the stream just ends.
fn truncated(events: &[Event], keep: usize) -> Vec<Event> {
    let mut out = Vec::new();
    let mut left = keep;
    for e in events {
        if left == 0 {
            break;
        }
        let n = left.min(e.seg.data.len());
        out.push(Event {
            to: e.to,
            seg: seg(e.seg.ts_ns, &e.seg.data[..n]),
        });
        left -= n;
    }
    out
}

fn mutated(events: &[Event], at: usize, value: u8) -> Vec<Event> {
    let mut out = events.to_vec();
    let mut at = at;
    for e in &mut out {
        if at < e.seg.data.len() {
            let mut data = e.seg.data.to_vec();
            data[at] = value;
            e.seg = seg(e.seg.ts_ns, &data);
            break;
        }
        at -= e.seg.data.len();
    }
    out
}

fn data_len(events: &[Event]) -> usize {
    events.iter().map(|e| e.seg.data.len()).sum()
}

/// Cutting a valid connection anywhere never produces a wrong clean exchange: exchange i is
/// request i of the recording, and if it is not partial it is exactly the recorded one.
#[test]
fn every_truncation_of_recordings() {
    for name in SMALL.iter().chain(&["curl_close", "curl_chunked_upload"]) {
        let events = load_rec(name);
        let (expected, _) = load_expected(name);
        // Read-until-close cannot tell a truncated body from a complete one.
        let until_close = *name == "curl_close";
        for keep in 0..=data_len(&events) {
            let cut = truncated(&events, keep);
            let (xs, conn) = replay(&cut);
            let what = format!("{name} cut at {keep}");
            check_bounds(&what, &cut, &xs, &conn);
            // Bytes of a head cut by the end may count as skipped; nothing else may go wrong.
            assert_eq!(
                (conn.stats().resyncs, conn.stats().invalid_heads),
                (0, 0),
                "{what}"
            );
            assert!(xs.len() <= expected.len(), "{what}");
            for (x, want) in xs.iter().zip(&expected) {
                let got = summary(x);
                assert_eq!(
                    (&got.method, &got.target),
                    (&want.method, &want.target),
                    "{what}"
                );
                if !got.partial && !until_close {
                    assert_eq!(&got, want, "{what}");
                }
            }
        }
    }
}

#[test]
fn single_byte_mutations_of_recordings() {
    for name in SMALL {
        let events = load_rec(name);
        for at in 0..data_len(&events) {
            for value in [0x00, 0xff, b'\n', b'\r', b' ', b'0'] {
                let m = mutated(&events, at, value);
                let (xs, conn) = replay(&m);
                check_bounds(&format!("{name} byte {at} = {value:#x}"), &m, &xs, &conn);
            }
        }
    }
}

/// Each recorded segment split at random points into smaller ones, some with only a random
/// prefix captured (gaps), some empty.
#[test]
fn random_resegmentation_with_gaps() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for name in SMALL {
        let events = load_rec(name);
        for round in 0..150 {
            let mut out = Vec::new();
            for e in &events {
                let data = &e.seg.data;
                let mut i = 0;
                while i < data.len() {
                    let n = 1 + rng.below(data.len() - i);
                    let piece = &data[i..i + n];
                    let captured = if rng.below(4) == 0 {
                        rng.below(n + 1)
                    } else {
                        n
                    };
                    out.push(Event {
                        to: e.to,
                        seg: cut(e.seg.ts_ns, &piece[..captured], n as u64),
                    });
                    i += n;
                }
            }
            let (xs, conn) = replay(&out);
            check_bounds(&format!("{name} round {round}"), &out, &xs, &conn);
        }
    }
}

/// Random bytes, random HTTP-ish fragments, random gaps, both directions, random closes.
#[test]
fn random_input_never_panics() {
    const PIECES: [&[u8]; 16] = [
        b"GET / HTTP/1.1\r\n",
        b"HTTP/1.1 200 OK\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 101 Switching\r\n\r\n",
        b"Content-Length: 5\r\n",
        b"Content-Length: 18446744073709551616\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"\r\n",
        b"5\r\nhello\r\n",
        b"0\r\n\r\n",
        b"ffffffffffffffff\r\n",
        b"HEAD / HTTP/1.1\r\n\r\n",
        b"CONNECT h:1 HTTP/1.1\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"\n",
        b"POST /p HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc",
    ];
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    for round in 0..3000 {
        let mut conn = Http1Conn::new();
        let mut events = Vec::new();
        let mut xs = Vec::new();
        for ts in 0..rng.below(40) as u64 {
            let mut data = Vec::new();
            for _ in 0..rng.below(4) {
                if rng.below(3) == 0 {
                    data.extend((0..rng.below(20)).map(|_| rng.next() as u8));
                } else {
                    data.extend_from_slice(PIECES[rng.below(PIECES.len())]);
                }
            }
            let gap = match rng.below(8) {
                0 => rng.next() % 100_000,
                1 => u64::MAX / 2,
                _ => 0,
            };
            let to = if rng.below(2) == 0 {
                To::Server
            } else {
                To::Client
            };
            let ev = Event {
                to,
                seg: cut(ts, &data, data.len() as u64 + gap),
            };
            push(&mut conn, &ev);
            events.push(ev);
            if rng.below(30) == 0 {
                conn.close(ts);
            }
            xs.extend(conn.take_exchanges());
            assert!(conn.req.buffered() <= 2 * MAX_HEAD_LEN, "round {round}");
            assert!(conn.resp.buffered() <= 2 * MAX_HEAD_LEN, "round {round}");
        }
        conn.close(1000);
        xs.extend(conn.take_exchanges());
        check_bounds(&format!("random round {round}"), &events, &xs, &conn);
    }
}
