//! Trace completeness per service: how much of what each service does this agent could link,
//! so that a user sees where traces break (a runtime whose requests cannot be followed, a
//! client not traced, a peer on another host without a header).
//!
//! Two figures per service, from every span before sampling:
//! - **calls linked**: of the client spans the service made, those with a parent (the request
//!   it was serving, found by thread, goroutine or header). An unlinked call starts a trace of
//!   its own: a fragment, unless the service really made it on its own (a timer, a batch job).
//! - **whole traces**: of the traces whose root is a span of the service, those with a single
//!   root, i.e. every other span's parent is in the trace. A trace is judged once no span of it
//!   came for `idle_ns`. A span whose parent is on another host counts as the root it is.
//!
//! Everything is bounded: open traces (the oldest is judged early, and counted), spans kept per
//! trace (beyond, the trace is judged on those), and services (beyond, new ones are counted
//! under one overflow name).

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use super::span::{Resource, Span, SpanId, SpanKind, TraceId};
use crate::{FastMap, FastSet};

/// Bounds and the idle time after which a trace is judged.
#[derive(Clone, Copy, Debug)]
pub struct CompletenessConfig {
    pub idle_ns: u64,
    pub max_traces: usize,
    pub max_spans_per_trace: usize,
    pub max_services: usize,
}

impl Default for CompletenessConfig {
    fn default() -> Self {
        Self {
            idle_ns: 10_000_000_000,
            max_traces: 16_384,
            max_spans_per_trace: 512,
            max_services: 256,
        }
    }
}

/// The figures of one service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceCompleteness {
    /// Client spans the service made.
    pub calls: u64,
    /// Of those, the ones with a parent.
    pub calls_linked: u64,
    /// Traces judged whose root is a span of the service.
    pub traces: u64,
    /// Of those, the ones with a single root.
    pub traces_whole: u64,
}

crate::counters! {
    pub struct CompletenessStats {
        /// Traces judged before they were idle, to stay within the bound of open traces.
        judged_early,
        /// Spans not kept for judging their trace (more than the bound per trace).
        spans_skipped,
    }
}

/// Services beyond the bound are counted under this name.
pub const OTHER_SERVICES: &str = "_other";

/// What judging a trace needs of one of its spans: its id, its parent's, and the index of its
/// service.
type Kept = (SpanId, Option<SpanId>, u32);

struct Open {
    last_ns: u64,
    /// The first span inline (most traces seen by one agent have one or two spans), the others
    /// in arrival order.
    first: Kept,
    more: Vec<Kept>,
}

impl Open {
    fn spans(&self) -> impl Iterator<Item = &Kept> {
        std::iter::once(&self.first).chain(&self.more)
    }
}

pub struct Completeness {
    config: CompletenessConfig,
    open: FastMap<TraceId, Open>,
    /// Open traces by the time of their latest span, oldest first; an entry whose time is no
    /// longer its trace's `last_ns` is stale and skipped.
    by_age: VecDeque<(u64, TraceId)>,
    /// Figures by service index; names are looked up in `index`.
    services: Vec<(Arc<str>, ServiceCompleteness)>,
    index: HashMap<Arc<str>, u32>,
    /// The resource of the latest span and its service index (consecutive spans mostly come
    /// from the same process); the `Arc` keeps the pointer from being reused.
    last: Option<(Arc<Resource>, u32)>,
    stats: CompletenessStats,
}

impl Completeness {
    pub fn new(config: CompletenessConfig) -> Self {
        Self {
            config,
            open: FastMap::default(),
            by_age: VecDeque::new(),
            services: Vec::new(),
            index: HashMap::new(),
            last: None,
            stats: CompletenessStats::default(),
        }
    }

    /// The index of a service's figures (a new service beyond the bound goes to
    /// [`OTHER_SERVICES`]).
    fn service(&mut self, resource: &Arc<Resource>) -> u32 {
        if let Some((r, i)) = &self.last
            && Arc::ptr_eq(r, resource)
        {
            return *i;
        }
        let name = resource.service_name();
        let i = match self.index.get(name) {
            Some(&i) => i,
            None => {
                let name: Arc<str> = if self.services.len() < self.config.max_services {
                    Arc::from(name)
                } else {
                    Arc::from(OTHER_SERVICES)
                };
                *self.index.entry(name.clone()).or_insert_with(|| {
                    self.services.push((name, ServiceCompleteness::default()));
                    (self.services.len() - 1) as u32
                })
            }
        };
        self.last = Some((resource.clone(), i));
        i
    }

