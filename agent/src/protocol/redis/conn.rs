//! The session: requests waiting for replies (FIFO), pub/sub and database state, finished calls.

use std::collections::VecDeque;

use super::{
    Call, MAX_ERROR, RedisStats,
    command::{self, MAX_NAME},
    resp::{Event, Msg, Side},
};

/// Commands waiting for a reply at most; more are counted in
/// [`RedisStats::dropped_calls`] and their replies absorbed without a call.
pub const MAX_PENDING: usize = 1024;
/// Finished calls kept until [`super::RedisConn::take_calls`]; more are dropped (counted).
pub const MAX_DONE: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Plain,
    Select(Option<u32>),
    Hello(Option<u32>),
    Reset,
    /// `SUBSCRIBE`-like: the confirmation kind it expects, and how many are still to come
    /// (0: an unsubscribe of everything, ended by the confirmation whose count is 0).
    Sub {
        kind: &'static str,
        left: u32,
    },
}

#[derive(Debug)]
struct Pending {
    call: Call,
    kind: Kind,
    /// A reply byte was seen for it (a confirmation of several).
    replied: bool,
}

#[derive(Debug)]
enum Entry {
    Req(Box<Pending>),
    /// That many commands not tracked (queue full): their replies are absorbed.
    Untracked(u64),
}

#[derive(Default)]
pub(super) struct Session {
    queue: VecDeque<Entry>,
    pub done: Vec<Call>,
    pub stats: RedisStats,
    db: Option<u32>,
    subscribed: bool,
    /// Server framing was lost since the queue last drained: pairings may be off.
    unsynced: bool,
    /// Client bytes not understood since the last client command read (the open "dark"
    /// region): at most one command per 2 bytes (`X\n`) can hide in them.
    dark_bytes: u64,
    /// Upper bound on the replies still owed to commands not in the queue (commands lost in
    /// closed dark regions, commands closed after a server loss whose reply may come later),
    /// and the replies since taken by no queued command. While `dark_hi + dark_bytes / 2 >
    /// absorbed`, any reply may be one of those: every pairing is partial.
    dark_hi: u64,
    absorbed: u64,
    pub resp3: bool,
    /// Client bytes were lost since the last answered SELECT: the database may be wrong.
    db_uncertain: bool,
}

/// Client side: argument 1/2 only when the command needs it (never values).
pub(super) fn client_wants(idx: usize, before: &[Option<Vec<u8>>; 3]) -> usize {
    match idx {
        0 => MAX_NAME,
        _ => {
            let name = before[0].as_deref().and_then(command::name);
            command::wants(idx, name.as_deref())
        }
    }
}

/// Server side: the kind of a pub/sub frame (element 0) and its count (element 2).
pub(super) fn server_wants(idx: usize, _before: &[Option<Vec<u8>>; 3]) -> usize {
    match idx {
        0 => 16,
        2 => 24,
        _ => 0,
    }
}

const SUB_KINDS: [(&str, &str); 6] = [
    ("SUBSCRIBE", "subscribe"),
    ("PSUBSCRIBE", "psubscribe"),
    ("SSUBSCRIBE", "ssubscribe"),
    ("UNSUBSCRIBE", "unsubscribe"),
    ("PUNSUBSCRIBE", "punsubscribe"),
    ("SUNSUBSCRIBE", "sunsubscribe"),
];

fn lower(b: Option<&[u8]>) -> Option<String> {
    b.map(|b| String::from_utf8_lossy(b).to_ascii_lowercase())
}

/// The error line, bounded, without the arguments an `unknown command` error quotes.
fn error_text(raw: &[u8]) -> String {
    let mut s = String::from_utf8_lossy(&raw[..raw.len().min(MAX_ERROR)]).into_owned();
    if let Some(cut) = s.find(", with args beginning with:") {
        s.truncate(cut);
    }
    let mut end = s.len().min(MAX_ERROR);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s
}

impl Session {
    #[cfg(test)]
    pub fn buffered(&self) -> usize {
        self.queue.len() * std::mem::size_of::<Pending>()
    }

