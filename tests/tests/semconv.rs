//! Every attribute and metric name the agent emits is one of the OpenTelemetry semantic
//! conventions registry, and not a deprecated one (except the old RPC names that
//! `OTEL_SEMCONV_STABILITY_OPT_IN=rpc/dup` asks for), or one of socktrace's own names listed
//! below with the reason it has no convention.
//!
//! The registry is the npm package `@opentelemetry/semantic-conventions` of the version pinned
//! in `tests/peers/semconv-npm.txt` (generated from the conventions' YAML model at each release;
//! its declarations hold every attribute and metric with its deprecation), which `cargo xtask
//! test` installs under `target/semconv` (`SOCKTRACE_SEMCONV` may name another copy).
//!
//! What the agent emits is found by running it, without root: every recorded connection of
//! every protocol (`agent/tests/data/`) goes through the protocol registry and the span
//! builders as a client and as a server span, in both RPC modes; the spans carry the resource
//! a process in a Kubernetes pod gets; the RED metrics and the service graph are computed from
//! them and encoded as the OTLP metrics request the exporter sends.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::Arc,
};

use opentelemetry_proto::tonic::{
    common::v1::KeyValue as ProtoKeyValue, metrics::v1::metric::Data,
};
use socktrace::{
    export::metrics::build_request,
    metrics::Metrics,
    protocol::{
        Enabled, Exchange, Next, REGISTRY, Sender, SpanConfig,
        opaque_tls::OpaqueTls,
        recording::{RecEvent, To, parse_rec},
    },
    resource::{
        k8s::{ContainerMeta, K8sMetadata, Owners, PodIndex, PodMeta},
        process::{ProcInfo, build_resource},
    },
    telemetry::Snapshot,
    trace::{
        db::{DbSpanConfig, QueryText},
        http::HttpSpanConfig,
        rpc::RpcConventions,
        span::{ConnMeta, KeyValue, Resource, Span, SpanKind},
    },
};

/// socktrace's own span attributes: no convention describes them, so they carry socktrace's
/// namespace.
const OWN_ATTRIBUTES: &[(&str, &str)] = &[
    (
        "socktrace.partial",
        "the span was built from an incomplete capture (bytes lost, joined mid-stream)",
    ),
    (
        "socktrace.redis.args_count",
        "arguments of a Redis command: its size without exporting any value",
    ),
    (
        "socktrace.redis.key_count",
        "keys a Redis command names, from the command table",
    ),
    (
        "socktrace.mysql.command",
        "the MySQL protocol command (COM_QUERY, COM_STMT_EXECUTE), which db.operation.name is not",
    ),
    (
        "socktrace.mysql.statement_id",
        "the server's id of a prepared statement, to pair PREPARE and EXECUTE",
    ),
    (
        "socktrace.postgresql.prepared_statement",
        "the name of a statement prepared before the agent saw it (no query text known)",
    ),
    (
        "socktrace.link.reason",
        "why a span has span links to candidate parents instead of a parent (ambiguous_event_loop)",
    ),
    (
        "socktrace.link.candidates",
        "how many candidate parents a span without a parent links to",
    ),
    (
        "socktrace.instrumented_process",
        "the span's process traces itself (--instrumented-processes link): its tracer has a span for the same operation",
    ),
];

/// Names of other specifications that dashboards expect as they are.
const FOREIGN_NAMES: &[(&str, &str)] = &[
    (
        "otel.metric.overflow",
        "the metrics SDK specification's attribute of the series past the cardinality limit",
    ),
    (
        "traces_service_graph_request_total",
        "service graph: the OpenTelemetry Collector servicegraph connector's and Tempo's names",
    ),
    ("traces_service_graph_request_failed_total", "service graph"),
    (
        "traces_service_graph_request_server_seconds",
        "service graph",
    ),
    (
        "traces_service_graph_request_client_seconds",
        "service graph",
    ),
    ("client", "service graph label: the client service"),
    ("server", "service graph label: the server service"),
    (
        "connection_type",
        "service graph label: virtual_node, database",
    ),
];

/// The agent's own counters are metrics named `socktrace.<stage>.<counter>`.
const OWN_METRIC_PREFIX: &str = "socktrace.";

