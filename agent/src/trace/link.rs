//! Linking spans into whole traces without any help from the traced code.
//!
//! Three relations are inferred, each from something the kernel records for every socket I/O:
//!
//! - **Inside a process**: a thread that read an HTTP/1 request on a server connection is
//!   *serving* it until it writes on that connection again (the response). A client request the
//!   same thread sends meanwhile (HTTP/1, HTTP/2, gRPC, PostgreSQL) is a child of that request.
//!   This holds for thread-per-request servers and thread pools; it cannot hold where one thread
//!   multiplexes many requests (event loops) or where work moves to other threads.
//! - **Event loops**: a thread seen reading a request while another is unanswered serves many
//!   at once, and which of them a call belongs to cannot be told from the sockets. Such a call
//!   gets no parent; it gets span links to every request the thread had read and not answered
//!   when the call began (at most [`MAX_CANDIDATES`]), marked with [`LINK_REASON`]. Even one
//!   request in flight is only a candidate there: a task left running by an answered request,
//!   or a timer, may make the call.
//! - **Both ends on one host**: when both ends of a connection are traced here, the server span
//!   of its n-th request is the child of the client span of its n-th request (HTTP/1 turns,
//!   HTTP/2 stream ids, PostgreSQL statements), with or without a header.
//! - **Headers**: a valid `traceparent` in the request, including the one the kernel injected.
//!
//! Ids are assigned when a request *begins* (its first bytes), so children made while it is
//! served can reference it at once. A context whose parent is not known yet (the peer's write is
//! reported a few microseconds after the server's read, or a parent is itself waiting) is
//! *pending*; spans on pending contexts are held until it resolves or a deadline passes. All
//! state is bounded in entries and age, and every drop is counted.

use std::net::SocketAddr;

use super::{
    context::HeaderContext,
    span::{KeyValue, Span, SpanId, SpanLink, TraceId, Value},
};
use crate::{FastMap, FastSet};

/// How long a thread seen multiplexing requests is taken for an event loop (its calls get no
/// parent) after it last read a request.
const MULTIPLEXING_TTL_NS: u64 = 60_000_000_000;

/// Most requests kept in flight per event-loop thread (candidates of its calls); beyond it the
/// oldest is dropped (counted).
pub const MAX_CANDIDATES: usize = 32;

/// Attribute of a span linked to candidate parents instead of having one: why.
pub const LINK_REASON: &str = "socktrace.link.reason";
/// [`LINK_REASON`] of a call an event loop made while serving requests (see the module doc).
pub const AMBIGUOUS_EVENT_LOOP: &str = "ambiguous_event_loop";
/// Attribute: how many candidate links the span carries.
pub const LINK_CANDIDATES: &str = "socktrace.link.candidates";

/// A request's context key: the socket and the timestamp of the I/O that began the request.
pub type CtxKey = (u64, u64);

/// Which request of a connection, counted the same way on both of its ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerDisc {
    /// HTTP/1: the n-th turn (request bytes after response bytes) of the connection.
    Turn(u64),
    /// HTTP/2: the stream id.
    Stream(u32),
    /// One request at a time (PostgreSQL, ...): the n-th exchange of the connection.
    Sequence(u64),
}

/// One request as its *client* sees it: (client address, server address, which request).
pub type PeerKey = (SocketAddr, SocketAddr, PeerDisc);

/// Who made an I/O, as far as linking is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Actor {
    /// A thread: it serves the request it read last until it answers it.
    Thread(u32),
    /// A goroutine of a Go program the kernel follows: threads mean nothing there, and the
    /// kernel names the request the I/O was made for (a client write), if any.
    Go(Option<CtxKey>),
}

/// Role of the traced side of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// What the connection layer reports as it sees I/O, in kernel order.
#[derive(Debug)]
pub enum LinkEvent {
    /// The first bytes of a request on an HTTP/1 connection.
    Http1Request {
        key: CtxKey,
        actor: Actor,
        side: Side,
        local: SocketAddr,
        peer: SocketAddr,
        /// Both ends may be traced here and the connection was seen from its start.
        peer_linkable: bool,
        turn: u64,
        /// `traceparent`/`tracestate` found in the request's first bytes.
        header: Option<HeaderContext>,
        /// Server: the trace id the kernel gave this request (used in headers it injects).
        kernel_trace: Option<TraceId>,
        /// Client: ids the kernel injected into this request's `traceparent`.
        injected: Option<(TraceId, SpanId)>,
    },
    /// Request bytes written on a client connection of another protocol (HTTP/2, PostgreSQL).
    ClientIo { key: CtxKey, actor: Actor },
    /// Response bytes written on a server connection: the writing thread is no longer serving.
    ServerResponse { sk: u64, actor: Actor },
    /// The kernel put a `traceparent` into the HEADERS frame opening HTTP/2 stream `stream` on
    /// client connection `sk`: that stream's client span takes these ids.
    Http2Injected {
        sk: u64,
        stream: u32,
        ts_ns: u64,
        ids: (TraceId, SpanId),
    },
}

/// How long an HTTP/2 injection waits for its stream's span (a long stream takes long).
const H2_INJECTION_TTL_NS: u64 = 3_600_000_000_000;
/// Most HTTP/2 injections waiting for their spans.
const MAX_H2_INJECTIONS: usize = 65536;

