//! MySQL / MariaDB client/server protocol over captured socket reads/writes: packets framed by
//! length, commands paired FIFO with their responses into one [`Call`] per command, plus a
//! MySQL-flavoured SQL sanitizer ([`sanitize`], [`operation_and_collection`]) and the span
//! builder ([`span::build_span`]).
//!
//! The input is a lossy capture, so the parser follows the same three rules as the PostgreSQL
//! one (see `protocol::postgres`):
//!
//! * Framing is tracked by byte *count*: only the 4-byte packet headers (3-byte length,
//!   sequence id) must be captured; bodies are skipped by length, so rows in a gap cost
//!   nothing. A payload of 16 MiB - 1 continues in the next packet; the parser sees the whole
//!   logical message. Only a bounded prefix of each message is copied ([`MAX_KEEP`] for the
//!   client's texts, 1 KiB for the server's packets).
//! * When a header falls in a gap, that direction is lost and resumes only at the start of a
//!   later segment whose packet headers chain exactly to the segment's end and whose first
//!   packet starts a command (client: sequence id 0, a known command byte, SQL-looking text)
//!   or a response (server: sequence id 1, with a command waiting that was sent before it).
//!   Commands whose pairing that may have disturbed are reported with [`Call::partial`], and
//!   calls stay partial until a command is sent with nothing waiting and both directions
//!   framed. Losses are counted in [`MysqlStats`], never returned as errors.
//! * Nothing from the wire is trusted: lengths only move counters, copied texts and the tables
//!   (commands waiting, prepared statements) are bounded, and every loop consumes input.
//!
//! # Connection phase
//!
//! The server speaks first: its initial handshake (protocol version 10) gives the server
//! version (MariaDB says so in it) and capabilities. The client answers with a
//! HandshakeResponse (capabilities, user, database with CLIENT_CONNECT_WITH_DB) or an
//! SSLRequest (then the stream is TLS: [`MysqlConn::encrypted`], nothing more is parsed).
//! When compression is negotiated (CLIENT_COMPRESS or zstd) parsing stops and
//! [`MysqlStats::compressed_sessions`] counts it. Authentication exchanges (auth switch, more
//! data) are skipped until the server's OK (commands follow) or ERR (parsing stops).
//! CLIENT_DEPRECATE_EOF and MariaDB's metadata caching are taken from both capability sets;
//! for a connection joined mid-stream they are unknown and the parser accepts both forms.
//!
//! # Calls
//!
//! One [`Call`] per command that gets a response: COM_QUERY, COM_INIT_DB (which also changes
//! the current database), COM_PING, COM_STMT_PREPARE (its text is remembered under the id the
//! server's PREPARE_OK returns, in a table of [`MAX_PREPARED`] entries), COM_STMT_EXECUTE /
//! COM_STMT_FETCH / COM_STMT_BULK_EXECUTE (with the prepared text, or `query: None` and the id
//! when the PREPARE was not seen), and the rarer ones. COM_QUIT, COM_STMT_CLOSE and
//! COM_STMT_SEND_LONG_DATA have no response and give no call; a successful COM_STMT_RESET
//! (which some connectors send before every execution) gives none either.
//!
//! A call ends with OK, ERR, EOF, or the end of a result set (column count, definitions,
//! rows, terminated by EOF or by an OK with a 0xFE header under CLIENT_DEPRECATE_EOF);
//! `rows` counts the rows. A LOCAL INFILE request (0xFB) is followed by the client's file
//! packets and the server's final OK/ERR. A multi-statement query or a procedure call gives
//! several results (SERVER_MORE_RESULTS_EXISTS): that is ONE call for the query text, ending at
//! the last result, with `rows` and `affected` summed over the results; an ERR ends it.
//! The current database follows COM_INIT_DB and the schema changes the server reports in OK
//! packets (session state tracking, e.g. after `USE db`).
//!
//! The module is pure (no I/O, no clock): time comes only from [`Segment::ts_ns`].

pub mod adapter;
mod conn;
mod frame;
pub mod span;
mod sql;

#[cfg(test)]
mod tests;

pub use super::{Detect, Segment};
pub use adapter::Mysql;
pub use conn::{MAX_PENDING, MAX_PREPARED};
pub use sql::{operation_and_collection, sanitize};

