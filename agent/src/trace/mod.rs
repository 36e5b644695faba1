//! Spans and trace context: the span model (`span`, `ids`), the semantic conventions shared by
//! the protocols' span builders (`http`, `db`, `rpc`), W3C context parsing (`context`), kernel time
//! (`clock`), linking spans into traces (`link`), processes that trace themselves
//! (`instrumented`), and how whole the traces are (`completeness`).
pub mod clock;
pub mod completeness;
pub mod context;
pub mod db;
pub mod http;
pub mod ids;
pub mod instrumented;
pub mod link;
pub mod rpc;
pub mod span;
