//! Plaintext of TLS connections, read at the TLS library with uprobes.
//!
//! `SSL_read`/`SSL_write` (and their `_ex` forms, attached to the same programs; or, where it is
//! cheaper, the internal function each pair wraps: see the agent's `capture/sites.rs`) are
//! probed at entry, to remember the buffer, and at return, when the byte count is known. The socket is
//! learned from the socket calls the library makes inside the call (`sock.rs` fills
//! `TlsCall::sk` through `ACTIVE_IO`'s socket hook), and remembered per TLS session for calls that
//! make none (a read served from bytes the library already holds). `SSL_do_handshake` is probed
//! only to learn the socket before the first read. A library working on memory buffers (node,
//! Python's asyncio) makes no socket call inside its calls: its session is tied to the socket
//! its thread read last, at the first read that returns plaintext. The ciphertext of socket calls made inside a
//! library call is not sent; the plaintext goes out as an ordinary data record of the same
//! socket, marked `DATA_TLS`, so the same parsers read it and the spans keep the connection's
//! addresses and role.
//!
//! Go's `crypto/tls` is followed at `(*Conn).Read` and `(*Conn).Write` of each Go binary: Go
//! moves goroutine stacks, so return probes (which rewrite the return address on the stack)
//! must not be used, and a probe on a `RET` costs a single-step. So, where user space finds
//! the code as expected: `Read` at its entry and at its call of `runtime.memmove` that copies
//! the plaintext out (`go_tls_read_copy`; a failed read is not seen to end); `Write` only at
//! its calls of `writeRecordLocked` (`go_tls_write_record`), with the plaintext, its
//! ciphertext recognised by the socket (`TLS_SOCKS`). Otherwise both at entry and every `RET`
//! (`go_tls_return`). Arguments and results are in registers (Go 1.17+ register ABI:
//! receiver in RAX, buffer in RBX, count in RCX; `n` in RAX at return), and a call is keyed by
//! its goroutine (`g`, always in R14), not its thread: a goroutine parked in a read resumes on
//! another thread. The socket hook finds the goroutine's call by the same key, from the user
//! registers saved at syscall entry.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, generated::bpf_ktime_get_ns},
    macros::{map, uprobe, uretprobe},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};
use socktrace_common::{DIR_EGRESS, DIR_INGRESS, stats};

use crate::{
    goroutine::{self, GoKey, current_g, reg},
    maps::{count, current_is_traced},
    syscalls::{self, ACTIVE_IO, IO_LIVE},
};

/// `TlsCall::direction` of a handshake: no data, only the socket is learned.
const DIR_HANDSHAKE: u32 = 2;

/// A TLS library call in flight on one thread.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsCall {
    /// The library's session object (`SSL *`).
    ssl: u64,
    /// Plaintext buffer.
    buf: u64,
    /// `_ex` forms: where the library stores the byte count (`size_t *`).
    out: u64,
    /// Set by the socket hook when the library reads or writes a TCP socket inside the call
    /// (for Go, at entry already when the session's socket is known).
    pub sk: u64,
    pub fd: u32,
    direction: u32,
    /// Go: when the call began (`bpf_ktime_get_ns`). A Go read that fails is not seen to end
    /// (its error returns are not probed), so its entry stays until the goroutine's next call:
    /// an entry this old no longer claims a socket (`sock.rs`).
    pub since: u64,
}

/// How long after entering a Go call its entry may still claim its first socket: the first
/// socket call of a read or a handshake comes at once; an entry older than this is one whose
/// call ended unseen.
pub const GO_CLAIM_NS: u64 = 100_000_000;

/// Thread id -> TLS call in flight. LRU: a thread that dies inside a call cannot leak it.
#[map]
pub static TLS_CALLS: LruHashMap<u32, TlsCall> = LruHashMap::with_max_entries(16384, 0);

/// A TLS session of one process (session pointers are per address space).
#[repr(C)]
#[derive(Clone, Copy)]
struct SessionKey {
    ssl: u64,
    tgid: u32,
    _pad: u32,
}

/// The socket a TLS session was last seen using.
#[repr(C)]
#[derive(Clone, Copy)]
struct SessionSock {
    sk: u64,
    fd: u32,
    _pad: u32,
}

