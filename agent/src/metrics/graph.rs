//! The service graph: requests between a client and a server service seen on this node, named
//! as the OpenTelemetry Collector's `servicegraph` connector and Tempo's metrics generator name
//! them (`traces_service_graph_request_total`, `..._failed_total`, `..._server_seconds`,
//! `..._client_seconds`; labels `client`, `server`, `connection_type`), so their dashboards and
//! Grafana's service map work unchanged.
//!
//! A CLIENT span and the SERVER span whose parent it is form one edge: the linker makes a server
//! span the child of the client span when both ends of a connection are traced here. Each side
//! waits for the other at most [`EDGE_WAIT`] in a bounded store ([`MAX_PENDING`]); a side left
//! alone then becomes an edge to a "virtual node" named from what the span knows of its peer:
//! - a client span without its server: `server` is `db.namespace` (databases) or
//!   `server.address`, and `connection_type` is `database` or `virtual_node`;
//! - a server span without its client (its parent is on another host, or it has none):
//!   `client` is the peer's `client.address`, `connection_type` `virtual_node`.
//!
//! A paired edge has `connection_type` `database` for database calls, else empty (the
//! connector's "unset"). Its durations come from each side; a virtual edge has one side, whose
//! duration goes into both histograms (so their counts equal the request count, as the
//! connector does for databases). An edge failed when either span has the error status.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use super::{
    histogram::{GRAPH_SECONDS, Histogram},
    table::Table,
};
use crate::{
    FastMap,
    trace::span::{KeyValue, Span, SpanId, SpanKind, Status, TraceId, Value},
};

/// How long one side of an edge waits for the other.
pub const EDGE_WAIT: Duration = Duration::from_secs(3);
/// Sides waiting at most; beyond it the oldest is completed as a virtual edge at once.
pub const MAX_PENDING: usize = 10_000;

/// The values of one edge.
#[derive(Clone, Debug, PartialEq)]
pub struct Edge {
    pub total: u64,
    pub failed: u64,
    pub server: Histogram,
    pub client: Histogram,
}

impl Default for Edge {
    fn default() -> Self {
        Self {
            total: 0,
            failed: 0,
            server: Histogram::new(GRAPH_SECONDS),
            client: Histogram::new(GRAPH_SECONDS),
        }
    }
}

/// What one span says about its side of an edge.
#[derive(Debug)]
struct Side {
    service: String,
    /// The name of the other side if it never shows up.
    peer: String,
    seconds: f64,
    failed: bool,
    database: bool,
}

/// Whether the span is a database call (its edge has `connection_type="database"`).
pub fn is_database(span: &Span) -> bool {
    span.attr("db.system.name").is_some()
}

/// The name of the virtual node on the other side of `span` when that side is not seen: a
/// client span's `db.namespace` (databases) or `server.address`, a server span's
/// `client.address`; `unknown` without them.
pub fn virtual_peer(span: &Span) -> String {
    let text = |k: &str| match span.attr(k) {
        Some(Value::Str(s)) if !s.is_empty() => Some(s.to_string()),
        Some(v @ Value::Int(_)) => Some(v.to_string()),
        _ => None,
    };
    let peer = match span.kind {
        SpanKind::Client if is_database(span) => {
            text("db.namespace").or_else(|| text("server.address"))
        }
        SpanKind::Client => text("server.address"),
        SpanKind::Server => text("client.address").or_else(|| text("network.peer.address")),
    };
    peer.unwrap_or_else(|| "unknown".to_owned())
}

impl Side {
    fn of(span: &Span) -> Self {
        Side {
            service: span.resource.service_name().to_owned(),
            peer: virtual_peer(span),
            seconds: span.end_unix_nanos.saturating_sub(span.start_unix_nanos) as f64 / 1e9,
            failed: matches!(span.status, Status::Error { .. }),
            database: is_database(span),
        }
    }
}

#[derive(Debug, Default)]
struct Pending {
    client: Option<Side>,
    server: Option<Side>,
}

type Key = (TraceId, SpanId);

