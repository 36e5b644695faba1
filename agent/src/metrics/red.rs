//! Request rate, errors and duration: one semantic-convention histogram per kind of span, with
//! the attributes the convention lists for it, copied from the span.
//!
//! | spans | metric | unit | buckets |
//! | --- | --- | --- | --- |
//! | HTTP server / client | `http.server.request.duration`, `http.client.request.duration` (stable) | s | advised |
//! | gRPC server / client | `rpc.server.call.duration`, `rpc.client.call.duration` (stable) | s | advised |
//! | gRPC, with `rpc/dup` | `rpc.server.duration`, `rpc.client.duration` (semconv 1.37) | ms | SDK default |
//! | database client | `db.client.operation.duration` (stable) | s | advised |
//!
//! The RPC metrics follow the RPC names the spans carry ([`crate::trace::rpc`]): a span with
//! `rpc.system.name` is measured by the stable metrics, one with the old `rpc.system` (spans
//! carry both with `OTEL_SEMCONV_STABILITY_OPT_IN=rpc/dup`) also by the old ones, with the old
//! attributes. A span of no known kind (a database server span) gives no point.

use std::{borrow::Cow, fmt::Write as _, sync::Arc};

use super::{
    histogram::{DB_SECONDS, DEFAULT_MILLIS, HTTP_SECONDS, Histogram, RPC_SECONDS},
    table::Table,
};
use crate::{
    FastMap,
    trace::{
        rpc,
        span::{KeyValue, Resource, Span, SpanKind, Value},
    },
};

/// One histogram instrument.
#[derive(Debug, PartialEq)]
pub struct Instrument {
    pub name: &'static str,
    pub description: &'static str,
    /// UCUM unit: `s` or `ms`.
    pub unit: &'static str,
    pub bounds: &'static [f64],
    /// Span attributes copied onto the point, when the span has them.
    pub attributes: &'static [&'static str],
    /// Also `server.address` and `server.port` (client metrics).
    pub peer: bool,
}

/// The attributes client metrics add.
const PEER_ATTRIBUTES: &[&str] = &["server.address", "server.port"];

impl Instrument {
    /// The span's duration in this instrument's unit.
    fn value(&self, span: &Span) -> f64 {
        let nanos = span.end_unix_nanos.saturating_sub(span.start_unix_nanos) as f64;
        match self.unit {
            "ms" => nanos / 1e6,
            _ => nanos / 1e9,
        }
    }
}

/// The attributes of the HTTP histograms (`http.route` is only on server spans).
const HTTP_ATTRIBUTES: &[&str] = &[
    "http.request.method",
    "http.response.status_code",
    "http.route",
    "error.type",
    "url.scheme",
    "network.protocol.name",
    "network.protocol.version",
];
/// The attributes of the stable RPC histograms (`server.address` is opt-in on the server's).
const RPC_ATTRIBUTES: &[&str] = &[
    rpc::SYSTEM_NAME,
    rpc::METHOD,
    rpc::STATUS_CODE,
    "error.type",
];
/// The attributes of the semconv 1.37 RPC histograms (`rpc/dup`): `rpc.method` is the method
/// name without its service there (see [`Red::record`]).
const OLD_RPC_ATTRIBUTES: &[&str] = &[
    rpc::old::SYSTEM,
    rpc::old::SERVICE,
    rpc::METHOD,
    rpc::old::GRPC_STATUS_CODE,
    "error.type",
];

pub const HTTP_SERVER: Instrument = Instrument {
    name: "http.server.request.duration",
    description: "Duration of HTTP server requests.",
    unit: "s",
    bounds: HTTP_SECONDS,
    attributes: HTTP_ATTRIBUTES,
    peer: false,
};
pub const HTTP_CLIENT: Instrument = Instrument {
    name: "http.client.request.duration",
    description: "Duration of HTTP client requests.",
    unit: "s",
    bounds: HTTP_SECONDS,
    attributes: HTTP_ATTRIBUTES,
    peer: true,
};
pub const RPC_SERVER: Instrument = Instrument {
    name: "rpc.server.call.duration",
    description: "Measures the duration of an incoming Remote Procedure Call (RPC).",
    unit: "s",
    bounds: RPC_SECONDS,
    attributes: RPC_ATTRIBUTES,
    peer: false,
};
pub const RPC_CLIENT: Instrument = Instrument {
    name: "rpc.client.call.duration",
    description: "Measures the duration of an outgoing Remote Procedure Call (RPC).",
    unit: "s",
    bounds: RPC_SECONDS,
    attributes: RPC_ATTRIBUTES,
    peer: true,
};
pub const OLD_RPC_SERVER: Instrument = Instrument {
    name: "rpc.server.duration",
    description: "Measures the duration of inbound RPC.",
    unit: "ms",
    bounds: DEFAULT_MILLIS,
    attributes: OLD_RPC_ATTRIBUTES,
    peer: false,
};
pub const OLD_RPC_CLIENT: Instrument = Instrument {
    name: "rpc.client.duration",
    description: "Measures the duration of outbound RPC.",
    unit: "ms",
    bounds: DEFAULT_MILLIS,
    attributes: OLD_RPC_ATTRIBUTES,
    peer: true,
};
pub const DB_CLIENT: Instrument = Instrument {
    name: "db.client.operation.duration",
    description: "Duration of database client operations.",
    unit: "s",
    bounds: DB_SECONDS,
    attributes: &[
        "db.system.name",
        "db.namespace",
        "db.operation.name",
        "db.collection.name",
        "db.response.status_code",
        "error.type",
    ],
    peer: true,
};

