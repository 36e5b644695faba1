//! HTTP/2 (RFC 9113) over captured socket reads/writes: frames tracked by count, header blocks
//! decoded with HPACK (RFC 7541), and the frames of each stream gathered into one [`H2Stream`]
//! per request/response exchange (gRPC calls included: their status lives in the trailers).
//!
//! The input is the same imperfect capture as for HTTP/1 (see [`Segment`]): a prefix of each
//! read/write, sometimes a copy of its last bytes, gaps in between, lost events, connections
//! joined after their start, and streams that are not HTTP/2 at all. The rules:
//!
//! * **Framing by count.** Only 9-byte frame headers and the payload bytes that matter are
//!   buffered (header-block fragments up to [`MAX_HEADER_BLOCK`], the pad-length byte of a
//!   padded DATA frame, the first bytes of SETTINGS/RST_STREAM/GOAWAY). DATA payloads are
//!   counted, never copied, so a DATA payload inside a gap costs nothing and body lengths stay
//!   exact.
//! * **Damage is local when it can be.** A gap over a header-block fragment loses that block
//!   (its stream is partial) and the direction's HPACK table becomes "lossy" (below), but the
//!   framing goes on by count. Only a gap over a *frame header* loses the framing of that
//!   direction, which then resynchronises.
//! * **Resynchronisation.** While a direction's framing is lost, bytes are skipped (and
//!   counted) until one of two places proves to be a frame boundary:
//!   1. In a segment's copied *tail*: the earliest offset from which a chain of plausible frame
//!      headers ends exactly at the end of the segment (a write usually ends at a frame
//!      boundary). For reads, which may end mid-frame, a chain running past the end is accepted
//!      too, but only if it contains a HEADERS, RST_STREAM or DATA frame of an open stream, or
//!      a HEADERS frame opening a valid new client stream.
//!   2. At the start of a later segment, if the frame headers captured there form a plausible
//!      chain. Writes usually start at a frame boundary; reads rarely do, and then fail the
//!      check.
//!
//!   "Plausible" is strict: a known type with only its defined flags, the reserved bit clear,
//!   the fixed lengths of SETTINGS/PING/WINDOW_UPDATE/RST_STREAM/PRIORITY, stream 0 exactly for
//!   the connection frames, a length within bounds (16 KiB for a first control frame, 1 MiB
//!   otherwise: text and TLS records fail on their first byte), CONTINUATION only right after
//!   an unfinished header block of the same stream, and stream ids that belong to an open
//!   stream, a recently closed one or a valid new one. Decoded header names must also be valid
//!   HTTP/2 field names (lowercase tokens), otherwise the block is discarded as an HPACK error.
//!   Together these make a false boundary very unlikely; a false one is still possible in
//!   binary payloads and would at worst add a bogus DATA length to an already partial stream.
//! * **Unknown older HPACK entries.** After a resync (or when joining mid-connection) the
//!   direction's decoder keeps the dynamic entries it knows, which are the newest ones, and
//!   treats every index beyond them as unknown: fields referencing them are counted in
//!   [`H2Stream::undecoded_fields`] and dropped, never guessed (see [`hpack`]).
//! * **Streams end** on the response's END_STREAM, on RST_STREAM from either side, on GOAWAY
//!   for streams above its last-stream-id, at [`H2Conn::close`], or by eviction when more than
//!   [`MAX_OPEN_STREAMS`] are open. A stream whose response had started when its direction lost
//!   framing (its END_STREAM may be lost) also ends on the request's END_STREAM seen after
//!   that. Everything lost is reported as [`H2Stream::partial`] and counted in [`Http2Stats`].
//!
//! The module is pure (no I/O, no clock): time comes only from [`Segment::ts_ns`].

pub mod adapter;
mod frame;
pub mod hpack;
mod huffman;
pub mod span;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};

use frame::{
    CONTINUATION, DATA, END_HEADERS, END_STREAM, FrameHead, GOAWAY, HEADER_LEN, HEADERS, PADDED,
    PRIORITY_FLAG, PUSH_PROMISE, RST_STREAM, SETTINGS,
};

pub use super::{Detect, Segment};
pub use crate::trace::http::Header;
pub use adapter::Http2;
pub use frame::SANE_MAX_FRAME;

/// The client connection preface (RFC 9113 section 3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Largest header block (HEADERS/PUSH_PROMISE + CONTINUATION fragments) buffered. Beyond it the
/// block is dropped, its stream is partial and the direction's HPACK state becomes lossy.
pub const MAX_HEADER_BLOCK: usize = 256 * 1024;

/// Most streams tracked at once per connection; the oldest is evicted beyond it.
pub const MAX_OPEN_STREAMS: usize = 1024;

/// Most header bytes (names + values, all sections) kept per stream; more are dropped (partial).
pub const MAX_STREAM_HEADER_BYTES: usize = 64 * 1024;

