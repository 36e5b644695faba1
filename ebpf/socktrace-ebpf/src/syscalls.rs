//! Socket reads and writes, seen at the syscall boundary.
//!
//! `sys_enter_*` remembers the fd and user buffer of the calling thread; `sock_send_length` /
//! `sock_recv_length` (see `sock.rs`), which fire inside the same syscall, say whether that fd is a
//! TCP socket and which one; `sys_exit_*` then has the exact byte count and copies the payload
//! prefix into one ring-buffer record.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::{bpf_ktime_get_ns, bpf_loop, bpf_probe_read_user, bpf_ringbuf_output},
    },
    macros::{map, tracepoint, uprobe},
    maps::{LruHashMap, PerCpuArray, ProgramArray},
    programs::{ProbeContext, TracePointContext},
};
use socktrace_common::{
    DATA_LOST_BEFORE, DATA_TLS, DIR_EGRESS, DIR_INGRESS, DataEvent, DataEventBuf, EVENT_DATA,
    MAX_CAPTURE, ROLE_SERVER, ROLE_UNKNOWN, TAIL_CAPTURE, stats,
};

use crate::{
    context, goroutine, inject,
    maps::{
        EVENTS, SCRATCH, SELF_PEERS, SOCK_CAPTURE, SOCK_LOST, SOCKS, TRACKED_SOCKS, capture_bytes,
        count, current_is_traced, wakeup_flags,
    },
};

/// The peer side of a read was only peeked (`MSG_PEEK`): the bytes will be read again.
pub const IO_PEEK: u32 = 1;
/// The call was made by a TLS library inside one of its calls (`tls.rs`): its bytes are
/// ciphertext, and the plaintext is sent when the library call returns.
pub const IO_TLS: u32 = 2;
/// The call is in flight. Without it the entry is the thread's previous call, kept (not
/// removed) so that the next call updates it in place instead of paying an LRU insert and
/// delete, and so that a TLS library working on memory buffers can be tied to the socket the
/// thread last read (`tls.rs`).
pub const IO_LIVE: u32 = 4;
/// Most iovecs gathered into one record; later ones count in `len` but are not copied. gRPC's C
/// core writes up to 260 small iovecs at once (one per header string).
const MAX_IOV: u64 = 256;
/// The same without `bpf_loop` (kernels before 5.17), where the verifier walks every iteration.
const MAX_IOV_NO_LOOP: u64 = 64;

/// A socket syscall in flight on one thread.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ActiveIo {
    /// User buffer, or the `iovec` array when `iovcnt != 0`; 0 when there is no user buffer
    /// (`sendfile`): the record then carries the byte count only.
    pub buf: u64,
    pub iovcnt: u64,
    /// Set by `sock_*_length` when the fd turns out to be a TCP socket.
    pub sk: u64,
    pub fd: u32,
    pub direction: u32,
    pub flags: u32,
    /// Bytes of this call the `sk_msg` program (`inject.rs`) has already passed on: 0 while
    /// the next byte it sees is the first of the call.
    pub msg_sent: u32,
}

/// Thread id -> syscall in flight (`IO_LIVE`), or the thread's last one. LRU so that threads
/// that are gone make room.
#[map]
pub static ACTIVE_IO: LruHashMap<u32, ActiveIo> = LruHashMap::with_max_entries(16384, 0);

/// The thread's syscall in flight, if one is.
#[inline(always)]
pub fn live_io(tid: u32) -> Option<*mut ActiveIo> {
    let io = ACTIVE_IO.get_ptr_mut(tid)?;
    // SAFETY: the entry belongs to this thread, which is the one running.
    (unsafe { (*io).flags } & IO_LIVE != 0).then_some(io)
}

/// Records the thread's syscall in flight: in place when the thread has an entry already.
#[inline(always)]
pub fn begin_io(tid: u32, mut io: ActiveIo) -> bool {
    io.flags |= IO_LIVE;
    if let Some(slot) = ACTIVE_IO.get_ptr_mut(tid) {
        // SAFETY: as above.
        unsafe { *slot = io };
        return true;
    }
    if ACTIVE_IO.insert(tid, io, 0).is_err() {
        count(stats::MAP_UPDATE_FAILED);
        return false;
    }
    true
}

