use std::sync::Arc;

use super::*;
use crate::trace::span::{Resource, SpanId, Status, TraceId};

const MS: u64 = 1_000_000;

fn resource() -> Arc<Resource> {
    Arc::new(Resource {
        key: String::new(),
        attributes: Vec::new(),
    })
}

/// A trace id whose 56 low bits are `r` and whose high bytes are `high`.
fn trace_with(high: u8, r: u64) -> TraceId {
    let mut id = [high; 16];
    id[8..].copy_from_slice(&r.to_be_bytes());
    id[8] = high;
    TraceId(id)
}

/// A span of `trace` lasting `ms` milliseconds, numbered `n` (its span id).
fn span(trace: TraceId, n: u8, ms: u64) -> Span {
    let mut s = Span::for_test(n, &resource(), "socktrace.test");
    s.trace_id = trace;
    s.span_id = SpanId([n; 8]);
    s.start_unix_nanos = 1_000 * MS;
    s.end_unix_nanos = s.start_unix_nanos + ms * MS;
    s
}

fn error(mut s: Span) -> Span {
    s.status = Status::Error {
        message: "500".into(),
    };
    s
}

fn ids(spans: &[Span]) -> Vec<u8> {
    spans.iter().map(|s| s.span_id.0[0]).collect()
}

#[test]
fn ratio_thresholds_follow_the_specification() {
    assert_eq!(Ratio::new(1.0).unwrap().threshold(), 0);
    assert_eq!(Ratio::new(0.0).unwrap().threshold(), 1 << 56);
    assert_eq!(Ratio::new(0.5).unwrap().threshold(), 1 << 55);
    assert_eq!(Ratio::new(0.75).unwrap().threshold(), 1 << 54);
    for bad in [-0.01, 1.01, f64::NAN, f64::INFINITY] {
        assert_eq!(Ratio::new(bad), None, "{bad}");
    }
    // The W3C example id: R = 0xce929d0e0e4736, 0.80693... of 2^56, so the trace is sampled
    // from a ratio of 0.19307 up.
    let id = TraceId([
        0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47,
        0x36,
    ]);
    assert_eq!(Ratio::randomness(id), 0xce_929d_0e0e_4736);
    assert!(Ratio::new(0.194).unwrap().samples(id));
    assert!(!Ratio::new(0.193).unwrap().samples(id));
    // Only the 56 low bits count; the boundary is R >= T.
    let half = Ratio::new(0.5).unwrap();
    assert!(half.samples(trace_with(0x00, 1 << 55)));
    assert!(half.samples(trace_with(0xff, 1 << 55)));
    assert!(!half.samples(trace_with(0xff, (1 << 55) - 1)));
    assert!(
        !Ratio::new(0.0)
            .unwrap()
            .samples(trace_with(0xff, (1 << 56) - 1))
    );
    assert!(Ratio::ONE.samples(trace_with(0, 0)));
}

#[test]
fn ratio_decisions_are_deterministic_nested_and_near_the_ratio() {
    let (tenth, quarter) = (Ratio::new(0.1).unwrap(), Ratio::new(0.25).unwrap());
    let again = Ratio::new(0.1).unwrap();
    let n = 100_000;
    let mut sampled = 0;
    for _ in 0..n {
        let id = TraceId::random();
        assert_eq!(tenth.samples(id), again.samples(id));
        if tenth.samples(id) {
            // Sampled at a ratio: sampled at every higher one.
            assert!(quarter.samples(id), "{id}");
        }
        sampled += usize::from(quarter.samples(id));
    }
    // Binomial(100000, 0.25): sd 137; 5 sd either side.
    assert!((24_315..=25_685).contains(&sampled), "{sampled}");
}

