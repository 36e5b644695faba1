//! RESP framing of one direction: header lines, bulk bodies skipped by count (gaps included),
//! nesting tracked on a bounded stack, and a resynchronising search after framing is lost.
//! Only the few texts the session needs are kept, bounded: see [`Msg::elems`].

use super::Detect;

/// Longest header or inline line accepted (the server's own inline limit is 64 KiB).
pub(super) const MAX_LINE: usize = 64 * 1024;
/// Deepest nesting of aggregates accepted (replies such as `COMMAND DOCS` nest about 7 deep).
pub(super) const MAX_DEPTH: usize = 32;
/// Bytes kept of a top-level simple string or error.
pub(super) const KEEP_TOP: usize = 300;
/// Bytes searched back for a message start: what a start needs to be recognised.
const MAX_CARRY: usize = 96;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    Client,
    Server,
}

/// One complete (or, inside [`Event::Lost`], started) top-level message.
#[derive(Clone, Debug, Default)]
pub(super) struct Msg {
    /// ts of the segment holding the first byte, and of the one holding the last byte.
    pub start_ns: u64,
    pub end_ns: u64,
    /// RESP type byte of the message (`*`, `+`, `>`, ...); 0 for an inline command.
    pub ty: u8,
    /// Number of elements of a top-level aggregate (words of an inline command).
    pub len: u64,
    /// Kept texts: of a top-level aggregate, its first three elements when they are scalars and
    /// the caller asked for them (see [`Reader::push`]'s `want`); of a scalar, the scalar in
    /// `elems[0]`. `None` when not kept, lost in a gap, or not a scalar.
    pub elems: [Option<Vec<u8>>; 3],
    /// Part of the message was in a gap (only bulk bodies can be: framing survives them).
    pub lossy: bool,
}

#[derive(Debug)]
pub(super) enum Event {
    Msg(Msg),
    /// Framing was lost at `ts`; `started` is the message that was being read, if any.
    /// `dark`: bytes consumed or lost (in a gap) that may hold other whole messages: the lost
    /// bytes and any unfinished top-level line, less the fewest bytes the rest of `started`
    /// needs (an upper bound; searched bytes after the loss come as [`Event::Skipped`]).
    Lost {
        ts: u64,
        started: Option<Msg>,
        dark: u64,
    },
    /// `n` bytes (captured or not) were dropped while searching for a message start.
    Skipped(u64),
    /// A top-level RESP3 attribute (`|`) was read and dropped.
    Attribute,
}

/// What to keep of element `idx` (0..3) of a top-level aggregate, given the elements kept
/// before it: at most that many bytes (0 = nothing).
pub(super) type Want = fn(idx: usize, before: &[Option<Vec<u8>>; 3]) -> usize;

#[derive(Clone, Copy, Debug)]
struct Frame {
    left: u64,
    idx: u64,
    attr: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Header,
    /// `text` bytes of a bulk body then `crlf` bytes of its `\r\n` still to come.
    Body {
        text: u64,
        crlf: u8,
    },
    Lost,
}

pub(super) struct Reader {
    side: Side,
    state: State,
    line: Vec<u8>,
    line_len: usize,
    line_ts: u64,
    stack: Vec<Frame>,
    cur: Option<Msg>,
    /// Slot of `cur.elems` the current element is kept in, and the byte bound.
    keep: Option<(usize, usize)>,
    carry: Vec<u8>,
    /// `carry` begins at a possible message start (not just the last bytes searched).
    carry_start: bool,
}

impl Reader {
    pub(super) fn new(side: Side) -> Self {
        Self {
            side,
            state: State::Header,
            line: Vec::new(),
            line_len: 0,
            line_ts: 0,
            stack: Vec::new(),
            cur: None,
            keep: None,
            carry: Vec::new(),
            carry_start: false,
        }
    }

    /// Bytes held between pushes.
    #[cfg(test)]
    pub(super) fn buffered(&self) -> usize {
        self.line.capacity() + self.carry.capacity()
    }

    pub(super) fn is_lost(&self) -> bool {
        self.state == State::Lost
    }

