//! Processes that trace themselves: an OpenTelemetry SDK (or any tracer) inside the program.
//!
//! Such a process has its own spans for the requests socktrace sees, so socktrace's would be
//! the same operations a second time under other ids. It is recognised, per process, from its
//! traffic alone:
//!
//! - **It exports spans**: a client request of OTLP (`POST /v1/traces` over HTTP, the gRPC
//!   method `opentelemetry.proto.collector.trace.v1.TraceService/Export`) or of Zipkin
//!   (`POST /api/v2/spans`). Only a tracer (or a forwarder of spans, such as a Collector) sends
//!   those; socktrace's own export is never traced.
//! - **It writes its own context**: a request carrying a `traceparent` the kernel did not put
//!   there, whose parent span id the process never received (a proxy forwarding its caller's
//!   header is not a tracer), written either while the thread serves an HTTP/1 request (an
//!   instrumented service calling on), or with a second, different parent id (a tracer makes a
//!   span per call; a script repeating one hand-written header does not).
//!
//! The environment (`OTEL_*` variables) is not used: socktrace users set `OTEL_SERVICE_NAME`
//! and `OTEL_RESOURCE_ATTRIBUTES` to name processes socktrace traces, and platforms set the
//! exporter variables for whole pods, instrumented or not.
//!
//! What happens to a detected process's spans is the [`InstrumentedMode`]. Either way the
//! kernel adds no second header: it never injects into a request that has a `traceparent`.

use std::collections::VecDeque;

use super::{
    link::{Actor, LinkEvent, Side},
    span::{KeyValue, Span, SpanId, SpanKind, Value},
};
use crate::{FastMap, FastSet};

/// What becomes of socktrace's spans of a process that traces itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum InstrumentedMode {
    /// Its spans are not exported (its tracer has them); the context it writes links its
    /// peers' spans, as its tracer's spans are their parents.
    Skip,
    /// Its spans are exported too, marked `socktrace.instrumented_process=true`, and linked
    /// into its tracer's traces: two spans per operation, on purpose.
    Link,
}

/// The attribute marking spans of a process that traces itself (`link` mode).
pub const INSTRUMENTED_ATTR: &str = "socktrace.instrumented_process";

/// Why a process was taken for one that traces itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// It sent spans to an OTLP or Zipkin endpoint.
    Export,
    /// It wrote a `traceparent` of its own.
    OwnContext,
}

crate::counters! {
    /// Counters of the detection of processes that trace themselves.
    pub struct InstrumentedStats {
        /// Processes found exporting spans themselves (OTLP or Zipkin client requests).
        detected_export,
        /// Processes found writing a `traceparent` of their own (not injected, not forwarded).
        detected_own_context,
        /// `traceparent` headers a process wrote with a parent id it had received (forwarded,
        /// as a proxy does): not a sign of a tracer.
        forwarded_context,
        /// Spans of detected processes not exported (`skip`).
        spans_skipped,
        /// Spans of detected processes exported marked `socktrace.instrumented_process` (`link`).
        spans_marked,
        /// Spans socktrace made for a process before it was detected (exported as any other).
        spans_before_detection,
        /// Spans whose parent was a skipped span, given that span's parent instead.
        reparented,
    }
}

/// Bound on the processes, received parent ids and skipped spans remembered.
const MAX_ENTRIES: usize = 65_536;

/// Per process: what was seen before it was detected.
#[derive(Debug, Default)]
struct Proc {
    detected: bool,
    /// Spans made for it so far (before detection).
    spans: u64,
    /// The parent id of the first `traceparent` of its own it wrote outside a served request.
    own_parent: Option<SpanId>,
}

/// Recognises processes that trace themselves and applies the mode to their spans.
pub struct Instrumented {
    mode: InstrumentedMode,
    stats: InstrumentedStats,
    procs: FastMap<u32, Proc>,
    /// How many of `procs` are detected (spans need no look-up while none is).
    detected: usize,
    /// Parent ids of `traceparent` headers processes received (pid, id), oldest first.
    received: FastSet<(u32, SpanId)>,
    received_order: VecDeque<(u32, SpanId)>,
    /// Threads serving an HTTP/1 request now: tid -> socket.
    serving: FastMap<u32, u64>,
    /// Skipped spans: id -> their parent, so that a child exported later names a span that is.
    skipped: FastMap<SpanId, Option<SpanId>>,
    skipped_order: VecDeque<SpanId>,
}

