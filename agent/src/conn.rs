//! Connections: identity (tuple, role, process), protocol detection, and feeding each direction
//! of the byte stream to the parser of the detected protocol.
//!
//! Connections are keyed by the kernel socket pointer, which is stable for the socket's life and
//! shared by every process using it. The kernel reports a socket's close only for sockets that
//! produced data, and then the entry is removed; idle entries also expire, and the table is
//! bounded, so memory stays bounded whatever the traffic.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use bytes::Bytes;
use socktrace_common::{
    AF_INET, AF_INET6, CTX_SERVER_REQUEST, ConnTuple, ConnectEvent, DIR_INGRESS, DataEvent,
    InjectEvent, ROLE_CLIENT, ROLE_SERVER, TCP_CLOSE,
};

use crate::protocol::{
    Detect, Segment,
    http1::{self, Exchange, Header, Http1Conn},
    http2::{self, H2Conn, H2Stream},
    postgres::{self, PgConn, Statement},
};
use crate::trace::{
    context::scan_http1_context,
    link::{ExchangeLink, LinkEvent, PeerDisc, Side},
    span::{SpanId, TraceId},
};

/// Which side of the connection the traced process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// Protocols the user enabled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Protocols {
    /// HTTP/1.x.
    pub http: bool,
    /// Plain (non-gRPC) HTTP/2 requests.
    pub http2: bool,
    /// gRPC calls (over HTTP/2).
    pub grpc: bool,
    pub postgres: bool,
}

impl Protocols {
    pub fn all() -> Self {
        Self {
            http: true,
            http2: true,
            grpc: true,
            postgres: true,
        }
    }

    /// HTTP/2 connections are parsed when either of the protocols it carries is wanted.
    pub fn any_http2(&self) -> bool {
        self.http2 || self.grpc
    }
}

#[derive(Clone, Debug)]
pub struct ConnConfig {
    pub protocols: Protocols,
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
            protocols: Protocols::all(),
            ports: Vec::new(),
            max_conns: 65536,
            idle_timeout_ns: 600 * 1_000_000_000,
        }
    }
}

/// Pipeline counters of this stage.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnStats {
    pub opened: u64,
    pub closed: u64,
    pub evicted: u64,
    pub expired: u64,
    pub unresolved: u64,
    pub undetected: u64,
    pub filtered_port: u64,
    pub upgraded: u64,
    /// PostgreSQL sessions that switched to TLS/GSS encryption (not parseable).
    pub encrypted: u64,
    /// HTTP/1.1 connections upgraded to HTTP/2 (`Upgrade: h2c`), parsed on as HTTP/2.
    pub h2c_upgrades: u64,
    /// HTTP/2 connections joined mid-way (no preface seen: the agent started after them).
    pub h2_mid_stream: u64,
    /// Data events in the response direction before any request was seen (joined mid-exchange).
    pub skipped_mid_stream: u64,
    /// Kernel injections never matched to a request write (expired or bound reached).
    pub injections_unmatched: u64,
    /// Connections established by traced clients (`EVENT_CONNECT`), and those not remembered
    /// because `MAX_TRACED_CLIENTS` were open.
    pub traced_connects: u64,
    pub traced_connects_dropped: u64,
}

/// Identity of a connection resolved outside the kernel (connections older than the agent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub role: Option<Role>,
}

/// Resolves a socket the kernel did not see being established.
pub trait Resolver {
    fn resolve(&mut self, pid: u32, fd: u32) -> Option<Resolved>;
}

/// What a connection produced: one unit that becomes one span.
#[derive(Debug)]
pub enum Payload {
    Http(Exchange),
    Http2(H2Stream),
    Postgres {
        statement: Statement,
        database: Option<String>,
    },
}

/// A finished exchange and the connection it happened on.
#[derive(Debug)]
pub struct ConnExchange {
    pub pid: u32,
    pub comm: String,
    pub role: Role,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub payload: Payload,
    /// What span linking needs to know about the exchange.
    pub link: ExchangeLink,
}

enum State {
    Detecting { tries: u8 },
    Http1(Box<Http1Conn>),
    Http2(Box<H2Conn>),
    Postgres(Box<PgConn>),
    Ignored,
}

