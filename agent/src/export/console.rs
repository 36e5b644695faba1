//! Console exporter: one human-readable line per span on stdout.
//!
//! ```text
//! 2025-03-01T12:00:00.250Z checkout SERVER "GET /orders/{id}" OK 12.345ms trace=4bf9… span=00f0… parent=53ce… method=GET url=/orders/7 status_code=200 server=shop:8080 client=10.0.0.7
//! ```
//!
//! A span with links (candidate parents of an event loop's call) lists them after its ids as
//! `links=<trace>/<span>,...`.
//!
//! Everything that comes from captured traffic is escaped, so a span cannot inject terminal
//! control sequences.

use std::{
    fmt::Write as _,
    io::{BufWriter, Write as _},
    sync::Arc,
};

use super::{
    pipeline::{Counters, Shutdown, Sink},
    text::sanitize,
};
use crate::trace::span::{Span, SpanKind, Status, Value};

/// Formats one span as a single line (no trailing newline).
pub fn format_span(span: &Span) -> String {
    let mut out = String::with_capacity(256);
    let duration_ns = span.end_unix_nanos.saturating_sub(span.start_unix_nanos);
    let kind = match span.kind {
        SpanKind::Server => "SERVER",
        SpanKind::Client => "CLIENT",
    };
    // `write!` to a String cannot fail.
    let _ = write!(
        out,
        "{} {} {kind} {:?} ",
        format_rfc3339_millis(span.start_unix_nanos),
        sanitize(span.resource.service_name()),
        span.name,
    );
    match &span.status {
        Status::Unset => out.push_str("UNSET"),
        Status::Ok => out.push_str("OK"),
        Status::Error { message } if message.is_empty() => out.push_str("ERROR"),
        Status::Error { message } => {
            let _ = write!(out, "ERROR({})", sanitize(message));
        }
    }
    let _ = write!(
        out,
        " {}.{:03}ms trace={} span={}",
        duration_ns / 1_000_000,
        (duration_ns % 1_000_000) / 1_000,
        span.trace_id,
        span.span_id,
    );
    if let Some(parent) = span.parent_span_id {
        let _ = write!(out, " parent={parent}");
    }
    // Candidate parents of a call whose parent cannot be told (an event loop's call).
    for (i, link) in span.links.iter().enumerate() {
        let sep = if i == 0 { " links=" } else { "," };
        let _ = write!(out, "{sep}{}/{}", link.trace_id, link.span_id);
    }
    if let Some(v) = span.attr("http.request.method") {
        let _ = write!(out, " method={}", sanitize_value(v));
    }
    if let Some(v) = span.attr("url.path").or_else(|| span.attr("url.full")) {
        let _ = write!(out, " url={}", sanitize_value(v));
    }
    if let Some(v) = span.attr("http.response.status_code") {
        let _ = write!(out, " status_code={}", sanitize_value(v));
    }
    if let Some(addr) = span.attr("server.address") {
        let _ = write!(out, " server={}", sanitize_value(addr));
        if let Some(port) = span.attr("server.port") {
            let _ = write!(out, ":{}", sanitize_value(port));
        }
    }
    if let Some(v) = span.attr("client.address") {
        let _ = write!(out, " client={}", sanitize_value(v));
    }
    out
}

