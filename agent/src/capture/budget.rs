//! The verifier budget: how much of the kernel's limits each program uses.
//!
//! The agent loads through aya, which keeps the verifier's log only when a load fails. This
//! module loads the same object, with the same settings, a second way - parsed and relocated by
//! `aya-obj` like aya does, maps created by aya - and asks the verifier for its statistics
//! (`BPF_LOG_STATS`): the stack depth of every subprogram and the instructions it processed.
//! `cargo xtask verifier` runs it for every configuration and fails when a program is near a
//! limit, so a program that grows is caught in CI, not on a user's kernel.

use std::{
    collections::{HashMap, HashSet},
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    time::Instant,
};

use aya::maps::MapData;
use aya_obj::{
    EbpfSectionKind, Object, ProgramSection,
    generated::{bpf_attr, bpf_cmd, bpf_insn, bpf_prog_type},
};

use super::object::log_tail;
use super::probes::{
    InjectFlags, ProbeConfig, ProbeError, WAKEUP_BYTES, loader_globals, object_for,
};

/// The verifier's hard limits (Linux 5.2+).
pub const STACK_LIMIT: u32 = 512;
pub const INSN_LIMIT: u32 = 1_000_000;
/// The margins every program must keep, in every configuration.
pub const STACK_BUDGET: u32 = 384;
pub const INSN_BUDGET: u32 = INSN_LIMIT / 2;

/// One way the agent can load its programs, named by the flags that select it.
pub struct Configuration {
    pub name: &'static str,
    pub flags: &'static str,
    pub config: ProbeConfig,
}

/// Every configuration that changes what the verifier sees. The kernel side knows four
/// settings (read-only globals the verifier treats as constants): injection on or off, TLS
/// capture on or off (only `lean` has it off), the process filter, and the capture size; `--protocols` reaches it only by turning injection off
/// (a protocol list without `http`), and the other flags are applied in user space.
pub fn configurations() -> Vec<Configuration> {
    let config = |inject, filter_pids, capture_bytes| ProbeConfig {
        capture_bytes,
        ringbuf_bytes: 8 << 20,
        filter_pids,
        wakeup_bytes: WAKEUP_BYTES,
        inject,
        tls: inject || !filter_pids,
        goroutines: true,
        inject_flags: InjectFlags::default(),
    };
    let default = socktrace_common::DEFAULT_CAPTURE;
    let max = socktrace_common::MAX_CAPTURE as u32;
    vec![
        Configuration {
            name: "default",
            flags: "(none)",
            config: config(true, false, default),
        },
        Configuration {
            name: "no-inject",
            flags: "--no-inject, or --protocols without http",
            config: config(false, false, default),
        },
        Configuration {
            name: "pid-filter",
            flags: "--pid / --exe",
            config: config(true, true, default),
        },
        Configuration {
            name: "capture-64",
            flags: "--capture-bytes 64 --sampler traceidratio --sample-ratio 0.5",
            config: ProbeConfig {
                inject_flags: InjectFlags {
                    threshold: 1 << 55,
                    parent_based: false,
                },
                ..config(true, false, 64)
            },
        },
        Configuration {
            name: "capture-8192",
            flags: "--capture-bytes 8192",
            config: config(true, false, max),
        },
        Configuration {
            name: "lean",
            flags: "--no-inject --pid P --capture-bytes 8192 --tls false",
            config: config(false, true, max),
        },
    ]
}

/// What the verifier reported for one program.
#[derive(Debug, Clone)]
pub struct Verified {
    pub program: String,
    /// Error and the last lines of the verifier's log when the kernel rejected it.
    pub rejected: Option<String>,
    /// Stack depth of each subprogram, in the verifier's order (the program first).
    pub frames: Vec<u32>,
    /// Deepest call chain, counted like the verifier does (each frame rounded up to 16 bytes).
    pub stack: u32,
    /// Instructions the verifier processed.
    pub insns: u32,
    /// Verification time the kernel reported.
    pub micros: u64,
}

impl Verified {
    /// Whether the program loaded and stays within both budgets.
    pub fn within_budget(&self) -> bool {
        self.rejected.is_none() && self.stack <= STACK_BUDGET && self.insns <= INSN_BUDGET
    }
}

