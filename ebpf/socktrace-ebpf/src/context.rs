//! Per-thread server context: which trace the request a thread is serving belongs to, so that
//! the `traceparent` the injection program (`inject.rs`) puts into the requests that thread
//! sends continues that trace.
//!
//! Set by plain reads (`read`, `recvfrom`) on server sockets that begin an HTTP/1 request
//! (method token and space), from the request's own `traceparent` when it has one within the
//! first `CTX_HEADER_WINDOW` captured bytes, else a random trace id; cleared when the same
//! thread writes on that socket (the response). User space learns the decision from the read's
//! `DataEvent` (`ctx_flags`, `trace_id`). In Go processes a thread runs many goroutines: there
//! `goroutine.rs` keeps the context per goroutine and sets the thread's before each write.

use aya_ebpf::{
    helpers::generated::bpf_get_prandom_u32,
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use socktrace_common::{
    CTX_FROM_HEADER, CTX_HEADER_WINDOW, CTX_SERVER_REQUEST, DataEventBuf, stats,
};

use crate::{
    http::{self, HAS_TP, HeadScan},
    maps::count,
};

/// The request a thread is serving.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ThreadCtx {
    pub trace_id: [u8; 16],
    /// The server socket the request came in on: a write there by the thread ends the context.
    pub sk: u64,
    /// Timestamp of the record of the read that began the request (`DataEvent::ts_ns`): with
    /// `sk`, user space's key for the request.
    pub ts_ns: u64,
    /// The request's own `traceparent`, when it had one: `http::TP_VALID`, with `TP_SAMPLED`
    /// when its flags say sampled (a parent-based sampler follows them). 0: no header.
    pub header: u32,
    /// `CTX_FRESH` until a goroutine claims the context (`goroutine.rs`); `CTX_LOOP` on a
    /// thread seen serving several requests at once.
    pub flags: u32,
    /// Go: the goroutine serving the request (0 elsewhere): its context ends with the response.
    pub g: u64,
}

/// `ThreadCtx::flags`: set by the read that began the request, not yet taken by its goroutine.
pub const CTX_FRESH: u32 = 1;
/// `ThreadCtx::flags`: the thread read this request while another was unanswered (an event
/// loop), or did so in the last `LOOP_TTL_NS`: which request its calls belong to cannot be
/// told, so the requests it sends get a trace of their own, not this one's.
pub const CTX_LOOP: u32 = 2;

/// How long a thread seen serving several requests at once is taken for an event loop (user
/// space uses the same time for its links).
const LOOP_TTL_NS: u64 = 60_000_000_000;

/// Threads seen serving several requests at once, with when they last did.
#[map]
static LOOP_THREADS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(4096, 0);

/// Thread id -> the request it is serving. LRU: threads that exit mid-request are forgotten.
#[map]
pub static THREAD_CTX: LruHashMap<u32, ThreadCtx> = LruHashMap::with_max_entries(16384, 0);

/// Scan state for incoming request heads (the bytes are the data record's own payload).
#[map]
static CTX_SCAN: PerCpuArray<HeadScan> = PerCpuArray::with_max_entries(1, 0);

/// Stores a random, valid (non-zero) trace id in `out` (four words).
#[inline(always)]
pub fn random_trace_id(out: *mut u32) {
    let mut any = 0u32;
    let mut k = 0;
    while k < 4 {
        // SAFETY: helper without arguments.
        let r = unsafe { bpf_get_prandom_u32() };
        any |= r;
        // SAFETY: `out` has room for four words.
        unsafe { core::ptr::write_volatile(out.add(k), r) };
        k += 1;
    }
    if any == 0 {
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(out.add(3), 1 << 24) };
    }
}

