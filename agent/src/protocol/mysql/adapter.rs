//! MySQL and MariaDB behind the protocol contract. The server speaks first (its handshake),
//! so a connection is detected on the server's first bytes, or on the client's handshake
//! response when the greeting was not seen.

use super::{Call, MysqlConn, MysqlStats, detect_client, detect_server, span::build_span};
use crate::{
    protocol::{
        self, Detect, Detected, Enabled, End, Kind, Next, Pairing, Protocol, Segment, Sender,
        Session, SpanConfig,
    },
    trace::span::{ConnMeta, Span},
};

pub struct Mysql;

const KINDS: &[Kind] = &[Kind {
    name: "mysql",
    aliases: &["mariadb"],
    help: "MySQL and MariaDB client/server protocol: one span per command",
}];

impl Protocol for Mysql {
    fn name(&self) -> &'static str {
        "mysql"
    }

    fn kinds(&self) -> &'static [Kind] {
        KINDS
    }

    fn detect(&self, first: &[u8], _: &Enabled) -> Option<Detected> {
        let sender = if detect_server(first) == Detect::Yes {
            Sender::Server
        } else if detect_client(first) == Detect::Yes {
            Sender::Client
        } else {
            return None;
        };
        Some(Detected {
            sender,
            session: Box::new(MysqlSession(MysqlConn::new())),
        })
    }

    fn counters(&self) -> &'static [(&'static str, &'static str)] {
        MysqlStats::FIELDS
    }
}

struct MysqlSession(MysqlConn);

impl Session for MysqlSession {
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
        // An accepted SSLRequest: the rest is TLS.
        if self.0.encrypted() {
            Next::End(End::Encrypted)
        } else {
            Next::Continue
        }
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

    fn build(
        &self,
        meta: &ConnMeta,
        config: &SpanConfig,
        to_unix: &dyn Fn(u64) -> u64,
    ) -> Option<Span> {
        Some(build_span(self, meta, &config.db, to_unix))
    }
}
