//! `--health-listen`: the endpoint Kubernetes probes, served by the real agent. Its own sockets
//! are never traced, even when every process is.

use std::{
    net::TcpListener,
    process::Command,
    time::{Duration, Instant},
};

use socktrace_tests::harness::{Agent, PyServer, agent_bin, curl, require_root};

/// A port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding an ephemeral port")
        .port()
}

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
        agent
            .stderr()
            .contains(&format!("; health: http://{addr}/healthz and /readyz")),
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
        get("GET", &format!("{base}/metrics")),
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
