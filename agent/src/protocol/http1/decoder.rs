//! One direction's framing: where heads start, how long bodies are, and how to find the next
//! head after losing track.
//!
//! Only bytes that must be looked at (a head, a chunk-size line, a trailer section, a resync
//! candidate) are kept in `buf`; body bytes are counted and dropped, directly from the segment
//! when nothing is pending. Every byte of `buf` carries the ts of the segment it came from
//! (through `marks`), because a message's start and end are stamped with the segment that
//! held its first and last byte, and one buffered head can span several segments.

use super::head::{self, AnyHead, Framing, MethodKind, Parsed};
use super::pairing::{Pairing, Side};
use super::{MAX_HEAD_LEN, ResponseHead};

/// Chunk-size lines are "hex[;ext]\r\n"; anything this long without a newline is not one.
const MAX_CHUNK_LINE: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At a message boundary: the next non-empty line starts a head.
    Head,
    /// Content-Length body.
    Body {
        remaining: u64,
    },
    ChunkSize,
    ChunkData {
        remaining: u64,
    },
    /// The CRLF after chunk data; `cr` once the CR is consumed.
    ChunkDataEnd {
        cr: bool,
    },
    /// After the last chunk: trailer fields up to an empty line.
    Trailers,
    /// Response without length (or a tunnel): everything until close is body.
    UntilClose,
    /// Framing lost: dropping bytes until a head starts at a candidate position.
    Resync,
}

/// Start of a segment inside `buf`.
#[derive(Clone, Copy, Debug)]
struct Mark {
    off: usize,
    ts: u64,
    /// False for a mark that only carries the ts of bytes whose segment start was compacted away
    /// or consumed directly; true ones are resync candidates (a write often starts a message).
    seg_start: bool,
}

pub(super) struct Decoder {
    side: Side,
    state: State,
    buf: Vec<u8>,
    /// `buf[..pos]` is consumed; compacted away at the end of each push.
    pos: usize,
    marks: Vec<Mark>,
    /// How far `buf[pos..]` was already searched (for a head's or a line's end), so that a head
    /// arriving one byte per segment costs O(n), not O(n^2).
    scan: usize,
    /// The current head's first line was validated (httparse accepted it as far as it went).
    line_checked: bool,
    /// In `Resync`: `pos` is at a line start, so it is a candidate for a head.
    cand: bool,
    /// False from losing framing until a head is found again: a failure while already
    /// resynchronising is not a new resync.
    synced: bool,
    /// Pairing id of the message whose body is in progress; None for a response nobody asked for.
    cur: Option<u64>,
    /// ts of the last byte attributed to the current message: the end of a message cut short.
    msg_ts: u64,
    /// ts of the last segment pushed.
    last_ts: u64,
}

impl Decoder {
    /// Frees the capacity beyond the bytes and marks held.
    pub(super) fn shrink(&mut self) {
        self.buf.shrink_to_fit();
        self.marks.shrink_to_fit();
    }

    /// Bytes allocated for buffered data and marks (tests of `shrink`).
    #[cfg(test)]
    pub(super) fn allocated(&self) -> usize {
        self.buf.capacity() + self.marks.capacity() * std::mem::size_of::<Mark>()
    }

    pub(super) fn new(side: Side) -> Self {
        Self {
            side,
            state: State::Head,
            buf: Vec::new(),
            pos: 0,
            marks: Vec::new(),
            scan: 0,
            line_checked: false,
            cand: false,
            synced: true,
            cur: None,
            msg_ts: 0,
            last_ts: 0,
        }
    }

    fn is_request(&self) -> bool {
        self.side == Side::Request
    }

    /// Knows where it is in the stream (not searching for a head after losing its place).
    pub(super) fn in_step(&self) -> bool {
        self.synced && !matches!(self.state, State::Resync)
    }

