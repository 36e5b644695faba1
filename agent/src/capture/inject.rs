//! Header injection: attaches the kernel programs that insert a W3C `traceparent` line into
//! outgoing HTTP/1 requests of traced processes (`ebpf/socktrace-ebpf/src/inject.rs`), so the
//! next hop's spans join the caller's trace.
//!
//! `sock_ops` is attached to the cgroup v2 root with a BPF link and `sk_msg` to the programs'
//! socket map; the link, the map and both programs belong to this process, so they all go away
//! when it exits, however it exits. Injection is optional: when anything it needs is missing
//! (`CAP_NET_ADMIN`, a cgroup v2 hierarchy, Linux 5.7) the agent says why and traces without it.

use std::{
    fs::File,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{MapData, ProgramArray, Queue, SockHash},
    programs::{CgroupAttachMode, SkMsg, SockOps, TracePoint},
    util::KernelVersion,
};

use crate::capture::caps::CapSet;

/// Kernel programs and maps of the injection (names in the eBPF object).
const SOCK_OPS: &str = "inject_sockops";
const SK_MSG: &str = "inject_http";
/// The HTTP/2 message program, reached from `SK_MSG` by a tail call through `TAILS`.
const SK_MSG_H2: &str = "inject_h2";
const TAILS: &str = "INJECT_TAILS";
const TAIL_H2: u32 = 0;
const ENTER_CONNECT: &str = "inject_enter_connect";
const EXIT_CONNECT: &str = "inject_exit_connect";
const SOCKHASH: &str = "INJECT_SOCKHASH";
const RELEASE: &str = "INJECT_RELEASE";
/// The programs loaded only with injection.
pub const PROGRAMS: [&str; 5] = [SOCK_OPS, SK_MSG, SK_MSG_H2, ENTER_CONNECT, EXIT_CONNECT];

