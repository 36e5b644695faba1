//! Series of one metric, keyed by resource and attribute set, with bounded cardinality.
//!
//! Beyond `cap` distinct series a point goes to its resource's overflow series, whose only
//! attribute is `otel.metric.overflow=true` (the OpenTelemetry SDK's convention), and is
//! counted. Overflow series themselves are bounded ([`OVERFLOW_SERIES`]); beyond them a point
//! is dropped, counted.

use std::{borrow::Cow, fmt::Write as _, sync::Arc};

use crate::{
    FastMap,
    trace::span::{KeyValue, Resource, Value},
};

/// The attribute of overflow series.
pub const OVERFLOW_KEY: &str = "otel.metric.overflow";
/// Overflow series allowed beyond the cap (one per resource).
pub const OVERFLOW_SERIES: usize = 64;

/// One series: who reported it, its attributes and its value.
#[derive(Clone, Debug)]
pub struct Series<V> {
    /// `None`: the agent's own resource (the service graph, which spans two services).
    pub resource: Option<Arc<Resource>>,
    pub attributes: Vec<KeyValue>,
    pub value: V,
}

#[derive(Clone, Debug)]
pub struct Table<V> {
    cap: usize,
    index: FastMap<String, usize>,
    /// The key of the latest lookup (see `entry`).
    scratch: String,
    series: Vec<Series<V>>,
    regular: usize,
    /// Points recorded into an overflow series.
    pub overflowed: u64,
    /// Points dropped: cap reached and no room for another overflow series.
    pub dropped: u64,
}