struct Conn {
    sk: u64,
    pid: u32,
    comm: String,
    role: Option<Role>,
    local: SocketAddr,
    peer: SocketAddr,
    state: State,
    last_seen_ns: u64,
    /// The kernel saw the connection established, so both ends count requests from the start.
    tuple_known: bool,
    /// The other end may be traced: a client, or a server whose client connected from a traced
    /// process (an `EVENT_CONNECT` for the mirrored tuple came first).
    peer_traced: bool,
    /// Request bytes seen since the last response bytes.
    turn_active: bool,
    /// Turns begun so far (request bytes after response bytes, or the first).
    turns: u64,
    /// PostgreSQL statements finished so far.
    statements: u64,
}

impl Conn {
    /// Both ends of this connection may be traced on this host, and the kernel saw it from its
    /// start, so requests can be paired with the other end's by counting.
    fn peer_linkable(&self) -> bool {
        let (l, p) = (
            self.local.ip().to_canonical(),
            self.peer.ip().to_canonical(),
        );
        self.tuple_known && self.peer_traced && (p.is_loopback() || p == l)
    }
}

/// How long a kernel injection waits for the write that carries it (microseconds in practice).
const INJECTION_TTL_NS: u64 = 2_000_000_000;
/// Most injections waiting for their write.
const MAX_PENDING_INJECTIONS: usize = 4096;

#[derive(Clone, Copy, Debug)]
struct Injection {
    tid: u32,
    ts_ns: u64,
    trace_id: TraceId,
    span_id: SpanId,
}

/// Most connections of traced clients remembered (for same-host linking).
const MAX_TRACED_CLIENTS: usize = 65536;
/// How long a traced client's connection is remembered: the server side only asks when its
/// first bytes arrive, right after the connection is established.
const TRACED_CLIENT_TTL_NS: u64 = 60_000_000_000;

/// Events in the request direction tried before a connection is declared not ours.
const DETECT_TRIES: u8 = 4;

pub struct ConnTable {
    config: ConnConfig,
    conns: HashMap<u64, Conn>,
    stats: ConnStats,
    /// HTTP/2 parser counters of connections already gone.
    h2_retired: http2::Http2Stats,
    /// HTTP/1 parser counters of connections already gone (or upgraded away from HTTP/1).
    h1_retired: http1::Http1Stats,
    /// Sockets that turned out to be HTTP/2 since the last `take_full_capture`.
    full_capture: Vec<u64>,
    /// What linking learns from I/O, in order; taken by the pipeline after each event.
    links: Vec<LinkEvent>,
    /// Kernel injections whose request write has not been seen yet, by socket.
    injections: HashMap<u64, Injection>,
    /// Open connections of traced clients: (client address, server address) -> socket, and
    /// the reverse, so that a server on this host knows its client is traced.
    traced_clients: HashMap<(SocketAddr, SocketAddr), u64>,
    /// Socket -> its addresses and when it connected.
    traced_client_socks: HashMap<u64, ((SocketAddr, SocketAddr), u64)>,
}

fn add_h2_stats(total: &mut http2::Http2Stats, s: &http2::Http2Stats) {
    total.frames = total.frames.saturating_add(s.frames);
    total.resyncs = total.resyncs.saturating_add(s.resyncs);
    total.bytes_skipped = total.bytes_skipped.saturating_add(s.bytes_skipped);
    total.hpack_errors = total.hpack_errors.saturating_add(s.hpack_errors);
    total.undecoded_fields = total.undecoded_fields.saturating_add(s.undecoded_fields);
    total.streams_evicted = total.streams_evicted.saturating_add(s.streams_evicted);
    total.mid_stream_joins = total.mid_stream_joins.saturating_add(s.mid_stream_joins);
}

fn add_h1_stats(total: &mut http1::Http1Stats, h: &http1::Http1Stats) {
    // Parser counters saturate (a huge claimed gap can), so the sum must too.
    total.resyncs = total.resyncs.saturating_add(h.resyncs);
    total.bytes_skipped = total.bytes_skipped.saturating_add(h.bytes_skipped);
    total.invalid_heads = total.invalid_heads.saturating_add(h.invalid_heads);
    total.unanswered_requests_dropped = total
        .unanswered_requests_dropped
        .saturating_add(h.unanswered_requests_dropped);
}

fn tuple_addrs(t: &ConnTuple) -> Option<(SocketAddr, SocketAddr)> {
    let ip = |a: &[u8; 16]| -> Option<IpAddr> {
        match t.family {
            AF_INET => Some(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))),
            AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(*a))),
            _ => None,
        }
    };
    Some((
        SocketAddr::new(ip(&t.saddr)?, t.sport),
        SocketAddr::new(ip(&t.daddr)?, t.dport),
    ))
}

