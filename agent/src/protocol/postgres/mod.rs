//! PostgreSQL frontend/backend protocol v3 over captured socket reads/writes: messages framed by
//! length, frontend messages paired FIFO with backend responses into one [`Statement`] per
//! executed statement, plus the SQL helpers spans need ([`sanitize`],
//! [`operation_and_collection`]).
//!
//! As for HTTP/1, the input is a lossy capture, so the parser follows three rules:
//!
//! * Framing is tracked by byte *count*. Only headers (5 bytes; 8 for startup packets) must be
//!   captured; bodies are skipped by length, so a DataRow in a gap costs nothing. The few bodies
//!   that matter (Query and Parse text, Bind's two names, CommandComplete tags, ErrorResponse
//!   fields, startup parameters) are copied from the captured prefix, up to a bound
//!   ([`MAX_KEEP`] for texts). Bind parameter values are never copied.
//! * When framing is lost (a header in a gap, a header that makes no sense, a connection joined
//!   mid-stream), the direction resynchronises on the next plausible header (known type, length
//!   sane for the type, content consistent, and the following header when it is visible), and
//!   the statements whose pairing that may have disturbed are reported with
//!   [`Statement::partial`]. Losses are counted in [`PgStats`], never returned as errors.
//! * Nothing from the wire is trusted: lengths are checked against per-type bounds, memory is
//!   bounded (copied bodies, the resync window, the queue of waiting messages and the table of
//!   prepared statements all have limits), and every loop consumes input or stops.
//!
//! # Statements
//!
//! * Simple query: one [`Statement`] per CommandComplete / EmptyQueryResponse / ErrorResponse.
//!   A multi-statement query (`BEGIN; INSERT ...; COMMIT`) gives one Statement per command,
//!   each with the whole query text; the first starts with the Query, each next one where the
//!   previous one ended (its CommandComplete's segment), so the timings are sequential. An
//!   error ends the query: the commands after it were not executed and give nothing. COPY
//!   (`FROM STDIN` or `TO STDOUT`, simple or extended) is one Statement ending with its
//!   `COPY n` CommandComplete; the copy data in either direction is skipped.
//! * Extended query: Parse texts are remembered by statement name (the unnamed one is replaced
//!   by each Parse; a named one is kept until Close, `DEALLOCATE` or `DISCARD ALL`), Bind maps
//!   a portal to a statement, and each Execute gives one Statement with that statement's text.
//!   It starts with the Parse of its statement if that Parse was sent since the previous
//!   Execute (so pg8000's Parse+Sync, Describe+Sync, Bind+Execute+Sync round trips are one
//!   span), else with its Bind (a reused prepared statement), else with the Execute itself (a
//!   portal resumed after PortalSuspended); it ends with its CommandComplete /
//!   EmptyQueryResponse / PortalSuspended / ErrorResponse. Pipelines pair FIFO. After an
//!   ErrorResponse the server skips everything up to Sync: those Executes give no Statement,
//!   and the following ones are not shifted. An error to Parse, Bind or Describe is reported on
//!   the Execute it prevented (or, for a Parse with no Execute after it in its batch, as a
//!   Statement for that Parse, so that the error is not lost). Describe-only and successful
//!   Parse-only batches give nothing. A statement prepared before the capture began is
//!   reported with `query: None` and its name (partial only if client bytes were lost since,
//!   as its Parse may have been among them).
//! * A Parse of a name believed to exist (the server refuses redefinitions, so a client sends
//!   one only after a Close or `DEALLOCATE` we did not see) takes the new text; the old one is
//!   put back if the server refuses or skips that Parse.
//!
//! # Capture loss and pairing
//!
//! A lost frontend message is replaced by a `Lost` placeholder that absorbs answers up to a
//! ReadyForQuery. When the backend loses framing and resumes, requests sent between the loss
//! and the resumed answer show that everything before their batch was answered in the lost
//! bytes (a client that does not pipeline waits for ReadyForQuery), so those are closed as
//! partial. An answer is never paired with a request sent after it (timestamps are causal).
//! After any of this, statements stay `partial` until a ReadyForQuery after which no other
//! request sent before it is still waiting: only then is the pairing known to be right again.
//! The tests replay real recordings with random gaps and require that no statement reported
//! clean is ever wrong.
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
pub use adapter::Postgres;
pub use conn::{MAX_PENDING, MAX_PREPARED};
pub use frame::MAX_KEEP;
pub use sql::{operation_and_collection, sanitize};

