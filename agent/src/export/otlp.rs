//! Network exporters: the OTLP gRPC and HTTP/protobuf transports and the Zipkin v2 JSON one
//! (encoded by [`super::zipkin`]), sharing one retry, backoff and outage machinery.
//!
//! Retry policy (OTLP specification, "Failures"):
//! - gRPC: UNAVAILABLE, CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, DATA_LOSS are
//!   retried; RESOURCE_EXHAUSTED only when the status carries a `google.rpc.RetryInfo` detail.
//!   A RetryInfo delay is honoured for every retryable code. Failures of the connection itself
//!   (reset, broken pipe), which tonic reports with any code (often UNKNOWN), are retried too.
//! - HTTP: 429, 502, 503, 504 are retried, honouring `Retry-After` given in seconds (an HTTP-date
//!   is ignored and the normal backoff used).
//! - Zipkin (whose API defines no retry policy): 429 and every 5xx but 501 and 505 are
//!   retried, honouring `Retry-After` the same way.
//! - Connection errors (refused, reset) and timeouts are retried.
//! - Everything else fails the batch at once; the spans are counted as failed.
//!
//! Between attempts the delay grows exponentially with jitter up to
//! [`RetryConfig::max_backoff`]; a delay the server asks for is used instead, also beyond that
//! cap but at most [`RetryConfig::max_server_delay`]. A batch is retried until it is accepted,
//! a non-retryable error comes, or the shutdown deadline passes (unless the policy sets an
//! attempt or time limit): during an outage the exporter's bounded queue fills and further spans
//! are dropped at submission, counted. The first accepted batch after an outage logs how long it
//! lasted and how many spans were lost during it.

use std::{sync::Arc, time::Duration};

use bytes::{BufMut as _, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message as _;
use rand::Rng as _;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use tokio::time::Instant;
use tonic::{
    Code,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
    metadata::MetadataMap,
    transport::{Channel, ClientTlsConfig, Endpoint},
};

use super::encode::encode_request;
use super::{
    ExportError,
    config::{OtlpConfig, OtlpProtocol, RetryConfig, Signal, ZipkinConfig},
    pipeline::{Counters, Shutdown, Sink},
    text::sanitize,
    zipkin::encode_spans,
};
use crate::trace::span::Span;

/// `User-Agent` of both transports.
pub const USER_AGENT: &str = concat!("socktrace/", env!("CARGO_PKG_VERSION"));

// ---- google.rpc.Status / RetryInfo, decoded by hand to avoid another dependency ----

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

const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// The RetryInfo of an encoded `google.rpc.Status`: `None` without one, `Some(None)` with one
/// that has no delay.
fn retry_info(status_details: &[u8]) -> Option<Option<Duration>> {
    let status = RpcStatus::decode(status_details).ok()?;
    let info = status
        .details
        .iter()
        .find(|d| d.type_url == RETRY_INFO_TYPE)?;
    let info = RetryInfo::decode(info.value.as_slice()).ok()?;
    Some(info.retry_delay.and_then(|d| {
        (d.seconds >= 0 && d.nanos >= 0).then(|| Duration::new(d.seconds as u64, d.nanos as u32))
    }))
}

// ---- transports ----

/// Why one attempt failed.
#[derive(Debug)]
struct Failure {
    retryable: bool,
    /// Server-requested delay before the next attempt.
    retry_after: Option<Duration>,
    /// One line: code and message.
    description: String,
}

/// Partial success reported by the server.
#[derive(Debug, Default)]
struct Accepted {
    rejected_spans: i64,
    error_message: String,
}

// There is one per exporter, so the size difference does not matter.
#[allow(clippy::large_enum_variant)]
enum Transport {
    Grpc {
        client: tonic::client::Grpc<Channel>,
        metadata: MetadataMap,
    },
    Http {
        client: reqwest::Client,
    },
    /// Zipkin v2 JSON over HTTP.
    Zipkin {
        client: reqwest::Client,
    },
}

/// What a sink sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wire {
    /// OTLP export requests of one signal.
    Otlp(Signal),
    /// A Zipkin v2 JSON list of spans.
    Zipkin,
}

/// The `Retry-After` of a response, when given in seconds.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// Whether a Zipkin server's HTTP status is worth retrying: overload (429) and server-side
/// failures (a storage outage answers 500), but not what will never work (501, 505).
fn zipkin_retryable(code: u16) -> bool {
    code == 429 || ((500..600).contains(&code) && !matches!(code, 501 | 505))
}

