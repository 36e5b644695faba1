//! Command line. Exporter flags fall back to the standard `OTEL_*` variables (resolved in
//! `export::resolve_config`, which knows the spec's precedence rules).

use clap::{Parser, ValueEnum};

/// Application protocols socktrace can parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProtocolName {
    /// HTTP/1.0 and HTTP/1.1.
    Http,
    /// PostgreSQL frontend/backend protocol v3.
    #[value(alias = "postgresql")]
    Postgres,
}

/// What `db.query.text` carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum QueryTextMode {
    /// Literals replaced by `?`; placeholders like `$1` kept.
    Sanitized,
    /// As sent: literal values (possibly secrets) leave the host.
    Raw,
    /// No query text.
    Off,
}

/// How `http.route` is derived.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RouteMode {
    /// Numeric, UUID, long-hex and token-like path segments become `{id}`, `{uuid}`, `{hex}`,
    /// `{token}`.
    Heuristic,
    /// No `http.route`; server spans are named `{METHOD}`.
    Off,
}

fn parse_ringbuf_size(s: &str) -> Result<u32, String> {
    let v: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if v < 65536 || !v.is_power_of_two() {
        return Err("must be a power of two of at least 65536 bytes".into());
    }
    Ok(v)
}

#[derive(Debug, Parser)]
#[command(
    name = "socktrace",
    version,
    about = "Zero-code distributed tracing: eBPF socket capture to OpenTelemetry spans",
    long_about = "Zero-code distributed tracing for Linux. Captures TCP traffic of unmodified \
                  programs at the socket layer with eBPF tracepoints (no kprobes needed), parses \
                  HTTP/1.x and PostgreSQL, and exports OpenTelemetry spans over OTLP, or prints them when no \
                  endpoint is configured. Must run as root (or with CAP_BPF and CAP_PERFMON)."
)]
pub struct Cli {
    /// OTLP endpoint (base URL; `/v1/traces` is appended for http/protobuf). Without one, spans
    /// are printed to the terminal.
    /// [env: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT]
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// OTLP transport: `grpc` or `http/protobuf` (default).
    /// [env: OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, OTEL_EXPORTER_OTLP_PROTOCOL]
    #[arg(long, value_name = "PROTOCOL")]
    pub otlp_protocol: Option<String>,

    /// Extra headers for every OTLP request, `key=value,key2=value2` (values percent-decoded).
    /// [env: OTEL_EXPORTER_OTLP_TRACES_HEADERS, OTEL_EXPORTER_OTLP_HEADERS]
    #[arg(long, value_name = "K=V,...")]
    pub otlp_headers: Option<String>,

    /// Also print spans to the terminal when exporting over OTLP.
    #[arg(long)]
    pub console: bool,

    /// Protocols to trace (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "http,postgres"
    )]
    pub protocols: Vec<ProtocolName>,

    /// Trace only these processes (and their children). Comma-separated or repeated.
    #[arg(long, value_name = "PID", value_delimiter = ',')]
    pub pid: Vec<u32>,

    /// Trace only processes running these executables (file name, e.g. `nginx`), including ones
    /// started later. Comma-separated or repeated.
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    pub exe: Vec<String>,

    /// Trace only connections with one of these ports at either end. Comma-separated or repeated.
    #[arg(long, value_name = "PORT", value_delimiter = ',')]
    pub port: Vec<u16>,

    /// Payload bytes copied per socket read or write (64-8192). Larger sees bigger headers;
    /// byte counts are always exact, so bodies never need to be copied.
    #[arg(long, value_name = "BYTES", default_value_t = socktrace_common::DEFAULT_CAPTURE,
          value_parser = clap::value_parser!(u32).range(64..=socktrace_common::MAX_CAPTURE as i64))]
    pub capture_bytes: u32,

    /// How `http.route` is derived.
    #[arg(long, value_enum, default_value = "heuristic")]
    pub http_route: RouteMode,

    /// What `db.query.text` carries. Parameter values of prepared statements are never exported.
    #[arg(long, value_enum, default_value = "sanitized")]
    pub db_query_text: QueryTextMode,

    /// Kernel ring buffer size in bytes (power of two, at least 65536).
    #[arg(long, value_name = "BYTES", default_value = "8388608", value_parser = parse_ringbuf_size)]
    pub ringbuf_size: u32,

    /// Seconds between self-telemetry reports (counters of every stage) in the log; 0: only at exit.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub stats_interval: u64,

    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or tracing-subscriber directives).
    #[arg(
        long,
        value_name = "FILTER",
        env = "SOCKTRACE_LOG",
        default_value = "info"
    )]
    pub log_level: String,
}
