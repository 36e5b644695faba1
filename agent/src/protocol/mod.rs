//! Protocols: one folder each, all behind one contract.
//!
//! A protocol is a pure parser (bytes in, messages out, no I/O, no clock) plus the three small
//! adapters of this contract: [`Protocol`] detects it on the first bytes of a connection and
//! opens a [`Session`]; the session consumes each direction's segments and hands over every
//! finished [`Exchange`]; an exchange builds its span. [`REGISTRY`] lists them all: the
//! connection layer detects in its order, `--protocols` offers their [`Kind`]s, and the
//! self-telemetry reports their counters. Adding a protocol is its folder and one line there.

pub mod http1;
pub mod http2;
pub mod mysql;
pub mod opaque_tls;
pub mod postgres;
pub mod recording;
pub mod redis;
#[cfg(test)]
pub(crate) mod testutil;

use std::{fmt, sync::Arc};

use bytes::Bytes;

use crate::trace::{
    db::DbSpanConfig,
    http::{HttpSpanConfig, HttpSpanStats},
    rpc::RpcConventions,
    span::{ConnMeta, Span},
};

/// Every protocol, in detection order (and the order `--protocols` lists their kinds). Each
/// `detect` is strict, so the order only matters where two could claim the same bytes: HTTP/1
/// leaves the HTTP/2 preface (`PRI * HTTP/2.0`, a valid request line) to HTTP/2.
pub static REGISTRY: &[&dyn Protocol] = &[
    &http1::Http1,
    &http2::Http2,
    &postgres::Postgres,
    &mysql::Mysql,
    &redis::Redis,
];

/// Who wrote bytes on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    Client,
    Server,
}

/// What users enable with `--protocols`: one protocol may carry several (HTTP/2 carries plain
/// HTTP/2 requests and gRPC calls).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kind {
    pub name: &'static str,
    /// Other names accepted on the command line.
    pub aliases: &'static [&'static str],
    pub help: &'static str,
}

/// Every kind of every registered protocol, in registry order.
pub fn kinds() -> impl Iterator<Item = &'static Kind> {
    REGISTRY.iter().flat_map(|p| p.kinds().iter())
}

/// The kinds the user enabled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Enabled(Vec<&'static str>);

impl Enabled {
    /// Every kind of every protocol.
    pub fn all() -> Self {
        Self(kinds().map(|k| k.name).collect())
    }

    /// The kinds named (by name or alias); an unknown name is an error naming the known ones.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Result<Self, String> {
        let mut out = Vec::new();
        for name in names {
            let name = name.as_ref();
            let kind = kinds()
                .find(|k| k.name == name || k.aliases.contains(&name))
                .ok_or_else(|| {
                    let known: Vec<_> = kinds().map(|k| k.name).collect();
                    format!("unknown protocol {name:?} (known: {})", known.join(", "))
                })?;
            if !out.contains(&kind.name) {
                out.push(kind.name);
            }
        }
        Ok(Self(out))
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.contains(&name)
    }

    pub fn names(&self) -> &[&'static str] {
        &self.0
    }

    /// Whether any kind of `protocol` is enabled.
    pub fn any_of<P: Protocol + ?Sized>(&self, protocol: &P) -> bool {
        protocol.kinds().iter().any(|k| self.has(k.name))
    }
}

/// A protocol recognised on a connection: who sent the bytes that showed it, and the session
/// that parses the connection from those bytes on.
pub struct Detected {
    pub sender: Sender,
    pub session: Box<dyn Session>,
}

/// One protocol socktrace can parse.
pub trait Protocol: Sync {
    /// Short name, used for its counters and in logs (`http1`, `postgres`).
    fn name(&self) -> &'static str;

    /// What `--protocols` can enable of it.
    fn kinds(&self) -> &'static [Kind];

    /// Whether connections are parsed with it for what the user enabled. By default: any of its
    /// kinds. (HTTP/1 is also parsed for HTTP/2, which may start as an HTTP/1 `Upgrade: h2c`.)
    fn wanted(&self, enabled: &Enabled) -> bool {
        enabled.any_of(self)
    }

    /// The first captured bytes one side wrote on a connection (`first` is the start of that
    /// side's stream as far as the agent knows it): is this the protocol? Must be strict:
    /// other protocols' first bytes and random data must not match.
    fn detect(&self, first: &[u8], enabled: &Enabled) -> Option<Detected>;

