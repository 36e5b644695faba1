//! Hand-built frame sequences: every frame type, stream life cycles, gRPC shapes, gaps.

use super::super::{
    Detect, H2Conn, H2Stream, MAX_OPEN_STREAMS, StreamEnd, UNKNOWN_ERROR_CODE, detect_frames,
    detect_preface,
};
use super::*;

fn one(streams: &[H2Stream]) -> &H2Stream {
    assert_eq!(streams.len(), 1, "{streams:#?}");
    &streams[0]
}

fn grpc_req(path: &str) -> Vec<u8> {
    block(&[
        lit(":method", "POST"),
        lit(":scheme", "http"),
        lit(":path", path),
        lit(":authority", "localhost"),
        lit("content-type", "application/grpc"),
        lit("te", "trailers"),
    ])
}

fn grpc_resp_head() -> Vec<u8> {
    block(&[
        lit(":status", "200"),
        lit("content-type", "application/grpc"),
    ])
}

fn grpc_trailers(status: &str) -> Vec<u8> {
    block(&[lit("grpc-status", status), lit("grpc-message", "m")])
}

#[test]
fn simple_request_response() {
    let mut req = client_start();
    req.extend(headers(1, END_STREAM, &req_block("GET", "/a")));
    let mut resp = server_start();
    resp.extend(headers(
        1,
        0,
        &block(&[status_block("200"), lit("server", "t")]),
    ));
    let body = vec![b'x'; 100];
    let ev = vec![
        c(10, &req),
        s(20, &resp),
        s(30, &data(1, 0, &body)),
        s(40, &data(1, END_STREAM, &body[..10])),
    ];
    let (out, conn) = replay(&ev);
    let st = one(&out);
    assert_eq!(st.stream_id, 1);
    assert_eq!(st.request_header(":path"), Some("/a"));
    assert_eq!(st.request_header(":method"), Some("GET"));
    assert_eq!(st.response_header(":status"), Some("200"));
    assert_eq!(st.response_header("server"), Some("t"));
    assert_eq!(
        (
            st.request_start_ns,
            st.request_end_ns,
            st.response_start_ns,
            st.response_end_ns
        ),
        (10, 10, 20, 40)
    );
    assert_eq!((st.request_body_len, st.response_body_len), (0, 110));
    assert_eq!(st.end, StreamEnd::Complete);
    assert!(!st.partial);
    let stats = conn.stats();
    assert_eq!(stats.frames, 2 + 5);
    assert_eq!(
        (stats.resyncs, stats.bytes_skipped, stats.hpack_errors),
        (0, 0, 0)
    );
}

#[test]
fn every_frame_type_padding_priority_continuation() {
    let req = req_block("POST", "/upload");
    let (a, b) = req.split_at(7);
    let mut cl = client_start();
    cl.extend(frame(HEADERS, 0, 1, a)); // no END_HEADERS
    cl.extend(continuation(1, false, &b[..3]));
    cl.extend(continuation(1, true, &b[3..]));
    cl.extend(frame(0x2, 0, 1, &[0, 0, 0, 0, 16])); // PRIORITY
    cl.extend(frame(0x6, 0, 0, &[1; 8])); // PING
    cl.extend(frame(0x8, 0, 0, &[0, 0, 1, 0])); // WINDOW_UPDATE
    cl.extend(frame(0xb, 0xff, 0, b"unknown extension frame")); // unknown type
    cl.extend(data_padded(1, 0, &[7; 50], 20));
    cl.extend(data_padded(1, END_STREAM, &[], 0));
    let mut sv = server_start();
    sv.extend(frame(0x6, 1, 0, &[1; 8])); // PING ack
    sv.extend(headers_padded(1, 0, &status_block("201"), 9));
    sv.extend(data_padded(1, 0, b"hello", 255));
    sv.extend(headers_padded(1, END_STREAM, &lit("x-trailer", "t"), 1));
    let ev = vec![c(1, &cl), s(2, &sv)];
    let (out, conn) = replay(&ev);
    let st = one(&out);
    assert_eq!(st.request_header(":path"), Some("/upload"));
    assert_eq!(st.request_body_len, 50);
    assert_eq!(st.response_header(":status"), Some("201"));
    assert_eq!(st.response_body_len, 5);
    assert_eq!(st.trailer("x-trailer"), Some("t"));
    assert_eq!(st.end, StreamEnd::Complete);
    assert!(!st.partial, "{st:#?}");
    assert_eq!(conn.stats().frames, 10 + 6);
    // Byte by byte gives the same result.
    let (out2, conn2) = replay(&bytewise(&ev));
    assert_eq!(out, out2);
    assert_eq!(conn.stats(), conn2.stats());
}

