//! HTTP/1.x over captured socket reads/writes: heads parsed, bodies skipped by count, requests and
//! responses paired FIFO into [`Exchange`]s.
//!
//! The input is not a clean byte stream. The kernel copies only a prefix of each read/write (the
//! rest is a *gap* whose length is known but whose content is not), events can be lost, and the
//! traced process may not even speak HTTP. So the parser is built around three rules:
//!
//! * Framing is tracked by byte *count*, never by content, so bodies cost nothing to skip and a
//!   body inside a gap is as good as a captured one. Only heads and chunk-size lines are ever
//!   buffered, and never more than [`MAX_HEAD_LEN`] bytes of them.
//! * When framing is lost (a gap where a head or a chunk-size line should be, bytes that are not
//!   a head), the direction *resynchronises*: it drops bytes until something at a line or
//!   segment start parses as a head of the expected kind. The damage is reported through
//!   [`Exchange::partial`] and [`Http1Stats`], never as an error, because the caller can do
//!   nothing with an error but count it.
//! * Nothing here trusts a length from the wire: sizes are `u64` with saturating arithmetic, and
//!   every loop consumes at least one byte or stops.
//!
//! The module is pure (no I/O, no clock): time comes only from [`Segment::ts_ns`].

pub mod adapter;
mod decoder;
mod head;
mod pairing;
pub mod span;

#[cfg(test)]
mod tests;

use decoder::Decoder;
use pairing::{Pairing, Side};

/// Heads (and trailer sections) larger than this are treated as garbage. Real heads are a few
/// KiB; the bound is what keeps a non-HTTP stream from growing the buffer without limit.
pub const MAX_HEAD_LEN: usize = 64 * 1024;

/// How many requests may wait for a response. A server that never answers (or a response
/// direction we cannot parse) must not make the queue grow with every request.
pub const MAX_UNANSWERED: usize = 64;

pub use super::{Detect, Segment};
pub use adapter::Http1;

pub use crate::trace::http::Header;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// Raw request-target as sent, e.g. "/a/b?x=1" or "http://h/p" or "*".
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version_minor: u8,
    pub headers: Vec<Header>,
    /// Bytes of the head including the final CRLFCRLF. For a head cut by a gap or by the close,
    /// the bytes that were seen.
    pub head_len: usize,
}

impl RequestHead {
    /// Case-insensitive, first match (header names are case-insensitive on the wire).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub reason: String,
    pub version_minor: u8,
    /// Only the headers its framing depends on (`Content-Length`, `Transfer-Encoding`).
    pub headers: Vec<Header>,
    pub head_len: usize,
}

impl ResponseHead {
    /// Case-insensitive, first match.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

fn find_header<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

/// One request and (usually) its response, with kernel timestamps (CLOCK_MONOTONIC ns, taken at
/// the end of each read/write syscall).
#[derive(Clone, Debug)]
pub struct Exchange {
    pub request: RequestHead,
    /// None: connection closed / gave up before a final response.
    pub response: Option<ResponseHead>,
    /// ts of the segment holding the request's first byte.
    pub request_start_ns: u64,
    /// ts of the segment holding the request's last byte (end of body).
    pub request_end_ns: u64,
    /// ts of the segment holding the final response's first byte (0 if none).
    pub response_start_ns: u64,
    /// ts of the segment holding the response's last byte (0 if none).
    pub response_end_ns: u64,
    /// Body bytes (decoded length for chunked, i.e. sum of chunk sizes).
    pub request_body_len: u64,
    pub response_body_len: u64,
    /// True if any part was lost (gap in a head or a chunk header, resync, closed early).
    pub partial: bool,
}

crate::counters! {
    /// Counters of what could not be understood. They only grow; the caller exports them so that a
    /// rising `resyncs` points at capture loss rather than at silently missing spans.
    pub struct Http1Stats {
        /// Times a direction lost its framing and had to search for the next head.
        resyncs,
        /// Stream bytes (captured or in gaps) dropped while searching for a head.
        bytes_skipped,
        /// Byte runs at a head position that did not parse as a head (or exceeded [`MAX_HEAD_LEN`]).
        invalid_heads,
        /// Requests evicted from a full queue of [`MAX_UNANSWERED`] requests waiting for a response.
        unanswered_requests_dropped,
    }
}

/// Methods common enough that "METHOD SP x" alone is proof of HTTP; any other token must show
/// the whole request line up to "HTTP/1.x" before we believe it, since "word SP" is also the
/// start of most text protocols.
const COMMON_METHODS: [&[u8]; 9] = [
    b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE",
];

/// Longest method token accepted. RFC 9110 sets no limit, but real methods are short and the
/// bound keeps detection of binary streams cheap.
const MAX_METHOD_LEN: usize = 32;

/// Longest request-target that detection will scan for an uncommon method before saying No.
const MAX_DETECT_TARGET: usize = 8 * 1024;

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Bytes httparse accepts in a request-target (visible ASCII and obs-text).
fn is_target_byte(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) || b >= 0x80
}

