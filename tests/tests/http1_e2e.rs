//! End to end, as root: the real agent (real eBPF programs) traces a real Python `http.server`
//! and real `curl`, and the spans are checked as they arrive over real OTLP.

use std::{
    collections::HashSet,
    io::{BufReader, Write},
    process::{Command, Stdio},
    time::Duration,
};

use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use socktrace_tests::{
    harness::{
        Agent, ChildGuard, PyServer, curl, exact, loaded_programs, peer, python, require_root,
        temp_file, wait_line,
    },
    otlp_receiver::{OtlpReceiver, Protocol, ReceivedSpan},
};

const WAIT: Duration = Duration::from_secs(30);

fn proto_flag(p: Protocol) -> &'static str {
    match p {
        Protocol::Grpc => "grpc",
        Protocol::HttpProtobuf => "http/protobuf",
    }
}

/// Starts receiver, server (service name `py-server`) and an agent limited to the server's port.
fn setup(protocol: Protocol, extra: &[&str]) -> (OtlpReceiver, PyServer, Agent) {
    require_root();
    let receiver = OtlpReceiver::start_blocking(protocol);
    let server = PyServer::start(&[("OTEL_SERVICE_NAME", "py-server")]);
    let port = server.port.to_string();
    let endpoint = receiver.endpoint();
    let mut args = vec![
        "--otlp-endpoint",
        endpoint.as_str(),
        "--otlp-protocol",
        proto_flag(protocol),
        "--port",
        port.as_str(),
    ];
    args.extend_from_slice(extra);
    let agent = Agent::start(&args);
    (receiver, server, agent)
}

fn str_attr(s: &ReceivedSpan, k: &str) -> String {
    s.attr_str(k)
        .unwrap_or_else(|| panic!("{k} missing on {s}"))
}
fn int_attr(s: &ReceivedSpan, k: &str) -> i64 {
    s.attr_int(k)
        .unwrap_or_else(|| panic!("{k} missing on {s}"))
}

#[test]
fn keepalive_requests_give_one_server_and_one_client_span_each_grpc() {
    let (receiver, server, _agent) = setup(Protocol::Grpc, &[]);
    let p = i64::from(server.port);
    curl(&[
        &server.url("/hello"),
        &server.url("/users/42?token=secret&page=2"),
        &server.url("/status/500"),
    ]);
    let (s, c) = exact(&receiver, 3, 3);

    let expect = [
        ("GET /hello", "/hello", "/hello", None, 200, 6),
        (
            "GET /users/{id}",
            "/users/42",
            "/users/{id}",
            Some("token=REDACTED&page=2"),
            404,
            10,
        ),
        (
            "GET /status/{id}",
            "/status/500",
            "/status/{id}",
            None,
            500,
            11,
        ),
    ];
    let client_port = int_attr(&s[0], "client.port");
    for (i, (span, (name, path, route, query, status, body))) in s.iter().zip(expect).enumerate() {
        assert_eq!(span.name(), name);
        assert_eq!(str_attr(span, "http.request.method"), "GET");
        assert_eq!(str_attr(span, "url.path"), path);
        assert_eq!(span.attr_str("url.query").as_deref(), query);
        assert_eq!(str_attr(span, "url.scheme"), "http");
        assert_eq!(str_attr(span, "http.route"), route);
        assert_eq!(int_attr(span, "http.response.status_code"), status);
        assert_eq!(int_attr(span, "http.response.body.size"), body);
        assert_eq!(str_attr(span, "network.protocol.version"), "1.1");
        assert_eq!(str_attr(span, "server.address"), "127.0.0.1");
        assert_eq!(int_attr(span, "server.port"), p);
        assert_eq!(str_attr(span, "client.address"), "127.0.0.1");
        // One keep-alive connection: the same client port on every request.
        assert_eq!(int_attr(span, "client.port"), client_port);
        assert!(str_attr(span, "user_agent.original").starts_with("curl/"));
        assert_eq!(span.resource_str("service.name"), Some("py-server"));
        assert_eq!(
            span.resource_int("process.pid"),
            Some(i64::from(server.pid()))
        );
        // curl is traced too: each server span is the child of the client span of the same
        // request on the keep-alive connection (paired by order), in its trace.
        assert_eq!(c[i].parent_span_id(), None);
        assert_eq!(span.parent_span_id(), Some(c[i].span_id()), "{span}");
        assert_eq!(span.trace_id(), c[i].trace_id());
        assert!(span.span.end_time_unix_nano >= span.span.start_time_unix_nano);
        if status >= 500 {
            assert_eq!(span.status_code(), StatusCode::Error, "{span}");
            assert_eq!(str_attr(span, "error.type"), "500");
        } else {
            assert_eq!(span.status_code(), StatusCode::Unset, "{span}");
            assert_eq!(span.attr_str("error.type"), None);
        }
    }

    let expect = [
        ("/hello", 200),
        ("/users/42?token=REDACTED&page=2", 404),
        ("/status/500", 500),
    ];
    for (span, (path, status)) in c.iter().zip(expect) {
        assert_eq!(span.name(), "GET");
        assert_eq!(
            str_attr(span, "url.full"),
            format!("http://127.0.0.1:{p}{path}")
        );
        assert_eq!(str_attr(span, "server.address"), "127.0.0.1");
        assert_eq!(int_attr(span, "server.port"), p);
        assert_eq!(int_attr(span, "http.response.status_code"), status);
        assert_eq!(span.resource_str("service.name"), Some("curl"));
        assert_eq!(span.resource_str("process.executable.name"), Some("curl"));
        if status >= 400 {
            assert_eq!(span.status_code(), StatusCode::Error, "{span}");
            assert_eq!(str_attr(span, "error.type"), status.to_string());
        } else {
            assert_eq!(span.status_code(), StatusCode::Unset, "{span}");
        }
    }
    // Nothing secret left the host.
    for span in s.iter().chain(&c) {
        assert!(!format!("{:?}", span.span).contains("secret"), "{span}");
    }
}

