//! Replays of connections recorded between real programs (see tests/data/http1/README.md),
//! segment by segment as recorded, byte by byte, merged, all-in-one, and with truncated capture.

use super::super::{Http1Stats, RequestHead, ResponseHead};
use super::*;

/// Every segment split into one-byte segments with the same ts.
fn by_bytes(events: &[Event]) -> Vec<Event> {
    let mut out = Vec::new();
    for ev in events {
        for i in 0..ev.seg.data.len() {
            out.push(Event {
                to: ev.to,
                seg: Segment::prefix(ev.seg.ts_ns, ev.seg.data.slice(i..i + 1), 1),
            });
        }
    }
    out
}

/// Consecutive segments of one direction merged into one (stamped with the last one's ts).
fn merged_runs(events: &[Event]) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::new();
    for ev in events {
        match out.last_mut() {
            Some(last) if last.to == ev.to => {
                let mut data = last.seg.data.to_vec();
                data.extend_from_slice(&ev.seg.data);
                last.seg = seg(ev.seg.ts_ns, &data);
            }
            _ => out.push(ev.clone()),
        }
    }
    out
}

/// One segment with all requests, then one with all responses.
fn all_in_one(events: &[Event]) -> Vec<Event> {
    [To::Server, To::Client]
        .into_iter()
        .map(|to| {
            let mine: Vec<&Event> = events.iter().filter(|e| e.to == to).collect();
            let data: Vec<u8> = mine.iter().flat_map(|e| e.seg.data.to_vec()).collect();
            Event {
                to,
                seg: seg(mine.last().map_or(0, |e| e.seg.ts_ns), &data),
            }
        })
        .collect()
}

/// Each segment's capture limited to its first `cap` bytes; lengths unchanged.
fn capped(events: &[Event], cap: usize) -> Vec<Event> {
    testutil::capped_with_tail(events, cap, 0)
}

/// Everything of an exchange, for comparing two replays exactly.
type Full = (RequestHead, Option<ResponseHead>, [u64; 6], bool);

fn full(xs: &[Exchange]) -> Vec<Full> {
    xs.iter()
        .map(|x| {
            (
                x.request.clone(),
                x.response.clone(),
                [
                    x.request_start_ns,
                    x.request_end_ns,
                    x.response_start_ns,
                    x.response_end_ns,
                    x.request_body_len,
                    x.response_body_len,
                ],
                x.partial,
            )
        })
        .collect()
}

/// One direction flattened, with the ts of every byte.
fn stream(events: &[Event], to: To) -> (Vec<u8>, Vec<u64>) {
    let mut bytes = Vec::new();
    let mut ts = Vec::new();
    for e in events.iter().filter(|e| e.to == to) {
        bytes.extend_from_slice(&e.seg.data);
        ts.extend(std::iter::repeat_n(e.seg.ts_ns, e.seg.data.len()));
    }
    (bytes, ts)
}

/// Offsets where `pred` holds (messages do not always start at a line start: bodies need not
/// end with a newline).
fn starts(bytes: &[u8], pred: impl Fn(&[u8]) -> bool) -> Vec<usize> {
    (0..bytes.len()).filter(|&i| pred(&bytes[i..])).collect()
}

/// Timestamps computed without the parser: a request starts where its request line is found in
/// the client's bytes and ends where the next request line starts; same for status lines on the
/// server side (interim 1xx excluded from starts, included as ends of the previous response).
fn check_timestamps(name: &str, events: &[Event], xs: &[Exchange], upgraded: bool) {
    let (req, req_ts) = stream(events, To::Server);
    let (resp, resp_ts) = stream(events, To::Client);
    let mut req_starts = Vec::new();
    let mut from = 0;
    for x in xs {
        let line = format!("{} {} HTTP/1.", x.request.method, x.request.target);
        let at = (from..req.len())
            .find(|&i| req[i..].starts_with(line.as_bytes()))
            .unwrap_or_else(|| panic!("{name}: request line {line:?} not found"));
        req_starts.push(at);
        from = at + 1;
    }
    let status_lines = starts(&resp, |b| {
        b.len() > 12
            && (b.starts_with(b"HTTP/1.1 ") || b.starts_with(b"HTTP/1.0 "))
            && b[9..12].iter().all(u8::is_ascii_digit)
    });
    let finals: Vec<usize> = status_lines
        .iter()
        .copied()
        .filter(|&i| resp[i + 9] != b'1' || &resp[i + 9..i + 12] == b"101")
        .collect();
    assert!(
        finals.len() >= xs.len(),
        "{name}: fewer status lines than exchanges"
    );
    for (k, x) in xs.iter().enumerate() {
        let last_of_upgrade = upgraded && k + 1 == xs.len();
        assert_eq!(
            x.request_start_ns, req_ts[req_starts[k]],
            "{name} #{k} request start"
        );
        if !last_of_upgrade {
            let req_end = req_starts.get(k + 1).copied().unwrap_or(req.len()) - 1;
            assert_eq!(x.request_end_ns, req_ts[req_end], "{name} #{k} request end");
        }
        let start = finals[k];
        assert_eq!(
            x.response_start_ns, resp_ts[start],
            "{name} #{k} response start"
        );
        if !last_of_upgrade {
            let next = status_lines
                .iter()
                .copied()
                .find(|&i| i > start)
                .unwrap_or(resp.len());
            assert_eq!(
                x.response_end_ns,
                resp_ts[next - 1],
                "{name} #{k} response end"
            );
        }
    }
}

