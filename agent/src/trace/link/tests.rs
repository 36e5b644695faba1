use std::sync::Arc;

use super::*;
use crate::trace::span::{Resource, SpanKind, Status};

const MS: u64 = 1_000_000;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A span as a builder makes it: random ids, or the header's context when `header` is given.
fn span(name: &str, kind: SpanKind, header: Option<&HeaderContext>) -> Span {
    Span {
        trace_id: header.map(|h| h.trace_id).unwrap_or_else(TraceId::random),
        span_id: SpanId::random(),
        parent_span_id: header.map(|h| h.parent_id),
        trace_state: header.map(|h| h.trace_state.clone()).unwrap_or_default(),
        parent_sampled: header.map(|h| h.sampled),
        name: name.to_owned(),
        kind,
        start_unix_nanos: 1,
        end_unix_nanos: 2,
        attributes: Vec::new(),
        status: Status::Unset,
        links: Vec::new(),
        resource: Arc::new(Resource {
            key: String::new(),
            attributes: Vec::new(),
        }),
        scope: "test",
    }
}

struct Conn {
    sk: u64,
    local: SocketAddr,
    peer: SocketAddr,
    side: Side,
    http1: bool,
    linkable: bool,
}

impl Conn {
    fn new(sk: u64, local: &str, peer: &str, side: Side) -> Self {
        Self {
            sk,
            local: addr(local),
            peer: addr(peer),
            side,
            http1: true,
            linkable: true,
        }
    }
    fn other(mut self) -> Self {
        self.http1 = false;
        self
    }
    fn remote(mut self) -> Self {
        self.linkable = false;
        self
    }
    fn request(&self, l: &mut Linker, ts: u64, tid: u32, turn: u64) {
        self.request_with(l, ts, tid, turn, None, None, None);
    }
    fn request_as(&self, l: &mut Linker, ts: u64, actor: Actor, turn: u64) {
        self.request_by(l, ts, actor, turn, None, None, None);
    }
    #[allow(clippy::too_many_arguments)]
    fn request_with(
        &self,
        l: &mut Linker,
        ts: u64,
        tid: u32,
        turn: u64,
        header: Option<HeaderContext>,
        kernel_trace: Option<TraceId>,
        injected: Option<(TraceId, SpanId)>,
    ) {
        let actor = Actor::Thread(tid);
        self.request_by(l, ts, actor, turn, header, kernel_trace, injected);
    }
    #[allow(clippy::too_many_arguments)]
    fn request_by(
        &self,
        l: &mut Linker,
        ts: u64,
        actor: Actor,
        turn: u64,
        header: Option<HeaderContext>,
        kernel_trace: Option<TraceId>,
        injected: Option<(TraceId, SpanId)>,
    ) {
        if self.http1 {
            l.on_event(LinkEvent::Http1Request {
                key: (self.sk, ts),
                actor,
                side: self.side,
                local: self.local,
                peer: self.peer,
                peer_linkable: self.linkable,
                turn,
                header,
                kernel_trace,
                injected,
            });
        } else if self.side == Side::Client {
            l.on_event(LinkEvent::ClientIo {
                key: (self.sk, ts),
                actor,
            });
        }
    }
    fn response(&self, l: &mut Linker, tid: u32) {
        self.response_as(l, Actor::Thread(tid));
    }
    fn response_as(&self, l: &mut Linker, actor: Actor) {
        if self.side == Side::Server {
            l.on_event(LinkEvent::ServerResponse { sk: self.sk, actor });
        }
    }
    fn done(&self, l: &mut Linker, start: u64, disc: Option<PeerDisc>, s: Span) {
        l.on_span(
            s,
            ExchangeLink {
                sk: self.sk,
                start_ns: start,
                side: self.side,
                local: self.local,
                peer: self.peer,
                http1: self.http1,
                peer_linkable: self.linkable,
                disc,
            },
        );
    }
}

fn ready(l: &mut Linker) -> Vec<Span> {
    l.take_ready()
}

fn one(l: &mut Linker) -> Span {
    let mut r = ready(l);
    assert_eq!(r.len(), 1, "{r:?}");
    r.pop().unwrap()
}

