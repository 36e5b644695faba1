//! The conversation: connection phase (greeting, login, authentication), then commands paired
//! FIFO with their responses.

use std::collections::{BTreeMap, VecDeque};

use super::frame::{self, MAX_PACKET, Msg, Sink, cstr, le, lenenc};
use super::{Call, MAX_KEEP, MysqlError, MysqlStats};

/// Commands waiting for a response. A server that never answers (or a stream that only looks
/// like MySQL) must not make the queue grow without bound.
pub const MAX_PENDING: usize = 256;
/// Prepared statement texts remembered per connection, and their total size.
pub const MAX_PREPARED: usize = 1024;
const MAX_PREPARED_TEXT: usize = 4 << 20;
/// Bound of the server version and database names kept.
const MAX_NAME: usize = 256;

// Capability flags (protocol documentation names).
const CLIENT_MYSQL: u64 = 1;
const CLIENT_CONNECT_WITH_DB: u64 = 8;
const CLIENT_COMPRESS: u64 = 0x20;
const CLIENT_PROTOCOL_41: u64 = 0x200;
const CLIENT_SSL: u64 = 0x800;
const CLIENT_SECURE_CONNECTION: u64 = 0x8000;
const CLIENT_PLUGIN_AUTH_LENENC: u64 = 0x20_0000;
const CLIENT_SESSION_TRACK: u64 = 0x80_0000;
const CLIENT_DEPRECATE_EOF: u64 = 0x100_0000;
const CLIENT_ZSTD: u64 = 0x400_0000;
/// MariaDB extended capability (bit 36 of the 64-bit set).
const MARIADB_CACHE_METADATA: u64 = 1 << 36;

const SERVER_MORE_RESULTS_EXISTS: u16 = 0x08;
const SERVER_STATUS_CURSOR_EXISTS: u16 = 0x40;
const SERVER_SESSION_STATE_CHANGED: u16 = 0x4000;

// Commands.
pub(super) const COM_QUIT: u8 = 0x01;
pub(super) const COM_INIT_DB: u8 = 0x02;
pub(super) const COM_QUERY: u8 = 0x03;
const COM_FIELD_LIST: u8 = 0x04;
const COM_STATISTICS: u8 = 0x09;
const COM_PROCESS_INFO: u8 = 0x0a;
const COM_CHANGE_USER: u8 = 0x11;
const COM_BINLOG_DUMP: u8 = 0x12;
const COM_REGISTER_SLAVE: u8 = 0x15;
pub(super) const COM_STMT_PREPARE: u8 = 0x16;
pub(super) const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
pub(super) const COM_STMT_CLOSE: u8 = 0x19;
const COM_STMT_RESET: u8 = 0x1a;
const COM_STMT_FETCH: u8 = 0x1c;
const COM_BINLOG_DUMP_GTID: u8 = 0x1e;
const COM_STMT_BULK_EXECUTE: u8 = 0xfa;

/// Name of a command byte; None for bytes no client sends as a command.
pub(super) fn command_name(b: u8) -> Option<&'static str> {
    Some(match b {
        0x01 => "COM_QUIT",
        0x02 => "COM_INIT_DB",
        0x03 => "COM_QUERY",
        0x04 => "COM_FIELD_LIST",
        0x05 => "COM_CREATE_DB",
        0x06 => "COM_DROP_DB",
        0x07 => "COM_REFRESH",
        0x08 => "COM_SHUTDOWN",
        0x09 => "COM_STATISTICS",
        0x0a => "COM_PROCESS_INFO",
        0x0c => "COM_PROCESS_KILL",
        0x0d => "COM_DEBUG",
        0x0e => "COM_PING",
        0x11 => "COM_CHANGE_USER",
        0x12 => "COM_BINLOG_DUMP",
        0x15 => "COM_REGISTER_SLAVE",
        0x16 => "COM_STMT_PREPARE",
        0x17 => "COM_STMT_EXECUTE",
        0x18 => "COM_STMT_SEND_LONG_DATA",
        0x19 => "COM_STMT_CLOSE",
        0x1a => "COM_STMT_RESET",
        0x1b => "COM_SET_OPTION",
        0x1c => "COM_STMT_FETCH",
        0x1e => "COM_BINLOG_DUMP_GTID",
        0x1f => "COM_RESET_CONNECTION",
        0xfa => "COM_STMT_BULK_EXECUTE",
        _ => return None,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Nothing seen yet: the server's greeting is expected.
    Greeting,
    /// Greeting seen: the client's HandshakeResponse or SSLRequest is expected.
    Login,
    /// Authentication exchanges until the server's OK or ERR.
    Auth,
    Command,
    /// TLS, compression, replication stream, failed login: nothing more is parsed.
    Stopped,
}

/// Where the response to a command is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resp {
    /// Its first packet (of a result, for multi-results) is expected.
    Start,
    /// Column definitions still to come.
    Defs(u64),
    /// The EOF after the column definitions.
    DefsEof,
    Rows,
    /// PREPARE_OK seen: parameter definitions (then their EOF), then column definitions.
    PrepParams {
        left: u64,
        cols: u64,
    },
    PrepParamsEof {
        cols: u64,
    },
    PrepCols(u64),
    PrepColsEof,
    /// LOCAL INFILE requested: the client sends the file, ended by an empty packet.
    InFileData,
    /// COM_FIELD_LIST: definitions until EOF.
    FieldList,
}

