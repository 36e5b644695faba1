//! HTTP/1 request heads as the kernel sees them: the method token, the line structure of the
//! header block, and the few header names it acts on. Shared by the server-context hook
//! (`context.rs`, incoming requests) and the injection program (`inject.rs`, outgoing ones).
//!
//! Everything works on a byte buffer in map memory (a per-CPU scratch value) with the scan
//! state in map memory too: the verifier then sees one state per loop iteration instead of one
//! per combination of branch outcomes. The header block is scanned in two loops - one over the
//! bytes that only records where lines start, one over those lines that compares header names -
//! so that the long loop has a small body.

/// Most header lines recorded per request head; a head with more is treated as unparseable.
pub const MAX_LINES: usize = 64;

/// `HeadScan::flags`: a `Content-Length` header was seen (its value starts at `cl_at`).
pub const HAS_CL: u32 = 1;
/// Two `Content-Length` headers: the body length is ambiguous.
pub const DUP_CL: u32 = 2;
/// A `Transfer-Encoding` header (chunked or anything else): the body length is not known here.
pub const HAS_TE: u32 = 4;
/// A `traceparent` header (its value starts at `tp_at`).
pub const HAS_TP: u32 = 8;
/// An `Upgrade` header: the connection may stop speaking HTTP/1 after this request.
pub const HAS_UPGRADE: u32 = 16;
/// A single `Transfer-Encoding: chunked` header (without it `HAS_TE` is set).
pub const HAS_CHUNKED: u32 = 32;

/// Scan state of one request head, in map memory.
#[repr(C)]
pub struct HeadScan {
    /// Valid bytes in the buffer being scanned.
    pub n: u32,
    /// Lines recorded in `lines`.
    pub nlines: u32,
    /// Length of the head including its blank line; 0 if no blank line was found in `n`
    /// bytes, or the head has more than `MAX_LINES` lines.
    pub head_len: u32,
    /// `HAS_*` bits.
    pub flags: u32,
    /// Always 0: read where the compiler must not assume a value.
    pub zero: u32,
    /// `content_length` / `chunk_line` state.
    pub cl_digits: u32,
    pub cl_done: u32,
    pub cl_value: u64,
    /// Offset of the `Content-Length` value (after the colon).
    pub cl_at: u32,
    /// Offset of the `traceparent` value (after the colon).
    pub tp_at: u32,
    /// Start of every line after the request line, in order, the blank line included: the
    /// request line ends just before `lines[0]`. Entries from `nlines` on are scratch (the scan
    /// writes the next free slot at every byte); sized so that a mask keeps any slot inside.
    pub lines: [u16; 2 * MAX_LINES],
}

#[inline(always)]
fn vload(p: *const u32) -> u32 {
    // SAFETY: callers pass pointers into a live map value.
    unsafe { core::ptr::read_volatile(p) }
}

#[inline(always)]
fn vstore(p: *mut u32, v: u32) {
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(p, v) }
}

/// Up to eight bytes of text as a little-endian word (the first byte in the low bits), as
/// loaded from memory holding that text.
pub const fn text_word(s: &[u8]) -> u64 {
    let mut w = 0u64;
    let mut i = 0;
    while i < s.len() {
        w |= (s[i] as u64) << (8 * i);
        i += 1;
    }
    w
}

/// Length of the method token plus its space when `head` (the first 8 bytes of a message, as
/// a little-endian word) begins with one of the HTTP/1.1 methods; 0 otherwise.
#[inline(always)]
pub fn method_len(head: u64) -> u32 {
    const fn mask(n: usize) -> u64 {
        if n >= 8 {
            u64::MAX
        } else {
            (1u64 << (8 * n)) - 1
        }
    }
    const METHODS: [(u64, u64, u32); 9] = [
        (text_word(b"GET "), mask(4), 4),
        (text_word(b"PUT "), mask(4), 4),
        (text_word(b"POST "), mask(5), 5),
        (text_word(b"HEAD "), mask(5), 5),
        (text_word(b"PATCH "), mask(6), 6),
        (text_word(b"TRACE "), mask(6), 6),
        (text_word(b"DELETE "), mask(7), 7),
        (text_word(b"OPTIONS "), mask(8), 8),
        (text_word(b"CONNECT "), mask(8), 8),
    ];
    let mut i = 0;
    while i < METHODS.len() {
        let (w, m, n) = METHODS[i];
        if head & m == w {
            return n;
        }
        i += 1;
    }
    0
}

