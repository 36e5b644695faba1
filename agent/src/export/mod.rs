//! Exporters: OTLP (gRPC, HTTP/protobuf) and the console.
//!
//! [`start`] spawns one task per exporter (OTLP and/or console), each fed by its own bounded
//! queue. [`ExporterHandle::submit`] never blocks: a full queue drops the span and counts it.
//! Each task batches spans (up to `max_batch`, or whatever arrived within `batch_timeout`) and
//! sends one batch at a time; OTLP failures are retried per the OTLP specification (see
//! [`otlp`]). [`ExporterHandle::shutdown`] flushes what is queued within a deadline.

pub mod config;
pub mod console;
pub mod otlp;
mod pipeline;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
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
        ConfigError, ExportCli, ExportConfig, OtlpConfig, OtlpProtocol, RetryConfig, resolve_config,
    },
    console::format_span,
    otlp::to_otlp_request,
};
use self::{
    console::ConsoleSink,
    otlp::OtlpSink,
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
    #[error("no exporter configured (neither OTLP nor console)")]
    NothingToDo,
}

/// Counters of the primary exporter: OTLP when configured, otherwise the console.
///
/// All values are cumulative. Once the exporter is idle (e.g. after shutdown)
/// `queued == exported + failed`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportStats {
    /// Spans accepted into the queue.
    pub queued: u64,
    /// Spans the backend accepted (or the console printed).
    pub exported: u64,
    /// Spans dropped at `submit` because the queue was full or the exporter had shut down.
    pub dropped_queue_full: u64,
    /// Spans given up on: non-retryable errors, retries exhausted, rejected in a partial
    /// success, or still queued at the shutdown deadline.
    pub failed: u64,
    /// Retry attempts made (each retry of a batch counts once).
    pub retries: u64,
}

struct Lane {
    tx: mpsc::Sender<Span>,
    counters: Arc<Counters>,
    done: watch::Receiver<bool>,
    abort: AbortHandle,
}

struct Inner {
    /// Primary (OTLP if configured) first.
    lanes: Vec<Lane>,
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
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| ExportError::NoRuntime)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(None);
    let mut sinks = Vec::new();
    if let Some(otlp) = &config.otlp {
        let counters = Arc::new(Counters::default());
        let sink = OtlpSink::new(otlp, config.retry, counters.clone())?;
        sinks.push((Sink::Otlp(Box::new(sink)), counters));
        tracing::info!(
            "exporting spans with OTLP {} to {}",
            otlp.protocol,
            otlp.endpoint
        );
    }
    if config.console {
        let counters = Arc::new(Counters::default());
        sinks.push((Sink::Console(ConsoleSink::new(counters.clone())), counters));
    }
    if sinks.is_empty() {
        return Err(ExportError::NothingToDo);
    }
    let lanes = sinks
        .into_iter()
        .map(|(sink, counters)| {
            let (tx, rx) = mpsc::channel(config.max_queue.max(1));
            let (done_tx, done) = watch::channel(false);
            let batch = BatchConfig {
                max_batch: config.max_batch,
                batch_timeout: config.batch_timeout,
            };
            let shutdown = Shutdown::new(shutdown_rx.clone());
            let task_counters = counters.clone();
            let task = runtime.spawn(async move {
                pipeline::run(rx, sink, batch, shutdown, task_counters).await;
                let _ = done_tx.send(true);
            });
            Lane {
                tx,
                counters,
                done,
                abort: task.abort_handle(),
            }
        })
        .collect();
    Ok(ExporterHandle {
        inner: Arc::new(Inner {
            lanes,
            closed: AtomicBool::new(false),
            shutdown_tx,
            shutdown_timeout: config.shutdown_timeout,
            created: Instant::now(),
            last_drop_warn: AtomicU64::new(0),
        }),
    })
}

impl ExporterHandle {
    /// Queues a span for every configured exporter. Never blocks and never awaits: if a queue is
    /// full (or the exporter has shut down) the span is dropped there and counted.
    pub fn submit(&self, span: Span) {
        let inner = &*self.inner;
        if inner.closed.load(Ordering::Relaxed) {
            for lane in &inner.lanes {
                lane.counters.add_dropped(1);
            }
            return;
        }
        let mut span = Some(span);
        let last = inner.lanes.len() - 1;
        for (i, lane) in inner.lanes.iter().enumerate() {
            let s = if i == last { span.take() } else { span.clone() };
            let Some(s) = s else { break };
            match lane.tx.try_send(s) {
                Ok(()) => lane.counters.add_queued(1),
                Err(e) => {
                    lane.counters.add_dropped(1);
                    if i == 0 && matches!(e, mpsc::error::TrySendError::Full(_)) {
                        self.warn_dropped();
                    }
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
                inner.lanes[0].tx.max_capacity()
            );
        }
    }

    /// Snapshot of the primary exporter's counters (OTLP when configured, else the console).
    pub fn stats(&self) -> ExportStats {
        self.inner.lanes[0].counters.snapshot()
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
        for lane in &inner.lanes {
            let mut done = lane.done.clone();
            // `Err` means the task is gone, which is just as done.
            if timeout_at(deadline + SHUTDOWN_GRACE, done.wait_for(|d| *d))
                .await
                .is_err()
            {
                tracing::warn!("exporter did not stop within its shutdown deadline; aborting it");
                lane.abort.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::trace::span::{Resource, SpanId, SpanKind, Status, TraceId};

    fn span(n: u8) -> Span {
        Span {
            trace_id: TraceId([n; 16]),
            span_id: SpanId([n; 8]),
            parent_span_id: None,
            trace_state: String::new(),
            name: format!("span-{n}"),
            kind: SpanKind::Server,
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            attributes: vec![],
            status: Status::Unset,
            resource: Arc::new(Resource {
                key: "k".into(),
                attributes: vec![],
            }),
            scope: "socktrace.test",
        }
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