struct Pending {
    cmd: u8,
    call: Call,
    resp: Resp,
    /// Sequence id of the next packet of this exchange.
    next_seq: u8,
    /// Stands for a command that was lost: gives no call.
    placeholder: bool,
    /// For COM_STMT_PREPARE: the text to remember under the returned id.
    prepare_text: Option<String>,
    /// For COM_INIT_DB: the database to switch to on OK (None inside: the name was cut by
    /// the capture, the database becomes unknown).
    init_db: Option<Option<String>>,
}

#[derive(Default)]
pub(super) struct Session {
    phase: Option<Phase>,
    pub(super) server_caps: u64,
    pub(super) client_caps: u64,
    /// The client's caps are known (its HandshakeResponse was seen).
    caps_known: bool,
    pub(super) server_version: Option<String>,
    pub(super) user: Option<String>,
    pub(super) database: Option<String>,
    pub(super) encrypted: bool,
    pending: VecDeque<Pending>,
    prepared: BTreeMap<u32, String>,
    prepared_text: usize,
    pub(super) stats: MysqlStats,
    pub(super) done: Vec<Call>,
    /// Pairing may be off until the next command sent with nothing waiting.
    dirty: bool,
    pub(super) front_lost: bool,
    pub(super) back_lost: bool,
    /// A client message arrived before any server byte: joined mid-stream.
    joined: bool,
}

