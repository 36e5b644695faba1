use socktrace_common::{
    AF_INET, CLOSE_LOST_BEFORE, CTX_SERVER_REQUEST, ConnTuple, ConnectEvent, DIR_EGRESS,
    DIR_INGRESS, DataEvent, EVENT_DATA, EVENT_INJECT, InjectEvent, ROLE_CLIENT, ROLE_SERVER,
    ROLE_UNKNOWN, TCP_CLOSE, TCP_FIN_WAIT1,
};

use super::{
    super::{
        ConnConfig, Resolver, Role,
        peers::{INJECTION_TTL_NS, TRACED_CLIENT_TTL_NS},
        resolve::Resolved,
    },
    ConnTable,
};
use crate::{
    protocol::{Enabled, http1::Http1},
    trace::{
        link::{Actor, LinkEvent, Side},
        span::{SpanId, TraceId},
    },
};

struct NoResolver;
impl Resolver for NoResolver {
    fn resolve(&mut self, _: u32, _: u32) -> Option<Resolved> {
        None
    }
}

/// Answers like /proc for a connection open before the agent: a server socket.
struct OpenBefore;
impl Resolver for OpenBefore {
    fn resolve(&mut self, _: u32, _: u32) -> Option<Resolved> {
        Some(Resolved {
            local: "10.0.0.2:80".parse().expect("addr"),
            peer: "10.0.0.1:40000".parse().expect("addr"),
            role: Some(crate::conn::Role::Server),
        })
    }
}

#[test]
fn a_connection_open_before_the_agent_is_traced_and_counted_as_found_open() {
    let mut t = table();
    let mut out = Vec::new();
    let req = b"GET /a HTTP/1.1\r\nHost: b\r\n\r\n";
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let unknown = ConnTuple::default();
    let mut ev = event(7, 100, 9, DIR_INGRESS, ROLE_SERVER, unknown, req.len());
    ev.tuple_known = 0;
    t.on_data(&ev, req, &[], &mut NoResolver, &mut out);
    // Without addresses there is no connection yet, and it is counted.
    assert_eq!((t.stats.opened, t.stats.unresolved), (0, 1));
    t.on_data(&ev, req, &[], &mut OpenBefore, &mut out);
    let mut ev = event(7, 200, 9, DIR_EGRESS, ROLE_SERVER, unknown, resp.len());
    ev.tuple_known = 0;
    t.on_data(&ev, resp, &[], &mut OpenBefore, &mut out);
    assert_eq!((t.stats.opened, t.stats.found_open), (1, 1));
    assert_eq!(out.len(), 1, "one exchange");
    assert_eq!(out[0].peer, "10.0.0.1:40000".parse().expect("addr"));
    // A connection the kernel saw established is not counted.
    let tp = tuple([10, 0, 0, 1], 40001, [10, 0, 0, 2], 80);
    let ev = event(8, 300, 9, DIR_EGRESS, ROLE_CLIENT, tp, req.len());
    t.on_data(&ev, req, &[], &mut NoResolver, &mut out);
    assert_eq!((t.stats.opened, t.stats.found_open), (2, 1));
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

fn event(sk: u64, ts: u64, tid: u32, dir: u32, role: u32, t: ConnTuple, len: usize) -> DataEvent {
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
        link_sk: 0,
        link_ts: 0,
    }
}

