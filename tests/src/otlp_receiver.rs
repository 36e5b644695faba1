//! A minimal OTLP trace receiver for tests: OTLP/gRPC (tonic) or OTLP/HTTP with protobuf
//! bodies (hyper), listening on an ephemeral port of 127.0.0.1.
//!
//! It records every request (path, headers, decoded body, the reply it gave), answers as
//! scripted ([`OtlpReceiver::reply_next`], [`OtlpReceiver::set_default_reply`]) and offers the
//! spans of accepted requests flattened as [`ReceivedSpan`]s.
//!
//! Metrics requests (`/v1/metrics`, gRPC `MetricsService/Export`) are always accepted and kept
//! apart: they are not in [`OtlpReceiver::requests`], do not count in
//! [`OtlpReceiver::request_count`] and do not use the script. See [`OtlpReceiver::metrics`].
//!
//! ```no_run
//! # async fn demo() {
//! use socktrace_tests::otlp_receiver::{OtlpReceiver, Reply};
//! use std::time::Duration;
//!
//! let receiver = OtlpReceiver::start_http().await;
//! receiver.reply_next([Reply::unavailable()]); // first request: 503, then accept
//! // ... point the agent at receiver.endpoint() ...
//! let spans = receiver
//!     .wait_for(|s| s.iter().any(|s| s.name() == "GET /"), Duration::from_secs(10))
//!     .await
//!     .unwrap();
//! assert_eq!(spans[0].attr_int("http.response.status_code"), Some(200));
//! # }
//! ```
//!
//! Started with [`OtlpReceiver::start_grpc`]/[`OtlpReceiver::start_http`] it runs on the caller's
//! tokio runtime; the `*_blocking` constructors give it a runtime of its own, for plain `#[test]`s.
//! Dropping a receiver closes its port and its connections; [`OtlpReceiver::start_on`] brings a
//! new one up on the same address (a collector outage and its end).

use std::{
    collections::{HashMap, VecDeque},
    convert::Infallible,
    fmt,
    net::SocketAddr,
    os::fd::AsRawFd as _,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
pub use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
pub use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
pub use opentelemetry_proto::tonic::metrics::v1::{
    HistogramDataPoint, NumberDataPoint, metric::Data as MetricData,
};
use opentelemetry_proto::tonic::{
    collector::metrics::v1::{
        ExportMetricsServiceResponse,
        metrics_service_server::{MetricsService, MetricsServiceServer},
    },
    collector::trace::v1::{
        ExportTracePartialSuccess, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value},
    trace::v1::{Span, span::SpanKind, status::StatusCode as SpanStatusCode},
};
use prost::Message as _;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Notify, oneshot},
    task::JoinSet,
};
/// gRPC status codes, for [`Reply::Error`].
pub use tonic::Code;

/// The HTTP path OTLP/HTTP trace requests must be sent to.
pub const HTTP_TRACES_PATH: &str = "/v1/traces";
/// The gRPC method path of `TraceService/Export`.
pub const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// The HTTP path of OTLP/HTTP metrics requests.
pub const HTTP_METRICS_PATH: &str = "/v1/metrics";
/// The gRPC service of metrics.
pub const GRPC_METRICS_SERVICE: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/";

/// Which OTLP transport a receiver speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP, binary protobuf.
    HttpProtobuf,
}

/// How the receiver answers one export request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Success, empty response.
    Accept,
    /// Success with `partial_success` set. The spans still count as received.
    PartialSuccess {
        rejected_spans: i64,
        error_message: String,
    },
    /// Failure: `grpc` for a gRPC receiver, `http` (with a `google.rpc.Status` body) for an HTTP
    /// one. `retry_after` becomes a `google.rpc.RetryInfo` detail (gRPC) or a `Retry-After`
    /// header in whole seconds, rounded up (HTTP). The spans do not count as received.
    Error {
        grpc: Code,
        http: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    /// No answer: the connection the request came on is closed abruptly (`SO_LINGER` 0, so
    /// the client sees a TCP RST), after the request was read and recorded. The spans do not
    /// count as received. A gRPC connection's other streams are cut too.
    Reset,
}

impl Reply {
    /// gRPC UNAVAILABLE / HTTP 503: retryable.
    pub fn unavailable() -> Self {
        Self::Error {
            grpc: Code::Unavailable,
            http: 503,
            message: "receiver unavailable (scripted)".into(),
            retry_after: None,
        }
    }

