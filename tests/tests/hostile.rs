//! Hostile input end to end, as root: the real agent (real eBPF programs) watches real servers
//! (Python `http.server`, gRPC on the C core, PostgreSQL, Redis, MariaDB) while raw sockets feed
//! them garbage - random bytes, truncated and oversized frames, slowloris-style partial heads, a
//! 1 GiB body. The agent must not panic, must not buffer without bound, must count what it could
//! not understand, and must still trace the real requests that follow, exactly.

use std::{
    collections::HashMap,
    io::{ErrorKind, Read, Write},
    net::{Shutdown, TcpStream},
    time::{Duration, Instant},
};

use socktrace_tests::{
    harness::{
        Agent, PyServer, all_final_counters, curl, exact, proc_status_kib, python, require_root,
    },
    mysql::MysqlServer,
    otlp_receiver::{OtlpReceiver, Protocol, ReceivedSpan},
    pg::PgServer,
    redis::RedisServer,
};

const MIB: u64 = 1024 * 1024;

/// Starts an agent exporting to `receiver`, limited to `port`, with extra flags.
fn agent(receiver: &OtlpReceiver, port: u16, extra: &[&str]) -> Agent {
    let endpoint = receiver.endpoint();
    let port = port.to_string();
    let mut args = vec![
        "--otlp-endpoint",
        endpoint.as_str(),
        "--otlp-protocol",
        "grpc",
        "--port",
        port.as_str(),
    ];
    args.extend_from_slice(extra);
    Agent::start(&args)
}

fn counter(counters: &HashMap<String, u64>, name: &str) -> u64 {
    *counters
        .get(name)
        .unwrap_or_else(|| panic!("no counter {name} in {counters:?}"))
}

/// The agent process still runs (not exited, not a zombie).
fn assert_running(agent: &Agent) {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", agent.pid()))
        .unwrap_or_else(|e| panic!("agent gone: {e}\n{}", agent.stderr()));
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, r)| r.split_whitespace().next())
        .unwrap_or("?");
    assert_ne!(state, "Z", "agent exited:\n{}", agent.stderr());
    assert!(
        !agent.stderr().contains("panicked"),
        "agent panicked:\n{}",
        agent.stderr()
    );
}

/// Stops the agent (it must exit 0, without a panic) and returns its final counters.
fn stop(agent: &mut Agent) -> HashMap<String, u64> {
    assert_running(agent);
    assert_eq!(agent.stop(), Some(0), "{}", agent.stderr());
    let stderr = agent.stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
    all_final_counters(&stderr)
}

/// Deterministic pseudo-random bytes (xorshift), the first byte forced to `first`.
fn garbage(seed: u64, len: usize, first: u8) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    if let Some(b) = v.first_mut() {
        *b = first;
    }
    v
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.set_nodelay(true).expect("nodelay");
    s
}

/// Reads whatever the peer sends until it closes or is quiet for `quiet` (errors ignored: the
/// peer may reset a connection that sent garbage).
fn drain(s: &mut TcpStream, quiet: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(quiet)).expect("timeout");
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads until `pred` holds on what was read (panics after 30 s or at EOF).
fn read_until(s: &mut TcpStream, what: &str, pred: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    while !pred(&out) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        match s.read(&mut buf) {
            Ok(0) => panic!(
                "EOF waiting for {what}: {:?}",
                String::from_utf8_lossy(&out)
            ),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("reading {what}: {e}"),
        }
    }
    out
}

fn str_attr(s: &ReceivedSpan, k: &str) -> String {
    s.attr_str(k)
        .unwrap_or_else(|| panic!("{k} missing on {s}"))
}
fn int_attr(s: &ReceivedSpan, k: &str) -> i64 {
    s.attr_int(k)
        .unwrap_or_else(|| panic!("{k} missing on {s}"))
}

// ---- HTTP/1 ----

