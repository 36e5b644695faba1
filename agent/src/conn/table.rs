//! The connection table: connections open, close, expire and are evicted here; each event is
//! routed to its connection's streams.

use bytes::Bytes;
use socktrace_common::{
    CLOSE_LOST_BEFORE, ConnectEvent, DATA_LOST_BEFORE, DATA_TLS, DIR_EGRESS, DIR_INGRESS,
    DataEvent, InjectEvent, ROLE_CLIENT, ROLE_SERVER, TCP_CLOSE,
};

use super::{
    ConnConfig, ConnExchange, ConnStats, Role,
    peers::{Injections, TracedClients},
    resolve::{Resolver, comm_of, tuple_addrs},
    stream::{Conn, Detection, State},
    unbound::Unbound,
};
use crate::{
    FastMap,
    protocol::{End, Next, Protocol, REGISTRY, Segment, Sender, Session, opaque_tls::OpaqueTls},
    telemetry::Snapshot,
    trace::{
        link::LinkEvent,
        span::{SpanId, TraceId},
    },
};

#[cfg(test)]
mod tests;

pub struct ConnTable {
    config: ConnConfig,
    conns: FastMap<u64, Conn>,
    stats: ConnStats,
    /// Parser counters of sessions already gone, per protocol (in [`REGISTRY`] order).
    retired: Vec<Vec<u64>>,
    /// Sockets that turned out to need full capture since the last `take_full_capture`.
    full_capture: Vec<u64>,
    /// What linking learns from I/O, in order; taken by the pipeline after each event.
    links: Vec<LinkEvent>,
    injections: Injections,
    traced_clients: TracedClients,
    /// TLS writes waiting for the socket write that carries them.
    unbound: Unbound,
    /// Sockets whose connection closed in the last [`AFTER_CLOSE_NS`], with the close's time,
    /// until a new connection is seen on them.
    closed: FastMap<u64, u64>,
}

/// How long records of a closed socket that the kernel no longer names are taken for
/// stragglers of its connection.
const AFTER_CLOSE_NS: u64 = 1_000_000_000;
/// Most closed sockets remembered.
const MAX_CLOSED: usize = 65536;

/// Where `protocol` sits in the registry.
fn registry_index(protocol: &dyn Protocol) -> Option<usize> {
    REGISTRY.iter().position(|p| p.name() == protocol.name())
}

impl ConnTable {
    pub fn new(config: ConnConfig) -> Self {
        Self {
            config,
            conns: FastMap::default(),
            stats: ConnStats::default(),
            retired: REGISTRY
                .iter()
                .map(|p| vec![0; p.counters().len()])
                .collect(),
            full_capture: Vec::new(),
            links: Vec::new(),
            injections: Injections::default(),
            traced_clients: TracedClients::default(),
            unbound: Unbound::default(),
            closed: FastMap::default(),
        }
    }

    /// A traced process's `connect()` established a connection: a server on this host reading
    /// from it will get its client's request contexts, so it may wait for them.
    pub fn on_connect(&mut self, ev: &ConnectEvent) {
        let Some(addrs) = tuple_addrs(&ev.tuple) else {
            return;
        };
        self.stats.traced_connects += 1;
        if !self.traced_clients.add(ev.sk, addrs, ev.ts_ns) {
            self.stats.traced_connects_dropped += 1;
        }
    }

    /// Forgets traced clients' connections whose servers have long asked.
    pub fn expire_traced_clients(&mut self, now_ns: u64) {
        self.traced_clients.expire(now_ns);
    }

    /// What linking learned from the I/O handled since the last call, in order.
    pub fn take_links(&mut self) -> Vec<LinkEvent> {
        std::mem::take(&mut self.links)
    }

    /// The process that last did I/O on socket `sk`, while it is tracked.
    pub fn pid_of(&self, sk: u64) -> Option<u32> {
        self.conns.get(&sk).map(|c| c.pid)
    }

