//! The viewer's bounded store of recent spans, grouped by trace, and the three views computed
//! from it: the trace list (with its filters), one trace as a waterfall, and the service map.
//!
//! Traces are kept in the order their first span arrived; when a bound is passed (traces, or
//! spans in all) the oldest traces go first, whole, counted. One trace keeps at most
//! [`Limits::max_spans_per_trace`] spans (later ones are dropped, counted), so a runaway trace
//! cannot push every other one out.

use std::collections::{HashMap, HashSet, VecDeque};

use serde::Serialize;

use crate::{
    metrics::graph::{is_database, virtual_peer},
    trace::span::{Span, SpanId, SpanKind, Status, TraceId, Value},
};

/// The store's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_traces: usize,
    pub max_spans: usize,
    pub max_spans_per_trace: usize,
}

impl Default for Limits {
    /// Bounded by counts, not bytes: a span's size depends on its attributes (URLs, query
    /// texts), so the store's memory follows the traffic's, within these counts.
    fn default() -> Self {
        Self {
            max_traces: 2_000,
            max_spans: 10_000,
            max_spans_per_trace: 1_000,
        }
    }
}

crate::counters! {
    /// Counters of the viewer's store (`--ui`).
    pub struct UiStats {
        /// Spans put in the viewer's store (the spans the sampler kept).
        spans_stored,
        /// Spans removed with the oldest traces to keep the store within its bounds.
        spans_evicted,
        /// Traces removed, oldest first, to keep the store within its bounds.
        traces_evicted,
        /// Spans not stored: their trace already had the most spans one trace may keep, or the store was busy for too long (the capture thread never waits for it).
        spans_dropped,
    }
}

struct StoredTrace {
    spans: Vec<Span>,
}

/// Recent spans by trace, bounded.
pub struct Store {
    limits: Limits,
    traces: HashMap<TraceId, StoredTrace>,
    /// Trace ids in the order their first span arrived (each once).
    order: VecDeque<TraceId>,
    spans: usize,
    pub stats: UiStats,
}

/// Which traces the list shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    /// A part of a service name (any span's), case-insensitive.
    pub service: Option<String>,
    /// `Some(true)`: traces with an error span; `Some(false)`: traces without one.
    pub error: Option<bool>,
    /// Traces lasting at least this long (first start to last end).
    pub min_duration_ns: u64,
    /// At most this many traces, newest first.
    pub limit: usize,
}

/// One line of the trace list.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TraceSummary {
    pub trace_id: String,
    /// The service and name of the root span (the earliest span without a parent here).
    pub root_service: String,
    pub root_name: String,
    /// When the root is a client: the service and name of the first server span (what was
    /// called), e.g. `py-server GET /item/{id}`.
    pub entry: Option<String>,
    /// Every service of the trace, in order of first appearance by start time.
    pub services: Vec<String>,
    pub spans: usize,
    pub errors: usize,
    /// `error` when a span has the error status, else `ok`.
    pub status: &'static str,
    pub start_unix_ms: u64,
    pub duration_ns: u64,
}

/// One span of a waterfall.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WaterfallSpan {
    pub span_id: String,
    /// The parent's id, also when the parent is not in the store (on another host).
    pub parent_span_id: Option<String>,
    /// 0 for roots (and spans whose parent is not here), parent's depth + 1 otherwise.
    pub depth: usize,
    pub service: String,
    pub name: String,
    /// What a client span called, when its name does not say it: `url.full` (HTTP),
    /// `db.query.text` (databases), `server.address` otherwise; empty for server spans.
    pub detail: String,
    pub kind: &'static str,
    /// Since the trace's first start.
    pub offset_ns: u64,
    pub duration_ns: u64,
    /// `error`, `ok` or `unset`.
    pub status: &'static str,
    pub status_message: String,
    pub attributes: Vec<(String, String)>,
}

/// One trace, its spans in waterfall order: every span right after its parent, siblings in
/// start order.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Waterfall {
    pub trace_id: String,
    pub start_unix_ms: u64,
    pub duration_ns: u64,
    pub spans: Vec<WaterfallSpan>,
}

/// A node of the service map.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Node {
    pub name: String,
    /// `service` (a traced process), `virtual` (a peer only named by a span) or `database`.
    pub kind: &'static str,
}