#[map]
static TLS_SESSIONS: LruHashMap<SessionKey, SessionSock> = LruHashMap::with_max_entries(65536, 0);

/// Sockets a `crypto/tls` call has used (marked by the socket hook, `sock.rs`): in Go
/// processes a socket call on one outside any probed call (the writes of
/// `go_tls_write_record`, a close-notify read) is ciphertext, not sent. Removed when the socket
/// closes.
#[map]
pub static TLS_SOCKS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(65536, 0);

/// Goroutine -> `crypto/tls` call in flight (`ssl` is the `*tls.Conn`).
#[map]
pub static GO_CALLS: LruHashMap<GoKey, TlsCall> = LruHashMap::with_max_entries(16384, 0);

/// Processes in which a goroutine has entered `crypto/tls`: only their socket calls pay for
/// the goroutine lookup.
#[map]
pub static GO_PROCS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(4096, 0);

/// `TlsCall::out` of a Go write whose plaintext was sent at entry.
const GO_SENT: u64 = 1;

#[inline(always)]
fn go_enter(ctx: &ProbeContext, direction: u32) -> u32 {
    if !current_is_traced() {
        return 0;
    }
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    let key = current_g(ctx, tgid);
    // SAFETY (the closures): field addresses of the context.
    let mut call = TlsCall {
        ssl: reg(ctx, |r| unsafe { &raw const (*r).rax }),
        buf: reg(ctx, |r| unsafe { &raw const (*r).rbx }),
        out: 0,
        sk: 0,
        fd: 0,
        direction,
        // SAFETY: a helper without arguments.
        since: unsafe { bpf_ktime_get_ns() },
    };
    // SAFETY: the value is copied out.
    if let Some(prev) = unsafe { GO_CALLS.get(&key) }.copied()
        && prev.ssl == call.ssl
    {
        if direction == DIR_HANDSHAKE {
            // The handshake a Read or Write of the same connection starts with: that call
            // learns the socket.
            return 0;
        }
        if direction == DIR_EGRESS && prev.out == GO_SENT && prev.buf == call.buf {
            // The same Write entering again after growing its stack (the prologue jumps back
            // to the start after `morestack`): its plaintext is already sent.
            return 0;
        }
    }
    let session = SessionKey {
        ssl: call.ssl,
        tgid,
        _pad: 0,
    };
    // SAFETY: the value is copied out.
    let known = unsafe { TLS_SESSIONS.get(&session) }.copied();
    if let Some(s) = known {
        // The call keeps to this socket (`sock.rs`).
        call.sk = s.sk;
        call.fd = s.fd;
    }
    // The whole buffer is written (Go's Write returns less only with an error), and sending it
    // now keeps it ahead of the answer: the reader may return the answer before this goroutine
    // reaches its return. Only for a session whose socket is known.
    let send_now = direction == DIR_EGRESS && known.is_some();
    if send_now {
        call.out = GO_SENT;
    }
    go_remember(&key, &call);
    if send_now {
        let len = reg(ctx, |r| unsafe { &raw const (*r).rcx });
        // The plaintext record goes out before `(*FD).Write` is entered: it takes the
        // goroutine's request now.
        goroutine::writing(&key, id as u32);
        // Last: a plaintext larger than one record goes on in a tail call.
        finish(ctx, &call, len, id);
    }
    0
}

/// Keeps the goroutine's call for the socket hook and its return. Not inlined: what is live
/// across it stays out of the frame `finish` runs under.
#[inline(never)]
fn go_remember(key: &GoKey, call: &TlsCall) -> u32 {
    // A call that grew its stack enters twice: the second entry, with the registers moved
    // with the stack, replaces the first.
    if GO_CALLS.insert(key, call, 0).is_err() {
        count(stats::MAP_UPDATE_FAILED);
    }
    // SAFETY: presence check only.
    if unsafe { GO_PROCS.get(&key.tgid) }.is_none() && GO_PROCS.insert(&key.tgid, &1, 0).is_err() {
        count(stats::MAP_UPDATE_FAILED);
    }
    0
}

/// `crypto/tls.(*Conn).Read(b []byte) (int, error)`, at its first instruction.
#[uprobe]
pub fn go_tls_enter_read(ctx: ProbeContext) -> u32 {
    go_enter(&ctx, DIR_INGRESS)
}