/// Why injection is off.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("{0}")]
    NoNetAdmin(String),
    #[error(
        "Linux {0} is older than 5.7: cgroup programs cannot be attached with a link that is released when the agent exits"
    )]
    OldKernel(String),
    #[error("no cgroup v2 hierarchy to attach sock_ops to ({0})")]
    NoCgroup2(String),
    #[error("the kernel rejected {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("{0} missing from the eBPF object")]
    Missing(&'static str),
    #[error("duplicating the socket map's descriptor: {0}")]
    Dup(#[source] std::io::Error),
}

impl InjectError {
    /// The one-line warning the agent prints before going on without injection.
    pub fn warning(&self) -> String {
        match self {
            Self::NoNetAdmin(missing) => missing.clone(),
            other => format!("traceparent injection is off: {other}"),
        }
    }
}

/// The root of the cgroup v2 hierarchy, open, where `sock_ops` is to be attached.
#[derive(Debug)]
pub struct Cgroup2Root {
    dir: File,
    /// Where it was found (or "a private cgroup2 mount").
    pub name: String,
}

/// Checks what injection needs, before the programs are loaded (so that without it the kernel
/// side does none of its work), and opens the cgroup v2 root.
pub fn precheck(caps: CapSet) -> Result<Cgroup2Root, InjectError> {
    if let Some(missing) = crate::capture::caps::inject_missing(caps) {
        return Err(InjectError::NoNetAdmin(missing));
    }
    if let Ok(v) = KernelVersion::current()
        && v < KernelVersion::new(5, 7, 0)
    {
        return Err(InjectError::OldKernel(v.to_string()));
    }
    let (dir, name) = open_cgroup2_root().map_err(InjectError::NoCgroup2)?;
    Ok(Cgroup2Root { dir, name })
}

fn program_err(name: &'static str) -> impl Fn(aya::programs::ProgramError) -> InjectError {
    move |source| InjectError::Program { name, source }
}

/// Loads and attaches the injection programs of the already loaded object, `sock_ops` on
/// `root`. On error nothing of the injection stays attached.
pub fn attach(ebpf: &mut Ebpf, root: &Cgroup2Root) -> Result<(), InjectError> {
    let result = attach_all(ebpf, &root.dir);
    if result.is_err() {
        // Unloading detaches; programs never loaded just say so.
        if let Some(Ok(p)) = ebpf.program_mut(SOCK_OPS).map(<&mut SockOps>::try_from) {
            let _ = p.unload();
        }
        for name in [SK_MSG, SK_MSG_H2] {
            if let Some(Ok(p)) = ebpf.program_mut(name).map(<&mut SkMsg>::try_from) {
                let _ = p.unload();
            }
        }
        for name in [ENTER_CONNECT, EXIT_CONNECT] {
            if let Some(Ok(p)) = ebpf.program_mut(name).map(<&mut TracePoint>::try_from) {
                let _ = p.unload();
            }
        }
    }
    result
}

fn attach_all(ebpf: &mut Ebpf, cgroup_dir: &File) -> Result<(), InjectError> {
    // The connect() markers first (sock_ops only takes sockets they marked)...
    for (name, tracepoint) in [
        (ENTER_CONNECT, "sys_enter_connect"),
        (EXIT_CONNECT, "sys_exit_connect"),
    ] {
        let program: &mut TracePoint = ebpf
            .program_mut(name)
            .ok_or(InjectError::Missing(name))?
            .try_into()
            .map_err(program_err(name))?;
        let started = std::time::Instant::now();
        program.load().map_err(program_err(name))?;
        crate::capture::object::log_verified(name, program.info().ok(), started);
        program
            .attach("syscalls", tracepoint)
            .map_err(program_err(name))?;
    }
    // ...then the message program on the socket map, before any socket can enter it (a socket
    // added to a map without one would keep the plain TCP send path)...
    let map_fd = {
        let map = ebpf.map(SOCKHASH).ok_or(InjectError::Missing(SOCKHASH))?;
        let hash: SockHash<_, u64> =
            SockHash::try_from(map).map_err(|source| InjectError::Map {
                name: SOCKHASH,
                source,
            })?;
        hash.fd().try_clone().map_err(InjectError::Dup)?
    };
    // The HTTP/2 program in its slot before the message program can reach for it.
    {
        let h2: &mut SkMsg = ebpf
            .program_mut(SK_MSG_H2)
            .ok_or(InjectError::Missing(SK_MSG_H2))?
            .try_into()
            .map_err(program_err(SK_MSG_H2))?;
        let started = std::time::Instant::now();
        h2.load().map_err(program_err(SK_MSG_H2))?;
        crate::capture::object::log_verified(SK_MSG_H2, h2.info().ok(), started);
        let fd = h2
            .fd()
            .map_err(program_err(SK_MSG_H2))?
            .try_clone()
            .map_err(|e| InjectError::Program {
                name: SK_MSG_H2,
                source: aya::programs::ProgramError::IOError(e),
            })?;
        let map = ebpf.map_mut(TAILS).ok_or(InjectError::Missing(TAILS))?;
        let mut tails: ProgramArray<&mut aya::maps::MapData> = ProgramArray::try_from(map)
            .map_err(|source| InjectError::Map {
                name: TAILS,
                source,
            })?;
        tails
            .set(TAIL_H2, &fd, 0)
            .map_err(|source| InjectError::Map {
                name: TAILS,
                source,
            })?;
    }
    let msg: &mut SkMsg = ebpf
        .program_mut(SK_MSG)
        .ok_or(InjectError::Missing(SK_MSG))?
        .try_into()
        .map_err(program_err(SK_MSG))?;
    let started = std::time::Instant::now();
    msg.load().map_err(program_err(SK_MSG))?;
    crate::capture::object::log_verified(SK_MSG, msg.info().ok(), started);
    msg.attach(&map_fd).map_err(program_err(SK_MSG))?;
    // ...and last sock_ops, which fills the map. A link never displaces other programs.
    let ops: &mut SockOps = ebpf
        .program_mut(SOCK_OPS)
        .ok_or(InjectError::Missing(SOCK_OPS))?
        .try_into()
        .map_err(program_err(SOCK_OPS))?;
    let started = std::time::Instant::now();
    ops.load().map_err(program_err(SOCK_OPS))?;
    crate::capture::object::log_verified(SOCK_OPS, ops.info().ok(), started);
    ops.attach(cgroup_dir.as_fd(), CgroupAttachMode::Single)
        .map_err(program_err(SOCK_OPS))?;
    Ok(())
}

/// Takes sockets out of the injection's socket map once the kernel has left them alone for
/// good (it queues them in `INJECT_RELEASE`; only user space and `sock_ops` can delete from a
/// socket map). Out of the map, a socket is back on the kernel's plain TCP paths: no extra
/// copy per send, and no `tcp_bpf_recvmsg`, whose blocking read fails with EAGAIN when woken
/// without data.
pub struct InjectRelease {
    queue: Queue<MapData, u64>,
    sockets: SockHash<MapData, u64>,
}

impl InjectRelease {
    /// Takes both maps out of the object, once injection is attached.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, InjectError> {
        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(InjectError::Missing(name));
        let (queue, sockets) = (take(RELEASE)?, take(SOCKHASH)?);
        Ok(Self {
            queue: Queue::try_from(queue).map_err(|source| InjectError::Map {
                name: RELEASE,
                source,
            })?,
            sockets: SockHash::try_from(sockets).map_err(|source| InjectError::Map {
                name: SOCKHASH,
                source,
            })?,
        })
    }

    /// Takes every queued socket out of the map (the kernel counts them, `inject_released`; a
    /// socket that closed meanwhile has left it by itself).
    pub fn drain(&mut self) {
        while let Ok(sk) = self.queue.pop(0) {
            let _ = self.sockets.remove(&sk);
        }
    }
}

