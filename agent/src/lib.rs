//! socktrace: socket-layer capture (eBPF) to OpenTelemetry spans.
//!
//! Modules follow the data: `probes` (load, attach, read the ring buffer) -> `conn` (connections
//! and stream reassembly) -> `protocol` (pure parsers) -> `trace` (spans and context) ->
//! `resource` (who made the span) -> `export` (OTLP and console). `pipeline` runs the chain on
//! one thread; `select` decides which processes are traced; `cli` is the command line; `caps`
//! checks capabilities at start; `health` serves the Kubernetes probes; `inject` attaches the
//! kernel's `traceparent` injection into outgoing HTTP/1 requests.
pub mod caps;
pub mod cli;
pub mod conn;
pub mod export;
pub mod health;
pub mod inject;
pub mod k8s;
pub mod pipeline;
pub mod probes;
pub mod protocol;
pub mod resource;
pub mod select;
pub mod trace;
