//! Spans of HTTP/2 streams: gRPC calls per the OpenTelemetry RPC conventions (stable names,
//! and with `rpc/dup` the older ones too, see [`crate::trace::rpc`]), other requests as HTTP
//! spans with `network.protocol.version` = `2`.

use super::{H2Stream, StreamEnd};
use crate::{
    resource::process::percent_decode,
    trace::{
        http::{HttpMessage, HttpSpanConfig, HttpSpanStats, build_http_span, ip_string},
        rpc::{self, RpcConventions},
        span::{ConnMeta, ExchangeSpan, KeyValue, Span, SpanKind, Status, Value},
    },
};

/// Which kinds of HTTP/2 streams become spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct H2Kinds {
    /// gRPC calls (`content-type: application/grpc*`).
    pub grpc: bool,
    /// Every other HTTP/2 request.
    pub http: bool,
}

/// gRPC status code names, by code (<https://grpc.github.io/grpc/core/md_doc_statuscodes.html>).
const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// HTTP/2 error code names (RFC 9113 section 7), by code.
const H2_ERRORS: [&str; 14] = [
    "NO_ERROR",
    "PROTOCOL_ERROR",
    "INTERNAL_ERROR",
    "FLOW_CONTROL_ERROR",
    "SETTINGS_TIMEOUT",
    "STREAM_CLOSED",
    "FRAME_SIZE_ERROR",
    "REFUSED_STREAM",
    "CANCEL",
    "COMPRESSION_ERROR",
    "CONNECT_ERROR",
    "ENHANCE_YOUR_CALM",
    "INADEQUATE_SECURITY",
    "HTTP_1_1_REQUIRED",
];

/// The `rpc.status_code` of a gRPC status: its name, or the number for a code gRPC does not
/// define.
pub fn grpc_status_name(code: i64) -> String {
    usize::try_from(code)
        .ok()
        .and_then(|i| GRPC_CODES.get(i))
        .map_or_else(|| code.to_string(), |n| (*n).to_owned())
}

/// gRPC's UNIMPLEMENTED: the server does not know the method.
const UNIMPLEMENTED: i64 = 12;

fn h2_error_name(code: u32) -> String {
    H2_ERRORS
        .get(code as usize)
        .map_or_else(|| format!("0x{code:x}"), |n| (*n).to_owned())
}

/// Whether a gRPC status makes the span an error: every non-OK code on the client; on the
/// server only the codes that mean the server failed (the conventions' list).
pub fn grpc_is_error(kind: SpanKind, code: i64) -> bool {
    match kind {
        SpanKind::Client => code != 0,
        SpanKind::Server => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
    }
}

/// `host:port`, `[v6]:port` or a bare host -> (host, port).
fn split_authority(authority: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, rest) = v6.split_once(']')?;
            (host, rest.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None => None,
    };
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

/// `/package.Service/Method` -> (`package.Service`, `Method`).
pub fn split_grpc_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix('/')?;
    let (service, method) = rest.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

/// A gRPC call: `content-type: application/grpc*`. When the content type could not be decoded
/// (a connection joined mid-way, whose HPACK tables hold it as an unknown entry), any `grpc-*`
/// field, or a partial POST to a `/package.Service/Method` path, still tells.
fn is_grpc(stream: &H2Stream) -> bool {
    let content_type = stream
        .request_header("content-type")
        .or_else(|| stream.response_header("content-type"));
    if let Some(ct) = content_type {
        return ct
            .get(..16)
            .is_some_and(|p| p.eq_ignore_ascii_case("application/grpc"));
    }
    let grpc_field = stream
        .request_headers
        .iter()
        .chain(&stream.response_headers)
        .chain(&stream.trailers)
        .any(|h| h.name.starts_with("grpc-"));
    grpc_field
        || (stream.undecoded_fields > 0
            && stream.request_header(":method") == Some("POST")
            && stream
                .request_header(":path")
                .and_then(split_grpc_path)
                .is_some())
}

fn end_ns(stream: &H2Stream) -> u64 {
    stream
        .response_end_ns
        .max(stream.request_end_ns)
        .max(stream.response_start_ns)
        .max(stream.request_start_ns)
}