#[test]
fn a_client_call_made_while_serving_is_a_child_of_the_request() {
    let mut l = Linker::new(LinkConfig::default());
    let server = Conn::new(1, "10.0.0.1:80", "10.0.0.9:5000", Side::Server).remote();
    let client = Conn::new(2, "10.0.0.1:6000", "10.0.0.7:80", Side::Client).remote();
    let db = Conn::new(3, "10.0.0.1:6001", "10.0.0.8:5432", Side::Client)
        .remote()
        .other();
    server.request(&mut l, 100, 7, 0);
    client.request(&mut l, 110, 7, 0);
    // Another thread's call is not a child.
    client.request(&mut l, 111, 8, 0);
    db.request(&mut l, 115, 7, 0);
    client.done(&mut l, 110, None, span("call", SpanKind::Client, None));
    let call = one(&mut l);
    db.done(&mut l, 115, None, span("db", SpanKind::Client, None));
    let q = one(&mut l);
    client.done(&mut l, 111, None, span("other", SpanKind::Client, None));
    let other = one(&mut l);
    server.response(&mut l, 7);
    server.done(&mut l, 100, None, span("srv", SpanKind::Server, None));
    let srv = one(&mut l);
    assert_eq!(srv.parent_span_id, None);
    for child in [&call, &q] {
        assert_eq!(child.parent_span_id, Some(srv.span_id));
        assert_eq!(child.trace_id, srv.trace_id);
    }
    assert_eq!(other.parent_span_id, None);
    assert_ne!(other.trace_id, srv.trace_id);
    // After the response the thread serves nothing: its next call is a root.
    client.request(&mut l, 200, 7, 1);
    client.done(&mut l, 200, None, span("late", SpanKind::Client, None));
    assert_eq!(one(&mut l).parent_span_id, None);
    assert_eq!(l.stats().thread_links, 2);
}

#[test]
fn a_thread_that_reads_a_second_request_before_answering_the_first_gives_no_parent() {
    let mut l = Linker::new(LinkConfig::default());
    let s1 = Conn::new(1, "10.0.0.1:80", "10.0.0.9:5000", Side::Server).remote();
    let s2 = Conn::new(2, "10.0.0.1:80", "10.0.0.9:5001", Side::Server).remote();
    let client = Conn::new(3, "10.0.0.1:6000", "10.0.0.7:80", Side::Client).remote();
    // An event loop: reads request 1, starts its call, reads request 2, starts another call.
    s1.request(&mut l, 100, 7, 0);
    client.request(&mut l, 101, 7, 0);
    s2.request(&mut l, 102, 7, 0);
    client.request(&mut l, 103, 7, 1);
    client.done(&mut l, 101, None, span("first", SpanKind::Client, None));
    client.done(&mut l, 103, None, span("second", SpanKind::Client, None));
    let got = ready(&mut l);
    s1.response(&mut l, 7);
    s1.done(&mut l, 100, None, span("s1", SpanKind::Server, None));
    let srv1 = one(&mut l);
    // The call made before the overlap belongs to request 1; the one after is not guessed:
    // it links to both requests.
    assert_eq!(got[0].parent_span_id, Some(srv1.span_id));
    assert!(got[0].links.is_empty());
    assert_eq!(got[1].parent_span_id, None);
    let s2_id = l.ctxs[&(2, 102)].span_id;
    assert_eq!(
        got[1].links.iter().map(|l| l.span_id).collect::<Vec<_>>(),
        [srv1.span_id, s2_id]
    );
    assert_eq!(l.stats().multiplexing_threads, 1);
    // Even after both are answered, the thread gets no parents for a while: one request in
    // flight is a candidate only.
    s2.response(&mut l, 7);
    s1.request(&mut l, 200, 7, 1);
    client.request(&mut l, 201, 7, 2);
    client.done(&mut l, 201, None, span("third", SpanKind::Client, None));
    let third = one(&mut l);
    assert_eq!(third.parent_span_id, None);
    assert_eq!(third.links.len(), 1);
    assert_eq!(third.links[0].span_id, l.ctxs[&(1, 200)].span_id);
}

#[test]
fn go_calls_follow_the_kernels_request_and_never_their_thread() {
    let mut l = Linker::new(LinkConfig::default());
    let s1 = Conn::new(1, "10.0.0.1:80", "10.0.0.9:5000", Side::Server).remote();
    let s2 = Conn::new(2, "10.0.0.1:80", "10.0.0.9:5001", Side::Server).remote();
    let client = Conn::new(3, "10.0.0.1:6000", "10.0.0.7:80", Side::Client).remote();
    let db = Conn::new(4, "10.0.0.1:6001", "10.0.0.8:5432", Side::Client)
        .remote()
        .other();
    // Two requests read by goroutines that happened to run on thread 7, then calls written on
    // thread 7 and 8 for the requests the kernel names, crossed over.
    s1.request_as(&mut l, 100, Actor::Go(None), 0);
    s2.request_as(&mut l, 102, Actor::Go(None), 0);
    client.request_as(&mut l, 110, Actor::Go(Some((1, 100))), 0);
    client.request_as(&mut l, 111, Actor::Go(Some((2, 102))), 1);
    db.request_as(&mut l, 112, Actor::Go(Some((1, 100))), 0);
    // A call made for no request, and one for a request never seen (dropped): roots.
    client.request_as(&mut l, 113, Actor::Go(None), 2);
    client.request_as(&mut l, 114, Actor::Go(Some((99, 1))), 3);
    for (ts, name) in [(110, "c1"), (111, "c2"), (113, "none"), (114, "unknown")] {
        client.done(&mut l, ts, None, span(name, SpanKind::Client, None));
    }
    db.done(&mut l, 112, None, span("db", SpanKind::Client, None));
    s1.response_as(&mut l, Actor::Go(None));
    s2.response_as(&mut l, Actor::Go(None));
    s1.done(&mut l, 100, None, span("s1", SpanKind::Server, None));
    s2.done(&mut l, 102, None, span("s2", SpanKind::Server, None));
    let spans = ready(&mut l);
    let by = |n: &str| spans.iter().find(|s| s.name == n).unwrap().clone();
    let (srv1, srv2) = (by("s1"), by("s2"));
    assert_ne!(srv1.trace_id, srv2.trace_id);
    for (child, parent) in [("c1", &srv1), ("db", &srv1), ("c2", &srv2)] {
        assert_eq!(by(child).parent_span_id, Some(parent.span_id), "{child}");
        assert_eq!(by(child).trace_id, parent.trace_id, "{child}");
    }
    for root in ["none", "unknown"] {
        assert_eq!(by(root).parent_span_id, None, "{root}");
    }
    let stats = l.stats();
    assert_eq!((stats.goroutine_links, stats.thread_links), (3, 0));
    // Go servers never count as threads serving several requests.
    assert_eq!(stats.multiplexing_threads, 0);
}

