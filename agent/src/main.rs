//! `socktrace` binary: parse flags, check privileges, load probes, run until SIGINT/SIGTERM.

use std::{
    process::ExitCode,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use anyhow::Context as _;
use clap::Parser as _;
use socktrace::{
    cli::{Cli, ProtocolName, QueryTextMode, RouteMode},
    conn::{ConnConfig, Protocols},
    export::{self, ExportCli},
    pipeline::{self, Pipeline},
    probes::{ProbeConfig, Probes},
    select::Selector,
    trace::{
        db::{DbSpanConfig, QueryText},
        http::HttpSpanConfig,
    },
};

/// Effective capabilities of this process, from `/proc/self/status`.
fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Names the first missing capability needed to load and attach the probes, if any.
fn missing_capability() -> Option<&'static str> {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let caps = effective_caps();
    let has = |c: u32| caps & (1 << c) != 0;
    if has(CAP_SYS_ADMIN) {
        return None;
    }
    if !has(CAP_BPF) {
        return Some("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        return Some("CAP_PERFMON");
    }
    None
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("socktrace: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let env = |k: &str| std::env::var(k).ok();
    let export_config = export::resolve_config(
        &ExportCli {
            endpoint: cli.otlp_endpoint.clone(),
            protocol: cli.otlp_protocol.clone(),
            headers: cli.otlp_headers.clone(),
            console: cli.console,
        },
        &env,
    )?;
    if let Some(cap) = missing_capability() {
        anyhow::bail!(
            "missing {cap}: socktrace loads eBPF programs and must run as root (or with CAP_BPF and CAP_PERFMON)"
        );
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("socktrace-export")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let exporter_desc = match &export_config.otlp {
        Some(o) => format!(
            "OTLP {} to {}{}",
            o.protocol,
            o.endpoint,
            if export_config.console {
                " + console"
            } else {
                ""
            }
        ),
        None => "console (no OTLP endpoint set)".to_owned(),
    };
    let exporter = {
        let _guard = runtime.enter();
        export::start(export_config).context("starting the exporter")?
    };

    let selector = Selector::new(cli.pid.clone(), cli.exe.clone());
    let mut probes = Probes::load(&ProbeConfig {
        capture_bytes: cli.capture_bytes,
        ringbuf_bytes: cli.ringbuf_size,
        filter_pids: selector.is_filtering(),
        wakeup_bytes: 64 * 1024,
    })?;
    if !probes.fallbacks().is_empty() {
        eprintln!(
            "socktrace: kernel without BTF task helpers: socket calls already in progress at start are not captured ({})",
            probes.fallbacks().join(", ")
        );
    }
    let reader = probes.take_events()?;
    let kernel_stats = probes.take_stats()?;
    let pid_filter = if selector.is_filtering() {
        let mut filter = probes.take_pid_filter()?;
        for exe in &cli.exe {
            filter
                .add_exe(exe)
                .with_context(|| format!("adding --exe {exe} to the kernel filter"))?;
        }
        for pid in selector.initial_pids() {
            filter
                .add(pid)
                .with_context(|| format!("adding pid {pid} to the kernel filter"))?;
        }
        Some(filter)
    } else {
        None
    };

    let protocols = Protocols {
        http: cli.protocols.contains(&ProtocolName::Http),
        postgres: cli.protocols.contains(&ProtocolName::Postgres),
    };
    let mut selection = Vec::new();
    if !cli.pid.is_empty() {
        selection.push(format!("pids {:?}", cli.pid));
    }
    if !cli.exe.is_empty() {
        selection.push(format!("executables {:?}", cli.exe));
    }
    if selection.is_empty() {
        selection.push("all processes except socktrace".to_owned());
    }
    if !cli.port.is_empty() {
        selection.push(format!("ports {:?}", cli.port));
    }
    eprintln!(
        "socktrace {}: {} tracepoints attached; protocols: {}; tracing {}; capture {} bytes per I/O; exporter: {}",
        env!("CARGO_PKG_VERSION"),
        probes.attached(),
        cli.protocols
            .iter()
            .map(|p| format!("{p:?}").to_lowercase())
            .collect::<Vec<_>>()
            .join(","),
        selection.join(", "),
        cli.capture_bytes,
        exporter_desc,
    );

    let pipeline = Pipeline::new(
        ConnConfig {
            protocols,
            ports: cli.port.clone(),
            ..ConnConfig::default()
        },
        HttpSpanConfig {
            route_heuristic: cli.http_route == RouteMode::Heuristic,
        },
        DbSpanConfig {
            query_text: match cli.db_query_text {
                QueryTextMode::Sanitized => QueryText::Sanitized,
                QueryTextMode::Raw => QueryText::Raw,
                QueryTextMode::Off => QueryText::Off,
            },
        },
        exporter.clone(),
        selector,
        pid_filter,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let stats_interval = (cli.stats_interval > 0).then(|| Duration::from_secs(cli.stats_interval));
    let capture = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("socktrace-capture".into())
            .spawn(move || pipeline::run(reader, pipeline, kernel_stats, stop, stats_interval))
            .context("starting the capture thread")?
    };

    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        anyhow::Ok(())
    })?;
    eprintln!("socktrace: stopping: flushing spans and detaching probes");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if capture.join().is_err() {
        eprintln!("socktrace: the capture thread panicked");
    }
    runtime.block_on(exporter.shutdown());
    drop(probes);
    Ok(())
}
