//! TLS capture: attaching the kernel's TLS uprobes (`ebpf/.../tls.rs`) to every copy of
//! OpenSSL's entry points on the host.
//!
//! A uprobe belongs to a file (an inode), not to a process: attached once to a shared
//! `libssl`, it fires in every process that maps it, including those started later. So the
//! attacher finds files, not processes: the system library directories once at start, then,
//! every scan, the `libssl` mapped by processes it has not seen yet (a container's own copy,
//! reached through `/proc/PID/root`) and executables that define `SSL_write` themselves
//! (OpenSSL or BoringSSL linked statically, with symbols). Each file is inspected once, cached
//! by device and inode. Files found through processes are detached when the last of those
//! processes has exited.
//!
//! Every probe goes where the kernel emulates the probed instruction, when there is such a
//! place equivalent to the function's entry (`sites`): a single-stepped probe costs the traced
//! process a second trap. For OpenSSL that is often the internal function each `SSL_read`/
//! `SSL_read_ex` (and write) pair calls ([`CORES`]).
//!
//! Go binaries carry their own TLS (`crypto/tls`): the entry programs go at the entry of
//! `(*Conn).Read` and `(*Conn).Write` (after the stack check), found in the binary's symbol
//! table or line table, and the return program on each of their `RET` instructions, found by
//! decoding the functions (Go moves goroutine stacks, so a return probe's rewritten return
//! address would break the program). A Go binary using `crypto/tls` without either table is
//! reported: its plaintext cannot be read.
//!
//! The same attacher puts the goroutine programs (`ebpf/.../goroutine.rs`) on the Go runtime
//! functions of every Go binary it finds ([`GO_RUNTIME_HOOKS`]), with or without TLS capture:
//! that is how a request's context follows the goroutines that serve it.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{
        ProgramError, UProbe,
        uprobe::{UProbeAttachLocation, UProbeLinkId, UProbeScope},
    },
};
use object::{Object, ObjectSection, ObjectSymbol};

use super::sites::{self, Function};

/// The kernel programs, loaded when TLS capture is on.
pub const PROGRAMS: &[&str] = &[
    "tls_enter_read",
    "tls_enter_write",
    "tls_enter_handshake",
    "tls_exit",
    "tls_exit_ex",
    "tls_free",
    "go_tls_enter_read",
    "go_tls_enter_write",
    "go_tls_enter_handshake",
    "go_tls_return",
    "go_tls_read_copy",
    "go_tls_write_record",
    "go_tls_handshake_return",
    CHUNK_PROGRAM,
];

/// The continuation of plaintext longer than one record (`TLS_CHUNK_PROGS`), never attached.
pub const CHUNK_PROGRAM: &str = "tls_chunk";

/// A Go function to probe: its name, entry program, program for each `RET`, required (a binary
/// without it is not attached for this purpose).
type GoHook = (
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    bool,
);

/// Go's `crypto/tls` functions. The handshake is probed where it runs (the client's and the server's handshake functions,
/// called only when a handshake is made; a program links only the sides it uses), not at
/// `handshakeContext`, which every `Read` and `Write` calls: each of its returns would be one
/// more single-stepped probe per call.
const GO_HOOKS: &[GoHook] = &[
    (
        "crypto/tls.(*Conn).Read",
        Some("go_tls_enter_read"),
        Some("go_tls_return"),
        true,
    ),
    (
        "crypto/tls.(*Conn).Write",
        Some("go_tls_enter_write"),
        Some("go_tls_return"),
        true,
    ),
    (
        "crypto/tls.(*Conn).clientHandshake",
        Some("go_tls_enter_handshake"),
        Some("go_tls_handshake_return"),
        false,
    ),
    (
        "crypto/tls.(*Conn).serverHandshake",
        Some("go_tls_enter_handshake"),
        Some("go_tls_handshake_return"),
        false,
    ),
];

/// The goroutine programs, loaded unless `--follow-goroutines false`.
pub const GO_RUNTIME_PROGRAMS: &[&str] = &[
    "go_newproc_enter",
    "go_newproc_return",
    "go_newproc_queued",
    "go_write_enter",
    "go_roundtrip_enter",
    "go_request_write_enter",
];

/// Go runtime and library functions that carry a request's context between goroutines (see
/// `goroutine.rs`): function, entry program, program for each `RET`, required.
const GO_RUNTIME_HOOKS: &[GoHook] = &[
    (
        "runtime.newproc1",
        Some("go_newproc_enter"),
        Some("go_newproc_return"),
        true,
    ),
    (
        "internal/poll.(*FD).Write",
        Some("go_write_enter"),
        None,
        true,
    ),
    // Only in programs that write `net.Buffers`.
    (
        "internal/poll.(*FD).Writev",
        Some("go_write_enter"),
        None,
        false,
    ),
    // Only in programs with an HTTP client.
    (
        "net/http.(*Transport).roundTrip",
        Some("go_roundtrip_enter"),
        None,
        false,
    ),
    (
        "net/http.(*Request).write",
        Some("go_request_write_enter"),
        None,
        false,
    ),
];

