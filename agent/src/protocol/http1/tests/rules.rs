//! Hand-written tests, one behaviour each.

use super::super::{
    Detect, Http1Stats, MAX_HEAD_LEN, MAX_UNANSWERED, detect_request, detect_response,
};
use super::*;

const GET_A: &[u8] = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n";
const GET_B: &[u8] = b"GET /b?x=1 HTTP/1.1\r\nHost: h\r\n\r\n";
const GET_C: &[u8] = b"GET /c HTTP/1.1\r\nHost: h\r\n\r\n";
const OK_5: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
const OK_0: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
const NOT_FOUND: &[u8] = b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nno\n";

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Summary shorthand: (method, target, status, req body, resp body, partial).
fn sum(m: &str, t: &str, status: Option<u16>, req: u64, resp: u64, partial: bool) -> Summary {
    Summary {
        method: m.into(),
        target: t.into(),
        status,
        request_body_len: req,
        response_body_len: resp,
        partial,
    }
}

fn clean(m: &str, t: &str, status: u16, req: u64, resp: u64) -> Summary {
    sum(m, t, Some(status), req, resp, false)
}

fn req(ts: u64, data: &[u8]) -> Event {
    Event {
        to: To::Server,
        seg: seg(ts, data),
    }
}

fn resp(ts: u64, data: &[u8]) -> Event {
    Event {
        to: To::Client,
        seg: seg(ts, data),
    }
}

fn req_cut(ts: u64, data: &[u8], len: u64) -> Event {
    Event {
        to: To::Server,
        seg: cut(ts, data, len),
    }
}

fn resp_cut(ts: u64, data: &[u8], len: u64) -> Event {
    Event {
        to: To::Client,
        seg: cut(ts, data, len),
    }
}

fn run(events: &[Event]) -> (Vec<Summary>, Http1Stats) {
    let (xs, conn) = replay(events);
    (summaries(&xs), conn.stats())
}

// ---- basics ----

#[test]
fn simple_exchange_fields_and_timestamps() {
    let mut conn = Http1Conn::new();
    conn.push_request(seg(
        10,
        b"GET /a/b?x=1 HTTP/1.1\r\nHost: example\r\nX-Many:  a b  \r\nx-many: second\r\n\r\n",
    ));
    assert!(
        conn.take_exchanges().is_empty(),
        "no exchange before the response"
    );
    conn.push_response(seg(
        20,
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234",
    ));
    assert!(conn.take_exchanges().is_empty(), "body not finished");
    conn.push_response(seg(30, b"56789"));
    let xs = conn.take_exchanges();
    assert_eq!(xs.len(), 1);
    let x = &xs[0];
    assert_eq!(x.request.method, "GET");
    assert_eq!(x.request.target, "/a/b?x=1");
    assert_eq!(x.request.version_minor, 1);
    assert_eq!(x.request.head_len, 72);
    assert_eq!(x.request.header("HOST"), Some("example"));
    assert_eq!(
        x.request.header("x-many"),
        Some("a b"),
        "first match, trimmed"
    );
    assert_eq!(x.request.headers.len(), 3);
    let r = x.response.as_ref().unwrap();
    assert_eq!(
        (r.status, r.reason.as_str(), r.version_minor),
        (200, "OK", 1)
    );
    assert_eq!(r.header("content-length"), Some("10"));
    assert_eq!(r.head_len, 39);
    assert_eq!((x.request_start_ns, x.request_end_ns), (10, 10));
    assert_eq!((x.response_start_ns, x.response_end_ns), (20, 30));
    assert_eq!((x.request_body_len, x.response_body_len), (0, 10));
    assert!(!x.partial);
    assert!(conn.take_exchanges().is_empty(), "take drains");
    assert_eq!(conn.stats(), Http1Stats::default());
}

#[test]
fn http10_versions_and_reason_phrases() {
    let (xs, _) = replay(&[
        req(1, b"GET / HTTP/1.0\r\n\r\n"),
        resp(
            2,
            b"HTTP/1.0 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
        ),
    ]);
    assert_eq!(xs[0].request.version_minor, 0);
    let r = xs[0].response.as_ref().unwrap();
    assert_eq!(
        (r.version_minor, r.status, r.reason.as_str()),
        (0, 500, "Internal Server Error")
    );
    assert!(!xs[0].partial);
}

#[test]
fn keep_alive_sequence() {
    let (got, stats) = run(&[
        req(1, GET_A),
        resp(2, OK_5),
        req(3, GET_B),
        resp(4, NOT_FOUND),
        req(5, GET_C),
        resp(6, OK_0),
    ]);
    assert_eq!(
        got,
        [
            clean("GET", "/a", 200, 0, 5),
            clean("GET", "/b?x=1", 404, 0, 3),
            clean("GET", "/c", 200, 0, 0)
        ]
    );
    assert_eq!(stats, Http1Stats::default());
}

#[test]
fn exchanges_are_emitted_as_soon_as_complete() {
    let mut conn = Http1Conn::new();
    conn.push_request(seg(1, &cat(&[GET_A, GET_B])));
    conn.push_response(seg(2, OK_5));
    assert_eq!(conn.take_exchanges().len(), 1);
    conn.push_response(seg(3, OK_0));
    assert_eq!(conn.take_exchanges().len(), 1);
}