    /// Captured `data`, then `gap` uncaptured bytes, all at `ts`. `boundary`: `data` starts a
    /// read/write (a likely message start when searching).
    pub(super) fn push(
        &mut self,
        data: &[u8],
        gap: u64,
        ts: u64,
        boundary: bool,
        want: Want,
        out: &mut Vec<Event>,
    ) {
        self.parse(data, ts, boundary, want, out);
        if gap > 0 {
            self.gap(gap, ts, out);
        }
    }

    /// The connection closed: what was being read is dropped.
    pub(super) fn close(&mut self) {
        self.reset();
        self.state = State::Header;
        self.carry = Vec::new();
    }

    fn reset(&mut self) {
        self.line = Vec::new();
        self.line_len = 0;
        self.stack = Vec::new();
        self.cur = None;
        self.keep = None;
    }

    /// Framing is lost. `lost`: bytes not understood (a gap, or a line already consumed);
    /// `by_gap`: the loss is a gap, so the rest of the started message may lie in it.
    fn lose(&mut self, ts: u64, lost: u64, by_gap: bool, out: &mut Vec<Event>) {
        let need = if by_gap { self.min_rest() } else { 0 };
        // An unfinished line belongs to the started message, or begins a new one.
        let line = if self.stack.is_empty() {
            self.line_len as u64
        } else {
            0
        };
        let dark = lost.saturating_add(line).saturating_sub(need);
        let mut started = self.cur.take();
        if let Some(m) = started.as_mut() {
            m.lossy = true;
            m.end_ns = ts;
        }
        self.reset();
        self.carry.clear();
        self.carry_start = false;
        self.state = State::Lost;
        out.push(Event::Lost { ts, started, dark });
    }

    /// The fewest bytes that can still complete the client command being read (each element
    /// not yet read takes at least `$0\r\n\r\n`, the rest of a bulk header line at least
    /// `\n` and the body's `\r\n`: anything else the server refuses, closing the connection);
    /// 0 when none is being read.
    fn min_rest(&self) -> u64 {
        let (Side::Client, Some(_), Some(f)) = (self.side, self.cur.as_ref(), self.stack.last())
        else {
            return 0;
        };
        let later = f.left.saturating_sub(1).saturating_mul(6);
        match self.state {
            State::Body { text, crlf } => {
                text.saturating_add(u64::from(crlf)).saturating_add(later)
            }
            State::Header if self.line_len > 0 => later.saturating_add(3),
            State::Header => f.left.saturating_mul(6),
            State::Lost => 0,
        }
    }

    fn gap(&mut self, gap: u64, ts: u64, out: &mut Vec<Event>) {
        match self.state {
            State::Lost => {
                out.push(Event::Skipped(gap.saturating_add(self.carry.len() as u64)));
                self.carry.clear();
                self.carry_start = false;
            }
            State::Header => self.lose(ts, gap, true, out),
            State::Body { text, crlf } => {
                let total = text + u64::from(crlf);
                if gap > total {
                    self.lose(ts, gap, true, out);
                    return;
                }
                // A kept text cut by the gap is dropped (the message is then lossy); values
                // that were only skipped lose nothing.
                if text > 0
                    && let (Some((slot, _)), Some(m)) = (self.keep.take(), self.cur.as_mut())
                {
                    m.lossy = true;
                    if let Some(e) = m.elems.get_mut(slot) {
                        *e = None;
                    }
                }
                if gap == total {
                    self.state = State::Header;
                    self.elem_done(ts, out);
                } else {
                    let t = text.min(gap);
                    // `gap - t` < `crlf` <= 2 here.
                    let c = u8::try_from(gap - t).unwrap_or(crlf);
                    self.state = State::Body {
                        text: text - t,
                        crlf: crlf.saturating_sub(c),
                    };
                }
            }
        }
    }

