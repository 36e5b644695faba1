//! HPACK header-block decoder (RFC 7541) that can run without knowing the whole dynamic table.
//!
//! A normal decoder must see every header block of its direction from the start of the
//! connection. This one also works after it missed some (the agent joined an established
//! connection, or a gap swallowed a block): it then knows only the entries inserted since, which
//! are the *newest* ones and therefore sit at the lowest dynamic indices (62, 63, ...). Every
//! index beyond them refers to an "unknown older entry": a field using one is counted as
//! undecoded and skipped, never guessed. Insertions keep being tracked, so the decoder
//! converges as the peer inserts new entries.
//!
//! Eviction is the subtle part. The real table evicts oldest-first when it exceeds its maximum
//! size; the unknown entries are older than every known one, so a known entry can only have been
//! evicted if the known entries *alone* exceed the maximum. Keeping an entry the peer evicted is
//! harmless (the peer never references an index past its own table), evicting one it still has
//! only turns later references into "undecoded". So whenever the maximum is uncertain the
//! decoder uses an upper bound of it, and it only concludes that no unknown entries remain
//! (back to a fully known table) when the maximum is known exactly and leaves no room for one.

use std::collections::VecDeque;

use super::huffman;
use crate::trace::http::Header;

/// Per-entry overhead in the table size accounting (RFC 7541 section 4.1).
pub const ENTRY_OVERHEAD: usize = 32;

/// Default SETTINGS_HEADER_TABLE_SIZE.
pub const DEFAULT_TABLE_SIZE: usize = 4096;

/// Most table bytes (in HPACK size accounting) a decoder keeps, whatever the peer announces:
/// older entries beyond it are dropped and become "unknown", which costs decoded fields but
/// never correctness.
pub const MAX_STORED_TABLE: usize = 64 * 1024;

/// Most name + value bytes one block may decode to. Indexed fields make a few bytes expand to
/// a whole table entry, so without this bound a block of 256 KiB could decode to gigabytes.
/// Fields beyond it are dropped and [`Block::truncated`] is set.
pub const MAX_DECODED_BLOCK: usize = 256 * 1024;

/// Largest integer accepted (a string length or index can never be larger than a frame anyway).
const MAX_INT: u64 = u32::MAX as u64;

/// RFC 7541 Appendix A.
pub const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// A true decoding error: the block (or our view of the table) is not what the peer encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    #[error("block ends inside a field")]
    Truncated,
    #[error("integer overflow")]
    IntegerOverflow,
    #[error("index 0")]
    ZeroIndex,
    #[error("index {0} beyond the dynamic table")]
    BadIndex(u64),
    #[error("invalid Huffman string: {0:?}")]
    Huffman(huffman::HuffmanError),
    #[error("dynamic table size update to {0} above the limit {1}")]
    SizeUpdateTooLarge(u64, usize),
    #[error("dynamic table size update after a header field")]
    LateSizeUpdate,
}

/// What one block decoded to; `fields` holds only the decoded ones, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Block {
    pub fields: Vec<Header>,
    /// Fields that referenced an unknown older entry (as an indexed field or as a literal's name).
    pub undecoded: u32,
    /// Some fields were dropped to stay within [`MAX_DECODED_BLOCK`].
    pub truncated: bool,
    /// Name + value bytes in `fields`.
    pub bytes: usize,
}

impl Block {
    fn push(&mut self, name: &[u8], value: &[u8]) {
        let n = name.len() + value.len();
        if self.bytes + n > MAX_DECODED_BLOCK {
            self.truncated = true;
            return;
        }
        self.bytes += n;
        self.fields.push(header(name, value));
    }
}

/// An owned (name, value) pair.
type Field = (Box<[u8]>, Box<[u8]>);

/// A borrowed (name, value) pair.
type FieldRef<'a> = (&'a [u8], &'a [u8]);

/// A dynamic table entry. A *hole* is an entry inserted with a name we could not resolve: its
/// place in the table is known, its content is not, and its size only from below.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    field: Option<Field>,
    /// Exact size, or a lower bound for a hole.
    size: usize,
}

impl Entry {
    fn known(name: Vec<u8>, value: Vec<u8>) -> Self {
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        Self {
            field: Some((name.into(), value.into())),
            size,
        }
    }

    fn hole(value_len: usize) -> Self {
        Self {
            field: None,
            size: value_len.saturating_add(ENTRY_OVERHEAD),
        }
    }
}

