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
    conn::{ConnConfig, ConnExchange, ConnTable, Payload, ProcfsResolver, Role},
    export::ExporterHandle,
    probes::{Event, EventReader, KernelStats, PidFilter, decode},
    resource::{ProcRoot, ResourceCache},
    select::Selector,
    trace::{
        db::{DbSpanConfig, build_pg_span},
        http::{ConnMeta, HttpSpanConfig, HttpSpanStats, build_span},
        http2::{H2Kinds, build_h2_span},
        link::{LinkConfig, Linker},
        span::SpanKind,
    },
};

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// Converts kernel `CLOCK_MONOTONIC` timestamps to Unix time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    offset: i128,
}

impl Clock {
    pub fn now() -> Self {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Self {
            offset: i128::from(real) - i128::from(mono),
        }
    }
    pub fn to_unix(&self, mono_ns: u64) -> u64 {
        (i128::from(mono_ns) + self.offset).clamp(0, i128::from(u64::MAX)) as u64
    }
    pub fn monotonic_now() -> u64 {
        clock_ns(libc::CLOCK_MONOTONIC)
    }
}

/// Counters of this stage.
#[derive(Clone, Copy, Debug, Default)]
pub struct PipelineStats {
    pub records: u64,
    pub decode_errors: u64,
    pub spans: u64,
    /// HTTP/2 sockets whose capture size could not be raised (kernel map full or failing).
    pub capture_override_failed: u64,
}

pub struct Pipeline {
    conns: ConnTable,
    resources: ResourceCache,
    http: HttpSpanConfig,
    http_stats: Arc<HttpSpanStats>,
    h2_kinds: H2Kinds,
    db: DbSpanConfig,
    exporter: ExporterHandle,
    clock: Clock,
    selector: Selector,
    pid_filter: Option<PidFilter>,
    /// Per-socket capture sizes in the kernel; None in tests without a kernel.
    pub sock_capture: Option<crate::probes::SockCapture>,
    resolver: ProcfsResolver,
    stats: PipelineStats,
    out: Vec<ConnExchange>,
    /// Spans built since the last flush: handed to the exporter in one burst per poll cycle,
    /// which wakes its task once instead of once per span.
    pending: Vec<crate::trace::span::Span>,
    linker: Linker,
}

impl Pipeline {
    pub fn new(
        conn: ConnConfig,
        http: HttpSpanConfig,
        db: DbSpanConfig,
        exporter: ExporterHandle,
        selector: Selector,
        pid_filter: Option<PidFilter>,
    ) -> Self {
        let h2_kinds = H2Kinds {
            grpc: conn.protocols.grpc,
            http: conn.protocols.http2,
        };
        Self {
            conns: ConnTable::new(conn),
            resources: ResourceCache::new(ProcRoot::default()),
            http,
            http_stats: Arc::new(HttpSpanStats::default()),
            h2_kinds,
            db,
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
        }
    }

    /// Replaces the resource cache (to add Kubernetes metadata and the resource filter).
    pub fn with_resources(mut self, resources: ResourceCache) -> Self {
        self.resources = resources;
        self
    }

