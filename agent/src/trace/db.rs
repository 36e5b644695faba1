//! What database spans of every protocol share.

use super::{
    http::ip_string,
    span::{ConnMeta, KeyValue, SpanKind},
};

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

/// The address attributes of a database span: `server.address`/`server.port` (the peer for a
/// client, this side for the server) and `network.peer.address`/`network.peer.port`.
pub fn push_addresses(conn: &ConnMeta, attrs: &mut Vec<KeyValue>) {
    let server = match conn.kind {
        SpanKind::Client => conn.peer,
        SpanKind::Server => conn.local,
    };
    attrs.push(KeyValue::new("server.address", ip_string(&server)));
    attrs.push(KeyValue::new("server.port", i64::from(server.port())));
    attrs.push(KeyValue::new("network.peer.address", ip_string(&conn.peer)));
    attrs.push(KeyValue::new(
        "network.peer.port",
        i64::from(conn.peer.port()),
    ));
}
