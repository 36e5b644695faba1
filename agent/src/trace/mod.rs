//! Spans, trace context and linking.
pub mod context;
pub mod http;
pub mod span;