    /// One segment: `data` captured, then `gap` unknown bytes.
    pub(super) fn push(&mut self, p: &mut Pairing, data: &[u8], gap: u64, ts: u64) {
        if p.upgraded {
            return;
        }
        self.last_ts = ts;
        let was_upgraded = p.upgraded;
        let mut data = data;
        let mut whole = true;
        if self.pos >= self.buf.len() {
            // Nothing pending: body bytes are counted straight from the segment, never copied.
            self.clear_buf();
            let n = self.count_direct(p, data.len() as u64, ts);
            whole = n == 0;
            data = &data[n as usize..];
        }
        if !data.is_empty() {
            self.add_mark(ts, whole);
            self.buf.extend_from_slice(data);
            self.run(p);
            self.compact();
        }
        if gap > 0 && !p.upgraded {
            self.gap(p, gap, ts);
        } else if p.upgraded && !was_upgraded {
            p.after_upgrade_gap = gap;
            p.after_upgrade_ts = ts;
        }
    }

    /// Counted states consume bytes without looking at them. Returns how many were taken.
    fn count_direct(&mut self, p: &mut Pairing, avail: u64, ts: u64) -> u64 {
        let mut taken = 0;
        while taken < avail {
            let (n, done) = self.count(p, avail - taken);
            if n == 0 {
                break;
            }
            taken += n;
            self.msg_ts = ts;
            if done {
                self.count_done(p, ts);
            }
        }
        taken
    }

    /// Takes up to `avail` bytes in a counted state; returns (taken, state finished).
    fn count(&mut self, p: &mut Pairing, avail: u64) -> (u64, bool) {
        match &mut self.state {
            State::Body { remaining } | State::ChunkData { remaining } => {
                let n = (*remaining).min(avail);
                *remaining -= n;
                let done = *remaining == 0;
                p.add_body(self.side, self.cur, n);
                (n, done)
            }
            State::UntilClose => {
                p.add_body(self.side, self.cur, avail);
                (avail, false)
            }
            _ => (0, false),
        }
    }

    fn count_done(&mut self, p: &mut Pairing, ts: u64) {
        match self.state {
            State::Body { .. } => self.end_message(p, ts, false),
            State::ChunkData { .. } => self.state = State::ChunkDataEnd { cr: false },
            _ => {}
        }
    }

    /// Processes `buf[pos..]` until it needs more bytes.
    fn run(&mut self, p: &mut Pairing) {
        while self.pos < self.buf.len() {
            if p.upgraded {
                self.pos = self.buf.len();
                return;
            }
            let progressed = match self.state {
                State::Body { .. } | State::ChunkData { .. } | State::UntilClose => {
                    let (n, done) = self.count(p, (self.buf.len() - self.pos) as u64);
                    // n >= 1: counted states never hold remaining == 0.
                    self.pos += n as usize;
                    let ts = self.ts_at(self.pos.saturating_sub(1));
                    self.msg_ts = ts;
                    if done {
                        self.count_done(p, ts);
                    }
                    n > 0
                }
                State::Head => self.step_head(p),
                State::ChunkSize => self.step_chunk_size(p),
                State::ChunkDataEnd { cr } => self.step_chunk_data_end(p, cr),
                State::Trailers => self.step_trailers(p),
                State::Resync => self.step_resync(p),
            };
            if !progressed {
                return;
            }
        }
    }

    // ---- heads ----

    fn step_head(&mut self, p: &mut Pairing) -> bool {
        // Empty lines between messages are allowed noise (RFC 9112 §2.2): dropped, not skipped.
        if self.scan == 0 && !self.line_checked {
            let blank = self.buf[self.pos..]
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            self.pos += blank;
            if self.pos >= self.buf.len() {
                return false;
            }
        }
        let is_request = self.is_request();
        let avail = &self.buf[self.pos..];
        if !self.line_checked {
            if !head::prefix_plausible(is_request, avail) {
                return self.invalid_head(p);
            }
            let Some(nl) = find(avail, self.scan, b'\n') else {
                self.scan = avail.len();
                return if avail.len() > MAX_HEAD_LEN {
                    self.invalid_head(p)
                } else {
                    false
                };
            };
            // Validate the first line as soon as it is complete: most garbage dies here.
            match head::parse(is_request, avail) {
                Parsed::Complete(h, n) => return self.head_done(p, h, n),
                Parsed::Partial => {
                    self.line_checked = true;
                    self.scan = nl;
                }
                Parsed::Invalid => return self.invalid_head(p),
            }
        }
        loop {
            let avail = &self.buf[self.pos..];
            match find_blank_line(avail, self.scan) {
                Err(resume) => {
                    self.scan = resume;
                    return if avail.len() > MAX_HEAD_LEN {
                        self.invalid_head(p)
                    } else {
                        false
                    };
                }
                Ok(end) => match head::parse(is_request, avail) {
                    Parsed::Complete(h, n) => return self.head_done(p, h, n),
                    // Not the end after all (cannot happen with httparse's grammar); go on.
                    Parsed::Partial => self.scan = end,
                    Parsed::Invalid => return self.invalid_head(p),
                },
            }
        }
    }

