//! One direction's framing: message boundaries by length, bodies skipped by count, and the
//! search for the next boundary after losing track.
//!
//! A message is a type byte and a big-endian int32 length that counts itself (frontend
//! startup-phase packets have no type byte: int32 length, int32 code). Only the header (at most
//! 8 bytes) must be captured to stay in step: the body is counted, and the part of it that the
//! session needs (query text, names, tags, error fields) is copied, up to a per-type bound,
//! from the contiguous captured prefix. DataRow and CopyData bodies are never copied.
//!
//! When a header falls into a gap or does not make sense, the direction *resynchronises*: every
//! captured byte offset is a candidate, judged by the header (known type, length sane for that
//! type), by what is visible of its content (see [`content`]) and, when the next header is
//! visible too, by that header. Bytes before the accepted candidate are counted as skipped.

/// Lengths at or above this are never real (PostgreSQL's own limit is 1 GiB - 1).
pub(super) const MAX_MSG_LEN: u64 = 1 << 30;
/// Upper bound of a copied message body (query text, error fields).
pub const MAX_KEEP: usize = 64 * 1024;
/// Upper bound of the copied prefix of Bind (two names) and of other name-only messages.
const MAX_NAMES_KEEP: usize = 1024;
/// PostgreSQL's MAX_STARTUP_PACKET_LENGTH.
pub(super) const MAX_STARTUP_LEN: u32 = 10_000;
/// Bytes kept while resynchronising and waiting for the next header to confirm a candidate.
pub(super) const RESYNC_WINDOW: usize = 64 * 1024;
/// A candidate whose body runs past the captured bytes is accepted on its own content only if
/// it claims at most this much: a false candidate with a huge length would hide everything
/// after it.
const MAX_UNCONFIRMED_LEN: u64 = 1 << 20;
/// A candidate this small (header included) that runs past the bytes seen so far is judged
/// again with the next segment rather than rejected (unless a gap follows).
const MAX_WAIT_LEN: usize = 256;

pub(super) const CODE_PROTO3: u32 = 3 << 16;
pub(super) const CODE_SSL: u32 = 80_877_103;
pub(super) const CODE_GSS: u32 = 80_877_104;
pub(super) const CODE_CANCEL: u32 = 80_877_102;

const FRONT_TYPES: &[u8] = b"QPBESDCHXFdcfp";
const BACK_TYPES: &[u8] = b"RSKZTDCIEN123ntsGHWdcAVv";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    /// Client -> server.
    Front,
    /// Server -> client.
    Back,
}

/// One complete message, handed to the session when its last byte has been counted.
#[derive(Debug)]
pub(super) struct Msg<'a> {
    /// Type byte; 0 for an untyped startup-phase packet.
    pub ty: u8,
    /// Startup-phase code (protocol version or request code); 0 for typed messages.
    pub code: u32,
    /// The copied prefix of the body (after the code for startup packets).
    pub body: &'a [u8],
    /// `body` is everything the session asked for: no gap inside it and not cut by a bound.
    pub complete: bool,
    /// ts of the segment holding the first byte (type byte or first length byte).
    pub start_ts: u64,
    /// ts of the segment holding the last byte.
    pub end_ts: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Frontend before its first byte: a 0 byte starts a startup packet, anything else a typed
    /// message of a connection joined mid-stream.
    Unknown,
    /// Untyped startup-phase packets.
    Startup,
    Typed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Header,
    Body,
    Resync,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Keep {
    Nothing,
    Upto(usize),
    /// Bind: the portal and statement names only (never parameter values).
    Names,
}

/// What the framer tells the session as it counts bytes (the session, `conn::Session`, knows
/// what the messages mean; the framer only where they are).
pub(super) trait Events {
    /// The connection switched to TLS/GSS: nothing more is framed.
    fn encrypted(&self) -> bool;
    fn set_encrypted(&mut self);
    /// The frontend stream has been framed from its start.
    fn front_clean(&self) -> bool;
    fn set_front_clean(&mut self);
    /// Frontend bytes were lost.
    fn set_front_lost(&mut self);
    /// A direction was joined mid-stream.
    fn joined(&mut self, side: Side, ts: u64);
    /// A one-byte answer (to SSLRequest/GSSENCRequest) is awaited.
    fn answer_pending(&self) -> bool;
    /// The one-byte answer `b`; true if it was one.
    fn answer(&mut self, b: u8) -> bool;
    fn answer_lost(&mut self);
    /// An SSLRequest/GSSENCRequest is still unanswered.
    fn secure_unanswered(&self) -> bool;
    /// A direction lost its framing at `ts` (`definite`: bytes were certainly lost).
    fn lost(&mut self, side: Side, ts: u64, definite: bool);
    fn front_msg(&mut self, m: &Msg);
    fn back_msg(&mut self, m: &Msg);
    /// Counters.
    fn skipped(&mut self, n: u64);
    fn invalid_message(&mut self);
    fn resynced(&mut self);
}

