//! Who made the span: resource attributes of each traced process, read from procfs and cached.

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use crate::trace::span::{KeyValue, Resource, Value};

/// Where process information is read from; a directory laid out like `/proc` (tests use fakes).
#[derive(Clone, Debug)]
pub struct ProcRoot(pub PathBuf);

impl Default for ProcRoot {
    fn default() -> Self {
        Self(PathBuf::from("/proc"))
    }
}

/// Per-process resources, built once per process and refreshed on exec.
pub struct ResourceCache {
    proc: ProcRoot,
    host_name: String,
    by_pid: HashMap<u32, Arc<Resource>>,
}

impl ResourceCache {
    pub fn new(proc: ProcRoot) -> Self {
        let host_name = std::fs::read_to_string(proc.0.join("sys/kernel/hostname"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "localhost".to_owned());
        Self {
            proc,
            host_name,
            by_pid: HashMap::new(),
        }
    }

    /// The resource of `pid`, read from procfs the first time it is needed. `comm` (the task
    /// name the kernel reported) names a process that has already exited.
    pub fn get(&mut self, pid: u32, comm: Option<&str>) -> Arc<Resource> {
        if let Some(r) = self.by_pid.get(&pid) {
            return r.clone();
        }
        let r = Arc::new(self.build(pid, comm));
        self.by_pid.insert(pid, r.clone());
        r
    }

    /// Whether `pid` is cached (cheap check before building the arguments of [`Self::get`]).
    pub fn contains(&self, pid: u32) -> bool {
        self.by_pid.contains_key(&pid)
    }

    /// Forget `pid` (it exec'd a new image or exited); the next span re-reads it.
    pub fn invalidate(&mut self, pid: u32) {
        self.by_pid.remove(&pid);
    }

    pub fn len(&self) -> usize {
        self.by_pid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
    }

    fn build(&self, pid: u32, kernel_comm: Option<&str>) -> Resource {
        let dir = self.proc.0.join(pid.to_string());
        let exe_path = std::fs::read_link(dir.join("exe")).ok().map(|p| {
            p.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_owned()
        });
        let comm = std::fs::read_to_string(dir.join("comm"))
            .map(|s| s.trim().to_owned())
            .ok()
            .or_else(|| kernel_comm.map(str::to_owned));
        let exe_name = exe_path
            .as_deref()
            .and_then(|p| p.rsplit('/').next())
            .map(str::to_owned)
            .or_else(|| comm.clone())
            .unwrap_or_else(|| format!("pid-{pid}"));
        let env = std::fs::read(dir.join("environ")).unwrap_or_default();
        let env = parse_environ(&env);
        let start_time = std::fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|s| stat_start_time(&s))
            .unwrap_or(0);
        let container_id = std::fs::read_to_string(dir.join("cgroup"))
            .ok()
            .and_then(|s| container_id_from_cgroup(&s));

        let mut attrs: Vec<KeyValue> = Vec::new();
        // OTEL_RESOURCE_ATTRIBUTES of the process first, so that explicit keys override them.
        let mut from_env = env
            .get("OTEL_RESOURCE_ATTRIBUTES")
            .map(|v| parse_resource_attributes(v))
            .unwrap_or_default();
        let service_name = env
            .get("OTEL_SERVICE_NAME")
            .filter(|s| !s.is_empty())
            .cloned()
            .or_else(|| {
                from_env
                    .iter()
                    .find(|(k, _)| k == "service.name")
                    .map(|(_, v)| v.clone())
            })
            .unwrap_or_else(|| exe_name.clone());
        from_env.retain(|(k, _)| k != "service.name");

        attrs.push(KeyValue::new("service.name", service_name));
        attrs.push(KeyValue::new(
            "service.instance.id",
            format!("{}-{pid}-{start_time}", self.host_name),
        ));
        attrs.push(KeyValue::new("process.pid", i64::from(pid)));
        attrs.push(KeyValue::new("process.executable.name", exe_name));
        if let Some(p) = exe_path {
            attrs.push(KeyValue::new("process.executable.path", p));
        }
        attrs.push(KeyValue::new("host.name", self.host_name.clone()));
        attrs.push(KeyValue::new("os.type", "linux"));
        attrs.push(KeyValue::new("telemetry.sdk.name", "socktrace"));
        attrs.push(KeyValue::new(
            "telemetry.sdk.version",
            env!("CARGO_PKG_VERSION"),
        ));
        if let Some(id) = container_id {
            attrs.push(KeyValue::new("container.id", id));
        }
        for (k, v) in from_env {
            if !attrs.iter().any(|kv| kv.key == k) {
                attrs.push(KeyValue {
                    key: k,
                    value: Value::Str(v),
                });
            }
        }
        Resource {
            key: format!("{pid}:{start_time}"),
            attributes: attrs,
        }
    }
}

