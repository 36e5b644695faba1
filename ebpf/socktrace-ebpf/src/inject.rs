//! Cross-host trace propagation: a W3C `traceparent` line inserted into outgoing HTTP/1
//! requests, in the kernel.
//!
//! - `sys_enter_connect` / `sys_exit_connect` mark the threads of traced processes that are
//!   inside `connect()`; `inet_sock_set_state` (`sock.rs`) remembers the sockets they move to
//!   SYN_SENT (`INJECT_CONNECTING`), so kernel sockets and untraced processes are never touched.
//! - `inject_sockops` (cgroup v2 root) adds those sockets to `INJECT_SOCKHASH` when they become
//!   ESTABLISHED, with fresh framing state in `INJECT_SOCKS`. The kernel drops a socket from the
//!   socket map by itself when it closes; `sock.rs` forgets its state at TCP_CLOSE.
//! - `inject_http` (`sk_msg`, attached to that map) runs in the writing task for every message
//!   sent on those sockets and always returns SK_PASS. It follows the request framing of the
//!   byte stream: at a request boundary it parses the request head (which must be complete in
//!   the message, within `INJECT_HEAD_WINDOW` bytes), inserts the line after the request line
//!   when allowed, and tells the kernel with `bpf_msg_apply_bytes` how many bytes that request
//!   covers in this message. When a request ends inside a message, the kernel runs the program
//!   again on the rest (which begins the next request); body bytes in later messages are
//!   counted down in `InjectState::skip`, never parsed; a chunked body is followed chunk by
//!   chunk the same way (each chunk-size line must begin a message or follow the previous
//!   chunk in it). Whatever it cannot follow (other transfer codings, trailers, unparseable or
//!   split heads or chunk lines, upgrades, other protocols) makes it leave the socket alone for
//!   good: nothing is ever inserted where a request might not begin.
//!
//! `bpf_msg_cork_bytes` (wait for the rest of a head split over several writes) is not used: a
//! corked message is sent only once the promised bytes arrive, so a client that writes part of
//! a request and then waits (or shuts down its side) would stall or lose those bytes.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, sk_action::SK_PASS, sk_msg_md},
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{
            bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_msg_apply_bytes, bpf_msg_pop_data,
            bpf_msg_pull_data, bpf_msg_push_data, bpf_probe_read_kernel,
        },
    },
    macros::{map, sk_msg, sock_ops, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray, ProgramArray, Queue, SockHash},
    programs::{SkMsgContext, SockOpsContext, TracePointContext},
};
use socktrace_common::{
    EVENT_INJECT, INJECT_H2_WINDOW, INJECT_HEAD_WINDOW, InjectEvent, TRACEPARENT_H2_FIELD_LEN,
    TRACEPARENT_HUFFMAN, TRACEPARENT_LINE_LEN, stats,
};

use crate::{
    context::{CTX_LOOP, THREAD_CTX, random_trace_id},
    http::{self, DUP_CL, HAS_CHUNKED, HAS_CL, HAS_TE, HAS_TP, HAS_UPGRADE, HeadScan},
    maps::{count, current_is_traced, send_event},
    syscalls::{ActiveIo, live_io},
};

/// Set by user space before load: non-zero once the programs are to be attached.
#[unsafe(no_mangle)]
static INJECT_ENABLED: u32 = 0;

/// Set by user space before load: the head sampler's rule for the `traceparent` flags it
/// injects. A trace this node starts (or that arrived without a header) is marked sampled when
/// the 56 low bits of its id are at least `SAMPLE_THRESHOLD` (OpenTelemetry's trace-id ratio
/// rule: 0 samples all, 2^56 none); one that arrived with a header keeps that header's sampled
/// flag when `SAMPLE_PARENT` is non-zero (the parent-based samplers).
#[unsafe(no_mangle)]
static SAMPLE_THRESHOLD: u64 = 0;
#[unsafe(no_mangle)]
static SAMPLE_PARENT: u32 = 1;

/// Whether injection is on: the header scans elsewhere (the server context of
/// `context.rs`) are skipped when it is not. A read-only global, so the verifier sees the value
/// and does not even walk the code it guards.
#[inline(always)]
pub fn inject_enabled() -> bool {
    // SAFETY: a read of a global that the loader rewrites before load.
    unsafe { core::ptr::read_volatile(&INJECT_ENABLED) != 0 }
}

/// Most client sockets followed at once.
const MAX_SOCKS: u32 = 65536;
const W: usize = INJECT_HEAD_WINDOW;
const LINE: u32 = TRACEPARENT_LINE_LEN;
/// `bpf_msg_apply_bytes` value that lets the kernel pass the next 4 GiB without running the
/// program: how a socket is left alone.
const ALL: u32 = u32::MAX;

/// Threads of traced processes inside `connect()`.
#[map]
static CONNECT_TIDS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(16384, 0);

/// Sockets a traced process is connecting (SYN_SENT), until ESTABLISHED.
#[map]
pub static INJECT_CONNECTING: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16384, 0);

/// The socket map the `sk_msg` program is attached to, keyed by socket pointer.
#[map]
static INJECT_SOCKHASH: SockHash<u64> = SockHash::with_max_entries(MAX_SOCKS, 0);

