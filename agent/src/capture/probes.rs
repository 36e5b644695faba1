//! Loads and attaches the kernel programs, and reads what they send.
//!
//! Only tracepoints are used (syscalls, `sock`, `sched`): they are available on kernels where
//! kprobes, fentry and `bpf_probe_write_user` are not (lockdown, `CONFIG_KPROBES=n`). Every
//! attachment is owned by the returned [`Probes`]; dropping it, or the process dying in any way,
//! detaches everything - nothing is pinned.

use std::{
    os::fd::{AsRawFd, RawFd},
    path::Path,
};

use super::object::{EBPF_OBJECT, log_verified, mount_fs};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, ProgramArray, RingBuf},
    programs::TracePoint,
};
use socktrace_common::{
    GLOBAL_AGENT_TGID, GLOBAL_CAPTURE_BYTES, GLOBAL_FILTER_PIDS, GLOBAL_INJECT_ENABLED,
    GLOBAL_SAMPLE_PARENT, GLOBAL_SAMPLE_THRESHOLD, GLOBAL_TLS_ENABLED, GLOBAL_TP_OFFSETS,
    GLOBAL_WAKEUP_BYTES, stats,
};

/// Every tracepoint, in attach order, with the programs to try for it: the first that the
/// kernel accepts is attached (later ones are fallbacks for kernels with fewer features). Socket
/// identity and process tracking come first, so no data event is seen before the tables it
/// relies on are live.
type Hook = (&'static str, &'static str, &'static [&'static str]);
const TRACEPOINTS: &[Hook] = &[
    ("sock", "inet_sock_set_state", &["inet_sock_set_state"]),
    (
        "sock",
        "sock_send_length",
        &["sock_send_length", "sock_send_length_nobtf"],
    ),
    (
        "sock",
        "sock_recv_length",
        &["sock_recv_length", "sock_recv_length_nobtf"],
    ),
    ("sched", "sched_process_fork", &["sched_process_fork"]),
    ("sched", "sched_process_exec", &["sched_process_exec"]),
    ("sched", "sched_process_exit", &["sched_process_exit"]),
    ("syscalls", "sys_enter_execve", &["sys_enter_execve"]),
    ("syscalls", "sys_enter_execveat", &["sys_enter_execveat"]),
    ("syscalls", "sys_enter_read", &["sys_enter_read"]),
    ("syscalls", "sys_exit_read", &["sys_exit_read"]),
    ("syscalls", "sys_enter_write", &["sys_enter_write"]),
    ("syscalls", "sys_exit_write", &["sys_exit_write"]),
    ("syscalls", "sys_enter_readv", &["sys_enter_readv"]),
    (
        "syscalls",
        "sys_exit_readv",
        &["sys_exit_readv", "sys_exit_readv_noloop"],
    ),
    ("syscalls", "sys_enter_writev", &["sys_enter_writev"]),
    (
        "syscalls",
        "sys_exit_writev",
        &["sys_exit_writev", "sys_exit_writev_noloop"],
    ),
    ("syscalls", "sys_enter_recvfrom", &["sys_enter_recvfrom"]),
    ("syscalls", "sys_exit_recvfrom", &["sys_exit_recvfrom"]),
    ("syscalls", "sys_enter_sendto", &["sys_enter_sendto"]),
    ("syscalls", "sys_exit_sendto", &["sys_exit_sendto"]),
    ("syscalls", "sys_enter_recvmsg", &["sys_enter_recvmsg"]),
    (
        "syscalls",
        "sys_exit_recvmsg",
        &["sys_exit_recvmsg", "sys_exit_recvmsg_noloop"],
    ),
    ("syscalls", "sys_enter_sendmsg", &["sys_enter_sendmsg"]),
    (
        "syscalls",
        "sys_exit_sendmsg",
        &["sys_exit_sendmsg", "sys_exit_sendmsg_noloop"],
    ),
    (
        "syscalls",
        "sys_enter_sendfile64",
        &["sys_enter_sendfile64"],
    ),
    ("syscalls", "sys_exit_sendfile64", &["sys_exit_sendfile64"]),
];

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "this binary was built with AYA_BUILD_SKIP=1 and embeds no kernel programs; rebuild without it"
    )]
    NoObject,
    #[error(
        "tracefs is not available at /sys/kernel/tracing and could not be mounted ({0}); the kernel needs CONFIG_TRACING and the agent needs CAP_SYS_ADMIN to mount it"
    )]
    Tracefs(String),
    #[error("the kernel has no tracepoint {category}:{name} (needed for {why})")]
    MissingTracepoint {
        category: &'static str,
        name: &'static str,
        why: &'static str,
    },
    #[error("{0}: the kernel programs cannot read it")]
    TracepointFormat(String),
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("the embedded eBPF object is not as expected: {0}")]
    Object(String),
    #[error(
        "the kernel rejected program {name}: {source}; socktrace needs BPF tracepoint programs and BPF ring buffers (Linux 5.8 or later)"
    )]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(
        "the kernel rejected program {name} (configuration: {config}): {reason}. The verifier's last words: {tail}. Try: {hint}"
    )]
    Rejected {
        name: &'static str,
        config: String,
        reason: String,
        tail: String,
        hint: String,
    },
    #[error("map {0} missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// What the kernel side needs to know before load.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// Payload bytes copied per read/write.
    pub capture_bytes: u32,
    /// Ring buffer size in bytes (power of two, multiple of the page size).
    pub ringbuf_bytes: u32,
    /// Trace only processes added with [`Probes::trace_pid`] (and their children).
    pub filter_pids: bool,
    /// Wake user space once this many bytes are waiting; it also polls on a timer.
    pub wakeup_bytes: u32,
    /// Insert `traceparent` into outgoing HTTP/1 requests once [`Probes::attach_injection`]
    /// attaches the programs that do it.
    pub inject: bool,
    /// Follow TLS library calls: load the uprobe programs (attached per library by
    /// [`crate::capture::tls::TlsAttacher`]) and let the socket hooks look for a call in progress.
    pub tls: bool,
    /// Follow goroutines in Go programs: load the goroutine programs (attached per binary by
    /// the same attacher) so that a request's context goes where its goroutines go.
    pub goroutines: bool,
    /// The flags the injected `traceparent` headers carry.
    pub inject_flags: InjectFlags,
}

