//! Helpers shared by the protocol parsers' tests: recorded connections (`.rec` files under
//! `agent/tests/data/PROTOCOL/`, written by `agent/tests/data/record.py`) and the ways the
//! kernel may present their bytes (coalesced, byte by byte, prefix/tail capture).

use std::path::PathBuf;

use bytes::Bytes;

use super::Segment;
pub(crate) use super::recording::{RecEvent, To, parse_rec};

pub(crate) fn data_dir(protocol: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(protocol)
}

/// Every recording of a protocol, by name (without `.rec`), sorted.
pub(crate) fn recordings(protocol: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data_dir(protocol))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".rec").map(str::to_owned)
        })
        .collect();
    names.sort();
    names
}

/// Reads `tests/data/PROTOCOL/NAME.rec` (format in `tests/data/README.md`).
pub(crate) fn load_rec(protocol: &str, name: &str) -> Vec<RecEvent> {
    let path = data_dir(protocol).join(format!("{name}.rec"));
    let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    parse_rec(&raw, name)
}

/// Consecutive fully captured segments of the same direction merged into one (the ts of the
/// last one): the fewest, largest reads/writes the recording allows.
pub(crate) fn coalesce(events: &[RecEvent]) -> Vec<RecEvent> {
    let mut out: Vec<RecEvent> = Vec::new();
    for ev in events {
        match out.last_mut() {
            Some(last) if last.to == ev.to && is_full(&last.seg) && is_full(&ev.seg) => {
                let mut data = last.seg.data.to_vec();
                data.extend_from_slice(&ev.seg.data);
                last.seg = Segment::full(ev.seg.ts_ns, data);
            }
            _ => out.push(ev.clone()),
        }
    }
    out
}

/// Every captured byte as its own segment (same ts); gaps stay attached to the last byte.
pub(crate) fn bytewise(events: &[RecEvent]) -> Vec<RecEvent> {
    let mut out = Vec::new();
    for ev in events {
        let n = ev.seg.data.len();
        for (i, b) in ev.seg.data.iter().enumerate() {
            let len = if i + 1 == n {
                ev.seg.len - (n as u64 - 1)
            } else {
                1
            };
            out.push(RecEvent {
                to: ev.to,
                seg: Segment::prefix(ev.seg.ts_ns, Bytes::copy_from_slice(&[*b]), len)
                    .with_tail(ev.seg.tail.clone()),
            });
        }
    }
    out
}

/// What the kernel delivers with a capture of `prefix` leading bytes and `tail` trailing
/// bytes per read/write.
pub(crate) fn capture(events: &[RecEvent], prefix: usize, tail: usize) -> Vec<RecEvent> {
    events
        .iter()
        .map(|ev| {
            let data = &ev.seg.data;
            let p = prefix.min(data.len());
            let t = tail.min(data.len() - p);
            RecEvent {
                to: ev.to,
                seg: Segment::prefix(ev.seg.ts_ns, data.slice(..p), ev.seg.len)
                    .with_tail(data.slice(data.len() - t..)),
            }
        })
        .collect()
}

fn is_full(seg: &Segment) -> bool {
    seg.data.len() as u64 == seg.len
}

/// As the kernel copies: the first `cap` bytes of each segment and, of a longer one, its last
/// `tail` bytes; lengths unchanged.
pub(crate) fn capped_with_tail(events: &[RecEvent], cap: usize, tail: usize) -> Vec<RecEvent> {
    events
        .iter()
        .map(|e| {
            let d = &e.seg.data;
            let n = d.len().min(cap);
            let t = (d.len() - n).min(tail);
            RecEvent {
                to: e.to,
                seg: Segment::prefix(e.seg.ts_ns, d.slice(..n), e.seg.len)
                    .with_tail(d.slice(d.len() - t..)),
            }
        })
        .collect()
}
