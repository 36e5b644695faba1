//! Metrics computed from every finished span, before anything decides which spans to export:
//! the RED histograms of the semantic conventions ([`red`]) and the service graph ([`graph`]).
//!
//! The capture thread records each chunk of spans ([`Metrics::record`]); the OTLP metrics
//! exporter and the Prometheus endpoint read a copy ([`Metrics::collect`]). Every metric has at
//! most [`DEFAULT_SERIES_CAP`] series (see [`table`]); the values are cumulative since start.

pub mod graph;
pub mod histogram;
pub mod prometheus;
pub mod red;
pub mod table;

use std::{
    sync::{Arc, Mutex},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use self::{graph::Graph, red::Red};
use crate::{protocol::opaque_tls::SCOPE as OPAQUE_SCOPE, trace::span::Span};

/// Series per metric before points go to the overflow series.
pub const DEFAULT_SERIES_CAP: usize = 2000;

crate::counters! {
    /// Counters of the span metrics.
    pub struct MetricsStats {
        /// Spans measured (every span handed to the exporter).
        spans,
        /// Spans of no kind a RED metric measures (database server spans).
        unmeasured,
        /// Points recorded in an overflow series (`otel.metric.overflow=true`): the metric had too many series.
        overflowed,
        /// Points dropped: too many series and too many overflow series.
        dropped,
        /// Service-graph edges whose client and server span were both seen.
        edges_paired,
        /// Service-graph spans completed without their other side (virtual nodes).
        edges_unpaired,
        /// Of those, completed before their wait because too many sides were waiting.
        edges_evicted,
    }
}

/// Everything recorded so far.
#[derive(Debug)]
pub struct Aggregator {
    pub red: Red,
    pub graph: Graph,
    spans: u64,
    unmeasured: u64,
    /// Wall-clock start, the start time of every cumulative point.
    pub start_unix_nanos: u64,
}

impl Aggregator {
    pub fn new(cap: usize) -> Self {
        Self {
            red: Red::new(cap),
            graph: Graph::new(cap),
            spans: 0,
            unmeasured: 0,
            start_unix_nanos: unix_nanos(),
        }
    }

    pub fn record(&mut self, spans: &[Span], now: Instant) {
        self.graph.expire(now);
        for span in spans {
            self.spans += 1;
            if span.scope == OPAQUE_SCOPE {
                // A connection, not a request: no duration metric, no service-graph request.
                self.unmeasured += 1;
                continue;
            }
            if !self.red.record(span) {
                self.unmeasured += 1;
            }
            self.graph.record(span, now);
        }
    }

    pub fn stats(&self) -> MetricsStats {
        let (mut overflowed, mut dropped) = (self.graph.edges.overflowed, self.graph.edges.dropped);
        for t in &self.red.tables {
            overflowed += t.overflowed;
            dropped += t.dropped;
        }
        MetricsStats {
            spans: self.spans,
            unmeasured: self.unmeasured,
            overflowed,
            dropped,
            edges_paired: self.graph.paired,
            edges_unpaired: self.graph.unpaired,
            edges_evicted: self.graph.evicted,
        }
    }
}

/// A copy of the aggregates at one moment.
#[derive(Clone, Debug)]
pub struct Collected {
    pub red: Vec<table::Table<histogram::Histogram>>,
    pub graph: table::Table<graph::Edge>,
    pub start_unix_nanos: u64,
    pub time_unix_nanos: u64,
}

/// The shared aggregator: the capture thread records, exporters collect. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics(Arc<Mutex<Aggregator>>);

impl Default for Metrics {
    fn default() -> Self {
        Self::new(DEFAULT_SERIES_CAP)
    }
}

impl Metrics {
    pub fn new(cap: usize) -> Self {
        Self(Arc::new(Mutex::new(Aggregator::new(cap))))
    }

    pub fn record(&self, spans: &[Span]) {
        if let Ok(mut a) = self.0.lock() {
            a.record(spans, Instant::now());
        }
    }

    /// Completes the service-graph sides that waited long enough (or all of them, at
    /// shutdown), then copies the aggregates.
    pub fn collect(&self, final_collect: bool) -> Option<Collected> {
        let mut a = self.0.lock().ok()?;
        if final_collect {
            a.graph.expire_all();
        } else {
            a.graph.expire(Instant::now());
        }
        Some(Collected {
            red: a.red.tables.clone(),
            graph: a.graph.edges.clone(),
            start_unix_nanos: a.start_unix_nanos,
            time_unix_nanos: unix_nanos(),
        })
    }

    pub fn stats(&self) -> MetricsStats {
        self.0.lock().map(|a| a.stats()).unwrap_or_default()
    }

    /// Service-graph sides waiting for their other half now.
    pub fn waiting(&self) -> u64 {
        self.0.lock().map_or(0, |a| a.graph.waiting() as u64)
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests;
