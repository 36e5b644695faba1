//! Exporters: OTLP (gRPC, HTTP/protobuf), Zipkin (v2 JSON) and the console.
//!
//! [`start`] spawns one task per exporter (OTLP, Zipkin, console), each fed by its own bounded
//! queue. [`ExporterHandle::submit_all`] never blocks: what does not fit in a full queue is
//! dropped and counted. Spans travel in chunks (one per capture poll), so the exporter task is
//! woken once per chunk, not once per span.
//! Each task batches spans (up to `max_batch`, or whatever arrived within `batch_timeout`) and
//! sends one batch at a time; OTLP and Zipkin failures are retried (see [`otlp`]) until the
//! batch is accepted: during a collector outage the queue is the only
//! buffer, so memory stays bounded and what does not fit is dropped at submission, counted.
//! [`ExporterHandle::shutdown`] flushes what is queued within a deadline.

pub mod config;
pub mod console;
mod encode;
pub mod metrics;
pub mod otlp;
mod pipeline;
mod text;
pub mod zipkin;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{mpsc, watch},
    task::AbortHandle,
    time::{Instant, timeout_at},
};

pub use self::{
    config::{
        ConfigError, ExportCli, ExportConfig, OtlpConfig, OtlpProtocol, RetryConfig, Signal,
        ZipkinConfig, resolve_config,
    },
    console::format_span,
    encode::encode_request,
    metrics::MetricsSource,
};
use self::{
    console::ConsoleSink,
    otlp::RemoteSink,
    pipeline::{BatchConfig, Counters, Shutdown, Sink},
};
use crate::trace::span::Span;

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("the exporter must be started from within a tokio runtime")]
    NoRuntime,
    #[error("invalid OTLP header {name:?}: {reason}")]
    InvalidHeader { name: String, reason: String },
    #[error("cannot set up the OTLP client for {endpoint}: {reason}")]
    Client { endpoint: String, reason: String },
    #[error("no exporter configured (neither OTLP, Zipkin nor console)")]
    NothingToDo,
}

crate::counters! {
    /// Counters of the primary exporter: OTLP when configured, else Zipkin when configured,
    /// otherwise the console.
    ///
    /// All values are cumulative. Once the exporter is idle (e.g. after shutdown)
    /// `queued == exported + failed`.
    pub struct ExportStats {
        /// Spans accepted into the queue.
        queued,
        /// Spans the backend accepted (or the console printed).
        exported,
        /// Spans dropped at `submit` because the queue was full or the exporter had shut down.
        dropped_queue_full,
        /// Spans given up on: non-retryable errors, rejected in a partial success, still queued
        /// at the shutdown deadline, or a retry limit reached (only when one is configured).
        failed,
        /// Retry attempts made (each retry of a batch counts once).
        retries,
    }
}

struct Lane {
    tx: mpsc::UnboundedSender<Vec<Span>>,
    /// Spans sent and not yet taken into a batch by the task: checked against `max_queue` at
    /// submission (beyond it, the task holds only the batch it is building or sending).
    in_queue: Arc<AtomicUsize>,
    max_queue: usize,
    counters: Arc<Counters>,
    done: watch::Receiver<bool>,
    abort: AbortHandle,
}

impl Lane {
    /// Spawns the task that batches this lane's queue into `sink`.
    fn start<S: Sink>(
        runtime: &tokio::runtime::Handle,
        sink: S,
        counters: Arc<Counters>,
        batch: BatchConfig,
        shutdown_rx: &watch::Receiver<Option<Instant>>,
        max_queue: usize,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let in_queue = Arc::new(AtomicUsize::new(0));
        let queue = pipeline::Queue::new(rx, in_queue.clone());
        let (done_tx, done) = watch::channel(false);
        let shutdown = Shutdown::new(shutdown_rx.clone());
        let task_counters = counters.clone();
        let task = runtime.spawn(async move {
            pipeline::run(queue, sink, batch, shutdown, task_counters).await;
            let _ = done_tx.send(true);
        });
        Lane {
            tx,
            in_queue,
            max_queue: max_queue.max(1),
            counters,
            done,
            abort: task.abort_handle(),
        }
    }
}

/// The metrics exporter task.
struct MetricsLane {
    counters: Arc<Counters>,
    done: watch::Receiver<bool>,
    abort: AbortHandle,
}