#[test]
fn an_incoming_header_is_the_parent_and_its_trace_state_carries_to_children() {
    let mut l = Linker::new(LinkConfig::default());
    let server = Conn::new(1, "10.0.0.1:80", "10.0.0.9:5000", Side::Server).remote();
    let client = Conn::new(2, "10.0.0.1:6000", "10.0.0.7:80", Side::Client).remote();
    let h = HeaderContext {
        trace_id: TraceId([7; 16]),
        parent_id: SpanId([9; 8]),
        trace_state: "k=v".into(),
        sampled: false,
    };
    server.request_with(
        &mut l,
        100,
        7,
        0,
        Some(h.clone()),
        Some(TraceId([7; 16])),
        None,
    );
    client.request(&mut l, 110, 7, 0);
    client.done(&mut l, 110, None, span("call", SpanKind::Client, None));
    let call = one(&mut l);
    server.done(&mut l, 100, None, span("srv", SpanKind::Server, Some(&h)));
    let srv = one(&mut l);
    assert_eq!(srv.trace_id, h.trace_id);
    assert_eq!(srv.parent_span_id, Some(h.parent_id));
    assert_eq!(call.trace_id, h.trace_id);
    assert_eq!(call.parent_span_id, Some(srv.span_id));
    assert_eq!(call.trace_state, "k=v");
    // The caller's sampled flag reaches the local child too (parent-based sampling).
    assert_eq!(srv.parent_sampled, Some(false));
    assert_eq!(call.parent_sampled, Some(false));
}

#[test]
fn a_kernel_trace_id_is_used_when_the_request_has_none() {
    let mut l = Linker::new(LinkConfig::default());
    let server = Conn::new(1, "10.0.0.1:80", "10.0.0.9:5000", Side::Server).remote();
    let client = Conn::new(2, "10.0.0.1:6000", "10.0.0.7:80", Side::Client).remote();
    let kt = TraceId([3; 16]);
    server.request_with(&mut l, 100, 7, 0, None, Some(kt), None);
    // The kernel injected into the call with the same trace id: no conflict.
    client.request_with(&mut l, 110, 7, 0, None, None, Some((kt, SpanId([5; 8]))));
    client.done(&mut l, 110, None, span("call", SpanKind::Client, None));
    let call = one(&mut l);
    assert_eq!(call.trace_id, kt);
    assert_eq!(call.span_id, SpanId([5; 8]));
    server.done(&mut l, 100, None, span("srv", SpanKind::Server, None));
    let srv = one(&mut l);
    assert_eq!((srv.trace_id, srv.parent_span_id), (kt, None));
    assert_eq!(call.parent_span_id, Some(srv.span_id));
    assert_eq!(l.stats().conflicts, 0);
    assert_eq!(l.stats().injected, 1);
}

#[test]
fn injected_ids_win_over_a_disagreeing_parent_and_it_is_counted() {
    let mut l = Linker::new(LinkConfig::default());
    let server = Conn::new(1, "10.0.0.1:80", "10.0.0.9:5000", Side::Server).remote();
    let client = Conn::new(2, "10.0.0.1:6000", "10.0.0.7:80", Side::Client).remote();
    server.request_with(&mut l, 100, 7, 0, None, Some(TraceId([3; 16])), None);
    client.request_with(
        &mut l,
        110,
        7,
        0,
        None,
        None,
        Some((TraceId([4; 16]), SpanId([5; 8]))),
    );
    client.done(&mut l, 110, None, span("call", SpanKind::Client, None));
    let call = one(&mut l);
    assert_eq!(
        (call.trace_id, call.span_id),
        (TraceId([4; 16]), SpanId([5; 8]))
    );
    assert_eq!(l.stats().conflicts, 1);
}