/// How the kernel sets the sampled flag of the `traceparent` headers it injects, so that the
/// next hop hears the decision this node's head sampler makes for the same trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InjectFlags {
    /// The trace-id ratio rule: sampled when the 56 low bits of the trace id are at least this
    /// (0: every trace; 2^56: none).
    pub threshold: u64,
    /// A request that arrived with a `traceparent` passes its sampled flag on instead.
    pub parent_based: bool,
}

impl Default for InjectFlags {
    /// Everything sampled, incoming flags followed (`parentbased_always_on`).
    fn default() -> Self {
        InjectFlags {
            threshold: 0,
            parent_based: true,
        }
    }
}

/// Bytes waiting in the ring buffer before the kernel wakes the reader (it also polls).
pub const WAKEUP_BYTES: u32 = 64 * 1024;

/// The values of the object's read-only globals for `config`, by name.
pub(crate) fn loader_globals(
    config: &ProbeConfig,
) -> Result<Vec<(&'static str, Vec<u8>)>, ProbeError> {
    let word = |v: u32| v.to_ne_bytes().to_vec();
    let offsets = super::tracepoints::read_offsets(tracefs_events())
        .map_err(|e| ProbeError::TracepointFormat(e.to_string()))?;
    Ok(vec![
        (GLOBAL_AGENT_TGID, word(std::process::id())),
        (GLOBAL_CAPTURE_BYTES, word(config.capture_bytes)),
        (GLOBAL_FILTER_PIDS, word(u32::from(config.filter_pids))),
        (GLOBAL_WAKEUP_BYTES, word(config.wakeup_bytes)),
        (GLOBAL_INJECT_ENABLED, word(u32::from(config.inject))),
        (GLOBAL_TLS_ENABLED, word(u32::from(config.tls))),
        (GLOBAL_TP_OFFSETS, offsets.to_ne_bytes().to_vec()),
        (
            GLOBAL_SAMPLE_THRESHOLD,
            config.inject_flags.threshold.to_ne_bytes().to_vec(),
        ),
        (
            GLOBAL_SAMPLE_PARENT,
            word(u32::from(config.inject_flags.parent_based)),
        ),
    ])
}

/// The tracefs `events` directory (where `ensure_tracefs` made sure one is).
fn tracefs_events() -> &'static Path {
    let events = Path::new("/sys/kernel/tracing/events");
    if events.exists() {
        events
    } else {
        Path::new("/sys/kernel/debug/tracing/events")
    }
}

