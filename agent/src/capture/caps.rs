//! Which capability each feature needs, checked once at start so that a missing one is named
//! before anything fails obscurely (a container granted too little, a host with tracefs
//! unmounted).
//!
//! | feature | needs |
//! | --- | --- |
//! | load tracepoint programs, ring buffer, read kernel memory in probes | `CAP_BPF` + `CAP_PERFMON` (or `CAP_SYS_ADMIN`) |
//! | mount tracefs when the host has not | `CAP_SYS_ADMIN` |
//! | read tracefs (root-only) as another user than uid 0 | `CAP_DAC_READ_SEARCH` |
//! | `/proc/PID/environ`, `exe`, `fd` of processes of other users (service name from the environment, executable path, connections open before start) | `CAP_SYS_PTRACE` + `CAP_DAC_READ_SEARCH` |
//! | `traceparent` injection into outgoing HTTP/1 requests (`sock_ops` + `sk_msg` programs) | `CAP_NET_ADMIN` (or `CAP_SYS_ADMIN`) |

/// A capability number, as in `<linux/capability.h>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap(pub u32);

impl Cap {
    pub const DAC_OVERRIDE: Cap = Cap(1);
    pub const DAC_READ_SEARCH: Cap = Cap(2);
    pub const NET_ADMIN: Cap = Cap(12);
    pub const SYS_PTRACE: Cap = Cap(19);
    pub const SYS_ADMIN: Cap = Cap(21);
    pub const PERFMON: Cap = Cap(38);
    pub const BPF: Cap = Cap(39);

    pub fn name(self) -> &'static str {
        match self.0 {
            1 => "CAP_DAC_OVERRIDE",
            2 => "CAP_DAC_READ_SEARCH",
            12 => "CAP_NET_ADMIN",
            19 => "CAP_SYS_PTRACE",
            21 => "CAP_SYS_ADMIN",
            38 => "CAP_PERFMON",
            39 => "CAP_BPF",
            _ => "an unnamed capability",
        }
    }
}

/// A capability set (the `CapEff:` mask of `/proc/PID/status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapSet(pub u64);

impl CapSet {
    /// The effective set of this process; empty if `/proc/self/status` cannot be read.
    pub fn effective() -> Self {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        Self::from_status(&status)
    }

    /// Parses the `CapEff:` line of a `/proc/PID/status` text.
    pub fn from_status(status: &str) -> Self {
        Self(
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .unwrap_or(0),
        )
    }

    pub fn of(caps: &[Cap]) -> Self {
        Self(caps.iter().fold(0, |m, c| m | (1 << c.0)))
    }

    pub fn has(self, cap: Cap) -> bool {
        cap.0 < 64 && self.0 & (1 << cap.0) != 0
    }
}

/// What the check found: a reason the agent cannot start, and features that will be degraded.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CapReport {
    /// One line naming what is missing for loading and attaching the probes.
    pub fatal: Option<String>,
    /// One line per degraded feature, naming the capability that would restore it.
    pub warnings: Vec<String>,
}

/// Where tracefs stands before the probes need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tracefs {
    /// Mounted, and its `events` directory is readable.
    Ready,
    /// Mounted (at this path) but this process may not read it: tracefs is root-only (0700).
    Unreadable(String),
    /// Not mounted: the agent has to mount it, which needs `CAP_SYS_ADMIN`.
    NotMounted,
}

/// Checks `caps` against what the agent needs, given the state of tracefs.
pub fn check(caps: CapSet, tracefs: &Tracefs) -> CapReport {
    let mut report = CapReport::default();
    let admin = caps.has(Cap::SYS_ADMIN);
    if !admin {
        let missing: Vec<&str> = [Cap::BPF, Cap::PERFMON]
            .into_iter()
            .filter(|c| !caps.has(*c))
            .map(Cap::name)
            .collect();
        if !missing.is_empty() {
            report.fatal = Some(format!(
                "missing {}: socktrace loads eBPF programs and must run as root (or with CAP_BPF and CAP_PERFMON)",
                missing.join(" and ")
            ));
            return report;
        }
        if *tracefs == Tracefs::NotMounted {
            report.fatal = Some(
                "tracefs is not mounted at /sys/kernel/tracing and mounting it needs CAP_SYS_ADMIN: \
                 mount it on the host (in a container, mount the host's /sys/kernel/tracing there) \
                 or grant CAP_SYS_ADMIN"
                    .to_owned(),
            );
            return report;
        }
    }
    if let Tracefs::Unreadable(path) = tracefs {
        report.fatal = Some(format!(
            "tracefs at {path} is not readable by this user: run as uid 0 or grant CAP_DAC_READ_SEARCH"
        ));
        return report;
    }
    let mut proc_missing = Vec::new();
    if !caps.has(Cap::SYS_PTRACE) {
        proc_missing.push(Cap::SYS_PTRACE.name());
    }
    if !caps.has(Cap::DAC_READ_SEARCH) && !caps.has(Cap::DAC_OVERRIDE) {
        proc_missing.push(Cap::DAC_READ_SEARCH.name());
    }
    if !proc_missing.is_empty() {
        report.warnings.push(format!(
            "missing {}: /proc/PID/environ, exe and fd of other users' processes cannot be read, so their \
             spans may lack service.name from OTEL_SERVICE_NAME, process.executable.path, and \
             connections opened before the agent started",
            proc_missing.join(" and ")
        ));
    }
    report
}

