//! Request context that follows goroutines, not threads.
//!
//! A Go program serves each connection in a goroutine that the runtime moves between threads,
//! and a handler that calls another service often does so from a goroutine it started, or
//! hands the request to the HTTP client's writer goroutine. The thread context of `context.rs`
//! is wrong there: the thread that wrote a client request was serving another request a moment
//! earlier. So in Go processes the context is kept per goroutine (`g`, always in R14 in Go
//! 1.17+ code), and brought to the thread only for the write the goroutine is making:
//!
//! - A socket read that just began an HTTP/1 request on a server socket (a *fresh* thread
//!   context set by `context::server_read`) becomes the context of the goroutine that made it,
//!   read from R14 as saved at the syscall's entry (`go_link`). (Done at a `RET` probe of
//!   `internal/poll.(*FD).Read` before: the kernel single-steps `RET`, a second trap on every
//!   socket read of every Go program.)
//! - `runtime.newproc1` (every `go` statement), at entry, and where it has returned the new
//!   goroutine (the call that queues it in `runtime.newproc.func1`, else each `RET`): the new
//!   goroutine inherits its creator's context, or has none (goroutine structures are reused: a
//!   stale context is always overwritten here).
//! - `net/http.(*Transport).roundTrip` (entry): the request object takes the caller's context;
//!   `net/http.(*Request).write` (entry, in the connection's writer goroutine): that goroutine
//!   takes the context of the request it is about to write.
//! - `(*FD).Write` and `(*FD).Writev` (entry): the thread's context becomes the goroutine's, or
//!   none. The write syscall that follows on this thread reads it: `inject.rs` for the header it
//!   adds, and the data record (`link_sk`/`link_ts`, set by `go_link`, which then clears it) for
//!   user space's parent.
//!
//! Return probes are not used (Go moves goroutine stacks): user space attaches the `RET`
//! programs at each return instruction. Records of processes whose goroutines are followed are
//! marked `CTX_GO`, and user space links them only through what the kernel says here, never by
//! thread. Known gap: a large write that parks its goroutine (socket buffer full) and resumes
//! on another thread carries that thread's last context.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::{map, uprobe},
    maps::LruHashMap,
    programs::ProbeContext,
};
use socktrace_common::{CTX_GO, CTX_SERVER_REQUEST, DIR_INGRESS, DataEventBuf, stats};

use crate::{
    context::{CTX_FRESH, THREAD_CTX, ThreadCtx},
    maps::{count, current_is_traced},
};

/// A goroutine (or another runtime object, by address) of one process.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GoKey {
    pub g: u64,
    pub tgid: u32,
    pub _pad: u32,
}

/// Goroutine -> the request context it works for.
#[map]
static GO_CTX: LruHashMap<GoKey, ThreadCtx> = LruHashMap::with_max_entries(65536, 0);

/// `*http.Request` -> the context of the goroutine that made the call.
#[map]
static GO_REQ_CTX: LruHashMap<GoKey, ThreadCtx> = LruHashMap::with_max_entries(16384, 0);

/// Thread -> the creator goroutine of the `newproc1` call it is running (on the system stack:
/// the call does not move between threads).
#[map]
static GO_SPAWN: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16384, 0);

/// Processes whose goroutines are followed: their records are marked `CTX_GO`.
#[map]
static GO_LINKED: LruHashMap<u32, u8> = LruHashMap::with_max_entries(8192, 0);

/// A saved register of the probed user context.
#[inline(always)]
pub fn reg(ctx: &ProbeContext, field: impl Fn(*const pt_regs) -> *const u64) -> u64 {
    // SAFETY: the program's own context (the kernel's copy of the user registers), read at a
    // fixed offset.
    unsafe { core::ptr::read_volatile(field(ctx.regs)) }
}

/// The running goroutine of the probed context, keyed with its process.
#[inline(always)]
pub fn current_g(ctx: &ProbeContext, tgid: u32) -> GoKey {
    GoKey {
        // SAFETY: a field address of the context.
        g: reg(ctx, |r| unsafe { &raw const (*r).r14 }),
        tgid,
        _pad: 0,
    }
}

/// Word offset of R14 in x86_64 `struct pt_regs` (user ABI, `asm/ptrace.h`).
const REG_R14: usize = 1;

