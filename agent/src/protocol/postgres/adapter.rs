//! PostgreSQL behind the protocol contract.

use super::{PgConn, PgStats, Statement, detect_frontend, span::build_pg_span};
use crate::{
    protocol::{
        self, Detect, Detected, Enabled, End, Kind, Next, Pairing, Protocol, Segment, Sender,
        Session, SpanConfig,
    },
    trace::span::{ConnMeta, Span},
};

pub struct Postgres;

const KINDS: &[Kind] = &[Kind {
    name: "postgres",
    aliases: &["postgresql"],
    help: "PostgreSQL frontend/backend protocol v3",
}];

impl Protocol for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn kinds(&self) -> &'static [Kind] {
        KINDS
    }

    fn detect(&self, first: &[u8], _: &Enabled) -> Option<Detected> {
        (detect_frontend(first) == Detect::Yes).then(|| Detected {
            sender: Sender::Client,
            session: Box::new(PgSession(PgConn::new())),
        })
    }

    fn counters(&self) -> &'static [(&'static str, &'static str)] {
        PgStats::FIELDS
    }
}

struct PgSession(PgConn);

/// One executed statement and the database it ran in.
#[derive(Debug)]
struct PgCall {
    statement: Statement,
    database: Option<String>,
}

impl Session for PgSession {
    fn push(&mut self, from: Sender, seg: Segment) {
        match from {
            Sender::Client => self.0.push_frontend(seg),
            Sender::Server => self.0.push_backend(seg),
        }
    }

    fn close(&mut self, ts_ns: u64) {
        self.0.close(ts_ns);
    }

    fn drain(&mut self, _: &Enabled, out: &mut Vec<Box<dyn protocol::Exchange>>) -> Next {
        let database = self.0.database().map(str::to_owned);
        for statement in self.0.take_statements() {
            out.push(Box::new(PgCall {
                statement,
                database: database.clone(),
            }));
        }
        // An accepted SSLRequest or GSSENCRequest: the rest is encrypted.
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

impl protocol::Exchange for PgCall {
    fn start_ns(&self) -> u64 {
        self.statement.start_ns
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
        Some(build_pg_span(
            &self.statement,
            self.database.as_deref(),
            meta,
            &config.db,
            to_unix,
        ))
    }
}
