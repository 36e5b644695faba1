//! HTTP spans from parsed exchanges, per the stable OpenTelemetry HTTP semantic conventions.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
};

use super::{
    context::{HeaderContext, parse_traceparent},
    span::{ConnMeta, ExchangeSpan, KeyValue, Span, SpanKind, Status, Value},
};

/// One HTTP header field as the parsers give it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    /// Lossy UTF-8 and trimmed: spans want text, and a replacement character is more useful to a
    /// reader than dropping the header.
    pub value: String,
}

/// Replaces sensitive values in exported URLs.
pub const REDACTED: &str = "REDACTED";

/// How HTTP spans are named and what they carry.
#[derive(Clone, Debug)]
pub struct HttpSpanConfig {
    /// Derive `http.route` from the path with [`route_from_path`]. Off: no `http.route`, and
    /// server spans are named `{METHOD}` only.
    pub route_heuristic: bool,
}

/// Counters of the span builder.
#[derive(Debug, Default)]
pub struct HttpSpanStats {
    pub invalid_traceparent: AtomicU64,
}

const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Query keys whose values never leave the host. Matched case-insensitively: exact names, or any
/// key containing one of the `SENSITIVE_PARTS`.
const SENSITIVE_KEYS: [&str; 5] = ["sig", "key", "pwd", "pass", "code"];
const SENSITIVE_PARTS: [&str; 10] = [
    "token",
    "password",
    "passwd",
    "secret",
    "signature",
    "auth",
    "credential",
    "apikey",
    "api_key",
    "access_key",
];

fn is_sensitive_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    SENSITIVE_KEYS.contains(&k.as_str()) || SENSITIVE_PARTS.iter().any(|p| k.contains(p))
}

/// Redacts the values of sensitive query parameters, keeping keys and order.
pub fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if is_sensitive_key(k) => format!("{k}={REDACTED}"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Splits a request target into (path, query) for origin-form and absolute-form targets.
/// Absolute-form also yields its authority.
fn split_target(target: &str) -> (Option<&str>, &str, Option<&str>) {
    let (authority, rest) = match target.find("://") {
        Some(i) => {
            let after = &target[i + 3..];
            let end = after.find(['/', '?']).unwrap_or(after.len());
            (Some(&after[..end]), &after[end..])
        }
        None => (None, target),
    };
    let rest = rest.split('#').next().unwrap_or("");
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    (authority, path, query)
}

/// Removes user-info from an authority (`user:pass@host` -> `REDACTED:REDACTED@host`).
fn redact_authority(authority: &str) -> String {
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{REDACTED}:{REDACTED}@{host}"),
        None => authority.to_owned(),
    }
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Low-cardinality route from a concrete path. Documented heuristic: a segment that is all
/// digits becomes `{id}`, a UUID becomes `{uuid}`, a hex string of 16+ characters containing a
/// digit becomes `{hex}`, and any other segment of 24+ characters mixing letters and digits
/// becomes `{token}`. Everything else is kept.
pub fn route_from_path(path: &str) -> String {
    if path.is_empty() || path == "*" {
        return "/".to_owned();
    }
    let segments: Vec<String> = path
        .split('/')
        .map(|seg| {
            let has_digit = seg.bytes().any(|c| c.is_ascii_digit());
            let has_alpha = seg.bytes().any(|c| c.is_ascii_alphabetic());
            if !seg.is_empty() && seg.bytes().all(|c| c.is_ascii_digit()) {
                "{id}".to_owned()
            } else if is_uuid(seg) {
                "{uuid}".to_owned()
            } else if seg.len() >= 16 && has_digit && seg.bytes().all(|c| c.is_ascii_hexdigit()) {
                "{hex}".to_owned()
            } else if seg.len() >= 24
                && has_digit
                && has_alpha
                && seg
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
            {
                "{token}".to_owned()
            } else {
                seg.to_owned()
            }
        })
        .collect();
    let route = segments.join("/");
    if route.starts_with('/') {
        route
    } else {
        format!("/{route}")
    }
}

/// Splits a Host header into host and optional port (handles `[v6]:port`).
fn split_host(host: &str) -> (&str, Option<u16>) {
    if let Some(rest) = host.strip_prefix('[')
        && let Some((h, tail)) = rest.split_once(']')
    {
        return (h, tail.strip_prefix(':').and_then(|p| p.parse().ok()));
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().ok()),
        _ => (host, None),
    }
}

/// The IP of an address as text, IPv4-mapped IPv6 shown as plain IPv4.
pub(crate) fn ip_string(addr: &SocketAddr) -> String {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => ipv4_string(v4),
            None => v6.ip().to_string(),
        },
        SocketAddr::V4(v4) => ipv4_string(*v4.ip()),
    }
}

/// Dotted-quad text without the formatting machinery (three addresses per span add up).
fn ipv4_string(ip: std::net::Ipv4Addr) -> String {
    let mut out = String::with_capacity(15);
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
    out
}

fn header<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

