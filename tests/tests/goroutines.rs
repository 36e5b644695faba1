//! Whole traces through a Go service, as root: `curl` -> a Go `net/http` service (built by the
//! test, no tracing code) whose handler calls a Python HTTP service from a goroutine it starts
//! and queries a real PostgreSQL through `database/sql` (lib/pq), under 20 concurrent requests.
//! Go runs those goroutines on whichever threads are free, so linking by thread gives wrong
//! parents here; the agent follows the goroutines with uprobes on the Go runtime. Once more
//! with the service over HTTPS (Go's `crypto/tls`).

use std::{
    collections::HashMap,
    io::BufReader,
    process::{Command, Stdio},
    time::Duration,
};

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use socktrace_tests::{
    harness::{
        Agent, ChildGuard, PyServer, curl_concurrently, curl_concurrently_with, exact, free_port,
        go_peer, metric, python, require_root, wait_line, wait_metric,
    },
    load::TestCert,
    otlp_receiver::{OtlpReceiver, Protocol, ReceivedSpan},
    pg::PgServer,
};

fn service(s: &ReceivedSpan) -> &str {
    s.resource_str("service.name").unwrap_or("?")
}

/// The request number a span is about: from its URL path (`/work/<i>`, `/item/<i>`) or its
/// statement (`SELECT ? AS req_<i>`).
fn request_of(s: &ReceivedSpan) -> String {
    if let Some(q) = s.attr_str("db.query.text") {
        return q.rsplit("req_").next().unwrap().to_owned();
    }
    let path = s
        .attr_str("url.path")
        .or_else(|| s.attr_str("url.full"))
        .unwrap_or_else(|| panic!("no URL or statement on {s}"));
    path.rsplit('/').next().unwrap().to_owned()
}

#[test]
fn a_go_service_calling_from_goroutines_gives_exact_parents_under_concurrency() {
    chain_through_go(false, false);
}

/// The same service built without a symbol table (`-ldflags=-s -w`, as release builds often
/// are): the runtime functions are found in its line table (`.gopclntab`).
#[test]
fn a_stripped_go_service_is_followed_through_its_line_table() {
    chain_through_go(true, false);
}

/// The same chain with the Go service over HTTPS (`crypto/tls`, HTTP/1.1): its requests are
/// read at `(*Conn).Read`'s copy of the plaintext and its responses at the record writes, while
/// its calls stay cleartext. Go's HTTP server ends every request with a read that fails (the
/// background read it aborts): no probe sees that read end, so this also checks that the
/// goroutines reusing its goroutine structure keep their cleartext calls (none taken for TLS).
#[test]
fn a_go_https_service_calling_from_goroutines_gives_exact_parents() {
    chain_through_go(false, true);
}