/// The object to load for `config`: without injection, a copy whose socket map needs no
/// `CAP_NET_ADMIN` (`None`: the embedded object as it is).
pub(crate) fn object_for(
    config: &ProbeConfig,
) -> Result<Option<crate::capture::inject::AlignedObject>, ProbeError> {
    if EBPF_OBJECT.is_empty() {
        return Err(ProbeError::NoObject);
    }
    if config.inject {
        return Ok(None);
    }
    crate::capture::inject::without_socket_map(EBPF_OBJECT)
        .map(Some)
        .map_err(ProbeError::Object)
}

impl ProbeConfig {
    /// The settings the kernel programs see, in words (for error messages).
    pub fn describe(&self) -> String {
        format!(
            "injection {}, TLS {}, capture {} bytes, {}",
            if self.inject { "on" } else { "off" },
            if self.tls { "on" } else { "off" },
            self.capture_bytes,
            if self.filter_pids {
                "selected processes"
            } else {
                "all processes"
            }
        )
    }
}

/// Fallbacks to use even where the kernel has what the first choice needs
/// (`SOCKTRACE_FORCE_FALLBACK=noloop,nobtf`): how the degraded modes of older kernels are tested
/// on a new one.
fn forced_fallbacks() -> Vec<String> {
    std::env::var("SOCKTRACE_FORCE_FALLBACK")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// What a kernel loses when a fallback program is attached instead of the first choice.
pub fn fallback_note(program: &str) -> &'static str {
    if program.ends_with("_nobtf") {
        "the kernel has no BTF task helpers (bpf_get_current_task_btf, bpf_task_pt_regs): socket calls already in progress when the agent starts are not captured"
    } else if program.ends_with("_noloop") {
        "the kernel has no bpf_loop (Linux 5.17): readv, writev, recvmsg and sendmsg copy payload from their first 64 iovecs only, not 256"
    } else {
        "a kernel feature is missing"
    }
}

/// Loads the programs that emit the further records of a call split into several (see
/// `syscalls.rs`), and puts them in the `CHUNK_PROGS` jump table. Not attached anywhere.
fn load_chunk_programs(ebpf: &mut Ebpf, config: &ProbeConfig) -> Result<(), ProbeError> {
    for name in CHUNK_PROGRAMS {
        load_tracepoint(ebpf, name, config)?;
    }
    jump_table(ebpf, "CHUNK_PROGS", &CHUNK_PROGRAMS)
}

/// Puts the loaded programs `names` in the jump table `name`, from slot 0.
fn jump_table(
    ebpf: &mut Ebpf,
    name: &'static str,
    names: &[&'static str],
) -> Result<(), ProbeError> {
    let mut fds = Vec::new();
    for program in names {
        let fd = ebpf
            .program(program)
            .ok_or(ProbeError::Program {
                name: program,
                source: aya::programs::ProgramError::UnexpectedProgramType,
            })?
            .fd()
            .and_then(|fd| fd.try_clone().map_err(aya::programs::ProgramError::IOError))
            .map_err(|source| ProbeError::Program {
                name: program,
                source,
            })?;
        fds.push(fd);
    }
    set_jumps(ebpf, name, &fds)
}

fn set_jumps(
    ebpf: &mut Ebpf,
    name: &'static str,
    fds: &[aya::programs::ProgramFd],
) -> Result<(), ProbeError> {
    let map = ebpf.map_mut(name).ok_or(ProbeError::MissingMap(name))?;
    let mut table: ProgramArray<&mut MapData> =
        ProgramArray::try_from(map).map_err(|source| ProbeError::Map { name, source })?;
    for (slot, fd) in fds.iter().enumerate() {
        table
            .set(slot as u32, fd, 0)
            .map_err(|source| ProbeError::Map { name, source })?;
    }
    Ok(())
}

/// The continuation programs of `CHUNK_PROGS`, by slot.
pub const CHUNK_PROGRAMS: [&str; 2] = ["sys_exit_chunk", "sys_exit_chunk_vec"];

/// The loaded and attached kernel programs.
pub struct Probes {
    ebpf: Ebpf,
    attached: usize,
    fallbacks: Vec<&'static str>,
    /// The TLS programs are loaded, or why not.
    tls: Result<(), String>,
    /// The goroutine programs are loaded, or why not.
    goroutines: Result<(), String>,
}

/// Loads tracepoint program `name` (logging what the verifier said), not attached yet.
fn load_tracepoint<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
    config: &ProbeConfig,
) -> Result<&'a mut TracePoint, ProbeError> {
    let program: &mut TracePoint = ebpf
        .program_mut(name)
        .ok_or(ProbeError::Program {
            name,
            source: aya::programs::ProgramError::UnexpectedProgramType,
        })?
        .try_into()
        .map_err(|source| ProbeError::Program { name, source })?;
    let started = std::time::Instant::now();
    program.load().map_err(|e| rejected(name, config, e))?;
    log_verified(name, program.info().ok(), started);
    Ok(program)
}