#[test]
fn all_recordings_are_present() {
    let names = recordings();
    for want in [
        "curl_keepalive",
        "curl_small_reads",
        "curl_post",
        "curl_chunked_upload",
        "curl_head",
        "curl_expect_continue",
        "curl_early_hints",
        "curl_close",
        "curl_http10",
        "python_client",
        "python_large",
        "python_pipelined",
        "python_upgrade",
    ] {
        assert!(names.iter().any(|n| n == want), "missing recording {want}");
    }
}

#[test]
fn recordings_replayed_segment_by_segment() {
    for name in recordings() {
        let events = load_rec(&name);
        let (expected, upgraded) = load_expected(&name);
        let (xs, conn) = replay(&events);
        assert_eq!(summaries(&xs), expected, "{name}");
        assert_eq!(conn.upgraded(), upgraded, "{name}");
        assert_eq!(conn.stats(), Http1Stats::default(), "{name}");
        check_timestamps(&name, &events, &xs, upgraded);
        for x in &xs {
            assert!(
                x.request.header("host").is_some(),
                "{name}: no Host in {:?}",
                x.request
            );
            assert!(x.request.head_len > 0);
        }
    }
}

#[test]
fn recordings_replayed_byte_by_byte() {
    for name in recordings() {
        let events = load_rec(&name);
        let (reference, _) = replay(&events);
        let (xs, conn) = replay(&by_bytes(&events));
        assert_eq!(full(&xs), full(&reference), "{name}");
        assert_eq!(conn.stats(), Http1Stats::default(), "{name}");
    }
}

#[test]
fn recordings_replayed_with_merged_segments() {
    for name in recordings() {
        let events = load_rec(&name);
        let (expected, upgraded) = load_expected(&name);
        let (xs, conn) = replay(&merged_runs(&events));
        assert_eq!(summaries(&xs), expected, "{name}");
        assert_eq!(conn.upgraded(), upgraded, "{name}");
        assert_eq!(conn.stats(), Http1Stats::default(), "{name}");
    }
}

#[test]
fn recordings_replayed_all_in_one_segment() {
    for name in recordings() {
        let (expected, upgraded) = load_expected(&name);
        if upgraded {
            // Bytes after the upgrade request would be read as HTTP before the 101 is seen: the
            // parser relies on time order across directions, which one segment per direction
            // destroys.
            continue;
        }
        let (xs, conn) = replay(&all_in_one(&load_rec(&name)));
        assert_eq!(summaries(&xs), expected, "{name}");
        assert_eq!(conn.stats(), Http1Stats::default(), "{name}");
    }
}

/// The 1 MiB body arrives in ~64 KiB reads; with only 2 KiB of each captured, the body must end
/// at exactly the same byte (same end ts, same length) and the next exchange must be clean.
#[test]
fn large_recording_with_2k_capture_is_exact() {
    let events = load_rec("python_large");
    assert!(
        events.iter().any(|e| e.seg.data.len() > 60_000),
        "recording has no large reads"
    );
    let (reference, _) = replay(&events);
    let (xs, conn) = replay(&capped(&events, 2048));
    assert_eq!(full(&xs), full(&reference));
    assert_eq!(conn.stats(), Http1Stats::default());
}

/// With capture truncated, exchanges may become partial but a clean one must never be wrong:
/// the clean exchanges are the expected ones, in order.
#[test]
fn recordings_with_truncated_capture_never_report_wrong_clean_exchanges() {
    for name in recordings() {
        let (expected, _) = load_expected(&name);
        let events = load_rec(&name);
        // With and without the copied tail of each read (as the kernel copies it).
        for (cap, tail) in [0, 1, 16, 64, 100, 256, 1024, 4096]
            .into_iter()
            .flat_map(|c| [(c, 0), (c, 16), (c, 256)])
        {
            let (xs, conn) = replay(&testutil::capped_with_tail(&events, cap, tail));
            let mut next = 0;
            for x in xs.iter().filter(|x| !x.partial) {
                let s = summary(x);
                let found = expected[next..].iter().position(|e| *e == s);
                let Some(i) = found else {
                    panic!(
                        "{name} cap {cap} tail {tail}: clean exchange {s:?} not expected after #{next}\n{xs:#?}"
                    );
                };
                next += i + 1;
            }
            let total: u64 = events.iter().map(|e| e.seg.len).sum();
            assert!(
                conn.stats().bytes_skipped <= total,
                "{name} cap {cap} tail {tail}"
            );
        }
    }
}