/// An eBPF object copied into 8-byte aligned memory (the ELF parser wants aligned data).
pub struct AlignedObject {
    words: Vec<u64>,
    len: usize,
}

impl AlignedObject {
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialised bytes; u8 has no alignment needs.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and the borrow is unique.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), self.len) }
    }
}

const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_SOCKHASH: u32 = 18;

/// A copy of `object` in which the injection's socket map is a plain hash map.
///
/// Creating a `SOCKHASH` needs `CAP_NET_ADMIN`, and aya creates every map of an object when it
/// loads it, used or not. Without injection the socket map's programs are never loaded, so the
/// agent loads this copy instead: the map's type in its (legacy, `maps` section) definition
/// becomes `BPF_MAP_TYPE_HASH`, with the same key and value sizes, which needs no more than the
/// rest of the object.
pub fn without_socket_map(object: &[u8]) -> Result<AlignedObject, String> {
    let mut copy = AlignedObject {
        words: vec![0u64; object.len().div_ceil(8)],
        len: object.len(),
    };
    copy.bytes_mut().copy_from_slice(object);
    let at = socket_map_type_offset(object)?;
    copy.bytes_mut()[at..at + 4].copy_from_slice(&BPF_MAP_TYPE_HASH.to_le_bytes());
    Ok(copy)
}

/// File offset of the `type` field of `INJECT_SOCKHASH`'s map definition in an ELF64
/// little-endian object, checked to be `BPF_MAP_TYPE_SOCKHASH`.
fn socket_map_type_offset(elf: &[u8]) -> Result<usize, String> {
    let get = |at: usize, n: usize| -> Result<u64, String> {
        let b = elf
            .get(at..at + n)
            .ok_or_else(|| format!("truncated object at {at}"))?;
        Ok(b.iter().rev().fold(0u64, |v, x| (v << 8) | u64::from(*x)))
    };
    if elf.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return Err("not a little-endian ELF64 object".into());
    }
    let shoff = get(0x28, 8)? as usize;
    let shentsize = get(0x3a, 2)? as usize;
    let shnum = get(0x3c, 2)? as usize;
    let shstrndx = get(0x3e, 2)? as usize;
    // (name offset, type, file offset, size, link) of every section.
    let mut sections = Vec::with_capacity(shnum);
    for i in 0..shnum {
        let h = shoff + i * shentsize;
        sections.push((
            get(h, 4)? as usize,
            get(h + 4, 4)? as u32,
            get(h + 0x18, 8)? as usize,
            get(h + 0x20, 8)? as usize,
            get(h + 0x28, 4)? as usize,
        ));
    }
    let name = |table: usize, at: usize| -> Result<&[u8], String> {
        let &(_, _, off, size, _) = sections.get(table).ok_or("bad string table")?;
        let s = elf.get(off + at..off + size).ok_or("bad string offset")?;
        Ok(&s[..s.iter().position(|b| *b == 0).unwrap_or(s.len())])
    };
    let maps = (0..shnum)
        .find(|i| name(shstrndx, sections[*i].0) == Ok(b"maps".as_slice()))
        .ok_or("no maps section")?;
    const SHT_SYMTAB: u32 = 2;
    let &(_, _, symoff, symsize, strtab) = sections
        .iter()
        .find(|s| s.1 == SHT_SYMTAB)
        .ok_or("no symbol table")?;
    for sym in (symoff..symoff + symsize).step_by(24) {
        if get(sym + 6, 2)? as usize == maps
            && name(strtab, get(sym, 4)? as usize)? == b"INJECT_SOCKHASH"
        {
            let at = sections[maps].2 + get(sym + 8, 8)? as usize;
            return match get(at, 4)? as u32 {
                BPF_MAP_TYPE_SOCKHASH => Ok(at),
                other => Err(format!("INJECT_SOCKHASH has map type {other}")),
            };
        }
    }
    Err("no INJECT_SOCKHASH map".into())
}

