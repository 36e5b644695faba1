//! Hand-made exchanges for the protocol rules the recordings do not cover.

use super::super::{Detect, MAX_PENDING, MAX_PREPARED, detect_client, detect_server};
use super::*;

const PROTOCOL_41: u32 = 0x200;
const SECURE: u32 = 0x8000;
const WITH_DB: u32 = 8;
const SSL: u32 = 0x800;
const COMPRESS: u32 = 0x20;
const PLUGIN_AUTH: u32 = 0x8_0000;
const SESSION_TRACK: u32 = 0x80_0000;
const DEPRECATE_EOF: u32 = 0x100_0000;
const BASE: u32 = PROTOCOL_41 | SECURE | WITH_DB | PLUGIN_AUTH;

/// Initial handshake of a server with these capabilities (MySQL-style: CLIENT_MYSQL set).
fn greeting(version: &str, caps: u32) -> Vec<u8> {
    let mut b = vec![10];
    b.extend_from_slice(version.as_bytes());
    b.push(0);
    b.extend(7u32.to_le_bytes());
    b.extend(b"abcdefgh");
    b.push(0);
    b.extend(((caps | 1) as u16).to_le_bytes());
    b.push(45);
    b.extend(2u16.to_le_bytes());
    b.extend(((caps >> 16) as u16).to_le_bytes());
    b.push(21);
    b.extend([0u8; 10]);
    b.extend(b"ijklmnopqrst\0");
    b.extend(b"mysql_native_password\0");
    packet(0, &b)
}

fn login(caps: u32, user: &str, db: Option<&str>) -> Vec<u8> {
    let mut b = caps.to_le_bytes().to_vec();
    b.extend(16_777_216u32.to_le_bytes());
    b.push(45);
    b.extend([0u8; 23]);
    b.extend(user.as_bytes());
    b.push(0);
    b.push(20);
    b.extend([7u8; 20]);
    if let Some(db) = db {
        b.extend(db.as_bytes());
        b.push(0);
    }
    b.extend(b"mysql_native_password\0");
    packet(1, &b)
}

fn ok_payload(affected: u8, status: u16) -> Vec<u8> {
    let mut b = vec![0, affected, 0];
    b.extend(status.to_le_bytes());
    b.extend(0u16.to_le_bytes());
    b
}

fn ok(seq: u8) -> Vec<u8> {
    packet(seq, &ok_payload(0, 2))
}

fn err(seq: u8, code: u16, state: &str, msg: &str) -> Vec<u8> {
    let mut b = vec![0xff];
    b.extend(code.to_le_bytes());
    b.push(b'#');
    b.extend(state.as_bytes());
    b.extend(msg.as_bytes());
    packet(seq, &b)
}

fn eof(seq: u8, status: u16) -> Vec<u8> {
    let mut b = vec![0xfe, 0, 0];
    b.extend(status.to_le_bytes());
    packet(seq, &b)
}

fn com(cmd: u8, arg: &[u8]) -> Vec<u8> {
    let mut b = vec![cmd];
    b.extend_from_slice(arg);
    packet(0, &b)
}

fn query(sql: &str) -> Vec<u8> {
    com(3, sql.as_bytes())
}

fn coldef(seq: u8) -> Vec<u8> {
    let mut b = Vec::new();
    for s in ["def", "shop", "t", "t", "c", "c"] {
        b.push(s.len() as u8);
        b.extend(s.as_bytes());
    }
    b.push(0x0c);
    b.extend([0u8; 12]);
    packet(seq, &b)
}

fn row(seq: u8, v: &str) -> Vec<u8> {
    let mut b = vec![v.len() as u8];
    b.extend(v.as_bytes());
    packet(seq, &b)
}

/// A result set of one column and `rows` rows, in the classic (EOF) form; status of the
/// final EOF given.
fn result_eof(rows: usize, status: u16) -> Vec<u8> {
    let mut v = packet(1, &[1]);
    v.extend(coldef(2));
    v.extend(eof(3, 2));
    let mut seq = 4;
    for i in 0..rows {
        v.extend(row(seq, &i.to_string()));
        seq += 1;
    }
    v.extend(eof(seq, status));
    v
}

