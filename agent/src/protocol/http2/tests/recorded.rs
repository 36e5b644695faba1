//! Recorded real HTTP/2 connections (tests/data/http2, see its README), replayed as recorded,
//! coalesced, byte by byte and with capture caps.

use super::super::{H2Conn, H2Stream, Header, StreamEnd};
use crate::protocol::testutil::{self, RecEvent, To};

/// What a test compares (the `.expected` columns).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Row {
    path: Option<String>,
    status: Option<String>,
    grpc_status: Option<String>,
    req_len: u64,
    resp_len: u64,
    end: String,
}

fn load_expected(name: &str) -> Vec<Row> {
    let path = testutil::data_dir("http2").join(format!("{name}.expected"));
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 6, "{name}: {l:?}");
            Row {
                path: Some(f[0].to_owned()),
                status: Some(f[1].to_owned()),
                grpc_status: (f[2] != "-").then(|| f[2].to_owned()),
                req_len: f[3].parse().unwrap(),
                resp_len: f[4].parse().unwrap(),
                end: f[5].to_owned(),
            }
        })
        .collect()
}

fn row(s: &H2Stream) -> Row {
    Row {
        path: s.request_header(":path").map(str::to_owned),
        status: s.response_header(":status").map(str::to_owned),
        grpc_status: s.response_header("grpc-status").map(str::to_owned),
        req_len: s.request_body_len,
        resp_len: s.response_body_len,
        end: match s.end {
            StreamEnd::Complete => "complete".into(),
            other => format!("{other:?}"),
        },
    }
}

/// Splits an h2c upgrade recording: the HTTP/1.1 request (as stream-1 headers) and the 101
/// response are removed from the events, which then hold only HTTP/2 bytes.
fn split_upgrade(events: &[RecEvent]) -> Option<(Vec<Header>, u64, Vec<RecEvent>)> {
    let first = events.first()?;
    let text = std::str::from_utf8(&first.seg.data).ok()?;
    if first.to != To::Server || !text.starts_with("GET ") || !text.contains("Upgrade: h2c") {
        return None;
    }
    let head_end = text.find("\r\n\r\n")? + 4;
    let mut lines = text[..head_end].lines();
    let target = lines.next()?.split(' ').nth(1)?.to_owned();
    let mut headers = vec![
        Header {
            name: ":method".into(),
            value: "GET".into(),
        },
        Header {
            name: ":path".into(),
            value: target,
        },
        Header {
            name: ":scheme".into(),
            value: "http".into(),
        },
    ];
    for l in lines.filter(|l| !l.is_empty()) {
        let (n, v) = l.split_once(':')?;
        headers.push(Header {
            name: n.to_ascii_lowercase(),
            value: v.trim().to_owned(),
        });
    }
    let ts = first.seg.ts_ns;
    let mut rest = Vec::new();
    let mut in_101 = true;
    for (i, ev) in events.iter().enumerate() {
        let mut seg = ev.seg.clone();
        if i == 0 {
            seg = crate::protocol::Segment::full(seg.ts_ns, seg.data.slice(head_end..));
        } else if ev.to == To::Client && in_101 {
            assert!(seg.data.starts_with(b"HTTP/1.1 101"), "{:?}", seg.data);
            let end = seg.data.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
            seg = crate::protocol::Segment::full(seg.ts_ns, seg.data.slice(end..));
            in_101 = false;
        }
        if !seg.data.is_empty() {
            rest.push(RecEvent { to: ev.to, seg });
        }
    }
    Some((headers, ts, rest))
}

fn play(conn: &mut H2Conn, events: &[RecEvent]) -> Vec<H2Stream> {
    let mut out = Vec::new();
    for ev in events {
        match ev.to {
            To::Server => conn.push_client(ev.seg.clone()),
            To::Client => conn.push_server(ev.seg.clone()),
        }
        out.extend(conn.take_streams());
    }
    conn.close(events.last().map_or(0, |e| e.seg.ts_ns) + 1);
    out.extend(conn.take_streams());
    out
}

/// A connection and the HTTP/2 events of a recording.
fn prepare(name: &str) -> (Box<dyn Fn() -> H2Conn>, Vec<RecEvent>) {
    let events = testutil::load_rec("http2", name);
    match split_upgrade(&events) {
        Some((headers, ts, rest)) => (
            Box::new(move || H2Conn::after_upgrade(headers.clone(), ts)),
            rest,
        ),
        None => (Box::new(H2Conn::new), events),
    }
}

fn check_exact(name: &str, how: &str, streams: &[H2Stream], conn: &H2Conn) {
    let mut want = load_expected(name);
    let mut got: Vec<Row> = streams.iter().map(row).collect();
    want.sort();
    got.sort();
    assert_eq!(got, want, "{name} {how}");
    for s in streams {
        assert!(!s.partial, "{name} {how}: {s:#?}");
        assert_eq!(s.undecoded_fields, 0);
        assert!(s.request_start_ns <= s.request_end_ns);
        assert!(s.response_start_ns <= s.response_end_ns);
        assert!(s.request_start_ns > 0 && s.response_start_ns > 0);
    }
    let st = conn.stats();
    assert_eq!(
        (
            st.resyncs,
            st.bytes_skipped,
            st.hpack_errors,
            st.undecoded_fields
        ),
        (0, 0, 0, 0),
        "{name} {how}"
    );
}