    /// Takes account of spans (every span, before sampling), at monotonic time `now_ns`.
    pub fn record(&mut self, spans: &[Span], now_ns: u64) {
        for span in spans {
            let service = self.service(&span.resource);
            let figures = &mut self.services[service as usize].1;
            if span.kind == SpanKind::Client {
                figures.calls += 1;
                figures.calls_linked += u64::from(span.parent_span_id.is_some());
            }
            let kept = (span.span_id, span.parent_span_id, service);
            match self.open.get_mut(&span.trace_id) {
                Some(open) => {
                    if open.last_ns != now_ns {
                        open.last_ns = now_ns;
                        self.by_age.push_back((now_ns, span.trace_id));
                    }
                    if open.more.len() + 1 < self.config.max_spans_per_trace {
                        open.more.push(kept);
                    } else {
                        self.stats.spans_skipped += 1;
                    }
                }
                None => {
                    while self.open.len() >= self.config.max_traces {
                        self.judge_oldest();
                    }
                    self.open.insert(
                        span.trace_id,
                        Open {
                            last_ns: now_ns,
                            first: kept,
                            more: Vec::new(),
                        },
                    );
                    self.by_age.push_back((now_ns, span.trace_id));
                }
            }
            self.bound_by_age();
        }
    }

    /// A trace that keeps getting spans leaves a stale entry in `by_age` each time: when they
    /// outnumber the open traces three to one, only the current entries are kept, so the queue
    /// stays within four entries per open trace.
    fn bound_by_age(&mut self) {
        if self.by_age.len() > 4 * self.config.max_traces.max(1) {
            let open = &self.open;
            self.by_age
                .retain(|(at, id)| open.get(id).is_some_and(|o| o.last_ns == *at));
        }
    }

    /// Judges the traces idle since `idle_ns` before `now_ns`.
    pub fn tick(&mut self, now_ns: u64) {
        while let Some(&(at, id)) = self.by_age.front() {
            if now_ns.saturating_sub(at) < self.config.idle_ns {
                break;
            }
            self.by_age.pop_front();
            if self.open.get(&id).is_some_and(|o| o.last_ns == at) {
                self.judge(&id);
            }
        }
    }

    /// Judges every open trace (at shutdown).
    pub fn judge_all(&mut self) {
        let all: Vec<TraceId> = self.open.keys().copied().collect();
        for id in all {
            self.judge(&id);
        }
        self.by_age.clear();
    }

    /// Full: judges the trace whose latest span is the oldest.
    fn judge_oldest(&mut self) {
        while let Some((at, id)) = self.by_age.pop_front() {
            if self.open.get(&id).is_some_and(|o| o.last_ns == at) {
                self.stats.judged_early += 1;
                self.judge(&id);
                return;
            }
        }
        // Unreachable while every open trace has its entry; never loop on a broken invariant.
        if let Some(id) = self.open.keys().next().copied() {
            self.stats.judged_early += 1;
            self.judge(&id);
        }
    }

    fn judge(&mut self, id: &TraceId) {
        let Some(open) = self.open.remove(id) else {
            return;
        };
        // Almost every trace has a few spans: a scan is cheaper than a set for those.
        let ids: Option<FastSet<SpanId>> =
            (open.more.len() >= 16).then(|| open.spans().map(|s| s.0).collect());
        let known = |p: SpanId| match &ids {
            Some(ids) => ids.contains(&p),
            None => open.spans().any(|(span, _, _)| *span == p),
        };
        let mut roots = open
            .spans()
            .filter(|(_, parent, _)| parent.is_none_or(|p| !known(p)));
        let Some(&(_, _, service)) = roots.next() else {
            // A cycle cannot come from the linker; nothing to attribute it to.
            return;
        };
        let whole = roots.next().is_none();
        let figures = &mut self.services[service as usize].1;
        figures.traces += 1;
        figures.traces_whole += u64::from(whole);
    }

    /// The figures of every service seen, by name.
    pub fn services(&self) -> impl Iterator<Item = (&str, &ServiceCompleteness)> {
        let mut all: Vec<&(Arc<str>, ServiceCompleteness)> = self.services.iter().collect();
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        all.into_iter().map(|(k, v)| (k.as_ref(), v))
    }

