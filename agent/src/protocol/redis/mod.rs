//! Redis (RESP2 and RESP3) over captured socket reads/writes: client commands paired FIFO with
//! server replies into one [`Call`] per command.
//!
//! Like the other parsers, it reads a lossy capture and follows three rules:
//!
//! * Framing is tracked by byte *count*: only header lines (`*3`, `$5`, `+OK`, ...) must be
//!   captured; bulk bodies are skipped by length, so a large value in a gap costs nothing, and
//!   the copied tail of a large read/write is read after its gap. The only texts read are the
//!   command name, the subcommand of container commands (`CLIENT SETNAME`), the small integers
//!   `SELECT`, `HELLO` and `numkeys` carry, the first element of server aggregates (to tell
//!   `subscribe`/`message` frames) and error lines. Values - and `AUTH` arguments - are never
//!   copied into a [`Call`].
//! * When framing is lost (a header in a gap, a header that makes no sense), the direction
//!   searches for the next plausible message start (a client command `*N\r\n$M\r\nNAME`; a
//!   server header at a read boundary or after `\r\n`) and the calls whose pairing that may
//!   have disturbed are marked [`Call::partial`]. Losses are counted in [`RedisStats`].
//! * Nothing from the wire is trusted: lines, nesting depth, kept texts, the queue of waiting
//!   commands and the finished calls are bounded, and every loop consumes input or stops.
//!
//! # Pairing
//!
//! Replies answer commands in order. A reply is never paired with a command sent after it
//! (timestamps are causal): such replies answered commands lost in gaps and are counted as
//! unmatched. RESP3 push messages (`>`: client-tracking invalidations, pub/sub deliveries) are
//! not replies and never shift the pairing; top-level RESP3 attributes (`|`) are dropped.
//!
//! * Inline commands (`PING\r\n`) are understood once the connection was detected.
//! * `MULTI`/`EXEC`: each queued command is its own call ending at its `+QUEUED`; `EXEC` ends
//!   with the array of results (errors inside it are not attributed to the queued commands).
//! * `SUBSCRIBE`/`PSUBSCRIBE`/`SSUBSCRIBE` (and the `UN` forms) end with their last
//!   confirmation (one per channel; for an `UNSUBSCRIBE` of everything, the one whose count is
//!   0). Confirmations are recognised in RESP2 arrays and RESP3 pushes alike. While subscribed,
//!   RESP2 `message`/`pmessage`/`smessage` arrays are deliveries, counted in
//!   [`RedisStats::pushes`] and never paired; commands allowed in that mode (`PING`, ...) are
//!   still paired.
//! * `SELECT n` answered `+OK` sets [`Call::database`] of the calls after it (`SELECT` itself
//!   reports the database it was sent in); `RESET` goes back to none. A `SELECT` inside
//!   `MULTI` is not followed: the calls after it are partial until the next `SELECT`.
//! * Not handled: `CLIENT REPLY OFF|SKIP` (commands without replies shift the pairing until
//!   the queue drains; the calls are then wrong), RESP3 streamed strings and aggregates (`$?`,
//!   `*?`: redis never sends them; they are treated as lost framing).
//!
//! # Capture loss and pairing
//!
//! Redis has no sync point like PostgreSQL's ReadyForQuery, so after a loss the pairing is
//! only known right again by counting. Client bytes not understood (a gap over a header, the
//! bytes searched until the next command start, across any number of reads/writes) may hold
//! whole commands whose replies will come: at most one per 2 bytes (`X\n`), less what the
//! rest of a cut command needs; a cut command stays in the queue as a placeholder that takes
//! one reply. After a server loss, the commands closed as partial may still be answered
//! later, one each. While that bound is above the number of replies since seen that no
//! waiting command could take (unmatched), every call is `partial`; it must be reached before
//! calls are clean again (a reply paired too early pushes the true ones later, so each owed
//! reply shows up as one unmatched reply). Server framing losses also keep calls partial
//! until a server read/write ends with no command waiting. In practice a client gap over
//! headers leaves the rest of the connection partial unless the replies show the bound.
//!
//! [`Call::database`] of a clean call is right: calls are partial while the database is in
//! doubt - after client bytes of 5 or more not understood (`EXEC\n`, `RESET\n`, `SELECT
//! 1\n`), a cut command whose name was lost, a `SELECT` or `RESET` whose reply was lost or not
//! known to be its own, a `SELECT` queued in `MULTI` - until a `SELECT` answered `+OK` whose
//! pairing is known.
//!
//! Known limits (calls reported clean could then be wrong): a false command start found by
//! the client search inside a value (a value that is itself a RESP command) adds a command
//! that was never sent; a false reply start found by the server search (inside a large
//! reply) with commands pipelined behind it; a connection joined mid-stream whose first
//! replies answer commands sent before the capture (the parser cannot tell).
//!
//! The module is pure (no I/O, no clock): time comes only from [`Segment::ts_ns`].

