//! The capture thread: ring buffer -> connections -> parsers -> spans -> exporter.
//!
//! One thread does all of it, so connection state needs no locks and events are handled in the
//! order the kernel reserved them. It never waits on the exporter: spans are handed over with a
//! non-blocking submit, and a full queue drops (and counts) rather than stalls capture.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use socktrace_common::stats as kstats;

use crate::{
    capture::probes::{Event, EventReader, KernelStats, PidFilter, SockCapture, decode},
    conn::{ConnConfig, ConnExchange, ConnTable, ProcfsResolver, Role, resolve::comm_of},
    export::ExporterHandle,
    metrics::Metrics,
    protocol::SpanConfig,
    resource::{
        process::{ProcRoot, ResourceCache},
        select::Selector,
    },
    sample::Sampler,
    telemetry::{Published, Snapshot, health::Health},
    trace::{
        clock::Clock,
        completeness::{Completeness, CompletenessConfig, ServiceCompleteness},
        instrumented::{Instrumented, InstrumentedMode},
        link::{LinkConfig, LinkEvent, Linker},
        span::{ConnMeta, Span, SpanKind},
    },
    ui::{Ui, UiFeed},
};

crate::counters! {
    /// Counters of this stage.
    pub struct PipelineStats {
        /// Kernel records read from the ring buffer.
        records,
        /// Bytes of those records (headers and copied payload).
        record_bytes,
        /// Times the capture loop woke (the kernel signalled data, or the poll timed out) and
        /// drained the ring buffer.
        wakeups,
        /// Kernel records that could not be decoded (dropped).
        decode_errors,
        /// Spans finished: measured by the metrics, then offered to the sampler.
        spans,
        /// Sockets whose capture size could not be raised (kernel map full or failing).
        capture_override_failed,
    }
}

pub struct Pipeline {
    conns: ConnTable,
    resources: ResourceCache,
    spans: SpanConfig,
    exporter: ExporterHandle,
    clock: Clock,
    selector: Selector,
    pid_filter: Option<PidFilter>,
    /// Per-socket capture sizes in the kernel; None in tests without a kernel.
    pub sock_capture: Option<SockCapture>,
    resolver: ProcfsResolver,
    stats: PipelineStats,
    out: Vec<ConnExchange>,
    /// Spans built since the last flush: handed to the exporter in one burst per poll cycle,
    /// which wakes its task once instead of once per span.
    pending: Vec<Span>,
    linker: Linker,
    /// Processes that trace themselves, and what becomes of their spans.
    instrumented: Instrumented,
    /// The span metrics, fed every span (before any sampling).
    metrics: Option<Metrics>,
    /// Which measured spans are exported.
    sampler: Sampler,
    /// Spans the sampler passed, handed to the exporter together.
    sampled: Vec<Span>,
    /// The local viewer's store (`--ui`), given what the exporter is given.
    ui: Option<UiFeed>,
    /// Where the pids of new programs go, for the TLS attacher to look at at once (a program
    /// with TLS in its executable, node or Go, may begin before the next periodic scan).
    exec_watch: Option<tokio::sync::mpsc::Sender<u32>>,
    /// How whole each service's traces are (every span, before sampling).
    completeness: Completeness,
    /// When `completeness` last judged its idle traces.
    completeness_tick_ns: u64,
}

impl Pipeline {
    pub fn new(
        conn: ConnConfig,
        spans: SpanConfig,
        exporter: ExporterHandle,
        selector: Selector,
        pid_filter: Option<PidFilter>,
    ) -> Self {
        Self {
            conns: ConnTable::new(conn),
            resources: ResourceCache::new(ProcRoot::default()),
            spans,
            exporter,
            clock: Clock::now(),
            selector,
            pid_filter,
            sock_capture: None,
            resolver: ProcfsResolver,
            stats: PipelineStats::default(),
            out: Vec::new(),
            pending: Vec::new(),
            linker: Linker::new(LinkConfig::default()),
            instrumented: Instrumented::new(InstrumentedMode::Skip),
            metrics: None,
            sampler: Sampler::default(),
            sampled: Vec::new(),
            ui: None,
            exec_watch: None,
            completeness: Completeness::new(CompletenessConfig::default()),
            completeness_tick_ns: 0,
        }
    }

    /// Sends the pid of every program started (exec) to `watch`; a full channel drops it (the
    /// periodic scan finds it).
    pub fn with_exec_watch(mut self, watch: tokio::sync::mpsc::Sender<u32>) -> Self {
        self.exec_watch = Some(watch);
        self
    }

