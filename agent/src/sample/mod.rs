//! Sampling: which finished spans are exported. The pipeline asks only after the metrics have
//! measured every span, so RED metrics and the service graph stay exact whatever is dropped.
//!
//! Two families: the OpenTelemetry head samplers (`OTEL_TRACES_SAMPLER`), decided per span from
//! its trace id and the sampled flag its trace arrived with ([`Head`]), and socktrace's own
//! priority mode, decided per trace once its spans are in ([`priority`]).

pub mod priority;
pub mod ratio;

use clap::ValueEnum;

use self::{
    priority::{Priority, PriorityConfig},
    ratio::Ratio,
};
use crate::{telemetry::Snapshot, trace::span::Span};

/// The sampler names: the values of `OTEL_TRACES_SAMPLER` this agent knows, and `priority`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SamplerName {
    /// Every span.
    #[value(name = "always_on")]
    AlwaysOn,
    /// No span (the metrics still count them all).
    #[value(name = "always_off")]
    AlwaysOff,
    /// The ratio of traces picked by trace id, whatever the caller decided.
    #[value(name = "traceidratio")]
    TraceIdRatio,
    /// The caller's decision (sampled flag of an incoming `traceparent`), else every trace.
    #[value(name = "parentbased_always_on")]
    ParentBasedAlwaysOn,
    /// The caller's decision, else no trace.
    #[value(name = "parentbased_always_off")]
    ParentBasedAlwaysOff,
    /// The caller's decision, else the ratio of traces picked by trace id.
    #[value(name = "parentbased_traceidratio")]
    ParentBasedTraceIdRatio,
    /// Every trace with an error or a slow span, the ratio of the others (decided per trace).
    #[value(name = "priority")]
    Priority,
}

impl SamplerName {
    /// The name as written on the command line.
    pub fn name(self) -> &'static str {
        match self {
            SamplerName::AlwaysOn => "always_on",
            SamplerName::AlwaysOff => "always_off",
            SamplerName::TraceIdRatio => "traceidratio",
            SamplerName::ParentBasedAlwaysOn => "parentbased_always_on",
            SamplerName::ParentBasedAlwaysOff => "parentbased_always_off",
            SamplerName::ParentBasedTraceIdRatio => "parentbased_traceidratio",
            SamplerName::Priority => "priority",
        }
    }
}

/// What a head sampler does with a trace that began on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Root {
    AlwaysOn,
    AlwaysOff,
    Ratio(Ratio),
}

/// An OpenTelemetry head sampler: decided per span, the same for every span of a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub root: Root,
    /// Follow the sampled flag the trace arrived with, when it arrived with one.
    pub parent_based: bool,
}

impl Head {
    pub fn samples(&self, span: &Span) -> bool {
        if self.parent_based
            && let Some(sampled) = span.parent_sampled
        {
            return sampled;
        }
        match self.root {
            Root::AlwaysOn => true,
            Root::AlwaysOff => false,
            Root::Ratio(r) => r.samples(span.trace_id),
        }
    }
}

/// Which sampler runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SamplerConfig {
    Head(Head),
    Priority(PriorityConfig),
}

impl Default for SamplerConfig {
    /// OpenTelemetry's default: `parentbased_always_on`.
    fn default() -> Self {
        SamplerConfig::Head(Head {
            root: Root::AlwaysOn,
            parent_based: true,
        })
    }
}

/// The settings of the sampling flags.
#[derive(Clone, Copy, Debug)]
pub struct SamplerSettings {
    pub name: SamplerName,
    /// `--sample-ratio`; None: 1 for the trace-id ratio samplers, [`DEFAULT_PRIORITY_RATIO`]
    /// for priority.
    pub ratio: Option<f64>,
    pub slow_ns: u64,
    pub wait_ns: u64,
    pub max_spans: usize,
}

/// The share of ordinary traces priority sampling keeps when no ratio is given.
pub const DEFAULT_PRIORITY_RATIO: f64 = 0.1;

impl SamplerConfig {
    /// The sampler the flags describe; an error names a ratio outside [0, 1].
    pub fn from_settings(s: &SamplerSettings) -> Result<Self, String> {
        let ratio = |default: f64| {
            let p = s.ratio.unwrap_or(default);
            Ratio::new(p).ok_or_else(|| format!("sample ratio {p} is not within [0, 1]"))
        };
        let head = |root, parent_based| Ok(SamplerConfig::Head(Head { root, parent_based }));
        match s.name {
            SamplerName::AlwaysOn => head(Root::AlwaysOn, false),
            SamplerName::AlwaysOff => head(Root::AlwaysOff, false),
            SamplerName::TraceIdRatio => head(Root::Ratio(ratio(1.0)?), false),
            SamplerName::ParentBasedAlwaysOn => head(Root::AlwaysOn, true),
            SamplerName::ParentBasedAlwaysOff => head(Root::AlwaysOff, true),
            SamplerName::ParentBasedTraceIdRatio => head(Root::Ratio(ratio(1.0)?), true),
            SamplerName::Priority => Ok(SamplerConfig::Priority(PriorityConfig {
                ratio: ratio(DEFAULT_PRIORITY_RATIO)?,
                slow_ns: s.slow_ns,
                wait_ns: s.wait_ns,
                max_spans: s.max_spans.max(1),
            })),
        }
    }

