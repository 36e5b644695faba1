//! HTTP/1 behind the protocol contract, including the switch to HTTP/2 after `Upgrade: h2c`.

use super::{Exchange, Header, Http1Conn, Http1Stats, detect_request, span::build_span};
use crate::{
    protocol::{
        self, Detect, Detected, Enabled, End, Kind, Next, Pairing, Protocol, Segment, Sender,
        Session, SpanConfig,
        http2::{self, H2Conn},
    },
    trace::span::{ConnMeta, Span},
};

pub struct Http1;

const KINDS: &[Kind] = &[Kind {
    name: "http",
    aliases: &["http1"],
    help: "HTTP/1.0 and HTTP/1.1",
}];

impl Protocol for Http1 {
    fn name(&self) -> &'static str {
        "http1"
    }

    fn kinds(&self) -> &'static [Kind] {
        KINDS
    }

    /// HTTP/2 may begin as an HTTP/1.1 request asking for `Upgrade: h2c`.
    fn wanted(&self, enabled: &Enabled) -> bool {
        enabled.any_of(self) || enabled.any_of(&http2::Http2)
    }

    fn detect(&self, first: &[u8], _: &Enabled) -> Option<Detected> {
        // The HTTP/2 preface is a valid HTTP/1 request line: it is HTTP/2's.
        if http2::detect_preface(first) == Detect::Yes {
            return None;
        }
        (detect_request(first) == Detect::Yes).then(|| Detected {
            sender: Sender::Client,
            session: Box::new(Http1Session(Http1Conn::new())),
        })
    }

    fn counters(&self) -> &'static [(&'static str, &'static str)] {
        Http1Stats::FIELDS
    }
}

struct Http1Session(Http1Conn);

impl Session for Http1Session {
    fn push(&mut self, from: Sender, seg: Segment) {
        match from {
            Sender::Client => self.0.push_request(seg),
            Sender::Server => self.0.push_response(seg),
        }
    }

    fn close(&mut self, ts_ns: u64) {
        self.0.close(ts_ns);
    }

    fn shrink(&mut self) {
        self.0.shrink();
    }

    #[cfg(test)]
    fn allocated(&self) -> usize {
        self.0.req.allocated() + self.0.resp.allocated()
    }

    fn drain(&mut self, enabled: &Enabled, out: &mut Vec<Box<dyn protocol::Exchange>>) -> Next {
        let h = &mut self.0;
        let mut exchanges = h.take_exchanges();
        let mut next = if h.upgraded() {
            Next::End(End::Upgraded)
        } else {
            Next::Continue
        };
        if h.upgraded()
            && enabled.any_of(&http2::Http2)
            && let Some(last) = exchanges.last()
            && is_h2c_upgrade(last)
            && let Some(ex) = exchanges.pop()
        {
            // The upgrading request is stream 1 of the HTTP/2 connection that follows.
            let mut h2 = H2Conn::after_upgrade(h2c_stream1(&ex), ex.request_start_ns);
            let rest = h.take_after_upgrade();
            if rest.len > 0 {
                h2.push_server(rest);
            }
            next = Next::Switch(&http2::Http2, http2::adapter::session(h2));
        }
        if enabled.any_of(&Http1) {
            out.extend(
                exchanges
                    .into_iter()
                    .map(|e| Box::new(e) as Box<dyn protocol::Exchange>),
            );
        }
        next
    }

    fn counters(&self, into: &mut [u64]) {
        self.0.stats().add_to(into);
    }

    fn context_in_turns(&self) -> bool {
        true
    }
}

impl protocol::Exchange for Exchange {
    fn start_ns(&self) -> u64 {
        self.request_start_ns
    }

    fn pairing(&self) -> Pairing {
        Pairing::Turn
    }

    fn build(
        &self,
        meta: &ConnMeta,
        config: &SpanConfig,
        to_unix: &dyn Fn(u64) -> u64,
    ) -> Option<Span> {
        Some(build_span(
            self,
            meta,
            &config.http,
            &config.http_stats,
            to_unix,
        ))
    }
}

/// A 101 answer to a request asking for `Upgrade: h2c`.
fn is_h2c_upgrade(ex: &Exchange) -> bool {
    ex.response.as_ref().is_some_and(|r| r.status == 101)
        && ex
            .request
            .header("upgrade")
            .is_some_and(|u| u.split(',').any(|p| p.trim().eq_ignore_ascii_case("h2c")))
}

/// The upgraded HTTP/1.1 request as HTTP/2 stream 1: pseudo-headers, then its headers minus the
/// connection-specific ones.
fn h2c_stream1(ex: &Exchange) -> Vec<Header> {
    let req = &ex.request;
    let h = |name: &str, value: &str| Header {
        name: name.to_owned(),
        value: value.to_owned(),
    };
    let mut headers = vec![h(":method", &req.method), h(":scheme", "http")];
    if let Some(host) = req.header("host") {
        headers.push(h(":authority", host));
    }
    headers.push(h(":path", &req.target));
    headers.extend(
        req.headers
            .iter()
            .filter(|x| {
                !["host", "connection", "upgrade", "http2-settings"]
                    .iter()
                    .any(|n| x.name.eq_ignore_ascii_case(n))
            })
            .cloned(),
    );
    headers
}
