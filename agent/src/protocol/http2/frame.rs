//! HTTP/2 frame headers (RFC 9113 section 4.1) and the structural checks used to tell a frame
//! boundary from arbitrary bytes.

pub const HEADER_LEN: usize = 9;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY_FLAG: u8 = 0x20;

/// SETTINGS_HEADER_TABLE_SIZE.
pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;

/// Largest frame a peer may send without having raised SETTINGS_MAX_FRAME_SIZE.
pub const DEFAULT_MAX_FRAME: u32 = 16_384;

/// Bound on DATA/SETTINGS lengths accepted when judging whether bytes are frames: peers may
/// raise SETTINGS_MAX_FRAME_SIZE up to 16 MiB, but real ones stay far below this, and the bound
/// is what makes text (first byte >= 0x20 means a length >= 2 MiB) and TLS records
/// (0x16 0x03 .. means ~1.4 MiB) fail.
pub const SANE_MAX_FRAME: u32 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHead {
    pub len: u32,
    pub ty: u8,
    pub flags: u8,
    /// Without the reserved bit.
    pub stream_id: u32,
    pub reserved_bit: bool,
}

impl FrameHead {
    pub fn parse(b: &[u8; HEADER_LEN]) -> Self {
        let sid = u32::from_be_bytes([b[5], b[6], b[7], b[8]]);
        Self {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            ty: b[3],
            flags: b[4],
            stream_id: sid & 0x7fff_ffff,
            reserved_bit: sid & 0x8000_0000 != 0,
        }
    }

    /// Parses the header at the start of `buf` if 9 bytes are there.
    pub fn parse_at(buf: &[u8]) -> Option<Self> {
        let b: &[u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
        Some(Self::parse(b))
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// Frames of known types that break the type's fixed rules (stream 0 or not, fixed
    /// lengths). A receiver treats these as connection errors; for us they mean the framing is
    /// not where we thought, so they are checked even while in sync. Flags and the reserved bit
    /// are not: receivers must ignore unknown flags and the reserved bit.
    pub fn violates_type_rules(&self) -> bool {
        let on_zero = self.stream_id == 0;
        match self.ty {
            DATA | HEADERS | CONTINUATION | PUSH_PROMISE => on_zero,
            PRIORITY => on_zero || self.len != 5,
            RST_STREAM => on_zero || self.len != 4,
            SETTINGS => !on_zero || !self.len.is_multiple_of(6) || (self.has(ACK) && self.len != 0),
            PING => !on_zero || self.len != 8,
            GOAWAY => !on_zero || self.len < 8,
            WINDOW_UPDATE => self.len != 4,
            _ => false,
        }
    }

    /// Strict check used when looking for a frame boundary in bytes of unknown meaning: a known
    /// type, only the flags defined for it, reserved bit clear, sane lengths.
    pub fn plausible(&self, first_of_chain: bool) -> bool {
        let allowed_flags = match self.ty {
            DATA => END_STREAM | PADDED,
            HEADERS => END_STREAM | END_HEADERS | PADDED | PRIORITY_FLAG,
            SETTINGS | PING => ACK,
            PUSH_PROMISE => END_HEADERS | PADDED,
            CONTINUATION => END_HEADERS,
            PRIORITY | RST_STREAM | GOAWAY | WINDOW_UPDATE => 0,
            _ => return false,
        };
        let max_len = match self.ty {
            DATA | SETTINGS => SANE_MAX_FRAME,
            _ if first_of_chain => DEFAULT_MAX_FRAME,
            _ => SANE_MAX_FRAME,
        };
        self.flags & !allowed_flags == 0
            && !self.reserved_bit
            && self.len <= max_len
            && !self.violates_type_rules()
            && self.padding_fits()
    }

    /// A PADDED/PRIORITY frame must at least hold its pad-length byte and priority fields.
    fn padding_fits(&self) -> bool {
        let mut min = 0u32;
        if self.has(PADDED) && matches!(self.ty, DATA | HEADERS | PUSH_PROMISE) {
            min += 1;
        }
        if self.ty == HEADERS && self.has(PRIORITY_FLAG) {
            min += 5;
        }
        if self.ty == PUSH_PROMISE {
            min += 4;
        }
        self.len >= min
    }
}

/// Whether the first `buf.len() < 9` bytes can start a plausible first frame: the missing
/// stream id is assumed to be whatever the type requires.
pub fn plausible_prefix(buf: &[u8]) -> bool {
    let mut b = [0u8; HEADER_LEN];
    let n = buf.len().min(HEADER_LEN);
    b[..n].copy_from_slice(&buf[..n]);
    if n < 4 {
        // Only (part of) the length: bounded like a DATA/SETTINGS frame.
        return u32::from_be_bytes([0, b[0], b[1], b[2]]) <= SANE_MAX_FRAME;
    }
    let mut h = FrameHead::parse(&b);
    if n < 9 {
        let known = u32::from_be_bytes([b[5], b[6], b[7], b[8]]);
        let reserved = n > 5 && b[5] & 0x80 != 0;
        h.stream_id = match h.ty {
            SETTINGS | PING | GOAWAY => 0,
            _ => (known & 0x7fff_ffff) | 1,
        };
        h.reserved_bit = reserved;
        if n == 4 {
            // Flags unknown: assume the allowed ones.
            h.flags = 0;
        }
    }
    h.plausible(true)
}

/// Outcome of following a chain of frame headers through captured bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// The frames whose headers were fully captured.
    pub heads: Vec<FrameHead>,
    /// Offset just after the last frame (may be beyond the buffer).
    pub end: u64,
}

/// Most frame headers a chain check looks at; plenty to tell frames from noise.
const MAX_CHAIN: usize = 64;

/// Follows frame headers from the start of `buf`, checking each with `plausible` and that
/// CONTINUATION frames follow exactly a header block of the same stream. Returns None at the
/// first implausible header. A header cut by the end of `buf` stops the walk (its bytes are
/// not judged). Headers beyond MAX_CHAIN are not checked.
pub fn follow_chain(buf: &[u8], mut ok: impl FnMut(&FrameHead, usize) -> bool) -> Option<Chain> {
    let mut heads = Vec::new();
    let mut pos = 0u64;
    let mut open_block: Option<u32> = None;
    while heads.len() < MAX_CHAIN {
        let Some(rest) = usize::try_from(pos).ok().and_then(|p| buf.get(p..)) else {
            break;
        };
        let Some(h) = FrameHead::parse_at(rest) else {
            break;
        };
        if !h.plausible(heads.is_empty()) || !ok(&h, heads.len()) {
            return None;
        }
        match (open_block, h.ty) {
            (Some(sid), CONTINUATION) if sid == h.stream_id => {}
            (Some(_), _) | (None, CONTINUATION) => return None,
            _ => {}
        }
        open_block = match h.ty {
            HEADERS | PUSH_PROMISE | CONTINUATION if !h.has(END_HEADERS) => Some(h.stream_id),
            _ => None,
        };
        pos = pos + HEADER_LEN as u64 + u64::from(h.len);
        heads.push(h);
    }
    Some(Chain { heads, end: pos })
}