/// The span of one finished stream, or None when its kind is not enabled (or it carries no
/// request at all: a stream whose HEADERS were lost).
pub fn build_h2_span(
    stream: &H2Stream,
    conn: &ConnMeta,
    kinds: H2Kinds,
    config: &HttpSpanConfig,
    rpc: RpcConventions,
    stats: &HttpSpanStats,
    to_unix: &dyn Fn(u64) -> u64,
) -> Option<Span> {
    if stream.request_start_ns == 0 && stream.request_headers.is_empty() {
        return None;
    }
    if is_grpc(stream) {
        return kinds
            .grpc
            .then(|| build_grpc_span(stream, conn, rpc, stats, to_unix));
    }
    if !kinds.http {
        return None;
    }
    let status = stream
        .response_header(":status")
        .and_then(|s| s.parse::<u16>().ok());
    let no_response = match stream.end {
        StreamEnd::Reset {
            by_client: true, ..
        } => "stream reset by the client",
        StreamEnd::Reset { .. } => "stream reset by the server",
        StreamEnd::GoAway { .. } => "connection going away",
        StreamEnd::Evicted => "too many open streams",
        StreamEnd::Complete | StreamEnd::ConnectionClosed => "connection closed before a response",
    };
    let method = stream.request_header(":method");
    let path = stream.request_header(":path");
    let partial = stream.partial || method.is_none() || path.is_none();
    let msg = HttpMessage {
        method: method.unwrap_or("_OTHER"),
        target: path.unwrap_or("/"),
        authority: stream.request_header(":authority"),
        headers: &stream.request_headers,
        version: "2",
        status,
        no_response,
        request_body_len: stream.request_body_len,
        request_has_body: stream.request_header("content-length").is_some(),
        response_body_len: stream.response_body_len,
        partial,
        start_ns: stream.request_start_ns,
        end_ns: end_ns(stream),
    };
    let mut span = build_http_span(&msg, conn, config, stats, to_unix);
    if let StreamEnd::Reset { error_code, .. } = stream.end
        && status.is_some()
    {
        // Answered, then reset mid-body: still a failure of this request.
        span.attributes
            .retain(|kv| kv.key != "error.type" && kv.key != "socktrace.partial");
        span.attributes
            .push(KeyValue::new("error.type", h2_error_name(error_code)));
        span.status = Status::Error {
            message: "stream reset".to_owned(),
        };
        if msg.partial {
            span.attributes
                .push(KeyValue::new("socktrace.partial", true));
        }
    }
    Some(span)
}