/// What the connection layer knows about a finished exchange, for linking its span.
#[derive(Clone, Copy, Debug)]
pub struct ExchangeLink {
    pub sk: u64,
    /// Timestamp of the I/O that began the request.
    pub start_ns: u64,
    pub side: Side,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub http1: bool,
    pub peer_linkable: bool,
    pub disc: Option<PeerDisc>,
}

/// Bounds and waits. Times are kernel monotonic nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct LinkConfig {
    /// How long a request waits for its same-host client's context to be reported.
    pub peer_wait_ns: u64,
    /// How long a finished span may be held for its parent.
    pub max_hold_ns: u64,
    /// Most spans held at once; the oldest is released beyond it.
    pub max_held: usize,
    /// Most request contexts kept; the oldest is dropped beyond it.
    pub max_contexts: usize,
    /// Age after which a request context is forgotten (a request served longer than this loses
    /// its children's links).
    pub context_ttl_ns: u64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            peer_wait_ns: 200_000_000,
            max_hold_ns: 10_000_000_000,
            max_held: 16_384,
            max_contexts: 65_536,
            context_ttl_ns: 300_000_000_000,
        }
    }
}

crate::counters! {
    pub struct LinkStats {
        /// Client spans made a child of the request their thread was serving.
        thread_links,
        /// Client spans of Go programs made a child of the request their goroutine works for.
        goroutine_links,
        /// Server spans made a child of their same-host client span.
        peer_links,
        /// Client spans whose ids came from a kernel-injected header.
        injected,
        /// Spans held for a parent (at least once).
        held,
        /// Held spans released without their parent (deadline or memory bound).
        hold_released,
        /// Requests that waited in vain for a same-host client context.
        peer_timeouts,
        /// Contexts dropped by the entry or age bound.
        contexts_dropped,
        /// Injected trace id differed from the parent's trace (the header wins; parent kept).
        conflicts,
        /// Times a thread read a request while another was unanswered: its calls get no parent.
        multiplexing_threads,
        /// Event-loop calls given links to the requests in flight instead of a parent.
        ambiguous_calls,
        /// Requests in flight on an event loop forgotten beyond the per-thread bound.
        candidates_dropped,
    }
}

/// The ids a resolved context hands to its span and its children.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Resolved {
    trace_id: TraceId,
    parent: Option<SpanId>,
    trace_state: String,
    /// The sampled flag the trace arrived with on this node (see [`Span::parent_sampled`]).
    sampled: Option<bool>,
}

#[derive(Clone, Debug)]
enum State {
    Resolved(Resolved),
    /// Child of another context, once that one is resolved.
    AwaitCtx(CtxKey),
    /// Child of a same-host client request not reported yet.
    AwaitPeer(PeerKey, u64),
}

#[derive(Debug)]
struct Ctx {
    span_id: SpanId,
    created_ns: u64,
    state: State,
    /// Used when the awaited parent never comes: header, else kernel trace, else a new trace.
    fallback: Option<HeaderContext>,
    kernel_trace: Option<TraceId>,
    /// The trace id written into an injected header: it must stay the span's trace.
    forced_trace: Option<TraceId>,
    /// Already given to a span (a second exchange in the same turn gets its own ids).
    claimed: bool,
    /// A client request of an event loop: its candidate parents (see [`Candidates`]).
    candidates: Option<u64>,
}

/// A thread seen reading a request while another was unanswered (an event loop).
#[derive(Debug, Default)]
struct EventLoop {
    /// When it last read a request; it is taken for an event loop for `MULTIPLEXING_TTL_NS`.
    seen_ns: u64,
    /// Requests it read and has not answered yet, oldest first: the candidates of its calls.
    in_flight: Vec<CtxKey>,
    /// The candidate set of calls begun since `in_flight` last changed, shared by them.
    current: Option<u64>,
}

/// The requests an event loop had in flight when a call began, in the order it read them,
/// with their final ids once known (a request may still wait for its same-host client). Ids are
/// copied as soon as a candidate resolves, so a candidate answered and forgotten before the call
/// ends is still linked.
#[derive(Debug)]
struct Candidates {
    slots: Vec<(CtxKey, Option<SpanLink>)>,
}

impl Candidates {
    fn pending(&self) -> impl Iterator<Item = CtxKey> + '_ {
        self.slots
            .iter()
            .filter(|(_, l)| l.is_none())
            .map(|(k, _)| *k)
    }
}

/// Something that can resolve a peer: the client's context, or, once the client span is final,
/// the context its children (the server side) take.
#[derive(Clone, Debug)]
enum PeerRef {
    Ctx(CtxKey),
    Child(Resolved),
}

/// What a held span waits for.
#[derive(Clone, Debug)]
enum Wait {
    Ctx(CtxKey),
    Peer(PeerKey),
    /// Its own ids are final; the ids of candidates it links to are not (see [`Candidates`]).
    Links(u64),
}

#[derive(Debug)]
struct Held {
    span: Span,
    /// The span's own ids come from this context (HTTP/1 requests) or are its own.
    own: Option<CtxKey>,
    wait: Wait,
    /// Registers the span's final ids for its same-host server once emitted.
    register: Option<PeerKey>,
    /// Candidate parents it links to once its own ids are final.
    links: Option<u64>,
    /// The trace id the kernel wrote into the request's header: it stays the span's trace.
    forced: Option<TraceId>,
    deadline_ns: u64,
}