/// `crypto/tls.(*Conn).Write(b []byte) (int, error)`, at its first instruction.
#[uprobe]
pub fn go_tls_enter_write(ctx: ProbeContext) -> u32 {
    go_enter(&ctx, DIR_EGRESS)
}

/// `crypto/tls.(*Conn).clientHandshake` and `serverHandshake` (receiver in RAX), at entry: the
/// socket of a handshake made outside Read and Write (Go's HTTP client dials and shakes hands
/// first).
#[uprobe]
pub fn go_tls_enter_handshake(ctx: ProbeContext) -> u32 {
    go_enter(&ctx, DIR_HANDSHAKE)
}

/// The goroutine's call, removed, if it is a handshake (`HANDSHAKE`) or not.
#[inline(always)]
fn go_take<const HANDSHAKE: bool>(ctx: &ProbeContext, id: u64) -> Option<TlsCall> {
    let key = current_g(ctx, (id >> 32) as u32);
    // SAFETY: the value is copied out before the entry is removed.
    let call = (unsafe { GO_CALLS.get(&key) }).copied()?;
    if (call.direction == DIR_HANDSHAKE) != HANDSHAKE {
        return None;
    }
    let _ = GO_CALLS.remove(&key);
    Some(call)
}

/// Every `RET` of `(*Conn).Read` and `(*Conn).Write`, where user space did not find the calls
/// it probes instead (`go_tls_read_copy`, `go_tls_write_record`): `n` is in RAX.
#[uprobe]
pub fn go_tls_return(ctx: ProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(call) = go_take::<false>(&ctx, id) else {
        return 0;
    };
    let n = reg(&ctx, |r| unsafe { &raw const (*r).rax }) as i64;
    if n > 0 && call.out != GO_SENT {
        go_done(&ctx, &call, n as u64, id);
    }
    0
}

/// The call `runtime.memmove(to, from, n)` inside `(*Conn).Read` that copies the decrypted
/// bytes into the caller's buffer (`copy` in the inlined `bytes.(*Reader).Read`): the plaintext
/// is at `from` (RBX), `n` bytes (RCX). A `call` is emulated by the kernel, where a probe on a
/// `RET` is single-stepped: user space probes this site instead of the returns. A read that
/// fails never gets here: its entry stays until the goroutine's next call (`GO_CLAIM_NS`).
#[uprobe]
pub fn go_tls_read_copy(ctx: ProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(mut call) = go_take::<false>(&ctx, id) else {
        return 0;
    };
    if call.direction != DIR_INGRESS {
        return 0;
    }
    call.buf = reg(&ctx, |r| unsafe { &raw const (*r).rbx });
    let n = reg(&ctx, |r| unsafe { &raw const (*r).rcx });
    go_done(&ctx, &call, n, id);
    0
}

/// A Go read or write that moved `n` plaintext bytes.
#[inline(always)]
fn go_done(ctx: &ProbeContext, call: &TlsCall, n: u64, id: u64) {
    finish(ctx, call, n, id);
    if call.direction == DIR_INGRESS {
        // Plaintext that began a request: the goroutine serves it (`goroutine.rs`; done
        // already when its goroutines are followed). Not reached after a continuation
        // record (a tail call), which only HTTP/2 sockets get: no request context there.
        goroutine::claim(&current_g(ctx, (id >> 32) as u32), id as u32);
    }
}

/// `crypto/tls` record type of application data (the `typ` argument of `writeRecordLocked`).
const RECORD_APPLICATION_DATA: u64 = 23;