/// Requests from one service to another, over the spans in the store.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MapEdge {
    pub client: String,
    pub server: String,
    /// As the service-graph metrics name it: empty, `virtual_node` or `database`.
    pub connection_type: &'static str,
    pub requests: u64,
    pub errors: u64,
    /// Requests per second between the first request's start and the last one's end (at
    /// least one second).
    pub rate_per_s: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ServiceMap {
    pub nodes: Vec<Node>,
    pub edges: Vec<MapEdge>,
}

fn is_error(span: &Span) -> bool {
    matches!(span.status, Status::Error { .. })
}

fn duration(span: &Span) -> u64 {
    span.end_unix_nanos.saturating_sub(span.start_unix_nanos)
}

impl Store {
    pub fn new(limits: Limits) -> Self {
        let max_spans = limits.max_spans.max(1);
        Self {
            limits: Limits {
                max_traces: limits.max_traces.max(1),
                max_spans,
                max_spans_per_trace: limits.max_spans_per_trace.clamp(1, max_spans),
            },
            traces: HashMap::new(),
            order: VecDeque::new(),
            spans: 0,
            stats: UiStats::default(),
        }
    }

    /// Traces in the store now.
    pub fn traces(&self) -> usize {
        self.traces.len()
    }

    /// Spans in the store now.
    pub fn spans(&self) -> usize {
        self.spans
    }

    /// Adds spans, then evicts the oldest traces beyond the bounds.
    pub fn insert(&mut self, spans: impl IntoIterator<Item = Span>) {
        for span in spans {
            let id = span.trace_id;
            let trace = self.traces.entry(id).or_insert_with(|| {
                self.order.push_back(id);
                StoredTrace { spans: Vec::new() }
            });
            if trace.spans.len() >= self.limits.max_spans_per_trace {
                self.stats.spans_dropped += 1;
                continue;
            }
            trace.spans.push(span);
            self.spans += 1;
            self.stats.spans_stored += 1;
            // A single trace is within both bounds (its spans are capped below max_spans).
            while (self.traces.len() > self.limits.max_traces || self.spans > self.limits.max_spans)
                && self.traces.len() > 1
            {
                let Some(old) = self.order.pop_front() else {
                    break;
                };
                if let Some(t) = self.traces.remove(&old) {
                    self.spans -= t.spans.len();
                    self.stats.traces_evicted += 1;
                    self.stats.spans_evicted += t.spans.len() as u64;
                }
            }
        }
    }

    /// Every service name in the store, sorted.
    pub fn services(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .traces
            .values()
            .flat_map(|t| &t.spans)
            .map(|s| s.resource.service_name())
            .collect::<HashSet<_>>()
            .into_iter()
            .map(str::to_owned)
            .collect();
        names.sort();
        names
    }

