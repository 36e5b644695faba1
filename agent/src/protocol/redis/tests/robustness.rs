//! Garbage, truncation and gaps never panic and keep memory bounded.

use super::{Event, cl, cmd, replay, sv};
use crate::protocol::{Segment, testutil::To};

#[test]
fn garbage_truncation_and_gaps() {
    let mut x = 0x1234_5678_9abc_def1u64;
    for round in 0..300 {
        let mut evs = Vec::new();
        for i in 0..20u64 {
            let mut buf = cmd(&["SET", "k", "v"]);
            buf.extend(b"+OK\r\n*3\r\n$1\r\n:\r\n%1\r\n".iter());
            for b in &mut buf {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if x.is_multiple_of(7) {
                    *b = x as u8;
                }
            }
            let cut = (x as usize) % buf.len();
            let to = if (x >> 8).is_multiple_of(2) {
                To::Server
            } else {
                To::Client
            };
            evs.push(Event {
                to,
                seg: Segment::prefix(
                    round * 100 + i,
                    buf[..cut].to_vec(),
                    buf.len() as u64 + (x >> 20) % 5,
                ),
            });
        }
        let (calls, _) = replay(&evs);
        assert!(calls.len() <= 40);
    }
    let (calls, _) = replay(&[cl(1, b"*3\r\n$3\r\nSET"), sv(2, b"+OK\r\n")]);
    assert!(calls.iter().all(|c| c.partial));
}