impl Instrumented {
    pub fn new(mode: InstrumentedMode) -> Self {
        Self {
            mode,
            stats: InstrumentedStats::default(),
            procs: FastMap::default(),
            detected: 0,
            received: FastSet::default(),
            received_order: VecDeque::new(),
            serving: FastMap::default(),
            skipped: FastMap::default(),
            skipped_order: VecDeque::new(),
        }
    }

    pub fn stats(&self) -> InstrumentedStats {
        self.stats
    }

    /// Processes detected so far and still running.
    pub fn detected(&self) -> usize {
        self.detected
    }

    pub fn is_detected(&self, pid: u32) -> bool {
        self.procs.get(&pid).is_some_and(|p| p.detected)
    }

    /// The process exited (its pid may be reused).
    pub fn exited(&mut self, pid: u32) {
        if self.procs.remove(&pid).is_some_and(|p| p.detected) {
            self.detected -= 1;
        }
    }

    fn proc(&mut self, pid: u32) -> &mut Proc {
        if self.procs.len() >= MAX_ENTRIES && !self.procs.contains_key(&pid) {
            // Forget undetected processes first: they cost only a count.
            self.procs.retain(|_, p| p.detected);
            if self.procs.len() >= MAX_ENTRIES {
                self.procs.clear();
            }
            self.detected = self.procs.len();
        }
        self.procs.entry(pid).or_default()
    }

    fn detect(&mut self, pid: u32, signal: Signal) {
        let p = self.proc(pid);
        if p.detected {
            return;
        }
        p.detected = true;
        let before = p.spans;
        self.detected += 1;
        self.stats.spans_before_detection += before;
        match signal {
            Signal::Export => self.stats.detected_export += 1,
            Signal::OwnContext => self.stats.detected_own_context += 1,
        }
        tracing::info!(
            "process {pid} traces itself ({}): {}",
            match signal {
                Signal::Export => "it exports spans",
                Signal::OwnContext => "it writes its own traceparent",
            },
            match self.mode {
                InstrumentedMode::Skip => "its spans are no longer exported",
                InstrumentedMode::Link => "its spans are marked socktrace.instrumented_process",
            }
        );
    }

    fn remember_received(&mut self, pid: u32, id: SpanId) {
        if self.received.insert((pid, id)) {
            self.received_order.push_back((pid, id));
            if self.received_order.len() > MAX_ENTRIES
                && let Some(old) = self.received_order.pop_front()
            {
                self.received.remove(&old);
            }
        }
    }

    /// A `traceparent` with parent `id` that process `pid` wrote itself (not the kernel).
    /// `serving`: the writing thread is serving an HTTP/1 request.
    fn own_context(&mut self, pid: u32, id: SpanId, serving: bool) {
        if self.received.contains(&(pid, id)) {
            self.stats.forwarded_context += 1;
            return;
        }
        let p = self.proc(pid);
        if p.detected {
            return;
        }
        let second = p.own_parent.is_some_and(|first| first != id);
        p.own_parent.get_or_insert(id);
        if serving || second {
            self.detect(pid, Signal::OwnContext);
        }
    }

    /// A link event of process `pid` (the connection's), before the linker sees it. In `skip`
    /// mode, a request of a detected process that carries its own `traceparent` stands for the
    /// span that header names: its same-host server is linked to the tracer's span, not to
    /// socktrace's, which is not exported.
    pub fn on_link(&mut self, mut ev: LinkEvent, pid: Option<u32>) -> LinkEvent {
        match &mut ev {
            LinkEvent::Http1Request {
                key,
                actor,
                side: Side::Server,
                header,
                ..
            } => {
                if self.serving.len() >= MAX_ENTRIES {
                    // Threads that died serving: forgotten all at once, rarely.
                    self.serving.clear();
                }
                if let Actor::Thread(tid) = actor {
                    self.serving.insert(*tid, key.0);
                }
                if let (Some(pid), Some(h)) = (pid, header) {
                    self.remember_received(pid, h.parent_id);
                }
            }
            LinkEvent::Http1Request {
                actor,
                side: Side::Client,
                header: Some(h),
                injected,
                ..
            } if injected.is_none() => {
                let Some(pid) = pid else {
                    return ev;
                };
                let serving = match actor {
                    Actor::Thread(tid) => self.serving.contains_key(tid),
                    // Go: the kernel names the request the goroutine works for.
                    Actor::Go(parent) => parent.is_some(),
                };
                self.own_context(pid, h.parent_id, serving);
                if self.mode == InstrumentedMode::Skip && self.is_detected(pid) {
                    // The request's context is the header's span: children take it as parent.
                    *injected = Some((h.trace_id, h.parent_id));
                }
            }
            LinkEvent::ServerResponse {
                sk,
                actor: Actor::Thread(tid),
            } if self.serving.get(tid) == Some(sk) => {
                self.serving.remove(tid);
            }
            _ => {}
        }
        ev
    }

