//! RED metrics and the service graph, computed by the real agent from real traffic (a Python
//! HTTP server and curl), arrive over OTLP (both transports) and on `--metrics-listen` with the
//! exact counts of the requests made.

use std::time::{Duration, Instant};

use socktrace_tests::{
    harness::{Agent, PyServer, curl, free_port, prom, require_root},
    otlp_receiver::{OtlpReceiver, PointValue, Protocol, ReceivedPoint, ReceivedSpan},
};

const OK: usize = 7;
const FAILED: usize = 3;

fn histogram<'a>(
    points: &'a [ReceivedPoint],
    metric: &str,
    service: &str,
    status: i64,
) -> Vec<&'a ReceivedPoint> {
    points
        .iter()
        .filter(|p| {
            p.metric == metric
                && p.resource_str("service.name") == Some(service)
                && p.attr_int("http.response.status_code") == Some(status)
        })
        .collect()
}

fn count_of(points: &[&ReceivedPoint]) -> u64 {
    points.iter().filter_map(|p| p.count()).sum()
}

fn edge<'a>(points: &'a [ReceivedPoint], metric: &str) -> Option<&'a ReceivedPoint> {
    points.iter().find(|p| {
        p.metric == metric
            && p.attr_str("client") == Some("curl")
            && p.attr_str("server") == Some("py-server")
    })
}