#[inline(always)]
fn enter(fd: u64, buf: u64, iovcnt: u64, direction: u32) {
    if !current_is_traced() {
        return;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let io = ActiveIo {
        buf,
        iovcnt,
        sk: 0,
        fd: fd as u32,
        direction,
        flags: 0,
        msg_sent: 0,
    };
    begin_io(tid, io);
}

/// `read`, `write`, `recvfrom`, `sendto`: fd at offset 16, buffer at offset 24.
#[inline(always)]
fn enter_plain(ctx: &TracePointContext, direction: u32) -> u32 {
    // SAFETY: offsets from the tracepoint's format file (stable syscall ABI).
    let (Ok(fd), Ok(buf)) = (unsafe { ctx.read_at::<u64>(16) }, unsafe {
        ctx.read_at::<u64>(24)
    }) else {
        return 0;
    };
    enter(fd, buf, 0, direction);
    0
}

/// `readv`, `writev`: fd at 16, iovec array at 24, count at 32.
#[inline(always)]
fn enter_vec(ctx: &TracePointContext, direction: u32) -> u32 {
    // SAFETY: offsets from the tracepoint's format file.
    let (Ok(fd), Ok(vec), Ok(vlen)) = (unsafe {
        (
            ctx.read_at::<u64>(16),
            ctx.read_at::<u64>(24),
            ctx.read_at::<u64>(32),
        )
    }) else {
        return 0;
    };
    if vlen == 0 {
        return 0;
    }
    enter(fd, vec, vlen, direction);
    0
}

/// `recvmsg`, `sendmsg`: fd at 16, `struct user_msghdr *` at 24. In that struct (user ABI, LP64)
/// `msg_iov` is at offset 16 and `msg_iovlen` at 24.
#[inline(always)]
fn enter_msg(ctx: &TracePointContext, direction: u32) -> u32 {
    // SAFETY: offsets from the tracepoint's format file.
    let (Ok(fd), Ok(msg)) = (unsafe { ctx.read_at::<u64>(16) }, unsafe {
        ctx.read_at::<u64>(24)
    }) else {
        return 0;
    };
    let mut iov = [0u64; 2];
    // SAFETY: reads 16 bytes of user memory into a stack array; failure is handled.
    let rc = unsafe {
        bpf_probe_read_user(
            iov.as_mut_ptr().cast::<c_void>(),
            16,
            (msg + 16) as *const c_void,
        )
    };
    if rc != 0 {
        count(stats::READ_USER_FAILED);
        return 0;
    }
    if iov[1] == 0 {
        return 0;
    }
    enter(fd, iov[0], iov[1], direction);
    0
}

#[tracepoint]
pub fn sys_enter_read(ctx: TracePointContext) -> u32 {
    enter_plain(&ctx, DIR_INGRESS)
}
#[tracepoint]
pub fn sys_enter_recvfrom(ctx: TracePointContext) -> u32 {
    enter_plain(&ctx, DIR_INGRESS)
}
#[tracepoint]
pub fn sys_enter_write(ctx: TracePointContext) -> u32 {
    enter_plain(&ctx, DIR_EGRESS)
}
#[tracepoint]
pub fn sys_enter_sendto(ctx: TracePointContext) -> u32 {
    enter_plain(&ctx, DIR_EGRESS)
}
#[tracepoint]
pub fn sys_enter_readv(ctx: TracePointContext) -> u32 {
    enter_vec(&ctx, DIR_INGRESS)
}
#[tracepoint]
pub fn sys_enter_writev(ctx: TracePointContext) -> u32 {
    enter_vec(&ctx, DIR_EGRESS)
}
#[tracepoint]
pub fn sys_enter_recvmsg(ctx: TracePointContext) -> u32 {
    enter_msg(&ctx, DIR_INGRESS)
}
#[tracepoint]
pub fn sys_enter_sendmsg(ctx: TracePointContext) -> u32 {
    enter_msg(&ctx, DIR_EGRESS)
}
/// `sendfile` to a socket: no user buffer, but its bytes belong to the stream, so the record
/// carries the exact count and user space skips that many bytes.
#[tracepoint]
pub fn sys_enter_sendfile64(ctx: TracePointContext) -> u32 {
    // SAFETY: `out_fd` at offset 16 per the format file.
    let Ok(fd) = (unsafe { ctx.read_at::<u64>(16) }) else {
        return 0;
    };
    enter(fd, 0, 0, DIR_EGRESS);
    0
}

/// Shared `sys_exit_*` body: `ret` (bytes transferred) is at offset 16 for every syscall.
/// `SERVER_CTX`: plain reads, which may begin a request a server thread then serves.
/// `LOOP`: `bpf_loop` may be used (for the iovec walk and for calls split into records).
#[inline(always)]
fn exit<const VECTORED: bool, const SERVER_CTX: bool, const LOOP: bool>(
    ctx: &TracePointContext,
) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let tid = id as u32;
    let Some(slot) = live_io(tid) else {
        return 0;
    };
    // SAFETY: the thread's entry, marked finished in place (kept as the thread's last call)
    // and read where it is: nothing else writes it while this thread is in this program.
    let io = unsafe {
        (*slot).flags &= !IO_LIVE;
        &*slot
    };
    if io.sk == 0 || io.flags & IO_PEEK != 0 {
        return 0;
    }
    // SAFETY: offset from the format file.
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(16) }) else {
        return 0;
    };
    if io.direction == DIR_EGRESS {
        if io.msg_sent != 0 && inject::inject_enabled() {
            inject::after_send(io.sk, io.msg_sent, ret);
        }
        if ret > 0 {
            // Contexts exist with injection on, or in Go programs.
            context::server_write(id, io.sk);
        }
    }
    if ret <= 0 {
        return 0;
    }
    if io.flags & IO_TLS != 0 {
        count(stats::TLS_CIPHERTEXT_SKIPPED);
        return 0;
    }
    let len = ret as u64;
    if emit_data::<VECTORED, SERVER_CTX, LOOP, false>(io, len, 0) && LOOP {
        // A full-capture socket (HTTP/2) moved more than one record holds: the rest goes in
        // further records, as if the call had been split, so that a write carrying the
        // HEADERS of a hundred streams is not cut short. Each further record is emitted by a
        // tail-called program (verified on its own, with a stack of its own), which calls
        // itself for the next one.
        // SAFETY: a tail call; the state for it is in `CHUNKS`.
        let _ = unsafe { CHUNK_PROGS.tail_call(ctx, chunk_slot::<VECTORED>()) };
    }
    0
}

