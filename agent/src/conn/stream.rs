//! One connection's byte streams: which protocol they carry, the turns of the conversation, and
//! feeding each direction to the protocol's session.

use std::net::SocketAddr;

use socktrace_common::{CTX_GO, CTX_SERVER_REQUEST, DATA_TLS, DIR_INGRESS, DataEvent};

use super::{ConnExchange, Role};
use crate::{
    protocol::{Enabled, Exchange, Next, Pairing, Protocol, REGISTRY, Segment, Sender, Session},
    trace::{
        context::scan_http1_context,
        link::{Actor, ExchangeLink, LinkEvent, PeerDisc, Side},
        span::{SpanId, TraceId},
    },
};

/// Events tried before a connection is declared not ours.
const DETECT_TRIES: u8 = 4;
/// A run of this direction's bytes shorter than this, in fewer than [`MAX_HELD`] events, is no
/// try yet: a client writing its request a byte at a time ("G", "E", "T", " ", "/") has shown
/// too little to be judged, and holding its few bytes costs little.
const MIN_DETECT_BYTES: usize = 16;
/// Events held while detecting (a protocol's first message may come in several reads: MySQL's
/// client reads the 4-byte packet header, then the body), and their bytes at most: the oldest
/// go first, so a connection that never shows a protocol holds little.
const MAX_HELD: usize = 8;
const MAX_HELD_BYTES: usize = 2048;

/// One captured I/O: the kernel's event and its bytes.
pub(super) type Held = (DataEvent, Segment);

pub(super) enum State {
    Detecting {
        tries: u8,
        /// The I/O seen so far, oldest first: detection looks at the trailing run of one
        /// direction as one byte stream, and a detected protocol gets that run.
        held: Vec<Held>,
    },
    Active {
        protocol: &'static dyn Protocol,
        session: Box<dyn Session>,
    },
    Ignored,
}

/// What detection made of one event's bytes.
#[derive(Debug)]
pub(super) enum Detection {
    /// A protocol: parse from `replay` on (the I/O that showed it, in order; older I/O held is
    /// dropped: the other direction's, from before a conversation the agent can follow).
    /// `mid_stream`: only its weak detection matched.
    Found {
        mid_stream: bool,
        full_capture: bool,
        replay: Vec<Held>,
    },
    /// Bytes of the answering side before any request: held, detection goes on.
    Skipped,
    /// Not yet; the next event of the connection tries again.
    NotYet,
    /// Nothing matched for long enough, or nothing is enabled: the connection is ignored.
    GaveUp,
}

pub(super) struct Conn {
    pub sk: u64,
    pub pid: u32,
    pub comm: String,
    pub role: Option<Role>,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub state: State,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// The kernel saw the connection established, so both ends count requests from the start.
    pub tuple_known: bool,
    /// The other end may be traced: a client, or a server whose client connected from a traced
    /// process (an `EVENT_CONNECT` for the mirrored tuple came first).
    pub peer_traced: bool,
    /// Request bytes seen since the last response bytes.
    turn_active: bool,
    /// Turns begun so far (request bytes after response bytes, or the first).
    turns: u64,
    /// Exchanges paired by sequence finished so far.
    sequence: u64,
    /// The kernel lost records while this connection was open (ring buffer full): what it
    /// holds unanswered at its end may be answered in what was lost.
    pub lost: bool,
    /// The bytes come from a TLS library (`DATA_TLS`), not from the socket.
    pub tls: bool,
    /// The socket's first bytes were a TLS record (a handshake the library's plaintext may follow).
    pub tls_records: bool,
}

