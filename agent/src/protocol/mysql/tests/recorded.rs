//! Replays of connections recorded between real clients and a real MariaDB 10.11 server (see
//! agent/tests/data/mysql/README.md): as recorded, coalesced, byte by byte, split at every byte, with capped
//! capture and with random gaps.

use super::super::{MAX_KEEP, MysqlStats};
use super::*;
use crate::protocol::testutil::{bytewise, capped_with_tail, coalesce};

const NAMES: [&str; 3] = ["cli_queries", "connector_prepared", "pymysql_client"];

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('\\') => out.push('\\'),
            other => panic!("bad escape {other:?}"),
        }
    }
    out
}

fn opt(s: &str) -> Option<String> {
    (s != "-").then(|| unescape(s))
}

fn num<T: std::str::FromStr>(s: &str) -> Option<T>
where
    T::Err: std::fmt::Debug,
{
    opt(s).map(|v| v.parse().unwrap())
}

/// A recording's `.expected` file: one line per call.
fn expected(name: &str) -> Vec<Summary> {
    let path = testutil::data_dir("mysql").join(format!("{name}.expected"));
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            assert_eq!(f.len(), 8, "{name}: {line:?}");
            assert_eq!(f[0], "call");
            let command = super::super::conn::command_name_of(f[1]).expect("command");
            Summary {
                command,
                query: opt(f[2]),
                id: num(f[3]),
                rows: num(f[4]),
                affected: num(f[5]),
                error: num(f[6]),
                database: opt(f[7]),
            }
        })
        .collect()
}

fn clean_stats() -> MysqlStats {
    MysqlStats::default()
}

fn check_exact(name: &str, events: &[Event], how: &str) {
    let (calls, conn) = replay(events);
    let got: Vec<Summary> = calls.iter().map(summary).collect();
    assert_eq!(got, expected(name), "{name} {how}");
    assert!(calls.iter().all(|c| !c.partial), "{name} {how}: {calls:#?}");
    assert_eq!(conn.stats(), clean_stats(), "{name} {how}");
    assert_eq!(
        conn.server_version(),
        Some("5.5.5-10.11.19-MariaDB-0+deb12u1")
    );
    assert_eq!(conn.user(), Some("app"));
    assert!(!conn.encrypted());
    for c in &calls {
        assert!(c.start_ns <= c.end_ns, "{c:?}");
        assert!(
            c.server_version
                .as_deref()
                .is_some_and(|v| v.contains("MariaDB"))
        );
    }
    assert!(conn.buffered() < 3 * (MAX_KEEP + 1), "{name} {how}");
}

#[test]
fn recordings_parse_exactly() {
    for name in NAMES {
        let events = load_rec(name);
        check_exact(name, &events, "as recorded");
        check_exact(name, &coalesce(&events), "coalesced");
        check_exact(name, &bytewise(&events), "byte by byte");
    }
}

#[test]
fn recorded_timestamps() {
    // cli_queries: the SELECT's command and the segment holding its whole result.
    let events = load_rec("cli_queries");
    let (calls, _) = replay(&events);
    let select = &calls[3];
    assert_eq!(select.start_ns, 66_981_139);
    assert_eq!(select.end_ns, 67_361_282);
    let err = calls[6].error.as_ref().unwrap();
    assert_eq!(err.code, 1146);
    assert_eq!(err.state, "42S02");
    assert_eq!(err.message, "Table 'mysql.nope' doesn't exist");
    // The large row of pymysql_client ends in the second server segment.
    let events = load_rec("pymysql_client");
    let (calls, _) = replay(&events);
    let last = calls.last().unwrap();
    assert_eq!(last.start_ns, 116_870_802);
    assert_eq!(last.end_ns, 117_375_414);
}

/// Every segment split in two at every position (the two halves keep the segment's ts).
#[test]
fn split_at_every_byte() {
    for name in NAMES {
        let events = load_rec(name);
        let want = expected(name);
        for (i, ev) in events.iter().enumerate() {
            let n = ev.seg.data.len();
            let step = if n > 4096 { 61 } else { 1 };
            for k in (1..n).step_by(step) {
                let mut evs = events[..i].to_vec();
                for part in [ev.seg.data.slice(..k), ev.seg.data.slice(k..)] {
                    evs.push(Event {
                        to: ev.to,
                        seg: Segment::full(ev.seg.ts_ns, part),
                    });
                }
                evs.extend_from_slice(&events[i + 1..]);
                let (calls, conn) = replay(&evs);
                let got: Vec<Summary> = calls.iter().map(summary).collect();
                assert_eq!(got, want, "{name} segment {i} split at {k}");
                assert_eq!(conn.stats(), clean_stats());
            }
        }
    }
}

