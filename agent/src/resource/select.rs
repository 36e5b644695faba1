//! Which processes are traced: `--pid` and `--exe` (with their children), or every process but
//! the agent. The kernel filters on the resulting pid set; children inherit it at fork.
//! `--k8s-namespace`, `--container` and `--service-name` ([`ResourceFilter`]) are applied later,
//! in user space, to the resolved resource of each span's process.

use std::collections::{HashMap, HashSet};

#[derive(Clone, Debug, Default)]
pub struct Selector {
    pids: Vec<u32>,
    exes: Vec<String>,
}

fn exe_name(pid: u32) -> Option<String> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let name = exe.file_name()?.to_string_lossy();
    Some(name.trim_end_matches(" (deleted)").to_owned())
}

fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_owned())
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 4: ppid.
    super::stat::stat_field(&stat, 4).map(|p| p as u32)
}

impl Selector {
    pub fn new(pids: Vec<u32>, exes: Vec<String>) -> Self {
        Self { pids, exes }
    }

    /// True when only selected processes are traced.
    pub fn is_filtering(&self) -> bool {
        !self.pids.is_empty() || !self.exes.is_empty()
    }

    /// Whether `pid` runs one of the `--exe` programs (executable file name, or the task name for
    /// programs whose file name differs, e.g. interpreters started through a link).
    pub fn matches_exe(&self, pid: u32) -> bool {
        if self.exes.is_empty() {
            return false;
        }
        let names = [exe_name(pid), comm(pid)];
        names
            .iter()
            .flatten()
            .any(|n| self.exes.iter().any(|e| e == n))
    }

    /// Processes to trace now: the selected ones and all their descendants.
    pub fn initial_pids(&self) -> Vec<u32> {
        let pids = all_pids();
        let mut selected: HashSet<u32> = self.pids.iter().copied().collect();
        selected.extend(pids.iter().copied().filter(|p| self.matches_exe(*p)));
        let parents: HashMap<u32, u32> = pids
            .iter()
            .filter_map(|p| Some((*p, parent_of(*p)?)))
            .collect();
        let mut out: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|p| {
                let mut cur = *p;
                for _ in 0..64 {
                    if selected.contains(&cur) {
                        return true;
                    }
                    match parents.get(&cur) {
                        Some(pp) if *pp != 0 && *pp != cur => cur = *pp,
                        _ => return false,
                    }
                }
                false
            })
            .collect();
        // A --pid that does not exist (yet) is still armed in the kernel.
        for p in &self.pids {
            if !out.contains(p) {
                out.push(*p);
            }
        }
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selects_children_of_a_pid() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = std::process::id();
        let sel = Selector::new(vec![me], vec![]);
        let pids = sel.initial_pids();
        assert!(pids.contains(&me));
        assert!(
            pids.contains(&child.id()),
            "child {} not in {pids:?}",
            child.id()
        );
        let by_exe = Selector::new(vec![], vec!["sleep".into()]);
        assert!(by_exe.matches_exe(child.id()));
        assert!(!by_exe.matches_exe(me));
        child.kill().unwrap();
        let _ = child.wait();
    }
}

/// A shell-style pattern: `*` matches any run of characters, `?` one character, anything else
/// itself. Used by the user-space selectors (`--k8s-namespace`, `--container`,
/// `--service-name`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob(Vec<char>);

impl Glob {
    pub fn new(pattern: &str) -> Self {
        Self(pattern.chars().collect())
    }

    fn is_literal(&self) -> bool {
        !self.0.iter().any(|c| matches!(c, '*' | '?'))
    }

    pub fn matches(&self, text: &str) -> bool {
        let p = &self.0;
        let t: Vec<char> = text.chars().collect();
        let (mut pi, mut ti) = (0, 0);
        // Position after the last `*` and the text position it was tried at, to backtrack.
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            match p.get(pi) {
                Some('*') => {
                    star = Some((pi + 1, ti));
                    pi += 1;
                }
                Some(c) if *c == '?' || *c == t[ti] => {
                    pi += 1;
                    ti += 1;
                }
                _ => match star {
                    Some((sp, st)) => {
                        pi = sp;
                        ti = st + 1;
                        star = Some((sp, st + 1));
                    }
                    None => return false,
                },
            }
        }
        p[pi..].iter().all(|c| *c == '*')
    }
}

