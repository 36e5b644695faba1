//! The agent's command line and its answers to user mistakes: one clear line and a non-zero exit,
//! or - for a collector that is down - a warning while it keeps tracing.

use std::{
    process::{Command, Output},
    time::{Duration, Instant},
};

use socktrace_tests::harness::{Agent, PyServer, agent_bin, curl, require_root};

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(agent_bin());
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("OTEL_") || k.starts_with("SOCKTRACE_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running the agent")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn version_and_help_document_every_flag() {
    let v = run(&["--version"], &[]);
    assert!(v.status.success());
    assert_eq!(
        String::from_utf8_lossy(&v.stdout).trim(),
        format!("socktrace {}", env!("CARGO_PKG_VERSION"))
    );
    let h = run(&["--help"], &[]);
    assert!(h.status.success());
    let help = String::from_utf8_lossy(&h.stdout);
    for flag in [
        "--otlp-endpoint",
        "--otlp-protocol",
        "--otlp-headers",
        "--console",
        "--zipkin-endpoint",
        "SOCKTRACE_ZIPKIN_ENDPOINT",
        "OTEL_EXPORTER_ZIPKIN_ENDPOINT",
        "--protocols",
        "--pid",
        "--exe",
        "--port",
        "--capture-bytes",
        "--http-route",
        "--ringbuf-size",
        "--stats-interval",
        "--log-level",
        "--k8s-namespace",
        "--container",
        "--service-name",
        "--k8s ",
        "--kubeconfig",
        "--k8s-node-name",
        "--k8s-cluster-name",
        "--health-listen",
        "--metrics-listen",
        "SOCKTRACE_METRICS_LISTEN",
        "--ui",
        "SOCKTRACE_UI",
        "--no-inject",
        "--instrumented-processes",
        "SOCKTRACE_INSTRUMENTED_PROCESSES",
        "--sampler",
        "OTEL_TRACES_SAMPLER=",
        "--sample-ratio",
        "OTEL_TRACES_SAMPLER_ARG",
        "--slow-threshold",
        "SOCKTRACE_SLOW_THRESHOLD",
        "--sample-wait",
        "SOCKTRACE_SAMPLE_WAIT",
        "--sample-buffer",
        "SOCKTRACE_SAMPLE_BUFFER",
        "parentbased_traceidratio",
        "NODE_NAME",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ] {
        assert!(
            help.contains(flag),
            "--help does not mention {flag}:\n{help}"
        );
    }
}

#[test]
fn unknown_protocol_is_rejected_with_the_valid_names() {
    let o = run(&["--protocols", "http,smtp"], &[]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("invalid value 'smtp'"), "{err}");
    assert!(err.contains("possible values: http"), "{err}");
}

#[test]
fn invalid_sampler_settings_are_rejected_with_the_reason() {
    let o = run(&[], &[("OTEL_TRACES_SAMPLER", "jaeger_remote")]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("invalid value 'jaeger_remote'"), "{err}");
    assert!(err.contains("parentbased_traceidratio"), "{err}");
    let o = run(
        &["--sampler", "traceidratio"],
        &[("OTEL_TRACES_SAMPLER_ARG", "1.5")],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("must be a number from 0 to 1"),
        "{}",
        stderr(&o)
    );
    let o = run(&["--sampler", "priority", "--slow-threshold", "500"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("needs a unit"), "{}", stderr(&o));
    let o = run(&["--sample-buffer", "0"], &[]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn invalid_endpoint_and_protocol_name_their_source() {
    let o = run(&["--otlp-endpoint", "localhost:4317"], &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.starts_with("socktrace: invalid OTLP endpoint \"localhost:4317\" from --otlp-endpoint"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");

    let o = run(&[], &[("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift")]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("\"thrift\" from OTEL_EXPORTER_OTLP_PROTOCOL"),
        "{err}"
    );
    assert!(
        err.contains("grpc") && err.contains("http/protobuf"),
        "{err}"
    );

    let o = run(&["--capture-bytes", "100000"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--capture-bytes"), "{}", stderr(&o));
}

/// The flags' variables are read by the binary: a bad value in one is refused as the flag's
/// would be, and names where it came from.
#[test]
fn flag_variables_are_read() {
    let o = run(&[], &[("SOCKTRACE_PROTOCOLS", "http,smtp")]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("invalid value 'smtp'"), "{err}");

    let o = run(&[], &[("SOCKTRACE_OTLP_ENDPOINT", "localhost:4317")]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.starts_with(
            "socktrace: invalid OTLP endpoint \"localhost:4317\" from --otlp-endpoint (or SOCKTRACE_OTLP_ENDPOINT)"
        ),
        "{err}"
    );
    // The flag's variable wins over the standard ones, which then are not even looked at.
    let o = run(
        &[],
        &[
            ("SOCKTRACE_OTLP_PROTOCOL", "thrift"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("\"thrift\" from --otlp-protocol (or SOCKTRACE_OTLP_PROTOCOL)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn without_privileges_it_names_the_missing_capability() {
    require_root();
    let o = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(agent_bin())
        .output()
        .expect("setpriv (util-linux) must be installed");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("missing CAP_BPF"), "{err}");
    assert!(err.contains("must run as root"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
}

#[test]
fn an_unreachable_collector_is_reported_and_tracing_goes_on() {
    let server = PyServer::start(&[("OTEL_SERVICE_NAME", "py-server")]);
    let port = server.port.to_string();
    // Port 1 on loopback: nothing listens, every connection is refused at once.
    let mut agent = Agent::start(&[
        "--otlp-endpoint",
        "http://127.0.0.1:1",
        "--console",
        "--port",
        &port,
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !agent.stdout().contains("GET /hello") {
        curl(&[&server.url("/hello")]);
        assert!(
            Instant::now() < deadline,
            "no span printed:\n{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !agent.stderr().contains("will retry") {
        assert!(
            Instant::now() < deadline,
            "no export warning:\n{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        agent.stderr().contains("http://127.0.0.1:1/v1/traces"),
        "{}",
        agent.stderr()
    );
    assert_eq!(agent.stop(), Some(0));
}
