//! The session: startup parameters, prepared statements and portals, and the FIFO pairing of
//! frontend messages with backend responses into [`Statement`]s.
//!
//! The server answers frontend messages strictly in order, so pairing is a queue of the
//! frontend messages that expect a response. Each backend message is offered to the entry at
//! the head; a message that the head cannot produce (a ParseComplete while a Bind is waiting)
//! means responses were lost, and the queue is advanced to the first entry that can produce it.
//! When frontend messages themselves were lost, a `Lost` entry stands for them: it absorbs the
//! backend messages that come while it is at the head, up to a ReadyForQuery.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;

use super::frame::{CODE_CANCEL, CODE_GSS, CODE_SSL, Events, Msg, Side};
use super::sql::{self, Dealloc};
use super::{PgError, PgStats, Statement};

/// Frontend messages that may wait for a response. A server that never answers (or a stream
/// that only looks like PostgreSQL) must not make the queue grow without bound.
pub const MAX_PENDING: usize = 1024;
/// Bytes of query text held by waiting entries.
const MAX_PENDING_TEXT: usize = 4 << 20;
/// Prepared statements remembered per connection, and their total text.
pub const MAX_PREPARED: usize = 1024;
const MAX_PREPARED_BYTES: usize = 4 << 20;
const MAX_PORTALS: usize = 256;
/// Unanswered SSLRequest/GSSENCRequest remembered.
const MAX_ANSWERS: usize = 8;

#[derive(Clone, Debug)]
struct Prepared {
    text: Option<Arc<str>>,
    partial: bool,
    generation: u64,
    /// ts of its Parse, and the number of Executes sent before that Parse.
    parsed_ts: u64,
    parsed_at: u64,
}

/// What an Execute runs: the statement bound to its portal.
#[derive(Clone, Debug, Default)]
struct Target {
    name: Option<String>,
    text: Option<Arc<str>>,
    partial: bool,
    /// Where an execution of this portal starts (its Bind, or the Parse of its statement if
    /// that came after the previous Execute), and the number of Executes sent before the Bind.
    start: u64,
    bound_at: u64,
}

#[derive(Debug)]
struct QueryState {
    text: Option<Arc<str>>,
    /// The statements of a multi-statement or cut text (byte ranges of `text`, see
    /// [`sql::statement_ranges`]); empty for a single complete statement.
    pieces: Vec<Range<usize>>,
    /// The text was cut by the capture.
    cut: bool,
    /// Backend framing was lost while it ran: a result may have gone unseen, so the n-th result
    /// seen need not answer the n-th statement.
    lost: bool,
    /// Start of the next statement of a multi-statement query: the end of the previous one.
    next_start: u64,
    /// CommandComplete / EmptyQueryResponse / ErrorResponse seen.
    results: u32,
    /// Backend messages since the last result (a statement in progress).
    activity: bool,
}

impl QueryState {
    /// The text of the statement the next result answers: the n-th statement of the text for
    /// the n-th result. Past the statements found, the whole text if it is complete (the lexer
    /// disagreed with the server), else unknown.
    /// After lost results, which statement a result answers is unknown unless the text is one
    /// complete statement.
    fn current(&self) -> Option<&str> {
        let text = self.text.as_deref()?;
        if self.pieces.is_empty() && !self.cut {
            return Some(text);
        }
        if self.lost {
            return None;
        }
        match self.pieces.get(self.results as usize) {
            Some(r) => text.get(r.clone()),
            None => (!self.cut).then_some(text),
        }
    }
}

#[derive(Debug)]
enum Kind {
    Startup,
    Query(QueryState),
    Parse {
        name: Option<String>,
        text: Option<Arc<str>>,
        partial: bool,
        /// Generation of the map entry this Parse created, if it created one.
        generation: Option<u64>,
        /// The definition it replaced, put back if the server refuses or skips the Parse.
        replaced: Option<Prepared>,
    },
    Bind,
    Describe,
    Close {
        /// The statement this Close removed, put back if the server skipped the Close.
        restore: Option<(String, Prepared)>,
    },
    Execute(Target),
    Sync,
    Function,
    /// Frontend messages that were lost.
    Lost,
}

#[derive(Debug)]
struct Entry {
    kind: Kind,
    /// ts of the segment holding its first byte; for an Execute, where its execution started
    /// (the Parse of its statement if sent since the previous Execute, else its Bind).
    start: u64,
    /// ts of the last backend byte attributed to it.
    last: u64,
    /// Its request or response lost bytes.
    partial: bool,
    /// The server sent rows for it (DataRow, CopyOutResponse): for a simple query, since its
    /// last result.
    returned: bool,
}

impl Entry {
    fn new(kind: Kind, start: u64, partial: bool) -> Self {
        Self {
            kind,
            start,
            last: start,
            partial,
            returned: false,
        }
    }