#[test]
fn pipelined_requests_in_one_segment_paired_fifo() {
    let (xs, conn) = replay(&[
        req(1, &cat(&[GET_A, GET_B, GET_C])),
        resp(2, &cat(&[OK_5, NOT_FOUND])),
        resp(3, OK_0),
    ]);
    assert_eq!(
        summaries(&xs),
        [
            clean("GET", "/a", 200, 0, 5),
            clean("GET", "/b?x=1", 404, 0, 3),
            clean("GET", "/c", 200, 0, 0)
        ]
    );
    assert_eq!(xs[1].response_start_ns, 2);
    assert_eq!(xs[2].response_start_ns, 3);
    assert_eq!(conn.stats(), Http1Stats::default());
}

#[test]
fn response_starting_in_the_segment_that_ends_the_previous_one() {
    let (xs, _) = replay(&[
        req(1, &cat(&[GET_A, GET_B])),
        resp(2, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel"),
        resp(
            3,
            &cat(&[
                b"lo",
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nno",
            ]),
        ),
        resp(4, b"\n"),
    ]);
    assert_eq!(
        summaries(&xs),
        [
            clean("GET", "/a", 200, 0, 5),
            clean("GET", "/b?x=1", 404, 0, 3)
        ]
    );
    assert_eq!((xs[0].response_start_ns, xs[0].response_end_ns), (2, 3));
    assert_eq!((xs[1].response_start_ns, xs[1].response_end_ns), (3, 4));
}

/// Two requests with bodies and their responses split into two segments at every possible
/// byte (including inside "\r\n\r\n"): same result, and the ts follow the split.
#[test]
fn every_split_point_gives_the_same_result() {
    let reqs = cat(&[
        b"POST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        b"PUT /q HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\nhi\r\n0\r\n\r\n",
    ]);
    let resps = cat(&[
        b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
    ]);
    let want = [
        clean("POST", "/p", 201, 3, 2),
        clean("PUT", "/q", 200, 2, 3),
    ];
    for at in 0..=reqs.len() {
        let (got, stats) = run(&[req(1, &reqs[..at]), req(2, &reqs[at..]), resp(3, &resps)]);
        assert_eq!(got, want, "request split at {at}");
        assert_eq!(stats, Http1Stats::default());
    }
    for at in 0..=resps.len() {
        let (xs, conn) = replay(&[req(1, &reqs), resp(2, &resps[..at]), resp(3, &resps[at..])]);
        assert_eq!(summaries(&xs), want, "response split at {at}");
        assert_eq!(conn.stats(), Http1Stats::default());
        let first_resp_len = 45;
        let want_end0 = if at >= first_resp_len { 2 } else { 3 };
        assert_eq!(xs[0].response_end_ns, want_end0, "split at {at}");
        let want_start1 = if at > first_resp_len { 2 } else { 3 };
        assert_eq!(xs[1].response_start_ns, want_start1, "split at {at}");
    }
}

#[test]
fn head_split_across_three_segments_gets_first_and_last_ts() {
    let (xs, _) = replay(&[
        req(5, b"GET /a HT"),
        req(6, b"TP/1.1\r\nHost: h\r\n\r"),
        req(7, b"\n"),
        resp(8, OK_0),
    ]);
    assert_eq!((xs[0].request_start_ns, xs[0].request_end_ns), (5, 7));
    assert_eq!(xs[0].request.head_len, 28);
}

#[test]
fn empty_lines_between_requests_are_tolerated() {
    let (got, stats) = run(&[
        req(1, &cat(&[GET_A, b"\r\n\r\n", GET_B])),
        resp(2, &cat(&[OK_0, OK_0])),
    ]);
    assert_eq!(
        got,
        [
            clean("GET", "/a", 200, 0, 0),
            clean("GET", "/b?x=1", 200, 0, 0)
        ]
    );
    assert_eq!(stats, Http1Stats::default());
}

#[test]
fn bare_lf_line_endings() {
    let (got, stats) = run(&[
        req(
            1,
            b"POST /lf HTTP/1.1\nTransfer-Encoding: chunked\n\n3\nabc\n0\n\n",
        ),
        resp(2, b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok"),
    ]);
    assert_eq!(got, [clean("POST", "/lf", 200, 3, 2)]);
    assert_eq!(stats, Http1Stats::default());
}

#[test]
fn empty_segments_change_nothing() {
    let (got, stats) = run(&[
        req(1, b""),
        req(2, GET_A),
        resp(3, b""),
        resp(4, OK_5),
        req(5, b""),
    ]);
    assert_eq!(got, [clean("GET", "/a", 200, 0, 5)]);
    assert_eq!(stats, Http1Stats::default());
}

#[test]
fn segment_with_len_smaller_than_data_is_not_a_gap() {
    let mut conn = Http1Conn::new();
    conn.push_request(Segment::prefix(1, Bytes::from_static(GET_A), 3));
    conn.push_response(seg(2, OK_0));
    let xs = conn.take_exchanges();
    assert_eq!(summaries(&xs), [clean("GET", "/a", 200, 0, 0)]);
}

// ---- request bodies ----

#[test]
fn request_body_by_content_length() {
    let (xs, _) = replay(&[
        req(1, b"POST /p HTTP/1.1\r\nContent-Length: 7\r\n\r\nabc"),
        req(2, b"defg"),
        resp(3, OK_0),
    ]);
    assert_eq!(summaries(&xs), [clean("POST", "/p", 200, 7, 0)]);
    assert_eq!((xs[0].request_start_ns, xs[0].request_end_ns), (1, 2));
}

#[test]
fn request_chunked_body_with_extensions_and_trailers() {
    let (xs, conn) = replay(&[
        req(1, b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
        req(2, b"5;name=value;q=\"x\"\r\nhello\r\n"),
        req(3, b"1A\r\nabcdefghijklmnopqrstuvwxyz\r\n"),
        req(4, b"0\r\nX-Trailer: yes\r\nX-Other: 2\r\n"),
        req(5, b"\r\n"),
        resp(6, OK_0),
    ]);
    assert_eq!(summaries(&xs), [clean("POST", "/c", 200, 31, 0)]);
    assert_eq!(xs[0].request_end_ns, 5, "ends after the trailer section");
    assert_eq!(conn.stats(), Http1Stats::default());
}

#[test]
fn transfer_encoding_wins_over_content_length() {
    let (got, stats) = run(&[
        req(1, b"POST /te HTTP/1.1\r\nContent-Length: 100\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        req(2, GET_A),
        resp(3, &cat(&[OK_0, OK_5])),
    ]);
    assert_eq!(
        got,
        [
            clean("POST", "/te", 200, 3, 0),
            clean("GET", "/a", 200, 0, 5)
        ]
    );
    assert_eq!(stats, Http1Stats::default());
}

#[test]
fn request_with_unknown_final_coding_is_partial_and_resyncs() {
    let (got, stats) = run(&[
        req(
            1,
            b"POST /gz HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b\x08binary",
        ),
        req(2, GET_A),
        resp(3, &cat(&[NOT_FOUND, OK_0])),
    ]);
    assert_eq!(
        got,
        [
            sum("POST", "/gz", Some(404), 0, 3, true),
            clean("GET", "/a", 200, 0, 0)
        ]
    );
    assert_eq!(stats.resyncs, 1);
    assert_eq!(stats.bytes_skipped, 9);
}

#[test]
fn conflicting_content_lengths_are_partial_and_resync() {
    let (got, stats) = run(&[
        req(
            1,
            b"POST /x HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        ),
        req(2, GET_A),
        resp(3, &cat(&[OK_0, OK_0])),
    ]);
    assert_eq!(
        got,
        [
            sum("POST", "/x", Some(200), 0, 0, true),
            clean("GET", "/a", 200, 0, 0)
        ]
    );
    assert_eq!(stats.resyncs, 1);
    // Same values repeated are fine.
    let (got, stats) = run(&[
        req(
            1,
            b"POST /x HTTP/1.1\r\nContent-Length: 4, 4\r\nContent-Length: 4\r\n\r\nabcd",
        ),
        resp(3, OK_0),
    ]);
    assert_eq!(got, [clean("POST", "/x", 200, 4, 0)]);
    assert_eq!(stats, Http1Stats::default());
}

/// A server may answer before the request body is complete; the exchange is complete (and
/// emitted) only when both are.
#[test]
fn early_response_waits_for_the_request_body() {
    let mut conn = Http1Conn::new();
    conn.push_request(seg(
        1,
        b"POST /up HTTP/1.1\r\nContent-Length: 10\r\n\r\n12345",
    ));
    conn.push_response(seg(
        2,
        b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n",
    ));
    assert!(conn.take_exchanges().is_empty());
    conn.push_request(seg(3, b"67890"));
    let xs = conn.take_exchanges();
    assert_eq!(summaries(&xs), [clean("POST", "/up", 413, 10, 0)]);
    assert_eq!((xs[0].request_end_ns, xs[0].response_start_ns), (3, 2));
}

// ---- response bodies ----

#[test]
fn head_response_has_no_body_despite_content_length() {
    let (got, stats) = run(&[
        req(1, &cat(&[b"HEAD /big HTTP/1.1\r\n\r\n", GET_A])),
        resp(
            2,
            &cat(&[b"HTTP/1.1 200 OK\r\nContent-Length: 123456\r\n\r\n", OK_5]),
        ),
    ]);
    assert_eq!(
        got,
        [
            clean("HEAD", "/big", 200, 0, 0),
            clean("GET", "/a", 200, 0, 5)
        ]
    );
    assert_eq!(stats, Http1Stats::default());
}

#[test]
fn no_body_for_204_and_304() {
    let (got, stats) = run(&[
        req(1, &cat(&[GET_A, GET_B, GET_C])),
        resp(
            2,
            &cat(&[
                b"HTTP/1.1 204 No Content\r\nContent-Length: 99\r\n\r\n",
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n",
                OK_5,
            ]),
        ),
    ]);
    assert_eq!(
        got,
        [
            clean("GET", "/a", 204, 0, 0),
            clean("GET", "/b?x=1", 304, 0, 0),
            clean("GET", "/c", 200, 0, 5)
        ]
    );
    assert_eq!(stats, Http1Stats::default());
}

#[test]
fn response_chunked_split_everywhere() {
    let body = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;a=b\r\nwiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nExpires: never\r\n\r\n";
    let mut events = vec![req(1, GET_A)];
    for (i, b) in body.iter().enumerate() {
        events.push(resp(10 + i as u64, &[*b]));
    }
    let (xs, conn) = replay(&events);
    assert_eq!(summaries(&xs), [clean("GET", "/a", 200, 0, 23)]);
    assert_eq!(xs[0].response_end_ns, 10 + body.len() as u64 - 1);
    assert_eq!(conn.stats(), Http1Stats::default());
}

#[test]
fn read_until_close_response() {
    let mut conn = Http1Conn::new();
    conn.push_request(seg(1, GET_A));
    conn.push_response(seg(2, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nsome"));
    conn.push_response(seg(3, b" more"));
    conn.push_response(cut(4, b" and", 100));
    assert!(conn.take_exchanges().is_empty(), "ends only at close");
    conn.close(50);
    let xs = conn.take_exchanges();
    assert_eq!(summaries(&xs), [clean("GET", "/a", 200, 0, 109)]);
    assert_eq!(
        (xs[0].response_start_ns, xs[0].response_end_ns),
        (2, 4),
        "last byte, not close"
    );
}

#[test]
fn http10_response_without_length_reads_until_close() {
    let (got, stats) = run(&[
        req(1, b"GET /old HTTP/1.0\r\n\r\n"),
        resp(
            2,
            b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
        ),
    ]);
    assert_eq!(got, [clean("GET", "/old", 200, 0, 19)]);
    assert_eq!(stats, Http1Stats::default());
}

#[test]
fn read_until_close_without_body_ends_at_head() {
    let mut conn = Http1Conn::new();
    conn.push_request(seg(1, GET_A));
    conn.push_response(seg(2, b"HTTP/1.1 200 OK\r\n\r\n"));
    conn.close(9);
    let xs = conn.take_exchanges();
    assert_eq!(summaries(&xs), [clean("GET", "/a", 200, 0, 0)]);
    assert_eq!(xs[0].response_end_ns, 2);
}

// ---- 1xx and protocol switches ----

#[test]
fn continue_100_is_skipped() {
    let (xs, conn) = replay(&[
        req(
            1,
            b"PUT /u HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
        ),
        resp(2, b"HTTP/1.1 100 Continue\r\n\r\n"),
        req(3, b"data"),
        resp(4, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"),
    ]);
    assert_eq!(summaries(&xs), [clean("PUT", "/u", 201, 4, 0)]);
    assert_eq!(xs[0].response.as_ref().unwrap().reason, "Created");
    assert_eq!(
        (
            xs[0].request_end_ns,
            xs[0].response_start_ns,
            xs[0].response_end_ns
        ),
        (3, 4, 4)
    );
    assert_eq!(conn.stats(), Http1Stats::default());
}

#[test]
fn early_hints_103_are_skipped_even_several() {
    let (xs, _) = replay(&[
        req(1, GET_A),
        resp(2, b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </b.js>\r\n\r\n"),
        resp(3, OK_5),
    ]);
    assert_eq!(summaries(&xs), [clean("GET", "/a", 200, 0, 5)]);
    assert_eq!(xs[0].response_start_ns, 3);
}

#[test]
fn switching_protocols_101_ends_http1() {
    let mut conn = Http1Conn::new();
    conn.push_request(seg(
        1,
        b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    ));
    conn.push_response(seg(
        2,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
    ));
    assert!(conn.upgraded());
    let xs = conn.take_exchanges();
    assert_eq!(summaries(&xs), [clean("GET", "/ws", 101, 0, 0)]);
    assert_eq!((xs[0].response_start_ns, xs[0].response_end_ns), (2, 2));
    // Everything afterwards is ignored, even bytes that look like HTTP.
    conn.push_request(seg(3, GET_A));
    conn.push_response(seg(4, OK_5));
    conn.push_request(seg(5, b"\x00\x01garbage"));
    conn.push_response(cut(6, b"", 1 << 30));
    conn.close(7);
    assert!(conn.take_exchanges().is_empty());
    assert_eq!(conn.stats(), Http1Stats::default());
    assert!(conn.upgraded());
}

#[test]
fn connect_2xx_is_a_tunnel_and_other_statuses_are_not() {
    let mut conn = Http1Conn::new();
    conn.push_request(seg(
        1,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    ));
    conn.push_response(seg(
        2,
        b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 4\r\n\r\ndeny",
    ));
    assert!(!conn.upgraded());
    conn.push_request(seg(
        3,
        b"CONNECT example.com:443 HTTP/1.1\r\nProxy-Authorization: x\r\n\r\n",
    ));
    conn.push_response(seg(4, b"HTTP/1.1 200 Connection Established\r\n\r\n"));
    assert!(conn.upgraded());
    conn.push_request(seg(5, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"));
    conn.push_response(seg(6, b"\x16\x03\x03\x00\x7a\x02"));
    conn.close(7);
    let xs = conn.take_exchanges();
    assert_eq!(
        summaries(&xs),
        [
            clean("CONNECT", "example.com:443", 407, 0, 4),
            clean("CONNECT", "example.com:443", 200, 0, 0)
        ]
    );
    assert_eq!(conn.stats(), Http1Stats::default());
}

// ---- close ----

#[test]
fn close_turns_waiting_requests_into_unanswered_exchanges() {
    let mut conn = Http1Conn::new();
    conn.push_request(seg(1, &cat(&[GET_A, GET_B])));
    conn.push_request(seg(2, b"POST /p HTTP/1.1\r\nContent-Length: 10\r\n\r\n123"));
    conn.push_response(seg(3, OK_5));
    conn.close(9);
    let xs = conn.take_exchanges();
    assert_eq!(
        summaries(&xs),
        [
            clean("GET", "/a", 200, 0, 5),
            sum("GET", "/b?x=1", None, 0, 0, true),
            sum("POST", "/p", None, 3, 0, true),
        ]
    );
    assert_eq!((xs[1].request_start_ns, xs[1].request_end_ns), (1, 1));
    assert_eq!(
        (
            xs[2].request_end_ns,
            xs[2].response_start_ns,
            xs[2].response_end_ns
        ),
        (2, 0, 0)
    );
}

#[test]
fn close_during_response_body_is_partial_with_last_seen_ts() {
    let mut conn = Http1Conn::new();
    conn.push_request(seg(1, GET_A));
    conn.push_response(seg(2, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc"));
    conn.push_response(seg(3, b"def"));
    conn.close(10);
    let xs = conn.take_exchanges();
    assert_eq!(summaries(&xs), [sum("GET", "/a", Some(200), 0, 6, true)]);
    assert_eq!(xs[0].response_end_ns, 3);
}

#[test]
fn close_with_half_received_head_reports_what_was_readable() {
    let mut conn = Http1Conn::new();
    conn.push_request(seg(1, b"GET /half HTTP/1.1\r\nHost: h\r\nX-Cut: abc"));
    conn.close(2);
    let xs = conn.take_exchanges();
    assert_eq!(summaries(&xs), [sum("GET", "/half", None, 0, 0, true)]);
    assert_eq!(xs[0].request.header("host"), Some("h"));
    assert_eq!(
        xs[0].request.header("x-cut"),
        None,
        "incomplete line dropped"
    );
    assert_eq!(xs[0].request.head_len, 39, "bytes seen");
}

#[test]
fn connection_is_usable_after_close() {
    let mut conn = Http1Conn::new();
    conn.push_request(seg(1, b"GET /x HTTP/1.1\r\nHo"));
    conn.close(2);
    conn.take_exchanges();
    conn.push_request(seg(3, GET_A));
    conn.push_response(seg(4, OK_0));
    assert_eq!(
        summaries(&conn.take_exchanges()),
        [clean("GET", "/a", 200, 0, 0)]
    );
}

// ---- gaps ----

/// 1 MiB body in 64 KiB reads of which 2 KiB are captured: skipped by count to the exact byte.
#[test]
fn one_mib_body_with_2k_captured_per_64k_segment() {
    const BODY: usize = 1 << 20;
    const SEG: usize = 64 * 1024;
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BODY}\r\n\r\n").into_bytes();
    let mut wire = head.clone();
    wire.extend((0..BODY).map(|i| b'a' + (i % 26) as u8));
    wire.extend_from_slice(NOT_FOUND);
    let mut events = vec![req(1, &cat(&[GET_A, GET_B]))];
    for (ts, chunk) in (100..).zip(wire.chunks(SEG)) {
        let captured = &chunk[..chunk.len().min(2048)];
        events.push(resp_cut(ts, captured, chunk.len() as u64));
    }
    // The body ends inside the last segment's captured part, then the 404 starts there.
    let end_seg = (head.len() + BODY - 1) / SEG;
    assert!((head.len() + BODY) % SEG + NOT_FOUND.len() < 2048);
    let (xs, conn) = replay(&events);
    assert_eq!(
        summaries(&xs),
        [
            clean("GET", "/a", 200, 0, BODY as u64),
            clean("GET", "/b?x=1", 404, 0, 3)
        ]
    );
    assert_eq!(xs[0].response_end_ns, 100 + end_seg as u64);
    assert_eq!(xs[1].response_start_ns, 100 + end_seg as u64);
    assert_eq!(conn.stats(), Http1Stats::default());
}

/// As the kernel copies a large read: its first `prefix` and last `tail` bytes.
fn resp_with_tail(ts: u64, wire: &[u8], prefix: usize, tail: usize) -> Event {
    Event {
        to: To::Client,
        seg: cut(ts, &wire[..prefix], wire.len() as u64)
            .with_tail(wire[wire.len() - tail..].to_vec()),
    }
}

/// One big chunk read in one go: the chunk's CRLF, the last chunk and the next response are in
/// the copied tail, so the body size is exact and the next exchange is read too.
#[test]
fn the_tail_of_a_large_read_ends_a_chunked_body_exactly() {
    const CHUNK: usize = 1 << 20;
    let mut wire =
        format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{CHUNK:x}\r\n").into_bytes();
    wire.extend((0..CHUNK).map(|i| b'a' + (i % 26) as u8));
    wire.extend_from_slice(b"\r\n0\r\n\r\n");
    wire.extend_from_slice(NOT_FOUND);
    let events = [
        req(1, &cat(&[GET_A, GET_B])),
        resp_with_tail(2, &wire, 2048, 256),
    ];
    let (xs, conn) = replay(&events);
    assert_eq!(
        summaries(&xs),
        [
            clean("GET", "/a", 200, 0, CHUNK as u64),
            clean("GET", "/b?x=1", 404, 0, 3)
        ]
    );
    assert_eq!(conn.stats(), Http1Stats::default());
    // Without the tail the end of the body is unknown: partial, and the 404 is lost.
    let mut no_tail = events.clone();
    no_tail[1] = resp_cut(2, &wire[..2048], wire.len() as u64);
    let (xs, _) = replay(&no_tail);
    assert!(
        xs.iter().all(|x| x.partial || x.response.is_none()),
        "{xs:#?}"
    );
}

/// Chunk-size lines in the uncopied middle lose the place; the tail is then not searched for
/// heads (body bytes can look like one) but counted as unknown.
#[test]
fn a_tail_after_lost_framing_is_not_searched() {
    let mut wire =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n".to_vec();
    for _ in 0..2000 {
        wire.extend_from_slice(b"10\r\n0123456789abcdef\r\n");
    }
    // Body bytes that read like a response head, right in the tail.
    wire.extend_from_slice(
        b"40\r\nHTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n\r\n0\r\n\r\n",
    );
    let (xs, _) = replay(&[req(1, GET_A), resp_with_tail(2, &wire, 200, 256)]);
    assert!(
        xs.iter()
            .all(|x| x.response.as_ref().map(|r| r.status) != Some(500)),
        "{xs:#?}"
    );
}

#[test]
fn body_ending_exactly_at_the_end_of_a_gap() {
    let (xs, conn) = replay(&[
        req(1, &cat(&[GET_A, GET_B])),
        resp_cut(
            2,
            b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\nxx",
            41 + 5000,
        ),
        resp(3, NOT_FOUND),
    ]);
    assert_eq!(
        summaries(&xs),
        [
            clean("GET", "/a", 200, 0, 5000),
            clean("GET", "/b?x=1", 404, 0, 3)
        ]
    );
    assert_eq!(xs[0].response_end_ns, 2);
    assert_eq!(conn.stats(), Http1Stats::default());
}

#[test]
fn request_body_in_gaps() {
    let (xs, conn) = replay(&[
        req_cut(
            1,
            b"POST /big HTTP/1.1\r\nContent-Length: 100000\r\n\r\n",
            46 + 60000,
        ),
        req_cut(2, b"", 40000),
        req(3, GET_A),
        resp(4, &cat(&[OK_0, OK_5])),
    ]);
    assert_eq!(
        summaries(&xs),
        [
            clean("POST", "/big", 200, 100000, 0),
            clean("GET", "/a", 200, 0, 5)
        ]
    );
    assert_eq!(xs[0].request_end_ns, 2);
    assert_eq!(conn.stats(), Http1Stats::default());
}

/// Chunk data and its CRLF are written together, so a capture cut in the data also cuts the
/// CRLF: the CRLF is assumed and the body goes on.
#[test]
fn gap_in_chunk_data_and_its_crlf() {
    let (got, stats) = run(&[
        req(1, GET_A),
        resp(2, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
        resp_cut(3, b"1000\r\nabc", 6 + 4096 + 2),
        resp_cut(4, b"10\r\n0123456789abcdef\r", 4 + 16 + 2),
        resp(5, b"0\r\n\r\n"),
    ]);
    assert_eq!(got, [clean("GET", "/a", 200, 0, 4096 + 16)]);
    assert_eq!(stats, Http1Stats::default());
}

#[test]
fn gap_in_chunk_size_line_is_partial_and_resyncs_to_next_request() {
    let (xs, conn) = replay(&[
        req(
            1,
            b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        ),
        // The next chunk-size line is not captured.
        req_cut(2, b"", 30),
        req(3, b"more body bytes that are not a head\r\n"),
        req(4, GET_A),
        resp(5, &cat(&[OK_0, OK_5])),
    ]);
    assert_eq!(
        summaries(&xs),
        [
            sum("POST", "/c", Some(200), 5, 0, true),
            clean("GET", "/a", 200, 0, 5)
        ]
    );
    assert_eq!(xs[0].request_end_ns, 2, "ends where the loss is");
    let stats = conn.stats();
    assert_eq!(stats.resyncs, 1);
    assert_eq!(stats.bytes_skipped, 30 + 37);
    assert_eq!(stats.invalid_heads, 0);
}

#[test]
fn head_cut_by_gap_is_partial_and_next_request_is_clean() {
    let (xs, conn) = replay(&[
        req_cut(1, b"GET /long HTTP/1.1\r\nHost: h\r\nCookie: aaaa", 2000),
        req(2, GET_B),
        resp(3, &cat(&[OK_5, NOT_FOUND])),
    ]);
    assert_eq!(
        summaries(&xs),
        [
            sum("GET", "/long", Some(200), 0, 5, true),
            clean("GET", "/b?x=1", 404, 0, 3)
        ]
    );
    assert_eq!(xs[0].request.header("host"), Some("h"));
    assert_eq!(conn.stats().resyncs, 1);
}

#[test]
fn request_line_cut_by_gap_leaves_a_placeholder() {
    // Not even the request line is readable: no exchange, but its response is not given to
    // the next request.
    let (got, stats) = run(&[
        req_cut(1, b"GET /a-very-long-tar", 5000),
        req(2, GET_B),
        resp(3, &cat(&[OK_5, NOT_FOUND])),
    ]);
    assert_eq!(got, [clean("GET", "/b?x=1", 404, 0, 3)]);
    assert_eq!((stats.resyncs, stats.invalid_heads), (1, 0));
    assert_eq!(stats.bytes_skipped, 5000);
}

#[test]
fn response_head_cut_by_gap_is_paired_and_partial() {
    let (got, stats) = run(&[
        req(1, &cat(&[GET_A, GET_B])),
        resp_cut(2, b"HTTP/1.1 503 Service Unavailable\r\nRetry-", 3000),
        resp(3, NOT_FOUND),
    ]);
    assert_eq!(
        got,
        [
            sum("GET", "/a", Some(503), 0, 0, true),
            clean("GET", "/b?x=1", 404, 0, 3)
        ]
    );
    assert_eq!(stats.resyncs, 1);
}

/// A whole request inside a gap: its response is consumed by a placeholder so that the
/// following pairs stay right.
#[test]
fn request_lost_in_a_gap_keeps_pairing_aligned() {
    let (got, stats) = run(&[
        req(1, GET_A),
        req_cut(2, b"", GET_B.len() as u64),
        req(3, GET_C),
        resp(4, &cat(&[OK_5, NOT_FOUND, OK_0])),
    ]);
    assert_eq!(
        got,
        [clean("GET", "/a", 200, 0, 5), clean("GET", "/c", 200, 0, 0)]
    );
    assert_eq!(stats.resyncs, 1);
}

#[test]
fn response_lost_in_a_gap_leaves_its_request_unanswered() {
    let (got, _) = run(&[
        req(1, &cat(&[GET_A, GET_B, GET_C])),
        resp(2, OK_5),
        resp_cut(3, b"", NOT_FOUND.len() as u64),
        resp(4, OK_0),
    ]);
    assert_eq!(
        got,
        [
            clean("GET", "/a", 200, 0, 5),
            sum("GET", "/b?x=1", None, 0, 0, true),
            clean("GET", "/c", 200, 0, 0)
        ]
    );
}

// ---- resync ----

#[test]
fn garbage_before_first_request_resyncs() {
    let garbage = b"\x00\x17\xfe binary junk\r\nmore junk\r\n";
    let (got, stats) = run(&[req(1, &cat(&[garbage, GET_A])), resp(2, OK_5)]);
    assert_eq!(got, [clean("GET", "/a", 200, 0, 5)]);
    assert_eq!(
        stats,
        Http1Stats {
            resyncs: 1,
            bytes_skipped: garbage.len() as u64,
            invalid_heads: 1,
            unanswered_requests_dropped: 0
        }
    );
}

#[test]
fn garbage_between_requests_in_one_segment_resyncs_at_a_line_start() {
    // "GET /b" follows the garbage after a newline inside the same segment.
    let garbage = b"%%% not http %%%\r\n";
    let (got, stats) = run(&[
        req(1, &cat(&[GET_A, garbage, GET_B])),
        resp(2, &cat(&[OK_5, OK_0])),
    ]);
    assert_eq!(
        got,
        [
            clean("GET", "/a", 200, 0, 5),
            clean("GET", "/b?x=1", 200, 0, 0)
        ]
    );
    assert_eq!((stats.resyncs, stats.invalid_heads), (1, 1));
    assert_eq!(stats.bytes_skipped, garbage.len() as u64);
}

#[test]
fn resync_finds_a_head_at_the_next_segment_start() {
    // No newline ends the garbage: only the segment boundary marks where the next head starts.
    let (got, stats) = run(&[
        req(1, GET_A),
        req(2, b"garbage without newline"),
        req(3, GET_B),
        resp(4, &cat(&[OK_0, OK_0])),
    ]);
    assert_eq!(
        got,
        [
            clean("GET", "/a", 200, 0, 0),
            clean("GET", "/b?x=1", 200, 0, 0)
        ]
    );
    assert_eq!((stats.resyncs, stats.bytes_skipped), (1, 23));
}

#[test]
fn response_garbage_resyncs_to_next_status_line() {
    let (got, stats) = run(&[
        req(1, &cat(&[GET_A, GET_B])),
        resp(
            2,
            &cat(&[
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA BYTES\r\n",
                NOT_FOUND,
            ]),
        ),
    ]);
    assert_eq!(
        got,
        [
            clean("GET", "/a", 200, 0, 2),
            clean("GET", "/b?x=1", 404, 0, 3)
        ]
    );
    assert_eq!(
        (stats.resyncs, stats.invalid_heads, stats.bytes_skipped),
        (1, 1, 13)
    );
}

#[test]
fn body_text_that_looks_like_a_request_line_is_only_taken_if_the_line_parses() {
    let (got, stats) = run(&[
        req(1, b"\x01\x02\r\nGET rich quick\r\nPOST office\r\n"),
        req(2, GET_A),
        resp(3, OK_0),
    ]);
    assert_eq!(got, [clean("GET", "/a", 200, 0, 0)]);
    assert_eq!((stats.resyncs, stats.invalid_heads), (1, 1));
}

#[test]
fn bad_chunk_size_line_is_partial_and_resyncs() {
    let (got, stats) = run(&[
        req(
            1,
            b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nxx\r\n",
        ),
        req(2, GET_A),
        resp(3, &cat(&[OK_0, OK_0])),
    ]);
    assert_eq!(
        got,
        [
            sum("POST", "/c", Some(200), 0, 0, true),
            clean("GET", "/a", 200, 0, 0)
        ]
    );
    assert_eq!(
        (stats.resyncs, stats.invalid_heads, stats.bytes_skipped),
        (1, 0, 8)
    );
}

#[test]
fn response_without_a_request_is_dropped() {
    let (got, _) = run(&[resp(1, OK_5), req(2, GET_A), resp(3, NOT_FOUND)]);
    assert_eq!(got, [clean("GET", "/a", 404, 0, 3)]);
}

// ---- limits ----

#[test]
fn oversize_head_is_invalid_and_bounded() {
    let mut conn = Http1Conn::new();
    conn.push_request(seg(1, b"GET /huge HTTP/1.1\r\n"));
    let line =
        b"X-Filler: 0123456789012345678901234567890123456789012345678901234567890123456789\r\n";
    let mut pushed = 20;
    while pushed <= MAX_HEAD_LEN + 1000 {
        conn.push_request(seg(2, line));
        pushed += line.len();
        assert!(
            conn.req.buffered() <= MAX_HEAD_LEN + line.len(),
            "buffer grew to {}",
            conn.req.buffered()
        );
    }
    conn.push_request(seg(3, GET_A));
    conn.push_response(seg(4, OK_5));
    conn.close(5);
    let xs = conn.take_exchanges();
    assert_eq!(summaries(&xs), [clean("GET", "/a", 200, 0, 5)]);
    let stats = conn.stats();
    assert_eq!((stats.resyncs, stats.invalid_heads), (1, 1));
    assert_eq!(stats.bytes_skipped, pushed as u64);
}

#[test]
fn oversize_head_in_one_segment_is_invalid() {
    let mut head = b"GET /huge HTTP/1.1\r\nX: ".to_vec();
    head.resize(MAX_HEAD_LEN + 10, b'a');
    head.extend_from_slice(b"\r\n\r\n");
    let (got, stats) = run(&[req(1, &head), req(2, GET_A), resp(3, OK_0)]);
    assert_eq!(got, [clean("GET", "/a", 200, 0, 0)]);
    assert_eq!(stats.invalid_heads, 1);
}

#[test]
fn binary_stream_is_rejected_without_buffering() {
    let mut conn = Http1Conn::new();
    for i in 0..1000u64 {
        conn.push_request(seg(i, &[0xff; 1000]));
        assert!(conn.req.buffered() < 64);
    }
    assert_eq!(conn.stats().bytes_skipped, 1_000_000);
    assert_eq!(conn.stats().resyncs, 1);
}

#[test]
fn huge_content_length_does_not_overflow() {
    let mut conn = Http1Conn::new();
    conn.push_request(seg(1, GET_A));
    conn.push_response(seg(
        2,
        b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\nabc",
    ));
    conn.push_response(cut(3, b"", 1 << 40));
    conn.close(5);
    let xs = conn.take_exchanges();
    assert_eq!(
        summaries(&xs),
        [sum("GET", "/a", Some(200), 0, 3 + (1 << 40), true)]
    );

    // u64::MAX bytes really seen: the body ends, and the stream after it is skipped (the
    // counters saturate instead of overflowing).
    let mut conn = Http1Conn::new();
    conn.push_request(seg(1, GET_A));
    conn.push_response(seg(
        2,
        b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\nabc",
    ));
    conn.push_response(cut(3, b"", u64::MAX));
    conn.push_response(cut(4, b"", u64::MAX));
    conn.close(5);
    let xs = conn.take_exchanges();
    assert_eq!(summaries(&xs), [clean("GET", "/a", 200, 0, u64::MAX)]);
    assert_eq!(conn.stats().bytes_skipped, u64::MAX);

    // More digits than u64 holds: saturates, still skipped by count.
    let mut conn = Http1Conn::new();
    conn.push_request(seg(
        1,
        b"POST /x HTTP/1.1\r\nContent-Length: 99999999999999999999999999\r\n\r\nabc",
    ));
    conn.close(2);
    let xs = conn.take_exchanges();
    assert_eq!(summaries(&xs), [sum("POST", "/x", None, 3, 0, true)]);
}

#[test]
fn huge_chunk_sizes_do_not_overflow() {
    let mut conn = Http1Conn::new();
    conn.push_request(seg(1, GET_A));
    conn.push_response(seg(
        2,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nabc",
    ));
    conn.push_response(cut(3, b"", u64::MAX));
    conn.push_response(cut(4, b"xyz", u64::MAX));
    conn.close(5);
    assert_eq!(
        summaries(&conn.take_exchanges()),
        [sum("GET", "/a", Some(200), 0, u64::MAX, true)]
    );

    // 17 hex digits cannot be a u64: framing lost.
    let (got, stats) = run(&[
        req(1, &cat(&[GET_A, GET_B])),
        resp(
            2,
            &cat(&[
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n",
                OK_0,
            ]),
        ),
    ]);
    assert_eq!(
        got,
        [
            sum("GET", "/a", Some(200), 0, 0, true),
            clean("GET", "/b?x=1", 200, 0, 0)
        ]
    );
    assert_eq!(stats.resyncs, 1);
}

#[test]
fn unanswered_queue_is_bounded() {
    let mut conn = Http1Conn::new();
    for i in 0..100u64 {
        conn.push_request(seg(i, format!("GET /{i} HTTP/1.1\r\n\r\n").as_bytes()));
    }
    let dropped = 100 - MAX_UNANSWERED as u64;
    assert_eq!(conn.stats().unanswered_requests_dropped, dropped);
    conn.push_response(seg(200, OK_5));
    conn.close(201);
    let xs = conn.take_exchanges();
    assert_eq!(xs.len(), MAX_UNANSWERED);
    assert_eq!(
        summary(&xs[0]),
        clean("GET", &format!("/{dropped}"), 200, 0, 5)
    );
    assert!(xs[1..].iter().all(|x| x.response.is_none() && x.partial));
    assert_eq!(xs.last().unwrap().request.target, "/99");
}

// ---- detection ----

#[test]
fn detect_request_cases() {
    use Detect::*;
    for (buf, want) in [
        (&b""[..], NeedMore),
        (b"G", NeedMore),
        (b"GET", NeedMore),
        (b"GET ", NeedMore),
        (b"GET /", Yes),
        (b"POST http://h/p HTTP/1.1", Yes),
        (b"OPTIONS * HTTP/1.1\r\n", Yes),
        (b"PROPFIND /dav", NeedMore),
        (b"PROPFIND /dav HTTP/1.", NeedMore),
        (b"PROPFIND /dav HTTP/1.1\r\n", Yes),
        (b"get / HTTP/1.1\r\n", Yes),
        (b"PROPFIND /dav HTTP/2.0\r\n", No),
        (b"hello world\r\n", No),
        (b"GET  /", No),
        (b" GET /", No),
        (b"\x16\x03\x01\x02\x00", No),
        (b"PRI * HTTP/2.0\r\n", No),
        (b"GET\r\n", No),
        (b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", No),
    ] {
        assert_eq!(
            detect_request(buf),
            want,
            "{:?}",
            String::from_utf8_lossy(buf)
        );
    }
}

#[test]
fn detect_response_cases() {
    use Detect::*;
    for (buf, want) in [
        (&b""[..], NeedMore),
        (b"HTTP/1.", NeedMore),
        (b"HTTP/1.1 20", NeedMore),
        (b"HTTP/1.1 200", Yes),
        (b"HTTP/1.0 404 Not Found\r\n", Yes),
        (b"HTTP/2.0 200", No),
        (b"HTTP/1.1 2x0", No),
        (b"HTTP/1.1200", No),
        (b"http/1.1 200", No),
        (b"GET / HTTP/1.1", No),
    ] {
        assert_eq!(
            detect_response(buf),
            want,
            "{:?}",
            String::from_utf8_lossy(buf)
        );
    }
}
