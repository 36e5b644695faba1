//! Fields of `/proc/PID/stat`.

/// Field `n` (1-based, as in proc(5)) of `/proc/PID/stat`, for fields after the `comm` field,
/// which may itself contain spaces and parentheses.
pub fn stat_field(stat: &str, n: usize) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    after
        .split_whitespace()
        .nth(n.checked_sub(3)?)?
        .parse()
        .ok()
}
