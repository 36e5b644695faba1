//! The span of one HTTP/1 exchange, per the OpenTelemetry HTTP semantic conventions.

use super::Exchange;
use crate::trace::{
    http::{HttpMessage, HttpSpanConfig, HttpSpanStats, build_http_span},
    span::{ConnMeta, Span},
};

/// Builds the span of one HTTP/1 exchange. `to_unix` converts kernel monotonic time to
/// wall-clock.
pub fn build_span(
    ex: &Exchange,
    conn: &ConnMeta,
    config: &HttpSpanConfig,
    stats: &HttpSpanStats,
    to_unix: &dyn Fn(u64) -> u64,
) -> Span {
    let req = &ex.request;
    let (status, end_ns) = match &ex.response {
        Some(resp) => (Some(resp.status), ex.response_end_ns.max(ex.request_end_ns)),
        None => (None, ex.request_end_ns),
    };
    let msg = HttpMessage {
        method: &req.method,
        target: &req.target,
        authority: None,
        headers: &req.headers,
        version: version_string(req.version_minor),
        status,
        no_response: "connection closed before a response",
        request_body_len: ex.request_body_len,
        request_has_body: req.header("content-length").is_some(),
        response_body_len: ex.response_body_len,
        partial: ex.partial,
        start_ns: ex.request_start_ns,
        end_ns,
    };
    build_http_span(&msg, conn, config, stats, to_unix)
}

fn version_string(minor: u8) -> &'static str {
    if minor == 0 { "1.0" } else { "1.1" }
}