#[test]
fn slowloris_partial_heads_and_a_request_dripped_byte_by_byte() {
    require_root();
    let receiver = OtlpReceiver::start_blocking(Protocol::Grpc);
    let server = PyServer::start(&[("OTEL_SERVICE_NAME", "py-server")]);
    // Full capture (8 KiB, Python's read size): every byte of the heads reaches the parser, so
    // the oversized heads below are seen growing past the bound, not cut by capture gaps.
    let mut agent = agent(&receiver, server.port, &["--capture-bytes", "8192"]);
    let rss0 = proc_status_kib(agent.pid(), "VmRSS");

    // 40 connections hold a short partial head open; 10 send 80 KiB of header lines (beyond
    // the agent's 64 KiB head bound, within http.server's limits) and never end the head.
    let mut small = Vec::new();
    for i in 0..40 {
        let mut s = connect(server.port);
        s.write_all(format!("GET /held/{i} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").as_bytes())
            .expect("write");
        small.push(s);
    }
    let mut huge = Vec::new();
    for i in 0..10 {
        let mut s = connect(server.port);
        s.write_all(format!("GET /huge/{i} HTTP/1.1\r\nHost: 127.0.0.1\r\n").as_bytes())
            .expect("write");
        for j in 0..80 {
            s.write_all(format!("X-Pad-{j:02}: {}\r\n", "a".repeat(1000)).as_bytes())
                .expect("write");
        }
        huge.push(s);
    }

    // One complete request, one byte per write every 50 ms (about 3 s), while every held
    // connection gets one more byte of its endless header each time.
    let request = format!(
        "GET /item/7 HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUser-Agent: drip/1\r\n\r\n",
        server.port
    );
    let mut drip = connect(server.port);
    for b in request.as_bytes() {
        drip.write_all(&[*b]).expect("drip");
        for s in &mut small {
            s.write_all(b"z").expect("slowloris byte");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let answer = read_until(&mut drip, "the dripped request's answer", |b| {
        b.windows(4)
            .position(|w| w == b"\r\n\r\n")
            .is_some_and(|end| b.len() >= end + 4 + 8)
    });
    assert!(
        answer.starts_with(b"HTTP/1.1 200 "),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(answer.ends_with(b"\r\n\r\niiiiiiii"));

    // A normal request while all of that is held open.
    assert_eq!(curl(&[&server.url("/hello")]), "hello\n");
    let (s, c) = exact(&receiver, 2, 2);
    let p = i64::from(server.port);
    for (span, (path, ua, body)) in s
        .iter()
        .zip([("/item/7", "drip/1", 8), ("/hello", "curl/", 6)])
    {
        assert_eq!(str_attr(span, "url.path"), path, "{span}");
        assert_eq!(str_attr(span, "http.request.method"), "GET");
        assert_eq!(int_attr(span, "http.response.status_code"), 200);
        assert_eq!(int_attr(span, "http.response.body.size"), body);
        assert!(
            str_attr(span, "user_agent.original").starts_with(ua),
            "{span}"
        );
        assert_eq!(int_attr(span, "server.port"), p);
        assert_eq!(span.attr_bool("socktrace.partial"), None, "{span}");
    }
    for (span, path) in c.iter().zip(["/item/7", "/hello"]) {
        assert_eq!(
            str_attr(span, "url.full"),
            format!("http://127.0.0.1:{p}{path}")
        );
        assert_eq!(int_attr(span, "http.response.status_code"), 200);
        assert_eq!(span.attr_bool("socktrace.partial"), None, "{span}");
    }
    // The dripped request's server span is the child of its client span (same connection).
    assert_eq!(s[0].parent_span_id(), Some(c[0].span_id()));

    // 50 held heads (10 of them 80 KiB) cost the agent no more than its head bound each.
    let rss = proc_status_kib(agent.pid(), "VmRSS");
    assert!(
        rss <= rss0 + 32 * 1024,
        "agent RSS grew from {rss0} KiB to {rss} KiB"
    );
    // The held connections are still open: the server waits for the rest of their heads.
    for s in small.iter_mut().chain(huge.iter_mut()) {
        s.set_nonblocking(true).expect("nonblocking");
        let mut b = [0u8; 1];
        assert!(
            matches!(s.read(&mut b), Err(e) if e.kind() == ErrorKind::WouldBlock),
            "a held connection was answered or closed"
        );
    }
    drop(small);
    drop(huge);
    drop(drip);
    std::thread::sleep(Duration::from_secs(2));
    let counters = stop(&mut agent);
    // Every connection showed its protocol, the dripped one too.
    assert_eq!(counter(&counters, "conns.undetected"), 0, "{counters:?}");
    // Both ends of every oversized head (client writes, server reads) gave up on it as a head.
    assert!(
        counter(&counters, "http1.invalid_heads") >= 20,
        "{counters:?}"
    );
    assert!(
        counter(&counters, "http1.bytes_skipped") >= 10 * 64 * 1024,
        "{counters:?}"
    );
}

#[test]
fn one_gib_request_and_response_bodies_give_exact_sizes_in_bounded_memory() {
    require_root();
    const GIB: u64 = 1024 * MIB;
    let receiver = OtlpReceiver::start_blocking(Protocol::Grpc);
    let server = PyServer::start(&[("OTEL_SERVICE_NAME", "py-server")]);
    let mut agent = agent(&receiver, server.port, &[]);
    let (rss0, hwm0) = (
        proc_status_kib(agent.pid(), "VmRSS"),
        proc_status_kib(agent.pid(), "VmHWM"),
    );

    // One keep-alive connection: a 1 GiB upload, then a 1 GiB download.
    let mut conn = connect(server.port);
    conn.write_all(
        format!("POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {GIB}\r\n\r\n")
            .as_bytes(),
    )
    .expect("head");
    let piece = vec![b'u'; MIB as usize];
    for _ in 0..1024 {
        conn.write_all(&piece).expect("body");
    }
    let expect = format!("received {GIB}\n");
    let answer = read_until(&mut conn, "the upload's answer", |b| {
        b.ends_with(expect.as_bytes())
    });
    assert!(answer.starts_with(b"HTTP/1.1 200 "));

    conn.write_all(format!("GET /big?size={GIB} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .expect("request");
    let mut buf = vec![0u8; MIB as usize];
    let mut head = Vec::new();
    let mut body = 0u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while body < GIB {
        assert!(Instant::now() < deadline, "download too slow: {body} bytes");
        let n = conn.read(&mut buf).expect("download");
        assert!(n > 0, "EOF after {body} bytes");
        if body == 0 && !head.ends_with(b"\r\n\r\n") {
            head.extend_from_slice(&buf[..n]);
            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                body = (head.len() - end - 4) as u64;
                head.truncate(end + 4);
            }
        } else {
            body += n as u64;
        }
    }
    assert_eq!(body, GIB);
    assert!(head.starts_with(b"HTTP/1.1 200 "));
    drop(conn);

    let (s, c) = exact(&receiver, 2, 2);
    let gib = i64::try_from(GIB).expect("fits");
    let expect = [
        ("POST", "/echo", Some(gib), expect.len() as i64),
        ("GET", "/big", None, gib),
    ];
    for spans in [&s, &c] {
        for (span, (method, _, req, resp)) in spans.iter().zip(expect) {
            assert_eq!(str_attr(span, "http.request.method"), method, "{span}");
            assert_eq!(span.attr_int("http.request.body.size"), req, "{span}");
            assert_eq!(int_attr(span, "http.response.body.size"), resp, "{span}");
            assert_eq!(int_attr(span, "http.response.status_code"), 200);
            assert_eq!(span.attr_bool("socktrace.partial"), None, "{span}");
        }
    }
    for (span, (_, path, _, _)) in s.iter().zip(expect) {
        assert_eq!(str_attr(span, "url.path"), path);
    }
    // The bodies streamed through; the agent kept none of them.
    let (rss, hwm) = (
        proc_status_kib(agent.pid(), "VmRSS"),
        proc_status_kib(agent.pid(), "VmHWM"),
    );
    assert!(rss <= rss0 + 100 * 1024, "RSS {rss0} -> {rss} KiB");
    assert!(
        hwm <= hwm0.max(rss0 + 100 * 1024),
        "peak {hwm0} -> {hwm} KiB"
    );
    let counters = stop(&mut agent);
    // Gaps (bytes beyond the capture size) were counted as body, never lost the framing.
    assert_eq!(counter(&counters, "http1.resyncs"), 0, "{counters:?}");
    assert_eq!(counter(&counters, "http1.invalid_heads"), 0, "{counters:?}");
    assert_eq!(counter(&counters, "http1.bytes_skipped"), 0, "{counters:?}");
}

// ---- HTTP/2 ----

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame_head(len: u32, ty: u8, flags: u8, stream: u32) -> Vec<u8> {
    let mut v = len.to_be_bytes()[1..].to_vec();
    v.extend_from_slice(&[ty, flags]);
    v.extend_from_slice(&stream.to_be_bytes());
    v
}

/// Runs the gRPC client peer (`grpc_client.py PORT basic`) and checks its report.
fn grpc_basic(port: u16) {
    let out = std::process::Command::new(python())
        .arg(socktrace_tests::harness::peer("grpc_client.py"))
        .args([&port.to_string(), "basic"])
        .output()
        .expect("grpc_client.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .collect::<Vec<_>>(),
        [
            "Unary OK 5",
            "Unary NOT_FOUND no such item",
            "ServerStream OK 5",
            "ClientStream OK 4",
            "Bidi OK 3"
        ]
    );
}

#[test]
fn http2_truncated_and_oversized_frames_then_real_grpc_calls() {
    require_root();
    let receiver = OtlpReceiver::start_blocking(Protocol::Grpc);
    let server = PyServer::start_peer(
        &python(),
        "grpc_server.py",
        &[("OTEL_SERVICE_NAME", "echo-server")],
    );
    let mut agent = agent(&receiver, server.port, &[]);
    let rss0 = proc_status_kib(agent.pid(), "VmRSS");

    let settings = frame_head(0, 4, 0, 0);
    let sessions: [Vec<Vec<u8>>; 4] = [
        // A HEADERS frame announcing 16 MiB (beyond any sane header block), then a little of it.
        vec![
            PREFACE.to_vec(),
            settings.clone(),
            [frame_head(0xff_ffff, 1, 4, 1), vec![0x82; 100]].concat(),
        ],
        // Random bytes after the preface (the first frame head is HEADERS on stream 0).
        vec![
            PREFACE.to_vec(),
            [frame_head(16, 1, 4, 0), garbage(18, 4096, 0x5a)].concat(),
        ],
        // A SETTINGS frame cut in the middle by the close.
        vec![
            PREFACE.to_vec(),
            [frame_head(12, 4, 0, 0), vec![0, 3, 0, 0]].concat(),
        ],
        // A DATA frame announcing 16 MiB on a stream never opened, 64 KiB of it sent.
        vec![
            PREFACE.to_vec(),
            settings,
            [frame_head(0xff_ffff, 0, 0, 1), vec![0; 64 * 1024]].concat(),
        ],
    ];
    for writes in &sessions {
        let mut s = connect(server.port);
        for w in writes {
            // The server may close early on garbage: a failed write is fine.
            if s.write_all(w).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = s.shutdown(Shutdown::Write);
        drain(&mut s, Duration::from_secs(2));
    }
    assert_running(&agent);

    // Real calls afterwards are traced exactly, on both ends.
    grpc_basic(server.port);
    let (servers, clients) = exact(&receiver, 5, 5);
    let methods = ["Unary", "Unary", "ServerStream", "ClientStream", "Bidi"];
    for spans in [&servers, &clients] {
        for (span, (method, code)) in
            spans
                .iter()
                .zip(methods.iter().zip(["OK", "NOT_FOUND", "OK", "OK", "OK"]))
        {
            assert_eq!(
                span.name(),
                format!("socktrace.test.Echo/{method}"),
                "{span}"
            );
            assert_eq!(
                span.attr_str("rpc.status_code").as_deref(),
                Some(code),
                "{span}"
            );
            assert_eq!(int_attr(span, "server.port"), i64::from(server.port));
            assert_eq!(span.attr_bool("socktrace.partial"), None, "{span}");
        }
    }
    for (s, c) in servers.iter().zip(&clients) {
        assert_eq!(s.parent_span_id(), Some(c.span_id()), "{s}\n{c}");
    }
    let rss = proc_status_kib(agent.pid(), "VmRSS");
    assert!(rss <= rss0 + 32 * 1024, "RSS {rss0} -> {rss} KiB");
    let counters = stop(&mut agent);
    // The oversized HEADERS and the HEADERS on stream 0 each lost the framing of the client's
    // direction (at least: the server's reads of the same bytes count too), and the bytes after
    // them were skipped, not buffered.
    assert!(counter(&counters, "http2.resyncs") >= 2, "{counters:?}");
    assert!(
        counter(&counters, "http2.bytes_skipped") >= 4000,
        "{counters:?}"
    );
}

// ---- databases ----

/// A PostgreSQL StartupMessage (protocol 3.0).
fn pg_startup(user: &str, db: &str) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for s in ["user", user, "database", db] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    body.push(0);
    [((body.len() + 4) as u32).to_be_bytes().to_vec(), body].concat()
}

/// Connects, logs in (trust) and waits for ReadyForQuery.
fn pg_login(port: u16, db: &str) -> TcpStream {
    let mut s = connect(port);
    s.write_all(&pg_startup("postgres", db)).expect("startup");
    // ReadyForQuery: 'Z', length 5, status 'I'.
    read_until(&mut s, "ReadyForQuery", |b| b.ends_with(b"Z\0\0\0\x05I"));
    s
}

#[test]
fn postgres_random_bytes_and_truncated_messages_then_a_real_query() {
    require_root();
    let receiver = OtlpReceiver::start_blocking(Protocol::Grpc);
    let pg = PgServer::start("shop");
    let mut agent = agent(&receiver, pg.port, &["--protocols", "postgres"]);

    // Random bytes instead of a startup message: nothing to detect.
    let mut s = connect(pg.port);
    let _ = s.write_all(&garbage(1, 4096, 0xff));
    drain(&mut s, Duration::from_secs(2));
    // Logged in, then a Query announcing 1 MiB of which 12 bytes come before the close.
    let mut s = pg_login(pg.port, "shop");
    s.write_all(b"Q\x00\x10\x00\x00SELECT 1 + ").expect("write");
    let _ = s.shutdown(Shutdown::Write);
    drain(&mut s, Duration::from_secs(2));
    // Logged in, then a message of an unknown type: the server answers FATAL and closes.
    let mut s = pg_login(pg.port, "shop");
    s.write_all(&[b"\xfe\x00\x00\x00\x08".to_vec(), garbage(2, 4, 0x01)].concat())
        .expect("write");
    let answer = drain(&mut s, Duration::from_secs(2));
    assert_eq!(answer.first(), Some(&b'E'), "{answer:?}");
    // Logged in, then random bytes.
    let mut s = pg_login(pg.port, "shop");
    let _ = s.write_all(&garbage(3, 4096, 0x42));
    drain(&mut s, Duration::from_secs(2));
    assert_running(&agent);

    let o = pg.psql("shop", &["-c", "SELECT 42 AS answer"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (s, c) = exact(&receiver, 1, 1);
    for span in [&s[0], &c[0]] {
        assert_eq!(span.name(), "SELECT", "{span}");
        assert_eq!(str_attr(span, "db.system.name"), "postgresql");
        assert_eq!(str_attr(span, "db.namespace"), "shop");
        assert_eq!(str_attr(span, "db.query.text"), "SELECT ? AS answer");
        assert_eq!(int_attr(span, "db.response.returned_rows"), 1);
        assert_eq!(span.attr_bool("socktrace.partial"), None, "{span}");
    }
    assert_eq!(s[0].parent_span_id(), Some(c[0].span_id()));
    let counters = stop(&mut agent);
    assert!(counter(&counters, "conns.undetected") >= 1, "{counters:?}");
    assert!(
        counter(&counters, "postgres.invalid_messages") >= 1,
        "{counters:?}"
    );
    assert!(counter(&counters, "postgres.resyncs") >= 1, "{counters:?}");
}

#[test]
fn redis_random_bytes_and_truncated_commands_then_real_commands() {
    require_root();
    let receiver = OtlpReceiver::start_blocking(Protocol::Grpc);
    let redis = RedisServer::start();
    let mut agent = agent(&receiver, redis.port, &["--protocols", "redis"]);

    // Random bytes: not RESP, nothing to detect.
    let mut s = connect(redis.port);
    let _ = s.write_all(&garbage(4, 4096, 0xff));
    let _ = s.shutdown(Shutdown::Write);
    drain(&mut s, Duration::from_secs(1));
    // A bulk string announcing 100000 bytes cut by the close.
    let mut s = connect(redis.port);
    s.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100000\r\nabc")
        .expect("write");
    let _ = s.shutdown(Shutdown::Write);
    drain(&mut s, Duration::from_secs(1));
    // A real PING, then a multibulk length that is no number: the server answers a protocol
    // error and closes.
    let mut s = connect(redis.port);
    s.write_all(b"*1\r\n$4\r\nPING\r\n").expect("write");
    read_until(&mut s, "PONG", |b| b == b"+PONG\r\n");
    s.write_all(&[b"*\x01\x02".to_vec(), garbage(5, 2000, b'x')].concat())
        .expect("write");
    let answer = drain(&mut s, Duration::from_secs(2));
    assert!(answer.starts_with(b"-ERR Protocol error"), "{answer:?}");
    assert_running(&agent);

    let set = redis.cli(&["SET", "hostile", "v"]);
    assert_eq!(String::from_utf8_lossy(&set.stdout).trim(), "OK");
    let get = redis.cli(&["GET", "hostile"]);
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "v");
    // The PING (complete, answered), the garbage the server answered with an error (one
    // partial call: its command could not be read), and the real commands; nothing for the
    // random bytes or the SET cut by the close.
    let (s, c) = exact(&receiver, 4, 4);
    for spans in [&s, &c] {
        for (span, name) in spans.iter().zip(["PING", "redis", "SET", "GET"]) {
            assert_eq!(span.name(), name, "{span}");
            assert_eq!(str_attr(span, "db.system.name"), "redis");
            assert_eq!(int_attr(span, "server.port"), i64::from(redis.port));
            if name == "redis" {
                assert_eq!(span.attr_bool("socktrace.partial"), Some(true), "{span}");
                assert_eq!(str_attr(span, "error.type"), "ERR", "{span}");
                assert_eq!(span.attr_str("db.operation.name"), None, "{span}");
            } else {
                assert_eq!(span.attr_bool("socktrace.partial"), None, "{span}");
                assert_eq!(span.attr_str("error.type"), None, "{span}");
            }
        }
    }
    for (s, c) in s.iter().zip(&c) {
        assert_eq!(s.parent_span_id(), Some(c.span_id()), "{s}\n{c}");
    }
    let counters = stop(&mut agent);
    // The random bytes, on both ends of their connection.
    assert_eq!(counter(&counters, "conns.undetected"), 2, "{counters:?}");
    assert!(counter(&counters, "redis.resyncs") >= 1, "{counters:?}");
    assert!(
        counter(&counters, "redis.bytes_skipped") >= 1000,
        "{counters:?}"
    );
}

#[test]
fn mysql_random_bytes_and_truncated_packets_then_a_real_query() {
    require_root();
    let receiver = OtlpReceiver::start_blocking(Protocol::Grpc);
    let server = MysqlServer::start("shop");
    let mut agent = agent(&receiver, server.port, &["--protocols", "mysql"]);

    // The server speaks first (its handshake): then random bytes instead of a login.
    let mut s = connect(server.port);
    read_until(&mut s, "the handshake", |b| {
        b.len() >= 4 && b.len() >= 4 + (b[0] as usize | (b[1] as usize) << 8)
    });
    let _ = s.write_all(&garbage(6, 4096, 0x07));
    drain(&mut s, Duration::from_secs(2));
    // A login packet announcing 1000 bytes, 10 of them sent before the close.
    let mut s = connect(server.port);
    read_until(&mut s, "the handshake", |b| b.len() >= 4);
    s.write_all(&[b"\xe8\x03\x00\x01".to_vec(), garbage(7, 10, 0x85)].concat())
        .expect("write");
    let _ = s.shutdown(Shutdown::Write);
    drain(&mut s, Duration::from_secs(2));
    assert_running(&agent);

    let o = server.cli("shop", "SELECT 42");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (s, c) = exact(&receiver, 1, 1);
    for span in [&s[0], &c[0]] {
        assert_eq!(str_attr(span, "db.system.name"), "mariadb", "{span}");
        assert_eq!(str_attr(span, "db.namespace"), "shop", "{span}");
        assert_eq!(str_attr(span, "db.query.text"), "SELECT ?", "{span}");
        assert_eq!(span.attr_bool("socktrace.partial"), None, "{span}");
    }
    let counters = stop(&mut agent);
    // The random login packet made no sense where it came.
    assert!(
        counter(&counters, "mysql.invalid_messages") >= 1,
        "{counters:?}"
    );
}
