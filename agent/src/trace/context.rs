//! W3C Trace Context (`traceparent` / `tracestate`) as read from captured headers.

use super::ids::{SpanId, TraceId};

/// A validated incoming `traceparent`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    pub parent_id: SpanId,
    pub flags: u8,
}

impl TraceParent {
    /// The `sampled` flag (bit 0 of the trace flags).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

fn hex_nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_into(s: &[u8], out: &mut [u8]) -> Option<()> {
    if s.len() != out.len() * 2 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = hex_nibble(s[2 * i])? << 4 | hex_nibble(s[2 * i + 1])?;
    }
    Some(())
}

/// Parses a `traceparent` header value per W3C Trace Context level 1: lowercase hex only,
/// version `ff` invalid, all-zero ids invalid, version 00 exactly 55 characters, later versions
/// may carry more fields after a `-`.
pub fn parse_traceparent(value: &str) -> Option<TraceParent> {
    let v = value.trim().as_bytes();
    if v.len() < 55 {
        return None;
    }
    let mut version = [0u8; 1];
    hex_into(&v[0..2], &mut version)?;
    if version[0] == 0xff || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    if version[0] == 0 && v.len() != 55 {
        return None;
    }
    if v.len() > 55 && v[55] != b'-' {
        return None;
    }
    let mut trace = [0u8; 16];
    let mut span = [0u8; 8];
    let mut flags = [0u8; 1];
    hex_into(&v[3..35], &mut trace)?;
    hex_into(&v[36..52], &mut span)?;
    hex_into(&v[53..55], &mut flags)?;
    let (trace_id, parent_id) = (TraceId(trace), SpanId(span));
    if !trace_id.is_valid() || !parent_id.is_valid() {
        return None;
    }
    Some(TraceParent {
        trace_id,
        parent_id,
        flags: flags[0],
    })
}

/// A parent context received in headers: `traceparent` plus the `tracestate` that came with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderContext {
    pub trace_id: TraceId,
    pub parent_id: SpanId,
    pub trace_state: String,
    /// The `sampled` flag: whether the caller recorded its side (parent-based sampling).
    pub sampled: bool,
}

/// Finds `traceparent` / `tracestate` in the first bytes of an HTTP/1 request, before the head
/// is complete or parsed: only whole header lines are looked at, names case-insensitively. Like
/// the full parser, a repeated or invalid `traceparent` means no context.
pub fn scan_http1_context(buf: &[u8]) -> Option<HeaderContext> {
    let mut parent = None;
    let mut count = 0;
    let mut states: Vec<&str> = Vec::new();
    // Skip the request line; stop at the blank line or the last complete line.
    for line in buf.split(|b| *b == b'\n').skip(1) {
        let Some(line) = line.strip_suffix(b"\r") else {
            break;
        };
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let Ok(value) = std::str::from_utf8(value) else {
            continue;
        };
        if name.eq_ignore_ascii_case(b"traceparent") {
            count += 1;
            parent = parse_traceparent(value);
        } else if name.eq_ignore_ascii_case(b"tracestate") {
            states.push(value.trim());
        }
    }
    let tp = parent.filter(|_| count == 1)?;
    Some(HeaderContext {
        trace_id: tp.trace_id,
        parent_id: tp.parent_id,
        trace_state: states.join(","),
        sampled: tp.sampled(),
    })
}

/// Formats a `traceparent` for a span (sampled).
pub fn format_traceparent(trace_id: TraceId, span_id: SpanId) -> String {
    format!("00-{trace_id}-{span_id}-01")
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_spec_example() {
        let tp = parse_traceparent(VALID).unwrap();
        assert_eq!(tp.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.parent_id.to_string(), "00f067aa0ba902b7");
        assert_eq!(tp.flags, 1);
        assert_eq!(format_traceparent(tp.trace_id, tp.parent_id), VALID);
    }

    #[test]
    fn rejects_invalid_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "é0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
    }

    #[test]
    fn scans_request_heads_for_context() {
        let head = format!(
            "GET /a HTTP/1.1\r\nHost: x\r\nTraceParent: {VALID}\r\ntracestate: a=1\r\n\
             tracestate: b=2\r\n\r\nbody traceparent: nothing"
        );
        let c = scan_http1_context(head.as_bytes()).unwrap();
        assert_eq!(c.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.parent_id.to_string(), "00f067aa0ba902b7");
        assert_eq!(c.trace_state, "a=1,b=2");
        assert!(c.sampled);
        let unsampled = head.replace("-01\r\n", "-00\r\n");
        assert!(!scan_http1_context(unsampled.as_bytes()).unwrap().sampled);
        // Cut inside the header line: not seen.
        let cut = &head.as_bytes()[..head.find("-01").unwrap()];
        assert_eq!(scan_http1_context(cut), None);
        // Twice, invalid, absent, or only in the request line: no context.
        let twice =
            format!("GET / HTTP/1.1\r\ntraceparent: {VALID}\r\ntraceparent: {VALID}\r\n\r\n");
        assert_eq!(scan_http1_context(twice.as_bytes()), None);
        assert_eq!(
            scan_http1_context(b"GET / HTTP/1.1\r\ntraceparent: 00-zz\r\n\r\n"),
            None
        );
        assert_eq!(
            scan_http1_context(b"GET /traceparent:x HTTP/1.1\r\n\r\n"),
            None
        );
        assert_eq!(scan_http1_context(b"\xff\xfe"), None);
    }

    #[test]
    fn accepts_future_versions_with_extra_fields() {
        let v = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-abcd";
        assert!(parse_traceparent(v).is_some());
    }
}
