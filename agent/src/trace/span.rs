//! The span the pipeline produces, independent of any export format.

use std::{borrow::Cow, fmt, net::SocketAddr, sync::Arc};

use super::context::HeaderContext;
pub use super::ids::{SpanId, TraceId};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    Server,
    Client,
}

/// An attribute value. Strings known at compile time (conventional values like `http`) are
/// borrowed, not allocated for every span.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(Cow<'static, str>),
    Int(i64),
    Bool(bool),
    Double(f64),
}
impl Value {
    /// A string value known at compile time (no allocation).
    pub const fn text(s: &'static str) -> Self {
        Value::Str(Cow::Borrowed(s))
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Str(Cow::Owned(v.to_owned()))
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Str(Cow::Owned(v))
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => f.write_str(s),
            Value::Int(i) => write!(f, "{i}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Double(d) => write!(f, "{d}"),
        }
    }
}

/// One attribute. Keys are semantic-convention names, so mostly static strings: those are
/// borrowed, not allocated for every span.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyValue {
    pub key: Cow<'static, str>,
    pub value: Value,
}
impl KeyValue {
    pub fn new(key: impl Into<Cow<'static, str>>, value: impl Into<Value>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Status {
    #[default]
    Unset,
    Ok,
    Error {
        message: String,
    },
}

/// Resource attributes of one traced process (service.name, process.pid, container.id, ...).
/// Shared by every span of that process; the exporter groups spans by it.
#[derive(Debug, PartialEq)]
pub struct Resource {
    /// Stable identity for grouping: equal keys mean equal attributes.
    pub key: String,
    pub attributes: Vec<KeyValue>,
}
impl Resource {
    /// The value of `service.name`, for display.
    pub fn service_name(&self) -> &str {
        self.attributes
            .iter()
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| match &kv.value {
                Value::Str(s) => Some(s.as_ref()),
                _ => None,
            })
            .unwrap_or("unknown_service")
    }
}

/// A relation to another span that is not its parent (an OpenTelemetry span link).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanLink {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// W3C `tracestate` of the linked span's trace.
    pub trace_state: String,
}

/// A finished span, ready for export.
#[derive(Clone, Debug)]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    /// W3C `tracestate` received with the parent context, kept verbatim.
    pub trace_state: String,
    /// The `sampled` flag of the `traceparent` this trace arrived with on this node, shared by
    /// every span of the trace here (a local parent's decision is its caller's); None when the
    /// trace began on this node. What parent-based samplers follow.
    pub parent_sampled: Option<bool>,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<KeyValue>,
    pub status: Status,
    /// Spans this one may belong to when its parent cannot be told: the requests an event loop
    /// was serving when it made this call (see `trace::link`). Empty for almost every span.
    pub links: Vec<SpanLink>,
    pub resource: Arc<Resource>,
    /// Instrumentation scope name, e.g. `socktrace.http`.
    pub scope: &'static str,
}

/// What the span builder needs to know about the connection.
#[derive(Clone, Debug)]
pub struct ConnMeta {
    pub kind: SpanKind,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub resource: Arc<Resource>,
    /// Read at a TLS library: the exchange was encrypted on the wire (`https`).
    pub tls: bool,
}

/// What every span of one exchange is made of; see [`Span::of_exchange`].
pub struct ExchangeSpan {
    pub name: String,
    pub scope: &'static str,
    /// Wall-clock start and end (end is raised to start if the clocks disagree).
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<KeyValue>,
    pub status: Status,
    /// The parent context the request carried in its headers, if any.
    pub header: Option<HeaderContext>,
}

impl Span {
    /// A span of one exchange on a connection: the header's context or a new trace, and a new
    /// span id (the linker may replace all three with the ones it inferred).
    pub fn of_exchange(conn: &ConnMeta, e: ExchangeSpan) -> Self {
        let (trace_id, parent_span_id, trace_state, parent_sampled) = match e.header {
            Some(h) => (
                h.trace_id,
                Some(h.parent_id),
                h.trace_state,
                Some(h.sampled),
            ),
            None => (TraceId::random(), None, String::new(), None),
        };
        Span {
            trace_id,
            span_id: SpanId::random(),
            parent_span_id,
            trace_state,
            parent_sampled,
            name: e.name,
            kind: conn.kind,
            start_unix_nanos: e.start_unix_nanos,
            end_unix_nanos: e.end_unix_nanos.max(e.start_unix_nanos),
            attributes: e.attributes,
            status: e.status,
            links: Vec::new(),
            resource: conn.resource.clone(),
            scope: e.scope,
        }
    }

    pub fn attr(&self, key: &str) -> Option<&Value> {
        self.attributes
            .iter()
            .find(|kv| kv.key == key)
            .map(|kv| &kv.value)
    }
}

#[cfg(test)]
impl Span {
    /// A finished SERVER span for tests: ids filled with `n`, named `span-{n}`, no attributes.
    pub fn for_test(n: u8, resource: &Arc<Resource>, scope: &'static str) -> Span {
        Span {
            trace_id: TraceId([n; 16]),
            span_id: SpanId([n; 8]),
            parent_span_id: None,
            trace_state: String::new(),
            parent_sampled: None,
            name: format!("span-{n}"),
            kind: SpanKind::Server,
            start_unix_nanos: 1_000 + u64::from(n),
            end_unix_nanos: 2_000 + u64::from(n),
            attributes: Vec::new(),
            status: Status::Unset,
            links: Vec::new(),
            resource: Arc::clone(resource),
            scope,
        }
    }
}
