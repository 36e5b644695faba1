//! The OTLP metrics exporter: every `OTEL_METRIC_EXPORT_INTERVAL` (and once more at shutdown)
//! one `ExportMetricsServiceRequest` with the span metrics ([`crate::metrics`]) under each
//! span's resource, the service graph and the agent's own counters under the agent's resource
//! (`service.name=socktrace`). Temporality is cumulative: every request carries the totals
//! since start, so a request given up on loses nothing the next one does not carry; a request
//! is therefore retried (with the span exporter's client and policy) for at most one interval.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue as ProtoKeyValue, any_value},
    metrics::v1::{
        AggregationTemporality, Gauge, Histogram as ProtoHistogram, HistogramDataPoint, Metric,
        NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric::Data, number_data_point,
    },
    resource::v1::Resource as ProtoResource,
};
use prost::Message as _;
use tokio::time::{Instant, sleep_until};

use super::{
    encode::SCOPE_VERSION,
    otlp::RemoteSink,
    pipeline::{Counters, Shutdown},
};
use crate::{
    metrics::{Collected, Metrics, histogram::Histogram, red::INSTRUMENTS, table::Series},
    telemetry::{Kind, Published, Snapshot},
    trace::span::{KeyValue, Resource, Value},
};

/// Scope of the span metrics and of the agent's counters.
pub const SCOPE: &str = "socktrace";
/// Scope of the service graph, the connector's.
pub const GRAPH_SCOPE: &str = "traces_service_graph";

/// What the metrics exporter reads.
#[derive(Clone, Debug)]
pub struct MetricsSource {
    pub metrics: Metrics,
    /// The agent's counters as the capture thread publishes them.
    pub telemetry: Published,
    /// The agent's own resource (`service.name=socktrace`, ...).
    pub agent_resource: Vec<KeyValue>,
}

fn any(v: &Value) -> AnyValue {
    AnyValue {
        value: Some(match v {
            Value::Str(s) => any_value::Value::StringValue(s.to_string()),
            Value::Int(i) => any_value::Value::IntValue(*i),
            Value::Bool(b) => any_value::Value::BoolValue(*b),
            Value::Double(d) => any_value::Value::DoubleValue(*d),
        }),
    }
}

fn attributes(kvs: &[KeyValue]) -> Vec<ProtoKeyValue> {
    kvs.iter()
        .map(|kv| ProtoKeyValue {
            key: kv.key.to_string(),
            value: Some(any(&kv.value)),
            ..Default::default()
        })
        .collect()
}

fn scope(name: &str) -> Option<InstrumentationScope> {
    Some(InstrumentationScope {
        name: name.to_owned(),
        version: SCOPE_VERSION.to_owned(),
        ..Default::default()
    })
}

const CUMULATIVE: i32 = AggregationTemporality::Cumulative as i32;

fn histogram_point(attrs: &[KeyValue], h: &Histogram, c: &Collected) -> HistogramDataPoint {
    HistogramDataPoint {
        attributes: attributes(attrs),
        start_time_unix_nano: c.start_unix_nanos,
        time_unix_nano: c.time_unix_nanos,
        count: h.count,
        sum: Some(h.sum),
        bucket_counts: h.counts.clone(),
        explicit_bounds: h.bounds.to_vec(),
        min: (h.count > 0).then_some(h.min),
        max: (h.count > 0).then_some(h.max),
        ..Default::default()
    }
}

fn int_point(attrs: Vec<ProtoKeyValue>, v: u64, start: u64, time: u64) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attrs,
        start_time_unix_nano: start,
        time_unix_nano: time,
        value: Some(number_data_point::Value::AsInt(
            i64::try_from(v).unwrap_or(i64::MAX),
        )),
        ..Default::default()
    }
}

fn histogram_metric(
    name: &str,
    description: &str,
    unit: &str,
    points: Vec<HistogramDataPoint>,
) -> Metric {
    Metric {
        name: name.to_owned(),
        description: description.to_owned(),
        unit: unit.to_owned(),
        data: Some(Data::Histogram(ProtoHistogram {
            data_points: points,
            aggregation_temporality: CUMULATIVE,
        })),
        ..Default::default()
    }
}