    /// Bytes at a head position are not a head.
    fn invalid_head(&mut self, p: &mut Pairing) -> bool {
        p.stats.invalid_heads = p.stats.invalid_heads.saturating_add(1);
        self.lose_sync(p);
        // Skip the first byte so that the search does not find this same "head" again.
        self.pos += 1;
        p.skipped(1);
        self.cand = false;
        true
    }

    fn head_done(&mut self, p: &mut Pairing, h: AnyHead, len: usize) -> bool {
        if len > MAX_HEAD_LEN {
            return self.invalid_head(p);
        }
        let start_ts = self.ts_at(self.pos);
        let end_ts = self.ts_at(self.pos + len - 1);
        self.pos += len;
        self.scan = 0;
        self.line_checked = false;
        self.synced = true;
        self.msg_ts = end_ts;
        match h {
            AnyHead::Request(req) => {
                let framing = head::request_framing(&req);
                self.cur = Some(p.begin_request(Some(req), start_ts, false));
                self.start_body(p, framing, end_ts);
            }
            AnyHead::Response(resp) => {
                if (100..200).contains(&resp.status) && resp.status != 101 {
                    // Interim (100 Continue, 103 Early Hints): the final response follows.
                    return true;
                }
                let status = resp.status;
                let target = p.response_target();
                let method = target.map_or(MethodKind::Other, |t| t.1);
                let tunnel = method == MethodKind::Connect && (200..300).contains(&status);
                let framing = head::response_framing(&resp, method);
                self.cur = target.map(|t| t.0);
                if let Some(id) = self.cur {
                    p.begin_response(id, resp, start_ts, false);
                }
                if status == 101 || tunnel {
                    p.upgrade(self.cur.take(), end_ts);
                    // What follows the head belongs to the new protocol (an h2c server often
                    // writes its first frames together with the 101).
                    p.after_upgrade.extend_from_slice(&self.buf[self.pos..]);
                    self.pos = self.buf.len();
                    return true;
                }
                self.start_body(p, framing, end_ts);
            }
        }
        true
    }

    fn start_body(&mut self, p: &mut Pairing, framing: Framing, head_end_ts: u64) {
        match framing {
            Framing::None => self.end_message(p, head_end_ts, false),
            Framing::Length(n) => self.state = State::Body { remaining: n },
            Framing::Chunked => self.state = State::ChunkSize,
            Framing::UntilClose => self.state = State::UntilClose,
            Framing::Invalid => {
                // The bytes after the head are a body of unknown length: find the next head.
                self.end_message(p, head_end_ts, true);
                self.lose_sync(p);
                self.cand = true;
            }
        }
    }

    /// The current message ends (normally or not); the next byte is expected to start a head.
    fn end_message(&mut self, p: &mut Pairing, ts: u64, partial: bool) {
        p.end(self.side, self.cur.take(), ts, partial);
        self.state = State::Head;
        self.scan = 0;
        self.line_checked = false;
    }

    /// Framing is lost at `pos`: cut the message in progress (if any) and search for a head.
    fn lose_sync(&mut self, p: &mut Pairing) {
        if self.in_body() {
            let ts = self.msg_ts;
            self.end_message(p, ts, true);
        }
        if self.synced {
            p.stats.resyncs = p.stats.resyncs.saturating_add(1);
            self.synced = false;
        }
        self.state = State::Resync;
        self.scan = 0;
        self.line_checked = false;
        self.cand = false;
    }

    /// A message's head was parsed and its end is not reached.
    fn in_body(&self) -> bool {
        !matches!(self.state, State::Head | State::Resync)
    }

    // ---- chunked ----