/// Where the next request starts on each socket of `INJECT_SOCKHASH`. Not an LRU: an evicted
/// entry would lose the framing of a live connection.
#[map]
pub static INJECT_SOCKS: HashMap<u64, InjectState> = HashMap::with_max_entries(MAX_SOCKS, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct InjectState {
    /// Body bytes (as the application wrote them) still to pass before the next request.
    skip: u64,
    /// When the last run stopped short of the end of its message (a request ended inside it),
    /// the bytes left: the kernel runs the program again on exactly those.
    rerun: u32,
    /// Non-zero: the framing of this socket is lost; it is left alone.
    stopped: u32,
    /// Non-zero while handling a request that does not begin its write (see `request`).
    mid: u32,
    /// Non-zero inside a chunked body: once `skip` is done, a chunk-size line begins.
    chunked: u32,
    /// What the connection speaks: `PROTO_UNKNOWN` until its first message is seen.
    proto: u32,
    /// HTTP/2: bytes of the current frame (or of the preface) still to come in later messages.
    frame_left: u32,
    /// HTTP/2: the highest stream id whose HEADERS frame was seen; a HEADERS frame on a higher
    /// (client streams: odd) id opens a new stream, one on a lower id carries trailers.
    last_stream: u32,
    /// HTTP/2: non-zero once a request on this connection named `traceparent` (it may be in the
    /// dynamic table since, and sent as an index): nothing is added on it any more.
    has_tp: u32,
}

/// `InjectState::proto`.
const PROTO_UNKNOWN: u32 = 0;
const PROTO_HTTP1: u32 = 1;
const PROTO_H2: u32 = 2;

/// Per-CPU copy of a message's first bytes and their scan.
#[repr(C)]
pub struct InjectScratch {
    /// Bumped by every run on this CPU: a run that finds it changed after scanning was
    /// preempted by another one that reused the buffer, and discards its scan.
    seq: u64,
    /// Results of `parse_head`.
    rl_len: u32,
    head_len: u32,
    body: u64,
    flags: u32,
    connect: u32,
    method: u32,
    _pad: u32,
    scan: HeadScan,
    /// `h2_inject`: the frame's length and where its header block ends, kept across the scan.
    h2_len: u32,
    h2_at: u32,
    /// `h2_inject`: bytes of the header block in `buf`.
    h2_n: u32,
    _pad2: u32,
    buf: [u8; W + 64],
}

#[map]
static INJECT_SCRATCH: PerCpuArray<InjectScratch> = PerCpuArray::with_max_entries(1, 0);

/// Sockets left alone for good, for user space to take out of `INJECT_SOCKHASH` (a program
/// other than `sock_ops` cannot delete from it). A socket in a socket map sends through the
/// kernel's socket-map path (a copy more) and reads through `tcp_bpf_recvmsg`, whose blocking
/// read returns EAGAIN when woken without data (after the send buffer filled, by write
/// space): no socket stays there longer than injection needs it.
#[map]
static INJECT_RELEASE: Queue<u64> = Queue::with_max_entries(16384, 0);

/// Leaves socket `sk` alone for good: no more injection, and out of the socket map.
#[inline(always)]
fn stop(state: &mut InjectState, sk: u64) {
    state.stopped = 1;
    if INJECT_RELEASE.push(&sk, 0).is_ok() {
        count(stats::INJECT_RELEASED);
    } else {
        count(stats::MAP_UPDATE_FAILED);
    }
}

/// `sys_enter_connect`: the thread may be about to create a client connection.
#[tracepoint]
pub fn inject_enter_connect(_ctx: TracePointContext) -> u32 {
    if inject_enabled() && current_is_traced() {
        let tid = bpf_get_current_pid_tgid() as u32;
        if CONNECT_TIDS.insert(tid, 1u8, 0).is_err() {
            count(stats::MAP_UPDATE_FAILED);
        }
    }
    0
}

/// `sys_exit_connect`.
#[tracepoint]
pub fn inject_exit_connect(_ctx: TracePointContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let _ = CONNECT_TIDS.remove(tid);
    0
}

/// From `inet_sock_set_state` at SYN_SENT (in the connecting task): remember the socket if a
/// traced process is connecting it with `connect()`.
#[inline(always)]
pub fn on_syn_sent(sk: u64) {
    let tid = bpf_get_current_pid_tgid() as u32;
    if CONNECT_TIDS.get_ptr(tid).is_some() && INJECT_CONNECTING.insert(sk, 1u8, 0).is_err() {
        count(stats::MAP_UPDATE_FAILED);
    }
}

/// From `inet_sock_set_state` at TCP_CLOSE.
#[inline(always)]
pub fn on_close(sk: u64) {
    let _ = INJECT_CONNECTING.remove(sk);
    let _ = INJECT_SOCKS.remove(sk);
}

/// cgroup v2 root `sock_ops`: a client connection of a traced process is established.
#[sock_ops]
pub fn inject_sockops(ctx: SockOpsContext) -> u32 {
    if ctx.op() != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        return 1;
    }
    // SAFETY: context field; the socket pointer is only compared and used as a key.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk } as u64;
    if sk == 0 || INJECT_CONNECTING.get_ptr(sk).is_none() {
        return 1;
    }
    let _ = INJECT_CONNECTING.remove(sk);
    // Data sent with the SYN (TCP Fast Open) never passed the sk_msg program: where the next
    // request starts is unknown.
    // SAFETY: context field.
    if unsafe { (*ctx.ops).data_segs_out } != 0 {
        count(stats::INJECT_NOT_HTTP);
        return 1;
    }
    let state = InjectState {
        skip: 0,
        rerun: 0,
        stopped: 0,
        mid: 0,
        chunked: 0,
        proto: PROTO_UNKNOWN,
        frame_left: 0,
        last_stream: 0,
        has_tp: 0,
    };
    if INJECT_SOCKS.insert(sk, state, 0).is_err() {
        count(stats::INJECT_SOCK_ADD_FAILED);
        return 1;
    }
    // SAFETY: the context is the `bpf_sock_ops` the helper expects.
    if INJECT_SOCKHASH
        .update(sk, unsafe { &mut *ctx.ops }, u64::from(BPF_NOEXIST))
        .is_err()
    {
        let _ = INJECT_SOCKS.remove(sk);
        count(stats::INJECT_SOCK_ADD_FAILED);
    }
    1
}

/// The HTTP/2 message program, `inject_h2`, at `TAIL_H2` (user space puts it there).
#[map]
static INJECT_TAILS: ProgramArray = ProgramArray::with_max_entries(1, 0);
const TAIL_H2: u32 = 0;

/// `sk_msg`, reached from `inject_http` by a tail call for the messages of HTTP/2 connections
/// (it is not attached itself: a socket map has one message program).
#[sk_msg]
pub fn inject_h2(ctx: SkMsgContext) -> u32 {
    h2_frames(ctx.msg);
    SK_PASS
}

/// `sk_msg` on `INJECT_SOCKHASH`: every message written on a followed client socket.
#[sk_msg]
pub fn inject_http(ctx: SkMsgContext) -> u32 {
    on_msg(&ctx);
    SK_PASS
}

/// How many bytes of the message this run decides for (see `bpf_msg_apply_bytes`). The kernel
/// keeps the last value when it runs the program again on the rest of a message, so every run
/// sets it.
#[inline(always)]
fn apply(ctx: &SkMsgContext, bytes: u32) {
    // SAFETY: the program's own context.
    unsafe { bpf_msg_apply_bytes(ctx.msg, bytes) };
}

/// Counts `bytes` of the current call as passed on.
#[inline(always)]
fn advance(io: Option<*mut ActiveIo>, bytes: u32) {
    if let Some(io) = io {
        // SAFETY: this thread's own in-flight entry.
        unsafe { (*io).msg_sent = (*io).msg_sent.wrapping_add(bytes) };
    }
}

/// `parse_head` results.
const NOT_HTTP: u32 = 1;
const INCOMPLETE: u32 = 2;
const FAILED: u32 = 3;
/// A request head whose body length is known.
const HEAD: u32 = 4;
/// A request head followed by a chunked body.
const HEAD_CHUNKED: u32 = 6;
/// A request head after which the framing is unknown (chunked or otherwise encoded body,
/// invalid or duplicate `Content-Length`, `Upgrade`, `CONNECT`).
const HEAD_LAST: u32 = 5;

