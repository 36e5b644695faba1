//! Real connections recorded on this machine (redis-server 7.0 with redis-cli and redis-py;
//! `agent/tests/data/redis/README.md`), replayed as recorded, coalesced, byte by byte, with a capped prefix and
//! tail, and with random gaps.

use super::{Brief, Event, replay};
use crate::protocol::testutil::{self, bytewise, capture, coalesce};

/// A recording of `agent/tests/data/redis/`.
fn load(name: &str) -> Vec<Event> {
    testutil::load_rec("redis", name)
}

fn b(cmd: &str, args: u32, keys: u32, err: Option<&str>, db: Option<u32>) -> Brief {
    (cmd.to_owned(), args, keys, err.map(str::to_owned), db)
}

const UNKNOWN_SUB: &str = "ERR unknown subcommand 'SETINFO'. Try CLIENT HELP.";
const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
const NOT_INT: &str = "ERR value is not an integer or out of range";

/// redis-py's connection set-up: HELLO 3, then three CLIENT commands this server refuses.
fn py_hello() -> Vec<Brief> {
    vec![
        b("HELLO", 1, 0, None, None),
        b(
            "CLIENT MAINT_NOTIFICATIONS",
            4,
            0,
            Some("ERR unknown subcommand 'MAINT_NOTIFICATIONS'. Try CLIENT HELP."),
            None,
        ),
        b("CLIENT SETINFO", 3, 0, Some(UNKNOWN_SUB), None),
        b("CLIENT SETINFO", 3, 0, Some(UNKNOWN_SUB), None),
    ]
}

/// Expected calls and push count of each recording.
fn expected(name: &str) -> (Vec<Brief>, u64) {
    match name {
        "cli_session" => (
            vec![
                b("COMMAND DOCS", 1, 0, None, None),
                b("SET", 2, 1, None, None),
                b("GET", 1, 1, None, None),
                b("DEL", 2, 2, None, None),
                b("LPUSH", 2, 1, None, None),
                b("GET", 1, 1, Some(WRONGTYPE), None),
                b("MSET", 4, 2, None, None),
                b("MGET", 3, 3, None, None),
                b("INCR", 1, 1, None, None),
                b("EXPIRE", 2, 1, None, None),
                b("HSET", 5, 1, None, None),
                b("HGETALL", 1, 1, None, None),
                b("CLIENT SETNAME", 2, 0, None, None),
                b("CONFIG GET", 2, 0, None, None),
                b("SELECT", 1, 0, None, None),
                b("SET", 2, 1, None, Some(2)),
                b(
                    "FOOBAR",
                    1,
                    0,
                    Some("ERR unknown command 'FOOBAR'"),
                    Some(2),
                ),
            ],
            0,
        ),
        "cli_pipe" => {
            let mut v = vec![b("SET", 2, 1, None, None); 20];
            v.push(b("INCR", 1, 1, Some(NOT_INT), None));
            v.push(b("ECHO", 1, 0, None, None));
            (v, 0)
        }
        "py_pipeline" => {
            let mut v = py_hello();
            v.extend([
                b("SET", 2, 1, None, None),
                b("GET", 1, 1, None, None),
                b("LPUSH", 2, 1, Some(WRONGTYPE), None),
                b("INCRBY", 2, 1, None, None),
                b("DEL", 2, 2, None, None),
                b("PING", 0, 0, None, None),
                b("SET", 2, 1, None, None),
                b("GET", 1, 1, None, None),
            ]);
            (v, 0)
        }
        "py_multi" => {
            let mut v = py_hello();
            v.extend([
                b("SELECT", 1, 0, None, None),
                b("MULTI", 0, 0, None, Some(3)),
                b("SET", 2, 1, None, Some(3)),
                b("INCRBY", 2, 1, None, Some(3)),
                b("GET", 1, 1, None, Some(3)),
                b("EXEC", 0, 0, None, Some(3)),
            ]);
            (v, 0)
        }
        "py_resp3" => (vec![b("SET", 2, 1, None, None)], 0),
        "py_resp3_1" => {
            let mut v = py_hello();
            v.extend([
                b("CLIENT TRACKING", 2, 0, None, None),
                b("SET", 2, 1, None, None),
                b("GET", 1, 1, None, None),
            ]);
            (v, 1)
        }
        "py_resp3_2" => {
            let mut v = py_hello();
            v.extend([
                b("HSET", 5, 1, None, None),
                b("HGETALL", 1, 1, None, None),
                b("ZADD", 3, 1, None, None),
                b("ZSCORE", 2, 1, None, None),
                b("HGET", 2, 1, Some(WRONGTYPE), None),
            ]);
            (v, 0)
        }
        "py_pubsub" => {
            let mut v = py_hello();
            v.extend([
                b("SUBSCRIBE", 2, 0, None, None),
                b("PING", 0, 0, None, None),
                b("UNSUBSCRIBE", 0, 0, None, None),
            ]);
            // Two messages, and the second unsubscribe confirmation (the UNSUBSCRIBE of
            // everything ends with the one whose count is 0: none is left over).
            (v, 2)
        }
        other => panic!("no expectation for {other}"),
    }
}