    fn text_len(&self) -> usize {
        match &self.kind {
            Kind::Query(q) => q.text.as_ref().map_or(0, |t| t.len()),
            Kind::Parse { text, .. } => text.as_ref().map_or(0, |t| t.len()),
            _ => 0,
        }
    }

    /// Entries that a ReadyForQuery completes.
    fn is_sync_point(&self) -> bool {
        matches!(
            self.kind,
            Kind::Sync | Kind::Query(_) | Kind::Function | Kind::Startup
        )
    }

    /// Whether the server could send `ty` in answer to this entry.
    fn accepts(&self, ty: u8) -> bool {
        match &self.kind {
            Kind::Startup => matches!(ty, b'R' | b'S' | b'K' | b'v' | b'E' | b'Z'),
            // A query always gets a result before its ReadyForQuery; one that has none yet
            // sees a ReadyForQuery of an earlier cycle (unless its result was lost).
            Kind::Query(q) => match ty {
                b'Z' => q.results > 0 || self.partial,
                b'T' | b'D' | b'C' | b'I' | b'E' | b'G' | b'H' | b'W' | b'd' | b'c' => true,
                _ => false,
            },
            Kind::Parse { .. } => matches!(ty, b'1' | b'E'),
            Kind::Bind => matches!(ty, b'2' | b'E'),
            Kind::Describe => matches!(ty, b't' | b'T' | b'n' | b'E'),
            Kind::Close { .. } => matches!(ty, b'3' | b'E'),
            Kind::Execute(_) => matches!(
                ty,
                b'D' | b'C' | b'I' | b's' | b'E' | b'G' | b'H' | b'W' | b'd' | b'c'
            ),
            Kind::Sync => ty == b'Z',
            Kind::Function => matches!(ty, b'V' | b'E' | b'Z'),
            Kind::Lost => true,
        }
    }
}

#[derive(Default)]
pub(super) struct Session {
    queue: VecDeque<Entry>,
    queue_text: usize,
    stmts: HashMap<String, Prepared>,
    stmt_bytes: usize,
    generation: u64,
    portals: HashMap<String, Target>,
    /// Executes sent so far (to tell whether a Parse or Bind belongs to the next Execute).
    executes: u64,
    /// After an ErrorResponse in extended mode: the server discards messages up to Sync.
    skipping: bool,
    /// ts where the backend lost framing (or joined mid-stream), until a clean ReadyForQuery:
    /// statements paired meanwhile may have lost responses.
    back_lost: Option<u64>,
    /// ts from which pairing may be shifted (frontend messages lost, responses skipped, joined
    /// mid-stream), until a clean ReadyForQuery.
    realign: Option<u64>,
    /// Backend framing was lost at this ts and the next backend message is the first after it.
    resume: Option<u64>,
    /// Client bytes were lost or skipped at some point: a statement or portal not known may
    /// have been defined in them (rather than before the capture).
    pub(super) front_lost: bool,
    /// Requests waiting for their one-byte answer: b'S' (SSL) or b'G' (GSS).
    answers: VecDeque<u8>,
    /// An answer fell into a gap: what the client sends next tells.
    answer_unknown: bool,
    pub(super) front_clean: bool,
    pub(super) encrypted: bool,
    pub(super) user: Option<String>,
    pub(super) database: Option<String>,
    pub(super) done: Vec<Statement>,
    pub(super) stats: PgStats,
}

impl Session {
    pub(super) fn skipped(&mut self, n: u64) {
        self.stats.bytes_skipped = self.stats.bytes_skipped.saturating_add(n);
    }

    fn unmatched(&mut self, ty: u8) {
        // Rows and copy data are counted through the message they belong to.
        if !matches!(ty, b'D' | b'd') {
            self.stats.unmatched_responses = self.stats.unmatched_responses.saturating_add(1);
        }
    }

    // ---- encryption handshake ----

    pub(super) fn answer_pending(&self) -> bool {
        !self.answers.is_empty()
    }

    /// The backend's byte where an SSL/GSS answer is due. Returns whether it was the answer.
    pub(super) fn answer(&mut self, b: u8) -> bool {
        match b {
            b'N' => {
                self.answers.pop_front();
                true
            }
            b'S' | b'G' => {
                self.answers.pop_front();
                self.set_encrypted();
                true
            }
            _ => {
                // Not an answer (an old server's ErrorResponse): parse it as a message.
                self.answers.clear();
                false
            }
        }
    }

    pub(super) fn answer_lost(&mut self) {
        self.answers.pop_front();
        self.answer_unknown = true;
    }

    /// An encryption request may have been accepted.
    pub(super) fn secure_unanswered(&self) -> bool {
        !self.answers.is_empty() || self.answer_unknown
    }

    pub(super) fn set_encrypted(&mut self) {
        if !self.encrypted {
            self.encrypted = true;
            self.stats.encrypted_sessions = self.stats.encrypted_sessions.saturating_add(1);
        }
        self.queue.clear();
        self.queue_text = 0;
    }

