//! The embedded kernel object and the small loading helpers every program family shares.

use std::path::Path;

/// The kernel programs, built by `build.rs` and embedded in the binary.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/socktrace"));

/// Debug log of what the verifier spent on a program (its load time is the agent's start time).
pub fn log_verified(
    name: &str,
    info: Option<aya::programs::ProgramInfo>,
    started: std::time::Instant,
) {
    tracing::debug!(
        "loaded {name}: {} instructions verified in {:?}",
        info.and_then(|i| i.verified_instruction_count())
            .map_or_else(|| "?".to_owned(), |n| n.to_string()),
        started.elapsed()
    );
}

/// `mount -t FSTYPE FSTYPE TARGET` (pseudo file systems: the source is the type's name).
pub fn mount_fs(fstype: &str, target: &Path) -> std::io::Result<()> {
    let c = |s: &str| std::ffi::CString::new(s).map_err(std::io::Error::other);
    let (fstype, target) = (c(fstype)?, c(&target.to_string_lossy())?);
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The last `n` non-empty lines of a verifier log, joined with " | ".
pub fn log_tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}