#[inline(always)]
fn on_msg(ctx: &SkMsgContext) {
    // SAFETY: context field; the socket pointer is only used as a key and reported.
    let sk = unsafe { (*ctx.msg).__bindgen_anon_3.sk } as u64;
    let size = ctx.size();
    let Some(state) = INJECT_SOCKS.get_ptr_mut(sk) else {
        apply(ctx, ALL);
        return;
    };
    // SAFETY: the socket's entry; its sender holds the socket lock, so no other run uses it.
    let state = unsafe { &mut *state };
    if state.stopped != 0 {
        apply(ctx, ALL);
        return;
    }
    let io = live_io(bpf_get_current_pid_tgid() as u32);
    if io.is_none() {
        // A write the agent does not see (io_uring, sendmmsg, an untraced process): whether
        // the kernel sends it whole could not be checked (`after_send`).
        count(stats::INJECT_SKIP_UNTRACED);
        stop(state, sk);
        apply(ctx, ALL);
        return;
    }
    // A run on the rest of a message whose first part ended a request.
    let rerun = state.rerun != 0 && state.rerun == size;
    state.rerun = 0;
    if state.proto == PROTO_UNKNOWN {
        // The first message of the connection: the HTTP/2 client preface, or HTTP/1.
        state.proto = PROTO_HTTP1;
        if is_h2_preface(ctx, size) {
            state.proto = PROTO_H2;
            state.frame_left = H2_PREFACE_LEN;
        }
    }
    if state.proto == PROTO_H2 {
        // The HTTP/2 walk is a program of its own (`inject_h2`), verified on its own: this one
        // keeps its verifier budget for HTTP/1. A tail call does not return when it works.
        // SAFETY: the program's own context; the slot holds an `sk_msg` program.
        unsafe { INJECT_TAILS.tail_call(ctx, TAIL_H2) };
        // Not loaded, or the tail-call limit reached: the connection is not followed.
        h2_lost(ctx, state);
        return;
    }
    if state.skip != 0 {
        if state.skip >= u64::from(size) {
            state.skip -= u64::from(size);
            advance(io, size);
            apply(ctx, size);
        } else {
            // The body ends inside this message: the next request begins right after it.
            let body = state.skip as u32;
            state.skip = 0;
            state.rerun = size - body;
            advance(io, body);
            apply(ctx, body);
        }
        return;
    }
    if state.chunked != 0 {
        chunk(ctx.msg);
        return;
    }
    // SAFETY: this thread's own in-flight entry.
    let sent = io.map_or(0, |io| unsafe { (*io).msg_sent });
    state.mid = u32::from(rerun || sent != 0);
    request(ctx.msg);
}

/// A request begins at the start of the message (`state.mid`: the message is not the start
/// of the write).
///
/// Not inlined, and everything it needs is looked up again or read from memory: the verifier
/// then checks it (and the scan in it) once, not once per path that leads here.
#[inline(never)]
fn request(msg: *mut sk_msg_md) {
    let ctx = SkMsgContext::new(msg);
    // SAFETY: context field; the socket pointer is only used as a key and reported.
    let sk = unsafe { (*msg).__bindgen_anon_3.sk } as u64;
    let size = ctx.size();
    let Some(state) = INJECT_SOCKS.get_ptr_mut(sk) else {
        apply(&ctx, ALL);
        return;
    };
    // SAFETY: as in `on_msg`.
    let state = unsafe { &mut *state };
    let Some(scratch) = INJECT_SCRATCH.get_ptr_mut(0) else {
        stop(state, sk);
        apply(&ctx, ALL);
        return;
    };
    // SAFETY: per-CPU value; every access goes through raw pointers (see `seq`).
    let seq = unsafe { core::ptr::read_volatile(&raw const (*scratch).seq) }.wrapping_add(1);
    unsafe { core::ptr::write_volatile(&raw mut (*scratch).seq, seq) };
    let kind = parse_head(msg, scratch, size);
    // SAFETY: as above.
    let (rl_len, head_len, body, flags, connect, now) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*scratch).rl_len),
            core::ptr::read_volatile(&raw const (*scratch).head_len),
            core::ptr::read_volatile(&raw const (*scratch).body),
            core::ptr::read_volatile(&raw const (*scratch).flags),
            core::ptr::read_volatile(&raw const (*scratch).connect),
            core::ptr::read_volatile(&raw const (*scratch).seq),
        )
    };
    if now != seq {
        count(stats::INJECT_SCRATCH_RACE);
        stop(state, sk);
        apply(&ctx, ALL);
        return;
    }
    match kind {
        HEAD | HEAD_LAST | HEAD_CHUNKED => {}
        NOT_HTTP => {
            count(stats::INJECT_NOT_HTTP);
            stop(state, sk);
            apply(&ctx, ALL);
            return;
        }
        FAILED => {
            count(stats::INJECT_PUSH_FAILED);
            stop(state, sk);
            apply(&ctx, ALL);
            return;
        }
        _ => {
            count(stats::INJECT_SKIP_INCOMPLETE);
            stop(state, sk);
            apply(&ctx, ALL);
            return;
        }
    }

    let id = bpf_get_current_pid_tgid();
    let io = live_io(id as u32);
    let mut added = 0u32;
    if flags & HAS_TP != 0 {
        count(stats::INJECT_SKIP_HAS_TRACEPARENT);
    } else if connect != 0 {
        // A tunnel follows: counted with the unknown framing below.
    } else if state.mid != 0 {
        count(stats::INJECT_SKIP_MID_MESSAGE);
    } else if io.is_none() || !inject_enabled() || !current_is_traced() {
        // No client span would carry the ids (the write is not seen by the agent).
        count(stats::INJECT_SKIP_UNTRACED);
    } else if insert_line(&ctx, rl_len, head_len, sk, id) {
        added = LINE;
        count(stats::INJECTED);
    } else {
        count(stats::INJECT_PUSH_FAILED);
    }
    if kind == HEAD_LAST {
        count(stats::INJECT_SKIP_UNKNOWN_FRAMING);
        stop(state, sk);
        apply(&ctx, ALL);
        return;
    }
    if kind == HEAD_CHUNKED {
        state.chunked = 1;
    }
    pass(&ctx, state, io, head_len, body, size, added);
}

/// Passes the next unit of the stream - a head (or chunk-size line) of `head` bytes and `body`
/// bytes after it, as written; `added` more were inserted into this message: all of this
/// message and `skip` more, or the part up to where the next unit begins, on which the kernel
/// runs the program again.
#[inline(always)]
fn pass(
    ctx: &SkMsgContext,
    state: &mut InjectState,
    io: Option<*mut ActiveIo>,
    head: u32,
    body: u64,
    size: u32,
    added: u32,
) {
    let total = u64::from(head) + body;
    // (A message the kernel then fails to send whole is caught in `after_send`.)
    if total < u64::from(size) {
        let total = total as u32;
        state.rerun = size - total;
        advance(io, total);
        apply(ctx, total + added);
    } else {
        state.skip = total - u64::from(size);
        advance(io, size);
        apply(ctx, size + added);
    }
}