/// curl -> A (HTTP/1) -> B (HTTP/1) -> PostgreSQL, all on one host, finishing inside out, and
/// each server's read reported *before* its client's write (the race the wait is for).
#[test]
fn a_same_host_chain_becomes_one_trace_with_the_exact_parents() {
    let mut l = Linker::new(LinkConfig::default());
    let curl = Conn::new(1, "127.0.0.1:40000", "127.0.0.1:8001", Side::Client);
    let a_srv = Conn::new(2, "127.0.0.1:8001", "127.0.0.1:40000", Side::Server);
    let a_cli = Conn::new(3, "127.0.0.1:40001", "127.0.0.1:8002", Side::Client);
    let b_srv = Conn::new(4, "127.0.0.1:8002", "127.0.0.1:40001", Side::Server);
    let b_db = Conn::new(5, "127.0.0.1:40002", "127.0.0.1:5432", Side::Client).other();
    let pg = Conn::new(6, "127.0.0.1:5432", "127.0.0.1:40002", Side::Server).other();

    a_srv.request(&mut l, 101, 20, 0); // A's read reported before curl's write
    curl.request(&mut l, 100, 10, 0);
    a_cli.request(&mut l, 110, 20, 0);
    b_srv.request(&mut l, 111, 30, 0);
    b_db.request(&mut l, 120, 30, 0);
    pg.done(
        &mut l,
        121,
        Some(PeerDisc::Sequence(0)),
        span("pg", SpanKind::Server, None),
    );
    assert!(
        ready(&mut l).is_empty(),
        "the PostgreSQL server span waits for its client"
    );
    b_db.done(
        &mut l,
        120,
        Some(PeerDisc::Sequence(0)),
        span("db", SpanKind::Client, None),
    );
    let mut got = ready(&mut l);
    b_srv.response(&mut l, 30);
    b_srv.done(&mut l, 111, None, span("B", SpanKind::Server, None));
    a_cli.done(&mut l, 110, None, span("A->B", SpanKind::Client, None));
    a_srv.response(&mut l, 20);
    a_srv.done(&mut l, 101, None, span("A", SpanKind::Server, None));
    curl.done(&mut l, 100, None, span("curl", SpanKind::Client, None));
    got.extend(ready(&mut l));
    assert_eq!(got.len(), 6, "{got:?}");
    let by = |n: &str| got.iter().find(|s| s.name == n).unwrap().clone();
    let chain = ["curl", "A", "A->B", "B", "db", "pg"].map(by);
    assert_eq!(chain[0].parent_span_id, None);
    for w in chain.windows(2) {
        assert_eq!(
            w[1].parent_span_id,
            Some(w[0].span_id),
            "{} -> {}",
            w[0].name,
            w[1].name
        );
        assert_eq!(w[1].trace_id, w[0].trace_id);
    }
    let st = l.stats();
    assert_eq!(
        (st.thread_links, st.peer_links, st.peer_timeouts),
        (2, 3, 0)
    );
    assert_eq!(l.held(), 0);
}

/// curl -> A over TLS on one host (nothing injected into curl's request), A -> B over
/// cleartext with the header the kernel injected, carrying the trace id the kernel gave A's
/// request. curl's request takes that trace id: one trace, whichever end is reported first.
#[test]
fn a_same_host_client_without_injected_ids_takes_the_servers_kernel_trace() {
    for server_first in [false, true] {
        let mut l = Linker::new(LinkConfig::default());
        let curl = Conn::new(1, "127.0.0.1:40000", "127.0.0.1:8443", Side::Client);
        let a_srv = Conn::new(2, "127.0.0.1:8443", "127.0.0.1:40000", Side::Server);
        let a_cli = Conn::new(3, "127.0.0.1:40001", "10.0.0.7:80", Side::Client).remote();
        let kt = TraceId([7; 16]);
        if server_first {
            a_srv.request_with(&mut l, 101, 20, 0, None, Some(kt), None);
            curl.request(&mut l, 100, 10, 0);
        } else {
            curl.request(&mut l, 100, 10, 0);
            a_srv.request_with(&mut l, 101, 20, 0, None, Some(kt), None);
        }
        a_cli.request_with(&mut l, 110, 20, 0, None, None, Some((kt, SpanId([5; 8]))));
        a_cli.done(&mut l, 110, None, span("A->B", SpanKind::Client, None));
        a_srv.response(&mut l, 20);
        a_srv.done(&mut l, 101, None, span("A", SpanKind::Server, None));
        curl.done(&mut l, 100, None, span("curl", SpanKind::Client, None));
        let got = ready(&mut l);
        assert_eq!(got.len(), 3, "{got:?}");
        let by = |n: &str| got.iter().find(|s| s.name == n).unwrap().clone();
        let [root, a, call] = ["curl", "A", "A->B"].map(by);
        assert_eq!(
            (root.trace_id, root.parent_span_id),
            (kt, None),
            "{server_first}"
        );
        assert_eq!((a.trace_id, a.parent_span_id), (kt, Some(root.span_id)));
        assert_eq!((call.trace_id, call.parent_span_id), (kt, Some(a.span_id)));
        assert_eq!(l.stats().conflicts, 0);
    }
}