fn load_attach(
    ebpf: &mut Ebpf,
    name: &'static str,
    category: &str,
    tracepoint: &str,
    config: &ProbeConfig,
) -> Result<(), ProbeError> {
    load_tracepoint(ebpf, name, config)?
        .attach(category, tracepoint)
        .map_err(|source| ProbeError::Program { name, source })?;
    Ok(())
}

/// A load error as the user should see it: which program, in which configuration, the end of
/// the verifier's log (not all of it), and what to try.
fn rejected(
    name: &'static str,
    config: &ProbeConfig,
    error: aya::programs::ProgramError,
) -> ProbeError {
    let aya::programs::ProgramError::LoadError {
        io_error,
        verifier_log,
    } = &error
    else {
        return ProbeError::Program {
            name,
            source: error,
        };
    };
    let mut hint = Vec::new();
    if config.inject {
        hint.push("`--no-inject` (the header injection adds the largest programs)");
    }
    if config.capture_bytes != socktrace_common::DEFAULT_CAPTURE {
        hint.push("the default `--capture-bytes`");
    }
    hint.push(
        "`cargo xtask verifier` on this kernel for every program's budget; please report it with this message",
    );
    ProbeError::Rejected {
        name,
        config: config.describe(),
        reason: io_error.to_string(),
        tail: super::object::log_tail(&verifier_log.to_string(), 4),
        hint: hint.join(", or "),
    }
}

/// Makes sure tracefs is mounted where aya looks for it. Returns true if this call mounted it.
pub fn ensure_tracefs() -> Result<bool, ProbeError> {
    let events = Path::new("/sys/kernel/tracing/events");
    if events.exists() || Path::new("/sys/kernel/debug/tracing/events").exists() {
        return Ok(false);
    }
    mount_fs("tracefs", Path::new("/sys/kernel/tracing"))
        .map_err(|e| ProbeError::Tracefs(e.to_string()))?;
    Ok(true)
}

