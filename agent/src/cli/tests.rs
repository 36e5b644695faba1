use clap::CommandFactory;

use std::time::Duration;

use super::{Cli, parse_duration, parse_ratio};

/// Every argument has its environment variable (clap's own `--help` and `--version` aside), so
/// a DaemonSet or a systemd unit can configure everything without a command line.
#[test]
fn every_flag_has_an_environment_variable() {
    let cmd = Cli::command();
    let mut missing = Vec::new();
    let mut seen = Vec::new();
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if id == "help" || id == "version" {
            continue;
        }
        match arg.get_env() {
            Some(var) => seen.push((id.to_owned(), var.to_string_lossy().into_owned())),
            None => missing.push(id.to_owned()),
        }
    }
    assert!(
        missing.is_empty(),
        "flags without an env variable: {missing:?}"
    );
    // A standard OpenTelemetry variable where one means the same as the flag, else ours with
    // its prefix; the only other one is the downward-API convention of DaemonSets.
    for (id, var) in &seen {
        assert!(
            var.starts_with("SOCKTRACE_") || var.starts_with("OTEL_") || var == "NODE_NAME",
            "--{id} reads {var}"
        );
    }
    let var_of = |id: &str| seen.iter().find(|(i, _)| i == id).map(|(_, v)| v.as_str());
    assert_eq!(var_of("otlp_endpoint"), Some("SOCKTRACE_OTLP_ENDPOINT"));
    assert_eq!(var_of("log_level"), Some("SOCKTRACE_LOG"));
    assert_eq!(var_of("k8s_node_name"), Some("NODE_NAME"));
    // No two flags share a variable.
    let mut vars: Vec<&str> = seen.iter().map(|(_, v)| v.as_str()).collect();
    vars.sort_unstable();
    let before = vars.len();
    vars.dedup();
    assert_eq!(vars.len(), before, "a variable is used twice: {seen:?}");
}

/// `--help` names the variable of each flag (clap prints `[env: NAME=]`).
#[test]
fn help_shows_the_variables() {
    let help = Cli::command().render_long_help().to_string();
    for var in [
        "SOCKTRACE_PROTOCOLS",
        "SOCKTRACE_PORT",
        "SOCKTRACE_CONSOLE",
        "SOCKTRACE_NO_INJECT",
        "SOCKTRACE_K8S_CLUSTER_NAME",
        "SOCKTRACE_UI",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "SOCKTRACE_ZIPKIN_ENDPOINT",
        "OTEL_TRACES_EXPORTER=zipkin",
        "OTEL_EXPORTER_ZIPKIN_ENDPOINT",
    ] {
        assert!(help.contains(var), "{var} missing from --help");
    }
}

#[test]
fn durations_need_a_unit() {
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
    assert_eq!(parse_duration(" 3 s"), Ok(Duration::from_secs(3)));
    for bad in ["500", "ms", "1h", "-1s", "1e3ms", ""] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
    assert_eq!(parse_ratio("0.25"), Ok(0.25));
    assert!(parse_ratio("1.01").is_err());
    assert!(parse_ratio("NaN").is_err());
}

/// `--ui` alone serves the viewer on loopback; an address may follow; without it, no viewer.
#[test]
fn ui_takes_an_optional_address() {
    use clap::Parser as _;
    let ui = |args: &[&str]| {
        Cli::try_parse_from(std::iter::once("socktrace").chain(args.iter().copied()))
            .map(|c| c.ui.map(|a| a.to_string()))
            .map_err(|e| e.to_string())
    };
    if std::env::var_os("SOCKTRACE_UI").is_none() {
        assert_eq!(ui(&[]), Ok(None));
    }
    assert_eq!(ui(&["--ui"]), Ok(Some(super::DEFAULT_UI.to_owned())));
    assert_eq!(
        ui(&["--ui", "--no-inject"]),
        Ok(Some("127.0.0.1:9412".to_owned()))
    );
    assert_eq!(
        ui(&["--ui", "0.0.0.0:8080"]),
        Ok(Some("0.0.0.0:8080".to_owned()))
    );
    assert_eq!(ui(&["--ui=[::1]:9000"]), Ok(Some("[::1]:9000".to_owned())));
    assert!(ui(&["--ui", "nowhere"]).is_err());
}