/// A client request with a trace of its own (a header, here) keeps it: the server's kernel
/// trace id does not replace it.
#[test]
fn a_same_host_client_with_its_own_trace_keeps_it() {
    let mut l = Linker::new(LinkConfig::default());
    let curl = Conn::new(1, "127.0.0.1:40000", "127.0.0.1:8443", Side::Client);
    let a_srv = Conn::new(2, "127.0.0.1:8443", "127.0.0.1:40000", Side::Server);
    let header = HeaderContext {
        trace_id: TraceId([1; 16]),
        parent_id: SpanId([2; 8]),
        sampled: true,
        trace_state: String::new(),
    };
    curl.request_with(&mut l, 100, 10, 0, Some(header), None, None);
    a_srv.request_with(&mut l, 101, 20, 0, None, Some(TraceId([7; 16])), None);
    a_srv.response(&mut l, 20);
    a_srv.done(&mut l, 101, None, span("A", SpanKind::Server, None));
    curl.done(&mut l, 100, None, span("curl", SpanKind::Client, None));
    for s in ready(&mut l) {
        assert_eq!(s.trace_id, TraceId([1; 16]), "{}", s.name);
    }
}

#[test]
fn a_same_host_server_whose_client_is_not_traced_gives_up_after_the_wait() {
    let mut l = Linker::new(LinkConfig::default());
    let srv = Conn::new(1, "127.0.0.1:80", "127.0.0.1:5000", Side::Server);
    let cli = Conn::new(2, "127.0.0.1:6000", "10.0.0.7:80", Side::Client).remote();
    srv.request(&mut l, 100, 7, 0);
    cli.request(&mut l, 110, 7, 0);
    cli.done(&mut l, 110, None, span("call", SpanKind::Client, None));
    assert!(
        ready(&mut l).is_empty(),
        "held: its parent's trace is not known yet"
    );
    assert_eq!(l.held(), 1);
    l.tick_deadlines(100 + LinkConfig::default().peer_wait_ns + 1);
    let call = one(&mut l);
    srv.done(&mut l, 100, None, span("srv", SpanKind::Server, None));
    let s = one(&mut l);
    assert_eq!(s.parent_span_id, None);
    assert_eq!(call.parent_span_id, Some(s.span_id));
    assert_eq!(call.trace_id, s.trace_id);
    assert_eq!(l.stats().peer_timeouts, 1);
}

#[test]
fn http2_streams_pair_by_stream_id_and_an_unanswered_server_is_released_at_shutdown() {
    let mut l = Linker::new(LinkConfig::default());
    let cli = Conn::new(1, "127.0.0.1:40000", "127.0.0.1:50051", Side::Client).other();
    let srv = Conn::new(2, "127.0.0.1:50051", "127.0.0.1:40000", Side::Server).other();
    srv.done(
        &mut l,
        5,
        Some(PeerDisc::Stream(3)),
        span("s3", SpanKind::Server, None),
    );
    srv.done(
        &mut l,
        6,
        Some(PeerDisc::Stream(1)),
        span("s1", SpanKind::Server, None),
    );
    srv.done(
        &mut l,
        7,
        Some(PeerDisc::Stream(5)),
        span("s5", SpanKind::Server, None),
    );
    assert!(ready(&mut l).is_empty());
    cli.done(
        &mut l,
        1,
        Some(PeerDisc::Stream(1)),
        span("c1", SpanKind::Client, None),
    );
    cli.done(
        &mut l,
        2,
        Some(PeerDisc::Stream(3)),
        span("c3", SpanKind::Client, None),
    );
    let got = ready(&mut l);
    let by = |n: &str| got.iter().find(|s| s.name == n).unwrap();
    assert_eq!(got.len(), 4);
    assert_eq!(by("s1").parent_span_id, Some(by("c1").span_id));
    assert_eq!(by("s3").parent_span_id, Some(by("c3").span_id));
    assert_eq!(by("s3").trace_id, by("c3").trace_id);
    l.release_all();
    let s5 = one(&mut l);
    assert_eq!((s5.name.as_str(), s5.parent_span_id), ("s5", None));
    assert_eq!(l.stats().hold_released, 1);
}

#[test]
fn held_spans_and_contexts_stay_within_their_bounds() {
    let config = LinkConfig {
        max_held: 3,
        max_contexts: 10,
        ..LinkConfig::default()
    };
    let mut l = Linker::new(config);
    for i in 0..5u64 {
        let srv = Conn::new(100 + i, "127.0.0.1:80", "127.0.0.1:5000", Side::Server).other();
        srv.done(
            &mut l,
            i,
            Some(PeerDisc::Stream(1)),
            span("s", SpanKind::Server, None),
        );
    }
    assert_eq!(l.held(), 3);
    assert_eq!(ready(&mut l).len(), 2);
    assert_eq!(l.stats().hold_released, 2);
    for i in 0..25u64 {
        let srv = Conn::new(i, "10.0.0.1:80", "10.0.0.9:5000", Side::Server).remote();
        srv.request(&mut l, i * MS, i as u32, 0);
    }
    assert!(l.ctxs.len() <= 10, "{}", l.ctxs.len());
    assert!(l.stats().contexts_dropped >= 15);
    // Age: everything older than the TTL goes.
    l.tick(25 * MS + LinkConfig::default().context_ttl_ns + 1);
    assert_eq!(l.ctxs.len(), 0);
    assert!(l.serving.is_empty());
}