/// OpenSSL's entry points: function, entry program, return program, required (a file without
/// it is not attached).
const HOOKS: &[(&str, &str, Option<&str>, bool)] = &[
    ("SSL_read", "tls_enter_read", Some("tls_exit"), true),
    ("SSL_write", "tls_enter_write", Some("tls_exit"), true),
    (
        "SSL_do_handshake",
        "tls_enter_handshake",
        Some("tls_exit"),
        true,
    ),
    // OpenSSL 1.1.1 and later.
    ("SSL_read_ex", "tls_enter_read", Some("tls_exit_ex"), false),
    (
        "SSL_write_ex",
        "tls_enter_write",
        Some("tls_exit_ex"),
        false,
    ),
    // A freed session's address is reused for later ones: its socket is forgotten.
    ("SSL_free", "tls_free", None, false),
];

/// OpenSSL's wrapper pairs (1.1.1 and later), each around one function of the `_ex`
/// signature (`ssl_read_internal(ssl, buf, num, &count)`), and the entry program for it: that
/// function is probed instead of the pair when the kernel emulates its first instruction and
/// not theirs (see `sites`).
const CORES: &[(&str, &str, &str)] = &[
    ("SSL_read", "SSL_read_ex", "tls_enter_read"),
    ("SSL_write", "SSL_write_ex", "tls_enter_write"),
];

/// Where distributions keep shared libraries.
const LIB_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
    "/usr/local/lib",
    "/usr/local/lib64",
];

