//! Connections: who talks to whom, and which protocol they speak.
//!
//! Connections are keyed by the kernel socket pointer, which is stable for the socket's life and
//! shared by every process using it. The kernel reports a socket's close only for sockets that
//! produced data, and then the entry is removed; idle entries also expire, and the table is
//! bounded, so memory stays bounded whatever the traffic.
//!
//! - `table`: the connection table and each connection's lifetime (open, close, expiry, bound).
//! - `stream`: one connection's byte streams: protocol detection, turns, and feeding each
//!   direction to its protocol's session.
//! - `peers`: what the kernel tells about the other end: `traceparent` injections waiting for
//!   the write that carries them, and connections opened by traced clients on this host.
//! - `resolve`: addresses of connections the kernel did not see established (procfs).

mod peers;
pub mod resolve;
mod stream;
mod table;
mod unbound;

use std::net::SocketAddr;

pub use resolve::{ProcfsResolver, Resolved, Resolver};
pub use table::ConnTable;

use crate::{
    protocol::{Enabled, Exchange},
    trace::link::ExchangeLink,
};

/// Which side of the connection the traced process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

#[derive(Clone, Debug)]
pub struct ConnConfig {
    /// What `--protocols` enabled.
    pub enabled: Enabled,
    /// Only connections with one of these ports at either end (empty: all).
    pub ports: Vec<u16>,
    /// Bound on tracked connections; the least recently active is evicted beyond it.
    pub max_conns: usize,
    /// Connections idle this long are forgotten (their unanswered requests are finished).
    pub idle_timeout_ns: u64,
}

impl Default for ConnConfig {
    fn default() -> Self {
        Self {
            enabled: Enabled::all(),
            ports: Vec::new(),
            max_conns: 65536,
            idle_timeout_ns: 600 * 1_000_000_000,
        }
    }
}

crate::counters! {
    /// Counters of the connection layer.
    pub struct ConnStats {
        /// Connections the table started tracking.
        opened,
        /// Of those, connections the kernel did not see established: open before the agent
        /// started (or their state change was missed). Their addresses are read from /proc and
        /// their requests are traced from the first one seen.
        found_open,
        /// Connections whose close the kernel reported.
        closed,
        /// Connections evicted from a full table (the least recently active).
        evicted,
        /// Connections forgotten after the idle timeout.
        expired,
        /// Data of sockets whose addresses could not be found (the process had exited): skipped.
        unresolved,
        /// Connections whose first bytes matched no enabled protocol (detection gave up, or the
        /// connection ended first).
        undetected,
        /// Connections outside `--port`.
        port_filtered,
        /// Response bytes before any request (connections joined mid-exchange): skipped.
        mid_stream_skipped,
        /// Connections detected only mid-stream (established before the agent).
        mid_stream_joined,
        /// Connections upgraded to something not parsed (101 Switching Protocols, CONNECT).
        upgraded,
        /// Connections that switched to TLS or GSS encryption (not parseable).
        encrypted,
        /// Connections that switched protocol and were parsed on (HTTP/1.1 upgraded to h2c).
        switched,
        /// Kernel injections never matched to a request write (expired or bound reached).
        injections_unmatched,
        /// Connections restarted because the kernel lost some of their records (ring buffer
        /// full): what they held unanswered was dropped, and parsing began again as if joined
        /// mid-stream.
        reset_after_loss,
        /// Connections whose plaintext began to come from a TLS library: what the socket carried
        /// before (the handshake's ciphertext) was dropped and parsing began again.
        tls_plaintext,
        /// Socket records of TLS connections outside the library's calls (handshake, alerts):
        /// ciphertext, skipped.
        tls_ciphertext_skipped,
        /// Connections that began with a TLS handshake and ended without plaintext from a TLS
        /// library: a TLS stack socktrace cannot read (no symbols, not OpenSSL, or `--tls
        /// false`). They give no span.
        tls_unreadable,
        /// TLS writes sent by the kernel without a socket (a library on memory buffers, before
        /// its session's first read) tied here to their thread's next socket write.
        tls_bound_by_next_write,
        /// Of those writes, ones dropped: no socket write of their thread carried them within
        /// 100 ms, or too many waited.
        tls_unbound_dropped,
        /// Connections that ended while the kernel was losing records: the requests they held
        /// unanswered were dropped rather than reported as failed (their answers may be in what
        /// was lost).
        ended_after_loss,
        /// Records of a socket after its connection closed, which the kernel no longer names
        /// (a write racing the close, such as a TLS close-notify alert): skipped.
        after_close_skipped,
        /// Connections ended because their socket showed up with another 4-tuple (the kernel
        /// reused it; the old connection's close was lost).
        socket_reused,
        /// Connections established by traced clients (`EVENT_CONNECT`).
        traced_connects,
        /// Traced clients' connections not remembered because the table of them was full.
        traced_connects_dropped,
    }
}

/// A finished exchange and the connection it happened on.
#[derive(Debug)]
pub struct ConnExchange {
    pub pid: u32,
    pub comm: String,
    pub role: Role,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub exchange: Box<dyn Exchange>,
    /// The exchange was read at a TLS library: the connection is encrypted.
    pub tls: bool,
    /// What span linking needs to know about the exchange.
    pub link: ExchangeLink,
}