/// A server socket read, as staged in `scratch` (header filled, `captured` payload bytes in
/// `data`): if it begins an HTTP/1 request, makes it the thread's server context and says so
/// in the header.
///
/// Not inlined: its own stack frame, and one copy shared by the two read hooks. Everything
/// comes from the scratch value (see the caller).
#[inline(never)]
pub fn server_read(scratch: *mut DataEventBuf) {
    const W: usize = CTX_HEADER_WINDOW;
    // SAFETY: the caller's per-CPU scratch value.
    let header = unsafe { &mut (*scratch).header };
    let data = unsafe { (&raw const (*scratch).data).cast::<u8>() };
    let captured = unsafe { core::ptr::read_volatile(&raw const header.captured) } as usize;
    if captured < 16 {
        return;
    }
    // SAFETY: `data` has at least 16 valid bytes; read unaligned.
    let head = unsafe { core::ptr::read_unaligned(data.cast::<u64>()) };
    if http::method_len(head) == 0 {
        return;
    }
    let Some(st) = CTX_SCAN.get_ptr_mut(0) else {
        return;
    };
    let n = if captured > W { W } else { captured };
    // SAFETY: per-CPU map value.
    unsafe { core::ptr::write_volatile(&raw mut (*st).n, n as u32) };
    http::find_lines::<W>(data, st);
    http::match_names::<W, false>(data, st);

    let mut flags = CTX_SERVER_REQUEST;
    // The decision goes straight into the record (map memory): 16 bytes on the stack, and the
    // words the decoder keeps live, are what pushed this frame over the verifier's stack limit.
    // SAFETY: `trace_id` is 16 bytes at an 8-byte aligned offset of the header.
    let trace_id = (&raw mut header.trace_id).cast::<u32>();
    // SAFETY: per-CPU map value.
    let (found, tp_at, n) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*st).flags) & HAS_TP != 0,
            core::ptr::read_volatile(&raw const (*st).tp_at) as usize,
            core::ptr::read_volatile(&raw const (*st).n) as usize,
        )
    };
    // The value (at most 2 spaces, 55 characters and its line end) must lie in the copied bytes.
    let incoming = if found && tp_at + 58 <= n {
        http::traceparent_trace_id::<W>(data, tp_at, trace_id)
    } else {
        0
    };
    if incoming != 0 {
        flags |= CTX_FROM_HEADER;
        count(stats::SERVER_CTX_FROM_HEADER);
    } else {
        random_trace_id(trace_id);
    }
    header.ctx_flags |= flags;
    let mut ctx = ThreadCtx {
        trace_id: header.trace_id,
        sk: header.sk,
        ts_ns: header.ts_ns,
        header: incoming,
        flags: CTX_FRESH,
        g: 0,
    };
    // An unanswered request of another connection: the thread multiplexes (an event loop).
    let now = header.ts_ns;
    // SAFETY: the value is read in place.
    let busy = unsafe { THREAD_CTX.get(&header.tid) }.is_some_and(|prev| prev.sk != header.sk);
    if busy {
        let _ = LOOP_THREADS.insert(&header.tid, &now, 0);
        ctx.flags |= CTX_LOOP;
    // SAFETY: the value is copied out.
    } else if let Some(seen) = unsafe { LOOP_THREADS.get(&header.tid) }.copied() {
        if now.wrapping_sub(seen) < LOOP_TTL_NS {
            ctx.flags |= CTX_LOOP;
        }
    }
    if THREAD_CTX.insert(header.tid, ctx, 0).is_err() {
        count(stats::MAP_UPDATE_FAILED);
    }
    count(stats::SERVER_CTX_SET);
}

/// A write by `tid` on socket `sk` (egress exit path): the response to the request the thread
/// was serving on that socket ends its server context, and in Go the serving goroutine's.
#[inline(always)]
pub fn server_write(id: u64, sk: u64) {
    let tid = id as u32;
    // SAFETY: the value is read in place.
    if let Some(ctx) = unsafe { THREAD_CTX.get(&tid) }
        && ctx.sk == sk
    {
        if ctx.g != 0 {
            crate::goroutine::answered(ctx.g, (id >> 32) as u32);
        }
        let _ = THREAD_CTX.remove(&tid);
    }
}