/// Most records one call of a full-capture socket is split into (`MAX_CHUNKS * MAX_CAPTURE`
/// bytes); what lies beyond is a gap, with its tail captured as usual.
const MAX_CHUNKS: u64 = 4;

/// A call being split into records: where the next one starts.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Chunks {
    io: ActiveIo,
    len: u64,
    skip: u64,
    /// `emit_data`'s verdict (another record follows), parked here across the server-context
    /// call so that it does not double the states the verifier checks that call with.
    more: u64,
}

/// Per-CPU state of the call being split (the tail call chain runs on one CPU, unpreempted).
#[map]
static CHUNKS: PerCpuArray<Chunks> = PerCpuArray::with_max_entries(1, 0);

/// The continuation programs, filled by user space: slot 0 plain buffers, slot 1 iovecs.
#[map]
pub static CHUNK_PROGS: ProgramArray = ProgramArray::with_max_entries(2, 0);

/// The continuation of TLS plaintext (slot 0: `tls_chunk`), filled by user space with the TLS
/// programs. Apart from `CHUNK_PROGS`: a jump table holds programs of one type, and the TLS
/// programs are uprobes.
#[map]
pub static TLS_CHUNK_PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);

const fn chunk_slot<const VECTORED: bool>() -> u32 {
    if VECTORED { 1 } else { 0 }
}

/// Emits the record at `CHUNKS.skip` and, while more follow, tail-calls itself (slot `slot` of
/// `progs`) for the next.
#[inline(always)]
fn next_chunk<C: EbpfContext, const VECTORED: bool, const TLS: bool>(
    ctx: &C,
    progs: &ProgramArray,
    slot: u32,
) -> u32 {
    let Some(state) = CHUNKS.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU slot written by the caller of this chain.
    let Chunks { io, len, skip, .. } = unsafe { *state };
    if skip >= len {
        return 0;
    }
    if emit_data::<VECTORED, false, true, TLS>(&io, len, skip) {
        // SAFETY: a tail call; `emit_data` moved `CHUNKS` on to the next record.
        let _ = unsafe { progs.tail_call(ctx, slot) };
    }
    0
}

/// Continuation of a plain-buffer call (`CHUNK_PROGS` slot 0); never attached.
#[tracepoint]
pub fn sys_exit_chunk(ctx: TracePointContext) -> u32 {
    next_chunk::<_, false, false>(&ctx, &CHUNK_PROGS, 0)
}

/// Continuation of a vectored call (`CHUNK_PROGS` slot 1); never attached.
#[tracepoint]
pub fn sys_exit_chunk_vec(ctx: TracePointContext) -> u32 {
    next_chunk::<_, true, false>(&ctx, &CHUNK_PROGS, 1)
}

/// Continuation of TLS plaintext (`TLS_CHUNK_PROGS` slot 0); never attached.
#[uprobe]
pub fn tls_chunk(ctx: ProbeContext) -> u32 {
    next_chunk::<_, false, true>(&ctx, &TLS_CHUNK_PROGS, 0)
}