impl Probes {
    /// Loads the object with the agent's own pid and the capture settings, then attaches every
    /// tracepoint. Fails with a precise reason: which tracepoint or program is missing.
    pub fn load(config: &ProbeConfig) -> Result<Self, ProbeError> {
        if EBPF_OBJECT.is_empty() {
            return Err(ProbeError::NoObject);
        }
        ensure_tracefs()?;
        let tracing = tracefs_events();
        for (category, name, _) in TRACEPOINTS {
            if !tracing.join(category).join(name).exists() {
                return Err(ProbeError::MissingTracepoint {
                    category,
                    name,
                    why: why(category, name),
                });
            }
        }

        let patched = object_for(config)?;
        let object = patched.as_ref().map_or(EBPF_OBJECT, |p| p.bytes());
        let mut loader = EbpfLoader::new();
        let globals = loader_globals(config)?;
        for (name, value) in &globals {
            loader.override_global(name, value.as_slice(), true);
        }
        let mut ebpf = loader
            .map_max_entries("EVENTS", config.ringbuf_bytes)
            .load(object)
            .map_err(ProbeError::Load)?;

        let mut attached = 0;
        let mut fallbacks = Vec::new();
        let forced = forced_fallbacks();
        for (category, tracepoint, candidates) in TRACEPOINTS {
            let mut last_error = None;
            for (i, name) in candidates.iter().enumerate() {
                let fallback_wanted = candidates[i + 1..]
                    .iter()
                    .any(|f| forced.iter().any(|s| f.ends_with(&format!("_{s}"))));
                if fallback_wanted {
                    tracing::debug!("{tracepoint}: skipping {name} (SOCKTRACE_FORCE_FALLBACK)");
                    continue;
                }
                match load_attach(&mut ebpf, name, category, tracepoint, config) {
                    Ok(()) => {
                        if i > 0 {
                            tracing::debug!("{tracepoint}: using fallback {name}: {last_error:?}");
                            fallbacks.push(*name);
                        }
                        last_error = None;
                        break;
                    }
                    Err(e) => last_error = Some(e),
                }
            }
            if let Some(e) = last_error {
                return Err(e);
            }
            attached += 1;
        }
        let tls = if config.tls {
            super::tls::load(&mut ebpf, super::tls::PROGRAMS)
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    jump_table(&mut ebpf, "TLS_CHUNK_PROGS", &[super::tls::CHUNK_PROGRAM])
                        .map_err(|e| e.to_string())
                })
        } else {
            Err("--tls false".to_owned())
        };
        let goroutines = if config.goroutines {
            super::tls::load(&mut ebpf, super::tls::GO_RUNTIME_PROGRAMS).map_err(|e| e.to_string())
        } else {
            Err("--follow-goroutines false".to_owned())
        };
        if let Err(e) = load_chunk_programs(&mut ebpf, config) {
            tracing::warn!(
                "large reads and writes of HTTP/2 connections are cut to their first {} bytes: {e}",
                socktrace_common::MAX_CAPTURE
            );
        }
        Ok(Self {
            ebpf,
            attached,
            fallbacks,
            tls,
            goroutines,
        })
    }

    /// Attaches the `traceparent` injection (`sock_ops` on the cgroup v2 root, `sk_msg` on its
    /// socket map); see [`crate::capture::inject`]. On error the agent goes on without it.
    pub fn attach_injection(
        &mut self,
        root: &crate::capture::inject::Cgroup2Root,
    ) -> Result<(), crate::capture::inject::InjectError> {
        crate::capture::inject::attach(&mut self.ebpf, root)
    }

    /// Takes the maps that let user space release sockets from injection, once it is attached.
    pub fn take_inject_release(
        &mut self,
    ) -> Result<crate::capture::inject::InjectRelease, crate::capture::inject::InjectError> {
        crate::capture::inject::InjectRelease::take(&mut self.ebpf)
    }

    /// Whether the TLS programs are loaded (ready for [`Probes::scan_tls`]), or why not.
    pub fn tls(&self) -> Result<(), &str> {
        self.tls.as_ref().map(|_| ()).map_err(String::as_str)
    }

    /// Whether the goroutine programs are loaded (ready for [`Probes::scan_tls`]), or why not.
    pub fn goroutines(&self) -> Result<(), &str> {
        self.goroutines.as_ref().map(|_| ()).map_err(String::as_str)
    }

    /// Attaches the TLS and goroutine programs to libraries and binaries found since the last
    /// scan.
    pub fn scan_tls(
        &mut self,
        attacher: &mut crate::capture::tls::TlsAttacher,
    ) -> crate::capture::tls::ScanReport {
        attacher.scan(&mut self.ebpf)
    }

    /// Attaches the TLS and goroutine programs to the executables of `pids`, programs that
    /// have just started.
    pub fn scan_tls_pids(
        &mut self,
        attacher: &mut crate::capture::tls::TlsAttacher,
        pids: &[u32],
    ) -> crate::capture::tls::ScanReport {
        attacher.scan_pids(&mut self.ebpf, pids)
    }

    /// Number of attached tracepoints.
    pub fn attached(&self) -> usize {
        self.attached
    }

    /// Programs attached as fallbacks because the kernel lacks a feature (e.g. BTF).
    pub fn fallbacks(&self) -> &[&'static str] {
        &self.fallbacks
    }

    /// Takes a map out of the object, typed.
    fn take<T>(&mut self, name: &'static str) -> Result<T, ProbeError>
    where
        T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(ProbeError::MissingMap(name))?;
        T::try_from(map).map_err(|source| ProbeError::Map { name, source })
    }

    /// Takes the ring buffer out of the object, for the reader thread.
    pub fn take_events(&mut self) -> Result<EventReader, ProbeError> {
        Ok(EventReader {
            ring: self.take("EVENTS")?,
        })
    }

    /// Takes the pid filter maps, so user space can add processes while running.
    pub fn take_pid_filter(&mut self) -> Result<PidFilter, ProbeError> {
        Ok(PidFilter {
            map: self.take("TRACED_PIDS")?,
            exe_names: self.take("EXE_NAMES")?,
        })
    }

    /// Takes the per-socket capture size map.
    pub fn take_sock_capture(&mut self) -> Result<SockCapture, ProbeError> {
        Ok(SockCapture {
            map: self.take("SOCK_CAPTURE")?,
        })
    }

    /// Marks a local port the agent listens on: connections accepted there are never traced.
    pub fn add_self_port(&mut self, port: u16) -> Result<(), ProbeError> {
        let name = "SELF_PORTS";
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(ProbeError::MissingMap(name))?;
        let mut ports: HashMap<&mut MapData, u16, u8> =
            HashMap::try_from(map).map_err(|source| ProbeError::Map { name, source })?;
        ports
            .insert(port, 1, 0)
            .map_err(|source| ProbeError::Map { name, source })
    }

    /// Takes the kernel's counters.
    pub fn take_stats(&mut self) -> Result<KernelStats, ProbeError> {
        Ok(KernelStats {
            map: self.take("STATS")?,
        })
    }
}

