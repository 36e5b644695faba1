//! The HPACK decoder on arbitrary header blocks.
//!
//! Input format: one mode byte (bit 0: `mid_stream()` instead of `new()`), then, repeated, a
//! control byte: 0xff calls `lose_sync()`, 0xfe sets the limit from the next two bytes (in
//! units of 64), anything else is the length of the next block (what remains if shorter),
//! which is decoded. Besides "no panic", decoded output and table size stay bounded.

#![no_main]

use libfuzzer_sys::fuzz_target;
use socktrace::protocol::http2::hpack::{Block, Decoder, MAX_DECODED_BLOCK, MAX_STORED_TABLE};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut input)) = data.split_first() else {
        return;
    };
    let mut d = if mode & 1 == 1 {
        Decoder::mid_stream()
    } else {
        Decoder::new()
    };
    while let Some((&ctrl, rest)) = input.split_first() {
        input = rest;
        match ctrl {
            0xff => d.lose_sync(),
            0xfe => {
                let hi = input.first().copied().unwrap_or(0);
                let lo = input.get(1).copied().unwrap_or(0);
                input = input.get(2..).unwrap_or_default();
                d.set_limit(u32::from(u16::from_be_bytes([hi, lo])) * 64);
            }
            n => {
                let n = usize::from(n).min(input.len());
                let (block, rest) = input.split_at(n);
                input = rest;
                let mut out = Block::default();
                let _ = d.decode(block, &mut out);
                assert!(out.bytes <= MAX_DECODED_BLOCK);
                assert!(out.fields.len() <= block.len());
            }
        }
        assert!(d.table_size() <= MAX_STORED_TABLE);
    }
});