pub mod adapter;
mod command;
mod conn;
mod resp;
pub mod span;

#[cfg(test)]
mod tests;

pub use super::{Detect, Segment};
pub use adapter::Redis;
pub use command::MAX_NAME;
pub use conn::{MAX_DONE, MAX_PENDING};

/// Bytes kept of an error line (prefix word and message).
pub const MAX_ERROR: usize = 256;

/// One command and its reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// ts of the segment holding the first byte of the command.
    pub start_ns: u64,
    /// ts of the segment holding the last byte of its (last) reply; for a call closed without
    /// reply, of the last reply byte seen for it, else its start.
    pub end_ns: u64,
    /// Upper-case command name, with the subcommand for container commands (`CONFIG GET`);
    /// empty when it was not captured or is not a plausible name (at most
    /// 2 * [`MAX_NAME`] + 1 bytes).
    pub command: String,
    /// Number of arguments (the command name not counted).
    pub args: u32,
    /// How many of the arguments are keys, for the commands of a small table (`GET`, `MSET`,
    /// `DEL`, `EVAL`, ...); 0 when unknown.
    pub keys: u32,
    /// The error reply (`-` or RESP3 `!`): its prefix word then its message, at most
    /// [`MAX_ERROR`] bytes. The argument values `unknown command` errors quote are cut off.
    pub error: Option<String>,
    /// Database index selected by an answered `SELECT` before this call; None if none was seen.
    pub database: Option<u32>,
    /// Some framing was lost (a header in a gap, a message cut, joined mid-stream, replies
    /// lost, closed before the reply): the fields present are what was seen, but the pairing
    /// or the end may be off.
    pub partial: bool,
}

impl Call {
    /// The error's prefix word (`ERR`, `WRONGTYPE`, `NOAUTH`, ...).
    pub fn error_code(&self) -> Option<&str> {
        let e = self.error.as_deref()?;
        Some(e.split(' ').next().unwrap_or(e))
    }
}

crate::counters! {
    /// Counters of what could not be understood. They only grow (saturating).
    pub struct RedisStats {
        /// Times a direction lost its framing and had to search for the next message.
        resyncs,
        /// Stream bytes (captured or in gaps) dropped while searching for a message.
        bytes_skipped,
        /// Server replies no waiting command could have caused (answers to commands sent before
        /// the capture, lost in gaps, or evicted from a full queue).
        unmatched_responses,
        /// RESP3 push messages and RESP2 pub/sub deliveries (not replies to a command).
        pushes,
        /// Top-level RESP3 attributes dropped.
        attributes,
        /// Commands not tracked because [`MAX_PENDING`] were already waiting for replies, or
        /// finished calls dropped because [`MAX_DONE`] were not taken yet.
        dropped_calls,
    }
}

/// Detection on the first captured bytes of the client->server direction: a RESP array
/// (`*N\r\n`, 1 <= N < 10^7) whose first element is a bulk string (`$M\r\n`, 1 <= M <= 64)
/// holding a command name (a letter, then letters, digits, `_ - . | :`), followed by `\r\n`
/// when visible. HTTP, PostgreSQL, TLS and HTTP/2 prefaces never start with `*`.
pub fn detect_client(first: &[u8]) -> Detect {
    let mut p = 0;
    // `*`, count, CRLF, `$`, length, CRLF.
    let Some(b'*') = first.first() else {
        return if first.is_empty() {
            Detect::NeedMore
        } else {
            Detect::No
        };
    };
    p += 1;
    let (count, used) = match digits(&first[p..], 7) {
        Ok(v) => v,
        Err(d) => return d,
    };
    if count == 0 {
        return Detect::No;
    }
    p += used;
    for &want in b"\r\n$" {
        match first.get(p) {
            None => return Detect::NeedMore,
            Some(&b) if b != want => return Detect::No,
            Some(_) => p += 1,
        }
    }
    let (len, used) = match digits(&first[p..], 2) {
        Ok(v) => v,
        Err(d) => return d,
    };
    if !(1..=64).contains(&len) {
        return Detect::No;
    }
    p += used;
    for &want in b"\r\n" {
        match first.get(p) {
            None => return Detect::NeedMore,
            Some(&b) if b != want => return Detect::No,
            Some(_) => p += 1,
        }
    }
    let len = len as usize;
    for i in 0..len {
        let Some(&b) = first.get(p + i) else {
            return Detect::NeedMore;
        };
        let ok = if i == 0 {
            b.is_ascii_alphabetic()
        } else {
            b.is_ascii_alphanumeric() || b"_-.|:".contains(&b)
        };
        if !ok {
            return Detect::No;
        }
    }
    p += len;
    for &want in b"\r\n" {
        match first.get(p) {
            None => return Detect::NeedMore,
            Some(&b) if b != want => return Detect::No,
            Some(_) => p += 1,
        }
    }
    Detect::Yes
}

