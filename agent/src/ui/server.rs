//! The viewer's HTTP answers: the page and its JSON API, from one request head.
//!
//! | path | answer |
//! | --- | --- |
//! | `/` | the page (`page.html`: plain script and styles inline, nothing fetched elsewhere) |
//! | `/api/traces?service=&status=error\|ok&min_ms=&limit=` | the trace list, newest first, with every service name known |
//! | `/api/traces/<trace id>` | one trace as a waterfall (404 when it is not in the store) |
//! | `/api/map` | the service map: nodes and edges with requests, errors, rate, mean, p50, p99 |
//!
//! Served on the runtime by [`crate::telemetry::health::serve_with`], one request per
//! connection. A request whose `Host` is neither an IP address nor `localhost` is refused
//! (403): a web page elsewhere cannot read the viewer through a DNS name it rebinds to the
//! loopback address.

use std::net::IpAddr;

use serde_json::json;

use super::{Ui, store::Filter};
use crate::trace::span::TraceId;

/// The page, embedded in the binary.
pub const PAGE: &str = include_str!("page.html");

/// Traces a list answer holds at most.
pub const MAX_LIST: usize = 500;

/// The answer to one request head (request line and headers).
pub fn respond(head: &[u8], ui: &Ui) -> Vec<u8> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let (Ok(httparse::Status::Complete(_)), Some(method), Some(target)) =
        (req.parse(head), req.method, req.path)
    else {
        return reply(400, "text/plain", b"bad request\n", false);
    };
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return reply(405, "text/plain", b"use GET\n", false);
    }
    let host = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .map(|h| String::from_utf8_lossy(h.value).into_owned());
    if let Some(host) = host
        && !allowed_host(&host)
    {
        return reply(
            403,
            "text/plain",
            b"open the viewer by IP address or localhost\n",
            head_only,
        );
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let param = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    match path {
        "/" | "/index.html" => reply(200, "text/html; charset=utf-8", PAGE.as_bytes(), head_only),
        "/api/traces" => {
            let filter = match filter_of(&param) {
                Ok(f) => f,
                Err(why) => return reply(400, "text/plain", why.as_bytes(), head_only),
            };
            let (traces, services) = ui.list(&filter);
            let (stored_traces, stored_spans) = ui.size();
            json_reply(
                &json!({
                    "traces": traces,
                    "services": services,
                    "stored": { "traces": stored_traces, "spans": stored_spans },
                }),
                head_only,
            )
        }
        "/api/map" => json_reply(&json!(ui.service_map()), head_only),
        _ => match path.strip_prefix("/api/traces/").and_then(parse_trace_id) {
            Some(id) => match ui.waterfall(&id) {
                Some(w) => json_reply(&json!(w), head_only),
                None => reply(
                    404,
                    "application/json",
                    br#"{"error":"trace not in the store"}"#,
                    head_only,
                ),
            },
            None => reply(404, "text/plain", b"not found\n", head_only),
        },
    }
}

/// The list's filter from the query parameters.
fn filter_of<'a>(param: &impl Fn(&str) -> Option<&'a str>) -> Result<Filter, String> {
    let error = match param("status").unwrap_or("") {
        "" | "any" => None,
        "error" => Some(true),
        "ok" => Some(false),
        other => return Err(format!("status must be error or ok, not {other:?}\n")),
    };
    let min_ms = match param("min_ms").map(str::trim).unwrap_or("") {
        "" => 0.0,
        v => v
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| format!("min_ms must be a number of milliseconds, not {v:?}\n"))?,
    };
    let limit = match param("limit").unwrap_or("") {
        "" => MAX_LIST,
        v => v
            .parse::<usize>()
            .map_err(|_| format!("limit must be a number, not {v:?}\n"))?
            .min(MAX_LIST),
    };
    Ok(Filter {
        service: param("service").map(str::to_owned),
        error,
        min_duration_ns: (min_ms * 1e6) as u64,
        limit,
    })
}

/// A trace id in lower- or upper-case hex, 32 digits.
fn parse_trace_id(s: &str) -> Option<TraceId> {
    if s.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(TraceId(id))
}

/// An IP address (v4, or v6 in brackets) or `localhost`, with or without a port.
pub fn allowed_host(host: &str) -> bool {
    let host = host.trim();
    if host.parse::<IpAddr>().is_ok() {
        return true;
    }
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, _)) => v6,
            None => return false,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok()
}

fn json_reply(value: &serde_json::Value, head_only: bool) -> Vec<u8> {
    reply(
        200,
        "application/json",
        value.to_string().as_bytes(),
        head_only,
    )
}

fn reply(code: u16, content_type: &str, body: &[u8], head_only: bool) -> Vec<u8> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        _ => "Method Not Allowed",
    };
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\
         Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; \
         style-src 'unsafe-inline'; connect-src 'self'; img-src data:; frame-ancestors 'none'\r\n\
         Connection: close\r\n",
        body.len()
    );
    if code == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}