    /// gRPC INVALID_ARGUMENT / HTTP 400: not retryable.
    pub fn invalid_argument() -> Self {
        Self::Error {
            grpc: Code::InvalidArgument,
            http: 400,
            message: "bad request (scripted)".into(),
            retry_after: None,
        }
    }

    /// gRPC RESOURCE_EXHAUSTED with RetryInfo / HTTP 429 with `Retry-After`: retryable after the
    /// delay.
    pub fn throttled(retry_after: Duration) -> Self {
        Self::Error {
            grpc: Code::ResourceExhausted,
            http: 429,
            message: "slow down (scripted)".into(),
            retry_after: Some(retry_after),
        }
    }

    /// Whether the data counts as received (`Accept` or `PartialSuccess`).
    pub fn is_accept(&self) -> bool {
        !matches!(self, Self::Error { .. } | Self::Reset)
    }
}

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
pub struct ReceivedRequest {
    /// HTTP request path (`/v1/traces`), or [`GRPC_EXPORT_PATH`].
    pub path: String,
    /// HTTP method (`POST` for gRPC).
    pub method: String,
    /// Headers / gRPC metadata, names lowercase, in arrival order (values lossily decoded).
    pub headers: Vec<(String, String)>,
    /// The decoded body (empty when it could not be decoded, see `decode_error`).
    pub body: ExportTraceServiceRequest,
    pub decode_error: Option<String>,
    /// What the receiver answered.
    pub reply: Reply,
    /// How long the receiver waited before answering ([`OtlpReceiver::set_response_delay`] when
    /// the request arrived). A client whose timeout is shorter gave up on the request, yet an
    /// `Accept` reply still counts its spans as received: the receiver cannot tell.
    pub delay: Duration,
    /// When the request (body included) had arrived.
    pub received_at: Instant,
}

impl ReceivedRequest {
    /// The first value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Number of spans in the body.
    pub fn span_count(&self) -> usize {
        self.body
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum()
    }
}

/// An attribute value, simplified from OTLP's `AnyValue`.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Bool(bool),
    Double(f64),
    Bytes(Vec<u8>),
    Array(Vec<AttrValue>),
    Map(Vec<(String, AttrValue)>),
    /// No value set.
    Empty,
}