pub(super) struct Framer {
    side: Side,
    mode: Mode,
    state: State,
    /// The backend's first push decides whether it starts at a boundary.
    started: bool,
    hdr: [u8; 8],
    hdr_n: usize,
    hdr_ts: u64,
    // The message whose body is being counted.
    ty: u8,
    code: u32,
    remaining: u64,
    start_ts: u64,
    keep: Keep,
    body: Vec<u8>,
    /// A gap hit the body: nothing after it is copied.
    holed: bool,
    /// The body had more than its bound.
    capped: bool,
    nuls: u8,
    /// Resync window: captured bytes not yet judged, with the ts of each segment's part.
    rs: Vec<u8>,
    rs_marks: Vec<(usize, u64)>,
    /// False from losing framing until a candidate is accepted.
    synced: bool,
    /// ts of the segment being processed.
    last_ts: u64,
    /// The next loss of framing hides messages (a gap) rather than garbage.
    lose_definite: bool,
}

impl Framer {
    pub(super) fn new(side: Side) -> Self {
        Self {
            side,
            mode: match side {
                Side::Front => Mode::Unknown,
                Side::Back => Mode::Typed,
            },
            state: State::Header,
            started: false,
            hdr: [0; 8],
            hdr_n: 0,
            hdr_ts: 0,
            ty: 0,
            code: 0,
            remaining: 0,
            start_ts: 0,
            keep: Keep::Nothing,
            body: Vec::new(),
            holed: false,
            capped: false,
            nuls: 0,
            rs: Vec::new(),
            rs_marks: Vec::new(),
            synced: true,
            last_ts: 0,
            lose_definite: true,
        }
    }

    /// Bytes held between pushes (the memory bound the tests check).
    #[cfg(test)]
    pub(super) fn buffered(&self) -> usize {
        self.body.len() + self.rs.len()
    }

    /// One segment: `data` captured, then `gap` bytes of unknown content.
    pub(super) fn push(&mut self, sess: &mut impl Events, data: &[u8], gap: u64, ts: u64) {
        if sess.encrypted() {
            return;
        }
        self.last_ts = ts;
        if !self.started && (!data.is_empty() || gap > 0) {
            self.started = true;
            self.begin(sess, data.first().copied());
        }
        self.feed(sess, data, ts);
        if self.state == State::Resync {
            self.resync(sess, gap > 0);
        }
        if gap > 0 {
            self.gap(sess, gap, ts);
        }
        self.shrink();
    }

    /// First bytes of the direction: does it start at the beginning of the connection?
    fn begin(&mut self, sess: &mut impl Events, first: Option<u8>) {
        match self.side {
            Side::Front => match first {
                Some(0) => {
                    self.mode = Mode::Startup;
                    sess.set_front_clean();
                }
                _ => {
                    self.mode = Mode::Typed;
                    self.join(sess);
                }
            },
            Side::Back => {
                if !sess.front_clean() {
                    self.join(sess);
                }
            }
        }
    }

    /// Joined mid-stream: the first boundary must be searched for. Not counted as a resync.
    fn join(&mut self, sess: &mut impl Events) {
        self.state = State::Resync;
        self.synced = false;
        sess.joined(self.side, self.last_ts);
    }

    /// Processes captured bytes in the synced states; in Resync they are only queued (the caller
    /// runs the search).
    fn feed(&mut self, sess: &mut impl Events, data: &[u8], ts: u64) {
        let mut i = 0;
        while i < data.len() {
            if sess.encrypted() {
                return;
            }
            match self.state {
                State::Resync => {
                    self.rs_push(&data[i..], ts);
                    return;
                }
                State::Body => {
                    let n =
                        (data.len() - i).min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                    self.take(&data[i..i + n]);
                    self.remaining -= n as u64;
                    i += n;
                    if self.remaining == 0 {
                        self.finish(sess, ts);
                    }
                }
                State::Header => {
                    if self.hdr_n == 0 {
                        if self.side == Side::Back && sess.answer_pending() {
                            if sess.answer(data[i]) {
                                i += 1;
                            }
                            continue;
                        }
                        self.hdr_ts = ts;
                    }
                    let need = self.header_len();
                    let n = (need - self.hdr_n).min(data.len() - i);
                    self.hdr[self.hdr_n..self.hdr_n + n].copy_from_slice(&data[i..i + n]);
                    self.hdr_n += n;
                    i += n;
                    if self.hdr_n == need {
                        self.header(sess, ts);
                    }
                }
            }
        }
    }