/// Leading decimal digits (at most `max`, at least one) and how many bytes they took.
fn digits(s: &[u8], max: usize) -> Result<(u64, usize), Detect> {
    let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 {
        return Err(if s.is_empty() {
            Detect::NeedMore
        } else {
            Detect::No
        });
    }
    if n > max {
        return Err(Detect::No);
    }
    if n == s.len() {
        // More digits may follow.
        return Err(Detect::NeedMore);
    }
    let v = s[..n]
        .iter()
        .fold(0u64, |acc, b| acc * 10 + u64::from(b - b'0'));
    Ok((v, n))
}

/// Both directions of one Redis connection. The caller says which bytes flow client ->
/// server and which server -> client, and pushes them roughly in time order.
pub struct RedisConn {
    client: resp::Reader,
    server: resp::Reader,
    sess: conn::Session,
    events: Vec<resp::Event>,
}

impl Default for RedisConn {
    fn default() -> Self {
        Self::new()
    }
}

impl RedisConn {
    pub fn new() -> Self {
        Self {
            client: resp::Reader::new(resp::Side::Client),
            server: resp::Reader::new(resp::Side::Server),
            sess: conn::Session::default(),
            events: Vec::new(),
        }
    }

    /// Bytes client -> server.
    pub fn push_client(&mut self, seg: Segment) {
        self.push(resp::Side::Client, &seg);
    }

    /// Bytes server -> client.
    pub fn push_server(&mut self, seg: Segment) {
        self.push(resp::Side::Server, &seg);
    }

    /// The connection closed at `ts_ns`: messages cut by the close are dropped, and commands
    /// still waiting are emitted as partial, ended at the last reply byte seen for them (their
    /// start if none): the close can come long after the last byte.
    pub fn close(&mut self, ts_ns: u64) {
        tracing::trace!(ts_ns, "redis connection closed");
        self.client.close();
        self.server.close();
        self.sess.close();
    }

    /// Finished calls, in command order, since the last call.
    pub fn take_calls(&mut self) -> Vec<Call> {
        std::mem::take(&mut self.sess.done)
    }

    pub fn stats(&self) -> RedisStats {
        self.sess.stats
    }

    /// Redis cannot switch a connection to TLS (TLS is on its own port, from the first byte,
    /// and never detected as RESP): always false. Here for wiring symmetry.
    pub fn encrypted(&self) -> bool {
        false
    }

    /// The server accepted `HELLO 3`: replies are RESP3 (both versions are read anyway).
    pub fn resp3(&self) -> bool {
        self.sess.resp3
    }

    /// Bytes held between pushes.
    #[cfg(test)]
    fn buffered(&self) -> usize {
        self.client.buffered() + self.server.buffered() + self.sess.buffered()
    }

    /// One segment: its copied prefix, the uncopied middle as a gap, then its copied tail.
    fn push(&mut self, side: resp::Side, seg: &Segment) {
        let gap = seg.len.saturating_sub(seg.data.len() as u64);
        let tail = &seg.tail[..];
        let middle = gap.saturating_sub(tail.len() as u64);
        let (reader, want): (&mut resp::Reader, resp::Want) = match side {
            resp::Side::Client => (&mut self.client, conn::client_wants),
            resp::Side::Server => (&mut self.server, conn::server_wants),
        };
        let mut events = std::mem::take(&mut self.events);
        if tail.is_empty() {
            reader.push(&seg.data, gap, seg.ts_ns, true, want, &mut events);
        } else {
            reader.push(&seg.data, middle, seg.ts_ns, true, want, &mut events);
            reader.push(tail, 0, seg.ts_ns, false, want, &mut events);
        }
        let lost = reader.is_lost();
        for ev in events.drain(..) {
            self.sess.on_event(side, ev);
        }
        self.events = events;
        self.sess.segment_done(side, lost);
    }
}