/// Clean calls (not partial) must be exactly right: each one equals an expected call, in
/// order. Partial ones may be anything but must not be invented from nothing.
fn check_lossy(name: &str, events: &[Event], how: &str) -> usize {
    let (calls, conn) = replay(events);
    let want = expected(name);
    let mut j = 0;
    let mut clean = 0;
    for c in &calls {
        assert!(c.start_ns <= c.end_ns, "{name} {how}: {c:?}");
        if c.partial {
            continue;
        }
        clean += 1;
        let s = summary(c);
        // The database is unknown when the login was lost: missing, not wrong.
        let same = |w: &Summary| {
            let mut w = w.clone();
            if s.database.is_none() {
                w.database = None;
            }
            // A statement whose PREPARE answer was lost: its text is unknown.
            if s.query.is_none() && s.id.is_some() {
                w.query = None;
            }
            w == s
        };
        while j < want.len() && !same(&want[j]) {
            j += 1;
        }
        assert!(
            j < want.len(),
            "{name} {how}: clean call {s:?} not expected\n{calls:#?}"
        );
        j += 1;
    }
    let commands = events.iter().filter(|e| e.to == To::Server).count();
    assert!(calls.len() <= commands, "{name} {how}: {calls:#?}");
    let st = conn.stats();
    let total: u64 = events.iter().map(|e| e.seg.len).sum();
    assert!(st.bytes_skipped <= total, "{st:?}");
    clean
}

#[test]
fn capped_capture() {
    for name in NAMES {
        let events = load_rec(name);
        for cap in [0, 1, 3, 4, 5, 8, 16, 64, 200, 1024, 4096] {
            for tail in [0, 4, 11, 64] {
                check_lossy(name, &capped_with_tail(&events, cap, tail), "capped");
            }
        }
        // With 8 KiB of capture, only the large row's first segment is cut: its row is counted
        // through the gap, so everything stays exact.
        let capped = capped_with_tail(&events, 8192, 0);
        let (calls, _) = replay(&capped);
        let got: Vec<Summary> = calls.iter().map(summary).collect();
        assert_eq!(got, expected(name), "{name} capped at 8192");
    }
}

/// Random segments lose random parts: a prefix cut, a whole segment gone (as a gap).
#[test]
fn random_gaps_never_give_a_wrong_clean_call() {
    for name in NAMES {
        let events = load_rec(name);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
        let mut clean = 0;
        for round in 0..rounds() {
            let mut evs = Vec::new();
            for ev in &events {
                let n = ev.seg.data.len();
                let ev = match rng.below(10) {
                    0 => {
                        let keep = rng.below(n);
                        let tail = rng.below(n - keep + 1).min(16);
                        Event {
                            to: ev.to,
                            seg: Segment::prefix(
                                ev.seg.ts_ns,
                                ev.seg.data.slice(..keep),
                                ev.seg.len,
                            )
                            .with_tail(ev.seg.data.slice(n - tail..)),
                        }
                    }
                    1 if round % 3 == 0 => Event {
                        to: ev.to,
                        seg: Segment::prefix(ev.seg.ts_ns, Bytes::new(), ev.seg.len),
                    },
                    _ => ev.clone(),
                };
                evs.push(ev);
            }
            if std::env::var("DEBUG_ROUND").ok() == Some(format!("{name}{round}")) {
                for e in &evs {
                    eprintln!(
                        "{:?} {} {} {:?}",
                        e.to,
                        e.seg.data.len(),
                        e.seg.len,
                        &e.seg.data[..e.seg.data.len().min(12)]
                    );
                }
            }
            clean += check_lossy(name, &evs, &format!("round {round}"));
        }
        // Losses do not make everything partial.
        assert!(clean > 300, "{name}: only {clean} clean calls");
    }
}

/// Rounds of random gaps (`MYSQL_GAP_ROUNDS` to run more).
fn rounds() -> usize {
    std::env::var("MYSQL_GAP_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}