/// Method token + SP + ... ; see [`COMMON_METHODS`] for why uncommon methods need the full line.
pub fn detect_request(buf: &[u8]) -> Detect {
    let method_len = buf.iter().take_while(|&&b| is_tchar(b)).count();
    if method_len > MAX_METHOD_LEN {
        return Detect::No;
    }
    let Some(&sep) = buf.get(method_len) else {
        return Detect::NeedMore;
    };
    if method_len == 0 || sep != b' ' {
        return Detect::No;
    }
    let method = &buf[..method_len];
    let rest = &buf[method_len + 1..];
    if COMMON_METHODS.contains(&method) {
        return match rest.first() {
            None => Detect::NeedMore,
            Some(&b) if is_target_byte(b) => Detect::Yes,
            Some(_) => Detect::No,
        };
    }
    let target_len = rest.iter().take_while(|&&b| is_target_byte(b)).count();
    if target_len > MAX_DETECT_TARGET {
        return Detect::No;
    }
    let Some(&sep) = rest.get(target_len) else {
        return Detect::NeedMore;
    };
    if target_len == 0 || sep != b' ' {
        return Detect::No;
    }
    match_version(&rest[target_len + 1..], b"\r\n")
}

/// "HTTP/1.0 " / "HTTP/1.1 " + 3 digits.
pub fn detect_response(buf: &[u8]) -> Detect {
    match match_version(buf, b" ") {
        Detect::Yes => {}
        other => return other,
    }
    let digits = &buf[9..buf.len().min(12)];
    if !digits.iter().all(u8::is_ascii_digit) {
        Detect::No
    } else if digits.len() < 3 {
        Detect::NeedMore
    } else {
        Detect::Yes
    }
}

/// Matches "HTTP/1.0" or "HTTP/1.1" followed by one byte of `next` at the start of `buf`.
fn match_version(buf: &[u8], next: &[u8]) -> Detect {
    const PREFIX: &[u8] = b"HTTP/1.";
    for (i, &b) in buf.iter().take(PREFIX.len() + 2).enumerate() {
        let ok = match i {
            0..7 => b == PREFIX[i],
            7 => b == b'0' || b == b'1',
            _ => next.contains(&b),
        };
        if !ok {
            return Detect::No;
        }
    }
    if buf.len() < PREFIX.len() + 2 {
        Detect::NeedMore
    } else {
        Detect::Yes
    }
}

/// Both directions of one HTTP/1.x connection. The caller says which bytes flow client->server
/// (requests) and which server->client (responses); the caller knows the role.
///
/// Pairing assumes the two directions are pushed roughly in time order (as the kernel ring
/// buffer delivers them): a response is paired with the oldest request still waiting when its
/// head is parsed, and a response with no waiting request is parsed and dropped.
pub struct Http1Conn {
    req: Decoder,
    resp: Decoder,
    pairing: Pairing,
}