/// Every instrument, in export order.
pub const INSTRUMENTS: [&Instrument; 7] = [
    &HTTP_SERVER,
    &HTTP_CLIENT,
    &RPC_SERVER,
    &RPC_CLIENT,
    &DB_CLIENT,
    &OLD_RPC_SERVER,
    &OLD_RPC_CLIENT,
];

/// The instruments a span is measured by (indexes into [`INSTRUMENTS`]): none, one, or with
/// `rpc/dup` the stable and the old RPC one.
pub fn instruments_of(span: &Span) -> Vec<usize> {
    let server = span.kind == SpanKind::Server;
    let pick = |s, c| if server { s } else { c };
    let mut out = Vec::new();
    if span.attr(rpc::SYSTEM_NAME).is_some() {
        out.push(pick(2, 3));
    }
    if span.attr(rpc::old::SYSTEM).is_some() {
        out.push(pick(5, 6));
    }
    if out.is_empty() {
        if span.attr("db.system.name").is_some() {
            out.extend((!server).then_some(4));
        } else if span.attr("http.request.method").is_some() {
            out.push(pick(0, 1));
        }
    }
    out
}

/// The value of a span attribute on an instrument's point: as on the span, except on the old
/// RPC metrics (those with `rpc.service`), whose `rpc.method` is the method name alone (the
/// span's is `rpc.service/method`).
fn point_value<'a>(inst: &Instrument, span: &Span, key: &str, value: &'a Value) -> Cow<'a, Value> {
    if key != rpc::METHOD || !inst.attributes.contains(&rpc::old::SERVICE) {
        return Cow::Borrowed(value);
    }
    match (value, span.attr(rpc::old::SERVICE)) {
        (Value::Str(full), Some(Value::Str(service))) => full
            .strip_prefix(service.as_ref())
            .and_then(|m| m.strip_prefix('/'))
            .map_or(Cow::Borrowed(value), |m| {
                Cow::Owned(Value::from(m.to_owned()))
            }),
        _ => Cow::Borrowed(value),
    }
}

/// Resource attributes that tell one process from another. Metrics leave them out: the RED
/// figures are per service (on this host, in this container or pod), so a service that forks a
/// process per request, or a client run from a shell loop, stays one set of series instead of
/// a new set per process (which the series cap would soon turn into overflow and drops).
const PER_PROCESS: [&str; 3] = [
    "process.pid",
    "service.instance.id",
    "process.executable.path",
];

/// Bound on remembered process resources (each maps to its service's resource).
const MAX_RESOURCES: usize = 4096;

/// The RED histograms, one table of series per instrument.
#[derive(Debug)]
pub struct Red {
    pub tables: Vec<Table<Histogram>>,
    /// Process resource key -> the resource its points are recorded under.
    by_process: FastMap<String, Arc<Resource>>,
    /// Service resources, by their attributes (shared by the processes of one service).
    services: FastMap<String, Arc<Resource>>,
}

impl Red {
    pub fn new(cap: usize) -> Self {
        Self {
            tables: INSTRUMENTS.iter().map(|_| Table::new(cap)).collect(),
            by_process: FastMap::default(),
            services: FastMap::default(),
        }
    }

    /// The resource a span's points are recorded under: its own without [`PER_PROCESS`].
    fn service_resource(&mut self, resource: &Arc<Resource>) -> Arc<Resource> {
        if let Some(r) = self.by_process.get(&resource.key) {
            return r.clone();
        }
        if self.by_process.len() >= MAX_RESOURCES {
            // Processes come and go; their services stay (the series keep them, keyed by the
            // resource's attributes, so a service met again after a clear is the same).
            self.by_process.clear();
        }
        if self.services.len() >= MAX_RESOURCES {
            self.services.clear();
        }
        let attributes: Vec<KeyValue> = resource
            .attributes
            .iter()
            .filter(|kv| !PER_PROCESS.contains(&kv.key.as_ref()))
            .cloned()
            .collect();
        let mut key = String::new();
        for kv in &attributes {
            let _ = write!(key, "{}={:?}\0", kv.key, kv.value);
        }
        let service = self
            .services
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Resource { key, attributes }))
            .clone();
        self.by_process
            .insert(resource.key.clone(), service.clone());
        service
    }

    /// Records one finished span; false if it is of no known kind.
    pub fn record(&mut self, span: &Span) -> bool {
        let instruments = instruments_of(span);
        if instruments.is_empty() {
            return false;
        }
        let resource = self.service_resource(&span.resource);
        for i in instruments {
            let inst = INSTRUMENTS[i];
            let peer = if inst.peer { PEER_ATTRIBUTES } else { &[] };
            let values: Vec<(&'static str, Cow<'_, Value>)> = inst
                .attributes
                .iter()
                .chain(peer)
                .filter_map(|k| {
                    span.attributes
                        .iter()
                        .find(|kv| kv.key == *k)
                        .map(|kv| (*k, point_value(inst, span, k, &kv.value)))
                })
                .collect();
            if let Some(h) =
                self.tables[i].entry_by(Some(&resource), &values, || Histogram::new(inst.bounds))
            {
                h.record(inst.value(span));
            }
        }
        true
    }
}
