//! Robustness in the style of OBI's protocol fuzz tests: every truncation and single-byte
//! mutations of real recordings, random re-segmentation with capture gaps, and random bytes.
//! The parser must never panic, never grow without bound, keep its counters within what was
//! fed, and never report a statement whose text or name was not in the client's bytes.

use std::collections::HashSet;

use super::super::frame::RESYNC_WINDOW;
use super::super::{MAX_KEEP, MAX_PENDING};
use super::*;

/// Small recordings covering simple and extended queries, pipelining, errors, COPY, SSL
/// negotiation, authentication and TLS.
const SMALL: [&str; 8] = [
    "psql_multi",
    "psql_errors",
    "psql_copy",
    "psql_md5",
    "psql_scram",
    "psql_tls",
    "pg8000_client",
    "asyncpg_client",
];

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// Invariants that must hold whatever the input.
fn check_bounds(what: &str, events: &[Event], xs: &[Statement], conn: &PgConn) {
    let total: u64 = events
        .iter()
        .map(|e| e.seg.len)
        .fold(0, u64::saturating_add);
    let back: u64 = events
        .iter()
        .filter(|e| e.to == To::Client)
        .map(|e| e.seg.len)
        .fold(0, u64::saturating_add);
    let stats = conn.stats();
    assert!(stats.bytes_skipped <= total, "{what}: {stats:?} of {total}");
    assert!(
        stats.resyncs <= total.saturating_add(events.len() as u64),
        "{what}: {stats:?}"
    );
    assert!(stats.invalid_messages <= total, "{what}: {stats:?}");
    // Every counted response is a message of at least 5 bytes.
    assert!(stats.unmatched_responses <= back / 5, "{what}: {stats:?}");
    assert!(stats.encrypted_sessions <= 1, "{what}: {stats:?}");
    // A statement needs a frontend message (>= 5 bytes) or a backend result (>= 5 bytes).
    assert!(
        xs.len() as u64 <= total / 5 + 1,
        "{what}: {} statements from {total} bytes",
        xs.len()
    );
    let all_ts: HashSet<u64> = events.iter().map(|e| e.seg.ts_ns).collect();
    // Texts come from contiguous captured client bytes.
    let front: Vec<u8> = events
        .iter()
        .filter(|e| e.to == To::Server)
        .flat_map(|e| e.seg.data.to_vec())
        .collect();
    for s in xs {
        assert!(all_ts.contains(&s.start_ns), "{what}: {s:?}");
        assert!(all_ts.contains(&s.end_ns), "{what}: {s:?}");
        assert!(s.start_ns <= s.end_ns, "{what}: {s:?}");
        for text in [&s.query, &s.prepared_name].into_iter().flatten() {
            assert!(text.len() <= MAX_KEEP, "{what}: {s:?}");
            if !text.contains('\u{fffd}') {
                assert!(
                    contains(&front, text.as_bytes()),
                    "{what}: {text:?} is not from the client's bytes"
                );
            }
        }
        if let Some(tag) = &s.command_tag {
            assert!(tag.len() <= 1024, "{what}: {s:?}");
        }
    }
    // close() leaves nothing behind.
    assert_eq!(conn.buffered(), 0, "{what}");
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

/// Clean statements must be expected ones, in order; partial ones must carry an expected text
/// (or a prefix of one).
fn check_against_expected(what: &str, xs: &[Statement], exp: &Expected) {
    let mut next = 0;
    for s in xs {
        if let Some(q) = &s.query {
            assert!(
                exp.stmts.iter().any(|e| e
                    .query
                    .as_deref()
                    .is_some_and(|t| t.starts_with(q.as_str()))),
                "{what}: text {q:?} not expected"
            );
        }
        if s.partial {
            continue;
        }
        let got = summary(s);
        let Some(i) = exp.stmts[next..].iter().position(|e| *e == got) else {
            panic!("{what}: clean {got:?} not expected after #{next}\n{xs:#?}");
        };
        next += i + 1;
    }
}

/// Cutting a valid connection anywhere: the statements completed before the cut are exactly the
/// first expected ones, what was pending comes out partial, and no framing is ever lost.
#[test]
fn every_truncation_of_recordings() {
    for name in SMALL {
        let events = load_rec(name);
        let exp = load_expected(name);
        for keep in 0..=data_len(&events) {
            let cut = truncated(&events, keep);
            let (xs, conn) = replay(&cut);
            let what = format!("{name} cut at {keep}");
            check_bounds(&what, &cut, &xs, &conn);
            let stats = conn.stats();
            assert_eq!(
                (
                    stats.resyncs,
                    stats.invalid_messages,
                    stats.unmatched_responses
                ),
                (0, 0, 0),
                "{what}"
            );
            let clean: Vec<Summary> = xs.iter().take_while(|s| !s.partial).map(summary).collect();
            assert_eq!(clean, exp.stmts[..clean.len()], "{what}");
            assert!(
                xs[clean.len()..].iter().all(|s| s.partial),
                "{what}: clean after partial"
            );
            check_against_expected(&what, &xs, &exp);
        }
    }
}

#[test]
fn single_byte_mutations_of_recordings() {
    for name in SMALL {
        let events = load_rec(name);
        for at in 0..data_len(&events) {
            for value in [0x00, 0xff, 0x04, b'Z', b'C', b'E'] {
                let m = mutated(&events, at, value);
                let (xs, conn) = replay(&m);
                check_bounds(&format!("{name} byte {at} = {value:#x}"), &m, &xs, &conn);
            }
        }
    }
}

/// Each recorded segment split at random points into smaller ones, some with only a random
/// prefix captured (gaps), some empty. Besides the bounds, statements reported clean must be
/// right: every pairing heuristic is exercised here (losses of ReadyForQuery, of the end of an
/// error's skip, of whole requests, resynchronisation inside rows).
#[test]
fn random_resegmentation_with_gaps() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for name in SMALL.iter().chain(&["psql_simple", "psycopg2_client"]) {
        let events = load_rec(name);
        let exp = load_expected(name);
        for round in 0..300 {
            // From rare gaps to a gap in every other piece.
            let gap_one_in = [2, 3, 6, 20][round % 4];
            let mut out = Vec::new();
            for e in &events {
                let data = &e.seg.data;
                let mut i = 0;
                while i < data.len() {
                    let n = 1 + rng.below(data.len() - i);
                    let piece = &data[i..i + n];
                    let captured = if rng.below(gap_one_in) == 0 {
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
            let what = format!("{name} round {round}");
            check_bounds(&what, &out, &xs, &conn);
            check_against_expected(&what, &xs, &exp);
        }
    }
}

/// The large recording with capture caps from tiny to full: nothing wrong is ever clean.
#[test]
fn large_recording_at_many_capture_sizes() {
    let events = load_rec("psql_large");
    let exp = load_expected("psql_large");
    for cap in [0, 3, 5, 9, 17, 64, 200, 1000, 4000, 8191] {
        let ev = super::recorded::capped(&events, cap);
        let (xs, conn) = replay(&ev);
        let what = format!("psql_large cap {cap}");
        check_bounds(&what, &ev, &xs, &conn);
        check_against_expected(&what, &xs, &exp);
    }
}

/// Random bytes, random PostgreSQL-ish fragments, random gaps, both directions, random closes.
#[test]
fn random_input_never_panics() {
    let pieces: Vec<Vec<u8>> = vec![
        startup(&[("user", "u")]),
        ssl_request(),
        b"N".to_vec(),
        b"S".to_vec(),
        query("SELECT 1"),
        parse("", "SELECT $1"),
        parse("s", "INSERT INTO t VALUES ($1)"),
        bind("", "s", &[b"1"]),
        bind("", "", &[]),
        execute("", 0),
        sync(),
        describe(b'S', "s"),
        close_stmt("s"),
        auth_ok(),
        ready(b'I'),
        row_desc(&["a"]),
        data_row(&[b"x"]),
        complete("SELECT 1"),
        error("42601", "x"),
        parse_complete(),
        bind_complete(),
        copy_response(b'G', 1),
        copy_data(b"1\n"),
        copy_done(),
        vec![b'D', 0x3f, 0xff, 0xff, 0xff],
        vec![b'Q', 0, 0, 0, 3],
        vec![b'B', 0, 0, 0, 9, b'a', b'b', b'c', b'd'],
        vec![0, 0, 0, 8, 4, 210, 22, 47],
    ];
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    for round in 0..3000 {
        let mut conn = PgConn::new();
        let mut events = Vec::new();
        let mut xs = Vec::new();
        for ts in 0..rng.below(40) as u64 {
            let mut data = Vec::new();
            for _ in 0..rng.below(4) {
                if rng.below(3) == 0 {
                    data.extend((0..rng.below(20)).map(|_| rng.next() as u8));
                } else {
                    data.extend_from_slice(&pieces[rng.below(pieces.len())]);
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
            xs.extend(conn.take_statements());
            assert!(
                conn.buffered() <= 2 * (RESYNC_WINDOW + MAX_KEEP),
                "round {round}: {}",
                conn.buffered()
            );
        }
        conn.close(1000);
        xs.extend(conn.take_statements());
        check_bounds(&format!("random round {round}"), &events, &xs, &conn);
    }
}

/// A client that never gets answers (or a stream that only looks like PostgreSQL) cannot grow
/// the queue, and a backend that never stops cannot grow the buffers.
#[test]
fn memory_stays_bounded_under_floods() {
    let mut conn = PgConn::new();
    conn.push_frontend(seg(1, &startup(&[("user", "u")])));
    conn.push_backend(seg(2, &startup_reply()));
    let mut batch = Vec::new();
    for _ in 0..100 {
        batch.extend(query(
            &"SELECT 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'".repeat(100),
        ));
    }
    for ts in 0..100 {
        conn.push_frontend(seg(10 + ts, &batch));
        assert!(conn.buffered() <= MAX_KEEP);
    }
    assert!(conn.stats().dropped_statements >= (100 * 100 - MAX_PENDING) as u64);
    // Garbage that keeps the backend resynchronising.
    let junk: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for ts in 0..20 {
        conn.push_backend(seg(200 + ts, &junk));
        assert!(
            conn.buffered() <= 2 * (RESYNC_WINDOW + MAX_KEEP),
            "{}",
            conn.buffered()
        );
    }
    conn.close(1000);
    assert_eq!(conn.buffered(), 0);
}