fn why(category: &str, name: &str) -> &'static str {
    match (category, name) {
        ("sock", "inet_sock_set_state") => "connection tuples and roles (Linux 4.16+)",
        ("sock", _) => "knowing which syscalls use TCP sockets",
        ("sched", _) => "following processes",
        _ => "socket reads and writes",
    }
}

/// The processes to trace when filtering by `--pid`/`--exe`.
pub struct PidFilter {
    map: HashMap<MapData, u32, u8>,
    exe_names: HashMap<MapData, [u8; 16], u8>,
}

/// Per-socket payload prefix sizes (kernel map `SOCK_CAPTURE`), overriding `--capture-bytes`.
pub struct SockCapture {
    map: HashMap<MapData, u64, u32>,
}

impl SockCapture {
    /// Copies up to `bytes` of every read/write on socket `sk` from now on. The kernel forgets the
    /// entry when the socket closes (and the map is an LRU).
    pub fn set(&mut self, sk: u64, bytes: u32) -> Result<(), aya::maps::MapError> {
        self.map.insert(sk, bytes, 0)
    }
}

/// A program name as the kernel's task name: at most 15 bytes, NUL-padded.
pub fn task_name(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    let b = name.as_bytes();
    let n = b.len().min(15);
    out[..n].copy_from_slice(&b[..n]);
    out
}

impl PidFilter {
    /// Processes that exec a program with this name are traced from their first instruction.
    /// Names longer than 15 bytes match on their first 15 in the kernel; user space then checks
    /// the full executable name.
    pub fn add_exe(&mut self, name: &str) -> Result<(), aya::maps::MapError> {
        self.exe_names.insert(task_name(name), 1, 0)
    }
    pub fn add(&mut self, pid: u32) -> Result<(), aya::maps::MapError> {
        self.map.insert(pid, 1, 0)
    }
    pub fn remove(&mut self, pid: u32) {
        let _ = self.map.remove(&pid);
    }
}

/// Sums of the kernel's per-CPU counters.
pub struct KernelStats {
    map: PerCpuArray<MapData, u64>,
}

impl KernelStats {
    /// The current total of one counter (`socktrace_common::stats::*`): one map lookup.
    pub fn get(&self, index: u32) -> u64 {
        self.map
            .get(&index, 0)
            .map_or(0, |values| values.iter().sum())
    }

    /// Current totals, indexed like `socktrace_common::stats`.
    pub fn read(&self) -> [u64; stats::COUNT as usize] {
        let mut out = [0u64; stats::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            if let Ok(values) = self.map.get(&(i as u32), 0) {
                *slot = values.iter().sum();
            }
        }
        out
    }
}

/// Reads records from the ring buffer.
pub struct EventReader {
    ring: RingBuf<MapData>,
}

impl EventReader {
    /// Waits up to `timeout_ms` for the kernel to signal data (it wakes us in batches), then hands
    /// every waiting record to `f`. Returns the number of records read.
    pub fn poll(&mut self, timeout_ms: i32, mut f: impl FnMut(&[u8])) -> std::io::Result<usize> {
        let fd: RawFd = self.ring.as_raw_fd();
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
        // Drain even on timeout: the kernel skips wake-ups until enough data is waiting.
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            f(&item);
            n += 1;
        }
        Ok(n)
    }
}

/// The resource variables a program was started with, as the kernel read them from its
/// `execve` arguments (`EVENT_EXEC_ENV`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecEnv {
    pub pid: u32,
    /// `OTEL_SERVICE_NAME`, when set and not empty.
    pub service_name: Option<String>,
    /// `OTEL_RESOURCE_ATTRIBUTES`, unparsed.
    pub resource_attributes: Option<String>,
    /// A value was longer than the kernel keeps (see `socktrace_common::EXEC_ATTRS_LEN`).
    pub truncated: bool,
}

/// One record from the kernel, decoded.
#[derive(Debug)]
pub enum Event<'a> {
    /// A socket read or write: the copied prefix and, for I/O longer than the prefix, the copied
    /// last bytes (`tail`, see `DataEvent::tail`).
    Data {
        header: socktrace_common::DataEvent,
        payload: &'a [u8],
        tail: &'a [u8],
    },
    Close(socktrace_common::CloseEvent),
    /// A process image changed; `cgroup_id` is its cgroup v2 id.
    Exec {
        pid: u32,
        cgroup_id: u64,
    },
    /// The resource variables of a program being started (sent just before its `Exec`).
    ExecEnv(ExecEnv),
    Exit {
        pid: u32,
    },
    /// The kernel inserted a `traceparent` line into an outgoing request.
    Inject(socktrace_common::InjectEvent),
    /// A traced process's `connect()` established a connection.
    Connect(socktrace_common::ConnectEvent),
}