/// Closed stream ids remembered so that late frames (WINDOW_UPDATE, RST after END_STREAM) are
/// not mistaken for a stream joined mid-way.
const RECENT_DONE: usize = 256;

/// SETTINGS bytes looked at (the table size setting is all we need; real SETTINGS are < 100).
const MAX_SETTINGS_KEPT: u32 = 16 * 6;

/// Stream ids further than this above the highest one seen are not a plausible new stream.
const MAX_ID_JUMP: u32 = 2 * MAX_OPEN_STREAMS as u32;

/// Error code reported in [`StreamEnd::Reset`] when the RST_STREAM payload was not captured.
pub const UNKNOWN_ERROR_CODE: u32 = u32::MAX;

/// Client direction starts with the connection preface (Yes / No / NeedMore on a prefix of it).
pub fn detect_preface(buf: &[u8]) -> Detect {
    let n = buf.len().min(PREFACE.len());
    if buf[..n] != PREFACE[..n] {
        Detect::No
    } else if n < PREFACE.len() {
        Detect::NeedMore
    } else {
        Detect::Yes
    }
}

/// Joining mid-connection: `buf` (start of a write) begins with a plausible HTTP/2 frame
/// sequence (every fully captured frame header passes the strict checks described in the
/// module documentation).
pub fn detect_frames(buf: &[u8]) -> Detect {
    if buf.len() < HEADER_LEN {
        return if frame::plausible_prefix(buf) {
            Detect::NeedMore
        } else {
            Detect::No
        };
    }
    match frame::follow_chain(buf, |_, _| true) {
        Some(chain) if !chain.heads.is_empty() => Detect::Yes,
        _ => Detect::No,
    }
}

/// How a stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// The response side sent END_STREAM.
    Complete,
    /// RST_STREAM; `error_code` is [`UNKNOWN_ERROR_CODE`] when its payload was not captured.
    Reset {
        error_code: u32,
        by_client: bool,
    },
    /// A GOAWAY whose last-stream-id is below this stream.
    GoAway {
        error_code: u32,
    },
    ConnectionClosed,
    /// More than [`MAX_OPEN_STREAMS`] streams were open; this was the oldest.
    Evicted,
}

/// One HTTP/2 stream: a request and its response (or a pushed response and its promise).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct H2Stream {
    pub stream_id: u32,
    /// Pseudo-headers included, as decoded, order kept.
    pub request_headers: Vec<Header>,
    /// The final (non-1xx) response HEADERS; for a gRPC Trailers-Only response it holds
    /// grpc-status too.
    pub response_headers: Vec<Header>,
    /// The trailing HEADERS of the response (gRPC grpc-status/grpc-message live here).
    pub trailers: Vec<Header>,
    /// ts of the segment holding the first byte of the request's first frame (0 = not seen).
    pub request_start_ns: u64,
    /// ts of the segment holding the last byte of the request's last frame seen.
    pub request_end_ns: u64,
    /// ts of the segment holding the first byte of the final response HEADERS (or of the first
    /// response frame when those were not seen).
    pub response_start_ns: u64,
    pub response_end_ns: u64,
    /// DATA payload bytes excluding padding, exact even when the payload was in a gap.
    pub request_body_len: u64,
    pub response_body_len: u64,
    pub end: StreamEnd,
    /// Anything about this stream was lost (gap in a header block, undecodable header field,
    /// resync while it was open, closed early).
    pub partial: bool,
    /// Header fields that could not be decoded (unknown dynamic-table reference).
    pub undecoded_fields: u32,
}

impl H2Stream {
    fn new(stream_id: u32) -> Self {
        Self {
            stream_id,
            request_headers: Vec::new(),
            response_headers: Vec::new(),
            trailers: Vec::new(),
            request_start_ns: 0,
            request_end_ns: 0,
            response_start_ns: 0,
            response_end_ns: 0,
            request_body_len: 0,
            response_body_len: 0,
            end: StreamEnd::ConnectionClosed,
            partial: false,
            undecoded_fields: 0,
        }
    }

    /// First request field with this name (names are lowercase on the wire).
    pub fn request_header(&self, name: &str) -> Option<&str> {
        find(&self.request_headers, name)
    }

    /// First response field with this name, in the response headers then the trailers.
    pub fn response_header(&self, name: &str) -> Option<&str> {
        find(&self.response_headers, name).or_else(|| find(&self.trailers, name))
    }

    pub fn trailer(&self, name: &str) -> Option<&str> {
        find(&self.trailers, name)
    }
}

fn find<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