/// Whether a method of this length at the start of a message is `CONNECT` (the only 8-byte
/// method besides `OPTIONS`, told apart by its first byte).
#[inline(always)]
pub fn is_connect(head: u64, method_len: u32) -> bool {
    method_len == 8 && head as u8 == b'C'
}

/// Records the line starts of the head in `buf[..st.n]` (`st.n <= W`) and where it ends.
/// `buf` must have `W + 64` bytes.
///
/// The loop body has no data-dependent branch but its exit: the verifier explores the
/// fall-through of every conditional jump first and stacks the other side (at most 8192 of
/// them), and every side it stacks inside a loop is walked again for several iterations before
/// it can be pruned - with a branch per newline that came to over a million instructions for
/// 2 KiB. Here each byte costs it one pass over ~40 instructions, and each stacked exit is
/// pruned right after the loop. Comparisons are computed with arithmetic on values mixed with
/// `zero` (a map value LLVM cannot see through), so that LLVM does not turn them back into
/// compare-and-branch sequences; the carried values `last`, `k` and `prev` are dead after the
/// loop, which reads the results back from map memory.
#[inline(always)]
pub fn find_lines<const W: usize>(buf: *const u8, st: *mut HeadScan) {
    // SAFETY (all raw accesses): `st` points to a live map value, `buf` to one with `W + 64`
    // bytes, and every index below is `< W`.
    let (n, zero) = unsafe {
        vstore(&raw mut (*st).nlines, 0);
        vstore(&raw mut (*st).head_len, 0);
        vstore(&raw mut (*st).flags, 0);
        vstore(&raw mut (*st).cl_at, 0);
        vstore(&raw mut (*st).tp_at, 0);
        (
            u64::from(vload(&raw const (*st).n)),
            u64::from(vload(&raw const (*st).zero)),
        )
    };
    let lines = unsafe { (&raw mut (*st).lines).cast::<u16>() };
    // 1 when `x | zero` is 0 (`zero` is 0, but LLVM cannot know it).
    let is_zero = |x: u64| (x | zero).wrapping_sub(1) >> 63;
    let mut last: u64 = 0;
    let mut k: u64 = 0;
    let mut prev: u64 = 0;
    let mut i: usize = 0;
    while i < W {
        let at = i as u64;
        // SAFETY: i < W.
        let c = u64::from(unsafe { *buf.add(i) });
        let nl = is_zero(c ^ u64::from(b'\n'));
        // The line ending here is empty ("" or "\r"): the head ends after this byte.
        let blank =
            nl & (is_zero(last ^ at) | is_zero(((last + 1) ^ at) | (prev ^ u64::from(b'\r'))));
        let end = is_zero(at ^ n);
        let full = nl & (k >> 6);
        if end | blank | full != 0 {
            let blank = blank & (end ^ 1);
            // SAFETY: as above.
            unsafe {
                vstore(&raw mut (*st).head_len, (blank * (at + 1)) as u32);
                vstore(&raw mut (*st).nlines, k as u32);
            }
            return;
        }
        // The next free slot always holds the current position + 1; a newline keeps it there.
        // SAFETY: k <= MAX_LINES, and the mask keeps the verifier sure of it.
        unsafe {
            core::ptr::write_volatile(
                lines.add((k & (2 * MAX_LINES as u64 - 1)) as usize),
                (at + 1) as u16,
            );
        }
        // All ones on a newline; `| zero` keeps LLVM from making this a select (a branch).
        let keep = nl.wrapping_neg() | zero;
        last = (last & !keep) | ((at + 1) & keep);
        k += nl;
        prev = c;
        i += 1;
    }
    // SAFETY: as above.
    unsafe { vstore(&raw mut (*st).nlines, k as u32) };
}

