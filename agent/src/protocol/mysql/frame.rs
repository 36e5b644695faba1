//! Packet framing of one direction: 4-byte headers (3-byte little-endian payload length,
//! sequence id), payloads of 16 MiB - 1 continued by the next packet, bodies counted through
//! gaps. A logical message (a payload and its continuations) is handed over whole, with the
//! first [`Framer::keep`] bytes of its body.

/// A payload of this length continues in the next packet.
pub(super) const MAX_PACKET: u32 = 0xff_ffff;

/// One logical message of a direction.
pub(super) struct Msg<'a> {
    /// Sequence id of its first packet.
    pub seq: u8,
    /// Sequence id of its last packet (differs only for continued payloads).
    pub last_seq: u8,
    /// Total payload length (all packets).
    pub len: u64,
    /// The first bytes of the payload (up to the framer's keep limit).
    pub body: &'a [u8],
    /// Bytes of the kept range fell in a gap: `body` is shorter than `min(len, keep)`.
    pub cut: bool,
    /// Timestamps of the segments holding its first and last byte.
    pub start_ts: u64,
    pub end_ts: u64,
}

/// What the framer reports to its owner.
pub(super) trait Sink {
    /// A complete message.
    fn message(&mut self, msg: &Msg<'_>);
    /// Framing was lost (a header fell in a gap or was refused); `ts` of the segment.
    fn lost(&mut self, ts: u64);
    /// The direction is lost and a new segment starts with `data` (its first captured bytes)
    /// of `len` bytes in total: may framing resume here?
    fn resync_ok(&mut self, data: &[u8], len: u64, ts: u64) -> bool;
    /// Stream bytes dropped while lost.
    fn skipped(&mut self, n: u64);
}

pub(super) struct Framer {
    keep: usize,
    hdr: [u8; 4],
    hdr_len: usize,
    /// Body bytes of the current packet still to come.
    left: u64,
    /// The current packet is being read (its header is complete).
    in_body: bool,
    /// The current message (first packet's header seen).
    started: bool,
    seq: u8,
    last_seq: u8,
    len: u64,
    body: Vec<u8>,
    cut: bool,
    start_ts: u64,
    /// The packet being read is a full one: another packet continues the payload.
    more: bool,
    lost: bool,
}

impl Framer {
    pub(super) fn new(keep: usize) -> Self {
        Self {
            keep,
            hdr: [0; 4],
            hdr_len: 0,
            left: 0,
            in_body: false,
            started: false,
            seq: 0,
            last_seq: 0,
            len: 0,
            body: Vec::new(),
            cut: false,
            start_ts: 0,
            more: false,
            lost: false,
        }
    }

    pub(super) fn is_lost(&self) -> bool {
        self.lost
    }

    /// Bytes held between pushes.
    #[cfg(test)]
    pub(super) fn buffered(&self) -> usize {
        self.body.capacity() + self.hdr_len
    }

    /// Forget framing: the next bytes are only taken at a segment start the sink accepts.
    pub(super) fn lose(&mut self) {
        self.reset();
        self.lost = true;
    }

    fn reset(&mut self) {
        self.hdr_len = 0;
        self.left = 0;
        self.in_body = false;
        self.started = false;
        self.more = false;
        self.cut = false;
        self.body = Vec::new();
    }