    fn parse(&mut self, data: &[u8], ts: u64, boundary: bool, want: Want, out: &mut Vec<Event>) {
        let mut i = 0;
        while i < data.len() {
            let rest = &data[i..];
            match self.state {
                State::Lost => {
                    let (used, found) = self.search(rest, boundary && i == 0, out);
                    i += used;
                    if let Some(carried) = found {
                        // The start began in the carried bytes: read those first.
                        self.state = State::Header;
                        self.parse(&carried, ts, false, want, out);
                    }
                }
                State::Header => {
                    if self.line_len == 0 {
                        self.line_ts = ts;
                    }
                    let (piece, done) = match rest.iter().position(|&b| b == b'\n') {
                        Some(p) => (&rest[..p], true),
                        None => (rest, false),
                    };
                    i += piece.len() + usize::from(done);
                    let room = KEEP_TOP.saturating_sub(self.line.len());
                    self.line.extend_from_slice(&piece[..piece.len().min(room)]);
                    self.line_len = self.line_len.saturating_add(piece.len());
                    if self.line_len > MAX_LINE {
                        self.lose(ts, 0, false, out);
                    } else if done {
                        self.on_line(ts, want, out);
                    }
                }
                State::Body { text, crlf } => {
                    let t = usize::try_from(text).unwrap_or(usize::MAX).min(rest.len());
                    if t > 0 {
                        if let (Some((slot, cap)), Some(m)) = (self.keep, self.cur.as_mut())
                            && let Some(Some(e)) = m.elems.get_mut(slot)
                        {
                            let room = cap.saturating_sub(e.len());
                            e.extend_from_slice(&rest[..t.min(room)]);
                        }
                        i += t;
                        self.state = State::Body {
                            text: text - t as u64,
                            crlf,
                        };
                        continue;
                    }
                    // The body's `\r\n`.
                    let expect = if crlf == 2 { b'\r' } else { b'\n' };
                    if rest.first() != Some(&expect) {
                        self.lose(ts, 0, false, out);
                        continue;
                    }
                    i += 1;
                    if crlf <= 1 {
                        self.state = State::Header;
                        self.elem_done(ts, out);
                    } else {
                        self.state = State::Body { text: 0, crlf: 1 };
                    }
                }
            }
        }
    }

    /// Searches `rest` (after the carried bytes) for a message start. Returns the bytes of
    /// `rest` consumed and, when the start began inside the carried bytes, those bytes from
    /// the start (the caller parses them, then `rest` from the returned offset).
    fn search(
        &mut self,
        rest: &[u8],
        boundary: bool,
        out: &mut Vec<Event>,
    ) -> (usize, Option<Vec<u8>>) {
        let old = self.carry.len();
        let mut scan = std::mem::take(&mut self.carry);
        // Enough of `rest` to finish a start begun in the carried bytes.
        let add = if old > 0 {
            rest.len().min(MAX_CARRY)
        } else {
            rest.len()
        };
        scan.extend_from_slice(&rest[..add]);
        let side = self.side;
        let carry_start = std::mem::take(&mut self.carry_start) && old > 0;
        let mut p = 0;
        while p < scan.len() {
            let at_boundary = p == old && boundary;
            let after_crlf = p >= 2 && scan.get(p - 2..p) == Some(b"\r\n");
            let verdict = match side {
                Side::Client => super::detect_client(&scan[p..]),
                Side::Server if at_boundary || after_crlf || (p == 0 && carry_start) => {
                    server_start(&scan[p..])
                }
                Side::Server => Detect::No,
            };
            match verdict {
                Detect::No => p += 1,
                Detect::Yes => {
                    out.push(Event::Skipped(p as u64));
                    self.state = State::Header;
                    if p < old {
                        let carried = scan[p..old].to_vec();
                        return (0, Some(carried));
                    }
                    return (p - old, None);
                }
                Detect::NeedMore => break,
            }
        }
        // Keep what may still begin a start (bounded: a start is recognised within
        // MAX_CARRY bytes), else the last two bytes (a `\r\n` before the next ones).
        self.carry_start = p < scan.len();
        let keep_from = if self.carry_start {
            p.max(scan.len().saturating_sub(MAX_CARRY))
        } else {
            scan.len().saturating_sub(2)
        };
        self.carry = scan[keep_from..].to_vec();
        out.push(Event::Skipped(keep_from as u64));
        (add, None)
    }