impl AttrValue {
    pub fn from_any(v: Option<&AnyValue>) -> Self {
        match v.and_then(|v| v.value.as_ref()) {
            None => Self::Empty,
            Some(any_value::Value::StringValue(s)) => Self::Str(s.clone()),
            Some(any_value::Value::IntValue(i)) => Self::Int(*i),
            Some(any_value::Value::BoolValue(b)) => Self::Bool(*b),
            Some(any_value::Value::DoubleValue(d)) => Self::Double(*d),
            Some(any_value::Value::BytesValue(b)) => Self::Bytes(b.clone()),
            Some(any_value::Value::ArrayValue(a)) => {
                Self::Array(a.values.iter().map(|v| Self::from_any(Some(v))).collect())
            }
            Some(any_value::Value::KvlistValue(kv)) => Self::Map(
                kv.values
                    .iter()
                    .map(|kv| (kv.key.clone(), Self::from_any(kv.value.as_ref())))
                    .collect(),
            ),
            // Dictionary references (profiles only) are not used in traces.
            Some(other) => Self::Str(format!("{other:?}")),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Self::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Self::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_double(&self) -> Option<f64> {
        match self {
            Self::Double(d) => Some(*d),
            _ => None,
        }
    }
}

fn attr_map(attrs: &[KeyValue]) -> HashMap<String, AttrValue> {
    attrs
        .iter()
        .map(|kv| (kv.key.clone(), AttrValue::from_any(kv.value.as_ref())))
        .collect()
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One received span with the resource and scope it was sent under.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    /// Attributes of the enclosing `ResourceSpans.resource`.
    pub resource: HashMap<String, AttrValue>,
    /// Instrumentation scope name and version.
    pub scope: String,
    pub scope_version: String,
    /// The span as received.
    pub span: Span,
    /// Index of the request in [`OtlpReceiver::requests`].
    pub request_index: usize,
    /// Index of the enclosing `ResourceSpans` in that request.
    pub resource_index: usize,
}

impl ReceivedSpan {
    pub fn name(&self) -> &str {
        &self.span.name
    }

    /// `SPAN_KIND_*`; `Unspecified` for unknown values.
    pub fn kind(&self) -> SpanKind {
        SpanKind::try_from(self.span.kind).unwrap_or(SpanKind::Unspecified)
    }

    /// 32 lowercase hex digits.
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    /// 16 lowercase hex digits.
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    /// `None` for a root span (empty parent id).
    pub fn parent_span_id(&self) -> Option<String> {
        (!self.span.parent_span_id.is_empty()).then(|| hex(&self.span.parent_span_id))
    }

    pub fn attributes(&self) -> HashMap<String, AttrValue> {
        attr_map(&self.span.attributes)
    }

    pub fn attr(&self, key: &str) -> Option<AttrValue> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .map(|kv| AttrValue::from_any(kv.value.as_ref()))
    }

    pub fn attr_str(&self, key: &str) -> Option<String> {
        self.attr(key).and_then(|v| v.as_str().map(str::to_owned))
    }

    pub fn attr_int(&self, key: &str) -> Option<i64> {
        self.attr(key).and_then(|v| v.as_int())
    }

    pub fn attr_bool(&self, key: &str) -> Option<bool> {
        self.attr(key).and_then(|v| v.as_bool())
    }

    pub fn resource_str(&self, key: &str) -> Option<&str> {
        self.resource.get(key).and_then(AttrValue::as_str)
    }

    pub fn resource_int(&self, key: &str) -> Option<i64> {
        self.resource.get(key).and_then(AttrValue::as_int)
    }

    /// `STATUS_CODE_*`; `Unset` when absent or unknown.
    pub fn status_code(&self) -> SpanStatusCode {
        self.span
            .status
            .as_ref()
            .and_then(|s| SpanStatusCode::try_from(s.code).ok())
            .unwrap_or(SpanStatusCode::Unset)
    }

    pub fn status_message(&self) -> &str {
        self.span.status.as_ref().map_or("", |s| s.message.as_str())
    }

    /// End minus start (zero if negative).
    pub fn duration(&self) -> Duration {
        Duration::from_nanos(
            self.span
                .end_time_unix_nano
                .saturating_sub(self.span.start_time_unix_nano),
        )
    }
}

impl fmt::Display for ReceivedSpan {
    /// One line for assertion messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}] {:?} {:?} trace={} span={} parent={} status={:?}",
            self.resource_str("service.name").unwrap_or("?"),
            self.kind(),
            self.name(),
            self.trace_id(),
            self.span_id(),
            self.parent_span_id().as_deref().unwrap_or("-"),
            self.status_code(),
        )?;
        let mut attrs: Vec<_> = self.span.attributes.iter().collect();
        attrs.sort_by(|a, b| a.key.cmp(&b.key));
        for kv in attrs {
            write!(
                f,
                " {}={:?}",
                kv.key,
                AttrValue::from_any(kv.value.as_ref())
            )?;
        }
        Ok(())
    }
}

/// Flattens requests into spans (all of them, whatever the reply was).
pub fn flatten(requests: &[ReceivedRequest]) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for (request_index, req) in requests.iter().enumerate() {
        for (resource_index, rs) in req.body.resource_spans.iter().enumerate() {
            let resource = rs
                .resource
                .as_ref()
                .map(|r| attr_map(&r.attributes))
                .unwrap_or_default();
            for ss in &rs.scope_spans {
                let (scope, scope_version) = ss
                    .scope
                    .as_ref()
                    .map(|s| (s.name.clone(), s.version.clone()))
                    .unwrap_or_default();
                for span in &ss.spans {
                    out.push(ReceivedSpan {
                        resource: resource.clone(),
                        scope: scope.clone(),
                        scope_version: scope_version.clone(),
                        span: span.clone(),
                        request_index,
                        resource_index,
                    });
                }
            }
        }
    }
    out
}

/// One metric data point with the metric, resource and scope it was sent under.
#[derive(Clone, Debug)]
pub struct ReceivedPoint {
    pub resource: HashMap<String, AttrValue>,
    pub scope: String,
    pub metric: String,
    pub unit: String,
    pub attributes: HashMap<String, AttrValue>,
    pub value: PointValue,
}

/// The value of a data point.
#[derive(Clone, Debug, PartialEq)]
pub enum PointValue {
    /// A cumulative Sum (monotonic or not).
    Sum {
        value: i64,
        monotonic: bool,
        cumulative: bool,
    },
    Gauge(i64),
    Histogram {
        count: u64,
        sum: f64,
        bounds: Vec<f64>,
        counts: Vec<u64>,
        cumulative: bool,
    },
    /// Anything else (not sent by the agent).
    Other,
}