/// From the exit of a write by a traced thread on socket `sk`: the program passed `passed`
/// bytes of it, the call returned `ret`. When the kernel cannot send a message whole (a full
/// send buffer on a non-blocking socket, a signal), it drops the rest, the call returns less,
/// and the verdict stays in force for as many bytes as it covered: the application's next
/// writes (the dropped bytes again, then whatever follows) pass without the program, and a
/// request may begin in them unseen. The framing is lost: the socket is left alone.
#[inline(always)]
pub fn after_send(sk: u64, passed: u32, ret: i64) {
    let sent = if ret > 0 { ret as u64 } else { 0 };
    if u64::from(passed) <= sent {
        return;
    }
    let Some(state) = INJECT_SOCKS.get_ptr_mut(sk) else {
        return;
    };
    // SAFETY: the socket's entry; the call that used it has returned.
    let state = unsafe { &mut *state };
    if state.stopped == 0 {
        count(stats::INJECT_PARTIAL_SEND);
        stop(state, sk);
    }
}

/// A chunk-size line begins here (inside a chunked request body): pass the chunk, or the last
/// chunk and the end of the body. Trailers, and a line not complete in the message, leave the
/// socket alone.
///
/// Not inlined, for the same reason as `request`.
#[inline(never)]
fn chunk(msg: *mut sk_msg_md) {
    let ctx = SkMsgContext::new(msg);
    // SAFETY: context field; the socket pointer is only used as a key.
    let sk = unsafe { (*msg).__bindgen_anon_3.sk } as u64;
    let size = ctx.size();
    let Some(state) = INJECT_SOCKS.get_ptr_mut(sk) else {
        apply(&ctx, ALL);
        return;
    };
    // SAFETY: as in `on_msg`.
    let state = unsafe { &mut *state };
    let io = live_io(bpf_get_current_pid_tgid() as u32);
    let Some(scratch) = INJECT_SCRATCH.get_ptr_mut(0) else {
        stop(state, sk);
        apply(&ctx, ALL);
        return;
    };
    // SAFETY: per-CPU value; every access goes through raw pointers (see `seq`).
    let seq = unsafe { core::ptr::read_volatile(&raw const (*scratch).seq) }.wrapping_add(1);
    unsafe { core::ptr::write_volatile(&raw mut (*scratch).seq, seq) };
    // SAFETY: as above.
    let buf = unsafe { (&raw mut (*scratch).buf).cast::<u8>() };
    let st = unsafe { &raw mut (*scratch).scan };
    let n = if size > 64 { 64 } else { size };
    let mut parsed = None;
    // SAFETY: the program's own context.
    if n >= 3 && unsafe { bpf_msg_pull_data(msg, 0, n, 0) } == 0 {
        let data = ctx.data();
        // Verifier: n is in [3, 64].
        let len = n & 127;
        if data + len as usize <= ctx.data_end()
            && len <= 64
            // SAFETY: copies `len` bytes of message memory into the scratch buffer.
            && unsafe { bpf_probe_read_kernel(buf.cast(), len, data as *const _) } == 0
        {
            parsed = http::chunk_line::<W>(buf, len as usize, st);
            if let Some((line, 0)) = parsed {
                // The last chunk: the body ends with an empty trailer section.
                // SAFETY: line <= 64 within the W + 64 byte buffer.
                let crlf = unsafe { (*buf.add(line & 63), *buf.add((line & 63) + 1)) };
                parsed =
                    (line + 2 <= len as usize && crlf == (b'\r', b'\n')).then_some((line + 2, 0));
            }
        }
    }
    // SAFETY: as above.
    if unsafe { core::ptr::read_volatile(&raw const (*scratch).seq) } != seq {
        count(stats::INJECT_SCRATCH_RACE);
        parsed = None;
    }
    match parsed {
        Some((line, 0)) => {
            state.chunked = 0;
            pass(&ctx, state, io, line as u32, 0, size, 0);
        }
        // Chunk data and its CRLF follow the line.
        Some((line, len)) => pass(&ctx, state, io, line as u32, len + 2, size, 0),
        None => {
            count(stats::INJECT_SKIP_UNKNOWN_FRAMING);
            stop(state, sk);
            apply(&ctx, ALL);
        }
    }
}

/// Copies up to `INJECT_HEAD_WINDOW` bytes from the start of the message into the scratch
/// buffer and parses the request head there; results go to the scratch value.
///
/// Not inlined: its own stack frame.
#[inline(never)]
fn parse_head(msg: *mut sk_msg_md, scratch: *mut InjectScratch, size: u32) -> u32 {
    let ctx = SkMsgContext::new(msg);
    // Eight bytes tell whether a method begins the message.
    if size < 8 {
        return INCOMPLETE;
    }
    let mut n = size;
    if n > W as u32 {
        n = W as u32;
    }
    // The first `n` bytes may span several pages: make them one range.
    // SAFETY: the program's own context.
    if unsafe { bpf_msg_pull_data(msg, 0, n, 0) } != 0 {
        return FAILED;
    }
    let data = ctx.data();
    if data + n as usize > ctx.data_end() {
        return FAILED;
    }
    // SAFETY: a per-CPU map value, accessed through raw pointers only.
    let buf = unsafe { (&raw mut (*scratch).buf).cast::<u8>() };
    let st = unsafe { &raw mut (*scratch).scan };
    // Verifier: `n` is in [8, W] and the buffer has W + 64 bytes.
    let len = n & (2 * W as u32 - 1);
    if len > W as u32 {
        return FAILED;
    }
    // SAFETY: copies `len <= W` bytes of message memory (checked above) into the buffer.
    if unsafe { bpf_probe_read_kernel(buf.cast(), len, data as *const _) } != 0 {
        return FAILED;
    }
    unsafe { core::ptr::write_volatile(&raw mut (*st).n, len) };
    // SAFETY: 8 valid bytes at the start of the buffer.
    let first = unsafe { core::ptr::read_unaligned(buf.cast::<u64>()) };
    // Through memory: each method is a path of its own until here, and the verifier must not
    // carry nine different lengths through the rest.
    // SAFETY: per-CPU map value.
    let method = unsafe {
        core::ptr::write_volatile(&raw mut (*scratch).method, http::method_len(first));
        core::ptr::read_volatile(&raw const (*scratch).method)
    };
    if method == 0 {
        return NOT_HTTP;
    }
    // "GET / HTTP/1.0\r\n\r\n" is the shortest complete request.
    if size < 18 {
        return INCOMPLETE;
    }
    http::find_lines::<W>(buf, st);
    // SAFETY: per-CPU map value.
    let (head_len, nlines, rl_len) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*st).head_len),
            core::ptr::read_volatile(&raw const (*st).nlines),
            core::ptr::read_volatile((&raw const (*st).lines).cast::<u16>()),
        )
    };
    if head_len == 0 || nlines == 0 {
        return INCOMPLETE;
    }
    // The request line: method, target, ` HTTP/1.x\r\n`.
    let rl_len = u32::from(rl_len);
    if rl_len < method + 12 || !http::is_version_end::<W>(buf, (rl_len - 11) as usize) {
        return NOT_HTTP;
    }
    http::match_names::<W, true>(buf, st);
    // SAFETY: per-CPU map value.
    let (flags, cl_at) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*st).flags),
            core::ptr::read_volatile(&raw const (*st).cl_at),
        )
    };
    let mut kind = HEAD;
    let mut body = 0u64;
    if flags & (HAS_TE | DUP_CL | HAS_UPGRADE) != 0 {
        kind = HEAD_LAST;
    } else if flags & HAS_CHUNKED != 0 {
        // Both framings at once is how requests are smuggled: follow neither.
        kind = if flags & HAS_CL != 0 {
            HEAD_LAST
        } else {
            HEAD_CHUNKED
        };
    } else if flags & HAS_CL != 0 {
        match http::content_length::<W>(buf, cl_at as usize, st) {
            Some(v) => body = v,
            None => kind = HEAD_LAST,
        }
    }
    let connect = http::is_connect(first, method);
    if connect {
        kind = HEAD_LAST;
    }
    // SAFETY: per-CPU map value.
    unsafe {
        core::ptr::write_volatile(&raw mut (*scratch).rl_len, rl_len);
        core::ptr::write_volatile(&raw mut (*scratch).head_len, head_len);
        core::ptr::write_volatile(&raw mut (*scratch).body, body);
        core::ptr::write_volatile(&raw mut (*scratch).flags, flags);
        core::ptr::write_volatile(&raw mut (*scratch).connect, u32::from(connect));
    }
    kind
}

