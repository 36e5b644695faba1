//! Priority sampling: keep every trace of this node that has an error span or a span slower than
//! a threshold, and a ratio of the others.
//!
//! A trace's spans finish one by one, so each one waits in a buffer until the trace has been
//! quiet for the decision window (`wait_ns` after its latest span). Then the whole trace is kept
//! or dropped at once. The buffer is bounded in spans: when a new span would overflow it, the
//! trace whose window ends first is decided early (counted). Decided traces are remembered for a
//! while, bounded too, so that a span arriving after its trace's decision follows it. Every
//! operation costs O(log n) in the buffered traces, plus the spans it releases.

use std::collections::{BTreeMap, VecDeque};

use super::{SampleStats, ratio::Ratio};
use crate::{
    FastMap,
    trace::span::{Span, Status, TraceId},
};

/// How many decided traces are remembered for their late spans.
const MAX_DECIDED: usize = 65_536;
/// How long a decision is remembered: longer than spans are held for their parents (10 s).
const DECIDED_TTL_NS: u64 = 60_000_000_000;

/// What priority sampling keeps, and its bounds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PriorityConfig {
    /// The share of traces without an error or a slow span that is kept.
    pub ratio: Ratio,
    /// A span lasting longer than this keeps its trace.
    pub slow_ns: u64,
    /// A trace is decided when no span of it arrived for this long.
    pub wait_ns: u64,
    /// Most spans waiting for their trace's decision.
    pub max_spans: usize,
}

#[derive(Debug)]
struct Pending {
    spans: Vec<Span>,
    /// An error or a slow span was seen.
    priority: bool,
    /// Its key in `due`.
    due: (u64, u64),
}

/// The buffer of traces waiting for their decision.
#[derive(Debug)]
pub struct Priority {
    config: PriorityConfig,
    traces: FastMap<TraceId, Pending>,
    /// (decision time, arrival sequence) -> trace: the next trace to decide comes first.
    due: BTreeMap<(u64, u64), TraceId>,
    buffered: usize,
    next_seq: u64,
    /// Decided traces: kept or not.
    decided: FastMap<TraceId, bool>,
    /// Decided traces in the order of their decision, with its time (for the bounds).
    decided_order: VecDeque<(TraceId, u64)>,
}

impl Priority {
    pub fn new(config: PriorityConfig) -> Self {
        Self {
            config,
            traces: FastMap::default(),
            due: BTreeMap::new(),
            buffered: 0,
            next_seq: 0,
            decided: FastMap::default(),
            decided_order: VecDeque::new(),
        }
    }

    /// Spans waiting for a decision now.
    pub fn buffered_spans(&self) -> usize {
        self.buffered
    }

    /// Traces waiting for a decision now.
    pub fn buffered_traces(&self) -> usize {
        self.traces.len()
    }

    /// An error span, or one slower than the threshold.
    fn is_priority(&self, span: &Span) -> bool {
        matches!(span.status, Status::Error { .. })
            || span.end_unix_nanos.saturating_sub(span.start_unix_nanos) > self.config.slow_ns
    }

    /// A finished span at `now_ns` (monotonic): buffered, or, when its trace is already
    /// decided, exported (into `out`) or dropped at once.
    pub fn offer(&mut self, span: Span, now_ns: u64, out: &mut Vec<Span>, stats: &mut SampleStats) {
        let priority = self.is_priority(&span);
        if let Some(kept) = self.decided.get_mut(&span.trace_id) {
            stats.late_spans += 1;
            // An error after the decision still matters: it and the rest of the trace are kept.
            *kept |= priority;
            if *kept {
                stats.kept += 1;
                out.push(span);
            } else {
                stats.dropped += 1;
            }
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let due = (now_ns.saturating_add(self.config.wait_ns), seq);
        let trace_id = span.trace_id;
        match self.traces.get_mut(&trace_id) {
            Some(p) => {
                self.due.remove(&p.due);
                p.due = due;
                p.priority |= priority;
                p.spans.push(span);
            }
            None => {
                self.traces.insert(
                    trace_id,
                    Pending {
                        spans: vec![span],
                        priority,
                        due,
                    },
                );
            }
        }
        self.due.insert(due, trace_id);
        self.buffered += 1;
        while self.buffered > self.config.max_spans {
            let Some((_, first)) = self.due.first_key_value() else {
                break;
            };
            let first = *first;
            stats.decided_early += 1;
            self.decide(first, now_ns, out, stats);
        }
    }

    /// Decides every trace whose window has ended by `now_ns`, and forgets old decisions.
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<Span>, stats: &mut SampleStats) {
        while let Some((&(at, _), &trace_id)) = self.due.first_key_value()
            && at <= now_ns
        {
            self.decide(trace_id, now_ns, out, stats);
        }
        while let Some(&(trace_id, at)) = self.decided_order.front()
            && now_ns.saturating_sub(at) > DECIDED_TTL_NS
        {
            self.decided_order.pop_front();
            self.decided.remove(&trace_id);
        }
    }

    /// Decides every buffered trace now (at shutdown).
    pub fn decide_all(&mut self, now_ns: u64, out: &mut Vec<Span>, stats: &mut SampleStats) {
        while let Some((_, &trace_id)) = self.due.first_key_value() {
            self.decide(trace_id, now_ns, out, stats);
        }
    }

    fn decide(
        &mut self,
        trace_id: TraceId,
        now_ns: u64,
        out: &mut Vec<Span>,
        stats: &mut SampleStats,
    ) {
        let Some(p) = self.traces.remove(&trace_id) else {
            return;
        };
        self.due.remove(&p.due);
        self.buffered -= p.spans.len();
        let n = p.spans.len() as u64;
        let keep = if p.priority {
            stats.traces_kept_priority += 1;
            true
        } else if self.config.ratio.samples(trace_id) {
            stats.traces_kept_ratio += 1;
            true
        } else {
            stats.traces_dropped += 1;
            false
        };
        if keep {
            stats.kept += n;
            out.extend(p.spans);
        } else {
            stats.dropped += n;
        }
        if self.decided_order.len() >= MAX_DECIDED
            && let Some((old, _)) = self.decided_order.pop_front()
        {
            self.decided.remove(&old);
        }
        self.decided.insert(trace_id, keep);
        self.decided_order.push_back((trace_id, now_ns));
    }
}