/// Selection on the resolved resource of a process, applied in user space to every span
/// (unlike `--pid`/`--exe`, which the kernel applies before capture). A process must match
/// every selector given; within one selector, any pattern.
#[derive(Clone, Debug, Default)]
pub struct ResourceFilter {
    /// `--k8s-namespace`: the pod's namespace.
    pub namespaces: Vec<Glob>,
    /// `--container`: the container name (Kubernetes), or the container id (a plain pattern is
    /// also a prefix of the id).
    pub containers: Vec<Glob>,
    /// `--service-name`: the resolved `service.name`.
    pub service_names: Vec<Glob>,
}

/// What [`ResourceFilter`] looks at.
#[derive(Clone, Copy, Debug, Default)]
pub struct ResourceFacts<'a> {
    pub service_name: &'a str,
    pub namespace: Option<&'a str>,
    pub container_name: Option<&'a str>,
    pub container_id: Option<&'a str>,
}

impl ResourceFilter {
    pub fn new(namespaces: &[String], containers: &[String], service_names: &[String]) -> Self {
        let globs = |v: &[String]| v.iter().map(|p| Glob::new(p)).collect();
        Self {
            namespaces: globs(namespaces),
            containers: globs(containers),
            service_names: globs(service_names),
        }
    }

    pub fn is_active(&self) -> bool {
        !self.namespaces.is_empty() || !self.containers.is_empty() || !self.service_names.is_empty()
    }

    pub fn matches(&self, f: &ResourceFacts<'_>) -> bool {
        let any = |globs: &[Glob], value: Option<&str>| {
            globs.is_empty() || value.is_some_and(|v| globs.iter().any(|g| g.matches(v)))
        };
        let container = self.containers.is_empty()
            || self.containers.iter().any(|g| {
                f.container_name.is_some_and(|n| g.matches(n))
                    || f.container_id.is_some_and(|id| {
                        g.matches(id)
                            || (g.is_literal()
                                && !g.0.is_empty()
                                && id.starts_with(&g.0.iter().collect::<String>()))
                    })
            });
        any(&self.namespaces, f.namespace)
            && any(&self.service_names, Some(f.service_name))
            && container
    }
}

#[cfg(test)]
mod filter_tests {
    use super::*;

    #[test]
    fn globs() {
        for (p, t, want) in [
            ("*", "", true),
            ("*", "anything", true),
            ("shop", "shop", true),
            ("shop", "shop2", false),
            ("shop-*", "shop-prod", true),
            ("shop-*", "shop", false),
            ("*-prod", "shop-prod", true),
            ("s?op", "shop", true),
            ("s?op", "sop", false),
            ("a*b*c", "a-x-b-y-c", true),
            ("a*b*c", "a-x-c-y-b", false),
            ("*a*a*", "banana", true),
            ("", "", true),
            ("", "x", false),
            ("kube-*", "default", false),
        ] {
            assert_eq!(Glob::new(p).matches(t), want, "{p:?} vs {t:?}");
        }
    }

    #[test]
    fn every_given_selector_must_match() {
        let facts = ResourceFacts {
            service_name: "checkout",
            namespace: Some("shop"),
            container_name: Some("app"),
            container_id: Some("3f0c8ff6b5d4"),
        };
        assert!(ResourceFilter::default().matches(&facts));
        let f = |ns: &[&str], c: &[&str], s: &[&str]| {
            let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
            ResourceFilter::new(&v(ns), &v(c), &v(s))
        };
        assert!(f(&["shop"], &[], &[]).matches(&facts));
        assert!(f(&["kube-*", "sh*"], &[], &[]).matches(&facts));
        assert!(!f(&["kube-*"], &[], &[]).matches(&facts));
        assert!(f(&[], &["app"], &[]).matches(&facts));
        assert!(f(&[], &["3f0c8f"], &[]).matches(&facts), "id prefix");
        assert!(f(&[], &["3f0c*"], &[]).matches(&facts));
        assert!(!f(&[], &["c8ff6"], &[]).matches(&facts), "not a prefix");
        assert!(f(&[], &[], &["check*"]).matches(&facts));
        assert!(!f(&[], &[], &["cart"]).matches(&facts));
        assert!(f(&["shop"], &["app"], &["checkout"]).matches(&facts));
        assert!(!f(&["shop"], &["app"], &["cart"]).matches(&facts));
        // A process outside any pod matches no namespace and no container name.
        let host = ResourceFacts {
            service_name: "nginx",
            ..ResourceFacts::default()
        };
        assert!(!f(&["*"], &[], &[]).matches(&host));
        assert!(!f(&[], &["*"], &[]).matches(&host));
        assert!(f(&[], &[], &["nginx"]).matches(&host));
        assert!(!f(&[], &[], &[]).is_active());
    }
}