/// The OTLP/gRPC method of each signal.
const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const GRPC_METRICS_PATH: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

fn grpc_path(signal: Signal) -> &'static str {
    match signal {
        Signal::Traces => GRPC_EXPORT_PATH,
        Signal::Metrics => GRPC_METRICS_PATH,
    }
}

/// gRPC codec sending an already encoded export request (see [`encode_request`]) and decoding
/// the response. The responses of both signals are decoded as `ExportTraceServiceResponse`:
/// `ExportMetricsServiceResponse` has the same wire layout (field 1, `partial_success`, holding
/// the rejected count as field 1 and the message as field 2).
#[derive(Clone, Copy, Debug, Default)]
struct PreEncoded;

impl Codec for PreEncoded {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = PreEncoded;
    type Decoder = PreEncoded;

    fn encoder(&mut self) -> Self::Encoder {
        PreEncoded
    }

    fn decoder(&mut self) -> Self::Decoder {
        PreEncoded
    }
}

impl Encoder for PreEncoded {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for PreEncoded {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut DecodeBuf<'_>,
    ) -> Result<Option<ExportTraceServiceResponse>, tonic::Status> {
        ExportTraceServiceResponse::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("undecodable export response: {e}")))
    }
}

impl Transport {
    fn new(cfg: &OtlpConfig, headers: HeaderMap) -> Result<Self, ExportError> {
        let client_error = |e: &dyn std::error::Error| ExportError::Client {
            endpoint: cfg.endpoint.clone(),
            reason: error_chain(e),
        };
        match cfg.protocol {
            OtlpProtocol::Grpc => {
                let mut endpoint = Endpoint::from_shared(cfg.endpoint.clone())
                    .map_err(|e| client_error(&e))?
                    .user_agent(USER_AGENT)
                    .map_err(|e| client_error(&e))?
                    .timeout(cfg.timeout)
                    .connect_timeout(cfg.timeout)
                    .tcp_nodelay(true);
                if cfg
                    .endpoint
                    .get(..6)
                    .is_some_and(|s| s.eq_ignore_ascii_case("https:"))
                {
                    endpoint = endpoint
                        .tls_config(ClientTlsConfig::new().with_native_roots())
                        .map_err(|e| client_error(&e))?;
                }
                Ok(Transport::Grpc {
                    client: tonic::client::Grpc::new(endpoint.connect_lazy()),
                    metadata: MetadataMap::from_headers(headers),
                })
            }
            OtlpProtocol::HttpProtobuf => {
                let client = reqwest::Client::builder()
                    .user_agent(USER_AGENT)
                    .default_headers(headers)
                    .timeout(cfg.timeout)
                    .connect_timeout(cfg.timeout)
                    .build()
                    .map_err(|e| client_error(&e))?;
                Ok(Transport::Http { client })
            }
        }
    }

    /// A Zipkin client: JSON bodies POSTed to the endpoint.
    fn zipkin(cfg: &ZipkinConfig) -> Result<Self, ExportError> {
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .build()
            .map_err(|e| ExportError::Client {
                endpoint: cfg.endpoint.clone(),
                reason: error_chain(&e),
            })?;
        Ok(Transport::Zipkin { client })
    }