#[test]
fn interleaved_streams_and_resets_from_each_side() {
    let mut cl = client_start();
    for id in [1, 3, 5, 7] {
        cl.extend(headers(id, 0, &req_block("POST", &format!("/s{id}"))));
    }
    let ev = vec![
        c(1, &cl),
        s(2, &server_start()),
        c(3, &data(3, 0, &[0; 10])),
        s(4, &headers(1, 0, &status_block("200"))),
        c(5, &rst(3, 8)), // CANCEL by the client
        s(6, &rst(5, 2)), // INTERNAL_ERROR by the server
        c(7, &data(1, END_STREAM, &[0; 3])),
        c(8, &data(7, END_STREAM, &[0; 4])),
        s(9, &data(1, END_STREAM, &[0; 5])),
        s(10, &headers(7, END_STREAM, &status_block("404"))),
        c(11, &rst(1, 0)), // after the end: ignored
    ];
    let (out, _) = replay(&ev);
    let ids: Vec<u32> = out.iter().map(|s| s.stream_id).collect();
    assert_eq!(ids, [3, 5, 1, 7]);
    assert_eq!(
        out[0].end,
        StreamEnd::Reset {
            error_code: 8,
            by_client: true
        }
    );
    assert_eq!(out[0].request_body_len, 10);
    assert_eq!(
        out[1].end,
        StreamEnd::Reset {
            error_code: 2,
            by_client: false
        }
    );
    assert_eq!(out[2].end, StreamEnd::Complete);
    assert_eq!((out[2].request_body_len, out[2].response_body_len), (3, 5));
    assert_eq!(
        (
            out[2].request_end_ns,
            out[2].response_start_ns,
            out[2].response_end_ns
        ),
        (7, 4, 9)
    );
    assert_eq!(out[3].response_header(":status"), Some("404"));
    assert_eq!(out[3].request_header(":path"), Some("/s7"));
    assert!(out.iter().all(|s| !s.partial));
}

#[test]
fn goaway_ends_streams_above_last_id() {
    let mut cl = client_start();
    for id in [1, 3, 5] {
        cl.extend(headers(id, END_STREAM, &req_block("GET", "/")));
    }
    let mut sv = server_start();
    sv.extend(goaway(3, 0));
    sv.extend(headers(1, END_STREAM, &status_block("200")));
    let (out, _) = replay(&[c(1, &cl), s(2, &sv)]);
    assert_eq!(out[0].stream_id, 5);
    assert_eq!(out[0].end, StreamEnd::GoAway { error_code: 0 });
    assert_eq!(out[1].stream_id, 1);
    assert_eq!(out[1].end, StreamEnd::Complete);
    assert_eq!(out[2].stream_id, 3);
    assert_eq!(out[2].end, StreamEnd::ConnectionClosed);
    assert!(out[2].partial);
}

#[test]
fn informational_headers_are_not_the_response() {
    let mut cl = client_start();
    cl.extend(headers(
        1,
        0,
        &block(&[req_block("POST", "/"), lit("expect", "100-continue")]),
    ));
    let ev = vec![
        c(1, &cl),
        s(2, &headers(1, 0, &status_block("100"))),
        c(3, &data(1, END_STREAM, &[1; 9])),
        s(4, &headers(1, 0, &status_block("103"))),
        s(5, &headers(1, END_STREAM, &status_block("204"))),
    ];
    let (out, _) = replay(&ev);
    let st = one(&out);
    assert_eq!(st.response_header(":status"), Some("204"));
    assert_eq!(st.response_headers.len(), 1);
    assert_eq!(st.response_start_ns, 5);
    assert!(st.trailers.is_empty());
}