    /// The rule the kernel applies to the sampled flag of the `traceparent` headers it
    /// injects, so the next hop hears what this sampler decides for the trace: the trace-id
    /// ratio threshold and whether an incoming header's flag wins. Priority sampling decides
    /// after the trace ends, so its headers always say "sampled": the next hop records
    /// everything and this node's decision keeps or drops the whole trace later.
    pub fn injected_flags(&self) -> (u64, bool) {
        match self {
            SamplerConfig::Head(h) => {
                let threshold = match h.root {
                    Root::AlwaysOn => Ratio::ONE.threshold(),
                    Root::AlwaysOff => Ratio::ZERO.threshold(),
                    Root::Ratio(r) => r.threshold(),
                };
                (threshold, h.parent_based)
            }
            SamplerConfig::Priority(_) => (Ratio::ONE.threshold(), false),
        }
    }
}

crate::counters! {
    /// Counters of the sampler.
    pub struct SampleStats {
        /// Spans the sampler passed on to be exported.
        kept,
        /// Spans the sampler dropped (the metrics counted them all the same).
        dropped,
        /// Priority sampling: traces kept for an error span or a span slower than the threshold.
        traces_kept_priority,
        /// Priority sampling: traces without either, kept by the sample ratio.
        traces_kept_ratio,
        /// Priority sampling: traces dropped.
        traces_dropped,
        /// Priority sampling: traces decided before their decision window ended, because the
        /// span buffer was full.
        decided_early,
        /// Priority sampling: spans that arrived after their trace was decided (they follow the
        /// decision; an error or slow one keeps the rest of its trace).
        late_spans,
    }
}

enum Mode {
    Head(Head),
    Priority(Priority),
}

/// The sampler of the pipeline, with its counters.
pub struct Sampler {
    mode: Mode,
    stats: SampleStats,
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new(SamplerConfig::default())
    }
}

impl Sampler {
    pub fn new(config: SamplerConfig) -> Self {
        let mode = match config {
            SamplerConfig::Head(h) => Mode::Head(h),
            SamplerConfig::Priority(p) => Mode::Priority(Priority::new(p)),
        };
        Self {
            mode,
            stats: SampleStats::default(),
        }
    }

    /// Finished (and measured) spans at `now_ns`, kernel monotonic time: those to export now
    /// are appended to `out`; priority sampling keeps the others until their trace is decided.
    pub fn offer(&mut self, spans: Vec<Span>, now_ns: u64, out: &mut Vec<Span>) {
        match &mut self.mode {
            Mode::Head(h) => {
                let (offered, before) = (spans.len(), out.len());
                out.extend(spans.into_iter().filter(|s| h.samples(s)));
                let kept = out.len() - before;
                self.stats.kept += kept as u64;
                self.stats.dropped += (offered - kept) as u64;
            }
            Mode::Priority(p) => {
                for span in spans {
                    p.offer(span, now_ns, out, &mut self.stats);
                }
            }
        }
    }

    /// Decisions that are due at `now_ns` (priority sampling); cheap when none is.
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<Span>) {
        if let Mode::Priority(p) = &mut self.mode {
            p.tick(now_ns, out, &mut self.stats);
        }
    }

    /// Decides every trace still waiting (at shutdown).
    pub fn decide_all(&mut self, now_ns: u64, out: &mut Vec<Span>) {
        if let Mode::Priority(p) = &mut self.mode {
            p.decide_all(now_ns, out, &mut self.stats);
        }
    }

    pub fn stats(&self) -> SampleStats {
        self.stats
    }

    /// The counters and, for priority sampling, the buffer's levels.
    pub fn collect(&self, s: &mut Snapshot) {
        self.stats.collect("sampling", s);
        let (spans, traces) = match &self.mode {
            Mode::Priority(p) => (p.buffered_spans(), p.buffered_traces()),
            Mode::Head(_) => (0, 0),
        };
        s.gauge(
            "sampling",
            "buffered_spans",
            "Priority sampling: spans waiting for their trace's decision now.",
            spans as u64,
        );
        s.gauge(
            "sampling",
            "buffered_traces",
            "Priority sampling: traces waiting for their decision now.",
            traces as u64,
        );
    }
}

#[cfg(test)]
mod tests;
