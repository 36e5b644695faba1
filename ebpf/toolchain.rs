//! The pinned toolchain of the kernel programs (`ebpf/toolchain.toml`). Included as a module by
//! `agent/build.rs` (which builds with it) and by `xtask` (which installs it).

use std::path::Path;

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