#[tracepoint]
pub fn sys_exit_read(ctx: TracePointContext) -> u32 {
    exit::<false, true, true>(&ctx)
}
#[tracepoint]
pub fn sys_exit_recvfrom(ctx: TracePointContext) -> u32 {
    exit::<false, true, true>(&ctx)
}
#[tracepoint]
pub fn sys_exit_write(ctx: TracePointContext) -> u32 {
    exit::<false, false, true>(&ctx)
}
#[tracepoint]
pub fn sys_exit_sendto(ctx: TracePointContext) -> u32 {
    exit::<false, false, true>(&ctx)
}
#[tracepoint]
pub fn sys_exit_readv(ctx: TracePointContext) -> u32 {
    exit::<true, false, true>(&ctx)
}
/// Without `bpf_loop`: fewer iovecs gathered.
#[tracepoint]
pub fn sys_exit_readv_noloop(ctx: TracePointContext) -> u32 {
    exit::<true, false, false>(&ctx)
}
#[tracepoint]
pub fn sys_exit_writev(ctx: TracePointContext) -> u32 {
    exit::<true, false, true>(&ctx)
}
/// Without `bpf_loop`: fewer iovecs gathered.
#[tracepoint]
pub fn sys_exit_writev_noloop(ctx: TracePointContext) -> u32 {
    exit::<true, false, false>(&ctx)
}
#[tracepoint]
pub fn sys_exit_recvmsg(ctx: TracePointContext) -> u32 {
    exit::<true, false, true>(&ctx)
}
/// Without `bpf_loop`: fewer iovecs gathered.
#[tracepoint]
pub fn sys_exit_recvmsg_noloop(ctx: TracePointContext) -> u32 {
    exit::<true, false, false>(&ctx)
}
#[tracepoint]
pub fn sys_exit_sendmsg(ctx: TracePointContext) -> u32 {
    exit::<true, false, true>(&ctx)
}
/// Without `bpf_loop`: fewer iovecs gathered.
#[tracepoint]
pub fn sys_exit_sendmsg_noloop(ctx: TracePointContext) -> u32 {
    exit::<true, false, false>(&ctx)
}
#[tracepoint]
pub fn sys_exit_sendfile64(ctx: TracePointContext) -> u32 {
    exit::<false, false, true>(&ctx)
}

const MASK: usize = MAX_CAPTURE - 1;

/// The plaintext of a TLS library call (`tls.rs`), `len` bytes at `io.buf`: a record marked
/// `DATA_TLS`, with the usual prefix and tail, or on a full-capture socket as many as a socket
/// call would get (continued by `tls_chunk`: a uprobe cannot tail-call the tracepoint
/// programs that continue socket calls). Ends the calling program when it continues.
#[inline(always)]
pub fn emit_tls<C: EbpfContext, const SERVER_CTX: bool>(
    ctx: &C,
    buf: u64,
    sk: u64,
    fd: u32,
    direction: u32,
    len: u64,
) {
    // The call is described in the per-CPU chunk state, not on the stack: the uprobes that
    // get here have the deepest stacks, and a continuation reads it there anyway.
    let Some(state) = CHUNKS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, used only by this call chain on this CPU.
    let io = unsafe {
        (*state).io = ActiveIo {
            buf,
            iovcnt: 0,
            sk,
            fd,
            direction,
            flags: 0,
            msg_sent: 0,
        };
        &(*state).io
    };
    if emit_data::<false, SERVER_CTX, true, true>(io, len, 0) {
        // More plaintext than one record holds on a full-capture (HTTP/2) socket: the rest
        // goes in further records, as for a socket call (`TLS_CHUNK_PROGS`). Returns only if
        // the slot is empty: the rest stays a gap.
        // SAFETY: a tail call; the state for it is in `CHUNKS`.
        let _ = unsafe { TLS_CHUNK_PROGS.tail_call(ctx, 0) };
    }
}