/// One line per point, for assertion messages.
fn lines(points: &[ReceivedPoint]) -> String {
    points
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A runtime to wait on the receiver from a plain test.
fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn run(protocol: Protocol) {
    require_root();
    let receiver = OtlpReceiver::start_blocking(protocol);
    let server = PyServer::start(&[("OTEL_SERVICE_NAME", "py-server")]);
    let prom_addr = format!("127.0.0.1:{}", free_port());
    let proto = match protocol {
        Protocol::Grpc => "grpc",
        Protocol::HttpProtobuf => "http/protobuf",
    };
    let mut agent = Agent::start_with_env(
        &[
            "--otlp-endpoint",
            &receiver.endpoint(),
            "--otlp-protocol",
            proto,
            "--metrics-listen",
            &prom_addr,
        ],
        &[("OTEL_METRIC_EXPORT_INTERVAL", "500")],
    );
    assert!(
        agent
            .stderr()
            .contains(&format!("; Prometheus: http://{prom_addr}/metrics")),
        "{}",
        agent.stderr()
    );

    for i in 0..OK {
        curl(&[&server.url(&format!("/item/{i}"))]);
    }
    for _ in 0..FAILED {
        curl(&[&server.url("/status/500")]);
    }

    let rt = current_thread();
    let points = rt
        .block_on(receiver.wait_for_metrics(
            |p| {
                count_of(&histogram(
                    p,
                    "http.server.request.duration",
                    "py-server",
                    200,
                )) >= OK as u64
                    && count_of(&histogram(
                        p,
                        "http.server.request.duration",
                        "py-server",
                        500,
                    )) >= FAILED as u64
                    && count_of(&histogram(p, "http.client.request.duration", "curl", 500))
                        >= FAILED as u64
                    // The agent's counters are published each second, the first time a
                    // second after start.
                    && p.iter().any(|p| p.metric == "socktrace.pipeline.spans")
                    && edge(p, "traces_service_graph_request_total")
                        .and_then(ReceivedPoint::count)
                        .is_some_and(|n| n >= (OK + FAILED) as u64)
            },
            Duration::from_secs(30),
        ))
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.stderr()));
    let dump = || lines(&points);

    // Server side: one series per route and status, exact counts, buckets adding up.
    let ok = histogram(&points, "http.server.request.duration", "py-server", 200);
    assert_eq!(ok.len(), 1, "{}", dump());
    let p = ok[0];
    assert_eq!(p.unit, "s");
    assert_eq!(p.scope, "socktrace");
    assert_eq!(p.attr_str("http.route"), Some("/item/{id}"), "{p}");
    assert_eq!(p.attr_str("http.request.method"), Some("GET"), "{p}");
    assert!(!p.attributes.contains_key("url.path"), "no raw paths: {p}");
    let PointValue::Histogram {
        count,
        sum,
        bounds,
        counts,
        cumulative,
    } = &p.value
    else {
        panic!("{p}")
    };
    assert_eq!(*count, OK as u64);
    assert!(*cumulative);
    assert_eq!(counts.iter().sum::<u64>(), OK as u64, "{p}");
    assert_eq!(
        bounds,
        &[
            0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0
        ]
    );
    assert!(*sum > 0.0 && *sum < 30.0, "{p}");
    let failed = histogram(&points, "http.server.request.duration", "py-server", 500);
    assert_eq!(failed.len(), 1, "{}", dump());
    assert_eq!(failed[0].count(), Some(FAILED as u64));
    assert_eq!(failed[0].attr_str("http.route"), Some("/status/{id}"));
    assert_eq!(failed[0].attr_str("error.type"), Some("500"));
    // Nothing else for this server.
    let server_total: u64 = points
        .iter()
        .filter(|p| {
            p.metric == "http.server.request.duration"
                && p.resource_str("service.name") == Some("py-server")
        })
        .filter_map(ReceivedPoint::count)
        .sum();
    assert_eq!(server_total, (OK + FAILED) as u64, "{}", dump());

    // Client side: curl's requests, by status, with the server's address.
    let client_ok = histogram(&points, "http.client.request.duration", "curl", 200);
    assert_eq!(count_of(&client_ok), OK as u64, "{}", dump());
    assert_eq!(client_ok[0].attr_str("server.address"), Some("127.0.0.1"));
    assert_eq!(
        client_ok[0].attr_int("server.port"),
        Some(i64::from(server.port))
    );
    let client_failed = histogram(&points, "http.client.request.duration", "curl", 500);
    assert_eq!(count_of(&client_failed), FAILED as u64, "{}", dump());

    // The service graph: curl -> py-server, 10 requests, 3 failed, seen from both sides.
    let total = edge(&points, "traces_service_graph_request_total").expect("edge");
    assert_eq!(total.count(), Some((OK + FAILED) as u64), "{}", dump());
    assert_eq!(total.attr_str("connection_type"), Some(""));
    assert_eq!(total.resource_str("service.name"), Some("socktrace"));
    assert_eq!(total.scope, "traces_service_graph");
    assert!(matches!(
        total.value,
        PointValue::Sum {
            monotonic: true,
            cumulative: true,
            ..
        }
    ));
    let failed = edge(&points, "traces_service_graph_request_failed_total").expect("failed");
    assert_eq!(failed.count(), Some(FAILED as u64), "{}", dump());
    for side in ["server", "client"] {
        let h = edge(
            &points,
            &format!("traces_service_graph_request_{side}_seconds"),
        )
        .unwrap_or_else(|| panic!("{side} histogram\n{}", dump()));
        assert_eq!(h.count(), Some((OK + FAILED) as u64), "{h}");
    }

    // The agent's own counters, as real metrics under its own resource.
    let spans = points
        .iter()
        .find(|p| p.metric == "socktrace.pipeline.spans")
        .unwrap_or_else(|| panic!("no agent counters\n{}", dump()));
    assert_eq!(spans.resource_str("service.name"), Some("socktrace"));
    assert!(spans.count().is_some_and(|n| n >= 2 * (OK + FAILED) as u64));
    assert!(
        points
            .iter()
            .any(|p| p.metric == "socktrace.export.pending"
                && matches!(p.value, PointValue::Gauge(_))),
        "{}",
        dump()
    );

    // The same numbers on the Prometheus endpoint (published every second).
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = curl(&[&format!("http://{prom_addr}/metrics")]);
        if prom(&text, "socktrace_pipeline_spans_total", &[]).is_empty()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        break text;
    };
    let svc = "service_name=\"py-server\"";
    assert_eq!(
        prom(
            &text,
            "http_server_request_duration_seconds_count",
            &[
                svc,
                "http_route=\"/item/{id}\"",
                "http_response_status_code=\"200\""
            ]
        ),
        [OK as u64],
        "{text}"
    );
    assert_eq!(
        prom(
            &text,
            "http_server_request_duration_seconds_bucket",
            &[svc, "http_route=\"/item/{id}\"", "le=\"+Inf\""]
        ),
        [OK as u64],
        "{text}"
    );
    assert_eq!(
        prom(
            &text,
            "http_server_request_duration_seconds_count",
            &[
                svc,
                "http_route=\"/status/{id}\"",
                "http_response_status_code=\"500\""
            ]
        ),
        [FAILED as u64],
        "{text}"
    );
    let pair = ["client=\"curl\"", "server=\"py-server\""];
    assert_eq!(
        prom(&text, "traces_service_graph_request_total", &pair),
        [(OK + FAILED) as u64],
        "{text}"
    );
    assert_eq!(
        prom(&text, "traces_service_graph_request_failed_total", &pair),
        [FAILED as u64],
        "{text}"
    );
    assert_eq!(
        prom(
            &text,
            "traces_service_graph_request_server_seconds_count",
            &pair
        ),
        [(OK + FAILED) as u64],
        "{text}"
    );
    assert!(text.contains("\nsocktrace_export_pending "), "{text}");
    // Only /metrics there.
    let probe = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{prom_addr}/healthz"),
    ]);
    assert_eq!(probe, "404");

    assert_eq!(agent.stop(), Some(0));
    let stderr = agent.stderr();
    assert!(
        !stderr.contains("OTLP metrics export to"),
        "metrics export never failed:\n{stderr}"
    );
}