impl ReceivedPoint {
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(AttrValue::as_str)
    }

    pub fn attr_int(&self, key: &str) -> Option<i64> {
        self.attributes.get(key).and_then(AttrValue::as_int)
    }

    pub fn resource_str(&self, key: &str) -> Option<&str> {
        self.resource.get(key).and_then(AttrValue::as_str)
    }

    /// The count of a histogram, the value of a Sum or Gauge.
    pub fn count(&self) -> Option<u64> {
        match &self.value {
            PointValue::Histogram { count, .. } => Some(*count),
            PointValue::Sum { value, .. } | PointValue::Gauge(value) => u64::try_from(*value).ok(),
            PointValue::Other => None,
        }
    }
}

impl fmt::Display for ReceivedPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}] {} {:?}",
            self.resource_str("service.name").unwrap_or("?"),
            self.metric,
            self.value
        )?;
        let mut attrs: Vec<_> = self.attributes.iter().collect();
        attrs.sort_by(|a, b| a.0.cmp(b.0));
        for (k, v) in attrs {
            write!(f, " {k}={v:?}")?;
        }
        Ok(())
    }
}

/// Every data point of a metrics request.
pub fn flatten_metrics(req: &ExportMetricsServiceRequest) -> Vec<ReceivedPoint> {
    use opentelemetry_proto::tonic::metrics::v1::{
        AggregationTemporality, metric::Data, number_data_point::Value as N,
    };
    let cumulative = |t: i32| t == AggregationTemporality::Cumulative as i32;
    let int = |p: &NumberDataPoint| match p.value {
        Some(N::AsInt(i)) => i,
        Some(N::AsDouble(d)) => d as i64,
        None => 0,
    };
    let mut out = Vec::new();
    for rm in &req.resource_metrics {
        let resource = rm
            .resource
            .as_ref()
            .map(|r| attr_map(&r.attributes))
            .unwrap_or_default();
        for sm in &rm.scope_metrics {
            let scope = sm
                .scope
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            for m in &sm.metrics {
                let mut push = |attributes: &[KeyValue], value: PointValue| {
                    out.push(ReceivedPoint {
                        resource: resource.clone(),
                        scope: scope.clone(),
                        metric: m.name.clone(),
                        unit: m.unit.clone(),
                        attributes: attr_map(attributes),
                        value,
                    })
                };
                match &m.data {
                    Some(Data::Sum(s)) => {
                        for p in &s.data_points {
                            push(
                                &p.attributes,
                                PointValue::Sum {
                                    value: int(p),
                                    monotonic: s.is_monotonic,
                                    cumulative: cumulative(s.aggregation_temporality),
                                },
                            );
                        }
                    }
                    Some(Data::Gauge(g)) => {
                        for p in &g.data_points {
                            push(&p.attributes, PointValue::Gauge(int(p)));
                        }
                    }
                    Some(Data::Histogram(h)) => {
                        for p in &h.data_points {
                            push(
                                &p.attributes,
                                PointValue::Histogram {
                                    count: p.count,
                                    sum: p.sum.unwrap_or_default(),
                                    bounds: p.explicit_bounds.clone(),
                                    counts: p.bucket_counts.clone(),
                                    cumulative: cumulative(h.aggregation_temporality),
                                },
                            );
                        }
                    }
                    _ => push(&[], PointValue::Other),
                }
            }
        }
    }
    out
}

// ---- google.rpc.Status with RetryInfo, encoded by hand ----

#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<ProtoAny>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<ProtoDuration>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

fn rpc_status(code: Code, message: &str, retry_after: Option<Duration>) -> Vec<u8> {
    let details = retry_after
        .map(|d| ProtoAny {
            type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
            value: RetryInfo {
                retry_delay: Some(ProtoDuration {
                    seconds: d.as_secs() as i64,
                    nanos: d.subsec_nanos() as i32,
                }),
            }
            .encode_to_vec(),
        })
        .into_iter()
        .collect();
    RpcStatus {
        code: code as i32,
        message: message.to_owned(),
        details,
    }
    .encode_to_vec()
}

// ---- shared state ----