    pub fn stats(&self) -> ConnStats {
        self.stats
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Parser counters since start (live and finished sessions), per protocol in [`REGISTRY`]
    /// order, each in the order of its [`Protocol::counters`]: one pass over the connections.
    fn parser_counters(&self) -> Vec<Vec<u64>> {
        let mut sums = self.retired.clone();
        for c in self.conns.values() {
            if let State::Active { protocol, session } = &c.state
                && let Some(sum) = registry_index(*protocol).and_then(|i| sums.get_mut(i))
            {
                session.counters(sum);
            }
        }
        sums
    }

    /// Parser counters of `protocol` since start (live and finished sessions), in the order of
    /// its [`Protocol::counters`].
    pub fn protocol_counters(&self, protocol: &dyn Protocol) -> Vec<u64> {
        registry_index(protocol)
            .and_then(|i| self.parser_counters().into_iter().nth(i))
            .unwrap_or_default()
    }

    /// The counters of this stage and of every protocol's parser.
    pub fn collect(&self, snapshot: &mut Snapshot) {
        snapshot.gauge(
            "conns",
            "live",
            "Connections tracked now.",
            self.conns.len() as u64,
        );
        snapshot.gauge(
            "conns",
            "traced_clients",
            "Connections of traced clients remembered now (for same-host linking).",
            self.traced_clients.len() as u64,
        );
        self.stats.collect("conns", snapshot);
        for (protocol, values) in REGISTRY.iter().zip(self.parser_counters()) {
            for ((name, help), value) in protocol.counters().iter().zip(values) {
                snapshot.counter(protocol.name(), name, help.trim_ascii(), value);
            }
        }
    }

    /// Sockets whose reads and writes should be copied up to the kernel's maximum from now on:
    /// connections of protocols that pack much into one read (HTTP/2).
    pub fn take_full_capture(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.full_capture)
    }

    /// One socket read or write.
    pub fn on_data(
        &mut self,
        ev: &DataEvent,
        payload: &[u8],
        tail: &[u8],
        resolver: &mut dyn Resolver,
        out: &mut Vec<ConnExchange>,
    ) {
        if ev.ctx_flags & DATA_LOST_BEFORE != 0 && self.start_over(ev.sk) {
            // A hole of unknown size: nothing held can be paired with what comes next. The
            // connection starts over, as if joined mid-stream.
            self.stats.reset_after_loss += 1;
        }
        let tls = ev.ctx_flags & DATA_TLS != 0;
        if ev.tuple_known == 0 && self.closed.contains_key(&ev.sk) {
            // A write that raced its socket's close (node's TLS close-notify alert after the
            // peer's reset): the kernel forgot the socket, and no new connection has been
            // seen on it. Opening a connection for it would give a phantom span.
            self.stats.after_close_skipped += 1;
            return;
        }
        if ev.tuple_known != 0 {
            self.closed.remove(&ev.sk);
        }
        if tls && ev.sk == 0 {
            // A TLS write whose socket the kernel could not name: it waits for its ciphertext.
            if ev.direction == DIR_EGRESS {
                self.stats.tls_unbound_dropped += self.unbound.park(ev, payload, tail);
            }
            return;
        }
        if !tls && ev.direction == DIR_EGRESS && self.unbound.waiting(ev.tid) {
            let (bound, dropped) = self.unbound.bind(ev, payload);
            self.stats.tls_unbound_dropped += dropped;
            for w in bound {
                self.stats.tls_bound_by_next_write += 1;
                self.on_data(&w.ev, &w.payload, &w.tail, resolver, out);
            }
        }
        if let Some(conn) = self.conns.get(&ev.sk)
            && conn.tls != tls
        {
            if conn.tls {
                // Ciphertext outside the library's calls (an alert, a late handshake message).
                self.stats.tls_ciphertext_skipped += 1;
                return;
            }
            // The first plaintext from the TLS library: what the socket showed so far was the
            // handshake. The connection starts over, reading the plaintext from its beginning.
            self.stats.tls_plaintext += 1;
            self.start_over(ev.sk);
        }
        if ev.tuple_known != 0
            && let Some(conn) = self.conns.get(&ev.sk)
            && tuple_addrs(&ev.tuple).is_some_and(|(l, p)| (l, p) != (conn.local, conn.peer))
            && let Some(old) = self.conns.remove(&ev.sk)
        {
            // The kernel freed the socket and reused it for another connection: the old one's
            // close was lost (ring buffer full). It ends here.
            self.stats.socket_reused += 1;
            self.finish(old, ev.ts_ns, out);
        }
        if !self.conns.contains_key(&ev.sk) {
            let Some(mut conn) = self.open(ev, resolver) else {
                return;
            };
            conn.tls_records = !tls && is_tls_record(payload);
            if self.conns.len() >= self.config.max_conns {
                self.evict_oldest(out);
            }
            self.conns.insert(ev.sk, conn);
            self.stats.opened += 1;
        }
        let Some(conn) = self.conns.get_mut(&ev.sk) else {
            return;
        };
        conn.last_seen_ns = ev.ts_ns;
        conn.pid = ev.pid;
        if conn.comm.is_empty() {
            conn.comm = comm_of(&ev.comm);
        }
        let ingress = ev.direction == DIR_INGRESS;
        let seg = Segment::prefix(ev.ts_ns, Bytes::copy_from_slice(payload), ev.len)
            .with_tail(Bytes::copy_from_slice(tail));
        let detection = match &conn.state {
            State::Ignored => return,
            State::Active { .. } => return self.feed(ev, seg, out),
            State::Detecting { .. } => conn.detect(ev, seg, ingress, &self.config.enabled),
        };
        match detection {
            Detection::Found {
                mid_stream,
                full_capture,
                replay,
            } => {
                self.stats.mid_stream_joined += u64::from(mid_stream);
                if full_capture {
                    self.full_capture.push(ev.sk);
                }
                for (ev, seg) in replay {
                    self.feed(&ev, seg, out);
                }
            }
            Detection::Skipped => self.stats.mid_stream_skipped += 1,
            Detection::NotYet => {}
            Detection::GaveUp => {
                if !self.config.enabled.names().is_empty() {
                    self.stats.undetected += 1;
                }
            }
        }
    }