    /// Handles one ring-buffer record.
    pub fn handle(&mut self, record: &[u8]) {
        self.stats.records += 1;
        match decode(record) {
            Ok(Event::Data {
                header,
                payload,
                tail,
            }) => {
                // Read the process while it is alive, even if its spans complete later.
                if !self.resources.contains(header.pid) {
                    let comm = crate::conn::comm_of(&header.comm);
                    let _ = self.resources.get(header.pid, Some(&comm));
                }
                self.conns
                    .on_data(&header, payload, tail, &mut self.resolver, &mut self.out);
                for link in self.conns.take_links() {
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
            Ok(Event::Exec { pid }) => {
                self.resources.invalidate(pid);
                if let Some(filter) = &mut self.pid_filter
                    && self.selector.matches_exe(pid)
                    && let Err(e) = filter.add(pid)
                {
                    tracing::warn!("cannot trace pid {pid}: {e}");
                }
            }
            Ok(Event::Exit { pid }) => self.resources.exited(pid),
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
        let ready = self.linker.take_ready();
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
            };
            let clock = self.clock;
            let to_unix = |t| clock.to_unix(t);
            let span = match &cx.payload {
                Payload::Http(exchange) => {
                    build_span(exchange, &meta, &self.http, &self.http_stats, &to_unix)
                }
                Payload::Http2(stream) => {
                    let Some(span) = build_h2_span(
                        stream,
                        &meta,
                        self.h2_kinds,
                        &self.http,
                        &self.http_stats,
                        &to_unix,
                    ) else {
                        continue;
                    };
                    span
                }
                Payload::Postgres {
                    statement,
                    database,
                } => build_pg_span(statement, database.as_deref(), &meta, &self.db, &to_unix),
            };
            self.linker.on_span(span, cx.link);
        }
        self.take_linked();
    }

    /// Hands the spans built so far to the exporter.
    pub fn flush(&mut self) {
        if !self.pending.is_empty() {
            self.exporter.submit_all(std::mem::take(&mut self.pending));
        }
    }

    /// One line of self-telemetry for every stage.
    pub fn report(&self, kernel: &[u64; kstats::COUNT as usize]) -> String {
        let k = kstats::NAMES
            .iter()
            .zip(kernel)
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        let c = self.conns.stats();
        let h = self.conns.http1_stats();
        let h2 = self.conns.http2_stats();
        let e = self.exporter.stats();
        let l = self.linker.stats();
        format!(
            "kernel: {k} | pipeline: records={} decode_errors={} spans={} resource_filtered={} invalid_traceparent={} | conns: live={} opened={} closed={} expired={} evicted={} unresolved={} undetected={} port_filtered={} mid_stream_skipped={} encrypted={} injections_unmatched={} traced_connects={} traced_connects_dropped={} | links: thread={} peer={} injected={} held={} held_now={} released_unlinked={} peer_timeouts={} contexts_dropped={} conflicts={} multiplexing_threads={} | http1: resyncs={} bytes_skipped={} invalid_heads={} unanswered_dropped={} | http2: frames={} resyncs={} bytes_skipped={} hpack_errors={} undecoded_fields={} streams_evicted={} mid_stream_joins={} h2c_upgrades={} joined_connections={} | export: exported={} queue_dropped={} failed={} retries={}",
            self.stats.records,
            self.stats.decode_errors,
            self.stats.spans,
            self.resources.filtered(),
            self.http_stats.invalid_traceparent.load(Ordering::Relaxed),
            self.conns.len(),
            c.opened,
            c.closed,
            c.expired,
            c.evicted,
            c.unresolved,
            c.undetected,
            c.filtered_port,
            c.skipped_mid_stream,
            c.encrypted,
            c.injections_unmatched,
            c.traced_connects,
            c.traced_connects_dropped,
            l.thread_links,
            l.peer_links,
            l.injected,
            l.held,
            self.linker.held(),
            l.hold_released,
            l.peer_timeouts,
            l.contexts_dropped,
            l.conflicts,
            l.multiplexing_threads,
            h.resyncs,
            h.bytes_skipped,
            h.invalid_heads,
            h.unanswered_requests_dropped,
            h2.frames,
            h2.resyncs,
            h2.bytes_skipped,
            h2.hpack_errors,
            h2.undecoded_fields,
            h2.streams_evicted,
            h2.mid_stream_joins,
            c.h2c_upgrades,
            c.h2_mid_stream,
            e.exported,
            e.dropped_queue_full,
            e.failed,
            e.retries,
        )
    }
}

/// Runs the capture loop until `stop` is set; reports counters every `stats_interval`; beats
/// `health` once per poll (at least every 20 ms) so that `/healthz` can tell a stalled loop.
pub fn run(
    mut reader: EventReader,
    mut pipeline: Pipeline,
    kernel: KernelStats,
    stop: Arc<AtomicBool>,
    stats_interval: Option<Duration>,
    health: crate::health::Health,
) {
    const POLL_MS: i32 = 20;
    let mut last_tick = Instant::now();
    let mut last_report = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        health.beat();
        if let Err(e) = reader.poll(POLL_MS, |record| pipeline.handle(record)) {
            tracing::error!("reading kernel events failed: {e}");
            std::thread::sleep(Duration::from_millis(100));
        }
        pipeline.tick_links();
        pipeline.flush();
        if last_tick.elapsed() >= Duration::from_secs(1) {
            pipeline.tick();
            pipeline.flush();
            last_tick = Instant::now();
        }
        if let Some(every) = stats_interval
            && last_report.elapsed() >= every
        {
            tracing::info!("{}", pipeline.report(&kernel.read()));
            last_report = Instant::now();
        }
    }
    // Drain what the kernel already wrote, so no finished request is lost at shutdown.
    let _ = reader.poll(0, |record| pipeline.handle(record));
    pipeline.tick();
    pipeline.release_held();
    pipeline.flush();
    tracing::info!("final counters: {}", pipeline.report(&kernel.read()));
}
