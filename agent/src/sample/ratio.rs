//! The trace-id ratio decision of OpenTelemetry's `TraceIdRatioBased` sampler, as its
//! probability-sampling specification defines it: the 56 least-significant bits of the trace id
//! are its randomness R (W3C Trace Context Level 2 asks for them to be random), a ratio p is a
//! rejection threshold T = (1 - p) * 2^56, and a trace is sampled when R >= T. Every agent and
//! SDK with the same ratio decides the same for the same trace, and a trace sampled at some
//! ratio is sampled at every higher one.

use crate::trace::span::TraceId;

/// 2^56: one more than the largest randomness value.
const MAX_THRESHOLD: u64 = 1 << 56;

/// A sampling ratio in [0, 1], as the rejection threshold it stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ratio {
    threshold: u64,
}

impl Ratio {
    /// Everything sampled.
    pub const ONE: Ratio = Ratio { threshold: 0 };
    /// Nothing sampled: no 56-bit value reaches the threshold.
    pub const ZERO: Ratio = Ratio {
        threshold: MAX_THRESHOLD,
    };

    /// The ratio `p`; None outside [0, 1] (NaN included).
    pub fn new(p: f64) -> Option<Self> {
        if !(0.0..=1.0).contains(&p) {
            return None;
        }
        // (1 - p) * 2^56 is exact enough in f64 for every ratio a user writes; rounding keeps
        // p = 1 at 0 (all) and p = 0 at 2^56 (none: R is at most 2^56 - 1).
        let t = ((1.0 - p) * MAX_THRESHOLD as f64).round() as u64;
        Some(Ratio {
            threshold: t.min(MAX_THRESHOLD),
        })
    }

    /// The 56 least-significant bits of the trace id.
    pub fn randomness(trace_id: TraceId) -> u64 {
        let b = trace_id.0;
        u64::from_be_bytes([0, b[9], b[10], b[11], b[12], b[13], b[14], b[15]])
    }

    /// Whether the trace is sampled at this ratio.
    pub fn samples(&self, trace_id: TraceId) -> bool {
        Self::randomness(trace_id) >= self.threshold
    }

    /// The rejection threshold (for tests and descriptions).
    pub fn threshold(&self) -> u64 {
        self.threshold
    }
}