fn lossy(b: &[u8], max: usize) -> String {
    let b = b.get(..b.len().min(max)).unwrap_or(b);
    let mut s = String::from_utf8_lossy(b).into_owned();
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

fn inc(c: &mut u64) {
    *c = c.saturating_add(1);
}

impl Session {
    fn phase(&self) -> Phase {
        self.phase.unwrap_or(Phase::Greeting)
    }

    pub(super) fn stopped(&self) -> bool {
        self.phase() == Phase::Stopped
    }

    fn caps(&self) -> u64 {
        self.server_caps & self.client_caps
    }

    /// CLIENT_DEPRECATE_EOF in both capability sets; None when the login was not seen.
    fn deprecate_eof(&self) -> Option<bool> {
        self.caps_known
            .then(|| self.caps() & CLIENT_DEPRECATE_EOF != 0)
    }

    fn anomaly(&mut self) {
        self.dirty = true;
        // Framing lost before the commands: the end of the login is unknowable, so commands
        // are looked for from here (capabilities unknown if the login was not read).
        if matches!(self.phase(), Phase::Greeting | Phase::Login | Phase::Auth) {
            self.phase = Some(Phase::Command);
        }
        for p in &mut self.pending {
            p.call.partial = true;
        }
    }

    // ---- client -> server ----

    fn client_message(&mut self, m: &Msg<'_>) {
        match self.phase() {
            Phase::Stopped => {}
            Phase::Greeting => {
                // No greeting: joined mid-stream (or the greeting was lost).
                self.joined = true;
                self.phase = Some(Phase::Command);
                self.dirty = true;
                self.client_message(m);
            }
            Phase::Login => self.login(m),
            Phase::Auth => {}
            Phase::Command if self.front_lost => {}
            Phase::Command => self.command(m),
        }
    }

    fn login(&mut self, m: &Msg<'_>) {
        let b = m.body;
        if m.seq != 1 || b.len() < 4 {
            inc(&mut self.stats.invalid_messages);
            self.phase = Some(Phase::Auth);
            return;
        }
        let caps16 = le(&b[..2]);
        if caps16 & CLIENT_PROTOCOL_41 == 0 {
            // HandshakeResponse320: capabilities (2), max packet (3), user.
            self.client_caps = caps16;
            self.caps_known = true;
            if let Some((user, _)) = b.get(5..).and_then(cstr) {
                self.user = Some(lossy(user, MAX_NAME));
            }
            self.after_login(m);
            return;
        }
        let mut caps = le(&b[..4]);
        if self.server_caps & CLIENT_MYSQL == 0
            && let Some(ext) = b.get(28..32)
        {
            caps |= le(ext) << 32;
        }
        self.client_caps = caps;
        self.caps_known = true;
        if m.len == 32 && caps & CLIENT_SSL != 0 {
            // SSLRequest: TLS from here.
            self.encrypted = true;
            inc(&mut self.stats.encrypted_sessions);
            self.phase = Some(Phase::Stopped);
            return;
        }
        // A cut message would give cut names.
        let Some(rest) = b.get(32..).filter(|_| !m.cut) else {
            inc(&mut self.stats.invalid_messages);
            self.after_login(m);
            return;
        };
        let mut i = 0;
        if let Some((user, n)) = cstr(rest) {
            self.user = Some(lossy(user, MAX_NAME));
            i += n;
            let auth_len = if caps & CLIENT_PLUGIN_AUTH_LENENC != 0 {
                rest.get(i..).and_then(lenenc)
            } else if caps & CLIENT_SECURE_CONNECTION != 0 {
                rest.get(i).map(|&v| (u64::from(v), 1))
            } else {
                rest.get(i..)
                    .and_then(cstr)
                    .map(|(s, n)| (s.len() as u64 + 1, n - s.len() - 1))
            };
            if let Some((len, n)) = auth_len {
                let j = (i as u64).saturating_add(n as u64).saturating_add(len);
                if caps & CLIENT_CONNECT_WITH_DB != 0
                    && let Some((db, _)) = usize::try_from(j)
                        .ok()
                        .and_then(|j| rest.get(j..))
                        .and_then(cstr)
                    && !db.is_empty()
                {
                    self.database = Some(lossy(db, MAX_NAME));
                }
            }
        }
        self.after_login(m);
    }

    fn after_login(&mut self, _m: &Msg<'_>) {
        if self.caps() & (CLIENT_COMPRESS | CLIENT_ZSTD) != 0 {
            inc(&mut self.stats.compressed_sessions);
            self.phase = Some(Phase::Stopped);
            return;
        }
        self.phase = Some(Phase::Auth);
    }

    fn command(&mut self, m: &Msg<'_>) {
        // LOCAL INFILE data goes to the command that asked for it.
        if let Some(p) = self.pending.back_mut()
            && p.resp == Resp::InFileData
        {
            if m.len == 0 {
                p.resp = Resp::Start;
            }
            p.next_seq = m.last_seq.wrapping_add(1);
            return;
        }
        let Some(&cmd) = m.body.first() else {
            if m.cut && m.seq == 0 {
                self.lost_command(m);
            } else {
                inc(&mut self.stats.invalid_messages);
                self.anomaly();
            }
            return;
        };
        let Some(name) = command_name(cmd).filter(|_| m.seq == 0) else {
            inc(&mut self.stats.invalid_messages);
            self.anomaly();
            return;
        };
        if self.pending.is_empty() && !self.front_lost && !self.back_lost {
            self.dirty = false;
        }
        let arg = m.body.get(1..).unwrap_or(&[]);
        let mut call = Call {
            command: name,
            query: None,
            statement_id: None,
            rows: None,
            affected: None,
            error: None,
            database: self.database.clone(),
            server_version: self.server_version.clone(),
            start_ns: m.start_ts,
            end_ns: m.end_ts,
            partial: self.dirty || m.cut,
        };
        let mut prepare_text = None;
        let mut init_db = None;
        match cmd {
            COM_QUIT => {
                self.close_pending();
                return;
            }
            COM_STMT_CLOSE => {
                if let Some(id) = arg.get(..4).map(le)
                    && let Some(t) = self.prepared.remove(&(id as u32))
                {
                    self.prepared_text = self.prepared_text.saturating_sub(t.len());
                }
                return;
            }
            COM_STMT_SEND_LONG_DATA => return,
            COM_QUERY => call.query = Some(lossy(arg, MAX_KEEP)),
            COM_INIT_DB => {
                let db = (!m.cut).then(|| lossy(arg, MAX_NAME));
                init_db = Some(db.clone());
                call.database = db;
            }
            COM_STMT_PREPARE => {
                let text = lossy(arg, MAX_KEEP);
                // A text cut by the capture is not remembered as the statement's.
                if !m.cut {
                    prepare_text = Some(text.clone());
                }
                call.query = Some(text);
            }
            COM_STMT_EXECUTE | COM_STMT_FETCH | COM_STMT_RESET | COM_STMT_BULK_EXECUTE => {
                if let Some(id) = arg.get(..4).map(le) {
                    let id = id as u32;
                    call.statement_id = Some(id);
                    call.query = self.prepared.get(&id).cloned();
                }
            }
            COM_BINLOG_DUMP | COM_BINLOG_DUMP_GTID | COM_REGISTER_SLAVE => {
                self.close_pending();
                self.phase = Some(Phase::Stopped);
                return;
            }
            COM_CHANGE_USER => {
                self.close_pending();
                self.phase = Some(Phase::Auth);
                return;
            }
            _ => {}
        }
        let resp = match cmd {
            COM_STMT_FETCH => Resp::Rows,
            COM_FIELD_LIST => Resp::FieldList,
            _ => Resp::Start,
        };
        if self.pending.len() >= MAX_PENDING
            && let Some(mut old) = self.pending.pop_front()
        {
            old.call.partial = true;
            inc(&mut self.stats.dropped_calls);
            self.done.push(old.call);
        }
        self.pending.push_back(Pending {
            cmd,
            call,
            resp,
            next_seq: m.last_seq.wrapping_add(1),
            prepare_text,
            init_db,
            placeholder: false,
        });
    }

    /// A command whose first byte is in a gap: a placeholder absorbs its answer (read as a
    /// query's: OK, ERR or a result set) and gives no call.
    fn lost_command(&mut self, m: &Msg<'_>) {
        self.anomaly();
        // It may have switched the database.
        self.database = None;
        let call = Call {
            command: "COM_QUERY",
            query: None,
            statement_id: None,
            rows: None,
            affected: None,
            error: None,
            database: None,
            server_version: None,
            start_ns: m.start_ts,
            end_ns: m.end_ts,
            partial: true,
        };
        if self.pending.len() >= MAX_PENDING {
            return;
        }
        self.pending.push_back(Pending {
            cmd: COM_QUERY,
            call,
            resp: Resp::Start,
            next_seq: m.last_seq.wrapping_add(1),
            prepare_text: None,
            init_db: None,
            placeholder: true,
        });
    }

    /// Everything waiting is finished as partial (at the last byte seen for it).
    pub(super) fn close_pending(&mut self) {
        while let Some(mut p) = self.pending.pop_front() {
            p.call.partial = true;
            self.emit(p);
        }
    }

    fn emit(&mut self, p: Pending) {
        // A database switch whose outcome was not seen: the database is unknown.
        let switch = p.init_db.is_some()
            || (p.cmd == COM_QUERY && p.call.query.as_deref().is_some_and(is_use));
        if switch && p.call.partial && p.call.error.is_none() {
            self.database = None;
        }
        // A successful COM_STMT_RESET is bookkeeping: no call.
        if p.placeholder || (p.cmd == COM_STMT_RESET && p.call.error.is_none()) {
            return;
        }
        self.done.push(p.call);
    }

    // ---- server -> client ----

    fn server_message(&mut self, m: &Msg<'_>) {
        match self.phase() {
            Phase::Stopped => {}
            Phase::Greeting => {
                if m.seq == 0 && self.greeting(m.body) {
                    self.phase = Some(Phase::Login);
                } else {
                    self.joined = true;
                    self.phase = Some(Phase::Command);
                    self.dirty = true;
                    self.server_message(m);
                }
            }
            Phase::Login => {
                // The server does not speak before the client's login (but an ERR such as
                // "too many connections" may come instead of the greeting).
                inc(&mut self.stats.invalid_messages);
            }
            Phase::Auth => match m.body.first() {
                Some(0x00) => self.phase = Some(Phase::Command),
                Some(0xff) => self.phase = Some(Phase::Stopped),
                _ => {}
            },
            Phase::Command if self.back_lost => {}
            Phase::Command => self.response(m),
        }
    }

    fn greeting(&mut self, b: &[u8]) -> bool {
        if b.first() != Some(&10) {
            return false;
        }
        let Some((version, n)) = b.get(1..).and_then(cstr) else {
            return false;
        };
        self.server_version = Some(lossy(version, MAX_NAME));
        // conn id (4), scramble (8), filler (1), caps low (2), charset (1), status (2), caps
        // high (2), auth data len (1), 6 reserved, MariaDB caps (4).
        let at = 1 + n;
        let low = b.get(at + 13..at + 15).map_or(0, le);
        let high = b.get(at + 18..at + 20).map_or(0, le);
        let mut caps = low | high << 16;
        if caps & CLIENT_MYSQL == 0
            && let Some(ext) = b.get(at + 27..at + 31)
        {
            caps |= le(ext) << 32;
        }
        self.server_caps = caps;
        true
    }

    fn response(&mut self, m: &Msg<'_>) {
        let Some(p) = self.pending.front() else {
            inc(&mut self.stats.unmatched_responses);
            self.lose_back(m.end_ts);
            return;
        };
        if m.start_ts < p.call.start_ns {
            // An answer to a request sent before this one: that request was lost.
            inc(&mut self.stats.unmatched_responses);
            self.lose_back(m.end_ts);
            return;
        }
        if m.seq != p.next_seq {
            self.anomaly();
            if m.seq == 1 && self.pending.len() > 1 {
                // The end of the head's answer was lost and this starts the next one.
                if let Some(p) = self.pending.pop_front() {
                    self.emit(p);
                }
                return self.response(m);
            }
        }
        let deprecate = self.deprecate_eof();
        let caps = self.caps();
        let Some(p) = self.pending.front_mut() else {
            return;
        };
        p.next_seq = m.last_seq.wrapping_add(1);
        p.call.end_ns = m.end_ts;
        // Only the first byte of a row or definition matters.
        let content_matters = !matches!(
            p.resp,
            Resp::Rows
                | Resp::Defs(_)
                | Resp::PrepParams { .. }
                | Resp::PrepCols(_)
                | Resp::FieldList
        );
        // ... unless it ends the result (EOF, OK, ERR).
        let ends = matches!(m.body.first(), Some(0xfe | 0xff));
        if m.cut && (m.body.is_empty() || content_matters || ends) {
            p.call.partial = true;
        }
        let b = m.body;
        let first = b.first().copied();
        let is_term = first == Some(0xfe) && m.len < u64::from(MAX_PACKET);
        let is_eof = first == Some(0xfe) && m.len < 9;
        if first == Some(0xff) {
            if b.get(1..3).map(le) == Some(0xffff) {
                // MariaDB progress report: not an answer.
                return;
            }
            p.call.error = Some(parse_err(b));
            return self.finish();
        }
        match p.resp {
            Resp::Start => match first {
                Some(0x00) if p.cmd == COM_STMT_PREPARE => {
                    let id = b.get(1..5).map_or(0, le) as u32;
                    let cols = b.get(5..7).map_or(0, le);
                    let params = b.get(7..9).map_or(0, le);
                    p.call.statement_id = Some(id);
                    if let Some(text) = p.prepare_text.take() {
                        self.remember(id, text);
                    }
                    let Some(p) = self.pending.front_mut() else {
                        return;
                    };
                    if params > 0 {
                        p.resp = Resp::PrepParams { left: params, cols };
                    } else {
                        self.prep_cols(cols);
                    }
                }
                Some(0x00) | Some(0xfe) if first == Some(0x00) || is_term => {
                    let ok = parse_ok(b, caps);
                    self.ok(ok);
                }
                Some(0xfb) if p.cmd == COM_QUERY => {
                    p.resp = Resp::InFileData;
                }
                _ if matches!(
                    p.cmd,
                    COM_QUERY | COM_STMT_EXECUTE | COM_PROCESS_INFO | COM_STMT_BULK_EXECUTE
                ) =>
                {
                    let Some((n, used)) = lenenc(b) else {
                        inc(&mut self.stats.invalid_messages);
                        p.call.partial = true;
                        return self.finish();
                    };
                    let mut defs = n;
                    if caps & MARIADB_CACHE_METADATA != 0 && b.get(used) == Some(&0) {
                        defs = 0;
                    }
                    p.call.rows.get_or_insert(0);
                    p.resp = if defs > 0 {
                        Resp::Defs(defs)
                    } else if deprecate == Some(true) {
                        Resp::Rows
                    } else {
                        Resp::DefsEof
                    };
                }
                _ => {
                    // A one-packet answer (COM_STATISTICS) or something unexpected.
                    if p.cmd != COM_STATISTICS {
                        inc(&mut self.stats.invalid_messages);
                        p.call.partial = true;
                    }
                    self.finish();
                }
            },
            Resp::Defs(left) => {
                p.resp = match (left.saturating_sub(1), deprecate) {
                    (0, Some(true)) => Resp::Rows,
                    (0, _) => Resp::DefsEof,
                    (n, _) => Resp::Defs(n),
                };
            }
            Resp::DefsEof => {
                if is_eof {
                    let status = b.get(3..5).map_or(0, le) as u16;
                    if status & SERVER_STATUS_CURSOR_EXISTS != 0 && p.cmd == COM_STMT_EXECUTE {
                        // A cursor was opened: rows come with COM_STMT_FETCH.
                        return self.finish();
                    }
                    p.resp = Resp::Rows;
                } else {
                    // No EOF after the definitions (login not seen): this is a row, or the
                    // end of an empty result under CLIENT_DEPRECATE_EOF.
                    p.resp = Resp::Rows;
                    self.response_rows(m, is_term)
                }
            }
            Resp::Rows => self.response_rows(m, is_term),
            Resp::PrepParams { left, cols } => {
                if left > 1 {
                    p.resp = Resp::PrepParams {
                        left: left - 1,
                        cols,
                    };
                } else if deprecate != Some(true) {
                    p.resp = Resp::PrepParamsEof { cols };
                } else {
                    self.prep_cols(cols);
                }
            }
            Resp::PrepCols(left) => {
                if left > 1 {
                    p.resp = Resp::PrepCols(left - 1);
                } else if deprecate != Some(true) {
                    p.resp = Resp::PrepColsEof;
                } else {
                    self.finish();
                }
            }
            Resp::PrepParamsEof { cols } => {
                if !is_eof {
                    inc(&mut self.stats.invalid_messages);
                    p.call.partial = true;
                }
                self.prep_cols(cols);
            }
            Resp::PrepColsEof => {
                if !is_eof {
                    inc(&mut self.stats.invalid_messages);
                    p.call.partial = true;
                }
                self.finish();
            }
            Resp::InFileData => {
                // The server answered before the file's end: only an ERR (handled above)
                // makes sense.
                inc(&mut self.stats.invalid_messages);
                p.call.partial = true;
                self.finish();
            }
            Resp::FieldList => {
                if is_eof {
                    self.finish();
                }
            }
        }
    }

    fn response_rows(&mut self, m: &Msg<'_>, is_term: bool) {
        let caps = self.caps();
        let Some(p) = self.pending.front_mut() else {
            return;
        };
        if is_term {
            let ok = if m.len < 9 {
                // EOF: warnings, status.
                OkInfo {
                    affected: None,
                    status: m.body.get(3..5).map_or(0, le) as u16,
                    schema: None,
                }
            } else {
                let mut ok = parse_ok(m.body, caps);
                ok.affected = None;
                ok
            };
            return self.ok(ok);
        }
        p.call.rows = Some(p.call.rows.unwrap_or(0).saturating_add(1));
    }

    /// After the parameter definitions (and their EOF): the column definitions, if any.
    fn prep_cols(&mut self, cols: u64) {
        match self.pending.front_mut() {
            Some(p) if cols > 0 => p.resp = Resp::PrepCols(cols),
            _ => self.finish(),
        }
    }

    fn ok(&mut self, ok: OkInfo) {
        if let Some(schema) = &ok.schema {
            self.database = Some(schema.clone());
        }
        let Some(p) = self.pending.front_mut() else {
            return;
        };
        if let Some(n) = ok.affected {
            p.call.affected = Some(p.call.affected.unwrap_or(0).saturating_add(n));
        }
        if ok.status & SERVER_MORE_RESULTS_EXISTS != 0 {
            p.resp = Resp::Start;
            return;
        }
        if let Some(db) = p.init_db.take() {
            self.database = db;
        } else if ok.schema.is_none()
            && p.cmd == COM_QUERY
            && !p.call.partial
            && let Some(db) = p.call.query.as_deref().and_then(use_target)
        {
            self.database = Some(db);
        }
        self.finish();
    }

    fn finish(&mut self) {
        if let Some(p) = self.pending.pop_front() {
            self.emit(p);
        }
    }

    fn remember(&mut self, id: u32, text: String) {
        if text.len() > MAX_PREPARED_TEXT {
            return;
        }
        if let Some(old) = self.prepared.remove(&id) {
            self.prepared_text = self.prepared_text.saturating_sub(old.len());
        }
        while self.prepared.len() >= MAX_PREPARED
            || self.prepared_text + text.len() > MAX_PREPARED_TEXT
        {
            // Statement ids grow: the smallest is the oldest.
            let Some((_, old)) = self.prepared.pop_first() else {
                break;
            };
            self.prepared_text = self.prepared_text.saturating_sub(old.len());
            inc(&mut self.stats.evicted_statements);
        }
        self.prepared_text += text.len();
        self.prepared.insert(id, text);
    }

    fn lose_back(&mut self, _ts: u64) {
        self.back_lost = true;
        self.anomaly();
        // A lost answer may have switched the database.
        if self
            .pending
            .iter()
            .any(|p| p.init_db.is_some() || p.call.query.as_deref().is_some_and(is_use))
        {
            self.database = None;
        }
    }

    /// May the server direction resume at a segment starting with `data`?
    fn back_resync_ok(&self, data: &[u8], total: u64, ts: u64) -> bool {
        if self.phase() != Phase::Command || !frame::chains(data, total) {
            return false;
        }
        let Some(p) = self.pending.back() else {
            return false;
        };
        // The start of an answer, to a request sent before it.
        data.get(3) == Some(&1) && p.call.start_ns <= ts && data.len() > 4
    }

    fn front_resync_ok(&self, data: &[u8], total: u64) -> bool {
        if !frame::chains(data, total) || data.get(3) != Some(&0) {
            return false;
        }
        let Some(&cmd) = data.get(4) else {
            return false;
        };
        if command_name(cmd).is_none() {
            return false;
        }
        if matches!(cmd, COM_QUERY | COM_STMT_PREPARE) {
            // Text must start like SQL: a letter, a parenthesis, a comment or space.
            return data
                .get(5)
                .is_none_or(|&c| c.is_ascii_alphabetic() || b"(/-# \t\r\n".contains(&c));
        }
        true
    }

    /// Server resynchronised at a response start at `ts`: requests sent before the latest one
    /// sent at or before `ts` were answered in the lost bytes.
    fn back_resynced(&mut self, ts: u64) {
        self.back_lost = false;
        inc(&mut self.stats.resyncs);
        while self.pending.len() > 1 {
            let second_before = self.pending.get(1).is_some_and(|p| p.call.start_ns <= ts);
            if !second_before {
                break;
            }
            if let Some(mut p) = self.pending.pop_front() {
                p.call.partial = true;
                self.emit(p);
            }
        }
        if let Some(p) = self.pending.front_mut() {
            p.call.partial = true;
            p.resp = Resp::Start;
            p.next_seq = 1;
        }
    }
}

/// A `USE db` statement (which switches the current database).
fn is_use(sql: &str) -> bool {
    let t = sql.trim_start().as_bytes();
    t.get(..3).is_some_and(|w| w.eq_ignore_ascii_case(b"use"))
        && t.get(3)
            .is_none_or(|c| !c.is_ascii_alphanumeric() && *c != b'_')
}

/// The database a `USE db` statement switches to (backticks removed); None if not a plain one.
fn use_target(sql: &str) -> Option<String> {
    if !is_use(sql) {
        return None;
    }
    let rest = sql.trim_start().get(3..)?.trim();
    let rest = rest.strip_suffix(';').unwrap_or(rest).trim_end();
    let name = match rest.strip_prefix('`') {
        Some(q) => q.strip_suffix('`').filter(|n| !n.contains('`'))?,
        None if !rest.is_empty()
            && rest
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80) =>
        {
            rest
        }
        None => return None,
    };
    Some(lossy(name.as_bytes(), MAX_NAME))
}

