//! The RPC semantic conventions: attribute names of gRPC spans (and of the RPC metrics, which
//! copy them from the spans), in their stable form and, on request, the older one too.
//!
//! The RPC conventions were renamed on their way to stability (semantic conventions 1.39 to
//! 1.45): `rpc.system` became `rpc.system.name`; `rpc.service` was folded into a fully
//! qualified `rpc.method` (`package.Service/Method`); the integer `rpc.grpc.status_code`
//! became the string `rpc.status_code` (the status name, `OK`, `NOT_FOUND`); the duration
//! metrics became `rpc.{server,client}.call.duration` in seconds. socktrace emits the stable
//! names. `OTEL_SEMCONV_STABILITY_OPT_IN=rpc/dup` adds the older ones (those of semantic
//! conventions 1.37, which socktrace emitted before) for dashboards still reading them; both
//! sets share `rpc.method`, which then holds the stable, fully qualified value.
//!
//! The specification's migration plan has instrumentations that already emitted the old names
//! keep them by default until their next major version; socktrace switched at once (with
//! `rpc/dup` as the way back), and `rpc` (stable only) is the default.

/// `rpc.system.name`: the RPC system (`grpc`).
pub const SYSTEM_NAME: &str = "rpc.system.name";
/// `rpc.method`: fully qualified, `package.Service/Method`, or `_OTHER`.
pub const METHOD: &str = "rpc.method";
/// `rpc.method_original`: the method the client asked for, when `rpc.method` is `_OTHER`.
pub const METHOD_ORIGINAL: &str = "rpc.method_original";
/// `rpc.status_code`: the status name, a string.
pub const STATUS_CODE: &str = "rpc.status_code";

/// The names of semantic conventions 1.37 (deprecated since), emitted with `rpc/dup` only.
pub mod old {
    /// `rpc.system` (now `rpc.system.name`).
    pub const SYSTEM: &str = "rpc.system";
    /// `rpc.service` (now the first part of `rpc.method`).
    pub const SERVICE: &str = "rpc.service";
    /// `rpc.grpc.status_code`: the numeric gRPC status (now `rpc.status_code`, a name).
    pub const GRPC_STATUS_CODE: &str = "rpc.grpc.status_code";
}

/// Which RPC conventions spans and metrics follow (`OTEL_SEMCONV_STABILITY_OPT_IN`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RpcConventions {
    /// The stable names only (also what `rpc` asks for).
    #[default]
    Stable,
    /// The stable names and the older ones (`rpc/dup`).
    Dup,
}

impl RpcConventions {
    /// From the value of `OTEL_SEMCONV_STABILITY_OPT_IN`: a comma-separated list of
    /// categories, of which `rpc/dup` asks for both sets of names (and wins over `rpc`, as the
    /// specification says). Other categories (`http`, `database`) concern conventions socktrace
    /// emits in their stable form only.
    pub fn from_opt_in(value: Option<&str>) -> Self {
        let dup = value.is_some_and(|v| v.split(',').any(|c| c.trim() == "rpc/dup"));
        if dup { Self::Dup } else { Self::Stable }
    }

    /// Whether the names of semantic conventions 1.37 are emitted too.
    pub fn old(self) -> bool {
        self == Self::Dup
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opt_in_values() {
        let of = RpcConventions::from_opt_in;
        assert_eq!(of(None), RpcConventions::Stable);
        assert_eq!(of(Some("")), RpcConventions::Stable);
        assert_eq!(of(Some("rpc")), RpcConventions::Stable);
        assert_eq!(of(Some("http/dup,database")), RpcConventions::Stable);
        assert_eq!(of(Some("rpc/dup")), RpcConventions::Dup);
        assert_eq!(of(Some("http, rpc/dup ,database")), RpcConventions::Dup);
        // `rpc/dup` wins over `rpc`.
        assert_eq!(of(Some("rpc,rpc/dup")), RpcConventions::Dup);
        // Only the exact category counts.
        assert_eq!(of(Some("grpc/dup")), RpcConventions::Stable);
        assert!(of(Some("rpc/dup")).old());
        assert!(!of(Some("rpc")).old());
    }
}