    /// Also keeps the exported spans in the viewer's store.
    pub fn with_ui(mut self, ui: &Ui) -> Self {
        self.ui = Some(ui.feed());
        self
    }

    /// What becomes of the spans of processes that trace themselves (default: skipped).
    pub fn with_instrumented(mut self, mode: InstrumentedMode) -> Self {
        self.instrumented = Instrumented::new(mode);
        self
    }

    /// Replaces the default sampler (`parentbased_always_on`).
    pub fn with_sampler(mut self, sampler: Sampler) -> Self {
        self.sampler = sampler;
        self
    }

    /// Computes the span metrics from every span this pipeline makes, before sampling.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Replaces the resource cache (to add Kubernetes metadata and the resource filter).
    pub fn with_resources(mut self, resources: ResourceCache) -> Self {
        self.resources = resources;
        self
    }

    /// Handles one ring-buffer record.
    pub fn handle(&mut self, record: &[u8]) {
        self.stats.records += 1;
        self.stats.record_bytes += record.len() as u64;
        match decode(record) {
            Ok(Event::Data {
                header,
                payload,
                tail,
            }) => {
                // Read the process while it is alive, even if its spans complete later.
                if !self.resources.contains(header.pid) {
                    let comm = comm_of(&header.comm);
                    let _ = self.resources.get(header.pid, Some(&comm));
                }
                self.conns
                    .on_data(&header, payload, tail, &mut self.resolver, &mut self.out);
                for link in self.conns.take_links() {
                    let pid = match &link {
                        LinkEvent::Http1Request { key, .. } => self.conns.pid_of(key.0),
                        _ => None,
                    };
                    let link = self.instrumented.on_link(link, pid);
                    self.linker.on_event(link);
                }
                if let Some(capture) = &mut self.sock_capture {
                    for sk in self.conns.take_full_capture() {
                        if let Err(e) = capture.set(sk, socktrace_common::MAX_CAPTURE as u32) {
                            self.stats.capture_override_failed += 1;
                            tracing::debug!("raising the capture size of a socket failed: {e}");
                        }
                    }
                }
            }
            Ok(Event::Close(c)) => self
                .conns
                .on_close(c.sk, c.new_state, c.ts_ns, &mut self.out),
            Ok(Event::ExecEnv(env)) => self.resources.exec_env(env),
            Ok(Event::Exec { pid, cgroup_id }) => {
                self.resources.exec(pid, cgroup_id);
                if let Some(watch) = &self.exec_watch {
                    let _ = watch.try_send(pid);
                }
                if let Some(filter) = &mut self.pid_filter
                    && self.selector.matches_exe(pid)
                    && let Err(e) = filter.add(pid)
                {
                    tracing::warn!("cannot trace pid {pid}: {e}");
                }
            }
            Ok(Event::Exit { pid }) => {
                self.resources.exited(pid);
                self.instrumented.exited(pid);
            }
            Ok(Event::Inject(ev)) => self.conns.on_inject(&ev),
            Ok(Event::Connect(ev)) => self.conns.on_connect(&ev),
            Err(e) => {
                self.stats.decode_errors += 1;
                tracing::debug!("dropped a malformed kernel record: {e}");
            }
        }
        self.emit();
    }

    /// Periodic work: idle connections, clock drift (NTP steps).
    pub fn tick(&mut self) {
        self.clock = Clock::now();
        let now = Clock::monotonic_now();
        self.conns.expire(now, &mut self.out);
        self.conns.expire_injections(now);
        self.conns.expire_traced_clients(now);
        self.emit();
        self.linker.tick(now);
        self.take_linked();
    }

    /// Short deadlines of span linking (a request waiting for its same-host client).
    pub fn tick_links(&mut self) {
        self.linker.tick_deadlines(Clock::monotonic_now());
        self.take_linked();
    }

    /// Releases every span still held for a parent (at shutdown).
    pub fn release_held(&mut self) {
        self.linker.release_all();
        self.take_linked();
    }

    fn take_linked(&mut self) {
        let mut ready = self.linker.take_ready();
        self.instrumented.apply(&mut ready);
        self.stats.spans += ready.len() as u64;
        self.pending.extend(ready);
    }

