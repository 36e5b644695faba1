//! Replays of connections recorded between real clients and a real PostgreSQL 15 server (see
//! tests/data/postgres/README.md): segment by segment as recorded, byte by byte, merged, all in
//! one, and with truncated capture.

use super::super::PgStats;
use super::*;

/// Every segment split into one-byte segments with the same ts.
fn by_bytes(events: &[Event]) -> Vec<Event> {
    let mut out = Vec::new();
    for ev in events {
        for i in 0..ev.seg.data.len() {
            out.push(Event {
                to: ev.to,
                seg: Segment::full(ev.seg.ts_ns, ev.seg.data.slice(i..i + 1)),
            });
        }
    }
    out
}

/// Consecutive segments of one direction merged into one (stamped with the last one's ts).
fn merged_runs(events: &[Event]) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::new();
    for ev in events {
        match out.last_mut() {
            Some(last) if last.to == ev.to => {
                let mut data = last.seg.data.to_vec();
                data.extend_from_slice(&ev.seg.data);
                last.seg = seg(ev.seg.ts_ns, &data);
            }
            _ => out.push(ev.clone()),
        }
    }
    out
}

/// One segment with everything the client sent (stamped with its first ts), then one with
/// everything the server sent (stamped with its last): requests still precede answers.
fn all_in_one(events: &[Event]) -> Vec<Event> {
    [To::Server, To::Client]
        .into_iter()
        .map(|to| {
            let mine: Vec<&Event> = events.iter().filter(|e| e.to == to).collect();
            let data: Vec<u8> = mine.iter().flat_map(|e| e.seg.data.to_vec()).collect();
            let ts = match to {
                To::Server => mine.first(),
                To::Client => mine.last(),
            };
            Event {
                to,
                seg: seg(ts.map_or(0, |e| e.seg.ts_ns), &data),
            }
        })
        .collect()
}

/// Each segment's capture limited to its first `cap` bytes; lengths unchanged.
pub(super) fn capped(events: &[Event], cap: usize) -> Vec<Event> {
    testutil::capped_with_tail(events, cap, 0)
}

/// Everything of a statement, for comparing two replays exactly.
type Full = (Summary, u64, u64, bool);