/// The running goroutine of the current task, from its user registers as saved at its syscall
/// (or uprobe) entry: Go keeps `g` in R14.
#[inline(always)]
pub fn user_g() -> Option<u64> {
    // SAFETY: BTF helpers; the returned pointer is only read with bpf_probe_read_kernel.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64 as *const u64;
    if regs.is_null() {
        return None;
    }
    // SAFETY: a kernel read of a saved register; failure is handled.
    unsafe { bpf_probe_read_kernel(regs.add(REG_R14)) }.ok()
}

#[inline(always)]
fn mark_linked(tgid: u32) {
    if GO_LINKED.get_ptr(&tgid).is_none() && GO_LINKED.insert(&tgid, &1, 0).is_err() {
        count(stats::MAP_UPDATE_FAILED);
    }
}

/// Copies the context at `from` (of `src`) to `to` (of `dst`), or removes `to` if there is none.
#[inline(always)]
fn carry(
    src: &LruHashMap<GoKey, ThreadCtx>,
    from: &GoKey,
    dst: &LruHashMap<GoKey, ThreadCtx>,
    to: &GoKey,
) {
    // SAFETY: the value is copied out.
    match unsafe { src.get(from) }.copied() {
        Some(mut c) => {
            c.flags = 0;
            if dst.insert(to, &c, 0).is_err() {
                count(stats::MAP_UPDATE_FAILED);
            }
        }
        None => {
            let _ = dst.remove(to);
        }
    }
}

/// `runtime.newproc1(fn *funcval, callergp *g, callerpc uintptr) *g`, at its first
/// instruction: the creating goroutine is the second argument (RBX; R14 is the system
/// goroutine `newproc` switched to).
#[uprobe]
pub fn go_newproc_enter(ctx: ProbeContext) -> u32 {
    if !current_is_traced() {
        return 0;
    }
    let id = bpf_get_current_pid_tgid();
    mark_linked((id >> 32) as u32);
    // SAFETY: a field address of the context.
    let creator = reg(&ctx, |r| unsafe { &raw const (*r).rbx });
    if GO_SPAWN.insert(&(id as u32), &creator, 0).is_err() {
        count(stats::MAP_UPDATE_FAILED);
    }
    0
}

/// Every `RET` of `runtime.newproc1`: the new goroutine (RAX) inherits its creator's context.
#[uprobe]
pub fn go_newproc_return(ctx: ProbeContext) -> u32 {
    // SAFETY: a field address of the context.
    spawned(reg(&ctx, |r| unsafe { &raw const (*r).rax }))
}

/// Where user space finds it, instead of `newproc1`'s returns (single-stepped, and Go's HTTP
/// server starts a goroutine per request): the call `runqput(pp, newg, true)` in
/// `runtime.newproc.func1`, right after `newproc1` returned `newg` (RBX), on the same thread.
#[uprobe]
pub fn go_newproc_queued(ctx: ProbeContext) -> u32 {
    // SAFETY: a field address of the context.
    spawned(reg(&ctx, |r| unsafe { &raw const (*r).rbx }))
}

/// The goroutine `new` that this thread's `newproc1` made inherits its creator's context.
#[inline(always)]
fn spawned(new: u64) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let tid = id as u32;
    // SAFETY: the value is copied out.
    let Some(creator) = unsafe { GO_SPAWN.get(&tid) }.copied() else {
        return 0;
    };
    let _ = GO_SPAWN.remove(&tid);
    let tgid = (id >> 32) as u32;
    let key = |g| GoKey { g, tgid, _pad: 0 };
    carry(&GO_CTX, &key(creator), &GO_CTX, &key(new));
    0
}

/// The goroutine `g` now running on this thread takes the thread's fresh server context, if
/// the read it just made began a request (`context::server_read`).
#[inline(always)]
pub fn claim(g: &GoKey, tid: u32) {
    let Some(c) = THREAD_CTX.get_ptr_mut(&tid) else {
        return;
    };
    // SAFETY: this thread's entry, read and updated in place.
    unsafe {
        if (*c).flags & CTX_FRESH == 0 {
            return;
        }
        (*c).flags = 0;
        (*c).g = g.g;
        if GO_CTX.insert(g, &*c, 0).is_err() {
            count(stats::MAP_UPDATE_FAILED);
        }
    }
}

/// The goroutine `g` of `tgid` answered the request it served: it serves none now (goroutines
/// it started keep their copy).
#[inline(always)]
pub fn answered(g: u64, tgid: u32) {
    let _ = GO_CTX.remove(&GoKey { g, tgid, _pad: 0 });
}