/// The names of semantic conventions 1.37 that `rpc/dup` adds, deprecated since.
const DUP_ONLY: &[&str] = &[
    "rpc.system",
    "rpc.service",
    "rpc.grpc.status_code",
    "rpc.server.duration",
    "rpc.client.duration",
];

// ---- the registry ----

/// Every attribute and metric of the registry, with whether it is deprecated.
struct Registry {
    attributes: BTreeMap<String, bool>,
    /// Template attributes (`k8s.pod.label.<key>`): their prefix.
    templates: BTreeMap<String, bool>,
    metrics: BTreeMap<String, bool>,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_owned()
}

/// `@opentelemetry/semantic-conventions@1.45.0` -> `1.45.0`.
fn pinned_version() -> String {
    let pin = std::fs::read_to_string(workspace().join("tests/peers/semconv-npm.txt"))
        .expect("tests/peers/semconv-npm.txt");
    let line = pin
        .lines()
        .find(|l| !l.starts_with('#') && !l.trim().is_empty())
        .expect("a package line");
    line.trim()
        .rsplit_once('@')
        .expect("name@version")
        .1
        .to_owned()
}

fn package_dir() -> PathBuf {
    std::env::var_os("SOCKTRACE_SEMCONV").map_or_else(
        || workspace().join("target/semconv/node_modules/@opentelemetry/semantic-conventions"),
        PathBuf::from,
    )
}

/// Each `declare const NAME: TYPE;` of a declaration file: the name, the string value (None for
/// a template function), and whether its doc comment says `@deprecated`.
fn declarations(dts: &str) -> Vec<(String, Option<String>, bool)> {
    const DECLARE: &str = "declare const ";
    let mut out = Vec::new();
    let mut prev_end = 0;
    while let Some(at) = dts[prev_end..].find(DECLARE).map(|i| i + prev_end) {
        let doc = &dts[prev_end..at];
        let doc = doc.rfind("/**").map_or("", |i| &doc[i..]);
        let rest = &dts[at + DECLARE.len()..];
        let colon = rest.find(':').expect("declare const NAME:");
        let end = rest.find(';').expect("declaration ends with ;");
        let ty = rest[colon + 1..end].trim();
        let value = ty
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .map(str::to_owned);
        out.push((
            rest[..colon].trim().to_owned(),
            value,
            doc.contains("@deprecated"),
        ));
        prev_end = at + DECLARE.len() + end;
    }
    out
}

/// The prefix of a template attribute: `const NAME = (key) => \`prefix.${key}\`;` in the module.
fn template_prefix(module: &str, name: &str) -> String {
    let head = format!("const {name} = (key) => `");
    let at = module
        .find(&head)
        .unwrap_or_else(|| panic!("{name} is no template in the module"));
    let rest = &module[at + head.len()..];
    rest[..rest.find("${key}").expect("template")].to_owned()
}

fn load_registry() -> Registry {
    let dir = package_dir();
    let package = std::fs::read_to_string(dir.join("package.json")).unwrap_or_else(|e| {
        panic!(
            "the semantic-conventions registry is not installed at {} ({e}): \
             `cargo xtask test` installs it (npm package of tests/peers/semconv-npm.txt)",
            dir.display()
        )
    });
    let package: serde_json::Value = serde_json::from_str(&package).expect("package.json");
    assert_eq!(
        package["version"].as_str(),
        Some(pinned_version().as_str()),
        "{} holds another version than tests/peers/semconv-npm.txt: run `cargo xtask test`",
        dir.display()
    );
    let mut registry = Registry {
        attributes: BTreeMap::new(),
        templates: BTreeMap::new(),
        metrics: BTreeMap::new(),
    };
    for file in [
        "stable_attributes",
        "experimental_attributes",
        "stable_metrics",
        "experimental_metrics",
    ] {
        let read = |ext: &str| {
            let path = dir.join("dist").join(format!("{file}.{ext}"));
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        };
        let (dts, module) = (read("d.mts"), read("mjs"));
        for (name, value, deprecated) in declarations(&dts) {
            if name.starts_with("ATTR_") {
                match value {
                    Some(v) => registry.attributes.insert(v, deprecated),
                    None => registry
                        .templates
                        .insert(template_prefix(&module, &name), deprecated),
                };
            } else if name.starts_with("METRIC_") {
                let v = value.unwrap_or_else(|| panic!("{name} has no value"));
                registry.metrics.insert(v, deprecated);
            }
        }
    }
    registry
}

