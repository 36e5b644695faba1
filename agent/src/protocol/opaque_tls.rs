//! A TLS connection whose plaintext could not be read (a TLS stack without probes: BoringSSL
//! without symbols, rustls, Java, a stripped Go binary): one span for the connection, with what
//! the socket layer knows - the addresses, the role, when it opened and ended, and that it was
//! TLS - and nothing guessed about the requests inside it. Not a protocol of the registry: the
//! connection layer makes it when such a connection ends.

use crate::trace::{
    db::push_addresses,
    span::{ConnMeta, ExchangeSpan, KeyValue, Span, Status, Value},
};

use super::{Exchange, Pairing, SpanConfig};

/// The instrumentation scope of these spans (metrics leave them out: they are not requests).
pub const SCOPE: &str = "socktrace.tls";

#[derive(Debug)]
pub struct OpaqueTls {
    /// Kernel times of the connection's first and last records.
    pub start_ns: u64,
    pub end_ns: u64,
}

impl Exchange for OpaqueTls {
    fn start_ns(&self) -> u64 {
        self.start_ns
    }

    /// One per connection at each end: the two ends pair as the first exchange of their
    /// connection.
    fn pairing(&self) -> Pairing {
        Pairing::Sequence
    }

    fn build(&self, meta: &ConnMeta, _: &SpanConfig, to_unix: &dyn Fn(u64) -> u64) -> Option<Span> {
        let mut attributes = vec![KeyValue::new("tls.protocol.name", Value::text("tls"))];
        push_addresses(meta, &mut attributes);
        attributes.push(KeyValue::new("network.transport", Value::text("tcp")));
        Some(Span::of_exchange(
            meta,
            ExchangeSpan {
                name: "TLS".to_owned(),
                scope: SCOPE,
                start_unix_nanos: to_unix(self.start_ns),
                end_unix_nanos: to_unix(self.end_ns),
                attributes,
                status: Status::Unset,
                header: None,
            },
        ))
    }
}