/// Build the record in the per-CPU scratch buffer and copy it to the ring buffer.
///
/// Not inlined: one BPF subprogram per variant, shared by the exit hooks, with its own 512-byte
/// stack frame (inlined into each hook it exceeded the stack limit). Only the four vectored
/// calls get the iovec walk, which is what the verifier spends its time on.
/// With `SERVER_CTX`, a server read that begins an HTTP/1 request also sets the thread's trace
/// context (`context.rs`), and the record says so.
///
/// `skip` bytes of the call's `total` were sent in earlier records of the same call. Returns
/// true when this record stopped at `MAX_CAPTURE` bytes and another should follow.
/// `TLS`: plaintext from a TLS library (its continuation records come from `tls_chunk`).
#[inline(never)]
fn emit_data<const VECTORED: bool, const SERVER_CTX: bool, const LOOP: bool, const TLS: bool>(
    io: &ActiveIo,
    total: u64,
    skip: u64,
) -> bool {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU scratch slot; BPF programs are not preempted on their CPU while running.
    let scratch = unsafe { &mut *scratch };
    let id = bpf_get_current_pid_tgid();

    let header = &mut scratch.header;
    header.role = ROLE_UNKNOWN;
    header.tuple_known = 0;
    header.ctx_flags = if TLS { DATA_TLS } else { 0 };
    // SAFETY: the value is read in place and copied field by field into the scratch buffer.
    if let Some(info) = unsafe { SOCKS.get(&io.sk) } {
        if SELF_PEERS.get_ptr(&info.tuple).is_some() {
            count(stats::SELF_SKIPPED);
            return false;
        }
        header.role = info.role;
        header.tuple = info.tuple;
        header.tuple_known = 1;
    }

    // SAFETY: the value is copied out.
    let cap = match unsafe { SOCK_CAPTURE.get(&io.sk) } {
        Some(bytes) => *bytes as u64,
        None => capture_bytes() as u64,
    };
    // This record covers the call's bytes from `skip`: all of the rest, or exactly
    // `MAX_CAPTURE` of them when a full-capture socket's call goes on in further records.
    let rest = total - skip;
    let more = io.buf != 0
        && cap >= MAX_CAPTURE as u64
        && rest > MAX_CAPTURE as u64
        && skip < (MAX_CHUNKS - 1) * MAX_CAPTURE as u64;
    let len = if more { MAX_CAPTURE as u64 } else { rest };
    let mut want = cap;
    if want > len {
        want = len;
    }
    if want > MAX_CAPTURE as u64 {
        want = MAX_CAPTURE as u64;
    }
    let want = want as usize;
    let data = scratch.data.as_mut_ptr();
    let mut captured: usize = 0;
    // Plain buffers: where the transferred bytes end in user memory, and how many bytes before
    // that address are the buffer's; the tail is copied from there after the prefix.
    let mut end_addr: u64 = 0;
    let mut end_avail: u64 = 0;
    let mut whole = false;
    if io.buf != 0 && (!VECTORED || io.iovcnt == 0) {
        let start = io.buf + skip;
        end_addr = io.buf + total;
        end_avail = rest;
        if want > 0 {
            // SAFETY: destination is `data[0..want & MASK]` inside a 2*MAX_CAPTURE buffer.
            let rc = unsafe {
                bpf_probe_read_user(data.cast(), (want & MASK) as u32, start as *const c_void)
            };
            if rc == 0 {
                captured = want & MASK;
                if want == MAX_CAPTURE {
                    // `want & MASK` is 0 for exactly MAX_CAPTURE; copy the full size instead.
                    // SAFETY: MAX_CAPTURE bytes fit the buffer.
                    let rc = unsafe {
                        bpf_probe_read_user(data.cast(), MAX_CAPTURE as u32, start as *const c_void)
                    };
                    if rc == 0 {
                        captured = MAX_CAPTURE;
                    }
                }
            } else {
                count(stats::READ_USER_FAILED);
            }
        }
    } else if VECTORED && io.buf != 0 {
        // One walk over the iovecs gathers the prefix and finds where the transferred bytes
        // end. The running totals live in map memory (header fields, overwritten with their
        // real values after the walk): the verifier then sees unknown values at every step
        // instead of a new precise range per path, so it can prune. (Two loops, or totals in
        // registers, multiplied the states beyond the 1M-instruction limit.)
        // SAFETY: pointers into the per-CPU scratch value.
        unsafe {
            core::ptr::write_volatile(&raw mut scratch.header.captured, 0);
            core::ptr::write_volatile(&raw mut scratch.header.len, 0);
            core::ptr::write_volatile(&raw mut scratch.header.ts_ns, 0);
        }
        let mut walk = IovWalk {
            array: io.buf,
            iovcnt: io.iovcnt,
            len: total,
            skip,
            want: want as u64,
        };
        if LOOP {
            // `bpf_loop` (Linux 5.17+): the verifier checks the step once (or until its states
            // converge), not once per iteration - unrolled over 256 iovecs the walk cost it
            // ~865 000 of its 1M instructions per program.
            // SAFETY: the callback has the signature the helper expects; `walk` outlives the
            // call.
            unsafe {
                bpf_loop(
                    MAX_IOV as u32,
                    iov_step as *mut c_void,
                    (&raw mut walk).cast(),
                    0,
                )
            };
        } else {
            // Kernels without `bpf_loop`: a bounded loop over fewer iovecs, which the verifier
            // walks iteration by iteration. Known gap: the 6.1 verifier rejects this variant
            // ("The sequence of 8193 jumps is too complex"; 16 iterations fail the same way),
            // 6.12 and later accept it; every kernel with the `sock` tracepoints the agent
            // needs has `bpf_loop`, so it is not used on a supported kernel today.
            let mut i = 0u64;
            while i < MAX_IOV_NO_LOOP {
                if step(i, &walk) != 0 {
                    break;
                }
                i += 1;
            }
        }
        // SAFETY: as above.
        unsafe {
            captured = core::ptr::read_volatile(&raw const scratch.header.captured) as usize;
            // A write that took every byte of every iovec (the common case) ends exactly at the
            // end of the last iovec: its tail can be gathered backwards from there.
            let last = core::ptr::read_volatile(&raw const scratch.header.ts_ns);
            whole = last == 2 && core::ptr::read_volatile(&raw const scratch.header.len) == total;
            if last != 0 && !whole {
                // A read that filled its last iovec only partly: the tail comes from that iovec.
                end_addr = core::ptr::read_volatile(&raw const scratch.header.sk);
                end_avail = u64::from(core::ptr::read_volatile(&raw const scratch.header.tail));
            }
        }
    }
    if (captured as u64) < len {
        count(stats::TRUNCATED);
    }
    // The verifier must see `captured <= MAX_CAPTURE` to bound the tail's offset below.
    if captured > MAX_CAPTURE {
        captured = MAX_CAPTURE;
    }
    if skip == 0 && captured >= 8 {
        // SAFETY: 8 bytes inside the scratch value, read unaligned.
        let head = unsafe { core::ptr::read_unaligned(data.cast::<[u8; 8]>()) };
        if head == *H2_PREFACE_START {
            // HTTP/2 from its first byte: one read soon carries the headers of many streams, so
            // copy as much as possible from now on. User space does the same for connections it
            // detects later, but would be too late for the reads right after the preface.
            let _ = SOCK_CAPTURE.insert(io.sk, MAX_CAPTURE as u32, 0);
        }
    }
    // A record followed by more of the call has no tail: its bytes end where the next begin.
    let tail = if more {
        0
    } else if VECTORED && whole {
        copy_tail_vec(io, len, captured, data)
    } else {
        copy_tail(end_addr, end_avail, len, captured, data)
    };

    let header = &mut scratch.header;
    header.kind = EVENT_DATA;
    header.direction = io.direction;
    // SAFETY: helper without arguments.
    header.ts_ns = unsafe { bpf_ktime_get_ns() };
    header.sk = io.sk;
    header.pid = (id >> 32) as u32;
    header.tid = id as u32;
    header.fd = io.fd;
    header.len = len;
    header.captured = captured as u32;
    header.tail = tail as u32;
    header.comm = bpf_get_current_comm().unwrap_or([0; 16]);

    let server_read = header.role == ROLE_SERVER;
    let scratch: *mut DataEventBuf = scratch;
    if let Some(state) = CHUNKS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot; `more` is read back below, the rest by the continuation.
        unsafe {
            core::ptr::write_volatile(&raw mut (*state).more, u64::from(more));
            if more {
                // Where the next record of this call starts (`next_chunk`). A TLS call is
                // there already (`emit_tls`).
                if !TLS {
                    core::ptr::copy_nonoverlapping(io, &raw mut (*state).io, 1);
                }
                (*state).len = total;
                (*state).skip = skip + MAX_CAPTURE as u64;
            }
        }
    }
    // SAFETY: the per-CPU scratch value.
    unsafe {
        (*scratch).header.link_sk = 0;
        (*scratch).header.link_ts = 0;
    }
    // The verifier checks these calls once per distinct state that reaches them, and the paths
    // above leave many (each with its own precise sizes): only the pointer is live across them.
    if SERVER_CTX && io.direction == DIR_INGRESS && server_read {
        // Go processes need the context to link even without injection.
        if inject::inject_enabled() || goroutine::followed(scratch) {
            context::server_read(scratch);
        }
    }
    goroutine::go_link(scratch);
    // The sizes come back from the record, each bounded again. Verifier (Linux 6.1): "R3 min
    // value is negative, either use unsigned or 'var &= const'" - older verifiers lost the
    // signed bounds of the size summed along the paths above (a mask on the sum was optimised
    // away by LLVM, which knows the bounds); two 32-bit loads give fresh non-negative ones.
    // SAFETY: the per-CPU scratch value.
    let (c, t) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*scratch).header.captured) as usize,
            core::ptr::read_volatile(&raw const (*scratch).header.tail) as usize,
        )
    };
    // SAFETY: per-CPU slot written above.
    let more = CHUNKS
        .get_ptr(0)
        .is_some_and(|state| unsafe { core::ptr::read_volatile(&raw const (*state).more) } != 0);
    if c > MAX_CAPTURE || t > 2 * TAIL_CAPTURE {
        return false;
    }
    let size = core::mem::size_of::<DataEvent>() + c + t;
    // SAFETY: the per-CPU scratch value (the socket is read back from the record, so that
    // nothing but the pointer was live across the call above).
    let sk = unsafe { core::ptr::read_volatile(&raw const (*scratch).header.sk) };
    match TRACKED_SOCKS.get_ptr_mut(&sk) {
        // An LRU update takes the map's locks: only the first record of a socket pays it.
        None => {
            let _ = TRACKED_SOCKS.insert(sk, 1u8, 0);
        }
        // SAFETY: the socket's entry; a racing writer at worst repeats or loses one mark.
        Some(v) => unsafe {
            if *v & SOCK_LOST != 0 {
                *v = 1;
                (*scratch).header.ctx_flags |= DATA_LOST_BEFORE;
            }
        },
    }
    // SAFETY: `scratch` is a map value of size_of::<DataEventBuf>() >= `size`.
    let rc = unsafe {
        bpf_ringbuf_output(
            core::ptr::addr_of!(EVENTS).cast_mut().cast(),
            scratch.cast(),
            size as u64,
            wakeup_flags(),
        )
    };
    if rc == 0 {
        count(stats::EVENTS_SENT);
        more
    } else {
        count(stats::RINGBUF_FULL);
        // The socket's next record will say that its stream has a hole.
        if let Some(v) = TRACKED_SOCKS.get_ptr_mut(&sk) {
            // SAFETY: the socket's entry, inserted above.
            unsafe { *v |= SOCK_LOST };
        }
        false
    }
}

