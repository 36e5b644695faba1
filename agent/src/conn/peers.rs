//! What the kernel tells about the other end of a connection: `traceparent` injections waiting
//! for the write that carries them, and the connections traced clients opened on this host (so
//! that a server reading from one knows its client's context will be reported).

use std::net::SocketAddr;

use socktrace_common::InjectEvent;

use crate::{
    FastMap,
    trace::span::{SpanId, TraceId},
};

/// How long a kernel injection waits for the write that carries it (microseconds in practice).
pub(super) const INJECTION_TTL_NS: u64 = 2_000_000_000;
/// Most injections waiting for their write.
const MAX_PENDING_INJECTIONS: usize = 4096;

/// Most connections of traced clients remembered (for same-host linking).
const MAX_TRACED_CLIENTS: usize = 65536;
/// How long a traced client's connection is remembered: the server side only asks when its
/// first bytes arrive, right after the connection is established.
pub(super) const TRACED_CLIENT_TTL_NS: u64 = 60_000_000_000;

#[derive(Clone, Copy, Debug)]
struct Injection {
    tid: u32,
    ts_ns: u64,
    trace_id: TraceId,
    span_id: SpanId,
}

/// Kernel injections whose request write has not been seen yet, by socket.
#[derive(Default)]
pub(super) struct Injections {
    pending: FastMap<u64, Injection>,
}

impl Injections {
    /// The kernel inserted a `traceparent` into a request about to be written on `ev.sk`.
    /// Returns how many waiting injections were given up (bound reached, or replaced).
    pub(super) fn add(&mut self, ev: &InjectEvent) -> u64 {
        let mut lost = 0;
        if self.pending.len() >= MAX_PENDING_INJECTIONS {
            let before = self.pending.len();
            let cutoff = ev.ts_ns.saturating_sub(INJECTION_TTL_NS);
            self.pending.retain(|_, i| i.ts_ns >= cutoff);
            if self.pending.len() == before {
                self.pending.clear();
            }
            lost += (before - self.pending.len()) as u64;
        }
        let old = self.pending.insert(
            ev.sk,
            Injection {
                tid: ev.tid,
                ts_ns: ev.ts_ns,
                trace_id: TraceId(ev.trace_id),
                span_id: SpanId(ev.span_id),
            },
        );
        lost + u64::from(old.is_some())
    }

    /// The ids injected into the request thread `tid` is writing on `sk`, if any: that write
    /// carries them.
    pub(super) fn take(&mut self, sk: u64, tid: u32) -> Option<(TraceId, SpanId)> {
        match self.pending.get(&sk) {
            Some(i) if i.tid == tid => self.pending.remove(&sk).map(|i| (i.trace_id, i.span_id)),
            _ => None,
        }
    }

    /// Forgets injections whose write never came; returns how many.
    pub(super) fn expire(&mut self, now_ns: u64) -> u64 {
        let before = self.pending.len();
        self.pending
            .retain(|_, i| now_ns.saturating_sub(i.ts_ns) <= INJECTION_TTL_NS);
        (before - self.pending.len()) as u64
    }
}

/// Open connections of traced clients.
#[derive(Default)]
pub(super) struct TracedClients {
    /// (client address, server address) -> socket.
    by_addrs: FastMap<(SocketAddr, SocketAddr), u64>,
    /// Socket -> its addresses and when it connected.
    by_sock: FastMap<u64, ((SocketAddr, SocketAddr), u64)>,
}

impl TracedClients {
    /// A traced process connected `sk` from `client` to `server`. False if not remembered
    /// (the table is full).
    pub(super) fn add(&mut self, sk: u64, addrs: (SocketAddr, SocketAddr), ts_ns: u64) -> bool {
        if self.by_sock.len() >= MAX_TRACED_CLIENTS && !self.by_sock.contains_key(&sk) {
            return false;
        }
        if let Some((old, _)) = self.by_sock.insert(sk, (addrs, ts_ns))
            && self.by_addrs.get(&old) == Some(&sk)
        {
            self.by_addrs.remove(&old);
        }
        self.by_addrs.insert(addrs, sk);
        true
    }

    /// Whether the client at `client` of a server at `server` is a traced process.
    pub(super) fn contains(&self, client: SocketAddr, server: SocketAddr) -> bool {
        self.by_addrs.contains_key(&(client, server))
    }

    /// The socket closed.
    pub(super) fn remove(&mut self, sk: u64) {
        if let Some((addrs, _)) = self.by_sock.remove(&sk)
            && self.by_addrs.get(&addrs) == Some(&sk)
        {
            self.by_addrs.remove(&addrs);
        }
    }

    /// Forgets connections older than `TRACED_CLIENT_TTL_NS` (their servers have long asked) -
    /// also those whose close was never reported.
    pub(super) fn expire(&mut self, now_ns: u64) {
        let by_addrs = &mut self.by_addrs;
        self.by_sock.retain(|sk, (addrs, at)| {
            let keep = now_ns.saturating_sub(*at) <= TRACED_CLIENT_TTL_NS;
            if !keep && by_addrs.get(addrs) == Some(sk) {
                by_addrs.remove(addrs);
            }
            keep
        });
    }

    pub(super) fn len(&self) -> usize {
        self.by_sock.len()
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.by_sock.is_empty() && self.by_addrs.is_empty()
    }
}
