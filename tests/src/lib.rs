//! Support code for socktrace's integration tests.
//!
//! - [`harness`]: running the agent binary and peer programs, killed on drop.
//! - [`otlp_receiver`]: an in-process OTLP trace receiver (gRPC or HTTP/protobuf) that records
//!   what the agent exports and can be told to fail.
//! - [`zipkin_receiver`]: a Zipkin-compatible receiver (Python) that checks every body against
//!   the Zipkin v2 span schema.
//! - [`load`]: nginx and wrk for the benchmark and the soak run, and process readings.
//! - [`paced`]: a load generator at a fixed request rate over many keep-alive connections.
//! - [`pg`], [`mysql`], [`redis`]: real database servers started per test.
pub mod harness;
pub mod load;
pub mod mysql;
pub mod otlp_receiver;
pub mod paced;
pub mod pg;
pub mod redis;
pub mod zipkin_receiver;