    /// Sends one encoded request: an OTLP export request of `signal`, or a Zipkin list of spans.
    async fn send(&self, url: &str, signal: Signal, payload: &Bytes) -> Result<Accepted, Failure> {
        match self {
            Transport::Grpc { client, metadata } => {
                let mut req = tonic::Request::new(payload.clone());
                *req.metadata_mut() = metadata.clone();
                let mut client = client.clone();
                let sent = match client.ready().await {
                    Ok(()) => {
                        client
                            .unary(
                                req,
                                PathAndQuery::from_static(grpc_path(signal)),
                                PreEncoded,
                            )
                            .await
                    }
                    Err(e) => Err(tonic::Status::unavailable(format!(
                        "connection not ready: {}",
                        error_chain(&e)
                    ))),
                };
                match sent {
                    Ok(resp) => Ok(accepted(resp.into_inner())),
                    Err(status) => Err(grpc_failure(&status)),
                }
            }
            Transport::Http { client } => {
                let body = payload;
                let resp = client
                    .post(url)
                    .header(CONTENT_TYPE, "application/x-protobuf")
                    .body(body.clone())
                    .send()
                    .await
                    .map_err(|e| reqwest_failure(&e))?;
                let status = resp.status();
                let retry_after = retry_after(resp.headers());
                let body = resp.bytes().await;
                if status.is_success() {
                    // An unreadable body after a 2xx still means the data was accepted.
                    let body = body.unwrap_or_default();
                    return Ok(ExportTraceServiceResponse::decode(body.as_ref())
                        .map(accepted)
                        .unwrap_or_default());
                }
                let detail = body
                    .ok()
                    .map(|b| http_error_message(&b))
                    .filter(|m| !m.is_empty());
                let code = status.as_u16();
                Err(Failure {
                    retryable: matches!(code, 429 | 502 | 503 | 504),
                    retry_after,
                    description: match detail {
                        Some(m) => format!("HTTP {status}: {m}"),
                        None => format!("HTTP {status}"),
                    },
                })
            }
            Transport::Zipkin { client } => {
                let resp = client
                    .post(url)
                    .header(CONTENT_TYPE, "application/json")
                    .body(payload.clone())
                    .send()
                    .await
                    .map_err(|e| reqwest_failure(&e))?;
                let status = resp.status();
                let retry_after = retry_after(resp.headers());
                let body = resp.bytes().await;
                // Zipkin answers 202 with no body; there is no partial success.
                if status.is_success() {
                    return Ok(Accepted::default());
                }
                let detail = body
                    .ok()
                    .map(|b| truncate(&sanitize(String::from_utf8_lossy(&b).trim()), 300))
                    .filter(|m| !m.is_empty());
                Err(Failure {
                    retryable: zipkin_retryable(status.as_u16()),
                    retry_after,
                    description: match detail {
                        Some(m) => format!("HTTP {status}: {m}"),
                        None => format!("HTTP {status}"),
                    },
                })
            }
        }
    }
}

fn accepted(resp: ExportTraceServiceResponse) -> Accepted {
    resp.partial_success
        .map(|p| Accepted {
            rejected_spans: p.rejected_spans,
            error_message: p.error_message,
        })
        .unwrap_or_default()
}

/// An OTLP/HTTP error body is a `google.rpc.Status`; fall back to the text of the body.
fn http_error_message(body: &[u8]) -> String {
    let text = match RpcStatus::decode(body) {
        Ok(s) if !s.message.is_empty() => s.message,
        _ => String::from_utf8_lossy(body).into_owned(),
    };
    truncate(&sanitize(text.trim()), 300)
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

fn grpc_code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn grpc_failure(status: &tonic::Status) -> Failure {
    let info = retry_info(status.details());
    // A status tonic made up from a failure of the connection (reset, broken pipe, an HTTP/2
    // stream error) rather than one the server sent carries that error as its source; such a
    // status is often UNKNOWN or INTERNAL, yet the request may never have reached the server.
    let transport = std::error::Error::source(status).is_some();
    let retryable = transport
        || match status.code() {
            Code::Unavailable
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::OutOfRange
            | Code::DataLoss => true,
            Code::ResourceExhausted => info.is_some(),
            _ => false,
        };
    let mut message = sanitize(status.message());
    // Transport errors (connection refused, TLS, ...) keep the cause in the source chain; the
    // innermost error is the informative one.
    if let Some(source) = std::error::Error::source(status) {
        let cause = root_cause(source);
        if !cause.is_empty() && !message.contains(&cause) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&cause);
        }
    }
    Failure {
        retryable,
        retry_after: info.flatten(),
        description: format!(
            "gRPC status {}: {}",
            grpc_code_name(status.code()),
            truncate(&message, 300)
        ),
    }
}

fn reqwest_failure(e: &reqwest::Error) -> Failure {
    let root = root_cause(e);
    let description = if e.is_timeout() {
        "request timed out".to_owned()
    } else if e.is_connect() {
        format!("cannot connect: {root}")
    } else {
        format!("request failed: {root}")
    };
    Failure {
        // Builder errors are bugs in the request, not transient.
        retryable: !e.is_builder(),
        retry_after: None,
        description,
    }
}

/// The innermost error's message, which is where the useful part usually is.
fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    sanitize(&cur.to_string())
}

/// `outer: inner: innermost`, skipping messages that repeat the previous one.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let msg = err.to_string();
        if !msg.is_empty() && !parts.last().is_some_and(|p| p.contains(&msg)) {
            parts.push(msg);
        }
        cur = err.source();
    }
    sanitize(&parts.join(": "))
}