impl Conn {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        ev: &DataEvent,
        comm: String,
        role: Option<Role>,
        local: SocketAddr,
        peer: SocketAddr,
        state: State,
        peer_traced: bool,
    ) -> Self {
        Self {
            sk: ev.sk,
            pid: ev.pid,
            comm,
            role,
            local,
            peer,
            state,
            first_seen_ns: ev.ts_ns,
            last_seen_ns: ev.ts_ns,
            tuple_known: ev.tuple_known != 0,
            peer_traced,
            turn_active: false,
            turns: 0,
            sequence: 0,
            lost: false,
            tls: ev.ctx_flags & DATA_TLS != 0,
            tls_records: false,
        }
    }

    /// Both ends of this connection may be traced on this host, and the kernel saw it from its
    /// start, so requests can be paired with the other end's by counting.
    fn peer_linkable(&self) -> bool {
        let (l, p) = (
            self.local.ip().to_canonical(),
            self.peer.ip().to_canonical(),
        );
        self.tuple_known && self.peer_traced && (p.is_loopback() || p == l)
    }

    /// Who wrote bytes read (`ingress`) or written by the traced process, once the role is known.
    pub(super) fn sender(&self, ingress: bool) -> Option<Sender> {
        self.role.map(|role| match (role, ingress) {
            (Role::Server, true) | (Role::Client, false) => Sender::Client,
            _ => Sender::Server,
        })
    }

    /// Tries the enabled protocols on the first bytes of one direction: this I/O and the
    /// ones of the same direction just before it, as one stream.
    pub(super) fn detect(
        &mut self,
        ev: &DataEvent,
        seg: Segment,
        ingress: bool,
        enabled: &Enabled,
    ) -> Detection {
        let known = self.sender(ingress);
        let State::Detecting { tries, held } = &mut self.state else {
            return Detection::GaveUp;
        };
        let wanted = || REGISTRY.iter().copied().filter(|p| p.wanted(enabled));
        if wanted().next().is_none() {
            self.state = State::Ignored;
            return Detection::GaveUp;
        }
        held.push((*ev, seg));
        while held.len() > 1
            && (held.len() > MAX_HELD
                || held
                    .iter()
                    .map(|h| h.1.data.len() + h.1.tail.len())
                    .sum::<usize>()
                    > MAX_HELD_BYTES)
        {
            held.remove(0);
        }
        // The trailing run of this direction, from after the last I/O whose bytes were not
        // all captured (a gap would join unrelated bytes).
        let same = |h: &Held| (h.0.direction == DIR_INGRESS) == ingress;
        let mut start = held.len() - 1;
        while start > 0
            && same(&held[start - 1])
            && held[start - 1].1.len == held[start - 1].1.data.len() as u64
        {
            start -= 1;
        }
        let first: Vec<u8> = held[start..]
            .iter()
            .flat_map(|h| h.1.data.iter().copied())
            .collect();
        let found = wanted()
            .find_map(|p| p.detect(&first, enabled).map(|d| (p, d, false)))
            .or_else(|| {
                wanted().find_map(|p| p.detect_mid_stream(&first, enabled).map(|d| (p, d, true)))
            });
        match found {
            Some((protocol, detected, mid_stream))
                if known.is_none_or(|s| s == detected.sender) =>
            {
                if self.role.is_none() {
                    // The bytes' writer tells the traced process's role.
                    self.role = Some(match (detected.sender, ingress) {
                        (Sender::Client, true) | (Sender::Server, false) => Role::Server,
                        _ => Role::Client,
                    });
                }
                let replay = held.split_off(start);
                self.state = State::Active {
                    protocol,
                    session: detected.session,
                };
                Detection::Found {
                    mid_stream,
                    full_capture: protocol.full_capture(),
                    replay,
                }
            }
            // The answering side first: the agent joined mid-exchange, or its protocol speaks
            // first and its message is not complete yet. Wait for more.
            _ if known == Some(Sender::Server) => Detection::Skipped,
            _ if first.len() < MIN_DETECT_BYTES && held.len() - start < MAX_HELD => {
                Detection::NotYet
            }
            _ => {
                *tries += 1;
                if *tries >= DETECT_TRIES {
                    self.state = State::Ignored;
                    Detection::GaveUp
                } else {
                    Detection::NotYet
                }
            }
        }
    }

    /// Turns and the link events they give: the first request bytes of a turn of a protocol
    /// carrying context in-band (HTTP/1) begin a request context; client I/O of other protocols
    /// may belong to a served request; response bytes on a server connection end the serving.
    /// `injected`: the ids the kernel put into this write.
    pub(super) fn track_turn(
        &mut self,
        ev: &DataEvent,
        payload: &[u8],
        from: Sender,
        injected: Option<(TraceId, SpanId)>,
        links: &mut Vec<LinkEvent>,
    ) {
        let Some(role) = self.role else {
            return;
        };
        let in_band = match &self.state {
            State::Active { session, .. } => session.context_in_turns(),
            _ => false,
        };
        let key = (ev.sk, ev.ts_ns);
        let actor = if ev.ctx_flags & CTX_GO != 0 {
            Actor::Go((ev.link_sk != 0).then_some((ev.link_sk, ev.link_ts)))
        } else {
            Actor::Thread(ev.tid)
        };
        if from == Sender::Server {
            self.turn_active = false;
            if role == Role::Server {
                links.push(LinkEvent::ServerResponse { sk: ev.sk, actor });
            }
            return;
        }
        let new_turn = !self.turn_active;
        if new_turn {
            self.turn_active = true;
            self.turns += 1;
        }
        // The kernel put a header into this write: it begins a request even mid-turn (pipelined).
        if in_band && (new_turn || injected.is_some()) {
            let kernel_trace = (role == Role::Server && ev.ctx_flags & CTX_SERVER_REQUEST != 0)
                .then_some(TraceId(ev.trace_id))
                .filter(TraceId::is_valid);
            links.push(LinkEvent::Http1Request {
                key,
                actor,
                side: side(role),
                local: self.local,
                peer: self.peer,
                peer_linkable: self.peer_linkable(),
                turn: self.turns - 1,
                header: scan_http1_context(payload),
                kernel_trace,
                injected,
            });
        } else if !in_band && role == Role::Client {
            links.push(LinkEvent::ClientIo { key, actor });
        }
    }

    /// Feeds one segment to the session.
    pub(super) fn push(&mut self, from: Sender, seg: Segment) {
        if let State::Active { session, .. } = &mut self.state {
            session.push(from, seg);
        }
    }

    /// Finishes the session (the connection is gone).
    pub(super) fn close(&mut self, ts_ns: u64) {
        if let State::Active { session, .. } = &mut self.state {
            session.close(ts_ns);
        }
    }

    /// Moves the session's finished exchanges to `out` with what linking needs; returns how
    /// the connection goes on.
    pub(super) fn drain(&mut self, enabled: &Enabled, out: &mut Vec<ConnExchange>) -> Next {
        let (State::Active { session, .. }, Some(role)) = (&mut self.state, self.role) else {
            return Next::Continue;
        };
        let mut finished: Vec<Box<dyn Exchange>> = Vec::new();
        let next = session.drain(enabled, &mut finished);
        for exchange in finished {
            self.hand_over(role, exchange, out);
        }
        next
    }

    /// One finished exchange of this connection, with what linking needs.
    pub(super) fn hand_over(
        &mut self,
        role: Role,
        exchange: Box<dyn Exchange>,
        out: &mut Vec<ConnExchange>,
    ) {
        let pairing = exchange.pairing();
        let disc = match pairing {
            Pairing::Turn => None,
            Pairing::Stream(id) => Some(PeerDisc::Stream(id)),
            Pairing::Sequence => {
                self.sequence += 1;
                Some(PeerDisc::Sequence(self.sequence - 1))
            }
        };
        let link = ExchangeLink {
            sk: self.sk,
            start_ns: exchange.start_ns(),
            side: side(role),
            local: self.local,
            peer: self.peer,
            http1: pairing == Pairing::Turn,
            peer_linkable: self.peer_linkable(),
            disc,
        };
        out.push(ConnExchange {
            link,
            pid: self.pid,
            comm: self.comm.clone(),
            role,
            local: self.local,
            peer: self.peer,
            exchange,
            tls: self.tls,
        });
    }
}

fn side(role: Role) -> Side {
    match role {
        Role::Server => Side::Server,
        Role::Client => Side::Client,
    }
}