/// Trace context of an incoming request: its valid `traceparent` (with `tracestate`), or a new
/// trace. Shared by every protocol whose requests carry headers (HTTP/1, HTTP/2, gRPC).
pub(crate) fn trace_context(headers: &[Header], stats: &HttpSpanStats) -> Option<HeaderContext> {
    let mut values = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("traceparent"));
    let first = values.next();
    let extra = values.next();
    if let Some(h) = first {
        // A repeated traceparent is invalid per W3C Trace Context.
        match (extra, parse_traceparent(&h.value)) {
            (None, Some(tp)) => {
                let state = headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case("tracestate"))
                    .map(|h| h.value.as_str())
                    .collect::<Vec<_>>()
                    .join(",");
                return Some(HeaderContext {
                    trace_id: tp.trace_id,
                    parent_id: tp.parent_id,
                    trace_state: state,
                    sampled: tp.sampled(),
                });
            }
            _ => {
                stats.invalid_traceparent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    None
}

/// One HTTP request and its outcome, whatever the wire version: what a span is built from.
#[derive(Debug)]
pub struct HttpMessage<'a> {
    pub method: &'a str,
    /// Request target: origin-form path and query, or absolute-form.
    pub target: &'a str,
    /// HTTP/2 `:authority`; for HTTP/1 the `Host` header is used.
    pub authority: Option<&'a str>,
    /// Request headers (HTTP/2 pseudo-headers may be among them; they are not looked up).
    pub headers: &'a [Header],
    /// `network.protocol.version`.
    pub version: &'static str,
    /// Final status code; None when no response was seen.
    pub status: Option<u16>,
    /// Why there is no response (the span's status message then).
    pub no_response: &'a str,
    pub request_body_len: u64,
    /// The request declared a body (Content-Length), so a zero length is still reported.
    pub request_has_body: bool,
    pub response_body_len: u64,
    pub partial: bool,
    pub start_ns: u64,
    pub end_ns: u64,
}