#[test]
fn grpc_trailers_only_response() {
    let mut cl = client_start();
    cl.extend(headers(1, 0, &grpc_req("/pkg.Svc/Missing")));
    cl.extend(data(1, END_STREAM, &grpc_msg(3)));
    let only = block(&[
        lit(":status", "200"),
        lit("content-type", "application/grpc"),
        lit("grpc-status", "12"),
        lit("grpc-message", "unknown method"),
    ]);
    let (out, _) = replay(&[c(1, &cl), s(2, &headers(1, END_STREAM, &only))]);
    let st = one(&out);
    assert_eq!(st.response_header("grpc-status"), Some("12"));
    assert_eq!(st.trailer("grpc-status"), None);
    assert_eq!(st.request_body_len, 8);
    assert_eq!(st.response_body_len, 0);
    assert_eq!(st.end, StreamEnd::Complete);
}

/// Client sends `reqs` messages at ts 10, 11, ..; server answers `resps` messages at ts 100..
/// with the trailers last. Returns the stream.
fn grpc_shape(reqs: usize, resps: usize, interleave: bool) -> H2Stream {
    let mut ev = vec![
        c(
            1,
            &[client_start(), headers(1, 0, &grpc_req("/pkg.Svc/M"))].concat(),
        ),
        s(2, &server_start()),
    ];
    let req_frames: Vec<Vec<u8>> = (0..reqs)
        .map(|i| {
            data(
                1,
                if i + 1 == reqs { END_STREAM } else { 0 },
                &grpc_msg(10 + i),
            )
        })
        .collect();
    let mut resp_frames = vec![headers(1, 0, &grpc_resp_head())];
    resp_frames.extend((0..resps).map(|i| data(1, 0, &grpc_msg(100 + i))));
    resp_frames.push(headers(1, END_STREAM, &grpc_trailers("0")));
    if interleave {
        let n = req_frames.len().max(resp_frames.len());
        for i in 0..n {
            if let Some(f) = req_frames.get(i) {
                ev.push(c(10 + 2 * i as u64, f));
            }
            if let Some(f) = resp_frames.get(i) {
                ev.push(s(11 + 2 * i as u64, f));
            }
        }
    } else {
        for (i, f) in req_frames.iter().enumerate() {
            ev.push(c(10 + i as u64, f));
        }
        for (i, f) in resp_frames.iter().enumerate() {
            ev.push(s(100 + i as u64, f));
        }
    }
    let (out, _) = replay(&ev);
    let st = one(&out).clone();
    let want_req: u64 = (0..reqs).map(|i| 15 + i as u64).sum();
    let want_resp: u64 = (0..resps).map(|i| 105 + i as u64).sum();
    assert_eq!(
        (st.request_body_len, st.response_body_len),
        (want_req, want_resp)
    );
    assert_eq!(st.response_header("grpc-status"), Some("0"));
    assert_eq!(st.trailer("grpc-message"), Some("m"));
    assert_eq!(st.end, StreamEnd::Complete);
    assert!(!st.partial);
    st
}

#[test]
fn grpc_unary() {
    let st = grpc_shape(1, 1, false);
    assert_eq!(
        (
            st.request_start_ns,
            st.request_end_ns,
            st.response_start_ns,
            st.response_end_ns
        ),
        (1, 10, 100, 102)
    );
}

#[test]
fn grpc_server_streaming() {
    let st = grpc_shape(1, 5, false);
    assert_eq!(
        (st.request_end_ns, st.response_start_ns, st.response_end_ns),
        (10, 100, 106)
    );
}

#[test]
fn grpc_client_streaming() {
    let st = grpc_shape(6, 1, false);
    assert_eq!(
        (st.request_end_ns, st.response_start_ns, st.response_end_ns),
        (15, 100, 102)
    );
}

#[test]
fn grpc_bidi_interleaved() {
    let st = grpc_shape(4, 4, true);
    // Requests at 10,12,14,16; response frames at 11,13,..,21 (head, 4 messages, trailers).
    assert_eq!(
        (
            st.request_start_ns,
            st.request_end_ns,
            st.response_start_ns,
            st.response_end_ns
        ),
        (1, 16, 11, 21)
    );
}