    /// `data` captured bytes followed by `gap` uncaptured ones; `seg_start` when `data` starts
    /// a segment (resynchronisation is only tried there); `total` is the segment's length from
    /// `data`'s start.
    pub(super) fn push(
        &mut self,
        sink: &mut dyn Sink,
        data: &[u8],
        gap: u64,
        ts: u64,
        seg_start: bool,
    ) {
        if self.lost {
            let total = data.len() as u64 + gap;
            if seg_start && !data.is_empty() && sink.resync_ok(data, total, ts) {
                self.lost = false;
                self.reset();
            } else {
                sink.skipped(total);
                return;
            }
        }
        let mut i = 0;
        while i < data.len() {
            if !self.in_body {
                let n = (4 - self.hdr_len).min(data.len() - i);
                self.hdr[self.hdr_len..self.hdr_len + n].copy_from_slice(&data[i..i + n]);
                self.hdr_len += n;
                i += n;
                if self.hdr_len < 4 {
                    break;
                }
                self.header_done(ts);
                if !self.in_body {
                    // A zero-length packet: done already.
                    continue;
                }
                if self.left == 0 {
                    self.packet_done(sink, ts);
                }
                continue;
            }
            let n = (self.left.min((data.len() - i) as u64)) as usize;
            let room = self.keep.saturating_sub(self.body.len()).min(n);
            if room > 0 && !self.cut {
                self.body.extend_from_slice(&data[i..i + room]);
            }
            i += n;
            self.left -= n as u64;
            if self.left == 0 {
                self.packet_done(sink, ts);
            }
        }
        if gap == 0 {
            return;
        }
        if self.in_body && self.left >= gap {
            if (self.body.len() as u64) < self.len.min(self.keep as u64) {
                self.cut = true;
            }
            self.left -= gap;
            if self.left == 0 {
                // The gap ends exactly at the end of the message: framing is intact.
                if (self.body.len() as u64) < self.len.min(self.keep as u64) {
                    self.cut = true;
                }
                self.packet_done(sink, ts);
            }
            return;
        }
        // A header lies in the gap.
        self.lose();
        sink.lost(ts);
        sink.skipped(gap);
    }

    fn header_done(&mut self, ts: u64) {
        let plen =
            u32::from(self.hdr[0]) | u32::from(self.hdr[1]) << 8 | u32::from(self.hdr[2]) << 16;
        let seq = self.hdr[3];
        self.hdr_len = 0;
        if !self.started {
            self.started = true;
            self.seq = seq;
            self.len = 0;
            self.body.clear();
            self.cut = false;
            self.start_ts = ts;
        }
        self.last_seq = seq;
        self.len += u64::from(plen);
        self.left = u64::from(plen);
        self.more = plen == MAX_PACKET;
        self.in_body = true;
    }

    fn packet_done(&mut self, sink: &mut dyn Sink, ts: u64) {
        self.in_body = false;
        if self.more {
            return;
        }
        self.started = false;
        let msg = Msg {
            seq: self.seq,
            last_seq: self.last_seq,
            len: self.len,
            body: &self.body,
            cut: self.cut,
            start_ts: self.start_ts,
            end_ts: ts,
        };
        sink.message(&msg);
        self.body.clear();
        if self.body.capacity() > 4096 {
            self.body = Vec::new();
        }
        self.cut = false;
    }

    /// The connection closed: a message cut by the close is dropped.
    pub(super) fn close(&mut self) {
        self.reset();
    }
}

/// Walks the packet headers of a segment's captured start: true when they chain to the
/// segment's end exactly, or the last one runs past the captured bytes but not past the
/// segment. Used to check a resynchronisation point.
pub(super) fn chains(data: &[u8], total: u64) -> bool {
    let mut off: u64 = 0;
    let mut n = 0;
    loop {
        if off == total {
            return n > 0;
        }
        let Some(h) = data.get(off as usize..off as usize + 4) else {
            // The header is not captured: the chain is consistent so far.
            return n > 0 && off < total;
        };
        let plen = u64::from(h[0]) | u64::from(h[1]) << 8 | u64::from(h[2]) << 16;
        off += 4 + plen;
        n += 1;
        if off > total || n > 10_000 {
            return false;
        }
    }
}

/// Reads a length-encoded integer at the start of `b`: (value, bytes used).
pub(super) fn lenenc(b: &[u8]) -> Option<(u64, usize)> {
    let first = *b.first()?;
    match first {
        0..=0xfa => Some((u64::from(first), 1)),
        0xfc => Some((le(b.get(1..3)?), 3)),
        0xfd => Some((le(b.get(1..4)?), 4)),
        0xfe => Some((le(b.get(1..9)?), 9)),
        _ => None,
    }
}

/// Little-endian unsigned integer of up to 8 bytes.
pub(super) fn le(b: &[u8]) -> u64 {
    b.iter()
        .take(8)
        .rev()
        .fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
}

/// A NUL-terminated string at the start of `b`: (text, bytes used including the NUL).
pub(super) fn cstr(b: &[u8]) -> Option<(&[u8], usize)> {
    let end = b.iter().position(|&x| x == 0)?;
    Some((&b[..end], end + 1))
}