    fn on_line(&mut self, ts: u64, want: Want, out: &mut Vec<Event>) {
        let mut line = std::mem::take(&mut self.line);
        let full = self.line_len;
        self.line_len = 0;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let truncated = full > KEEP_TOP;
        let top = self.stack.is_empty();
        if top {
            self.cur = Some(Msg {
                start_ns: self.line_ts,
                ..Msg::default()
            });
        }
        let Some((&ty, rest)) = line.split_first() else {
            // An empty line: only a client's (empty inline command: ignored).
            if top && self.side == Side::Client {
                self.cur = None;
                self.line = line;
                self.line.clear();
                return;
            }
            self.lose(ts, full as u64 + 1, false, out);
            return;
        };
        let ok = match (self.side, top) {
            (Side::Client, true) if ty != b'*' => self.inline(&line, truncated, ts, want, out),
            (Side::Client, false) if ty != b'$' => false,
            _ => self.typed(ty, rest, truncated, ts, want, out),
        };
        if !ok {
            self.lose(ts, full as u64 + 1, false, out);
        }
        // Reuse the allocation.
        line.clear();
        if self.line.capacity() == 0 {
            self.line = line;
        }
    }

    /// An inline command (`PING\r\n`): whitespace-separated words.
    fn inline(
        &mut self,
        line: &[u8],
        truncated: bool,
        ts: u64,
        want: Want,
        out: &mut Vec<Event>,
    ) -> bool {
        if !line
            .iter()
            .all(|&b| (0x20..0x7f).contains(&b) || b == b'\t')
        {
            return false;
        }
        let Some(mut m) = self.cur.take() else {
            return false;
        };
        m.ty = 0;
        m.lossy = truncated;
        for (idx, word) in line
            .split(|&b| b == b' ' || b == b'\t')
            .filter(|w| !w.is_empty())
            .enumerate()
        {
            if let Some(slot) = m.elems.get(idx) {
                let cap = want(idx, &m.elems);
                if slot.is_none() && cap > 0 {
                    m.elems[idx] = Some(word[..word.len().min(cap)].to_vec());
                }
            }
            m.len += 1;
        }
        if m.len == 0 {
            return true;
        }
        m.end_ns = ts;
        out.push(Event::Msg(m));
        true
    }

    /// A typed RESP header. False when it makes no sense.
    fn typed(
        &mut self,
        ty: u8,
        rest: &[u8],
        truncated: bool,
        ts: u64,
        want: Want,
        out: &mut Vec<Event>,
    ) -> bool {
        let top = self.stack.is_empty();
        if let (true, Some(m)) = (top, self.cur.as_mut()) {
            m.ty = ty;
        }
        match ty {
            b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {
                let valid = match ty {
                    b'_' => rest.is_empty(),
                    b':' => !truncated && int(rest).is_some(),
                    b'#' => rest == b"t" || rest == b"f",
                    b'(' => !rest.is_empty() && !truncated,
                    _ => true,
                };
                if !valid {
                    return false;
                }
                let cap = self.start_elem(want);
                if let (Some((slot, _)), Some(m)) = (self.keep, self.cur.as_mut()) {
                    if let Some(e) = m.elems.get_mut(slot) {
                        *e = Some(rest[..rest.len().min(cap)].to_vec());
                    }
                    if truncated && top {
                        m.lossy = m.lossy || ty != b'-' && ty != b'+';
                    }
                }
                self.elem_done(ts, out);
                true
            }
            b'$' | b'!' | b'=' => {
                let Some(n) = int(rest) else { return false };
                if n == -1 && ty == b'$' {
                    self.start_elem(want);
                    self.elem_done(ts, out);
                    return true;
                }
                let Ok(n) = u64::try_from(n) else {
                    return false;
                };
                let cap = self.start_elem(want);
                if let (Some((slot, _)), Some(m)) = (self.keep, self.cur.as_mut())
                    && let Some(e) = m.elems.get_mut(slot)
                {
                    *e = Some(Vec::with_capacity(cap.min(64)));
                }
                self.state = State::Body { text: n, crlf: 2 };
                true
            }
            b'*' | b'%' | b'~' | b'>' | b'|' => {
                if self.side == Side::Client && ty != b'*' {
                    return false;
                }
                let Some(n) = int(rest) else { return false };
                if n == -1 && ty == b'*' {
                    // RESP2 null array.
                    self.start_elem(want);
                    self.elem_done(ts, out);
                    return true;
                }
                let Ok(n) = u64::try_from(n) else {
                    return false;
                };
                if self.side == Side::Client && top && n == 0 {
                    // The server ignores an empty request.
                    self.cur = None;
                    return true;
                }
                let count = if ty == b'%' || ty == b'|' {
                    n.saturating_mul(2)
                } else {
                    n
                };
                if let (true, Some(m)) = (top, self.cur.as_mut()) {
                    m.len = count;
                }
                if ty != b'|' {
                    self.start_elem(want);
                }
                self.keep = None;
                if count == 0 {
                    self.elem_done(ts, out);
                    return true;
                }
                if self.stack.len() >= MAX_DEPTH {
                    return false;
                }
                self.stack.push(Frame {
                    left: count,
                    idx: 0,
                    attr: ty == b'|',
                });
                true
            }
            _ => false,
        }
    }