    fn header_len(&self) -> usize {
        if self.mode == Mode::Startup { 8 } else { 5 }
    }

    /// A complete header in `hdr`.
    fn header(&mut self, sess: &mut impl Events, ts: u64) {
        let (ty, code, body_len) = if self.mode == Mode::Startup {
            let len = be32(&self.hdr[0..4]);
            let code = be32(&self.hdr[4..8]);
            if !startup_ok(len, code) {
                if sess.secure_unanswered() {
                    // The client went on without waiting for 'N': it speaks TLS/GSS now.
                    self.hdr_n = 0;
                    sess.set_encrypted();
                    return;
                }
                self.mode = Mode::Typed;
                return self.invalid(sess);
            }
            (0, code, u64::from(len) - 8)
        } else {
            let ty = self.hdr[0];
            let len = be32(&self.hdr[1..5]);
            if !header_ok(self.side, ty, len) {
                return self.invalid(sess);
            }
            (ty, 0, u64::from(len) - 4)
        };
        self.hdr_n = 0;
        self.ty = ty;
        self.code = code;
        self.remaining = body_len;
        self.start_ts = self.hdr_ts;
        self.keep = keep_for(self.side, ty, code);
        self.body.clear();
        self.holed = false;
        self.capped = false;
        self.nuls = 0;
        if body_len == 0 {
            self.finish(sess, ts);
        } else {
            self.state = State::Body;
        }
    }

    /// The header at hand is not one: skip its first byte and search from the next. Unlike a
    /// gap, captured bytes hide no message: the search looks at every one of them.
    fn invalid(&mut self, sess: &mut impl Events) {
        sess.invalid_message();
        self.skip(sess, 1);
        let n = self.hdr_n;
        self.hdr_n = 0;
        self.lose_definite = false;
        self.lose(sess);
        let rest = self.hdr;
        self.rs_push(&rest[1..n], self.hdr_ts);
    }

    /// Framing lost at a header position.
    fn lose(&mut self, sess: &mut impl Events) {
        let ts = self.last_ts;
        if self.synced {
            sess.resynced();
            self.synced = false;
        }
        if self.mode != Mode::Typed {
            self.mode = Mode::Typed;
        }
        self.state = State::Resync;
        sess.lost(self.side, ts, self.lose_definite);
        self.lose_definite = true;
    }

    fn take(&mut self, bytes: &[u8]) {
        if self.holed {
            return;
        }
        match self.keep {
            Keep::Nothing => {}
            Keep::Upto(max) => {
                let room = max.saturating_sub(self.body.len());
                let n = room.min(bytes.len());
                self.body.extend_from_slice(&bytes[..n]);
                if n < bytes.len() {
                    self.capped = true;
                }
            }
            Keep::Names => {
                for &b in bytes {
                    if self.nuls >= 2 {
                        break;
                    }
                    if self.body.len() >= MAX_NAMES_KEEP {
                        self.capped = true;
                        break;
                    }
                    self.body.push(b);
                    if b == 0 {
                        self.nuls += 1;
                    }
                }
            }
        }
    }

    /// The current message's last byte was counted (in a segment stamped `ts`).
    fn finish(&mut self, sess: &mut impl Events, ts: u64) {
        self.state = State::Header;
        let msg = Msg {
            ty: self.ty,
            code: self.code,
            body: &self.body,
            complete: !self.holed && !self.capped,
            start_ts: self.start_ts,
            end_ts: ts,
        };
        match self.side {
            Side::Front => {
                if self.mode == Mode::Startup && !matches!(self.code, CODE_SSL | CODE_GSS) {
                    self.mode = Mode::Typed;
                }
                sess.front_msg(&msg);
            }
            Side::Back => sess.back_msg(&msg),
        }
        if self.body.capacity() > MAX_NAMES_KEEP {
            self.body = Vec::new();
        } else {
            self.body.clear();
        }
    }

    /// `n` bytes of unknown content follow what was fed.
    fn gap(&mut self, sess: &mut impl Events, mut n: u64, ts: u64) {
        while n > 0 && !sess.encrypted() {
            match self.state {
                State::Body => {
                    let k = self.remaining.min(n);
                    self.remaining -= k;
                    n -= k;
                    self.holed = true;
                    if self.remaining == 0 {
                        self.finish(sess, ts);
                    }
                }
                State::Header => {
                    if self.hdr_n == 0 && self.side == Side::Back && sess.answer_pending() {
                        // The one-byte answer to SSLRequest/GSSENCRequest is unknown; what the
                        // client sends next tells whether the session went encrypted.
                        sess.answer_lost();
                        n -= 1;
                        continue;
                    }
                    self.skip(sess, self.hdr_n as u64);
                    self.hdr_n = 0;
                    self.lose(sess);
                }
                State::Resync => {
                    self.skip(sess, n);
                    n = 0;
                }
            }
        }
    }