/// A call `c.writeRecordLocked(recordTypeApplicationData, b)` inside `(*Conn).Write` (receiver
/// in RAX, type in RBX, `b` in RCX and RDI): the plaintext, before it is encrypted and
/// written. Past the handshake, so the session's socket is known (bound at the handshake's
/// return, or by an earlier read); sent here, ahead of the answer. Nothing waits for the
/// return: the writes' ciphertext is recognised by its socket (`TLS_SOCKS`). Where user space
/// finds these calls, `Write` has no other probe.
#[uprobe]
pub fn go_tls_write_record(ctx: ProbeContext) -> u32 {
    if !current_is_traced()
        || reg(&ctx, |r| unsafe { &raw const (*r).rbx }) != RECORD_APPLICATION_DATA
    {
        return 0;
    }
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    let call = TlsCall {
        ssl: reg(&ctx, |r| unsafe { &raw const (*r).rax }),
        buf: reg(&ctx, |r| unsafe { &raw const (*r).rcx }),
        out: GO_SENT,
        sk: 0,
        fd: 0,
        direction: DIR_EGRESS,
        since: 0,
    };
    let session = SessionKey {
        ssl: call.ssl,
        tgid,
        _pad: 0,
    };
    // SAFETY: presence check only.
    if unsafe { TLS_SESSIONS.get(&session) }.is_none() {
        // A connection made before the agent attached, written first: its socket is learned
        // from its first read; this plaintext is lost, and counted.
        count(stats::TLS_NO_SOCKET);
        return 0;
    }
    // (The process is in `GO_PROCS`: the session was bound inside a probed read or handshake.)
    let len = reg(&ctx, |r| unsafe { &raw const (*r).rdi });
    // The plaintext record goes out before `(*FD).Write` is entered: it takes the goroutine's
    // request now.
    goroutine::writing(&current_g(&ctx, tgid), id as u32);
    // Last: a plaintext larger than one record goes on in a tail call.
    finish(&ctx, &call, len, id);
    0
}

/// Every `RET` of `(*Conn).clientHandshake` and `serverHandshake`: the session's socket is
/// remembered.
#[uprobe]
pub fn go_tls_handshake_return(ctx: ProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    if let Some(call) = go_take::<true>(&ctx, id) {
        session_socket(&call, id);
    }
    0
}

#[inline(always)]
fn enter(ctx: &ProbeContext, direction: u32) -> u32 {
    if !current_is_traced() {
        return 0;
    }
    let Some(ssl) = ctx.arg::<u64>(0) else {
        return 0;
    };
    let call = TlsCall {
        ssl,
        buf: ctx.arg::<u64>(1).unwrap_or(0),
        out: ctx.arg::<u64>(3).unwrap_or(0),
        sk: 0,
        fd: 0,
        direction,
        since: 0,
    };
    let tid = bpf_get_current_pid_tgid() as u32;
    // A call nested in another (`SSL_write` implemented with `SSL_write_ex`) replaces it: the
    // inner return sends the data, the outer one finds nothing, so it is sent once.
    if TLS_CALLS.insert(tid, call, 0).is_err() {
        count(stats::MAP_UPDATE_FAILED);
    }
    0
}

/// `SSL_read(ssl, buf, num)`, `SSL_read_ex(ssl, buf, num, &readbytes)`.
#[uprobe]
pub fn tls_enter_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, DIR_INGRESS)
}

/// `SSL_write(ssl, buf, num)`, `SSL_write_ex(ssl, buf, num, &written)`.
#[uprobe]
pub fn tls_enter_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, DIR_EGRESS)
}

/// `SSL_do_handshake(ssl)`: the socket, before any data.
#[uprobe]
pub fn tls_enter_handshake(ctx: ProbeContext) -> u32 {
    enter(&ctx, DIR_HANDSHAKE)
}

/// `SSL_free(ssl)`: the session's socket is forgotten. The allocator hands the same address to
/// a later session (node frees one per connection), which would otherwise inherit this one's
/// socket: a library on memory buffers makes no socket call that would correct it.
#[uprobe]
pub fn tls_free(ctx: ProbeContext) -> u32 {
    if let Some(ssl) = ctx.arg::<u64>(0) {
        let key = SessionKey {
            ssl,
            tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
            _pad: 0,
        };
        let _ = TLS_SESSIONS.remove(&key);
    }
    0
}

/// Return of `SSL_read`/`SSL_write`/`SSL_do_handshake`: an `int`, the byte count (<= 0 on
/// error or when the library wants more I/O first).
#[uretprobe]
pub fn tls_exit(ctx: RetProbeContext) -> u32 {
    done::<_, false>(&ctx, i64::from(ctx.ret::<i32>()))
}

/// Return of `SSL_read_ex`/`SSL_write_ex`, or of the internal function both they and
/// `SSL_read`/`SSL_write` call (`ssl_read_internal`, same arguments): positive on success, the
/// count stored through the fourth argument.
#[uretprobe]
pub fn tls_exit_ex(ctx: RetProbeContext) -> u32 {
    done::<_, true>(&ctx, i64::from(ctx.ret::<i32>()))
}