struct OkInfo {
    affected: Option<u64>,
    status: u16,
    schema: Option<String>,
}

fn parse_ok(b: &[u8], caps: u64) -> OkInfo {
    let mut info = OkInfo {
        affected: None,
        status: 0,
        schema: None,
    };
    let mut i = 1;
    let Some((affected, n)) = b.get(i..).and_then(lenenc) else {
        return info;
    };
    info.affected = Some(affected);
    i += n;
    let Some((_, n)) = b.get(i..).and_then(lenenc) else {
        return info;
    };
    i += n;
    info.status = b.get(i..i + 2).map_or(0, le) as u16;
    i += 4;
    if caps & CLIENT_SESSION_TRACK == 0 || info.status & SERVER_SESSION_STATE_CHANGED == 0 {
        return info;
    }
    // Info text, then the session state changes.
    let Some((len, n)) = b.get(i..).and_then(lenenc) else {
        return info;
    };
    i = i.saturating_add(n).saturating_add(len as usize);
    let Some((len, n)) = b.get(i..).and_then(lenenc) else {
        return info;
    };
    i += n;
    let end = i.saturating_add(len as usize).min(b.len());
    while i < end {
        let ty = b[i];
        let Some((len, n)) = b.get(i + 1..end).and_then(lenenc) else {
            break;
        };
        let data_start = i + 1 + n;
        let data_end = data_start.saturating_add(len as usize);
        let Some(data) = b.get(data_start..data_end.min(end)) else {
            break;
        };
        if ty == 1 {
            // SESSION_TRACK_SCHEMA: the new current database.
            if let Some((nlen, k)) = lenenc(data)
                && let Some(name) = data.get(k..k.saturating_add(nlen as usize))
            {
                info.schema = Some(lossy(name, MAX_NAME));
            }
        }
        i = data_end;
    }
    info
}

