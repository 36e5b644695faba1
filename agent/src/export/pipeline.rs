//! The machinery shared by exporters: counters, the shutdown signal and the batching loop.

use std::{
    collections::VecDeque,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::AcqRel, Ordering::Relaxed},
    },
    time::Duration,
};

use tokio::{
    sync::{mpsc, watch},
    time::{Instant, sleep_until, timeout_at},
};

use super::ExportStats;
use crate::trace::span::Span;

/// Monotonic counters of one exporter.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    queued: AtomicU64,
    exported: AtomicU64,
    dropped_queue_full: AtomicU64,
    failed: AtomicU64,
    retries: AtomicU64,
    /// The endpoint is failing: a batch is waiting to be retried.
    failing: AtomicBool,
}

impl Counters {
    pub(crate) fn add_queued(&self, n: u64) {
        self.queued.fetch_add(n, Relaxed);
    }
    pub(crate) fn add_exported(&self, n: u64) {
        self.exported.fetch_add(n, Relaxed);
    }
    pub(crate) fn add_dropped(&self, n: u64) {
        self.dropped_queue_full.fetch_add(n, Relaxed);
    }
    pub(crate) fn add_failed(&self, n: u64) {
        self.failed.fetch_add(n, Relaxed);
    }
    pub(crate) fn add_retry(&self) {
        self.retries.fetch_add(1, Relaxed);
    }
    pub(crate) fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Relaxed);
    }
    pub(crate) fn failing(&self) -> bool {
        self.failing.load(Relaxed)
    }
    pub(crate) fn snapshot(&self) -> ExportStats {
        ExportStats {
            queued: self.queued.load(Relaxed),
            exported: self.exported.load(Relaxed),
            dropped_queue_full: self.dropped_queue_full.load(Relaxed),
            failed: self.failed.load(Relaxed),
            retries: self.retries.load(Relaxed),
        }
    }
}

/// The exporter task's view of shutdown: `Some(deadline)` once shutdown was requested.
pub(crate) struct Shutdown {
    rx: watch::Receiver<Option<Instant>>,
}

impl Shutdown {
    pub(crate) fn new(rx: watch::Receiver<Option<Instant>>) -> Self {
        Self { rx }
    }

    pub(crate) fn deadline(&self) -> Option<Instant> {
        *self.rx.borrow()
    }

    pub(crate) fn deadline_passed(&self) -> bool {
        self.deadline().is_some_and(|d| Instant::now() >= d)
    }

    /// Resolves once shutdown is requested (never if the handle is gone without asking).
    pub(crate) async fn requested(&mut self) {
        if self.rx.wait_for(Option::is_some).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Runs `fut` until it completes, `limit` passes, or the shutdown deadline passes; `None` if
    /// it did not complete.
    pub(crate) async fn bound<F: Future>(&mut self, fut: F, limit: Instant) -> Option<F::Output> {
        tokio::pin!(fut);
        if self.deadline().is_none() {
            tokio::select! {
                out = &mut fut => return Some(out),
                () = sleep_until(limit) => return None,
                () = self.requested() => {}
            }
        }
        let end = self.deadline().map_or(limit, |d| d.min(limit));
        timeout_at(end, fut).await.ok()
    }

    /// Sleeps for `d`; `false` if the shutdown deadline came first.
    pub(crate) async fn sleep(&mut self, d: Duration) -> bool {
        let until = Instant::now() + d;
        self.bound(sleep_until(until), until + Duration::from_secs(1))
            .await
            .is_some()
    }
}

/// Where a pipeline delivers its batches (the console, an OTLP endpoint). `export` returns once
/// every span of the batch is counted as exported or failed.
pub(crate) trait Sink: Send + 'static {
    fn export(
        &mut self,
        batch: Vec<Span>,
        shutdown: &mut Shutdown,
    ) -> impl Future<Output = ()> + Send;
}

pub(crate) struct BatchConfig {
    pub(crate) max_batch: usize,
    pub(crate) batch_timeout: Duration,
}

