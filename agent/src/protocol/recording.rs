//! Recorded connections: the `.rec` format of `agent/tests/data/PROTOCOL/` (written by
//! `agent/tests/data/record.py`, described in `agent/tests/data/README.md`), parsed into the
//! segments the kernel would have delivered. The parsers' unit tests replay them, and so does
//! the semantic-conventions test of the tests crate (every name a span can carry).

use bytes::Bytes;

use super::Segment;

/// Direction of a recorded segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum To {
    /// Client -> server (`>` in the file).
    Server,
    /// Server -> client (`<`).
    Client,
}

#[derive(Clone, Debug)]
pub struct RecEvent {
    pub to: To,
    pub seg: Segment,
}

/// Parses the `.rec` format. Panics on a malformed file: recordings are test data, checked in.
pub fn parse_rec(raw: &[u8], name: &str) -> Vec<RecEvent> {
    let mut events = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        let nl = raw[i..]
            .iter()
            .position(|&b| b == b'\n')
            .expect("header line")
            + i;
        let line = std::str::from_utf8(&raw[i..nl]).expect("utf8 header");
        i = nl + 1;
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(' ').collect();
        let to = match f[0] {
            ">" => To::Server,
            "<" => To::Client,
            other => panic!("{name}: bad direction {other:?}"),
        };
        let ts: u64 = f[1].parse().unwrap();
        let len: u64 = f[2].parse().unwrap();
        let captured: usize = f.get(3).map_or(len as usize, |c| c.parse().unwrap());
        let data = Bytes::copy_from_slice(&raw[i..i + captured]);
        i += captured;
        assert_eq!(raw[i], b'\n', "{name}: record not followed by a newline");
        i += 1;
        events.push(RecEvent {
            to,
            seg: Segment::prefix(ts, data, len),
        });
    }
    events
}