fn sanitize_value(v: &Value) -> String {
    match v {
        Value::Str(s) => sanitize(s),
        other => other.to_string(),
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for nanoseconds since the Unix epoch (UTC).
pub fn format_rfc3339_millis(unix_nanos: u64) -> String {
    let secs = unix_nanos / 1_000_000_000;
    let millis = (unix_nanos % 1_000_000_000) / 1_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Writes batches to stdout.
pub(crate) struct ConsoleSink {
    counters: Arc<Counters>,
    broken: bool,
}

impl ConsoleSink {
    pub(crate) fn new(counters: Arc<Counters>) -> Self {
        Self {
            counters,
            broken: false,
        }
    }

    async fn write(&mut self, spans: Vec<Span>) {
        let n = spans.len() as u64;
        if self.broken {
            self.counters.add_failed(n);
            return;
        }
        // Writing to a slow pipe blocks; keep it off the runtime's worker threads.
        let result = tokio::task::spawn_blocking(move || {
            let stdout = std::io::stdout();
            let mut w = BufWriter::new(stdout.lock());
            for span in &spans {
                writeln!(w, "{}", format_span(span))?;
            }
            w.flush()
        })
        .await;
        match result {
            Ok(Ok(())) => self.counters.add_exported(n),
            Ok(Err(e)) => {
                // Typically a closed pipe; stop trying rather than failing every batch loudly.
                tracing::warn!("console exporter: writing to stdout failed: {e}; disabling it");
                self.broken = true;
                self.counters.add_failed(n);
            }
            Err(e) => {
                tracing::warn!("console exporter: writer task failed: {e}");
                self.counters.add_failed(n);
            }
        }
    }
}

impl Sink for ConsoleSink {
    fn export(
        &mut self,
        batch: Vec<Span>,
        _shutdown: &mut Shutdown,
    ) -> impl Future<Output = ()> + Send {
        self.write(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::span::{KeyValue, Resource, SpanId, SpanLink, TraceId};

    fn span() -> Span {
        Span {
            trace_id: TraceId([
                0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
                0x47, 0x36,
            ]),
            span_id: SpanId([0, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]),
            parent_span_id: Some(SpanId([0x53, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36])),
            trace_state: String::new(),
            parent_sampled: None,
            name: "GET /orders/{id}".into(),
            kind: SpanKind::Server,
            // 2025-03-01T12:00:00.250Z
            start_unix_nanos: 1_740_830_400_250_000_000,
            end_unix_nanos: 1_740_830_400_250_000_000 + 12_345_678,
            attributes: vec![
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("url.path", "/orders/7"),
                KeyValue::new("http.response.status_code", 200i64),
                KeyValue::new("server.address", "shop"),
                KeyValue::new("server.port", 8080i64),
                KeyValue::new("client.address", "10.0.0.7"),
                KeyValue::new("network.protocol.version", "1.1"),
            ],
            status: Status::Ok,
            links: Vec::new(),
            resource: Arc::new(Resource {
                key: "pid:1".into(),
                attributes: vec![KeyValue::new("service.name", "checkout")],
            }),
            scope: "socktrace.http",
        }
    }

    #[test]
    fn formats_a_server_span() {
        assert_eq!(
            format_span(&span()),
            "2025-03-01T12:00:00.250Z checkout SERVER \"GET /orders/{id}\" OK 12.345ms \
             trace=4bf92f3577b34da6a3ce929d0e0e4736 span=00f067aa0ba902b7 parent=53ce929d0e0e4736 \
             method=GET url=/orders/7 status_code=200 server=shop:8080 client=10.0.0.7"
        );
    }

    #[test]
    fn formats_a_failed_client_span_without_parent() {
        let mut s = span();
        s.kind = SpanKind::Client;
        s.parent_span_id = None;
        s.status = Status::Error {
            message: "connection reset\x1b[31m".into(),
        };
        s.end_unix_nanos = s.start_unix_nanos + 999;
        s.attributes = vec![
            KeyValue::new("url.full", "http://x/\x07y"),
            KeyValue::new("server.address", "x"),
        ];
        s.resource = Arc::new(Resource {
            key: "pid:2".into(),
            attributes: vec![],
        });
        assert_eq!(
            format_span(&s),
            "2025-03-01T12:00:00.250Z unknown_service CLIENT \"GET /orders/{id}\" \
             ERROR(connection reset\\u{1b}[31m) 0.000ms trace=4bf92f3577b34da6a3ce929d0e0e4736 \
             span=00f067aa0ba902b7 url=http://x/\\u{7}y server=x"
        );
    }

    #[test]
    fn links_follow_the_ids_as_trace_slash_span() {
        let mut s = span();
        s.parent_span_id = None;
        s.links = vec![
            SpanLink {
                trace_id: TraceId([1; 16]),
                span_id: SpanId([2; 8]),
                trace_state: String::new(),
            },
            SpanLink {
                trace_id: TraceId([3; 16]),
                span_id: SpanId([4; 8]),
                trace_state: "k=v".into(),
            },
        ];
        assert!(
            format_span(&s).contains(
                " span=00f067aa0ba902b7 links=01010101010101010101010101010101/0202020202020202,\
                 03030303030303030303030303030303/0404040404040404 method=GET"
            ),
            "{}",
            format_span(&s)
        );
    }

    #[test]
    fn unset_status_and_empty_error() {
        let mut s = span();
        s.attributes.clear();
        s.status = Status::Unset;
        assert!(format_span(&s).contains("\" UNSET 12.345ms"));
        s.status = Status::Error {
            message: String::new(),
        };
        assert!(format_span(&s).contains("\" ERROR 12.345ms"));
        s.end_unix_nanos = s.start_unix_nanos - 1;
        assert!(
            format_span(&s).contains(" 0.000ms "),
            "negative durations clamp"
        );
    }

    #[test]
    fn rfc3339() {
        assert_eq!(format_rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339_millis(951_782_400_999_999_999),
            "2000-02-29T00:00:00.999Z"
        );
        assert_eq!(
            format_rfc3339_millis(4_102_444_799_000_000_000),
            "2099-12-31T23:59:59.000Z"
        );
    }
}