/// Whether the injected header says "sampled" for this trace (four words as stored in memory)
/// and the header its request arrived with (`ThreadCtx::header`): see `SAMPLE_THRESHOLD`.
#[inline(always)]
fn sampled(trace: &[u32; 4], header: u32) -> bool {
    // SAFETY: reads of globals the loader rewrites before load.
    let (threshold, parent) = unsafe {
        (
            core::ptr::read_volatile(&SAMPLE_THRESHOLD),
            core::ptr::read_volatile(&SAMPLE_PARENT),
        )
    };
    if parent != 0 && header & http::TP_VALID != 0 {
        return header & http::TP_SAMPLED != 0;
    }
    // Bytes 9..16 of the id, big-endian: the low three bytes of word 2 and all of word 3.
    let hi = u64::from(u32::from_be(trace[2]) & 0x00ff_ffff);
    let lo = u64::from(u32::from_be(trace[3]));
    (hi << 32 | lo) >= threshold
}

/// The trace of a request thread `tid` sends now, in `trace` (four words as stored in memory):
/// the request it serves, or a new trace (nothing served, or an event loop, whose request
/// belongs to none of the requests it serves for sure). Returns the sampled flag to send.
#[inline(always)]
fn outgoing_trace(tid: u32, trace: &mut [u32; 4]) -> bool {
    let mut header = 0u32;
    // SAFETY: the value is read in place: the trace id is at offset 0 of an 8-aligned value.
    match unsafe { THREAD_CTX.get(tid) } {
        Some(c) if unsafe { core::ptr::read_volatile(&raw const c.flags) } & CTX_LOOP == 0 => {
            let words = c.trace_id.as_ptr().cast::<u32>();
            let mut k = 0;
            while k < 4 {
                // SAFETY: four aligned words of the map value.
                trace[k] = unsafe { core::ptr::read_volatile(words.add(k)) };
                k += 1;
            }
            // SAFETY: as above.
            header = unsafe { core::ptr::read_volatile(&raw const c.header) };
        }
        _ => random_trace_id(trace.as_mut_ptr()),
    }
    sampled(trace, header)
}

/// A new span id, as two words (never all zero).
#[inline(always)]
fn new_span_id() -> (u32, u32) {
    // SAFETY: helper without arguments.
    let (a, mut b) = unsafe { (bpf_get_prandom_u32(), bpf_get_prandom_u32()) };
    if a | b == 0 {
        b = 1 << 24;
    }
    (a, b)
}

/// Inserts the `traceparent` line at offset `at` (just after the request line of a head of
/// `head_len` bytes) and reports it. Returns false, with the message unchanged, if the kernel
/// could not make room.
#[inline(never)]
fn insert_line(ctx: &SkMsgContext, at: u32, head_len: u32, sk: u64, id: u64) -> bool {
    let msg = ctx.msg;
    // On the stack (72 bytes), not in the per-CPU scratch value: another run preempting this
    // one on the same CPU cannot change it between composing and copying.
    let word = http::text_word;
    let mut words = [0u64; 9];
    let line = words.as_mut_ptr();
    let tid = id as u32;
    let mut trace = [0u32; 4];
    let flags = if outgoing_trace(tid, &mut trace) {
        word(b"-01\r\n")
    } else {
        word(b"-00\r\n")
    };
    let (a, b) = new_span_id();
    // "traceparent: 00-" + 32 + "-" + 16 + "-0X\r\n", built a word at a time: hex digits from
    // word arithmetic, not a byte at a time (that kept dozens of values live and took a
    // 320-byte frame).
    let (span0, span1) = (http::hex8(a), http::hex8(b));
    // SAFETY: `line` has nine words.
    unsafe {
        core::ptr::write_volatile(line, word(b"tracepar"));
        core::ptr::write_volatile(line.add(1), word(b"ent: 00-"));
        let mut k = 0;
        while k < 4 {
            core::ptr::write_volatile(line.add(2 + k), http::hex8(trace[k]));
            k += 1;
        }
        core::ptr::write_volatile(line.add(6), u64::from(b'-') | (span0 << 8));
        core::ptr::write_volatile(line.add(7), (span0 >> 56) | (span1 << 8));
        core::ptr::write_volatile(line.add(8), (span1 >> 56) | (flags << 8));
    }

    // SAFETY: the program's own context.
    if unsafe { bpf_msg_push_data(msg, at, LINE, 0) } != 0 {
        return false;
    }
    // Make the new (uninitialised) bytes writable through data/data_end.
    // SAFETY: as above.
    if unsafe { bpf_msg_pull_data(msg, at, at + LINE, 0) } != 0 {
        // SAFETY: as above.
        unsafe { bpf_msg_pop_data(msg, at, LINE, 0) };
        return false;
    }
    let data = ctx.data();
    if data + LINE as usize > ctx.data_end() {
        // SAFETY: as above.
        unsafe { bpf_msg_pop_data(msg, at, LINE, 0) };
        return false;
    }
    let p = data as *mut u8;
    // Message memory is written with stores only (no helper may write it): a word of the line
    // at a time, byte by byte.
    let mut w = 0usize;
    while w < 9 {
        // SAFETY: `line` has nine words.
        let v = unsafe { core::ptr::read_volatile(line.add(w)) };
        let mut k = 0usize;
        while k < 8 {
            if 8 * w + k < LINE as usize {
                // SAFETY: `data + LINE <= data_end` was checked.
                unsafe { *p.add(8 * w + k) = (v >> (8 * k)) as u8 };
            }
            k += 1;
        }
        w += 1;
    }

    // The new bytes are a scatterlist element of their own, between the request line and the
    // rest, and the kernel sends each element with its own call into TCP: the request line
    // would leave alone in a segment, and a server woken by it would read the head in two
    // pieces. Make the whole head one element again (one copy of it); if that fails the bytes
    // are still right, only split.
    // SAFETY: the program's own context.
    unsafe { bpf_msg_pull_data(msg, 0, head_len + LINE, 0) };

    let mut trace_id = [0u8; 16];
    let mut k = 0;
    while k < 4 {
        trace_id[4 * k..4 * k + 4].copy_from_slice(&trace[k].to_le_bytes());
        k += 1;
    }
    let mut span_id = [0u8; 8];
    span_id[..4].copy_from_slice(&a.to_le_bytes());
    span_id[4..].copy_from_slice(&b.to_le_bytes());
    let ev = InjectEvent {
        kind: EVENT_INJECT,
        pid: (id >> 32) as u32,
        tid,
        offset: at,
        // SAFETY: helper without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        sk,
        trace_id,
        span_id,
        stream: 0,
        _pad: 0,
    };
    send_event(ev);
    true
}

