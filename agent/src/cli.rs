//! Command line. Every flag can also be set by an environment variable (`SOCKTRACE_*`, shown
//! in `--help`; `tests.rs` fails on a flag without one). The exporter flags then fall back to the
//! standard `OTEL_*` variables (resolved in `export::resolve_config`, which knows the spec's
//! precedence rules): the flag or its `SOCKTRACE_*` variable, then the signal-specific `OTEL_*`
//! variable, then the generic one. Those cannot be the flags' own variables: the flag behaves
//! like the generic variable, which must lose to the signal-specific one.

use std::sync::LazyLock;

use clap::{
    Parser, ValueEnum,
    builder::{PossibleValue, PossibleValuesParser},
};

use crate::protocol;

/// `--protocols` offers every kind of every registered protocol, all enabled by default.
fn protocol_values() -> PossibleValuesParser {
    PossibleValuesParser::new(
        protocol::kinds().map(|k| PossibleValue::new(k.name).aliases(k.aliases).help(k.help)),
    )
}

static ALL_PROTOCOLS: LazyLock<String> = LazyLock::new(|| {
    protocol::kinds()
        .map(|k| k.name)
        .collect::<Vec<_>>()
        .join(",")
});

/// Where `--ui` without an address serves the viewer: loopback only.
pub const DEFAULT_UI: &str = "127.0.0.1:9412";

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

/// A sample ratio: a number in [0, 1].
fn parse_ratio(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|e| format!("{e}"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err("must be a number from 0 to 1".into());
    }
    Ok(v)
}

/// A duration: a number with a unit, `us`, `ms`, `s` or `m` (`500ms`, `1.5s`).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let v: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms or 2s"))?;
    let seconds = match unit.trim() {
        "us" => v / 1e6,
        "ms" => v / 1e3,
        "s" => v,
        "m" => v * 60.0,
        _ => return Err(format!("{s:?} needs a unit: us, ms, s or m")),
    };
    std::time::Duration::try_from_secs_f64(seconds).map_err(|e| format!("{s:?}: {e}"))
}

#[derive(Debug, Parser)]
#[command(
    name = "socktrace",
    version,
    about = "Zero-code distributed tracing: eBPF socket capture to OpenTelemetry spans",
    long_about = "Zero-code distributed tracing for Linux. Captures TCP traffic of unmodified \
                  programs at the socket layer with eBPF tracepoints (no kprobes needed), parses \
                  HTTP/1.x and PostgreSQL, and exports OpenTelemetry spans over OTLP or to \
                  Zipkin, or prints them when no endpoint is configured. Must run as root (or \
                  with CAP_BPF and CAP_PERFMON)."
)]
pub struct Cli {
    /// OTLP endpoint (base URL; `/v1/traces` is appended for http/protobuf). Without it (and
    /// without a Zipkin endpoint), spans are printed to the terminal.
    /// Without the flag and `SOCKTRACE_OTLP_ENDPOINT`: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as
    /// is), then `OTEL_EXPORTER_OTLP_ENDPOINT`.
    #[arg(long, value_name = "URL", env = "SOCKTRACE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// OTLP transport: `grpc` or `http/protobuf` (default).
    /// Without the flag and `SOCKTRACE_OTLP_PROTOCOL`: `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, then
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`.
    #[arg(long, value_name = "PROTOCOL", env = "SOCKTRACE_OTLP_PROTOCOL")]
    pub otlp_protocol: Option<String>,

    /// Extra headers for every OTLP request, `key=value,key2=value2` (values percent-decoded).
    /// Without the flag and `SOCKTRACE_OTLP_HEADERS`: `OTEL_EXPORTER_OTLP_TRACES_HEADERS`, then
    /// `OTEL_EXPORTER_OTLP_HEADERS`.
    #[arg(long, value_name = "K=V,...", env = "SOCKTRACE_OTLP_HEADERS")]
    pub otlp_headers: Option<String>,

    /// Also print spans to the terminal when exporting over OTLP or to Zipkin.
    #[arg(long, env = "SOCKTRACE_CONSOLE")]
    pub console: bool,

    /// Send spans to Zipkin as v2 JSON, POSTed to this URL (e.g.
    /// `http://zipkin:9411/api/v2/spans`), instead of over OTLP (metrics still go to the OTLP
    /// endpoint). Also `OTEL_TRACES_EXPORTER=zipkin` (a list of `otlp`, `zipkin`, `console`),
    /// whose endpoint is then `OTEL_EXPORTER_ZIPKIN_ENDPOINT`, default
    /// `http://localhost:9411/api/v2/spans`.
    #[arg(long, value_name = "URL", env = "SOCKTRACE_ZIPKIN_ENDPOINT")]
    pub zipkin_endpoint: Option<String>,