/// Eight bytes at `buf[at..]` as a little-endian word, from byte loads (any alignment).
#[inline(always)]
fn word(buf: *const u8, at: usize) -> u64 {
    let mut w = 0u64;
    let mut k = 0;
    while k < 8 {
        // SAFETY: callers bound `at` below W, and the buffer has W + 64 bytes.
        w |= u64::from(unsafe { *buf.add(at + k) }) << (8 * k);
        k += 1;
    }
    w
}

/// A header name (lowercase, with its colon) as up to three words, with the bits that fold
/// letters to lowercase and the bytes that take part in the comparison.
struct Name {
    words: [u64; 3],
    fold: [u64; 3],
    used: [u64; 3],
}

const fn name(s: &[u8]) -> Name {
    let mut n = Name {
        words: [0; 3],
        fold: [0; 3],
        used: [0; 3],
    };
    let mut i = 0;
    while i < s.len() {
        let (w, b) = (i / 8, 8 * (i % 8));
        n.words[w] |= (s[i] as u64) << b;
        n.used[w] |= 0xff << b;
        if s[i].is_ascii_lowercase() {
            n.fold[w] |= 0x20 << b;
        }
        i += 1;
    }
    n
}

const TRACEPARENT: Name = name(b"traceparent:");
const CONTENT_LENGTH: Name = name(b"content-length:");
const TRANSFER_ENCODING: Name = name(b"transfer-encoding:");
const UPGRADE: Name = name(b"upgrade:");
const CHUNKED: Name = name(b"chunked\r");

/// Whether `buf[at..]` begins with `name` (letters compared without case). Whole words are
/// compared, so each name costs the verifier at most three branches.
#[inline(always)]
fn name_is(buf: *const u8, at: usize, name: &Name) -> bool {
    let mut k = 0;
    while k < 3 {
        if name.used[k] != 0
            && (word(buf, at + 8 * k) | name.fold[k]) & name.used[k] != name.words[k]
        {
            return false;
        }
        k += 1;
    }
    true
}

/// Compares the name of every recorded header line with the ones the kernel acts on and sets
/// `st.flags`, `st.cl_at`, `st.tp_at`. With `ALL` false only `traceparent` is looked for.
/// Lines are complete (each ends with a newline before the blank line, or within `st.n`), and
/// no name contains CR or LF, so a match never reads past the end of its line.
#[inline(always)]
pub fn match_names<const W: usize, const ALL: bool>(buf: *const u8, st: *mut HeadScan) {
    let mut j: usize = 0;
    while j < MAX_LINES {
        // SAFETY: `st` points to a live map value; j < MAX_LINES.
        let (count, at) = unsafe {
            (
                vload(&raw const (*st).nlines) as usize,
                core::ptr::read_volatile((&raw const (*st).lines).cast::<u16>().add(j)) as usize,
            )
        };
        if j >= count {
            break;
        }
        // Verifier: line starts are < W by construction, but they come back from memory.
        let at = at & (W - 1);
        let flags = vload(unsafe { &raw const (*st).flags });
        // SAFETY: at < W and the buffer has W + 64 bytes.
        match unsafe { *buf.add(at) } | 0x20 {
            b't' if name_is(buf, at, &TRACEPARENT) => {
                vstore(unsafe { &raw mut (*st).flags }, flags | HAS_TP);
                vstore(unsafe { &raw mut (*st).tp_at }, (at + 12) as u32);
            }
            b't' if ALL && name_is(buf, at, &TRANSFER_ENCODING) => {
                // `chunked` alone, after at most one space or tab; anything else (another
                // coding, a list, a second header) is an encoding the kernel does not follow.
                // SAFETY: at < W and the buffer has W + 64 bytes.
                let space = matches!(unsafe { *buf.add(at + 18) }, b' ' | b'\t');
                let chunked =
                    name_is(buf, at + 18, &CHUNKED) || (space && name_is(buf, at + 19, &CHUNKED));
                let bit = if chunked && flags & (HAS_CHUNKED | HAS_TE) == 0 {
                    HAS_CHUNKED
                } else {
                    HAS_TE
                };
                vstore(unsafe { &raw mut (*st).flags }, flags | bit);
            }
            b'c' if ALL && name_is(buf, at, &CONTENT_LENGTH) => {
                let more = if flags & HAS_CL != 0 { DUP_CL } else { 0 };
                vstore(unsafe { &raw mut (*st).flags }, flags | HAS_CL | more);
                vstore(unsafe { &raw mut (*st).cl_at }, (at + 15) as u32);
            }
            b'u' if ALL && name_is(buf, at, &UPGRADE) => {
                vstore(unsafe { &raw mut (*st).flags }, flags | HAS_UPGRADE);
            }
            _ => {}
        }
        j += 1;
    }
}