#[test]
fn hundred_interleaved_streams() {
    let mut ev = vec![c(1, &client_start()), s(2, &server_start())];
    let ids: Vec<u32> = (0..100).map(|i| 2 * i + 1).collect();
    let mut ts = 10;
    // Heads (with table insertions shared by all streams), then bodies in reverse order.
    for &id in &ids {
        let b = block(&[
            idx(3),
            idx(6),
            lit(":path", &format!("/call/{id}")),
            inc("x-client", "shared"),
        ]);
        ev.push(c(ts, &headers(id, 0, &b)));
        ts += 1;
    }
    for &id in ids.iter().rev() {
        ev.push(c(ts, &data(id, END_STREAM, &grpc_msg(id as usize))));
        ts += 1;
    }
    for &id in &ids {
        ev.push(s(
            ts,
            &headers(id, 0, &block(&[idx(8), inc("x-server", "v")])),
        ));
        ts += 1;
    }
    for &id in &ids {
        ev.push(s(ts, &data(id, 0, &vec![0; id as usize])));
        ev.push(s(
            ts,
            &headers(id, END_STREAM, &lit("grpc-status", &(id % 17).to_string())),
        ));
        ts += 1;
    }
    let (out, conn) = replay(&ev);
    assert_eq!(out.len(), 100);
    for (st, &id) in out.iter().zip(&ids) {
        assert_eq!(st.stream_id, id);
        assert_eq!(st.request_header(":path"), Some(&*format!("/call/{id}")));
        assert_eq!(st.request_header("x-client"), Some("shared"));
        assert_eq!(st.request_header(":method"), Some("POST"));
        assert_eq!(st.response_header(":status"), Some("200"));
        assert_eq!(st.response_header("x-server"), Some("v"));
        assert_eq!(st.trailer("grpc-status"), Some(&*(id % 17).to_string()));
        assert_eq!(
            (st.request_body_len, st.response_body_len),
            (u64::from(id) + 5, u64::from(id))
        );
        assert!(!st.partial);
    }
    assert_eq!(conn.stats().hpack_errors, 0);
}

#[test]
fn push_promise_creates_a_stream() {
    let mut cl = client_start();
    cl.extend(headers(1, END_STREAM, &req_block("GET", "/index.html")));
    let mut sv = server_start();
    sv.extend(push_promise(1, 2, &req_block("GET", "/style.css")));
    sv.extend(headers(1, 0, &status_block("200")));
    sv.extend(data(1, END_STREAM, b"<html>"));
    sv.extend(headers(2, 0, &status_block("200")));
    sv.extend(data(2, END_STREAM, b"body{}"));
    let (out, _) = replay(&[c(1, &cl), s(2, &sv)]);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].stream_id, 1);
    assert_eq!(out[1].stream_id, 2);
    assert_eq!(out[1].request_header(":path"), Some("/style.css"));
    assert_eq!(out[1].response_body_len, 6);
    assert!(!out[1].partial);
}

#[test]
fn h2c_upgrade() {
    let req = vec![
        hdr(":method", "GET"),
        hdr(":path", "/up"),
        hdr(":scheme", "http"),
        hdr(":authority", "h"),
    ];
    let conn = H2Conn::after_upgrade(req.clone(), 5);
    let mut cl = client_start();
    cl.extend(settings_ack());
    cl.extend(headers(3, END_STREAM, &req_block("GET", "/second")));
    let mut sv = server_start();
    sv.extend(headers(1, 0, &status_block("200")));
    sv.extend(data(1, END_STREAM, &[b'u'; 77]));
    sv.extend(headers(3, END_STREAM, &status_block("404")));
    let (out, conn) = run(conn, &[c(6, &cl), s(7, &sv)]);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].stream_id, 1);
    assert_eq!(out[0].request_headers, req);
    assert_eq!((out[0].request_start_ns, out[0].request_end_ns), (5, 5));
    assert_eq!(out[0].response_body_len, 77);
    assert_eq!(out[0].response_header(":status"), Some("200"));
    assert!(!out[0].partial);
    assert_eq!(out[1].request_header(":path"), Some("/second"));
    assert_eq!(conn.stats().resyncs, 0);
}