struct State {
    requests: Mutex<Vec<ReceivedRequest>>,
    script: Mutex<VecDeque<Reply>>,
    default_reply: Mutex<Reply>,
    delay: Mutex<Duration>,
    count: AtomicUsize,
    /// Spans in accepted requests, counted whether or not the requests are kept.
    accepted_spans: AtomicUsize,
    /// Cleared by [`OtlpReceiver::forget_bodies`]: requests are counted, not kept.
    keep: std::sync::atomic::AtomicBool,
    /// Metrics requests, all accepted, with their arrival time.
    metrics: Mutex<Vec<(Instant, ExportMetricsServiceRequest)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not hide the data from the others.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    fn next_reply(&self) -> Reply {
        lock(&self.script)
            .pop_front()
            .unwrap_or_else(|| lock(&self.default_reply).clone())
    }

    fn record(&self, req: ReceivedRequest) {
        if req.reply.is_accept() {
            self.accepted_spans
                .fetch_add(req.span_count(), Ordering::SeqCst);
        }
        let mut requests = lock(&self.requests);
        if self.keep.load(Ordering::SeqCst) {
            requests.push(req);
        }
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    fn delay(&self) -> Duration {
        *lock(&self.delay)
    }
}

/// A running receiver; stops when dropped.
pub struct OtlpReceiver {
    protocol: Protocol,
    addr: SocketAddr,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Set by the `*_blocking` constructors.
    runtime: Option<tokio::runtime::Runtime>,
}

impl fmt::Debug for OtlpReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpReceiver")
            .field("protocol", &self.protocol)
            .field("addr", &self.addr)
            .field("requests", &self.request_count())
            .finish()
    }
}

impl OtlpReceiver {
    /// Starts an OTLP/gRPC receiver on the current tokio runtime.
    pub async fn start_grpc() -> Self {
        Self::start(Protocol::Grpc).await
    }

    /// Starts an OTLP/HTTP (protobuf) receiver on the current tokio runtime.
    pub async fn start_http() -> Self {
        Self::start(Protocol::HttpProtobuf).await
    }