use conn::Session;
use frame::{Content, Framer, Side};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgError {
    /// Non-localized severity (`V` field) when sent, else the `S` field: "ERROR", "FATAL", ...
    pub severity: String,
    /// `C` field, e.g. "42601".
    pub sqlstate: String,
    /// `M` field.
    pub message: String,
}

#[derive(Clone, Debug)]
pub struct Statement {
    /// Raw SQL as sent (simple Query text, or the Parse text of the executed prepared
    /// statement); None when unknown (statement prepared before the agent started or its Parse
    /// was lost). A text cut by the capture is what was captured (and `partial` is set).
    pub query: Option<String>,
    /// Name of the prepared statement for extended-protocol executions ("" = unnamed); None
    /// for simple queries and for an Execute of a portal whose Bind was not seen.
    pub prepared_name: Option<String>,
    pub extended: bool,
    /// CLOCK_MONOTONIC ns: ts of the segment holding the first byte of the Query (of the
    /// first message of the batch for extended executions; of the previous command's end for
    /// the later commands of a multi-statement query), and of the segment holding the last
    /// byte of the backend message that ended it.
    pub start_ns: u64,
    pub end_ns: u64,
    /// CommandComplete tag, e.g. "SELECT 5", "INSERT 0 1", "BEGIN", "COPY 3".
    pub command_tag: Option<String>,
    /// Rows returned, from the tag: SELECT n / FETCH n, and INSERT 0 n / UPDATE n / DELETE n /
    /// MERGE n / COPY n when the server sent rows (`RETURNING`, `COPY ... TO STDOUT`). Rows only
    /// written are not counted.
    pub rows: Option<u64>,
    pub error: Option<PgError>,
    /// Some framing was lost (a gap in a message header or in the text, joined mid-stream,
    /// responses lost or skipped while resynchronising, closed early): the fields present are
    /// what was seen, but the pairing or the end may be off.
    pub partial: bool,
}

crate::counters! {
    /// Counters of what could not be understood. They only grow (saturating).
    pub struct PgStats {
        /// Times a direction lost its framing and had to search for the next message (joining a
        /// connection mid-stream is not counted).
        resyncs,
        /// Stream bytes (captured or in gaps) dropped while searching for a message.
        bytes_skipped,
        /// Headers at a message position that did not make sense, and messages whose content
        /// could not be read (e.g. a Bind without its NUL terminators).
        invalid_messages,
        /// Backend messages (other than DataRow/CopyData) that no frontend message waiting could
        /// have caused: responses to messages sent before the capture or lost in gaps.
        unmatched_responses,
        /// Sessions that switched to TLS or GSS encryption (0 or 1 per connection).
        encrypted_sessions,
        /// Statements evicted from a full queue of [`MAX_PENDING`] messages waiting for a response.
        dropped_statements,
    }
}

/// Detection on the first captured bytes of the client->server direction: a startup-phase
/// packet (StartupMessage for protocol 3.x, SSLRequest, GSSENCRequest, CancelRequest), or, for
/// connections joined mid-stream, a frontend message with a known type byte and a sane length
/// whose visible content is consistent (Query and Parse text must start with an SQL keyword).
/// Lengths of joined messages must be below 16 MiB (first length byte zero), which text
/// protocols (HTTP, SMTP, Redis, ...) and TLS records never produce.
pub fn detect_frontend(buf: &[u8]) -> Detect {
    let Some(&first) = buf.first() else {
        return Detect::NeedMore;
    };
    if first == 0 {
        if buf.len() < 8 {
            return Detect::NeedMore;
        }
        let len = frame::be32(&buf[0..4]);
        let code = frame::be32(&buf[4..8]);
        return if frame::startup_ok(len, code) {
            Detect::Yes
        } else {
            Detect::No
        };
    }
    if !frame::type_known(Side::Front, first) {
        return Detect::No;
    }
    if buf.len() < 5 {
        // The first length byte of a message below 16 MiB is zero.
        return if buf.get(1).is_some_and(|&b| b != 0) {
            Detect::No
        } else {
            Detect::NeedMore
        };
    }
    let len = frame::be32(&buf[1..5]);
    if buf[1] != 0 || !frame::header_ok(Side::Front, first, len) {
        return Detect::No;
    }
    let body_len = u64::from(len) - 4;
    let end = buf.len().min(1 + len as usize);
    match frame::content(Side::Front, first, &buf[5..end], body_len) {
        Content::Bad => Detect::No,
        Content::Strong => Detect::Yes,
        Content::Weak => match first {
            // The text is what tells SQL apart: wait for enough of it.
            b'Q' | b'P' if (end as u64) < 1 + u64::from(len) && buf.len() < 1024 => {
                Detect::NeedMore
            }
            // An empty query.
            b'Q' if body_len == 1 => Detect::Yes,
            b'Q' | b'P' => Detect::No,
            _ => Detect::Yes,
        },
    }
}

