//! Exporter configuration: CLI values and the standard OpenTelemetry environment variables.
//!
//! Precedence follows the OTLP exporter specification: CLI flag, then
//! `OTEL_EXPORTER_OTLP_TRACES_*`, then `OTEL_EXPORTER_OTLP_*`, then the default. Empty variables
//! count as unset. The most specific source of a setting wins as a whole (headers from two
//! sources are not merged).
//!
//! Which exporters get the spans: `OTEL_TRACES_EXPORTER` when set (a comma-separated list of
//! `otlp`, `zipkin`, `console`); otherwise Zipkin when `--zipkin-endpoint` is given (instead of
//! OTLP), else OTLP when an OTLP endpoint is configured (flag or variable), else the console.
//! `--console` adds the console to any of them. The Zipkin endpoint comes from the flag, then
//! `OTEL_EXPORTER_ZIPKIN_ENDPOINT`, then `http://localhost:9411/api/v2/spans`.

use std::time::Duration;

use percent_encoding::percent_decode_str;
use url::Url;

/// Wire protocol of the OTLP exporter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (`grpc`).
    Grpc,
    /// OTLP/HTTP with binary protobuf bodies (`http/protobuf`), the default.
    #[default]
    HttpProtobuf,
}

impl OtlpProtocol {
    /// The spellings accepted by [`OtlpProtocol::parse`], as in `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub const VALID_VALUES: &'static str = "grpc, http/protobuf";

    /// Parses the OTEL spelling (`grpc` or `http/protobuf`); `None` for anything else.
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim() {
            "grpc" => Some(Self::Grpc),
            "http/protobuf" => Some(Self::HttpProtobuf),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
        }
    }
}

impl std::fmt::Display for OtlpProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Default of [`ZipkinConfig::endpoint`] (`OTEL_EXPORTER_ZIPKIN_ENDPOINT`).
pub const DEFAULT_ZIPKIN_ENDPOINT: &str = "http://localhost:9411/api/v2/spans";
/// Default of [`ZipkinConfig::timeout`] (`OTEL_EXPORTER_ZIPKIN_TIMEOUT`).
pub const DEFAULT_ZIPKIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Default of [`ExportConfig::max_queue`].
pub const DEFAULT_MAX_QUEUE: usize = 4096;
/// Default of [`ExportConfig::max_batch`].
pub const DEFAULT_MAX_BATCH: usize = 512;
/// Default of [`ExportConfig::batch_timeout`].
pub const DEFAULT_BATCH_TIMEOUT: Duration = Duration::from_secs(1);
/// Default of [`OtlpConfig::timeout`].
pub const DEFAULT_OTLP_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of [`ExportConfig::metrics_interval`] (the OpenTelemetry SDK's 60 s).
pub const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_secs(60);
/// Default of [`ExportConfig::metrics_timeout`] (the OpenTelemetry SDK's 30 s).
pub const DEFAULT_METRICS_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of [`ExportConfig::shutdown_timeout`].
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything the export stage needs.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportConfig {
    /// OTLP destination of the spans; `None`: spans are not sent over OTLP.
    pub otlp: Option<OtlpConfig>,
    /// Zipkin destination of the spans (v2 JSON); `None`: not sent to Zipkin.
    pub zipkin: Option<ZipkinConfig>,
    /// OTLP destination of the metrics (`/v1/metrics` for a base URL); `None`: not exported
    /// over OTLP.
    pub metrics: Option<OtlpConfig>,
    /// Period of the metrics export (`OTEL_METRIC_EXPORT_INTERVAL`).
    pub metrics_interval: Duration,
    /// Longest one metrics export may take, its retries included (`OTEL_METRIC_EXPORT_TIMEOUT`);
    /// never longer than [`ExportConfig::metrics_interval`], when the next export carries the
    /// same cumulative values anyway.
    pub metrics_timeout: Duration,
    /// Print spans to stdout (in addition to OTLP when both are set).
    pub console: bool,
    /// Capacity of the bounded queue between the pipeline and each exporter task.
    pub max_queue: usize,
    /// Spans per request.
    pub max_batch: usize,
    /// Longest wait before a partial batch is sent.
    pub batch_timeout: Duration,
    /// How long [`super::ExporterHandle::shutdown`] may spend flushing.
    pub shutdown_timeout: Duration,
    /// Retry policy for retryable OTLP failures (by default: until accepted or shutdown).
    pub retry: RetryConfig,
}

impl ExportConfig {
    /// How long one metrics export may go on retrying: `OTEL_METRIC_EXPORT_TIMEOUT`, and never
    /// past the next export.
    pub fn metrics_export_limit(&self) -> Duration {
        self.metrics_timeout.min(self.metrics_interval)
    }
}

impl Default for ExportConfig {
    /// Console only, default queue and batch sizes.
    fn default() -> Self {
        Self {
            otlp: None,
            zipkin: None,
            metrics: None,
            metrics_interval: DEFAULT_METRICS_INTERVAL,
            metrics_timeout: DEFAULT_METRICS_TIMEOUT,
            console: true,
            max_queue: DEFAULT_MAX_QUEUE,
            max_batch: DEFAULT_MAX_BATCH,
            batch_timeout: DEFAULT_BATCH_TIMEOUT,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            retry: RetryConfig::default(),
        }
    }
}

/// Default of [`RetryConfig::initial_backoff`].
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Default of [`RetryConfig::max_backoff`].
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Default of [`RetryConfig::max_server_delay`].
pub const DEFAULT_MAX_SERVER_DELAY: Duration = Duration::from_secs(60);

/// Retry policy for one batch after a retryable failure: exponential backoff with jitter.
///
/// By default a batch is retried until the endpoint accepts it, answers with a non-retryable
/// error, or the shutdown deadline passes: during an outage the bounded queue
/// ([`ExportConfig::max_queue`]) is the only buffer, and spans that do not fit are dropped at
/// submission (and counted), so nothing already queued is lost to a retry limit.
/// `max_attempts` / `max_elapsed` optionally give up on a batch earlier (its spans count as
/// failed), trading the oldest spans for newer ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryConfig {
    /// Backoff before the first retry; doubled for each further retry, up to `max_backoff`.
    /// The actual delay is drawn between half of that and all of it (jitter).
    pub initial_backoff: Duration,
    /// Cap of the computed backoff (5 s by default).
    pub max_backoff: Duration,
    /// Cap of a delay the server asks for (`Retry-After`, gRPC `RetryInfo`), which is honoured
    /// even beyond `max_backoff` (60 s by default).
    pub max_server_delay: Duration,
    /// Give up on a batch after this many attempts, the first one included (`Some(1)`: no
    /// retries). `None` (the default): no limit.
    pub max_attempts: Option<u32>,
    /// Give up on a batch when the next attempt would start later than this after its first
    /// one. `None` (the default): no limit.
    pub max_elapsed: Option<Duration>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            max_server_delay: DEFAULT_MAX_SERVER_DELAY,
            max_attempts: None,
            max_elapsed: None,
        }
    }
}