/// Handshake events: greeting, login, OK.
fn connect(version: &str, server: u32, client: u32, db: Option<&str>) -> Vec<Event> {
    vec![
        srv(1, &greeting(version, server)),
        cli(2, &login(client, "bob", db)),
        srv(3, &ok(2)),
    ]
}

fn run(mut events: Vec<Event>, more: &[Event]) -> (Vec<Call>, MysqlConn) {
    events.extend_from_slice(more);
    replay(&events)
}

#[test]
fn classic_query_with_rows_and_error() {
    let (calls, conn) = run(
        connect("8.0.36", BASE, BASE, Some("shop")),
        &[
            cli(10, &query("SELECT c FROM t")),
            srv(11, &result_eof(3, 2)),
            cli(12, &query("SELECT * FROM nope")),
            srv(
                13,
                &err(1, 1146, "42S02", "Table 'shop.nope' doesn't exist"),
            ),
            cli(14, &com(0x0e, &[])),
            srv(15, &ok(1)),
            cli(16, &com(1, &[])),
        ],
    );
    assert_eq!(conn.server_version(), Some("8.0.36"));
    assert_eq!(conn.database(), Some("shop"));
    assert_eq!(calls.len(), 3, "{calls:#?}");
    assert_eq!(calls[0].rows, Some(3));
    assert_eq!((calls[0].start_ns, calls[0].end_ns), (10, 11));
    assert_eq!(
        calls[1].error,
        Some(MysqlError {
            code: 1146,
            state: "42S02".into(),
            message: "Table 'shop.nope' doesn't exist".into()
        })
    );
    assert_eq!(calls[2].command, "COM_PING");
    assert!(calls.iter().all(|c| !c.partial));
    assert_eq!(conn.stats(), MysqlStats::default());
}

use super::super::{MysqlError, MysqlStats};

#[test]
fn deprecate_eof_from_both_sides() {
    // Both sides: no EOF after definitions, an OK with 0xFE ends the rows.
    let both = BASE | DEPRECATE_EOF;
    let mut resp = packet(1, &[1]);
    resp.extend(coldef(2));
    resp.extend(row(3, "a"));
    resp.extend(row(4, "b"));
    let mut fe_ok = ok_payload(0, 2);
    fe_ok[0] = 0xfe;
    resp.extend(packet(5, &fe_ok));
    // An empty result: the OK right after the definitions.
    let mut empty = packet(1, &[1]);
    empty.extend(coldef(2));
    empty.extend(packet(3, &fe_ok));
    let (calls, _) = run(
        connect("8.0.36", both, both, None),
        &[
            cli(10, &query("SELECT c FROM t")),
            srv(11, &resp),
            cli(12, &query("SELECT c FROM t WHERE 0")),
            srv(13, &empty),
            cli(14, &query("DO 1")),
            srv(15, &ok(1)),
        ],
    );
    assert_eq!(calls.len(), 3, "{calls:#?}");
    assert_eq!(calls[0].rows, Some(2));
    assert_eq!(calls[1].rows, Some(0));
    assert!(calls.iter().all(|c| !c.partial), "{calls:#?}");

    // Only the client asks for it: classic form.
    let (calls, _) = run(
        connect("5.7.1", BASE, BASE | DEPRECATE_EOF, None),
        &[
            cli(10, &query("SELECT c FROM t")),
            srv(11, &result_eof(2, 2)),
            cli(12, &query("DO 1")),
            srv(13, &ok(1)),
        ],
    );
    assert_eq!(calls.len(), 2, "{calls:#?}");
    assert_eq!(calls[0].rows, Some(2));
    assert!(calls.iter().all(|c| !c.partial));
}