    fn emit(&mut self) {
        for cx in self.out.drain(..) {
            // None: the process fails --k8s-namespace/--container/--service-name (counted).
            let Some(resource) = self.resources.get_selected(cx.pid, Some(&cx.comm)) else {
                continue;
            };
            let meta = ConnMeta {
                kind: match cx.role {
                    Role::Server => SpanKind::Server,
                    Role::Client => SpanKind::Client,
                },
                local: cx.local,
                peer: cx.peer,
                resource,
                tls: cx.tls,
            };
            let clock = self.clock;
            let to_unix = |t| clock.to_unix(t);
            // None: a kind of the protocol that is not enabled (a gRPC call with only http2).
            let Some(span) = cx.exchange.build(&meta, &self.spans, &to_unix) else {
                continue;
            };
            self.instrumented.on_span(cx.pid, &span, cx.link.http1);
            self.linker.on_span(span, cx.link);
        }
        self.take_linked();
    }

    /// The kernel lost records (see [`ConnTable::on_loss`]).
    pub fn on_loss(&mut self) {
        self.conns.on_loss();
    }

    /// Measures the spans built so far, then hands those the sampler keeps (now or, for
    /// priority sampling, once their trace is decided) to the exporter.
    pub fn flush(&mut self) {
        let now = Clock::monotonic_now();
        if !self.pending.is_empty() {
            if let Some(m) = &self.metrics {
                m.record(&self.pending);
            }
            self.completeness.record(&self.pending, now);
            let spans = std::mem::take(&mut self.pending);
            self.sampler.offer(spans, now, &mut self.sampled);
        }
        self.sampler.tick(now, &mut self.sampled);
        if now.saturating_sub(self.completeness_tick_ns) >= 1_000_000_000 {
            self.completeness_tick_ns = now;
            self.completeness.tick(now);
        }
        self.submit();
    }

    fn submit(&mut self) {
        // Every call, so that spans held while the viewer was busy reach it.
        if let Some(ui) = &mut self.ui {
            ui.offer(&self.sampled);
        }
        if !self.sampled.is_empty() {
            self.exporter.submit_all(std::mem::take(&mut self.sampled));
        }
    }

    /// Releases every span still held for a parent or a sampling decision, measured and
    /// decided (at shutdown).
    pub fn finish(&mut self) {
        self.release_held();
        self.flush();
        self.completeness.judge_all();
        self.sampler
            .decide_all(Clock::monotonic_now(), &mut self.sampled);
        self.submit();
    }

    fn collect_completeness(&self, s: &mut Snapshot) {
        let c = &self.completeness;
        c.stats().collect("completeness", s);
        s.gauge(
            "completeness",
            "open_traces",
            "Traces not judged yet (no span for 10 s judges a trace).",
            c.open() as u64,
        );
        let per = |f: fn(&ServiceCompleteness) -> u64| -> Vec<(String, u64)> {
            c.services().map(|(k, v)| (k.to_owned(), f(v))).collect()
        };
        s.labeled_counter(
            "completeness",
            "calls",
            "Client spans the service made.",
            "service",
            per(|v| v.calls),
        );
        s.labeled_counter(
            "completeness",
            "calls_linked",
            "Client spans the service made that have a parent (the request it was serving, or a header); the others began traces of their own.",
            "service",
            per(|v| v.calls_linked),
        );
        s.labeled_counter(
            "completeness",
            "traces",
            "Traces rooted at a span of the service, judged once no span came for 10 s.",
            "service",
            per(|v| v.traces),
        );
        s.labeled_counter(
            "completeness",
            "traces_whole",
            "Traces rooted at a span of the service with a single root (every other span's parent in the trace).",
            "service",
            per(|v| v.traces_whole),
        );
    }