#[test]
fn mid_stream_join_with_unknown_dynamic_entries() {
    // Before we joined, the client inserted "user-agent: old" (index 62) and stream 5 was
    // opened; its response is in progress.
    let conn = H2Conn::mid_stream();
    let ev = vec![
        // Stream 5's remaining response: DATA (unknown stream: ignored), then a HEADERS
        // trailer block of a stream opened before we joined.
        s(1, &data(5, 0, &[0; 20])),
        s(2, &headers(5, END_STREAM, &lit("grpc-status", "0"))),
        // New request: static + unknown index 62 + a literal inserted now.
        c(
            3,
            &headers(
                7,
                END_STREAM,
                &block(&[
                    idx(2),
                    idx(4),
                    idx(62),
                    lit(":authority", "a"),
                    inc("x-id", "1"),
                ]),
            ),
        ),
        s(4, &headers(7, END_STREAM, &block(&[idx(8), idx(63)]))),
        // Next request: 62 is now the known "x-id", 63 the old unknown one.
        c(
            5,
            &headers(
                9,
                END_STREAM,
                &block(&[idx(2), lit(":path", "/n"), idx(62), idx(63)]),
            ),
        ),
        s(6, &headers(9, END_STREAM, &status_block("200"))),
    ];
    let (out, conn) = run(conn, &ev);
    assert_eq!(out.len(), 3, "{out:#?}");
    assert_eq!(out[0].stream_id, 5);
    assert!(out[0].partial);
    assert_eq!(out[0].response_header("grpc-status"), Some("0"));
    assert_eq!(out[1].stream_id, 7);
    assert_eq!(out[1].request_header(":method"), Some("GET"));
    assert_eq!(out[1].request_header(":path"), Some("/"));
    assert_eq!(out[1].request_header("x-id"), Some("1"));
    assert_eq!(out[1].request_header("user-agent"), None);
    assert_eq!(out[1].undecoded_fields, 2);
    assert_eq!(out[1].response_header(":status"), Some("200"));
    assert!(out[1].partial);
    assert_eq!(out[2].request_header("x-id"), Some("1"));
    assert_eq!(out[2].undecoded_fields, 1);
    let stats = conn.stats();
    assert_eq!(stats.undecoded_fields, 3);
    assert_eq!(stats.mid_stream_joins, 1);
    assert_eq!(stats.hpack_errors, 0);
}

#[test]
fn large_data_over_segments_with_gaps() {
    let mut cl = client_start();
    cl.extend(headers(1, 0, &grpc_req("/pkg.Svc/Big")));
    // One DATA frame of 1 MiB + 5 (allowed after SETTINGS_MAX_FRAME_SIZE), sent as 17 writes
    // of which only the first 100 bytes each were captured.
    let msg = grpc_msg(1 << 20);
    let f = data(1, END_STREAM, &msg);
    let mut ev = vec![c(1, &cl), s(2, &server_start())];
    for (i, chunk) in f.chunks(65536).enumerate() {
        ev.push(Event {
            to: To::Server,
            seg: cut(
                10 + i as u64,
                &chunk[..100.min(chunk.len())],
                chunk.len() as u64,
            ),
        });
    }
    ev.push(s(100, &headers(1, 0, &grpc_resp_head())));
    ev.push(s(101, &data(1, 0, &grpc_msg(3))));
    ev.push(s(102, &headers(1, END_STREAM, &grpc_trailers("0"))));
    let (out, conn) = replay(&ev);
    let st = one(&out);
    assert_eq!(st.request_body_len, (1 << 20) + 5);
    assert_eq!(st.request_end_ns, 10 + 16);
    assert_eq!(st.response_header("grpc-status"), Some("0"));
    assert!(!st.partial);
    assert_eq!(conn.stats().resyncs, 0);
}