#[test]
fn multi_results_are_one_call() {
    let mut resp = result_eof(1, 2 | 8).to_vec();
    // Second result, sequence continuing.
    let mut second = packet(0, &[1]);
    second.clear();
    let mut seq = 6u8;
    for p in [
        packet(0, &[1]),
        coldef(0),
        eof(0, 2),
        row(0, "x"),
        row(0, "y"),
        eof(0, 2 | 8),
    ] {
        let mut p = p;
        p[3] = seq;
        seq += 1;
        resp.extend(p);
    }
    let mut last = packet(0, &ok_payload(3, 2));
    last[3] = seq;
    resp.extend(last);
    let (calls, _) = run(
        connect("8.0.36", BASE, BASE, None),
        &[cli(10, &query("CALL p()")), srv(11, &resp)],
    );
    assert_eq!(calls.len(), 1, "{calls:#?}");
    assert_eq!(calls[0].rows, Some(3));
    assert_eq!(calls[0].affected, Some(3));
    assert!(!calls[0].partial);
}

#[test]
fn ssl_request_means_encrypted() {
    let mut b = (BASE | SSL).to_le_bytes().to_vec();
    b.extend(16_777_216u32.to_le_bytes());
    b.push(45);
    b.extend([0u8; 23]);
    let (calls, conn) = replay(&[
        srv(1, &greeting("8.0.36", BASE | SSL)),
        cli(2, &packet(1, &b)),
        cli(3, &[0x16, 3, 1, 0, 200, 1, 0, 0, 196]),
        srv(4, &[0x16, 3, 3, 0, 90]),
    ]);
    assert!(conn.encrypted());
    assert!(calls.is_empty());
    assert_eq!(conn.stats().encrypted_sessions, 1);
}

#[test]
fn compression_stops_and_counts() {
    let (calls, conn) = run(
        connect("8.0.36", BASE | COMPRESS, BASE | COMPRESS, None),
        &[
            cli(10, &[5, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5]),
            srv(11, &ok(1)),
        ],
    );
    assert!(calls.is_empty());
    assert_eq!(conn.stats().compressed_sessions, 1);
    // Offered by the server only: not negotiated.
    let (calls, conn) = run(
        connect("8.0.36", BASE | COMPRESS, BASE, None),
        &[cli(10, &query("DO 1")), srv(11, &ok(1))],
    );
    assert_eq!(calls.len(), 1);
    assert_eq!(conn.stats().compressed_sessions, 0);
}

#[test]
fn auth_switch_and_failed_login() {
    let mut switch = vec![0xfe];
    switch.extend(b"caching_sha2_password\0");
    switch.extend([1u8; 20]);
    let (calls, conn) = replay(&[
        srv(1, &greeting("8.0.36", BASE)),
        cli(2, &login(BASE, "bob", Some("app"))),
        srv(3, &packet(2, &switch)),
        cli(4, &packet(3, &[9u8; 32])),
        srv(5, &packet(4, &[1, 3])),
        srv(6, &ok(5)),
        cli(10, &query("SELECT 1")),
        srv(11, &result_eof(1, 2)),
    ]);
    assert_eq!(calls.len(), 1, "{calls:#?}");
    assert_eq!(calls[0].database.as_deref(), Some("app"));
    assert_eq!(conn.user(), Some("bob"));
    assert!(!calls[0].partial);

    let (calls, _) = replay(&[
        srv(1, &greeting("8.0.36", BASE)),
        cli(2, &login(BASE, "bob", None)),
        srv(3, &err(2, 1045, "28000", "Access denied for user 'bob'")),
        cli(10, &query("SELECT 1")),
    ]);
    assert!(calls.is_empty());
}