/// The links of a span as (trace, span) pairs, and its link attributes.
fn links_of(s: &Span) -> Vec<(TraceId, SpanId)> {
    s.links.iter().map(|l| (l.trace_id, l.span_id)).collect()
}

fn ids(s: &Span) -> (TraceId, SpanId) {
    (s.trace_id, s.span_id)
}

fn assert_ambiguous(call: &Span, candidates: &[&Span]) {
    assert_eq!(call.parent_span_id, None, "{call:?}");
    assert_eq!(
        links_of(call),
        candidates.iter().map(|s| ids(s)).collect::<Vec<_>>(),
        "{}",
        call.name
    );
    assert_eq!(
        call.attr(LINK_REASON),
        Some(&Value::text(AMBIGUOUS_EVENT_LOOP))
    );
    assert_eq!(
        call.attr(LINK_CANDIDATES),
        Some(&Value::Int(candidates.len() as i64))
    );
    for c in candidates {
        assert_ne!(call.trace_id, c.trace_id, "a new trace, not a candidate's");
    }
}

#[test]
fn an_event_loop_call_links_to_the_requests_in_flight_and_has_no_parent() {
    let mut l = Linker::new(LinkConfig::default());
    let srv: Vec<Conn> = (0..3)
        .map(|i| {
            Conn::new(
                1 + i,
                "10.0.0.1:80",
                &format!("10.0.0.9:{}", 5000 + i),
                Side::Server,
            )
            .remote()
        })
        .collect();
    let http = Conn::new(10, "10.0.0.1:6000", "10.0.0.7:80", Side::Client).remote();
    let db = Conn::new(11, "10.0.0.1:6001", "10.0.0.8:5432", Side::Client)
        .remote()
        .other();
    // Thread 7 reads three requests before answering any: an event loop.
    srv[0].request(&mut l, 100, 7, 0);
    srv[1].request(&mut l, 101, 7, 0);
    srv[2].request(&mut l, 102, 7, 0);
    http.request(&mut l, 110, 7, 0);
    db.request(&mut l, 111, 7, 0);
    // More bytes of the same statement: I/O that begins no exchange.
    db.request(&mut l, 112, 7, 0);
    // Request 1 is answered: the next calls have two candidates.
    srv[1].response(&mut l, 7);
    http.request(&mut l, 120, 7, 1);
    db.request(&mut l, 121, 7, 1);
    // The answered request's span is out before the calls end: its ids are still known.
    srv[1].done(&mut l, 101, None, span("s1", SpanKind::Server, None));
    let s1 = one(&mut l);
    for (conn, ts, name) in [
        (&http, 110, "h3"),
        (&db, 111, "d3"),
        (&http, 120, "h2"),
        (&db, 121, "d2"),
    ] {
        conn.done(&mut l, ts, None, span(name, SpanKind::Client, None));
    }
    let calls = ready(&mut l);
    for i in [0, 2] {
        srv[i].response(&mut l, 7);
        srv[i].done(
            &mut l,
            100 + i as u64,
            None,
            span("s", SpanKind::Server, None),
        );
    }
    let got = ready(&mut l);
    let (s0, s2) = (&got[0], &got[1]);
    let by = |n: &str| calls.iter().find(|s| s.name == n).unwrap();
    assert_ambiguous(by("h3"), &[s0, &s1, s2]);
    assert_ambiguous(by("d3"), &[s0, &s1, s2]);
    assert_ambiguous(by("h2"), &[s0, s2]);
    assert_ambiguous(by("d2"), &[s0, s2]);
    // Calls that began together share a trace id only by chance: each is its own root.
    assert_ne!(by("h3").trace_id, by("d3").trace_id);
    let st = l.stats();
    assert_eq!(
        (st.multiplexing_threads, st.ambiguous_calls, st.thread_links),
        (1, 4, 0)
    );
    for s in [s0, &s1, s2] {
        assert_eq!(s.parent_span_id, None);
        assert!(s.links.is_empty());
    }
    // Everything answered and out: the candidate state is forgotten at the next tick.
    l.tick(1000);
    assert!(l.io_candidates.is_empty() && l.candidates.is_empty());
    assert!(l.candidate_waiters.is_empty() && l.held_by_links.is_empty());
}

