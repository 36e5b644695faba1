//! End to end, as root: the real agent traces a real gRPC server and client (Python grpcio on
//! the gRPC C core, two separate processes, no tracing code in either) and a real h2c server
//! with real curl; spans are checked as they arrive over real OTLP.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    time::Duration,
};

use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use socktrace_tests::{
    harness::{Agent, ChildGuard, PyServer, exact, python, require_root, wait_line},
    otlp_receiver::{OtlpReceiver, Protocol, ReceivedSpan},
};

const SERVICE: &str = "socktrace.test.Echo";

/// The calls of `grpc_client.py basic`, in order: method and gRPC status code.
const BASIC_CALLS: [(&str, i64); 5] = [
    ("Unary", 0),
    ("Unary", 5),
    ("ServerStream", 0),
    ("ClientStream", 0),
    ("Bidi", 0),
];

fn str_attr(s: &ReceivedSpan, k: &str) -> String {
    s.attr_str(k)
        .unwrap_or_else(|| panic!("{k} missing on {s}"))
}
fn int_attr(s: &ReceivedSpan, k: &str) -> i64 {
    s.attr_int(k)
        .unwrap_or_else(|| panic!("{k} missing on {s}"))
}

/// Receiver, gRPC server (service name `echo-server`) and an agent limited to its port.
fn setup(extra: &[&str]) -> (OtlpReceiver, PyServer, Agent) {
    setup_with_env(extra, &[])
}

fn setup_with_env(extra: &[&str], env: &[(&str, &str)]) -> (OtlpReceiver, PyServer, Agent) {
    require_root();
    let receiver = OtlpReceiver::start_blocking(Protocol::Grpc);
    let server = PyServer::start_peer(
        &python(),
        "grpc_server.py",
        &[("OTEL_SERVICE_NAME", "echo-server")],
    );
    let port = server.port.to_string();
    let endpoint = receiver.endpoint();
    let mut args = vec![
        "--otlp-endpoint",
        endpoint.as_str(),
        "--otlp-protocol",
        "grpc",
        "--port",
        port.as_str(),
    ];
    args.extend_from_slice(extra);
    let agent = Agent::start_with_env(&args, env);
    (receiver, server, agent)
}

/// The `rpc.status_code` of a gRPC status code, as the status names it.
fn code_name(code: i64) -> &'static str {
    match code {
        0 => "OK",
        5 => "NOT_FOUND",
        other => panic!("no name for {other} in this test"),
    }
}