    pub fn stats(&self) -> CompletenessStats {
        self.stats
    }

    /// Traces not judged yet.
    pub fn open(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::span::{KeyValue, Resource, Status};

    fn span(service: &str, kind: SpanKind, trace: u8, id: u8, parent: Option<u8>) -> Span {
        Span {
            trace_id: TraceId([trace; 16]),
            span_id: SpanId([id; 8]),
            parent_span_id: parent.map(|p| SpanId([p; 8])),
            trace_state: String::new(),
            parent_sampled: None,
            name: "x".into(),
            kind,
            start_unix_nanos: 0,
            end_unix_nanos: 1,
            attributes: Vec::new(),
            status: Status::Unset,
            resource: Arc::new(Resource {
                key: service.into(),
                attributes: vec![KeyValue::new("service.name", service.to_owned())],
            }),
            scope: "test",
            links: Vec::new(),
        }
    }

    #[test]
    fn counts_linked_calls_and_whole_traces_per_service() {
        use SpanKind::{Client, Server};
        let mut c = Completeness::new(CompletenessConfig::default());
        // Trace 1, whole: curl -> a (server) -> a calls b (linked) -> b server.
        // Trace 2, broken: curl -> a server, and a's call started trace 3 on its own.
        c.record(
            &[
                span("curl", Client, 1, 1, None),
                span("a", Server, 1, 2, Some(1)),
                span("a", Client, 1, 3, Some(2)),
                span("b", Server, 1, 4, Some(3)),
                span("curl", Client, 2, 5, None),
                span("a", Server, 2, 6, Some(5)),
                span("a", Client, 3, 7, None),
                span("b", Server, 3, 8, Some(7)),
            ],
            1_000,
        );
        // A trace whose parent span never came (a span of it was lost): two roots.
        c.record(
            &[
                span("a", Server, 4, 9, None),
                span("b", Server, 4, 10, Some(99)),
            ],
            2_000,
        );
        // Not idle yet: nothing judged.
        c.tick(1_000 + 5_000_000_000);
        assert_eq!(c.open(), 4);
        c.tick(2_000 + 10_000_000_000);
        assert_eq!(c.open(), 0);
        let got: Vec<(&str, ServiceCompleteness)> = c.services().map(|(k, v)| (k, *v)).collect();
        let figures = |calls, calls_linked, traces, traces_whole| ServiceCompleteness {
            calls,
            calls_linked,
            traces,
            traces_whole,
        };
        assert_eq!(
            got,
            [
                ("a", figures(2, 1, 2, 1)),
                ("b", figures(0, 0, 0, 0)),
                ("curl", figures(2, 0, 2, 2)),
            ]
        );
    }

    #[test]
    fn stays_within_its_bounds() {
        let config = CompletenessConfig {
            idle_ns: 10,
            max_traces: 10,
            max_spans_per_trace: 3,
            max_services: 2,
        };
        let mut c = Completeness::new(config);
        for t in 0..25u8 {
            c.record(&[span("a", SpanKind::Server, t, 1, None)], u64::from(t));
        }
        assert!(c.open() <= 10);
        assert!(c.stats().judged_early >= 15);
        let spans: Vec<Span> = (0..5)
            .map(|i| span("b", SpanKind::Server, 200, i + 1, Some(i)))
            .collect();
        c.record(&spans, 100);
        assert_eq!(c.stats().spans_skipped, 2);
        c.record(&[span("c", SpanKind::Client, 201, 1, None)], 100);
        // One trace getting spans at ever new times: its age entries stay bounded.
        for at in 101..1_000 {
            c.record(&[span("b", SpanKind::Server, 200, 9, Some(1))], at);
        }
        assert!(c.by_age.len() <= 4 * 10, "{}", c.by_age.len());
        c.judge_all();
        let names: Vec<&str> = c.services().map(|(k, _)| k).collect();
        assert_eq!(names, ["_other", "a", "b"]);
        assert_eq!(
            c.services().find(|(k, _)| *k == "_other").unwrap().1.calls,
            1
        );
        // All 25 single-span traces of "a" were judged whole, early or not.
        let a = c.services().find(|(k, _)| *k == "a").unwrap().1;
        assert_eq!((a.traces, a.traces_whole), (25, 25));
    }
}