crate::counters! {
    /// Counters of the OTLP metrics exporter.
    pub struct MetricsExportStats {
        /// Metric data points the backend accepted (each export sends every series again).
        points_exported,
        /// Metric data points given up on: rejected, not retryable, or still failing after one interval.
        points_failed,
        /// Retry attempts of metrics requests.
        retries,
    }
}

struct Inner {
    /// Primary (OTLP, else Zipkin, if configured) first.
    lanes: Vec<Lane>,
    metrics: Option<MetricsLane>,
    closed: AtomicBool,
    shutdown_tx: watch::Sender<Option<Instant>>,
    shutdown_timeout: Duration,
    created: Instant,
    /// Seconds since `created` of the last queue-full warning, plus one (0: never).
    last_drop_warn: AtomicU64,
}

/// Cheap to clone; all clones feed the same exporter tasks.
#[derive(Clone)]
pub struct ExporterHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ExporterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExporterHandle")
            .field("stats", &self.stats())
            .finish()
    }
}

/// Extra time `shutdown` allows the tasks beyond the flush deadline before aborting them.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(250);

/// Starts the exporter task(s) on the current tokio runtime.
pub fn start(config: ExportConfig) -> Result<ExporterHandle, ExportError> {
    start_with_metrics(config, None)
}

/// [`start`], plus the OTLP metrics exporter reading `metrics` when the configuration has a
/// metrics endpoint.
pub fn start_with_metrics(
    config: ExportConfig,
    metrics: Option<MetricsSource>,
) -> Result<ExporterHandle, ExportError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| ExportError::NoRuntime)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(None);
    let mut lanes = Vec::new();
    let batch = || BatchConfig {
        max_batch: config.max_batch,
        batch_timeout: config.batch_timeout,
    };
    let start = |sink: RemoteSink, counters: Arc<Counters>| {
        Lane::start(
            &runtime,
            sink,
            counters,
            batch(),
            &shutdown_rx,
            config.max_queue,
        )
    };
    if let Some(otlp) = &config.otlp {
        let counters = Arc::new(Counters::default());
        let sink = RemoteSink::new(otlp, config.retry, counters.clone())?;
        lanes.push(start(sink, counters));
        tracing::info!(
            "exporting spans with OTLP {} to {}",
            otlp.protocol,
            otlp.endpoint
        );
    }
    if let Some(zipkin) = &config.zipkin {
        let counters = Arc::new(Counters::default());
        let sink = RemoteSink::zipkin(zipkin, config.retry, counters.clone())?;
        lanes.push(start(sink, counters));
        tracing::info!("exporting spans as Zipkin v2 JSON to {}", zipkin.endpoint);
    }
    if config.console {
        let counters = Arc::new(Counters::default());
        let sink = ConsoleSink::new(counters.clone());
        lanes.push(Lane::start(
            &runtime,
            sink,
            counters,
            batch(),
            &shutdown_rx,
            config.max_queue,
        ));
    }
    if lanes.is_empty() {
        return Err(ExportError::NothingToDo);
    }
    let metrics = match (config.metrics.as_ref(), metrics) {
        (Some(otlp), Some(source)) => {
            let counters = Arc::new(Counters::default());
            // Cumulative values: the next interval's request carries everything a request
            // given up on carried. OTEL_METRIC_EXPORT_TIMEOUT may end it sooner.
            let retry = RetryConfig {
                max_elapsed: Some(config.metrics_export_limit()),
                ..config.retry
            };
            let sink = RemoteSink::for_signal(otlp, retry, counters.clone(), Signal::Metrics)?;
            let (done_tx, done) = watch::channel(false);
            let shutdown = Shutdown::new(shutdown_rx.clone());
            let task_counters = counters.clone();
            let interval = config.metrics_interval;
            let task = runtime.spawn(async move {
                metrics::run(sink, source, interval, shutdown, task_counters).await;
                let _ = done_tx.send(true);
            });
            tracing::info!(
                "exporting metrics with OTLP {} to {} every {:?}",
                otlp.protocol,
                otlp.endpoint,
                interval
            );
            Some(MetricsLane {
                counters,
                done,
                abort: task.abort_handle(),
            })
        }
        _ => None,
    };
    Ok(ExporterHandle {
        inner: Arc::new(Inner {
            lanes,
            metrics,
            closed: AtomicBool::new(false),
            shutdown_tx,
            shutdown_timeout: config.shutdown_timeout,
            created: Instant::now(),
            last_drop_warn: AtomicU64::new(0),
        }),
    })
}