/// Builds the span of one HTTP request of any version.
pub fn build_http_span(
    msg: &HttpMessage<'_>,
    conn: &ConnMeta,
    config: &HttpSpanConfig,
    stats: &HttpSpanStats,
    to_unix: &dyn Fn(u64) -> u64,
) -> Span {
    let mut attrs = Vec::with_capacity(16);
    let method_upper = msg.method;
    let known_method = KNOWN_METHODS.iter().find(|m| **m == method_upper);
    let known = known_method.is_some();
    if let Some(m) = known_method {
        attrs.push(KeyValue::new("http.request.method", Value::text(m)));
    } else {
        attrs.push(KeyValue::new("http.request.method", Value::text("_OTHER")));
        attrs.push(KeyValue::new("http.request.method_original", method_upper));
    }
    let (authority, path, query) = split_target(msg.target);
    let host_header = msg.authority.or_else(|| header(msg.headers, "host"));
    let (host, host_port) = match (authority, host_header) {
        (Some(a), _) => split_host(a.rsplit('@').next().unwrap_or(a)),
        (None, Some(h)) => split_host(h.rsplit('@').next().unwrap_or(h)),
        (None, None) => ("", None),
    };
    let peer_ip = ip_string(&conn.peer);
    let local_ip = ip_string(&conn.local);
    let mut route = None;

    match conn.kind {
        SpanKind::Server => {
            attrs.push(KeyValue::new("url.path", path));
            if let Some(q) = query {
                attrs.push(KeyValue::new("url.query", redact_query(q)));
            }
            let scheme = if conn.tls { "https" } else { "http" };
            attrs.push(KeyValue::new("url.scheme", Value::text(scheme)));
            if config.route_heuristic {
                let r = route_from_path(path);
                attrs.push(KeyValue::new("http.route", r.clone()));
                route = Some(r);
            }
            let server_address = if host.is_empty() {
                local_ip
            } else {
                host.to_owned()
            };
            attrs.push(KeyValue::new("server.address", server_address));
            attrs.push(KeyValue::new(
                "server.port",
                i64::from(host_port.unwrap_or(conn.local.port())),
            ));
            attrs.push(KeyValue::new("client.address", peer_ip.clone()));
            attrs.push(KeyValue::new("client.port", i64::from(conn.peer.port())));
            attrs.push(KeyValue::new("network.peer.address", peer_ip));
            attrs.push(KeyValue::new(
                "network.peer.port",
                i64::from(conn.peer.port()),
            ));
        }
        SpanKind::Client => {
            let server_address = if host.is_empty() {
                peer_ip.clone()
            } else {
                host.to_owned()
            };
            let port = host_port.unwrap_or(conn.peer.port());
            let authority = match authority.or(msg.authority) {
                Some(a) => redact_authority(a),
                None => host_header.map_or_else(
                    || format!("{server_address}:{}", conn.peer.port()),
                    str::to_owned,
                ),
            };
            let scheme = if conn.tls { "https" } else { "http" };
            let mut full = format!("{scheme}://{authority}{path}");
            if let Some(q) = query {
                full.push('?');
                full.push_str(&redact_query(q));
            }
            attrs.push(KeyValue::new("url.full", full));
            attrs.push(KeyValue::new("server.address", server_address));
            attrs.push(KeyValue::new("server.port", i64::from(port)));
            attrs.push(KeyValue::new("network.peer.address", peer_ip));
            attrs.push(KeyValue::new(
                "network.peer.port",
                i64::from(conn.peer.port()),
            ));
        }
    }
    attrs.push(KeyValue::new(
        "network.protocol.version",
        Value::text(msg.version),
    ));
    if let Some(ua) = header(msg.headers, "user-agent") {
        attrs.push(KeyValue::new("user_agent.original", ua));
    }
    // A partial exchange lost part of its framing: a byte count would be a guess, so none is given.
    if !msg.partial && (msg.request_body_len > 0 || msg.request_has_body) {
        attrs.push(KeyValue::new(
            "http.request.body.size",
            i64::try_from(msg.request_body_len).unwrap_or(i64::MAX),
        ));
    }

    let mut status = Status::Unset;
    match msg.status {
        Some(code) => {
            attrs.push(KeyValue::new("http.response.status_code", i64::from(code)));
            if !msg.partial {
                attrs.push(KeyValue::new(
                    "http.response.body.size",
                    i64::try_from(msg.response_body_len).unwrap_or(i64::MAX),
                ));
            }
            let is_error = match conn.kind {
                SpanKind::Server => code >= 500,
                SpanKind::Client => code >= 400,
            };
            if is_error || !(100..=599).contains(&code) {
                attrs.push(KeyValue::new("error.type", code.to_string()));
                status = Status::Error {
                    message: String::new(),
                };
            }
        }
        None => {
            attrs.push(KeyValue::new("error.type", Value::text("_OTHER")));
            status = Status::Error {
                message: msg.no_response.to_owned(),
            };
        }
    }
    if msg.partial {
        attrs.push(KeyValue::new("socktrace.partial", true));
    }

    let method_for_name = if known { method_upper } else { "HTTP" };
    let name = match (conn.kind, route) {
        (SpanKind::Server, Some(r)) => format!("{method_for_name} {r}"),
        _ => method_for_name.to_owned(),
    };
    Span::of_exchange(
        conn,
        ExchangeSpan {
            name,
            scope: "socktrace.http",
            start_unix_nanos: to_unix(msg.start_ns),
            end_unix_nanos: to_unix(msg.end_ns),
            attributes: attrs,
            status,
            header: trace_context(msg.headers, stats),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_text_matches_the_standard_formatting() {
        for ip in [
            [0, 0, 0, 0],
            [127, 0, 0, 1],
            [10, 99, 100, 255],
            [192, 168, 9, 10],
        ] {
            let v4 = std::net::Ipv4Addr::from(ip);
            assert_eq!(ipv4_string(v4), v4.to_string());
            let mapped = SocketAddr::new(v4.to_ipv6_mapped().into(), 1);
            assert_eq!(ip_string(&mapped), v4.to_string());
        }
    }

    #[test]
    fn routes_replace_ids_but_keep_words() {
        assert_eq!(route_from_path("/users/123/orders"), "/users/{id}/orders");
        assert_eq!(
            route_from_path("/items/0b1e4a3c-2f6d-4c1e-9a7b-5d3e2f1a0b9c"),
            "/items/{uuid}"
        );
        assert_eq!(route_from_path("/blob/deadbeef0123456789"), "/blob/{hex}");
        assert_eq!(route_from_path("/s/AbCdEf0123456789GhIjKlMn"), "/s/{token}");
        assert_eq!(route_from_path("/api/v2/health"), "/api/v2/health");
        assert_eq!(route_from_path("/"), "/");
        assert_eq!(route_from_path(""), "/");
        assert_eq!(route_from_path("/a/"), "/a/");
    }

    #[test]
    fn redacts_sensitive_query_values() {
        assert_eq!(
            redact_query("q=shoes&access_token=abc&page=2&Signature=x&api_key=k&sig=s"),
            "q=shoes&access_token=REDACTED&page=2&Signature=REDACTED&api_key=REDACTED&sig=REDACTED"
        );
        assert_eq!(redact_query("flag&password=p"), "flag&password=REDACTED");
    }

    #[test]
    fn splits_targets() {
        assert_eq!(split_target("/a?b=1"), (None, "/a", Some("b=1")));
        assert_eq!(
            split_target("http://u:p@h:8/x?y#f"),
            (Some("u:p@h:8"), "/x", Some("y"))
        );
        assert_eq!(split_target("*"), (None, "*", None));
        assert_eq!(redact_authority("u:p@h:8"), "REDACTED:REDACTED@h:8");
        assert_eq!(split_host("[::1]:80"), ("::1", Some(80)));
        assert_eq!(split_host("example.com"), ("example.com", None));
    }
}