    /// Forgets connection `sk` without finishing it (what it holds is dropped), keeping its
    /// session's counters; its next record opens it again. False if it was not tracked.
    fn start_over(&mut self, sk: u64) -> bool {
        let Some(conn) = self.conns.remove(&sk) else {
            return false;
        };
        if let State::Active { protocol, session } = conn.state {
            retire(&mut self.retired, protocol, session.as_ref());
        }
        true
    }

    /// One I/O of a connection whose protocol is known: turns, then its session.
    fn feed(&mut self, ev: &DataEvent, seg: Segment, out: &mut Vec<ConnExchange>) {
        let Some(conn) = self.conns.get_mut(&ev.sk) else {
            return;
        };
        let Some(from) = conn.sender(ev.direction == DIR_INGRESS) else {
            return;
        };
        let injected = match (from, conn.role) {
            (Sender::Client, Some(Role::Client)) => self.injections.take(ev.sk, ev.tid),
            _ => None,
        };
        conn.track_turn(ev, &seg.data, from, injected, &mut self.links);
        conn.push(from, seg);
        let next = conn.drain(&self.config.enabled, out);
        self.follow(ev.sk, next);
    }

    /// Applies what a session said about its connection's future.
    fn follow(&mut self, sk: u64, next: Next) {
        let Some(conn) = self.conns.get_mut(&sk) else {
            return;
        };
        let replacement = match next {
            Next::Continue => return,
            Next::End(end) => {
                match end {
                    End::Upgraded => self.stats.upgraded += 1,
                    End::Encrypted => self.stats.encrypted += 1,
                }
                State::Ignored
            }
            Next::Switch(protocol, session) => {
                self.stats.switched += 1;
                if protocol.full_capture() {
                    self.full_capture.push(sk);
                }
                State::Active { protocol, session }
            }
        };
        if let State::Active { protocol, session } = std::mem::replace(&mut conn.state, replacement)
        {
            retire(&mut self.retired, protocol, session.as_ref());
        }
    }

    /// The kernel inserted a `traceparent` into a request about to be written on `ev.sk`.
    /// The write that carries it follows; its request takes these ids.
    pub fn on_inject(&mut self, ev: &InjectEvent) {
        if ev.stream != 0 {
            // HTTP/2: the stream id names the request; its span takes the ids when it ends.
            self.links.push(LinkEvent::Http2Injected {
                sk: ev.sk,
                stream: ev.stream,
                ts_ns: ev.ts_ns,
                ids: (TraceId(ev.trace_id), SpanId(ev.span_id)),
            });
            return;
        }
        self.stats.injections_unmatched += self.injections.add(ev);
    }

    /// Forgets kernel injections whose write never came, and TLS writes whose socket write
    /// never came.
    pub fn expire_injections(&mut self, now_ns: u64) {
        self.stats.injections_unmatched += self.injections.expire(now_ns);
        self.stats.tls_unbound_dropped += self.unbound.expire(now_ns);
    }

    /// The kernel saw a traced socket change state; at `TCP_CLOSE` the connection is finished.
    pub fn on_close(&mut self, sk: u64, new_state: u32, ts_ns: u64, out: &mut Vec<ConnExchange>) {
        if new_state & CLOSE_LOST_BEFORE != 0
            && let Some(conn) = self.conns.get_mut(&sk)
        {
            // Records lost since the last one: the connection ends with a hole.
            conn.lost = true;
        }
        if (new_state & !CLOSE_LOST_BEFORE) as i32 != TCP_CLOSE {
            return;
        }
        self.traced_clients.remove(sk);
        if let Some(conn) = self.conns.remove(&sk) {
            self.stats.closed += 1;
            self.finish(conn, ts_ns, out);
            if self.closed.len() < MAX_CLOSED {
                self.closed.insert(sk, ts_ns);
            }
        }
    }