    /// The connection closed: a message in progress is dropped (it was not complete, so the
    /// peer did not act on it), and the direction starts over as if joined.
    pub(super) fn close(&mut self, sess: &mut impl Events) {
        if !sess.encrypted() {
            let pending = self.rs.len() as u64 + self.hdr_n as u64;
            self.skip(sess, pending);
        }
        let side = self.side;
        *self = Self::new(side);
        self.mode = Mode::Typed;
    }

    /// Stream bytes dropped unread. Client bytes may have defined statements or portals.
    fn skip(&self, sess: &mut impl Events, n: u64) {
        if n > 0 {
            sess.skipped(n);
            if self.side == Side::Front {
                sess.set_front_lost();
            }
        }
    }

    // ---- resync ----

    fn rs_push(&mut self, bytes: &[u8], ts: u64) {
        if bytes.is_empty() {
            return;
        }
        self.rs_marks.push((self.rs.len(), ts));
        self.rs.extend_from_slice(bytes);
    }

    /// Searches the window for an acceptable header; from there, processing goes on synced.
    /// With `gap_follows`, unknown bytes follow the window, so nothing can be waited for.
    fn resync(&mut self, sess: &mut impl Events, gap_follows: bool) {
        while self.state == State::Resync && !sess.encrypted() {
            let mut i = 0;
            let mut found = false;
            while i < self.rs.len() {
                let bounded = gap_follows || self.rs.len() - i > RESYNC_WINDOW;
                match judge(self.side, &self.rs[i..], bounded) {
                    Judge::Accept => {
                        found = true;
                        break;
                    }
                    Judge::Reject => i += 1,
                    Judge::NeedMore => break,
                }
            }
            self.skip(sess, i as u64);
            if !found {
                if gap_follows {
                    self.skip(sess, (self.rs.len() - i) as u64);
                    self.rs.clear();
                    self.rs_marks.clear();
                } else {
                    self.rs_drain(i);
                }
                return;
            }
            let rs = std::mem::take(&mut self.rs);
            let marks = std::mem::take(&mut self.rs_marks);
            self.state = State::Header;
            self.mode = Mode::Typed;
            self.hdr_n = 0;
            self.synced = true;
            for (k, &(off, ts)) in marks.iter().enumerate() {
                let end = marks.get(k + 1).map_or(rs.len(), |m| m.0);
                if end <= i {
                    continue;
                }
                self.feed(sess, &rs[off.max(i)..end], ts);
            }
            // Reuse the allocation when nothing was queued again.
            if self.rs.is_empty() && rs.capacity() <= RESYNC_WINDOW {
                let mut rs = rs;
                rs.clear();
                self.rs = rs;
            }
        }
    }

    /// Drops `rs[..n]`, keeping the ts of what is left.
    fn rs_drain(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        if n >= self.rs.len() {
            self.rs.clear();
            self.rs_marks.clear();
            return;
        }
        let first_ts = self
            .rs_marks
            .iter()
            .take_while(|m| m.0 <= n)
            .last()
            .map_or(0, |m| m.1);
        self.rs.drain(..n);
        self.rs_marks.retain(|m| m.0 > n);
        for m in &mut self.rs_marks {
            m.0 -= n;
        }
        self.rs_marks.insert(0, (0, first_ts));
    }

    fn shrink(&mut self) {
        if self.rs.is_empty() && self.rs.capacity() > RESYNC_WINDOW {
            self.rs = Vec::new();
            self.rs_marks = Vec::new();
        }
    }
}

pub(super) fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

pub(super) fn type_known(side: Side, ty: u8) -> bool {
    match side {
        Side::Front => FRONT_TYPES.contains(&ty),
        Side::Back => BACK_TYPES.contains(&ty),
    }
}

/// Startup-phase packet: length and code agree.
pub(super) fn startup_ok(len: u32, code: u32) -> bool {
    match code {
        CODE_SSL | CODE_GSS => len == 8,
        CODE_CANCEL => len == 16,
        // Protocol 3.x, any sane minor version (3.2 is PostgreSQL 18's).
        c if c & 0xffff_0000 == CODE_PROTO3 && c & 0xffff < 0x100 => {
            (9..=MAX_STARTUP_LEN).contains(&len)
        }
        _ => false,
    }
}