    pub fn on_event(&mut self, side: Side, ev: Event) {
        match (side, ev) {
            (_, Event::Attribute) => {
                self.stats.attributes = self.stats.attributes.saturating_add(1)
            }
            (Side::Client, Event::Skipped(n)) => {
                self.stats.bytes_skipped = self.stats.bytes_skipped.saturating_add(n);
                self.dark_bytes = self.dark_bytes.saturating_add(n);
                self.dark_grew();
            }
            (_, Event::Skipped(n)) => {
                self.stats.bytes_skipped = self.stats.bytes_skipped.saturating_add(n);
            }
            (Side::Client, Event::Msg(m)) => {
                // The dark region (if any) ends here.
                self.dark_hi = self.dark_hi.saturating_add(self.dark_bytes / 2);
                self.dark_bytes = 0;
                self.request(m, false);
            }
            (Side::Client, Event::Lost { started, dark, .. }) => {
                self.stats.resyncs = self.stats.resyncs.saturating_add(1);
                self.dark_bytes = self.dark_bytes.saturating_add(dark);
                self.dark_grew();
                // The started command may be a SELECT whose name was lost.
                let known = started
                    .as_ref()
                    .and_then(|m| m.elems[0].as_deref())
                    .and_then(command::name)
                    .is_some_and(|n| n != "SELECT");
                self.db_uncertain |= !known;
                // A command was begun: one reply is owed for it.
                if let Some(m) = started {
                    self.request(m, true);
                }
            }
            (Side::Server, Event::Msg(m)) => self.reply(m),
            (Side::Server, Event::Lost { ts, started, .. }) => {
                let was_dark = self.dark();
                self.lost();
                if was_dark {
                    // The reply being read may have been owed to a lost command: the first
                    // waiting command's reply may still come.
                    self.dark_hi = self.dark_hi.saturating_add(1);
                }
                if let Some(m) = started {
                    // The reply being read answers the first waiting command.
                    self.reply(m);
                }
                // Everything sent before the loss may have been answered in the lost bytes.
                while let Some(Entry::Req(p)) = self.queue.front() {
                    if p.call.start_ns > ts {
                        break;
                    }
                    if let Some(Entry::Req(mut p)) = self.queue.pop_front() {
                        p.call.partial = true;
                        p.call.database = self.db;
                        // Its reply may have been in the lost bytes, or may still come (the
                        // lost bytes held pushes, or replies owed to other commands).
                        self.dark_hi = self.dark_hi.saturating_add(1);
                        // Its reply was lost: assume the likely outcome, but not as known.
                        match p.kind {
                            Kind::Select(Some(n)) => {
                                self.db = Some(n);
                                self.db_uncertain = true;
                            }
                            Kind::Select(None) | Kind::Reset => self.db_uncertain = true,
                            _ => {}
                        }
                        self.finish(p.call);
                    }
                }
            }
        }
    }

    fn lost(&mut self) {
        self.stats.resyncs = self.stats.resyncs.saturating_add(1);
        self.unsynced = true;
    }

    /// The dark region may hold a command changing the database (`EXEC\n`, `RESET\n`,
    /// `SELECT 1\n`: 5 bytes at least).
    fn dark_grew(&mut self) {
        if self.dark_bytes >= 5 {
            self.db_uncertain = true;
        }
    }

    /// Some reply may be owed to a command not in the queue.
    fn dark(&self) -> bool {
        self.dark_hi.saturating_add(self.dark_bytes / 2) > self.absorbed
    }

    /// A reply no queued command can take: it answered a command lost or closed early.
    fn absorb(&mut self) {
        if !self.dark() {
            return;
        }
        self.absorbed = self.absorbed.saturating_add(1);
        if !self.dark() && self.dark_bytes == 0 {
            self.dark_hi = 0;
            self.absorbed = 0;
        }
    }

    /// The pairing of a reply taken now is not known to be right.
    fn unsure(&self) -> bool {
        self.unsynced || self.db_uncertain || self.dark()
    }

    /// A server read/write was processed.
    pub fn segment_done(&mut self, side: Side, lost: bool) {
        if side == Side::Server && !lost && self.queue.is_empty() {
            self.unsynced = false;
        }
    }

    fn request(&mut self, m: Msg, cut: bool) {
        let [e0, e1, e2] = &m.elems;
        let name = e0.as_deref().and_then(command::name);
        let args = u32::try_from(m.len.saturating_sub(1)).unwrap_or(u32::MAX);
        let (command, keys, kind) = match &name {
            Some(n) => {
                let kind =
                    match n.as_str() {
                        "SELECT" => Kind::Select(command::small_arg(e1.as_deref())),
                        "HELLO" => Kind::Hello(command::small_arg(e1.as_deref())),
                        "RESET" => Kind::Reset,
                        other => SUB_KINDS.iter().find(|(c, _)| *c == other).map_or(
                            Kind::Plain,
                            |(_, k)| Kind::Sub {
                                kind: k,
                                left: args,
                            },
                        ),
                    };
                (
                    command::full_name(n, e1.as_deref()),
                    command::keys(n, args, e1.as_deref(), e2.as_deref()),
                    kind,
                )
            }
            None => {
                // It may have been a SELECT.
                self.db_uncertain = true;
                (String::new(), 0, Kind::Plain)
            }
        };
        let call = Call {
            start_ns: m.start_ns,
            end_ns: m.start_ns,
            command,
            args,
            keys,
            error: None,
            database: None,
            partial: cut || m.lossy || self.unsynced || self.dark(),
        };
        if self.queue.len() >= MAX_PENDING {
            self.stats.dropped_calls = self.stats.dropped_calls.saturating_add(1);
            match self.queue.back_mut() {
                Some(Entry::Untracked(n)) => *n = n.saturating_add(1),
                _ => self.queue.push_back(Entry::Untracked(1)),
            }
            return;
        }
        self.queue.push_back(Entry::Req(Box::new(Pending {
            call,
            kind,
            replied: false,
        })));
    }