    // ---- framing events ----

    /// The direction's first bytes are not the start of the connection.
    pub(super) fn joined(&mut self, side: Side, ts: u64) {
        match side {
            Side::Front => {
                self.realign.get_or_insert(ts);
            }
            Side::Back => {
                self.back_lost.get_or_insert(ts);
            }
        }
    }

    /// Framing lost at a message boundary in a segment stamped `ts`; `definite`: bytes were
    /// missing there (a gap), rather than garbage.
    pub(super) fn lost(&mut self, side: Side, ts: u64, definite: bool) {
        match side {
            Side::Front => {
                if definite {
                    // Messages were lost: their answers will come.
                    self.enqueue(Entry::new(Kind::Lost, ts, true));
                }
                // A lost (or mangled) Bind or Parse may have changed what these refer to.
                self.front_lost = true;
                self.portals.clear();
                self.unregister_any("");
            }
            Side::Back => {
                self.back_lost.get_or_insert(ts);
                self.resume = Some(ts);
                if let Some(e) = self.queue.front_mut() {
                    e.partial = true;
                    if let Kind::Query(q) = &mut e.kind {
                        q.lost = true;
                    }
                }
            }
        }
    }

    /// Statements paired now may be off.
    fn unsure(&self) -> bool {
        self.back_lost.is_some() || self.realign.is_some()
    }

    /// A ReadyForQuery (at `ts`) completed a sync point. Pairing is known to be right again if
    /// no other waiting message was sent before it arrived: a client that does not pipeline
    /// sends nothing before it has its ReadyForQuery, so if we were one answer behind, the
    /// message really answered would still be waiting here; a pipelining client has then
    /// drained its pipeline.
    fn clean_ready(&mut self, ts: u64) {
        if self.queue.iter().all(|e| e.start >= ts) {
            self.back_lost = None;
            self.realign = None;
        }
    }

    /// First backend message after the backend lost framing at `lost_ts`, at `ts`. A client
    /// that does not pipeline sends a request only once it has all the answers to the ones
    /// before: so if requests were sent between the loss and now, the answer now is for the
    /// newest batch of them, and the answers of everything before that batch were in the lost
    /// bytes. Those entries are closed here (partial) instead of taking answers that are not
    /// theirs. A pipelining client may make this wrong, but only while `back_lost` keeps the
    /// statements partial.
    fn resumed(&mut self, lost_ts: u64, ts: u64) {
        let Some(newest) = self
            .queue
            .iter()
            .rposition(|e| e.start > lost_ts && e.start < ts)
        else {
            return;
        };
        // Its batch starts after the last sync point (or lost messages) before it.
        let batch = self
            .queue
            .iter()
            .take(newest)
            .rposition(|e| e.is_sync_point() || matches!(e.kind, Kind::Lost))
            .map_or(0, |i| i + 1);
        if batch == 0 {
            return;
        }
        for _ in 0..batch {
            let Some(e) = self.pop() else { break };
            if self.skipping {
                // The ReadyForQuery ending the skip after an error was in the lost bytes.
                self.skipping = !self.skip_entry(e);
            } else {
                self.unanswered(e, lost_ts);
            }
        }
        if let Some(e) = self.queue.front_mut() {
            e.partial = true;
        }
        self.realign.get_or_insert(ts);
    }

    // ---- frontend ----

    pub(super) fn front_msg(&mut self, m: &Msg) {
        match m.ty {
            0 => self.startup(m),
            b'Q' => {
                let (text, partial) = cstr_text(m.body, m.complete);
                if let Some(t) = &text {
                    self.sql_side_effects(t);
                }
                let pieces = text
                    .as_deref()
                    .filter(|t| partial || t.contains(';'))
                    .map(sql::statement_ranges)
                    .filter(|p| partial || p.len() > 1)
                    .unwrap_or_default();
                let q = QueryState {
                    text,
                    pieces,
                    cut: partial,
                    lost: false,
                    next_start: m.start_ts,
                    results: 0,
                    activity: false,
                };
                self.enqueue(Entry::new(Kind::Query(q), m.start_ts, partial));
            }
            b'P' => self.parse(m),
            b'B' => self.bind(m),
            b'D' => self.enqueue(Entry::new(Kind::Describe, m.start_ts, false)),
            b'E' => self.execute(m),
            b'C' => self.close_msg(m),
            b'S' => self.enqueue(Entry::new(Kind::Sync, m.start_ts, false)),
            b'F' => self.enqueue(Entry::new(Kind::Function, m.start_ts, false)),
            // Flush, Terminate, copy data/done/fail, password/SASL: nothing to pair.
            _ => {}
        }
    }