#[test]
fn init_db_and_session_tracked_schema() {
    let caps = BASE | SESSION_TRACK;
    // OK with SERVER_SESSION_STATE_CHANGED and a schema change to "other".
    let mut tracked = vec![0, 0, 0];
    tracked.extend((2u16 | 0x4000).to_le_bytes());
    tracked.extend(0u16.to_le_bytes());
    tracked.push(0); // info
    let entry = [&[1u8, 6, 5][..], b"other"].concat();
    tracked.push(entry.len() as u8);
    tracked.extend(entry);
    let (calls, conn) = run(
        connect("10.11.2-MariaDB", caps, caps, Some("shop")),
        &[
            cli(10, &com(2, b"mysql")),
            srv(11, &ok(1)),
            cli(12, &query("SELECT 1")),
            srv(13, &result_eof(1, 2)),
            cli(14, &query("USE other")),
            srv(15, &packet(1, &tracked)),
            cli(16, &query("SELECT 2")),
            srv(17, &result_eof(1, 2)),
            cli(18, &com(2, b"nope")),
            srv(19, &err(1, 1049, "42000", "Unknown database 'nope'")),
            cli(20, &query("SELECT 3")),
            srv(21, &result_eof(1, 2)),
        ],
    );
    let dbs: Vec<_> = calls.iter().map(|c| c.database.as_deref()).collect();
    assert_eq!(
        dbs,
        [
            Some("mysql"),
            Some("mysql"),
            Some("mysql"),
            Some("other"),
            Some("nope"),
            Some("other")
        ]
    );
    assert_eq!(conn.database(), Some("other"));
    // Without tracking, `USE x` is read from the statement.
    let (calls, _) = run(
        connect("8.0.36", BASE, BASE, None),
        &[
            cli(10, &query("use `my db`")),
            srv(11, &ok(1)),
            cli(12, &query("SELECT 1")),
            srv(13, &result_eof(1, 2)),
        ],
    );
    assert_eq!(calls[1].database.as_deref(), Some("my db"));
}

fn prepare_ok(id: u32, cols: u16, params: u16) -> Vec<u8> {
    let mut b = vec![0];
    b.extend(id.to_le_bytes());
    b.extend(cols.to_le_bytes());
    b.extend(params.to_le_bytes());
    b.push(0);
    b.extend(0u16.to_le_bytes());
    packet(1, &b)
}

fn execute(id: u32) -> Vec<u8> {
    let mut b = id.to_le_bytes().to_vec();
    b.extend([0, 1, 0, 0, 0]);
    com(0x17, &b)
}

#[test]
fn prepared_statements() {
    // PREPARE with 2 params and 1 column: defs + EOF each.
    let mut prep = prepare_ok(5, 1, 2);
    prep.extend(coldef(2));
    prep.extend(coldef(3));
    prep.extend(eof(4, 2));
    prep.extend(coldef(5));
    prep.extend(eof(6, 2));
    // Binary result: 2 rows.
    let mut res = packet(1, &[1]);
    res.extend(coldef(2));
    res.extend(eof(3, 2));
    res.extend(packet(4, &[0, 0, 1, 2]));
    res.extend(packet(5, &[0, 0, 3, 4]));
    res.extend(eof(6, 2));
    let (calls, _) = run(
        connect("8.0.36", BASE, BASE, None),
        &[
            cli(10, &com(0x16, b"SELECT c FROM t WHERE a = ? AND b = ?")),
            srv(11, &prep),
            cli(12, &execute(5)),
            srv(13, &res),
            // Long data and close: no answer.
            cli(14, &com(0x18, &[5, 0, 0, 0, 0, 0, 1, 2, 3])),
            cli(15, &com(0x1a, &[5, 0, 0, 0])),
            srv(16, &ok(1)),
            cli(17, &execute(5)),
            srv(18, &ok(1)),
            cli(19, &com(0x19, &[5, 0, 0, 0])),
            cli(20, &execute(5)),
            srv(
                21,
                &err(1, 1243, "HY000", "Unknown prepared statement handler"),
            ),
            cli(22, &execute(99)),
            srv(23, &ok(1)),
        ],
    );
    let got: Vec<_> = calls
        .iter()
        .map(|c| {
            (
                c.command,
                c.query.as_deref(),
                c.statement_id,
                c.rows,
                c.partial,
            )
        })
        .collect();
    let text = Some("SELECT c FROM t WHERE a = ? AND b = ?");
    assert_eq!(
        got,
        [
            ("COM_STMT_PREPARE", text, Some(5), None, false),
            ("COM_STMT_EXECUTE", text, Some(5), Some(2), false),
            ("COM_STMT_EXECUTE", text, Some(5), None, false),
            ("COM_STMT_EXECUTE", None, Some(5), None, false),
            ("COM_STMT_EXECUTE", None, Some(99), None, false),
        ]
    );
    assert_eq!(calls[3].error.as_ref().map(|e| e.code), Some(1243));
}

