//! The local viewer (`--ui`): a web page served by the agent itself, with the recent traces
//! (searchable by service, status and duration), one trace as a waterfall, and the service map
//! with request rate, errors and duration per edge.
//!
//! It shows what the agent exports: the pipeline hands the viewer the spans the sampler kept,
//! when it hands them to the exporter ([`UiFeed::offer`]), so what the page shows is what a
//! backend receives. The spans wait in a bounded [`store::Store`] (oldest traces evicted,
//! counted under `ui`). The capture thread never waits for the viewer: it copies the spans to a
//! backlog and moves them into the store only when nobody else holds its lock (a page request
//! computing a view), else on its next poll.
//!
//! [`server`] answers the page (one HTML file with its script and styles inline, embedded in the
//! binary: no CDN, no build step) and its JSON API.

pub mod server;
pub mod store;

use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use self::store::{Filter, Limits, ServiceMap, Store, TraceSummary, Waterfall};
use crate::{
    telemetry::Snapshot,
    trace::span::{Span, TraceId},
};

/// Spans the capture thread keeps for the store while it is busy; beyond, the oldest are
/// dropped (counted as `spans_dropped`).
pub const MAX_BACKLOG: usize = 10_000;

/// The shared store: the capture thread adds, the page's requests read. Cheap to clone.
#[derive(Clone)]
pub struct Ui(Arc<Mutex<Store>>);

impl Default for Ui {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl Ui {
    pub fn new(limits: Limits) -> Self {
        Self(Arc::new(Mutex::new(Store::new(limits))))
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock leaves a consistent store (every change is one
        // statement away from it): keep serving.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pipeline's side: what the capture thread feeds.
    pub fn feed(&self) -> UiFeed {
        UiFeed {
            ui: self.clone(),
            backlog: Vec::new(),
            dropped: 0,
        }
    }

    pub fn list(&self, filter: &Filter) -> (Vec<TraceSummary>, Vec<String>) {
        let store = self.lock();
        (store.list(filter), store.services())
    }

    pub fn waterfall(&self, id: &TraceId) -> Option<Waterfall> {
        self.lock().waterfall(id)
    }

    pub fn service_map(&self) -> ServiceMap {
        self.lock().service_map()
    }

    /// Traces and spans in the store now.
    pub fn size(&self) -> (usize, usize) {
        let store = self.lock();
        (store.traces(), store.spans())
    }

    /// The store's counters and gauges, under `ui`.
    pub fn collect(&self, s: &mut Snapshot) {
        let store = self.lock();
        store.stats.collect("ui", s);
        s.gauge(
            "ui",
            "traces",
            "Traces in the viewer's store now.",
            store.traces() as u64,
        );
        s.gauge(
            "ui",
            "spans",
            "Spans in the viewer's store now.",
            store.spans() as u64,
        );
    }
}

/// The capture thread's handle on the store.
pub struct UiFeed {
    ui: Ui,
    /// Spans not yet in the store (it was busy).
    backlog: Vec<Span>,
    /// Spans dropped from a full backlog, not yet counted in the store.
    dropped: u64,
}

impl UiFeed {
    /// Copies `spans` for the viewer and stores what waits, unless a reader holds the store
    /// right now (then they wait for the next call, at most [`MAX_BACKLOG`] of them). Call it
    /// every poll, with or without spans, so the backlog drains.
    pub fn offer(&mut self, spans: &[Span]) {
        self.backlog.extend_from_slice(spans);
        if self.backlog.len() > MAX_BACKLOG {
            let excess = self.backlog.len() - MAX_BACKLOG;
            self.backlog.drain(..excess);
            self.dropped += excess as u64;
        }
        if self.backlog.is_empty() && self.dropped == 0 {
            return;
        }
        let mut store = match self.ui.0.try_lock() {
            Ok(store) => store,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        store.stats.spans_dropped += std::mem::take(&mut self.dropped);
        store.insert(self.backlog.drain(..));
    }

    /// Spans waiting for the store now.
    pub fn backlog(&self) -> usize {
        self.backlog.len()
    }

    /// The store's counters and gauges, under `ui`.
    pub fn collect(&self, s: &mut Snapshot) {
        self.ui.collect(s);
    }
}

#[cfg(test)]
mod tests;
