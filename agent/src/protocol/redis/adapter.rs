//! Redis behind the protocol contract.

use super::{Call, RedisConn, RedisStats, detect_client, span::build_span};
use crate::{
    protocol::{
        self, Detect, Detected, Enabled, Kind, Next, Pairing, Protocol, Segment, Sender, Session,
        SpanConfig,
    },
    trace::span::{ConnMeta, Span},
};

pub struct Redis;

const KINDS: &[Kind] = &[Kind {
    name: "redis",
    aliases: &["resp"],
    help: "Redis (RESP2 and RESP3): one span per command, pipelined ones included",
}];

impl Protocol for Redis {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn kinds(&self) -> &'static [Kind] {
        KINDS
    }

    fn detect(&self, first: &[u8], _: &Enabled) -> Option<Detected> {
        (detect_client(first) == Detect::Yes).then(|| Detected {
            sender: Sender::Client,
            session: Box::new(RedisSession(RedisConn::new())),
        })
    }

    fn counters(&self) -> &'static [(&'static str, &'static str)] {
        RedisStats::FIELDS
    }
}

struct RedisSession(RedisConn);

impl Session for RedisSession {
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
                .take_calls()
                .into_iter()
                .map(|c| Box::new(c) as Box<dyn protocol::Exchange>),
        );
        Next::Continue
    }

    fn counters(&self, into: &mut [u64]) {
        self.0.stats().add_to(into);
    }
}

impl protocol::Exchange for Call {
    fn start_ns(&self) -> u64 {
        self.start_ns
    }

    fn pairing(&self) -> Pairing {
        Pairing::Sequence
    }

    fn build(&self, meta: &ConnMeta, _: &SpanConfig, to_unix: &dyn Fn(u64) -> u64) -> Option<Span> {
        Some(build_span(self, meta, to_unix))
    }
}