fn parse_err(b: &[u8]) -> MysqlError {
    let code = b.get(1..3).map_or(0, le) as u16;
    let (state, msg) = match b.get(3) {
        Some(b'#') => (
            lossy(b.get(4..9).unwrap_or(&[]), 5),
            b.get(9..).unwrap_or(&[]),
        ),
        _ => (String::new(), b.get(3..).unwrap_or(&[])),
    };
    MysqlError {
        code,
        state,
        message: lossy(msg, 1024),
    }
}

/// The client -> server direction's view of the session.
pub(super) struct FrontSink<'a>(pub &'a mut Session);
/// The server -> client direction's view.
pub(super) struct BackSink<'a>(pub &'a mut Session);

impl Sink for FrontSink<'_> {
    fn message(&mut self, m: &Msg<'_>) {
        self.0.client_message(m);
    }
    fn lost(&mut self, _ts: u64) {
        self.0.front_lost = true;
        // A lost command may have switched the database.
        self.0.database = None;
        inc(&mut self.0.stats.resyncs);
        self.0.anomaly();
    }
    fn resync_ok(&mut self, data: &[u8], len: u64, _ts: u64) -> bool {
        let ok = self.0.front_resync_ok(data, len);
        if ok {
            self.0.front_lost = false;
            // Whatever the lost bytes held, the commands waiting may have been answered.
            self.0.anomaly();
        }
        ok
    }
    fn skipped(&mut self, n: u64) {
        self.0.stats.bytes_skipped = self.0.stats.bytes_skipped.saturating_add(n);
    }
}

impl Sink for BackSink<'_> {
    fn message(&mut self, m: &Msg<'_>) {
        self.0.server_message(m);
    }
    fn lost(&mut self, ts: u64) {
        inc(&mut self.0.stats.resyncs);
        self.0.lose_back(ts);
    }
    fn resync_ok(&mut self, data: &[u8], len: u64, ts: u64) -> bool {
        let ok = self.0.back_resync_ok(data, len, ts);
        if ok {
            self.0.back_resynced(ts);
        }
        ok
    }
    fn skipped(&mut self, n: u64) {
        self.0.stats.bytes_skipped = self.0.stats.bytes_skipped.saturating_add(n);
    }
}

/// The static name equal to `name` (tests read names from files).
#[cfg(test)]
pub(super) fn command_name_of(name: &str) -> Option<&'static str> {
    (0..=255u8).find_map(|b| command_name(b).filter(|n| *n == name))
}