    fn step_chunk_size(&mut self, p: &mut Pairing) -> bool {
        let avail = &self.buf[self.pos..];
        let Some(nl) = find(avail, self.scan, b'\n') else {
            self.scan = avail.len();
            if avail.len() > MAX_CHUNK_LINE {
                self.lose_sync(p);
                return true;
            }
            return false;
        };
        match head::chunk_size(&avail[..=nl]) {
            Some(size) => {
                self.pos += nl + 1;
                self.scan = 0;
                self.msg_ts = self.ts_at(self.pos - 1);
                self.state = if size == 0 {
                    State::Trailers
                } else {
                    State::ChunkData { remaining: size }
                };
            }
            None => {
                // Often the next head, when a sender got its own framing wrong: look here first.
                self.lose_sync(p);
                self.cand = true;
            }
        }
        true
    }

    fn step_chunk_data_end(&mut self, p: &mut Pairing, cr: bool) -> bool {
        match (cr, self.buf[self.pos]) {
            (false, b'\r') => {
                self.pos += 1;
                self.state = State::ChunkDataEnd { cr: true };
            }
            (_, b'\n') => {
                self.pos += 1;
                self.state = State::ChunkSize;
            }
            _ => {
                self.lose_sync(p);
                self.cand = !cr;
                return true;
            }
        }
        self.msg_ts = self.ts_at(self.pos - 1);
        true
    }

    fn step_trailers(&mut self, p: &mut Pairing) -> bool {
        let avail = &self.buf[self.pos..];
        match find_blank_line(avail, self.scan) {
            Ok(end) => {
                self.pos += end;
                let ts = self.ts_at(self.pos - 1);
                self.end_message(p, ts, false);
                true
            }
            Err(resume) => {
                self.scan = resume;
                if avail.len() > MAX_HEAD_LEN {
                    self.lose_sync(p);
                    return true;
                }
                false
            }
        }
    }

    // ---- resync ----

    /// Drops bytes up to the next candidate (a line start or a segment start) that looks like
    /// the first line of a head of our kind; returns to `Head` there.
    fn step_resync(&mut self, p: &mut Pairing) -> bool {
        let is_request = self.is_request();
        loop {
            let avail = &self.buf[self.pos..];
            if avail.is_empty() {
                return false;
            }
            if self.cand || self.is_seg_start(self.pos) {
                match candidate(is_request, avail, &mut self.scan) {
                    Candidate::Yes { common, line_end } => {
                        // An unusual method whose line runs into the next segment is more likely
                        // leftover bytes glued to a head that starts at that segment ("abcdGET /
                        // HTTP/1.1"): the segment start gets its own chance.
                        let spans = self
                            .next_seg_start(self.pos)
                            .is_some_and(|s| s <= self.pos + line_end);
                        if common || !spans {
                            self.state = State::Head;
                            self.scan = 0;
                            self.line_checked = false;
                            return true;
                        }
                    }
                    Candidate::NeedMore if avail.len() <= MAX_HEAD_LEN => return false,
                    Candidate::NeedMore | Candidate::No => {}
                }
            }
            let next_line = find(avail, 0, b'\n').map(|i| self.pos + i + 1);
            let next_seg = self.next_seg_start(self.pos);
            let (next, cand) = match (next_line, next_seg) {
                (Some(l), Some(s)) if s < l => (s, false),
                (Some(l), _) => (l, true),
                (None, Some(s)) => (s, false),
                (None, None) => (self.buf.len(), false),
            };
            let skipped = (next - self.pos) as u64;
            p.skipped(skipped);
            self.pos = next;
            self.cand = cand;
            self.scan = 0;
        }
    }

    // ---- gaps and close ----