    fn startup(&mut self, m: &Msg) {
        match m.code {
            CODE_SSL | CODE_GSS => {
                if self.answers.len() < MAX_ANSWERS {
                    self.answers
                        .push_back(if m.code == CODE_SSL { b'S' } else { b'G' });
                }
            }
            CODE_CANCEL => {}
            _ => {
                self.answer_unknown = false;
                let mut it = m.body.split(|&b| b == 0);
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    if k.is_empty() {
                        break;
                    }
                    let v = String::from_utf8_lossy(v).into_owned();
                    match k {
                        b"user" => self.user = Some(v),
                        b"database" => self.database = Some(v),
                        _ => {}
                    }
                }
                self.enqueue(Entry::new(Kind::Startup, m.start_ts, !m.complete));
            }
        }
    }

    fn parse(&mut self, m: &Msg) {
        let kind = match cstr(m.body) {
            Some((name, rest)) => {
                let name = lossy(name);
                let (text, partial) = cstr_text(rest, m.complete);
                let (generation, replaced) =
                    self.register(&name, text.clone(), partial, m.start_ts);
                Kind::Parse {
                    name: Some(name),
                    text,
                    partial,
                    generation: Some(generation),
                    replaced,
                }
            }
            None => {
                if m.complete {
                    self.stats.invalid_messages = self.stats.invalid_messages.saturating_add(1);
                }
                // The name is not known: if it was "", the old unnamed statement is gone, and
                // a statement unknown to us now exists.
                self.unregister_any("");
                self.front_lost = true;
                Kind::Parse {
                    name: None,
                    text: None,
                    partial: true,
                    generation: None,
                    replaced: None,
                }
            }
        };
        self.enqueue(Entry::new(kind, m.start_ts, false));
    }

    fn bind(&mut self, m: &Msg) {
        let names = cstr(m.body).and_then(|(portal, rest)| Some((portal, cstr(rest)?.0)));
        match names {
            Some((portal, stmt)) => {
                let stmt = lossy(stmt);
                let target = match self.stmts.get(&stmt) {
                    Some(p) => Target {
                        text: p.text.clone(),
                        partial: p.partial,
                        name: Some(stmt),
                        // A Parse sent since the last Execute is part of this execution.
                        start: if p.parsed_at == self.executes {
                            p.parsed_ts.min(m.start_ts)
                        } else {
                            m.start_ts
                        },
                        bound_at: self.executes,
                    },
                    // Prepared before we saw the connection (or forgotten): honest None.
                    None => Target {
                        name: Some(stmt),
                        text: None,
                        partial: self.front_lost,
                        start: m.start_ts,
                        bound_at: self.executes,
                    },
                };
                let portal = lossy(portal);
                if self.portals.len() >= MAX_PORTALS && !self.portals.contains_key(&portal) {
                    self.portals.clear();
                }
                self.portals.insert(portal, target);
            }
            None => {
                if m.complete {
                    self.stats.invalid_messages = self.stats.invalid_messages.saturating_add(1);
                }
                // Which portal this bound is unknown: forget them all rather than run a stale
                // one.
                self.portals.clear();
                self.front_lost = true;
            }
        }
        self.enqueue(Entry::new(Kind::Bind, m.start_ts, false));
    }

    fn execute(&mut self, m: &Msg) {
        let target = match cstr(m.body) {
            Some((portal, _)) => self.portals.get(&lossy(portal)).cloned(),
            None => {
                if m.complete {
                    self.stats.invalid_messages = self.stats.invalid_messages.saturating_add(1);
                }
                self.front_lost = true;
                None
            }
        };
        let target = target.unwrap_or(Target {
            start: m.start_ts,
            bound_at: self.executes,
            partial: self.front_lost,
            ..Target::default()
        });
        // A portal executed again (after PortalSuspended) starts with this Execute.
        let start = if target.bound_at == self.executes {
            target.start.min(m.start_ts)
        } else {
            m.start_ts
        };
        self.executes += 1;
        if let Some(t) = target.text.clone() {
            self.sql_side_effects(&t);
        }
        self.enqueue(Entry::new(Kind::Execute(target), start, false));
    }

    fn close_msg(&mut self, m: &Msg) {
        let named = m.body.get(1..).and_then(cstr).map(|(n, _)| lossy(n));
        let restore = match (m.body.first(), named) {
            (Some(b'S'), Some(name)) => self.unregister_any(&name).map(|p| (name, p)),
            (Some(b'P'), Some(name)) => {
                self.portals.remove(&name);
                None
            }
            _ => {
                // Something unknown was closed.
                self.front_lost = true;
                None
            }
        };
        self.enqueue(Entry::new(Kind::Close { restore }, m.start_ts, false));
    }

    /// SQL that drops prepared statements behind the protocol's back.
    fn sql_side_effects(&mut self, text: &str) {
        match sql::deallocation(text) {
            Some(Dealloc::All) => {
                self.stmts.retain(|k, _| k.is_empty());
                self.recount_stmt_bytes();
            }
            Some(Dealloc::Named(name)) => {
                self.unregister_any(&name);
            }
            Some(Dealloc::Discard) => {
                self.stmts.clear();
                self.stmt_bytes = 0;
                self.portals.clear();
            }
            None => {}
        }
    }

    // ---- prepared statements ----

    /// A Parse defines `name` (sent, not yet answered). Returns the new definition's generation
    /// and the one it replaced.
    ///
    /// The server refuses to redefine an existing named statement, so a client sends such a
    /// Parse only when the old one is gone: most likely we missed its Close or DEALLOCATE (some
    /// clients reuse names). So the new text is taken, and the old one is put back if the
    /// server does refuse it (or skips the Parse after an error).
    fn register(
        &mut self,
        name: &str,
        text: Option<Arc<str>>,
        partial: bool,
        ts: u64,
    ) -> (u64, Option<Prepared>) {
        let old = self.unregister_any(name);
        // A failed Parse of the unnamed statement leaves none: nothing to put back.
        let replaced = old.filter(|_| !name.is_empty());
        self.generation += 1;
        let generation = self.generation;
        self.insert_stmt(
            name.to_owned(),
            Prepared {
                text,
                partial,
                generation,
                parsed_ts: ts,
                parsed_at: self.executes,
            },
        );
        while self.stmts.len() > MAX_PREPARED || self.stmt_bytes > MAX_PREPARED_BYTES {
            // Forget the oldest other statement; a later use of it reports query None.
            let oldest = self
                .stmts
                .iter()
                .filter(|(_, p)| p.generation != generation)
                .min_by_key(|(_, p)| p.generation)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    self.unregister_any(&k);
                }
                None => break,
            }
        }
        (generation, replaced)
    }

    fn insert_stmt(&mut self, name: String, p: Prepared) {
        self.stmt_bytes += name.len() + p.text.as_ref().map_or(0, |t| t.len());
        self.stmts.insert(name, p);
    }

    fn unregister_any(&mut self, name: &str) -> Option<Prepared> {
        let p = self.stmts.remove(name)?;
        self.stmt_bytes = self
            .stmt_bytes
            .saturating_sub(name.len() + p.text.as_ref().map_or(0, |t| t.len()));
        Some(p)
    }

    /// Undoes a Parse that the server did not carry out (failed or skipped).
    fn undo_parse(&mut self, kind: Kind) {
        let Kind::Parse {
            name: Some(name),
            generation: Some(generation),
            replaced,
            ..
        } = kind
        else {
            return;
        };
        if self
            .stmts
            .get(&name)
            .is_some_and(|p| p.generation == generation)
        {
            self.unregister_any(&name);
            if let Some(old) = replaced {
                self.insert_stmt(name, old);
            }
        }
    }

    fn recount_stmt_bytes(&mut self) {
        self.stmt_bytes = self
            .stmts
            .iter()
            .map(|(k, p)| k.len() + p.text.as_ref().map_or(0, |t| t.len()))
            .sum();
    }

    // ---- queue ----

    fn enqueue(&mut self, e: Entry) {
        if matches!(e.kind, Kind::Lost)
            && matches!(self.queue.back(), Some(b) if matches!(b.kind, Kind::Lost))
        {
            return;
        }
        self.queue_text += e.text_len();
        self.queue.push_back(e);
        while (self.queue.len() > MAX_PENDING || self.queue_text > MAX_PENDING_TEXT)
            && self.queue.len() > 1
        {
            // Drop the oldest; a Lost entry in its place absorbs its responses so that the
            // following ones stay aligned.
            let mut old = self.pop();
            if matches!(
                old,
                Some(Entry {
                    kind: Kind::Lost,
                    ..
                })
            ) {
                old = self.pop();
            }
            if let Some(old) = old
                && matches!(old.kind, Kind::Execute(_) | Kind::Query(_))
            {
                self.stats.dropped_statements = self.stats.dropped_statements.saturating_add(1);
            }
            let start = self.queue.front().map_or(0, |e| e.start);
            self.queue.push_front(Entry::new(Kind::Lost, start, true));
        }
    }

    fn pop(&mut self) -> Option<Entry> {
        let e = self.queue.pop_front()?;
        self.queue_text = self.queue_text.saturating_sub(e.text_len());
        Some(e)
    }

    // ---- backend ----

    pub(super) fn back_msg(&mut self, m: &Msg) {
        let ty = m.ty;
        // Asynchronous messages can come at any time.
        if ty == b'N' || ty == b'A' {
            return;
        }
        let head_is_startup =
            matches!(self.queue.front(), Some(e) if matches!(e.kind, Kind::Startup));
        if ty == b'S' && !head_is_startup {
            return;
        }
        if let Some(l) = self.resume.take() {
            self.resumed(l, m.start_ts);
        }
        if self.skipping {
            if ty == b'Z' {
                let sync = self.queue.iter().find(|e| matches!(e.kind, Kind::Sync));
                if sync.is_some_and(|s| s.start > m.end_ts) {
                    // Sent after this ReadyForQuery: not what it answers.
                    self.unmatched(ty);
                } else {
                    self.ready_after_error(m.start_ts);
                }
                return;
            }
            if self.back_lost.is_none() {
                self.unmatched(ty);
                return;
            }
            // Answers while skipping, after backend bytes were lost: the ReadyForQuery that
            // ended the skip was among them.
            self.ready_after_error(m.start_ts);
        }
        let Some(head) = self.queue.front() else {
            self.unmatched(ty);
            return;
        };
        // Causality: nothing sent after this message's last byte can have caused it (and the
        // entries behind the head were sent later still).
        if head.start > m.end_ts {
            self.unmatched(ty);
            return;
        }
        if !head.accepts(ty) {
            // A ReadyForQuery that no waiting entry can have caused belongs to messages we
            // never saw; so does an error where only a ReadyForQuery is due.
            let stray_z = ty == b'Z' && (self.realign.is_some() || head.is_sync_point());
            if stray_z || ty == b'E' {
                self.unmatched(ty);
                return;
            }
            let Some(k) = self
                .queue
                .iter()
                .position(|e| e.accepts(ty))
                .filter(|&k| self.queue[k].start <= m.end_ts)
            else {
                self.unmatched(ty);
                return;
            };
            for _ in 0..k {
                if let Some(e) = self.pop() {
                    self.unanswered(e, m.end_ts);
                }
            }
            self.realign.get_or_insert(m.start_ts);
        }
        self.dispatch(m);
    }

    /// The head accepts `m`.
    fn dispatch(&mut self, m: &Msg) {
        enum Act {
            Nothing,
            /// The head is answered.
            Pop,
            /// A statement of the simple query at the head ended: (its text, start, partial, rows
            /// returned).
            QueryResult(Option<String>, u64, bool, bool),
            ExecuteEnd,
            ExtendedError,
            LostEnd,
            Unmatched,
        }
        let ty = m.ty;
        let Some(head) = self.queue.front_mut() else {
            return;
        };
        head.last = m.end_ts;
        head.returned |= matches!(ty, b'D' | b'H');
        let act = match (&mut head.kind, ty) {
            (Kind::Startup, b'Z' | b'E') => Act::Pop,
            (Kind::Startup, _) => Act::Nothing,
            (Kind::Query(q), b'C' | b'I' | b'E') => {
                let start = q.next_start;
                let text = q.current().map(str::to_owned);
                q.next_start = m.end_ts;
                q.results += 1;
                q.activity = false;
                let returned = std::mem::take(&mut head.returned);
                Act::QueryResult(text, start, head.partial, returned)
            }
            (Kind::Query(_), b'Z') => Act::Pop,
            (Kind::Query(q), _) => {
                q.activity = true;
                Act::Nothing
            }
            (Kind::Describe, b't') => Act::Nothing,
            (Kind::Execute(_), b'C' | b'I' | b's' | b'E') => Act::ExecuteEnd,
            (Kind::Execute(_), _) => Act::Nothing,
            (Kind::Function, b'V' | b'E') => Act::Nothing,
            (Kind::Lost, b'Z') => Act::LostEnd,
            (Kind::Lost, _) => Act::Unmatched,
            (_, b'E') => Act::ExtendedError,
            // ParseComplete, BindComplete, CloseComplete, RowDescription/NoData (Describe),
            // ReadyForQuery (Sync, Function).
            _ => Act::Pop,
        };
        match act {
            Act::Nothing => {}
            Act::Pop => {
                if let Some(e) = self.pop()
                    && ty == b'Z'
                {
                    // A query whose results were lost (or cut) still ran.
                    if matches!(&e.kind, Kind::Query(q) if q.results == 0 || q.activity) {
                        self.unanswered(e, m.end_ts);
                    }
                    self.clean_ready(m.start_ts);
                }
            }
            Act::QueryResult(text, start, partial, returned) => {
                let seen = Seen { partial, returned };
                self.emit(text, None, false, start, m, seen);
            }
            Act::ExecuteEnd => {
                if let Some(Entry {
                    kind: Kind::Execute(t),
                    start,
                    partial,
                    returned,
                    ..
                }) = self.pop()
                {
                    let seen = Seen {
                        partial: partial || t.partial,
                        returned,
                    };
                    self.emit(owned(&t.text), t.name, true, start, m, seen);
                }
                if ty == b'E' {
                    self.skipping = true;
                }
            }
            Act::ExtendedError => {
                if let Some(e) = self.pop() {
                    self.extended_error(e, m);
                }
            }
            Act::LostEnd => {
                self.pop();
                self.realign.get_or_insert(m.start_ts);
            }
            Act::Unmatched => self.unmatched(ty),
        }
    }

    /// An ErrorResponse to Parse, Bind, Describe or Close (popped as `e`): the statement the
    /// client meant to run fails here, and the server skips everything up to Sync.
    fn extended_error(&mut self, e: Entry, m: &Msg) {
        self.skipping = true;
        let exec = self
            .queue
            .iter()
            .take_while(|x| !x.is_sync_point() && !matches!(x.kind, Kind::Lost))
            .find(|x| matches!(x.kind, Kind::Execute(_)));
        if let Some(Entry {
            kind: Kind::Execute(t),
            start,
            partial,
            ..
        }) = exec
        {
            let (t, start, partial) = (t.clone(), *start, *partial || t.partial);
            self.emit(owned(&t.text), t.name, true, start, m, Seen::lost(partial));
        } else if let Kind::Parse {
            name,
            text,
            partial,
            ..
        } = &e.kind
        {
            // A failed Parse with nothing executed after it: still the span of an error.
            let (name, text, partial) = (name.clone(), text.clone(), *partial || e.partial);
            self.emit(owned(&text), name, true, e.start, m, Seen::lost(partial));
        }
        self.undo_parse(e.kind);
    }

    /// ReadyForQuery while skipping after an error: the skipped messages were never carried
    /// out.
    fn ready_after_error(&mut self, ts: u64) {
        self.skipping = false;
        let mut clean = false;
        while let Some(e) = self.pop() {
            let sync = matches!(e.kind, Kind::Sync);
            if self.skip_entry(e) {
                clean = sync;
                break;
            }
        }
        if clean {
            self.clean_ready(ts);
        } else {
            self.realign.get_or_insert(ts);
        }
    }

    /// An entry the server skipped after an error: undone. Returns whether it ends the skip
    /// (a Sync, or lost messages that may have held it).
    fn skip_entry(&mut self, e: Entry) -> bool {
        match e.kind {
            k @ Kind::Parse { .. } => self.undo_parse(k),
            Kind::Close {
                restore: Some((name, p)),
            } if !self.stmts.contains_key(&name) => self.insert_stmt(name, p),
            Kind::Sync | Kind::Lost => return true,
            _ => {}
        }
        false
    }

    /// An entry popped without its response (lost, or the connection closed).
    fn unanswered(&mut self, e: Entry, end: u64) {
        match e.kind {
            Kind::Execute(t) => {
                let partial = Statement {
                    query: owned(&t.text),
                    prepared_name: t.name,
                    extended: true,
                    start_ns: e.start,
                    end_ns: end.max(e.start),
                    command_tag: None,
                    rows: None,
                    error: None,
                    partial: true,
                };
                self.done.push(partial);
            }
            Kind::Query(q) if q.results == 0 || q.activity => {
                self.done.push(Statement {
                    query: q.current().map(str::to_owned),
                    prepared_name: None,
                    extended: false,
                    start_ns: q.next_start,
                    end_ns: end.max(q.next_start),
                    command_tag: None,
                    rows: None,
                    error: None,
                    partial: true,
                });
            }
            _ => {}
        }
    }

    /// A statement ended by `m` (CommandComplete, EmptyQueryResponse, PortalSuspended or
    /// ErrorResponse); `text` becomes its query text as is.
    fn emit(
        &mut self,
        text: Option<String>,
        prepared_name: Option<String>,
        extended: bool,
        start: u64,
        m: &Msg,
        seen: Seen,
    ) {
        let partial = seen.partial;
        let mut st = Statement {
            query: text,
            prepared_name,
            extended,
            start_ns: start,
            end_ns: m.end_ts.max(start),
            command_tag: None,
            rows: None,
            error: None,
            partial: partial || self.unsure(),
        };
        match m.ty {
            b'C' => {
                let (tag, cut) = cstr_text(m.body, m.complete);
                if let Some(tag) = tag {
                    if !cut {
                        // Rows may have gone by unseen in a partial exchange.
                        st.rows = returned_rows(&tag, seen.returned || st.partial);
                    }
                    st.command_tag = Some(tag.to_string());
                }
                st.partial |= cut;
            }
            b'E' => {
                st.error = Some(parse_error(m.body));
                st.partial |= !m.complete;
            }
            _ => {}
        }
        self.done.push(st);
    }

    /// The connection closed: what is still waiting ends here, partial.
    pub(super) fn close(&mut self) {
        let mut skipping = self.skipping;
        while let Some(e) = self.pop() {
            if skipping {
                if matches!(e.kind, Kind::Sync) {
                    skipping = false;
                }
                continue;
            }
            let end = e.last;
            self.unanswered(e, end);
        }
        self.skipping = false;
        self.resume = None;
        self.answers.clear();
    }
}