/// Parses a `Content-Length` value at `buf[at..]`: optional spaces or tabs, 1 to 18 digits,
/// optional spaces or tabs, then CR or LF. `None` for anything else (the length is unknown).
/// The running value lives in `st` (map memory), so that the verifier's states at the loop head
/// do not differ by it.
#[inline(always)]
pub fn content_length<const W: usize>(buf: *const u8, at: usize, st: *mut HeadScan) -> Option<u64> {
    let at = at & (W - 1);
    // SAFETY (all raw accesses): `st` is a live map value.
    let value = unsafe { &raw mut (*st).cl_value };
    let digits = unsafe { &raw mut (*st).cl_digits };
    // Whitespace after the digits: only more whitespace and the line end may follow.
    let done = unsafe { &raw mut (*st).cl_done };
    unsafe {
        core::ptr::write_volatile(value, 0);
        vstore(digits, 0);
        vstore(done, 0);
    }
    let mut k = 0usize;
    while k < 32 {
        // SAFETY: at < W, k < 32: inside the W + 64 byte buffer.
        let c = unsafe { *buf.add(at + k) };
        let n = vload(digits);
        if c == b' ' || c == b'\t' {
            if n > 0 {
                vstore(done, 1);
            }
        } else if c.is_ascii_digit() && vload(done) == 0 && n < 18 {
            // SAFETY: as above.
            unsafe {
                let v = core::ptr::read_volatile(value);
                core::ptr::write_volatile(value, v * 10 + u64::from(c - b'0'));
            }
            vstore(digits, n + 1);
        } else if (c == b'\r' || c == b'\n') && n > 0 {
            // SAFETY: as above.
            return Some(unsafe { core::ptr::read_volatile(value) });
        } else {
            return None;
        }
        k += 1;
    }
    None
}

/// Value of every byte as a hex digit of either case; `INVALID` for the other bytes.
static HEX_ANY: [u8; 256] = {
    let mut t = [INVALID; 256];
    let mut c = 0;
    while c < 256 {
        if c >= b'0' as usize && c <= b'9' as usize {
            t[c] = (c - b'0' as usize) as u8;
        } else if c >= b'a' as usize && c <= b'f' as usize {
            t[c] = (c - b'a' as usize + 10) as u8;
        } else if c >= b'A' as usize && c <= b'F' as usize {
            t[c] = (c - b'A' as usize + 10) as u8;
        }
        c += 1;
    }
    t
};