/// `/proc/PID/environ`: NUL-separated `KEY=VALUE` pairs. Only OTEL_ variables are kept.
fn parse_environ(raw: &[u8]) -> HashMap<String, String> {
    raw.split(|b| *b == 0)
        .filter_map(|kv| {
            let s = String::from_utf8_lossy(kv);
            let (k, v) = s.split_once('=')?;
            k.starts_with("OTEL_").then(|| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `OTEL_RESOURCE_ATTRIBUTES`: `k1=v1,k2=v2` with percent-encoded values; malformed pairs skipped.
pub fn parse_resource_attributes(v: &str) -> Vec<(String, String)> {
    v.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_owned(), percent_decode(v.trim())))
        })
        .collect()
}

/// Field `n` (1-based, as in proc(5)) of `/proc/PID/stat`, for fields after the `comm` field,
/// which may itself contain spaces and parentheses.
pub fn stat_field(stat: &str, n: usize) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    after
        .split_whitespace()
        .nth(n.checked_sub(3)?)?
        .parse()
        .ok()
}

/// Field 22 of `/proc/PID/stat`: start time in clock ticks.
fn stat_start_time(stat: &str) -> Option<u64> {
    stat_field(stat, 22)
}

/// Extracts a container id (64 hex characters) from `/proc/PID/cgroup`, as written by Docker,
/// containerd/CRI, CRI-O and Podman on cgroup v1 and v2 (e.g. `.../docker-<id>.scope`,
/// `/kubepods/.../cri-containerd-<id>.scope`, `/docker/<id>`, `crio-<id>`, `libpod-<id>`).
pub fn container_id_from_cgroup(cgroup: &str) -> Option<String> {
    for line in cgroup.lines() {
        let path = line.splitn(3, ':').nth(2).unwrap_or("");
        for segment in path.rsplit('/') {
            let seg = segment.strip_suffix(".scope").unwrap_or(segment);
            let candidate = seg.rsplit(['-', ':']).next().unwrap_or(seg);
            if candidate.len() == 64 && candidate.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Some(candidate.to_ascii_lowercase());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f0c8ff6b5d4c4f9d3a1e2b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7";

    #[test]
    fn container_ids_of_common_runtimes() {
        for line in [
            format!("0::/system.slice/docker-{ID}.scope"),
            format!("12:pids:/docker/{ID}"),
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-{ID}.scope"
            ),
            format!("0::/kubepods/besteffort/pod1/crio-{ID}.scope"),
            format!("0::/machine.slice/libpod-{ID}.scope/container"),
        ] {
            assert_eq!(
                container_id_from_cgroup(&line).as_deref(),
                Some(ID),
                "{line}"
            );
        }
        assert_eq!(
            container_id_from_cgroup("0::/user.slice/session-2.scope"),
            None
        );
    }

    #[test]
    fn resource_attributes_env() {
        assert_eq!(
            parse_resource_attributes("service.name=a%20b,deployment.environment=prod,bad,=x"),
            vec![
                ("service.name".to_owned(), "a b".to_owned()),
                ("deployment.environment".to_owned(), "prod".to_owned())
            ]
        );
    }

    #[test]
    fn stat_start_time_survives_odd_comm() {
        let stat = "42 (we ird) x) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 0 0";
        assert_eq!(stat_start_time(stat), Some(12345));
    }

    #[test]
    fn service_name_from_process_environment() {
        let me = std::process::id();
        let mut cache = ResourceCache::new(ProcRoot::default());
        let r = cache.get(me, None);
        assert_eq!(
            r.attributes
                .iter()
                .find(|kv| kv.key == "process.pid")
                .map(|kv| kv.value.clone()),
            Some(Value::Int(i64::from(me)))
        );
        assert!(!r.service_name().is_empty());
    }

    #[test]
    fn exited_process_is_named_from_kernel_comm() {
        let mut cache = ResourceCache::new(ProcRoot(PathBuf::from("/nonexistent")));
        let r = cache.get(4_000_000, Some("curl"));
        assert_eq!(r.service_name(), "curl");
        assert!(
            r.attributes
                .iter()
                .any(|kv| kv.key == "process.executable.name" && kv.value == Value::from("curl"))
        );
    }
}