/// A statement's own copy of a shared text.
impl Events for Session {
    fn encrypted(&self) -> bool {
        self.encrypted
    }
    fn set_encrypted(&mut self) {
        Session::set_encrypted(self);
    }
    fn front_clean(&self) -> bool {
        self.front_clean
    }
    fn set_front_clean(&mut self) {
        self.front_clean = true;
    }
    fn set_front_lost(&mut self) {
        self.front_lost = true;
    }
    fn joined(&mut self, side: Side, ts: u64) {
        Session::joined(self, side, ts);
    }
    fn answer_pending(&self) -> bool {
        Session::answer_pending(self)
    }
    fn answer(&mut self, b: u8) -> bool {
        Session::answer(self, b)
    }
    fn answer_lost(&mut self) {
        Session::answer_lost(self);
    }
    fn secure_unanswered(&self) -> bool {
        Session::secure_unanswered(self)
    }
    fn lost(&mut self, side: Side, ts: u64, definite: bool) {
        Session::lost(self, side, ts, definite);
    }
    fn front_msg(&mut self, m: &Msg) {
        Session::front_msg(self, m);
    }
    fn back_msg(&mut self, m: &Msg) {
        Session::back_msg(self, m);
    }
    fn skipped(&mut self, n: u64) {
        Session::skipped(self, n);
    }
    fn invalid_message(&mut self) {
        self.stats.invalid_messages = self.stats.invalid_messages.saturating_add(1);
    }
    fn resynced(&mut self) {
        self.stats.resyncs = self.stats.resyncs.saturating_add(1);
    }
}