    /// Every counter of every stage, the kernel's included.
    pub fn snapshot(&self, kernel: &[u64; kstats::COUNT as usize]) -> Snapshot {
        let mut s = Snapshot::default();
        for ((name, help), value) in kstats::NAMES.iter().zip(kstats::HELP).zip(kernel) {
            s.counter("kernel", name, help.trim_ascii(), *value);
        }
        self.stats.collect("pipeline", &mut s);
        s.counter(
            "pipeline",
            "resource_filtered",
            "Spans of processes that --k8s-namespace, --container or --service-name exclude.",
            self.resources.filtered(),
        );
        s.counter(
            "pipeline",
            "invalid_traceparent",
            "Requests whose traceparent header was malformed (ignored: a new trace began).",
            self.spans
                .http_stats
                .invalid_traceparent
                .load(Ordering::Relaxed),
        );
        self.resources.stats().collect("resources", &mut s);
        self.conns.collect(&mut s);
        self.linker.stats().collect("links", &mut s);
        self.collect_completeness(&mut s);
        self.instrumented.stats().collect("instrumented", &mut s);
        s.gauge(
            "instrumented",
            "processes",
            "Running processes found tracing themselves.",
            self.instrumented.detected() as u64,
        );
        self.sampler.collect(&mut s);
        s.gauge(
            "links",
            "held_now",
            "Spans held for their parent now.",
            self.linker.held() as u64,
        );
        self.exporter.stats().collect("export", &mut s);
        s.gauge(
            "export",
            "pending",
            "Spans in the export queue or the batch being sent (bounded by the queue size plus one batch).",
            self.exporter.pending(),
        );
        s.gauge(
            "export",
            "failing",
            "1 while the export endpoint fails and a batch waits to be retried, else 0.",
            u64::from(self.exporter.failing()),
        );
        if let Some(m) = &self.metrics {
            m.stats().collect("metrics", &mut s);
            s.gauge(
                "metrics",
                "edges_waiting",
                "Service-graph spans waiting for the span of their other side now.",
                m.waiting(),
            );
        }
        if let Some(m) = self.exporter.metrics_stats() {
            m.collect("metrics_export", &mut s);
        }
        if let Some(ui) = &self.ui {
            ui.collect(&mut s);
        }
        if let Some(k8s) = self.resources.k8s() {
            k8s.index.collect(&mut s);
        }
        s
    }
}

/// Runs the capture loop until `stop` is set; reports counters every `stats_interval`; beats
/// `health` once per poll (at least every 20 ms) so that `/healthz` can tell a stalled loop;
/// publishes the counters each second to `published` when there is a reader (`/metrics`).
/// Returns once everything captured is handed to the exporter; the caller reports the final
/// counters ([`Stopped::report`]) after shutting the exporter down.
pub fn run(
    mut reader: EventReader,
    mut pipeline: Pipeline,
    kernel: KernelStats,
    stop: Arc<AtomicBool>,
    stats_interval: Option<Duration>,
    health: Health,
    published: Option<Published>,
) -> Stopped {
    const POLL_MS: i32 = 20;
    let mut last_tick = Instant::now();
    let mut last_report = Instant::now();
    let mut ringbuf_full = kernel.get(kstats::RINGBUF_FULL);
    while !stop.load(Ordering::Relaxed) {
        health.beat();
        // Records lost since the last poll: whichever connection lost them may have a hole.
        let lost = kernel.get(kstats::RINGBUF_FULL);
        if lost != ringbuf_full {
            ringbuf_full = lost;
            pipeline.on_loss();
        }
        pipeline.stats.wakeups += 1;
        if let Err(e) = reader.poll(POLL_MS, |record| pipeline.handle(record)) {
            tracing::error!("reading kernel events failed: {e}");
            std::thread::sleep(Duration::from_millis(100));
        }
        pipeline.tick_links();
        pipeline.flush();
        let second = last_tick.elapsed() >= Duration::from_secs(1);
        if second {
            pipeline.tick();
            pipeline.flush();
            last_tick = Instant::now();
        }
        let report = stats_interval.is_some_and(|every| last_report.elapsed() >= every);
        let publish = second && published.is_some();
        if report || publish {
            let snapshot = pipeline.snapshot(&kernel.read());
            if report {
                tracing::info!("{}", snapshot.line());
                last_report = Instant::now();
            }
            if let Some(p) = published.as_ref().filter(|_| publish) {
                p.publish(snapshot);
            }
        }
    }
    // Drain what the kernel already wrote, so no finished request is lost at shutdown.
    let _ = reader.poll(0, |record| pipeline.handle(record));
    pipeline.tick();
    pipeline.finish();
    Stopped {
        pipeline,
        kernel,
        published,
    }
}

/// The capture loop once it stopped and handed everything to the exporter: reports the final
/// counters when the exporter is done too.
pub struct Stopped {
    pipeline: Pipeline,
    kernel: KernelStats,
    published: Option<Published>,
}

impl Stopped {
    /// The counters now; final once the exporter has shut down.
    pub fn snapshot(&self) -> Snapshot {
        self.pipeline.snapshot(&self.kernel.read())
    }

    /// Logs (`final counters: ...`) and publishes the counters. Call it after
    /// [`ExporterHandle::shutdown`]: the flush at shutdown (the batch in flight, what is still
    /// queued) moves spans from pending to exported or failed, and the line must say so.
    pub fn report(self) {
        let last = self.snapshot();
        tracing::info!("final counters: {}", last.line());
        if let Some(p) = &self.published {
            p.publish(last);
        }
    }
}
