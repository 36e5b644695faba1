//! The Prometheus text exposition of the span metrics, converted as the OpenTelemetry
//! Prometheus exporter converts: dots become underscores, the unit becomes a suffix
//! (`http_server_request_duration_seconds`, `rpc_server_duration_milliseconds`), histograms
//! give `_bucket{le=...}` (cumulative), `_sum` and `_count`. A point's resource is reduced to
//! the `service_name` (and `service_namespace`) labels; series that then look alike (two
//! processes of one service) are added up. The service-graph metrics keep the connector's
//! names and labels.

use std::{collections::BTreeMap, fmt::Write as _};

use super::{
    Collected,
    histogram::Histogram,
    red::INSTRUMENTS,
    table::{Series, Table},
};
use crate::trace::span::Value;

/// `a.b` -> `a_b`, and anything outside `[a-zA-Z0-9_]` -> `_`.
fn sanitize_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `{k="v",...}` body (without braces) of a series.
fn labels<V>(s: &Series<V>) -> String {
    let mut out = String::new();
    let mut add = |k: &str, v: &str| {
        if !out.is_empty() {
            out.push(',');
        }
        let _ = write!(out, "{}=\"{}\"", sanitize_name(k), escape(v));
    };
    if let Some(r) = &s.resource {
        add("service_name", r.service_name());
        for kv in &r.attributes {
            if kv.key == "service.namespace" {
                add("service_namespace", &kv.value.to_string());
            }
        }
    }
    for kv in &s.attributes {
        match &kv.value {
            Value::Str(v) => add(&kv.key, v),
            v => add(&kv.key, &v.to_string()),
        }
    }
    out
}

fn braces(labels: &str, extra: &str) -> String {
    match (labels.is_empty(), extra.is_empty()) {
        (true, true) => String::new(),
        (false, true) => format!("{{{labels}}}"),
        (true, false) => format!("{{{extra}}}"),
        (false, false) => format!("{{{labels},{extra}}}"),
    }
}

fn histogram_family(
    out: &mut String,
    name: &str,
    help: &str,
    series: impl Iterator<Item = (String, Histogram)>,
) {
    let mut merged: BTreeMap<String, Histogram> = BTreeMap::new();
    for (l, h) in series {
        match merged.get_mut(&l) {
            Some(m) => m.merge(&h),
            None => {
                merged.insert(l, h);
            }
        }
    }
    if merged.is_empty() {
        return;
    }
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (l, h) in &merged {
        let mut cumulative = 0;
        for (i, c) in h.counts.iter().enumerate() {
            cumulative += c;
            let le = h
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(
                out,
                "{name}_bucket{} {cumulative}",
                braces(l, &format!("le=\"{le}\""))
            );
        }
        let _ = writeln!(out, "{name}_sum{} {}", braces(l, ""), h.sum);
        let _ = writeln!(out, "{name}_count{} {}", braces(l, ""), h.count);
    }
}

fn counter_family<V>(
    out: &mut String,
    name: &str,
    help: &str,
    table: &Table<V>,
    value: impl Fn(&V) -> u64,
) {
    let mut merged: BTreeMap<String, u64> = BTreeMap::new();
    for s in table.series() {
        *merged.entry(labels(s)).or_default() += value(&s.value);
    }
    if merged.is_empty() {
        return;
    }
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    for (l, v) in &merged {
        let _ = writeln!(out, "{name}{} {v}", braces(l, ""));
    }
}

/// The text exposition of `c`.
pub fn render(c: &Collected) -> String {
    let mut out = String::new();
    for (inst, table) in INSTRUMENTS.iter().zip(&c.red) {
        let unit = match inst.unit {
            "ms" => "_milliseconds",
            _ => "_seconds",
        };
        let name = format!("{}{unit}", sanitize_name(inst.name));
        histogram_family(
            &mut out,
            &name,
            inst.description,
            table.series().iter().map(|s| (labels(s), s.value.clone())),
        );
    }
    let g = &c.graph;
    counter_family(
        &mut out,
        "traces_service_graph_request_total",
        "Total count of requests between two nodes.",
        g,
        |e| e.total,
    );
    counter_family(
        &mut out,
        "traces_service_graph_request_failed_total",
        "Total count of failed requests between two nodes.",
        g,
        |e| e.failed,
    );
    histogram_family(
        &mut out,
        "traces_service_graph_request_server_seconds",
        "Time for a request between two nodes as seen from the server.",
        g.series()
            .iter()
            .map(|s| (labels(s), s.value.server.clone())),
    );
    histogram_family(
        &mut out,
        "traces_service_graph_request_client_seconds",
        "Time for a request between two nodes as seen from the client.",
        g.series()
            .iter()
            .map(|s| (labels(s), s.value.client.clone())),
    );
    out
}