/// Keeps the inferred relations and finishes spans with their final ids.
pub struct Linker {
    config: LinkConfig,
    stats: LinkStats,
    ctxs: FastMap<CtxKey, Ctx>,
    /// Thread id -> the request it is serving.
    serving: FastMap<u32, CtxKey>,
    /// Threads seen reading a request while another was unanswered (event loops): which
    /// request their calls belong to cannot be told, so they get candidate links, no parent.
    multiplexing: FastMap<u32, EventLoop>,
    /// Client I/O of non-HTTP/1 connections made while serving: key -> the served request.
    io_parents: FastMap<CtxKey, (CtxKey, u64, Actor)>,
    /// Client I/O of non-HTTP/1 connections made by an event loop: key -> its candidates.
    io_candidates: FastMap<CtxKey, u64>,
    candidates: FastMap<u64, Candidates>,
    next_candidates: u64,
    /// Candidates whose ids are not final yet -> the candidate sets to complete.
    candidate_waiters: FastMap<CtxKey, Vec<u64>>,
    held_by_links: FastMap<u64, Vec<u64>>,
    peers: FastMap<PeerKey, (PeerRef, u64)>,
    ctx_waiters: FastMap<CtxKey, Vec<CtxKey>>,
    peer_waiters: FastMap<PeerKey, Vec<CtxKey>>,
    /// Contexts waiting for a same-host peer, with their deadlines.
    awaiting_peer: FastMap<CtxKey, u64>,
    held: FastMap<u64, Held>,
    held_by_ctx: FastMap<CtxKey, Vec<u64>>,
    held_by_peer: FastMap<PeerKey, Vec<u64>>,
    /// (socket, stream) -> ids the kernel injected into that HTTP/2 stream, and when.
    h2_injected: FastMap<(u64, u32), (TraceId, SpanId, u64)>,
    next_held: u64,
    /// Finished spans, in the order they became final.
    ready: Vec<Span>,
}

impl Resolved {
    /// The context of a child of the span with id `span_id` that has this context.
    fn child(&self, span_id: SpanId) -> Resolved {
        Resolved {
            trace_id: self.trace_id,
            parent: Some(span_id),
            trace_state: self.trace_state.clone(),
            sampled: self.sampled,
        }
    }
}

fn new_trace(fallback: Option<&HeaderContext>, kernel: Option<TraceId>) -> Resolved {
    match (fallback, kernel) {
        (Some(h), _) => Resolved {
            trace_id: h.trace_id,
            parent: Some(h.parent_id),
            trace_state: h.trace_state.clone(),
            sampled: Some(h.sampled),
        },
        (None, Some(t)) => Resolved {
            trace_id: t,
            parent: None,
            trace_state: String::new(),
            sampled: None,
        },
        (None, None) => Resolved {
            trace_id: TraceId::random(),
            parent: None,
            trace_state: String::new(),
            sampled: None,
        },
    }
}

fn apply(span: &mut Span, span_id: Option<SpanId>, r: &Resolved) {
    if let Some(id) = span_id {
        span.span_id = id;
    }
    span.trace_id = r.trace_id;
    span.parent_span_id = r.parent;
    span.trace_state = r.trace_state.clone();
    span.parent_sampled = r.sampled;
}

/// The span's context as its builder derived it from headers (a parent means a valid header).
fn span_header(span: &Span) -> Option<HeaderContext> {
    span.parent_span_id.map(|p| HeaderContext {
        trace_id: span.trace_id,
        parent_id: p,
        trace_state: span.trace_state.clone(),
        sampled: span.parent_sampled.unwrap_or(true),
    })
}

impl Linker {
    pub fn new(config: LinkConfig) -> Self {
        Self {
            config,
            stats: LinkStats::default(),
            ctxs: FastMap::default(),
            serving: FastMap::default(),
            multiplexing: FastMap::default(),
            io_parents: FastMap::default(),
            io_candidates: FastMap::default(),
            candidates: FastMap::default(),
            next_candidates: 0,
            candidate_waiters: FastMap::default(),
            held_by_links: FastMap::default(),
            peers: FastMap::default(),
            ctx_waiters: FastMap::default(),
            peer_waiters: FastMap::default(),
            awaiting_peer: FastMap::default(),
            held: FastMap::default(),
            held_by_ctx: FastMap::default(),
            held_by_peer: FastMap::default(),
            h2_injected: FastMap::default(),
            next_held: 0,
            ready: Vec::new(),
        }
    }

    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Spans held for a parent right now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Spans whose ids are final, in order.
    pub fn take_ready(&mut self) -> Vec<Span> {
        std::mem::take(&mut self.ready)
    }

    /// The resolved ids of a context, if it is resolved.
    fn resolved(&self, key: &CtxKey) -> Option<(SpanId, Resolved)> {
        let c = self.ctxs.get(key)?;
        match &c.state {
            State::Resolved(r) => Some((c.span_id, r.clone())),
            _ => None,
        }
    }

