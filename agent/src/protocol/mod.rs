//! Pure protocol parsers: bytes in, messages out, no I/O.
pub mod http1;
pub mod http2;
pub mod mysql;
pub mod postgres;
#[cfg(test)]
pub(crate) mod testutil;

use bytes::Bytes;

/// One socket read or write as captured by the kernel: `len` bytes were transferred, of which
/// only the first `data.len()` (<= len) were copied. The uncaptured tail is a "gap": its bytes
/// count in the stream but their content is unknown.
#[derive(Clone, Debug)]
pub struct Segment {
    pub ts_ns: u64,
    /// The first bytes of the I/O.
    pub data: Bytes,
    pub len: u64,
    /// The last bytes of the I/O when it was longer than the prefix: they cover
    /// `[len - tail.len(), len)` and never overlap `data`. Empty when the kernel copied no tail.
    /// Parsers that track framing by count can use it to pick up framing again at the end of a
    /// large I/O (a gRPC trailer after a large message); the others may ignore it.
    pub tail: Bytes,
}

impl Segment {
    /// A fully captured segment.
    pub fn full(ts_ns: u64, data: impl Into<Bytes>) -> Self {
        let data = data.into();
        let len = data.len() as u64;
        Self::prefix(ts_ns, data, len)
    }

    /// A segment of `len` bytes of which only the first `data.len()` were copied.
    pub fn prefix(ts_ns: u64, data: impl Into<Bytes>, len: u64) -> Self {
        Self {
            ts_ns,
            data: data.into(),
            len,
            tail: Bytes::new(),
        }
    }

    /// Adds the copied last bytes of the I/O (see [`Segment::tail`]); a tail that would overlap
    /// the prefix or exceed `len` is trimmed so the invariant always holds.
    pub fn with_tail(mut self, tail: impl Into<Bytes>) -> Self {
        let mut tail: Bytes = tail.into();
        let room = self.len.saturating_sub(self.data.len() as u64);
        if tail.len() as u64 > room {
            tail = tail.slice(tail.len() - room as usize..);
        }
        self.tail = tail;
        self
    }

    /// Stream offset (from the start of this segment) of the first tail byte.
    pub fn tail_start(&self) -> u64 {
        self.len - self.tail.len() as u64
    }
}

/// Quick protocol detection on the first bytes of a stream direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detect {
    /// These bytes start a message of the protocol.
    Yes,
    /// They cannot.
    No,
    /// Too few bytes to tell.
    NeedMore,
}
