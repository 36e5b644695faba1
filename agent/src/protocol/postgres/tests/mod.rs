//! Tests of the PostgreSQL parser: hand-written protocol rules, recorded real connections,
//! robustness, and the SQL helpers.

mod recorded;
mod robustness;
mod rules;
mod sql;

use std::path::PathBuf;

use bytes::Bytes;

use super::{PgConn, Segment, Statement};

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

fn fe(ts: u64, data: &[u8]) -> Event {
    Event {
        to: To::Server,
        seg: seg(ts, data),
    }
}

fn be(ts: u64, data: &[u8]) -> Event {
    Event {
        to: To::Client,
        seg: seg(ts, data),
    }
}

fn push(conn: &mut PgConn, ev: &Event) {
    match ev.to {
        To::Server => conn.push_frontend(ev.seg.clone()),
        To::Client => conn.push_backend(ev.seg.clone()),
    }
}

/// Pushes all events, closes, returns everything emitted.
fn replay(events: &[Event]) -> (Vec<Statement>, PgConn) {
    let mut conn = PgConn::new();
    let mut out = Vec::new();
    for ev in events {
        push(&mut conn, ev);
        out.extend(conn.take_statements());
    }
    let last = events.last().map_or(0, |e| e.seg.ts_ns);
    conn.close(last + 1);
    out.extend(conn.take_statements());
    (out, conn)
}

// ---- message builders (wire format per the protocol documentation) ----

fn msg(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![ty];
    v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn startup(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend(cstr(k));
        body.extend(cstr(v));
    }
    body.push(0);
    let mut v = (body.len() as u32 + 4).to_be_bytes().to_vec();
    v.extend(body);
    v
}

fn request(code: u32) -> Vec<u8> {
    let mut v = 8u32.to_be_bytes().to_vec();
    v.extend(code.to_be_bytes());
    v
}

fn ssl_request() -> Vec<u8> {
    request(80_877_103)
}

fn gss_request() -> Vec<u8> {
    request(80_877_104)
}

fn cancel_request() -> Vec<u8> {
    let mut v = 16u32.to_be_bytes().to_vec();
    v.extend(80_877_102u32.to_be_bytes());
    v.extend(1234u32.to_be_bytes());
    v.extend(5678u32.to_be_bytes());
    v
}

fn query(sql: &str) -> Vec<u8> {
    msg(b'Q', &cstr(sql))
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = cstr(name);
    b.extend(cstr(sql));
    b.extend(0u16.to_be_bytes());
    msg(b'P', &b)
}

/// Bind with text parameters.
fn bind(portal: &str, stmt: &str, params: &[&[u8]]) -> Vec<u8> {
    let mut b = cstr(portal);
    b.extend(cstr(stmt));
    b.extend(0u16.to_be_bytes());
    b.extend((params.len() as u16).to_be_bytes());
    for p in params {
        b.extend((p.len() as u32).to_be_bytes());
        b.extend_from_slice(p);
    }
    b.extend(0u16.to_be_bytes());
    msg(b'B', &b)
}

fn describe(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    b.extend(cstr(name));
    msg(b'D', &b)
}

fn execute(portal: &str, max_rows: u32) -> Vec<u8> {
    let mut b = cstr(portal);
    b.extend(max_rows.to_be_bytes());
    msg(b'E', &b)
}

fn close_stmt(name: &str) -> Vec<u8> {
    let mut b = vec![b'S'];
    b.extend(cstr(name));
    msg(b'C', &b)
}

fn sync() -> Vec<u8> {
    msg(b'S', &[])
}

fn flush() -> Vec<u8> {
    msg(b'H', &[])
}

fn auth_ok() -> Vec<u8> {
    msg(b'R', &0u32.to_be_bytes())
}

fn param_status(k: &str, v: &str) -> Vec<u8> {
    let mut b = cstr(k);
    b.extend(cstr(v));
    msg(b'S', &b)
}

fn ready(status: u8) -> Vec<u8> {
    msg(b'Z', &[status])
}

/// AuthenticationOk, a ParameterStatus, BackendKeyData, ReadyForQuery.
fn startup_reply() -> Vec<u8> {
    let mut v = auth_ok();
    v.extend(param_status("server_version", "15.0"));
    v.extend(msg(b'K', &[0, 0, 0, 1, 0, 0, 0, 2]));
    v.extend(ready(b'I'));
    v
}

fn row_desc(cols: &[&str]) -> Vec<u8> {
    let mut b = (cols.len() as u16).to_be_bytes().to_vec();
    for c in cols {
        b.extend(cstr(c));
        b.extend([0u8; 6]);
        b.extend(25u32.to_be_bytes());
        b.extend((-1i16).to_be_bytes());
        b.extend((-1i32).to_be_bytes());
        b.extend(0u16.to_be_bytes());
    }
    msg(b'T', &b)
}

fn data_row(fields: &[&[u8]]) -> Vec<u8> {
    let mut b = (fields.len() as u16).to_be_bytes().to_vec();
    for f in fields {
        b.extend((f.len() as u32).to_be_bytes());
        b.extend_from_slice(f);
    }
    msg(b'D', &b)
}