/// Remembers which socket a TLS session uses.
#[inline(always)]
fn bind(key: &SessionKey, sk: u64, fd: u32) {
    let sock = SessionSock { sk, fd, _pad: 0 };
    if TLS_SESSIONS.insert(key, sock, 0).is_err() {
        count(stats::MAP_UPDATE_FAILED);
    }
}

#[inline(always)]
fn done<C: EbpfContext, const EX: bool>(ctx: &C, ret: i64) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let tid = id as u32;
    // SAFETY: the value is copied out before the entry is removed.
    let Some(call) = (unsafe { TLS_CALLS.get(&tid) }).copied() else {
        return 0;
    };
    let _ = TLS_CALLS.remove(&tid);
    if call.direction == DIR_HANDSHAKE {
        session_socket(&call, id);
        return 0;
    }
    let len = if EX {
        if ret <= 0 || call.out == 0 {
            return 0;
        }
        // SAFETY: reads user memory through the helper, which handles faults.
        match unsafe { bpf_probe_read_user(call.out as *const u64) } {
            Ok(n) => n,
            Err(_) => {
                count(stats::READ_USER_FAILED);
                return 0;
            }
        }
    } else if ret > 0 {
        ret as u64
    } else {
        return 0;
    };
    finish(ctx, &call, len, id);
    0
}

/// The socket of the call's session: the one the call used (remembered for the session),
/// else the one remembered.
#[inline(always)]
fn session_socket(call: &TlsCall, id: u64) -> (u64, u32, SessionKey) {
    let key = SessionKey {
        ssl: call.ssl,
        tgid: (id >> 32) as u32,
        _pad: 0,
    };
    // SAFETY: the value is copied out.
    let known = unsafe { TLS_SESSIONS.get(&key) }.copied();
    if call.sk != 0 && known.is_none_or(|s| s.sk != call.sk) {
        bind(&key, call.sk, call.fd);
    }
    match (call.sk, known) {
        (0, Some(s)) => (s.sk, s.fd, key),
        _ => (call.sk, call.fd, key),
    }
}

/// A finished library call that moved `len` plaintext bytes: sent as a record of its socket.
#[inline(always)]
fn finish<C: EbpfContext>(ctx: &C, call: &TlsCall, len: u64, id: u64) {
    let tid = id as u32;
    let (mut sk, mut fd, key) = session_socket(call, id);
    if len == 0 || call.buf == 0 {
        return;
    }
    if sk == 0 && call.direction == DIR_INGRESS {
        // No socket call inside, the session is new, and the library returned plaintext: it
        // works on memory buffers (node, Python's asyncio) that the application fills with what
        // it has just read from the socket, on this thread. The session is the socket this
        // thread read last. (Only a read that returned plaintext binds: a call that merely
        // advances a handshake may come before anything was read from its socket.)
        if let Some(last) = ACTIVE_IO.get_ptr(&tid)
            // SAFETY: fields of the thread's entry, read in place (no copy on the stack).
            && let (flags, direction, last_sk, last_fd) =
                unsafe { ((*last).flags, (*last).direction, (*last).sk, (*last).fd) }
            && flags & IO_LIVE == 0
            && direction == DIR_INGRESS
            && last_sk != 0
        {
            sk = last_sk;
            fd = last_fd;
            bind(&key, sk, fd);
            count(stats::TLS_BOUND_BY_LAST_READ);
        }
    }
    if sk == 0 {
        if call.direction == DIR_INGRESS {
            count(stats::TLS_NO_SOCKET);
            return;
        }
        // A write on memory buffers before the session's first read (a client's first
        // request): the application writes the ciphertext to the socket after this call. Sent
        // without a socket; user space ties it to this thread's next socket write.
        count(stats::TLS_WRITE_UNBOUND);
    } else {
        count(stats::TLS_PLAINTEXT);
    }
    if call.direction == DIR_INGRESS {
        syscalls::emit_tls::<_, true>(ctx, call.buf, sk, fd, call.direction, len);
    } else {
        syscalls::emit_tls::<_, false>(ctx, call.buf, sk, fd, call.direction, len);
    }
}