/// Loads every program of the object built for `config` (without attaching any) and returns
/// what the verifier spent on each, sorted by name. Needs the same privileges as the agent.
pub fn verify_all(config: &ProbeConfig) -> Result<Vec<Verified>, ProbeError> {
    let object = object_for(config)?;
    let bytes = object
        .as_ref()
        .map_or(super::object::EBPF_OBJECT, |p| p.bytes());
    let mut obj = Object::parse(bytes).map_err(|e| ProbeError::Object(e.to_string()))?;
    let globals = loader_globals(config)?;
    obj.patch_map_data(
        globals
            .iter()
            .map(|(name, value)| (*name, (value.as_slice(), true)))
            .collect(),
    )
    .map_err(|e| ProbeError::Object(e.to_string()))?;

    let features = aya::features();
    let btf_fd = match features.btf() {
        Some(btf_features) => match obj.fixup_and_sanitize_btf(btf_features) {
            Ok(Some(btf)) => load_btf(&btf.to_bytes()).ok(),
            _ => None,
        },
        None => None,
    };

    let mut maps: Vec<(String, MapData, aya_obj::Map)> = Vec::new();
    let mut drained: Vec<(String, aya_obj::Map)> = obj.maps.drain().collect();
    drained.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, mut map) in drained {
        if name == "EVENTS" {
            map.set_max_entries(config.ringbuf_bytes);
        }
        let data = MapData::create(map.clone(), &name, btf_fd.as_ref().map(|f| f.as_fd()))
            .map_err(|e| ProbeError::Object(format!("creating map {name}: {e}")))?;
        let fd = data.fd().as_fd().as_raw_fd();
        if !map.data().is_empty() {
            update_first(fd, map.data())
                .map_err(|e| ProbeError::Object(format!("filling map {name}: {e}")))?;
        }
        if map.section_kind() == EbpfSectionKind::Rodata {
            // Frozen, the verifier treats read-only globals as constants and prunes what they
            // switch off, exactly as when aya loads them.
            bpf(bpf_cmd::BPF_MAP_FREEZE, &map_attr(fd))
                .map_err(|e| ProbeError::Object(format!("freezing map {name}: {e}")))?;
        }
        maps.push((name, data, map));
    }

    let text_sections: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
    obj.relocate_maps(
        maps.iter()
            .map(|(name, data, map)| (name.as_str(), data.fd().as_fd().as_raw_fd(), map)),
        &text_sections,
    )
    .map_err(|e| ProbeError::Object(e.to_string()))?;
    obj.relocate_calls(&text_sections)
        .map_err(|e| ProbeError::Object(e.to_string()))?;
    obj.sanitize_functions(features);

    let mut names: Vec<&String> = obj.programs.keys().collect();
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        if !config.inject && crate::capture::inject::PROGRAMS.contains(&name.as_str()) {
            continue;
        }
        let program = &obj.programs[name];
        let Some(function) = obj.functions.get(&program.function_key()) else {
            return Err(ProbeError::Object(format!("program {name} has no code")));
        };
        let prog_type = match program.section {
            ProgramSection::TracePoint => bpf_prog_type::BPF_PROG_TYPE_TRACEPOINT,
            ProgramSection::SkMsg => bpf_prog_type::BPF_PROG_TYPE_SK_MSG,
            ProgramSection::SockOps => bpf_prog_type::BPF_PROG_TYPE_SOCK_OPS,
            ProgramSection::UProbe { .. } | ProgramSection::URetProbe { .. } => {
                let go = crate::capture::tls::GO_RUNTIME_PROGRAMS.contains(&name.as_str());
                if !(if go { config.goroutines } else { config.tls }) {
                    continue;
                }
                bpf_prog_type::BPF_PROG_TYPE_KPROBE
            }
            ref other => {
                return Err(ProbeError::Object(format!(
                    "program {name}: section {other:?} is not measured"
                )));
            }
        };
        let load = LoadRequest {
            name,
            prog_type,
            insns: &function.instructions,
            license: &obj.license,
            btf_fd: btf_fd.as_ref().map(|f| f.as_raw_fd()),
            func_info: function.func_info.func_info_bytes(),
            func_info_rec_size: function.func_info_rec_size as u32,
            func_info_cnt: function.func_info.func_info.len() as u32,
            line_info: function.line_info.line_info_bytes(),
            line_info_rec_size: function.line_info_rec_size as u32,
            line_info_cnt: function.line_info.line_info.len() as u32,
        };
        out.push(load.verify());
    }
    Ok(out)
}

struct LoadRequest<'a> {
    name: &'a str,
    prog_type: bpf_prog_type,
    insns: &'a [bpf_insn],
    license: &'a std::ffi::CStr,
    btf_fd: Option<RawFd>,
    func_info: Vec<u8>,
    func_info_rec_size: u32,
    func_info_cnt: u32,
    line_info: Vec<u8>,
    line_info_rec_size: u32,
    line_info_cnt: u32,
}

/// `BPF_LOG_LEVEL` (every error, with the state that led to it) and `BPF_LOG_STATS`.
const LOG_LEVEL_ERRORS: u32 = 1;
const LOG_STATS: u32 = 4;