/// Smallest and largest body length (length field minus 4) of each message type.
pub(super) fn body_bounds(side: Side, ty: u8) -> Option<(u64, u64)> {
    let any = MAX_MSG_LEN - 5;
    let b = match side {
        Side::Front => match ty {
            b'S' | b'H' | b'X' | b'c' => (0, 0),
            b'Q' | b'f' => (1, any),
            b'P' | b'D' | b'C' => (2, any),
            b'B' => (8, any),
            b'E' => (5, any),
            b'F' => (10, any),
            b'd' | b'p' => (0, any),
            _ => return None,
        },
        Side::Back => match ty {
            b'Z' => (1, 1),
            b'I' | b'1' | b'2' | b'3' | b'n' | b's' | b'c' => (0, 0),
            b'K' => (8, 260),
            b'R' => (4, any),
            b'S' | b'T' | b'D' | b't' => (2, any),
            b'C' | b'E' | b'N' => (1, any),
            b'G' | b'H' | b'W' => (3, any),
            b'A' => (6, any),
            b'V' => (4, any),
            b'v' => (8, any),
            b'd' => (0, any),
            _ => return None,
        },
    };
    Some(b)
}

/// A typed header that a synced stream accepts.
pub(super) fn header_ok(side: Side, ty: u8, len: u32) -> bool {
    let Some(body) = u64::from(len).checked_sub(4) else {
        return false;
    };
    match body_bounds(side, ty) {
        Some((lo, hi)) => (lo..=hi).contains(&body),
        None => false,
    }
}