/// A chunk-size line at the start of `buf[..n]` (`n <= W`): 1 to 15 hex digits, optional
/// extensions, CRLF. Returns (the line's length, the chunk size), or `None` when the line is
/// malformed or does not end within `n` bytes. The running values live in `st`, as in
/// `content_length`.
#[inline(always)]
pub fn chunk_line<const W: usize>(
    buf: *const u8,
    n: usize,
    st: *mut HeadScan,
) -> Option<(usize, u64)> {
    // SAFETY (all raw accesses): `st` is a live map value; indexes stay below 64 <= W.
    let value = unsafe { &raw mut (*st).cl_value };
    let digits = unsafe { &raw mut (*st).cl_digits };
    unsafe {
        core::ptr::write_volatile(value, 0);
        vstore(digits, 0);
    }
    let mut k = 0usize;
    while k < 16 {
        let d = HEX_ANY[usize::from(unsafe { *buf.add(k) })];
        if d == INVALID {
            break;
        }
        unsafe {
            let v = core::ptr::read_volatile(value);
            core::ptr::write_volatile(value, (v << 4) | u64::from(d));
        }
        vstore(digits, (k + 1) as u32);
        k += 1;
    }
    let digits = vload(digits) as usize;
    if digits == 0 || digits > 15 {
        return None;
    }
    // Extensions (`;name=value`) up to the line end.
    let mut k = 0usize;
    while k < 48 {
        let at = (digits + k) & (W - 1);
        if unsafe { *buf.add(at) } == b'\r' {
            let end = at + 2;
            if end > n || unsafe { *buf.add(at + 1) } != b'\n' {
                return None;
            }
            // SAFETY: as above.
            return Some((end, unsafe { core::ptr::read_volatile(value) }));
        }
        if k == 0 && unsafe { *buf.add(at) } != b';' {
            return None;
        }
        k += 1;
    }
    None
}

/// Whether `buf[at..]` is ` HTTP/1.0\r` or ` HTTP/1.1\r` (the end of a request line).
#[inline(always)]
pub fn is_version_end<const W: usize>(buf: *const u8, at: usize) -> bool {
    const VERSION: u64 = u64::from_le_bytes(*b" HTTP/1.");
    let at = at & (W - 1);
    word(buf, at) == VERSION && {
        // SAFETY: at < W.
        let (d, cr) = unsafe { (*buf.add(at + 8), *buf.add(at + 9)) };
        (d == b'0' || d == b'1') && cr == b'\r'
    }
}

const INVALID: u8 = 0x80;

/// Repeats a byte in every byte of a word.
const fn lanes(b: u8) -> u64 {
    u64::from_le_bytes([b; 8])
}

/// Decodes eight lowercase hex digits (`w`: a little-endian word, its first character in the
/// low byte) into four bytes (a `u32` whose little-endian bytes are them, in order). The high
/// half of the result is non-zero when a character is not a lowercase hex digit.
///
/// Arithmetic on all eight characters at once, without a table or a branch: a byte-at-a-time
/// decode unrolled by LLVM kept 50 table addresses live at once and spilled them to the stack
/// (408 bytes: the verifier rejected the read exit for a combined stack of 592 bytes).
#[inline(always)]
pub fn unhex8(w: u64) -> u64 {
    // For bytes below 0x80: `b + (0x80 - lo)` has its high bit set exactly when `b >= lo`, and
    // `b + (0x7f - hi)` exactly when `b > hi`; no byte carries into the next.
    let high = lanes(0x80);
    let ascii = w & high == 0;
    let ge = |lo: u8| w.wrapping_add(lanes(0x80 - lo));
    let gt = |hi: u8| w.wrapping_add(lanes(0x7f - hi));
    let digit = ge(b'0') & !gt(b'9');
    let letter = ge(b'a') & !gt(b'f');
    let valid = ascii && (digit | letter) & high == high;
    // '0'..'9' -> 0..9 and 'a'..'f' -> 1..6 + 9.
    let n = (w & lanes(0x0f)) + ((w >> 6) & lanes(0x01)) * 9;
    // Pairs of nibbles into bytes: byte 2i of `t` is (hi << 4) | lo of character pair i.
    let t = (n << 4) | (n >> 8);
    let value =
        (t & 0xff) | ((t >> 8) & 0xff00) | ((t >> 16) & 0x00ff_0000) | ((t >> 24) & 0xff00_0000);
    value | (u64::from(!valid) << 32)
}

