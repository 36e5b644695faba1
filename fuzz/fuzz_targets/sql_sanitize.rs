//! `sanitize` and `operation_and_collection` on arbitrary UTF-8.
//!
//! Besides "no panic, no hang": the output is never longer than the input, sanitising is
//! idempotent, no single quote survives outside a double-quoted identifier (string literals
//! are gone whatever their kind), and the operation is an upper-case keyword.

#![no_main]

use libfuzzer_sys::fuzz_target;
use socktrace::protocol::postgres::{operation_and_collection, sanitize};

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let out = sanitize(sql);
    assert!(out.len() <= sql.len(), "{sql:?} -> {out:?}");
    assert_eq!(sanitize(&out), out, "not idempotent on {sql:?}");
    let mut in_ident = false;
    for c in out.chars() {
        match c {
            '"' => in_ident = !in_ident,
            '\'' => assert!(in_ident, "quote outside an identifier: {sql:?} -> {out:?}"),
            _ => {}
        }
    }
    for s in [sql, out.as_str()] {
        let (op, _table) = operation_and_collection(s);
        if let Some(op) = op {
            assert!(
                !op.is_empty() && !op.bytes().any(|b| b.is_ascii_lowercase()),
                "{s:?} -> {op:?}"
            );
        }
    }
});
