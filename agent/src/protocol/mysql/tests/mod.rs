//! Tests of the MySQL parser: recorded real connections, hand-made protocol rules,
//! robustness, the SQL sanitizer and the span builder.

mod recorded;
mod robustness;
mod rules;
mod span;
mod sql;

use bytes::Bytes;

use super::{Call, MysqlConn, Segment};
use crate::protocol::testutil::{self, RecEvent as Event, To};

fn seg(ts: u64, data: &[u8]) -> Segment {
    Segment::full(ts, Bytes::copy_from_slice(data))
}

fn cli(ts: u64, data: &[u8]) -> Event {
    Event {
        to: To::Server,
        seg: seg(ts, data),
    }
}

fn srv(ts: u64, data: &[u8]) -> Event {
    Event {
        to: To::Client,
        seg: seg(ts, data),
    }
}

fn push(conn: &mut MysqlConn, ev: &Event) {
    match ev.to {
        To::Server => conn.push_client(ev.seg.clone()),
        To::Client => conn.push_server(ev.seg.clone()),
    }
}

/// Pushes all events, closes, returns everything emitted.
fn replay(events: &[Event]) -> (Vec<Call>, MysqlConn) {
    let mut conn = MysqlConn::new();
    let mut out = Vec::new();
    for ev in events {
        push(&mut conn, ev);
        out.extend(conn.take_calls());
    }
    let last = events.last().map_or(0, |e| e.seg.ts_ns);
    conn.close(last + 1);
    out.extend(conn.take_calls());
    (out, conn)
}

/// A recording of `agent/tests/data/mysql/`.
fn load_rec(name: &str) -> Vec<Event> {
    testutil::load_rec("mysql", name)
}

/// One packet: header + payload.
fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
    let n = payload.len() as u32;
    let mut v = n.to_le_bytes()[..3].to_vec();
    v.push(seq);
    v.extend_from_slice(payload);
    v
}

/// What a test compares: a call without timestamps, partial and server version.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Summary {
    command: &'static str,
    query: Option<String>,
    id: Option<u32>,
    rows: Option<u64>,
    affected: Option<u64>,
    error: Option<u16>,
    database: Option<String>,
}

fn summary(c: &Call) -> Summary {
    Summary {
        command: c.command,
        query: c.query.clone(),
        id: c.statement_id,
        rows: c.rows,
        affected: c.affected,
        error: c.error.as_ref().map(|e| e.code),
        database: c.database.clone(),
    }
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