#[test]
fn prepared_table_is_bounded() {
    let mut evs = connect("8.0.36", BASE, BASE, None);
    let n = MAX_PREPARED as u32 + 10;
    for id in 1..=n {
        evs.push(cli(u64::from(id) * 10, &com(0x16, b"DO ?")));
        evs.push(srv(u64::from(id) * 10 + 1, &prepare_ok(id, 0, 0)));
    }
    evs.push(cli(1_000_000, &execute(1)));
    evs.push(srv(1_000_001, &ok(1)));
    evs.push(cli(1_000_002, &execute(n)));
    evs.push(srv(1_000_003, &ok(1)));
    let (calls, conn) = replay(&evs);
    let last = &calls[calls.len() - 2..];
    assert_eq!(last[0].query, None, "the oldest was evicted");
    assert_eq!(last[1].query.as_deref(), Some("DO ?"));
    assert_eq!(conn.stats().evicted_statements, 10);
}

#[test]
fn pending_queue_is_bounded() {
    let mut evs = connect("8.0.36", BASE, BASE, None);
    for i in 0..(MAX_PENDING as u64 + 50) {
        evs.push(cli(10 + i, &query("DO 1")));
    }
    let mut conn = MysqlConn::new();
    for e in &evs {
        push(&mut conn, e);
    }
    assert_eq!(conn.stats().dropped_calls, 50);
    assert_eq!(conn.take_calls().len(), 50);
    conn.close(100_000);
    let rest = conn.take_calls();
    assert_eq!(rest.len(), MAX_PENDING);
    assert!(rest.iter().all(|c| c.partial));
}

#[test]
fn local_infile() {
    let (calls, _) = run(
        connect("8.0.36", BASE, BASE, None),
        &[
            cli(10, &query("LOAD DATA LOCAL INFILE 'f' INTO TABLE t")),
            srv(11, &packet(1, b"\xfbf")),
            cli(12, &packet(2, b"1\n2\n")),
            cli(13, &packet(3, b"")),
            srv(14, &packet(4, &ok_payload(2, 2))),
            cli(15, &query("DO 1")),
            srv(16, &ok(1)),
        ],
    );
    assert_eq!(calls.len(), 2, "{calls:#?}");
    assert_eq!(calls[0].affected, Some(2));
    assert_eq!(calls[0].end_ns, 14);
    assert!(calls.iter().all(|c| !c.partial));
}

#[test]
fn large_query_continues_in_next_packet() {
    // A 16 MiB - 1 packet (text mostly in a gap) then a continuation of 10 bytes.
    let mut first = vec![0xff, 0xff, 0xff, 0, 3];
    first.extend(b"INSERT INTO big VALUES ('");
    let len = 4 + 0xff_ffff;
    let mut evs = connect("8.0.36", BASE, BASE, None);
    evs.push(Event {
        to: To::Server,
        seg: Segment::prefix(10, Bytes::from(first), len),
    });
    evs.push(cli(11, &packet(1, b"xxxxxxx');")));
    evs.push(srv(12, &ok(2)));
    evs.push(cli(13, &query("DO 1")));
    evs.push(srv(14, &ok(1)));
    let (calls, conn) = replay(&evs);
    assert_eq!(calls.len(), 2, "{calls:#?}");
    assert_eq!(calls[0].query.as_deref(), Some("INSERT INTO big VALUES ('"));
    assert!(calls[0].partial, "its text was cut by the capture");
    assert_eq!((calls[0].start_ns, calls[0].end_ns), (10, 12));
    assert!(!calls[1].partial);
    assert_eq!(conn.stats().resyncs, 0);
}

