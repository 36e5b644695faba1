//! Spans, trace context and linking.
pub mod context;
pub mod db;
pub mod http;
pub mod http2;
pub mod link;
pub mod span;