    /// Forgets connections idle longer than the configured timeout, and sockets closed long
    /// enough ago that nothing of theirs can still be on its way.
    /// Connections idle for a second give back their parsers' spare buffer space.
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<ConnExchange>) {
        const SHRINK_AFTER_NS: u64 = 1_000_000_000;
        self.closed
            .retain(|_, ts| now_ns.saturating_sub(*ts) <= AFTER_CLOSE_NS);
        let timeout = self.config.idle_timeout_ns;
        let mut stale = Vec::new();
        for (sk, c) in &mut self.conns {
            let idle = now_ns.saturating_sub(c.last_seen_ns);
            if idle > timeout {
                stale.push(*sk);
            } else if idle > SHRINK_AFTER_NS
                && let State::Active { session, .. } = &mut c.state
            {
                session.shrink();
            }
        }
        for sk in stale {
            if let Some(conn) = self.conns.remove(&sk) {
                self.stats.expired += 1;
                let ts = conn.last_seen_ns;
                self.finish(conn, ts, out);
            }
        }
    }

    fn evict_oldest(&mut self, out: &mut Vec<ConnExchange>) {
        let Some(sk) = self
            .conns
            .iter()
            .min_by_key(|(_, c)| c.last_seen_ns)
            .map(|(sk, _)| *sk)
        else {
            return;
        };
        if let Some(conn) = self.conns.remove(&sk) {
            self.stats.evicted += 1;
            let ts = conn.last_seen_ns;
            self.finish(conn, ts, out);
        }
    }

    /// The kernel lost records (ring buffer full) of connections it does not name: every open
    /// connection may have a hole.
    pub fn on_loss(&mut self) {
        for conn in self.conns.values_mut() {
            conn.lost = true;
        }
    }

    /// A connection is gone: what its session still holds is finished and handed over. After
    /// a loss, only what was already answered is.
    fn finish(&mut self, mut conn: Conn, ts_ns: u64, out: &mut Vec<ConnExchange>) {
        // Bytes that matched no protocol before the end (garbage sent, then a close) are as
        // undetected as those of a connection detection gave up on.
        if let State::Detecting { held, .. } = &conn.state
            && !held.is_empty()
            && !self.config.enabled.names().is_empty()
        {
            self.stats.undetected += 1;
        }
        if conn.tls_records && !conn.tls {
            self.stats.tls_unreadable += 1;
            // What the socket layer knows of it: a span for the connection, no requests.
            if let Some(role) = conn.role {
                let exchange = OpaqueTls {
                    start_ns: conn.first_seen_ns,
                    end_ns: ts_ns.max(conn.last_seen_ns),
                };
                conn.hand_over(role, Box::new(exchange), out);
            }
        }
        if conn.lost {
            self.stats.ended_after_loss += 1;
        } else {
            conn.close(ts_ns);
        }
        let _ = conn.drain(&self.config.enabled, out);
        if let State::Active { protocol, session } = conn.state {
            retire(&mut self.retired, protocol, session.as_ref());
        }
    }

    fn open(&mut self, ev: &DataEvent, resolver: &mut dyn Resolver) -> Option<Conn> {
        let (local, peer, role) = if ev.tuple_known != 0 {
            let (local, peer) = tuple_addrs(&ev.tuple)?;
            let role = match ev.role {
                ROLE_CLIENT => Some(Role::Client),
                ROLE_SERVER => Some(Role::Server),
                _ => None,
            };
            (local, peer, role)
        } else {
            match resolver.resolve(ev.pid, ev.fd) {
                Some(r) => {
                    self.stats.found_open += 1;
                    (r.local, r.peer, r.role)
                }
                None => {
                    // Without an address the span would be wrong; count and skip this
                    // connection until its next event (the process may have exited).
                    self.stats.unresolved += 1;
                    return None;
                }
            }
        };
        let ports = &self.config.ports;
        let state =
            if !ports.is_empty() && !ports.contains(&local.port()) && !ports.contains(&peer.port())
            {
                self.stats.port_filtered += 1;
                State::Ignored
            } else {
                State::Detecting {
                    tries: 0,
                    held: Vec::new(),
                }
            };
        let peer_traced = match role {
            Some(Role::Server) => self.traced_clients.contains(peer, local),
            _ => true,
        };
        Some(Conn::new(
            ev,
            comm_of(&ev.comm),
            role,
            local,
            peer,
            state,
            peer_traced,
        ))
    }
}

/// Keeps the counters of a session that ends.
fn retire(retired: &mut [Vec<u64>], protocol: &dyn Protocol, session: &dyn Session) {
    if let Some(sum) = registry_index(protocol).and_then(|i| retired.get_mut(i)) {
        session.counters(sum);
    }
}

/// Whether `b` begins with a TLS record header (RFC 8446 5.1): a content type from
/// change_cipher_spec (20) to application_data (23), then legacy version 3.x with x <= 4.
fn is_tls_record(b: &[u8]) -> bool {
    matches!(b, [20..=23, 3, 0..=4, ..])
}
