//! Tests of the HTTP/2 parser: HPACK against RFC 7541 Appendix C, hand-built frame sequences,
//! recorded real connections, robustness.

mod frames;
mod hpack;
mod recorded;
mod robustness;

use bytes::Bytes;

use super::frame::{
    CONTINUATION, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PADDED, PRIORITY_FLAG,
    PUSH_PROMISE, RST_STREAM, SETTINGS,
};
use super::{H2Conn, H2Stream, Header, PREFACE, Segment};

// ---- segments ----

fn seg(ts: u64, data: &[u8]) -> Segment {
    Segment::full(ts, Bytes::copy_from_slice(data))
}

/// `len` bytes of which the first `data.len()` were captured.
fn cut(ts: u64, data: &[u8], len: u64) -> Segment {
    Segment::prefix(ts, Bytes::copy_from_slice(data), len)
}

/// The whole of `data` as one I/O of which only `prefix` leading and `tail` trailing bytes
/// were captured.
fn capped(ts: u64, data: &[u8], prefix: usize, tail: usize) -> Segment {
    let p = prefix.min(data.len());
    let t = tail.min(data.len() - p);
    Segment::prefix(ts, Bytes::copy_from_slice(&data[..p]), data.len() as u64)
        .with_tail(Bytes::copy_from_slice(&data[data.len() - t..]))
}

// ---- HPACK encoding (test-only, literal forms the tests need) ----

fn int(out: &mut Vec<u8>, first: u8, prefix_bits: u32, mut v: u64) {
    let max = (1u64 << prefix_bits) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

fn string(out: &mut Vec<u8>, s: &str) {
    int(out, 0, 7, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Indexed field.
fn idx(i: u64) -> Vec<u8> {
    let mut v = Vec::new();
    int(&mut v, 0x80, 7, i);
    v
}

/// Literal without indexing, new name.
fn lit(name: &str, value: &str) -> Vec<u8> {
    let mut v = vec![0];
    string(&mut v, name);
    string(&mut v, value);
    v
}

/// Literal with incremental indexing, new name.
fn inc(name: &str, value: &str) -> Vec<u8> {
    let mut v = vec![0x40];
    string(&mut v, name);
    string(&mut v, value);
    v
}

/// Literal with incremental indexing, indexed name.
fn inc_named(index: u64, value: &str) -> Vec<u8> {
    let mut v = Vec::new();
    int(&mut v, 0x40, 6, index);
    string(&mut v, value);
    v
}

/// Literal without indexing, indexed name.
fn lit_named(index: u64, value: &str) -> Vec<u8> {
    let mut v = Vec::new();
    int(&mut v, 0, 4, index);
    string(&mut v, value);
    v
}

fn block(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// A request block made of literals only (no table use), so any decoder state decodes it.
fn req_block(method: &str, path: &str) -> Vec<u8> {
    block(&[
        lit(":method", method),
        lit(":scheme", "http"),
        lit(":path", path),
        lit(":authority", "example"),
    ])
}

fn status_block(status: &str) -> Vec<u8> {
    lit(":status", status)
}

// ---- frames ----

fn frame(ty: u8, flags: u8, sid: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut v = len.to_be_bytes()[1..].to_vec();
    v.push(ty);
    v.push(flags);
    v.extend_from_slice(&sid.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

fn headers(sid: u32, flags: u8, block: &[u8]) -> Vec<u8> {
    frame(HEADERS, flags | END_HEADERS, sid, block)
}

fn data(sid: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    frame(DATA, flags, sid, payload)
}

fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, v) in pairs {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &p)
}

fn settings_ack() -> Vec<u8> {
    frame(SETTINGS, 1, 0, &[])
}

fn rst(sid: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, sid, &code.to_be_bytes())
}

fn goaway(last: u32, code: u32) -> Vec<u8> {
    let mut p = last.to_be_bytes().to_vec();
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(b"debug data");
    frame(GOAWAY, 0, 0, &p)
}

fn continuation(sid: u32, last: bool, fragment: &[u8]) -> Vec<u8> {
    frame(
        CONTINUATION,
        if last { END_HEADERS } else { 0 },
        sid,
        fragment,
    )
}

fn push_promise(sid: u32, promised: u32, block: &[u8]) -> Vec<u8> {
    let mut p = promised.to_be_bytes().to_vec();
    p.extend_from_slice(block);
    frame(PUSH_PROMISE, END_HEADERS, sid, &p)
}

/// HEADERS with PADDED and PRIORITY set.
fn headers_padded(sid: u32, flags: u8, block: &[u8], pad: u8) -> Vec<u8> {
    let mut p = vec![pad];
    p.extend_from_slice(&[0x80, 0, 0, 3, 200]);
    p.extend_from_slice(block);
    p.extend(std::iter::repeat_n(0u8, usize::from(pad)));
    frame(
        HEADERS,
        flags | END_HEADERS | PADDED | PRIORITY_FLAG,
        sid,
        &p,
    )
}

fn data_padded(sid: u32, flags: u8, payload: &[u8], pad: u8) -> Vec<u8> {
    let mut p = vec![pad];
    p.extend_from_slice(payload);
    p.extend(std::iter::repeat_n(0u8, usize::from(pad)));
    frame(DATA, flags | PADDED, sid, &p)
}

/// gRPC length-prefixed message of `n` bytes.
fn grpc_msg(n: usize) -> Vec<u8> {
    let mut v = vec![0];
    v.extend_from_slice(&(n as u32).to_be_bytes());
    v.extend((0..n).map(|i| (i % 251) as u8));
    v
}

fn client_start() -> Vec<u8> {
    let mut v = PREFACE.to_vec();
    v.extend(settings(&[(2, 0), (4, 65535)]));
    v
}

fn server_start() -> Vec<u8> {
    let mut v = settings(&[(3, 100)]);
    v.extend(settings_ack());
    v
}

// ---- driving ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum To {
    Server,
    Client,
}

#[derive(Clone, Debug)]
struct Event {
    to: To,
    seg: Segment,
}

fn c(ts: u64, bytes: &[u8]) -> Event {
    Event {
        to: To::Server,
        seg: seg(ts, bytes),
    }
}

fn s(ts: u64, bytes: &[u8]) -> Event {
    Event {
        to: To::Client,
        seg: seg(ts, bytes),
    }
}

fn push(conn: &mut H2Conn, ev: &Event) {
    match ev.to {
        To::Server => conn.push_client(ev.seg.clone()),
        To::Client => conn.push_server(ev.seg.clone()),
    }
}

/// Pushes all events into `conn`, closes it, returns every stream.
fn run(mut conn: H2Conn, events: &[Event]) -> (Vec<H2Stream>, H2Conn) {
    let mut out = Vec::new();
    for ev in events {
        push(&mut conn, ev);
        out.extend(conn.take_streams());
    }
    let last = events.last().map_or(0, |e| e.seg.ts_ns);
    conn.close(last + 1);
    out.extend(conn.take_streams());
    (out, conn)
}

fn replay(events: &[Event]) -> (Vec<H2Stream>, H2Conn) {
    run(H2Conn::new(), events)
}

/// The same events, each segment cut into single bytes.
fn bytewise(events: &[Event]) -> Vec<Event> {
    let mut out = Vec::new();
    for ev in events {
        for b in ev.seg.data.iter() {
            out.push(Event {
                to: ev.to,
                seg: seg(ev.seg.ts_ns, &[*b]),
            });
        }
    }
    out
}

fn hdr(name: &str, value: &str) -> Header {
    Header {
        name: name.to_owned(),
        value: value.to_owned(),
    }
}
