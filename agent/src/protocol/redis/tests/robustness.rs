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

/// py_pipeline seed 80: the client side is still searching (after a cut HELLO) when a whole
/// command is lost in the next write's gap; its error reply must not be reported clean on the
/// command after it.
#[test]
fn command_lost_while_searching_keeps_calls_partial() {
    let hello = cmd(&["HELLO", "3"]);
    let maint = cmd(&["CLIENT", "MAINT_NOTIFICATIONS", "ON"]);
    let evs = vec![
        Event {
            to: To::Server,
            seg: Segment::prefix(1, hello[..18].to_vec(), hello.len() as u64)
                .with_tail(bytes::Bytes::copy_from_slice(&hello[hello.len() - 1..])),
        },
        sv(2, b"%1\r\n$5\r\nproto\r\n:3\r\n"),
        Event {
            to: To::Server,
            seg: Segment::prefix(3, maint[..12].to_vec(), maint.len() as u64),
        },
        cl(4, &cmd(&["CLIENT", "SETINFO", "LIB-NAME", "x"])),
        sv(5, b"-ERR maint\r\n-ERR setinfo\r\n"),
        cl(6, &cmd(&["GET", "k"])),
        sv(7, b"$1\r\nv\r\n"),
    ];
    let (calls, _) = replay(&evs);
    for c in &calls {
        let wrong = c.command == "CLIENT SETINFO" && c.error.as_deref() == Some("ERR maint");
        assert!(c.partial || !wrong, "{calls:?}");
    }
    assert!(
        calls.iter().any(|c| c.command == "CLIENT SETINFO"),
        "{calls:?}"
    );
}