fn counter_metric(name: &str, description: &str, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.to_owned(),
        description: description.to_owned(),
        unit: "1".to_owned(),
        data: Some(Data::Sum(Sum {
            data_points: points,
            aggregation_temporality: CUMULATIVE,
            is_monotonic: true,
        })),
        ..Default::default()
    }
}

/// The request for one collection, and the number of data points in it.
pub fn build_request(
    collected: Option<&Collected>,
    telemetry: &Snapshot,
    agent_resource: &[KeyValue],
) -> (ExportMetricsServiceRequest, u64) {
    let mut points = 0u64;
    // Span metrics, grouped by resource in order of first appearance.
    let mut by_resource: Vec<(Arc<Resource>, Vec<Metric>)> = Vec::new();
    let mut agent_scopes = Vec::new();
    if let Some(c) = collected {
        for (inst, table) in INSTRUMENTS.iter().zip(&c.red) {
            for s in table.series() {
                let Some(r) = &s.resource else { continue };
                let slot = match by_resource.iter().position(|(x, _)| x.key == r.key) {
                    Some(i) => i,
                    None => {
                        by_resource.push((r.clone(), Vec::new()));
                        by_resource.len() - 1
                    }
                };
                let metrics = &mut by_resource[slot].1;
                let point = histogram_point(&s.attributes, &s.value, c);
                points += 1;
                match metrics.iter_mut().find(|m| m.name == inst.name) {
                    Some(Metric {
                        data: Some(Data::Histogram(h)),
                        ..
                    }) => h.data_points.push(point),
                    _ => metrics.push(histogram_metric(
                        inst.name,
                        inst.description,
                        inst.unit,
                        vec![point],
                    )),
                }
            }
        }
        let edges = c.graph.series();
        if !edges.is_empty() {
            let counter = |f: fn(&crate::metrics::graph::Edge) -> u64| {
                edges
                    .iter()
                    .map(|s: &Series<_>| {
                        int_point(
                            attributes(&s.attributes),
                            f(&s.value),
                            c.start_unix_nanos,
                            c.time_unix_nanos,
                        )
                    })
                    .collect::<Vec<_>>()
            };
            let hist = |f: fn(&crate::metrics::graph::Edge) -> &Histogram| {
                edges
                    .iter()
                    .map(|s| histogram_point(&s.attributes, f(&s.value), c))
                    .collect::<Vec<_>>()
            };
            points += 4 * edges.len() as u64;
            agent_scopes.push(ScopeMetrics {
                scope: scope(GRAPH_SCOPE),
                metrics: vec![
                    counter_metric(
                        "traces_service_graph_request_total",
                        "Total count of requests between two nodes.",
                        counter(|e| e.total),
                    ),
                    counter_metric(
                        "traces_service_graph_request_failed_total",
                        "Total count of failed requests between two nodes.",
                        counter(|e| e.failed),
                    ),
                    histogram_metric(
                        "traces_service_graph_request_server_seconds",
                        "Time for a request between two nodes as seen from the server.",
                        "s",
                        hist(|e| &e.server),
                    ),
                    histogram_metric(
                        "traces_service_graph_request_client_seconds",
                        "Time for a request between two nodes as seen from the client.",
                        "s",
                        hist(|e| &e.client),
                    ),
                ],
                ..Default::default()
            });
        }
    }
    // The agent's counters: `socktrace.<group>.<name>`.
    let start = collected.map_or(0, |c| c.start_unix_nanos);
    let now = collected.map_or(0, |c| c.time_unix_nanos);
    let mut own: Vec<Metric> = telemetry
        .metrics()
        .iter()
        .map(|m| {
            let name = format!("socktrace.{}.{}", m.group, m.name);
            points += 1;
            match m.kind {
                Kind::Counter => counter_metric(
                    &name,
                    m.help,
                    vec![int_point(Vec::new(), m.value, start, now)],
                ),
                Kind::Gauge => Metric {
                    name,
                    description: m.help.to_owned(),
                    unit: "1".to_owned(),
                    data: Some(Data::Gauge(Gauge {
                        data_points: vec![int_point(Vec::new(), m.value, 0, now)],
                    })),
                    ..Default::default()
                },
            }
        })
        .collect();
    for m in telemetry.labeled() {
        // Counters only (the snapshot has no labeled gauges): a point per label value.
        let data: Vec<NumberDataPoint> = m
            .values
            .iter()
            .map(|(label, value)| {
                let attrs = attributes(&[KeyValue::new(m.label, label.clone())]);
                int_point(attrs, *value, start, now)
            })
            .collect();
        points += data.len() as u64;
        own.push(counter_metric(
            &format!("socktrace.{}.{}", m.group, m.name),
            m.help,
            data,
        ));
    }
    if !own.is_empty() {
        agent_scopes.push(ScopeMetrics {
            scope: scope(SCOPE),
            metrics: own,
            ..Default::default()
        });
    }
    let mut resource_metrics: Vec<ResourceMetrics> = by_resource
        .into_iter()
        .map(|(r, metrics)| ResourceMetrics {
            resource: Some(ProtoResource {
                attributes: attributes(&r.attributes),
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: scope(SCOPE),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    if !agent_scopes.is_empty() {
        resource_metrics.push(ResourceMetrics {
            resource: Some(ProtoResource {
                attributes: attributes(agent_resource),
                ..Default::default()
            }),
            scope_metrics: agent_scopes,
            ..Default::default()
        });
    }
    (ExportMetricsServiceRequest { resource_metrics }, points)
}

/// The metrics exporter task: one request per interval, a last one at shutdown.
pub(crate) async fn run(
    mut sink: RemoteSink,
    source: MetricsSource,
    interval: Duration,
    mut shutdown: Shutdown,
    counters: Arc<Counters>,
) {
    let mut next = Instant::now() + interval;
    loop {
        let last = tokio::select! {
            biased;
            () = shutdown.requested() => true,
            () = sleep_until(next) => false,
        };
        next = Instant::now() + interval;
        let collected = source.metrics.collect(last);
        let (request, n) = build_request(
            collected.as_ref(),
            &source.telemetry.latest(),
            &source.agent_resource,
        );
        if n > 0 {
            counters.add_queued(n);
            sink.send_payload(Bytes::from(request.encode_to_vec()), n, &mut shutdown)
                .await;
        }
        if last {
            break;
        }
        // Shutdown came during this export: the next turn makes the final one at once.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::span::{Span, SpanKind};

    fn str_attr<'a>(attrs: &'a [ProtoKeyValue], key: &str) -> Option<&'a any_value::Value> {
        attrs
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
    }

    #[test]
    fn request_groups_span_metrics_by_resource_and_the_rest_under_the_agent() {
        let shop = Arc::new(Resource {
            key: "pid:1".into(),
            attributes: vec![KeyValue::new("service.name", "shop")],
        });
        let metrics = Metrics::new(100);
        let mut spans = Vec::new();
        for n in 0..4u8 {
            let mut s = Span::for_test(n, &shop, "socktrace.http");
            s.kind = SpanKind::Server;
            s.start_unix_nanos = 0;
            s.end_unix_nanos = 20_000_000;
            s.attributes = vec![
                KeyValue::new("http.request.method", Value::text("GET")),
                KeyValue::new("http.route", "/"),
                KeyValue::new(
                    "http.response.status_code",
                    if n == 0 { 500i64 } else { 200 },
                ),
            ];
            if n == 0 {
                s.status = crate::trace::span::Status::Error {
                    message: String::new(),
                };
            }
            spans.push(s);
        }
        metrics.record(&spans);
        let c = metrics.collect(false).unwrap();
        let mut t = Snapshot::default();
        t.counter("export", "queued", "Spans queued.", 4);
        t.gauge("export", "pending", "Spans pending.", 1);
        t.labeled_counter(
            "completeness",
            "calls",
            "Client spans.",
            "service",
            vec![("a".into(), 3), ("b".into(), 5)],
        );
        let agent = vec![KeyValue::new("service.name", "socktrace")];
        let (req, n) = build_request(Some(&c), &t, &agent);
        // 2 HTTP series, 1 service-graph edge x 4 metrics, 2 counters, 2 labeled points.
        assert_eq!(n, 2 + 4 + 2 + 2);
        assert_eq!(req.resource_metrics.len(), 2);
        let rm = &req.resource_metrics[0];
        assert_eq!(
            str_attr(&rm.resource.as_ref().unwrap().attributes, "service.name"),
            Some(&any_value::Value::StringValue("shop".into()))
        );
        let m = &rm.scope_metrics[0].metrics[0];
        assert_eq!(
            (m.name.as_str(), m.unit.as_str()),
            ("http.server.request.duration", "s")
        );
        let Some(Data::Histogram(h)) = &m.data else {
            panic!("{m:?}")
        };
        assert_eq!(h.aggregation_temporality, CUMULATIVE);
        assert_eq!(h.data_points.len(), 2);
        let p500 = &h.data_points[0];
        assert_eq!(
            str_attr(&p500.attributes, "http.response.status_code"),
            Some(&any_value::Value::IntValue(500))
        );
        assert_eq!(p500.count, 1);
        let p200 = &h.data_points[1];
        assert_eq!(p200.count, 3);
        // 20 ms: (0.01, 0.025].
        assert_eq!(p200.bucket_counts[2], 3);
        assert_eq!(p200.explicit_bounds.len() + 1, p200.bucket_counts.len());
        assert_eq!(p200.start_time_unix_nano, c.start_unix_nanos);
        assert!((p200.sum.unwrap() - 0.06).abs() < 1e-12);

        let agent_rm = &req.resource_metrics[1];
        assert_eq!(
            str_attr(
                &agent_rm.resource.as_ref().unwrap().attributes,
                "service.name"
            ),
            Some(&any_value::Value::StringValue("socktrace".into()))
        );
        let graph = &agent_rm.scope_metrics[0];
        assert_eq!(graph.scope.as_ref().unwrap().name, "traces_service_graph");
        let names: Vec<&str> = graph.metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "traces_service_graph_request_total",
                "traces_service_graph_request_failed_total",
                "traces_service_graph_request_server_seconds",
                "traces_service_graph_request_client_seconds"
            ]
        );
        let Some(Data::Sum(failed)) = &graph.metrics[1].data else {
            panic!()
        };
        assert!(failed.is_monotonic);
        assert_eq!(
            failed.data_points[0].value,
            Some(number_data_point::Value::AsInt(1))
        );
        let own = &agent_rm.scope_metrics[1];
        assert_eq!(own.metrics[0].name, "socktrace.export.queued");
        assert!(matches!(own.metrics[0].data, Some(Data::Sum(_))));
        assert_eq!(own.metrics[1].name, "socktrace.export.pending");
        assert!(matches!(own.metrics[1].data, Some(Data::Gauge(_))));
        assert_eq!(own.metrics[2].name, "socktrace.completeness.calls");
        let Some(Data::Sum(calls)) = &own.metrics[2].data else {
            panic!()
        };
        let per_service: Vec<_> = calls
            .data_points
            .iter()
            .map(|p| (str_attr(&p.attributes, "service").cloned(), p.value))
            .collect();
        let point = |s: &str, v| {
            (
                Some(any_value::Value::StringValue(s.into())),
                Some(number_data_point::Value::AsInt(v)),
            )
        };
        assert_eq!(per_service, [point("a", 3), point("b", 5)]);

        // Nothing recorded, no counters: nothing to send.
        let (req, n) = build_request(None, &Snapshot::default(), &agent);
        assert_eq!((req.resource_metrics.len(), n), (0, 0));
    }
}