    /// Weaker detection, tried only after every protocol's [`Protocol::detect`] said no:
    /// connections the agent joined mid-stream.
    fn detect_mid_stream(&self, _first: &[u8], _enabled: &Enabled) -> Option<Detected> {
        None
    }

    /// Whether its connections should be copied up to the kernel's maximum per I/O (HTTP/2
    /// packs the headers of many streams into one read).
    fn full_capture(&self) -> bool {
        false
    }

    /// Names and descriptions of the session counters ([`Session::counters`], same order).
    fn counters(&self) -> &'static [(&'static str, &'static str)];
}

/// How a session's connection goes on after its latest input.
pub enum Next {
    Continue,
    /// Parsing ends: the rest of the connection is not this protocol (or not readable).
    End(End),
    /// The connection switched protocol (HTTP/1.1 upgraded to h2c): parse on with this.
    Switch(&'static dyn Protocol, Box<dyn Session>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Upgraded to something not parsed (101 Switching Protocols, a CONNECT tunnel).
    Upgraded,
    /// Switched to TLS or GSS encryption.
    Encrypted,
}

/// The parser state of one connection.
pub trait Session: Send {
    /// One segment written by `from`.
    fn push(&mut self, from: Sender, seg: Segment);

    /// The connection is gone: finish what is open (as partial or unanswered).
    fn close(&mut self, ts_ns: u64);

    /// Moves finished exchanges to `out`, in the order their requests began.
    fn drain(&mut self, enabled: &Enabled, out: &mut Vec<Box<dyn Exchange>>) -> Next;

    /// Adds the parser's counters to `into` (in [`Protocol::counters`] order).
    fn counters(&self, into: &mut [u64]);

    /// The connection is idle: give back buffer space kept for the next message (an idle
    /// keep-alive connection should cost little; thousands of them are common).
    fn shrink(&mut self) {}

    /// Bytes the parser has allocated for buffering (tests of `shrink`).
    #[cfg(test)]
    fn allocated(&self) -> usize {
        0
    }

    /// Requests carry their trace context in-band, one request per turn of the connection
    /// (HTTP/1): the connection layer then reports each turn to span linking.
    fn context_in_turns(&self) -> bool {
        false
    }
}

/// How the two ends of one connection on this host name the same exchange, so that a server
/// span can be paired with its client span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pairing {
    /// By the turn of the connection it began in (HTTP/1; see [`Session::context_in_turns`]).
    Turn,
    /// By a stream id both ends see (HTTP/2).
    Stream(u32),
    /// By its position among the connection's exchanges (one request at a time, in order).
    Sequence,
}

/// What the span builders of every protocol share.
#[derive(Clone, Debug)]
pub struct SpanConfig {
    pub enabled: Enabled,
    pub http: HttpSpanConfig,
    pub db: DbSpanConfig,
    /// Which RPC attribute names gRPC spans carry (`OTEL_SEMCONV_STABILITY_OPT_IN`).
    pub rpc: RpcConventions,
    pub http_stats: Arc<HttpSpanStats>,
}

/// One finished request and its answer: one span.
pub trait Exchange: Send + fmt::Debug {
    /// Kernel time of the first request byte.
    fn start_ns(&self) -> u64;

    fn pairing(&self) -> Pairing;

    /// The span, or None when it is not wanted (a kind not enabled) or not meaningful.
    fn build(
        &self,
        meta: &ConnMeta,
        config: &SpanConfig,
        to_unix: &dyn Fn(u64) -> u64,
    ) -> Option<Span>;
}

/// One socket read or write as captured by the kernel: `len` bytes were transferred, of which
/// only the first `data.len()` (<= len) were copied. The uncaptured tail is a "gap": its bytes
/// count in the stream but their content is unknown.
#[derive(Clone, Debug)]
pub struct Segment {
    pub ts_ns: u64,
    /// The first bytes of the I/O.
    pub data: Bytes,
    pub len: u64,
    /// The last bytes of the I/O when it was longer than the prefix: they cover
    /// `[len - tail.len(), len)` and never overlap `data`. Empty when the kernel copied no tail.
    /// Parsers that track framing by count can use it to pick up framing again at the end of a
    /// large I/O (a gRPC trailer after a large message); the others may ignore it.
    pub tail: Bytes,
}

