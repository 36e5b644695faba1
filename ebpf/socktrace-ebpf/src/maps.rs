//! Maps and globals shared by every hook family, and the helpers that read them.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use socktrace_common::{ConnTuple, DataEventBuf, SockInfo, TpOffsets, stats};

/// Set by user space before load. The agent's own process id: its traffic is never traced.
#[unsafe(no_mangle)]
static AGENT_TGID: u32 = 0;
/// Payload bytes to copy per socket read or write (`<= MAX_CAPTURE`).
#[unsafe(no_mangle)]
static CAPTURE_BYTES: u32 = socktrace_common::DEFAULT_CAPTURE;
/// Non-zero: trace only the processes in `TRACED_PIDS`; zero: every process but the agent.
#[unsafe(no_mangle)]
static FILTER_PIDS: u32 = 0;
/// Wake user space only once this many bytes are waiting (it also polls on a timer).
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u32 = 0;
/// Non-zero when TLS library calls are followed (`tls.rs`).
#[unsafe(no_mangle)]
static TLS_ENABLED: u32 = 0;
/// Offsets of the tracepoint fields read, from the format files.
#[unsafe(no_mangle)]
static TP_OFFSETS: TpOffsets = TpOffsets::DEFAULT;

/// The offset of a tracepoint field: `tp_offset(|o| &o.st_sport)`.
#[inline(always)]
pub fn tp_offset(field: impl Fn(&TpOffsets) -> &u16) -> usize {
    // SAFETY: a read of a global that the loader rewrites before load (see `agent_tgid`).
    usize::from(unsafe { core::ptr::read_volatile(field(&TP_OFFSETS)) })
}

#[inline(always)]
pub fn agent_tgid() -> u32 {
    // SAFETY: a read of a global that the loader rewrites before load; volatile so the compiler
    // does not constant-fold the default.
    unsafe { core::ptr::read_volatile(&AGENT_TGID) }
}
#[inline(always)]
pub fn capture_bytes() -> u32 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&CAPTURE_BYTES) }
}
#[inline(always)]
pub fn filter_pids() -> bool {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&FILTER_PIDS) != 0 }
}
#[inline(always)]
pub fn tls_enabled() -> bool {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&TLS_ENABLED) != 0 }
}
#[inline(always)]
pub fn wakeup_bytes() -> u64 {
    // SAFETY: as above.
    u64::from(unsafe { core::ptr::read_volatile(&WAKEUP_BYTES) })
}

/// Every record for user space. Size set by user space (`--ringbuf-size`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Per-CPU counters, indexed by `socktrace_common::stats`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::COUNT, 0);

/// Staging area for one data record (too large for the 512-byte stack).
#[map]
pub static SCRATCH: PerCpuArray<DataEventBuf> = PerCpuArray::with_max_entries(1, 0);

/// Processes to trace when `FILTER_PIDS` is set, keyed by tgid. Filled by user space from
/// `--pid`/`--exe`, and by `sched_process_fork` for children of traced processes.
#[map]
pub static TRACED_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(65536, 0);

/// `--exe` names as task names (first 15 bytes, NUL-padded): a process whose name matches at
/// exec is added to `TRACED_PIDS` right there, before it can make its first connection.
#[map]
pub static EXE_NAMES: HashMap<[u8; 16], u8> = HashMap::with_max_entries(256, 0);

/// Socket pointer -> 4-tuple and role, learned from `inet_sock_set_state` at ESTABLISHED.
#[map]
pub static SOCKS: LruHashMap<u64, SockInfo> = LruHashMap::with_max_entries(65536, 0);

/// Sockets that produced data events, so that their close is reported (and only theirs). The
/// value is 1, or `1 | SOCK_LOST` after a record of the socket was lost.
#[map]
pub static TRACKED_SOCKS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(65536, 0);
/// `TRACKED_SOCKS` value bit: a record was lost; the next one says so (`DATA_LOST_BEFORE`).
pub const SOCK_LOST: u8 = 2;

/// Client sockets a traced process is connecting (SYN sent, handshake not complete yet), by
/// kernel socket pointer: at ESTABLISHED they are announced with an `EVENT_CONNECT`.
#[map]
pub static TRACED_CONNECTING: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16384, 0);

/// Per-socket payload prefix size overriding `CAPTURE_BYTES`, set by user space for connections
/// whose protocol packs many messages into one read (HTTP/2: the headers of many streams).
#[map]
pub static SOCK_CAPTURE: LruHashMap<u64, u32> = LruHashMap::with_max_entries(16384, 0);

/// Local ports the agent listens on (its health endpoint): connections accepted on them are the
/// agent's own, so their peers are added to `SELF_PEERS` as soon as they are established, before
/// the peer's first request is written.
#[map]
pub static SELF_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(16, 0);

/// Tuples (as the peer sees them) of connections the agent itself uses, e.g. OTLP export to a
/// collector on this host: the peer's reads and writes on them are not traced.
#[map]
pub static SELF_PEERS: LruHashMap<ConnTuple, u8> = LruHashMap::with_max_entries(4096, 0);

#[inline(always)]
pub fn count(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, so no other writer runs concurrently on this CPU's copy.
        unsafe { *counter += 1 };
    }
}

/// Sends a fixed-size record to user space, counting it as sent or lost to a full buffer.
#[inline(always)]
pub fn send_event<T>(ev: T) {
    if EVENTS.output::<T>(ev, wakeup_flags()).is_ok() {
        count(stats::EVENTS_SENT);
    } else {
        count(stats::RINGBUF_FULL);
    }
}

/// Whether the calling process is one we trace (and never the agent itself).
#[inline(always)]
pub fn current_is_traced() -> bool {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid == agent_tgid() {
        return false;
    }
    if filter_pids() {
        return TRACED_PIDS.get_ptr(tgid).is_some();
    }
    true
}

/// Flags for a ring-buffer write: wake the reader only when enough data is waiting.
#[inline(always)]
pub fn wakeup_flags() -> u64 {
    const BPF_RB_AVAIL_DATA: u64 = 0;
    const BPF_RB_NO_WAKEUP: u64 = 1;
    const BPF_RB_FORCE_WAKEUP: u64 = 2;
    let threshold = wakeup_bytes();
    if threshold == 0 || EVENTS.query(BPF_RB_AVAIL_DATA) >= threshold {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}