use conn::{BackSink, FrontSink, Session};
use frame::{Framer, Sink};

/// Upper bound of a copied query text.
pub const MAX_KEEP: usize = 64 * 1024;
/// Bytes copied of each server message (OK, ERR, handshake, ...).
const SERVER_KEEP: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MysqlError {
    /// Error number, e.g. 1146.
    pub code: u16,
    /// SQL state, e.g. "42S02" (empty when the server sent none).
    pub state: String,
    /// The server's message (bounded to 1 KiB).
    pub message: String,
}

/// One command and its response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// Command name, e.g. "COM_QUERY", "COM_STMT_EXECUTE".
    pub command: &'static str,
    /// Raw SQL: COM_QUERY / COM_STMT_PREPARE text, or the prepared text of an executed
    /// statement (None when its PREPARE was not seen). Bounded by [`MAX_KEEP`]; a text cut by
    /// the capture is what was captured (and `partial` is set).
    pub query: Option<String>,
    /// Prepared statement id (COM_STMT_PREPARE's answer, or the one executed).
    pub statement_id: Option<u32>,
    /// Rows returned by the result sets of the response (None when there was no result set).
    pub rows: Option<u64>,
    /// Affected rows reported by the OK packet(s).
    pub affected: Option<u64>,
    pub error: Option<MysqlError>,
    /// Current database when the command was sent (the target for COM_INIT_DB).
    pub database: Option<String>,
    /// The server's version string from its handshake (contains "MariaDB" for MariaDB).
    pub server_version: Option<String>,
    /// CLOCK_MONOTONIC ns of the segment holding the first byte of the command, and of the
    /// one holding the last byte of its response.
    pub start_ns: u64,
    pub end_ns: u64,
    /// Framing or pairing was disturbed (gaps, resync, closed early): the fields present are
    /// what was seen, but the pairing or the end may be off.
    pub partial: bool,
}

crate::counters! {
    /// Counters of what could not be understood. They only grow (saturating).
    pub struct MysqlStats {
        /// Times a direction lost its framing (a header in a gap, an answer nobody asked for).
        resyncs,
        /// Stream bytes (captured or in gaps) dropped while a direction was lost.
        bytes_skipped,
        /// Messages that made no sense where they came (unknown command, wrong sequence id,
        /// unexpected packet in a response).
        invalid_messages,
        /// Server responses with no command waiting, or older than the command waiting.
        unmatched_responses,
        /// Sessions that switched to TLS (0 or 1 per connection).
        encrypted_sessions,
        /// Sessions that negotiated compression (0 or 1): not parsed further.
        compressed_sessions,
        /// Calls evicted (emitted partial) from a full queue of [`MAX_PENDING`] waiting commands.
        dropped_calls,
        /// Prepared statement texts evicted from the full table ([`MAX_PREPARED`]).
        evicted_statements,
    }
}

/// Detection on the first bytes the server wrote: its initial handshake packet - a sane
/// length, sequence id 0, protocol version 10, a printable NUL-terminated version string, and
/// the filler byte after the first 8 bytes of scramble.
pub fn detect_server(first: &[u8]) -> Detect {
    if first.len() < 5 {
        return Detect::NeedMore;
    }
    let len = frame::le(&first[..3]) as usize;
    if first[3] != 0 || !(30..=1024).contains(&len) || first[4] != 10 {
        return Detect::No;
    }
    let body = &first[4..first.len().min(4 + len)];
    let mut nul = None;
    for (i, &c) in body.iter().enumerate().skip(1) {
        if c == 0 {
            nul = Some(i);
            break;
        }
        if !(0x20..0x7f).contains(&c) || i > 100 {
            return Detect::No;
        }
    }
    let Some(nul) = nul else {
        return if body.len() < len {
            Detect::NeedMore
        } else {
            Detect::No
        };
    };
    // Version, connection id (4), scramble (8), filler 0, capabilities (2).
    if nul < 2 || len < nul + 16 {
        return Detect::No;
    }
    match body.get(nul + 13) {
        None => Detect::NeedMore,
        Some(0) => Detect::Yes,
        Some(_) => Detect::No,
    }
}