#[test]
fn head_samplers_follow_the_caller_only_when_parent_based() {
    let settings = |name, ratio| SamplerSettings {
        name,
        ratio,
        slow_ns: 0,
        wait_ns: 0,
        max_spans: 1,
    };
    let head = |name, ratio| match SamplerConfig::from_settings(&settings(name, ratio)).unwrap() {
        SamplerConfig::Head(h) => h,
        SamplerConfig::Priority(_) => panic!("{name:?} is a head sampler"),
    };
    let low = trace_with(1, 10);
    let high = trace_with(1, (1 << 56) - 10);
    let with = |trace, parent| {
        let mut s = span(trace, 1, 1);
        s.parent_sampled = parent;
        s
    };
    use SamplerName::*;
    let cases = [
        // (sampler, ratio, caller's flag, trace) -> sampled
        (AlwaysOn, None, Some(false), low, true),
        (AlwaysOff, None, Some(true), high, false),
        (TraceIdRatio, Some(0.5), Some(false), high, true),
        (TraceIdRatio, Some(0.5), Some(true), low, false),
        (TraceIdRatio, None, None, low, true),
        (ParentBasedAlwaysOn, None, Some(false), high, false),
        (ParentBasedAlwaysOn, None, Some(true), low, true),
        (ParentBasedAlwaysOn, None, None, low, true),
        (ParentBasedAlwaysOff, None, Some(true), low, true),
        (ParentBasedAlwaysOff, None, Some(false), high, false),
        (ParentBasedAlwaysOff, None, None, high, false),
        (ParentBasedTraceIdRatio, Some(0.5), Some(true), low, true),
        (ParentBasedTraceIdRatio, Some(0.5), Some(false), high, false),
        (ParentBasedTraceIdRatio, Some(0.5), None, high, true),
        (ParentBasedTraceIdRatio, Some(0.5), None, low, false),
    ];
    for (name, ratio, parent, trace, want) in cases {
        assert_eq!(
            head(name, ratio).samples(&with(trace, parent)),
            want,
            "{name:?} {ratio:?} {parent:?} {trace}"
        );
    }
    assert_eq!(SamplerConfig::default(), {
        SamplerConfig::from_settings(&settings(ParentBasedAlwaysOn, None)).unwrap()
    });
    let err = SamplerConfig::from_settings(&settings(TraceIdRatio, Some(1.5))).unwrap_err();
    assert_eq!(err, "sample ratio 1.5 is not within [0, 1]");
    // The ratio of the priority mode defaults to 0.1.
    let SamplerConfig::Priority(p) =
        SamplerConfig::from_settings(&settings(SamplerName::Priority, None)).unwrap()
    else {
        panic!("priority");
    };
    assert_eq!(p.ratio, Ratio::new(0.1).unwrap());
}

#[test]
fn head_sampling_counts_what_it_keeps_and_drops() {
    let mut s = Sampler::new(SamplerConfig::Head(Head {
        root: Root::Ratio(Ratio::new(0.5).unwrap()),
        parent_based: false,
    }));
    let spans = vec![
        span(trace_with(1, 5), 1, 1),
        span(trace_with(2, (1 << 56) - 1), 2, 1),
        span(trace_with(3, 1 << 55), 3, 1),
    ];
    let mut out = Vec::new();
    s.offer(spans, 0, &mut out);
    assert_eq!(ids(&out), [2, 3]);
    assert_eq!((s.stats().kept, s.stats().dropped), (2, 1));
}

fn priority(ratio: f64, max_spans: usize) -> Sampler {
    Sampler::new(SamplerConfig::Priority(PriorityConfig {
        ratio: Ratio::new(ratio).unwrap(),
        slow_ns: 500 * MS,
        wait_ns: 2_000 * MS,
        max_spans,
    }))
}