// HTTP/2 (cleartext, "prior knowledge" or after the preface): the connection is followed
// frame by frame (RFC 9113 section 4.1: a 9-byte header - 24-bit length, type, flags, 31-bit
// stream id - then `length` bytes). A HEADERS frame that opens a new client stream gets a
// `traceparent` field at the end of its header block when that can be done exactly.

/// "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".
const H2_PREFACE_LEN: u32 = 24;
const H2_FRAME_HEADER: u32 = 9;
const H2_HEADERS: u8 = 0x1;
const H2_END_HEADERS: u8 = 0x4;
const H2_PADDED: u8 = 0x8;
const H2_PRIORITY: u8 = 0x20;
/// SETTINGS_MAX_FRAME_SIZE's initial value, which a server can only raise: a frame of this
/// size is always accepted, and the server's settings are not seen here.
const H2_MAX_FRAME: u32 = 16384;
/// Frames followed in one run; the kernel runs the program again on the rest.
const H2_FRAMES: u32 = 16;
const H2W: usize = INJECT_H2_WINDOW;
const FIELD: u32 = TRACEPARENT_H2_FIELD_LEN;

/// Whether the connection's first message begins with the HTTP/2 client preface.
#[inline(always)]
fn is_h2_preface(ctx: &SkMsgContext, size: u32) -> bool {
    if size < H2_PREFACE_LEN {
        return false;
    }
    // SAFETY: the program's own context.
    if unsafe { bpf_msg_pull_data(ctx.msg, 0, H2_PREFACE_LEN, 0) } != 0 {
        return false;
    }
    let data = ctx.data();
    if data + H2_PREFACE_LEN as usize > ctx.data_end() {
        return false;
    }
    let p = data as *const u64;
    // SAFETY: 24 bytes of message memory, checked above.
    let (a, b, c) = unsafe {
        (
            core::ptr::read_unaligned(p),
            core::ptr::read_unaligned(p.add(1)),
            core::ptr::read_unaligned(p.add(2)),
        )
    };
    let word = http::text_word;
    a == word(b"PRI * HT") && b == word(b"TP/2.0\r\n") && c == word(b"\r\nSM\r\n\r\n")
}

/// Leaves an HTTP/2 connection alone for good: where its frames begin is not known any more.
#[inline(always)]
fn h2_lost(ctx: &SkMsgContext, state: &mut InjectState) {
    count(stats::INJECT_H2_FRAMING_LOST);
    // SAFETY: context field; the socket pointer is only used as a key.
    stop(state, unsafe { (*ctx.msg).__bindgen_anon_3.sk } as u64);
    apply(ctx, ALL);
}

/// A message on an HTTP/2 client connection: passes the rest of the frame in progress, then
/// walks the frames that begin in the message. A HEADERS frame opening a new stream is handled
/// at the start of a run of its own (the run before stops just before it), so that at most one
/// field is inserted per run and offsets stay those of the message as written.
///
/// Not inlined, for the same reason as `request`.
#[inline(never)]
fn h2_frames(msg: *mut sk_msg_md) {
    let ctx = SkMsgContext::new(msg);
    // SAFETY: context field; the socket pointer is only used as a key.
    let sk = unsafe { (*msg).__bindgen_anon_3.sk } as u64;
    let size = ctx.size();
    let Some(state) = INJECT_SOCKS.get_ptr_mut(sk) else {
        apply(&ctx, ALL);
        return;
    };
    // SAFETY: as in `on_msg`.
    let state = unsafe { &mut *state };
    let io = live_io(bpf_get_current_pid_tgid() as u32);
    if state.frame_left >= size {
        state.frame_left -= size;
        advance(io, size);
        apply(&ctx, size);
        return;
    }
    let mut off = state.frame_left;
    state.frame_left = 0;
    if off == 0 && h2_opening(&ctx, state) {
        return;
    }
    let mut i = 0;
    while i < H2_FRAMES {
        if off >= size {
            advance(io, size);
            apply(&ctx, size);
            return;
        }
        // Verifier: keep `off` a bounded scalar for the pointer arithmetic below.
        let at = off & 0xffff_ffff;
        if size - at < H2_FRAME_HEADER {
            // A frame header split between writes: the next message begins inside it.
            h2_lost(&ctx, state);
            return;
        }
        // SAFETY: the program's own context.
        if unsafe { bpf_msg_pull_data(msg, at, at + H2_FRAME_HEADER, 0) } != 0 {
            h2_lost(&ctx, state);
            return;
        }
        let data = ctx.data();
        if data + H2_FRAME_HEADER as usize > ctx.data_end() {
            h2_lost(&ctx, state);
            return;
        }
        let p = data as *const u8;
        // SAFETY: nine bytes of message memory, checked above.
        let (len, kind, stream) = unsafe {
            (
                u32::from(*p) << 16 | u32::from(*p.add(1)) << 8 | u32::from(*p.add(2)),
                *p.add(3),
                u32::from(*p.add(5) & 0x7f) << 24
                    | u32::from(*p.add(6)) << 16
                    | u32::from(*p.add(7)) << 8
                    | u32::from(*p.add(8)),
            )
        };
        let end = u64::from(at) + u64::from(H2_FRAME_HEADER) + u64::from(len);
        if kind == H2_HEADERS && stream & 1 == 1 && stream > state.last_stream {
            if at == 0 {
                // `h2_opening` takes those; a run that decides for no byte would not end.
                h2_lost(&ctx, state);
                return;
            }
            // It opens a stream: handled in a run of its own, starting with it.
            state.rerun = size - at;
            advance(io, at);
            apply(&ctx, at);
            return;
        }
        if end >= u64::from(size) {
            state.frame_left = (end - u64::from(size)) as u32;
            advance(io, size);
            apply(&ctx, size);
            return;
        }
        off = end as u32;
        i += 1;
    }
    // More frames than one run follows: the next run begins at the next one.
    state.rerun = size - off;
    advance(io, off);
    apply(&ctx, off);
}