fn table() -> ConnTable {
    ConnTable::new(ConnConfig {
        enabled: Enabled::all(),
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
        stream: 0,
        _pad: 0,
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
    assert!(t.traced_clients.is_empty());
    // A client whose close never came is forgotten after a while all the same.
    t.on_connect(&connect(21, client));
    t.expire_traced_clients(1 + TRACED_CLIENT_TTL_NS);
    assert_eq!(t.traced_clients.len(), 1);
    t.expire_traced_clients(2 + TRACED_CLIENT_TTL_NS);
    assert!(t.traced_clients.is_empty());
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
            LinkEvent::ServerResponse {
                sk: 7,
                actor: Actor::Thread(3),
            },
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
fn go_records_link_through_the_kernels_request_not_the_thread() {
    use socktrace_common::CTX_GO;
    let mut t = table();
    let (mut out, mut r) = (Vec::new(), NoResolver);
    let tp = tuple([10, 0, 0, 1], 40000, [10, 0, 0, 2], 80);
    let req = b"GET /a HTTP/1.1\r\nHost: b\r\n\r\n";
    // A client request written by a goroutine working for request (9, 500), on thread 3.
    let mut ev = event(7, 100, 3, DIR_EGRESS, ROLE_CLIENT, tp, req.len());
    ev.ctx_flags = CTX_GO;
    ev.link_sk = 9;
    ev.link_ts = 500;
    t.on_data(&ev, req, &[], &mut r, &mut out);
    // And one made for no request.
    let tp2 = tuple([10, 0, 0, 1], 40001, [10, 0, 0, 2], 80);
    let mut ev = event(8, 200, 3, DIR_EGRESS, ROLE_CLIENT, tp2, req.len());
    ev.ctx_flags = CTX_GO;
    t.on_data(&ev, req, &[], &mut r, &mut out);
    let actors: Vec<Actor> = t
        .take_links()
        .into_iter()
        .map(|l| match l {
            LinkEvent::Http1Request { actor, .. } => actor,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(actors, [Actor::Go(Some((9, 500))), Actor::Go(None)]);
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
    // resyncs, bytes_skipped, invalid_heads, unanswered_requests_dropped
    let live = t.protocol_counters(&Http1);
    assert!(live[2] + live[0] > 0, "{live:?}");
    t.on_close(7, TCP_CLOSE as u32, 200, &mut out);
    assert!(t.is_empty());
    assert_eq!(t.protocol_counters(&Http1), live);
}

#[test]
fn a_first_message_in_several_reads_is_detected_whole() {
    let mut t = table();
    let (mut out, mut r) = (Vec::new(), NoResolver);
    let tp = tuple([10, 0, 0, 1], 80, [10, 0, 0, 2], 40000);
    // An uncommon method needs its whole request line to be believed: the first read alone is
    // not enough, and the second alone would start a request with the method "IND".
    let parts: [&[u8]; 2] = [b"PROPF", b"IND /x HTTP/1.1\r\nHost: b\r\n\r\n"];
    for (i, p) in parts.iter().enumerate() {
        let ev = event(7, 100 + i as u64, 3, DIR_INGRESS, ROLE_SERVER, tp, p.len());
        t.on_data(&ev, p, &[], &mut r, &mut out);
    }
    let resp = b"HTTP/1.1 207 Multi-Status\r\nContent-Length: 0\r\n\r\n";
    let ev = event(7, 110, 3, DIR_EGRESS, ROLE_SERVER, tp, resp.len());
    t.on_data(&ev, resp, &[], &mut r, &mut out);
    assert_eq!(out.len(), 1);
    let ex = format!("{:?}", out[0].exchange);
    assert!(
        ex.contains("method: \"PROPFIND\"") && ex.contains("target: \"/x\""),
        "{ex}"
    );
    assert_eq!(
        out[0].link.start_ns, 100,
        "the request began with its first read"
    );
    assert!(!ex.contains("partial: true"), "{ex}");
    // Bytes of the answering side before any request are held, not parsed as the start.
    let stale = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    t.on_data(
        &event(8, 200, 3, DIR_EGRESS, ROLE_SERVER, tp, stale.len()),
        stale,
        &[],
        &mut r,
        &mut out,
    );
    let req = b"GET /y HTTP/1.1\r\nHost: b\r\n\r\n";
    t.on_data(
        &event(8, 210, 3, DIR_INGRESS, ROLE_SERVER, tp, req.len()),
        req,
        &[],
        &mut r,
        &mut out,
    );
    t.on_data(
        &event(8, 220, 3, DIR_EGRESS, ROLE_SERVER, tp, stale.len()),
        stale,
        &[],
        &mut r,
        &mut out,
    );
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].link.start_ns, 210);
    assert_eq!(t.stats().mid_stream_skipped, 1);
}

#[test]
fn a_connection_that_never_shows_a_protocol_holds_little() {
    let mut t = table();
    let (mut out, mut r) = (Vec::new(), NoResolver);
    let tp = tuple([10, 0, 0, 1], 80, [10, 0, 0, 2], 40000);
    // A server streaming to a client the agent joined mid-way: only answering-side bytes.
    let chunk = [b'x'; 1000];
    for i in 0..50 {
        let ev = event(9, 100 + i, 3, DIR_EGRESS, ROLE_SERVER, tp, chunk.len());
        t.on_data(&ev, &chunk, &[], &mut r, &mut out);
    }
    let held = match &t.conns[&9].state {
        crate::conn::stream::State::Detecting { held, .. } => {
            held.iter().map(|h| h.1.data.len()).sum::<usize>()
        }
        _ => panic!("still detecting"),
    };
    assert!(held <= 2048, "{held} bytes held");
    assert_eq!(t.stats().mid_stream_skipped, 50);
    assert!(out.is_empty());
}

/// The kernel lost records of a keep-alive connection (ring buffer full) - here the response
/// to `/a` and the request `/b`: the answer to `/b` must not be paired with `/a`.
#[test]
fn a_hole_in_the_stream_drops_what_was_held_instead_of_mispairing() {
    let mut t = table();
    let (mut out, mut r) = (Vec::new(), NoResolver);
    let tp = tuple([10, 0, 0, 1], 80, [10, 0, 0, 2], 40000);
    let send =
        |t: &mut ConnTable, out: &mut Vec<_>, r: &mut NoResolver, ts, dir, flags, b: &[u8]| {
            let mut ev = event(7, ts, 3, dir, ROLE_SERVER, tp, b.len());
            ev.ctx_flags = flags;
            t.on_data(&ev, b, &[], r, out);
        };
    let ok = |body: &str| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    send(
        &mut t,
        &mut out,
        &mut r,
        100,
        DIR_INGRESS,
        0,
        b"GET /a HTTP/1.1\r\nHost: b\r\n\r\n",
    );
    // Lost: the response to /a, the request /b. Then /b's response, marked.
    send(
        &mut t,
        &mut out,
        &mut r,
        300,
        DIR_EGRESS,
        socktrace_common::DATA_LOST_BEFORE,
        ok("bbbb").as_bytes(),
    );
    assert!(out.is_empty(), "{:?}", out.first().map(|x| &x.exchange));
    // The connection goes on normally.
    send(
        &mut t,
        &mut out,
        &mut r,
        400,
        DIR_INGRESS,
        0,
        b"GET /c HTTP/1.1\r\nHost: b\r\n\r\n",
    );
    send(
        &mut t,
        &mut out,
        &mut r,
        410,
        DIR_EGRESS,
        0,
        ok("c").as_bytes(),
    );
    assert_eq!(out.len(), 1);
    let ex = format!("{:?}", out[0].exchange);
    assert!(ex.contains("target: \"/c\""), "{ex}");
    assert_eq!(t.stats.reset_after_loss, 1);
    assert_eq!(t.stats.opened, 2);
}

/// Records were lost somewhere (the kernel does not say whose): a request still unanswered when
/// its connection ends is dropped, not reported as failed - its answer may be what was lost.
#[test]
fn after_a_loss_an_unanswered_request_is_dropped_at_the_end_not_failed() {
    let mut t = table();
    let (mut out, mut r) = (Vec::new(), NoResolver);
    let tp = tuple([10, 0, 0, 1], 40000, [10, 0, 0, 2], 80);
    let req = b"GET /a HTTP/1.1\r\nHost: b\r\n\r\n";
    for sk in [7, 8] {
        let ev = event(sk, 100, 3, DIR_EGRESS, ROLE_CLIENT, tp, req.len());
        t.on_data(&ev, req, &[], &mut r, &mut out);
    }
    // Connection 7 ends normally: its request unanswered is a failed span.
    t.on_close(7, TCP_CLOSE as u32, 200, &mut out);
    assert_eq!(out.len(), 1);
    t.on_loss();
    t.on_close(8, TCP_CLOSE as u32, 300, &mut out);
    assert_eq!(out.len(), 1, "{:?}", out.last().map(|x| &x.exchange));
    assert_eq!(t.stats.ended_after_loss, 1);
    // The kernel lost the answer of connection 9, and its close is the only record after the
    // hole: the close says so, even when user space saw no loss since the connection opened.
    let ev = event(9, 400, 3, DIR_EGRESS, ROLE_CLIENT, tp, req.len());
    t.on_data(&ev, req, &[], &mut r, &mut out);
    t.on_close(9, TCP_FIN_WAIT1 as u32 | CLOSE_LOST_BEFORE, 450, &mut out);
    t.on_close(9, TCP_CLOSE as u32, 500, &mut out);
    assert_eq!(out.len(), 1, "{:?}", out.last().map(|x| &x.exchange));
    assert_eq!(t.stats.ended_after_loss, 2);
}

#[test]
fn a_request_written_a_byte_at_a_time_is_detected_and_traced() {
    let mut t = table();
    let (mut out, mut r) = (Vec::new(), NoResolver);
    let tp = tuple([10, 0, 0, 1], 80, [10, 0, 0, 2], 40000);
    // A slow client: one byte per read, "G", "E", "T", " ", "/"... - too little to judge for
    // the first reads, which must not use up detection's tries.
    let req = b"GET /drip HTTP/1.1\r\nHost: b\r\n\r\n";
    for (i, b) in req.iter().enumerate() {
        let ev = event(7, 100 + i as u64, 3, DIR_INGRESS, ROLE_SERVER, tp, 1);
        t.on_data(&ev, &[*b], &[], &mut r, &mut out);
    }
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let ev = event(7, 200, 3, DIR_EGRESS, ROLE_SERVER, tp, resp.len());
    t.on_data(&ev, resp, &[], &mut r, &mut out);
    assert_eq!(out.len(), 1);
    let ex = format!("{:?}", out[0].exchange);
    assert!(
        ex.contains("method: \"GET\"") && ex.contains("target: \"/drip\""),
        "{ex}"
    );
    assert!(!ex.contains("partial: true"), "{ex}");
    assert_eq!(
        out[0].link.start_ns, 100,
        "the request began with its first byte"
    );
    assert_eq!(t.stats().undetected, 0);
}

#[test]
fn garbage_is_undetected_whether_detection_gives_up_or_the_connection_ends_first() {
    let mut t = table();
    let (mut out, mut r) = (Vec::new(), NoResolver);
    let tp = tuple([10, 0, 0, 1], 80, [10, 0, 0, 2], 40000);
    // One write of garbage, then the close: counted when the connection ends.
    let junk = [0xffu8; 64];
    let ev = event(7, 100, 3, DIR_INGRESS, ROLE_SERVER, tp, junk.len());
    t.on_data(&ev, &junk, &[], &mut r, &mut out);
    assert_eq!(t.stats().undetected, 0, "one read is not enough to give up");
    t.on_close(7, TCP_CLOSE as u32, 200, &mut out);
    assert_eq!(t.stats().undetected, 1);
    // Garbage a byte at a time: short runs are no tries, but only up to MAX_HELD reads - then
    // the usual tries, and detection gives up (bounded).
    for i in 0..11u64 {
        assert_eq!(t.stats().undetected, 1, "read {i}");
        let ev = event(8, 300 + i, 3, DIR_INGRESS, ROLE_SERVER, tp, 1);
        t.on_data(&ev, &[0xff], &[], &mut r, &mut out);
    }
    assert_eq!(t.stats().undetected, 2);
    assert!(matches!(
        t.conns[&8].state,
        crate::conn::stream::State::Ignored
    ));
    // Counted once, not again at its close.
    t.on_close(8, TCP_CLOSE as u32, 400, &mut out);
    assert_eq!(t.stats().undetected, 2);
    assert!(out.is_empty());
}

/// A socket the kernel freed and reused for another connection, the first one's close lost:
/// the old connection ends, and the new one is not fed into its state.
#[test]
fn a_socket_reused_for_another_connection_starts_a_new_one() {
    let mut t = table();
    let (mut out, mut r) = (Vec::new(), NoResolver);
    let old = tuple([127, 0, 0, 1], 40000, [127, 0, 0, 1], 80);
    let new = tuple([127, 0, 0, 1], 40002, [127, 0, 0, 1], 80);
    let req = |p: &str| format!("GET {p} HTTP/1.1\r\nHost: b\r\n\r\n");
    let a = req("/a");
    t.on_data(
        &event(7, 100, 3, DIR_EGRESS, ROLE_CLIENT, old, a.len()),
        a.as_bytes(),
        &[],
        &mut r,
        &mut out,
    );
    t.on_loss();
    let b = req("/b");
    t.on_data(
        &event(7, 200, 4, DIR_EGRESS, ROLE_CLIENT, new, b.len()),
        b.as_bytes(),
        &[],
        &mut r,
        &mut out,
    );
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    t.on_data(
        &event(7, 210, 4, DIR_INGRESS, ROLE_CLIENT, new, resp.len()),
        resp,
        &[],
        &mut r,
        &mut out,
    );
    assert_eq!(out.len(), 1);
    let ex = format!("{:?}", out[0].exchange);
    assert!(ex.contains("target: \"/b\""), "{ex}");
    assert_eq!(out[0].local.port(), 40002);
    assert_eq!(t.stats.socket_reused, 1);
    assert_eq!(t.stats.ended_after_loss, 1);
    assert_eq!(t.stats.opened, 2);
}

/// A TLS connection: the handshake's ciphertext comes from the socket, then the plaintext from
/// the TLS library (`DATA_TLS`), with more ciphertext in between (an alert, a session ticket).
#[test]
fn tls_plaintext_restarts_the_connection_and_later_ciphertext_is_skipped() {
    use socktrace_common::DATA_TLS;
    let mut t = table();
    let (mut out, mut r) = (Vec::new(), NoResolver);
    let tp = tuple([10, 0, 0, 1], 443, [10, 0, 0, 2], 40000);
    let mut feed = |ts, dir, flags, b: &[u8]| {
        let mut ev = event(7, ts, 3, dir, ROLE_SERVER, tp, b.len());
        ev.ctx_flags = flags;
        t.on_data(&ev, b, &[], &mut r, &mut out);
    };
    // ClientHello and ServerHello records: ciphertext to the parsers.
    feed(100, DIR_INGRESS, 0, b"\x16\x03\x01\x00\x05hello");
    feed(110, DIR_EGRESS, 0, b"\x16\x03\x03\x00\x05world");
    feed(
        200,
        DIR_INGRESS,
        DATA_TLS,
        b"GET /a HTTP/1.1\r\nHost: b\r\n\r\n",
    );
    // A record outside the library's calls, between request and response.
    feed(
        210,
        DIR_EGRESS,
        0,
        b"\x17\x03\x03\x00\x10GET /x HTTP/1.1\r\n",
    );
    feed(
        300,
        DIR_EGRESS,
        DATA_TLS,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    );
    assert_eq!(out.len(), 1, "one exchange, from the plaintext only");
    assert!(out[0].tls, "marked as read at the TLS library");
    let ex = format!("{:?}", out[0].exchange);
    assert!(ex.contains("target: \"/a\""), "{ex}");
    assert_eq!(t.stats.tls_plaintext, 1);
    assert_eq!(t.stats.tls_ciphertext_skipped, 1);
    assert_eq!(t.stats.opened, 2, "started over at the first plaintext");
}

/// A TLS client on memory buffers: its first request's plaintext comes without a socket, before
/// the socket write that carries it (a `ChangeCipherSpec` then application data, as TLS 1.3
/// clients write it); the request is tied to that socket and paired with the response read
/// there.
#[test]
fn a_tls_write_without_a_socket_takes_its_threads_next_socket_write() {
    use socktrace_common::DATA_TLS;
    let mut t = table();
    let (mut out, mut r) = (Vec::new(), NoResolver);
    let tp = tuple([10, 0, 0, 2], 40000, [10, 0, 0, 1], 443);
    let mut feed = |sk, ts, dir, flags, b: &[u8]| {
        let mut ev = event(sk, ts, 3, dir, ROLE_CLIENT, tp, b.len());
        ev.ctx_flags = flags;
        t.on_data(&ev, b, &[], &mut r, &mut out);
    };
    feed(7, 100, DIR_EGRESS, 0, b"\x16\x03\x01\x00\x05hello");
    feed(7, 110, DIR_INGRESS, 0, b"\x16\x03\x03\x00\x05world");
    let req = b"GET /a HTTP/1.1\r\nHost: b\r\n\r\n";
    feed(0, 200, DIR_EGRESS, DATA_TLS, req);
    let mut cipher = b"\x14\x03\x03\x00\x01\x01\x17\x03\x03\x00\x40".to_vec();
    cipher.resize(6 + 5 + 64, 0);
    feed(7, 210, DIR_EGRESS, 0, &cipher);
    feed(7, 300, DIR_INGRESS, 0, b"\x17\x03\x03\x00\x30");
    feed(
        7,
        310,
        DIR_INGRESS,
        DATA_TLS,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    );
    assert_eq!(out.len(), 1, "one exchange");
    assert!(out[0].tls);
    assert_eq!(out[0].role, Role::Client);
    let ex = format!("{:?}", out[0].exchange);
    assert!(ex.contains("target: \"/a\""), "{ex}");
    assert_eq!(t.stats.tls_bound_by_next_write, 1);
    assert_eq!(t.stats.tls_unbound_dropped, 0);
    assert_eq!(t.stats.tls_ciphertext_skipped, 2);
}

/// node writes a TLS close-notify alert as its peer's reset closes the socket: the record
/// comes after the close, and the kernel no longer names the socket's addresses. It must not
/// open a connection (which would end as a phantom `TLS` span); a new connection on the same
/// socket, which the kernel saw established, is traced.
#[test]
fn a_record_after_its_sockets_close_opens_no_connection() {
    let mut t = table();
    let (mut out, mut r) = (Vec::new(), OpenBefore);
    let tp = tuple([10, 0, 0, 2], 80, [10, 0, 0, 1], 40000);
    let req = b"GET /a HTTP/1.1\r\nHost: b\r\n\r\n";
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    t.on_data(
        &event(7, 100, 3, DIR_INGRESS, ROLE_SERVER, tp, req.len()),
        req,
        &[],
        &mut r,
        &mut out,
    );
    t.on_data(
        &event(7, 110, 3, DIR_EGRESS, ROLE_SERVER, tp, resp.len()),
        resp,
        &[],
        &mut r,
        &mut out,
    );
    t.on_close(7, TCP_CLOSE as u32, 200, &mut out);
    let mut late = event(7, 210, 3, DIR_EGRESS, ROLE_UNKNOWN, tp, 24);
    late.tuple_known = 0;
    t.on_data(&late, b"\x17\x03\x03\x00\x13", &[], &mut r, &mut out);
    assert_eq!(t.stats.after_close_skipped, 1);
    assert_eq!((t.stats.opened, t.stats.found_open), (1, 0));
    // The socket's next connection.
    let next = tuple([10, 0, 0, 2], 80, [10, 0, 0, 1], 40001);
    t.on_data(
        &event(7, 300, 3, DIR_INGRESS, ROLE_SERVER, next, req.len()),
        req,
        &[],
        &mut r,
        &mut out,
    );
    assert_eq!(t.stats.opened, 2);
    // Long after the close, a record without addresses is a connection found open.
    t.on_close(7, TCP_CLOSE as u32, 400, &mut out);
    t.expire(400 + 2_000_000_000, &mut out);
    t.on_data(&late, req, &[], &mut r, &mut out);
    assert_eq!((t.stats.opened, t.stats.found_open), (3, 1));
    assert_eq!(t.stats.after_close_skipped, 1);
}

/// A TLS connection whose library cannot be read gives only ciphertext: counted when it ends,
/// and a readable one is not.
#[test]
fn a_tls_connection_without_plaintext_is_counted_as_unreadable_when_it_ends() {
    use socktrace_common::DATA_TLS;
    let mut t = table();
    let (mut out, mut r) = (Vec::new(), NoResolver);
    let tp = tuple([10, 0, 0, 1], 443, [10, 0, 0, 2], 40000);
    let hello = b"\x16\x03\x01\x00\x05hello";
    for (sk, plaintext) in [(7, false), (8, true)] {
        let ev = event(sk, 100, 3, DIR_INGRESS, ROLE_SERVER, tp, hello.len());
        t.on_data(&ev, hello, &[], &mut r, &mut out);
        if plaintext {
            let req = b"GET /a HTTP/1.1\r\nHost: b\r\n\r\n";
            let mut ev = event(sk, 200, 3, DIR_INGRESS, ROLE_SERVER, tp, req.len());
            ev.ctx_flags = DATA_TLS;
            t.on_data(&ev, req, &[], &mut r, &mut out);
        }
        t.on_close(sk, TCP_CLOSE as u32, 300, &mut out);
    }
    assert_eq!(t.stats.tls_unreadable, 1);
    // The unreadable connection is one opaque exchange, from its first record to its close.
    let opaque: Vec<_> = out.iter().filter(|e| e.link.sk == 7).collect();
    assert_eq!(opaque.len(), 1);
    assert_eq!(
        format!("{:?}", opaque[0].exchange),
        "OpaqueTls { start_ns: 100, end_ns: 300 }"
    );
    assert_eq!(opaque[0].role, Role::Server);
    let before = out.len();
    // Cleartext that merely starts with a byte of that range is not a TLS record.
    let ev = event(9, 100, 3, DIR_INGRESS, ROLE_SERVER, tp, 4);
    t.on_data(&ev, b"\x16\x04ab", &[], &mut r, &mut out);
    t.on_close(9, TCP_CLOSE as u32, 300, &mut out);
    assert_eq!(t.stats.tls_unreadable, 1);
    assert_eq!(out.len(), before);
}

#[test]
fn an_idle_connection_shrinks_its_parser_and_stays_traced() {
    let mut t = table();
    let (mut out, mut r) = (Vec::new(), NoResolver);
    let tp = tuple([10, 0, 0, 1], 80, [10, 0, 0, 2], 40000);
    let head = format!(
        "GET /big HTTP/1.1\r\nHost: h\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(3000)
    );
    let (a, b) = head.as_bytes().split_at(1500);
    for (ts, part) in [(100, a), (200, b)] {
        let ev = event(7, ts, 3, DIR_INGRESS, ROLE_SERVER, tp, part.len());
        t.on_data(&ev, part, &[], &mut r, &mut out);
    }
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let ev = event(7, 300, 3, DIR_EGRESS, ROLE_SERVER, tp, resp.len());
    t.on_data(&ev, resp, &[], &mut r, &mut out);
    assert_eq!(out.len(), 1);
    let allocated = |t: &ConnTable| match &t.conns[&7].state {
        crate::conn::stream::State::Active { session, .. } => session.allocated(),
        _ => panic!("not parsing"),
    };
    assert!(allocated(&t) >= 3000, "{}", allocated(&t));
    // Idle for half a second: nothing changes.
    t.expire(300 + 500_000_000, &mut out);
    assert!(allocated(&t) >= 3000);
    // Idle for two: the buffers go, the connection stays and parses what comes next.
    t.expire(300 + 2_000_000_000, &mut out);
    assert_eq!(allocated(&t), 0);
    assert_eq!(t.len(), 1);
    let next = b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n";
    let ev = event(
        7,
        3_000_000_000,
        3,
        DIR_INGRESS,
        ROLE_SERVER,
        tp,
        next.len(),
    );
    t.on_data(&ev, next, &[], &mut r, &mut out);
    let ev = event(7, 3_000_000_100, 3, DIR_EGRESS, ROLE_SERVER, tp, resp.len());
    t.on_data(&ev, resp, &[], &mut r, &mut out);
    assert_eq!(out.len(), 2);
}
