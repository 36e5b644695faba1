//! socktrace: socket-layer capture (eBPF) to OpenTelemetry spans.
//!
//! The folders follow the data, and every dependency points against its flow (a test keeps it
//! so: `tests/tests/layering.rs`):
//!
//! `capture` (kernel programs: load, attach, read the ring buffer) -> `conn` (connections,
//! protocol detection, turns) -> `protocol` (one folder per protocol behind one contract) ->
//! `trace` (spans, context, linking) -> `resource` (who made the span, which processes are
//! traced) -> `metrics` (RED histograms and the service graph from every span) -> `sample`
//! (which spans are exported: head samplers, priority sampling) -> `export` (OTLP spans and
//! metrics, Zipkin spans, console), and beside it `ui` (the local viewer: a bounded store of the
//! exported spans and the web page over it). `pipeline` runs the chain on one thread;
//! `telemetry` holds the agent's own counters and the health endpoint; `cli` is the command
//! line.

/// Hash map for the per-record hot paths (connections, links, metrics, traces): foldhash, seeded
/// per process, is several times cheaper than the standard SipHash for the small keys used here
/// while still not predictable from the traffic.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// Set counterpart of [`FastMap`].
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

pub mod capture;
pub mod cli;
pub mod conn;
pub mod export;
pub mod metrics;
pub mod pipeline;
pub mod protocol;
pub mod resource;
pub mod sample;
pub mod telemetry;
pub mod trace;
pub mod ui;
