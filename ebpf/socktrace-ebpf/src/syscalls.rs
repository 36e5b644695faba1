//! Socket reads and writes, seen at the syscall boundary.
//!
//! `sys_enter_*` remembers the fd and user buffer of the calling thread; `sock_send_length` /
//! `sock_recv_length` (see `sock.rs`), which fire inside the same syscall, say whether that fd is a
//! TCP socket and which one; `sys_exit_*` then has the exact byte count and copies the payload
//! prefix into one ring-buffer record.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::{bpf_ktime_get_ns, bpf_probe_read_user, bpf_ringbuf_output},
    },
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};
use socktrace_common::{
    DIR_EGRESS, DIR_INGRESS, DataEvent, EVENT_DATA, MAX_CAPTURE, ROLE_UNKNOWN, stats,
};

use crate::maps::{
    EVENTS, SCRATCH, SELF_PEERS, SOCKS, TRACKED_SOCKS, capture_bytes, count, current_is_traced,
    wakeup_flags,
};

/// The peer side of a read was only peeked (`MSG_PEEK`): the bytes will be read again.
pub const IO_PEEK: u32 = 1;
/// Most iovecs gathered into one record; later ones count in `len` but are not copied.
const MAX_IOV: u64 = 8;

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
    pub _pad: u32,
}

/// Thread id -> syscall in flight. LRU so a thread killed mid-call cannot leak an entry forever.
#[map]
pub static ACTIVE_IO: LruHashMap<u32, ActiveIo> = LruHashMap::with_max_entries(16384, 0);

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
        _pad: 0,
    };
    if ACTIVE_IO.insert(tid, io, 0).is_err() {
        count(stats::MAP_UPDATE_FAILED);
    }
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
#[inline(always)]
fn exit(ctx: &TracePointContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: the value is copied out before the entry is removed.
    let Some(io) = (unsafe { ACTIVE_IO.get(&tid) }).copied() else {
        return 0;
    };
    let _ = ACTIVE_IO.remove(&tid);
    if io.sk == 0 || io.flags & IO_PEEK != 0 {
        return 0;
    }
    // SAFETY: offset from the format file.
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(16) }) else {
        return 0;
    };
    if ret <= 0 {
        return 0;
    }
    emit_data(&io, ret as u64);
    0
}

#[tracepoint]
pub fn sys_exit_read(ctx: TracePointContext) -> u32 {
    exit(&ctx)
}
#[tracepoint]
pub fn sys_exit_recvfrom(ctx: TracePointContext) -> u32 {
    exit(&ctx)
}
#[tracepoint]
pub fn sys_exit_write(ctx: TracePointContext) -> u32 {
    exit(&ctx)
}
#[tracepoint]
pub fn sys_exit_sendto(ctx: TracePointContext) -> u32 {
    exit(&ctx)
}
#[tracepoint]
pub fn sys_exit_readv(ctx: TracePointContext) -> u32 {
    exit(&ctx)
}
#[tracepoint]
pub fn sys_exit_writev(ctx: TracePointContext) -> u32 {
    exit(&ctx)
}
#[tracepoint]
pub fn sys_exit_recvmsg(ctx: TracePointContext) -> u32 {
    exit(&ctx)
}
#[tracepoint]
pub fn sys_exit_sendmsg(ctx: TracePointContext) -> u32 {
    exit(&ctx)
}
#[tracepoint]
pub fn sys_exit_sendfile64(ctx: TracePointContext) -> u32 {
    exit(&ctx)
}

const MASK: usize = MAX_CAPTURE - 1;

