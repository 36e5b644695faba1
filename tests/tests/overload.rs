//! Overload and churn, end to end, as root: the real agent behind a full ring buffer, and under
//! thousands of short connections and processes. The traced programs never wait for the agent;
//! what is lost is counted, what is exported is right, and the agent recovers.

use std::{
    collections::BTreeSet,
    process::Command,
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use socktrace_tests::{
    harness::{
        Agent, PyServer, curl, exact, final_counters, free_port, proc_status_kib, require_root,
        signal, wait_until_stable,
    },
    load::fd_count,
    otlp_receiver::{OtlpReceiver, Protocol, ReceivedSpan},
};

/// Requests sent while the agent does not read its ring buffer.
const BURST: usize = 300;

/// The `/item/{i}` index of a span, checking everything the peer's answer fixes: a wrong
/// pairing of request and response would show as a body size that is not `i + 1`.
fn check_item(s: &ReceivedSpan, port: u16) -> usize {
    // Servers have `url.path`, clients `url.full`.
    let path = s
        .attr_str("url.path")
        .or_else(|| {
            s.attr_str("url.full")
                .and_then(|u| u.split_once("//").map(|(_, rest)| rest.to_owned()))
                .and_then(|rest| rest.find('/').map(|i| rest[i..].to_owned()))
        })
        .unwrap_or_else(|| panic!("{s}"));
    let i: usize = path
        .strip_prefix("/item/")
        .and_then(|i| i.parse().ok())
        .unwrap_or_else(|| panic!("{s}"));
    let name = if s.kind() == SpanKind::Server {
        "GET /item/{id}"
    } else {
        "GET"
    };
    assert_eq!(s.name(), name, "{s}");
    assert_eq!(s.attr_int("http.response.status_code"), Some(200), "{s}");
    assert_eq!(
        s.attr_int("http.response.body.size"),
        Some(i as i64 + 1),
        "{s}"
    );
    assert_eq!(s.attr_int("server.port"), Some(i64::from(port)), "{s}");
    i
}

/// The agent stops reading its ring buffer (SIGSTOP: as if it could not keep up) while a burst
/// of requests is served: the server never waits for it, the ring fills, the loss is counted,
/// nothing wrong is exported, and the first request after the agent resumes is traced exactly.
#[test]
fn full_ring_buffer_loses_counted_spans_never_wrong_ones_and_recovers() {
    require_root();
    let receiver = OtlpReceiver::start_blocking(Protocol::HttpProtobuf);
    let server = PyServer::start(&[("OTEL_SERVICE_NAME", "py-server")]);
    let endpoint = receiver.endpoint();
    let port = server.port.to_string();
    let health = format!("127.0.0.1:{}", free_port());
    let mut agent = Agent::start(&[
        "--otlp-endpoint",
        &endpoint,
        "--port",
        &port,
        "--ringbuf-size",
        "65536",
        "--health-listen",
        &health,
    ]);
    curl(&[&server.url("/item/0")]);
    exact(&receiver, 1, 1);

    signal(agent.pid(), libc::SIGSTOP);
    let urls: Vec<String> = (1..=BURST)
        .map(|i| server.url(&format!("/item/{i}")))
        .collect();
    let burst: Vec<&str> = urls.iter().map(String::as_str).collect();
    // One keep-alive connection, 300 requests: all answered while nobody drains the ring.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-o", "/dev/null"])
        .args(&burst)
        .output()
        .expect("curl");
    signal(agent.pid(), libc::SIGCONT);
    assert!(
        out.status.success(),
        "the traced programs do not wait for a stopped agent: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The load is over once the ring has room again (each read of `/metrics` is traced, so
    // records keep coming: none may be lost for a second) and no more spans are being built.
    wait_until_stable(&health, "socktrace_kernel_ringbuf_full_total");
    wait_until_stable(&health, "socktrace_pipeline_spans_total");

    // Recovery: a request on a new connection after the overload is traced exactly.
    let after = BURST + 1;
    curl(&[&server.url(&format!("/item/{after}"))]);
    let is_after = |s: &ReceivedSpan| check_item(s, server.port) == after;
    receiver
        .wait_for_blocking(
            |spans| spans.iter().filter(|s| is_after(s)).count() >= 2,
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(agent.stop(), Some(0));

    let spans = receiver.spans();
    let after_spans: Vec<&ReceivedSpan> = spans.iter().filter(|s| is_after(s)).collect();
    assert_eq!(after_spans.len(), 2, "one server and one client span");
    // Every exported span is right: no request paired with another's response.
    let mut seen = BTreeSet::new();
    for s in &spans {
        let i = check_item(s, server.port);
        assert!(seen.insert((s.span.kind, i)), "{s} twice");
    }
    let burst_servers = spans
        .iter()
        .filter(|s| s.kind() == SpanKind::Server)
        .count()
        - 2;
    assert!(
        burst_servers < BURST,
        "a 64 KiB ring cannot hold {BURST} requests: {burst_servers} server spans"
    );
    let kernel = final_counters(&agent.stderr(), "kernel");
    assert!(kernel["ringbuf_full"] > 0, "{kernel:?}");
}

/// Thousands of short connections and a hundred short processes: exact spans, every
/// connection forgotten once closed, no file descriptor leaked, memory bounded.
#[test]
fn churn_of_short_connections_and_processes_leaks_nothing() {
    require_root();
    const CONNECTIONS: usize = 1000;
    const PROCESSES: usize = 100;
    let receiver = OtlpReceiver::start_blocking(Protocol::HttpProtobuf);
    let server = PyServer::start(&[("OTEL_SERVICE_NAME", "py-server")]);
    let endpoint = receiver.endpoint();
    let port = server.port.to_string();
    let mut agent = Agent::start(&["--otlp-endpoint", &endpoint, "--port", &port]);
    curl(&[&server.url("/item/0")]);
    exact(&receiver, 1, 1);
    let (fds_before, rss_before) = (fd_count(agent.pid()), proc_status_kib(agent.pid(), "VmRSS"));

    // One connection per request, closed at once.
    let client = r#"
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
for i in range(1, n + 1):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /item/%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % i)
    while s.recv(65536):
        pass
    s.close()
"#;
    let started = Instant::now();
    let out = Command::new("python3")
        .args(["-c", client, &port, &CONNECTIONS.to_string()])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 0..PROCESSES {
        curl(&[
            "-o",
            "/dev/null",
            &server.url(&format!("/item/{}", CONNECTIONS + 1 + i)),
        ]);
    }
    eprintln!("churn took {:?}", started.elapsed());

    let total = 1 + CONNECTIONS + PROCESSES;
    let (servers, clients) = exact(&receiver, total, total);
    for spans in [&servers, &clients] {
        let items: BTreeSet<usize> = spans.iter().map(|s| check_item(s, server.port)).collect();
        assert_eq!(items, (0..total).collect::<BTreeSet<_>>());
    }
    let (fds_after, rss_after) = (fd_count(agent.pid()), proc_status_kib(agent.pid(), "VmRSS"));
    assert_eq!(fds_after, fds_before, "file descriptors of the agent");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "agent RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert_eq!(agent.stop(), Some(0));
    let conns = final_counters(&agent.stderr(), "conns");
    assert_eq!(conns["live"], 0, "{conns:?}");
    assert_eq!(conns["evicted"], 0, "{conns:?}");
    assert_eq!(conns["unresolved"], 0, "{conns:?}");
    let kernel = final_counters(&agent.stderr(), "kernel");
    assert_eq!(kernel["ringbuf_full"], 0, "{kernel:?}");
}