    /// A span built for process `pid`, before linking: export traffic, and the context of
    /// requests whose context is not followed turn by turn (HTTP/2, gRPC: `http1` false).
    pub fn on_span(&mut self, pid: u32, span: &Span, http1: bool) {
        if span.kind == SpanKind::Client {
            if is_span_export(span) {
                self.detect(pid, Signal::Export);
            } else if !http1 && let Some(parent) = span.parent_span_id {
                // The builder took it from the request's headers: the kernel injects none there.
                self.own_context(pid, parent, false);
            }
        }
        let p = self.proc(pid);
        if !p.detected {
            p.spans += 1;
        }
    }

    /// Applies the mode to linked spans: skips or marks those of detected processes.
    pub fn apply(&mut self, spans: &mut Vec<Span>) {
        if self.detected == 0 {
            return;
        }
        let skip = self.mode == InstrumentedMode::Skip;
        let mut kept = Vec::with_capacity(spans.len());
        for mut span in spans.drain(..) {
            if span_pid(&span).is_some_and(|pid| self.is_detected(pid)) {
                if skip {
                    self.stats.spans_skipped += 1;
                    self.remember_skipped(span.span_id, span.parent_span_id);
                    continue;
                }
                self.stats.spans_marked += 1;
                span.attributes.push(KeyValue::new(INSTRUMENTED_ATTR, true));
            }
            kept.push(span);
        }
        // A child of a skipped span (one that became final in the same batch or later) names
        // the span that skipped one stood for.
        if skip {
            for span in &mut kept {
                if let Some(parent) = span.parent_span_id
                    && let Some(grand) = self.skipped.get(&parent)
                {
                    span.parent_span_id = *grand;
                    self.stats.reparented += 1;
                }
            }
        }
        *spans = kept;
    }

    fn remember_skipped(&mut self, id: SpanId, parent: Option<SpanId>) {
        // A span standing for its tracer's (an adopted header) has itself as parent: nothing
        // to redirect.
        if parent == Some(id) {
            return;
        }
        if self.skipped.insert(id, parent).is_none() {
            self.skipped_order.push_back(id);
            if self.skipped_order.len() > MAX_ENTRIES
                && let Some(old) = self.skipped_order.pop_front()
            {
                self.skipped.remove(&old);
            }
        }
    }
}

/// The process a span was made for (its resource's `process.pid`).
fn span_pid(span: &Span) -> Option<u32> {
    span.resource
        .attributes
        .iter()
        .find(|kv| kv.key == "process.pid")
        .and_then(|kv| match kv.value {
            Value::Int(pid) => u32::try_from(pid).ok(),
            _ => None,
        })
}

/// The OTLP and Zipkin span export paths.
const EXPORT_PATHS: &[&str] = &["/v1/traces", "/api/v2/spans"];
/// The OTLP gRPC span export method.
const EXPORT_METHOD: &str = "opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// A client span of a request that exports spans.
fn is_span_export(span: &Span) -> bool {
    let attr = |key: &str| {
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| match &kv.value {
                Value::Str(s) => Some(s.as_ref()),
                _ => None,
            })
    };
    if attr("http.request.method") == Some("POST")
        && let Some(url) = attr("url.full")
    {
        let path = url.split_once("://").map_or(url, |(_, rest)| {
            rest.find('/').map_or("", |slash| &rest[slash..])
        });
        let path = path.split(['?', '#']).next().unwrap_or(path);
        return EXPORT_PATHS.contains(&path);
    }
    [super::rpc::METHOD, super::rpc::METHOD_ORIGINAL]
        .iter()
        .any(|key| attr(key).is_some_and(|m| m.trim_start_matches('/') == EXPORT_METHOD))
}

#[cfg(test)]
mod tests;