#[test]
fn red_metrics_and_service_graph_over_otlp_http_and_prometheus() {
    run(Protocol::HttpProtobuf);
}

#[test]
fn red_metrics_and_service_graph_over_otlp_grpc() {
    run(Protocol::Grpc);
}

/// PostgreSQL: `db.client.operation.duration` per operation and SQLSTATE, and the edge from
/// psql to the PostgreSQL server (whose SERVER spans are the children of psql's CLIENT spans).
#[test]
fn database_operations_and_the_edge_to_postgresql() {
    use socktrace_tests::pg::PgServer;
    require_root();
    let receiver = OtlpReceiver::start_blocking(Protocol::Grpc);
    let pg = PgServer::start("shop");
    let port = pg.port.to_string();
    let mut agent = Agent::start_with_env(
        &[
            "--otlp-endpoint",
            &receiver.endpoint(),
            "--otlp-protocol",
            "grpc",
            "--protocols",
            "postgres",
            "--port",
            &port,
        ],
        &[("OTEL_METRIC_EXPORT_INTERVAL", "500")],
    );
    const SELECTS: u64 = 4;
    const ERRORS: u64 = 2;
    for i in 0..SELECTS {
        let o = pg.psql("shop", &["-c", &format!("SELECT {i}")]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    for _ in 0..ERRORS {
        assert!(!pg.psql("shop", &["-c", "SELEC 1"]).status.success());
    }
    let db_count = |p: &[ReceivedPoint], op: &str, sqlstate: Option<&str>| -> u64 {
        p.iter()
            .filter(|p| {
                p.metric == "db.client.operation.duration"
                    && p.resource_str("service.name") == Some("psql")
                    && p.attr_str("db.operation.name") == Some(op)
                    && p.attr_str("db.response.status_code") == sqlstate
            })
            .filter_map(ReceivedPoint::count)
            .sum()
    };
    let psql_edge = |p: &[ReceivedPoint], metric: &str| -> Option<(String, u64)> {
        p.iter()
            .find(|p| {
                p.metric == metric
                    && p.attr_str("client") == Some("psql")
                    && p.attr_str("connection_type") == Some("database")
            })
            .map(|p| {
                (
                    p.attr_str("server").unwrap_or_default().to_owned(),
                    p.count().unwrap_or_default(),
                )
            })
    };
    let rt = current_thread();
    let points = rt
        .block_on(receiver.wait_for_metrics(
            |p| {
                db_count(p, "SELECT", None) >= SELECTS
                    && db_count(p, "SELEC", Some("42601")) >= ERRORS
                    && psql_edge(p, "traces_service_graph_request_total")
                        .is_some_and(|(_, n)| n >= SELECTS + ERRORS)
            },
            Duration::from_secs(30),
        ))
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.stderr()));
    let dump = lines(&points);
    assert_eq!(db_count(&points, "SELECT", None), SELECTS, "{dump}");
    assert_eq!(db_count(&points, "SELEC", Some("42601")), ERRORS, "{dump}");
    let select = points
        .iter()
        .find(|p| {
            p.metric == "db.client.operation.duration"
                && p.attr_str("db.operation.name") == Some("SELECT")
        })
        .expect("select");
    assert_eq!(select.unit, "s");
    assert_eq!(select.attr_str("db.system.name"), Some("postgresql"));
    assert_eq!(select.attr_str("db.namespace"), Some("shop"));
    assert_eq!(select.attr_int("server.port"), Some(i64::from(pg.port)));
    assert!(
        !select.attributes.contains_key("db.query.text"),
        "no query text in metrics: {select}"
    );
    let PointValue::Histogram { bounds, .. } = &select.value else {
        panic!("{select}")
    };
    assert_eq!(
        bounds,
        &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0]
    );
    // No RED metric of the database server's own spans.
    assert!(
        !points
            .iter()
            .any(|p| p.metric.starts_with("db.") && p.resource_str("service.name") != Some("psql")),
        "{dump}"
    );

    // The edge pairs psql's spans with the server's: named after the server's service.
    // (Metrics are computed before the spans' batch is sent: wait for the spans.)
    let is_server = |s: &ReceivedSpan| {
        s.kind() == opentelemetry_proto::tonic::trace::v1::span::SpanKind::Server
    };
    let spans = rt
        .block_on(receiver.wait_for(|s| s.iter().any(is_server), Duration::from_secs(30)))
        .unwrap_or_else(|e| panic!("{e}"));
    let server_service = spans
        .iter()
        .find(|s| is_server(s))
        .and_then(|s| s.resource_str("service.name").map(str::to_owned))
        .expect("a PostgreSQL server span");
    let (server, total) = psql_edge(&points, "traces_service_graph_request_total").expect("edge");
    assert_eq!(server, server_service, "{dump}");
    assert_eq!(total, SELECTS + ERRORS, "{dump}");
    let (_, failed) =
        psql_edge(&points, "traces_service_graph_request_failed_total").expect("failed");
    assert_eq!(failed, ERRORS, "{dump}");
    assert_eq!(agent.stop(), Some(0));
}