/// Detection on the first bytes the client wrote (its HandshakeResponse or SSLRequest, as the
/// server speaks first): sequence id 1, CLIENT_PROTOCOL_41, a length of at least 32, and the
/// 19 zero filler bytes (MariaDB uses the last 4 of the 23 for its capabilities).
pub fn detect_client(first: &[u8]) -> Detect {
    if first.len() < 4 {
        return Detect::NeedMore;
    }
    let len = frame::le(&first[..3]);
    if first[3] != 1 || !(32..=65_536).contains(&len) {
        return Detect::No;
    }
    let Some(body) = first.get(4..36) else {
        return if first.len() < 36 {
            Detect::NeedMore
        } else {
            Detect::No
        };
    };
    let caps = frame::le(&body[..4]);
    if caps & 0x200 == 0 || body[9..28].iter().any(|&b| b != 0) {
        return Detect::No;
    }
    Detect::Yes
}

/// Both directions of one MySQL connection. The caller says which bytes flow client ->
/// server and which server -> client, and pushes them roughly in time order.
pub struct MysqlConn {
    front: Framer,
    back: Framer,
    sess: Session,
}

impl Default for MysqlConn {
    fn default() -> Self {
        Self::new()
    }
}

impl MysqlConn {
    pub fn new() -> Self {
        Self {
            front: Framer::new(MAX_KEEP + 1),
            back: Framer::new(SERVER_KEEP),
            sess: Session::default(),
        }
    }

    /// Bytes client -> server.
    pub fn push_client(&mut self, seg: Segment) {
        if self.sess.stopped() {
            return;
        }
        push_segment(&mut self.front, &mut FrontSink(&mut self.sess), &seg);
        self.sync_lost();
    }

    /// Bytes server -> client.
    pub fn push_server(&mut self, seg: Segment) {
        if self.sess.stopped() {
            return;
        }
        push_segment(&mut self.back, &mut BackSink(&mut self.sess), &seg);
        self.sync_lost();
    }

    /// The session decided a direction is lost (an answer nobody asked for): make its framer
    /// search again.
    fn sync_lost(&mut self) {
        if self.sess.back_lost && !self.back.is_lost() {
            self.back.lose();
        }
        if self.sess.front_lost && !self.front.is_lost() {
            self.front.lose();
        }
    }

    /// The connection closed at `ts_ns`: messages cut by the close are dropped and calls still
    /// waiting are emitted as partial, ended at the last response byte seen for them (their
    /// command's end if none): the close can come long after the last byte.
    pub fn close(&mut self, ts_ns: u64) {
        tracing::trace!(ts_ns, "mysql connection closed");
        self.front.close();
        self.back.close();
        self.sess.close_pending();
    }

    /// Finished calls, in command order, since the last call.
    pub fn take_calls(&mut self) -> Vec<Call> {
        std::mem::take(&mut self.sess.done)
    }

    /// The session switched to TLS (SSLRequest): nothing more can be parsed.
    pub fn encrypted(&self) -> bool {
        self.sess.encrypted
    }

    /// The server version from the handshake.
    pub fn server_version(&self) -> Option<&str> {
        self.sess.server_version.as_deref()
    }

    /// The login user.
    pub fn user(&self) -> Option<&str> {
        self.sess.user.as_deref()
    }

    /// The current database.
    pub fn database(&self) -> Option<&str> {
        self.sess.database.as_deref()
    }

    pub fn stats(&self) -> MysqlStats {
        self.sess.stats
    }

    /// Bytes held by the two directions between pushes.
    #[cfg(test)]
    fn buffered(&self) -> usize {
        self.front.buffered() + self.back.buffered()
    }
}

/// One segment into a direction: its copied prefix, the uncopied middle as a gap, then its
/// copied tail when framing was counted through the gap.
fn push_segment(framer: &mut Framer, sink: &mut dyn Sink, seg: &Segment) {
    let gap = seg.len.saturating_sub(seg.data.len() as u64);
    let tail = &seg.tail[..];
    let middle = gap.saturating_sub(tail.len() as u64);
    if tail.is_empty() {
        framer.push(sink, &seg.data, gap, seg.ts_ns, true);
        return;
    }
    framer.push(sink, &seg.data, middle, seg.ts_ns, true);
    if framer.is_lost() {
        sink.skipped(tail.len() as u64);
        return;
    }
    framer.push(sink, tail, 0, seg.ts_ns, false);
}