/// Where and how to send OTLP. `Debug` shows header names only (values are often secrets).
#[derive(Clone, PartialEq)]
pub struct OtlpConfig {
    /// Full URL: for HTTP the URL the requests are POSTed to (already with `/v1/traces` when it
    /// came from a generic endpoint), for gRPC the server the channel connects to.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// Extra request headers (gRPC metadata), e.g. authentication.
    pub headers: Vec<(String, String)>,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl std::fmt::Debug for OtlpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<String> = self
            .headers
            .iter()
            .map(|(k, _)| format!("{k}: <redacted>"))
            .collect();
        f.debug_struct("OtlpConfig")
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .field("headers", &headers)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Where to send Zipkin v2 JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZipkinConfig {
    /// The URL spans are POSTed to, e.g. `http://zipkin:9411/api/v2/spans`.
    pub endpoint: String,
    /// Per-request timeout.
    pub timeout: Duration,
}

/// The export-related command-line values (`None`/`false` when not given).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportCli {
    /// `--otlp-endpoint`: behaves like `OTEL_EXPORTER_OTLP_ENDPOINT` (for http/protobuf
    /// `/v1/traces` is appended).
    pub endpoint: Option<String>,
    /// `--otlp-protocol`: `grpc` or `http/protobuf`.
    pub protocol: Option<String>,
    /// `--otlp-headers`: `k1=v1,k2=v2`, values percent-decoded.
    pub headers: Option<String>,
    /// `--console`: print spans to stdout even when OTLP is configured.
    pub console: bool,
    /// `--zipkin-endpoint`: send spans to Zipkin (v2 JSON) at this URL.
    pub zipkin_endpoint: Option<String>,
}

/// A configuration value that cannot be used. The message names the value and where it came from.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("invalid OTLP endpoint {value:?} from {origin}: {reason}")]
    InvalidEndpoint {
        value: String,
        origin: String,
        reason: String,
    },
    #[error("invalid OTLP protocol {value:?} from {origin}: expected one of {valid}", valid = OtlpProtocol::VALID_VALUES)]
    InvalidProtocol { value: String, origin: String },
    #[error("invalid OTLP headers {value:?} from {origin}: {reason}")]
    InvalidHeaders {
        value: String,
        origin: String,
        reason: String,
    },
    #[error("invalid Zipkin endpoint {value:?} from {origin}: {reason}")]
    InvalidZipkinEndpoint {
        value: String,
        origin: String,
        reason: String,
    },
    #[error("invalid traces exporter {value:?} in {origin}: expected a comma-separated list of {valid}", valid = TracesExporters::VALID_VALUES)]
    InvalidExporter { value: String, origin: String },
    #[error("invalid value {value:?} for {origin}: {reason}")]
    InvalidNumber {
        value: String,
        origin: String,
        reason: String,
    },
}