#[test]
fn priority_keeps_error_and_slow_traces_whole_after_the_window() {
    let mut s = priority(0.0, 100);
    let (err, slow, exact, plain) = (
        trace_with(1, 1),
        trace_with(2, 2),
        trace_with(3, 3),
        trace_with(4, 4),
    );
    let mut out = Vec::new();
    // Spans of four traces arrive over time; the error comes last in its trace.
    s.offer(vec![span(err, 1, 1), span(slow, 2, 1)], 0, &mut out);
    s.offer(
        vec![span(exact, 3, 500), span(plain, 4, 3)],
        100 * MS,
        &mut out,
    );
    s.offer(
        vec![error(span(err, 5, 1)), span(slow, 6, 501)],
        1_000 * MS,
        &mut out,
    );
    assert!(out.is_empty());
    let mut c = Snapshot::default();
    s.collect(&mut c);
    assert_eq!(c.get("sampling", "buffered_spans"), Some(6));
    assert_eq!(c.get("sampling", "buffered_traces"), Some(4));
    // `exact` and `plain` are due 2 s after their last span, the others 2 s after 1 s.
    s.tick(2_100 * MS - 1, &mut out);
    assert!(out.is_empty());
    s.tick(2_100 * MS, &mut out);
    assert!(
        out.is_empty(),
        "500 ms is not slower than 500 ms, and ratio 0 keeps nothing"
    );
    s.tick(3_000 * MS, &mut out);
    let mut kept = ids(&out);
    kept.sort_unstable();
    assert_eq!(kept, [1, 2, 5, 6]);
    let st = s.stats();
    assert_eq!((st.kept, st.dropped), (4, 2));
    assert_eq!(
        (
            st.traces_kept_priority,
            st.traces_kept_ratio,
            st.traces_dropped
        ),
        (2, 0, 2)
    );
    assert_eq!((st.decided_early, st.late_spans), (0, 0));
    let mut c = Snapshot::default();
    s.collect(&mut c);
    assert_eq!(c.get("sampling", "buffered_spans"), Some(0));
    assert_eq!(c.get("sampling", "kept"), Some(4));
}

#[test]
fn priority_keeps_the_ratio_of_ordinary_traces_by_trace_id() {
    let mut s = priority(0.5, 100);
    let mut out = Vec::new();
    let kept_id = trace_with(9, 1 << 55);
    let dropped_id = trace_with(9, (1 << 55) - 1);
    s.offer(
        vec![
            span(kept_id, 1, 1),
            span(dropped_id, 2, 1),
            span(kept_id, 3, 1),
        ],
        0,
        &mut out,
    );
    s.tick(2_000 * MS, &mut out);
    assert_eq!(ids(&out), [1, 3]);
    let st = s.stats();
    assert_eq!((st.traces_kept_ratio, st.traces_dropped), (1, 1));
}

#[test]
fn a_full_buffer_decides_the_next_due_trace_early() {
    let mut s = priority(0.0, 3);
    let mut out = Vec::new();
    let (a, b, c) = (trace_with(1, 1), trace_with(2, 2), trace_with(3, 3));
    s.offer(vec![error(span(a, 1, 1))], 0, &mut out);
    s.offer(vec![span(b, 2, 1)], MS, &mut out);
    // `a` gets a second span later: `b` is now the trace due first.
    s.offer(vec![span(a, 3, 1)], 2 * MS, &mut out);
    assert!(out.is_empty());
    s.offer(vec![span(c, 4, 1)], 3 * MS, &mut out);
    // b (ordinary, ratio 0) went early and was dropped; a and c still wait.
    assert!(out.is_empty());
    assert_eq!(s.stats().decided_early, 1);
    assert_eq!(s.stats().traces_dropped, 1);
    s.offer(vec![span(c, 5, 1)], 4 * MS, &mut out);
    // a is due first now: kept whole, early.
    assert_eq!(ids(&out), [1, 3]);
    assert_eq!(s.stats().decided_early, 2);
    // Never more than the bound waits.
    let mut snap = Snapshot::default();
    s.collect(&mut snap);
    assert_eq!(snap.get("sampling", "buffered_spans"), Some(2));
    assert_eq!(snap.get("sampling", "buffered_traces"), Some(1));
    // One trace larger than the buffer: decided early as often as it overflows, every span
    // accounted for.
    let big = trace_with(7, 7);
    for n in 10..20u8 {
        s.offer(vec![span(big, n, 1)], 10 * MS, &mut out);
    }
    s.decide_all(20 * MS, &mut out);
    let st = s.stats();
    assert_eq!(st.kept + st.dropped, 15);
    assert_eq!(snap_value(&s, "buffered_spans"), 0);
}