fn build_grpc_span(
    stream: &H2Stream,
    conn: &ConnMeta,
    conventions: RpcConventions,
    stats: &HttpSpanStats,
    to_unix: &dyn Fn(u64) -> u64,
) -> Span {
    let path = stream.request_header(":path");
    let (service, method) = path.and_then(split_grpc_path).unzip();
    // grpc-status lives in the trailers, or in the headers of a Trailers-Only response.
    let code = stream
        .trailer("grpc-status")
        .or_else(|| stream.response_header("grpc-status"))
        .and_then(|c| c.trim().parse::<i64>().ok());
    let mut attrs = Vec::with_capacity(16);
    attrs.push(KeyValue::new(rpc::SYSTEM_NAME, Value::text("grpc")));
    if conventions.old() {
        attrs.push(KeyValue::new(rpc::old::SYSTEM, Value::text("grpc")));
    }
    // The method as the client named it: `rpc.method` only when the server knew it (anything
    // but UNIMPLEMENTED), so that unknown methods cannot multiply the series (the
    // conventions' `_OTHER`).
    let full_method = service.zip(method).map(|(s, m)| format!("{s}/{m}"));
    if let Some(full) = &full_method {
        if code == Some(UNIMPLEMENTED) {
            attrs.push(KeyValue::new(rpc::METHOD, Value::text("_OTHER")));
            attrs.push(KeyValue::new(rpc::METHOD_ORIGINAL, full.clone()));
        } else {
            attrs.push(KeyValue::new(rpc::METHOD, full.clone()));
        }
        if conventions.old() {
            attrs.push(KeyValue::new(
                rpc::old::SERVICE,
                service.unwrap_or_default(),
            ));
        }
    }
    let peer_ip = ip_string(&conn.peer);
    // `server.address` / `server.port`: the server as the caller addressed it, from the
    // `:authority` (the conventions say not to take them from the connection). The client's
    // span still needs them without one: then the peer it connected to.
    let authority = stream
        .request_header(":authority")
        .and_then(split_authority);
    let server = match conn.kind {
        SpanKind::Server => authority,
        SpanKind::Client => authority.or_else(|| Some((peer_ip.clone(), Some(conn.peer.port())))),
    };
    if let Some((host, port)) = server {
        attrs.push(KeyValue::new("server.address", host));
        if let Some(port) = port {
            attrs.push(KeyValue::new("server.port", i64::from(port)));
        }
    }
    if conn.kind == SpanKind::Server {
        attrs.push(KeyValue::new("client.address", peer_ip.clone()));
        attrs.push(KeyValue::new("client.port", i64::from(conn.peer.port())));
    }
    attrs.push(KeyValue::new("network.peer.address", peer_ip));
    attrs.push(KeyValue::new(
        "network.peer.port",
        i64::from(conn.peer.port()),
    ));
    attrs.push(KeyValue::new("network.transport", Value::text("tcp")));
    attrs.push(KeyValue::new("network.protocol.name", Value::text("http")));
    attrs.push(KeyValue::new("network.protocol.version", Value::text("2")));

    let mut status = Status::Unset;
    let mut partial = stream.partial;
    match (code, stream.end) {
        (Some(code), _) => {
            let name = grpc_status_name(code);
            attrs.push(KeyValue::new(rpc::STATUS_CODE, name.clone()));
            if conventions.old() {
                attrs.push(KeyValue::new(rpc::old::GRPC_STATUS_CODE, code));
            }
            if grpc_is_error(conn.kind, code) {
                attrs.push(KeyValue::new("error.type", name));
                let message = stream
                    .trailer("grpc-message")
                    .or_else(|| stream.response_header("grpc-message"))
                    .map(percent_decode)
                    .unwrap_or_default();
                status = Status::Error { message };
            }
        }
        (
            None,
            StreamEnd::Reset {
                error_code,
                by_client,
            },
        ) => {
            // RST_STREAM CANCEL is how a call is cancelled (status CANCELLED, code 1).
            if error_code == 8 {
                attrs.push(KeyValue::new(rpc::STATUS_CODE, Value::text("CANCELLED")));
                if conventions.old() {
                    attrs.push(KeyValue::new(rpc::old::GRPC_STATUS_CODE, 1));
                }
                attrs.push(KeyValue::new("error.type", Value::text("CANCELLED")));
            } else {
                attrs.push(KeyValue::new("error.type", h2_error_name(error_code)));
            }
            status = Status::Error {
                message: if by_client {
                    "stream reset by the client".to_owned()
                } else {
                    "stream reset by the server".to_owned()
                },
            };
        }
        (None, end) => {
            // The status was not seen: lost in capture, or the call never finished.
            partial = true;
            attrs.push(KeyValue::new("error.type", Value::text("_OTHER")));
            status = Status::Error {
                message: match end {
                    StreamEnd::GoAway { .. } => "connection going away",
                    StreamEnd::Evicted => "too many open streams",
                    _ => "no grpc-status seen",
                }
                .to_owned(),
            };
        }
    }
    if partial || path.is_none() {
        attrs.push(KeyValue::new("socktrace.partial", true));
    }
    // `{rpc.method}`, or `{rpc.system.name}` when it is unknown or `_OTHER`.
    let name = match full_method {
        Some(full) if code != Some(UNIMPLEMENTED) => full,
        _ => "grpc".to_owned(),
    };
    Span::of_exchange(
        conn,
        ExchangeSpan {
            name,
            scope: "socktrace.grpc",
            start_unix_nanos: to_unix(stream.request_start_ns),
            end_unix_nanos: to_unix(end_ns(stream)),
            attributes: attrs,
            status,
            header: crate::trace::http::trace_context(&stream.request_headers, stats),
        },
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{protocol::http2::Header, trace::span::Resource};

    fn header(name: &str, value: &str) -> Header {
        Header {
            name: name.to_owned(),
            value: value.to_owned(),
        }
    }

    /// A finished gRPC call to `path` answered with `grpc-status: status` (in the trailers).
    fn call(path: &str, status: Option<&str>) -> H2Stream {
        let mut s = H2Stream::new(1);
        s.request_headers = vec![
            header(":method", "POST"),
            header(":path", path),
            header(":authority", "cart.local:50051"),
            header("content-type", "application/grpc"),
        ];
        s.response_headers = vec![header(":status", "200")];
        s.trailers = status
            .map(|c| {
                vec![
                    header("grpc-status", c),
                    header("grpc-message", "no%20such"),
                ]
            })
            .unwrap_or_default();
        s.request_start_ns = 1_000;
        s.response_end_ns = 5_000;
        s
    }

    fn span_of(stream: &H2Stream, kind: SpanKind, rpc: RpcConventions) -> Span {
        let conn = ConnMeta {
            tls: false,
            kind,
            local: "10.0.0.1:40000".parse().unwrap(),
            peer: "10.0.0.2:50051".parse().unwrap(),
            resource: Arc::new(Resource {
                key: String::new(),
                attributes: Vec::new(),
            }),
        };
        let kinds = H2Kinds {
            grpc: true,
            http: true,
        };
        build_h2_span(
            stream,
            &conn,
            kinds,
            &HttpSpanConfig {
                route_heuristic: true,
            },
            rpc,
            &HttpSpanStats::default(),
            &|t| t,
        )
        .unwrap()
    }

    /// The stable RPC names of a call of `method` that ended with `status`.
    fn assert_stable_names(span: &Span, method: &str, status: &str) {
        assert_eq!(span.attr("rpc.system.name"), Some(&Value::text("grpc")));
        assert_eq!(span.attr("rpc.method"), Some(&Value::from(method)));
        assert_eq!(span.attr("rpc.status_code"), Some(&Value::from(status)));
    }

    fn keys(span: &Span) -> Vec<&str> {
        span.attributes.iter().map(|kv| kv.key.as_ref()).collect()
    }

    #[test]
    fn grpc_spans_carry_the_stable_rpc_names() {
        let span = span_of(
            &call("/shop.v1.Cart/AddItem", Some("5")),
            SpanKind::Client,
            RpcConventions::Stable,
        );
        assert_eq!(span.name, "shop.v1.Cart/AddItem");
        assert_stable_names(&span, "shop.v1.Cart/AddItem", "NOT_FOUND");
        assert_eq!(span.attr("error.type"), Some(&Value::from("NOT_FOUND")));
        assert_eq!(
            span.attr("server.address"),
            Some(&Value::from("cart.local"))
        );
        assert_eq!(span.attr("server.port"), Some(&Value::from(50051i64)));
        assert_eq!(
            span.status,
            Status::Error {
                message: "no such".to_owned()
            }
        );
        // None of the names of semantic conventions 1.37.
        for old in ["rpc.system", "rpc.service", "rpc.grpc.status_code"] {
            assert!(!keys(&span).contains(&old), "{old} in {:?}", keys(&span));
        }
        // A server span takes the server's name from the authority too, not from the socket.
        let server = span_of(
            &call("/shop.v1.Cart/AddItem", Some("5")),
            SpanKind::Server,
            RpcConventions::Stable,
        );
        assert_eq!(
            server.attr("server.address"),
            Some(&Value::from("cart.local"))
        );
        assert_eq!(server.attr("server.port"), Some(&Value::from(50051i64)));
        assert_eq!(
            server.attr("client.address"),
            Some(&Value::from("10.0.0.2"))
        );
        let mut no_authority = call("/shop.v1.Cart/AddItem", Some("0"));
        no_authority
            .request_headers
            .retain(|h| h.name != ":authority");
        let server = span_of(&no_authority, SpanKind::Server, RpcConventions::Stable);
        assert_eq!(server.attr("server.address"), None);
        assert_eq!(server.attr("server.port"), None);
        let client = span_of(&no_authority, SpanKind::Client, RpcConventions::Stable);
        assert_eq!(
            client.attr("server.address"),
            Some(&Value::from("10.0.0.2"))
        );
        assert_eq!(client.attr("server.port"), Some(&Value::from(50051i64)));
        // Success: the status is still named, no error.
        let ok = span_of(
            &call("/shop.v1.Cart/AddItem", Some("0")),
            SpanKind::Server,
            RpcConventions::Stable,
        );
        assert_eq!(ok.attr("rpc.status_code"), Some(&Value::from("OK")));
        assert_eq!(ok.attr("error.type"), None);
        assert_eq!(ok.status, Status::Unset);
        // A code gRPC does not define keeps its number, as a string.
        assert_eq!(grpc_status_name(42), "42");
        assert_eq!(grpc_status_name(-1), "-1");
        assert_eq!(grpc_status_name(16), "UNAUTHENTICATED");
    }

    #[test]
    fn rpc_dup_adds_the_old_names_and_keeps_the_stable_method() {
        let span = span_of(
            &call("/shop.v1.Cart/AddItem", Some("5")),
            SpanKind::Client,
            RpcConventions::Dup,
        );
        // The stable names, `rpc.method` fully qualified...
        assert_stable_names(&span, "shop.v1.Cart/AddItem", "NOT_FOUND");
        // ...and the old ones.
        assert_eq!(span.attr("rpc.system"), Some(&Value::text("grpc")));
        assert_eq!(span.attr("rpc.service"), Some(&Value::from("shop.v1.Cart")));
        assert_eq!(span.attr("rpc.grpc.status_code"), Some(&Value::from(5i64)));
        // Each key once.
        let mut k = keys(&span);
        let n = k.len();
        k.sort_unstable();
        k.dedup();
        assert_eq!(k.len(), n);
    }

    #[test]
    fn unimplemented_methods_are_other_with_the_original_kept() {
        let span = span_of(
            &call("/shop.v1.Cart/Nope", Some("12")),
            SpanKind::Server,
            RpcConventions::Stable,
        );
        assert_eq!(span.attr("rpc.method"), Some(&Value::text("_OTHER")));
        assert_eq!(
            span.attr("rpc.method_original"),
            Some(&Value::from("shop.v1.Cart/Nope"))
        );
        assert_eq!(
            span.attr("rpc.status_code"),
            Some(&Value::from("UNIMPLEMENTED"))
        );
        assert_eq!(span.name, "grpc");
        // A cancelled call (RST_STREAM CANCEL, no status) is CANCELLED.
        let mut cancelled = call("/shop.v1.Cart/AddItem", None);
        cancelled.end = StreamEnd::Reset {
            error_code: 8,
            by_client: true,
        };
        let span = span_of(&cancelled, SpanKind::Client, RpcConventions::Dup);
        assert_eq!(
            span.attr("rpc.status_code"),
            Some(&Value::from("CANCELLED"))
        );
        assert_eq!(span.attr("rpc.grpc.status_code"), Some(&Value::from(1i64)));
    }

    #[test]
    fn grpc_paths_and_errors() {
        assert_eq!(
            split_grpc_path("/shop.v1.Cart/AddItem"),
            Some(("shop.v1.Cart", "AddItem"))
        );
        assert_eq!(split_grpc_path("/x"), None);
        assert_eq!(split_grpc_path("//m"), None);
        assert_eq!(split_grpc_path("/a/b/c"), None);
        let some = |h: &str, p| Some((h.to_owned(), p));
        assert_eq!(split_authority("cart:50051"), some("cart", Some(50051)));
        assert_eq!(split_authority("cart"), some("cart", None));
        assert_eq!(split_authority("[::1]:443"), some("::1", Some(443)));
        assert_eq!(split_authority("[::1]"), some("::1", None));
        assert_eq!(split_authority("cart:http"), None);
        assert_eq!(split_authority(":80"), None);
        assert!(grpc_is_error(SpanKind::Client, 5));
        assert!(!grpc_is_error(SpanKind::Server, 5));
        assert!(grpc_is_error(SpanKind::Server, 13));
        assert!(!grpc_is_error(SpanKind::Client, 0));
        assert_eq!(percent_decode("no%20such%20item%"), "no such item%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
