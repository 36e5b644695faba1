//! Explicit-bucket histograms, as OTLP and Prometheus define them.

/// Advised boundaries of the stable HTTP duration histograms (seconds).
pub const HTTP_SECONDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// Advised boundaries of `rpc.server.call.duration` and `rpc.client.call.duration` (seconds):
/// the same as the HTTP ones.
pub const RPC_SECONDS: &[f64] = HTTP_SECONDS;
/// Advised boundaries of `db.client.operation.duration` (seconds).
pub const DB_SECONDS: &[f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];
/// The SDK's default boundaries, used for the millisecond RPC histograms (whose convention
/// advises none).
pub const DEFAULT_MILLIS: &[f64] = &[
    0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, 7500.0,
    10000.0,
];
/// The service-graph connector's default latency buckets (seconds).
pub const GRAPH_SECONDS: &[f64] = &[
    0.002, 0.004, 0.006, 0.008, 0.01, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.4, 2.0, 5.0, 10.0, 15.0,
];

/// Cumulative explicit-bucket histogram. `counts[i]` holds the values in
/// `(bounds[i-1], bounds[i]]`; the last count is everything above the last bound.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    pub bounds: &'static [f64],
    pub counts: Vec<u64>,
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    pub fn record(&mut self, v: f64) {
        // The first bound >= v: upper bounds are inclusive.
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i] += 1;
        self.count += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    /// Adds `other` (same bounds) into this one.
    pub fn merge(&mut self, other: &Histogram) {
        debug_assert_eq!(self.bounds, other.bounds);
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_bounds_are_inclusive_and_overflow_goes_last() {
        let mut h = Histogram::new(HTTP_SECONDS);
        for v in [0.0, 0.005, 0.0050001, 0.1, 10.0, 10.5, 99.0] {
            h.record(v);
        }
        assert_eq!(h.counts.len(), 15);
        assert_eq!(h.counts[0], 2, "0 and 0.005 in (-inf, 0.005]");
        assert_eq!(h.counts[1], 1, "0.0050001 in (0.005, 0.01]");
        assert_eq!(h.counts[5], 1, "0.1 in (0.075, 0.1]");
        assert_eq!(h.counts[13], 1, "10 in (7.5, 10]");
        assert_eq!(h.counts[14], 2, "above 10");
        assert_eq!(h.count, 7);
        assert_eq!(h.counts.iter().sum::<u64>(), 7);
        assert_eq!((h.min, h.max), (0.0, 99.0));
        assert!((h.sum - 119.6100001).abs() < 1e-9, "{}", h.sum);
        let mut m = Histogram::new(HTTP_SECONDS);
        m.record(0.2);
        m.merge(&h);
        assert_eq!(m.count, 8);
        assert_eq!(m.counts[6], 1);
        assert_eq!(m.max, 99.0);
    }
}
