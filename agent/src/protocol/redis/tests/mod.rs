//! Tests of the Redis parser: recorded real connections (`data/`, see its README), protocol
//! rules on hand-written bytes, detection, and robustness.

mod detect;
mod recorded;
mod robustness;
mod rules;

use bytes::Bytes;

use super::{Call, RedisConn, Segment};
use crate::protocol::testutil::{RecEvent as Event, To};

fn seg(ts: u64, data: &[u8]) -> Segment {
    Segment::full(ts, Bytes::copy_from_slice(data))
}

fn cl(ts: u64, data: &[u8]) -> Event {
    Event {
        to: To::Server,
        seg: seg(ts, data),
    }
}

fn sv(ts: u64, data: &[u8]) -> Event {
    Event {
        to: To::Client,
        seg: seg(ts, data),
    }
}

fn push(conn: &mut RedisConn, ev: &Event) {
    match ev.to {
        To::Server => conn.push_client(ev.seg.clone()),
        To::Client => conn.push_server(ev.seg.clone()),
    }
}

/// Pushes all events, closes, returns everything emitted.
fn replay(events: &[Event]) -> (Vec<Call>, RedisConn) {
    let mut conn = RedisConn::new();
    let mut out = Vec::new();
    for ev in events {
        push(&mut conn, ev);
        out.extend(conn.take_calls());
        assert!(
            conn.buffered() < 64 * 1024 + 4096 + 1024 * 512,
            "{}",
            conn.buffered()
        );
    }
    let last = events.last().map_or(0, |e| e.seg.ts_ns);
    conn.close(last + 1);
    out.extend(conn.take_calls());
    (out, conn)
}

/// (command, args, keys, error, database) of a call.
type Brief = (String, u32, u32, Option<String>, Option<u32>);

fn brief(c: &Call) -> Brief {
    (
        c.command.clone(),
        c.args,
        c.keys,
        c.error.clone(),
        c.database,
    )
}

/// Builds a RESP command.
fn cmd(words: &[&str]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", words.len()).into_bytes();
    for w in words {
        v.extend(format!("${}\r\n{w}\r\n", w.len()).into_bytes());
    }
    v
}