/// Mount points of cgroup v2 hierarchies in a `/proc/PID/mountinfo` text, the ones that show
/// the hierarchy's root first.
pub(crate) fn cgroup2_mounts(mountinfo: &str) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    let mut others = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split(' ').next() != Some("cgroup2") {
            continue;
        }
        let fields: Vec<&str> = left.split(' ').collect();
        let (Some(root), Some(point)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        let point = PathBuf::from(unescape_mount_path(point));
        if *root == "/" {
            roots.push(point);
        } else {
            others.push(point);
        }
    }
    roots.extend(others);
    roots
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Opens the root of the cgroup v2 hierarchy: as the host's init sees it (through
/// `/proc/1/root`, which also works from a container sharing the host's pid namespace), else
/// as this process sees it, else from a private mount made for the purpose (and removed once
/// the directory is open).
fn open_cgroup2_root() -> Result<(File, String), String> {
    let mut tried = Vec::new();
    for (mountinfo, prefix) in [
        ("/proc/1/mountinfo", Some(Path::new("/proc/1/root"))),
        ("/proc/self/mountinfo", None),
    ] {
        let Ok(text) = std::fs::read_to_string(mountinfo) else {
            continue;
        };
        for point in cgroup2_mounts(&text) {
            let path = match prefix {
                Some(p) => p.join(point.strip_prefix("/").unwrap_or(&point)),
                None => point.clone(),
            };
            match File::open(&path) {
                Ok(f) => return Ok((f, point.display().to_string())),
                Err(e) => tried.push(format!("{}: {e}", path.display())),
            }
        }
    }
    match mount_private() {
        Ok(f) => Ok((f, "a private cgroup2 mount".to_owned())),
        Err(e) => {
            tried.push(e);
            Err(format!(
                "cgroup2 is not mounted and could not be mounted: {}",
                tried.join("; ")
            ))
        }
    }
}

/// Mounts cgroup2 on a fresh directory, opens its root, and detaches the mount again: the open
/// directory keeps referring to the hierarchy's root.
fn mount_private() -> Result<File, String> {
    let dir = std::env::temp_dir().join(format!("socktrace-cgroup2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    if let Err(e) = crate::capture::object::mount_fs("cgroup2", &dir) {
        let _ = std::fs::remove_dir(&dir);
        return Err(format!("mount -t cgroup2 {}: {e}", dir.display()));
    }
    let file = File::open(&dir).map_err(|e| format!("{}: {e}", dir.display()));
    let target = std::ffi::CString::new(dir.to_string_lossy().as_bytes())
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    // SAFETY: a valid NUL-terminated path.
    unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    let _ = std::fs::remove_dir(&dir);
    file
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup2_mounts_prefer_the_hierarchy_root() {
        let text = "\
24 31 0:22 / /sys rw,nosuid - sysfs sysfs rw
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 31 0:39 /.. /var/lib/x rw shared:5 - cgroup2 cgroup2 rw
43 31 0:40 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
44 31 0:41 / /mnt/with\\040space rw - cgroup2 none rw
";
        assert_eq!(
            cgroup2_mounts(text),
            vec![
                PathBuf::from("/sys/fs/cgroup/unified"),
                PathBuf::from("/mnt/with space"),
                PathBuf::from("/var/lib/x"),
            ]
        );
        assert!(cgroup2_mounts("garbage\n - cgroup2\n").is_empty());
    }

    #[test]
    fn the_socket_map_becomes_a_hash_map_and_nothing_else_changes() {
        let object = crate::capture::object::EBPF_OBJECT;
        if object.is_empty() {
            // Built with AYA_BUILD_SKIP=1: no object to patch.
            return;
        }
        let patched = without_socket_map(object).expect("patchable");
        let at = socket_map_type_offset(object).expect("found");
        let diff: Vec<usize> = (0..object.len())
            .filter(|i| object[*i] != patched.bytes()[*i])
            .collect();
        assert_eq!(
            diff,
            vec![at],
            "only the low byte of the type changes (18 -> 1)"
        );
        assert_eq!(patched.bytes()[at], 1);
        assert!(without_socket_map(b"not an object").is_err());
        assert!(without_socket_map(&object[..100]).is_err());
    }

    #[test]
    fn net_admin_is_named_when_missing() {
        use crate::capture::caps::Cap;
        let err = precheck(CapSet::of(&[Cap::BPF, Cap::PERFMON])).unwrap_err();
        assert!(matches!(err, InjectError::NoNetAdmin(_)));
        let err = err.warning();
        assert!(err.starts_with("missing CAP_NET_ADMIN:"), "{err}");
    }
}