fn chain_through_go(stripped: bool, tls: bool) {
    require_root();
    let cert = tls.then(|| TestCert::make().unwrap_or_else(|e| panic!("{e}")));
    let receiver = OtlpReceiver::start_blocking(Protocol::Grpc);
    let pg = PgServer::start("shop");
    let down = PyServer::start_peer_args(
        &python(),
        "http_server.py",
        &[],
        &[("OTEL_SERVICE_NAME", "downstream")],
    );
    let bin = go_peer("chainsvc", stripped);
    let port = free_port();
    let health = format!("127.0.0.1:{}", free_port());
    let ports = format!("{port},{},{}", down.port, pg.port);
    let agent = Agent::exporting_to(&receiver, &ports, &["--health-listen", &health]);
    // Started after the agent: found by the scan, its runtime attached by its own symbols.
    let dsn = format!(
        "host=127.0.0.1 port={} user=postgres dbname=shop sslmode=disable",
        pg.port
    );
    // The plain service starts through a shell that execs it two seconds later: the agent's
    // scan (every second) first sees the shell's executable under the service's pid - the
    // window between a fork and its exec, made wide - and must look at the pid again after the
    // exec. The stripped one starts directly.
    let mut command = if stripped {
        Command::new(&bin)
    } else {
        let mut sh = Command::new("/bin/sh");
        sh.args(["-c", "sleep 2; exec \"$0\" \"$@\""]).arg(&bin);
        sh
    };
    if let Some(cert) = &cert {
        command
            .env("CHAINSVC_CERT", cert.cert())
            .env("CHAINSVC_KEY", cert.key());
    }
    let mut child = command
        .arg(port.to_string())
        .arg(down.url(""))
        .arg(&dsn)
        .env("OTEL_SERVICE_NAME", "svc-go")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting chainsvc");
    let pid = child.id();
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let _svc = ChildGuard::new("chainsvc", child);
    let _ = wait_line(&mut out, "PORT ", Duration::from_secs(20));
    let line = agent.wait_stderr(&format!("Go: following the goroutines of /proc/{pid}/"));
    let name = if stripped {
        "chainsvc-stripped"
    } else {
        "chainsvc"
    };
    assert!(line.ends_with(&format!("/target/go/{name}")), "{line}");

    let scheme = if tls { "https" } else { "http" };
    let urls: Vec<String> = (0..20)
        .map(|i| format!("{scheme}://127.0.0.1:{port}/work/{i}"))
        .collect();
    match &cert {
        Some(cert) => {
            let ca = cert.cert();
            let ca = ca.to_str().expect("a UTF-8 path");
            curl_concurrently_with(&urls, &["--http1.1", "--cacert", ca]);
        }
        None => curl_concurrently(&urls),
    }

    // Per request: curl -> svc-go (server), svc-go -> downstream (client, server),
    // svc-go -> PostgreSQL (client, server).
    let (servers, clients) = exact(&receiver, 60, 60);
    let mut traces: HashMap<String, Vec<ReceivedSpan>> = HashMap::new();
    for span in servers.into_iter().chain(clients) {
        traces.entry(span.trace_id()).or_default().push(span);
    }
    let dump = |t: &[ReceivedSpan]| t.iter().map(|s| format!("  {s}\n")).collect::<String>();
    assert_eq!(
        traces.len(),
        20,
        "20 traces expected:\n{}",
        traces.values().map(|t| dump(t) + "\n").collect::<String>()
    );
    let mut seen = Vec::new();
    for trace in traces.values() {
        let pick = |svc: &str, kind: SpanKind| {
            let v: Vec<&ReceivedSpan> = trace
                .iter()
                .filter(|s| service(s) == svc && s.kind() == kind)
                .collect();
            assert_eq!(v.len(), 1, "one {svc} {kind:?} span in:\n{}", dump(trace));
            v[0].clone()
        };
        assert_eq!(trace.len(), 6, "trace:\n{}", dump(trace));
        let root = pick("curl", SpanKind::Client);
        let served = pick("svc-go", SpanKind::Server);
        assert_eq!(
            served.attr_str("url.scheme").as_deref(),
            Some(scheme),
            "{served}"
        );
        let db = trace
            .iter()
            .find(|s| service(s) == "svc-go" && s.attr_str("db.system.name").is_some())
            .unwrap_or_else(|| panic!("no PostgreSQL call in:\n{}", dump(trace)))
            .clone();
        let call = trace
            .iter()
            .find(|s| {
                service(s) == "svc-go"
                    && s.kind() == SpanKind::Client
                    && s.attr_str("db.system.name").is_none()
            })
            .unwrap_or_else(|| panic!("no HTTP call in:\n{}", dump(trace)))
            .clone();
        let downstream = pick("downstream", SpanKind::Server);
        let postgres = pick("postgres", SpanKind::Server);
        // The exact parent of every span.
        assert_eq!(root.parent_span_id(), None, "root: {root}");
        for (child, parent) in [
            (&served, &root),
            (&call, &served),
            (&db, &served),
            (&downstream, &call),
            (&postgres, &db),
        ] {
            assert_eq!(
                child.parent_span_id(),
                Some(parent.span_id()),
                "parent of {child} should be {parent}; trace:\n{}",
                dump(trace)
            );
        }
        // And every span of the trace is about the same request.
        let i = request_of(&root);
        for s in [&served, &call, &db, &downstream] {
            assert_eq!(request_of(s), i, "{s} in the trace of request {i}");
        }
        seen.push(i.parse::<u32>().expect("request number"));
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..20).collect::<Vec<u32>>());
    // 20 HTTP calls and 20 statements linked through their goroutines, none by thread.
    wait_metric(&health, "socktrace_links_goroutine_links_total", 40);
    assert_eq!(
        metric(&health, "socktrace_links_thread_links_total"),
        Some(0)
    );
    // The completeness figures say the same, per service: every call of svc-go linked, and
    // every trace (rooted at curl) whole once judged (10 s after its last span).
    let per_service = |name: &str, service: &str| {
        format!("socktrace_completeness_{name}_total{{service=\"{service}\"}}")
    };
    for name in ["calls", "calls_linked"] {
        wait_metric(&health, &per_service(name, "svc-go"), 40);
    }
    for name in ["traces", "traces_whole"] {
        wait_metric(&health, &per_service(name, "curl"), 20);
    }
    assert_eq!(metric(&health, &per_service("traces", "svc-go")), Some(0));
}
