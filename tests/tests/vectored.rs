//! Vectored socket calls (`sendmsg`/`recvmsg` with many iovecs), as root, with the real agent:
//! through the `bpf_loop` programs this kernel has, and through the bounded-loop fallback that
//! kernels before 5.17 get (forced with `SOCKTRACE_FORCE_FALLBACK=noloop`).

use std::{process::Command, time::Duration};

use socktrace_tests::{
    harness::{Agent, PyServer, exact, require_root},
    otlp_receiver::{OtlpReceiver, Protocol, ReceivedSpan},
};

/// A client that writes one request as `iovecs` pieces with one `sendmsg` (the header block
/// padded so that its end lies in the last pieces) and reads the response with `recvmsg_into`
/// into three buffers, the first two tiny. Prints the status line it got. Keep-alive: the
/// client closes first, so that no server FIN races the last read (a known limit of its own).
const CLIENT: &str = r#"
import socket, sys
port, iovecs = int(sys.argv[1]), int(sys.argv[2])
head = b"GET /item/41 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
pad = b"X-Pad: " + b"p" * (iovecs * 9) + b"\r\n"
tail = b"Accept: */*\r\n\r\n"
data = head + pad + tail
bounds = [len(data) * i // iovecs for i in range(iovecs + 1)]
parts = [data[bounds[i]:bounds[i + 1]] for i in range(iovecs)]
assert len(parts) == iovecs and all(parts)
s = socket.create_connection(("127.0.0.1", port))
sent = s.sendmsg(parts)
assert sent == len(data), (sent, len(data))
got = b""
while True:
    bufs = [bytearray(7), bytearray(20), bytearray(65536)]
    n = s.recvmsg_into(bufs)[0]
    if n == 0:
        break
    got += b"".join(bytes(b) for b in bufs)[:n]
    if b"\r\n\r\n" in got and len(got) >= got.index(b"\r\n\r\n") + 4 + 42:
        break
print(got.split(b"\r\n")[0].decode(), len(parts))
"#;

fn run(env: &[(&str, &str)], iovecs: usize) -> (Agent, Vec<ReceivedSpan>, Vec<ReceivedSpan>) {
    require_root();
    let receiver = OtlpReceiver::start_blocking(Protocol::Grpc);
    let server = PyServer::start(&[("OTEL_SERVICE_NAME", "py-server")]);
    let port = server.port.to_string();
    let endpoint = receiver.endpoint();
    let agent = Agent::start_with_env(
        &[
            "--otlp-endpoint",
            &endpoint,
            "--otlp-protocol",
            "grpc",
            "--port",
            &port,
            "--no-inject",
        ],
        env,
    );
    let out = Command::new("python3")
        .args(["-c", CLIENT, &port, &iovecs.to_string()])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("HTTP/1.1 200 OK"), "client got {stdout}");
    let (servers, clients) = exact(&receiver, 1, 1);
    std::thread::sleep(Duration::from_millis(100));
    (agent, servers, clients)
}

fn check(servers: &[ReceivedSpan], clients: &[ReceivedSpan]) {
    for span in [&servers[0], &clients[0]] {
        assert_eq!(
            span.attr_str("http.request.method").as_deref(),
            Some("GET"),
            "{span}"
        );
        assert_eq!(
            span.attr_int("http.response.status_code"),
            Some(200),
            "{span}"
        );
        assert_eq!(span.attr_int("http.response.body.size"), Some(42), "{span}");
    }
    assert_eq!(servers[0].attr_str("url.path").as_deref(), Some("/item/41"));
    assert_eq!(
        clients[0]
            .attr_str("url.full")
            .as_deref()
            .map(|u| u.ends_with("/item/41")),
        Some(true),
        "{}",
        clients[0]
    );
}

#[test]
fn a_request_in_two_hundred_iovecs_is_gathered_with_bpf_loop() {
    let (mut agent, servers, clients) = run(&[], 200);
    check(&servers, &clients);
    assert_eq!(agent.stop(), Some(0));
    assert!(
        !agent.stderr().contains("degraded"),
        "this kernel has bpf_loop: {}",
        agent.stderr()
    );
}

#[test]
fn without_bpf_loop_the_fallback_gathers_the_first_iovecs_and_says_so() {
    let (mut agent, servers, clients) = run(&[("SOCKTRACE_FORCE_FALLBACK", "noloop")], 40);
    check(&servers, &clients);
    assert_eq!(agent.stop(), Some(0));
    let stderr = agent.stderr();
    let degraded: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("socktrace: degraded:"))
        .collect();
    assert_eq!(
        degraded.len(),
        1,
        "one line for the missing feature: {stderr}"
    );
    assert!(
        degraded[0].contains("no bpf_loop")
            && degraded[0].contains("sys_exit_readv_noloop")
            && degraded[0].contains("sys_exit_sendmsg_noloop"),
        "{}",
        degraded[0]
    );
}
