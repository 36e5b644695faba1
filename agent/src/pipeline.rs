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
}

pub struct Pipeline {
    conns: ConnTable,
    resources: ResourceCache,
    http: HttpSpanConfig,
    http_stats: Arc<HttpSpanStats>,
    db: DbSpanConfig,
    exporter: ExporterHandle,
    clock: Clock,
    selector: Selector,
    pid_filter: Option<PidFilter>,
    resolver: ProcfsResolver,
    stats: PipelineStats,
    out: Vec<ConnExchange>,
    /// Spans built since the last flush: handed to the exporter in one burst per poll cycle,
    /// which wakes its task once instead of once per span.
    pending: Vec<crate::trace::span::Span>,
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
        Self {
            conns: ConnTable::new(conn),
            resources: ResourceCache::new(ProcRoot::default()),
            http,
            http_stats: Arc::new(HttpSpanStats::default()),
            db,
            exporter,
            clock: Clock::now(),
            selector,
            pid_filter,
            resolver: ProcfsResolver,
            stats: PipelineStats::default(),
            out: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// Handles one ring-buffer record.
    pub fn handle(&mut self, record: &[u8]) {
        self.stats.records += 1;
        match decode(record) {
            Ok(Event::Data(header, payload)) => {
                // Read the process while it is alive, even if its spans complete later.
                if !self.resources.contains(header.pid) {
                    let comm = crate::conn::comm_of(&header.comm);
                    let _ = self.resources.get(header.pid, Some(&comm));
                }
                self.conns
                    .on_data(&header, payload, &mut self.resolver, &mut self.out);
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
            Ok(Event::Exit { pid }) => self.resources.invalidate(pid),
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
        self.conns.expire(Clock::monotonic_now(), &mut self.out);
        self.emit();
    }

    fn emit(&mut self) {
        for cx in self.out.drain(..) {
            let resource = self.resources.get(cx.pid, Some(&cx.comm));
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
                Payload::Postgres {
                    statement,
                    database,
                } => build_pg_span(statement, database.as_deref(), &meta, &self.db, &to_unix),
            };
            self.stats.spans += 1;
            self.pending.push(span);
        }
    }

    /// Hands the spans built so far to the exporter.
    pub fn flush(&mut self) {
        for span in self.pending.drain(..) {
            self.exporter.submit(span);
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
        let e = self.exporter.stats();
        format!(
            "kernel: {k} | pipeline: records={} decode_errors={} spans={} invalid_traceparent={} | conns: live={} opened={} closed={} expired={} evicted={} unresolved={} undetected={} port_filtered={} mid_stream_skipped={} encrypted={} | http1: resyncs={} bytes_skipped={} invalid_heads={} unanswered_dropped={} | export: exported={} queue_dropped={} failed={} retries={}",
            self.stats.records,
            self.stats.decode_errors,
            self.stats.spans,
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
            h.resyncs,
            h.bytes_skipped,
            h.invalid_heads,
            h.unanswered_requests_dropped,
            e.exported,
            e.dropped_queue_full,
            e.failed,
            e.retries,
        )
    }
}

/// Runs the capture loop until `stop` is set; reports counters every `stats_interval`.
pub fn run(
    mut reader: EventReader,
    mut pipeline: Pipeline,
    kernel: KernelStats,
    stop: Arc<AtomicBool>,
    stats_interval: Option<Duration>,
) {
    const POLL_MS: i32 = 20;
    let mut last_tick = Instant::now();
    let mut last_report = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = reader.poll(POLL_MS, |record| pipeline.handle(record)) {
            tracing::error!("reading kernel events failed: {e}");
            std::thread::sleep(Duration::from_millis(100));
        }
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
    pipeline.flush();
    tracing::info!("final counters: {}", pipeline.report(&kernel.read()));
}
