//! Pure protocol parsers: bytes in, messages out, no I/O.
pub mod http1;
pub mod postgres;

use bytes::Bytes;

/// One socket read or write as captured by the kernel: `len` bytes were transferred, of which
/// only the first `data.len()` (<= len) were copied. The uncaptured tail is a "gap": its bytes
/// count in the stream but their content is unknown.
#[derive(Clone, Debug)]
pub struct Segment {
    pub ts_ns: u64,
    pub data: Bytes,
    pub len: u64,
}

impl Segment {
    /// A fully captured segment.
    pub fn full(ts_ns: u64, data: impl Into<Bytes>) -> Self {
        let data = data.into();
        let len = data.len() as u64;
        Self { ts_ns, data, len }
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