fn snap_value(s: &Sampler, name: &str) -> u64 {
    let mut snap = Snapshot::default();
    s.collect(&mut snap);
    snap.get("sampling", name).unwrap()
}

#[test]
fn late_spans_follow_their_trace_and_an_error_keeps_the_rest() {
    let mut s = priority(0.0, 100);
    let mut out = Vec::new();
    let (kept, dropped) = (trace_with(1, 1), trace_with(2, 2));
    s.offer(
        vec![error(span(kept, 1, 1)), span(dropped, 2, 1)],
        0,
        &mut out,
    );
    s.tick(2_000 * MS, &mut out);
    assert_eq!(ids(&out), [1]);
    out.clear();
    // After the decision: exported or dropped at once, not buffered.
    s.offer(
        vec![span(kept, 3, 1), span(dropped, 4, 1)],
        2_500 * MS,
        &mut out,
    );
    assert_eq!(ids(&out), [3]);
    assert_eq!(snap_value(&s, "buffered_spans"), 0);
    s.offer(
        vec![error(span(dropped, 5, 1)), span(dropped, 6, 1)],
        2_600 * MS,
        &mut out,
    );
    assert_eq!(ids(&out), [3, 5, 6]);
    let st = s.stats();
    assert_eq!(st.late_spans, 4);
    assert_eq!((st.kept, st.dropped), (4, 2));
    // Decisions are forgotten after a minute: the trace starts over.
    s.tick(70_000 * MS, &mut out);
    s.offer(vec![span(dropped, 7, 1)], 70_000 * MS, &mut out);
    assert_eq!(snap_value(&s, "buffered_spans"), 1);
    s.decide_all(70_000 * MS, &mut out);
    assert_eq!(ids(&out), [3, 5, 6]);
    assert_eq!(s.stats().dropped, 3);
}

/// The kernel's rule for injected flags, applied the way `inject.rs` applies it (threshold on
/// the 56 low bits; an incoming header's flag first when parent-based), decides exactly as the
/// user-space head sampler does for the same trace: the next hop hears this node's decision.
#[test]
fn injected_flags_agree_with_the_head_sampler() {
    let kernel = |rule: (u64, bool), trace: TraceId, incoming: Option<bool>| match incoming {
        Some(flag) if rule.1 => flag,
        _ => Ratio::randomness(trace) >= rule.0,
    };
    let settings = |name, ratio| SamplerSettings {
        name,
        ratio,
        slow_ns: 1_000 * MS,
        wait_ns: 5_000 * MS,
        max_spans: 16,
    };
    let mut seen = [0usize; 2];
    for name in [
        SamplerName::AlwaysOn,
        SamplerName::AlwaysOff,
        SamplerName::TraceIdRatio,
        SamplerName::ParentBasedAlwaysOn,
        SamplerName::ParentBasedAlwaysOff,
        SamplerName::ParentBasedTraceIdRatio,
    ] {
        let config = SamplerConfig::from_settings(&settings(name, Some(0.25))).expect("valid");
        let SamplerConfig::Head(head) = config else {
            panic!("{name:?} is a head sampler")
        };
        for r in [
            0,
            1,
            (1 << 56) / 4 * 3 - 1,
            (1 << 56) / 4 * 3,
            (1 << 56) - 1,
        ] {
            for incoming in [None, Some(false), Some(true)] {
                let trace = trace_with(0x5a, r);
                let mut s = span(trace, 1, 1);
                s.parent_sampled = incoming;
                let user = head.samples(&s);
                assert_eq!(
                    kernel(config.injected_flags(), trace, incoming),
                    user,
                    "{name:?}, R = {r:#x}, incoming {incoming:?}"
                );
                seen[usize::from(user)] += 1;
            }
        }
    }
    assert!(
        seen[0] > 0 && seen[1] > 0,
        "both decisions exercised: {seen:?}"
    );
    // Priority decides after the trace: every header says sampled.
    let priority =
        SamplerConfig::from_settings(&settings(SamplerName::Priority, Some(0.1))).expect("valid");
    assert_eq!(priority.injected_flags(), (0, false));
}