#[test]
fn gap_over_frame_headers_then_trailers_in_tail() {
    let mut ev = vec![
        c(
            1,
            &[client_start(), headers(1, 0, &grpc_req("/pkg.Svc/Stream"))].concat(),
        ),
        c(2, &data(1, END_STREAM, &grpc_msg(4))),
        s(
            3,
            &[server_start(), headers(1, 0, &grpc_resp_head())].concat(),
        ),
    ];
    // One server write: 40 DATA frames of 1000 bytes then the trailers; captured: 300 bytes
    // of prefix and 256 bytes of tail. Frame headers in the middle are lost.
    let mut big = Vec::new();
    for _ in 0..40 {
        big.extend(data(1, 0, &[0x41; 1000]));
    }
    let trailers = headers(1, END_STREAM, &grpc_trailers("7"));
    big.extend(&trailers);
    assert!(trailers.len() < 256);
    ev.push(Event {
        to: To::Client,
        seg: capped(4, &big, 300, 256),
    });
    let (out, conn) = replay(&ev);
    let st = one(&out);
    assert_eq!(st.trailer("grpc-status"), Some("7"));
    assert_eq!(st.end, StreamEnd::Complete);
    assert!(st.partial);
    assert_eq!(st.response_end_ns, 4);
    // Only the first frame's length was seen; the body is a lower bound, flagged partial.
    assert!(st.response_body_len <= 40_000);
    let stats = conn.stats();
    assert_eq!(stats.resyncs, 1);
    assert!(stats.bytes_skipped > 0);
}

#[test]
fn byte_by_byte_equals_whole() {
    let mut cl = client_start();
    cl.extend(headers(
        1,
        0,
        &block(&[req_block("POST", "/x"), inc("x-a", "1")]),
    ));
    cl.extend(data(1, END_STREAM, &grpc_msg(30)));
    cl.extend(headers(
        3,
        END_STREAM,
        &block(&[idx(3), idx(7), lit(":path", "/y"), idx(62)]),
    ));
    let mut sv = server_start();
    sv.extend(headers(3, 0, &block(&[idx(8), inc("x-b", "2")])));
    sv.extend(headers(1, 0, &block(&[idx(13), idx(62)])));
    sv.extend(data(3, END_STREAM, &[1; 40]));
    sv.extend(data(1, 0, &[1; 4]));
    sv.extend(rst(1, 8));
    let ev = vec![c(1, &cl), s(2, &sv)];
    let (whole, cw) = replay(&ev);
    let (bytes, cb) = replay(&bytewise(&ev));
    assert_eq!(whole, bytes);
    assert_eq!(cw.stats(), cb.stats());
    assert_eq!(whole.len(), 2);
    assert_eq!(whole[0].request_header("x-a"), Some("1"));
    assert_eq!(whole[1].response_header("x-b"), Some("2"));
    assert_eq!(whole[1].response_header(":status"), Some("404"));
}

#[test]
fn gap_in_header_block_keeps_framing() {
    let mut cl = client_start();
    let first = headers(
        1,
        END_STREAM,
        &block(&[req_block("GET", "/a"), inc("x-big", &"v".repeat(200))]),
    );
    cl.extend(&first);
    let cut_at = cl.len() - 100;
    let ev = vec![
        Event {
            to: To::Server,
            seg: cut(1, &cl[..cut_at], cl.len() as u64),
        },
        c(
            2,
            &headers(3, END_STREAM, &block(&[req_block("GET", "/b"), idx(62)])),
        ),
        s(
            3,
            &[server_start(), headers(1, END_STREAM, &status_block("200"))].concat(),
        ),
        s(4, &headers(3, END_STREAM, &status_block("200"))),
    ];
    let (out, conn) = replay(&ev);
    assert_eq!(out.len(), 2);
    assert!(out[0].partial);
    assert!(out[0].request_headers.is_empty());
    assert_eq!(out[1].request_header(":path"), Some("/b"));
    assert_eq!(out[1].request_header("x-big"), None);
    assert_eq!(out[1].undecoded_fields, 1);
    assert_eq!(conn.stats().resyncs, 0);
}

#[test]
fn malformed_padding_is_damage_not_panic() {
    let mut cl = client_start();
    cl.extend(headers(1, 0, &req_block("POST", "/")));
    cl.extend(frame(DATA, PADDED | END_STREAM, 1, &[200, 1, 2])); // pad 200 > len
    cl.extend(frame(HEADERS, END_HEADERS | PADDED, 3, &[50, 0x82])); // pad too long
    let (out, _) = replay(&[
        c(1, &cl),
        s(2, &headers(1, END_STREAM, &status_block("200"))),
    ]);
    assert_eq!(out[0].stream_id, 1);
    assert!(out[0].partial);
    assert_eq!(out[0].request_body_len, 0);
}

