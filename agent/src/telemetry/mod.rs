//! Self-telemetry: the agent's own counters and gauges, each with a name and a description.
//!
//! Every stage keeps its counters in a struct declared with [`counters!`], which knows each
//! field's name and doc comment. The capture thread collects all of them into a [`Snapshot`]
//! (grouped by stage: `kernel`, `conns`, `http1`, ...) and publishes it; the periodic log line,
//! the final counters at shutdown and the health endpoint's `/metrics` all read that snapshot.

pub mod health;
pub mod memory;

use std::{
    fmt::Write as _,
    sync::{Arc, Mutex},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only grows (events since start).
    Counter,
    /// A current level (entries in a table now).
    Gauge,
}

/// One named value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metric {
    /// The stage it belongs to (`conns`, `http2`, `export`...).
    pub group: &'static str,
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub value: u64,
}

/// One named value per label value (per service...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Labeled {
    pub group: &'static str,
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub label: &'static str,
    pub values: Vec<(String, u64)>,
}

/// Most label values a labeled metric shows in the log line (all are in `/metrics`).
const LINE_LABELS: usize = 8;

/// Every counter and gauge of the agent at one moment, in a fixed order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    metrics: Vec<Metric>,
    labeled: Vec<Labeled>,
}

impl Snapshot {
    pub fn counter(
        &mut self,
        group: &'static str,
        name: &'static str,
        help: &'static str,
        value: u64,
    ) {
        self.push(group, name, help, Kind::Counter, value);
    }

    pub fn gauge(
        &mut self,
        group: &'static str,
        name: &'static str,
        help: &'static str,
        value: u64,
    ) {
        self.push(group, name, help, Kind::Gauge, value);
    }

    fn push(
        &mut self,
        group: &'static str,
        name: &'static str,
        help: &'static str,
        kind: Kind,
        value: u64,
    ) {
        self.metrics.push(Metric {
            group,
            name,
            help,
            kind,
            value,
        });
    }

    /// A counter with one value per `label` value.
    pub fn labeled_counter(
        &mut self,
        group: &'static str,
        name: &'static str,
        help: &'static str,
        label: &'static str,
        values: Vec<(String, u64)>,
    ) {
        self.labeled.push(Labeled {
            group,
            name,
            help,
            kind: Kind::Counter,
            label,
            values,
        });
    }

    pub fn metrics(&self) -> &[Metric] {
        &self.metrics
    }

    pub fn labeled(&self) -> &[Labeled] {
        &self.labeled
    }

    /// The value of `group`.`name` for one label value.
    pub fn get_labeled(&self, group: &str, name: &str, label_value: &str) -> Option<u64> {
        self.labeled
            .iter()
            .find(|m| m.group == group && m.name == name)?
            .values
            .iter()
            .find(|(l, _)| l == label_value)
            .map(|(_, v)| *v)
    }

    /// The value of `group`.`name`, if there is such a metric.
    pub fn get(&self, group: &str, name: &str) -> Option<u64> {
        self.metrics
            .iter()
            .find(|m| m.group == group && m.name == name)
            .map(|m| m.value)
    }

    /// One line for logs: `group: name=value ... | group: ...`.
    pub fn line(&self) -> String {
        let mut out = String::new();
        let mut group = "";
        // Names the group when it changes.
        let mut enter = |out: &mut String, g: &'static str| {
            if g != group {
                if !out.is_empty() {
                    out.push_str(" |");
                }
                let _ = write!(out, " {g}:");
                group = g;
            }
        };
        for m in &self.metrics {
            enter(&mut out, m.group);
            let _ = write!(out, " {}={}", m.name, m.value);
        }
        for m in &self.labeled {
            enter(&mut out, m.group);
            for (label, value) in m.values.iter().take(LINE_LABELS) {
                let _ = write!(out, " {}{{{label}}}={value}", m.name);
            }
            if m.values.len() > LINE_LABELS {
                let _ = write!(out, " {}{{+{} more}}", m.name, m.values.len() - LINE_LABELS);
            }
        }
        out.trim_start().to_owned()
    }

    /// The Prometheus text exposition format: `socktrace_{group}_{name}`, counters with the
    /// `_total` suffix, each with its `# HELP` and `# TYPE`; labeled ones with their label.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        for m in &self.metrics {
            let name = prometheus_head(&mut out, m.group, m.name, m.help, m.kind);
            let _ = writeln!(out, "{name} {}", m.value);
        }
        for m in &self.labeled {
            let name = prometheus_head(&mut out, m.group, m.name, m.help, m.kind);
            for (label, value) in &m.values {
                let label = label
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = writeln!(out, "{name}{{{}=\"{label}\"}} {value}", m.label);
            }
        }
        out
    }
}

/// Writes a metric's `# HELP` and `# TYPE` lines; returns its full name.
fn prometheus_head(out: &mut String, group: &str, name: &str, help: &str, kind: Kind) -> String {
    let (suffix, kind) = match kind {
        Kind::Counter => ("_total", "counter"),
        Kind::Gauge => ("", "gauge"),
    };
    let name = format!("socktrace_{group}_{name}{suffix}");
    let help = help.replace('\\', "\\\\").replace('\n', " ");
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    name
}