/// `internal/poll.(*FD).Write`, at its first instruction: the write that follows on this
/// thread is made for the goroutine's request, or for none.
#[uprobe]
pub fn go_write_enter(ctx: ProbeContext) -> u32 {
    if !current_is_traced() {
        return 0;
    }
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    mark_linked(tgid);
    writing(&current_g(&ctx, tgid), id as u32);
    0
}

/// Goroutine `g` is about to write on thread `tid`: the thread's context becomes the
/// goroutine's, or none, for the record of that write (`go_link` takes it).
#[inline(always)]
pub fn writing(g: &GoKey, tid: u32) {
    // SAFETY: the value is copied out.
    match unsafe { GO_CTX.get(g) }.copied() {
        Some(c) => {
            if THREAD_CTX.insert(&tid, &c, 0).is_err() {
                count(stats::MAP_UPDATE_FAILED);
            }
        }
        None => {
            let _ = THREAD_CTX.remove(&tid);
        }
    }
}

/// Hands a context between the running goroutine and an `*http.Request`: the request (in
/// `req`) takes the goroutine's (`TO_REQUEST`), or the goroutine takes the request's.
#[inline(always)]
fn hand_over<const TO_REQUEST: bool>(ctx: &ProbeContext, req: u64) -> u32 {
    if !current_is_traced() {
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let (g, req) = (
        current_g(ctx, tgid),
        GoKey {
            g: req,
            tgid,
            _pad: 0,
        },
    );
    if TO_REQUEST {
        carry(&GO_CTX, &g, &GO_REQ_CTX, &req);
    } else {
        carry(&GO_REQ_CTX, &req, &GO_CTX, &g);
    }
    0
}

/// `net/http.(*Transport).roundTrip(req *Request)`, at its first instruction: the request
/// (RBX) carries its caller's context to the connection's writer goroutine.
#[uprobe]
pub fn go_roundtrip_enter(ctx: ProbeContext) -> u32 {
    // SAFETY: a field address of the context.
    hand_over::<true>(&ctx, reg(&ctx, |r| unsafe { &raw const (*r).rbx }))
}

/// `net/http.(*Request).write`, at its first instruction (receiver in RAX): the writer
/// goroutine works for that request's caller now.
#[uprobe]
pub fn go_request_write_enter(ctx: ProbeContext) -> u32 {
    // SAFETY: a field address of the context.
    hand_over::<false>(&ctx, reg(&ctx, |r| unsafe { &raw const (*r).rax }))
}

/// Whether the process of the record staged in `scratch` has its goroutines followed.
#[inline(always)]
pub fn followed(scratch: *mut DataEventBuf) -> bool {
    // SAFETY: the caller's per-CPU scratch value.
    let pid = unsafe { core::ptr::read_volatile(&raw const (*scratch).header.pid) };
    GO_LINKED.get_ptr(&pid).is_some()
}

/// A data record as staged in `scratch`: in a process whose goroutines are followed, marks it
/// `CTX_GO`; a read that began a request makes that request the context of the goroutine that
/// read it (`claim`); a read that did not leaves no fresh context behind; a write is named
/// after the request it was made for (the thread's context, which `go_write_enter` set from
/// the writing goroutine).
///
/// Not inlined, and everything through the scratch value: see `context::server_read`.
#[inline(never)]
pub fn go_link(scratch: *mut DataEventBuf) {
    // SAFETY: the caller's per-CPU scratch value.
    let header = unsafe { &mut (*scratch).header };
    if !followed(scratch) {
        return;
    }
    let tid = header.tid;
    header.ctx_flags |= CTX_GO;
    let Some(c) = THREAD_CTX.get_ptr_mut(&tid) else {
        return;
    };
    if header.direction == DIR_INGRESS {
        if header.ctx_flags & CTX_SERVER_REQUEST == 0 {
            // SAFETY: this thread's entry.
            unsafe { (*c).flags &= !CTX_FRESH };
        } else if let Some(g) = user_g() {
            let g = GoKey {
                g,
                tgid: header.pid,
                _pad: 0,
            };
            claim(&g, tid);
        }
        return;
    }
    // SAFETY: as above.
    unsafe {
        header.link_sk = (*c).sk;
        header.link_ts = (*c).ts_ns;
    }
    // Used: a later write on this thread that did not come through `(*FD).Write` (cgo, a
    // syscall made directly) must not inherit it. Further writes of the same call (a partial
    // write) carry no request, which only the first needs.
    let _ = THREAD_CTX.remove(&tid);
}
