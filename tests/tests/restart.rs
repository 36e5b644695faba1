//! Crash and restart, end to end, as root: the agent is SIGKILLed while a client talks to a
//! traced server (traceparent injection on), and a new agent picks up the connection the client
//! opened before either of them.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use socktrace_tests::{
    harness::{
        Agent, ChildGuard, PyServer, final_counters, loaded_programs, peer, require_root, signal,
        wait_line,
    },
    otlp_receiver::{OtlpReceiver, Protocol},
};

#[test]
fn sigkill_disturbs_no_byte_and_a_restarted_agent_traces_connections_opened_before_it() {
    require_root();
    let before = loaded_programs().len();
    let receiver = OtlpReceiver::start_blocking(Protocol::HttpProtobuf);
    let server = PyServer::start(&[("OTEL_SERVICE_NAME", "py-server")]);
    let port = server.port.to_string();
    // Checks every answer byte for byte, on one connection kept for the whole run (opened now,
    // before any agent) and on a fresh one every 25 requests.
    let mut child = Command::new("python3")
        .arg(peer("echo_client.py"))
        .args([port.as_str(), "300"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut client = ChildGuard::new("echo_client.py", child);
    let kept: i64 = wait_line(&mut out, "KEPT ", Duration::from_secs(20))
        .parse()
        .expect("port of the kept connection");

    // An agent injecting into the client's requests, killed mid-traffic.
    let mut agent = Agent::start(&["--otlp-endpoint", &receiver.endpoint(), "--port", &port]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        loaded_programs().len() > before,
        "the agent's programs are loaded"
    );
    signal(agent.pid(), libc::SIGKILL);
    agent.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    while loaded_programs().len() != before {
        assert!(
            Instant::now() < deadline,
            "programs still loaded after SIGKILL: {:?}",
            loaded_programs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A new agent: the kept connection is older than it.
    std::thread::sleep(Duration::from_secs(1));
    receiver.clear();
    let mut agent = Agent::start(&["--otlp-endpoint", &receiver.endpoint(), "--port", &port]);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(agent.stop(), Some(0));

    // Closing its stdin ends the client; it then prints its summary.
    drop(client.child.stdin.take());
    let lines: Vec<String> = out.lines().map_while(Result::ok).collect();
    drop(client);
    let errors: Vec<&String> = lines.iter().filter(|l| l.starts_with("ERROR")).collect();
    assert!(errors.is_empty(), "answers differed: {errors:?}");
    let summary = lines
        .iter()
        .find_map(|l| l.strip_prefix("REQUESTS "))
        .expect("client summary");
    assert!(summary.ends_with(" ERRORS 0"), "{summary}");

    // The restarted agent traced requests on the old connection, with their exact routes and
    // answers, and said it found the connection already open.
    let spans = receiver.spans();
    let on_kept: Vec<_> = spans
        .iter()
        .filter(|s| s.kind() == SpanKind::Server && s.attr_int("client.port") == Some(kept))
        .collect();
    assert!(!on_kept.is_empty(), "no span on the kept connection");
    for s in &on_kept {
        assert!(matches!(s.name(), "POST /echo" | "GET /headers"), "{s}");
        assert_eq!(s.attr_int("http.response.status_code"), Some(200), "{s}");
        assert_eq!(s.resource_str("service.name"), Some("py-server"));
    }
    let conns = final_counters(&agent.stderr(), "conns");
    assert!(conns["found_open"] >= 1, "{conns:?}");
    // The agents injected context into the client's requests, and no byte differed.
    let injected: usize = lines
        .iter()
        .find_map(|l| l.strip_prefix("INJECTED "))
        .and_then(|n| n.parse().ok())
        .expect("client's injection count");
    assert!(injected > 0, "no request carried an injected traceparent");
}