const NAMES: [&str; 8] = [
    "cli_session",
    "cli_pipe",
    "py_pipeline",
    "py_multi",
    "py_resp3",
    "py_resp3_1",
    "py_resp3_2",
    "py_pubsub",
];

fn check_exact(name: &str, how: &str, events: &[Event]) {
    let (calls, conn) = replay(events);
    let (want, pushes) = expected(name);
    let got: Vec<Brief> = calls.iter().map(super::brief).collect();
    assert_eq!(got, want, "{name} {how}");
    for c in &calls {
        assert!(!c.partial, "{name} {how}: {c:?}");
        assert!(c.start_ns <= c.end_ns, "{name} {how}: {c:?}");
    }
    let stats = conn.stats();
    assert_eq!(stats.pushes, pushes, "{name} {how}: {stats:?}");
    assert_eq!(stats.resyncs, 0, "{name} {how}: {stats:?}");
    assert_eq!(stats.unmatched_responses, 0, "{name} {how}: {stats:?}");
}

#[test]
fn recordings_exact() {
    for name in NAMES {
        let events = load(name);
        check_exact(name, "as recorded", &events);
        check_exact(name, "coalesced", &coalesce(&events));
    }
}

#[test]
fn recordings_split_at_every_byte() {
    for name in NAMES {
        check_exact(name, "bytewise", &bytewise(&load(name)));
    }
}

#[test]
fn timings_are_those_of_the_segments() {
    let events = load("cli_session");
    let (calls, _) = replay(&events);
    // SET user:1: the 3rd client segment and the reply right after it.
    let set = &calls[1];
    let at = events
        .iter()
        .position(|e| e.seg.data.starts_with(b"*3\r\n$3\r\nSET\r\n$6\r\nuser:1"))
        .unwrap();
    let ts: Vec<u64> = events.iter().map(|e| e.seg.ts_ns).collect();
    assert_eq!((set.start_ns, set.end_ns), (ts[at], ts[at + 1]));
    // COMMAND DOCS: from its segment to the last of its multi-read reply.
    assert_eq!(calls[0].start_ns, ts[0]);
    assert_eq!(calls[0].end_ns, ts[at - 1]);
    assert!(at > 2);
}

#[test]
fn large_values_with_capped_capture() {
    // 256 captured bytes per read/write plus a 64-byte tail: the 300 kB value and the
    // 400 kB COMMAND DOCS reply are mostly gaps, framing survives by count.
    let events = load("py_pipeline");
    check_exact("py_pipeline", "capped 256+64", &capture(&events, 256, 64));
    // The COMMAND DOCS reply is 400 kB of nested headers: with 256 bytes per 64 KiB read its
    // framing is lost, it is partial, and the calls after it are exact again.
    let (calls, conn) = replay(&capture(&load("cli_session"), 256, 64));
    let (want, _) = expected("cli_session");
    assert_eq!(calls[0].command, "COMMAND DOCS");
    assert!(calls[0].partial, "{:?}", calls[0]);
    let got: Vec<Brief> = calls[1..].iter().map(super::brief).collect();
    assert_eq!(got, want[1..].to_vec());
    assert!(calls[1..].iter().all(|c| !c.partial), "{calls:?}");
    assert!(conn.stats().resyncs >= 1);
}

/// Tiny deterministic generator (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Seeds per recording; `REDIS_GAP_SEEDS` raises it for a longer run.
fn gap_seeds() -> u64 {
    std::env::var("REDIS_GAP_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400)
}

/// Every read/write has a 1 in 4 chance of losing a random middle part. A call reported clean
/// is one of the calls of the full replay: same pairing, timings, error and database. (py
/// seed 80 once gave a clean `CLIENT SETINFO` the reply of the `CLIENT` command before it,
/// which was lost while the client side was still searching for a command start.)
#[test]
fn random_gaps_never_give_a_wrong_clean_call() {
    for name in NAMES {
        let events = load(name);
        let (good, _) = replay(&events);
        for seed in 1..=gap_seeds() {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let cut: Vec<Event> = events
                .iter()
                .map(|e| {
                    let d = &e.seg.data;
                    if rng.below(4) != 0 || d.is_empty() {
                        return e.clone();
                    }
                    let keep = rng.below(d.len() as u64) as usize;
                    let tail = rng.below((d.len() - keep) as u64 + 1) as usize;
                    Event {
                        to: e.to,
                        seg: crate::protocol::Segment::prefix(
                            e.seg.ts_ns,
                            d.slice(..keep),
                            e.seg.len,
                        )
                        .with_tail(d.slice(d.len() - tail..)),
                    }
                })
                .collect();
            let (calls, conn) = replay(&cut);
            assert!(
                calls.len() <= good.len() + 4,
                "{name} seed {seed}: {calls:?}"
            );
            for c in calls.iter().filter(|c| !c.partial) {
                // The pairing (name, counts, error, timings) and database of a clean call are
                // right.
                let same = |g: &super::Call| g == c;
                assert!(
                    good.iter().any(same),
                    "{name} seed {seed}: clean call {c:?} is wrong; stats {:?}",
                    conn.stats()
                );
            }
        }
    }
}