#[derive(Debug)]
pub struct Graph {
    pub edges: Table<Edge>,
    pending: FastMap<Key, Pending>,
    /// Keys in arrival order with their deadline (a completed key stays until popped).
    order: VecDeque<(Instant, Key)>,
    /// Edges whose both sides were seen.
    pub paired: u64,
    /// Sides completed alone (virtual edges), after waiting or to make room.
    pub unpaired: u64,
    /// Of those, completed early because the store was full.
    pub evicted: u64,
}

impl Graph {
    pub fn new(cap: usize) -> Self {
        Self {
            edges: Table::new(cap),
            pending: FastMap::default(),
            order: VecDeque::new(),
            paired: 0,
            unpaired: 0,
            evicted: 0,
        }
    }

    /// Sides waiting for their other half now.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }

    pub fn record(&mut self, span: &Span, now: Instant) {
        let (key, client) = match (span.kind, span.parent_span_id) {
            (SpanKind::Client, _) => ((span.trace_id, span.span_id), true),
            (SpanKind::Server, Some(parent)) => ((span.trace_id, parent), false),
            (SpanKind::Server, None) => {
                // A root: no client span anywhere.
                self.unpaired += 1;
                self.complete(None, Some(Side::of(span)));
                return;
            }
        };
        let side = Side::of(span);
        if let Some(p) = self.pending.get_mut(&key) {
            let slot = if client { &mut p.client } else { &mut p.server };
            if slot.is_none() {
                *slot = Some(side);
                if let Some(p) = self.pending.remove(&key) {
                    self.paired += 1;
                    self.complete(p.client, p.server);
                }
                return;
            }
            // A second span with the same ids (should not happen): complete the first alone.
            self.expire_key(&key);
        }
        while self.pending.len() >= MAX_PENDING {
            let Some((_, old)) = self.order.pop_front() else {
                break;
            };
            if self.pending.contains_key(&old) {
                self.evicted += 1;
                self.expire_key(&old);
            }
        }
        let mut p = Pending::default();
        *(if client { &mut p.client } else { &mut p.server }) = Some(side);
        self.pending.insert(key, p);
        self.order.push_back((now + EDGE_WAIT, key));
        // Keys already paired at the front need not wait for their deadline.
        while self
            .order
            .front()
            .is_some_and(|(_, k)| !self.pending.contains_key(k))
        {
            self.order.pop_front();
        }
    }

    /// Completes alone every side that waited its time.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(deadline, key)) = self.order.front() {
            if deadline > now {
                break;
            }
            self.order.pop_front();
            self.expire_key(&key);
        }
    }

    /// Every waiting side, completed alone (at shutdown).
    pub fn expire_all(&mut self) {
        while let Some((_, key)) = self.order.pop_front() {
            self.expire_key(&key);
        }
    }

    fn expire_key(&mut self, key: &Key) {
        if let Some(p) = self.pending.remove(key) {
            self.unpaired += 1;
            self.complete(p.client, p.server);
        }
    }

    fn complete(&mut self, client: Option<Side>, server: Option<Side>) {
        let (client_name, server_name, connection_type, c_secs, s_secs, failed) =
            match (client, server) {
                (Some(c), Some(s)) => (
                    c.service,
                    s.service,
                    if c.database { "database" } else { "" },
                    c.seconds,
                    s.seconds,
                    c.failed || s.failed,
                ),
                (Some(c), None) => (
                    c.service,
                    c.peer,
                    if c.database {
                        "database"
                    } else {
                        "virtual_node"
                    },
                    c.seconds,
                    c.seconds,
                    c.failed,
                ),
                (None, Some(s)) => (
                    s.peer,
                    s.service,
                    "virtual_node",
                    s.seconds,
                    s.seconds,
                    s.failed,
                ),
                (None, None) => return,
            };
        let attributes = vec![
            KeyValue::new("client", client_name),
            KeyValue::new("server", server_name),
            KeyValue::new("connection_type", Value::text(connection_type)),
        ];
        if let Some(e) = self.edges.entry(None, attributes, Edge::default) {
            e.total += 1;
            e.failed += u64::from(failed);
            e.client.record(c_secs);
            e.server.record(s_secs);
        }
    }
}