fn keep_for(side: Side, ty: u8, code: u32) -> Keep {
    match (side, ty) {
        (Side::Front, 0) if code & 0xffff_0000 == CODE_PROTO3 => {
            Keep::Upto(MAX_STARTUP_LEN as usize)
        }
        (Side::Front, b'Q' | b'P') => Keep::Upto(MAX_KEEP),
        (Side::Front, b'B') => Keep::Names,
        (Side::Front, b'E' | b'D' | b'C') => Keep::Upto(MAX_NAMES_KEEP),
        (Side::Back, b'C') => Keep::Upto(MAX_NAMES_KEEP),
        (Side::Back, b'E') => Keep::Upto(MAX_KEEP),
        (Side::Back, b'Z') => Keep::Upto(1),
        _ => Keep::Nothing,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Judge {
    Accept,
    Reject,
    NeedMore,
}

/// What the visible part of a body says about a candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Content {
    /// Cannot be this message.
    Bad,
    /// Consistent, but random bytes could be too.
    Weak,
    /// Structure that random bytes rarely have.
    Strong,
}

/// Whether a typed message of `side` starts at `b[0]` (see the module doc). `bounded`: no more
/// bytes will follow `b` in time to decide (a gap follows, or the window is full).
fn judge(side: Side, b: &[u8], bounded: bool) -> Judge {
    let wait = if bounded {
        Judge::Reject
    } else {
        Judge::NeedMore
    };
    let Some(&ty) = b.first() else {
        return wait;
    };
    if !type_known(side, ty) {
        return Judge::Reject;
    }
    if b.len() < 5 {
        return wait;
    }
    let len = be32(&b[1..5]);
    if !header_ok(side, ty, len) {
        return Judge::Reject;
    }
    let total = 1 + len as usize;
    let full = b.len() >= total;
    let body_len = u64::from(len) - 4;
    let own = content(side, ty, &b[5..b.len().min(total)], body_len);
    if own == Content::Bad {
        return Judge::Reject;
    }
    if b.len() >= total + 5 {
        let next = &b[total..];
        return if header_ok(side, next[0], be32(&next[1..5])) {
            Judge::Accept
        } else {
            Judge::Reject
        };
    }
    if full {
        if b.len() > total && !type_known(side, b[total]) {
            return Judge::Reject;
        }
        return if own == Content::Strong {
            Judge::Accept
        } else {
            wait
        };
    }
    if own == Content::Strong && body_len <= MAX_UNCONFIRMED_LEN {
        Judge::Accept
    } else if total <= MAX_WAIT_LEN {
        // A small message cut by the end of a segment: the next one shows the rest.
        wait
    } else {
        Judge::Reject
    }
}

/// Judges the visible prefix `p` of a body of `body_len` bytes (see [`Content`]).
pub(super) fn content(side: Side, ty: u8, p: &[u8], body_len: u64) -> Content {
    let full = p.len() as u64 >= body_len;
    match (side, ty) {
        (Side::Back, b'Z') => match p.first() {
            Some(b'I' | b'T' | b'E') => Content::Strong,
            Some(_) => Content::Bad,
            None => Content::Weak,
        },
        (Side::Back, b'C') => command_tag_content(p, full),
        (Side::Back, b'D') => data_row_content(p, body_len),
        (Side::Back, b'T') => row_description_content(p, body_len),
        (Side::Back, b'E' | b'N') => error_fields_content(p, full),
        (Side::Back, b'S') => cstrings_content(p, full, 2),
        (Side::Back, b'R') => {
            if p.len() < 4 {
                return Content::Weak;
            }
            match be32(p) {
                0 if body_len == 4 => Content::Strong,
                2 | 3 | 5 | 6 | 7 | 8 | 9 | 10 | 11 | 12 => Content::Weak,
                _ => Content::Bad,
            }
        }
        (Side::Back, b't') => {
            if p.len() < 2 {
                return Content::Weak;
            }
            if body_len == 2 + 4 * u64::from(be16(p)) {
                Content::Strong
            } else {
                Content::Bad
            }
        }
        (Side::Back, b'G' | b'H' | b'W') => {
            if p.len() < 3 {
                return Content::Weak;
            }
            let n = u64::from(be16(&p[1..3]));
            if p[0] > 1 || body_len != 3 + 2 * n {
                return Content::Bad;
            }
            let cols = &p[3..];
            if cols
                .chunks(2)
                .any(|c| c[0] != 0 || c.get(1).is_some_and(|&f| f > 1))
            {
                return Content::Bad;
            }
            Content::Strong
        }
        (Side::Front, b'Q') => {
            let text_end = p.iter().position(|&b| b == 0);
            if let Some(e) = text_end
                && e as u64 + 1 != body_len
            {
                return Content::Bad;
            }
            let text = &p[..text_end.unwrap_or(p.len())];
            if text.is_empty() && text_end.is_some() {
                return Content::Weak;
            }
            sql_content(text, text_end.is_some())
        }
        (Side::Front, b'P') => {
            let Some(name_end) = name_prefix(p) else {
                return Content::Bad;
            };
            let Some(name_end) = name_end else {
                return Content::Weak;
            };
            let rest = &p[name_end + 1..];
            let text_end = rest.iter().position(|&b| b == 0);
            let sql = sql_content(&rest[..text_end.unwrap_or(rest.len())], text_end.is_some());
            if sql == Content::Bad {
                return Content::Bad;
            }
            if let Some(e) = text_end {
                let after = (name_end + 1 + e + 1) as u64;
                if full {
                    let params = &rest[e + 1..];
                    if params.len() < 2 || body_len != after + 2 + 4 * u64::from(be16(params)) {
                        return Content::Bad;
                    }
                } else if after + 2 > body_len {
                    return Content::Bad;
                }
            }
            sql
        }
        (Side::Front, b'B') => bind_content(p, body_len),
        (Side::Front, b'E') => match name_prefix(p) {
            None => Content::Bad,
            Some(None) => Content::Weak,
            Some(Some(e)) if e as u64 + 5 == body_len => Content::Strong,
            Some(Some(_)) => Content::Bad,
        },
        (Side::Front, b'D' | b'C') => {
            match p.first() {
                None => return Content::Weak,
                Some(b'S' | b'P') => {}
                Some(_) => return Content::Bad,
            }
            match name_prefix(&p[1..]) {
                None => Content::Bad,
                Some(None) => Content::Weak,
                Some(Some(e)) if e as u64 + 2 == body_len => Content::Strong,
                Some(Some(_)) => Content::Bad,
            }
        }
        _ => Content::Weak,
    }
}

/// Printable text of a name or value (control characters other than tab/newline are not).
fn printable(b: u8) -> bool {
    b >= 0x20 && b != 0x7f || b == b'\t' || b == b'\n' || b == b'\r'
}

/// `Some(Some(i))`: printable name ending with a NUL at `i`; `Some(None)`: printable so far, no
/// NUL visible; None: not a name.
fn name_prefix(p: &[u8]) -> Option<Option<usize>> {
    for (i, &b) in p.iter().enumerate() {
        if b == 0 {
            return Some(Some(i));
        }
        if !printable(b) {
            return None;
        }
    }
    Some(None)
}

fn command_tag_content(p: &[u8], full: bool) -> Content {
    let end = p.iter().position(|&b| b == 0);
    if let Some(e) = end
        && e + 1 != p.len()
    {
        return Content::Bad;
    }
    let text = &p[..end.unwrap_or(p.len())];
    if text.len() > 64 {
        return Content::Bad;
    }
    let ok = text.first().is_none_or(u8::is_ascii_uppercase)
        && text
            .iter()
            .all(|&b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b' ');
    if !ok {
        Content::Bad
    } else if (full && end.is_some() && !text.is_empty()) || text.len() >= 4 {
        Content::Strong
    } else {
        Content::Weak
    }
}

fn data_row_content(p: &[u8], body_len: u64) -> Content {
    if p.len() < 2 {
        return Content::Weak;
    }
    let n = be16(p);
    if n > 1664 {
        return Content::Bad;
    }
    let mut off = 2u64;
    let mut seen = 0;
    for _ in 0..n {
        let Some(h) = p.get(off as usize..off as usize + 4) else {
            break;
        };
        let flen = be32(h) as i32;
        off += 4;
        if flen >= 0 {
            off += flen as u64;
        } else if flen != -1 {
            return Content::Bad;
        }
        if off > body_len {
            return Content::Bad;
        }
        seen += 1;
    }
    if seen == n {
        if off == body_len {
            if n > 0 {
                Content::Strong
            } else {
                Content::Weak
            }
        } else {
            Content::Bad
        }
    } else if seen > 0 {
        Content::Strong
    } else {
        Content::Weak
    }
}

fn row_description_content(p: &[u8], body_len: u64) -> Content {
    if p.len() < 2 {
        return Content::Weak;
    }
    let n = be16(p);
    if n > 1664 {
        return Content::Bad;
    }
    let mut off = 2usize;
    let mut seen = 0;
    while seen < n {
        match name_prefix(&p[off..]) {
            None => return Content::Bad,
            Some(None) => break,
            Some(Some(e)) => {
                off += e + 1 + 18;
                if off as u64 > body_len {
                    return Content::Bad;
                }
                if off > p.len() {
                    break;
                }
                let fmt = be16(&p[off - 2..off]);
                if fmt > 1 {
                    return Content::Bad;
                }
                seen += 1;
            }
        }
    }
    if seen == n && n > 0 {
        if off as u64 == body_len {
            Content::Strong
        } else {
            Content::Bad
        }
    } else if seen > 0 {
        Content::Strong
    } else {
        Content::Weak
    }
}

/// ErrorResponse / NoticeResponse: (field type, text NUL)* then NUL.
fn error_fields_content(p: &[u8], full: bool) -> Content {
    const FIELDS: &[u8] = b"SVCMDHPpqWstcdnFLR";
    let mut off = 0;
    let mut fields = 0;
    while off < p.len() {
        let t = p[off];
        if t == 0 {
            return if off + 1 == p.len() && fields > 0 {
                Content::Strong
            } else {
                Content::Bad
            };
        }
        if !FIELDS.contains(&t) {
            return Content::Bad;
        }
        match name_prefix(&p[off + 1..]) {
            None => return Content::Bad,
            Some(None) => break,
            Some(Some(e)) => {
                off += 1 + e + 1;
                fields += 1;
            }
        }
    }
    if full {
        // Ran out before the terminating NUL.
        return Content::Bad;
    }
    // Severity comes first in every real message.
    if fields > 0 && p.first() == Some(&b'S') {
        Content::Strong
    } else {
        Content::Weak
    }
}

/// `count` NUL-terminated printable strings filling the body.
fn cstrings_content(p: &[u8], full: bool, count: usize) -> Content {
    let mut off = 0;
    for _ in 0..count {
        match name_prefix(&p[off..]) {
            None => return Content::Bad,
            Some(None) => return Content::Weak,
            Some(Some(e)) => off += e + 1,
        }
    }
    if full && off == p.len() {
        Content::Strong
    } else if full {
        Content::Bad
    } else {
        Content::Weak
    }
}

fn bind_content(p: &[u8], body_len: u64) -> Content {
    let Some(Some(a)) = name_prefix(p) else {
        return if name_prefix(p).is_some() {
            Content::Weak
        } else {
            Content::Bad
        };
    };
    let rest = &p[a + 1..];
    let Some(Some(b)) = name_prefix(rest) else {
        return if name_prefix(rest).is_some() {
            Content::Weak
        } else {
            Content::Bad
        };
    };
    let mut c = Cursor {
        p,
        off: a + 1 + b + 1,
        body_len,
    };
    // Format codes, then parameter values (only their lengths are looked at), then result
    // format codes. Running out of visible bytes after both names is still a strong match.
    let nf = match c.field(2) {
        Field::Bad => return Content::Bad,
        Field::Hidden => return Content::Strong,
        Field::Got(n) => be16(n),
    };
    for _ in 0..nf {
        match c.field(2) {
            Field::Bad => return Content::Bad,
            Field::Hidden => return Content::Strong,
            Field::Got(f) if be16(f) > 1 => return Content::Bad,
            Field::Got(_) => {}
        }
    }
    let np = match c.field(2) {
        Field::Bad => return Content::Bad,
        Field::Hidden => return Content::Strong,
        Field::Got(n) => be16(n),
    };
    for _ in 0..np {
        let len = match c.field(4) {
            Field::Bad => return Content::Bad,
            Field::Hidden => return Content::Strong,
            Field::Got(l) => be32(l) as i32,
        };
        if len >= 0 {
            if matches!(c.skip(len as u64), Field::Bad) {
                return Content::Bad;
            }
        } else if len != -1 {
            return Content::Bad;
        }
    }
    let nr = match c.field(2) {
        Field::Bad => return Content::Bad,
        Field::Hidden => return Content::Strong,
        Field::Got(n) => u64::from(be16(n)),
    };
    if matches!(c.skip(2 * nr), Field::Bad) {
        return Content::Bad;
    }
    if c.off as u64 == body_len {
        Content::Strong
    } else {
        Content::Bad
    }
}

enum Field<'a> {
    /// Past the end of the body.
    Bad,
    /// Inside the body but not visible.
    Hidden,
    Got(&'a [u8]),
}

/// Walks a visible body prefix `p` of a body of `body_len` bytes.
struct Cursor<'a> {
    p: &'a [u8],
    off: usize,
    body_len: u64,
}