    /// `n` bytes of unknown content follow what was pushed.
    fn gap(&mut self, p: &mut Pairing, mut n: u64, ts: u64) {
        while n > 0 && !p.upgraded {
            match self.state {
                State::Body { .. } | State::ChunkData { .. } | State::UntilClose => {
                    let (taken, done) = self.count(p, n);
                    n -= taken;
                    self.msg_ts = ts;
                    if done {
                        self.count_done(p, ts);
                    }
                }
                State::ChunkDataEnd { cr } => {
                    // Chunked encoders write data and its CRLF together, so a capture cut inside
                    // chunk data very often cuts the CRLF too. Assume the standard two bytes
                    // rather than lose the rest of the body.
                    let need = if cr { 1 } else { 2 };
                    if n >= need {
                        n -= need;
                        self.msg_ts = ts;
                        self.state = State::ChunkSize;
                    } else {
                        n = 0;
                        self.state = State::ChunkDataEnd { cr: true };
                    }
                }
                State::ChunkSize | State::Trailers => {
                    // The framing of the rest of this message is unknown.
                    self.msg_ts = ts;
                    self.lose_sync(p);
                }
                State::Head => {
                    self.cut_head(p, ts, true);
                    if p.upgraded {
                        // The cut head was a 101: nothing after it is ours to count.
                        break;
                    }
                    self.lose_sync(p);
                }
                State::Resync => {
                    // Pending bytes are followed by unknown ones: no head can start in them.
                    let pending = (self.buf.len() - self.pos) as u64;
                    p.skipped(pending);
                    p.skipped(n);
                    self.pos = self.buf.len();
                    n = 0;
                }
            }
        }
        self.compact();
    }

    /// A head in progress is cut (by a gap or by the close): report what can be read of it.
    /// With `lost_if_empty`, a gap where a head was due also means one message was lost, and
    /// pairing must know to stay aligned.
    fn cut_head(&mut self, p: &mut Pairing, ts: u64, lost_if_empty: bool) {
        let avail = &self.buf[self.pos..];
        let was_synced = self.synced;
        if avail.is_empty() {
            if lost_if_empty && was_synced {
                self.lose_message(p, ts);
            }
            return;
        }
        let seen = avail.len();
        // Complete lines only, then an empty line to close the head.
        let parsed = avail.iter().rposition(|&b| b == b'\n').map(|last| {
            let mut closed = avail[..=last].to_vec();
            closed.extend_from_slice(b"\r\n");
            head::parse(self.is_request(), &closed)
        });
        let start_ts = self.ts_at(self.pos);
        self.pos = self.buf.len();
        self.scan = 0;
        self.line_checked = false;
        match parsed {
            Some(Parsed::Complete(AnyHead::Request(mut req), _)) => {
                req.head_len = seen;
                let id = p.begin_request(Some(req), start_ts, true);
                p.end(Side::Request, Some(id), ts, true);
            }
            Some(Parsed::Complete(AnyHead::Response(mut resp), _)) => {
                resp.head_len = seen;
                self.cut_response(p, resp, start_ts, ts);
            }
            _ => {
                p.skipped(seen as u64);
                if was_synced {
                    self.lose_message(p, ts);
                }
            }
        }
    }

    fn cut_response(&mut self, p: &mut Pairing, resp: ResponseHead, start_ts: u64, ts: u64) {
        let status = resp.status;
        if (100..200).contains(&status) && status != 101 {
            return;
        }
        let target = p.response_target();
        let tunnel =
            target.is_some_and(|t| t.1 == MethodKind::Connect) && (200..300).contains(&status);
        let id = target.map(|t| t.0);
        if let Some(id) = id {
            p.begin_response(id, resp, start_ts, true);
        }
        if status == 101 || tunnel {
            p.upgrade(id, ts);
        } else {
            p.end(Side::Response, id, ts, true);
        }
    }

    /// A whole message went missing; keep one pairing slot for it.
    fn lose_message(&mut self, p: &mut Pairing, ts: u64) {
        match self.side {
            Side::Request => {
                let id = p.begin_request(None, ts, true);
                p.end(Side::Request, Some(id), ts, true);
            }
            Side::Response => p.lose_response(),
        }
    }

    /// The connection closed: end what is in progress and start over clean (a half-closed
    /// connection may still carry the other direction, and a reused decoder must not inherit
    /// a stale state).
    pub(super) fn finish(&mut self, p: &mut Pairing) {
        match self.state {
            State::UntilClose => {
                let ts = self.msg_ts;
                self.end_message(p, ts, false);
            }
            State::Head => {
                let ts = self.ts_at(self.buf.len().saturating_sub(1));
                self.cut_head(p, ts, false);
            }
            State::Resync => {
                let pending = (self.buf.len() - self.pos) as u64;
                p.skipped(pending);
            }
            _ => {
                let ts = self.msg_ts;
                self.end_message(p, ts, true);
            }
        }
        let side = self.side;
        *self = Self::new(side);
    }

    // ---- buffer bookkeeping ----

