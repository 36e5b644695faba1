//! Processes that live a few milliseconds (`curl`, `psql`) are gone before the agent reads
//! their `/proc`: their resource comes from what the kernel saw at their exec, so they keep the
//! `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` they were started with.

use std::process::Command;

use socktrace_tests::{
    harness::{Agent, PyServer, exact, require_root},
    otlp_receiver::{OtlpReceiver, Protocol, ReceivedSpan},
    pg::PgServer,
};

/// Runs each command to completion; returns their pids, sorted.
fn run_all(commands: impl IntoIterator<Item = Command>) -> Vec<i64> {
    let mut pids: Vec<i64> = commands
        .into_iter()
        .map(|mut c| {
            let mut child = c.spawn().expect("spawn");
            let pid = i64::from(child.id());
            assert!(child.wait().expect("wait").success(), "{c:?} failed");
            pid
        })
        .collect();
    pids.sort_unstable();
    pids
}

fn pids_of(spans: &[ReceivedSpan]) -> Vec<i64> {
    let mut pids: Vec<i64> = spans
        .iter()
        .map(|s| s.resource_int("process.pid").expect("process.pid"))
        .collect();
    pids.sort_unstable();
    pids
}

#[test]
fn curl_keeps_the_service_name_it_was_started_with() {
    require_root();
    let receiver = OtlpReceiver::start_blocking(Protocol::HttpProtobuf);
    let server = PyServer::start(&[("OTEL_SERVICE_NAME", "py-server")]);
    let endpoint = receiver.endpoint();
    let port = server.port.to_string();
    let _agent = Agent::start(&["--otlp-endpoint", &endpoint, "--port", &port]);

    let url = server.url("/short");
    let named = run_all((0..4).map(|i| {
        let mut c = Command::new("curl");
        c.args(["-sS", "-o", "/dev/null", &url])
            .env("OTEL_SERVICE_NAME", format!("job-{i}"))
            .env(
                "OTEL_RESOURCE_ATTRIBUTES",
                format!("deployment.environment=ci,run=r{i}"),
            );
        c
    }));
    // Without the variables: named after the executable, with no attribute of the others.
    let plain = run_all([{
        let mut c = Command::new("curl");
        c.args(["-sS", "-o", "/dev/null", &url])
            .env_remove("OTEL_SERVICE_NAME")
            .env_remove("OTEL_RESOURCE_ATTRIBUTES");
        c
    }]);

    let (servers, clients) = exact(&receiver, 5, 5);
    for s in &servers {
        assert_eq!(s.resource_str("service.name"), Some("py-server"), "{s}");
    }
    let mut all = named.clone();
    all.extend(&plain);
    all.sort_unstable();
    assert_eq!(pids_of(&clients), all, "one client span per curl");
    for c in &clients {
        let pid = c.resource_int("process.pid").expect("pid");
        if plain.contains(&pid) {
            assert_eq!(c.resource_str("service.name"), Some("curl"), "{c}");
            assert_eq!(c.resource_str("deployment.environment"), None, "{c}");
            continue;
        }
        // Started in order: the i-th pid got job-i (pids grow here, without wrap-around).
        let i = named.iter().position(|p| *p == pid).expect("a named curl");
        assert_eq!(
            c.resource_str("service.name"),
            Some(format!("job-{i}").as_str()),
            "{c}"
        );
        assert_eq!(c.resource_str("deployment.environment"), Some("ci"), "{c}");
        assert_eq!(c.resource_str("run"), Some(format!("r{i}").as_str()), "{c}");
        assert_eq!(
            c.resource_str("process.executable.name"),
            Some("curl"),
            "{c}"
        );
    }
}

#[test]
fn psql_keeps_the_service_name_it_was_started_with() {
    require_root();
    let receiver = OtlpReceiver::start_blocking(Protocol::HttpProtobuf);
    let pg = PgServer::start("shortlived");
    let endpoint = receiver.endpoint();
    let port = pg.port.to_string();
    let _agent = Agent::start(&[
        "--otlp-endpoint",
        &endpoint,
        "--protocols",
        "postgres",
        "--port",
        &port,
    ]);
    let pids = run_all((0..3).map(|i| {
        let mut c = Command::new("psql");
        c.args(["-X", "-q", "-h", "127.0.0.1", "-U", "postgres", "-p", &port])
            .args(["-d", "shortlived", "-c"])
            .arg(format!("SELECT {i}"))
            .env("OTEL_SERVICE_NAME", "report-job")
            .stdout(std::process::Stdio::null());
        c
    }));
    let (servers, clients) = exact(&receiver, 3, 3);
    assert_eq!(pids_of(&clients), pids, "one client span per psql");
    for c in &clients {
        assert_eq!(c.resource_str("service.name"), Some("report-job"), "{c}");
        assert_eq!(
            c.resource_str("process.executable.name"),
            Some("psql"),
            "{c}"
        );
        assert_eq!(
            c.attr_str("db.operation.name").as_deref(),
            Some("SELECT"),
            "{c}"
        );
    }
    for s in &servers {
        assert_eq!(
            s.resource_str("process.executable.name"),
            Some("postgres"),
            "{s}"
        );
    }
}