#[test]
fn recordings_replay_exactly() {
    let names = testutil::recordings("http2");
    assert!(names.len() >= 9, "{names:?}");
    for name in &names {
        let (make, events) = prepare(name);
        for (how, evs) in [
            ("per segment", events.clone()),
            ("coalesced", testutil::coalesce(&events)),
            ("byte by byte", testutil::bytewise(&events)),
        ] {
            if how == "byte by byte"
                && events.iter().map(|e| e.seg.data.len()).sum::<usize>() > 400_000
            {
                // The 1 MiB call: bytewise on its first segments only would not end; the
                // per-segment and coalesced runs cover it.
                continue;
            }
            let mut conn = make();
            let streams = play(&mut conn, &evs);
            check_exact(name, how, &streams, &conn);
        }
    }
}

/// With capped capture nothing may be wrong: each stream matches a distinct expected row in
/// every value it has; values it lacks, or body lengths below the expected ones, require
/// `partial`.
fn check_capped(name: &str, how: &str, streams: &[H2Stream], min_exact: usize) {
    let mut want = load_expected(name);
    assert!(streams.len() <= want.len(), "{name} {how}: {streams:#?}");
    let mut exact = 0;
    for s in streams {
        let r = row(s);
        let fits = |w: &Row| {
            r.path.as_ref().is_none_or(|p| Some(p) == w.path.as_ref())
                && r.status
                    .as_ref()
                    .is_none_or(|p| Some(p) == w.status.as_ref())
                && r.grpc_status
                    .as_ref()
                    .is_none_or(|p| Some(p) == w.grpc_status.as_ref())
                && r.req_len <= w.req_len
                && r.resp_len <= w.resp_len
        };
        let Some(i) = want
            .iter()
            .position(|w| *w == r)
            .or_else(|| want.iter().position(fits))
        else {
            panic!("{name} {how}: stream matches no expected row: {r:?}\n{want:#?}");
        };
        let w = want.remove(i);
        if w == r {
            exact += 1;
        } else {
            assert!(
                s.partial,
                "{name} {how}: differs but not partial: {r:?} vs {w:?}"
            );
        }
    }
    assert!(
        exact >= min_exact,
        "{name} {how}: only {exact} exact streams"
    );
}

#[test]
fn recordings_with_capture_caps() {
    for name in testutil::recordings("http2") {
        let (make, events) = prepare(&name);
        let want = load_expected(&name);
        let big = want
            .iter()
            .filter(|r| r.req_len.max(r.resp_len) > 65536)
            .count();
        for (prefix, tail) in [(2048, 0), (2048, 256), (256, 256), (256, 0), (64, 64)] {
            let how = format!("prefix {prefix} tail {tail}");
            let capped = testutil::capture(&events, prefix, tail);
            let mut conn = make();
            let streams = play(&mut conn, &capped);
            // 2 KiB of prefix and a 256-byte tail capture every header block of these
            // recordings except around bodies larger than a read.
            let min_exact = if (prefix, tail) == (2048, 256) {
                want.len() - big
            } else {
                0
            };
            check_capped(&name, &how, &streams, min_exact);
            if prefix >= 256 {
                assert_eq!(streams.len(), want.len(), "{name} {how}");
                assert!(
                    streams.iter().all(|s| s.request_header(":path").is_some()),
                    "{name} {how}"
                );
            }
            if tail > 0 && prefix >= 256 && name == "grpc_large" {
                // The trailers are in the last read's tail.
                assert_eq!(
                    streams[0].response_header("grpc-status"),
                    Some("0"),
                    "{how}"
                );
                assert_eq!(streams[0].end, StreamEnd::Complete, "{how}");
            }
            assert_eq!(conn.stats().hpack_errors, 0, "{name} {how}");
        }
    }
}

/// Joining a real connection at every segment boundary: nothing decoded may be wrong.
#[test]
fn recordings_joined_mid_stream() {
    for name in testutil::recordings("http2") {
        let (_, events) = prepare(&name);
        let step = (events.len() / 40).max(1);
        for k in (1..events.len()).step_by(step) {
            for (prefix, tail) in [(usize::MAX, 0), (2048, 256)] {
                let evs = testutil::capture(&events[k..], prefix, tail);
                let mut conn = H2Conn::mid_stream();
                let streams = play(&mut conn, &evs);
                check_capped(
                    &name,
                    &format!("joined at {k} ({prefix}/{tail})"),
                    &streams,
                    0,
                );
            }
        }
    }
}
