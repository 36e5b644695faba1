//! What database spans of every protocol share.

/// What `db.query.text` carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum QueryText {
    /// Every literal replaced by `?` (placeholders like `$1` kept).
    #[default]
    Sanitized,
    /// The statement as sent. Literal values - possibly secrets - leave the host.
    Raw,
    /// No `db.query.text`.
    Off,
}

#[derive(Clone, Debug, Default)]
pub struct DbSpanConfig {
    pub query_text: QueryText,
}