/// Logs at most once per interval and says how many messages it held back.
struct WarnLimiter {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnLimiter {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    fn warn(&mut self, message: impl FnOnce() -> String) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.interval)
        {
            self.suppressed += 1;
            return;
        }
        let message = message();
        match std::mem::take(&mut self.suppressed) {
            0 => tracing::warn!("{message}"),
            n => tracing::warn!("{message} ({n} similar warnings suppressed)"),
        }
        self.last = Some(now);
    }
}

const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// A run of retryable failures of this endpoint, from the first one to the next success.
struct Outage {
    since: Instant,
    /// Failed attempts during it.
    attempts: u64,
    /// The counters when it began, to tell what was lost during it.
    dropped_before: u64,
    failed_before: u64,
}

/// Exports batches to one endpoint: OTLP (spans or metrics) or Zipkin (spans).
pub(crate) struct RemoteSink {
    endpoint: String,
    wire: Wire,
    timeout: Duration,
    retry: RetryConfig,
    transport: Transport,
    counters: Arc<Counters>,
    /// Retryable failures, give-ups.
    warn_transient: WarnLimiter,
    /// Rejections: non-retryable failures and partial success.
    warn_rejected: WarnLimiter,
    /// Set from the first retryable failure until the next accepted batch.
    outage: Option<Outage>,
}

impl RemoteSink {
    /// Builds the client of spans; does not connect (the first batch does).
    pub(crate) fn new(
        cfg: &OtlpConfig,
        retry: RetryConfig,
        counters: Arc<Counters>,
    ) -> Result<Self, ExportError> {
        Self::for_signal(cfg, retry, counters, Signal::Traces)
    }