fn owned(text: &Option<Arc<str>>) -> Option<String> {
    text.as_deref().map(str::to_owned)
}

/// NUL-terminated string at the start of `b` and what follows it.
fn cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = b.iter().position(|&x| x == 0)?;
    Some((&b[..i], &b[i + 1..]))
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Text of a NUL-terminated string that may be cut: (text, cut). A cut text is what was
/// captured, without a trailing partial UTF-8 sequence; None if nothing was.
fn cstr_text(b: &[u8], complete: bool) -> (Option<Arc<str>>, bool) {
    if let Some((s, _)) = cstr(b) {
        return (Some(Arc::from(lossy(s))), false);
    }
    let cut = !complete || !b.is_empty();
    if b.is_empty() {
        return (None, true);
    }
    let valid = match std::str::from_utf8(b) {
        Ok(_) => b.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => b.len(),
    };
    (Some(Arc::from(lossy(&b[..valid]))), cut)
}

/// What was seen of a statement's exchange, besides the message that ended it.
#[derive(Clone, Copy, Debug)]
struct Seen {
    /// Its request or response lost bytes.
    partial: bool,
    /// The server sent it rows (DataRow, CopyOutResponse).
    returned: bool,
}

impl Seen {
    /// Ended by an error: no rows to count.
    fn lost(partial: bool) -> Self {
        Self {
            partial,
            returned: false,
        }
    }
}