impl ExporterHandle {
    /// Queues a span for every configured exporter; see [`Self::submit_all`].
    pub fn submit(&self, span: Span) {
        self.submit_all(vec![span]);
    }

    /// Queues spans for every configured exporter, as one chunk (one wake-up of each exporter
    /// task). Never blocks and never awaits: the spans that do not fit in a full queue (or all,
    /// once the exporter has shut down) are dropped there and counted.
    pub fn submit_all(&self, spans: Vec<Span>) {
        if spans.is_empty() {
            return;
        }
        let inner = &*self.inner;
        if inner.closed.load(Ordering::Relaxed) {
            for lane in &inner.lanes {
                lane.counters.add_dropped(spans.len() as u64);
            }
            return;
        }
        let mut spans = Some(spans);
        let last = inner.lanes.len() - 1;
        for (i, lane) in inner.lanes.iter().enumerate() {
            let chunk = if i == last {
                spans.take()
            } else {
                spans.clone()
            };
            let Some(mut chunk) = chunk else { break };
            // Checked without a lock: spans come from the capture thread, and a concurrent
            // submitter could overshoot the bound by one chunk at most.
            let room = lane
                .max_queue
                .saturating_sub(lane.in_queue.load(Ordering::Acquire));
            if chunk.len() > room {
                lane.counters.add_dropped((chunk.len() - room) as u64);
                chunk.truncate(room);
                if i == 0 {
                    self.warn_dropped();
                }
            }
            let n = chunk.len();
            if n == 0 {
                continue;
            }
            lane.in_queue.fetch_add(n, Ordering::AcqRel);
            match lane.tx.send(chunk) {
                Ok(()) => lane.counters.add_queued(n as u64),
                Err(_) => {
                    lane.in_queue.fetch_sub(n, Ordering::AcqRel);
                    lane.counters.add_dropped(n as u64);
                }
            }
        }
    }