impl<'a> Cursor<'a> {
    fn field(&mut self, n: usize) -> Field<'a> {
        let start = self.off;
        match self.skip(n as u64) {
            Field::Bad => Field::Bad,
            _ => match self.p.get(start..start + n) {
                Some(s) => Field::Got(s),
                None => Field::Hidden,
            },
        }
    }

    fn skip(&mut self, n: u64) -> Field<'a> {
        let end = (self.off as u64).saturating_add(n);
        if end > self.body_len {
            return Field::Bad;
        }
        // body_len < 1 GiB, so this fits.
        self.off = end as usize;
        Field::Hidden
    }
}

/// SQL keywords that start a statement. A query whose first word is not one of these is not
/// taken for SQL when joining a stream.
const SQL_START: &[&str] = &[
    "ABORT",
    "ALTER",
    "ANALYZE",
    "ANALYSE",
    "BEGIN",
    "CALL",
    "CHECKPOINT",
    "CLOSE",
    "CLUSTER",
    "COMMENT",
    "COMMIT",
    "COPY",
    "CREATE",
    "DEALLOCATE",
    "DECLARE",
    "DELETE",
    "DISCARD",
    "DO",
    "DROP",
    "END",
    "EXECUTE",
    "EXPLAIN",
    "FETCH",
    "GRANT",
    "IMPORT",
    "INSERT",
    "LISTEN",
    "LOAD",
    "LOCK",
    "MERGE",
    "MOVE",
    "NOTIFY",
    "PREPARE",
    "REASSIGN",
    "REFRESH",
    "REINDEX",
    "RELEASE",
    "RESET",
    "REVOKE",
    "ROLLBACK",
    "SAVEPOINT",
    "SECURITY",
    "SELECT",
    "SET",
    "SHOW",
    "START",
    "TABLE",
    "TRUNCATE",
    "UNLISTEN",
    "UPDATE",
    "VACUUM",
    "VALUES",
    "WITH",
];