    /// Builds the client of one signal; its counters count spans or metric data points.
    pub(crate) fn for_signal(
        cfg: &OtlpConfig,
        retry: RetryConfig,
        counters: Arc<Counters>,
        signal: Signal,
    ) -> Result<Self, ExportError> {
        let mut headers = HeaderMap::new();
        for (k, v) in &cfg.headers {
            let invalid = |reason: &str| ExportError::InvalidHeader {
                name: k.clone(),
                reason: reason.to_owned(),
            };
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| invalid("invalid name"))?;
            let value = HeaderValue::from_str(v).map_err(|_| invalid("invalid value"))?;
            headers.append(name, value);
        }
        Ok(Self::with_transport(
            cfg.endpoint.clone(),
            Wire::Otlp(signal),
            cfg.timeout,
            retry,
            Transport::new(cfg, headers)?,
            counters,
        ))
    }

    /// Builds the Zipkin client of spans; does not connect (the first batch does).
    pub(crate) fn zipkin(
        cfg: &ZipkinConfig,
        retry: RetryConfig,
        counters: Arc<Counters>,
    ) -> Result<Self, ExportError> {
        Ok(Self::with_transport(
            cfg.endpoint.clone(),
            Wire::Zipkin,
            cfg.timeout,
            retry,
            Transport::zipkin(cfg)?,
            counters,
        ))
    }

    fn with_transport(
        endpoint: String,
        wire: Wire,
        timeout: Duration,
        retry: RetryConfig,
        transport: Transport,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            endpoint,
            wire,
            timeout,
            retry,
            transport,
            counters,
            warn_transient: WarnLimiter::new(WARN_INTERVAL),
            warn_rejected: WarnLimiter::new(WARN_INTERVAL),
            outage: None,
        }
    }

    /// The delay before retry number `retry_number` (1 for the first retry), without a
    /// server-requested delay: exponential up to `max_backoff`, with equal jitter.
    fn backoff(&self, retry_number: u32) -> Duration {
        let base = self
            .retry
            .initial_backoff
            .saturating_mul(1u32 << retry_number.saturating_sub(1).min(16))
            .min(self.retry.max_backoff);
        // Equal jitter: half fixed, half random, so retries of many agents spread out.
        let half = base / 2;
        half + half.mul_f64(rand::rng().random::<f64>())
    }

    /// The delay before retry number `retry_number`: the server's (capped at
    /// `max_server_delay`) when it asked for one, else [`Self::backoff`].
    fn retry_delay(&self, retry_number: u32, server_delay: Option<Duration>) -> Duration {
        match server_delay.filter(|d| !d.is_zero()) {
            Some(d) => d.min(self.retry.max_server_delay),
            None => self.backoff(retry_number),
        }
    }

    /// Whether the policy's optional limits forbid another attempt, `delay` from now, after
    /// `attempt` attempts at a batch first tried at `started`.
    fn limit_reached(&self, attempt: u32, started: Instant, delay: Duration) -> bool {
        self.retry.max_attempts.is_some_and(|max| attempt >= max)
            || self
                .retry
                .max_elapsed
                .is_some_and(|max| started.elapsed() + delay > max)
    }

    /// Notes a retryable failure: the endpoint is in an outage from now on, if not already.
    fn failed_attempt(&mut self) {
        let counters = &self.counters;
        let outage = self.outage.get_or_insert_with(|| {
            let now = counters.snapshot();
            Outage {
                since: Instant::now(),
                attempts: 0,
                dropped_before: now.dropped_queue_full,
                failed_before: now.failed,
            }
        });
        outage.attempts += 1;
        counters.set_failing(true);
    }

    /// Notes an accepted batch: ends the outage, if any, saying what it cost.
    fn accepted(&mut self) {
        let Some(outage) = self.outage.take() else {
            return;
        };
        self.counters.set_failing(false);
        let now = self.counters.snapshot();
        let dropped = now.dropped_queue_full.saturating_sub(outage.dropped_before);
        let failed = now.failed.saturating_sub(outage.failed_before);
        let lost = if dropped + failed == 0 {
            format!("no {} lost", self.items())
        } else {
            format!("{dropped} spans dropped because the export queue was full, {failed} given up")
        };
        let what = self.what();
        tracing::info!(
            "{what} to {} works again: outage of {:.1} s ended after {} failed attempts; {lost}",
            self.endpoint,
            outage.since.elapsed().as_secs_f64(),
            outage.attempts,
        );
    }

    /// Sends one batch, retrying retryable failures as the policy allows (by default until it
    /// is accepted or the shutdown deadline passes); every span ends up counted as exported or
    /// failed.
    async fn send(&mut self, spans: Vec<Span>, shutdown: &mut Shutdown) {
        let n = spans.len() as u64;
        if n == 0 {
            return;
        }
        let payload = Bytes::from(match self.wire {
            Wire::Zipkin => encode_spans(&spans),
            Wire::Otlp(_) => encode_request(&spans),
        });
        drop(spans);
        self.send_payload(payload, n, shutdown).await;
    }

    /// The OTLP signal of the requests (a Zipkin sink sends spans).
    fn signal(&self) -> Signal {
        match self.wire {
            Wire::Otlp(signal) => signal,
            Wire::Zipkin => Signal::Traces,
        }
    }

    /// How log lines name this sink's exports.
    fn what(&self) -> &'static str {
        match self.wire {
            Wire::Otlp(Signal::Traces) => "OTLP export",
            Wire::Otlp(Signal::Metrics) => "OTLP metrics export",
            Wire::Zipkin => "Zipkin export",
        }
    }

    /// What the counters of this sink count.
    fn items(&self) -> &'static str {
        match self.wire {
            Wire::Otlp(Signal::Traces) | Wire::Zipkin => "spans",
            Wire::Otlp(Signal::Metrics) => "data points",
        }
    }

    /// Sends one encoded request holding `n` items (spans or data points), retrying as
    /// [`Self::send`] does.
    pub(crate) async fn send_payload(&mut self, payload: Bytes, n: u64, shutdown: &mut Shutdown) {
        let (what, items) = (self.what(), self.items());
        let started = Instant::now();
        let mut attempt: u32 = 1;
        loop {
            // The clients enforce the timeout too; this also covers a stuck connection setup and
            // cuts the attempt short at the shutdown deadline.
            let limit = Instant::now() + self.timeout + Duration::from_millis(500);
            let result = match shutdown
                .bound(
                    self.transport.send(&self.endpoint, self.signal(), &payload),
                    limit,
                )
                .await
            {
                Some(r) => r,
                None if shutdown.deadline_passed() => {
                    tracing::warn!(
                        "{what} to {}: shutdown deadline reached; dropping {n} {items}",
                        self.endpoint
                    );
                    self.counters.add_failed(n);
                    return;
                }
                None => Err(Failure {
                    retryable: true,
                    retry_after: None,
                    description: format!("no response within {:?}", self.timeout),
                }),
            };
            let failure = match result {
                Ok(acc) => {
                    let rejected = acc.rejected_spans.clamp(0, n as i64) as u64;
                    self.counters.add_exported(n - rejected);
                    self.counters.add_failed(rejected);
                    if acc.rejected_spans > 0 || !acc.error_message.is_empty() {
                        let endpoint = &self.endpoint;
                        self.warn_rejected.warn(|| {
                            format!(
                                "{what} to {endpoint}: partial success, {} of {n} {items} rejected: {}",
                                acc.rejected_spans,
                                truncate(&sanitize(&acc.error_message), 300)
                            )
                        });
                    }
                    self.accepted();
                    return;
                }
                Err(f) => f,
            };
            let endpoint = &self.endpoint;
            if !failure.retryable {
                self.warn_rejected.warn(|| {
                    format!(
                        "{what} to {endpoint} failed: {}; dropping {n} {items} (not retryable)",
                        failure.description
                    )
                });
                self.counters.add_failed(n);
                return;
            }
            self.failed_attempt();
            let endpoint = &self.endpoint;
            let delay = self.retry_delay(attempt, failure.retry_after);
            if self.limit_reached(attempt, started, delay) {
                self.warn_transient.warn(|| {
                    format!(
                        "{what} to {endpoint} failed: {}; giving up on {n} {items} after {attempt} attempts (retry limit)",
                        failure.description
                    )
                });
                self.counters.add_failed(n);
                return;
            }
            self.warn_transient.warn(|| {
                format!(
                    "{what} to {endpoint} failed: {}; will retry",
                    failure.description
                )
            });
            self.counters.add_retry();
            if !shutdown.sleep(delay).await {
                tracing::warn!(
                    "{what} to {}: shutdown deadline reached; dropping {n} {items}",
                    self.endpoint
                );
                self.counters.add_failed(n);
                return;
            }
            attempt = attempt.saturating_add(1);
        }
    }
}