    /// The traces `filter` selects, newest (latest start) first.
    pub fn list(&self, filter: &Filter) -> Vec<TraceSummary> {
        let needle = filter
            .service
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_lowercase);
        let mut out: Vec<TraceSummary> = self
            .traces
            .iter()
            .filter(|(_, t)| !t.spans.is_empty())
            .map(|(id, t)| summarize(id, &t.spans))
            .filter(|s| {
                needle
                    .as_ref()
                    .is_none_or(|n| s.services.iter().any(|svc| svc.to_lowercase().contains(n)))
                    && filter.error.is_none_or(|e| e == (s.errors > 0))
                    && s.duration_ns >= filter.min_duration_ns
            })
            .collect();
        out.sort_by(|a, b| (b.start_unix_ms, &b.trace_id).cmp(&(a.start_unix_ms, &a.trace_id)));
        out.truncate(filter.limit);
        out
    }

    /// One trace as a waterfall, if it is in the store.
    pub fn waterfall(&self, id: &TraceId) -> Option<Waterfall> {
        let spans = &self.traces.get(id)?.spans;
        let start = spans.iter().map(|s| s.start_unix_nanos).min()?;
        let end = spans
            .iter()
            .map(|s| s.end_unix_nanos)
            .max()
            .unwrap_or(start);
        let ids: HashSet<SpanId> = spans.iter().map(|s| s.span_id).collect();
        let mut by_start: Vec<&Span> = spans.iter().collect();
        by_start.sort_by_key(|s| (s.start_unix_nanos, s.end_unix_nanos));
        // Children of each span in start order; roots are spans whose parent is not here.
        let mut children: HashMap<SpanId, Vec<&Span>> = HashMap::new();
        let mut roots = Vec::new();
        for s in &by_start {
            match s
                .parent_span_id
                .filter(|p| ids.contains(p) && *p != s.span_id)
            {
                Some(p) => children.entry(p).or_default().push(s),
                None => roots.push(*s),
            }
        }
        let mut out = Vec::with_capacity(spans.len());
        let mut visited = HashSet::new();
        let mut stack: Vec<(&Span, usize)> = roots.into_iter().rev().map(|s| (s, 0)).collect();
        loop {
            while let Some((s, depth)) = stack.pop() {
                if !visited.insert(s.span_id) {
                    continue;
                }
                out.push(waterfall_span(s, depth, start));
                if let Some(kids) = children.get(&s.span_id) {
                    stack.extend(kids.iter().rev().map(|k| (*k, depth + 1)));
                }
            }
            // Spans in a parent loop (ids reused) are never reached from a root: add them as
            // roots rather than hide them.
            match by_start.iter().find(|s| !visited.contains(&s.span_id)) {
                Some(s) if out.len() < spans.len() => stack.push((s, 0)),
                _ => break,
            }
        }
        Some(Waterfall {
            trace_id: id.to_string(),
            start_unix_ms: start / 1_000_000,
            duration_ns: end - start,
            spans: out,
        })
    }

    /// Who calls whom, over the spans in the store. A CLIENT span and the SERVER span whose
    /// parent it is are one request from the client's service to the server's; a side whose
    /// partner is not in the store is a request to or from a virtual node named as the
    /// service-graph metrics name it. A request failed when either span has the error status;
    /// its duration is the client's (the server's for a request from a virtual node).
    pub fn service_map(&self) -> ServiceMap {
        struct Acc {
            durations: Vec<u64>,
            errors: u64,
            first: u64,
            last: u64,
        }
        let mut edges: HashMap<(String, String, &'static str), Acc> = HashMap::new();
        let mut nodes: HashMap<String, &'static str> = HashMap::new();
        let mut add =
            |client: String, server: String, kind: &'static str, span: &Span, failed: bool| {
                let acc = edges.entry((client, server, kind)).or_insert_with(|| Acc {
                    durations: Vec::new(),
                    errors: 0,
                    first: u64::MAX,
                    last: 0,
                });
                acc.durations.push(duration(span));
                acc.errors += u64::from(failed);
                acc.first = acc.first.min(span.start_unix_nanos);
                acc.last = acc.last.max(span.end_unix_nanos);
            };
        for t in self.traces.values() {
            let by_id: HashMap<SpanId, &Span> = t.spans.iter().map(|s| (s.span_id, s)).collect();
            let mut server_of: HashMap<SpanId, &Span> = HashMap::new();
            for s in &t.spans {
                if let (SpanKind::Server, Some(p)) = (s.kind, s.parent_span_id)
                    && by_id.get(&p).is_some_and(|c| c.kind == SpanKind::Client)
                {
                    server_of.entry(p).or_insert(s);
                }
            }
            for s in &t.spans {
                let service = s.resource.service_name().to_owned();
                nodes.insert(service.clone(), "service");
                if s.scope == crate::protocol::opaque_tls::SCOPE {
                    // An unreadable TLS connection, not a request (as in the metrics).
                    continue;
                }
                match s.kind {
                    SpanKind::Client => match server_of.get(&s.span_id) {
                        Some(server) => {
                            let kind = if is_database(s) { "database" } else { "" };
                            add(
                                service,
                                server.resource.service_name().to_owned(),
                                kind,
                                s,
                                is_error(s) || is_error(server),
                            );
                        }
                        None => {
                            let (kind, node) = if is_database(s) {
                                ("database", "database")
                            } else {
                                ("virtual_node", "virtual")
                            };
                            let peer = virtual_peer(s);
                            nodes.entry(peer.clone()).or_insert(node);
                            add(service, peer, kind, s, is_error(s));
                        }
                    },
                    SpanKind::Server => {
                        let paired = s.parent_span_id.is_some_and(|p| {
                            server_of.get(&p).is_some_and(|x| x.span_id == s.span_id)
                        });
                        if !paired {
                            let peer = virtual_peer(s);
                            nodes.entry(peer.clone()).or_insert("virtual");
                            add(peer, service, "virtual_node", s, is_error(s));
                        }
                    }
                }
            }
        }
        let mut edges: Vec<MapEdge> = edges
            .into_iter()
            .map(|((client, server, connection_type), mut acc)| {
                acc.durations.sort_unstable();
                let n = acc.durations.len();
                let ms = |ns: u64| ns as f64 / 1e6;
                // Nearest rank.
                let pct = |q: f64| {
                    let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
                    ms(acc.durations[rank - 1])
                };
                let window = (acc.last.saturating_sub(acc.first) as f64 / 1e9).max(1.0);
                MapEdge {
                    client,
                    server,
                    connection_type,
                    requests: n as u64,
                    errors: acc.errors,
                    rate_per_s: n as f64 / window,
                    mean_ms: ms(acc.durations.iter().sum::<u64>()) / n as f64,
                    p50_ms: pct(0.5),
                    p99_ms: pct(0.99),
                }
            })
            .collect();
        edges.sort_by(|a, b| (&a.client, &a.server).cmp(&(&b.client, &b.server)));
        let mut nodes: Vec<Node> = nodes
            .into_iter()
            .map(|(name, kind)| Node { name, kind })
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        ServiceMap { nodes, edges }
    }
}

