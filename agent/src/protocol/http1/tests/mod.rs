//! Tests of the HTTP/1.x parser: hand-written rules, recorded real connections, robustness.

mod recorded;
mod robustness;
mod rules;

use std::path::PathBuf;

use bytes::Bytes;

use super::{Exchange, Http1Conn, Segment};

/// Fully captured segment.
fn seg(ts: u64, data: &[u8]) -> Segment {
    Segment::full(ts, Bytes::copy_from_slice(data))
}

/// Segment of `len` bytes of which only `data` was captured.
fn cut(ts: u64, data: &[u8], len: u64) -> Segment {
    assert!(data.len() as u64 <= len);
    Segment::prefix(ts, Bytes::copy_from_slice(data), len)
}

/// Recorded segments and their direction: the `.rec` reader shared by the parsers' tests.
use crate::protocol::testutil::{self, RecEvent as Event, To};

fn push(conn: &mut Http1Conn, ev: &Event) {
    match ev.to {
        To::Server => conn.push_request(ev.seg.clone()),
        To::Client => conn.push_response(ev.seg.clone()),
    }
}

#[test]
fn an_idle_connection_gives_back_its_buffers() {
    let mut conn = Http1Conn::new();
    // A large head split over segments makes the request buffer grow.
    let head = format!(
        "GET /big HTTP/1.1\r\nHost: h\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(4000)
    );
    let (a, b) = head.as_bytes().split_at(2000);
    conn.push_request(seg(1, a));
    conn.push_request(seg(2, b));
    conn.push_response(seg(3, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"));
    assert_eq!(conn.take_exchanges().len(), 1);
    assert!(conn.req.allocated() >= 4000, "{}", conn.req.allocated());
    conn.shrink();
    assert_eq!((conn.req.allocated(), conn.resp.allocated()), (0, 0));
    // Still parses what comes next.
    conn.push_request(seg(4, b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n"));
    conn.push_response(seg(5, b"HTTP/1.1 204 No Content\r\n\r\n"));
    let next = conn.take_exchanges();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].request.target, "/next");
    assert_eq!(next[0].response.as_ref().map(|r| r.status), Some(204));
}

/// Pushes all events, closes, returns everything emitted.
fn replay(events: &[Event]) -> (Vec<Exchange>, Http1Conn) {
    let mut conn = Http1Conn::new();
    let mut out = Vec::new();
    for ev in events {
        push(&mut conn, ev);
        out.extend(conn.take_exchanges());
    }
    let last = events.last().map_or(0, |e| e.seg.ts_ns);
    conn.close(last + 1);
    out.extend(conn.take_exchanges());
    (out, conn)
}

fn data_dir() -> PathBuf {
    testutil::data_dir("http1")
}

/// Reads a `.rec` file (format in tests/data/README.md).
fn load_rec(name: &str) -> Vec<Event> {
    testutil::load_rec("http1", name)
}

/// What a test compares: the exchange without timestamps and headers.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Summary {
    method: String,
    target: String,
    status: Option<u16>,
    request_body_len: u64,
    response_body_len: u64,
    partial: bool,
}

fn summary(x: &Exchange) -> Summary {
    Summary {
        method: x.request.method.clone(),
        target: x.request.target.clone(),
        status: x.response.as_ref().map(|r| r.status),
        request_body_len: x.request_body_len,
        response_body_len: x.response_body_len,
        partial: x.partial,
    }
}

fn summaries(xs: &[Exchange]) -> Vec<Summary> {
    xs.iter().map(summary).collect()
}

/// Reads a `.expected` file: the summaries and whether the connection ends upgraded.
fn load_expected(name: &str) -> (Vec<Summary>, bool) {
    let path = data_dir().join(format!("{name}.expected"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut rows = Vec::new();
    let mut upgraded = None;
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f[0] == "upgraded" {
            upgraded = Some(f[1] == "true");
            continue;
        }
        assert_eq!(f.len(), 6, "{name}: bad line {line:?}");
        rows.push(Summary {
            method: f[0].to_owned(),
            target: f[1].to_owned(),
            status: (f[2] != "-").then(|| f[2].parse().unwrap()),
            request_body_len: f[3].parse().unwrap(),
            response_body_len: f[4].parse().unwrap(),
            partial: f[5] == "true",
        });
    }
    (rows, upgraded.expect("upgraded line"))
}

/// Every recording in the data folder, by name.
fn recordings() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data_dir())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".rec").map(str::to_owned)
        })
        .collect();
    names.sort();
    names
}