    /// Bytes held between pushes (the memory bound the tests check).
    #[cfg(test)]
    pub(super) fn buffered(&self) -> usize {
        self.buf.len()
    }

    fn clear_buf(&mut self) {
        self.buf.clear();
        self.marks.clear();
        self.pos = 0;
    }

    fn add_mark(&mut self, ts: u64, seg_start: bool) {
        let off = self.buf.len();
        match self.marks.last_mut() {
            Some(m) if m.off == off => *m = Mark { off, ts, seg_start },
            _ => self.marks.push(Mark { off, ts, seg_start }),
        }
    }

    /// ts of the segment that held `buf[off]`.
    fn ts_at(&self, off: usize) -> u64 {
        match self.marks.partition_point(|m| m.off <= off) {
            0 => self.last_ts,
            i => self.marks[i - 1].ts,
        }
    }

    fn is_seg_start(&self, off: usize) -> bool {
        self.marks
            .binary_search_by_key(&off, |m| m.off)
            .is_ok_and(|i| self.marks[i].seg_start)
    }

    fn next_seg_start(&self, off: usize) -> Option<usize> {
        let i = self.marks.partition_point(|m| m.off <= off);
        self.marks[i..].iter().find(|m| m.seg_start).map(|m| m.off)
    }

    /// Drops consumed bytes; marks keep the ts of the bytes left.
    fn compact(&mut self) {
        if self.pos == 0 {
            return;
        }
        if self.pos >= self.buf.len() {
            self.clear_buf();
            return;
        }
        let first = Mark {
            off: 0,
            ts: self.ts_at(self.pos),
            seg_start: self.is_seg_start(self.pos),
        };
        let pos = self.pos;
        self.buf.drain(..pos);
        self.marks.retain(|m| m.off > pos);
        for m in &mut self.marks {
            m.off -= pos;
        }
        self.marks.insert(0, first);
        self.pos = 0;
    }
}

/// Index of the first `b` in `buf[from..]`, relative to `buf`.
fn find(buf: &[u8], from: usize, b: u8) -> Option<usize> {
    buf.get(from..)?
        .iter()
        .position(|&x| x == b)
        .map(|i| i + from)
}

/// End (exclusive) of the first empty line in `buf`, i.e. of a header block. `from` is where a
/// previous search stopped (0 to start, else the index of a '\n' whose next line was not yet
/// complete). Err carries where to resume.
fn find_blank_line(buf: &[u8], from: usize) -> Result<usize, usize> {
    if from == 0 {
        match (buf.first(), buf.get(1)) {
            (None, _) | (Some(b'\r'), None) => return Err(0),
            (Some(b'\n'), _) => return Ok(1),
            (Some(b'\r'), Some(b'\n')) => return Ok(2),
            _ => {}
        }
    }
    let mut i = from;
    while let Some(nl) = find(buf, i, b'\n') {
        match (buf.get(nl + 1), buf.get(nl + 2)) {
            (None, _) | (Some(b'\r'), None) => return Err(nl),
            (Some(b'\n'), _) => return Ok(nl + 2),
            (Some(b'\r'), Some(b'\n')) => return Ok(nl + 3),
            _ => i = nl + 1,
        }
    }
    Err(buf.len())
}

enum Candidate {
    /// A plausible first line ending at `line_end`; `common` if its method is a well-known one
    /// (always true for responses).
    Yes {
        common: bool,
        line_end: usize,
    },
    No,
    NeedMore,
}

/// Whether a head of our kind starts at `buf[0]`. Stricter than the synced path: while
/// resynchronising, most candidates are body text, so the whole first line must parse before
/// bytes are kept. An empty line is never a start (the prefix check rejects CR and LF), or every
/// paragraph break in a body would become a failed head.
fn candidate(is_request: bool, buf: &[u8], scan: &mut usize) -> Candidate {
    if !head::prefix_plausible(is_request, buf) {
        return Candidate::No;
    }
    let Some(nl) = find(buf, *scan, b'\n') else {
        *scan = buf.len();
        return Candidate::NeedMore;
    };
    match head::parse(is_request, &buf[..=nl]) {
        Parsed::Invalid => Candidate::No,
        Parsed::Partial | Parsed::Complete(..) => Candidate::Yes {
            common: !is_request || head::common_method(buf),
            line_end: nl,
        },
    }
}
