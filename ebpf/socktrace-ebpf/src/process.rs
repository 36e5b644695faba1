//! Process lifecycle: children of traced processes are traced too, and user space hears of
//! every exec and exit (to match `--exe` and to refresh its per-process resource cache).

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, generated::bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use socktrace_common::{EVENT_EXEC, EVENT_EXIT, ProcEvent, stats};

use crate::maps::{EXE_NAMES, TRACED_PIDS, count, filter_pids, send_event, tp_offset};

#[inline(always)]
fn send(kind: u32, pid: u32) {
    let ev = ProcEvent {
        kind,
        pid,
        // SAFETY: helper without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
    };
    send_event(ev);
}

/// `sched_process_fork`: reads `child_pid`. Runs in the parent's context.
#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    if !filter_pids() {
        return 0;
    }
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    if TRACED_PIDS.get_ptr(&parent).is_none() {
        return 0;
    }
    // SAFETY: offset from the format file (`TP_OFFSETS`).
    let Ok(child) = (unsafe { ctx.read_at::<i32>(tp_offset(|o| &o.fork_child_pid)) }) else {
        return 0;
    };
    // For a new thread this adds its tid, which is harmless and removed at its exit.
    if TRACED_PIDS.insert(child as u32, 1u8, 0).is_err() {
        count(stats::MAP_UPDATE_FAILED);
    }
    0
}

/// `sched_process_exec`: reads `pid`. The task name is already the new program's.
#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    // SAFETY: offset from the format file (`TP_OFFSETS`).
    let Ok(pid) = (unsafe { ctx.read_at::<i32>(tp_offset(|o| &o.exec_pid)) }) else {
        return 0;
    };
    if filter_pids() {
        if let Ok(comm) = bpf_get_current_comm() {
            // Short-lived programs (curl) finish before user space could react to this event,
            // so `--exe` matching happens here.
            if EXE_NAMES.get_ptr(&comm).is_some() && TRACED_PIDS.insert(pid as u32, 1u8, 0).is_err()
            {
                count(stats::MAP_UPDATE_FAILED);
            }
        }
    }
    send(EVENT_EXEC, pid as u32);
    0
}

/// `sched_process_exit`: fires per thread; only a thread-group leader's exit ends the process.
#[tracepoint]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    if filter_pids() {
        let _ = TRACED_PIDS.remove(&tid);
    }
    if tgid == tid {
        send(EVENT_EXIT, tgid);
    }
    0
}