impl Registry {
    /// `Some(deprecated)` for a registry attribute (a template's prefix included).
    fn attribute(&self, name: &str) -> Option<bool> {
        self.attributes.get(name).copied().or_else(|| {
            self.templates
                .iter()
                .find(|(prefix, _)| name.starts_with(prefix.as_str()) && name.len() > prefix.len())
                .map(|(_, d)| *d)
        })
    }
}

#[test]
fn the_registry_is_read_whole() {
    let r = load_registry();
    // A broken parser would find few names or lose the deprecations.
    assert!(
        r.attributes.len() > 900,
        "{} attributes",
        r.attributes.len()
    );
    assert!(r.metrics.len() > 500, "{} metrics", r.metrics.len());
    assert_eq!(r.attribute("http.request.method"), Some(false));
    assert_eq!(r.attribute("rpc.system.name"), Some(false));
    assert_eq!(r.attribute("rpc.status_code"), Some(false));
    assert_eq!(r.attribute("rpc.system"), Some(true));
    assert_eq!(r.attribute("rpc.grpc.status_code"), Some(true));
    assert_eq!(r.attribute("rpc.response.status_code"), Some(true));
    assert_eq!(r.attribute("k8s.pod.label.app"), Some(false));
    assert_eq!(r.attribute("k8s.pod.label."), None);
    assert_eq!(r.attribute("no.such.attribute"), None);
    assert_eq!(r.metrics.get("rpc.server.call.duration"), Some(&false));
    assert_eq!(r.metrics.get("rpc.server.duration"), Some(&true));
    assert_eq!(r.metrics.get("http.server.request.duration"), Some(&false));
}

// ---- what the agent emits ----

/// The resource of a process in a Kubernetes pod owned by every kind of workload: every
/// resource attribute the agent can set (those of `OTEL_RESOURCE_ATTRIBUTES` are the
/// process's own).
fn resource() -> Arc<Resource> {
    let proc = ProcInfo {
        pid: 4242,
        exe_name: "server".to_owned(),
        exe_path: Some("/usr/bin/server".to_owned()),
        start_time: 1,
        container_id: Some("0123456789abcdef".to_owned()),
        otel_service_name: None,
        env_attributes: Vec::new(),
        read_env: true,
        read_cgroup: true,
    };
    let k8s = K8sMetadata {
        index: Arc::new(PodIndex::default()),
        node_name: "node-1".to_owned(),
        cluster_name: Some("cluster".to_owned()),
    };
    let some = |s: &str| Some(s.to_owned());
    let pod = ContainerMeta {
        pod: Arc::new(PodMeta {
            namespace: "shop".to_owned(),
            name: "cart-1".to_owned(),
            uid: "uid-1".to_owned(),
            service_name_annotation: None,
            app_name_label: None,
            owners: Owners {
                deployment: some("cart"),
                replicaset: some("cart-7d"),
                statefulset: some("db"),
                daemonset: some("agent"),
                cronjob: some("nightly"),
                job: some("nightly-1"),
            },
        }),
        container_name: "cart".to_owned(),
    };
    Arc::new(build_resource(&proc, "host-1", Some(&k8s), Some(&pod), 1))
}

fn span_config(rpc: RpcConventions) -> SpanConfig {
    SpanConfig {
        enabled: Enabled::all(),
        http: HttpSpanConfig {
            route_heuristic: true,
        },
        // Raw: the mode that exports the most (server error messages too).
        db: DbSpanConfig {
            query_text: QueryText::Raw,
        },
        rpc,
        http_stats: Arc::default(),
    }
}

/// Every exchange of one recorded connection, parsed as the connection layer would.
fn exchanges(events: &[RecEvent], enabled: &Enabled) -> Vec<Box<dyn Exchange>> {
    let sender = |to| match to {
        To::Server => Sender::Client,
        To::Client => Sender::Server,
    };
    // Detection on the first bytes of either side (a MySQL server speaks first).
    let firsts = [To::Server, To::Client].map(|to| {
        events
            .iter()
            .find(|e| e.to == to)
            .map(|e| e.seg.data.clone())
    });
    let Some(mut session) = firsts.iter().flatten().find_map(|first| {
        REGISTRY
            .iter()
            .find_map(|p| p.detect(first, enabled))
            .map(|d| d.session)
    }) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut last_ts = 0;
    for ev in events {
        last_ts = ev.seg.ts_ns;
        session.push(sender(ev.to), ev.seg.clone());
        if let Next::Switch(_, next) = session.drain(enabled, &mut out) {
            session = next;
        }
    }
    session.close(last_ts + 1);
    let _ = session.drain(enabled, &mut out);
    out
}