/// The receiving end of an exporter's queue: chunks of spans, taken span by span.
pub(crate) struct Queue {
    rx: mpsc::UnboundedReceiver<Vec<Span>>,
    /// Spans sent and not yet taken into a batch, `carry` included (shared with the senders,
    /// who bound it): everything the exporter holds beyond the batch being built or sent.
    in_queue: Arc<AtomicUsize>,
    /// The rest of the last chunk received.
    carry: VecDeque<Span>,
}

impl Queue {
    pub(crate) fn new(rx: mpsc::UnboundedReceiver<Vec<Span>>, in_queue: Arc<AtomicUsize>) -> Self {
        Self {
            rx,
            in_queue,
            carry: VecDeque::new(),
        }
    }

    fn received(&mut self, chunk: Vec<Span>) {
        self.carry.extend(chunk);
    }

    /// Moves spans into `batch` until it holds `max` or nothing is left at hand.
    fn take(&mut self, batch: &mut Vec<Span>, max: usize) {
        let n = max.saturating_sub(batch.len()).min(self.carry.len());
        batch.extend(self.carry.drain(..n));
        self.in_queue.fetch_sub(n, AcqRel);
    }

    /// Waits for spans and moves some into `batch` (up to `max`); false once the queue is
    /// closed and empty. Cancel-safe: the only await is the channel's.
    async fn fill(&mut self, batch: &mut Vec<Span>, max: usize) -> bool {
        if self.carry.is_empty() {
            match self.rx.recv().await {
                Some(chunk) => self.received(chunk),
                None => return false,
            }
        }
        self.take(batch, max);
        true
    }

    /// Like `fill` without waiting: false when nothing is queued.
    fn try_fill(&mut self, batch: &mut Vec<Span>, max: usize) -> bool {
        if self.carry.is_empty() {
            match self.rx.try_recv() {
                Ok(chunk) => self.received(chunk),
                Err(_) => return false,
            }
        }
        self.take(batch, max);
        true
    }

    /// Stops accepting chunks; what was sent stays to be taken.
    fn close(&mut self) {
        self.rx.close();
    }

    /// Drops everything still queued, returning how many spans that was.
    fn discard(&mut self) -> u64 {
        let mut n = self.carry.len() as u64;
        self.in_queue.fetch_sub(self.carry.len(), AcqRel);
        self.carry.clear();
        while let Ok(chunk) = self.rx.try_recv() {
            self.in_queue.fetch_sub(chunk.len(), AcqRel);
            n += chunk.len() as u64;
        }
        n
    }
}

/// The single task of one exporter: collects batches (full, or after `batch_timeout`), hands
/// them to the sink one at a time, and flushes what is queued on shutdown until the deadline.
pub(crate) async fn run<S: Sink>(
    mut queue: Queue,
    mut sink: S,
    cfg: BatchConfig,
    mut shutdown: Shutdown,
    counters: Arc<Counters>,
) {
    let max_batch = cfg.max_batch.max(1);
    let mut batch: Vec<Span> = Vec::with_capacity(max_batch);
    loop {
        tokio::select! {
            biased;
            more = queue.fill(&mut batch, max_batch) => if !more { break },
            () = shutdown.requested() => break,
        }
        let flush_at = Instant::now() + cfg.batch_timeout;
        while batch.len() < max_batch {
            tokio::select! {
                biased;
                more = queue.fill(&mut batch, max_batch) => if !more { break },
                () = sleep_until(flush_at) => break,
                () = shutdown.requested() => break,
            }
        }
        let full = std::mem::replace(&mut batch, Vec::with_capacity(max_batch));
        sink.export(full, &mut shutdown).await;
        if shutdown.deadline().is_some() {
            break;
        }
    }

    // Final flush. Closing first makes later submissions fail (and count as dropped) instead of
    // landing in a queue nobody reads.
    queue.close();
    loop {
        while batch.len() < max_batch && queue.try_fill(&mut batch, max_batch) {}
        if batch.is_empty() {
            break;
        }
        if shutdown.deadline_passed() {
            let left = batch.len() as u64 + queue.discard();
            counters.add_failed(left);
            tracing::warn!("exporter shutdown deadline reached; dropping {left} queued spans");
            break;
        }
        let full = std::mem::replace(&mut batch, Vec::with_capacity(max_batch));
        sink.export(full, &mut shutdown).await;
    }
}
