use super::super::{Detect, detect_client};
use super::cmd;

#[test]
fn commands_are_detected() {
    assert_eq!(detect_client(&cmd(&["PING"])), Detect::Yes);
    assert_eq!(detect_client(&cmd(&["SET", "k", "v"])), Detect::Yes);
    assert_eq!(detect_client(&cmd(&["json.get", "k"])), Detect::Yes);
    assert_eq!(
        detect_client(b"*2\r\n$7\r\nCOMMAND\r\n$4\r\nDOCS\r\n"),
        Detect::Yes
    );
}

#[test]
fn every_prefix_of_a_command_needs_more() {
    let c = cmd(&["HELLO", "3"]);
    for n in 0..15 {
        assert_eq!(detect_client(&c[..n]), Detect::NeedMore, "{n}");
    }
    assert_eq!(detect_client(&c[..15]), Detect::Yes);
}

#[test]
fn other_protocols_and_garbage_are_not_redis() {
    let pg_startup = {
        let mut v = 0u32.to_be_bytes().to_vec();
        v.extend(196_608u32.to_be_bytes());
        v.extend(b"user\0postgres\0\0");
        let n = v.len() as u32;
        v[..4].copy_from_slice(&n.to_be_bytes());
        v
    };
    let cases: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"POST /api HTTP/1.1\r\n".to_vec(),
        b"HTTP/1.1 200 OK\r\n".to_vec(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        pg_startup,
        b"Q\0\0\0\x0dSELECT 1\0".to_vec(),
        vec![
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ],
        b"+OK\r\n".to_vec(),
        b"PING\r\n".to_vec(),
        b"*1\r\n$4\r\n1234\r\n".to_vec(),
        b"*0\r\n".to_vec(),
        b"*1\r\n+PING\r\n".to_vec(),
        b"*1\r\n$0\r\n\r\n".to_vec(),
        b"*1\r\n$999\r\n".to_vec(),
        b"*12345678\r\n".to_vec(),
        b"*1\n$4\nPING\n".to_vec(),
        b"*1\r\n$4\r\nPI G\r\n".to_vec(),
        b"*1\r\n$4\r\nPINGXX".to_vec(),
    ];
    for c in &cases {
        assert_eq!(
            detect_client(c),
            Detect::No,
            "{:?}",
            String::from_utf8_lossy(c)
        );
    }
    // Random bytes: a first byte other than `*` is always refused; with `*`, the rest must
    // spell a command.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..20_000 {
        let mut buf = [0u8; 24];
        for b in &mut buf {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        assert_ne!(detect_client(&buf), Detect::Yes, "{buf:?}");
        buf[0] = b'*';
        assert_ne!(detect_client(&buf), Detect::Yes, "{buf:?}");
    }
}