/// Without the agent (no root): the metrics exporter's last request at shutdown, over both
/// transports, carries every span recorded, whatever the interval.
#[test]
fn the_last_metrics_go_out_at_shutdown_over_both_transports() {
    use std::sync::Arc;

    use socktrace::{
        export::{self, ExportCli, MetricsSource, resolve_config},
        metrics::Metrics,
        telemetry::{Published, Snapshot},
        trace::span::{KeyValue, Resource, Span, SpanId, SpanKind, Status, TraceId, Value},
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        rt.block_on(async {
            let receiver = OtlpReceiver::start(protocol).await;
            let cli = ExportCli {
                endpoint: Some(receiver.endpoint()),
                protocol: Some(
                    match protocol {
                        Protocol::Grpc => "grpc",
                        Protocol::HttpProtobuf => "http/protobuf",
                    }
                    .to_owned(),
                ),
                ..ExportCli::default()
            };
            // An hour: only the final export can bring the metrics.
            let config = resolve_config(&cli, &|k| {
                (k == "OTEL_METRIC_EXPORT_INTERVAL").then(|| "3600000".to_owned())
            })
            .expect("config");
            let metrics = Metrics::default();
            let telemetry = Published::default();
            let mut snapshot = Snapshot::default();
            snapshot.counter("pipeline", "spans", "Spans.", 5);
            telemetry.publish(snapshot);
            let handle = export::start_with_metrics(
                config,
                Some(MetricsSource {
                    metrics: metrics.clone(),
                    telemetry,
                    agent_resource: vec![KeyValue::new("service.name", "socktrace")],
                }),
            )
            .expect("exporter");
            let web = Arc::new(Resource {
                key: "pid:1".into(),
                attributes: vec![KeyValue::new("service.name", "web")],
            });
            let spans: Vec<Span> = (0..5u8)
                .map(|n| Span {
                    trace_id: TraceId([n + 1; 16]),
                    span_id: SpanId([n + 1; 8]),
                    // Remote parents: each waits for a client that never comes.
                    parent_span_id: Some(SpanId([0xee; 8])),
                    trace_state: String::new(),
                    parent_sampled: None,
                    name: "GET /".into(),
                    kind: SpanKind::Server,
                    start_unix_nanos: 1_000_000_000,
                    end_unix_nanos: 1_000_000_000 + 3_000_000,
                    attributes: vec![
                        KeyValue::new("http.request.method", Value::text("GET")),
                        KeyValue::new("http.route", "/"),
                        KeyValue::new(
                            "http.response.status_code",
                            if n < 2 { 503i64 } else { 200 },
                        ),
                        KeyValue::new("client.address", "10.9.8.7"),
                    ],
                    status: if n < 2 {
                        Status::Error {
                            message: String::new(),
                        }
                    } else {
                        Status::Unset
                    },
                    links: Vec::new(),
                    resource: web.clone(),
                    scope: "socktrace.http",
                })
                .collect();
            metrics.record(&spans);
            handle.submit_all(spans);
            handle.shutdown().await;

            let requests = receiver.metrics_requests();
            assert_eq!(requests.len(), 1, "{protocol:?}: only the final export");
            let points = receiver.metrics();
            let server = |status: i64| {
                points
                    .iter()
                    .find(|p| {
                        p.metric == "http.server.request.duration"
                            && p.attr_int("http.response.status_code") == Some(status)
                    })
                    .and_then(ReceivedPoint::count)
            };
            assert_eq!(
                (server(200), server(503)),
                (Some(3), Some(2)),
                "{protocol:?}"
            );
            // The sides still waiting at shutdown are completed as virtual edges.
            let edge = |metric: &str| {
                points
                    .iter()
                    .find(|p| {
                        p.metric == metric
                            && p.attr_str("client") == Some("10.9.8.7")
                            && p.attr_str("server") == Some("web")
                            && p.attr_str("connection_type") == Some("virtual_node")
                    })
                    .and_then(ReceivedPoint::count)
            };
            assert_eq!(edge("traces_service_graph_request_total"), Some(5));
            assert_eq!(edge("traces_service_graph_request_failed_total"), Some(2));
            assert_eq!(edge("traces_service_graph_request_client_seconds"), Some(5));
            let counter = points
                .iter()
                .find(|p| p.metric == "socktrace.pipeline.spans")
                .expect("agent counter");
            assert_eq!(counter.count(), Some(5));
            // 2 HTTP series, 4 graph metrics, 1 counter; all accepted.
            let stats = handle.metrics_stats().expect("metrics exporter");
            assert_eq!((stats.points_exported, stats.points_failed), (7, 0));
            // Trace requests are unaffected by the metrics ones.
            assert_eq!(receiver.request_count(), 1, "{protocol:?}");
            assert_eq!(receiver.accepted_span_count(), 5);
        });
    }
}