    fn reply(&mut self, m: Msg) {
        let kind0 = if matches!(m.ty, b'*' | b'>') {
            lower(m.elems[0].as_deref())
        } else {
            None
        };
        // An aggregate whose first element (its kind, for pub/sub frames) was in a gap.
        let unknown = m.lossy && matches!(m.ty, b'*' | b'>') && m.elems[0].is_none();
        let mut confirm = kind0
            .as_deref()
            .and_then(|k| SUB_KINDS.iter().find(|(_, c)| *c == k).map(|(_, c)| *c));
        if unknown {
            // Taken as a confirmation when one is expected: if it was a delivery, the
            // command ends early (partial, from `lossy`) and its last confirmation, seen
            // later, is counted as a push.
            if let Some(Entry::Req(p)) = self.queue.front()
                && let Kind::Sub { kind, .. } = p.kind
            {
                confirm = Some(kind);
            } else if m.ty == b'*' && self.subscribed {
                // A delivery or a reply: if a delivery, the first waiting command's reply is
                // still to come.
                self.dark_hi = self.dark_hi.saturating_add(1);
            }
        }
        if let Some(c) = confirm {
            let count = m.elems[2].as_deref().and_then(super::resp::int);
            if c.starts_with("un") || c.starts_with("pun") || c.starts_with("sun") {
                if count == Some(0) {
                    self.subscribed = false;
                }
            } else {
                self.subscribed = true;
            }
            if self.confirm(c, count, &m) {
                return;
            }
        }
        if m.ty == b'>'
            || (m.ty == b'*'
                && self.subscribed
                && (confirm.is_some()
                    || matches!(kind0.as_deref(), Some("message" | "pmessage" | "smessage"))))
        {
            self.stats.pushes = self.stats.pushes.saturating_add(1);
            return;
        }
        let front_ok = match self.queue.front_mut() {
            None => false,
            Some(Entry::Untracked(n)) => {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.queue.pop_front();
                }
                return;
            }
            Some(Entry::Req(p)) => p.call.start_ns <= m.end_ns,
        };
        if !front_ok {
            self.stats.unmatched_responses = self.stats.unmatched_responses.saturating_add(1);
            if !self.unsynced {
                self.absorb();
            }
            return;
        }
        let Some(Entry::Req(mut p)) = self.queue.pop_front() else {
            return;
        };
        p.call.end_ns = m.end_ns;
        p.call.partial |= m.lossy || self.unsure();
        p.call.database = self.db;
        // Whether this reply is really this command's is known.
        let sure = !(m.lossy || self.unsynced || self.dark());
        if m.lossy && matches!(p.kind, Kind::Select(_)) {
            // Whether this SELECT succeeded is not known.
            self.db_uncertain = true;
        }
        if matches!(m.ty, b'-' | b'!') {
            p.call.error = Some(m.elems[0].as_deref().map_or_else(String::new, error_text));
        } else {
            let ok = m.elems[0].as_deref();
            match p.kind {
                Kind::Select(Some(n)) if m.ty == b'+' && ok == Some(b"OK") => {
                    self.db = Some(n);
                    self.db_uncertain = !sure;
                }
                // Inside MULTI: it takes effect at EXEC (not followed).
                Kind::Select(_) if m.ty == b'+' && ok == Some(b"QUEUED") => {
                    self.db_uncertain = true;
                }
                // A SELECT whose index was in a gap.
                Kind::Select(None) if m.ty == b'+' => self.db_uncertain = true,
                Kind::Reset if m.ty == b'+' && ok == Some(b"RESET") => {
                    self.db = None;
                    self.subscribed = false;
                    self.db_uncertain = !sure;
                }
                Kind::Hello(Some(v)) if matches!(m.ty, b'%' | b'*') => self.resp3 = v == 3,
                _ => {}
            }
        }
        self.finish(p.call);
    }

    /// A (un)subscribe confirmation: counts it for the first waiting command if it expects
    /// that kind. True when it was used.
    fn confirm(&mut self, kind: &str, count: Option<i64>, m: &Msg) -> bool {
        let unsure = self.unsure();
        let Some(Entry::Req(p)) = self.queue.front_mut() else {
            return false;
        };
        let Kind::Sub { kind: want, left } = &mut p.kind else {
            return false;
        };
        if *want != kind || p.call.start_ns > m.end_ns {
            return false;
        }
        p.replied = true;
        p.call.end_ns = m.end_ns;
        p.call.partial |= m.lossy || unsure;
        let finished = if *left == 0 {
            count.is_none_or(|c| c <= 0)
        } else {
            *left -= 1;
            *left == 0
        };
        if finished && let Some(Entry::Req(mut p)) = self.queue.pop_front() {
            p.call.database = self.db;
            self.finish(p.call);
        }
        true
    }

    fn finish(&mut self, call: Call) {
        if self.done.len() >= MAX_DONE {
            self.stats.dropped_calls = self.stats.dropped_calls.saturating_add(1);
            return;
        }
        self.done.push(call);
    }

    pub fn close(&mut self) {
        while let Some(e) = self.queue.pop_front() {
            if let Entry::Req(mut p) = e {
                p.call.partial = true;
                if p.call.database.is_none() {
                    p.call.database = self.db;
                }
                let _ = p.replied;
                self.finish(p.call);
            }
        }
    }
}