/// The kernel's task name as a string (NUL-terminated, at most 16 bytes).
pub fn comm_of(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|b| *b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

impl ConnTable {
    pub fn new(config: ConnConfig) -> Self {
        Self {
            config,
            conns: HashMap::new(),
            stats: ConnStats::default(),
            h2_retired: http2::Http2Stats::default(),
            h1_retired: http1::Http1Stats::default(),
            full_capture: Vec::new(),
            links: Vec::new(),
            injections: HashMap::new(),
            traced_clients: HashMap::new(),
            traced_client_socks: HashMap::new(),
        }
    }

    /// A traced process's `connect()` established a connection: a server on this host reading
    /// from it will get its client's request contexts, so it may wait for them.
    pub fn on_connect(&mut self, ev: &ConnectEvent) {
        let Some(addrs) = tuple_addrs(&ev.tuple) else {
            return;
        };
        self.stats.traced_connects += 1;
        if self.traced_client_socks.len() >= MAX_TRACED_CLIENTS
            && !self.traced_client_socks.contains_key(&ev.sk)
        {
            self.stats.traced_connects_dropped += 1;
            return;
        }
        if let Some((old, _)) = self.traced_client_socks.insert(ev.sk, (addrs, ev.ts_ns))
            && self.traced_clients.get(&old) == Some(&ev.sk)
        {
            self.traced_clients.remove(&old);
        }
        self.traced_clients.insert(addrs, ev.sk);
    }

    /// Forgets traced clients' connections older than `TRACED_CLIENT_TTL_NS` (their servers
    /// have long asked) - also those whose close was never reported.
    pub fn expire_traced_clients(&mut self, now_ns: u64) {
        let clients = &mut self.traced_clients;
        self.traced_client_socks.retain(|sk, (addrs, at)| {
            let keep = now_ns.saturating_sub(*at) <= TRACED_CLIENT_TTL_NS;
            if !keep && clients.get(addrs) == Some(sk) {
                clients.remove(addrs);
            }
            keep
        });
    }

    /// What linking learned from the I/O handled since the last call, in order.
    pub fn take_links(&mut self) -> Vec<LinkEvent> {
        std::mem::take(&mut self.links)
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

    /// Parser counters summed over live HTTP/1 connections.
    /// HTTP/1 parser counters since start (live and finished connections).
    pub fn http1_stats(&self) -> http1::Http1Stats {
        let mut s = self.h1_retired;
        for c in self.conns.values() {
            if let State::Http1(h) = &c.state {
                add_h1_stats(&mut s, &h.stats());
            }
        }
        s
    }

    /// HTTP/2 parser counters since start (live and finished connections).
    pub fn http2_stats(&self) -> http2::Http2Stats {
        let mut total = self.h2_retired;
        for c in self.conns.values() {
            if let State::Http2(h) = &c.state {
                add_h2_stats(&mut total, &h.stats());
            }
        }
        total
    }

    /// Sockets whose reads and writes should be copied up to the kernel's maximum from now on:
    /// HTTP/2 connections, where one read often holds the headers of many streams.
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
        if !self.conns.contains_key(&ev.sk) {
            let Some(conn) = self.open(ev, resolver) else {
                return;
            };
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

        if let State::Detecting { tries } = &mut conn.state {
            let protocols = self.config.protocols;
            if !protocols.http && !protocols.any_http2() && !protocols.postgres {
                conn.state = State::Ignored;
                return;
            }
            // Which direction carries requests decides everything; with an unknown role, the
            // first request seen tells it.
            let request_dir = match conn.role {
                Some(Role::Server) => Some(ingress),
                Some(Role::Client) => Some(!ingress),
                None => None,
            };
            if request_dir == Some(false) {
                self.stats.skipped_mid_stream += 1;
                return;
            }
            // The preface first: "PRI * HTTP/2.0" is also a valid HTTP/1 request line. An h2c
            // upgrade starts as HTTP/1, so HTTP/1 parsing is on when HTTP/2 is wanted.
            let detected = if protocols.any_http2() && http2::detect_preface(payload) == Detect::Yes
            {
                Some(State::Http2(Box::default()))
            } else if (protocols.http || protocols.any_http2())
                && http1::detect_request(payload) == Detect::Yes
            {
                Some(State::Http1(Box::default()))
            } else if protocols.postgres && postgres::detect_frontend(payload) == Detect::Yes {
                Some(State::Postgres(Box::default()))
            } else if protocols.any_http2() && http2::detect_frames(payload) == Detect::Yes {
                // Frames without a preface: a connection established before the agent.
                self.stats.h2_mid_stream += 1;
                Some(State::Http2(Box::new(H2Conn::mid_stream())))
            } else {
                None
            };
            match detected {
                Some(state) => {
                    if matches!(state, State::Http2(_)) {
                        self.full_capture.push(ev.sk);
                    }
                    if conn.role.is_none() {
                        conn.role = Some(if ingress { Role::Server } else { Role::Client });
                    }
                    conn.state = state;
                }
                None => {
                    *tries += 1;
                    if *tries >= DETECT_TRIES {
                        self.stats.undetected += 1;
                        conn.state = State::Ignored;
                    }
                    return;
                }
            }
        }

        let is_request = match conn.role {
            Some(Role::Server) => ingress,
            _ => !ingress,
        };
        Self::track_turns(
            conn,
            ev,
            payload,
            is_request,
            &mut self.injections,
            &mut self.links,
        );
        let seg = Segment::prefix(ev.ts_ns, Bytes::copy_from_slice(payload), ev.len)
            .with_tail(Bytes::copy_from_slice(tail));
        let done = match &mut conn.state {
            State::Http1(h) => {
                if is_request {
                    h.push_request(seg);
                } else {
                    h.push_response(seg);
                }
                h.upgraded()
            }
            State::Http2(h) => {
                if is_request {
                    h.push_client(seg);
                } else {
                    h.push_server(seg);
                }
                false
            }
            State::Postgres(pg) => {
                if is_request {
                    pg.push_frontend(seg);
                } else {
                    pg.push_backend(seg);
                }
                pg.encrypted()
            }
            State::Detecting { .. } | State::Ignored => return,
        };
        let upgrade = Self::drain(conn, self.config.protocols, out);
        if (upgrade.is_some() || done)
            && let State::Http1(h) = &conn.state
        {
            add_h1_stats(&mut self.h1_retired, &h.stats());
        }
        if let Some(h2) = upgrade {
            self.stats.h2c_upgrades += 1;
            self.full_capture.push(ev.sk);
            conn.state = State::Http2(h2);
            return;
        }
        if done {
            // HTTP/1 parsing ends at 101 Switching Protocols or a CONNECT tunnel; PostgreSQL at
            // an accepted SSLRequest/GSSENCRequest.
            match conn.state {
                State::Postgres(_) => self.stats.encrypted += 1,
                _ => self.stats.upgraded += 1,
            }
            conn.state = State::Ignored;
        }
    }

    /// The kernel inserted a `traceparent` into a request about to be written on `ev.sk`.
    /// The write that carries it follows; its request takes these ids.
    pub fn on_inject(&mut self, ev: &InjectEvent) {
        if self.injections.len() >= MAX_PENDING_INJECTIONS {
            let before = self.injections.len();
            let cutoff = ev.ts_ns.saturating_sub(INJECTION_TTL_NS);
            self.injections.retain(|_, i| i.ts_ns >= cutoff);
            if self.injections.len() == before {
                self.injections.clear();
            }
            self.stats.injections_unmatched += (before - self.injections.len()) as u64;
        }
        let old = self.injections.insert(
            ev.sk,
            Injection {
                tid: ev.tid,
                ts_ns: ev.ts_ns,
                trace_id: TraceId(ev.trace_id),
                span_id: SpanId(ev.span_id),
            },
        );
        if old.is_some() {
            self.stats.injections_unmatched += 1;
        }
    }

    /// Turns and the link events they give: the first request bytes of an HTTP/1 turn begin a
    /// request context; client I/O of other protocols may belong to a served request; response
    /// bytes on a server connection end the serving.
    fn track_turns(
        conn: &mut Conn,
        ev: &DataEvent,
        payload: &[u8],
        is_request: bool,
        injections: &mut HashMap<u64, Injection>,
        links: &mut Vec<LinkEvent>,
    ) {
        let Some(role) = conn.role else {
            return;
        };
        let http1 = matches!(conn.state, State::Http1(_));
        let key = (ev.sk, ev.ts_ns);
        if !is_request {
            conn.turn_active = false;
            if role == Role::Server {
                links.push(LinkEvent::ServerResponse {
                    sk: ev.sk,
                    tid: ev.tid,
                });
            }
            return;
        }
        // The kernel put a header into this write: it begins a request even mid-turn (pipelined).
        let injected = match injections.get(&ev.sk) {
            Some(i) if role == Role::Client && i.tid == ev.tid => {
                injections.remove(&ev.sk).map(|i| (i.trace_id, i.span_id))
            }
            _ => None,
        };
        let new_turn = !conn.turn_active;
        if new_turn {
            conn.turn_active = true;
            conn.turns += 1;
        }
        if http1 && (new_turn || injected.is_some()) {
            let kernel_trace = (role == Role::Server && ev.ctx_flags & CTX_SERVER_REQUEST != 0)
                .then_some(TraceId(ev.trace_id))
                .filter(TraceId::is_valid);
            links.push(LinkEvent::Http1Request {
                key,
                tid: ev.tid,
                side: match role {
                    Role::Server => Side::Server,
                    Role::Client => Side::Client,
                },
                local: conn.local,
                peer: conn.peer,
                peer_linkable: conn.peer_linkable(),
                turn: conn.turns - 1,
                header: scan_http1_context(payload),
                kernel_trace,
                injected,
            });
        } else if !http1 && role == Role::Client {
            links.push(LinkEvent::ClientIo { key, tid: ev.tid });
        }
    }

    /// Forgets kernel injections whose write never came.
    pub fn expire_injections(&mut self, now_ns: u64) {
        let before = self.injections.len();
        self.injections
            .retain(|_, i| now_ns.saturating_sub(i.ts_ns) <= INJECTION_TTL_NS);
        self.stats.injections_unmatched += (before - self.injections.len()) as u64;
    }

    /// The kernel saw a traced socket change state; at `TCP_CLOSE` the connection is finished.
    pub fn on_close(&mut self, sk: u64, new_state: u32, ts_ns: u64, out: &mut Vec<ConnExchange>) {
        if new_state as i32 != TCP_CLOSE {
            return;
        }
        if let Some((addrs, _)) = self.traced_client_socks.remove(&sk)
            && self.traced_clients.get(&addrs) == Some(&sk)
        {
            self.traced_clients.remove(&addrs);
        }
        if let Some(mut conn) = self.conns.remove(&sk) {
            self.stats.closed += 1;
            Self::finish(
                &mut conn,
                self.config.protocols,
                &mut self.h2_retired,
                &mut self.h1_retired,
                ts_ns,
                out,
            );
        }
    }

    /// Forgets connections idle longer than the configured timeout.
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<ConnExchange>) {
        let timeout = self.config.idle_timeout_ns;
        let stale: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| now_ns.saturating_sub(c.last_seen_ns) > timeout)
            .map(|(sk, _)| *sk)
            .collect();
        for sk in stale {
            if let Some(mut conn) = self.conns.remove(&sk) {
                self.stats.expired += 1;
                let ts = conn.last_seen_ns;
                Self::finish(
                    &mut conn,
                    self.config.protocols,
                    &mut self.h2_retired,
                    &mut self.h1_retired,
                    ts,
                    out,
                );
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
        if let Some(mut conn) = self.conns.remove(&sk) {
            self.stats.evicted += 1;
            let ts = conn.last_seen_ns;
            Self::finish(
                &mut conn,
                self.config.protocols,
                &mut self.h2_retired,
                &mut self.h1_retired,
                ts,
                out,
            );
        }
    }

    fn finish(
        conn: &mut Conn,
        protocols: Protocols,
        h2_retired: &mut http2::Http2Stats,
        h1_retired: &mut http1::Http1Stats,
        ts_ns: u64,
        out: &mut Vec<ConnExchange>,
    ) {
        match &mut conn.state {
            State::Http1(h) => {
                h.close(ts_ns);
                add_h1_stats(h1_retired, &h.stats());
            }
            State::Http2(h) => {
                h.close(ts_ns);
                add_h2_stats(h2_retired, &h.stats());
            }
            State::Postgres(pg) => pg.close(ts_ns),
            State::Detecting { .. } | State::Ignored => return,
        }
        let _ = Self::drain(conn, protocols, out);
    }

    /// Moves finished exchanges to `out`. Returns the HTTP/2 parser to continue with when an
    /// HTTP/1 connection was just upgraded to h2c (its 101 exchange becomes stream 1).
    fn drain(
        conn: &mut Conn,
        protocols: Protocols,
        out: &mut Vec<ConnExchange>,
    ) -> Option<Box<H2Conn>> {
        let role = conn.role?;
        let mut upgrade = None;
        let http1 = matches!(conn.state, State::Http1(_));
        let payloads: Vec<Payload> = match &mut conn.state {
            State::Http1(h) => {
                let mut exchanges = h.take_exchanges();
                if h.upgraded()
                    && protocols.any_http2()
                    && let Some(last) = exchanges.last()
                    && is_h2c_upgrade(last)
                    && let Some(ex) = exchanges.pop()
                {
                    let mut h2 = H2Conn::after_upgrade(h2c_stream1(&ex), ex.request_start_ns);
                    let rest = h.take_after_upgrade();
                    if rest.len > 0 {
                        h2.push_server(rest);
                    }
                    upgrade = Some(Box::new(h2));
                }
                if !protocols.http {
                    exchanges.clear();
                }
                exchanges.into_iter().map(Payload::Http).collect()
            }
            State::Http2(h) => h.take_streams().into_iter().map(Payload::Http2).collect(),
            State::Postgres(pg) => {
                let database = pg.database().map(str::to_owned);
                pg.take_statements()
                    .into_iter()
                    .map(|statement| Payload::Postgres {
                        statement,
                        database: database.clone(),
                    })
                    .collect()
            }
            State::Detecting { .. } | State::Ignored => return None,
        };
        let peer_linkable = conn.peer_linkable();
        for payload in payloads {
            let (start_ns, disc) = match &payload {
                Payload::Http(ex) => (ex.request_start_ns, None),
                Payload::Http2(st) => (st.request_start_ns, Some(PeerDisc::Stream(st.stream_id))),
                Payload::Postgres { statement, .. } => {
                    conn.statements += 1;
                    (
                        statement.start_ns,
                        Some(PeerDisc::Statement(conn.statements - 1)),
                    )
                }
            };
            let link = ExchangeLink {
                sk: conn.sk,
                start_ns,
                side: match role {
                    Role::Server => Side::Server,
                    Role::Client => Side::Client,
                },
                local: conn.local,
                peer: conn.peer,
                http1: http1 && matches!(payload, Payload::Http(_)),
                peer_linkable,
                disc,
            };
            out.push(ConnExchange {
                link,
                pid: conn.pid,
                comm: conn.comm.clone(),
                role,
                local: conn.local,
                peer: conn.peer,
                payload,
            });
        }
        upgrade
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
                Some(r) => (r.local, r.peer, r.role),
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
                self.stats.filtered_port += 1;
                State::Ignored
            } else {
                State::Detecting { tries: 0 }
            };
        let peer_traced = match role {
            Some(Role::Server) => self.traced_clients.contains_key(&(peer, local)),
            _ => true,
        };
        Some(Conn {
            sk: ev.sk,
            tuple_known: ev.tuple_known != 0,
            peer_traced,
            turn_active: false,
            turns: 0,
            statements: 0,
            pid: ev.pid,
            comm: comm_of(&ev.comm),
            role,
            local,
            peer,
            state,
            last_seen_ns: ev.ts_ns,
        })
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

/// Resolves pre-existing connections through procfs: `/proc/PID/fd/FD` names the socket inode,
/// `/proc/PID/net/tcp{,6}` (the process's network namespace) gives its addresses, and a
/// listening socket on the same local port makes the process the server.
#[derive(Default)]
pub struct ProcfsResolver;

impl Resolver for ProcfsResolver {
    fn resolve(&mut self, pid: u32, fd: u32) -> Option<Resolved> {
        let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
        let link = link.to_string_lossy();
        let inode: u64 = link
            .strip_prefix("socket:[")?
            .strip_suffix(']')?
            .parse()
            .ok()?;
        let process = procfs::process::Process::new(pid as i32).ok()?;
        let mut entries = process.tcp().unwrap_or_default();
        entries.extend(process.tcp6().unwrap_or_default());
        let me = entries.iter().find(|e| e.inode == inode)?;
        let normalize = |a: SocketAddr| match a {
            SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
                None => a,
            },
            a => a,
        };
        let local = normalize(me.local_address);
        let listening = entries.iter().any(|e| {
            e.state == procfs::net::TcpState::Listen && e.local_address.port() == local.port()
        });
        Some(Resolved {
            local,
            peer: normalize(me.remote_address),
            role: Some(if listening {
                Role::Server
            } else {
                Role::Client
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use socktrace_common::{DIR_EGRESS, EVENT_DATA, EVENT_INJECT};

    use super::*;

    struct NoResolver;
    impl Resolver for NoResolver {
        fn resolve(&mut self, _: u32, _: u32) -> Option<Resolved> {
            None
        }
    }

    fn tuple(local: [u8; 4], lport: u16, peer: [u8; 4], pport: u16) -> ConnTuple {
        let mut t = ConnTuple {
            sport: lport,
            dport: pport,
            family: AF_INET,
            ..Default::default()
        };
        t.saddr[..4].copy_from_slice(&local);
        t.daddr[..4].copy_from_slice(&peer);
        t
    }

    fn event(
        sk: u64,
        ts: u64,
        tid: u32,
        dir: u32,
        role: u32,
        t: ConnTuple,
        len: usize,
    ) -> DataEvent {
        DataEvent {
            kind: EVENT_DATA,
            direction: dir,
            ts_ns: ts,
            sk,
            pid: 1,
            tid,
            fd: 3,
            role,
            len: len as u64,
            captured: len as u32,
            tuple_known: 1,
            tuple: t,
            comm: [0; 16],
            tail: 0,
            ctx_flags: 0,
            trace_id: [0; 16],
        }
    }

    fn table() -> ConnTable {
        ConnTable::new(ConnConfig {
            protocols: Protocols::all(),
            ..ConnConfig::default()
        })
    }

    #[test]
    fn an_injection_gives_its_ids_to_the_request_written_next_on_that_socket() {
        let mut t = table();
        let (mut out, mut r) = (Vec::new(), NoResolver);
        let tp = tuple([10, 0, 0, 1], 40000, [10, 0, 0, 2], 80);
        let inject = InjectEvent {
            kind: EVENT_INJECT,
            pid: 1,
            tid: 9,
            offset: 16,
            ts_ns: 99,
            sk: 5,
            trace_id: [1; 16],
            span_id: [2; 8],
        };
        t.on_inject(&inject);
        let req = b"GET /a HTTP/1.1\r\nHost: b\r\n\r\n";
        let ev = event(5, 100, 9, DIR_EGRESS, ROLE_CLIENT, tp, req.len());
        t.on_data(&ev, req, &[], &mut r, &mut out);
        // Pipelined second request in its own write, also injected.
        t.on_inject(&InjectEvent {
            ts_ns: 101,
            span_id: [3; 8],
            ..inject
        });
        let ev2 = event(5, 102, 9, DIR_EGRESS, ROLE_CLIENT, tp, req.len());
        t.on_data(&ev2, req, &[], &mut r, &mut out);
        let links = t.take_links();
        let injected: Vec<_> = links
            .iter()
            .map(|l| match l {
                LinkEvent::Http1Request {
                    key,
                    injected,
                    side,
                    turn,
                    ..
                } => (*key, *injected, *side, *turn),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            injected,
            vec![
                (
                    (5, 100),
                    Some((TraceId([1; 16]), SpanId([2; 8]))),
                    Side::Client,
                    0
                ),
                (
                    (5, 102),
                    Some((TraceId([1; 16]), SpanId([3; 8]))),
                    Side::Client,
                    0
                ),
            ]
        );
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let ev3 = event(5, 110, 9, DIR_INGRESS, ROLE_CLIENT, tp, resp.len() * 2);
        let both = [&resp[..], &resp[..]].concat();
        t.on_data(&ev3, &both, &[], &mut r, &mut out);
        let starts: Vec<u64> = out.iter().map(|x| x.link.start_ns).collect();
        assert_eq!(starts, vec![100, 102]);
        assert!(out.iter().all(|x| x.link.http1 && !x.link.peer_linkable));
        // Another thread's write does not take an injection meant for thread 9.
        t.on_inject(&InjectEvent {
            ts_ns: 120,
            ..inject
        });
        let ev4 = event(5, 121, 10, DIR_EGRESS, ROLE_CLIENT, tp, req.len());
        t.on_data(&ev4, req, &[], &mut r, &mut out);
        assert!(matches!(
            t.take_links()[..],
            [LinkEvent::Http1Request {
                injected: None,
                turn: 1,
                ..
            }]
        ));
        t.expire_injections(120 + INJECTION_TTL_NS + 1);
        assert_eq!(t.stats().injections_unmatched, 1);
    }

    fn connect(sk: u64, t: ConnTuple) -> ConnectEvent {
        ConnectEvent {
            kind: socktrace_common::EVENT_CONNECT,
            _pad: 0,
            ts_ns: 1,
            sk,
            tuple: t,
        }
    }

    /// Whether the first request of a server connection on `server` may wait for its client.
    fn server_peer_linkable(t: &mut ConnTable, sk: u64, server: ConnTuple) -> bool {
        let (mut out, mut r) = (Vec::new(), NoResolver);
        let req = b"GET / HTTP/1.1\r\nHost: b\r\n\r\n";
        let ev = event(sk, 100, 3, DIR_INGRESS, ROLE_SERVER, server, req.len());
        t.on_data(&ev, req, &[], &mut r, &mut out);
        match &t.take_links()[..] {
            [LinkEvent::Http1Request { peer_linkable, .. }] => *peer_linkable,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_servers_whose_client_connected_traced_wait_for_a_peer() {
        let mut t = table();
        let server = tuple([127, 0, 0, 1], 80, [127, 0, 0, 1], 40000);
        let client = tuple([127, 0, 0, 1], 40000, [127, 0, 0, 1], 80);
        // An untraced client (a load generator, a health checker): nothing to wait for.
        assert!(!server_peer_linkable(&mut t, 7, server));
        t.on_close(7, TCP_CLOSE as u32, 150, &mut Vec::new());
        // The same tuple again, now connected by a traced process.
        t.on_connect(&connect(20, client));
        assert!(server_peer_linkable(&mut t, 8, server));
        t.on_close(8, TCP_CLOSE as u32, 160, &mut Vec::new());
        // Another host's client on the same ports is not that client.
        let remote = tuple([127, 0, 0, 1], 80, [10, 0, 0, 9], 40000);
        assert!(!server_peer_linkable(&mut t, 9, remote));
        // The client closed: a later connection on the same tuple is not its.
        t.on_close(20, TCP_CLOSE as u32, 170, &mut Vec::new());
        assert!(!server_peer_linkable(&mut t, 10, server));
        assert_eq!(t.stats().traced_connects, 1);
        assert!(t.traced_clients.is_empty() && t.traced_client_socks.is_empty());
        // A client whose close never came is forgotten after a while all the same.
        t.on_connect(&connect(21, client));
        t.expire_traced_clients(1 + TRACED_CLIENT_TTL_NS);
        assert_eq!(t.traced_client_socks.len(), 1);
        t.expire_traced_clients(2 + TRACED_CLIENT_TTL_NS);
        assert!(t.traced_clients.is_empty() && t.traced_client_socks.is_empty());
    }

    #[test]
    fn server_turns_carry_the_kernel_trace_and_end_at_the_response() {
        let mut t = table();
        let (mut out, mut r) = (Vec::new(), NoResolver);
        let tp = tuple([127, 0, 0, 1], 80, [127, 0, 0, 1], 40000);
        t.on_connect(&connect(
            6,
            tuple([127, 0, 0, 1], 40000, [127, 0, 0, 1], 80),
        ));
        let req = b"GET /a HTTP/1.1\r\nHost: b\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n";
        let mut ev = event(7, 100, 3, DIR_INGRESS, ROLE_SERVER, tp, req.len());
        ev.ctx_flags = CTX_SERVER_REQUEST | socktrace_common::CTX_FROM_HEADER;
        ev.trace_id = [0x4b; 16];
        t.on_data(&ev, req, &[], &mut r, &mut out);
        let resp = b"HTTP/1.1 204 No Content\r\n\r\n";
        let ev2 = event(7, 110, 3, DIR_EGRESS, ROLE_SERVER, tp, resp.len());
        t.on_data(&ev2, resp, &[], &mut r, &mut out);
        let links = t.take_links();
        match &links[..] {
            [
                LinkEvent::Http1Request {
                    side: Side::Server,
                    peer_linkable: true,
                    kernel_trace: Some(k),
                    header: Some(h),
                    turn: 0,
                    ..
                },
                LinkEvent::ServerResponse { sk: 7, tid: 3 },
            ] => {
                assert_eq!(*k, TraceId([0x4b; 16]));
                assert_eq!(h.parent_id.to_string(), "00f067aa0ba902b7");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].link.start_ns, 100);
    }

    #[test]
    fn http1_parser_counters_outlive_their_connections() {
        let mut t = table();
        let (mut out, mut r) = (Vec::new(), NoResolver);
        let tp = tuple([10, 0, 0, 1], 80, [10, 0, 0, 2], 40000);
        let req = b"GET /a HTTP/1.1\r\nHost: b\r\n\r\n";
        t.on_data(
            &event(7, 100, 3, DIR_INGRESS, ROLE_SERVER, tp, req.len()),
            req,
            &[],
            &mut r,
            &mut out,
        );
        let junk = b"\x00\x01 not a response head at all\r\n\r\n";
        t.on_data(
            &event(7, 110, 3, DIR_EGRESS, ROLE_SERVER, tp, junk.len()),
            junk,
            &[],
            &mut r,
            &mut out,
        );
        let live = t.http1_stats();
        assert!(live.invalid_heads + live.resyncs > 0, "{live:?}");
        t.on_close(7, TCP_CLOSE as u32, 200, &mut out);
        assert!(t.is_empty());
        assert_eq!(t.http1_stats(), live);
    }
}