/// Whether `text` (a prefix of a query, `terminated` if it is all of it) starts like SQL:
/// optional whitespace, comments and opening parentheses, then a statement keyword.
pub(super) fn sql_content(text: &[u8], terminated: bool) -> Content {
    let mut i = 0;
    loop {
        while i < text.len() && (text[i].is_ascii_whitespace() || text[i] == b'(') {
            i += 1;
        }
        if text[i..].starts_with(b"--") {
            match text[i..].iter().position(|&b| b == b'\n') {
                Some(nl) => i += nl + 1,
                None => {
                    return if terminated {
                        Content::Bad
                    } else {
                        Content::Weak
                    };
                }
            }
        } else if text[i..].starts_with(b"/*") {
            match text[i + 2..].windows(2).position(|w| w == b"*/") {
                Some(e) => i += 2 + e + 2,
                None => {
                    return if terminated {
                        Content::Bad
                    } else {
                        Content::Weak
                    };
                }
            }
        } else {
            break;
        }
        if i > 4096 {
            return Content::Bad;
        }
    }
    if text[..i.min(text.len())].contains(&0) {
        return Content::Bad;
    }
    let word_len = text[i..]
        .iter()
        .take_while(|b| b.is_ascii_alphabetic())
        .count();
    let after = text.get(i + word_len).copied();
    if after.is_none() && !terminated {
        // The first word may go on.
        return if word_len == 0 && i < text.len() {
            Content::Bad
        } else if SQL_START.iter().any(|k| {
            k.len() >= word_len && k.as_bytes()[..word_len].eq_ignore_ascii_case(&text[i..])
        }) {
            Content::Weak
        } else {
            Content::Bad
        };
    }
    if after.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80) {
        return Content::Bad;
    }
    let word = &text[i..i + word_len];
    if !SQL_START
        .iter()
        .any(|k| k.as_bytes().eq_ignore_ascii_case(word))
    {
        return Content::Bad;
    }
    // The rest must be text: no control bytes other than whitespace.
    if text[i..].iter().take(256).all(|&b| printable(b)) {
        Content::Strong
    } else {
        Content::Bad
    }
}