/// Runs the gRPC client to completion and returns its report lines.
fn client(port: u16, args: &[&str]) -> Vec<String> {
    let out = Command::new(python())
        .arg(socktrace_tests::harness::peer("grpc_client.py"))
        .arg(port.to_string())
        .args(args)
        .env("OTEL_SERVICE_NAME", "echo-client")
        .output()
        .expect("running grpc_client.py");
    assert!(
        out.status.success(),
        "grpc_client.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Checks the attributes every gRPC span must carry: the stable RPC names, none of the old ones.
fn check_grpc(span: &ReceivedSpan, method: &str, code: i64, server_port: u16) {
    assert_eq!(span.name(), format!("{SERVICE}/{method}"), "{span}");
    assert_eq!(str_attr(span, "rpc.system.name"), "grpc");
    assert_eq!(str_attr(span, "rpc.method"), format!("{SERVICE}/{method}"));
    assert_eq!(str_attr(span, "rpc.status_code"), code_name(code), "{span}");
    for old in ["rpc.system", "rpc.service", "rpc.grpc.status_code"] {
        assert!(span.attr(old).is_none(), "{old} on {span}");
    }
    assert_eq!(str_attr(span, "server.address"), "127.0.0.1");
    assert_eq!(int_attr(span, "server.port"), i64::from(server_port));
    assert_eq!(str_attr(span, "network.peer.address"), "127.0.0.1");
    assert_eq!(str_attr(span, "network.protocol.version"), "2");
    assert_eq!(span.attr_bool("socktrace.partial"), None, "{span}");
    assert!(span.span.end_time_unix_nano >= span.span.start_time_unix_nano);
}

#[test]
fn unary_streaming_and_error_calls_on_both_sides() {
    let (receiver, server, _agent) = setup(&[]);
    let lines = client(server.port, &["basic"]);
    assert_eq!(
        lines,
        [
            "Unary OK 5",
            "Unary NOT_FOUND no such item",
            "ServerStream OK 5",
            "ClientStream OK 4",
            "Bidi OK 3"
        ]
    );
    let (servers, clients) = exact(&receiver, 5, 5);
    let expect = BASIC_CALLS;
    let client_port = int_attr(&servers[0], "client.port");
    for ((s, c), (method, code)) in servers.iter().zip(&clients).zip(expect) {
        check_grpc(s, method, code, server.port);
        check_grpc(c, method, code, server.port);
        assert_eq!(s.resource_str("service.name"), Some("echo-server"));
        assert_eq!(c.resource_str("service.name"), Some("echo-client"));
        // One channel: every call on the same connection.
        assert_eq!(int_attr(s, "client.port"), client_port);
        assert_eq!(int_attr(c, "network.peer.port"), i64::from(server.port));
        // The server handled the call while the client waited for it: its span lies within the
        // client's (same host, same clock).
        assert!(
            c.span.start_time_unix_nano <= s.span.start_time_unix_nano
                && s.span.end_time_unix_nano <= c.span.end_time_unix_nano,
            "server span {s} not within client span {c}"
        );
        if code == 0 {
            assert_eq!(s.status_code(), StatusCode::Unset, "{s}");
            assert_eq!(c.status_code(), StatusCode::Unset, "{c}");
        } else {
            // NOT_FOUND is the caller's problem: an error on the client only.
            assert_eq!(s.status_code(), StatusCode::Unset, "{s}");
            assert_eq!(c.status_code(), StatusCode::Error, "{c}");
            assert_eq!(str_attr(c, "error.type"), "NOT_FOUND");
            assert_eq!(c.status_message(), "no such item");
        }
    }
}

#[test]
fn hundred_concurrent_calls_multiplexed_on_one_connection() {
    let (receiver, server, _agent) = setup(&[]);
    assert_eq!(
        client(server.port, &["concurrent", "100"]),
        ["Concurrent OK 100"]
    );
    let (servers, clients) = exact(&receiver, 100, 100);
    let client_port = int_attr(&servers[0], "client.port");
    for s in &servers {
        check_grpc(s, "Unary", 0, server.port);
        assert_eq!(int_attr(s, "client.port"), client_port, "one connection");
    }
    for c in &clients {
        check_grpc(c, "Unary", 0, server.port);
    }
}

#[test]
fn messages_much_larger_than_the_capture() {
    // 1 MiB each way with the default 2048-byte capture: frames run through gaps, and the
    // trailers come after a megabyte of DATA.
    let (receiver, server, _agent) = setup(&[]);
    assert_eq!(
        client(server.port, &["big", "1048576"]),
        ["Unary OK 1048576", "Big OK 1048576"]
    );
    let (servers, clients) = exact(&receiver, 2, 2);
    for (spans, kind) in [(&servers, "server"), (&clients, "client")] {
        assert_eq!(spans[0].name(), format!("{SERVICE}/Unary"), "{kind}");
        assert_eq!(spans[1].name(), format!("{SERVICE}/Big"), "{kind}");
        for s in spans.iter() {
            assert_eq!(str_attr(s, "rpc.method"), s.name());
            assert_eq!(str_attr(s, "rpc.status_code"), "OK", "{s}");
            assert_eq!(s.status_code(), StatusCode::Unset, "{s}");
        }
    }
}

#[test]
fn connection_established_before_the_agent_is_joined_mid_stream() {
    require_root();
    let receiver = OtlpReceiver::start_blocking(Protocol::Grpc);
    let server = PyServer::start_peer(&python(), "grpc_server.py", &[]);
    let mut child = Command::new(python())
        .arg(socktrace_tests::harness::peer("grpc_client.py"))
        .args([&server.port.to_string(), "hold"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("grpc_client.py");
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut guard = ChildGuard::new("grpc_client.py", child);
    wait_line(&mut out, "READY", Duration::from_secs(20));

    // The connection and both HPACK tables exist before the agent does.
    let port = server.port.to_string();
    let endpoint = receiver.endpoint();
    let _agent = Agent::start(&[
        "--otlp-endpoint",
        &endpoint,
        "--otlp-protocol",
        "grpc",
        "--port",
        &port,
    ]);
    writeln!(guard.stdin(), "go").expect("stdin");
    let lines: Vec<String> = (&mut out).lines().map_while(Result::ok).collect();
    assert_eq!(lines.len(), 5, "{lines:?}");

    // The agent keeps working: a new connection afterwards is traced completely.
    let lines = client(server.port, &["basic"]);
    assert_eq!(lines.len(), 5, "{lines:?}");
    let expect = BASIC_CALLS;
    receiver
        .wait_for_blocking(
            |spans| {
                spans
                    .iter()
                    .filter(|s| s.attr_bool("socktrace.partial").is_none())
                    .filter(|s| s.kind() == SpanKind::Server)
                    .count()
                    >= 5
            },
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_secs(2));
    let spans = receiver.spans();
    // Header fields indexed in the dynamic tables before the agent started cannot be decoded:
    // such spans say so (socktrace.partial) and carry no guessed value. Every span, of the held
    // connection or the new one, must be right in everything it carries.
    let by_method = |m: &str| expect.iter().filter(|(x, _)| *x == m).count();
    for s in &spans {
        assert_eq!(str_attr(s, "rpc.system.name"), "grpc", "{s}");
        if let Some(m) = s.attr_str("rpc.method") {
            let short = m.strip_prefix(&format!("{SERVICE}/")).unwrap_or("");
            assert!(by_method(short) > 0, "{s}");
            assert_eq!(s.name(), m);
        }
        let complete =
            s.attr_str("rpc.method").is_some() && s.attr_str("rpc.status_code").is_some();
        if !complete {
            assert_eq!(s.attr_bool("socktrace.partial"), Some(true), "{s}");
        }
    }
    // Both sides of the new connection: exactly the five calls, complete and in order.
    for kind in [SpanKind::Server, SpanKind::Client] {
        let mut complete: Vec<&ReceivedSpan> = spans
            .iter()
            .filter(|s| s.kind() == kind && s.attr_bool("socktrace.partial").is_none())
            .collect();
        complete.sort_by_key(|s| s.span.start_time_unix_nano);
        let tail: Vec<(String, String)> = complete
            .iter()
            .rev()
            .take(5)
            .rev()
            .map(|s| (str_attr(s, "rpc.method"), str_attr(s, "rpc.status_code")))
            .collect();
        let want: Vec<(String, String)> = expect
            .iter()
            .map(|(m, c)| (format!("{SERVICE}/{m}"), code_name(*c).to_owned()))
            .collect();
        assert_eq!(tail, want, "{kind:?}");
    }
}

/// An h2c server on the `h2` library, answering 200 or 404 (/missing).
fn h2c_setup() -> (OtlpReceiver, PyServer, Agent) {
    require_root();
    let receiver = OtlpReceiver::start_blocking(Protocol::HttpProtobuf);
    let server = PyServer::start_peer(&python(), "h2c_server.py", &[]);
    let port = server.port.to_string();
    let endpoint = receiver.endpoint();
    let agent = Agent::start(&[
        "--otlp-endpoint",
        &endpoint,
        "--otlp-protocol",
        "http/protobuf",
        "--port",
        &port,
    ]);
    (receiver, server, agent)
}

fn curl_h2(flag: &str, url: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-s",
            flag,
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            url,
        ])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn curl_prior_knowledge_h2c_gives_http_spans_of_version_2() {
    let (receiver, server, _agent) = h2c_setup();
    assert_eq!(
        curl_h2("--http2-prior-knowledge", &server.url("/index.html")),
        "2 200"
    );
    assert_eq!(
        curl_h2("--http2-prior-knowledge", &server.url("/missing")),
        "2 404"
    );
    let (servers, clients) = exact(&receiver, 2, 2);
    for (spans, i) in [(&servers, 0), (&clients, 1)] {
        for (s, (path, code, body)) in spans
            .iter()
            .zip([("/index.html", 200, 9), ("/missing", 404, 10)])
        {
            assert_eq!(str_attr(s, "http.request.method"), "GET", "{s}");
            assert_eq!(str_attr(s, "network.protocol.version"), "2", "{s}");
            assert_eq!(int_attr(s, "http.response.status_code"), code, "{s}");
            assert_eq!(int_attr(s, "http.response.body.size"), body, "{s}");
            assert_eq!(int_attr(s, "server.port"), i64::from(server.port));
            if i == 0 {
                assert_eq!(str_attr(s, "url.path"), path);
                assert_eq!(s.name(), format!("GET {path}"));
                assert_eq!(s.status_code(), StatusCode::Unset, "{s}");
            } else {
                assert_eq!(str_attr(s, "url.full"), server.url(path));
                assert!(str_attr(s, "user_agent.original").starts_with("curl/"));
                let want = if code >= 400 {
                    StatusCode::Error
                } else {
                    StatusCode::Unset
                };
                assert_eq!(s.status_code(), want, "{s}");
            }
            assert_eq!(s.attr_bool("socktrace.partial"), None, "{s}");
        }
    }
}

#[test]
fn upgrade_to_h2c_continues_as_http2_on_stream_1() {
    let (receiver, server, _agent) = h2c_setup();
    assert_eq!(curl_h2("--http2", &server.url("/index.html")), "2 200");
    // One request: the HTTP/1.1 upgrade exchange is stream 1 of HTTP/2, not a span of its own.
    let (servers, clients) = exact(&receiver, 1, 1);
    for s in servers.iter().chain(&clients) {
        assert_eq!(str_attr(s, "network.protocol.version"), "2", "{s}");
        assert_eq!(int_attr(s, "http.response.status_code"), 200, "{s}");
        assert_eq!(int_attr(s, "http.response.body.size"), 9, "{s}");
        assert_eq!(s.status_code(), StatusCode::Unset, "{s}");
    }
    assert_eq!(str_attr(&servers[0], "url.path"), "/index.html");
    assert_eq!(str_attr(&clients[0], "url.full"), server.url("/index.html"));
}

#[test]
fn traceparent_in_grpc_metadata_links_the_server_span() {
    // grpcio sends custom metadata as HTTP/2 headers: a traceparent there is the caller.
    let (receiver, server, _agent) = setup(&[]);
    let script = format!(
        "import grpc\n\
         ch = grpc.insecure_channel('127.0.0.1:{}')\n\
         f = ch.unary_unary('/{SERVICE}/Unary')\n\
         f(b'hi', metadata=(('traceparent', '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'), ('tracestate', 'vendor=1')))\n",
        server.port
    );
    let out = Command::new(python())
        .args(["-c", &script])
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (servers, clients) = exact(&receiver, 1, 1);
    // The client span continues the caller's context; both ends are traced on this host, so the
    // server span is the child of the client span (same stream id on the same connection).
    let (s, c) = (&servers[0], &clients[0]);
    assert_eq!(
        c.parent_span_id().as_deref(),
        Some("00f067aa0ba902b7"),
        "{c}"
    );
    assert_eq!(s.parent_span_id(), Some(c.span_id()), "{s}");
    for s in [s, c] {
        assert_eq!(s.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736", "{s}");
        assert_eq!(s.span.trace_state, "vendor=1", "{s}");
        check_grpc(s, "Unary", 0, server.port);
    }
}

#[test]
fn rpc_dup_opt_in_adds_the_old_rpc_names() {
    let (receiver, server, _agent) =
        setup_with_env(&[], &[("OTEL_SEMCONV_STABILITY_OPT_IN", "http,rpc/dup")]);
    assert_eq!(client(server.port, &["basic"]).len(), 5);
    let (servers, clients) = exact(&receiver, 5, 5);
    let expect = BASIC_CALLS;
    for (s, (method, code)) in servers.iter().zip(expect).chain(clients.iter().zip(expect)) {
        // The stable names as without the opt-in, `rpc.method` fully qualified...
        assert_eq!(str_attr(s, "rpc.system.name"), "grpc", "{s}");
        assert_eq!(str_attr(s, "rpc.method"), format!("{SERVICE}/{method}"));
        assert_eq!(str_attr(s, "rpc.status_code"), code_name(code), "{s}");
        // ...and those of semantic conventions 1.37.
        assert_eq!(str_attr(s, "rpc.system"), "grpc", "{s}");
        assert_eq!(str_attr(s, "rpc.service"), SERVICE, "{s}");
        assert_eq!(int_attr(s, "rpc.grpc.status_code"), code, "{s}");
    }
}