/// The frame at the start of the message, if it is a HEADERS frame opening a new stream:
/// injects into it and passes it (returns true); otherwise false, nothing done.
#[inline(always)]
fn h2_opening(ctx: &SkMsgContext, state: &mut InjectState) -> bool {
    let msg = ctx.msg;
    let size = ctx.size();
    // SAFETY: the program's own context.
    if size < H2_FRAME_HEADER || unsafe { bpf_msg_pull_data(msg, 0, H2_FRAME_HEADER, 0) } != 0 {
        return false;
    }
    let data = ctx.data();
    if data + H2_FRAME_HEADER as usize > ctx.data_end() {
        return false;
    }
    let p = data as *const u8;
    // SAFETY: nine bytes of message memory, checked above.
    let (len, kind, flags, stream) = unsafe {
        (
            u32::from(*p) << 16 | u32::from(*p.add(1)) << 8 | u32::from(*p.add(2)),
            *p.add(3),
            *p.add(4),
            u32::from(*p.add(5) & 0x7f) << 24
                | u32::from(*p.add(6)) << 16
                | u32::from(*p.add(7)) << 8
                | u32::from(*p.add(8)),
        )
    };
    if kind != H2_HEADERS || stream & 1 == 0 || stream <= state.last_stream {
        return false;
    }
    state.last_stream = stream;
    let added = h2_inject(msg, len, flags, stream);
    // SAFETY: context field; the socket pointer is only used as a key.
    let sk = unsafe { (*msg).__bindgen_anon_3.sk } as u64;
    let io = live_io(bpf_get_current_pid_tgid() as u32);
    // Looked up again: `h2_inject` may have changed the entry.
    let Some(state) = INJECT_SOCKS.get_ptr_mut(sk) else {
        apply(ctx, ALL);
        return true;
    };
    // SAFETY: as in `on_msg`.
    let state = unsafe { &mut *state };
    let end = H2_FRAME_HEADER + len;
    if end >= size {
        state.frame_left = end - size;
        advance(io, size);
        apply(ctx, size + added);
    } else {
        state.rerun = size - end;
        advance(io, end);
        apply(ctx, end + added);
    }
    true
}

/// Stores the `n` low bytes of `v` (little-endian: text words in order) at `p`.
///
/// # Safety
/// `p..p + n` is writable message memory.
#[inline(always)]
unsafe fn put(p: *mut u8, v: u64, n: usize) {
    let mut k = 0;
    while k < n {
        // SAFETY: the caller's promise.
        unsafe { *p.add(k) = (v >> (8 * k)) as u8 };
        k += 1;
    }
}

