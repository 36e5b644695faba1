//! Socket identity from the `sock` tracepoints: which socket a syscall is using, and each TCP
//! connection's 4-tuple and role.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use socktrace_common::{
    AF_INET, AF_INET6, CloseEvent, ConnTuple, EVENT_CONN_CLOSE, ROLE_CLIENT, ROLE_SERVER, SockInfo,
    TCP_CLOSE, TCP_CLOSE_WAIT, TCP_ESTABLISHED, TCP_FIN_WAIT1, TCP_SYN_RECV, TCP_SYN_SENT, stats,
};

use crate::{
    maps::{EVENTS, SELF_PEERS, SOCKS, TRACKED_SOCKS, agent_tgid, count, wakeup_flags},
    syscalls::{ACTIVE_IO, IO_PEEK},
};

const IPPROTO_TCP: u16 = 6;
const MSG_PEEK: i32 = 2;

/// Offsets in `sock_send_length` / `sock_recv_length` (see the format files).
const LEN_SK: usize = 8;
const LEN_FAMILY: usize = 16;
const LEN_PROTOCOL: usize = 18;
const LEN_FLAGS: usize = 24;

/// Fires inside `sock_sendmsg`, in the context of the writing task.
#[tracepoint]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    on_sock_io(&ctx, false);
    0
}

/// Fires inside `sock_recvmsg`, in the context of the reading task.
#[tracepoint]
pub fn sock_recv_length(ctx: TracePointContext) -> u32 {
    on_sock_io(&ctx, true);
    0
}

#[inline(always)]
fn on_sock_io(ctx: &TracePointContext, recv: bool) {
    // SAFETY: offsets from the format file.
    let (Ok(sk), Ok(family), Ok(protocol), Ok(flags)) = (unsafe {
        (
            ctx.read_at::<u64>(LEN_SK),
            ctx.read_at::<u16>(LEN_FAMILY),
            ctx.read_at::<u16>(LEN_PROTOCOL),
            ctx.read_at::<i32>(LEN_FLAGS),
        )
    }) else {
        return;
    };
    let is_tcp = protocol == IPPROTO_TCP && (family == AF_INET || family == AF_INET6);
    let id = bpf_get_current_pid_tgid();
    if (id >> 32) as u32 == agent_tgid() {
        // The agent's own connection (OTLP export, API calls): remember how its peer sees it,
        // so that a collector on this host is not traced receiving our spans.
        if is_tcp {
            // SAFETY: the value is copied immediately.
            if let Some(info) = unsafe { SOCKS.get(&sk) }.copied() {
                let t = info.tuple;
                let peer = ConnTuple {
                    saddr: t.daddr,
                    daddr: t.saddr,
                    sport: t.dport,
                    dport: t.sport,
                    family: t.family,
                    _pad: 0,
                };
                if SELF_PEERS.insert(peer, 1u8, 0).is_err() {
                    count(stats::MAP_UPDATE_FAILED);
                }
            }
        }
        return;
    }
    let tid = id as u32;
    let Some(io) = ACTIVE_IO.get_ptr_mut(&tid) else {
        if is_tcp {
            // Socket I/O with no syscall entry: a call that began before the agent, or one we do
            // not hook (sendmmsg, splice, io_uring). Counted so the gap is visible.
            count(stats::MISSING_ENTRY);
        }
        return;
    };
    // SAFETY: the entry belongs to this thread, which is the one running.
    let io = unsafe { &mut *io };
    if is_tcp {
        io.sk = sk;
        if recv && flags & MSG_PEEK != 0 {
            io.flags |= IO_PEEK;
        }
    }
}

/// Offsets in `inet_sock_set_state`.
const ST_SKADDR: usize = 8;
const ST_OLDSTATE: usize = 16;
const ST_NEWSTATE: usize = 20;
const ST_SPORT: usize = 24;
const ST_DPORT: usize = 26;
const ST_FAMILY: usize = 28;
const ST_PROTOCOL: usize = 30;
const ST_SADDR: usize = 32;
const ST_DADDR: usize = 36;
const ST_SADDR6: usize = 40;
const ST_DADDR6: usize = 56;

/// TCP state changes, host-wide: fires in softirq context, so it is not filtered by process.
/// At ESTABLISHED it records the tuple and role; when a traced socket shuts down it tells user
/// space, which finishes requests that end with the connection.
#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = try_set_state(&ctx);
    0
}

#[inline(always)]
fn try_set_state(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: offsets from the format file.
    unsafe {
        let protocol: u16 = ctx.read_at(ST_PROTOCOL)?;
        if protocol != IPPROTO_TCP {
            return Ok(());
        }
        let sk: u64 = ctx.read_at(ST_SKADDR)?;
        let oldstate: i32 = ctx.read_at(ST_OLDSTATE)?;
        let newstate: i32 = ctx.read_at(ST_NEWSTATE)?;

        if newstate == TCP_ESTABLISHED {
            let role = match oldstate {
                TCP_SYN_SENT => ROLE_CLIENT,
                TCP_SYN_RECV => ROLE_SERVER,
                _ => return Ok(()),
            };
            let mut tuple = ConnTuple {
                sport: ctx.read_at(ST_SPORT)?,
                dport: ctx.read_at(ST_DPORT)?,
                family: ctx.read_at(ST_FAMILY)?,
                ..Default::default()
            };
            if tuple.family == AF_INET6 {
                let s6: [u8; 16] = ctx.read_at(ST_SADDR6)?;
                let d6: [u8; 16] = ctx.read_at(ST_DADDR6)?;
                if is_v4_mapped(&s6) && is_v4_mapped(&d6) {
                    // Normalise v4-mapped to plain IPv4, so both ends of a loopback
                    // connection compare equal whatever family their sockets use.
                    tuple.family = AF_INET;
                    tuple.saddr[..4].copy_from_slice(&s6[12..]);
                    tuple.daddr[..4].copy_from_slice(&d6[12..]);
                } else {
                    tuple.saddr = s6;
                    tuple.daddr = d6;
                }
            } else {
                let s4: [u8; 4] = ctx.read_at(ST_SADDR)?;
                let d4: [u8; 4] = ctx.read_at(ST_DADDR)?;
                tuple.saddr[..4].copy_from_slice(&s4);
                tuple.daddr[..4].copy_from_slice(&d4);
            }
            let info = SockInfo {
                tuple,
                role,
                _pad: 0,
            };
            if SOCKS.insert(sk, info, 0).is_err() {
                count(stats::MAP_UPDATE_FAILED);
            }
            return Ok(());
        }

        if newstate == TCP_FIN_WAIT1 || newstate == TCP_CLOSE_WAIT || newstate == TCP_CLOSE {
            if TRACKED_SOCKS.get_ptr(&sk).is_some() {
                let ev = CloseEvent {
                    kind: EVENT_CONN_CLOSE,
                    new_state: newstate as u32,
                    ts_ns: bpf_ktime_get_ns(),
                    sk,
                };
                if EVENTS.output(ev, wakeup_flags()).is_ok() {
                    count(stats::EVENTS_SENT);
                } else {
                    count(stats::RINGBUF_FULL);
                }
            }
            if newstate == TCP_CLOSE {
                let _ = TRACKED_SOCKS.remove(&sk);
                let _ = SOCKS.remove(&sk);
            }
        }
    }
    Ok(())
}

#[inline(always)]
fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[..10].iter().all(|b| *b == 0) && a[10] == 0xff && a[11] == 0xff
}