/// Eight lowercase hex digits of the four little-endian bytes of `x`, in order (the first
/// character in the low byte of the result). Arithmetic on the whole word, like `unhex8`.
#[inline(always)]
pub fn hex8(x: u32) -> u64 {
    let x = u64::from(x);
    // Byte i of `x` to byte 2i.
    let y = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
    let y = (y | (y << 8)) & 0x00ff_00ff_00ff_00ff;
    // High nibble in byte 2i, low nibble in byte 2i + 1.
    let n = ((y >> 4) & lanes(0x0f)) | ((y & lanes(0x0f)) << 8);
    // 10..15 get 39 more ('a' - '9' - 1): `n + 6` reaches 16 exactly for them.
    let letters = ((n + lanes(6)) >> 4) & lanes(0x01);
    n + lanes(b'0') + letters * 39
}

/// [`traceparent_trace_id`]: the value is well formed (its trace id is in `out`).
pub const TP_VALID: u32 = 1;
/// [`traceparent_trace_id`]: with `TP_VALID`, the trace flags have the sampled bit.
pub const TP_SAMPLED: u32 = 2;

/// Decodes a W3C `traceparent` value at `buf[at..]` (after the colon): optional spaces or tabs,
/// then `00-<32 lowercase hex>-<16 lowercase hex>-<2 hex>`. When it is well formed and its
/// trace id not all zero, stores the trace id in `out` (16 bytes, 4-byte aligned) and returns
/// `TP_VALID`, with `TP_SAMPLED` when the flags' low bit is set; otherwise 0. The caller
/// guarantees that `buf[at..at + 58]` is valid.
#[inline(always)]
pub fn traceparent_trace_id<const W: usize>(buf: *const u8, at: usize, out: *mut u32) -> u32 {
    let mut at = at & (W - 1);
    // SAFETY (all reads): at < W + 2 and at most 56 bytes past it: inside the W + 64 byte buffer.
    let byte = |i: usize| unsafe { *buf.add(i) };
    let mut skipped = 0;
    while skipped < 2 {
        let c = byte(at);
        if c != b' ' && c != b'\t' {
            break;
        }
        at += 1;
        skipped += 1;
    }
    if byte(at) != b'0' || byte(at + 1) != b'0' || byte(at + 2) != b'-' {
        return 0;
    }
    if byte(at + 35) != b'-' || byte(at + 52) != b'-' {
        return 0;
    }
    // The flags: two digits, padded to eight with '0'.
    let flags = (word(buf, at + 53) & 0xffff) | (lanes(b'0') & !0xffff);
    let mut bad = unhex8(flags) >> 32;
    let mut any = 0u64;
    let mut k = 0usize;
    while k < 4 {
        let v = unhex8(word(buf, at + 3 + 8 * k));
        bad |= v >> 32;
        any |= v & 0xffff_ffff;
        // SAFETY: `out` has room for four words.
        unsafe { core::ptr::write_volatile(out.add(k), v as u32) };
        k += 1;
    }
    let mut k = 0usize;
    while k < 2 {
        bad |= unhex8(word(buf, at + 36 + 8 * k)) >> 32;
        k += 1;
    }
    let end = byte(at + 55);
    if bad != 0 || any == 0 || !matches!(end, b'\r' | b'\n' | b' ' | b'\t') {
        return 0;
    }
    // The flags' second digit is valid hex here: its value is odd ('1', '3'... 'b', 'd', 'f')
    // when the ASCII code's parity says so for digits, and the opposite for letters.
    let last = byte(at + 54);
    let odd = u32::from(last & 1) ^ u32::from(last > b'9');
    TP_VALID | (odd * TP_SAMPLED)
}