impl<V> Table<V> {
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            index: FastMap::default(),
            scratch: String::new(),
            series: Vec::new(),
            regular: 0,
            overflowed: 0,
            dropped: 0,
        }
    }

    pub fn series(&self) -> &[Series<V>] {
        &self.series
    }

    /// The series of `resource` and `attributes` (created with `make` if new), its overflow
    /// series when the cap is reached, or `None` when even that is not possible.
    pub fn entry(
        &mut self,
        resource: Option<&Arc<Resource>>,
        attributes: Vec<KeyValue>,
        make: impl FnOnce() -> V,
    ) -> Option<&mut V> {
        let pairs = attributes.iter().map(|kv| (kv.key.as_ref(), &kv.value));
        match self.find(resource, pairs) {
            Ok(i) => Some(&mut self.series[i].value),
            Err(key) => self.insert(resource, key, attributes, make),
        }
    }

    /// [`Table::entry`] from borrowed attributes, copied only for a new series (most points go
    /// to a series that exists).
    pub fn entry_by(
        &mut self,
        resource: Option<&Arc<Resource>>,
        attributes: &[(&'static str, Cow<'_, Value>)],
        make: impl FnOnce() -> V,
    ) -> Option<&mut V> {
        match self.find(resource, attributes.iter().map(|(k, v)| (*k, v.as_ref()))) {
            Ok(i) => Some(&mut self.series[i].value),
            Err(key) => {
                let owned = attributes
                    .iter()
                    .map(|(k, v)| KeyValue::new(*k, v.clone().into_owned()))
                    .collect();
                self.insert(resource, key, owned, make)
            }
        }
    }

    /// The index of the series, or its key when there is none yet. The key is built in a
    /// buffer kept between calls, so a lookup allocates nothing.
    fn find<'a>(
        &mut self,
        resource: Option<&Arc<Resource>>,
        attributes: impl Iterator<Item = (&'a str, &'a Value)>,
    ) -> Result<usize, String> {
        let key = &mut self.scratch;
        key.clear();
        key.push_str(resource.map_or("", |r| &r.key));
        key.push('\0');
        for (k, v) in attributes {
            key.push_str(k);
            key.push('\0');
            let _ = match v {
                Value::Str(s) => {
                    key.push('s');
                    key.push_str(s);
                    Ok(())
                }
                Value::Int(i) => write!(key, "i{i}"),
                Value::Bool(b) => write!(key, "b{b}"),
                Value::Double(d) => write!(key, "d{d}"),
            };
            key.push('\0');
        }
        match self.index.get(key.as_str()) {
            Some(&i) => Ok(i),
            None => Err(key.clone()),
        }
    }

    fn insert(
        &mut self,
        resource: Option<&Arc<Resource>>,
        key: String,
        attributes: Vec<KeyValue>,
        make: impl FnOnce() -> V,
    ) -> Option<&mut V> {
        let (key, attributes) = if self.regular < self.cap {
            self.regular += 1;
            (key, attributes)
        } else {
            let mut key = resource.map_or_else(String::new, |r| r.key.clone());
            key.push_str("\0\u{1}overflow");
            if let Some(&i) = self.index.get(&key) {
                self.overflowed += 1;
                return Some(&mut self.series[i].value);
            }
            if self.series.len() - self.regular >= OVERFLOW_SERIES {
                self.dropped += 1;
                return None;
            }
            self.overflowed += 1;
            (key, vec![KeyValue::new(OVERFLOW_KEY, true)])
        };
        self.index.insert(key, self.series.len());
        self.series.push(Series {
            resource: resource.cloned(),
            attributes,
            value: make(),
        });
        self.series.last_mut().map(|s| &mut s.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(key: &str) -> Arc<Resource> {
        Arc::new(Resource {
            key: key.into(),
            attributes: vec![KeyValue::new("service.name", key)],
        })
    }

    #[test]
    fn series_beyond_the_cap_overflow_per_resource() {
        let (a, b) = (res("a"), res("b"));
        let mut t: Table<u64> = Table::new(2);
        let attrs = |n: i64| vec![KeyValue::new("n", n)];
        *t.entry(Some(&a), attrs(1), || 0).unwrap() += 1;
        *t.entry(Some(&a), attrs(1), || 0).unwrap() += 1;
        // Same attributes, other resource: another series.
        *t.entry(Some(&b), attrs(1), || 0).unwrap() += 1;
        // Cap of 2 reached: new attribute sets overflow, per resource.
        *t.entry(Some(&a), attrs(2), || 0).unwrap() += 1;
        *t.entry(Some(&a), attrs(3), || 0).unwrap() += 1;
        *t.entry(Some(&b), attrs(2), || 0).unwrap() += 1;
        // Existing series still take points.
        *t.entry(Some(&b), attrs(1), || 0).unwrap() += 1;
        let got: Vec<(String, String, u64)> = t
            .series()
            .iter()
            .map(|s| {
                (
                    s.resource.as_ref().unwrap().key.clone(),
                    s.attributes
                        .iter()
                        .map(|kv| format!("{}={}", kv.key, kv.value))
                        .collect::<Vec<_>>()
                        .join(","),
                    s.value,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a".into(), "n=1".into(), 2),
                ("b".into(), "n=1".into(), 2),
                ("a".into(), "otel.metric.overflow=true".into(), 2),
                ("b".into(), "otel.metric.overflow=true".into(), 1),
            ]
        );
        assert_eq!((t.overflowed, t.dropped), (3, 0));
    }

    #[test]
    fn overflow_series_are_bounded_too() {
        let mut t: Table<u64> = Table::new(1);
        t.entry(None, vec![], || 0);
        for i in 0..OVERFLOW_SERIES + 5 {
            let r = res(&format!("r{i}"));
            let _ = t.entry(Some(&r), vec![KeyValue::new("x", 1i64)], || 0);
        }
        assert_eq!(t.series().len(), 1 + OVERFLOW_SERIES);
        assert_eq!((t.overflowed, t.dropped), (OVERFLOW_SERIES as u64, 5));
        // Value types are told apart: Int 1 and Str "1" are two series.
        let mut t: Table<u64> = Table::new(10);
        t.entry(None, vec![KeyValue::new("x", 1i64)], || 0);
        t.entry(None, vec![KeyValue::new("x", "1")], || 0);
        assert_eq!(t.series().len(), 2);
    }
}