/// One direction's HPACK decoding state.
#[derive(Clone, Debug)]
pub struct Decoder {
    /// Known entries (and holes), newest first (index 62 is `entries[0]`).
    entries: VecDeque<Entry>,
    /// Sum of their sizes (a lower bound of the real table size while `holes > 0`).
    size: usize,
    /// Holes among `entries`.
    holes: usize,
    /// Upper bound of the table's current maximum size (exact when `max_exact`).
    max_size: usize,
    max_exact: bool,
    /// Largest size a table size update may set: the SETTINGS_HEADER_TABLE_SIZE of the decoding
    /// side (the largest value it announced), None when it is not known (joined mid-connection).
    limit: Option<usize>,
    /// Older entries we never saw may exist beyond the known ones.
    unknown_older: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder that sees the connection from its start.
    pub fn new() -> Self {
        Self {
            entries: VecDeque::new(),
            size: 0,
            holes: 0,
            max_size: DEFAULT_TABLE_SIZE,
            max_exact: true,
            limit: Some(DEFAULT_TABLE_SIZE),
            unknown_older: false,
        }
    }

    /// A decoder joining an established connection: the table size and contents are unknown.
    pub fn mid_stream() -> Self {
        Self {
            max_size: usize::MAX,
            max_exact: false,
            limit: None,
            unknown_older: true,
            ..Self::new()
        }
    }

    /// Header blocks of this direction may have been missed: keep the known entries, treat
    /// everything older as unknown. A missed block may also have held a size update, so the
    /// maximum becomes an upper bound.
    pub fn lose_sync(&mut self) {
        self.unknown_older = true;
        self.max_exact = false;
        self.max_size = self.limit.unwrap_or(usize::MAX).max(self.max_size);
    }

    /// The decoding side announced SETTINGS_HEADER_TABLE_SIZE = `value`. The limit only grows:
    /// the encoder may use the old value until the settings are acknowledged, and a smaller
    /// value is enforced by the encoder's own size update, which the decoder then sees.
    pub fn set_limit(&mut self, value: u32) {
        let value = value as usize;
        self.limit = Some(self.limit.map_or(value, |l| l.max(value)));
    }

    /// True when some older entries may be unknown.
    pub fn is_lossy(&self) -> bool {
        self.unknown_older
    }

    /// Known entries as (name, value), newest first, None for a hole (tests and debugging).
    pub fn entries(&self) -> impl Iterator<Item = Option<FieldRef<'_>>> {
        self.entries
            .iter()
            .map(|e| e.field.as_ref().map(|(n, v)| (&n[..], &v[..])))
    }

    /// Sum of the known entries' sizes (holes count with their lower bound).
    pub fn table_size(&self) -> usize {
        self.size
    }

    /// Decodes one complete header block into `out`. On error `out` keeps the fields decoded
    /// before it (they are right), and the caller should [`Decoder::lose_sync`]: the rest of the
    /// block may have inserted entries.
    pub fn decode(&mut self, block: &[u8], out: &mut Block) -> Result<(), HpackError> {
        let mut r = Reader { buf: block, pos: 0 };
        let mut fields_seen = false;
        while !r.done() {
            let first = r.peek()?;
            if first & 0x80 != 0 {
                // Indexed header field.
                let index = r.int(7)?;
                fields_seen = true;
                match self.lookup(index)? {
                    Some((name, value)) => out.push(name, value),
                    None => out.undecoded += 1,
                }
            } else if first & 0xc0 == 0x40 {
                // Literal with incremental indexing.
                let index = r.int(6)?;
                fields_seen = true;
                let name = self.literal_name(&mut r, index)?;
                let value = r.string()?;
                match name {
                    Some(name) => {
                        out.push(&name, &value);
                        self.insert(Entry::known(name, value));
                    }
                    None => {
                        out.undecoded += 1;
                        // The entry still takes index 62 and shifts the others: keep its place
                        // as a hole whose size is only known from below.
                        self.insert(Entry::hole(value.len()));
                    }
                }
            } else if first & 0xe0 == 0x20 {
                // Dynamic table size update.
                let size = r.int(5)?;
                if fields_seen {
                    return Err(HpackError::LateSizeUpdate);
                }
                self.size_update(size)?;
            } else {
                // Literal without indexing (0000) or never indexed (0001): 4-bit prefix.
                let index = r.int(4)?;
                fields_seen = true;
                let name = self.literal_name(&mut r, index)?;
                let value = r.string()?;
                match name {
                    Some(name) => out.push(&name, &value),
                    None => out.undecoded += 1,
                }
            }
        }
        Ok(())
    }

    /// Name of a literal: index 0 means a literal name follows. Ok(None): unknown entry.
    fn literal_name(&self, r: &mut Reader<'_>, index: u64) -> Result<Option<Vec<u8>>, HpackError> {
        if index == 0 {
            return r.string().map(Some);
        }
        Ok(self.lookup(index)?.map(|(name, _)| name.to_vec()))
    }

    /// Ok(None) when the index is beyond the known entries and unknown older ones may exist.
    fn lookup(&self, index: u64) -> Result<Option<FieldRef<'_>>, HpackError> {
        if index == 0 {
            return Err(HpackError::ZeroIndex);
        }
        let i = usize::try_from(index - 1).map_err(|_| HpackError::BadIndex(index))?;
        if let Some((name, value)) = STATIC_TABLE.get(i) {
            return Ok(Some((name.as_bytes(), value.as_bytes())));
        }
        let d = i - STATIC_TABLE.len();
        match self.entries.get(d) {
            Some(e) => Ok(e.field.as_ref().map(|(n, v)| (&n[..], &v[..]))),
            None if self.unknown_older => Ok(None),
            None => Err(HpackError::BadIndex(index)),
        }
    }

    fn size_update(&mut self, size: u64) -> Result<(), HpackError> {
        let size = usize::try_from(size).map_err(|_| HpackError::IntegerOverflow)?;
        if let Some(limit) = self.limit
            && size > limit
            && !self.unknown_older
        {
            return Err(HpackError::SizeUpdateTooLarge(size as u64, limit));
        }
        self.max_size = size;
        self.max_exact = true;
        self.evict();
        Ok(())
    }

    fn insert(&mut self, entry: Entry) {
        let size = entry.size;
        if size > self.max_size {
            // RFC 7541 4.4: an entry larger than the maximum empties the table and is not added.
            // `max_size` is an upper bound and a hole's size a lower bound, so this is certain.
            self.entries.clear();
            self.size = 0;
            self.holes = 0;
            self.unknown_older = false;
            return;
        }
        if size > MAX_STORED_TABLE {
            self.forget_known();
            return;
        }
        self.size += size;
        self.holes += usize::from(entry.field.is_none());
        self.entries.push_front(entry);
        self.evict();
    }

    /// Known entries beyond the (upper bound of the) maximum are certainly evicted; entries
    /// beyond our storage cap are dropped and become unknown.
    fn evict(&mut self) {
        while self.size > self.max_size {
            self.pop_oldest();
        }
        while self.size > MAX_STORED_TABLE {
            self.pop_oldest();
            self.unknown_older = true;
        }
        if self.unknown_older
            && self.max_exact
            && self.holes == 0
            && self.size + ENTRY_OVERHEAD > self.max_size
        {
            // No room for even one older entry: the table is fully known again.
            self.unknown_older = false;
        }
    }

    fn pop_oldest(&mut self) {
        if let Some(e) = self.entries.pop_back() {
            self.size -= e.size;
            self.holes -= usize::from(e.field.is_none());
        }
    }

    fn forget_known(&mut self) {
        self.entries.clear();
        self.size = 0;
        self.holes = 0;
        self.unknown_older = true;
    }
}