impl Default for Http1Conn {
    fn default() -> Self {
        Self::new()
    }
}

impl Http1Conn {
    pub fn new() -> Self {
        Self {
            req: Decoder::new(Side::Request),
            resp: Decoder::new(Side::Response),
            pairing: Pairing::default(),
        }
    }

    /// Bytes client -> server.
    pub fn push_request(&mut self, seg: Segment) {
        push_segment(&mut self.req, &mut self.pairing, &seg);
    }

    /// Bytes server -> client.
    pub fn push_response(&mut self, seg: Segment) {
        push_segment(&mut self.resp, &mut self.pairing, &seg);
    }

    /// The connection closed (or half-closed) at `ts_ns`: finish a read-until-close response body,
    /// and turn requests still waiting for a response into Exchanges with response None, partial
    /// true.
    ///
    /// Ends are stamped with the last byte seen for each message, not with `ts_ns`: the close
    /// can come long after the last byte (idle keep-alive) and would stretch the span.
    /// Frees the buffer space not in use (see [`protocol::Session::shrink`]).
    pub fn shrink(&mut self) {
        self.req.shrink();
        self.resp.shrink();
        self.pairing.shrink();
    }

    pub fn close(&mut self, ts_ns: u64) {
        tracing::trace!(ts_ns, "http1 connection closed");
        self.req.finish(&mut self.pairing);
        self.resp.finish(&mut self.pairing);
        self.pairing.close();
    }

    /// Completed exchanges, in request order, since the last call.
    pub fn take_exchanges(&mut self) -> Vec<Exchange> {
        std::mem::take(&mut self.pairing.done)
    }

    /// True once the connection switched protocols (101 Switching Protocols, or 2xx to CONNECT):
    /// afterwards pushes are ignored.
    pub fn upgraded(&self) -> bool {
        self.pairing.upgraded
    }

    /// After [`Http1Conn::upgraded`]: the rest of the response-direction segment that carried
    /// the 101, i.e. the first bytes of the new protocol (empty segment when there were none).
    pub fn take_after_upgrade(&mut self) -> Segment {
        let p = &mut self.pairing;
        let data = std::mem::take(&mut p.after_upgrade);
        let len = (data.len() as u64).saturating_add(std::mem::take(&mut p.after_upgrade_gap));
        Segment::prefix(p.after_upgrade_ts, data, len)
    }

    pub fn stats(&self) -> Http1Stats {
        self.pairing.stats
    }
}

/// One segment into a direction: its copied prefix, the uncopied middle as a gap, then its
/// copied tail - parsed only if the decoder is still in step after the middle (it counted a
/// body through it), so the end of a large body (the CRLF and `0` chunk after one big chunk,
/// the next head of a keep-alive connection) is read exactly. A decoder that lost its place
/// counts the tail as unknown too: searching body bytes for a head could find a false one.
fn push_segment(dec: &mut Decoder, p: &mut Pairing, seg: &Segment) {
    let (data, gap) = split_segment(seg);
    let tail = &seg.tail[..];
    let tail_len = tail.len() as u64;
    if tail.is_empty() || tail_len > gap {
        dec.push(p, data, gap, seg.ts_ns);
        return;
    }
    let was_upgraded = p.upgraded;
    dec.push(p, data, gap - tail_len, seg.ts_ns);
    if p.upgraded {
        if !was_upgraded {
            // The rest of the segment belongs to the new protocol: counted there, not parsed.
            p.after_upgrade_gap += tail_len;
        }
        return;
    }
    if dec.in_step() {
        dec.push(p, tail, 0, seg.ts_ns);
    } else {
        dec.push(p, &[], tail_len, seg.ts_ns);
    }
}

/// Captured bytes and gap length. A segment claiming fewer bytes than it carries is trusted for
/// its data: the data is real, the length is just wrong.
fn split_segment(seg: &Segment) -> (&[u8], u64) {
    let data = &seg.data[..];
    let gap = seg.len.saturating_sub(data.len() as u64);
    (data, gap)
}