/// Every span of every recording (and of its first half), as client and as server spans, per
/// protocol directory.
fn spans(rpc: RpcConventions) -> BTreeMap<&'static str, Vec<Span>> {
    let config = span_config(rpc);
    let resource = resource();
    let mut out = BTreeMap::new();
    let meta = |kind| ConnMeta {
        tls: true,
        kind,
        local: "10.1.0.1:40000".parse().expect("addr"),
        peer: "10.1.0.2:443".parse().expect("addr"),
        resource: resource.clone(),
    };
    // The span of a TLS connection whose plaintext could not be read.
    let opaque = OpaqueTls {
        start_ns: 1,
        end_ns: 2,
    };
    out.insert(
        "opaque_tls",
        [SpanKind::Client, SpanKind::Server]
            .into_iter()
            .filter_map(|kind| opaque.build(&meta(kind), &config, &|t| t))
            .collect(),
    );
    for protocol in ["http1", "http2", "postgres", "mysql", "redis"] {
        let dir = workspace().join("agent/tests/data").join(protocol);
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "rec"))
            .collect();
        names.sort();
        let mut spans = Vec::new();
        for path in &names {
            let raw = std::fs::read(path).expect("recording");
            let events = parse_rec(&raw, &path.display().to_string());
            // Whole, and cut off half-way as by a connection the agent lost track of: what
            // partial and unanswered exchanges carry too.
            let halves = [&events[..], &events[..events.len() / 2]];
            for exchange in halves.iter().flat_map(|e| exchanges(e, &config.enabled)) {
                for kind in [SpanKind::Client, SpanKind::Server] {
                    let meta = ConnMeta {
                        tls: false,
                        kind,
                        local: "10.1.0.1:40000".parse().expect("addr"),
                        peer: "10.1.0.2:5432".parse().expect("addr"),
                        resource: resource.clone(),
                    };
                    spans.extend(exchange.build(&meta, &config, &|t| t));
                }
            }
        }
        out.insert(protocol, spans);
    }
    out
}

/// Every name emitted: span and resource attribute keys, metric names, metric point attribute
/// keys.
#[derive(Default)]
struct Emitted {
    attributes: BTreeSet<String>,
    metrics: BTreeSet<String>,
}

fn add_keys(into: &mut BTreeSet<String>, kvs: &[KeyValue]) {
    into.extend(kvs.iter().map(|kv| kv.key.to_string()));
}

fn add_proto_keys(into: &mut BTreeSet<String>, kvs: &[ProtoKeyValue]) {
    into.extend(kvs.iter().map(|kv| kv.key.clone()));
}