impl LoadRequest<'_> {
    fn verify(&self) -> Verified {
        let started = Instant::now();
        let (stats, result) = self.load(LOG_STATS);
        let mut verified = parse_stats(self.name, &stats, self.insns);
        if verified.micros == 0 {
            verified.micros = started.elapsed().as_micros() as u64;
        }
        if let Err(e) = result {
            // Again with the full log, whose end says why.
            let (log, _) = self.load(LOG_LEVEL_ERRORS | LOG_STATS);
            verified.rejected = Some(format!("{e}: {}", log_tail(&log, 6)));
        }
        verified
    }

    fn load(&self, log_level: u32) -> (String, std::io::Result<OwnedFd>) {
        let mut size = 1 << 16;
        loop {
            let mut log = vec![0u8; size];
            // SAFETY: an all-zero bpf_attr is valid; the union member set is the one
            // BPF_PROG_LOAD reads.
            let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
            let a = unsafe { &mut attr.__bindgen_anon_3 };
            a.prog_type = self.prog_type as u32;
            a.insn_cnt = self.insns.len() as u32;
            a.insns = self.insns.as_ptr() as u64;
            a.license = self.license.as_ptr() as u64;
            a.log_level = log_level;
            a.log_size = size as u32;
            a.log_buf = log.as_mut_ptr() as u64;
            let name = self.name.as_bytes();
            for (dst, src) in a.prog_name.iter_mut().zip(name.iter().take(15)) {
                *dst = *src as std::ffi::c_char;
            }
            if let Some(btf) = self.btf_fd {
                a.prog_btf_fd = btf as u32;
                if self.func_info_cnt > 0 {
                    a.func_info_rec_size = self.func_info_rec_size;
                    a.func_info = self.func_info.as_ptr() as u64;
                    a.func_info_cnt = self.func_info_cnt;
                }
                if self.line_info_cnt > 0 {
                    a.line_info_rec_size = self.line_info_rec_size;
                    a.line_info = self.line_info.as_ptr() as u64;
                    a.line_info_cnt = self.line_info_cnt;
                }
            }
            let result = bpf(bpf_cmd::BPF_PROG_LOAD, &attr);
            let text = || {
                let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
                String::from_utf8_lossy(&log[..end]).into_owned()
            };
            match result {
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && size < 1 << 26 => {
                    size *= 8;
                }
                // SAFETY: the kernel returned a new descriptor that nothing else owns.
                Ok(fd) => return (text(), Ok(unsafe { OwnedFd::from_raw_fd(fd) })),
                Err(e) => return (text(), Err(e)),
            }
        }
    }
}