    /// Starts a receiver for `protocol` on the current tokio runtime.
    pub async fn start(protocol: Protocol) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        Self::serve(protocol, listener)
    }

    /// Like [`OtlpReceiver::start`], on a given address: to bring a collector back on the port
    /// of one that was dropped (the exporter keeps its endpoint). Retries the bind for up to
    /// 10 s while the address is still in use (a dropped receiver's tasks end asynchronously).
    /// The new receiver starts with no requests and the default script.
    pub async fn start_on(protocol: Protocol, addr: SocketAddr) -> Self {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => return Self::serve(protocol, listener),
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("bind {addr}: {e}"),
            }
        }
    }

    /// Serves `listener` on the current tokio runtime.
    fn serve(protocol: Protocol, listener: TcpListener) -> Self {
        let addr = listener.local_addr().expect("local_addr");
        let state = Arc::new(State {
            requests: Mutex::new(Vec::new()),
            script: Mutex::new(VecDeque::new()),
            default_reply: Mutex::new(Reply::Accept),
            delay: Mutex::new(Duration::ZERO),
            count: AtomicUsize::new(0),
            accepted_spans: AtomicUsize::new(0),
            keep: std::sync::atomic::AtomicBool::new(true),
            metrics: Mutex::new(Vec::new()),
        });
        let (stop, stopped) = oneshot::channel();
        let task = match protocol {
            Protocol::Grpc => tokio::spawn(serve_grpc(listener, state.clone(), stopped)),
            Protocol::HttpProtobuf => tokio::spawn(serve_http(listener, state.clone(), stopped)),
        };
        Self {
            protocol,
            addr,
            state,
            stop: Some(stop),
            task: Some(task),
            runtime: None,
        }
    }

    /// Like [`OtlpReceiver::start`], on a runtime of its own (for tests without tokio). Must not
    /// be called from within a tokio runtime.
    pub fn start_blocking(protocol: Protocol) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .thread_name("otlp-receiver")
            .build()
            .expect("receiver runtime");
        let mut receiver = runtime.block_on(Self::start(protocol));
        receiver.runtime = Some(runtime);
        receiver
    }

    /// Like [`OtlpReceiver::start_on`], on a runtime of its own (see [`Self::start_blocking`]).
    pub fn start_blocking_on(protocol: Protocol, addr: SocketAddr) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .thread_name("otlp-receiver")
            .build()
            .expect("receiver runtime");
        let mut receiver = runtime.block_on(Self::start_on(protocol, addr));
        receiver.runtime = Some(runtime);
        receiver
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The listening address (127.0.0.1 and an ephemeral port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL to configure the exporter with (`--otlp-endpoint`, `OTEL_EXPORTER_OTLP_ENDPOINT`):
    /// `http://127.0.0.1:PORT`. An HTTP exporter appends `/v1/traces`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The full URL of the traces signal, for `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`:
    /// `http://127.0.0.1:PORT/v1/traces` for HTTP, the same as [`Self::endpoint`] for gRPC.
    pub fn traces_endpoint(&self) -> String {
        match self.protocol {
            Protocol::Grpc => self.endpoint(),
            Protocol::HttpProtobuf => format!("{}{HTTP_TRACES_PATH}", self.endpoint()),
        }
    }

    /// Answers the next requests with `replies`, in order (after any already scripted); then
    /// the default reply is used again.
    pub fn reply_next(&self, replies: impl IntoIterator<Item = Reply>) {
        lock(&self.state.script).extend(replies);
    }

    /// The reply once the script is exhausted ([`Reply::Accept`] at first).
    pub fn set_default_reply(&self, reply: Reply) {
        *lock(&self.state.default_reply) = reply;
    }

    /// Wait this long before answering each request (to provoke client timeouts).
    pub fn set_response_delay(&self, delay: Duration) {
        *lock(&self.state.delay) = delay;
    }

    /// From now on, count requests and spans without keeping them (long load runs, where
    /// keeping every span would cost more memory than the run is about).
    pub fn forget_bodies(&self) {
        self.state.keep.store(false, Ordering::SeqCst);
    }

    /// Spans in the requests accepted so far (fully or partially), kept or not.
    pub fn accepted_span_count(&self) -> usize {
        self.state.accepted_spans.load(Ordering::SeqCst)
    }

    /// Number of export requests received, whatever the reply.
    pub fn request_count(&self) -> usize {
        self.state.count.load(Ordering::SeqCst)
    }

    /// Every request received, in arrival order.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        lock(&self.state.requests).clone()
    }

    /// The bodies of the requests that were accepted (fully or partially).
    pub fn accepted_requests(&self) -> Vec<ExportTraceServiceRequest> {
        lock(&self.state.requests)
            .iter()
            .filter(|r| r.reply.is_accept())
            .map(|r| r.body.clone())
            .collect()
    }

    /// The spans of accepted requests, in arrival order. `request_index` refers to
    /// [`Self::requests`].
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        let requests = lock(&self.state.requests);
        flatten(&requests)
            .into_iter()
            .filter(|s| requests[s.request_index].reply.is_accept())
            .collect()
    }

    /// Every metrics request received, in arrival order (all were accepted).
    pub fn metrics_requests(&self) -> Vec<ExportMetricsServiceRequest> {
        lock(&self.state.metrics)
            .iter()
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// The data points of the last metrics request: with cumulative temporality, the totals.
    pub fn metrics(&self) -> Vec<ReceivedPoint> {
        lock(&self.state.metrics)
            .last()
            .map(|(_, r)| flatten_metrics(r))
            .unwrap_or_default()
    }

    /// Polls [`Self::metrics`] until `pred` holds; returns them, or on timeout an error listing
    /// what the last request held.
    pub async fn wait_for_metrics(
        &self,
        pred: impl Fn(&[ReceivedPoint]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<ReceivedPoint>, String> {
        let start = Instant::now();
        loop {
            let points = self.metrics();
            if pred(&points) {
                return Ok(points);
            }
            if start.elapsed() >= timeout {
                let mut msg = format!(
                    "metrics condition not met within {timeout:?}: {} metrics requests",
                    lock(&self.state.metrics).len()
                );
                for p in points.iter().take(200) {
                    msg.push_str("\n  ");
                    msg.push_str(&p.to_string());
                }
                return Err(msg);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Forgets the requests received so far (the request count too).
    pub fn clear(&self) {
        lock(&self.state.requests).clear();
        self.state.count.store(0, Ordering::SeqCst);
    }

    /// Polls [`Self::spans`] until `pred` holds; returns them, or on timeout an error listing
    /// what was received.
    pub async fn wait_for(
        &self,
        pred: impl Fn(&[ReceivedSpan]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<ReceivedSpan>, String> {
        let start = Instant::now();
        loop {
            let spans = self.spans();
            if pred(&spans) {
                return Ok(spans);
            }
            if start.elapsed() >= timeout {
                return Err(self.timeout_message(timeout, &spans));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// [`Self::wait_for`] for code without a tokio runtime (sleeps the thread).
    pub fn wait_for_blocking(
        &self,
        pred: impl Fn(&[ReceivedSpan]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<ReceivedSpan>, String> {
        let start = Instant::now();
        loop {
            let spans = self.spans();
            if pred(&spans) {
                return Ok(spans);
            }
            if start.elapsed() >= timeout {
                return Err(self.timeout_message(timeout, &spans));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until at least `n` requests arrived (whatever the reply) and returns all of them.
    pub async fn wait_for_requests(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<ReceivedRequest>, String> {
        let start = Instant::now();
        loop {
            if self.request_count() >= n {
                return Ok(self.requests());
            }
            if start.elapsed() >= timeout {
                return Err(format!(
                    "expected {n} OTLP requests within {timeout:?}, got {}",
                    self.request_count()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn timeout_message(&self, timeout: Duration, spans: &[ReceivedSpan]) -> String {
        let mut msg = format!(
            "condition not met within {timeout:?}: {} requests, {} accepted spans",
            self.request_count(),
            spans.len()
        );
        for s in spans.iter().take(50) {
            msg.push_str("\n  ");
            msg.push_str(&s.to_string());
        }
        msg
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

// ---- gRPC ----

struct GrpcService {
    state: Arc<State>,
    /// Notified to close the connection this service instance serves ([`Reply::Reset`]).
    reset: Arc<Notify>,
}

#[tonic::async_trait]
impl TraceService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = request
            .metadata()
            .clone()
            .into_headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = request.into_inner();
        let reply = self.state.next_reply();
        let delay = self.state.delay();
        self.state.record(ReceivedRequest {
            path: GRPC_EXPORT_PATH.to_owned(),
            method: "POST".to_owned(),
            headers,
            body,
            decode_error: None,
            reply: reply.clone(),
            delay,
            received_at: Instant::now(),
        });
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match reply {
            Reply::Reset => {
                // The connection task drops the connection; this stream never answers.
                self.reset.notify_one();
                std::future::pending().await
            }
            Reply::Accept => Ok(tonic::Response::new(ExportTraceServiceResponse::default())),
            Reply::PartialSuccess {
                rejected_spans,
                error_message,
            } => Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success: Some(ExportTracePartialSuccess {
                    rejected_spans,
                    error_message,
                }),
            })),
            Reply::Error {
                grpc,
                message,
                retry_after,
                ..
            } => Err(match retry_after {
                None => tonic::Status::new(grpc, message),
                Some(d) => tonic::Status::with_details(
                    grpc,
                    message.clone(),
                    rpc_status(grpc, &message, Some(d)).into(),
                ),
            }),
        }
    }
}

struct GrpcMetrics {
    state: Arc<State>,
}

#[tonic::async_trait]
impl MetricsService for GrpcMetrics {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        lock(&self.state.metrics).push((Instant::now(), request.into_inner()));
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// Serves each connection itself (not with tonic's `Server`), so that stopping the receiver
/// closes its connections at once, like a collector that goes away: tonic's server would shut
/// them down gracefully and keep answering what the client sends meanwhile.
async fn serve_grpc(listener: TcpListener, state: Arc<State>, mut stopped: oneshot::Receiver<()>) {
    let metrics = MetricsServiceServer::new(GrpcMetrics {
        state: state.clone(),
    });
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let Ok((stream, _)) = accepted else { continue };
        let reset = Arc::new(Notify::new());
        let service = TraceServiceServer::new(GrpcService {
            state: state.clone(),
            reset: reset.clone(),
        });
        let metrics = metrics.clone();
        connections.spawn(serve_until_reset(stream, reset, move |io| async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let mut service = service.clone();
                let mut metrics = metrics.clone();
                async move {
                    if req.uri().path().starts_with(GRPC_METRICS_SERVICE) {
                        tonic::codegen::Service::call(&mut metrics, req).await
                    } else {
                        tonic::codegen::Service::call(&mut service, req).await
                    }
                }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, svc)
                .await;
        }));
    }
}

/// Serves one connection with `serve` until it ends, or until `reset` is notified: then the
/// socket gets `SO_LINGER` 0 and is closed at once, so the peer sees a TCP RST (not a FIN after
/// a response), like a collector process that crashed or a middlebox that cut the connection.
async fn serve_until_reset<F: Future<Output = ()>>(
    stream: TcpStream,
    reset: Arc<Notify>,
    serve: impl FnOnce(TokioIo<TcpStream>) -> F,
) {
    let fd = stream.as_raw_fd();
    // Pinned here, not moved into `select!` (which drops its futures before running the
    // branch): the socket must stay open until `SO_LINGER` is set.
    let serving = serve(TokioIo::new(stream));
    tokio::pin!(serving);
    tokio::select! {
        () = &mut serving => {}
        () = reset.notified() => {
            let linger = libc::linger { l_onoff: 1, l_linger: 0 };
            // SAFETY: `fd` is the socket `serving` owns, still open here: it is closed when
            // `serving` is dropped, after this call. The option value is a valid `linger`.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&raw const linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
        }
    }
}

// ---- HTTP ----

async fn serve_http(listener: TcpListener, state: Arc<State>, mut stopped: oneshot::Receiver<()>) {
    // Connections live in the set, so stopping the receiver closes them too.
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => accepted,
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let Ok((stream, _)) = accepted else { continue };
        let state = state.clone();
        let reset = Arc::new(Notify::new());
        let notify = reset.clone();
        connections.spawn(serve_until_reset(stream, reset, move |io| async move {
            let service = service_fn(move |req| handle_http(state.clone(), notify.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        }));
    }
}

fn http_response(status: u16, content_type: &str, body: Vec<u8>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

async fn handle_http(
    state: Arc<State>,
    reset: Arc<Notify>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let method = req.method().as_str().to_owned();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let encoding = req
        .headers()
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .to_owned();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Ok(http_response(
                400,
                "text/plain",
                format!("body: {e}").into_bytes(),
            ));
        }
    };

    // Metrics: always accepted, kept apart from the trace requests.
    if path == HTTP_METRICS_PATH && method == "POST" {
        return Ok(match ExportMetricsServiceRequest::decode(body.as_ref()) {
            Ok(decoded) => {
                lock(&state.metrics).push((Instant::now(), decoded));
                http_response(
                    200,
                    "application/x-protobuf",
                    ExportMetricsServiceResponse::default().encode_to_vec(),
                )
            }
            Err(e) => http_response(400, "text/plain", format!("bad protobuf: {e}").into_bytes()),
        });
    }

    // Malformed requests are recorded with the reply they get; they do not consume the script.
    let protocol_error = |http: u16, grpc: Code, message: String| Reply::Error {
        grpc,
        http,
        message,
        retry_after: None,
    };
    let (decoded, decode_error, reply) = if path != HTTP_TRACES_PATH {
        let r = protocol_error(404, Code::Unimplemented, format!("no such path {path}"));
        (ExportTraceServiceRequest::default(), None, r)
    } else if method != "POST" {
        let r = protocol_error(
            405,
            Code::Unimplemented,
            format!("method {method} not allowed"),
        );
        (ExportTraceServiceRequest::default(), None, r)
    } else if content_type != "application/x-protobuf" || encoding != "identity" {
        let r = protocol_error(
            415,
            Code::InvalidArgument,
            format!("unsupported content-type {content_type:?} / content-encoding {encoding:?}"),
        );
        (ExportTraceServiceRequest::default(), None, r)
    } else {
        match ExportTraceServiceRequest::decode(body.as_ref()) {
            Ok(decoded) => (decoded, None, state.next_reply()),
            Err(e) => {
                let r = protocol_error(400, Code::InvalidArgument, format!("bad protobuf: {e}"));
                (ExportTraceServiceRequest::default(), Some(e.to_string()), r)
            }
        }
    };
    let delay = state.delay();
    state.record(ReceivedRequest {
        path,
        method,
        headers,
        body: decoded,
        decode_error,
        reply: reply.clone(),
        delay,
        received_at: Instant::now(),
    });
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let response = match reply {
        Reply::Reset => {
            // The connection task drops the connection; no response is ever written.
            reset.notify_one();
            return std::future::pending().await;
        }
        Reply::Accept => http_response(
            200,
            "application/x-protobuf",
            ExportTraceServiceResponse::default().encode_to_vec(),
        ),
        Reply::PartialSuccess {
            rejected_spans,
            error_message,
        } => http_response(
            200,
            "application/x-protobuf",
            ExportTraceServiceResponse {
                partial_success: Some(ExportTracePartialSuccess {
                    rejected_spans,
                    error_message,
                }),
            }
            .encode_to_vec(),
        ),
        Reply::Error {
            grpc,
            http,
            message,
            retry_after,
        } => {
            let mut resp = http_response(
                http,
                "application/x-protobuf",
                rpc_status(grpc, &message, None),
            );
            if let Some(d) = retry_after {
                let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
                resp.headers_mut()
                    .insert("retry-after", secs.to_string().parse().expect("digits"));
            }
            resp
        }
    };
    Ok(response)
}