    /// Rate-limited (once per 10 s) warning about a full queue.
    fn warn_dropped(&self) {
        let inner = &*self.inner;
        let now = inner.created.elapsed().as_secs() + 1;
        let last = inner.last_drop_warn.load(Ordering::Relaxed);
        if (last == 0 || now >= last + 10)
            && inner
                .last_drop_warn
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let dropped = inner.lanes[0].counters.snapshot().dropped_queue_full;
            tracing::warn!(
                "export queue full (capacity {}): dropping spans ({dropped} dropped so far)",
                inner.lanes[0].max_queue
            );
        }
    }

    /// Snapshot of the primary exporter's counters (OTLP when configured, else Zipkin when
    /// configured, else the console).
    pub fn stats(&self) -> ExportStats {
        self.inner.lanes[0].counters.snapshot()
    }

    /// Spans of the primary exporter accepted into its queue and not yet exported or given
    /// up: waiting in the queue or in the batch being sent. At most `max_queue` plus one batch
    /// (plus one chunk, should two threads submit at the same moment).
    pub fn pending(&self) -> u64 {
        let s = self.stats();
        s.queued.saturating_sub(s.exported.saturating_add(s.failed))
    }

    /// Counters of the OTLP metrics exporter, if it runs.
    pub fn metrics_stats(&self) -> Option<MetricsExportStats> {
        self.inner.metrics.as_ref().map(|m| {
            let s = m.counters.snapshot();
            MetricsExportStats {
                points_exported: s.exported,
                points_failed: s.failed,
                retries: s.retries,
            }
        })
    }

    /// Whether the primary exporter's endpoint is failing now: a batch waits to be retried
    /// (from the first retryable failure until a batch is accepted).
    pub fn failing(&self) -> bool {
        self.inner.lanes[0].counters.failing()
    }

    /// Flushes everything queued (within the configured shutdown timeout, 5 s by default), then
    /// stops the tasks. Spans still unsent at the deadline are counted as failed. Idempotent;
    /// concurrent and repeated calls all return once the tasks are gone.
    pub async fn shutdown(&self) {
        let inner = &*self.inner;
        inner.closed.store(true, Ordering::Relaxed);
        let requested = Instant::now() + inner.shutdown_timeout;
        inner.shutdown_tx.send_if_modified(|d| {
            if d.is_none() {
                *d = Some(requested);
                true
            } else {
                false
            }
        });
        let deadline = inner.shutdown_tx.borrow().unwrap_or(requested);
        let lanes = inner.lanes.iter().map(|l| (&l.done, &l.abort));
        let metrics = inner.metrics.iter().map(|m| (&m.done, &m.abort));
        for (done, abort) in lanes.chain(metrics) {
            let mut done = done.clone();
            // `Err` means the task is gone, which is just as done.
            if timeout_at(deadline + SHUTDOWN_GRACE, done.wait_for(|d| *d))
                .await
                .is_err()
            {
                tracing::warn!("exporter did not stop within its shutdown deadline; aborting it");
                abort.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::trace::span::Resource;

    fn span(n: u8) -> Span {
        let resource = Arc::new(Resource {
            key: "k".into(),
            attributes: vec![],
        });
        Span::for_test(n, &resource, "socktrace.test")
    }

    #[test]
    fn start_needs_a_runtime() {
        assert!(matches!(
            start(ExportConfig::default()),
            Err(ExportError::NoRuntime)
        ));
    }

    #[tokio::test]
    async fn nothing_configured_is_an_error() {
        let cfg = ExportConfig {
            console: false,
            ..ExportConfig::default()
        };
        assert!(matches!(start(cfg), Err(ExportError::NothingToDo)));
    }

    #[tokio::test]
    async fn console_exporter_counts_and_shuts_down() {
        let handle = start(ExportConfig {
            batch_timeout: Duration::from_millis(10),
            ..ExportConfig::default()
        })
        .unwrap();
        for n in 1..=3 {
            handle.submit(span(n));
        }
        handle.shutdown().await;
        handle.shutdown().await;
        handle.submit(span(4));
        let stats = handle.stats();
        assert_eq!(
            stats,
            ExportStats {
                queued: 3,
                exported: 3,
                dropped_queue_full: 1,
                failed: 0,
                retries: 0
            }
        );
    }

    #[tokio::test]
    async fn chunks_beyond_the_queue_bound_are_cut_and_counted() {
        // Current-thread runtime: the exporter task cannot run (and take spans) until we await.
        let handle = start(ExportConfig {
            max_queue: 3,
            batch_timeout: Duration::from_millis(10),
            ..ExportConfig::default()
        })
        .unwrap();
        handle.submit_all((1..=5).map(span).collect());
        handle.submit_all(vec![span(6)]);
        handle.submit_all(Vec::new());
        let stats = handle.stats();
        assert_eq!((stats.queued, stats.dropped_queue_full), (3, 3));
        // Once the task took them, there is room again.
        tokio::time::sleep(Duration::from_millis(50)).await;
        handle.submit_all(vec![span(7), span(8)]);
        handle.shutdown().await;
        assert_eq!(
            handle.stats(),
            ExportStats {
                queued: 5,
                exported: 5,
                dropped_queue_full: 3,
                failed: 0,
                retries: 0
            }
        );
    }

    #[tokio::test]
    async fn https_endpoints_build_clients() {
        for protocol in [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf] {
            let handle = start(ExportConfig {
                otlp: Some(OtlpConfig {
                    endpoint: "https://collector.invalid:4317".into(),
                    protocol,
                    headers: vec![("Authorization".into(), "Bearer x".into())],
                    timeout: Duration::from_secs(1),
                }),
                console: false,
                ..ExportConfig::default()
            })
            .unwrap();
            handle.shutdown().await;
            assert_eq!(handle.stats(), ExportStats::default());
        }
    }

    #[tokio::test]
    async fn invalid_headers_are_rejected_at_start() {
        let err = start(ExportConfig {
            otlp: Some(OtlpConfig {
                endpoint: "http://127.0.0.1:4318/v1/traces".into(),
                protocol: OtlpProtocol::HttpProtobuf,
                headers: vec![("x".into(), "line\nbreak".into())],
                timeout: Duration::from_secs(1),
            }),
            ..ExportConfig::default()
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "invalid OTLP header \"x\": invalid value");
    }
}