#[test]
fn a_row_in_a_gap_is_counted_through() {
    // One row of 3000 bytes; captured: the first 60 bytes and the last 20 (the row's end and
    // the final EOF, read from the copied tail).
    let mut resp = packet(1, &[1]);
    resp.extend(coldef(2));
    resp.extend(eof(3, 2));
    let mut big = vec![0xfc, 0xb5, 0x0b];
    big.extend(vec![b'x'; 2997]);
    resp.extend(packet(4, &big));
    resp.extend(eof(5, 2));
    let tail = resp[resp.len() - 20..].to_vec();
    let seg =
        Segment::prefix(11, Bytes::copy_from_slice(&resp[..60]), resp.len() as u64).with_tail(tail);
    let mut evs = connect("8.0.36", BASE, BASE, None);
    evs.push(cli(10, &query("SELECT c FROM t")));
    evs.push(Event {
        to: To::Client,
        seg,
    });
    evs.push(cli(12, &query("DO 1")));
    evs.push(srv(13, &ok(1)));
    let (calls, conn) = replay(&evs);
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].rows, Some(1));
    assert!(!calls[0].partial);
    assert_eq!(conn.stats().resyncs, 0);
}

#[test]
fn lost_server_framing_resyncs_on_the_next_answer() {
    let mut evs = connect("8.0.36", BASE, BASE, None);
    evs.push(cli(10, &query("SELECT c FROM t")));
    let resp = result_eof(5, 2);
    // Only 6 bytes captured: the next headers are in the gap.
    evs.push(Event {
        to: To::Client,
        seg: Segment::prefix(11, Bytes::copy_from_slice(&resp[..6]), resp.len() as u64),
    });
    evs.push(cli(12, &query("SELECT c FROM t")));
    evs.push(srv(13, &result_eof(2, 2)));
    evs.push(cli(14, &query("DO 1")));
    evs.push(srv(15, &ok(1)));
    let (calls, conn) = replay(&evs);
    let got: Vec<_> = calls.iter().map(|c| (c.rows, c.partial)).collect();
    assert_eq!(got, [(Some(0), true), (Some(2), true), (None, false)]);
    assert!(conn.stats().resyncs >= 1);
}

#[test]
fn detection() {
    let g = greeting("8.0.36", BASE);
    assert_eq!(detect_server(&g), Detect::Yes);
    for n in 0..20 {
        assert_eq!(detect_server(&g[..n]), Detect::NeedMore, "{n}");
    }
    let real = load_rec("cli_queries");
    assert_eq!(detect_server(&real[0].seg.data), Detect::Yes);
    assert_eq!(detect_client(&real[1].seg.data), Detect::Yes);
    for n in 0..36 {
        assert_eq!(
            detect_client(&real[1].seg.data[..n]),
            Detect::NeedMore,
            "{n}"
        );
    }
    assert_eq!(detect_client(&login(BASE, "bob", None)), Detect::Yes);
    let others: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        // HTTP/2 SETTINGS frame.
        &[
            0, 0, 18, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100, 0, 4, 0, 1, 0, 0,
        ],
        // TLS ClientHello / ServerHello record headers.
        &[
            0x16, 3, 1, 2, 0, 1, 0, 1, 252, 3, 3, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
        ],
        &[
            0x16, 3, 3, 0, 122, 2, 0, 0, 118, 3, 3, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9,
        ],
        // PostgreSQL: StartupMessage, SSLRequest, AuthenticationOk + ParameterStatus, 'N'.
        &[
            0, 0, 0, 40, 0, 3, 0, 0, b'u', b's', b'e', b'r', 0, b'b', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
        &[0, 0, 0, 8, 4, 210, 22, 47],
        b"R\0\0\0\x08\0\0\0\0S\0\0\0\x19server_version\x0015.0\0",
        b"E\0\0\0\x50SFATAL\0C28000\0Mno such user\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
        b"+OK\r\n",
        b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n",
    ];
    for o in others {
        assert_eq!(detect_server(o), Detect::No, "{o:?}");
        assert_eq!(detect_client(o), Detect::No, "{o:?}");
    }
    let mut rng = Rng(42);
    for _ in 0..20_000 {
        let n = 40 + rng.below(200);
        let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        assert_ne!(detect_server(&bytes), Detect::Yes, "{bytes:?}");
        assert_ne!(detect_client(&bytes), Detect::Yes, "{bytes:?}");
    }
}
