//! The pinned toolchain of the kernel programs (`ebpf/toolchain.toml`). Included as a module by
//! `agent/build.rs` (which builds with it) and by `xtask` (which installs it).

use std::{path::Path, process::Command};

/// The pinned versions.
pub struct Pinned {
    /// Dated nightly toolchain name, e.g. `nightly-2026-05-20`.
    pub nightly: String,
    /// bpf-linker version from crates.io.
    pub bpf_linker: String,
    /// LLVM major that bpf-linker is built against.
    pub llvm: String,
    /// Debian version of that LLVM's packages.
    pub llvm_debian: String,
}

impl Pinned {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// `key = "value"` lines; `#` comments and blank lines are skipped.
    pub fn parse(text: &str) -> Result<Self, String> {
        let get = |key: &str| -> Result<String, String> {
            text.lines()
                .map(str::trim)
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.split_once('='))
                .find(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().trim_matches('"').to_owned())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("no `{key}` set"))
        };
        Ok(Self {
            nightly: get("nightly")?,
            bpf_linker: get("bpf-linker")?,
            llvm: get("llvm")?,
            llvm_debian: get("llvm-debian")?,
        })
    }
}

/// Standard output of a command that ran and succeeded, trimmed.
fn stdout_of(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl Pinned {
    /// Whether rustup has the pinned nightly.
    pub fn nightly_installed(&self) -> bool {
        stdout_of(Command::new("rustup").args(["run", &self.nightly, "rustc", "-V"])).is_some()
    }
}

/// The version a bpf-linker binary reports (`bpf-linker 0.13.0` -> `0.13.0`), if it runs.
pub fn linker_version(linker: &Path) -> Option<String> {
    stdout_of(Command::new(linker).arg("--version"))
        .and_then(|v| v.split_whitespace().last().map(str::to_owned))
}

/// The version of an installed Debian package (`None` when it is not installed).
pub fn debian_version(package: &str) -> Option<String> {
    stdout_of(Command::new("dpkg-query").args(["-W", "-f=${Status} ${Version}", package])).and_then(
        |s| {
            s.strip_prefix("install ok installed ")
                .map(|v| v.trim().to_owned())
        },
    )
}