fn emitted(rpc: RpcConventions) -> Emitted {
    let mut e = Emitted::default();
    let by_protocol = spans(rpc);
    for (protocol, spans) in &by_protocol {
        // One span per side for an unreadable TLS connection; recordings give more.
        let least = if *protocol == "opaque_tls" { 2 } else { 4 };
        assert!(
            spans.len() >= least,
            "{protocol}: only {} spans",
            spans.len()
        );
    }
    let all: Vec<Span> = by_protocol.into_values().flatten().collect();
    for s in &all {
        add_keys(&mut e.attributes, &s.attributes);
        add_keys(&mut e.attributes, &s.resource.attributes);
    }
    // The metrics of those spans, as the OTLP exporter sends them.
    let metrics = Metrics::default();
    metrics.record(&all);
    let collected = metrics.collect(true).expect("collect");
    let mut telemetry = Snapshot::default();
    telemetry.counter("export", "spans_exported", "Spans accepted.", 3);
    telemetry.gauge("export", "pending", "Spans waiting.", 1);
    let agent_resource = [
        KeyValue::new("service.name", "socktrace"),
        KeyValue::new("service.version", "0"),
        KeyValue::new("host.name", "host-1"),
        KeyValue::new("process.pid", 1i64),
    ];
    let (request, points) = build_request(Some(&collected), &telemetry, &agent_resource);
    assert!(points > 0);
    for rm in &request.resource_metrics {
        if let Some(r) = &rm.resource {
            add_proto_keys(&mut e.attributes, &r.attributes);
        }
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                e.metrics.insert(m.name.clone());
                let keys = &mut e.attributes;
                match &m.data {
                    Some(Data::Histogram(h)) => {
                        for p in &h.data_points {
                            add_proto_keys(keys, &p.attributes);
                        }
                    }
                    Some(Data::Sum(s)) => {
                        for p in &s.data_points {
                            add_proto_keys(keys, &p.attributes);
                        }
                    }
                    Some(Data::Gauge(g)) => {
                        for p in &g.data_points {
                            add_proto_keys(keys, &p.attributes);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    e
}

fn allowed(name: &str) -> bool {
    OWN_ATTRIBUTES
        .iter()
        .chain(FOREIGN_NAMES)
        .any(|(n, _)| *n == name)
}

/// The names of one mode that are not registry names in good standing: (unknown, deprecated).
fn check(e: &Emitted, r: &Registry) -> (Vec<String>, Vec<String>) {
    let (mut unknown, mut deprecated) = (Vec::new(), Vec::new());
    for a in &e.attributes {
        match r.attribute(a) {
            Some(false) => {}
            Some(true) => deprecated.push(a.clone()),
            None if allowed(a) => {}
            None => unknown.push(a.clone()),
        }
    }
    for m in &e.metrics {
        match r.metrics.get(m) {
            Some(false) => {}
            Some(true) => deprecated.push(m.clone()),
            None if allowed(m) || m.starts_with(OWN_METRIC_PREFIX) => {}
            None => unknown.push(m.clone()),
        }
    }
    (unknown, deprecated)
}

#[test]
fn every_emitted_name_is_in_the_registry_or_ours() {
    let r = load_registry();
    // The allow-list holds no registry name (it would not be needed) and only names of our
    // own namespace, besides the other specifications' names.
    for (name, reason) in OWN_ATTRIBUTES.iter().chain(FOREIGN_NAMES) {
        assert!(!reason.is_empty());
        assert_eq!(r.attribute(name), None, "{name} is a registry attribute");
        assert!(
            !r.metrics.contains_key(*name),
            "{name} is a registry metric"
        );
    }
    for (name, _) in OWN_ATTRIBUTES {
        assert!(name.starts_with("socktrace."), "{name}");
    }

    let stable = emitted(RpcConventions::Stable);
    let (unknown, deprecated) = check(&stable, &r);
    assert!(
        unknown.is_empty(),
        "names the registry does not know (add them to the allow-list, namespaced, only if \
         no convention fits): {unknown:?}"
    );
    assert!(deprecated.is_empty(), "deprecated names: {deprecated:?}");
    // What the test must have seen to mean anything: each protocol's conventions, the stable
    // RPC names, resources and metrics.
    for name in [
        "http.request.method",
        "http.response.status_code",
        "url.path",
        "url.full",
        "rpc.system.name",
        "rpc.method",
        "rpc.status_code",
        "db.system.name",
        "db.query.text",
        "db.operation.name",
        "server.address",
        "k8s.pod.name",
        "k8s.deployment.name",
        "container.id",
        "service.name",
        "socktrace.redis.key_count",
        "socktrace.partial",
    ] {
        assert!(stable.attributes.contains(name), "{name} not emitted");
    }
    for name in [
        "http.server.request.duration",
        "http.client.request.duration",
        "rpc.server.call.duration",
        "rpc.client.call.duration",
        "db.client.operation.duration",
        "traces_service_graph_request_total",
        "socktrace.export.spans_exported",
    ] {
        assert!(stable.metrics.contains(name), "{name} not emitted");
    }

    // rpc/dup: the same, plus exactly the old RPC names.
    let dup = emitted(RpcConventions::Dup);
    let (unknown, deprecated) = check(&dup, &r);
    assert!(unknown.is_empty(), "{unknown:?}");
    let deprecated: BTreeSet<&str> = deprecated.iter().map(String::as_str).collect();
    assert_eq!(deprecated, DUP_ONLY.iter().copied().collect());
    assert!(dup.attributes.is_superset(&stable.attributes));
    assert!(dup.metrics.is_superset(&stable.metrics));
}
