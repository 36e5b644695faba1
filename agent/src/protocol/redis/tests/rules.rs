//! Protocol rules on hand-written bytes.

use super::{cl, cmd, replay, sv};

#[test]
fn resp2_pubsub_deliveries_do_not_shift_pairing() {
    let (calls, conn) = replay(&[
        cl(1, &cmd(&["SUBSCRIBE", "a"])),
        sv(2, b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n"),
        sv(3, b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$6\r\nsecret\r\n"),
        cl(4, &cmd(&["PING"])),
        sv(
            5,
            b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nx\r\n*2\r\n$4\r\npong\r\n$0\r\n\r\n",
        ),
    ]);
    let names: Vec<&str> = calls.iter().map(|c| c.command.as_str()).collect();
    assert_eq!(names, ["SUBSCRIBE", "PING"]);
    assert_eq!((calls[1].start_ns, calls[1].end_ns), (4, 5));
    assert!(calls.iter().all(|c| !c.partial));
    assert_eq!(conn.stats().pushes, 2);
}

#[test]
fn resp3_push_attribute_and_inline() {
    let (calls, conn) = replay(&[
        cl(1, b"PING\r\n"),
        cl(2, &cmd(&["GET", "k"])),
        sv(
            3,
            b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n+PONG\r\n|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n",
        ),
    ]);
    let names: Vec<&str> = calls.iter().map(|c| c.command.as_str()).collect();
    assert_eq!(names, ["PING", "GET"]);
    assert_eq!(calls[1].keys, 1);
    assert_eq!(conn.stats().pushes, 1);
    assert_eq!(conn.stats().attributes, 1);
}

#[test]
fn values_are_never_kept() {
    let (calls, _) = replay(&[
        cl(1, &cmd(&["AUTH", "user", "hunter2"])),
        sv(
            2,
            b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
        ),
        cl(3, &cmd(&["NOSUCH", "hunter2"])),
        sv(
            4,
            b"-ERR unknown command 'NOSUCH', with args beginning with: 'hunter2' \r\n",
        ),
    ]);
    let text = format!("{calls:?}");
    assert!(!text.contains("hunter2"), "{text}");
    assert_eq!(calls[0].error_code(), Some("WRONGPASS"));
    assert_eq!(
        calls[1].error.as_deref(),
        Some("ERR unknown command 'NOSUCH'")
    );
}
