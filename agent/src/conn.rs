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
    AF_INET, AF_INET6, ConnTuple, DIR_INGRESS, DataEvent, ROLE_CLIENT, ROLE_SERVER, TCP_CLOSE,
};

use crate::protocol::{
    Detect, Segment,
    http1::{self, Exchange, Http1Conn},
    postgres::{self, PgConn, Statement},
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
    pub http: bool,
    pub postgres: bool,
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
            protocols: Protocols {
                http: true,
                postgres: true,
            },
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
    /// Data events in the response direction before any request was seen (joined mid-exchange).
    pub skipped_mid_stream: u64,
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
}

enum State {
    Detecting { tries: u8 },
    Http1(Box<Http1Conn>),
    Postgres(Box<PgConn>),
    Ignored,
}

struct Conn {
    pid: u32,
    comm: String,
    role: Option<Role>,
    local: SocketAddr,
    peer: SocketAddr,
    state: State,
    last_seen_ns: u64,
}

/// Events in the request direction tried before a connection is declared not ours.
const DETECT_TRIES: u8 = 4;

pub struct ConnTable {
    config: ConnConfig,
    conns: HashMap<u64, Conn>,
    stats: ConnStats,
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
        }
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
    pub fn http1_stats(&self) -> http1::Http1Stats {
        let mut s = http1::Http1Stats::default();
        for c in self.conns.values() {
            if let State::Http1(h) = &c.state {
                let h = h.stats();
                // Parser counters saturate (a huge claimed gap can), so the sum must too.
                s.resyncs = s.resyncs.saturating_add(h.resyncs);
                s.bytes_skipped = s.bytes_skipped.saturating_add(h.bytes_skipped);
                s.invalid_heads = s.invalid_heads.saturating_add(h.invalid_heads);
                s.unanswered_requests_dropped = s
                    .unanswered_requests_dropped
                    .saturating_add(h.unanswered_requests_dropped);
            }
        }
        s
    }

    /// One socket read or write.
    pub fn on_data(
        &mut self,
        ev: &DataEvent,
        payload: &[u8],
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
            if !protocols.http && !protocols.postgres {
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
            let detected = if protocols.http && http1::detect_request(payload) == Detect::Yes {
                Some(State::Http1(Box::default()))
            } else if protocols.postgres && postgres::detect_frontend(payload) == Detect::Yes {
                Some(State::Postgres(Box::default()))
            } else {
                None
            };
            match detected {
                Some(state) => {
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
        let seg = Segment {
            ts_ns: ev.ts_ns,
            data: Bytes::copy_from_slice(payload),
            len: ev.len,
        };
        let done = match &mut conn.state {
            State::Http1(h) => {
                if is_request {
                    h.push_request(seg);
                } else {
                    h.push_response(seg);
                }
                h.upgraded()
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
        Self::drain(conn, out);
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

    /// The kernel saw a traced socket change state; at `TCP_CLOSE` the connection is finished.
    pub fn on_close(&mut self, sk: u64, new_state: u32, ts_ns: u64, out: &mut Vec<ConnExchange>) {
        if new_state as i32 != TCP_CLOSE {
            return;
        }
        if let Some(mut conn) = self.conns.remove(&sk) {
            self.stats.closed += 1;
            Self::finish(&mut conn, ts_ns, out);
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
                Self::finish(&mut conn, ts, out);
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
            Self::finish(&mut conn, ts, out);
        }
    }

    fn finish(conn: &mut Conn, ts_ns: u64, out: &mut Vec<ConnExchange>) {
        match &mut conn.state {
            State::Http1(h) => h.close(ts_ns),
            State::Postgres(pg) => pg.close(ts_ns),
            State::Detecting { .. } | State::Ignored => return,
        }
        Self::drain(conn, out);
    }

    fn drain(conn: &mut Conn, out: &mut Vec<ConnExchange>) {
        let Some(role) = conn.role else {
            return;
        };
        let payloads: Vec<Payload> = match &mut conn.state {
            State::Http1(h) => h.take_exchanges().into_iter().map(Payload::Http).collect(),
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
            State::Detecting { .. } | State::Ignored => return,
        };
        for payload in payloads {
            out.push(ConnExchange {
                pid: conn.pid,
                comm: conn.comm.clone(),
                role,
                local: conn.local,
                peer: conn.peer,
                payload,
            });
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
        Some(Conn {
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
