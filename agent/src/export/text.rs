//! Text that leaves the agent for a terminal or a collector.

/// Escapes control characters (and only those), so the text stays on one line and cannot drive
/// the terminal.
pub(crate) fn sanitize(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}