#[test]
fn one_request_in_flight_on_an_event_loop_is_a_candidate_not_a_parent() {
    let mut l = Linker::new(LinkConfig::default());
    let a = Conn::new(1, "10.0.0.1:80", "10.0.0.9:5000", Side::Server).remote();
    let b = Conn::new(2, "10.0.0.1:80", "10.0.0.9:5001", Side::Server).remote();
    let call = Conn::new(3, "10.0.0.1:6000", "10.0.0.7:80", Side::Client).remote();
    a.request(&mut l, 100, 7, 0);
    b.request(&mut l, 101, 7, 0);
    a.response(&mut l, 7);
    a.done(&mut l, 100, None, span("a", SpanKind::Server, None));
    let _ = one(&mut l);
    // Only b is in flight, but a task left by a (or a timer) may be the caller.
    call.request(&mut l, 110, 7, 0);
    call.done(&mut l, 110, None, span("call", SpanKind::Client, None));
    let c = one(&mut l);
    b.response(&mut l, 7);
    b.done(&mut l, 101, None, span("b", SpanKind::Server, None));
    let sb = one(&mut l);
    assert_ambiguous(&c, &[&sb]);
    // Nothing in flight: no parent, no links, no attribute.
    call.request(&mut l, 120, 7, 1);
    call.done(&mut l, 120, None, span("idle", SpanKind::Client, None));
    let idle = one(&mut l);
    assert_eq!(idle.parent_span_id, None);
    assert!(idle.links.is_empty() && idle.attr(LINK_REASON).is_none());
    assert_eq!(l.stats().ambiguous_calls, 1);
}

#[test]
fn a_thread_serving_one_request_at_a_time_keeps_exact_parents_and_no_links() {
    let mut l = Linker::new(LinkConfig::default());
    let call = Conn::new(9, "10.0.0.1:6000", "10.0.0.7:80", Side::Client).remote();
    for i in 0..5u64 {
        // Keep-alive and new connections alike, one request at a time on thread 7.
        let srv = Conn::new(1 + i % 2, "10.0.0.1:80", "10.0.0.9:5000", Side::Server).remote();
        let t = 1000 * (i + 1);
        srv.request(&mut l, t, 7, i / 2);
        call.request(&mut l, t + 1, 7, i);
        call.done(&mut l, t + 1, None, span("call", SpanKind::Client, None));
        let c = one(&mut l);
        srv.response(&mut l, 7);
        srv.done(&mut l, t, None, span("srv", SpanKind::Server, None));
        let s = one(&mut l);
        assert_eq!(c.parent_span_id, Some(s.span_id));
        assert_eq!(c.trace_id, s.trace_id);
        assert!(c.links.is_empty() && c.attr(LINK_REASON).is_none());
    }
    let st = l.stats();
    assert_eq!(
        (st.thread_links, st.multiplexing_threads, st.ambiguous_calls),
        (5, 0, 0)
    );
}

/// Same-host clients reported after the loop's reads: the candidates' trace ids are not known
/// when the call ends, so it waits for them; one that never comes gives its fallback ids, the
/// ones its own span carries.
#[test]
fn an_event_loop_call_waits_for_its_candidates_ids() {
    let mut l = Linker::new(LinkConfig::default());
    let c1 = Conn::new(1, "127.0.0.1:40001", "127.0.0.1:8000", Side::Client);
    let s1 = Conn::new(2, "127.0.0.1:8000", "127.0.0.1:40001", Side::Server);
    let s2 = Conn::new(4, "127.0.0.1:8000", "127.0.0.1:40002", Side::Server);
    let down = Conn::new(5, "127.0.0.1:40003", "10.0.0.7:80", Side::Client).remote();
    s1.request(&mut l, 101, 7, 0);
    s2.request(&mut l, 102, 7, 0);
    down.request(&mut l, 110, 7, 0);
    down.done(&mut l, 110, None, span("call", SpanKind::Client, None));
    assert!(
        ready(&mut l).is_empty(),
        "held for the candidates' trace ids"
    );
    // Client 1 is reported: s1 resolves, answers, and its span goes out before the call's.
    c1.request(&mut l, 100, 20, 0);
    s1.response(&mut l, 7);
    s1.done(&mut l, 101, None, span("s1", SpanKind::Server, None));
    c1.done(&mut l, 100, None, span("c1", SpanKind::Client, None));
    let first = ready(&mut l);
    assert_eq!(first.len(), 2, "{first:?}");
    let srv1 = first.iter().find(|s| s.name == "s1").unwrap().clone();
    let cli1 = first.iter().find(|s| s.name == "c1").unwrap();
    assert_eq!(srv1.parent_span_id, Some(cli1.span_id));
    assert_eq!(l.held(), 1);
    // Client 2 never shows up: s2 falls back to a new trace after the peer wait.
    l.tick_deadlines(102 + LinkConfig::default().peer_wait_ns + 1);
    let call = one(&mut l);
    s2.response(&mut l, 7);
    s2.done(&mut l, 102, None, span("s2", SpanKind::Server, None));
    let srv2 = one(&mut l);
    assert_eq!(srv2.parent_span_id, None);
    assert_ambiguous(&call, &[&srv1, &srv2]);
    assert_eq!(links_of(&call)[0].0, cli1.trace_id);
    assert_eq!(l.held(), 0);
}

