//! `--health-listen`: the endpoint Kubernetes probes, served by the real agent. Its own sockets
//! are never traced, even when every process is.

use std::{
    net::TcpListener,
    process::Command,
    time::{Duration, Instant},
};

use socktrace_tests::harness::{Agent, PyServer, agent_bin, curl, free_port, require_root};

/// Status code and body of one request.
fn get(method: &str, url: &str) -> (u16, String) {
    let out = curl(&["-X", method, "-w", "\n%{http_code}", url]);
    let (body, code) = out.rsplit_once('\n').expect("status code line");
    (code.parse().expect("status code"), body.to_owned())
}

#[test]
fn probes_answer_once_attached_and_are_never_traced() {
    let server = PyServer::start(&[("OTEL_SERVICE_NAME", "py-server")]);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // No selection: every process is traced, curl talking to the agent included - if it were.
    let mut agent = Agent::start(&["--health-listen", &addr]);
    assert!(
        agent.stderr().contains(&format!(
            "; health: http://{addr}/healthz, /readyz and /metrics"
        )),
        "summary line names the endpoint:\n{}",
        agent.stderr()
    );

    let base = format!("http://{addr}");
    assert_eq!(
        get("GET", &format!("{base}/readyz")),
        (200, "ready\n".into())
    );
    assert_eq!(get("GET", &format!("{base}/healthz")), (200, "ok\n".into()));
    assert_eq!(
        get("GET", &format!("{base}/stats")),
        (404, "not found\n".into())
    );
    assert_eq!(get("POST", &format!("{base}/healthz")).0, 405);
    // Still alive well after start: the capture loop keeps beating.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(get("GET", &format!("{base}/healthz")).0, 200);

    // A traced request after the probes: once its span is printed, the probes' would have been.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !agent.stdout().contains("GET /after-probes") {
        curl(&[&server.url("/after-probes")]);
        assert!(
            Instant::now() < deadline,
            "no span for the traced server:\n{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // The counters are published each second: the span just made is counted.
    let metric = |text: &str, name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let (code, body) = get("GET", &format!("{base}/metrics"));
        assert_eq!(code, 200, "{body}");
        if metric(&body, "socktrace_pipeline_spans_total").is_some_and(|n| n >= 1) {
            break body;
        }
        assert!(Instant::now() < deadline, "spans never counted:\n{body}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        metrics.contains("# HELP socktrace_conns_opened_total Connections the table started tracking.\n# TYPE socktrace_conns_opened_total counter\n"),
        "{metrics}"
    );
    assert!(
        metric(&metrics, "socktrace_kernel_events_sent_total").is_some_and(|n| n > 0),
        "{metrics}"
    );
    assert!(
        metric(&metrics, "socktrace_conns_live").is_some(),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE socktrace_conns_live gauge\n"),
        "{metrics}"
    );
    // Every registered protocol reports its parser counters.
    for name in [
        "socktrace_http1_resyncs_total",
        "socktrace_http2_frames_total",
        "socktrace_postgres_resyncs_total",
        "socktrace_redis_resyncs_total",
    ] {
        assert!(
            metric(&metrics, name).is_some(),
            "{name} missing:\n{metrics}"
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let stdout = agent.stdout();
    assert!(
        !stdout.contains("/healthz") && !stdout.contains("/readyz") && !stdout.contains("/metrics"),
        "the agent traced its own health endpoint:\n{stdout}"
    );
    assert_eq!(agent.stop(), Some(0), "{}", agent.stderr());
}

#[test]
fn an_address_in_use_is_one_clear_line() {
    require_root();
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let o = Command::new(agent_bin())
        .args(["--health-listen", &addr])
        .output()
        .expect("running the agent");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with(&format!(
            "socktrace: cannot serve --health-listen on {addr}: "
        )),
        "{err}"
    );
    assert!(err.contains("in use"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
}

#[test]
fn a_malformed_address_is_rejected_by_the_command_line() {
    let o = Command::new(agent_bin())
        .args(["--health-listen", "8686"])
        .output()
        .expect("running the agent");
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--health-listen"), "{err}");
}