impl Sink for RemoteSink {
    fn export(
        &mut self,
        batch: Vec<Span>,
        shutdown: &mut Shutdown,
    ) -> impl Future<Output = ()> + Send {
        self.send(batch, shutdown)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest,
        common::v1::{KeyValue as ProtoKeyValue, any_value},
        trace::v1::{
            ScopeSpans, Status as ProtoStatus, span::SpanKind as ProtoKind, status::StatusCode,
        },
    };

    use super::*;
    use crate::trace::span::{KeyValue, Resource, SpanId, SpanKind, Status, TraceId, Value};

    /// What the exporter sends for `spans`, decoded with the generated messages.
    fn to_otlp_request(spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest::decode(encode_request(&spans).as_slice()).expect("decodes")
    }

    fn resource(pid: u32, service: &str) -> Arc<Resource> {
        Arc::new(Resource {
            key: format!("pid:{pid}"),
            attributes: vec![
                KeyValue::new("service.name", service),
                KeyValue::new("process.pid", i64::from(pid)),
            ],
        })
    }

    fn span(n: u8, resource: &Arc<Resource>, scope: &'static str) -> Span {
        Span::for_test(n, resource, scope)
    }

    fn names(ss: &ScopeSpans) -> Vec<&str> {
        ss.spans.iter().map(|s| s.name.as_str()).collect()
    }