    /// Protocols to trace (comma-separated).
    #[arg(
        long,
        value_parser = protocol_values(),
        value_delimiter = ',',
        default_value = ALL_PROTOCOLS.as_str(),
        env = "SOCKTRACE_PROTOCOLS"
    )]
    pub protocols: Vec<String>,

    /// Trace only these processes (and their children). Comma-separated or repeated.
    #[arg(long, value_name = "PID", value_delimiter = ',', env = "SOCKTRACE_PID")]
    pub pid: Vec<u32>,

    /// Trace only processes running these executables (file name, e.g. `nginx`), including ones
    /// started later. Comma-separated or repeated.
    #[arg(
        long,
        value_name = "NAME",
        value_delimiter = ',',
        env = "SOCKTRACE_EXE"
    )]
    pub exe: Vec<String>,

    /// Trace only connections with one of these ports at either end. Comma-separated or repeated.
    #[arg(
        long,
        value_name = "PORT",
        value_delimiter = ',',
        env = "SOCKTRACE_PORT"
    )]
    pub port: Vec<u16>,

    /// Payload bytes copied from the start of each socket read or write (64-8192), plus up to
    /// 256 from its end. Larger sees bigger headers; byte counts are always exact, so bodies
    /// never need to be copied. HTTP/2 connections always use 8192.
    #[arg(long, value_name = "BYTES", default_value_t = socktrace_common::DEFAULT_CAPTURE,
          value_parser = clap::value_parser!(u32).range(64..=socktrace_common::MAX_CAPTURE as i64),
          env = "SOCKTRACE_CAPTURE_BYTES")]
    pub capture_bytes: u32,

    /// How `http.route` is derived.
    #[arg(
        long,
        value_enum,
        default_value = "heuristic",
        env = "SOCKTRACE_HTTP_ROUTE"
    )]
    pub http_route: RouteMode,

    /// What `db.query.text` carries. Parameter values of prepared statements are never exported.
    #[arg(
        long,
        value_enum,
        default_value = "sanitized",
        env = "SOCKTRACE_DB_QUERY_TEXT"
    )]
    pub db_query_text: QueryTextMode,

    /// Do not insert W3C `traceparent` headers into outgoing HTTP/1 requests of traced
    /// processes. Injection (on by default) carries the trace to the next host; it needs
    /// CAP_NET_ADMIN and a cgroup v2 hierarchy, and turns itself off with a warning without them.
    #[arg(long, env = "SOCKTRACE_NO_INJECT")]
    pub no_inject: bool,

    /// What becomes of the spans of processes that trace themselves (an OpenTelemetry SDK
    /// inside: they export spans over OTLP or Zipkin, or write a `traceparent` of their own):
    /// `skip` exports none of socktrace's spans of them (their tracer has those operations;
    /// the context they send still links their peers' spans); `link` exports them too, marked
    /// `socktrace.instrumented_process=true` and linked into the tracer's traces (two spans
    /// per operation). The kernel never adds a second `traceparent` either way.
    #[arg(
        long,
        value_enum,
        value_name = "MODE",
        default_value = "skip",
        env = "SOCKTRACE_INSTRUMENTED_PROCESSES"
    )]
    pub instrumented_processes: crate::trace::instrumented::InstrumentedMode,

    /// Read the plaintext of TLS connections at OpenSSL (shared `libssl` and binaries that
    /// link it statically with symbols) and Go's `crypto/tls` (binaries with symbols), with
    /// uprobes: `--tls false` turns it off.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set,
          env = "SOCKTRACE_TLS")]
    pub tls: bool,

    /// How often every process is looked at for TLS libraries and Go programs to attach to
    /// (and exited ones detached). A program is also looked at as it starts (its executable:
    /// node, Go); libraries it loads later wait for this scan.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 1,
        value_parser = clap::value_parser!(u64).range(1..=3600),
        env = "SOCKTRACE_TLS_SCAN_INTERVAL"
    )]
    pub tls_scan_interval: u64,

    /// Follow goroutines in Go programs (binaries with a symbol table, Go 1.17+ on x86-64), with
    /// uprobes on the Go runtime, so that calls a handler makes from the goroutines it starts
    /// are children of its request. `false`: Go programs are linked by thread, as others are.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set,
          env = "SOCKTRACE_FOLLOW_GOROUTINES")]
    pub follow_goroutines: bool,

    /// Kernel ring buffer size in bytes (power of two, at least 65536).
    #[arg(long, value_name = "BYTES", default_value = "8388608", value_parser = parse_ringbuf_size, env = "SOCKTRACE_RINGBUF_SIZE")]
    pub ringbuf_size: u32,

    /// Seconds between self-telemetry reports (counters of every stage) in the log; 0: only at exit.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 60,
        env = "SOCKTRACE_STATS_INTERVAL"
    )]
    pub stats_interval: u64,

    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or tracing-subscriber directives).
    #[arg(
        long,
        value_name = "FILTER",
        env = "SOCKTRACE_LOG",
        default_value = "info"
    )]
    pub log_level: String,

    /// Serve `GET /healthz` (200 while the capture loop makes progress) and `GET /readyz` (200
    /// once the probes are attached) over HTTP on this address, e.g. `0.0.0.0:8686`. Off by
    /// default.
    #[arg(long, value_name = "ADDR:PORT", env = "SOCKTRACE_HEALTH_LISTEN")]
    pub health_listen: Option<std::net::SocketAddr>,

    /// Serve `GET /metrics` over HTTP on this address, e.g. `0.0.0.0:9464`: the RED histograms
    /// and the service graph computed from every span, and the agent's own counters, in the
    /// Prometheus text format. Off by default (the `/metrics` of `--health-listen` serves the
    /// same text).
    #[arg(long, value_name = "ADDR:PORT", env = "SOCKTRACE_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// Serve the local viewer on this address: a web page with the recent traces (search by
    /// service, status, duration), a waterfall of each and the service map, from the spans the
    /// agent exports, kept in a bounded store in memory. `--ui` alone serves
    /// http://127.0.0.1:9412/. Off by default.
    #[arg(long, value_name = "ADDR:PORT", num_args = 0..=1,
          default_missing_value = DEFAULT_UI, env = "SOCKTRACE_UI")]
    pub ui: Option<std::net::SocketAddr>,

    /// Export only spans of processes in pods of these Kubernetes namespaces (patterns with `*`
    /// and `?`). Applied in user space to the resolved resource. Comma-separated or repeated.
    #[arg(
        long,
        value_name = "PATTERN",
        value_delimiter = ',',
        env = "SOCKTRACE_K8S_NAMESPACE"
    )]
    pub k8s_namespace: Vec<String>,

    /// Export only spans of processes in these containers: Kubernetes container name or
    /// container id (a plain value also matches an id prefix); patterns with `*` and `?`.
    /// Applied in user space. Comma-separated or repeated.
    #[arg(
        long,
        value_name = "PATTERN",
        value_delimiter = ',',
        env = "SOCKTRACE_CONTAINER"
    )]
    pub container: Vec<String>,

    /// Export only spans whose resolved `service.name` matches one of these patterns (`*`, `?`).
    /// Applied in user space. Comma-separated or repeated.
    #[arg(
        long,
        value_name = "PATTERN",
        value_delimiter = ',',
        env = "SOCKTRACE_SERVICE_NAME"
    )]
    pub service_name: Vec<String>,

    /// Kubernetes pod metadata: `auto` uses `--kubeconfig` (else `KUBECONFIG`) when given, or
    /// the in-cluster service account when running in a pod; `on` refuses to start without
    /// either; `off` never contacts the API server.
    #[arg(
        long = "k8s",
        value_enum,
        value_name = "MODE",
        default_value = "auto",
        env = "SOCKTRACE_K8S"
    )]
    pub k8s_mode: crate::resource::k8s::K8sMode,

    /// Kubeconfig file for the Kubernetes API (current context; token, client certificate or
    /// exec credential plugin). Without it, the files of `KUBECONFIG` are merged. Either takes
    /// precedence over the in-cluster service account.
    #[arg(long, value_name = "PATH", env = "SOCKTRACE_KUBECONFIG")]
    pub kubeconfig: Option<std::path::PathBuf>,

    /// Node whose pods are watched (default: the host name). DaemonSets set `NODE_NAME` from
    /// `spec.nodeName` through the downward API.
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    pub k8s_node_name: Option<String>,

    /// Which spans are exported (RED metrics and the service graph always count every span):
    /// the OpenTelemetry head samplers, decided per trace id and, for `parentbased_*`, by the
    /// sampled flag of an incoming `traceparent`; or `priority`: every trace of this node with
    /// an error span or a span slower than --slow-threshold, and --sample-ratio of the others,
    /// decided per trace after --sample-wait.
    #[arg(
        long,
        value_enum,
        value_name = "SAMPLER",
        env = "OTEL_TRACES_SAMPLER",
        default_value = "parentbased_always_on"
    )]
    pub sampler: crate::sample::SamplerName,

    /// Share of traces kept (0 to 1) by `traceidratio`, `parentbased_traceidratio` (default 1)
    /// and of the traces without an error or slow span by `priority` (default 0.1). Picked by
    /// trace id like OpenTelemetry's TraceIdRatioBased sampler, so every agent and SDK with the
    /// same ratio keeps the same traces.
    #[arg(long, value_name = "RATIO", env = "OTEL_TRACES_SAMPLER_ARG", value_parser = parse_ratio)]
    pub sample_ratio: Option<f64>,

    /// `priority` sampling: a span lasting longer than this keeps its whole trace (`500ms`,
    /// `2s`).
    #[arg(
        long,
        value_name = "DURATION",
        env = "SOCKTRACE_SLOW_THRESHOLD",
        default_value = "1s",
        value_parser = parse_duration
    )]
    pub slow_threshold: std::time::Duration,

    /// `priority` sampling: a trace is decided once no span of it finished for this long; its
    /// spans wait in memory until then.
    #[arg(
        long,
        value_name = "DURATION",
        env = "SOCKTRACE_SAMPLE_WAIT",
        default_value = "5s",
        value_parser = parse_duration
    )]
    pub sample_wait: std::time::Duration,

    /// `priority` sampling: most spans waiting for their trace's decision. When full, the trace
    /// due first is decided early (counted as `decided_early`).
    #[arg(
        long,
        value_name = "SPANS",
        env = "SOCKTRACE_SAMPLE_BUFFER",
        default_value_t = 16384,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub sample_buffer: u32,

    /// Value of `k8s.cluster.name` on every resource (the API has no cluster name).
    #[arg(long, value_name = "NAME", env = "SOCKTRACE_K8S_CLUSTER_NAME")]
    pub k8s_cluster_name: Option<String>,
}

#[cfg(test)]
mod tests;