    /// An element begins: decides whether its text is kept. Returns the byte bound.
    fn start_elem(&mut self, want: Want) -> usize {
        self.keep = None;
        let slot_idx = match self.stack.as_slice() {
            [] => Some(0),
            [only] if !only.attr => usize::try_from(only.idx).ok().filter(|&i| i < 3),
            _ => None,
        };
        let (Some(idx), Some(m)) = (slot_idx, self.cur.as_ref()) else {
            return 0;
        };
        let cap = if self.stack.is_empty() {
            // Of a top-level scalar, only status and error lines (never a value).
            if matches!(m.ty, b'+' | b'-' | b'!') {
                KEEP_TOP
            } else {
                0
            }
        } else {
            want(idx, &m.elems)
        };
        if cap > 0 {
            self.keep = Some((idx, cap));
        }
        cap
    }

    /// A scalar (or empty aggregate) ended: counts it in the open aggregates.
    fn elem_done(&mut self, ts: u64, out: &mut Vec<Event>) {
        self.keep = None;
        let mut counted = true;
        loop {
            let Some(f) = self.stack.last_mut() else {
                if let Some(mut m) = self.cur.take() {
                    m.end_ns = ts;
                    if counted {
                        out.push(Event::Msg(m));
                    } else {
                        out.push(Event::Attribute);
                    }
                }
                return;
            };
            if counted {
                f.left = f.left.saturating_sub(1);
                f.idx = f.idx.saturating_add(1);
            }
            if f.left > 0 {
                return;
            }
            counted = !f.attr;
            self.stack.pop();
            if !counted && !self.stack.is_empty() {
                // A nested attribute is not an element of its parent.
                return;
            }
        }
    }
}

/// A decimal integer as RESP writes it.
pub(super) fn int(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// Whether `buf` starts with a plausible server message header (used only while searching).
fn server_start(buf: &[u8]) -> Detect {
    let Some(&ty) = buf.first() else {
        return Detect::NeedMore;
    };
    if !b"+-:_,#($!=*%~>|".contains(&ty) {
        return Detect::No;
    }
    let Some(nl) = buf.iter().take(64).position(|&b| b == b'\n') else {
        return if buf.len() < 64 {
            Detect::NeedMore
        } else {
            Detect::No
        };
    };
    let Some(line) = buf[1..nl].strip_suffix(b"\r") else {
        return Detect::No;
    };
    let printable = line.iter().all(|&b| (0x20..0x7f).contains(&b));
    let ok = match ty {
        b'+' | b'-' => printable && !line.is_empty(),
        b':' => int(line).is_some(),
        b'_' => line.is_empty(),
        b'#' => line == b"t" || line == b"f",
        b',' | b'(' => printable && !line.is_empty(),
        _ => int(line).is_some_and(|n| n >= -1),
    };
    if ok { Detect::Yes } else { Detect::No }
}