const FLAG_ENDPOINT: &str = "--otlp-endpoint (or SOCKTRACE_OTLP_ENDPOINT)";
const FLAG_PROTOCOL: &str = "--otlp-protocol (or SOCKTRACE_OTLP_PROTOCOL)";
const FLAG_HEADERS: &str = "--otlp-headers (or SOCKTRACE_OTLP_HEADERS)";
const FLAG_ZIPKIN_ENDPOINT: &str = "--zipkin-endpoint (or SOCKTRACE_ZIPKIN_ENDPOINT)";

/// The span exporters `OTEL_TRACES_EXPORTER` names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct TracesExporters {
    otlp: bool,
    zipkin: bool,
    console: bool,
}

impl TracesExporters {
    /// The values accepted in the list.
    const VALID_VALUES: &'static str = "otlp, zipkin, console";

    /// Parses `otlp,zipkin,console` (any subset, at least one, in any order).
    fn parse(value: &str) -> Option<Self> {
        let mut out = Self::default();
        for name in value.split(',') {
            match name.trim() {
                "otlp" => out.otlp = true,
                "zipkin" => out.zipkin = true,
                "console" => out.console = true,
                _ => return None,
            }
        }
        Some(out)
    }
}

/// A value and where it came from, for error messages.
struct Sourced {
    value: String,
    origin: String,
}

/// First non-empty value among: the CLI value, then the given variables in order.
fn pick(
    cli: Option<&String>,
    flag: &str,
    vars: &[&str],
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<Sourced> {
    if let Some(v) = cli.filter(|v| !v.trim().is_empty()) {
        return Some(Sourced {
            value: v.clone(),
            origin: flag.to_owned(),
        });
    }
    vars.iter().find_map(|name| {
        env(name)
            .filter(|v| !v.trim().is_empty())
            .map(|value| Sourced {
                value,
                origin: (*name).to_owned(),
            })
    })
}

/// One OTLP signal: the infix of its variables and the path appended to a base URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    fn infix(self) -> &'static str {
        match self {
            Signal::Traces => "TRACES",
            Signal::Metrics => "METRICS",
        }
    }

    /// The OTLP/HTTP path.
    pub fn path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
        }
    }

    /// `OTEL_EXPORTER_OTLP_{SIGNAL}_{setting}` then `OTEL_EXPORTER_OTLP_{setting}`.
    fn vars(self, setting: &str) -> [String; 2] {
        [
            format!("OTEL_EXPORTER_OTLP_{}_{setting}", self.infix()),
            format!("OTEL_EXPORTER_OTLP_{setting}"),
        ]
    }
}

/// The OTLP protocol of one signal.
fn resolve_otlp_protocol(
    cli: &ExportCli,
    env: &dyn Fn(&str) -> Option<String>,
    signal: Signal,
) -> Result<OtlpProtocol, ConfigError> {
    let protocol_vars = signal.vars("PROTOCOL");
    match pick(
        cli.protocol.as_ref(),
        FLAG_PROTOCOL,
        &[protocol_vars[0].as_str(), protocol_vars[1].as_str()],
        env,
    ) {
        None => Ok(OtlpProtocol::default()),
        Some(s) => OtlpProtocol::parse(&s.value).ok_or(ConfigError::InvalidProtocol {
            value: s.value,
            origin: s.origin,
        }),
    }
}

