//! `socktrace` binary: parse flags, check privileges, load probes, run until SIGINT/SIGTERM.

use std::{
    process::ExitCode,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use anyhow::Context as _;
use clap::Parser as _;
use socktrace::{
    capture::{
        caps, inject,
        probes::{self, InjectFlags, ProbeConfig, Probes},
        tls::{ScanReport, TlsAttacher},
    },
    cli::{Cli, QueryTextMode, RouteMode},
    conn::ConnConfig,
    export::{self, ExportCli, MetricsSource},
    metrics::{Metrics, prometheus},
    pipeline::{self, Pipeline},
    protocol::{Enabled, SpanConfig, http1::Http1},
    resource::{
        k8s,
        process::{ProcRoot, ResourceCache},
        select::{ResourceFilter, Selector},
    },
    sample::{Sampler, SamplerConfig, SamplerSettings},
    telemetry::{
        health::{self, Health, Routes},
        memory,
    },
    trace::{
        db::{DbSpanConfig, QueryText},
        http::HttpSpanConfig,
        instrumented::InstrumentedMode,
        rpc::RpcConventions,
        span::KeyValue,
    },
    ui::{self, Ui},
};

/// See `socktrace::telemetry::memory`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The log filter: `--log-level` plus, unless it names kube itself, quiet for kube-rs's own
/// per-request error lines (every retry of an unreachable API server would log one; the watcher
/// reports an outage once, with its cause).
fn log_filter(level: &str) -> String {
    if level.contains("kube") {
        level.to_owned()
    } else {
        format!("{level},kube_client::client::builder=off,kube_runtime::watcher=error")
    }
}

/// The sampler and its settings, for the start-up line.
fn describe_sampling(cli: &Cli) -> String {
    use socktrace::sample::{DEFAULT_PRIORITY_RATIO, SamplerName};
    let ratio = |default: f64| cli.sample_ratio.unwrap_or(default);
    match cli.sampler {
        SamplerName::TraceIdRatio | SamplerName::ParentBasedTraceIdRatio => {
            format!("{} {}", cli.sampler.name(), ratio(1.0))
        }
        SamplerName::Priority => format!(
            "priority (errors, spans over {:?}, {} of the rest; decided {:?} after a trace's last span, at most {} spans waiting)",
            cli.slow_threshold,
            ratio(DEFAULT_PRIORITY_RATIO),
            cli.sample_wait,
            cli.sample_buffer
        ),
        name => name.name().to_owned(),
    }
}

fn main() -> ExitCode {
    memory::tune_allocator();
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(log_filter(&cli.log_level))
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

fn log_tls_scan(report: &ScanReport) {
    for path in &report.attached {
        tracing::info!("TLS: attached to {}", path.display());
    }
    for path in &report.detached {
        tracing::info!(
            "TLS: detached from {} (its processes exited)",
            path.display()
        );
    }
    for (path, why) in &report.failed {
        tracing::warn!("TLS: cannot attach to {}: {why}", path.display());
    }
    for path in &report.stripped {
        tracing::warn!(
            "TLS: {} is a Go program using crypto/tls without a symbol table (stripped, e.g. -ldflags=-s): its TLS plaintext cannot be read; its connections are counted as tls_unreadable",
            path.display()
        );
    }
    for (path, functions) in &report.single_stepped {
        tracing::warn!(
            "TLS: in {}, {} can only be probed at an instruction the kernel single-steps: each call costs the process a second trap (several microseconds on virtual machines)",
            path.display(),
            functions.join(", ")
        );
    }
    for path in &report.goroutines {
        tracing::info!("Go: following the goroutines of {}", path.display());
    }
    for path in &report.go_unfollowed {
        tracing::warn!(
            "Go: {} is a Go program without the symbols needed to follow its goroutines (stripped, e.g. -ldflags=-s): the calls it makes while serving requests are linked by thread, which can give them a wrong parent",
            path.display()
        );
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let env = |k: &str| std::env::var(k).ok();
    let sampler = SamplerConfig::from_settings(&SamplerSettings {
        name: cli.sampler,
        ratio: cli.sample_ratio,
        slow_ns: cli.slow_threshold.as_nanos().try_into().unwrap_or(u64::MAX),
        wait_ns: cli.sample_wait.as_nanos().try_into().unwrap_or(u64::MAX),
        max_spans: cli.sample_buffer as usize,
    })
    .map_err(anyhow::Error::msg)?;
    let sampling = describe_sampling(&cli);
    let export_config = export::resolve_config(
        &ExportCli {
            endpoint: cli.otlp_endpoint.clone(),
            protocol: cli.otlp_protocol.clone(),
            headers: cli.otlp_headers.clone(),
            console: cli.console,
            zipkin_endpoint: cli.zipkin_endpoint.clone(),
        },
        &env,
    )?;
    let caps = caps::check(caps::CapSet::effective(), &caps::tracefs_state());
    if let Some(fatal) = caps.fatal {
        anyhow::bail!(fatal);
    }
    for warning in &caps.warnings {
        eprintln!("socktrace: warning: {warning}");
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("socktrace-export")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let health = Health::new();
    let mut health_port = None;
    if let Some(addr) = cli.health_listen {
        let listener = {
            let _guard = runtime.enter();
            health::bind(addr).with_context(|| format!("cannot serve --health-listen on {addr}"))?
        };
        health_port = Some(listener.local_addr().map_or(addr.port(), |a| a.port()));
        runtime.spawn(health::serve(listener, health.clone()));
    }
    // The span metrics: RED histograms and the service graph, on `/metrics` and over OTLP.
    let metrics = Metrics::default();
    health.set_extra_metrics(Arc::new({
        let metrics = metrics.clone();
        move || {
            metrics
                .collect(false)
                .map(|c| prometheus::render(&c))
                .unwrap_or_default()
        }
    }));
    let mut metrics_port = None;
    if let Some(addr) = cli.metrics_listen {
        let listener = {
            let _guard = runtime.enter();
            health::bind(addr)
                .with_context(|| format!("cannot serve --metrics-listen on {addr}"))?
        };
        metrics_port = Some(listener.local_addr().map_or(addr.port(), |a| a.port()));
        runtime.spawn(health::serve_routes(
            listener,
            health.clone(),
            Routes::MetricsOnly,
        ));
    }
    // The local viewer: its store is fed by the capture thread, its page served here.
    let viewer = cli.ui.map(|_| Ui::default());
    let mut ui_addr = None;
    if let (Some(addr), Some(viewer)) = (cli.ui, &viewer) {
        let listener = {
            let _guard = runtime.enter();
            health::bind(addr).with_context(|| format!("cannot serve --ui on {addr}"))?
        };
        ui_addr = Some(listener.local_addr().unwrap_or(addr));
        let viewer = viewer.clone();
        runtime.spawn(health::serve_with(listener, "viewer", move |head| {
            ui::server::respond(head, &viewer)
        }));
    }
    let metrics_otlp = export_config
        .metrics
        .as_ref()
        .map(|m| format!("; metrics: OTLP {} to {}", m.protocol, m.endpoint));
    let mut exporters = Vec::new();
    if let Some(o) = &export_config.otlp {
        exporters.push(format!("OTLP {} to {}", o.protocol, o.endpoint));
    }
    if let Some(z) = &export_config.zipkin {
        exporters.push(format!("Zipkin v2 JSON to {}", z.endpoint));
    }
    if export_config.console {
        exporters.push(if exporters.is_empty() {
            "console (no OTLP endpoint set)".to_owned()
        } else {
            "console".to_owned()
        });
    }
    let exporter_desc = exporters.join(" + ");
    let export_metrics = export_config.metrics.is_some();
    let exporter = {
        let _guard = runtime.enter();
        let source = MetricsSource {
            metrics: metrics.clone(),
            telemetry: health.metrics().clone(),
            agent_resource: vec![
                KeyValue::new("service.name", "socktrace"),
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
                KeyValue::new("host.name", k8s::host_name()),
                KeyValue::new("process.pid", i64::from(std::process::id())),
            ],
        };
        export::start_with_metrics(export_config, Some(source)).context("starting the exporter")?
    };
    // Kubernetes pod metadata (a watch task on the runtime) and the user-space resource filter.
    let k8s = k8s::start(
        &k8s::K8sSettings {
            mode: cli.k8s_mode,
            kubeconfig: cli.kubeconfig.clone(),
            node_name: cli.k8s_node_name.clone(),
            cluster_name: cli.k8s_cluster_name.clone(),
        },
        &k8s::host_name(),
        &env,
        runtime.handle(),
    )
    .context("Kubernetes metadata")?;
    let resource_filter =
        ResourceFilter::new(&cli.k8s_namespace, &cli.container, &cli.service_name);
    let resources = ResourceCache::new(ProcRoot::default())
        .with_k8s(k8s)
        .with_filter(resource_filter.clone());

    let enabled = Enabled::from_names(&cli.protocols).map_err(anyhow::Error::msg)?;
    // traceparent injection: only where HTTP/1 client spans are made to carry the same ids.
    let mut inject_state = "off".to_owned();
    let inject_root = if cli.no_inject {
        inject_state = "off (--no-inject)".to_owned();
        None
    } else if !enabled.any_of(&Http1) {
        inject_state = "off (--protocols without http)".to_owned();
        None
    } else {
        inject::precheck(caps::CapSet::effective())
            .map_err(|e| eprintln!("socktrace: warning: {}", e.warning()))
            .ok()
    };
    let selector = Selector::new(cli.pid.clone(), cli.exe.clone());
    let loading = std::time::Instant::now();
    let mut probes = Probes::load(&ProbeConfig {
        capture_bytes: cli.capture_bytes,
        ringbuf_bytes: cli.ringbuf_size,
        filter_pids: selector.is_filtering(),
        wakeup_bytes: probes::WAKEUP_BYTES,
        inject: inject_root.is_some(),
        tls: cli.tls,
        goroutines: cli.follow_goroutines,
        inject_flags: {
            let (threshold, parent_based) = sampler.injected_flags();
            InjectFlags {
                threshold,
                parent_based,
            }
        },
    })?;
    if let Err(why) = probes.goroutines()
        && cli.follow_goroutines
    {
        eprintln!(
            "socktrace: warning: goroutines are not followed: {why}; client calls of Go programs are linked by thread, which can give them a wrong parent"
        );
    }
    let mut tls = (probes.tls().is_ok() || probes.goroutines().is_ok()).then(|| {
        let mut attacher = TlsAttacher::new(probes.tls().is_ok(), probes.goroutines().is_ok());
        log_tls_scan(&probes.scan_tls(&mut attacher));
        attacher
    });
    let tls_state = match probes.tls() {
        Ok(()) => {
            let attacher = tls.as_ref().expect("created when TLS is loaded");
            match attacher.attached().as_slice() {
                [] => "on (no OpenSSL found yet)".to_owned(),
                paths => format!(
                    "on ({})",
                    paths
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
        Err(why) => {
            if cli.tls {
                eprintln!("socktrace: warning: TLS capture is off: {why}");
            }
            format!("off ({why})")
        }
    };
    // Once per missing feature: what is off, and why.
    let mut notes: Vec<(&str, Vec<&str>)> = Vec::new();
    for program in probes.fallbacks() {
        let note = probes::fallback_note(program);
        match notes.iter_mut().find(|(n, _)| *n == note) {
            Some((_, programs)) => programs.push(program),
            None => notes.push((note, vec![program])),
        }
    }
    for (note, programs) in notes {
        eprintln!(
            "socktrace: degraded: {note} (fallback programs: {})",
            programs.join(", ")
        );
    }
    let ui_port = ui_addr.map(|a| a.port());
    for port in health_port.iter().chain(&metrics_port).chain(&ui_port) {
        // Probes of the health endpoint, scrapes and the viewer's page are the agent's own
        // traffic.
        probes.add_self_port(*port)?;
    }
    let reader = probes.take_events()?;
    let kernel_stats = probes.take_stats()?;
    let sock_capture = probes.take_sock_capture()?;
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

    let mut inject_release = None;
    if let Some(root) = &inject_root {
        match probes.attach_injection(root) {
            Ok(()) => {
                inject_state = format!("on (sock_ops on {})", root.name);
                match probes.take_inject_release() {
                    Ok(release) => inject_release = Some(release),
                    Err(e) => eprintln!(
                        "socktrace: warning: client sockets stay in the injection's socket map for their lifetime: {e}"
                    ),
                }
            }
            Err(e) => eprintln!("socktrace: warning: {}", e.warning()),
        }
    }
    let loaded_in = loading.elapsed();

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
    if resource_filter.is_active() {
        selection.push(format!(
            "resources matching namespaces {:?} containers {:?} services {:?}",
            cli.k8s_namespace, cli.container, cli.service_name
        ));
    }
    memory::release_freed();
    eprintln!(
        "socktrace {}: {} tracepoints attached (programs verified and attached in {:.2} s); protocols: {}; tracing {}; capture {} bytes per I/O; traceparent injection: {}; processes that trace themselves: {}; TLS: {}; sampling: {}; exporter: {}{}{}{}{}",
        env!("CARGO_PKG_VERSION"),
        probes.attached(),
        loaded_in.as_secs_f64(),
        enabled.names().join(","),
        selection.join(", "),
        cli.capture_bytes,
        inject_state,
        match cli.instrumented_processes {
            InstrumentedMode::Skip => "skipped",
            InstrumentedMode::Link => "linked",
        },
        tls_state,
        sampling,
        exporter_desc,
        cli.health_listen
            .map(|a| format!("; health: http://{a}/healthz, /readyz and /metrics"))
            .unwrap_or_default(),
        metrics_otlp.unwrap_or_default(),
        cli.metrics_listen
            .map(|a| format!("; Prometheus: http://{a}/metrics"))
            .unwrap_or_default(),
        ui_addr
            .map(|a| format!("; viewer: http://{a}/"))
            .unwrap_or_default(),
    );

    let pipeline = Pipeline::new(
        ConnConfig {
            enabled: enabled.clone(),
            ports: cli.port.clone(),
            ..ConnConfig::default()
        },
        SpanConfig {
            enabled,
            http: HttpSpanConfig {
                route_heuristic: cli.http_route == RouteMode::Heuristic,
            },
            db: DbSpanConfig {
                query_text: match cli.db_query_text {
                    QueryTextMode::Sanitized => QueryText::Sanitized,
                    QueryTextMode::Raw => QueryText::Raw,
                    QueryTextMode::Off => QueryText::Off,
                },
            },
            rpc: RpcConventions::from_opt_in(
                std::env::var("OTEL_SEMCONV_STABILITY_OPT_IN")
                    .ok()
                    .as_deref(),
            ),
            http_stats: Default::default(),
        },
        exporter.clone(),
        selector,
        pid_filter,
    );
    let mut pipeline = pipeline
        .with_instrumented(cli.instrumented_processes)
        .with_resources(resources)
        .with_sampler(Sampler::new(sampler));
    // Spans are measured when someone reads the metrics.
    if export_metrics || metrics_port.is_some() || health_port.is_some() {
        pipeline = pipeline.with_metrics(metrics);
    }
    if let Some(viewer) = &viewer {
        pipeline = pipeline.with_ui(viewer);
    }
    pipeline.sock_capture = Some(sock_capture);
    // New programs are looked at as they start, not only at the next scan.
    let (exec_tx, mut exec_rx) = tokio::sync::mpsc::channel::<u32>(1024);
    if tls.is_some() {
        pipeline = pipeline.with_exec_watch(exec_tx);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stats_interval = (cli.stats_interval > 0).then(|| Duration::from_secs(cli.stats_interval));
    let capture = {
        let stop = stop.clone();
        let health = health.clone();
        std::thread::Builder::new()
            .name("socktrace-capture".into())
            .spawn(move || {
                // Counters are published only when someone reads them: `/metrics` or OTLP.
                let published = (health_port.is_some() || metrics_port.is_some() || export_metrics)
                    .then(|| health.metrics().clone());
                pipeline::run(
                    reader,
                    pipeline,
                    kernel_stats,
                    stop,
                    stats_interval,
                    health,
                    published,
                )
            })
            .context("starting the capture thread")?
    };
    health.set_ready();

    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let mut rescan = tokio::time::interval(Duration::from_secs(cli.tls_scan_interval));
        let mut release = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = release.tick(), if inject_release.is_some() => {
                    if let Some(r) = inject_release.as_mut() {
                        r.drain();
                    }
                }
                _ = rescan.tick() => {
                    if let Some(attacher) = tls.as_mut() {
                        log_tls_scan(&probes.scan_tls(attacher));
                    }
                }
                Some(pid) = exec_rx.recv() => {
                    let mut pids = vec![pid];
                    while let Ok(pid) = exec_rx.try_recv() {
                        pids.push(pid);
                    }
                    if let Some(attacher) = tls.as_mut() {
                        log_tls_scan(&probes.scan_tls_pids(attacher, &pids));
                    }
                }
            }
        }
        anyhow::Ok(())
    })?;
    eprintln!("socktrace: stopping: flushing spans and detaching probes");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let stopped = capture.join();
    if stopped.is_err() {
        eprintln!("socktrace: the capture thread panicked");
    }
    runtime.block_on(exporter.shutdown());
    // After the exporter's flush, so that the export counters are final.
    if let Ok(stopped) = stopped {
        stopped.report();
    }
    drop(probes);
    Ok(())
}