/// Build the record in the per-CPU scratch buffer and copy it to the ring buffer.
///
/// Not inlined: it is one BPF subprogram shared by every exit hook, with its own 512-byte stack
/// frame (inlined into each hook it exceeded the stack limit).
#[inline(never)]
fn emit_data(io: &ActiveIo, len: u64) {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch slot; BPF programs are not preempted on their CPU while running.
    let scratch = unsafe { &mut *scratch };
    let id = bpf_get_current_pid_tgid();

    let header = &mut scratch.header;
    header.role = ROLE_UNKNOWN;
    header.tuple_known = 0;
    // SAFETY: the value is read in place and copied field by field into the scratch buffer.
    if let Some(info) = unsafe { SOCKS.get(&io.sk) } {
        if SELF_PEERS.get_ptr(&info.tuple).is_some() {
            count(stats::SELF_SKIPPED);
            return;
        }
        header.role = info.role;
        header.tuple = info.tuple;
        header.tuple_known = 1;
    }

    let mut want = capture_bytes() as u64;
    if want > len {
        want = len;
    }
    if want > MAX_CAPTURE as u64 {
        want = MAX_CAPTURE as u64;
    }
    let want = want as usize;
    let data = scratch.data.as_mut_ptr();
    let mut captured: usize = 0;
    if io.buf != 0 && want > 0 {
        if io.iovcnt == 0 {
            // SAFETY: destination is `data[0..want & MASK]` inside a 2*MAX_CAPTURE buffer.
            let rc = unsafe {
                bpf_probe_read_user(data.cast(), (want & MASK) as u32, io.buf as *const c_void)
            };
            if rc == 0 {
                captured = want & MASK;
                if want == MAX_CAPTURE {
                    // `want & MASK` is 0 for exactly MAX_CAPTURE; copy the full size instead.
                    // SAFETY: MAX_CAPTURE bytes fit the buffer.
                    let rc = unsafe {
                        bpf_probe_read_user(
                            data.cast(),
                            MAX_CAPTURE as u32,
                            io.buf as *const c_void,
                        )
                    };
                    if rc == 0 {
                        captured = MAX_CAPTURE;
                    }
                }
            } else {
                count(stats::READ_USER_FAILED);
            }
        } else {
            let mut i: u64 = 0;
            while i < MAX_IOV {
                if i >= io.iovcnt || captured >= want {
                    break;
                }
                let mut iov = [0u64; 2];
                // SAFETY: 16 bytes of user memory into a stack array; failure is handled.
                let rc = unsafe {
                    bpf_probe_read_user(
                        iov.as_mut_ptr().cast(),
                        16,
                        (io.buf + i * 16) as *const c_void,
                    )
                };
                if rc != 0 {
                    count(stats::READ_USER_FAILED);
                    break;
                }
                let mut n = iov[1] as usize;
                if n > want - captured {
                    n = want - captured;
                }
                // Verifier: both the offset and the length are masked to < MAX_CAPTURE, and the
                // buffer is 2 * MAX_CAPTURE, so `dst + n` is provably inside it ("invalid
                // indirect access to map value" otherwise).
                let off = captured & MASK;
                let n = n & MASK;
                if n > 0 {
                    // SAFETY: bounds as explained above.
                    let rc = unsafe {
                        bpf_probe_read_user(data.add(off).cast(), n as u32, iov[0] as *const c_void)
                    };
                    if rc != 0 {
                        count(stats::READ_USER_FAILED);
                        break;
                    }
                }
                captured += n;
                i += 1;
            }
        }
    }
    if (captured as u64) < len {
        count(stats::TRUNCATED);
    }
    if captured > MAX_CAPTURE {
        captured = MAX_CAPTURE;
    }

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
    header.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    let _ = TRACKED_SOCKS.insert(io.sk, 1u8, 0);

    let size = core::mem::size_of::<DataEvent>() + captured;
    // SAFETY: `scratch` is a map value of size_of::<DataEventBuf>() >= `size`.
    let rc = unsafe {
        bpf_ringbuf_output(
            core::ptr::addr_of!(EVENTS).cast_mut().cast(),
            (scratch as *mut socktrace_common::DataEventBuf).cast(),
            size as u64,
            wakeup_flags(),
        )
    };
    if rc == 0 {
        count(stats::EVENTS_SENT);
    } else {
        count(stats::RINGBUF_FULL);
    }
}