/// Both directions of one PostgreSQL connection. The caller says which bytes flow client ->
/// server and which server -> client, and pushes them roughly in time order (as the kernel
/// ring buffer delivers them).
pub struct PgConn {
    front: Framer,
    back: Framer,
    sess: Session,
}

impl Default for PgConn {
    fn default() -> Self {
        Self::new()
    }
}

impl PgConn {
    pub fn new() -> Self {
        Self {
            front: Framer::new(Side::Front),
            back: Framer::new(Side::Back),
            sess: Session::default(),
        }
    }

    /// Bytes client -> server.
    pub fn push_frontend(&mut self, seg: Segment) {
        push_segment(&mut self.front, &mut self.sess, &seg);
    }

    /// Bytes server -> client.
    pub fn push_backend(&mut self, seg: Segment) {
        push_segment(&mut self.back, &mut self.sess, &seg);
    }

    /// The connection closed at `ts_ns`: messages cut by the close are dropped, and statements
    /// still waiting are emitted as partial, ended at the last backend byte seen for them
    /// (their start if none): the close can come long after the last byte.
    pub fn close(&mut self, ts_ns: u64) {
        tracing::trace!(ts_ns, "postgres connection closed");
        self.front.close(&mut self.sess);
        self.back.close(&mut self.sess);
        self.sess.close();
    }

    /// Completed statements, in execution order, since the last call.
    pub fn take_statements(&mut self) -> Vec<Statement> {
        std::mem::take(&mut self.sess.done)
    }

    /// The StartupMessage's "database" parameter, defaulting to "user" as the server does.
    pub fn database(&self) -> Option<&str> {
        self.sess.database.as_deref().or(self.sess.user.as_deref())
    }

    /// The StartupMessage's "user" parameter.
    pub fn user(&self) -> Option<&str> {
        self.sess.user.as_deref()
    }

    /// The session switched to TLS/GSS (the server answered 'S' / 'G' to SSLRequest /
    /// GSSENCRequest): nothing more can be parsed and pushes are ignored.
    pub fn encrypted(&self) -> bool {
        self.sess.encrypted
    }

    pub fn stats(&self) -> PgStats {
        self.sess.stats
    }

    /// Bytes held by the two directions between pushes.
    #[cfg(test)]
    fn buffered(&self) -> usize {
        self.front.buffered() + self.back.buffered()
    }
}

/// Captured bytes and gap length. A segment claiming fewer bytes than it carries is trusted for
/// its data.
/// One segment into a direction: its copied prefix, the uncopied middle as a gap, then its
/// copied tail. The tail holds the end of a large I/O - the CommandComplete and ReadyForQuery
/// after a big result - where framing is picked up again (counted through the gap, or found by
/// the resynchronising search) instead of at the next I/O.
fn push_segment(framer: &mut Framer, sess: &mut Session, seg: &Segment) {
    let gap = seg.len.saturating_sub(seg.data.len() as u64);
    let tail = &seg.tail[..];
    let middle = gap.saturating_sub(tail.len() as u64);
    if tail.is_empty() {
        framer.push(sess, &seg.data, gap, seg.ts_ns);
        return;
    }
    framer.push(sess, &seg.data, middle, seg.ts_ns);
    framer.push(sess, tail, 0, seg.ts_ns);
}
