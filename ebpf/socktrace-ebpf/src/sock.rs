//! Socket identity from the `sock` tracepoints: which socket a syscall is using, and each TCP
//! connection's 4-tuple and role.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{self, bpf_get_current_task_btf, bpf_ktime_get_ns, bpf_task_pt_regs},
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use socktrace_common::{
    AF_INET, AF_INET6, CLOSE_LOST_BEFORE, CloseEvent, ConnTuple, ConnectEvent, DIR_EGRESS,
    DIR_INGRESS, EVENT_CONN_CLOSE, EVENT_CONNECT, ROLE_CLIENT, ROLE_SERVER, SockInfo, TCP_CLOSE,
    TCP_CLOSE_WAIT, TCP_ESTABLISHED, TCP_FIN_WAIT1, TCP_SYN_RECV, TCP_SYN_SENT, stats,
};

use crate::{
    goroutine::{self, GoKey},
    inject,
    maps::{
        SELF_PEERS, SELF_PORTS, SOCK_CAPTURE, SOCK_LOST, SOCKS, TRACED_CONNECTING, TRACKED_SOCKS,
        agent_tgid, count, current_is_traced, send_event, tls_enabled, tp_offset,
    },
    syscalls::{ActiveIo, IO_PEEK, IO_TLS, begin_io, live_io},
    tls::{GO_CALLS, GO_CLAIM_NS, GO_PROCS, TLS_CALLS, TLS_SOCKS, TlsCall},
};

const IPPROTO_TCP: u16 = 6;
const MSG_PEEK: i32 = 2;

/// Fires inside `sock_sendmsg`, in the context of the writing task.
#[tracepoint]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    on_sock_io(&ctx, false, true);
    0
}

/// Fires inside `sock_recvmsg`, in the context of the reading task.
#[tracepoint]
pub fn sock_recv_length(ctx: TracePointContext) -> u32 {
    on_sock_io(&ctx, true, true);
    0
}

/// Variants for kernels without BTF (`bpf_get_current_task_btf` unavailable): a syscall that
/// began before the agent attached is then missed instead of recovered.
#[tracepoint]
pub fn sock_send_length_nobtf(ctx: TracePointContext) -> u32 {
    on_sock_io(&ctx, false, false);
    0
}

#[tracepoint]
pub fn sock_recv_length_nobtf(ctx: TracePointContext) -> u32 {
    on_sock_io(&ctx, true, false);
    0
}