/// The Zipkin destination: `--zipkin-endpoint`, then `OTEL_EXPORTER_ZIPKIN_ENDPOINT`, then the
/// default; `OTEL_EXPORTER_ZIPKIN_TIMEOUT` (milliseconds).
fn resolve_zipkin(
    cli: &ExportCli,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ZipkinConfig, ConfigError> {
    let src = pick(
        cli.zipkin_endpoint.as_ref(),
        FLAG_ZIPKIN_ENDPOINT,
        &["OTEL_EXPORTER_ZIPKIN_ENDPOINT"],
        env,
    )
    .unwrap_or_else(|| Sourced {
        value: DEFAULT_ZIPKIN_ENDPOINT.to_owned(),
        origin: "the default".to_owned(),
    });
    check_url(&src, DEFAULT_ZIPKIN_ENDPOINT).map_err(|reason| {
        ConfigError::InvalidZipkinEndpoint {
            value: src.value.clone(),
            origin: src.origin.clone(),
            reason,
        }
    })?;
    let timeout = millis(env, &["OTEL_EXPORTER_ZIPKIN_TIMEOUT"])?.unwrap_or(DEFAULT_ZIPKIN_TIMEOUT);
    Ok(ZipkinConfig {
        endpoint: src.value.trim().to_owned(),
        timeout,
    })
}

/// The URL of `src` if it is an http or https URL with a host; `example` goes into the reason.
fn check_url(src: &Sourced, example: &str) -> Result<Url, String> {
    let url = Url::parse(src.value.trim())
        .map_err(|e| format!("{e} (expected a URL such as {example})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "unsupported scheme {:?} (expected http or https)",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("no host".to_owned());
    }
    Ok(url)
}

/// The OTLP destination of one signal, `None` without an endpoint.
fn resolve_otlp(
    cli: &ExportCli,
    env: &dyn Fn(&str) -> Option<String>,
    signal: Signal,
) -> Result<Option<OtlpConfig>, ConfigError> {
    let vars = |setting| signal.vars(setting);
    let protocol = resolve_otlp_protocol(cli, env, signal)?;
    let endpoint_vars = vars("ENDPOINT");
    let Some(src) = pick(
        cli.endpoint.as_ref(),
        FLAG_ENDPOINT,
        &[endpoint_vars[0].as_str(), endpoint_vars[1].as_str()],
        env,
    ) else {
        return Ok(None);
    };
    // Only the signal-specific variable is a complete URL; the flag and the generic variable
    // are a base URL for HTTP.
    let signal_specific = src.origin == endpoint_vars[0];
    let endpoint = resolve_endpoint(&src, protocol, (!signal_specific).then_some(signal))?;
    let header_vars = vars("HEADERS");
    let headers = match pick(
        cli.headers.as_ref(),
        FLAG_HEADERS,
        &[header_vars[0].as_str(), header_vars[1].as_str()],
        env,
    ) {
        None => Vec::new(),
        Some(s) => parse_headers(&s.value).map_err(|reason| ConfigError::InvalidHeaders {
            value: s.value.clone(),
            origin: s.origin.clone(),
            reason,
        })?,
    };
    let timeout_vars = vars("TIMEOUT");
    let timeout = millis(env, &[timeout_vars[0].as_str(), timeout_vars[1].as_str()])?
        .unwrap_or(DEFAULT_OTLP_TIMEOUT);
    Ok(Some(OtlpConfig {
        endpoint,
        protocol,
        headers,
        timeout,
    }))
}

/// Resolve the exporter configuration from CLI values (which win) and the standard environment
/// variables, read through `env` so tests can pass a map.
///
/// Variables: `OTEL_EXPORTER_OTLP_[TRACES_|METRICS_]{ENDPOINT,PROTOCOL,HEADERS,TIMEOUT}`,
/// `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`
/// (milliseconds / counts), `OTEL_METRIC_EXPORT_INTERVAL` and `OTEL_METRIC_EXPORT_TIMEOUT`
/// (milliseconds; a metrics request never waits longer than the latter) and
/// `OTEL_METRICS_EXPORTER` (`otlp`, the default, or `none`).
pub fn resolve_config(
    cli: &ExportCli,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ExportConfig, ConfigError> {
    let zipkin_flag = cli
        .zipkin_endpoint
        .as_ref()
        .is_some_and(|v| !v.trim().is_empty());
    let configured_otlp = resolve_otlp(cli, env, Signal::Traces)?;
    let exporters = match pick(None, "", &["OTEL_TRACES_EXPORTER"], env) {
        Some(s) => TracesExporters::parse(&s.value).ok_or(ConfigError::InvalidExporter {
            value: s.value,
            origin: s.origin,
        })?,
        None => TracesExporters {
            otlp: !zipkin_flag && configured_otlp.is_some(),
            zipkin: zipkin_flag,
            console: false,
        },
    };
    let otlp = match (exporters.otlp, configured_otlp) {
        (false, _) => None,
        (true, Some(o)) => Some(o),
        // Asked for by name without an endpoint: the specification's default one.
        (true, None) => {
            let protocol = resolve_otlp_protocol(cli, env, Signal::Traces)?;
            let endpoint = format!("http://localhost:{}", default_port(protocol));
            resolve_otlp(
                &ExportCli {
                    endpoint: Some(endpoint),
                    ..cli.clone()
                },
                env,
                Signal::Traces,
            )?
        }
    };
    let zipkin = if exporters.zipkin {
        Some(resolve_zipkin(cli, env)?)
    } else {
        None
    };
    let console = cli.console || exporters.console || (otlp.is_none() && zipkin.is_none());
    let metrics = match pick(None, "", &["OTEL_METRICS_EXPORTER"], env) {
        None => resolve_otlp(cli, env, Signal::Metrics)?,
        Some(s) => match s.value.trim() {
            "otlp" => resolve_otlp(cli, env, Signal::Metrics)?,
            "none" => None,
            _ => {
                return Err(ConfigError::InvalidNumber {
                    value: s.value,
                    origin: s.origin,
                    reason: "expected otlp or none".to_owned(),
                });
            }
        },
    };
    let metrics_interval =
        millis(env, &["OTEL_METRIC_EXPORT_INTERVAL"])?.unwrap_or(DEFAULT_METRICS_INTERVAL);
    let metrics_timeout =
        millis(env, &["OTEL_METRIC_EXPORT_TIMEOUT"])?.unwrap_or(DEFAULT_METRICS_TIMEOUT);
    let metrics = metrics.map(|m| OtlpConfig {
        timeout: m.timeout.min(metrics_timeout),
        ..m
    });

    let batch_timeout = millis(env, &["OTEL_BSP_SCHEDULE_DELAY"])?.unwrap_or(DEFAULT_BATCH_TIMEOUT);
    let max_queue = count(env, "OTEL_BSP_MAX_QUEUE_SIZE")?.unwrap_or(DEFAULT_MAX_QUEUE);
    // The batch processor spec: a batch larger than the queue is clamped to the queue.
    let max_batch = count(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE")?
        .unwrap_or(DEFAULT_MAX_BATCH)
        .min(max_queue);

    Ok(ExportConfig {
        console,
        otlp,
        zipkin,
        metrics,
        metrics_interval,
        metrics_timeout,
        max_queue,
        max_batch,
        batch_timeout,
        ..ExportConfig::default()
    })
}

/// Validates the URL and, for a base URL with HTTP, appends the signal's path (`/v1/traces`).
fn resolve_endpoint(
    src: &Sourced,
    protocol: OtlpProtocol,
    base_of: Option<Signal>,
) -> Result<String, ConfigError> {
    let raw = src.value.trim();
    let invalid = |reason: String| ConfigError::InvalidEndpoint {
        value: src.value.clone(),
        origin: src.origin.clone(),
        reason,
    };
    let example = format!("http://localhost:{}", default_port(protocol));
    let mut url = check_url(src, &example).map_err(invalid)?;
    let Some(signal) = base_of.filter(|_| protocol == OtlpProtocol::HttpProtobuf) else {
        return Ok(raw.to_owned());
    };
    let path = url.path().trim_end_matches('/');
    let path = format!("{path}{}", signal.path());
    url.set_path(&path);
    Ok(url.to_string())
}

fn default_port(protocol: OtlpProtocol) -> u16 {
    match protocol {
        OtlpProtocol::Grpc => 4317,
        OtlpProtocol::HttpProtobuf => 4318,
    }
}

/// Parses the `OTEL_EXPORTER_OTLP_HEADERS` format: `k1=v1,k2=v2`, keys and values
/// percent-decoded and trimmed; empty entries are skipped.
pub fn parse_headers(value: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for entry in value.split(',') {
        if entry.trim().is_empty() {
            continue;
        }
        let Some((k, v)) = entry.split_once('=') else {
            return Err(format!("entry {:?} is not key=value", entry.trim()));
        };
        let decode = |s: &str| {
            percent_decode_str(s.trim())
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| format!("entry {:?} is not valid UTF-8 once decoded", entry.trim()))
        };
        let (key, val) = (decode(k)?, decode(v)?);
        if key.is_empty() {
            return Err(format!("entry {:?} has an empty key", entry.trim()));
        }
        if reqwest::header::HeaderName::from_bytes(key.as_bytes()).is_err() {
            return Err(format!("{key:?} is not a valid header name"));
        }
        if reqwest::header::HeaderValue::from_str(&val).is_err() {
            return Err(format!("the value of {key:?} is not a valid header value"));
        }
        out.push((key, val));
    }
    Ok(out)
}

/// A positive number of milliseconds from the first set variable.
fn millis(
    env: &dyn Fn(&str) -> Option<String>,
    vars: &[&str],
) -> Result<Option<Duration>, ConfigError> {
    let Some(s) = pick(None, "", vars, env) else {
        return Ok(None);
    };
    match s.value.trim().parse::<u64>() {
        Ok(ms) if ms > 0 => Ok(Some(Duration::from_millis(ms))),
        _ => Err(ConfigError::InvalidNumber {
            value: s.value,
            origin: s.origin,
            reason: "expected a positive integer number of milliseconds".to_owned(),
        }),
    }
}

fn count(env: &dyn Fn(&str) -> Option<String>, var: &str) -> Result<Option<usize>, ConfigError> {
    let Some(s) = pick(None, "", &[var], env) else {
        return Ok(None);
    };
    match s.value.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(Some(n)),
        _ => Err(ConfigError::InvalidNumber {
            value: s.value,
            origin: s.origin,
            reason: "expected a positive integer".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn resolve(cli: &ExportCli, vars: &[(&str, &str)]) -> Result<ExportConfig, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        resolve_config(cli, &|k| map.get(k).cloned())
    }

    fn otlp(cli: &ExportCli, vars: &[(&str, &str)]) -> OtlpConfig {
        resolve(cli, vars).unwrap().otlp.expect("otlp configured")
    }

    fn cli_endpoint(e: &str) -> ExportCli {
        ExportCli {
            endpoint: Some(e.to_owned()),
            ..Default::default()
        }
    }

    #[test]
    fn nothing_configured_is_console_only_with_defaults() {
        let c = resolve(&ExportCli::default(), &[]).unwrap();
        assert_eq!(c.otlp, None);
        assert!(c.console);
        assert_eq!(c.max_queue, 4096);
        assert_eq!(c.max_batch, 512);
        assert_eq!(c.batch_timeout, Duration::from_secs(1));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
        // A batch is retried until accepted (or shutdown): no attempt or time limit.
        assert_eq!(c.retry.max_attempts, None);
        assert_eq!(c.retry.max_elapsed, None);
        assert_eq!(c.retry.max_backoff, Duration::from_secs(5));
    }

    #[test]
    fn generic_endpoint_gets_v1_traces_for_http() {
        let vars = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")];
        let o = otlp(&ExportCli::default(), &vars);
        assert_eq!(o.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(o.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(o.timeout, Duration::from_secs(10));
        assert!(o.headers.is_empty());
        // OTLP configured: console off unless asked for.
        assert!(!resolve(&ExportCli::default(), &vars).unwrap().console);
    }

    #[test]
    fn generic_endpoint_path_is_kept_without_double_slash() {
        for (base, want) in [
            ("http://c:4318/", "http://c:4318/v1/traces"),
            ("https://c/otlp", "https://c/otlp/v1/traces"),
            ("https://c/otlp/", "https://c/otlp/v1/traces"),
            ("http://c:4318//", "http://c:4318/v1/traces"),
        ] {
            assert_eq!(otlp(&cli_endpoint(base), &[]).endpoint, want, "{base}");
        }
    }

    #[test]
    fn traces_endpoint_is_used_as_is() {
        let vars = [
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://t:1234/custom/path",
            ),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318"),
        ];
        assert_eq!(
            otlp(&ExportCli::default(), &vars).endpoint,
            "http://t:1234/custom/path"
        );
    }

    #[test]
    fn cli_endpoint_wins_and_behaves_like_generic() {
        let vars = [
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://t:1234/custom/path",
            ),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318"),
        ];
        assert_eq!(
            otlp(&cli_endpoint("http://cli:4318"), &vars).endpoint,
            "http://cli:4318/v1/traces"
        );
    }

    #[test]
    fn grpc_endpoints_are_used_as_is() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4317"),
        ];
        let o = otlp(&ExportCli::default(), &vars);
        assert_eq!(o.protocol, OtlpProtocol::Grpc);
        assert_eq!(o.endpoint, "http://generic:4317");
    }

    #[test]
    fn protocol_precedence() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
        ];
        assert_eq!(
            otlp(&ExportCli::default(), &vars).protocol,
            OtlpProtocol::Grpc
        );
        let cli = ExportCli {
            protocol: Some("http/protobuf".into()),
            ..Default::default()
        };
        let o = otlp(&cli, &vars);
        assert_eq!(o.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(o.endpoint, "http://c:4318/v1/traces");
    }

    #[test]
    fn invalid_protocol_lists_valid_values() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ];
        let err = resolve(&ExportCli::default(), &vars).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid OTLP protocol \"http/json\" from OTEL_EXPORTER_OTLP_PROTOCOL: expected one of grpc, http/protobuf"
        );
    }

    #[test]
    fn invalid_endpoints_name_value_and_origin() {
        let err = resolve(&cli_endpoint("localhost:4317"), &[]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with(
                "invalid OTLP endpoint \"localhost:4317\" from --otlp-endpoint (or SOCKTRACE_OTLP_ENDPOINT): "
            ),
            "{msg}"
        );
        assert!(!msg.contains('\n'));

        let err = resolve(
            &ExportCli::default(),
            &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "ftp://c/x")],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid OTLP endpoint \"ftp://c/x\" from OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: unsupported scheme \"ftp\" (expected http or https)"
        );

        let err = resolve(
            &ExportCli::default(),
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url")],
        )
        .unwrap_err();
        assert!(
            matches!(err, ConfigError::InvalidEndpoint { ref origin, .. } if origin == "OTEL_EXPORTER_OTLP_ENDPOINT")
        );
    }

    #[test]
    fn empty_variables_are_unset() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", ""),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://g:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", " "),
        ];
        let o = otlp(&ExportCli::default(), &vars);
        assert_eq!(o.endpoint, "http://g:4318/v1/traces");
        assert_eq!(o.protocol, OtlpProtocol::HttpProtobuf);
    }

    #[test]
    fn headers_are_parsed_and_percent_decoded() {
        assert_eq!(
            parse_headers("api-key=secret%20value, x-tenant = a%3Db ,,empty=").unwrap(),
            vec![
                ("api-key".to_owned(), "secret value".to_owned()),
                ("x-tenant".to_owned(), "a=b".to_owned()),
                ("empty".to_owned(), String::new()),
            ]
        );
        assert!(parse_headers("novalue").is_err());
        assert!(parse_headers("=v").is_err());
        assert!(parse_headers("bad key=v").is_err());
    }

    #[test]
    fn headers_precedence_most_specific_wins() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=generic,b=2"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "a=traces"),
        ];
        assert_eq!(
            otlp(&ExportCli::default(), &vars).headers,
            vec![("a".to_owned(), "traces".to_owned())]
        );
        let cli = ExportCli {
            headers: Some("c=cli".into()),
            ..Default::default()
        };
        assert_eq!(
            otlp(&cli, &vars).headers,
            vec![("c".to_owned(), "cli".to_owned())]
        );
        let err = resolve(
            &ExportCli::default(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "oops"),
            ],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid OTLP headers \"oops\" from OTEL_EXPORTER_OTLP_HEADERS: entry \"oops\" is not key=value"
        );
    }

    #[test]
    fn debug_hides_header_values() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Bearer%20s3cret",
            ),
        ];
        let dbg = format!("{:?}", resolve(&ExportCli::default(), &vars).unwrap());
        assert!(!dbg.contains("s3cret"), "{dbg}");
        assert!(dbg.contains("authorization: <redacted>"), "{dbg}");
    }

    #[test]
    fn timeouts_and_batch_settings() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "750"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1000"),
        ];
        let c = resolve(&ExportCli::default(), &vars).unwrap();
        assert_eq!(c.otlp.unwrap().timeout, Duration::from_millis(750));
        assert_eq!(c.batch_timeout, Duration::from_millis(200));
        assert_eq!(c.max_queue, 100);
        assert_eq!(c.max_batch, 100, "batch is clamped to the queue size");

        let err = resolve(
            &ExportCli::default(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
            ],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value \"10s\" for OTEL_EXPORTER_OTLP_TIMEOUT: expected a positive integer number of milliseconds"
        );
    }

    #[test]
    fn metrics_follow_the_generic_settings_unless_their_own_are_set() {
        let c = resolve(&cli_endpoint("http://c:4318"), &[]).unwrap();
        assert_eq!(c.metrics.unwrap().endpoint, "http://c:4318/v1/metrics");
        assert_eq!(c.metrics_interval, Duration::from_secs(60));
        let c = resolve(
            &ExportCli::default(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:4317"),
                ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "k=m"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "k=g"),
                ("OTEL_METRIC_EXPORT_INTERVAL", "250"),
            ],
        )
        .unwrap();
        let m = c.metrics.clone().unwrap();
        assert_eq!(m.endpoint, "http://m:4317");
        assert_eq!(m.protocol, OtlpProtocol::Grpc);
        assert_eq!(m.headers, vec![("k".to_owned(), "m".to_owned())]);
        assert_eq!(c.metrics_interval, Duration::from_millis(250));
        // Without OTEL_METRIC_EXPORT_TIMEOUT: the SDK's 30 s, cut to the interval.
        assert_eq!(c.metrics_timeout, Duration::from_secs(30));
        assert_eq!(c.metrics_export_limit(), Duration::from_millis(250));
        let t = c.otlp.unwrap();
        assert_eq!(t.endpoint, "http://c:4318/v1/traces");
        assert_eq!(t.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(t.headers, vec![("k".to_owned(), "g".to_owned())]);
        // Only a traces endpoint: no metrics over OTLP; `none` turns them off.
        let c = resolve(
            &ExportCli::default(),
            &[(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://t:4318/v1/traces",
            )],
        )
        .unwrap();
        assert_eq!(c.metrics, None);
        let c = resolve(
            &cli_endpoint("http://c:4318"),
            &[("OTEL_METRICS_EXPORTER", "none")],
        )
        .unwrap();
        assert_eq!(c.metrics, None);
        assert!(resolve(&cli_endpoint("http://c"), &[("OTEL_METRICS_EXPORTER", "x")]).is_err());
        assert!(
            resolve(
                &ExportCli::default(),
                &[("OTEL_METRIC_EXPORT_INTERVAL", "0")]
            )
            .is_err()
        );
    }

    #[test]
    fn console_flag_adds_console_to_otlp() {
        let cli = ExportCli {
            endpoint: Some("http://c:4317".into()),
            protocol: Some("grpc".into()),
            console: true,
            ..Default::default()
        };
        let c = resolve(&cli, &[]).unwrap();
        assert!(c.console);
        assert_eq!(c.otlp.unwrap().endpoint, "http://c:4317");
    }

    #[test]
    fn metric_export_timeout_bounds_each_metrics_request_and_its_retries() {
        let c = resolve(
            &cli_endpoint("http://c:4318"),
            &[
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "10000"),
                ("OTEL_METRIC_EXPORT_TIMEOUT", "2500"),
                ("OTEL_METRIC_EXPORT_INTERVAL", "60000"),
            ],
        )
        .unwrap();
        assert_eq!(c.metrics_timeout, Duration::from_millis(2500));
        assert_eq!(c.metrics_export_limit(), Duration::from_millis(2500));
        // The request timeout of the metrics is cut to it; the spans' is not.
        assert_eq!(c.metrics.unwrap().timeout, Duration::from_millis(2500));
        assert_eq!(c.otlp.unwrap().timeout, Duration::from_secs(10));
        // A shorter request timeout stays.
        let c = resolve(
            &cli_endpoint("http://c:4318"),
            &[
                ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "700"),
                ("OTEL_METRIC_EXPORT_TIMEOUT", "2500"),
            ],
        )
        .unwrap();
        assert_eq!(c.metrics.unwrap().timeout, Duration::from_millis(700));
        let err = resolve(
            &cli_endpoint("http://c:4318"),
            &[("OTEL_METRIC_EXPORT_TIMEOUT", "0")],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value \"0\" for OTEL_METRIC_EXPORT_TIMEOUT: expected a positive integer number of milliseconds"
        );
    }

    fn zipkin_cli(e: &str) -> ExportCli {
        ExportCli {
            zipkin_endpoint: Some(e.to_owned()),
            ..Default::default()
        }
    }

    #[test]
    fn zipkin_flag_replaces_otlp_for_spans() {
        let c = resolve(
            &ExportCli {
                endpoint: Some("http://c:4318".into()),
                ..zipkin_cli("http://z:9411/api/v2/spans")
            },
            &[("OTEL_EXPORTER_ZIPKIN_ENDPOINT", "http://ignored:9411")],
        )
        .unwrap();
        assert_eq!(
            c.zipkin,
            Some(ZipkinConfig {
                endpoint: "http://z:9411/api/v2/spans".into(),
                timeout: Duration::from_secs(10),
            })
        );
        assert_eq!(c.otlp, None);
        assert!(!c.console);
        // The metrics still go to the OTLP endpoint.
        assert_eq!(c.metrics.unwrap().endpoint, "http://c:4318/v1/metrics");
        let c = resolve(
            &ExportCli {
                console: true,
                ..zipkin_cli("http://z:9411/api/v2/spans")
            },
            &[],
        )
        .unwrap();
        assert!(c.console);
    }

    #[test]
    fn otel_traces_exporter_chooses_the_exporters() {
        // The standard variables: the default endpoint, or OTEL_EXPORTER_ZIPKIN_*.
        let c = resolve(&ExportCli::default(), &[("OTEL_TRACES_EXPORTER", "zipkin")]).unwrap();
        assert_eq!(
            c.zipkin.unwrap().endpoint,
            "http://localhost:9411/api/v2/spans"
        );
        assert_eq!(c.otlp, None);
        assert!(!c.console);
        let c = resolve(
            &ExportCli::default(),
            &[
                ("OTEL_TRACES_EXPORTER", "zipkin"),
                (
                    "OTEL_EXPORTER_ZIPKIN_ENDPOINT",
                    "https://z.example/api/v2/spans",
                ),
                ("OTEL_EXPORTER_ZIPKIN_TIMEOUT", "2500"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ],
        )
        .unwrap();
        assert_eq!(
            c.zipkin,
            Some(ZipkinConfig {
                endpoint: "https://z.example/api/v2/spans".into(),
                timeout: Duration::from_millis(2500),
            })
        );
        assert_eq!(c.otlp, None, "zipkin alone: no OTLP spans");
        // Both, and the console.
        let c = resolve(
            &ExportCli::default(),
            &[
                ("OTEL_TRACES_EXPORTER", "otlp, zipkin,console"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ],
        )
        .unwrap();
        assert_eq!(c.otlp.unwrap().endpoint, "http://c:4318/v1/traces");
        assert!(c.zipkin.is_some());
        assert!(c.console);
        // `otlp` by name without an endpoint: the specification's default.
        let c = resolve(&ExportCli::default(), &[("OTEL_TRACES_EXPORTER", "otlp")]).unwrap();
        assert_eq!(c.otlp.unwrap().endpoint, "http://localhost:4318/v1/traces");
        assert!(!c.console);
        let c = resolve(
            &ExportCli::default(),
            &[
                ("OTEL_TRACES_EXPORTER", "otlp"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ],
        )
        .unwrap();
        assert_eq!(c.otlp.unwrap().endpoint, "http://localhost:4317");
        // `console` alone, even with an OTLP endpoint.
        let c = resolve(
            &cli_endpoint("http://c:4318"),
            &[("OTEL_TRACES_EXPORTER", "console")],
        )
        .unwrap();
        assert_eq!((c.otlp, c.zipkin, c.console), (None, None, true));
    }

    #[test]
    fn bad_zipkin_settings_are_named() {
        let err =
            resolve(&ExportCli::default(), &[("OTEL_TRACES_EXPORTER", "jaeger")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid traces exporter \"jaeger\" in OTEL_TRACES_EXPORTER: expected a comma-separated list of otlp, zipkin, console"
        );
        assert!(
            resolve(
                &ExportCli::default(),
                &[("OTEL_TRACES_EXPORTER", "zipkin,")]
            )
            .is_err()
        );
        let err = resolve(&zipkin_cli("zipkin:9411"), &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid Zipkin endpoint \"zipkin:9411\" from --zipkin-endpoint (or SOCKTRACE_ZIPKIN_ENDPOINT): unsupported scheme \"zipkin\" (expected http or https)"
        );
        let err = resolve(
            &ExportCli::default(),
            &[
                ("OTEL_TRACES_EXPORTER", "zipkin"),
                ("OTEL_EXPORTER_ZIPKIN_ENDPOINT", "not a url"),
            ],
        )
        .unwrap_err();
        assert!(
            matches!(err, ConfigError::InvalidZipkinEndpoint { ref origin, .. } if origin == "OTEL_EXPORTER_ZIPKIN_ENDPOINT"),
            "{err}"
        );
        let err = resolve(
            &zipkin_cli("http://z:9411/api/v2/spans"),
            &[("OTEL_EXPORTER_ZIPKIN_TIMEOUT", "5s")],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value \"5s\" for OTEL_EXPORTER_ZIPKIN_TIMEOUT: expected a positive integer number of milliseconds"
        );
    }
}
