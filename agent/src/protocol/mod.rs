//! Pure protocol parsers: bytes in, messages out, no I/O.
pub mod http1;
