//! HTTP/2 (plain requests and gRPC calls) behind the protocol contract.

use super::{
    H2Conn, H2Stream, Http2Stats, detect_frames, detect_preface,
    span::{H2Kinds, build_h2_span},
};
use crate::{
    protocol::{
        self, Detect, Detected, Enabled, Kind, Next, Pairing, Protocol, Segment, Sender, Session,
        SpanConfig,
    },
    trace::span::{ConnMeta, Span},
};

pub struct Http2;

const KINDS: &[Kind] = &[
    Kind {
        name: "http2",
        aliases: &["h2"],
        help: "HTTP/2 requests that are not gRPC (prior knowledge, or `Upgrade: h2c`)",
    },
    Kind {
        name: "grpc",
        aliases: &[],
        help: "gRPC calls (over HTTP/2)",
    },
];

/// A session parsing `conn` (also the continuation of an HTTP/1.1 connection upgraded to h2c).
pub fn session(conn: H2Conn) -> Box<dyn Session> {
    Box::new(Http2Session(conn))
}

impl Protocol for Http2 {
    fn name(&self) -> &'static str {
        "http2"
    }

    fn kinds(&self) -> &'static [Kind] {
        KINDS
    }

    fn detect(&self, first: &[u8], _: &Enabled) -> Option<Detected> {
        (detect_preface(first) == Detect::Yes).then(|| Detected {
            sender: Sender::Client,
            session: session(H2Conn::new()),
        })
    }

    /// Frames without a preface: a connection established before the agent.
    fn detect_mid_stream(&self, first: &[u8], _: &Enabled) -> Option<Detected> {
        (detect_frames(first) == Detect::Yes).then(|| Detected {
            sender: Sender::Client,
            session: session(H2Conn::mid_stream()),
        })
    }

    fn full_capture(&self) -> bool {
        true
    }

    fn counters(&self) -> &'static [(&'static str, &'static str)] {
        Http2Stats::FIELDS
    }
}

struct Http2Session(H2Conn);

impl Session for Http2Session {
    fn push(&mut self, from: Sender, seg: Segment) {
        match from {
            Sender::Client => self.0.push_client(seg),
            Sender::Server => self.0.push_server(seg),
        }
    }

    fn close(&mut self, ts_ns: u64) {
        self.0.close(ts_ns);
    }

    fn drain(&mut self, _: &Enabled, out: &mut Vec<Box<dyn protocol::Exchange>>) -> Next {
        out.extend(
            self.0
                .take_streams()
                .into_iter()
                .map(|s| Box::new(s) as Box<dyn protocol::Exchange>),
        );
        Next::Continue
    }

    fn counters(&self, into: &mut [u64]) {
        self.0.stats().add_to(into);
    }
}

impl protocol::Exchange for H2Stream {
    fn start_ns(&self) -> u64 {
        self.request_start_ns
    }

    fn pairing(&self) -> Pairing {
        Pairing::Stream(self.stream_id)
    }

    fn build(
        &self,
        meta: &ConnMeta,
        config: &SpanConfig,
        to_unix: &dyn Fn(u64) -> u64,
    ) -> Option<Span> {
        let kinds = H2Kinds {
            grpc: config.enabled.has("grpc"),
            http: config.enabled.has("http2"),
        };
        build_h2_span(
            self,
            meta,
            kinds,
            &config.http,
            config.rpc,
            &config.http_stats,
            to_unix,
        )
    }
}