/// What `traceparent` injection lacks, as one warning line; `None` when it can be attached.
/// The kernel loads and attaches `sock_ops` and `sk_msg` programs only for `CAP_NET_ADMIN`
/// (or `CAP_SYS_ADMIN`).
pub fn inject_missing(caps: CapSet) -> Option<String> {
    if caps.has(Cap::NET_ADMIN) || caps.has(Cap::SYS_ADMIN) {
        return None;
    }
    Some(
        "missing CAP_NET_ADMIN: traceparent headers are not injected into outgoing HTTP/1 \
         requests (the kernel requires it for sock_ops and sk_msg programs); grant it, or pass \
         --no-inject"
            .to_owned(),
    )
}

/// The state of tracefs where the probes look for it (`/sys/kernel/tracing`, else debugfs's
/// `/sys/kernel/debug/tracing`), telling "not mounted" from "not readable" through
/// `/proc/self/mounts`.
pub fn tracefs_state() -> Tracefs {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    tracefs_state_from(&mounts, |p| std::fs::metadata(p).map(|_| ()))
}

fn tracefs_state_from(mounts: &str, stat: impl Fn(&str) -> std::io::Result<()>) -> Tracefs {
    let mounted_at = |dir: &str, fstype: &str| {
        mounts.lines().any(|l| {
            let mut f = l.split(' ');
            let (_, point, t) = (f.next(), f.next(), f.next());
            point == Some(dir) && t == Some(fstype)
        })
    };
    let mut unreadable = None;
    for (dir, mounted) in [
        (
            "/sys/kernel/tracing",
            mounted_at("/sys/kernel/tracing", "tracefs"),
        ),
        (
            "/sys/kernel/debug/tracing",
            mounted_at("/sys/kernel/debug/tracing", "tracefs")
                || mounted_at("/sys/kernel/debug", "debugfs"),
        ),
    ] {
        match stat(&format!("{dir}/events")) {
            Ok(()) => return Tracefs::Ready,
            Err(e) if mounted && e.kind() == std::io::ErrorKind::PermissionDenied => {
                unreadable.get_or_insert_with(|| dir.to_owned());
            }
            Err(_) => {}
        }
    }
    unreadable.map_or(Tracefs::NotMounted, Tracefs::Unreadable)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: CapSet = CapSet(0x0000_01ff_ffff_ffff);
    /// What the DaemonSet grants: drop ALL, add these.
    fn daemonset() -> CapSet {
        CapSet::of(&[
            Cap::BPF,
            Cap::PERFMON,
            Cap::SYS_PTRACE,
            Cap::DAC_READ_SEARCH,
            Cap::NET_ADMIN,
        ])
    }

    #[test]
    fn status_mask_is_parsed() {
        let status = "Name:\tcat\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\n";
        assert_eq!(CapSet::from_status(status), ROOT);
        assert!(CapSet::from_status(status).has(Cap::BPF));
        assert_eq!(CapSet::from_status("garbage"), CapSet(0));
        assert!(!CapSet(u64::MAX).has(Cap(64)));
    }

    #[test]
    fn root_needs_nothing_more() {
        assert_eq!(check(ROOT, &Tracefs::NotMounted), CapReport::default());
        assert_eq!(check(ROOT, &Tracefs::Ready), CapReport::default());
    }

    #[test]
    fn daemonset_set_is_enough_when_tracefs_is_mounted() {
        assert_eq!(check(daemonset(), &Tracefs::Ready), CapReport::default());
    }

    #[test]
    fn no_bpf_is_fatal_and_names_every_missing_capability() {
        let r = check(CapSet(0), &Tracefs::Ready);
        assert_eq!(
            r.fatal.as_deref(),
            Some(
                "missing CAP_BPF and CAP_PERFMON: socktrace loads eBPF programs and must run as root (or with CAP_BPF and CAP_PERFMON)"
            )
        );
        assert!(r.warnings.is_empty(), "fatal comes alone: {r:?}");
        let r = check(CapSet::of(&[Cap::BPF, Cap::SYS_PTRACE]), &Tracefs::Ready);
        assert!(r.fatal.unwrap().starts_with("missing CAP_PERFMON:"));
        let r = check(CapSet::of(&[Cap::PERFMON]), &Tracefs::Ready);
        assert!(r.fatal.unwrap().starts_with("missing CAP_BPF:"));
    }

    #[test]
    fn sys_admin_alone_can_load_and_mount() {
        let r = check(CapSet::of(&[Cap::SYS_ADMIN]), &Tracefs::NotMounted);
        assert_eq!(r.fatal, None);
        assert_eq!(r.warnings.len(), 1);
    }

    #[test]
    fn unmounted_tracefs_without_sys_admin_says_how_to_fix_it() {
        let r = check(daemonset(), &Tracefs::NotMounted);
        let fatal = r.fatal.expect("cannot attach without tracefs");
        assert!(fatal.contains("CAP_SYS_ADMIN"), "{fatal}");
        assert!(fatal.contains("/sys/kernel/tracing"), "{fatal}");
    }

    #[test]
    fn unreadable_tracefs_names_the_user_problem_not_the_mount() {
        let r = check(
            CapSet::of(&[Cap::BPF, Cap::PERFMON]),
            &Tracefs::Unreadable("/sys/kernel/tracing".into()),
        );
        assert_eq!(
            r.fatal.as_deref(),
            Some(
                "tracefs at /sys/kernel/tracing is not readable by this user: run as uid 0 or grant CAP_DAC_READ_SEARCH"
            )
        );
    }

    #[test]
    fn tracefs_state_tells_unmounted_from_unreadable() {
        use std::io::{Error, ErrorKind};
        let denied = |_: &str| Err(Error::from(ErrorKind::PermissionDenied));
        let missing = |_: &str| Err(Error::from(ErrorKind::NotFound));
        let tracefs = "tracefs /sys/kernel/tracing tracefs rw,nosuid,nodev,noexec,relatime 0 0\n";
        let debugfs = "debugfs /sys/kernel/debug debugfs rw,nosuid,nodev,noexec,relatime 0 0\n";
        let sysfs = "sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0\n";
        assert_eq!(tracefs_state_from(tracefs, |_| Ok(())), Tracefs::Ready);
        assert_eq!(
            tracefs_state_from(tracefs, denied),
            Tracefs::Unreadable("/sys/kernel/tracing".into())
        );
        assert_eq!(
            tracefs_state_from(debugfs, denied),
            Tracefs::Unreadable("/sys/kernel/debug/tracing".into())
        );
        // /sys/kernel/debug itself is root-only: denied without a mount means nothing.
        assert_eq!(tracefs_state_from(sysfs, denied), Tracefs::NotMounted);
        assert_eq!(tracefs_state_from(sysfs, missing), Tracefs::NotMounted);
        // Readable at the debugfs path only (older hosts).
        assert_eq!(
            tracefs_state_from(debugfs, |p: &str| if p.starts_with("/sys/kernel/debug") {
                Ok(())
            } else {
                Err(Error::from(ErrorKind::NotFound))
            }),
            Tracefs::Ready
        );
    }

    #[test]
    fn injection_names_net_admin() {
        assert_eq!(inject_missing(ROOT), None);
        assert_eq!(inject_missing(CapSet::of(&[Cap::NET_ADMIN])), None);
        assert_eq!(inject_missing(CapSet::of(&[Cap::SYS_ADMIN])), None);
        assert_eq!(inject_missing(daemonset()), None);
        let without = CapSet::of(&[Cap::BPF, Cap::PERFMON, Cap::SYS_PTRACE]);
        let w = inject_missing(without).expect("no CAP_NET_ADMIN in the set");
        assert!(w.starts_with("missing CAP_NET_ADMIN: traceparent"), "{w}");
    }

    #[test]
    fn proc_access_gaps_are_warnings_naming_the_capability() {
        let bpf = [Cap::BPF, Cap::PERFMON];
        let r = check(CapSet::of(&bpf), &Tracefs::Ready);
        assert_eq!(r.fatal, None);
        assert_eq!(r.warnings.len(), 1);
        assert!(
            r.warnings[0].starts_with("missing CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH:"),
            "{r:?}"
        );
        let r = check(
            CapSet::of(&[Cap::BPF, Cap::PERFMON, Cap::DAC_READ_SEARCH]),
            &Tracefs::Ready,
        );
        assert!(
            r.warnings[0].starts_with("missing CAP_SYS_PTRACE:"),
            "{r:?}"
        );
        let r = check(
            CapSet::of(&[Cap::BPF, Cap::PERFMON, Cap::SYS_PTRACE]),
            &Tracefs::Ready,
        );
        assert!(
            r.warnings[0].starts_with("missing CAP_DAC_READ_SEARCH:"),
            "{r:?}"
        );
        // CAP_DAC_OVERRIDE also lets root read other users' files.
        let r = check(
            CapSet::of(&[Cap::BPF, Cap::PERFMON, Cap::SYS_PTRACE, Cap::DAC_OVERRIDE]),
            &Tracefs::Ready,
        );
        assert!(r.warnings.is_empty(), "{r:?}");
    }
}