/// gRPC (grpcio client and server): the stable RPC duration histograms per method and status
/// code on both sides (and not the old ones), and the echo-client -> echo-server edge.
#[test]
fn grpc_calls_give_rpc_durations_and_an_edge() {
    use socktrace_tests::harness::{peer, python};
    require_root();
    let receiver = OtlpReceiver::start_blocking(Protocol::HttpProtobuf);
    let server = PyServer::start_peer(
        &python(),
        "grpc_server.py",
        &[("OTEL_SERVICE_NAME", "echo-server")],
    );
    let port = server.port.to_string();
    let mut agent = Agent::start_with_env(
        &["--otlp-endpoint", &receiver.endpoint(), "--port", &port],
        &[("OTEL_METRIC_EXPORT_INTERVAL", "500")],
    );
    let out = std::process::Command::new(python())
        .arg(peer("grpc_client.py"))
        .args([port.as_str(), "basic"])
        .env("OTEL_SERVICE_NAME", "echo-client")
        .output()
        .expect("running grpc_client.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Unary OK, Unary NOT_FOUND, ServerStream, ClientStream, Bidi.
    const CALLS: u64 = 5;
    let rpc = |p: &[ReceivedPoint], metric: &str, service: &str, method: &str, code: &str| -> u64 {
        let method = format!("socktrace.test.Echo/{method}");
        p.iter()
            .filter(|p| {
                p.metric == metric
                    && p.resource_str("service.name") == Some(service)
                    && p.attr_str("rpc.method") == Some(method.as_str())
                    && p.attr_str("rpc.status_code") == Some(code)
            })
            .filter_map(ReceivedPoint::count)
            .sum()
    };
    let total = |p: &[ReceivedPoint], metric: &str, service: &str| -> u64 {
        p.iter()
            .filter(|p| p.metric == metric && p.resource_str("service.name") == Some(service))
            .filter_map(ReceivedPoint::count)
            .sum()
    };
    let edge_count = |p: &[ReceivedPoint], metric: &str| {
        p.iter()
            .find(|p| {
                p.metric == metric
                    && p.attr_str("client") == Some("echo-client")
                    && p.attr_str("server") == Some("echo-server")
            })
            .and_then(ReceivedPoint::count)
    };
    let rt = current_thread();
    let points = rt
        .block_on(receiver.wait_for_metrics(
            |p| {
                total(p, "rpc.server.call.duration", "echo-server") >= CALLS
                    && total(p, "rpc.client.call.duration", "echo-client") >= CALLS
                    && edge_count(p, "traces_service_graph_request_total")
                        .is_some_and(|n| n >= CALLS)
            },
            Duration::from_secs(30),
        ))
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.stderr()));
    let dump = lines(&points);
    for (metric, service) in [
        ("rpc.server.call.duration", "echo-server"),
        ("rpc.client.call.duration", "echo-client"),
    ] {
        assert_eq!(total(&points, metric, service), CALLS, "{dump}");
        assert_eq!(rpc(&points, metric, service, "Unary", "OK"), 1, "{dump}");
        assert_eq!(
            rpc(&points, metric, service, "Unary", "NOT_FOUND"),
            1,
            "{dump}"
        );
        for method in ["ServerStream", "ClientStream", "Bidi"] {
            assert_eq!(rpc(&points, metric, service, method, "OK"), 1, "{dump}");
        }
    }
    let client = points
        .iter()
        .find(|p| {
            p.metric == "rpc.client.call.duration"
                && p.attr_str("rpc.status_code") == Some("NOT_FOUND")
        })
        .expect("NOT_FOUND");
    assert_eq!(client.unit, "s");
    assert_eq!(client.attr_str("rpc.system.name"), Some("grpc"));
    assert_eq!(client.attr_str("error.type"), Some("NOT_FOUND"));
    assert_eq!(client.attr_int("server.port"), Some(i64::from(server.port)));
    // The server's points leave out server.address (opt-in in the conventions).
    assert!(
        points
            .iter()
            .filter(|p| p.metric == "rpc.server.call.duration")
            .all(|p| p.attr_str("server.address").is_none()),
        "{dump}"
    );
    // Without OTEL_SEMCONV_STABILITY_OPT_IN=rpc/dup, none of the old RPC names.
    assert!(
        !points.iter().any(|p| p.metric == "rpc.server.duration"
            || p.metric == "rpc.client.duration"
            || p.attr_str("rpc.system").is_some()
            || p.attr_int("rpc.grpc.status_code").is_some()),
        "{dump}"
    );
    // No HTTP metric for gRPC calls.
    assert!(
        !points.iter().any(|p| p.metric.starts_with("http.")),
        "{dump}"
    );
    assert_eq!(
        edge_count(&points, "traces_service_graph_request_total"),
        Some(CALLS),
        "{dump}"
    );
    // NOT_FOUND is an error on the client side only, which fails the request.
    assert_eq!(
        edge_count(&points, "traces_service_graph_request_failed_total"),
        Some(1),
        "{dump}"
    );
    assert_eq!(agent.stop(), Some(0));
}