fn header(name: &[u8], value: &[u8]) -> Header {
    Header {
        name: String::from_utf8_lossy(name).into_owned(),
        value: String::from_utf8_lossy(value).into_owned(),
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn peek(&self) -> Result<u8, HpackError> {
        self.buf.get(self.pos).copied().ok_or(HpackError::Truncated)
    }

    fn byte(&mut self) -> Result<u8, HpackError> {
        let b = self.peek()?;
        self.pos += 1;
        Ok(b)
    }

    /// RFC 7541 5.1 integer with an N-bit prefix.
    fn int(&mut self, prefix_bits: u32) -> Result<u64, HpackError> {
        let mask = (1u8 << prefix_bits) - 1;
        let mut value = u64::from(self.byte()? & mask);
        if value < u64::from(mask) {
            return Ok(value);
        }
        let mut shift = 0u32;
        loop {
            let b = self.byte()?;
            let add = u64::from(b & 0x7f)
                .checked_shl(shift)
                .ok_or(HpackError::IntegerOverflow)?;
            value = value.checked_add(add).ok_or(HpackError::IntegerOverflow)?;
            if value > MAX_INT {
                return Err(HpackError::IntegerOverflow);
            }
            if b & 0x80 == 0 {
                return Ok(value);
            }
            shift += 7;
            if shift > 35 {
                return Err(HpackError::IntegerOverflow);
            }
        }
    }

    /// RFC 7541 5.2 string literal.
    fn string(&mut self) -> Result<Vec<u8>, HpackError> {
        let huffman = self.peek()? & 0x80 != 0;
        let len = self.int(7)?;
        let len = usize::try_from(len).map_err(|_| HpackError::Truncated)?;
        let end = self.pos.checked_add(len).ok_or(HpackError::Truncated)?;
        let raw = self.buf.get(self.pos..end).ok_or(HpackError::Truncated)?;
        self.pos = end;
        if huffman {
            // Shortest code is 5 bits: at most 8/5 symbols per byte.
            let mut out = Vec::with_capacity(raw.len() * 8 / 5);
            huffman::decode(raw, &mut out).map_err(HpackError::Huffman)?;
            Ok(out)
        } else {
            Ok(raw.to_vec())
        }
    }
}