#[test]
fn http_protobuf_export_and_the_agent_never_traces_itself() {
    require_root();
    let receiver = OtlpReceiver::start_blocking(Protocol::HttpProtobuf);
    let server = PyServer::start(&[("OTEL_SERVICE_NAME", "py-server")]);
    // No --port filter: every process is traced, including this test process (which hosts the
    // OTLP receiver) - yet the export traffic must never become spans.
    let endpoint = receiver.endpoint();
    let mut agent = Agent::start(&[
        "--otlp-endpoint",
        &endpoint,
        "--otlp-protocol",
        "http/protobuf",
    ]);
    curl(&[&server.url("/hello"), &server.url("/hello")]);
    let spans = receiver
        .wait_for_blocking(
            |s| {
                s.iter()
                    .filter(|s| s.resource_str("service.name") == Some("py-server"))
                    .count()
                    >= 2
            },
            WAIT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    // Several export rounds have happened by now; give the agent time to (wrongly) trace them.
    std::thread::sleep(Duration::from_secs(3));
    let spans = [spans, receiver.spans()].concat();
    let otlp_port = i64::from(receiver.addr().port());
    for span in &spans {
        assert_ne!(
            span.attr_int("server.port"),
            Some(otlp_port),
            "export traffic traced: {span}"
        );
        assert_ne!(
            span.attr_str("url.path").as_deref(),
            Some("/v1/traces"),
            "{span}"
        );
        assert_ne!(
            span.resource_int("process.pid"),
            Some(i64::from(agent.pid())),
            "agent traced itself: {span}"
        );
    }
    let requests = receiver.requests();
    assert!(requests.iter().all(|r| r.path == "/v1/traces"));
    assert_eq!(agent.stop(), Some(0), "agent must exit 0 on SIGTERM");
}

#[test]
fn post_bodies_keep_message_boundaries() {
    let (receiver, server, _agent) = setup(Protocol::Grpc, &[]);
    let body = temp_file("body-1000", &[b'a'; 1000]);
    let data = format!("@{}", body.display());
    curl(&[
        "-o",
        "/dev/null",
        "--data-binary",
        &data,
        &server.url("/echo"),
        "--next",
        "-o",
        "/dev/null",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &data,
        &server.url("/echo"),
        "--next",
        "-o",
        "/dev/null",
        &server.url("/hello"),
    ]);
    let (s, c) = exact(&receiver, 3, 3);
    for spans in [&s, &c] {
        assert_eq!(str_attr(&spans[0], "http.request.method"), "POST");
        assert_eq!(int_attr(&spans[0], "http.request.body.size"), 1000);
        assert_eq!(int_attr(&spans[0], "http.response.body.size"), 14);
        assert_eq!(str_attr(&spans[1], "http.request.method"), "POST");
        assert_eq!(int_attr(&spans[1], "http.request.body.size"), 1000);
        assert_eq!(int_attr(&spans[1], "http.response.body.size"), 14);
        assert_eq!(str_attr(&spans[2], "http.request.method"), "GET");
        assert_eq!(int_attr(&spans[2], "http.response.body.size"), 6);
        assert_eq!(spans[2].attr_int("http.request.body.size"), None);
        assert!(
            spans
                .iter()
                .all(|s| s.attr_bool("socktrace.partial").is_none())
        );
    }
    assert_eq!(str_attr(&s[2], "url.path"), "/hello");
    let port = int_attr(&s[0], "client.port");
    assert!(
        s.iter().all(|x| int_attr(x, "client.port") == port),
        "one connection"
    );
}

#[test]
fn large_and_chunked_responses_are_one_span_each() {
    // curl reads the 50 chunks (5306 bytes) in one read: 8 KiB of capture sees every chunk line.
    let (receiver, server, _agent) = setup(Protocol::Grpc, &["--capture-bytes", "8192"]);
    curl(&[
        "-o",
        "/dev/null",
        &server.url("/big?size=1048576"),
        "-o",
        "/dev/null",
        &server.url("/chunked?n=50"),
        "-o",
        "/dev/null",
        &server.url("/hello"),
    ]);
    let (s, c) = exact(&receiver, 3, 3);
    for spans in [&s, &c] {
        assert_eq!(
            int_attr(&spans[0], "http.response.body.size"),
            1_048_576,
            "{}",
            spans[0]
        );
        assert_eq!(
            int_attr(&spans[1], "http.response.body.size"),
            5000,
            "{}",
            spans[1]
        );
        assert_eq!(
            int_attr(&spans[2], "http.response.body.size"),
            6,
            "{}",
            spans[2]
        );
        assert!(
            spans
                .iter()
                .all(|s| s.attr_bool("socktrace.partial").is_none())
        );
    }
    assert_eq!(str_attr(&s[2], "url.path"), "/hello");
    assert!(c[0].duration() > Duration::ZERO);
}

#[test]
fn chunk_lines_beyond_the_capture_are_marked_partial_and_the_stream_recovers() {
    let (receiver, server, _agent) = setup(Protocol::Grpc, &["--capture-bytes", "256"]);
    // The client lets the 50 chunks pile up, then reads them in one call (curl reads as they
    // come, which on a fast machine can be one chunk per read: then every line is seen).
    let out = Command::new(python())
        .arg(peer("slow_reader.py"))
        .arg(server.port.to_string())
        .args(["/chunked?n=50", "/hello"])
        .output()
        .expect("slow_reader.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (s, c) = exact(&receiver, 2, 2);
    // The server writes each chunk in its own write: fully seen, exact.
    assert_eq!(int_attr(&s[0], "http.response.body.size"), 5000, "{}", s[0]);
    assert!(s.iter().all(|s| s.attr_bool("socktrace.partial").is_none()));
    // The client reads many chunks at once; lines past 256 bytes are unseen: marked, no guess.
    assert_eq!(c[0].attr_bool("socktrace.partial"), Some(true), "{}", c[0]);
    assert_eq!(c[0].attr_int("http.response.body.size"), None, "{}", c[0]);
    assert_eq!(int_attr(&c[0], "http.response.status_code"), 200);
    // ...and the next exchange on the connection is exact again.
    assert_eq!(str_attr(&c[1], "url.full"), server.url("/hello"));
    assert_eq!(int_attr(&c[1], "http.response.body.size"), 6);
    assert_eq!(c[1].attr_bool("socktrace.partial"), None);
}

#[test]
fn fifty_concurrent_clients_each_get_their_own_spans() {
    let (receiver, server, _agent) = setup(Protocol::HttpProtobuf, &[]);
    let children: Vec<ChildGuard> = (0..50)
        .map(|i| {
            let child = Command::new("curl")
                .args(["-sS", "-o", "/dev/null", "--max-time", "30"])
                .arg(server.url(&format!("/item/{i}")))
                .stdout(Stdio::null())
                .spawn()
                .expect("curl");
            ChildGuard::new("curl", child)
        })
        .collect();
    for mut c in children {
        assert!(c.child.wait().expect("curl").success());
    }
    let (s, c) = exact(&receiver, 50, 50);
    let mut paths = HashSet::new();
    let mut ports = HashSet::new();
    for span in &s {
        let path = str_attr(span, "url.path");
        let i: i64 = path
            .strip_prefix("/item/")
            .expect("item path")
            .parse()
            .expect("number");
        // /item/i answers i+1 bytes: a request paired with another connection's response fails.
        assert_eq!(int_attr(span, "http.response.body.size"), i + 1, "{span}");
        paths.insert(path);
        ports.insert(int_attr(span, "client.port"));
    }
    assert_eq!(paths.len(), 50);
    assert_eq!(ports.len(), 50);
    let mut urls = HashSet::new();
    for span in &c {
        let url = str_attr(span, "url.full");
        let i: i64 = url
            .rsplit('/')
            .next()
            .expect("segment")
            .parse()
            .expect("number");
        assert_eq!(int_attr(span, "http.response.body.size"), i + 1, "{span}");
        urls.insert(url);
    }
    assert_eq!(urls.len(), 50);
}

#[test]
fn incoming_traceparent_makes_the_server_span_a_child_of_the_caller() {
    let (receiver, server, _agent) = setup(Protocol::Grpc, &[]);
    curl(&[
        "-o",
        "/dev/null",
        "-H",
        "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "-H",
        "tracestate: congo=t61rcWkgMzE",
        &server.url("/hello"),
        "--next",
        "-o",
        "/dev/null",
        "-H",
        "traceparent: 00-zzzz-not-valid-01",
        &server.url("/hello"),
    ]);
    let (s, c) = exact(&receiver, 2, 2);
    // curl's span continues the caller's context; the server span (curl is traced on this host
    // too) is the child of curl's span, in the same trace with the same tracestate.
    assert_eq!(c[0].trace_id(), "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(c[0].parent_span_id().as_deref(), Some("b7ad6b7169203331"));
    assert_eq!(s[0].trace_id(), "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(s[0].parent_span_id(), Some(c[0].span_id()));
    for span in [&s[0], &c[0]] {
        assert_eq!(span.span.trace_state, "congo=t61rcWkgMzE");
    }
    // A malformed header is ignored: a new trace for curl's span, the server span its child.
    assert_ne!(c[1].trace_id(), "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(c[1].trace_id().len(), 32);
    assert_eq!(c[1].parent_span_id(), None);
    assert_eq!(s[1].trace_id(), c[1].trace_id());
    assert_eq!(s[1].parent_span_id(), Some(c[1].span_id()));
}

#[test]
fn keepalive_connection_opened_before_the_agent_is_traced() {
    require_root();
    let receiver = OtlpReceiver::start_blocking(Protocol::Grpc);
    let server = PyServer::start(&[("OTEL_SERVICE_NAME", "py-server")]);
    let mut client = Command::new("python3")
        .arg(peer("keepalive_client.py"))
        .arg(server.port.to_string())
        .arg("3")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut out = BufReader::new(client.stdout.take().expect("piped"));
    let mut client = ChildGuard::new("keepalive_client.py", client);
    wait_line(&mut out, "READY", WAIT);

    let endpoint = receiver.endpoint();
    let port = server.port.to_string();
    let _agent = Agent::start(&[
        "--otlp-endpoint",
        &endpoint,
        "--otlp-protocol",
        "grpc",
        "--port",
        &port,
    ]);
    writeln!(client.stdin(), "go").expect("signal client");
    wait_line(&mut out, "DONE", WAIT);

    let (s, c) = exact(&receiver, 3, 3);
    for (i, (server_span, client_span)) in s.iter().zip(&c).enumerate() {
        assert_eq!(str_attr(server_span, "url.path"), format!("/item/{i}"));
        assert_eq!(
            int_attr(server_span, "http.response.body.size"),
            i as i64 + 1
        );
        assert_eq!(int_attr(server_span, "server.port"), i64::from(server.port));
        assert_eq!(server_span.resource_str("service.name"), Some("py-server"));
        assert_eq!(
            str_attr(client_span, "url.full"),
            format!("http://127.0.0.1:{}/item/{i}", server.port)
        );
        assert_eq!(int_attr(client_span, "server.port"), i64::from(server.port));
    }
}

#[test]
fn pid_and_exe_filters_select_processes_in_the_kernel() {
    require_root();
    let receiver = OtlpReceiver::start_blocking(Protocol::Grpc);
    let server = PyServer::start(&[("OTEL_SERVICE_NAME", "py-server")]);
    let endpoint = receiver.endpoint();
    let pid = server.pid().to_string();
    {
        let _agent = Agent::start(&[
            "--otlp-endpoint",
            &endpoint,
            "--otlp-protocol",
            "grpc",
            "--pid",
            &pid,
        ]);
        curl(&[&server.url("/hello"), &server.url("/hello")]);
        let (s, _) = exact(&receiver, 2, 0);
        assert!(
            s.iter()
                .all(|s| s.resource_str("service.name") == Some("py-server"))
        );
    }
    receiver.clear();
    {
        let _agent = Agent::start(&[
            "--otlp-endpoint",
            &endpoint,
            "--otlp-protocol",
            "grpc",
            "--exe",
            "curl",
        ]);
        curl(&[&server.url("/hello")]);
        let (_, c) = exact(&receiver, 0, 1);
        assert_eq!(c[0].resource_str("service.name"), Some("curl"));
    }
}

#[test]
fn killing_the_agent_leaves_nothing_attached() {
    require_root();
    let ours = || {
        loaded_programs()
            .iter()
            .filter(|p| *p == "sys_enter_sendfile64")
            .count()
    };
    let before = ours();
    let mut agent = Agent::start(&["--port", "1"]);
    assert_eq!(ours(), before + 1, "the agent's programs are loaded");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGKILL) };
    let _ = agent.stop();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ours() != before {
        assert!(
            std::time::Instant::now() < deadline,
            "programs still loaded after SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn console_output_is_the_default_without_endpoint() {
    let server = PyServer::start(&[("OTEL_SERVICE_NAME", "py-server")]);
    let port = server.port.to_string();
    let mut agent = Agent::start(&["--port", &port]);
    curl(&[&server.url("/users/7")]);
    let deadline = std::time::Instant::now() + WAIT;
    while !agent.stdout().contains("GET /users/{id}") {
        assert!(
            std::time::Instant::now() < deadline,
            "no console span:\n{}",
            agent.stdout()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(agent.stop(), Some(0));
    let out = agent.stdout();
    let line = out
        .lines()
        .find(|l| l.contains("GET /users/{id}"))
        .expect("span line");
    assert!(line.contains("py-server"), "{line}");
    assert!(line.contains("SERVER"), "{line}");
}

#[test]
fn garbage_on_a_socket_is_ignored_and_tracing_goes_on() {
    let (receiver, server, mut agent) = setup(Protocol::Grpc, &[]);
    // Random bytes, then a request that starts valid and turns into garbage, each on its own
    // connection to the traced server.
    let garbage = r#"
import os, socket, sys
port = int(sys.argv[1])
for payload in (os.urandom(4096), b"GET /x HTTP/1.1\r\nHost: a\r\n" + os.urandom(3000) + b"\r\n\r\n"):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(payload)
    s.settimeout(2)
    try:
        s.recv(65536)
    except OSError:
        pass
    s.close()
"#;
    let out = Command::new("python3")
        .args(["-c", garbage, &server.port.to_string()])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    curl(&["-o", "/dev/null", &server.url("/hello")]);
    let spans = receiver
        .wait_for_blocking(
            |s| {
                s.iter()
                    .any(|s| s.attr_str("url.path").as_deref() == Some("/hello"))
            },
            WAIT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let hello: Vec<_> = spans
        .iter()
        .filter(|s| s.attr_str("url.path").as_deref() == Some("/hello"))
        .collect();
    assert_eq!(hello.len(), 1);
    assert_eq!(hello[0].attr_int("http.response.status_code"), Some(200));
    assert_eq!(
        agent.stop(),
        Some(0),
        "the agent survives garbage and exits cleanly"
    );
}