crate::counters! {
    /// Counters of what could not be understood; they only grow.
    pub struct Http2Stats {
        /// Frame headers parsed.
        frames,
        /// Times a direction lost its framing and had to search for a frame boundary.
        resyncs,
        /// Stream bytes (captured or in gaps) dropped while the framing was lost.
        bytes_skipped,
        /// Header blocks that failed to decode (bad Huffman, integer overflow, bad index, invalid
        /// field name): that direction's table became lossy.
        hpack_errors,
        /// Fields referencing unknown dynamic-table entries.
        undecoded_fields,
        /// Streams evicted from a full table of [`MAX_OPEN_STREAMS`].
        streams_evicted,
        /// Streams first seen in the middle (response without its request).
        mid_stream_joins,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    Client = 0,
    Server = 1,
}

impl Dir {
    fn other(self) -> Dir {
        match self {
            Dir::Client => Dir::Server,
            Dir::Server => Dir::Client,
        }
    }
}

/// Where a direction is in its byte stream.
#[derive(Clone, Copy, Debug)]
enum Framing {
    /// Matching the client preface; `matched` bytes so far.
    Preface { matched: usize },
    /// Collecting a frame header.
    Head {
        buf: [u8; HEADER_LEN],
        have: usize,
        start_ts: u64,
    },
    /// Inside a frame's payload.
    Payload(Cur),
    /// Looking for a frame boundary.
    Lost,
}

const HEAD_START: Framing = Framing::Head {
    buf: [0; HEADER_LEN],
    have: 0,
    start_ts: 0,
};

#[derive(Clone, Copy, Debug)]
struct Cur {
    head: FrameHead,
    start_ts: u64,
    /// Payload bytes passed so far.
    done: u64,
    /// Payload prefix to keep in `Side::buf`.
    keep: u64,
    /// Some kept byte fell in a gap.
    damaged: bool,
}

/// A header block waiting for its CONTINUATION frames.
#[derive(Debug)]
struct PendingBlock {
    stream_id: u32,
    promised: Option<u32>,
    end_stream: bool,
    start_ts: u64,
    buf: Vec<u8>,
    damaged: bool,
}

struct Side {
    framing: Framing,
    /// Kept payload bytes of the current frame.
    buf: Vec<u8>,
    block: Option<PendingBlock>,
    /// Decodes the header blocks this direction sends.
    hpack: hpack::Decoder,
    lost_ever: bool,
}

impl Side {
    fn new(framing: Framing, hpack: hpack::Decoder) -> Self {
        Self {
            framing,
            buf: Vec::new(),
            block: None,
            hpack,
            lost_ever: false,
        }
    }
}

struct Open {
    s: H2Stream,
    seq: u64,
    req_done: bool,
    final_seen: bool,
    /// The response direction lost framing while the response was under way.
    resp_lost: bool,
    header_bytes: usize,
}

/// Both directions of one HTTP/2 connection.
pub struct H2Conn {
    sides: [Side; 2],
    open: HashMap<u32, Open>,
    done: Vec<H2Stream>,
    recent_done: VecDeque<u32>,
    seq: u64,
    max_client_id: u32,
    max_server_id: u32,
    /// Joined an established connection: streams may be met in the middle.
    joined: bool,
    stats: Http2Stats,
}

impl Default for H2Conn {
    fn default() -> Self {
        Self::new()
    }
}

impl H2Conn {
    /// Seen from the start: the client direction begins with [`PREFACE`] (its absence is
    /// tolerated: the bytes are then checked like a mid-connection write).
    pub fn new() -> Self {
        Self {
            sides: [
                Side::new(Framing::Preface { matched: 0 }, hpack::Decoder::new()),
                Side::new(HEAD_START, hpack::Decoder::new()),
            ],
            open: HashMap::new(),
            done: Vec::new(),
            recent_done: VecDeque::new(),
            seq: 0,
            max_client_id: 0,
            max_server_id: 0,
            joined: false,
            stats: Http2Stats::default(),
        }
    }

    /// Joined an established connection: no preface, both directions start by looking for a
    /// frame boundary, both HPACK tables start with unknown older entries.
    pub fn mid_stream() -> Self {
        let mut conn = Self::new();
        conn.joined = true;
        for side in &mut conn.sides {
            side.framing = Framing::Lost;
            side.hpack = hpack::Decoder::mid_stream();
        }
        conn
    }

    /// h2c via `Upgrade: h2c`: the HTTP/1.1 request that carried the Upgrade is stream 1
    /// (fully sent, `stream1_request` holds its pseudo-headers and headers); the 101 has been
    /// consumed. The client sends the preface next, the server its SETTINGS and the response.
    pub fn after_upgrade(stream1_request: Vec<Header>, ts_ns: u64) -> Self {
        let mut conn = Self::new();
        let mut s = H2Stream::new(1);
        s.request_headers = stream1_request;
        s.request_start_ns = ts_ns;
        s.request_end_ns = ts_ns;
        conn.insert_stream(s, true);
        conn.max_client_id = 1;
        conn
    }

    /// Bytes sent by the client.
    pub fn push_client(&mut self, seg: Segment) {
        self.push(Dir::Client, &seg);
    }

    /// Bytes sent by the server.
    pub fn push_server(&mut self, seg: Segment) {
        self.push(Dir::Server, &seg);
    }

    /// The connection closed: open streams end as ConnectionClosed, partial.
    pub fn close(&mut self, ts_ns: u64) {
        tracing::trace!(ts_ns, "http2 connection closed");
        for d in [Dir::Client, Dir::Server] {
            if let Some(b) = self.sides[d as usize].block.take() {
                self.mark_partial(b.stream_id);
            }
        }
        let mut ids: Vec<(u64, u32)> = self.open.iter().map(|(&id, o)| (o.seq, id)).collect();
        ids.sort_unstable();
        for (_, id) in ids {
            self.mark_partial(id);
            self.finish(id, StreamEnd::ConnectionClosed);
        }
    }

    /// Finished streams since the last call, in finishing order.
    pub fn take_streams(&mut self) -> Vec<H2Stream> {
        std::mem::take(&mut self.done)
    }

    pub fn stats(&self) -> Http2Stats {
        self.stats
    }

    // ---- byte level ----

    fn push(&mut self, d: Dir, seg: &Segment) {
        let data = &seg.data[..];
        let len = seg.len.max(data.len() as u64);
        let room = len - data.len() as u64;
        let tail = match usize::try_from(room) {
            Ok(room) if room < seg.tail.len() => &seg.tail[seg.tail.len() - room..],
            _ => &seg.tail[..],
        };
        let gap = room - tail.len() as u64;
        let ts = seg.ts_ns;

        if let Framing::Preface { matched: 0 } = self.sides[d as usize].framing
            && !data.is_empty()
            && detect_preface(data) == Detect::No
        {
            // No preface: judge the bytes like a write met mid-connection.
            self.sides[d as usize].framing = Framing::Lost;
        }
        if matches!(self.sides[d as usize].framing, Framing::Lost) && self.resync_at_start(d, data)
        {
            self.sides[d as usize].framing = HEAD_START;
        }
        self.feed(d, data, ts);
        if gap > 0 {
            self.feed_gap(d, gap, ts);
        }
        if !tail.is_empty() {
            if matches!(self.sides[d as usize].framing, Framing::Lost) {
                match self.resync_in_tail(d, tail) {
                    Some(p) => {
                        self.stats.bytes_skipped += p as u64;
                        self.sides[d as usize].framing = HEAD_START;
                        self.feed(d, tail.get(p..).unwrap_or_default(), ts);
                    }
                    None => self.stats.bytes_skipped += tail.len() as u64,
                }
            } else {
                self.feed(d, tail, ts);
            }
        }
    }

    /// Captured bytes.
    fn feed(&mut self, d: Dir, data: &[u8], ts: u64) {
        let mut i = 0usize;
        while i < data.len() {
            let side = &mut self.sides[d as usize];
            match &mut side.framing {
                Framing::Preface { matched } => {
                    if PREFACE.get(*matched) == data.get(i) {
                        *matched += 1;
                        i += 1;
                        if *matched == PREFACE.len() {
                            side.framing = HEAD_START;
                        }
                    } else {
                        self.lose(d);
                    }
                }
                Framing::Head {
                    buf,
                    have,
                    start_ts,
                } => {
                    if *have == 0 {
                        *start_ts = ts;
                    }
                    let n = (HEADER_LEN - *have).min(data.len() - i);
                    buf[*have..*have + n].copy_from_slice(&data[i..i + n]);
                    *have += n;
                    i += n;
                    if *have == HEADER_LEN {
                        let head = FrameHead::parse(buf);
                        let start_ts = *start_ts;
                        self.on_head(d, head, start_ts, ts);
                    }
                }
                Framing::Payload(cur) => {
                    let left = u64::from(cur.head.len) - cur.done;
                    let n = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(data.len() - i);
                    if cur.done < cur.keep {
                        let k = usize::try_from(cur.keep - cur.done).unwrap_or(usize::MAX);
                        side.buf.extend_from_slice(&data[i..i + n.min(k)]);
                    }
                    cur.done += n as u64;
                    i += n;
                    if cur.done == u64::from(cur.head.len) {
                        let cur = *cur;
                        self.complete(d, cur, ts);
                    }
                }
                Framing::Lost => {
                    self.stats.bytes_skipped += (data.len() - i) as u64;
                    return;
                }
            }
        }
    }

    /// `n` bytes of unknown content.
    fn feed_gap(&mut self, d: Dir, mut n: u64, ts: u64) {
        while n > 0 {
            let side = &mut self.sides[d as usize];
            match &mut side.framing {
                Framing::Payload(cur) => {
                    let take = (u64::from(cur.head.len) - cur.done).min(n);
                    if cur.done < cur.keep {
                        cur.damaged = true;
                    }
                    cur.done += take;
                    n -= take;
                    if cur.done == u64::from(cur.head.len) {
                        let cur = *cur;
                        self.complete(d, cur, ts);
                    }
                }
                Framing::Preface { .. } | Framing::Head { .. } => self.lose(d),
                Framing::Lost => {
                    self.stats.bytes_skipped += n;
                    return;
                }
            }
        }
    }

    /// The framing of `d` is lost: whatever was in flight on that direction may be lost too.
    fn lose(&mut self, d: Dir) {
        self.stats.resyncs += 1;
        let side = &mut self.sides[d as usize];
        side.framing = Framing::Lost;
        side.lost_ever = true;
        side.buf.clear();
        side.hpack.lose_sync();
        if let Some(b) = side.block.take() {
            self.mark_partial(b.stream_id);
        }
        for o in self.open.values_mut() {
            o.s.partial = true;
            if d == Dir::Server && o.s.response_start_ns != 0 {
                o.resp_lost = true;
            }
        }
    }

    // ---- resynchronisation ----

    /// Whether `h` may belong to this connection: connection frames always, stream frames if
    /// their stream is open, recently closed, or (HEADERS from the client) a valid new one.
    /// `strong`: only open streams and valid new streams count.
    fn stream_plausible(&self, d: Dir, h: &FrameHead, strong: bool) -> bool {
        if h.stream_id == 0 {
            return !strong;
        }
        if self.open.contains_key(&h.stream_id) {
            return true;
        }
        let odd = !h.stream_id.is_multiple_of(2);
        if d == Dir::Client && h.ty == HEADERS && odd && self.new_client_id_ok(h.stream_id) {
            return true;
        }
        if strong {
            return false;
        }
        if self.joined && self.max_client_id == 0 {
            return true;
        }
        let max = self.max_client_id.max(self.max_server_id);
        h.stream_id <= max.saturating_add(MAX_ID_JUMP)
    }

    fn new_client_id_ok(&self, id: u32) -> bool {
        (self.joined && self.max_client_id == 0)
            || (id > self.max_client_id && id <= self.max_client_id.saturating_add(MAX_ID_JUMP))
    }

    /// Rule 2 of the module doc: the captured start of a segment is a plausible frame chain.
    fn resync_at_start(&self, d: Dir, data: &[u8]) -> bool {
        frame::follow_chain(data, |h, _| self.stream_plausible(d, h, false))
            .is_some_and(|c| !c.heads.is_empty())
    }

    /// Rule 1 of the module doc: offset in `tail` where framing can be picked up again.
    fn resync_in_tail(&self, d: Dir, tail: &[u8]) -> Option<usize> {
        let mut beyond = None;
        for p in 0..tail.len().saturating_sub(HEADER_LEN - 1) {
            let rest = tail.get(p..)?;
            let Some(chain) = frame::follow_chain(rest, |h, _| self.stream_plausible(d, h, false))
            else {
                continue;
            };
            if chain.heads.is_empty() {
                continue;
            }
            if chain.end == rest.len() as u64 {
                return Some(p);
            }
            if beyond.is_none()
                && chain.end > rest.len() as u64
                && chain.heads.iter().any(|h| {
                    matches!(h.ty, HEADERS | RST_STREAM | DATA) && self.stream_plausible(d, h, true)
                })
            {
                beyond = Some(p);
            }
        }
        beyond
    }

    // ---- frame level ----

    fn on_head(&mut self, d: Dir, head: FrameHead, start_ts: u64, ts: u64) {
        self.stats.frames += 1;
        let insane = head.violates_type_rules() || (head.ty != DATA && head.len > SANE_MAX_FRAME);
        if insane {
            self.lose(d);
            return;
        }
        // A header block must be followed by its CONTINUATION frames only.
        let block_sid = self.sides[d as usize].block.as_ref().map(|b| b.stream_id);
        if let Some(sid) = block_sid
            && (head.ty != CONTINUATION || head.stream_id != sid)
        {
            self.sides[d as usize].block = None;
            self.sides[d as usize].hpack.lose_sync();
            self.stats.hpack_errors += 1;
            self.mark_partial(sid);
        }
        let pending = self.sides[d as usize]
            .block
            .as_ref()
            .map_or(0, |b| b.buf.len() as u64);
        let keep = match head.ty {
            DATA => u64::from(head.has(PADDED)),
            HEADERS | PUSH_PROMISE | CONTINUATION => {
                if pending + u64::from(head.len) > MAX_HEADER_BLOCK as u64 {
                    if let Some(b) = &mut self.sides[d as usize].block {
                        b.damaged = true;
                    }
                    // HEADERS/PUSH_PROMISE open the block when complete; flag via `damaged`.
                    0
                } else {
                    u64::from(head.len)
                }
            }
            SETTINGS => u64::from(head.len.min(MAX_SETTINGS_KEPT)),
            RST_STREAM | GOAWAY => 8,
            _ => 0,
        };
        let keep = keep.min(u64::from(head.len));
        let oversize =
            matches!(head.ty, HEADERS | PUSH_PROMISE | CONTINUATION) && keep < u64::from(head.len);
        let side = &mut self.sides[d as usize];
        side.buf.clear();
        if side.buf.capacity() > 64 * 1024 {
            side.buf = Vec::new();
        }
        let cur = Cur {
            head,
            start_ts,
            done: 0,
            keep,
            damaged: oversize,
        };
        side.framing = Framing::Payload(cur);
        if head.len == 0 {
            self.complete(d, cur, ts);
        }
    }

    /// The frame's last byte went by at `ts`.
    fn complete(&mut self, d: Dir, cur: Cur, ts: u64) {
        let side = &mut self.sides[d as usize];
        side.framing = HEAD_START;
        let payload = std::mem::take(&mut side.buf);
        let h = cur.head;
        match h.ty {
            DATA => self.on_data(d, &cur, &payload, ts),
            HEADERS | PUSH_PROMISE => self.on_block_start(d, &cur, &payload, ts),
            CONTINUATION => self.on_continuation(d, &cur, &payload, ts),
            RST_STREAM => {
                let code = if cur.damaged {
                    self.mark_partial(h.stream_id);
                    UNKNOWN_ERROR_CODE
                } else {
                    be32(&payload, 0).unwrap_or(UNKNOWN_ERROR_CODE)
                };
                if let Some(o) = self.open.get_mut(&h.stream_id) {
                    touch_side(&mut o.s, d, cur.start_ts, ts);
                    self.finish(
                        h.stream_id,
                        StreamEnd::Reset {
                            error_code: code,
                            by_client: d == Dir::Client,
                        },
                    );
                }
            }
            SETTINGS if !h.has(frame::ACK) => {
                // Settings sent by `d` bound the table of the blocks `d` receives.
                for pair in payload.chunks_exact(6) {
                    let id = u16::from_be_bytes([pair[0], pair[1]]);
                    let value = u32::from_be_bytes([pair[2], pair[3], pair[4], pair[5]]);
                    if id == frame::SETTINGS_HEADER_TABLE_SIZE {
                        self.sides[d.other() as usize].hpack.set_limit(value);
                    }
                }
            }
            GOAWAY if !cur.damaged => {
                if let (Some(last), Some(code)) = (be32(&payload, 0), be32(&payload, 4)) {
                    self.on_goaway(d, last & 0x7fff_ffff, code);
                }
            }
            _ => {}
        }
        // Give the buffer back for reuse.
        let side = &mut self.sides[d as usize];
        if side.buf.is_empty() && payload.capacity() <= 64 * 1024 {
            side.buf = payload;
            side.buf.clear();
        }
    }

    fn on_data(&mut self, d: Dir, cur: &Cur, payload: &[u8], ts: u64) {
        let h = cur.head;
        let len = u64::from(h.len);
        let mut damaged = false;
        let body = if !h.has(PADDED) {
            len
        } else if cur.damaged {
            // The pad length was in a gap: padding unknown, count it as body (partial).
            damaged = true;
            len.saturating_sub(1)
        } else {
            let pad = u64::from(payload.first().copied().unwrap_or(0));
            if pad + 1 > len {
                damaged = true;
                0
            } else {
                len - 1 - pad
            }
        };
        let Some(o) = self.open.get_mut(&h.stream_id) else {
            return;
        };
        o.s.partial |= damaged;
        touch_side(&mut o.s, d, cur.start_ts, ts);
        match d {
            Dir::Client => o.s.request_body_len = o.s.request_body_len.saturating_add(body),
            Dir::Server => o.s.response_body_len = o.s.response_body_len.saturating_add(body),
        }
        if h.has(END_STREAM) {
            self.end_stream(d, h.stream_id);
        }
    }

    fn on_block_start(&mut self, d: Dir, cur: &Cur, payload: &[u8], ts: u64) {
        let h = cur.head;
        let mut damaged = cur.damaged;
        let mut promised = None;
        let mut fragment: &[u8] = &[];
        if !damaged {
            match split_fragment(&h, payload) {
                Some((p, f)) => {
                    promised = p;
                    fragment = f;
                }
                None => damaged = true,
            }
        }
        if h.ty == PUSH_PROMISE && promised.is_none() {
            // Without the promised id the block can only feed HPACK sync... which it cannot.
            damaged = true;
        }
        let block = PendingBlock {
            stream_id: h.stream_id,
            promised,
            end_stream: h.ty == HEADERS && h.has(END_STREAM),
            start_ts: cur.start_ts,
            buf: fragment.to_vec(),
            damaged,
        };
        self.sides[d as usize].block = Some(block);
        if h.has(END_HEADERS) {
            self.finish_block(d, ts);
        }
    }

    fn on_continuation(&mut self, d: Dir, cur: &Cur, payload: &[u8], ts: u64) {
        let h = cur.head;
        let Some(block) = self.sides[d as usize].block.as_mut() else {
            // Its HEADERS was not seen (lost or before we joined): nothing to decode.
            self.mark_partial(h.stream_id);
            return;
        };
        if cur.damaged {
            block.damaged = true;
        } else if !block.damaged {
            block.buf.extend_from_slice(payload);
        }
        if h.has(END_HEADERS) {
            self.finish_block(d, ts);
        }
    }

    /// A whole header block arrived; its last byte went by at `ts`.
    fn finish_block(&mut self, d: Dir, ts: u64) {
        let Some(block) = self.sides[d as usize].block.take() else {
            return;
        };
        let side = &mut self.sides[d as usize];
        let mut out = hpack::Block::default();
        let mut ok = !block.damaged;
        if block.damaged {
            side.hpack.lose_sync();
        } else if let Err(e) = side.hpack.decode(&block.buf, &mut out) {
            tracing::trace!(error = %e, "hpack");
            side.hpack.lose_sync();
            self.stats.hpack_errors += 1;
            ok = false;
        }
        if !out.fields.iter().all(|f| valid_name(&f.name)) {
            // Not what a peer would send: our framing or table is wrong. Trust none of it.
            side.hpack.lose_sync();
            self.stats.hpack_errors += 1;
            out.fields.clear();
            ok = false;
        }
        self.stats.undecoded_fields += u64::from(out.undecoded);
        let partial = !ok || out.undecoded > 0 || out.truncated;
        match (d, block.promised) {
            (Dir::Server, Some(promised)) => {
                self.on_promise(&block, promised, out, partial, ts);
            }
            (Dir::Client, _) => self.on_request_block(&block, out, partial, ts),
            (Dir::Server, None) => self.on_response_block(&block, out, partial, ts),
        }
    }

    fn on_request_block(&mut self, b: &PendingBlock, out: hpack::Block, partial: bool, ts: u64) {
        let sid = b.stream_id;
        if !self.open.contains_key(&sid) {
            if sid.is_multiple_of(2)
                || self.recent_done.contains(&sid)
                || !self.new_client_id_ok(sid)
            {
                return;
            }
            let mut s = H2Stream::new(sid);
            s.request_start_ns = b.start_ts;
            if self.joined && !out.fields.iter().any(|f| f.name == ":method") {
                // A client block without :method is trailers of a request we did not see.
                s.partial = true;
                self.stats.mid_stream_joins += 1;
            }
            self.insert_stream(s, false);
            self.max_client_id = self.max_client_id.max(sid);
        }
        let Some(o) = self.open.get_mut(&sid) else {
            return;
        };
        o.s.partial |= partial;
        o.s.undecoded_fields = o.s.undecoded_fields.saturating_add(out.undecoded);
        if o.s.request_headers.is_empty() && !o.req_done {
            store(o, out.fields, |s| &mut s.request_headers);
        }
        // Later client blocks are request trailers: decoded (HPACK sync) but not kept.
        touch_side(&mut o.s, Dir::Client, b.start_ts, ts);
        if b.end_stream {
            self.end_stream(Dir::Client, sid);
        }
    }

    fn on_response_block(&mut self, b: &PendingBlock, out: hpack::Block, partial: bool, ts: u64) {
        let sid = b.stream_id;
        if !self.open.contains_key(&sid) {
            let joinable = !sid.is_multiple_of(2)
                && !self.recent_done.contains(&sid)
                && (self.joined || self.sides[Dir::Client as usize].lost_ever);
            if !joinable {
                return;
            }
            let mut s = H2Stream::new(sid);
            s.partial = true;
            self.stats.mid_stream_joins += 1;
            self.insert_stream(s, true);
        }
        let Some(o) = self.open.get_mut(&sid) else {
            return;
        };
        o.s.partial |= partial;
        o.s.undecoded_fields = o.s.undecoded_fields.saturating_add(out.undecoded);
        let status = find(&out.fields, ":status");
        let informational = status.is_some_and(|s| s.len() == 3 && s.starts_with('1'));
        if informational && !b.end_stream {
            return;
        }
        let is_final_head = if status.is_some() {
            !o.final_seen
        } else if partial && out.fields.is_empty() {
            // Nothing decoded: the first block without END_STREAM is most likely the head.
            !o.final_seen && !b.end_stream
        } else {
            !o.final_seen && out.undecoded > 0 && !b.end_stream
        };
        if is_final_head {
            o.final_seen = true;
            o.s.response_start_ns = b.start_ts;
            store(o, out.fields, |s| &mut s.response_headers);
        } else {
            if !o.final_seen {
                // Trailers without the response head: the head was lost.
                o.s.partial = true;
            }
            store(o, out.fields, |s| &mut s.trailers);
        }
        touch_side(&mut o.s, Dir::Server, b.start_ts, ts);
        if b.end_stream {
            self.end_stream(Dir::Server, sid);
        }
    }

    fn on_promise(
        &mut self,
        b: &PendingBlock,
        promised: u32,
        out: hpack::Block,
        partial: bool,
        ts: u64,
    ) {
        if promised == 0 || !promised.is_multiple_of(2) || self.open.contains_key(&promised) {
            return;
        }
        let mut s = H2Stream::new(promised);
        s.request_start_ns = b.start_ts;
        s.request_end_ns = ts;
        s.partial = partial;
        s.undecoded_fields = out.undecoded;
        self.insert_stream(s, true);
        self.max_server_id = self.max_server_id.max(promised);
        if let Some(o) = self.open.get_mut(&promised) {
            store(o, out.fields, |s| &mut s.request_headers);
        }
    }

    fn end_stream(&mut self, d: Dir, sid: u32) {
        let Some(o) = self.open.get_mut(&sid) else {
            return;
        };
        match d {
            Dir::Server => self.finish(sid, StreamEnd::Complete),
            Dir::Client => {
                o.req_done = true;
                if o.resp_lost {
                    // Its response's END_STREAM may have been in the lost bytes.
                    self.finish(sid, StreamEnd::Complete);
                }
            }
        }
    }

    /// GOAWAY sent by `d`: streams initiated by the other side above `last` were not processed.
    fn on_goaway(&mut self, d: Dir, last: u32, code: u32) {
        let initiated_by_receiver = |id: u32| match d {
            Dir::Server => !id.is_multiple_of(2),
            Dir::Client => id.is_multiple_of(2),
        };
        let mut ids: Vec<(u64, u32)> = self
            .open
            .iter()
            .filter(|&(&id, _)| id > last && initiated_by_receiver(id))
            .map(|(&id, o)| (o.seq, id))
            .collect();
        ids.sort_unstable();
        for (_, id) in ids {
            self.finish(id, StreamEnd::GoAway { error_code: code });
        }
    }

    // ---- streams ----

    fn insert_stream(&mut self, s: H2Stream, req_done: bool) {
        if self.open.len() >= MAX_OPEN_STREAMS
            && let Some((&oldest, _)) = self.open.iter().min_by_key(|(_, o)| o.seq)
        {
            self.stats.streams_evicted += 1;
            self.mark_partial(oldest);
            self.finish(oldest, StreamEnd::Evicted);
        }
        self.seq += 1;
        self.open.insert(
            s.stream_id,
            Open {
                s,
                seq: self.seq,
                req_done,
                final_seen: false,
                resp_lost: false,
                header_bytes: 0,
            },
        );
    }

    fn mark_partial(&mut self, sid: u32) {
        if let Some(o) = self.open.get_mut(&sid) {
            o.s.partial = true;
        }
    }

    fn finish(&mut self, sid: u32, end: StreamEnd) {
        if let Some(mut o) = self.open.remove(&sid) {
            o.s.end = end;
            self.done.push(o.s);
            if self.recent_done.len() >= RECENT_DONE {
                self.recent_done.pop_front();
            }
            self.recent_done.push_back(sid);
        }
    }
}

/// Records a frame of side `d` spanning `start_ts..=end_ts` on the stream.
fn touch_side(s: &mut H2Stream, d: Dir, start_ts: u64, end_ts: u64) {
    let (start, end) = match d {
        Dir::Client => (&mut s.request_start_ns, &mut s.request_end_ns),
        Dir::Server => (&mut s.response_start_ns, &mut s.response_end_ns),
    };
    if *start == 0 {
        *start = start_ts;
    }
    *end = end_ts;
}

/// Appends fields to one of the stream's header lists within [`MAX_STREAM_HEADER_BYTES`].
fn store(o: &mut Open, fields: Vec<Header>, list: impl Fn(&mut H2Stream) -> &mut Vec<Header>) {
    for f in fields {
        let n = f.name.len() + f.value.len();
        if o.header_bytes + n > MAX_STREAM_HEADER_BYTES {
            o.s.partial = true;
            return;
        }
        o.header_bytes += n;
        list(&mut o.s).push(f);
    }
}

/// Splits a complete HEADERS/PUSH_PROMISE payload into (promised stream id, block fragment),
/// dropping padding and priority fields. None when the pad length does not fit.
fn split_fragment<'a>(h: &FrameHead, payload: &'a [u8]) -> Option<(Option<u32>, &'a [u8])> {
    let mut start = 0usize;
    let mut pad = 0usize;
    if h.has(PADDED) {
        pad = usize::from(*payload.first()?);
        start = 1;
    }
    if h.ty == HEADERS && h.has(PRIORITY_FLAG) {
        start += 5;
    }
    let mut promised = None;
    if h.ty == PUSH_PROMISE {
        promised = Some(be32(payload, start)? & 0x7fff_ffff);
        start += 4;
    }
    let end = payload.len().checked_sub(pad)?;
    Some((promised, payload.get(start..end)?))
}

fn be32(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// RFC 9113 8.2.1: field names are lowercase tokens; pseudo-headers are ':' + lowercase letters.
fn valid_name(name: &str) -> bool {
    let rest = match name.strip_prefix(':') {
        Some(pseudo) => {
            return !pseudo.is_empty() && pseudo.bytes().all(|b| b.is_ascii_lowercase());
        }
        None => name,
    };
    !rest.is_empty()
        && rest.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
        })
}