#[inline(always)]
fn on_sock_io(ctx: &TracePointContext, recv: bool, recover: bool) {
    // SAFETY: offsets from the format file (`TP_OFFSETS`).
    let (Ok(sk), Ok(family), Ok(protocol), Ok(flags)) = (unsafe {
        (
            ctx.read_at::<u64>(tp_offset(|o| &o.len_sk)),
            ctx.read_at::<u16>(tp_offset(|o| &o.len_family)),
            ctx.read_at::<u16>(tp_offset(|o| &o.len_protocol)),
            ctx.read_at::<i32>(tp_offset(|o| &o.len_flags)),
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
    let Some(io) = live_io(tid) else {
        if is_tcp && current_is_traced() {
            let peek = recv && flags & MSG_PEEK != 0;
            // A call that began before the agent attached (a server thread blocked in read() on
            // an idle keep-alive connection): its arguments are still in the task's saved
            // registers. Otherwise a call we do not hook (sendmmsg, splice, io_uring): counted
            // so the gap is visible.
            if !(recover && recover_from_regs(tid, sk, recv, peek)) {
                count(stats::MISSING_ENTRY);
            }
        }
        return;
    };
    // SAFETY: the entry belongs to this thread, which is the one running.
    let io = unsafe { &mut *io };
    if is_tcp {
        io.sk = sk;
        if tls_enabled() {
            // Inside a TLS library call (of this thread, or of the goroutine it runs): this is
            // its socket, and these bytes are ciphertext.
            let call = match TLS_CALLS.get_ptr_mut(&tid) {
                Some(call) => GoIo::Call(call),
                None if recover => go_io((id >> 32) as u32, sk),
                None => GoIo::Plain,
            };
            match call {
                GoIo::Call(call) => {
                    // SAFETY: the call is this thread's, or its goroutine's, now running here.
                    unsafe {
                        (*call).sk = sk;
                        (*call).fd = io.fd;
                    }
                    io.flags |= IO_TLS;
                }
                GoIo::Ciphertext => io.flags |= IO_TLS,
                GoIo::Plain => {}
            }
        }
        if recv && flags & MSG_PEEK != 0 {
            io.flags |= IO_PEEK;
        }
    }
}

/// What a socket call is to TLS capture.
enum GoIo {
    /// Made inside this TLS library call (its socket is learned here).
    Call(*mut TlsCall),
    /// On a socket that carries a TLS session, outside a call.
    Ciphertext,
    Plain,
}

/// In a process whose goroutines use `crypto/tls`: the call of the goroutine this thread runs
/// (Go keeps the running goroutine, `g`, in R14, saved with the other user registers at
/// syscall entry), if this is its socket; else whether the socket carries TLS.
#[inline(always)]
fn go_io(tgid: u32, sk: u64) -> GoIo {
    // SAFETY: presence check only.
    if unsafe { GO_PROCS.get(&tgid) }.is_none() {
        return GoIo::Plain;
    }
    if let Some(g) = goroutine::user_g()
        && let Some(call) = GO_CALLS.get_ptr_mut(&GoKey { g, tgid, _pad: 0 })
        // A call keeps to its connection's socket, and an entry left by a call that ended
        // unseen (a failed read) soon claims none: a goroutine's later cleartext is not taken
        // for TLS.
        // SAFETY: fields of the goroutine's entry.
        && let (own, since) = unsafe { ((*call).sk, (*call).since) }
        && (own == 0 || own == sk)
        // SAFETY: a helper without arguments.
        && unsafe { bpf_ktime_get_ns() }.wrapping_sub(since) < GO_CLAIM_NS
    {
        // The socket carries TLS from now on (the mark outlives the call, `TLS_SOCKS`).
        if TLS_SOCKS.get_ptr(&sk).is_none() {
            let _ = TLS_SOCKS.insert(sk, 1, 0);
        }
        return GoIo::Call(call);
    }
    if TLS_SOCKS.get_ptr(&sk).is_some() {
        GoIo::Ciphertext
    } else {
        GoIo::Plain
    }
}

/// Word offsets in x86_64 `struct pt_regs` (user ABI, `asm/ptrace.h`): syscall arguments are
/// saved there at entry and stay until return.
const REG_DX: usize = 12;
const REG_SI: usize = 13;
const REG_DI: usize = 14;
const REG_ORIG_AX: usize = 15;

/// x86_64 syscall numbers of the calls `syscalls.rs` hooks.
const NR_READ: u64 = 0;
const NR_WRITE: u64 = 1;
const NR_READV: u64 = 19;
const NR_WRITEV: u64 = 20;
const NR_SENDFILE: u64 = 40;
const NR_SENDTO: u64 = 44;
const NR_RECVFROM: u64 = 45;
const NR_SENDMSG: u64 = 46;
const NR_RECVMSG: u64 = 47;

/// Rebuilds the in-flight syscall entry from the current task's saved user registers, so that
/// `sys_exit_*` can emit the record as usual. Returns false if the call is not one we handle.
#[inline(always)]
fn recover_from_regs(tid: u32, sk: u64, recv: bool, peek: bool) -> bool {
    // SAFETY: BTF helpers; the returned pointer is only read with bpf_probe_read_kernel.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64 as *const u64;
    if regs.is_null() {
        return false;
    }
    // SAFETY: kernel reads of saved registers; failures are handled.
    let (Ok(nr), Ok(di), Ok(si), Ok(dx)) = (unsafe {
        (
            bpf_probe_read_kernel(regs.add(REG_ORIG_AX)),
            bpf_probe_read_kernel(regs.add(REG_DI)),
            bpf_probe_read_kernel(regs.add(REG_SI)),
            bpf_probe_read_kernel(regs.add(REG_DX)),
        )
    }) else {
        return false;
    };
    let (buf, iovcnt, is_recv) = match nr {
        NR_READ | NR_RECVFROM => (si, 0, true),
        NR_WRITE | NR_SENDTO => (si, 0, false),
        NR_READV => (si, dx, true),
        NR_WRITEV => (si, dx, false),
        NR_SENDFILE => (0, 0, false),
        NR_RECVMSG | NR_SENDMSG => {
            let mut iov = [0u64; 2];
            // SAFETY: user read of msg_iov/msg_iovlen (offsets 16 and 24 of user_msghdr).
            let rc = unsafe {
                generated::bpf_probe_read_user(iov.as_mut_ptr().cast(), 16, (si + 16) as *const _)
            };
            if rc != 0 {
                count(stats::READ_USER_FAILED);
                return false;
            }
            (iov[0], iov[1], nr == NR_RECVMSG)
        }
        _ => return false,
    };
    if is_recv != recv {
        return false;
    }
    let io = ActiveIo {
        buf,
        iovcnt,
        sk,
        fd: di as u32,
        direction: if recv { DIR_INGRESS } else { DIR_EGRESS },
        flags: if peek { IO_PEEK } else { 0 },
        msg_sent: 0,
    };
    if !begin_io(tid, io) {
        return false;
    }
    count(stats::RECOVERED_ENTRY);
    true
}

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
    // SAFETY: offsets from the format file (`TP_OFFSETS`).
    unsafe {
        let protocol: u16 = ctx.read_at(tp_offset(|o| &o.st_protocol))?;
        if protocol != IPPROTO_TCP {
            return Ok(());
        }
        let sk: u64 = ctx.read_at(tp_offset(|o| &o.st_skaddr))?;
        let oldstate: i32 = ctx.read_at(tp_offset(|o| &o.st_oldstate))?;
        let newstate: i32 = ctx.read_at(tp_offset(|o| &o.st_newstate))?;

        if newstate == TCP_SYN_SENT {
            // Inside connect(), in the connecting task.
            if current_is_traced() && TRACED_CONNECTING.insert(sk, 1u8, 0).is_err() {
                count(stats::MAP_UPDATE_FAILED);
            }
            inject::on_syn_sent(sk);
            return Ok(());
        }

        if newstate == TCP_ESTABLISHED {
            let role = match oldstate {
                TCP_SYN_SENT => ROLE_CLIENT,
                TCP_SYN_RECV => ROLE_SERVER,
                _ => return Ok(()),
            };
            let mut tuple = ConnTuple {
                sport: ctx.read_at(tp_offset(|o| &o.st_sport))?,
                dport: ctx.read_at(tp_offset(|o| &o.st_dport))?,
                family: ctx.read_at(tp_offset(|o| &o.st_family))?,
                ..Default::default()
            };
            if tuple.family == AF_INET6 {
                let s6: [u8; 16] = ctx.read_at(tp_offset(|o| &o.st_saddr_v6))?;
                let d6: [u8; 16] = ctx.read_at(tp_offset(|o| &o.st_daddr_v6))?;
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
                let s4: [u8; 4] = ctx.read_at(tp_offset(|o| &o.st_saddr))?;
                let d4: [u8; 4] = ctx.read_at(tp_offset(|o| &o.st_daddr))?;
                tuple.saddr[..4].copy_from_slice(&s4);
                tuple.daddr[..4].copy_from_slice(&d4);
            }
            if role == ROLE_SERVER && SELF_PORTS.get_ptr(&tuple.sport).is_some() {
                let peer = ConnTuple {
                    saddr: tuple.daddr,
                    daddr: tuple.saddr,
                    sport: tuple.dport,
                    dport: tuple.sport,
                    family: tuple.family,
                    _pad: 0,
                };
                if SELF_PEERS.insert(peer, 1u8, 0).is_err() {
                    count(stats::MAP_UPDATE_FAILED);
                }
            }
            let info = SockInfo {
                tuple,
                role,
                _pad: 0,
            };
            if SOCKS.insert(sk, info, 0).is_err() {
                count(stats::MAP_UPDATE_FAILED);
            }
            if role == ROLE_CLIENT && TRACED_CONNECTING.get_ptr(&sk).is_some() {
                let _ = TRACED_CONNECTING.remove(&sk);
                // Only a server on this host can use it: loopback, or to this host's own address.
                if !is_local(&tuple) {
                    return Ok(());
                }
                // Its close is reported too, so user space forgets it.
                let _ = TRACKED_SOCKS.insert(sk, 1u8, 0);
                let ev = ConnectEvent {
                    kind: EVENT_CONNECT,
                    _pad: 0,
                    ts_ns: bpf_ktime_get_ns(),
                    sk,
                    tuple,
                };
                send_event(ev);
            }
            return Ok(());
        }

        if newstate == TCP_FIN_WAIT1 || newstate == TCP_CLOSE_WAIT || newstate == TCP_CLOSE {
            if let Some(mark) = TRACKED_SOCKS.get_ptr(&sk) {
                // A record of the socket lost since its last one: no later record will say so.
                // SAFETY: the socket's entry, read once.
                let lost = if unsafe { *mark } & SOCK_LOST != 0 {
                    CLOSE_LOST_BEFORE
                } else {
                    0
                };
                let ev = CloseEvent {
                    kind: EVENT_CONN_CLOSE,
                    new_state: newstate as u32 | lost,
                    ts_ns: bpf_ktime_get_ns(),
                    sk,
                };
                send_event(ev);
            }
            if newstate == TCP_CLOSE {
                let _ = TRACKED_SOCKS.remove(&sk);
                let _ = TLS_SOCKS.remove(&sk);
                let _ = SOCK_CAPTURE.remove(&sk);
                let _ = SOCKS.remove(&sk);
                let _ = TRACED_CONNECTING.remove(&sk);
                inject::on_close(sk);
            }
        }
    }
    Ok(())
}

/// A connection to this host: the destination is a loopback address or the source address.
#[inline(always)]
fn is_local(t: &ConnTuple) -> bool {
    if t.saddr == t.daddr {
        return true;
    }
    if t.family == AF_INET {
        return t.daddr[0] == 127;
    }
    let mut loopback = [0u8; 16];
    loopback[15] = 1;
    t.daddr == loopback
}

fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[..10].iter().all(|b| *b == 0) && a[10] == 0xff && a[11] == 0xff
}