impl Segment {
    /// A fully captured segment.
    pub fn full(ts_ns: u64, data: impl Into<Bytes>) -> Self {
        let data = data.into();
        let len = data.len() as u64;
        Self::prefix(ts_ns, data, len)
    }

    /// A segment of `len` bytes of which only the first `data.len()` were copied.
    pub fn prefix(ts_ns: u64, data: impl Into<Bytes>, len: u64) -> Self {
        Self {
            ts_ns,
            data: data.into(),
            len,
            tail: Bytes::new(),
        }
    }

    /// Adds the copied last bytes of the I/O (see [`Segment::tail`]); a tail that would overlap
    /// the prefix or exceed `len` is trimmed so the invariant always holds.
    pub fn with_tail(mut self, tail: impl Into<Bytes>) -> Self {
        let mut tail: Bytes = tail.into();
        let room = self.len.saturating_sub(self.data.len() as u64);
        if tail.len() as u64 > room {
            tail = tail.slice(tail.len() - room as usize..);
        }
        self.tail = tail;
        self
    }

    /// Stream offset (from the start of this segment) of the first tail byte.
    pub fn tail_start(&self) -> u64 {
        self.len - self.tail.len() as u64
    }
}

/// Quick protocol detection on the first bytes of a stream direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detect {
    /// These bytes start a message of the protocol.
    Yes,
    /// They cannot.
    No,
    /// Too few bytes to tell.
    NeedMore,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A protocol's name and who sent the bytes that showed it.
    type Found = Option<(&'static str, Sender)>;

    /// The protocol and sender the registry finds for these first bytes.
    fn detected(first: &[u8]) -> Found {
        let all = Enabled::all();
        REGISTRY
            .iter()
            .find_map(|p| p.detect(first, &all).map(|d| (p.name(), d.sender)))
    }

    #[test]
    fn the_registry_tells_the_protocols_apart() {
        let mut greeting = vec![0x0a];
        greeting.extend_from_slice(b"5.5.5-10.11.19-MariaDB-0+deb12u1\0");
        greeting.extend_from_slice(&[7, 0, 0, 0]);
        greeting.extend_from_slice(b"abcdefgh\0");
        greeting.extend_from_slice(&[0xfe, 0xf7, 0x2d, 0x02, 0x00, 0xff, 0x81, 0x15]);
        greeting.extend_from_slice(&[0; 10]);
        let mut mysql = (greeting.len() as u32).to_le_bytes()[..3].to_vec();
        mysql.push(0);
        mysql.extend_from_slice(&greeting);
        let mut startup = Vec::new();
        let params = b"user\0postgres\0database\0shop\0\0";
        startup.extend_from_slice(&(8 + params.len() as u32).to_be_bytes());
        startup.extend_from_slice(&196_608u32.to_be_bytes());
        startup.extend_from_slice(params);
        let cases: [(&[u8], Found); 7] = [
            (
                b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
                Some(("http1", Sender::Client)),
            ),
            (
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                Some(("http2", Sender::Client)),
            ),
            (&startup, Some(("postgres", Sender::Client))),
            (&mysql, Some(("mysql", Sender::Server))),
            (b"*1\r\n$4\r\nPING\r\n", Some(("redis", Sender::Client))),
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", None),
            (b"SSH-2.0-OpenSSH_9.2p1\r\n", None),
        ];
        for (first, want) in cases {
            assert_eq!(
                detected(first),
                want,
                "{:?}",
                String::from_utf8_lossy(first)
            );
        }
    }

    #[test]
    fn protocols_are_enabled_by_kind_name_or_alias() {
        let e = Enabled::from_names(&["postgresql", "h2", "redis", "redis"]).unwrap();
        assert_eq!(e.names(), ["postgres", "http2", "redis"]);
        assert!(e.any_of(&http2::Http2) && !e.has("grpc"));
        // HTTP/1 is parsed for HTTP/2's sake (h2c), without HTTP/1 spans being wanted.
        assert!(http1::Http1.wanted(&e) && !e.any_of(&http1::Http1));
        let err = Enabled::from_names(&["smtp"]).unwrap_err();
        assert_eq!(
            err,
            "unknown protocol \"smtp\" (known: http, http2, grpc, postgres, mysql, redis)"
        );
        assert_eq!(
            Enabled::all().names(),
            ["http", "http2", "grpc", "postgres", "mysql", "redis"]
        );
    }
}