fn complete(tag: &str) -> Vec<u8> {
    msg(b'C', &cstr(tag))
}

fn error(code: &str, message: &str) -> Vec<u8> {
    let mut b = Vec::new();
    for (t, v) in [
        (b'S', "ERROR"),
        (b'V', "ERROR"),
        (b'C', code),
        (b'M', message),
    ] {
        b.push(t);
        b.extend(cstr(v));
    }
    b.push(0);
    msg(b'E', &b)
}

fn notice(message: &str) -> Vec<u8> {
    let mut b = Vec::new();
    for (t, v) in [(b'S', "NOTICE"), (b'C', "00000"), (b'M', message)] {
        b.push(t);
        b.extend(cstr(v));
    }
    b.push(0);
    msg(b'N', &b)
}

fn empty_query() -> Vec<u8> {
    msg(b'I', &[])
}

fn parse_complete() -> Vec<u8> {
    msg(b'1', &[])
}

fn bind_complete() -> Vec<u8> {
    msg(b'2', &[])
}

fn close_complete() -> Vec<u8> {
    msg(b'3', &[])
}

fn no_data() -> Vec<u8> {
    msg(b'n', &[])
}

fn param_desc(n: u16) -> Vec<u8> {
    let mut b = n.to_be_bytes().to_vec();
    for _ in 0..n {
        b.extend(25u32.to_be_bytes());
    }
    msg(b't', &b)
}

fn portal_suspended() -> Vec<u8> {
    msg(b's', &[])
}

fn copy_response(ty: u8, cols: u16) -> Vec<u8> {
    let mut b = vec![0];
    b.extend(cols.to_be_bytes());
    b.extend(std::iter::repeat_n(0u8, 2 * cols as usize));
    msg(ty, &b)
}

fn copy_data(data: &[u8]) -> Vec<u8> {
    msg(b'd', data)
}

fn copy_done() -> Vec<u8> {
    msg(b'c', &[])
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

// ---- recordings ----

fn data_dir() -> PathBuf {
    testutil::data_dir("postgres")
}

/// Reads a `.rec` file (format in tests/data/README.md).
fn load_rec(name: &str) -> Vec<Event> {
    testutil::load_rec("postgres", name)
}

/// What a test compares: a statement without timestamps and partial.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Summary {
    extended: bool,
    prepared: Option<String>,
    tag: Option<String>,
    rows: Option<u64>,
    sqlstate: Option<String>,
    query: Option<String>,
}

fn summary(s: &Statement) -> Summary {
    Summary {
        extended: s.extended,
        prepared: s.prepared_name.clone(),
        tag: s.command_tag.clone(),
        rows: s.rows,
        sqlstate: s.error.as_ref().map(|e| e.sqlstate.clone()),
        query: s.query.clone(),
    }
}

fn summaries(xs: &[Statement]) -> Vec<Summary> {
    xs.iter().map(summary).collect()
}

/// A recording's `.expected` file.
#[derive(Debug)]
struct Expected {
    user: Option<String>,
    database: Option<String>,
    encrypted: bool,
    stmts: Vec<Summary>,
}

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
            Some('r') => out.push('\r'),
            Some('\\') => out.push('\\'),
            other => panic!("bad escape {other:?}"),
        }
    }
    out
}

fn opt(s: &str) -> Option<String> {
    (s != "-").then(|| unescape(s))
}

fn load_expected(name: &str) -> Expected {
    let path = data_dir().join(format!("{name}.expected"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut exp = Expected {
        user: None,
        database: None,
        encrypted: false,
        stmts: Vec::new(),
    };
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let f: Vec<&str> = line.split('\t').collect();
        match f[0] {
            "user" => exp.user = opt(f[1]),
            "database" => exp.database = opt(f[1]),
            "encrypted" => exp.encrypted = f[1] == "true",
            "stmt" => {
                assert_eq!(f.len(), 7, "{name}: bad line {line:?}");
                exp.stmts.push(Summary {
                    extended: match f[1] {
                        "simple" => false,
                        "extended" => true,
                        other => panic!("{name}: kind {other:?}"),
                    },
                    prepared: match f[2] {
                        "''" => Some(String::new()),
                        p => opt(p),
                    },
                    tag: opt(f[3]),
                    rows: opt(f[4]).map(|r| r.parse().unwrap()),
                    sqlstate: opt(f[5]),
                    query: opt(f[6]),
                });
            }
            other => panic!("{name}: bad line kind {other:?}"),
        }
    }
    exp
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

/// One direction flattened, with the ts of every byte.
fn stream(events: &[Event], to: To) -> (Vec<u8>, Vec<u64>) {
    let mut bytes = Vec::new();
    let mut ts = Vec::new();
    for e in events.iter().filter(|e| e.to == to) {
        bytes.extend_from_slice(&e.seg.data);
        ts.extend(std::iter::repeat_n(e.seg.ts_ns, e.seg.data.len()));
    }
    (bytes, ts)
}

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