/// Why a record could not be decoded (counted, never fatal).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {0} bytes is too short")]
    Short(usize),
    #[error("unknown record kind {0}")]
    Kind(u32),
    #[error(
        "payload length {captured} (+ tail {tail}) exceeds record ({available} bytes) or byte count"
    )]
    Payload {
        captured: u32,
        tail: u32,
        available: usize,
    },
}

fn read_pod<T: aya::Pod>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() < std::mem::size_of::<T>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: length checked; `T: Pod` (a `repr(C)` struct of integers and byte arrays whose
    // layout socktrace-common checks at compile time), so any bit pattern is a valid value;
    // read_unaligned does not require alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Decodes one ring-buffer record without trusting its contents.
pub fn decode(bytes: &[u8]) -> Result<Event<'_>, DecodeError> {
    use socktrace_common::{
        CloseEvent, ConnectEvent, DataEvent, EVENT_CONN_CLOSE, EVENT_CONNECT, EVENT_DATA,
        EVENT_EXEC, EVENT_EXEC_ENV, EVENT_EXIT, EVENT_INJECT, ExecEnvEvent, InjectEvent, ProcEvent,
    };
    let kind: u32 = read_pod(bytes)?;
    match kind {
        EVENT_DATA => {
            let header: DataEvent = read_pod(bytes)?;
            let payload = &bytes[std::mem::size_of::<DataEvent>()..];
            let captured = header.captured as usize;
            let tail = header.tail as usize;
            let copied = captured.saturating_add(tail);
            if copied > payload.len() || copied as u64 > header.len {
                return Err(DecodeError::Payload {
                    captured: header.captured,
                    tail: header.tail,
                    available: payload.len(),
                });
            }
            Ok(Event::Data {
                header,
                payload: &payload[..captured],
                tail: &payload[captured..copied],
            })
        }
        EVENT_CONN_CLOSE => Ok(Event::Close(read_pod::<CloseEvent>(bytes)?)),
        EVENT_EXEC => {
            let ev = read_pod::<ProcEvent>(bytes)?;
            Ok(Event::Exec {
                pid: ev.pid,
                cgroup_id: ev.cgroup_id,
            })
        }
        EVENT_EXEC_ENV => {
            let ev = read_pod::<ExecEnvEvent>(bytes)?;
            let value = |field: &[u8], len: u16| {
                let text = field.get(..usize::from(len)).unwrap_or(field);
                (!text.is_empty()).then(|| String::from_utf8_lossy(text).into_owned())
            };
            Ok(Event::ExecEnv(ExecEnv {
                pid: ev.pid,
                service_name: value(&ev.service, ev.service_len),
                resource_attributes: value(&ev.attrs, ev.attrs_len),
                truncated: ev.truncated != 0,
            }))
        }
        EVENT_EXIT => Ok(Event::Exit {
            pid: read_pod::<ProcEvent>(bytes)?.pid,
        }),
        EVENT_INJECT => Ok(Event::Inject(read_pod::<InjectEvent>(bytes)?)),
        EVENT_CONNECT => Ok(Event::Connect(read_pod::<ConnectEvent>(bytes)?)),
        other => Err(DecodeError::Kind(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use socktrace_common::{DataEvent, EVENT_DATA};

    fn data_record(captured: u32, len: u64, payload: &[u8]) -> Vec<u8> {
        tail_record(captured, 0, len, payload)
    }

    fn tail_record(captured: u32, tail: u32, len: u64, payload: &[u8]) -> Vec<u8> {
        let header = DataEvent {
            kind: EVENT_DATA,
            direction: 0,
            ts_ns: 7,
            sk: 0xdead,
            pid: 1,
            tid: 2,
            fd: 3,
            role: 0,
            len,
            captured,
            tuple_known: 0,
            tuple: Default::default(),
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
            tail,
            ctx_flags: 0,
            trace_id: [0; 16],
            link_sk: 0,
            link_ts: 0,
        };
        // SAFETY: DataEvent is a Pod type without padding.
        let mut v = unsafe {
            std::slice::from_raw_parts(
                (&header as *const DataEvent).cast::<u8>(),
                std::mem::size_of::<DataEvent>(),
            )
        }
        .to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn a_rejected_program_is_named_with_its_configuration_the_log_end_and_what_to_try() {
        let log = "0: (b7) r1 = 0\n1: (85) call bpf_loop#181\nunknown func bpf_loop#181\nverification time 12 usec\nstack depth 56\nprocessed 2 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0\n";
        let error = aya::programs::ProgramError::LoadError {
            io_error: std::io::Error::from_raw_os_error(libc::EINVAL),
            verifier_log: aya_obj::VerifierLog::new(log.to_owned()),
        };
        let config = ProbeConfig {
            capture_bytes: 8192,
            ringbuf_bytes: 1 << 23,
            filter_pids: true,
            wakeup_bytes: WAKEUP_BYTES,
            inject: true,
            tls: true,
            goroutines: true,
            inject_flags: InjectFlags::default(),
        };
        let message = rejected("sys_exit_readv", &config, error).to_string();
        for part in [
            "program sys_exit_readv",
            "injection on, TLS on, capture 8192 bytes, selected processes",
            "Invalid argument",
            "unknown func bpf_loop#181 | verification time 12 usec | stack depth 56 | processed 2 insns",
            "`--no-inject`",
            "the default `--capture-bytes`",
            "cargo xtask verifier",
        ] {
            assert!(message.contains(part), "{part:?} missing from: {message}");
        }
        // Only the end of the log, not the instruction trace.
        assert!(!message.contains("(b7) r1 = 0"), "{message}");
        // Without injection and at the default capture, those are not suggested.
        let plain = ProbeConfig {
            capture_bytes: socktrace_common::DEFAULT_CAPTURE,
            inject: false,
            tls: false,
            ..config
        };
        let error = aya::programs::ProgramError::LoadError {
            io_error: std::io::Error::from_raw_os_error(libc::EINVAL),
            verifier_log: aya_obj::VerifierLog::new(log.to_owned()),
        };
        let message = rejected("sys_exit_readv", &plain, error).to_string();
        assert!(!message.contains("--no-inject") && !message.contains("--capture-bytes"));
        assert!(
            message.contains("injection off, TLS off, capture 2048 bytes"),
            "{message}"
        );
    }

    #[test]
    fn fallbacks_say_what_is_lost() {
        assert!(fallback_note("sys_exit_writev_noloop").contains("bpf_loop"));
        assert!(fallback_note("sock_send_length_nobtf").contains("BTF"));
    }

    #[test]
    fn decodes_data_record_with_payload() {
        let rec = data_record(3, 10, b"GETxx");
        match decode(&rec).unwrap() {
            Event::Data {
                header,
                payload,
                tail,
            } => {
                assert_eq!(header.sk, 0xdead);
                assert_eq!(header.len, 10);
                assert_eq!(payload, b"GET");
                assert!(tail.is_empty());
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn decodes_prefix_and_tail() {
        let rec = tail_record(3, 2, 100, b"GETyz");
        match decode(&rec).unwrap() {
            Event::Data { payload, tail, .. } => {
                assert_eq!(payload, b"GET");
                assert_eq!(tail, b"yz");
            }
            other => panic!("unexpected {other:?}"),
        }
        // Prefix + tail may not claim more than the record holds or the I/O transferred.
        assert!(matches!(
            decode(&tail_record(3, 3, 100, b"GETyz")),
            Err(DecodeError::Payload { .. })
        ));
        assert!(matches!(
            decode(&tail_record(3, 2, 4, b"GETyz")),
            Err(DecodeError::Payload { .. })
        ));
        assert!(matches!(
            decode(&tail_record(u32::MAX, u32::MAX, u64::MAX, b"GETyz")),
            Err(DecodeError::Payload { .. })
        ));
    }

    #[test]
    fn rejects_lying_lengths_and_garbage() {
        assert!(matches!(
            decode(&data_record(9, 10, b"GET")),
            Err(DecodeError::Payload { .. })
        ));
        assert!(matches!(
            decode(&data_record(3, 2, b"GET")),
            Err(DecodeError::Payload { .. })
        ));
        assert_eq!(decode(&[1, 0]).unwrap_err(), DecodeError::Short(2));
        assert_eq!(
            decode(&[9, 0, 0, 0, 0, 0, 0, 0]).unwrap_err(),
            DecodeError::Kind(9)
        );
        // Every truncation of a valid record is an error, never a panic.
        let rec = data_record(3, 10, b"GET");
        for n in 0..rec.len() {
            let _ = decode(&rec[..n]);
        }
    }
}
