//! Which processes are traced: `--pid` and `--exe` (with their children), or every process but
//! the agent. The kernel filters on the resulting pid set; children inherit it at fork.

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
    crate::resource::stat_field(&stat, 4).map(|p| p as u32)
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