#[test]
fn hpack_error_makes_block_partial_and_table_lossy() {
    let mut cl = client_start();
    cl.extend(headers(
        1,
        0,
        &block(&[req_block("GET", "/a"), inc("x-a", "1")]),
    ));
    cl.extend(headers(
        3,
        END_STREAM,
        &[0x82, 0x00, 0x84, 0xff, 0xff, 0xff, 0xff, 0x00],
    ));
    cl.extend(headers(
        5,
        END_STREAM,
        &block(&[req_block("GET", "/c"), idx(62), idx(63)]),
    ));
    let (out, conn) = replay(&[c(1, &cl)]);
    let s5 = out.iter().find(|s| s.stream_id == 5).unwrap();
    assert_eq!(s5.request_header(":path"), Some("/c"));
    assert_eq!(s5.request_header("x-a"), Some("1"));
    assert_eq!(s5.undecoded_fields, 1);
    let s3 = out.iter().find(|s| s.stream_id == 3).unwrap();
    assert!(s3.partial);
    assert_eq!(conn.stats().hpack_errors, 1);
}

#[test]
fn uppercase_names_are_rejected() {
    let mut cl = client_start();
    cl.extend(headers(
        1,
        END_STREAM,
        &block(&[req_block("GET", "/a"), lit("X-Upper", "1")]),
    ));
    let (out, conn) = replay(&[c(1, &cl)]);
    assert!(out[0].request_headers.is_empty());
    assert!(out[0].partial);
    assert_eq!(conn.stats().hpack_errors, 1);
}

#[test]
fn open_streams_are_bounded() {
    let mut ev = vec![c(1, &client_start())];
    for i in 0..(MAX_OPEN_STREAMS as u32 + 10) {
        ev.push(c(
            2 + u64::from(i),
            &headers(2 * i + 1, END_STREAM, &req_block("GET", "/")),
        ));
    }
    let (out, conn) = replay(&ev);
    assert_eq!(out.len(), MAX_OPEN_STREAMS + 10);
    let evicted: Vec<u32> = out
        .iter()
        .filter(|s| s.end == StreamEnd::Evicted)
        .map(|s| s.stream_id)
        .collect();
    assert_eq!(evicted, (0..10).map(|i| 2 * i + 1).collect::<Vec<u32>>());
    assert_eq!(conn.stats().streams_evicted, 10);
}

#[test]
fn oversized_header_block_is_dropped() {
    let mut cl = client_start();
    let big = lit("x-big", &"v".repeat(20_000));
    let mut first = frame(HEADERS, 0, 1, &req_block("GET", "/"));
    for _ in 0..14 {
        first.extend(continuation(1, false, &big));
    }
    first.extend(continuation(1, true, &big));
    cl.extend(first);
    cl.extend(headers(3, END_STREAM, &req_block("GET", "/after")));
    let (out, conn) = replay(&[c(1, &cl)]);
    let s1 = out.iter().find(|s| s.stream_id == 1).unwrap();
    assert!(s1.partial && s1.request_headers.is_empty());
    let s3 = out.iter().find(|s| s.stream_id == 3).unwrap();
    assert_eq!(s3.request_header(":path"), Some("/after"));
    assert_eq!(conn.stats().resyncs, 0);
}

#[test]
fn rst_payload_in_gap_reports_unknown_code() {
    let mut cl = client_start();
    cl.extend(headers(1, END_STREAM, &req_block("GET", "/")));
    let r = rst(1, 8);
    let ev = vec![
        c(1, &cl),
        Event {
            to: To::Client,
            seg: cut(2, &r[..9], 13),
        },
    ];
    let (out, _) = replay(&ev);
    assert_eq!(
        out[0].end,
        StreamEnd::Reset {
            error_code: UNKNOWN_ERROR_CODE,
            by_client: false
        }
    );
    assert!(out[0].partial);
}

#[test]
fn resync_at_segment_start() {
    let mut ev = vec![
        c(
            1,
            &[
                client_start(),
                headers(1, END_STREAM, &req_block("GET", "/a")),
            ]
            .concat(),
        ),
        s(2, &server_start()),
    ];
    // A server write whose frame header is cut by the gap: framing lost.
    let head = headers(1, 0, &status_block("200"));
    let resp = [head.clone(), data(1, 0, &[0; 3000])].concat();
    ev.push(Event {
        to: To::Client,
        seg: cut(3, &resp[..head.len() + 4], resp.len() as u64 + 9),
    });
    // A write of garbage-looking bytes is skipped, then a write starting at a frame boundary.
    ev.push(s(4, b"this is not a frame at all, just text"));
    ev.push(s(5, &data(1, END_STREAM, &[0; 10])));
    let (out, conn) = replay(&ev);
    let st = one(&out);
    assert_eq!(st.response_header(":status"), Some("200"));
    assert!(st.partial);
    assert_eq!(st.end, StreamEnd::Complete);
    assert_eq!(st.response_end_ns, 5);
    assert_eq!(conn.stats().resyncs, 1);
}

