//! The agent's memory: the binary uses mimalloc as its global allocator (spans are built on the
//! capture thread and freed on the exporter's, a pattern its per-thread free lists serve for
//! less CPU than glibc's: about a tenth of the agent's CPU per request on nginx under wrk,
//! measured side by side, see docs/benchmarks.md). Its defaults favour speed over resident
//! memory; these calls keep the agent's footprint where glibc's was.

use libmimalloc_sys::{mi_collect, mi_option_set, mi_option_t};

/// `mi_option_purge_delay` (mimalloc 3's `mimalloc.h`; the Rust bindings do not name it): how
/// long freed pages stay committed before they are returned to the system.
const PURGE_DELAY: mi_option_t = 15;

/// Freed pages go back to the system after 100 ms instead of a second (arenas: ten times
/// that): the resident memory follows the load down, for about 2% more CPU under load.
pub fn tune_allocator() {
    // SAFETY: sets a process-wide option; mimalloc reads it at each purge.
    unsafe { mi_option_set(PURGE_DELAY, 100) };
}

/// Returns freed memory to the system now (after start-up, which parses the kernel object and
/// binaries' symbols and frees most of what it allocated).
pub fn release_freed() {
    // SAFETY: no arguments to check; callable from any thread at any time.
    unsafe { mi_collect(true) };
}

#[cfg(test)]
mod tests {
    use libmimalloc_sys::mi_option_get;

    use super::*;

    /// The purge delay in effect (ms).
    fn purge_delay_ms() -> std::ffi::c_long {
        // SAFETY: reads a process-wide option.
        unsafe { mi_option_get(PURGE_DELAY) }
    }

    /// mimalloc's default purge delay (ms), by which the option is recognised.
    const DEFAULT_PURGE_DELAY_MS: std::ffi::c_long = 1000;

    #[test]
    fn the_option_set_is_the_purge_delay() {
        // The index is not in the bindings: make sure it still names the purge delay (whose
        // default no other option has) before changing it.
        assert_eq!(purge_delay_ms(), DEFAULT_PURGE_DELAY_MS);
        tune_allocator();
        assert_eq!(purge_delay_ms(), 100);
        release_freed();
    }
}