/// `db.response.returned_rows` from a CommandComplete tag: the rows the server sent back
/// (`returned`: DataRow or CopyOutResponse seen) for a SELECT or FETCH, an INSERT/UPDATE/
/// DELETE/MERGE ... RETURNING or a COPY ... TO STDOUT; a SELECT or FETCH of no rows returned
/// zero. Rows only written (`CREATE TABLE AS` and `SELECT INTO` are tagged SELECT too), copied
/// in or skipped (MOVE) are not returned rows.
pub(super) fn returned_rows(tag: &str, returned: bool) -> Option<u64> {
    let rows = rows_of(tag)?;
    match tag.split(' ').next()? {
        "SELECT" | "FETCH" if returned || rows == 0 => Some(rows),
        "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "COPY" if returned => Some(rows),
        _ => None,
    }
}

/// The row count of a CommandComplete tag.
fn rows_of(tag: &str) -> Option<u64> {
    let words: Vec<&str> = tag.split(' ').collect();
    let n = match (words.first().copied()?, words.len()) {
        ("INSERT", 3) => words[2],
        ("SELECT" | "UPDATE" | "DELETE" | "COPY" | "FETCH" | "MOVE" | "MERGE", 2) => words[1],
        _ => return None,
    };
    n.parse().ok()
}

/// ErrorResponse fields, as far as captured.
pub(super) fn parse_error(body: &[u8]) -> PgError {
    let mut severity_l = None;
    let mut severity_v = None;
    let mut sqlstate = String::new();
    let mut message = String::new();
    let mut rest = body;
    while let Some((&t, after)) = rest.split_first() {
        if t == 0 {
            break;
        }
        let (value, next) = match cstr(after) {
            Some(x) => x,
            None => (after, &[][..]),
        };
        let value = lossy(value);
        match t {
            b'S' => severity_l = Some(value),
            b'V' => severity_v = Some(value),
            b'C' => sqlstate = value,
            b'M' => message = value,
            _ => {}
        }
        rest = next;
    }
    PgError {
        severity: severity_v.or(severity_l).unwrap_or_default(),
        sqlstate,
        message,
    }
}