fn summarize(id: &TraceId, spans: &[Span]) -> TraceSummary {
    let start = spans.iter().map(|s| s.start_unix_nanos).min().unwrap_or(0);
    let end = spans
        .iter()
        .map(|s| s.end_unix_nanos)
        .max()
        .unwrap_or(start);
    let ids: HashSet<SpanId> = spans.iter().map(|s| s.span_id).collect();
    let root = spans
        .iter()
        .filter(|s| s.parent_span_id.is_none_or(|p| !ids.contains(&p)))
        .min_by_key(|s| s.start_unix_nanos)
        .or_else(|| spans.iter().min_by_key(|s| s.start_unix_nanos));
    let mut by_start: Vec<&Span> = spans.iter().collect();
    by_start.sort_by_key(|s| s.start_unix_nanos);
    let mut services: Vec<String> = Vec::new();
    for s in by_start {
        let name = s.resource.service_name();
        if !services.iter().any(|n| n == name) {
            services.push(name.to_owned());
        }
    }
    let errors = spans.iter().filter(|s| is_error(s)).count();
    let entry = root
        .filter(|r| r.kind == SpanKind::Client)
        .and_then(|_| {
            spans
                .iter()
                .filter(|s| s.kind == SpanKind::Server)
                .min_by_key(|s| s.start_unix_nanos)
        })
        .map(|s| format!("{} {}", s.resource.service_name(), s.name));
    TraceSummary {
        trace_id: id.to_string(),
        root_service: root.map_or_else(String::new, |r| r.resource.service_name().to_owned()),
        root_name: root.map_or_else(String::new, |r| r.name.clone()),
        entry,
        services,
        spans: spans.len(),
        errors,
        status: if errors > 0 { "error" } else { "ok" },
        start_unix_ms: start / 1_000_000,
        duration_ns: end - start,
    }
}

fn waterfall_span(s: &Span, depth: usize, trace_start: u64) -> WaterfallSpan {
    let (status, status_message) = match &s.status {
        Status::Error { message } => ("error", message.clone()),
        Status::Ok => ("ok", String::new()),
        Status::Unset => ("unset", String::new()),
    };
    let mut attributes: Vec<(String, String)> = s
        .attributes
        .iter()
        .map(|kv| {
            let v = match &kv.value {
                Value::Str(v) => v.to_string(),
                other => other.to_string(),
            };
            (kv.key.to_string(), v)
        })
        .collect();
    attributes.sort();
    let detail = match s.kind {
        SpanKind::Server => String::new(),
        SpanKind::Client => ["url.full", "db.query.text", "server.address"]
            .into_iter()
            .find_map(|k| match s.attr(k) {
                Some(Value::Str(v)) if !v.is_empty() => Some(v.to_string()),
                _ => None,
            })
            .unwrap_or_default(),
    };
    WaterfallSpan {
        span_id: s.span_id.to_string(),
        parent_span_id: s.parent_span_id.map(|p| p.to_string()),
        depth,
        service: s.resource.service_name().to_owned(),
        name: s.name.clone(),
        detail,
        kind: match s.kind {
            SpanKind::Server => "server",
            SpanKind::Client => "client",
        },
        offset_ns: s.start_unix_nanos.saturating_sub(trace_start),
        duration_ns: duration(s),
        status,
        status_message,
        attributes,
    }
}