#[test]
fn detection() {
    assert_eq!(detect_preface(PREFACE), Detect::Yes);
    assert_eq!(detect_preface(&PREFACE[..5]), Detect::NeedMore);
    assert_eq!(detect_preface(b"GET / HTTP/1.1\r\n"), Detect::No);
    assert_eq!(detect_preface(b""), Detect::NeedMore);

    assert_eq!(detect_frames(&settings(&[(3, 100)])), Detect::Yes);
    assert_eq!(
        detect_frames(&[settings_ack(), headers(1, 0, &status_block("200"))].concat()),
        Detect::Yes
    );
    assert_eq!(
        detect_frames(&data(5, END_STREAM, &[1; 20000])[..2048]),
        Detect::Yes
    );
    assert_eq!(detect_frames(&[0, 0, 0]), Detect::NeedMore);
    for no in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"POST /x HTTP/1.1\r\n",
        // PostgreSQL: Query, startup message, SSLRequest, Parse.
        b"Q\0\0\0\x0dSELECT 1\0",
        b"\0\0\0\x54\0\x03\0\0user\0postgres\0database\0test\0\0",
        b"\0\0\0\x08\x04\xd2\x16\x2f",
        b"P\0\0\0\x10\0SELECT $1\0\0\0",
        // TLS ClientHello and application data records.
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"\x17\x03\x03\x00\x45abcdefghij",
        b"random text that is not a protocol",
        b"\x00\x00\x08\x06\x00\x00\x00\x00\x01PINGDATA", // PING on a stream
        b"\x00\x00\x05\x04\x00\x00\x00\x00\x00abcde",    // SETTINGS length 5
        b"\x00\x00\x04\x03\x00\x00\x00\x00\x00\0\0\0\x08", // RST_STREAM on stream 0
        b"\x00\x00\x00\x00\x01\x80\x00\x00\x01",         // reserved bit
        b"\x00\x00\x00\x00\x02\x00\x00\x00\x01",         // DATA with END_HEADERS flag
    ] {
        assert_eq!(
            detect_frames(no),
            Detect::No,
            "{:?}",
            String::from_utf8_lossy(no)
        );
    }
    // A valid first frame followed by an invalid second header.
    let mut v = settings_ack();
    v.extend(b"GET / HTTP/1.1\r\n");
    assert_eq!(detect_frames(&v), Detect::No);
}

#[test]
fn garbage_is_skipped_with_bounded_memory() {
    let mut conn = H2Conn::new();
    let mut x = 12345u64;
    let mut fed = 0u64;
    for i in 0..2000 {
        let mut buf = vec![0u8; 1500];
        for b in &mut buf {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (x >> 56) as u8;
        }
        fed += buf.len() as u64;
        if i % 2 == 0 {
            conn.push_client(seg(i, &buf));
        } else {
            conn.push_server(seg(i, &buf));
        }
        assert!(conn.sides.iter().all(|s| s.buf.capacity() <= 1 << 20));
        assert!(conn.open.len() <= MAX_OPEN_STREAMS);
    }
    conn.close(1_000_000);
    let out = conn.take_streams();
    assert!(out.len() < 5, "{}", out.len());
    assert!(conn.stats().bytes_skipped > fed / 2, "{:?}", conn.stats());
}

#[test]
fn text_on_new_connection_is_not_h2() {
    let req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let (out, conn) = replay(&[c(1, req), s(2, resp)]);
    assert!(out.is_empty());
    assert_eq!(
        conn.stats().frames,
        1,
        "the server's first 9 bytes are judged, then lost"
    );
    assert_eq!(
        conn.stats().bytes_skipped,
        (req.len() + resp.len() - 9) as u64
    );
}