/// An iovec walk, for `step`: on the stack, where `bpf_loop` wants its callback's context.
#[repr(C)]
struct IovWalk {
    /// User `struct iovec` array and its length.
    array: u64,
    iovcnt: u64,
    /// Bytes the call transferred; how many of them to skip (earlier records of the same
    /// call have them), then how many to copy.
    len: u64,
    skip: u64,
    want: u64,
}

/// `bpf_loop` callback: one step of the walk.
extern "C" fn iov_step(i: u64, walk: *mut c_void) -> i64 {
    // SAFETY: `bpf_loop` passes the `IovWalk` its caller gave it.
    step(i, unsafe { &*walk.cast::<IovWalk>() })
}

/// Iovec `i` of the walk: copies what it holds of the prefix into the scratch record and
/// records where the transferred bytes end. Returns 1 when the walk is over (`bpf_loop` stops
/// on a non-zero return), 0 to go on. The running totals live in the scratch header, in
/// fields that get their real values after the walk: `captured` (bytes copied), `len` (bytes
/// of the iovecs so far), `ts_ns` (1: the last transferred byte was found, 2: and it ends the
/// last iovec), `sk` and `tail` (the address after it and how many of the iovec's bytes lie
/// before it), `tid` (a round trip for the copy length).
#[inline(always)]
fn step(i: u64, walk: &IovWalk) -> i64 {
    if i >= walk.iovcnt {
        return 1;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY (every volatile access below): pointers into the per-CPU scratch value.
    let h = unsafe { &raw mut (*scratch).header };
    let data = unsafe { (&raw mut (*scratch).data).cast::<u8>() };
    let Some(iov) = read_iovec(walk.array, i) else {
        count(stats::READ_USER_FAILED);
        return 1;
    };
    let done = unsafe { core::ptr::read_volatile(&raw const (*h).captured) } as usize;
    let start = unsafe { core::ptr::read_volatile(&raw const (*h).len) };
    let end = start + iov[1];
    let want = walk.want as usize;
    // The next byte to copy is `skip + done` of the call; it lies in this iovec or a later one.
    let from = walk.skip + done as u64;
    if done < want && from < end {
        let lo = from.saturating_sub(start);
        let mut n = (end - start - lo) as usize;
        if n > want - done {
            n = want - done;
        }
        // Verifier: the offset is masked below MAX_CAPTURE and the length below
        // 2 * MAX_CAPTURE (a MAX_CAPTURE - 1 mask would turn exactly MAX_CAPTURE into 0), and
        // the buffer has 3 * MAX_CAPTURE, so `dst + n` is provably inside it. Round trip
        // through map memory so that LLVM cannot drop the mask (it knows `n <= want - done`;
        // the verifier does not).
        let n = unsafe {
            core::ptr::write_volatile(&raw mut (*h).tid, n as u32);
            core::ptr::read_volatile(&raw const (*h).tid)
        } as usize
            & OFF_MASK;
        if n > 0 {
            // SAFETY: bounds as explained above.
            let rc = unsafe {
                bpf_probe_read_user(
                    data.add(done & MASK).cast(),
                    n as u32,
                    (iov[0] + lo) as *const c_void,
                )
            };
            if rc != 0 {
                count(stats::READ_USER_FAILED);
                return 1;
            }
        }
        unsafe { core::ptr::write_volatile(&raw mut (*h).captured, (done + n) as u32) };
    }
    unsafe { core::ptr::write_volatile(&raw mut (*h).len, end) };
    if walk.len <= end {
        // The last transferred byte is in this iovec; 2 when it is also the last iovec.
        let last = if i + 1 == walk.iovcnt { 2 } else { 1 };
        let inside = walk.len - start;
        unsafe {
            core::ptr::write_volatile(&raw mut (*h).ts_ns, last);
            core::ptr::write_volatile(&raw mut (*h).sk, iov[0] + inside);
            core::ptr::write_volatile(
                &raw mut (*h).tail,
                if inside > TAIL_CAPTURE as u64 {
                    TAIL_CAPTURE as u32
                } else {
                    inside as u32
                },
            );
        }
        return 1;
    }
    0
}

/// The `i`th `struct iovec` (base, length) of a user array. Read as one value: a zeroed stack
/// array would be cleared byte by byte, which multiplies the verifier's work in every loop.
#[inline(always)]
fn read_iovec(array: u64, i: u64) -> Option<[u64; 2]> {
    // SAFETY: reads user memory through the helper, which handles faults.
    unsafe { aya_ebpf::helpers::bpf_probe_read_user((array + i * 16) as *const [u64; 2]) }.ok()
}

/// First bytes of the HTTP/2 client connection preface (`PRI * HTTP/2.0...`).
const H2_PREFACE_START: &[u8; 8] = b"PRI * HT";

const TAIL_MASK: usize = 2 * TAIL_CAPTURE - 1;
const OFF_MASK: usize = 2 * MAX_CAPTURE - 1;

/// Copies up to `TAIL_CAPTURE` bytes ending at `end` (the address after the last transferred
/// byte, 0 if unknown) to `data[captured..]`, without overlapping the prefix and without
/// reaching back more than `avail` bytes (the part of the last buffer before `end`); returns how
/// many. Used for plain buffers and for vectored reads (from the iovec holding the last byte).
#[inline(always)]
fn copy_tail(end: u64, avail: u64, len: u64, captured: usize, data: *mut u8) -> usize {
    if end == 0 || len <= captured as u64 {
        return 0;
    }
    let mut want = len - captured as u64;
    if want > TAIL_CAPTURE as u64 {
        want = TAIL_CAPTURE as u64;
    }
    if want > avail {
        want = avail;
    }
    let src = end - want;
    // Verifier: offset and length both masked, and the buffer has MAX_CAPTURE + 2 * TAIL_CAPTURE
    // bytes of room past any offset <= MAX_CAPTURE.
    let off = captured & OFF_MASK;
    let n = (want as usize) & TAIL_MASK;
    if n == 0 || off > MAX_CAPTURE {
        return 0;
    }
    // SAFETY: bounds as explained above.
    let rc = unsafe { bpf_probe_read_user(data.add(off).cast(), n as u32, src as *const c_void) };
    if rc != 0 {
        count(stats::READ_USER_FAILED);
        return 0;
    }
    n
}

/// Most trailing iovecs gathered into the tail of a vectored write.
const MAX_IOV_TAIL: u64 = 16;

/// The tail of a vectored write that transferred all its iovecs: up to `TAIL_CAPTURE` bytes
/// gathered backwards from the end of the last iovec (gRPC's C core writes a trailer as a dozen
/// small iovecs, so the last iovec alone is not enough). Returns how many bytes were stored
/// after the prefix; 0 on any failure.
#[inline(never)]
fn copy_tail_vec(io: &ActiveIo, len: u64, captured: usize, data: *mut u8) -> usize {
    if len <= captured as u64 {
        return 0;
    }
    let mut want = len - captured as u64;
    if want > TAIL_CAPTURE as u64 {
        want = TAIL_CAPTURE as u64;
    }
    let base = captured & OFF_MASK;
    if base > MAX_CAPTURE {
        return 0;
    }
    // Bytes still to gather, filled from the end of the tail region backwards.
    let mut left = want;
    let mut j: u64 = 0;
    while j < MAX_IOV_TAIL {
        if left == 0 || j >= io.iovcnt {
            break;
        }
        let Some(iov) = read_iovec(io.buf, io.iovcnt - 1 - j) else {
            return 0;
        };
        let mut k = iov[1];
        if k > left {
            k = left;
        }
        left -= k;
        // Verifier: the in-tail offset and the length are masked below 2 * TAIL_CAPTURE.
        let off = (left as usize) & TAIL_MASK;
        let n = (k as usize) & TAIL_MASK;
        if n > 0 {
            // SAFETY: base <= MAX_CAPTURE, off + n < 4 * TAIL_CAPTURE: inside the buffer.
            let rc = unsafe {
                bpf_probe_read_user(
                    data.add(base + off).cast(),
                    n as u32,
                    (iov[0] + iov[1] - k) as *const c_void,
                )
            };
            if rc != 0 {
                count(stats::READ_USER_FAILED);
                return 0;
            }
        }
        j += 1;
    }
    if left != 0 {
        return 0;
    }
    (want as usize) & TAIL_MASK
}
