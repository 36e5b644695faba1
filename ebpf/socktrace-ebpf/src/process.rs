//! Process lifecycle: children of traced processes are traced too, and user space hears of
//! every exec and exit (to match `--exe` and to refresh its per-process resource cache).

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_user,
        generated::{self, bpf_get_current_cgroup_id, bpf_ktime_get_ns, bpf_loop},
    },
    macros::{map, tracepoint},
    maps::{LruHashMap, PerCpuArray},
    programs::TracePointContext,
};
use socktrace_common::{
    EVENT_EXEC, EVENT_EXEC_ENV, EVENT_EXIT, EXEC_ATTRS_LEN, EXEC_SERVICE_LEN, ExecEnvEvent,
    ProcEvent, stats,
};

use crate::maps::{
    EVENTS, EXE_NAMES, TRACED_PIDS, agent_tgid, count, filter_pids, send_event, tp_offset,
    wakeup_flags,
};

#[inline(always)]
fn send(kind: u32, pid: u32, cgroup_id: u64) {
    let ev = ProcEvent {
        kind,
        pid,
        // SAFETY: helper without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        cgroup_id,
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
    // The calling thread's environment, kept at `execve` (the exec made it the leader).
    let tid = bpf_get_current_pid_tgid() as u32;
    if let Some(env) = PENDING_EXEC.get_ptr_mut(&tid) {
        // SAFETY: the entry is this thread's; it is sent from map memory, then removed.
        unsafe {
            (*env).kind = EVENT_EXEC_ENV;
            (*env).pid = pid as u32;
            if EVENTS.output::<ExecEnvEvent>(&*env, wakeup_flags()).is_ok() {
                count(stats::EVENTS_SENT);
            } else {
                count(stats::RINGBUF_FULL);
            }
        }
        let _ = PENDING_EXEC.remove(&tid);
    }
    // SAFETY: helper without arguments.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    send(EVENT_EXEC, pid as u32, cgroup_id);
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
        send(EVENT_EXIT, tgid, 0);
    }
    0
}

/// `execve`/`execveat` arguments by the program being started, per thread, until its exec
/// succeeds (`sched_process_exec`). LRU: a failed exec leaves an entry nobody takes.
#[map]
static PENDING_EXEC: LruHashMap<u32, ExecEnvEvent> = LruHashMap::with_max_entries(1024, 0);

/// Where the environment is gathered before it goes into `PENDING_EXEC` (too big for the stack).
#[map]
static EXEC_SCRATCH: PerCpuArray<ExecEnvEvent> = PerCpuArray::with_max_entries(1, 0);

/// Most environment entries looked at per exec (Kubernetes adds several per service of the
/// namespace, so hundreds are common).
const MAX_ENV: u32 = 1024;

const SERVICE_PREFIX: &[u8; 18] = b"OTEL_SERVICE_NAME=";
const ATTRS_PREFIX: &[u8; 25] = b"OTEL_RESOURCE_ATTRIBUTES=";

/// `sys_enter_execve`: `envp` at offset 32 (after `filename` and `argv`).
#[tracepoint]
pub fn sys_enter_execve(ctx: TracePointContext) -> u32 {
    exec_env(&ctx, 32);
    0
}

/// `sys_enter_execveat`: `envp` at offset 40 (after `fd`, `filename` and `argv`).
#[tracepoint]
pub fn sys_enter_execveat(ctx: TracePointContext) -> u32 {
    exec_env(&ctx, 40);
    0
}

/// Looks for the resource variables in the new program's environment; when one is set, keeps
/// both values for the exec.
#[inline(always)]
fn exec_env(ctx: &TracePointContext, envp_offset: usize) {
    let id = bpf_get_current_pid_tgid();
    if (id >> 32) as u32 == agent_tgid() {
        return;
    }
    let tid = id as u32;
    // SAFETY: offset from the tracepoint's format file (stable syscall ABI).
    let Ok(envp) = (unsafe { ctx.read_at::<u64>(envp_offset) }) else {
        return;
    };
    let Some(scratch) = EXEC_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot; BPF programs are not preempted on their CPU while running.
    unsafe {
        (*scratch).service_len = 0;
        (*scratch).attrs_len = 0;
        (*scratch).truncated = 0;
    }
    if envp != 0 {
        let mut walk = envp;
        // SAFETY: the callback has the signature the helper expects; `walk` outlives the call.
        unsafe {
            bpf_loop(MAX_ENV, env_step as *mut c_void, (&raw mut walk).cast(), 0);
        }
    }
    // SAFETY: as above.
    let found = unsafe { (*scratch).service_len != 0 || (*scratch).attrs_len != 0 };
    if !found {
        let _ = PENDING_EXEC.remove(&tid);
        return;
    }
    // SAFETY: the value is copied by the map update.
    if PENDING_EXEC.insert(&tid, unsafe { &*scratch }, 0).is_err() {
        count(stats::MAP_UPDATE_FAILED);
    }
}

/// `bpf_loop` callback: environment entry `i`. Returns 1 (stop) at the end of the array or
/// once both variables were found.
extern "C" fn env_step(i: u64, envp: *mut c_void) -> i64 {
    // SAFETY: `bpf_loop` passes the `envp` its caller gave it.
    let envp = unsafe { *envp.cast::<u64>() };
    let Some(scratch) = EXEC_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: reads user memory through the helper, which handles faults.
    let Ok(entry) = (unsafe { bpf_probe_read_user((envp + i * 8) as *const u64) }) else {
        return 1;
    };
    if entry == 0 {
        return 1;
    }
    let mut head = [0u8; 32];
    // SAFETY: `head` is 32 bytes; the helper stops at the string's NUL.
    let n = unsafe {
        generated::bpf_probe_read_user_str(
            head.as_mut_ptr().cast(),
            head.len() as u32,
            entry as *const c_void,
        )
    };
    if n <= 0 {
        return 0;
    }
    // SAFETY (below): pointers into the per-CPU scratch value.
    if head[..SERVICE_PREFIX.len()] == *SERVICE_PREFIX {
        let n = unsafe {
            generated::bpf_probe_read_user_str(
                (*scratch).service.as_mut_ptr().cast(),
                EXEC_SERVICE_LEN as u32,
                (entry + SERVICE_PREFIX.len() as u64) as *const c_void,
            )
        };
        if n > 1 {
            unsafe {
                (*scratch).service_len = (n - 1) as u16;
                if n as usize == EXEC_SERVICE_LEN {
                    (*scratch).truncated = 1;
                }
            }
        }
    } else if head[..ATTRS_PREFIX.len()] == *ATTRS_PREFIX {
        let n = unsafe {
            generated::bpf_probe_read_user_str(
                (*scratch).attrs.as_mut_ptr().cast(),
                EXEC_ATTRS_LEN as u32,
                (entry + ATTRS_PREFIX.len() as u64) as *const c_void,
            )
        };
        if n > 1 {
            unsafe {
                (*scratch).attrs_len = (n - 1) as u16;
                if n as usize == EXEC_ATTRS_LEN {
                    (*scratch).truncated = 1;
                }
            }
        }
    }
    let both = unsafe { (*scratch).service_len != 0 && (*scratch).attrs_len != 0 };
    i64::from(both)
}