#[test]
fn a_held_call_pushed_out_by_the_bound_takes_the_candidates_fallback_ids() {
    let config = LinkConfig {
        max_held: 1,
        ..LinkConfig::default()
    };
    let mut l = Linker::new(config);
    let s1 = Conn::new(2, "127.0.0.1:8000", "127.0.0.1:40001", Side::Server);
    let s2 = Conn::new(4, "127.0.0.1:8000", "127.0.0.1:40002", Side::Server);
    let down = Conn::new(5, "127.0.0.1:40003", "10.0.0.7:80", Side::Client)
        .remote()
        .other();
    s1.request(&mut l, 101, 7, 0);
    s2.request(&mut l, 102, 7, 0);
    down.request(&mut l, 110, 7, 0);
    down.done(&mut l, 110, None, span("db", SpanKind::Client, None));
    assert!(ready(&mut l).is_empty());
    // Another held span pushes it out: both candidates give up their wait at once.
    let h2 = Conn::new(6, "127.0.0.1:50051", "127.0.0.1:40004", Side::Server).other();
    h2.done(
        &mut l,
        120,
        Some(PeerDisc::Stream(1)),
        span("h2", SpanKind::Server, None),
    );
    let call = one(&mut l);
    s1.response(&mut l, 7);
    s1.done(&mut l, 101, None, span("s1", SpanKind::Server, None));
    s2.response(&mut l, 7);
    s2.done(&mut l, 102, None, span("s2", SpanKind::Server, None));
    let got = ready(&mut l);
    assert_ambiguous(&call, &[&got[0], &got[1]]);
    assert_eq!(l.stats().hold_released, 1);
}

#[test]
fn the_candidates_of_a_thread_are_bounded_and_the_oldest_dropped() {
    let mut l = Linker::new(LinkConfig::default());
    let n = MAX_CANDIDATES as u64 + 8;
    for i in 0..n {
        let srv = Conn::new(
            100 + i,
            "10.0.0.1:80",
            &format!("10.0.0.9:{}", 5000 + i),
            Side::Server,
        )
        .remote();
        srv.request(&mut l, 1000 + i, 7, 0);
    }
    let call = Conn::new(1, "10.0.0.1:6000", "10.0.0.7:80", Side::Client).remote();
    call.request(&mut l, 5000, 7, 0);
    call.done(&mut l, 5000, None, span("call", SpanKind::Client, None));
    let c = one(&mut l);
    let want: Vec<SpanId> = (8..n)
        .map(|i| l.ctxs[&(100 + i, 1000 + i)].span_id)
        .collect();
    assert_eq!(c.links.iter().map(|l| l.span_id).collect::<Vec<_>>(), want);
    assert_eq!(l.stats().candidates_dropped, 8);
    // Sets nothing refers to are forgotten.
    l.tick(6000);
    assert_eq!(l.candidates.len(), 1, "the thread's current set stays");
}

#[test]
fn an_http2_stream_the_kernel_injected_into_has_the_injected_ids_parent_or_not() {
    let mut l = Linker::new(LinkConfig::default());
    let server = Conn::new(1, "10.0.0.1:80", "10.0.0.9:5000", Side::Server).remote();
    let grpc = Conn::new(2, "10.0.0.1:6000", "10.0.0.7:50051", Side::Client)
        .remote()
        .other();
    let (t1, s1) = (TraceId([1; 16]), SpanId([2; 8]));
    let (t3, s3) = (TraceId([3; 16]), SpanId([4; 8]));
    // Stream 1 is written while thread 7 serves a request (the kernel used its trace, here a
    // different one to show the header wins); stream 3 by another thread, a new trace.
    server.request(&mut l, 100, 7, 0);
    for (stream, ts, ids) in [(1, 105, (t1, s1)), (3, 106, (t3, s3))] {
        l.on_event(LinkEvent::Http2Injected {
            sk: 2,
            stream,
            ts_ns: ts,
            ids,
        });
    }
    grpc.request(&mut l, 110, 7, 0);
    grpc.request(&mut l, 111, 8, 0);
    grpc.done(
        &mut l,
        110,
        Some(PeerDisc::Stream(1)),
        span("c1", SpanKind::Client, None),
    );
    let c1 = one(&mut l);
    grpc.done(
        &mut l,
        111,
        Some(PeerDisc::Stream(3)),
        span("c3", SpanKind::Client, None),
    );
    let c3 = one(&mut l);
    assert_eq!((c1.trace_id, c1.span_id), (t1, s1));
    assert!(
        c1.parent_span_id.is_some(),
        "still the served request's child"
    );
    assert_eq!((c3.trace_id, c3.span_id, c3.parent_span_id), (t3, s3, None));
    // A later stream the kernel did not inject into keeps ids of its own.
    grpc.request(&mut l, 120, 8, 1);
    grpc.done(
        &mut l,
        120,
        Some(PeerDisc::Stream(5)),
        span("c5", SpanKind::Client, None),
    );
    let c5 = one(&mut l);
    assert_ne!(c5.span_id, s1);
    assert_ne!(c5.span_id, s3);
    assert_eq!(l.stats().injected, 2);
    assert_eq!(l.stats().conflicts, 1);
}