/// Loads the programs named (verified, not attached): [`PROGRAMS`] or [`GO_RUNTIME_PROGRAMS`].
pub fn load(ebpf: &mut Ebpf, programs: &[&str]) -> Result<(), ProgramError> {
    for name in programs {
        let program = uprobe(ebpf, name)?;
        let started = std::time::Instant::now();
        program.load()?;
        super::object::log_verified(name, program.info().ok(), started);
    }
    Ok(())
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe, ProgramError> {
    ebpf.program_mut(name)
        .ok_or(ProgramError::UnexpectedProgramType)?
        .try_into()
}

/// A file the programs are attached to.
struct Target {
    path: PathBuf,
    links: Vec<(&'static str, UProbeLinkId)>,
    /// Found in a library directory: kept for the agent's lifetime.
    pinned: bool,
    /// Live processes that map it (for files found through processes).
    pids: HashSet<u32>,
    /// The TLS programs are among the links (not only the goroutine ones).
    tls: bool,
}

/// What a scan found, for the log.
#[derive(Debug, Default, PartialEq)]
pub struct ScanReport {
    pub attached: Vec<PathBuf>,
    pub detached: Vec<PathBuf>,
    pub failed: Vec<(PathBuf, String)>,
    /// Go binaries using `crypto/tls` without a symbol table.
    pub stripped: Vec<PathBuf>,
    /// Go binaries whose goroutines are followed from now on.
    pub goroutines: Vec<PathBuf>,
    /// Go binaries whose goroutines cannot be followed (no symbol table): their client calls
    /// get no parent.
    pub go_unfollowed: Vec<PathBuf>,
    /// Files attached where some OpenSSL function could only be probed at an instruction the
    /// kernel single-steps (each call costs the process a second trap), with those functions.
    pub single_stepped: Vec<(PathBuf, Vec<String>)>,
}

/// Finds TLS libraries and attaches the programs to them; see the module docs.
pub struct TlsAttacher {
    targets: HashMap<(u64, u64), Target>,
    /// Files inspected and found without OpenSSL's entry points (or failing to attach).
    rejected: HashSet<(u64, u64)>,
    /// Processes looked at, with the file their executable was then. A process is looked at
    /// again when it changes: a scan between a fork and its exec sees the parent's executable.
    seen_pids: HashMap<u32, Option<(u64, u64)>>,
    self_pid: u32,
    started: bool,
    /// Where `/proc` is (tests point it elsewhere).
    proc_root: PathBuf,
    /// Attach the TLS programs (they are loaded).
    tls: bool,
    /// Attach the goroutine programs (they are loaded).
    goroutines: bool,
}

impl TlsAttacher {
    pub fn new(tls: bool, goroutines: bool) -> Self {
        Self {
            targets: HashMap::new(),
            rejected: HashSet::new(),
            seen_pids: HashMap::new(),
            self_pid: std::process::id(),
            // Without TLS capture the library directories have nothing to offer.
            started: !tls,
            proc_root: PathBuf::from("/proc"),
            tls,
            goroutines,
        }
    }

    /// Files the TLS programs are attached to now.
    pub fn attached(&self) -> Vec<&Path> {
        let mut paths: Vec<&Path> = self
            .targets
            .values()
            .filter(|t| t.tls)
            .map(|t| t.path.as_path())
            .collect();
        paths.sort();
        paths
    }

    /// One pass: the library directories (first time only), then processes not seen before,
    /// then files whose processes have all exited.
    pub fn scan(&mut self, ebpf: &mut Ebpf) -> ScanReport {
        let mut report = ScanReport::default();
        if !self.started {
            self.started = true;
            // This mount namespace's directories, and the host's through pid 1 (the agent in a
            // container with the host's pids): the same files are attached once (by inode).
            let host = self.proc_root.join("1/root");
            for dir in LIB_DIRS {
                let dir = Path::new(dir);
                let on_host = host.join(dir.strip_prefix("/").unwrap_or(dir));
                for path in libssl_in(dir).into_iter().chain(libssl_in(&on_host)) {
                    self.consider(ebpf, &path, None, &mut report);
                }
            }
        }
        let live = self.live_pids();
        for &pid in &live {
            if pid == self.self_pid {
                continue;
            }
            let exe = std::fs::metadata(self.proc_root.join(format!("{pid}/exe")))
                .ok()
                .map(|m| (m.dev(), m.ino()));
            if self.seen_pids.insert(pid, exe) == Some(exe) {
                continue;
            }
            self.consider_pid(ebpf, pid, &mut report);
        }
        self.seen_pids.retain(|pid, _| live.contains(pid));
        let gone: Vec<(u64, u64)> = self
            .targets
            .iter_mut()
            .filter_map(|(key, t)| {
                t.pids.retain(|pid| live.contains(pid));
                (!t.pinned && t.pids.is_empty()).then_some(*key)
            })
            .collect();
        for key in gone {
            if let Some(target) = self.targets.remove(&key) {
                detach(ebpf, target.links);
                report.detached.push(target.path);
            }
        }
        report
    }

    /// Programs that have just started (their exec seen by the kernel): their files as they
    /// are mapped now (the executable; libraries come later and are the periodic scan's), so
    /// that a program with TLS inside it (node, Go) is attached within milliseconds of its
    /// start rather than at the next scan. The periodic scan still looks at them.
    pub fn scan_pids(&mut self, ebpf: &mut Ebpf, pids: &[u32]) -> ScanReport {
        let mut report = ScanReport::default();
        for &pid in pids {
            if pid != self.self_pid {
                self.consider_pid(ebpf, pid, &mut report);
            }
        }
        report
    }

    /// Attaches to the files `pid` maps now, as [`Self::consider`] does for each.
    fn consider_pid(&mut self, ebpf: &mut Ebpf, pid: u32, r: &mut ScanReport) {
        for path in self.files_of(pid) {
            self.consider(ebpf, &path, Some(pid), r);
        }
    }

    fn live_pids(&self) -> HashSet<u32> {
        let Ok(dir) = std::fs::read_dir(&self.proc_root) else {
            return HashSet::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    }

    /// The candidate files of a process: its `libssl` mappings and its executable, as paths
    /// that reach them from this mount namespace.
    fn files_of(&self, pid: u32) -> Vec<PathBuf> {
        let base = self.proc_root.join(pid.to_string());
        let root = base.join("root");
        let mut files = Vec::new();
        if let Ok(maps) = std::fs::read_to_string(base.join("maps")) {
            let mut libs: Vec<&str> = maps
                .lines()
                .filter_map(|line| line.split_whitespace().nth(5))
                .filter(|path| is_libssl(path))
                .collect();
            libs.dedup();
            files.extend(
                libs.into_iter()
                    .map(|p| root.join(p.trim_start_matches('/'))),
            );
        }
        if let Ok(exe) = std::fs::read_link(base.join("exe")) {
            let exe = exe.to_string_lossy();
            let exe = exe.trim_end_matches(" (deleted)");
            files.push(root.join(exe.trim_start_matches('/')));
        }
        files
    }

    /// Attaches to `path` unless its file was seen before; notes `pid` as a user of it.
    fn consider(&mut self, ebpf: &mut Ebpf, path: &Path, pid: Option<u32>, r: &mut ScanReport) {
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        let key = (meta.dev(), meta.ino());
        if let Some(target) = self.targets.get_mut(&key) {
            target.pids.extend(pid);
            return;
        }
        if self.rejected.contains(&key) {
            return;
        }
        let mut found = if meta.is_file() {
            inspect(path)
        } else {
            Inspection::default()
        };
        if !self.tls {
            found.openssl = None;
            found.go = None;
            found.go_stripped = false;
        }
        if !self.goroutines {
            found.go_runtime = None;
            found.go_unfollowed = false;
        }
        if found.go_stripped {
            r.stripped.push(path.to_owned());
        }
        if found.go_unfollowed {
            r.go_unfollowed.push(path.to_owned());
        }
        let tls = found.openssl.is_some() || found.go.is_some();
        if !tls && found.go_runtime.is_none() {
            self.rejected.insert(key);
            return;
        }
        match attach(ebpf, path, &found) {
            Ok(links) => {
                if tls {
                    r.attached.push(path.to_owned());
                }
                let slow: Vec<String> = found
                    .openssl
                    .iter()
                    .flatten()
                    .flatten()
                    .filter(|p| !p.emulated)
                    .map(|p| p.function.clone())
                    .chain(found.go.iter().flat_map(|go| {
                        // Read and Write probed at every return: the code was not as expected.
                        GO_HOOKS.iter().zip(go).take(2).filter_map(|(hook, f)| {
                            f.as_ref()
                                .filter(|f| f.sites.is_empty())
                                .map(|_| format!("{} (at its returns)", hook.0))
                        })
                    }))
                    .collect();
                if !slow.is_empty() {
                    r.single_stepped.push((path.to_owned(), slow));
                }
                if found.go_runtime.is_some() {
                    r.goroutines.push(path.to_owned());
                }
                self.targets.insert(
                    key,
                    Target {
                        path: path.to_owned(),
                        links,
                        pinned: pid.is_none(),
                        pids: pid.into_iter().collect(),
                        tls,
                    },
                );
            }
            Err(e) => {
                self.rejected.insert(key);
                r.failed.push((path.to_owned(), e));
            }
        }
    }
}

/// `libssl.so*`, and the copies Python wheels bundle under a hashed name (`auditwheel`:
/// `libssl-1a2b3c4d.so.3`, e.g. psycopg2-binary's).
fn is_libssl(path: &str) -> bool {
    path.rsplit('/').next().is_some_and(|name| {
        name.starts_with("libssl.so")
            || name
                .strip_prefix("libssl-")
                .and_then(|rest| rest.split_once(".so"))
                .is_some_and(|(hash, _)| {
                    !hash.is_empty() && hash.bytes().all(|b| b.is_ascii_alphanumeric())
                })
    })
}

/// `libssl.so*` files of a directory.
fn libssl_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.to_str().is_some_and(is_libssl))
        .collect();
    paths.sort();
    paths
}

/// What an ELF file offers to TLS capture.
#[derive(Debug, Default, PartialEq)]
struct Inspection {
    /// Defines (not merely imports) `SSL_write`: where its programs go, or why they cannot.
    openssl: Option<Result<Vec<OpensslProbe>, String>>,
    /// Go's `crypto/tls` with its symbols: file offsets of each hook's entry and returns, in
    /// `GO_HOOKS` order (None for a missing optional one); None unless every required one is
    /// there.
    go: Option<Vec<Option<GoFunction>>>,
    /// A Go binary that uses `crypto/tls` but has no symbol table.
    go_stripped: bool,
    /// The runtime functions of `GO_RUNTIME_HOOKS`, in its order (None for a missing optional
    /// one); None unless every required one is there.
    go_runtime: Option<Vec<Option<GoFunction>>>,
    /// A Go binary whose runtime functions cannot be found (no symbol table).
    go_unfollowed: bool,
}

/// Where one pair of OpenSSL programs goes.
#[derive(Debug, PartialEq)]
struct OpensslProbe {
    /// What is probed, for the log.
    function: String,
    entry: &'static str,
    /// Its return program, if it has one.
    exit: Option<&'static str>,
    /// File offset.
    offset: u64,
    /// The kernel emulates the instruction there (no single-step).
    emulated: bool,
    /// A file where it cannot be attached is not attached at all.
    required: bool,
}

/// Where OpenSSL's programs go in a file that defines `SSL_write`: each wrapper pair's core
/// where that is cheaper (see [`CORES`]), else each function of [`HOOKS`] at its cheapest
/// entry.
fn openssl_probes<'d, R: object::ReadRef<'d>>(
    elf: &object::File<'d, R>,
) -> Result<Vec<OpensslProbe>, String> {
    // Every name of `CORES` is one of `HOOKS`: one pass over the symbols finds them all.
    let names: Vec<&str> = HOOKS.iter().map(|h| h.0).collect();
    let symbols = symbols_named(elf.dynamic_symbols().chain(elf.symbols()), &names, |s| {
        s.kind() == object::SymbolKind::Text
    });
    let function = |name: &str| {
        let (address, size) = names
            .iter()
            .position(|n| *n == name)
            .and_then(|k| symbols[k])?;
        Function::at(elf, address, size)
    };
    let mut probes = Vec::new();
    let mut covered = Vec::new();
    for (a, b, entry) in CORES {
        let (Some(fa), Some(fb)) = (function(a), function(b)) else {
            continue;
        };
        if fa.entry().1 && fb.entry().1 {
            continue;
        }
        if let Some(core) = sites::wrapped_core((fa.code, fa.address), (fb.code, fb.address))
            && let Some(core) = Function::at(elf, core, 0)
            && let (offset, true) = core.entry()
        {
            probes.push(OpensslProbe {
                function: format!("the function {a} and {b} call"),
                entry,
                exit: Some("tls_exit_ex"),
                offset,
                emulated: true,
                required: true,
            });
            covered.extend([*a, *b]);
        }
    }
    for (name, entry, exit, required) in HOOKS {
        if covered.contains(name) {
            continue;
        }
        match function(name) {
            Some(f) => {
                let (offset, emulated) = f.entry();
                probes.push(OpensslProbe {
                    function: (*name).to_owned(),
                    entry,
                    exit: *exit,
                    offset,
                    emulated,
                    required: *required,
                });
            }
            None if *required => return Err(format!("{name} not found")),
            None => {}
        }
    }
    Ok(probes)
}

/// Where a Go function is probed, as file offsets.
#[derive(Debug, PartialEq)]
struct GoFunction {
    /// The entry (its cheapest site); None where the function is probed at its calls only.
    entry: Option<u64>,
    /// The returns that get the hook's return program.
    returns: Vec<u64>,
    /// Other places and their programs.
    sites: Vec<(&'static str, u64)>,
}

fn inspect(path: &Path) -> Inspection {
    let Ok(file) = std::fs::File::open(path) else {
        return Inspection::default();
    };
    let cache = object::ReadCache::new(file);
    let Ok(elf) = object::File::parse(&cache) else {
        return Inspection::default();
    };
    let openssl = elf
        .dynamic_symbols()
        .chain(elf.symbols())
        .any(|s| !s.is_undefined() && s.name() == Ok("SSL_write"))
        .then(|| openssl_probes(&elf));
    let is_go = elf.section_by_name(".go.buildinfo").is_some();
    let (go, go_runtime) = if is_go { go_hooks(&elf) } else { (None, None) };
    let go_stripped = is_go && go.is_none() && elf.symbols().next().is_none() && {
        // Function names stay in the line table when the symbol table is stripped.
        let names = elf
            .section_by_name(".gopclntab")
            .or_else(|| elf.section_by_name(".data.rel.ro"))
            .and_then(|s| s.data().ok());
        names.is_some_and(|d| contains(d, GO_HOOKS[0].0.as_bytes()))
    };
    Inspection {
        openssl,
        go,
        go_stripped,
        go_unfollowed: is_go && go_runtime.is_none(),
        go_runtime,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Functions found for a list of [`GoHook`]s, in its order (None for a missing optional one);
/// None unless every required one is there.
type GoFound = Option<Vec<Option<GoFunction>>>;

/// Functions the probes of `GO_HOOKS` and `GO_RUNTIME_HOOKS` go into calls of, where the code
/// allows (see [`go_call_sites`]): what `(*Conn).Read` copies the plaintext with, what
/// `(*Conn).Write` encrypts each record with, the function that runs `runtime.newproc1` and
/// what it then queues the new goroutine with.
const GO_CALLEES: [&str; 4] = [
    "runtime.memmove",
    "crypto/tls.(*Conn).writeRecordLocked",
    "runtime.newproc.func1",
    "runtime.runqput",
];

/// The functions of `GO_HOOKS` and of `GO_RUNTIME_HOOKS`, located together.
fn go_hooks<'d, R: object::ReadRef<'d>>(elf: &object::File<'d, R>) -> (GoFound, GoFound) {
    let names: Vec<&str> = GO_HOOKS
        .iter()
        .chain(GO_RUNTIME_HOOKS)
        .map(|h| h.0)
        .chain(GO_CALLEES)
        .collect();
    let mut at = go_locate(elf, &names);
    let callees = at.split_off(GO_HOOKS.len() + GO_RUNTIME_HOOKS.len());
    let mut found: Vec<Option<GoFunction>> = at
        .iter()
        .map(|f| f.and_then(|(address, size)| go_code(elf, address, size)))
        .collect();
    let function = |at: Option<(u64, u64)>| at.and_then(|(a, size)| Function::at(elf, a, size));
    let callee = |k: usize| callees[k].map(|(address, _)| address);
    let [read, write, newproc] = go_call_sites(
        [function(at[0]), function(at[1]), function(callees[2])],
        [callee(0), callee(1), callee(3)],
    );
    // `GO_HOOKS` begins with Read and Write, `GO_RUNTIME_HOOKS` with `newproc1`.
    for (k, sites) in [(0, read), (1, write), (GO_HOOKS.len(), newproc)] {
        if let (Some(f), Some(sites)) = (found[k].as_mut(), sites) {
            // Read and `newproc1` keep their entry probe; Write has none.
            if k == 1 {
                f.entry = None;
            }
            f.returns.clear();
            f.sites = sites;
        }
    }
    let runtime = found.split_off(GO_HOOKS.len());
    let complete = |hooks: &[GoHook], found: Vec<Option<GoFunction>>| -> GoFound {
        hooks
            .iter()
            .zip(found)
            .map(|((_, _, _, required), found)| match found {
                None if *required => None,
                found => Some(found),
            })
            .collect()
    };
    (
        complete(GO_HOOKS, found),
        complete(GO_RUNTIME_HOOKS, runtime),
    )
}

/// Calls probed instead of returns, which the kernel single-steps (a `call` it emulates), for
/// `[read, write, spawn]`, given `(*Conn).Read`, `(*Conn).Write`, `runtime.newproc.func1` and
/// the functions they call (`GO_CALLEES`' memmove, writeRecordLocked, runqput):
/// - `(*Conn).Read`'s one call of `runtime.memmove`, the copy of the plaintext into the
///   caller's buffer (`go_tls_read_copy`). A read that fails is not seen to end: its entry
///   stays until the goroutine's next call, and soon claims no socket (`sock.rs`). (Go's HTTP
///   server ends every request with such a failure: a background read it aborts.)
/// - `(*Conn).Write`'s calls of `writeRecordLocked` with the plaintext
///   (`go_tls_write_record`); nothing else of `Write` is probed.
/// - the one call of `runqput(pp, newg, ...)` in `runtime.newproc.func1`, right after
///   `newproc1` returned (`go_newproc_queued`).
///
/// None for a function whose code is not so: it keeps its returns.
fn go_call_sites(
    functions: [Option<Function>; 3],
    callees: [Option<u64>; 3],
) -> [Option<Vec<(&'static str, u64)>>; 3] {
    // Each program, and whether exactly one such call is expected: one copy, one queueing;
    // Write splits a record off in TLS 1.0, so it may make two.
    const PROGRAMS: [(&str, bool); 3] = [
        ("go_tls_read_copy", true),
        ("go_tls_write_record", false),
        ("go_newproc_queued", true),
    ];
    let mut sites = [None, None, None];
    for ((slot, (program, one)), (f, callee)) in sites
        .iter_mut()
        .zip(PROGRAMS)
        .zip(functions.iter().zip(callees))
    {
        let (Some(f), Some(callee)) = (f, callee) else {
            continue;
        };
        let calls = sites::calls_to(f.code, f.address, callee);
        if calls.is_empty() || (one && calls.len() != 1) {
            continue;
        }
        *slot = Some(
            calls
                .into_iter()
                .map(|at| (program, f.file_offset + at))
                .collect(),
        );
    }
    sites
}

/// Address and size of each of `names` (None where absent): the first defined symbol of that
/// name among `symbols` that `keep` accepts, in one pass.
fn symbols_named<'d, S: ObjectSymbol<'d>>(
    symbols: impl Iterator<Item = S>,
    names: &[&str],
    keep: impl Fn(&S) -> bool,
) -> Vec<Option<(u64, u64)>> {
    let mut found = vec![None; names.len()];
    for sym in symbols {
        if sym.is_undefined() || !keep(&sym) {
            continue;
        }
        if let Ok(name) = sym.name()
            && let Some(k) = names.iter().position(|n| *n == name)
        {
            found[k].get_or_insert((sym.address(), sym.size()));
        }
    }
    found
}

/// Address and size of each named function of a Go binary: from the symbol table, else from
/// the line table (`gopclntab`), which stripped binaries keep.
fn go_locate<'d, R: object::ReadRef<'d>>(
    elf: &object::File<'d, R>,
    names: &[&str],
) -> Vec<Option<(u64, u64)>> {
    let mut found = symbols_named(elf.symbols(), names, |sym| sym.size() != 0);
    if found.iter().any(Option::is_none) {
        let text = elf.section_by_name(".text").map_or(0, |s| s.address());
        let table = elf
            .section_by_name(".gopclntab")
            .and_then(|s| s.data().ok())
            .and_then(|d| super::gopclntab::LineTable::parse(d, text));
        if let Some(table) = table {
            for (slot, f) in found.iter_mut().zip(table.find(names)) {
                if slot.is_none() {
                    *slot = f.map(|f| (f.address, f.size));
                }
            }
        }
    }
    found
}

/// The function at `address` (`size` bytes), probed at its cheapest entry (see `sites`) and at
/// every return.
fn go_code<'d, R: object::ReadRef<'d>>(
    elf: &object::File<'d, R>,
    address: u64,
    size: u64,
) -> Option<GoFunction> {
    let f = Function::at(elf, address, size)?;
    let returns = sites::returns(f.code, address)
        .into_iter()
        .map(|at| f.file_offset + at)
        .collect::<Vec<_>>();
    (!returns.is_empty()).then_some(GoFunction {
        entry: Some(f.entry().0),
        returns,
        sites: Vec::new(),
    })
}

/// Attaches every hook to `path`: the return probe before the entry probe, so that no entry
/// is ever left without its return (which would mark the thread's later socket calls as TLS).
/// On failure of a required hook, what was attached is detached again.
fn attach(
    ebpf: &mut Ebpf,
    path: &Path,
    found: &Inspection,
) -> Result<Vec<(&'static str, UProbeLinkId)>, String> {
    let mut links = Vec::new();
    for (hooks, functions) in [(GO_HOOKS, &found.go), (GO_RUNTIME_HOOKS, &found.go_runtime)] {
        let Some(functions) = functions else {
            continue;
        };
        let points = go_points(
            hooks
                .iter()
                .zip(functions)
                .filter_map(|((_, entry, ret, _), f)| Some((*entry, *ret, f.as_ref()?))),
        );
        if let Err(e) = attach_points(ebpf, path, points, &mut links) {
            detach(ebpf, links);
            return Err(e);
        }
    }
    let probes = match &found.openssl {
        None => return Ok(links),
        Some(Ok(probes)) => probes,
        Some(Err(e)) => {
            detach(ebpf, links);
            return Err(e.clone());
        }
    };
    for probe in probes {
        let mut pair = Vec::new();
        // The return first: an entry without it would leave its call behind.
        let points = probe
            .exit
            .into_iter()
            .chain([probe.entry])
            .map(|name| (name, probe.offset))
            .collect();
        match attach_points(ebpf, path, points, &mut pair) {
            Ok(()) => links.extend(pair),
            Err(e) => {
                detach(ebpf, pair);
                if probe.required {
                    detach(ebpf, links);
                    return Err(format!("{}: {e}", probe.function));
                }
                tracing::debug!("{}: {}: {e}", path.display(), probe.function);
            }
        }
    }
    Ok(links)
}

/// Where the Go programs go: every return and other site first, then the entries (an entry
/// without its ends would leave the goroutine's call behind, and its later socket calls taken
/// for TLS).
fn go_points<'a>(
    hooks: impl Iterator<Item = (Option<&'static str>, Option<&'static str>, &'a GoFunction)> + Clone,
) -> Vec<(&'static str, u64)> {
    let returns = hooks.clone().flat_map(|(_, ret, f)| {
        ret.into_iter()
            .flat_map(move |ret| f.returns.iter().map(move |&at| (ret, at)))
    });
    let sites = hooks.clone().flat_map(|(_, _, f)| f.sites.iter().copied());
    let entries = hooks.filter_map(|(entry, _, f)| Some((entry?, f.entry?)));
    returns.chain(sites).chain(entries).collect()
}

fn attach_points(
    ebpf: &mut Ebpf,
    path: &Path,
    points: Vec<(&'static str, u64)>,
    links: &mut Vec<(&'static str, UProbeLinkId)>,
) -> Result<(), String> {
    for (name, at) in points {
        let program = uprobe(ebpf, name).map_err(|e| e.to_string())?;
        let id = program
            .attach(
                UProbeAttachLocation::AbsoluteOffset(at),
                path,
                UProbeScope::AllProcesses,
            )
            .map_err(|e| format!("{name} at {at:#x}: {e}"))?;
        links.push((name, id));
    }
    Ok(())
}

fn detach(ebpf: &mut Ebpf, links: Vec<(&'static str, UProbeLinkId)>) {
    for (name, id) in links.into_iter().rev() {
        if let Ok(program) = uprobe(ebpf, name)
            && let Err(e) = program.detach(id)
        {
            tracing::debug!("detaching {name}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_return_instructions_not_return_bytes() {
        // sub rsp, 8 | ret | mov eax, 0xc3 | ret 8 | ret
        let code = [
            0x48, 0x83, 0xec, 0x08, 0xc3, 0xb8, 0xc3, 0x00, 0x00, 0x00, 0xc2, 0x08, 0x00, 0xc3,
        ];
        assert_eq!(sites::returns(&code, 0x401000), vec![4, 10, 13]);
        assert_eq!(sites::returns(&[], 0x401000), Vec::<u64>::new());
    }

    #[test]
    fn recognises_libssl_names_only() {
        assert!(is_libssl("/usr/lib/x86_64-linux-gnu/libssl.so.3"));
        assert!(is_libssl("libssl.so.1.1"));
        assert!(is_libssl("/opt/x/libssl.so"));
        assert!(!is_libssl("/usr/lib/libcrypto.so.3"));
        assert!(!is_libssl("/usr/lib/libssl3.so"));
        assert!(!is_libssl("/usr/lib/notlibssl.so.3"));
        assert!(is_libssl(
            "/venv/lib/python3.11/site-packages/psycopg2_binary.libs/libssl-81ffa89e.so.3"
        ));
        assert!(!is_libssl("/usr/lib/libssl-dev.txt"));
        assert!(!is_libssl("/usr/lib/libssl-.so.3"));
    }

    #[test]
    fn finds_openssl_entry_points_in_the_system_library_only() {
        // Debian's libssl defines SSL_write; curl imports it; the agent itself has none.
        let lib = LIB_DIRS
            .iter()
            .flat_map(|d| libssl_in(Path::new(d)))
            .find(|p| std::fs::metadata(p).is_ok())
            .expect("a libssl.so in the library directories (libssl3 is installed by set-up)");
        let defines_ssl = |p: &Path| inspect(p).openssl.is_some();
        assert!(defines_ssl(&lib), "{} defines SSL_write", lib.display());
        let curl = Path::new("/usr/bin/curl");
        assert!(curl.exists(), "curl is installed by set-up");
        assert!(!defines_ssl(curl), "curl only imports SSL_write");
        assert!(!defines_ssl(&std::env::current_exe().unwrap()));
        assert_eq!(inspect(Path::new("/nonexistent")), Inspection::default());
        assert_eq!(inspect(curl).go, None);
    }

    fn system_libssl() -> PathBuf {
        Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3")
            .canonicalize()
            .expect("Debian's libssl3 (installed by set-up)")
    }

    /// Debian's OpenSSL 3.0: `SSL_read`/`SSL_read_ex` begin with `sub rsp`, which the kernel
    /// single-steps; the function both call begins with `push`. So one probe each for reading
    /// and writing, there, and none single-stepped.
    #[test]
    fn openssl_wrappers_are_probed_at_their_common_core() {
        let lib = system_libssl();
        let probes = inspect(&lib).openssl.expect("defines SSL_write").unwrap();
        let named: Vec<(&str, Option<&str>, bool)> = probes
            .iter()
            .map(|p| (p.entry, p.exit, p.emulated))
            .collect();
        assert_eq!(
            named,
            [
                ("tls_enter_read", Some("tls_exit_ex"), true),
                ("tls_enter_write", Some("tls_exit_ex"), true),
                ("tls_enter_handshake", Some("tls_exit"), true),
                ("tls_free", None, true),
            ]
        );
        // The core is called by both wrappers, read from the file independently of `sites`:
        // each wrapper holds `call rel32` to the core's offset.
        let data = std::fs::read(&lib).unwrap();
        let elf = object::File::parse(&*data).unwrap();
        for (probe, (a, b)) in probes
            .iter()
            .zip([("SSL_read", "SSL_read_ex"), ("SSL_write", "SSL_write_ex")])
        {
            let first = data[probe.offset as usize];
            assert!(
                (0x50..=0x57).contains(&first) || first == 0x41,
                "{first:#x}"
            );
            for name in [a, b] {
                let sym = elf
                    .dynamic_symbols()
                    .find(|s| s.name() == Ok(name))
                    .unwrap();
                let at = sym.address() as usize; // a shared library's text: address = offset
                let code = &data[at..at + sym.size() as usize];
                let calls_core = (0..code.len().saturating_sub(4)).any(|k| {
                    code[k] == 0xe8 && {
                        let rel = i32::from_le_bytes(code[k + 1..k + 5].try_into().unwrap());
                        (at + k + 5) as i64 + rel as i64 == probe.offset as i64
                    }
                });
                assert!(calls_core, "{name} calls {:#x}", probe.offset);
                assert_ne!(at as u64, probe.offset);
            }
        }
    }

    /// node links OpenSSL with the internal functions inlined; its wrappers begin with `push`,
    /// so they are probed themselves, at their first instruction.
    #[test]
    fn wrappers_the_kernel_emulates_are_probed_themselves() {
        let node = Path::new("/usr/bin/node");
        assert!(node.exists(), "node is installed by set-up");
        let probes = inspect(&node.canonicalize().unwrap())
            .openssl
            .expect("node defines SSL_write")
            .unwrap();
        let functions: Vec<&str> = probes.iter().map(|p| p.function.as_str()).collect();
        assert_eq!(
            functions,
            [
                "SSL_read",
                "SSL_write",
                "SSL_do_handshake",
                "SSL_read_ex",
                "SSL_write_ex",
                "SSL_free"
            ]
        );
        assert!(probes.iter().all(|p| p.emulated));
    }

    /// Debian's `go` command (Go 1.19, stripped: found through its line table) uses
    /// `crypto/tls` and starts goroutines. No probe on a successful read, a write or a `go`
    /// statement is on a `RET`: `(*Conn).Read` is probed at entry and at its one copy of the
    /// plaintext (a call of `runtime.memmove`), `(*Conn).Write` only at its two calls of
    /// `writeRecordLocked` (the TLS 1.0 split and the whole buffer), `runtime.newproc1` at entry
    /// and at the call in `runtime.newproc.func1` that queues the goroutine it returned. Every
    /// place is a `call rel32` to the function named (read from the bytes here) or, for the
    /// entries, an instruction the kernel emulates.
    #[test]
    fn go_reads_writes_and_spawns_are_probed_at_calls_not_returns() {
        use object::ObjectSection;
        let path = Path::new("/usr/bin/go")
            .canonicalize()
            .expect("golang-go is installed by set-up");
        let found = inspect(&path);
        let (Some(go), Some(runtime)) = (&found.go, &found.go_runtime) else {
            panic!("crypto/tls and the runtime found: {found:?}");
        };
        let (Some(read), Some(write), Some(newproc)) = (&go[0], &go[1], &runtime[0]) else {
            panic!("Read, Write and newproc1 found: {found:?}");
        };
        let data = std::fs::read(&path).unwrap();
        let elf = object::File::parse(&*data).unwrap();
        let text = elf.section_by_name(".text").unwrap();
        let table = crate::capture::gopclntab::LineTable::parse(
            elf.section_by_name(".gopclntab").unwrap().data().unwrap(),
            text.address(),
        )
        .unwrap();
        let (file_start, _) = text.file_range().unwrap();
        let offset_of = |address: u64| address - text.address() + file_start;
        let located = table.find(&GO_CALLEES);
        let callee = |k: usize| located[k].expect(GO_CALLEES[k]).address;
        // A `call rel32` at `at` (file offset) to the function at `target` (address).
        let calls = |at: u64, target: u64| {
            let at = at as usize;
            let rel = i32::from_le_bytes(data[at + 1..at + 5].try_into().unwrap());
            data[at] == 0xe8 && (at as i64 + 5 + rel as i64) == offset_of(target) as i64
        };
        for (f, program, target, count) in [
            (read, "go_tls_read_copy", callee(0), 1),
            (write, "go_tls_write_record", callee(1), 2),
            (newproc, "go_newproc_queued", callee(3), 1),
        ] {
            assert!(f.returns.is_empty(), "{f:?}");
            assert_eq!(f.sites.len(), count, "{f:?}");
            for &(name, at) in &f.sites {
                assert_eq!(name, program);
                assert!(calls(at, target), "{program} at {at:#x}");
            }
        }
        let spawner = located[2].unwrap();
        let (start, end) = (
            offset_of(spawner.address),
            offset_of(spawner.address + spawner.size),
        );
        assert!(
            (start..end).contains(&newproc.sites[0].1),
            "runqput called in newproc.func1"
        );
        assert_eq!(write.entry, None);
        for at in [read.entry, newproc.entry] {
            let at = at.expect("an entry probe") as usize;
            assert!(
                (1..=6).any(|n| sites::kernel_emulates(&data[at..at + n])),
                "{at:#x} emulated"
            );
        }
    }
}
