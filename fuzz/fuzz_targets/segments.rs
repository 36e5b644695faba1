//! The input format shared by the connection fuzz targets (`http1`, `http2`, `postgres`,
//! `mysql`, `redis`):
//! arbitrary bytes read as a sequence of segments in both directions.
//!
//! Repeated until the input ends: one control byte
//! * bit 0: direction (0: client -> server, 1: server -> client);
//! * bits 1-2: 0 no gap, 1 a gap of the next byte's value, 2 a gap of (next byte << `big_gap`)
//!   bytes, 3 close the connection instead of pushing a segment;
//! * bits 3-7: captured length 0..=30, or 31: 31 + the next byte;
//!
//! then that many captured bytes; with `tails`, when there is a gap, one more byte gives the
//! length of a copied tail, whose bytes follow. Every step advances the timestamp by one.

use bytes::Bytes;
use socktrace::protocol::Segment;

/// One step of the input.
pub enum Step {
    /// Push `seg` in one direction.
    Push {
        server_to_client: bool,
        seg: Segment,
    },
    /// Close the connection at `ts`.
    Close { ts: u64 },
}

/// Decodes the input as [`Step`]s.
pub struct Segments<'a> {
    input: &'a [u8],
    ts: u64,
    big_gap: u32,
    tails: bool,
}

impl<'a> Segments<'a> {
    /// `ts` is the timestamp before the first step; `big_gap` the shift of a large gap.
    pub fn new(input: &'a [u8], ts: u64, big_gap: u32, tails: bool) -> Self {
        Self {
            input,
            ts,
            big_gap,
            tails,
        }
    }

    /// Timestamp of the last step (the starting one before any).
    pub fn ts(&self) -> u64 {
        self.ts
    }

    fn next_byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.input.split_first()?;
        self.input = rest;
        Some(b)
    }
}

impl Iterator for Segments<'_> {
    type Item = Step;

    fn next(&mut self) -> Option<Step> {
        let ctrl = self.next_byte()?;
        self.ts += 1;
        let gap = match (ctrl >> 1) & 3 {
            0 => 0,
            1 => u64::from(self.next_byte().unwrap_or(0)),
            2 => u64::from(self.next_byte().unwrap_or(0)) << self.big_gap,
            _ => return Some(Step::Close { ts: self.ts }),
        };
        let mut len = usize::from(ctrl >> 3);
        if len == 31 {
            len += usize::from(self.next_byte().unwrap_or(0));
        }
        let len = len.min(self.input.len());
        let (captured, rest) = self.input.split_at(len);
        self.input = rest;
        let mut tail: &[u8] = &[];
        if self.tails && gap > 0 && !self.input.is_empty() {
            let t = usize::from(self.input[0]).min(self.input.len() - 1);
            tail = &self.input[1..1 + t];
            self.input = &self.input[1 + t..];
        }
        let seg = Segment::prefix(
            self.ts,
            Bytes::copy_from_slice(captured),
            len as u64 + gap + tail.len() as u64,
        )
        .with_tail(Bytes::copy_from_slice(tail));
        Some(Step::Push {
            server_to_client: ctrl & 1 == 1,
            seg,
        })
    }
}

/// Whether `needle` occurs in `hay` (the database targets check that texts come from the
/// client's own bytes).
#[allow(dead_code)] // the HTTP targets include this module too
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}