    pub fn on_event(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::Http1Request {
                key,
                actor,
                side,
                local,
                peer,
                peer_linkable,
                turn,
                header,
                kernel_trace,
                injected,
            } => {
                let (now, span_id) = (key.1, injected.map(|i| i.1).unwrap_or_else(SpanId::random));
                let mut own = new_trace(header.as_ref(), kernel_trace);
                if let Some((forced, _)) = injected {
                    own.trace_id = forced;
                }
                let mut ctx = Ctx {
                    span_id,
                    created_ns: now,
                    state: State::Resolved(own),
                    fallback: header.clone(),
                    kernel_trace,
                    forced_trace: injected.map(|i| i.0),
                    claimed: false,
                    candidates: None,
                };
                match side {
                    Side::Server => {
                        let pk = (peer, local, PeerDisc::Turn(turn));
                        if peer_linkable {
                            ctx.state = match self.peers.get(&pk).map(|p| p.0.clone()) {
                                Some(PeerRef::Ctx(parent)) => {
                                    self.adopt_kernel_trace(kernel_trace, parent);
                                    State::AwaitCtx(parent)
                                }
                                Some(PeerRef::Child(r)) => State::Resolved(r),
                                None => State::AwaitPeer(pk, now + self.config.peer_wait_ns),
                            };
                            if !matches!(ctx.state, State::AwaitPeer(..)) {
                                self.stats.peer_links += 1;
                            }
                        }
                        self.insert(key, ctx);
                        let Actor::Thread(tid) = actor else {
                            self.settle(key);
                            return;
                        };
                        let busy = self
                            .serving
                            .get(&tid)
                            .is_some_and(|k| k.0 != key.0 && self.ctxs.contains_key(k));
                        if busy || self.multiplexing.contains_key(&tid) {
                            // The request it was serving is still unanswered: a candidate too.
                            let unanswered = self.serving.remove(&tid).filter(|_| busy);
                            if busy {
                                self.stats.multiplexing_threads += 1;
                            }
                            let lp = self.multiplexing.entry(tid).or_default();
                            lp.seen_ns = now;
                            lp.current = None;
                            // One request at a time per HTTP/1 connection: a new one on the same
                            // connection means the previous one was answered.
                            lp.in_flight.retain(|k| k.0 != key.0);
                            lp.in_flight.extend(unanswered.into_iter().chain([key]));
                            if lp.in_flight.len() > MAX_CANDIDATES {
                                let n = lp.in_flight.len() - MAX_CANDIDATES;
                                lp.in_flight.drain(..n);
                                self.stats.candidates_dropped += n as u64;
                            }
                        } else {
                            self.serving.insert(tid, key);
                        }
                    }
                    Side::Client => {
                        // With a header the ids are the header's span (a process that traces
                        // itself, see `instrumented`): the kernel never injects next to one.
                        if injected.is_some() && header.is_none() {
                            self.stats.injected += 1;
                        }
                        if header.is_none()
                            && let Some(parent) = self.parent_of(actor)
                        {
                            ctx.state = State::AwaitCtx(parent);
                        } else if header.is_none()
                            && let Actor::Thread(tid) = actor
                        {
                            ctx.candidates = self.call_candidates(tid);
                        }
                        self.insert(key, ctx);
                        let pk = (local, peer, PeerDisc::Turn(turn));
                        self.peers.insert(pk, (PeerRef::Ctx(key), now));
                        self.settle(key);
                        for server in self.peer_waiters.remove(&pk).unwrap_or_default() {
                            self.peer_arrived(server, &pk);
                        }
                        return;
                    }
                }
                self.settle(key);
            }
            LinkEvent::ClientIo { key, actor } => {
                if let Some(parent) = self.served_by(actor) {
                    self.io_parents.insert(key, (parent, key.1, actor));
                } else if let Actor::Thread(tid) = actor
                    && let Some(set) = self.call_candidates(tid)
                {
                    self.io_candidates.insert(key, set);
                }
            }
            LinkEvent::Http2Injected {
                sk,
                stream,
                ts_ns,
                ids,
            } => {
                if self.h2_injected.len() >= MAX_H2_INJECTIONS {
                    let cutoff = ts_ns.saturating_sub(H2_INJECTION_TTL_NS);
                    self.h2_injected.retain(|_, i| i.2 >= cutoff);
                    if self.h2_injected.len() >= MAX_H2_INJECTIONS {
                        self.h2_injected.clear();
                    }
                }
                self.h2_injected.insert((sk, stream), (ids.0, ids.1, ts_ns));
            }
            LinkEvent::ServerResponse { sk, actor } => {
                if let Actor::Thread(tid) = actor
                    && self.serving.get(&tid).is_some_and(|k| k.0 == sk)
                {
                    self.serving.remove(&tid);
                }
                if let Actor::Thread(tid) = actor
                    && let Some(lp) = self.multiplexing.get_mut(&tid)
                    && lp.in_flight.iter().any(|k| k.0 == sk)
                {
                    lp.in_flight.retain(|k| k.0 != sk);
                    lp.current = None;
                }
            }
        }
    }

    /// The candidate parents of a call the event loop `tid` begins now: the requests it has in
    /// flight (none: not an event loop, or nothing in flight).
    fn call_candidates(&mut self, tid: u32) -> Option<u64> {
        let ctxs = &self.ctxs;
        let lp = self.multiplexing.get_mut(&tid)?;
        // Requests whose span is out were answered (perhaps by another thread) or dropped.
        let before = lp.in_flight.len();
        lp.in_flight
            .retain(|k| ctxs.get(k).is_some_and(|c| !c.claimed));
        if lp.in_flight.len() != before {
            lp.current = None;
        }
        if lp.in_flight.is_empty() {
            return None;
        }
        if let Some(id) = lp.current.filter(|id| self.candidates.contains_key(id)) {
            return Some(id);
        }
        let id = self.next_candidates;
        self.next_candidates += 1;
        lp.current = Some(id);
        let keys = lp.in_flight.clone();
        let slots = keys.iter().map(|k| (*k, self.link_to(k))).collect();
        let set = Candidates { slots };
        for k in set.pending() {
            self.candidate_waiters.entry(k).or_default().push(id);
        }
        self.candidates.insert(id, set);
        Some(id)
    }

    /// A link to the span of a resolved context.
    fn link_to(&self, key: &CtxKey) -> Option<SpanLink> {
        self.resolved(key).map(|(span_id, r)| SpanLink {
            trace_id: r.trace_id,
            span_id,
            trace_state: r.trace_state,
        })
    }

    /// Links a parentless span to its candidates (their final ids), and says why.
    fn attach_links(&mut self, span: &mut Span, set: u64) {
        let Some(c) = self.candidates.get(&set) else {
            return;
        };
        if span.parent_span_id.is_some() {
            return;
        }
        span.links = c.slots.iter().filter_map(|(_, l)| l.clone()).collect();
        if span.links.is_empty() {
            return;
        }
        self.stats.ambiguous_calls += 1;
        span.attributes.extend([
            KeyValue::new(LINK_REASON, Value::text(AMBIGUOUS_EVENT_LOOP)),
            KeyValue::new(LINK_CANDIDATES, span.links.len() as i64),
        ]);
    }

    /// The request `actor` works for: the one its thread serves, or the one the kernel named.
    fn served_by(&self, actor: Actor) -> Option<CtxKey> {
        match actor {
            Actor::Thread(tid) => self.serving.get(&tid).copied(),
            Actor::Go(parent) => parent,
        }
    }

    /// Counts a client span made a child of the request `actor` works for.
    fn count_link(&mut self, actor: Actor) {
        match actor {
            Actor::Thread(_) => self.stats.thread_links += 1,
            Actor::Go(_) => self.stats.goroutine_links += 1,
        }
    }

    /// The request a client request made by `actor` belongs to, if it is known (and counted).
    fn parent_of(&mut self, actor: Actor) -> Option<CtxKey> {
        let parent = self
            .served_by(actor)
            .filter(|p| self.ctxs.contains_key(p))?;
        self.count_link(actor);
        Some(parent)
    }

    fn insert(&mut self, key: CtxKey, ctx: Ctx) {
        if self.ctxs.len() >= self.config.max_contexts {
            // Full: forget the oldest tenth at once, so the scan is rare.
            let mut by_age: Vec<(u64, CtxKey)> =
                self.ctxs.iter().map(|(k, c)| (c.created_ns, *k)).collect();
            by_age.sort_unstable();
            for (_, k) in by_age.into_iter().take(self.config.max_contexts / 10 + 1) {
                self.drop_ctx(k);
            }
        }
        self.ctxs.insert(key, ctx);
    }

    /// Wires a fresh context to what it waits for, or resolves it at once.
    fn settle(&mut self, key: CtxKey) {
        let Some(state) = self.ctxs.get(&key).map(|c| c.state.clone()) else {
            return;
        };
        match state {
            State::Resolved(_) => self.on_resolved(key),
            State::AwaitCtx(parent) => match self.resolved(&parent) {
                Some((pspan, pr)) => self.resolve_from_parent(key, pspan, pr),
                None if self.ctxs.contains_key(&parent) => {
                    self.ctx_waiters.entry(parent).or_default().push(key)
                }
                None => self.fall_back(key),
            },
            State::AwaitPeer(pk, deadline) => {
                self.awaiting_peer.insert(key, deadline);
                self.peer_waiters.entry(pk).or_default().push(key)
            }
        }
    }

    fn resolve_from_parent(&mut self, key: CtxKey, parent_span: SpanId, parent: Resolved) {
        if self.make_child(key, parent_span, &parent) {
            self.on_resolved(key);
        }
    }

    /// Resolves `key` as a child of `parent_span` (context `parent`); false if it is gone.
    fn make_child(&mut self, key: CtxKey, parent_span: SpanId, parent: &Resolved) -> bool {
        let Some(c) = self.ctxs.get_mut(&key) else {
            return false;
        };
        let mut r = parent.child(parent_span);
        if let Some(forced) = c.forced_trace
            && forced != r.trace_id
        {
            // The header already went out with this trace id: the span must carry it.
            self.stats.conflicts += 1;
            r.trace_id = forced;
        }
        c.state = State::Resolved(r);
        true
    }

    /// The context's parent cannot be had: header, kernel trace or a new trace.
    fn fall_back(&mut self, key: CtxKey) {
        let Some(c) = self.ctxs.get_mut(&key) else {
            return;
        };
        let mut r = new_trace(c.fallback.as_ref(), c.kernel_trace);
        if let Some(forced) = c.forced_trace {
            r.trace_id = forced;
        }
        c.state = State::Resolved(r);
        self.on_resolved(key);
    }

    /// Cascades a resolution to waiting contexts and held spans.
    fn on_resolved(&mut self, key: CtxKey) {
        let mut queue = vec![key];
        while let Some(k) = queue.pop() {
            self.awaiting_peer.remove(&k);
            let Some((span_id, r)) = self.resolved(&k) else {
                continue;
            };
            for set in self.candidate_waiters.remove(&k).unwrap_or_default() {
                self.candidate_resolved(set, k);
            }
            for child in self.ctx_waiters.remove(&k).unwrap_or_default() {
                let waits = self
                    .ctxs
                    .get(&child)
                    .is_some_and(|c| matches!(c.state, State::AwaitCtx(p) if p == k));
                if waits && self.make_child(child, span_id, &r) {
                    queue.push(child);
                }
            }
            for id in self.held_by_ctx.remove(&k).unwrap_or_default() {
                self.release(id, true);
            }
        }
    }

    /// Copies a candidate's final ids into a candidate set; releases the spans waiting for the
    /// set once it is complete.
    fn candidate_resolved(&mut self, set: u64, key: CtxKey) {
        let link = self.link_to(&key);
        let Some(c) = self.candidates.get_mut(&set) else {
            return;
        };
        for (k, l) in &mut c.slots {
            if *k == key && l.is_none() {
                *l = link.clone();
            }
        }
        if c.pending().next().is_none() {
            for id in self.held_by_links.remove(&set).unwrap_or_default() {
                self.release(id, true);
            }
        }
    }

    fn drop_ctx(&mut self, key: CtxKey) {
        if self.ctxs.contains_key(&key) {
            self.stats.contexts_dropped += 1;
            // Whatever waits on it gets its fallback now.
            if !matches!(
                self.ctxs.get(&key).map(|c| &c.state),
                Some(State::Resolved(_))
            ) {
                self.fall_back(key);
            }
            for child in self.ctx_waiters.remove(&key).unwrap_or_default() {
                self.fall_back(child);
            }
            for id in self.held_by_ctx.remove(&key).unwrap_or_default() {
                self.release(id, false);
            }
            self.ctxs.remove(&key);
        }
    }

    /// A finished exchange's span: give it its final ids now, or hold it until they are known.
    pub fn on_span(&mut self, mut span: Span, link: ExchangeLink) {
        let key = (link.sk, link.start_ns);
        let register = (link.side == Side::Client && link.peer_linkable && !link.http1)
            .then_some(())
            .and(link.disc)
            .map(|d| (link.local, link.peer, d));
        if link.http1
            && let Some(c) = self.ctxs.get_mut(&key)
            && !c.claimed
        {
            c.claimed = true;
            let links = c.candidates;
            match self.resolved(&key) {
                Some((span_id, r)) => {
                    apply(&mut span, Some(span_id), &r);
                    self.finish(span, None, links);
                    self.forget_if_done(key);
                }
                None => self.hold(span, Some(key), Wait::Ctx(key), None, links),
            }
            return;
        }
        let header = span_header(&span);
        match link.side {
            Side::Client => {
                // The kernel injected ids into this HTTP/2 stream's headers: the span has them.
                let forced = match link.disc {
                    Some(PeerDisc::Stream(id)) if !link.http1 => {
                        self.h2_injected.remove(&(link.sk, id))
                    }
                    _ => None,
                }
                .map(|(trace, span_id, _)| {
                    self.stats.injected += 1;
                    span.span_id = span_id;
                    span.trace_id = trace;
                    trace
                });
                let links = self.io_candidates.remove(&key).filter(|_| header.is_none());
                if header.is_none()
                    && let Some((parent, _, actor)) = self.io_parents.remove(&key)
                {
                    self.count_link(actor);
                    match self.resolved(&parent) {
                        Some((pspan, r)) => apply(&mut span, None, &r.child(pspan)),
                        None if self.ctxs.contains_key(&parent) => {
                            self.hold(span, None, Wait::Ctx(parent), register, links);
                            if let Some(h) = self.held.get_mut(&(self.next_held - 1)) {
                                h.forced = forced;
                            }
                            return;
                        }
                        None => {}
                    }
                }
                self.keep_forced(&mut span, forced);
                self.finish(span, register, links);
            }
            Side::Server => {
                let pk = link.disc.map(|d| (link.peer, link.local, d));
                match pk {
                    Some(pk) if link.peer_linkable && !link.http1 => {
                        match self.peers.get(&pk).map(|p| p.0.clone()) {
                            Some(PeerRef::Child(r)) => {
                                self.stats.peer_links += 1;
                                apply(&mut span, None, &r);
                                self.ready.push(span);
                            }
                            _ => self.hold(span, None, Wait::Peer(pk), None, None),
                        }
                    }
                    _ => self.ready.push(span),
                }
            }
        }
    }

    /// Emits a span with final ids, and tells a waiting same-host server about it. A span with
    /// candidate links waits until the candidates' ids are final too.
    fn finish(&mut self, mut span: Span, register: Option<PeerKey>, links: Option<u64>) {
        if let Some(set) = links {
            if self
                .candidates
                .get(&set)
                .is_some_and(|c| c.pending().next().is_some())
            {
                self.hold(span, None, Wait::Links(set), register, None);
                return;
            }
            self.attach_links(&mut span, set);
        }
        if let Some(pk) = register {
            let r = PeerRef::Child(Resolved {
                trace_id: span.trace_id,
                parent: Some(span.span_id),
                trace_state: span.trace_state.clone(),
                sampled: span.parent_sampled,
            });
            self.peers
                .insert(pk, (r, super::clock::Clock::monotonic_now()));
            for id in self.held_by_peer.remove(&pk).unwrap_or_default() {
                self.release(id, true);
            }
            for child in self.peer_waiters.remove(&pk).unwrap_or_default() {
                self.peer_arrived(child, &pk);
            }
        }
        self.ready.push(span);
    }

    /// The span keeps the trace id the kernel wrote into its request's header.
    fn keep_forced(&mut self, span: &mut Span, forced: Option<TraceId>) {
        if let Some(forced) = forced
            && span.trace_id != forced
        {
            self.stats.conflicts += 1;
            span.trace_id = forced;
        }
    }

    fn peer_arrived(&mut self, key: CtxKey, pk: &PeerKey) {
        let Some(c) = self.ctxs.get(&key) else {
            return;
        };
        if !matches!(&c.state, State::AwaitPeer(p, _) if p == pk) {
            return;
        }
        let kernel_trace = c.kernel_trace;
        match self.peers.get(pk).map(|p| p.0.clone()) {
            Some(PeerRef::Ctx(parent)) => {
                self.stats.peer_links += 1;
                self.adopt_kernel_trace(kernel_trace, parent);
                if let Some(c) = self.ctxs.get_mut(&key) {
                    c.state = State::AwaitCtx(parent);
                }
                self.settle(key);
            }
            Some(PeerRef::Child(r)) => {
                self.stats.peer_links += 1;
                if let Some(c) = self.ctxs.get_mut(&key) {
                    c.state = State::Resolved(r);
                }
                self.on_resolved(key);
            }
            None => {}
        }
    }

    /// A same-host server request is about to become the child of its client's request
    /// `client`. When that request is a root of its own (no header, no injected ids, no parent,
    /// no span yet) and the kernel gave the server request a trace id (`kernel`: the one it
    /// writes into the headers of the calls made while serving it), the client's request takes
    /// that trace id, so that the chain stays one trace. They differ where the kernel could not
    /// put the client's ids into its request: TLS, where nothing is injected into the
    /// encrypted stream.
    fn adopt_kernel_trace(&mut self, kernel: Option<TraceId>, client: CtxKey) {
        if let Some(kernel) = kernel
            && let Some(c) = self.ctxs.get_mut(&client)
            && c.forced_trace.is_none()
            && c.fallback.is_none()
            && !c.claimed
            && let State::Resolved(r) = &mut c.state
            && r.parent.is_none()
        {
            r.trace_id = kernel;
        }
    }

    fn hold(
        &mut self,
        span: Span,
        own: Option<CtxKey>,
        wait: Wait,
        register: Option<PeerKey>,
        links: Option<u64>,
    ) {
        if self.held.len() >= self.config.max_held
            && let Some(oldest) = self.held.keys().min().copied()
        {
            self.release(oldest, false);
        }
        self.stats.held += 1;
        let id = self.next_held;
        self.next_held += 1;
        match &wait {
            Wait::Ctx(k) => self.held_by_ctx.entry(*k).or_default().push(id),
            Wait::Peer(pk) => self.held_by_peer.entry(*pk).or_default().push(id),
            Wait::Links(set) => self.held_by_links.entry(*set).or_default().push(id),
        }
        let deadline_ns = super::clock::Clock::monotonic_now() + self.config.max_hold_ns;
        self.held.insert(
            id,
            Held {
                span,
                own,
                wait,
                register,
                links,
                forced: None,
                deadline_ns,
            },
        );
    }

    /// A context whose span is out and that nothing waits on is no longer needed (children
    /// created later copy resolved ids, they do not refer to it).
    fn forget_if_done(&mut self, key: CtxKey) {
        let done = self
            .ctxs
            .get(&key)
            .is_some_and(|c| c.claimed && matches!(c.state, State::Resolved(_)));
        if done && !self.ctx_waiters.contains_key(&key) && !self.serving.values().any(|k| *k == key)
        {
            self.ctxs.remove(&key);
        }
    }

    /// Emits a held span: with its parent's ids when `linked`; otherwise its wait is over (the
    /// context it waits on falls back to its own header or a new trace, releasing it linked to
    /// whatever that gives), or, with nothing left to wait on, as it is.
    fn release(&mut self, id: u64, linked: bool) {
        let Some(h) = self.held.get(&id) else {
            return;
        };
        if !linked {
            self.stats.hold_released += 1;
            match h.wait {
                Wait::Ctx(k) if self.ctxs.contains_key(&k) && self.resolved(&k).is_none() => {
                    self.fall_back(k);
                    if !self.held.contains_key(&id) {
                        return;
                    }
                }
                Wait::Links(set) => {
                    // Candidates that still wait take their fallback ids, the ones their own
                    // spans will carry (which releases this span once the last one is final).
                    let pending: Vec<CtxKey> = self
                        .candidates
                        .get(&set)
                        .map(|c| c.pending().collect())
                        .unwrap_or_default();
                    for k in pending {
                        if self.resolved(&k).is_none() && self.ctxs.contains_key(&k) {
                            self.fall_back(k);
                        }
                        if !self.held.contains_key(&id) {
                            return;
                        }
                    }
                }
                _ => {}
            }
        }
        let Some(mut h) = self.held.remove(&id) else {
            return;
        };
        match &h.wait {
            Wait::Ctx(k) => {
                if let Some((span_id, r)) = self.resolved(k) {
                    if h.own == Some(*k) {
                        apply(&mut h.span, Some(span_id), &r);
                        self.finish(h.span, h.register, h.links);
                        self.forget_if_done(*k);
                        return;
                    } else {
                        apply(&mut h.span, None, &r.child(span_id));
                    }
                }
            }
            Wait::Peer(pk) => {
                if let Some(PeerRef::Child(r)) = self.peers.get(pk).map(|p| p.0.clone()) {
                    self.stats.peer_links += 1;
                    apply(&mut h.span, None, &r);
                }
            }
            Wait::Links(set) => {
                // Whatever is still unknown (a candidate gone without ids) is left out.
                self.attach_links(&mut h.span, *set);
                self.finish(h.span, h.register, None);
                return;
            }
        }
        self.keep_forced(&mut h.span, h.forced);
        self.finish(h.span, h.register, h.links);
    }

    /// Deadlines: cheap, for every poll; `now_ns` is kernel monotonic time.
    pub fn tick_deadlines(&mut self, now_ns: u64) {
        // Requests whose same-host client never showed up.
        let expired: Vec<CtxKey> = self
            .awaiting_peer
            .iter()
            .filter(|(_, d)| **d <= now_ns)
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            self.awaiting_peer.remove(&key);
            if matches!(
                self.ctxs.get(&key).map(|c| &c.state),
                Some(State::AwaitPeer(..))
            ) {
                self.stats.peer_timeouts += 1;
                self.fall_back(key);
            }
        }
        let late: Vec<u64> = self
            .held
            .iter()
            .filter(|(_, h)| h.deadline_ns <= now_ns)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            self.release(id, false);
        }
    }

    /// Forgets candidate sets nothing refers to any more. A call's I/O keeps its set while one
    /// of the candidates is still around (its span not out yet) or one is not final.
    fn sweep_candidates(&mut self) {
        let ctxs = &self.ctxs;
        let candidates = &self.candidates;
        self.io_candidates.retain(|_, set| {
            candidates.get(set).is_some_and(|c| {
                c.slots
                    .iter()
                    .any(|(k, l)| l.is_none() || ctxs.contains_key(k))
            })
        });
        let used: FastSet<u64> = self
            .multiplexing
            .values()
            .filter_map(|lp| lp.current)
            .chain(self.ctxs.values().filter_map(|c| c.candidates))
            .chain(self.io_candidates.values().copied())
            .chain(self.held.values().filter_map(|h| match h.wait {
                Wait::Links(set) => Some(set),
                _ => h.links,
            }))
            .collect();
        self.candidates.retain(|id, _| used.contains(id));
        let candidates = &self.candidates;
        self.candidate_waiters.retain(|_, sets| {
            sets.retain(|s| candidates.contains_key(s));
            !sets.is_empty()
        });
        self.held_by_links
            .retain(|set, _| candidates.contains_key(set));
    }

    /// Releases every held span as it is (at shutdown).
    pub fn release_all(&mut self) {
        let mut ids: Vec<u64> = self.held.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.release(id, false);
        }
    }

    /// Deadlines and the age bound of contexts; once a second is enough.
    pub fn tick(&mut self, now_ns: u64) {
        self.tick_deadlines(now_ns);
        let ttl = self.config.context_ttl_ns;
        self.multiplexing
            .retain(|_, lp| now_ns.saturating_sub(lp.seen_ns) <= MULTIPLEXING_TTL_NS);
        let old: Vec<CtxKey> = self
            .ctxs
            .iter()
            .filter(|(_, c)| now_ns.saturating_sub(c.created_ns) > ttl)
            .map(|(k, _)| *k)
            .collect();
        for key in old {
            self.drop_ctx(key);
        }
        let alive = |k: &CtxKey, ctxs: &FastMap<CtxKey, Ctx>| ctxs.contains_key(k);
        let ctxs = &self.ctxs;
        self.serving.retain(|_, k| alive(k, ctxs));
        self.io_parents.retain(|_, (k, _, _)| alive(k, ctxs));
        self.h2_injected
            .retain(|_, i| now_ns.saturating_sub(i.2) <= H2_INJECTION_TTL_NS || i.2 > now_ns);
        self.sweep_candidates();
        let peer_ttl = self.config.max_hold_ns;
        self.peers
            .retain(|_, (_, at)| now_ns.saturating_sub(*at) <= peer_ttl || *at > now_ns);
        self.peer_waiters.retain(|_, v| !v.is_empty());
    }
}

#[cfg(test)]
mod tests;