fn full(xs: &[Statement]) -> Vec<Full> {
    xs.iter()
        .map(|s| (summary(s), s.start_ns, s.end_ns, s.partial))
        .collect()
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// The text of a Query message starting at `i`, if one does.
fn query_text_at(stream: &[u8], i: usize) -> Option<&[u8]> {
    let rest = stream.get(i..)?;
    if rest.first() != Some(&b'Q') {
        return None;
    }
    let len = u32::from_be_bytes(rest.get(1..5)?.try_into().ok()?) as usize;
    let text = rest.get(5..1 + len)?.strip_suffix(&[0])?;
    (!text.contains(&0)).then_some(text)
}

fn be_len(n: usize) -> [u8; 4] {
    (n as u32).to_be_bytes()
}

/// Timestamps computed without the parser, by searching the recorded bytes for the messages
/// that end each statement (its CommandComplete tag, its error's SQLSTATE field, or an
/// EmptyQueryResponse / PortalSuspended) and that start it (the Query with its text; for
/// extended executions, a Parse of its text or a Bind of its statement).
fn check_timestamps(name: &str, events: &[Event], xs: &[Statement]) {
    let (front, front_ts) = stream(events, To::Server);
    let (back, back_ts) = stream(events, To::Client);
    let readies: Vec<usize> = (0..back.len())
        .filter(|&i| back[i..].starts_with(b"Z\0\0\0\x05"))
        .collect();
    let mut from_b = 0;
    let mut from_f = 0;
    let mut prev: Option<(&Statement, usize)> = None;
    for (k, s) in xs.iter().enumerate() {
        let end = if let Some(tag) = &s.command_tag {
            let mut pat = vec![b'C'];
            pat.extend(be_len(tag.len() + 5));
            pat.extend(cstr(tag));
            find(&back, &pat, from_b).map(|p| p + pat.len() - 1)
        } else if let Some(err) = &s.error {
            let pat = cstr(&format!("C{}", err.sqlstate));
            find(&back, &pat, from_b).and_then(|p| find(&back, b"\0\0", p).map(|z| z + 1))
        } else {
            let i = find(&back, b"I\0\0\0\x04", from_b);
            let s = find(&back, b"s\0\0\0\x04", from_b);
            i.into_iter().chain(s).min().map(|p| p + 4)
        };
        let end = end.unwrap_or_else(|| panic!("{name} #{k}: end message not found"));
        assert_eq!(s.end_ns, back_ts[end], "{name} #{k} end: {s:?}");
        from_b = end + 1;
        if s.extended {
            let q = s.query.as_deref().unwrap();
            let p = s.prepared_name.as_deref().unwrap();
            let mut parse = cstr(p);
            parse.extend(cstr(q));
            let mut bind = vec![0];
            bind.extend(cstr(p));
            let starts: Vec<u64> = (0..front.len())
                .filter(|&i| {
                    (front[i] == b'P' && front[i + 5..].starts_with(&parse))
                        || (front[i] == b'B' && front[i + 5..].starts_with(&bind))
                })
                .map(|i| front_ts[i])
                .collect();
            assert!(starts.contains(&s.start_ns), "{name} #{k} start: {s:?}");
        } else {
            let first_of_query = match prev {
                Some((p, p_end)) if !p.extended => readies.iter().any(|&z| p_end < z && z < end),
                _ => true,
            };
            if first_of_query {
                // The Query whose text begins with this statement (the first of its text).
                let text = s.query.as_deref().unwrap();
                let at = (from_f..front.len())
                    .find(|&i| {
                        query_text_at(&front, i)
                            .is_some_and(|q| q.trim_ascii_start().starts_with(text.as_bytes()))
                    })
                    .unwrap_or_else(|| panic!("{name} #{k}: Query not found"));
                assert_eq!(s.start_ns, front_ts[at], "{name} #{k} start: {s:?}");
                from_f = at + 1;
            } else {
                assert_eq!(
                    s.start_ns,
                    prev.unwrap().0.end_ns,
                    "{name} #{k}: not sequential"
                );
            }
        }
        if let Some((p, _)) = prev {
            assert!(p.start_ns <= s.start_ns, "{name} #{k}: starts out of order");
        }
        assert!(s.start_ns <= s.end_ns, "{name} #{k}: {s:?}");
        prev = Some((s, end));
    }
}

fn stats_for(exp: &Expected) -> PgStats {
    PgStats {
        encrypted_sessions: u64::from(exp.encrypted),
        ..PgStats::default()
    }
}

#[test]
fn all_recordings_are_present() {
    let names = recordings();
    for want in [
        "psql_simple",
        "psql_multi",
        "psql_errors",
        "psql_copy",
        "psql_large",
        "psql_md5",
        "psql_scram",
        "psql_tls",
        "psycopg2_client",
        "psycopg2_client_1",
        "pg8000_client",
        "pg8000_scram",
        "asyncpg_client",
    ] {
        assert!(names.iter().any(|n| n == want), "missing recording {want}");
    }
}

#[test]
fn recordings_replayed_segment_by_segment() {
    for name in recordings() {
        let events = load_rec(&name);
        let exp = load_expected(&name);
        let (xs, conn) = replay(&events);
        assert_eq!(summaries(&xs), exp.stmts, "{name}");
        assert!(xs.iter().all(|s| !s.partial), "{name}: partial {xs:#?}");
        assert_eq!(conn.stats(), stats_for(&exp), "{name}");
        assert_eq!(conn.user(), exp.user.as_deref(), "{name}");
        assert_eq!(conn.database(), exp.database.as_deref(), "{name}");
        assert_eq!(conn.encrypted(), exp.encrypted, "{name}");
        check_timestamps(&name, &events, &xs);
        for s in &xs {
            if let Some(e) = &s.error {
                assert_eq!(e.severity, "ERROR", "{name}: {s:?}");
                assert!(!e.message.is_empty(), "{name}: {s:?}");
            }
        }
    }
}

#[test]
fn statements_are_emitted_as_soon_as_complete() {
    // After each backend segment, every statement whose last message it carried is out.
    for name in ["psql_simple", "pg8000_client", "asyncpg_client"] {
        let events = load_rec(name);
        let (all, _) = replay(&events);
        let mut conn = PgConn::new();
        let mut got = Vec::new();
        for ev in &events {
            push(&mut conn, ev);
            got.extend(conn.take_statements());
            let due = all.iter().filter(|s| s.end_ns <= ev.seg.ts_ns).count();
            assert_eq!(got.len(), due, "{name} after ts {}", ev.seg.ts_ns);
        }
    }
}

#[test]
fn recordings_replayed_byte_by_byte() {
    for name in recordings() {
        let events = load_rec(&name);
        let exp = load_expected(&name);
        let (reference, _) = replay(&events);
        let (xs, conn) = replay(&by_bytes(&events));
        assert_eq!(full(&xs), full(&reference), "{name}");
        assert_eq!(conn.stats(), stats_for(&exp), "{name}");
    }
}

/// One-byte segments, each with its own timestamp: every start and end must be the ts of
/// exactly the right byte (the Query's or Parse's/Bind's type byte, the last byte of the
/// ending message), as computed from the bytes alone.
#[test]
fn recordings_split_into_bytes_with_distinct_timestamps() {
    for name in recordings() {
        let mut events = Vec::new();
        for ev in load_rec(&name) {
            for i in 0..ev.seg.data.len() {
                events.push(Event {
                    to: ev.to,
                    seg: Segment::full(
                        ev.seg.ts_ns * 100_000 + i as u64,
                        ev.seg.data.slice(i..i + 1),
                    ),
                });
            }
        }
        let exp = load_expected(&name);
        let (xs, conn) = replay(&events);
        assert_eq!(summaries(&xs), exp.stmts, "{name}");
        assert!(xs.iter().all(|s| !s.partial), "{name}");
        assert_eq!(conn.stats(), stats_for(&exp), "{name}");
        check_timestamps(&name, &events, &xs);
    }
}

#[test]
fn recordings_replayed_with_merged_segments() {
    for name in recordings() {
        let events = load_rec(&name);
        let exp = load_expected(&name);
        let (xs, conn) = replay(&merged_runs(&events));
        assert_eq!(summaries(&xs), exp.stmts, "{name}");
        assert!(xs.iter().all(|s| !s.partial), "{name}");
        assert_eq!(conn.stats(), stats_for(&exp), "{name}");
    }
}

#[test]
fn recordings_replayed_all_in_one_segment() {
    for name in recordings() {
        let exp = load_expected(&name);
        let (xs, conn) = replay(&all_in_one(&load_rec(&name)));
        assert_eq!(summaries(&xs), exp.stmts, "{name}");
        assert_eq!(conn.stats(), stats_for(&exp), "{name}");
        assert_eq!(conn.encrypted(), exp.encrypted, "{name}");
    }
}

/// 100,000+ rows in 8 KiB reads, with only the first 256 bytes of each captured: DataRow
/// headers fall into gaps all the time, yet the one statement keeps its text, tag, row count
/// and timestamps. It is partial: rows were skipped by resynchronising, not by count.
#[test]
fn large_result_with_256_byte_capture() {
    let events = load_rec("psql_large");
    let exp = load_expected("psql_large");
    assert!(
        events.iter().filter(|e| e.seg.data.len() > 4096).count() > 50,
        "recording has no large reads"
    );
    let (reference, _) = replay(&events);
    let (xs, conn) = replay(&capped(&events, 256));
    assert_eq!(summaries(&xs), exp.stmts);
    assert_eq!(
        exp.stmts[0].rows,
        Some(exp.stmts[0].rows.unwrap().max(100_000))
    );
    assert_eq!(
        (xs[0].start_ns, xs[0].end_ns),
        (reference[0].start_ns, reference[0].end_ns)
    );
    assert!(xs[0].partial);
    let stats = conn.stats();
    assert!(stats.resyncs > 10, "{stats:?}");
    assert_eq!(stats.invalid_messages, 0, "{stats:?}");
    assert_eq!(stats.unmatched_responses, 0, "{stats:?}");
    // The session is known to be aligned again after the ReadyForQuery: a query after it is
    // not partial.
    let mut more = capped(&events, 256);
    let ts = more.last().unwrap().seg.ts_ns;
    more.retain(|e| !(e.to == To::Server && e.seg.data.first() == Some(&b'X')));
    more.push(fe(ts + 1, &query("SELECT 2")));
    more.push(be(ts + 2, &cat(&[&complete("SELECT 1"), &ready(b'I')])));
    let (xs, _) = replay(&more);
    assert_eq!(xs.len(), 2);
    assert!(!xs[1].partial, "{:?}", xs[1]);
}

#[test]
fn the_tail_of_a_large_read_gives_the_row_count() {
    // The whole result in one read, as a client reading far more than the capture sees its last
    // read: the CommandComplete is in the read's last bytes, long past the copied prefix.
    let events = merged_runs(&load_rec("psql_large"));
    let exp = load_expected("psql_large");
    let big = events
        .iter()
        .map(|e| e.seg.data.len())
        .max()
        .unwrap_or_default();
    assert!(
        big > 1_000_000,
        "one read of the whole result ({big} bytes)"
    );
    let (without, _) = replay(&capped(&events, 256));
    assert_eq!(without.len(), 1);
    assert_eq!((without[0].rows, without[0].partial), (None, true));
    let (with, conn) = replay(&testutil::capped_with_tail(&events, 256, 256));
    assert_eq!(summaries(&with), exp.stmts);
    assert_eq!(with[0].rows, Some(100_020));
    // The rows between prefix and tail were never seen: still marked partial.
    assert!(with[0].partial);
    assert_eq!(conn.stats().invalid_messages, 0);
}

/// With capture truncated, statements may become partial but a clean one must never be wrong:
/// the clean statements are expected ones, in order, and every text is a prefix of an expected
/// one.
#[test]
fn recordings_with_truncated_capture_never_report_wrong_clean_statements() {
    for name in recordings() {
        let exp = load_expected(&name);
        let events = load_rec(&name);
        // With and without the copied tail of each read (as the kernel copies it).
        for (cap, tail) in [0, 1, 5, 6, 16, 64, 100, 256, 1024]
            .into_iter()
            .flat_map(|c| [(c, 0), (c, 16), (c, 256)])
        {
            let (xs, conn) = replay(&testutil::capped_with_tail(&events, cap, tail));
            let mut next = 0;
            for s in xs.iter() {
                if let Some(q) = &s.query {
                    assert!(
                        exp.stmts.iter().any(|e| e
                            .query
                            .as_deref()
                            .is_some_and(|t| t.starts_with(q.as_str()))),
                        "{name} cap {cap} tail {tail}: text {q:?} not expected"
                    );
                }
                if s.partial {
                    continue;
                }
                let got = summary(s);
                let Some(i) = exp.stmts[next..].iter().position(|e| *e == got) else {
                    panic!(
                        "{name} cap {cap} tail {tail}: clean {got:?} not expected after #{next}\n{xs:#?}"
                    );
                };
                next += i + 1;
            }
            let total: u64 = events.iter().map(|e| e.seg.len).sum();
            assert!(
                conn.stats().bytes_skipped <= total,
                "{name} cap {cap} tail {tail}"
            );
            assert_eq!(conn.buffered(), 0, "{name} cap {cap} tail {tail}");
        }
    }
}

/// The agent starting in the middle of each recorded connection (at every segment): nothing
/// reported clean is wrong, and the pairing recovers: the last statement, when two or more
/// started after the join, is reported exactly as in the full replay.
#[test]
fn recordings_joined_mid_stream_at_every_segment() {
    for name in recordings() {
        let events = load_rec(&name);
        let exp = load_expected(&name);
        let (reference, _) = replay(&events);
        for j in 1..events.len() {
            let joined = &events[j..];
            let (xs, conn) = replay(joined);
            let what = format!("{name} joined at segment {j}");
            let mut next = 0;
            for s in xs.iter().filter(|s| !s.partial) {
                let got = summary(s);
                // A statement prepared before the join is reported without its text.
                let same = |e: &Summary| {
                    *e == got
                        || (got.query.is_none()
                            && got.prepared.is_some()
                            && Summary {
                                query: None,
                                ..e.clone()
                            } == got)
                };
                let Some(i) = exp.stmts[next..].iter().position(same) else {
                    panic!("{what}: clean {got:?} not expected after #{next}\n{xs:#?}");
                };
                next += i + 1;
            }
            let join_ts = joined[0].seg.ts_ns;
            let after = reference.iter().filter(|s| s.start_ns > join_ts).count();
            if after >= 2 && !exp.encrypted {
                let want = full(&reference[reference.len() - 1..]);
                let got = full(&xs[xs.len().saturating_sub(1)..]);
                assert_eq!(got, want, "{what}");
            }
            assert_eq!(conn.buffered(), 0, "{what}");
        }
    }
}