/// The HEADERS frame of length `len` at the start of the message opens client stream
/// `stream`: adds the `traceparent` field at the end of its header block (before padding) and
/// fixes the frame length, when the whole frame is in the message with END_HEADERS, the block
/// is short enough to be checked for a `traceparent` of its own and has none, and the frame
/// stays within 16384 bytes. Returns the bytes added (0: the frame is unchanged).
///
/// An HPACK "literal header field without indexing - new name" (RFC 7541 section 6.2.2)
/// changes neither side's dynamic table, so nothing else on the connection moves.
#[inline(never)]
fn h2_inject(msg: *mut sk_msg_md, len: u32, flags: u8, stream: u32) -> u32 {
    let ctx = SkMsgContext::new(msg);
    // SAFETY: context field; the socket pointer is only used as a key and reported.
    let sk = unsafe { (*msg).__bindgen_anon_3.sk } as u64;
    let size = ctx.size();
    let Some(state) = INJECT_SOCKS.get_ptr_mut(sk) else {
        return 0;
    };
    // SAFETY: as in `on_msg`.
    let state = unsafe { &mut *state };
    if state.has_tp != 0 {
        count(stats::INJECT_H2_SKIP_HAS_TRACEPARENT);
        return 0;
    }
    if flags & H2_END_HEADERS == 0 || H2_FRAME_HEADER + len > size || len + FIELD > H2_MAX_FRAME {
        count(stats::INJECT_H2_SKIP_INEXACT);
        return 0;
    }
    let frame = H2_FRAME_HEADER + len;
    // The frame in one range (at most 9 + 16384 bytes).
    // SAFETY: the program's own context.
    if unsafe { bpf_msg_pull_data(msg, 0, frame, 0) } != 0 {
        count(stats::INJECT_PUSH_FAILED);
        return 0;
    }
    let data = ctx.data();
    if data + H2_FRAME_HEADER as usize + 1 > ctx.data_end() {
        count(stats::INJECT_H2_SKIP_INEXACT);
        return 0;
    }
    let mut start = H2_FRAME_HEADER;
    let mut pad = 0u32;
    if flags & H2_PADDED != 0 {
        // SAFETY: byte 9 is in the range checked above.
        pad = u32::from(unsafe { *(data as *const u8).add(H2_FRAME_HEADER as usize) });
        start += 1;
    }
    if flags & H2_PRIORITY != 0 {
        start += 5;
    }
    if start + pad > frame {
        count(stats::INJECT_H2_SKIP_INEXACT);
        return 0;
    }
    let block_end = frame - pad;
    // Through memory: the compiler would otherwise drop the mask below, and the verifier
    // needs it ("R2 min value is negative, either use unsigned or 'var &= const'").
    let block = block_end - start;
    // SAFETY: a read of a local.
    let n = unsafe { core::ptr::read_volatile(&block) } & (2 * H2W as u32 - 1);
    if n != block || n as usize > H2W {
        count(stats::INJECT_H2_SKIP_INEXACT);
        return 0;
    }
    let Some(scratch) = INJECT_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU value; every access goes through raw pointers (see `seq`).
    let seq = unsafe { core::ptr::read_volatile(&raw const (*scratch).seq) }.wrapping_add(1);
    unsafe { core::ptr::write_volatile(&raw mut (*scratch).seq, seq) };
    // SAFETY: as above.
    let buf = unsafe { (&raw mut (*scratch).buf).cast::<u8>() };
    // `n` is in [0, H2W] and the buffer has W + 64 >= H2W + 64 bytes.
    // SAFETY: copies `n` bytes of the frame (pulled into one range above) into the buffer.
    if n > 0
        && unsafe { bpf_probe_read_kernel(buf.cast(), n, (data + start as usize) as *const _) } != 0
    {
        count(stats::INJECT_PUSH_FAILED);
        return 0;
    }
    // The values needed after the scan go through memory: what the scan's loop learns about
    // `n` on each of its exits would otherwise reach them (scalars derived from one another
    // share bounds), and the verifier would walk the rest once per exit.
    // SAFETY: per-CPU map value.
    unsafe {
        core::ptr::write_volatile(&raw mut (*scratch).h2_len, len);
        core::ptr::write_volatile(&raw mut (*scratch).h2_at, block_end);
        core::ptr::write_volatile(&raw mut (*scratch).h2_n, n);
    }
    let found = has_traceparent(scratch);
    // SAFETY: as above.
    let (now, len, block_end) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*scratch).seq),
            core::ptr::read_volatile(&raw const (*scratch).h2_len),
            core::ptr::read_volatile(&raw const (*scratch).h2_at),
        )
    };
    if now != seq {
        count(stats::INJECT_SCRATCH_RACE);
        return 0;
    }
    let frame = H2_FRAME_HEADER + len;
    if found {
        state.has_tp = 1;
        count(stats::INJECT_H2_SKIP_HAS_TRACEPARENT);
        return 0;
    }

    let tid = bpf_get_current_pid_tgid() as u32;
    let mut trace = [0u32; 4];
    let sampled = outgoing_trace(tid, &mut trace);
    let (a, b) = new_span_id();

    // SAFETY: the program's own context.
    if unsafe { bpf_msg_push_data(msg, block_end, FIELD, 0) } != 0 {
        count(stats::INJECT_PUSH_FAILED);
        return 0;
    }
    // The new (uninitialised) bytes, writable through data/data_end from their first one.
    // SAFETY: as above.
    if unsafe { bpf_msg_pull_data(msg, block_end, block_end + FIELD, 0) } != 0 {
        // SAFETY: as above.
        unsafe { bpf_msg_pop_data(msg, block_end, FIELD, 0) };
        count(stats::INJECT_PUSH_FAILED);
        return 0;
    }
    let data = ctx.data();
    if data + FIELD as usize > ctx.data_end() {
        // SAFETY: as above.
        unsafe { bpf_msg_pop_data(msg, block_end, FIELD, 0) };
        count(stats::INJECT_PUSH_FAILED);
        return 0;
    }
    let word = http::text_word;
    let p = data as *mut u8;
    let (span0, span1) = (http::hex8(a), http::hex8(b));
    // SAFETY (all stores): `p..p + FIELD` was checked above.
    unsafe {
        // 0x00: literal without indexing, new name; 11: name length, no Huffman.
        put(p, word(b"\x00\x0btracep"), 8);
        // 55 (0x37): value length, no Huffman; the value "00-<trace>-<span>-<flags>".
        put(p.add(8), word(b"arent\x3700"), 8);
        put(p.add(16), u64::from(b'-'), 1);
        let mut k = 0;
        while k < 4 {
            put(p.add(17 + 8 * k), http::hex8(trace[k]), 8);
            k += 1;
        }
        put(p.add(49), u64::from(b'-'), 1);
        put(p.add(50), span0, 8);
        put(p.add(58), span1, 8);
        let flags = if sampled { word(b"-01") } else { word(b"-00") };
        put(p.add(66), flags, 3);
    }
    // The new length, then the frame in one range again (one piece for TCP; if that fails
    // the bytes are still right, only split).
    // SAFETY: as above.
    let fixed = unsafe { bpf_msg_pull_data(msg, 0, frame + FIELD, 0) } == 0 && {
        let data = ctx.data();
        if data + 3 > ctx.data_end() {
            false
        } else {
            let new_len = len + FIELD;
            let h = data as *mut u8;
            // SAFETY: three bytes checked above.
            unsafe {
                *h = (new_len >> 16) as u8;
                *h.add(1) = (new_len >> 8) as u8;
                *h.add(2) = new_len as u8;
            }
            true
        }
    };
    if !fixed {
        // The length could not be written: take the field out again.
        // SAFETY: as above.
        unsafe { bpf_msg_pop_data(msg, block_end, FIELD, 0) };
        count(stats::INJECT_PUSH_FAILED);
        return 0;
    }

    let mut trace_id = [0u8; 16];
    let mut k = 0;
    while k < 4 {
        trace_id[4 * k..4 * k + 4].copy_from_slice(&trace[k].to_le_bytes());
        k += 1;
    }
    let mut span_id = [0u8; 8];
    span_id[..4].copy_from_slice(&a.to_le_bytes());
    span_id[4..].copy_from_slice(&b.to_le_bytes());
    count(stats::INJECTED);
    count(stats::INJECT_H2);
    send_event(InjectEvent {
        kind: EVENT_INJECT,
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        tid,
        offset: block_end,
        // SAFETY: helper without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        sk,
        trace_id,
        span_id,
        stream,
        _pad: 0,
    });
    FIELD
}

/// Whether the `h2_n` bytes of a header block at the start of `buf` name `traceparent`,
/// raw or Huffman-coded. A match inside a value counts too: then nothing is added.
///
/// One byte per position, the word only where it may begin, and out at the first match: a
/// flag carried through the loop would make every iteration after a match a path of its own
/// for the verifier.
///
/// Not inlined, and `n` read from memory: the bounds the loop learns about it on each exit stay
/// in this frame and die with it.
#[inline(never)]
fn has_traceparent(scratch: *mut InjectScratch) -> bool {
    // SAFETY: per-CPU map value, accessed through raw pointers only.
    let (buf, n) = unsafe {
        (
            (&raw const (*scratch).buf).cast::<u8>(),
            core::ptr::read_volatile(&raw const (*scratch).h2_n),
        )
    };
    let raw = http::text_word(b"tracepar");
    let huff = u64::from_le_bytes(TRACEPARENT_HUFFMAN);
    let tail = http::text_word(b"ent");
    let mut i = 0usize;
    while i < H2W {
        if i as u32 + 8 > n {
            return false;
        }
        // SAFETY: i < H2W, and 16 more bytes are inside the buffer.
        let c = unsafe { *buf.add(i) };
        if c == b't' || c == TRACEPARENT_HUFFMAN[0] {
            // SAFETY: as above.
            let w = unsafe { core::ptr::read_unaligned(buf.add(i).cast::<u64>()) };
            if w == huff {
                return true;
            }
            if w == raw && i as u32 + 11 <= n {
                // SAFETY: as above.
                let t = unsafe {
                    u64::from(*buf.add(i + 8))
                        | u64::from(*buf.add(i + 9)) << 8
                        | u64::from(*buf.add(i + 10)) << 16
                };
                if t == tail {
                    return true;
                }
            }
        }
        i += 1;
    }
    false
}