    fn str_attr<'a>(attrs: &'a [ProtoKeyValue], key: &str) -> Option<&'a any_value::Value> {
        attrs
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    #[test]
    fn groups_interleaved_processes_by_resource_then_scope() {
        let a = resource(10, "frontend");
        let b = resource(20, "backend");
        // A second Arc with the same key must land in the same group.
        let a2 = resource(10, "frontend");
        let spans = vec![
            span(1, &a, "socktrace.http"),
            span(2, &b, "socktrace.http"),
            span(3, &a2, "socktrace.grpc"),
            span(4, &b, "socktrace.http"),
            span(5, &a, "socktrace.http"),
        ];
        let req = to_otlp_request(spans.clone());
        assert_eq!(req.resource_spans.len(), 2);

        let ra = &req.resource_spans[0];
        let attrs = &ra.resource.as_ref().unwrap().attributes;
        assert_eq!(
            str_attr(attrs, "service.name"),
            Some(&any_value::Value::StringValue("frontend".into()))
        );
        assert_eq!(
            str_attr(attrs, "process.pid"),
            Some(&any_value::Value::IntValue(10))
        );
        assert_eq!(ra.scope_spans.len(), 2);
        let scope = ra.scope_spans[0].scope.as_ref().unwrap();
        assert_eq!(scope.name, "socktrace.http");
        assert_eq!(scope.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(names(&ra.scope_spans[0]), ["span-1", "span-5"]);
        assert_eq!(
            ra.scope_spans[1].scope.as_ref().unwrap().name,
            "socktrace.grpc"
        );
        assert_eq!(names(&ra.scope_spans[1]), ["span-3"]);

        let rb = &req.resource_spans[1];
        assert_eq!(
            str_attr(&rb.resource.as_ref().unwrap().attributes, "service.name"),
            Some(&any_value::Value::StringValue("backend".into()))
        );
        assert_eq!(rb.scope_spans.len(), 1);
        assert_eq!(names(&rb.scope_spans[0]), ["span-2", "span-4"]);
    }

    #[test]
    fn converts_every_field() {
        let r = resource(1, "svc");
        let mut s = span(7, &r, "socktrace.http");
        s.trace_id = TraceId([
            0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
            0x47, 0x36,
        ]);
        s.span_id = SpanId([0, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        s.parent_span_id = Some(SpanId([1, 2, 3, 4, 5, 6, 7, 8]));
        s.trace_state = "vendor=x".into();
        s.kind = SpanKind::Client;
        s.status = Status::Error {
            message: "boom".into(),
        };
        s.attributes = vec![
            KeyValue::new("s", "v"),
            KeyValue::new("i", -3i64),
            KeyValue::new("b", true),
            KeyValue {
                key: "d".into(),
                value: Value::Double(1.5),
            },
        ];
        let req = to_otlp_request(vec![s.clone()]);
        let p = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(p.trace_id, s.trace_id.0.to_vec());
        assert_eq!(p.span_id, vec![0, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert_eq!(p.parent_span_id, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(p.trace_state, "vendor=x");
        assert_eq!(p.name, "span-7");
        assert_eq!(p.kind, ProtoKind::Client as i32);
        assert_eq!(p.kind, 3);
        assert_eq!(p.start_time_unix_nano, 1_007);
        assert_eq!(p.end_time_unix_nano, 2_007);
        assert_eq!(
            p.status,
            Some(ProtoStatus {
                message: "boom".into(),
                code: StatusCode::Error as i32
            })
        );
        assert_eq!(
            str_attr(&p.attributes, "s"),
            Some(&any_value::Value::StringValue("v".into()))
        );
        assert_eq!(
            str_attr(&p.attributes, "i"),
            Some(&any_value::Value::IntValue(-3))
        );
        assert_eq!(
            str_attr(&p.attributes, "b"),
            Some(&any_value::Value::BoolValue(true))
        );
        assert_eq!(
            str_attr(&p.attributes, "d"),
            Some(&any_value::Value::DoubleValue(1.5))
        );

        s.parent_span_id = None;
        s.kind = SpanKind::Server;
        s.status = Status::Ok;
        let req = to_otlp_request(vec![s]);
        let p = &req.resource_spans[0].scope_spans[0].spans[0];
        assert!(p.parent_span_id.is_empty());
        assert_eq!(p.kind, 2);
        assert_eq!(p.status.as_ref().unwrap().code, StatusCode::Ok as i32);
        assert_eq!(to_otlp_request(Vec::new()).resource_spans.len(), 0);
    }

    fn status_with_retry_info(delay: Option<ProtoDuration>) -> Vec<u8> {
        RpcStatus {
            code: Code::ResourceExhausted as i32,
            message: "slow down".into(),
            details: vec![ProtoAny {
                type_url: RETRY_INFO_TYPE.into(),
                value: RetryInfo { retry_delay: delay }.encode_to_vec(),
            }],
        }
        .encode_to_vec()
    }

    #[test]
    fn grpc_retry_classification() {
        for code in [
            Code::Unavailable,
            Code::Cancelled,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::OutOfRange,
            Code::DataLoss,
        ] {
            assert!(
                grpc_failure(&tonic::Status::new(code, "x")).retryable,
                "{code:?}"
            );
        }
        for code in [
            Code::InvalidArgument,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::Internal,
            Code::Unimplemented,
            Code::ResourceExhausted,
        ] {
            assert!(
                !grpc_failure(&tonic::Status::new(code, "x")).retryable,
                "{code:?}"
            );
        }
        // The connection broke (the collector went away mid-request): tonic says UNKNOWN or
        // INTERNAL, with the cause as the source.
        for kind in [
            std::io::ErrorKind::BrokenPipe,
            std::io::ErrorKind::ConnectionReset,
        ] {
            let status = tonic::Status::from_error(Box::new(std::io::Error::new(kind, "gone")));
            assert!(grpc_failure(&status).retryable, "{status:?}");
        }
        let f = grpc_failure(&tonic::Status::new(Code::InvalidArgument, "bad span"));
        assert_eq!(f.description, "gRPC status INVALID_ARGUMENT: bad span");

        let details = status_with_retry_info(Some(ProtoDuration {
            seconds: 2,
            nanos: 500_000_000,
        }));
        let f = grpc_failure(&tonic::Status::with_details(
            Code::ResourceExhausted,
            "slow down",
            details.into(),
        ));
        assert!(f.retryable);
        assert_eq!(f.retry_after, Some(Duration::from_millis(2500)));

        let f = grpc_failure(&tonic::Status::with_details(
            Code::ResourceExhausted,
            "slow down",
            status_with_retry_info(None).into(),
        ));
        assert!(f.retryable);
        assert_eq!(f.retry_after, None);
    }

    #[test]
    fn zipkin_retry_classification() {
        for code in [429, 500, 502, 503, 504, 507] {
            assert!(zipkin_retryable(code), "{code}");
        }
        for code in [200, 400, 401, 403, 404, 413, 415, 501, 505] {
            assert!(!zipkin_retryable(code), "{code}");
        }
    }

    #[test]
    fn http_error_bodies() {
        let status = RpcStatus {
            code: 3,
            message: "bad\nthing".into(),
            details: vec![],
        };
        assert_eq!(http_error_message(&status.encode_to_vec()), "bad\\nthing");
        assert_eq!(http_error_message(b"plain text\n"), "plain text");
        assert_eq!(truncate("abcdef", 3), "abc...");
        assert_eq!(truncate("abc", 3), "abc");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let counters = Arc::new(Counters::default());
        let cfg = OtlpConfig {
            endpoint: "http://127.0.0.1:4318/v1/traces".into(),
            protocol: OtlpProtocol::HttpProtobuf,
            headers: vec![],
            timeout: Duration::from_secs(1),
        };
        let retry = RetryConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
            max_server_delay: Duration::from_secs(2),
            max_attempts: None,
            max_elapsed: None,
        };
        let sink = RemoteSink::new(&cfg, retry, counters).unwrap();
        for _ in 0..50 {
            let b1 = sink.backoff(1);
            assert!(
                b1 >= Duration::from_millis(50) && b1 <= Duration::from_millis(100),
                "{b1:?}"
            );
            let b2 = sink.backoff(2);
            assert!(
                b2 >= Duration::from_millis(100) && b2 <= Duration::from_millis(200),
                "{b2:?}"
            );
            let b9 = sink.backoff(9);
            assert!(
                b9 >= Duration::from_millis(150) && b9 <= Duration::from_millis(300),
                "{b9:?}"
            );
            // Retries go on indefinitely in a long outage: no overflow, still capped.
            let far = sink.backoff(u32::MAX);
            assert!(
                far >= Duration::from_millis(150) && far <= Duration::from_millis(300),
                "{far:?}"
            );
        }
        // A server's delay wins over the backoff, beyond its cap, up to max_server_delay.
        assert_eq!(
            sink.retry_delay(1, Some(Duration::from_secs(1))),
            Duration::from_secs(1)
        );
        assert_eq!(
            sink.retry_delay(1, Some(Duration::from_secs(3600))),
            Duration::from_secs(2)
        );
        // A zero delay would be a busy loop: the backoff is used.
        let zero = sink.retry_delay(1, Some(Duration::ZERO));
        assert!(zero >= Duration::from_millis(50), "{zero:?}");
    }

    #[test]
    fn retry_limits_are_optional() {
        let cfg = OtlpConfig {
            endpoint: "http://127.0.0.1:4318/v1/traces".into(),
            protocol: OtlpProtocol::HttpProtobuf,
            headers: vec![],
            timeout: Duration::from_secs(1),
        };
        let start = Instant::now();
        let sink = |retry| RemoteSink::new(&cfg, retry, Arc::new(Counters::default())).unwrap();
        let unlimited = sink(RetryConfig::default());
        assert!(!unlimited.limit_reached(u32::MAX, start, Duration::from_secs(3600)));
        let attempts = sink(RetryConfig {
            max_attempts: Some(3),
            ..RetryConfig::default()
        });
        assert!(!attempts.limit_reached(2, start, Duration::ZERO));
        assert!(attempts.limit_reached(3, start, Duration::ZERO));
        let elapsed = sink(RetryConfig {
            max_elapsed: Some(Duration::from_secs(30)),
            ..RetryConfig::default()
        });
        assert!(!elapsed.limit_reached(100, start, Duration::from_secs(1)));
        assert!(elapsed.limit_reached(1, start, Duration::from_secs(31)));
    }
}