/// The latest snapshot, shared between the capture thread (which publishes) and readers on
/// other threads (the health endpoint).
#[derive(Clone, Debug, Default)]
pub struct Published(Arc<Mutex<Snapshot>>);

impl Published {
    pub fn publish(&self, snapshot: Snapshot) {
        if let Ok(mut s) = self.0.lock() {
            *s = snapshot;
        }
    }

    pub fn latest(&self) -> Snapshot {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Declares a struct of `u64` counters whose doc comments are their descriptions, with
/// `collect` (into a [`Snapshot`] under a group name) and a saturating `add`.
#[macro_export]
macro_rules! counters {
    (
        $(#[doc = $sdoc:literal])*
        $vis:vis struct $name:ident {
            $( $(#[doc = $doc:literal])+ $field:ident, )*
        }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        $vis struct $name {
            $( $(#[doc = $doc])+ pub $field: u64, )*
        }

        impl $name {
            /// Names and descriptions of the counters, in declaration order.
            pub const FIELDS: &'static [(&'static str, &'static str)] =
                &[$( (stringify!($field), concat!($($doc),+)) ),*];

            /// Adds every counter to `snapshot` under `group`.
            pub fn collect(&self, group: &'static str, snapshot: &mut $crate::telemetry::Snapshot) {
                $( snapshot.counter(group, stringify!($field), concat!($($doc),+).trim_ascii(), self.$field); )*
            }

            /// Adds the counters to `into`, in [`Self::FIELDS`] order (saturating).
            pub fn add_to(&self, into: &mut [u64]) {
                let mut slots = into.iter_mut();
                $( if let Some(slot) = slots.next() { *slot = slot.saturating_add(self.$field); } )*
            }

            /// Adds `other`'s counters to these (saturating: parser counters can be huge).
            pub fn add(&mut self, other: &Self) {
                $( self.$field = self.$field.saturating_add(other.$field); )*
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::counters! {
        /// Test counters.
        struct Demo {
            /// Things seen.
            seen,
            /// Things dropped
            /// for a reason.
            dropped,
        }
    }

    #[test]
    fn counters_know_their_names_and_descriptions() {
        let mut a = Demo {
            seen: 3,
            dropped: u64::MAX,
        };
        a.add(&Demo {
            seen: 2,
            dropped: 1,
        });
        assert_eq!(
            a,
            Demo {
                seen: 5,
                dropped: u64::MAX
            }
        );
        let mut s = Snapshot::default();
        a.collect("demo", &mut s);
        s.gauge("table", "live", "entries now", 7);
        assert_eq!(s.get("demo", "seen"), Some(5));
        assert_eq!(s.get("demo", "nope"), None);
        assert_eq!(
            s.line(),
            format!("demo: seen=5 dropped={} | table: live=7", u64::MAX)
        );
        assert_eq!(Demo::FIELDS[1].0, "dropped");
        let mut slots = [1, 2, 3];
        Demo {
            seen: 1,
            dropped: 2,
        }
        .add_to(&mut slots);
        assert_eq!(slots, [2, 4, 3]);
        assert_eq!(s.metrics()[1].help, "Things dropped for a reason.");
        let text = s.prometheus();
        assert!(text.starts_with("# HELP socktrace_demo_seen_total Things seen.\n# TYPE socktrace_demo_seen_total counter\nsocktrace_demo_seen_total 5\n"), "{text}");
        assert!(
            text.ends_with("# TYPE socktrace_table_live gauge\nsocktrace_table_live 7\n"),
            "{text}"
        );
    }

    #[test]
    fn labeled_counters_carry_their_label_escaped() {
        let mut s = Snapshot::default();
        s.gauge("links", "held_now", "held", 1);
        s.labeled_counter(
            "completeness",
            "calls",
            "Client spans.",
            "service",
            vec![("a".into(), 3), ("we\"ird\\x".into(), 1)],
        );
        assert_eq!(s.get_labeled("completeness", "calls", "a"), Some(3));
        assert_eq!(s.get_labeled("completeness", "calls", "b"), None);
        assert_eq!(
            s.line(),
            "links: held_now=1 | completeness: calls{a}=3 calls{we\"ird\\x}=1"
        );
        let text = s.prometheus();
        assert!(
            text.ends_with(concat!(
                "# HELP socktrace_completeness_calls_total Client spans.\n",
                "# TYPE socktrace_completeness_calls_total counter\n",
                "socktrace_completeness_calls_total{service=\"a\"} 3\n",
                "socktrace_completeness_calls_total{service=\"we\\\"ird\\\\x\"} 1\n",
            )),
            "{text}"
        );
        let many: Vec<(String, u64)> = (0..10).map(|i| (format!("s{i}"), i)).collect();
        let mut s = Snapshot::default();
        s.labeled_counter("c", "n", "h", "service", many);
        assert!(s.line().ends_with("n{s7}=7 n{+2 more}"), "{}", s.line());
    }
}