/// Reads the statistics lines of a verifier log:
/// `verification time 303121 usec`, `stack depth 56+104+0+0+408`,
/// `processed 148593 insns (limit 1000000) ...`.
fn parse_stats(name: &str, log: &str, insns: &[bpf_insn]) -> Verified {
    let mut v = Verified {
        program: name.to_owned(),
        rejected: None,
        frames: Vec::new(),
        stack: 0,
        insns: 0,
        micros: 0,
    };
    for line in log.lines() {
        if let Some(rest) = line.strip_prefix("verification time ") {
            v.micros = rest
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("stack depth ") {
            v.frames = rest
                .trim()
                .split('+')
                .filter_map(|n| n.trim().parse().ok())
                .collect();
        } else if let Some(rest) = line.strip_prefix("processed ") {
            v.insns = rest
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
    }
    v.stack = deepest_chain(insns, &v.frames);
    v
}

/// The deepest stack over every chain of calls, as the verifier counts it
/// (`check_max_stack_depth`): the frames of a chain added up, each rounded up to 16 bytes.
/// Subprograms start at the targets of BPF-to-BPF calls and of callback references
/// (`bpf_loop`), in the order of their first instruction - the order of the log's frames.
pub fn deepest_chain(insns: &[bpf_insn], frames: &[u32]) -> u32 {
    const BPF_CALL: u8 = 0x85;
    const BPF_LD_IMM64: u8 = 0x18;
    const PSEUDO_CALL: u8 = 1;
    const PSEUDO_FUNC: u8 = 4;
    let target = |i: usize, imm: i32| (i as i64 + i64::from(imm) + 1) as usize;
    let mut starts: Vec<usize> = vec![0];
    let mut edges: Vec<(usize, usize)> = Vec::new();
    for (i, insn) in insns.iter().enumerate() {
        let callee = match (insn.code, insn.src_reg()) {
            (BPF_CALL, PSEUDO_CALL) | (BPF_LD_IMM64, PSEUDO_FUNC) => target(i, insn.imm),
            _ => continue,
        };
        starts.push(callee);
        edges.push((i, callee));
    }
    starts.sort_unstable();
    starts.dedup();
    let index = |at: usize| starts.partition_point(|s| *s <= at).saturating_sub(1);
    let mut callees: HashMap<usize, Vec<usize>> = HashMap::new();
    for (from, to) in edges {
        callees.entry(index(from)).or_default().push(index(to));
    }
    let frame = |i: usize| frames.get(i).map_or(0, |d| d.div_ceil(16) * 16);
    // Depth-first, bounded by the subprogram count (the verifier rejects recursion).
    fn walk(
        at: usize,
        depth: usize,
        callees: &HashMap<usize, Vec<usize>>,
        frame: &dyn Fn(usize) -> u32,
        limit: usize,
    ) -> u32 {
        let below = if depth >= limit {
            0
        } else {
            callees
                .get(&at)
                .map(|c| {
                    c.iter()
                        .map(|n| walk(*n, depth + 1, callees, frame, limit))
                        .max()
                        .unwrap_or(0)
                })
                .unwrap_or(0)
        };
        frame(at) + below
    }
    walk(0, 0, &callees, &frame, starts.len())
}

fn bpf(cmd: bpf_cmd, attr: &bpf_attr) -> std::io::Result<RawFd> {
    // SAFETY: `attr` is a valid bpf_attr for `cmd`; the kernel reads at most its size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *const bpf_attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc as RawFd)
}

fn map_attr(fd: RawFd) -> bpf_attr {
    // SAFETY: all-zero is valid; the map-element member starts with the map fd.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.__bindgen_anon_2.map_fd = fd as u32;
    attr
}

/// Writes a global data section's initial value (key 0).
fn update_first(fd: RawFd, value: &[u8]) -> std::io::Result<()> {
    let key = 0u32;
    let mut attr = map_attr(fd);
    // SAFETY: the map-element member; key and value outlive the call.
    unsafe {
        let a = &mut attr.__bindgen_anon_2;
        a.key = &key as *const u32 as u64;
        a.__bindgen_anon_1.value = value.as_ptr() as u64;
    }
    bpf(bpf_cmd::BPF_MAP_UPDATE_ELEM, &attr).map(|_| ())
}

fn load_btf(raw: &[u8]) -> std::io::Result<OwnedFd> {
    // SAFETY: all-zero is valid; the BTF member is set below.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    unsafe {
        let a = &mut attr.__bindgen_anon_7;
        a.btf = raw.as_ptr() as u64;
        a.btf_size = raw.len() as u32;
    }
    let fd = bpf(bpf_cmd::BPF_BTF_LOAD, &attr)?;
    // SAFETY: a new descriptor from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insn(code: u8, src: u8, imm: i32) -> bpf_insn {
        // SAFETY: all-zero is a valid instruction value.
        let mut i: bpf_insn = unsafe { std::mem::zeroed() };
        i.code = code;
        i.set_src_reg(src);
        i.imm = imm;
        i
    }

    #[test]
    fn stack_of_the_deepest_chain_not_the_sum() {
        // 0: call +2 (-> 3), 1: call +3 (-> 5), 2: exit, 3: mov, 4: exit, 5: ld_imm64 cb (-> 8)
        let mov = insn(0xb7, 0, 0);
        let exit = insn(0x95, 0, 0);
        let prog = vec![
            insn(0x85, 1, 2),
            insn(0x85, 1, 3),
            exit,
            mov,
            exit,
            insn(0x18, 4, 2),
            insn(0, 0, 0),
            exit,
            mov,
            exit,
        ];
        // Frames: main 56 -> 64, sub at 3: 408 -> 416, sub at 5: 104 -> 112, cb at 8: 8 -> 16.
        let frames = [56, 408, 104, 8];
        assert_eq!(deepest_chain(&prog, &frames), 64 + 416);
        let frames = [56, 8, 104, 300];
        assert_eq!(deepest_chain(&prog, &frames), 64 + 112 + 304);
    }

    #[test]
    fn reads_the_statistics_lines() {
        let log = "combined stack size of 3 calls is 592. Too large\nverification time 303121 usec\nstack depth 56+104+0+0+408\nprocessed 148593 insns (limit 1000000) max_states_per_insn 13 total_states 1717 peak_states 1130 mark_read 0\n";
        let v = parse_stats("p", log, &[]);
        assert_eq!(v.frames, vec![56, 104, 0, 0, 408]);
        assert_eq!(v.insns, 148_593);
        assert_eq!(v.micros, 303_121);
        assert_eq!(
            log_tail(log, 2),
            "stack depth 56+104+0+0+408 | processed 148593 insns (limit 1000000) max_states_per_insn 13 total_states 1717 peak_states 1130 mark_read 0"
        );
    }
}
