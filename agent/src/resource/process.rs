//! Who made the span: resource attributes of each traced process, read from procfs (and the
//! Kubernetes pod index when there is one) and cached.
//!
//! `service.name`, first match wins: the process's `OTEL_SERVICE_NAME`; `service.name` in its
//! `OTEL_RESOURCE_ATTRIBUTES`; the pod annotation `resource.opentelemetry.io/service.name`; the
//! pod label `app.kubernetes.io/name`; the owning workload (Deployment through its ReplicaSet,
//! StatefulSet, DaemonSet, CronJob through its Job, Job); the pod name; the container name; the
//! executable name.

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use super::{
    k8s::{ContainerMeta, K8sMetadata},
    select::{ResourceFacts, ResourceFilter},
    stat::stat_field,
};
pub use crate::capture::probes::ExecEnv;
use crate::trace::span::{KeyValue, Resource, Value};

/// Where process information is read from; a directory laid out like `/proc` (tests use fakes).
#[derive(Clone, Debug)]
pub struct ProcRoot(pub PathBuf);

impl Default for ProcRoot {
    fn default() -> Self {
        Self(PathBuf::from("/proc"))
    }
}

/// What procfs says about a process, read once per process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: u32,
    pub exe_name: String,
    pub exe_path: Option<String>,
    /// Clock ticks since boot (field 22 of `stat`); with the pid, identifies the process.
    pub start_time: u64,
    pub container_id: Option<String>,
    /// `OTEL_SERVICE_NAME` of the process, when set and not empty.
    pub otel_service_name: Option<String>,
    /// `OTEL_RESOURCE_ATTRIBUTES` of the process, in order.
    pub env_attributes: Vec<(String, String)>,
    /// Whether `/proc/PID/environ` and `/proc/PID/cgroup` could be read (false once the
    /// process is gone).
    pub read_env: bool,
    pub read_cgroup: bool,
}

impl ProcInfo {
    /// Reads `/proc/PID`; a process that already exited is named from `kernel_comm`.
    pub fn read(proc: &ProcRoot, pid: u32, kernel_comm: Option<&str>) -> Self {
        let dir = proc.0.join(pid.to_string());
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
            .or(comm)
            .unwrap_or_else(|| format!("pid-{pid}"));
        let environ = std::fs::read(dir.join("environ"));
        let read_env = environ.is_ok();
        let env = parse_environ(&environ.unwrap_or_default());
        let start_time = std::fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|s| stat_start_time(&s))
            .unwrap_or(0);
        let cgroup = std::fs::read_to_string(dir.join("cgroup"));
        let read_cgroup = cgroup.is_ok();
        let container_id = cgroup.ok().and_then(|s| container_id_from_cgroup(&s));
        Self {
            pid,
            exe_name,
            exe_path,
            start_time,
            container_id,
            otel_service_name: env
                .get("OTEL_SERVICE_NAME")
                .filter(|s| !s.is_empty())
                .cloned(),
            env_attributes: env
                .get("OTEL_RESOURCE_ATTRIBUTES")
                .map(|v| parse_resource_attributes(v))
                .unwrap_or_default(),
            read_env,
            read_cgroup,
        }
    }

    fn env_attribute(&self, key: &str) -> Option<&str> {
        self.env_attributes
            .iter()
            .find(|(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }
}

/// The `service.name` ladder (see the module documentation).
pub fn service_name(proc: &ProcInfo, pod: Option<&ContainerMeta>) -> String {
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    proc.otel_service_name
        .clone()
        .or_else(|| proc.env_attribute("service.name").map(str::to_owned))
        .or_else(|| {
            let c = pod?;
            let p = &c.pod;
            p.service_name_annotation
                .clone()
                .or_else(|| p.app_name_label.clone())
                .or_else(|| p.owners.workload_name().map(str::to_owned))
                .or_else(|| non_empty(&p.name))
                .or_else(|| non_empty(&c.container_name))
        })
        .unwrap_or_else(|| proc.exe_name.clone())
}

/// Builds the resource of a process. `pod` is its pod and container, when known; `version`
/// distinguishes successive builds in the resource key.
pub fn build_resource(
    proc: &ProcInfo,
    host_name: &str,
    k8s: Option<&K8sMetadata>,
    pod: Option<&ContainerMeta>,
    version: u64,
) -> Resource {
    let pid = proc.pid;
    let mut attrs: Vec<KeyValue> = Vec::new();
    attrs.push(KeyValue::new("service.name", service_name(proc, pod)));
    // The process's own service.namespace (from OTEL_RESOURCE_ATTRIBUTES, added below) wins.
    if let Some(c) = pod
        && proc.env_attribute("service.namespace").is_none()
        && !c.pod.namespace.is_empty()
    {
        attrs.push(KeyValue::new("service.namespace", c.pod.namespace.clone()));
    }
    attrs.push(KeyValue::new(
        "service.instance.id",
        format!("{host_name}-{pid}-{}", proc.start_time),
    ));
    attrs.push(KeyValue::new("process.pid", i64::from(pid)));
    attrs.push(KeyValue::new(
        "process.executable.name",
        proc.exe_name.clone(),
    ));
    if let Some(p) = &proc.exe_path {
        attrs.push(KeyValue::new("process.executable.path", p.clone()));
    }
    attrs.push(KeyValue::new("host.name", host_name.to_owned()));
    attrs.push(KeyValue::new("os.type", "linux"));
    attrs.push(KeyValue::new("telemetry.sdk.name", "socktrace"));
    attrs.push(KeyValue::new(
        "telemetry.sdk.version",
        env!("CARGO_PKG_VERSION"),
    ));
    if let Some(id) = &proc.container_id {
        attrs.push(KeyValue::new("container.id", id.clone()));
    }
    if let Some(cluster) = k8s.and_then(|k| k.cluster_name.as_deref()) {
        attrs.push(KeyValue::new("k8s.cluster.name", cluster.to_owned()));
    }
    if let Some(c) = pod {
        let p = &c.pod;
        if let Some(k) = k8s {
            attrs.push(KeyValue::new("k8s.node.name", k.node_name.clone()));
        }
        for (key, value) in [
            ("k8s.namespace.name", &p.namespace),
            ("k8s.pod.name", &p.name),
            ("k8s.pod.uid", &p.uid),
            ("k8s.container.name", &c.container_name),
        ] {
            if !value.is_empty() {
                attrs.push(KeyValue::new(key, value.clone()));
            }
        }
        for (key, name) in p.owners.attributes() {
            attrs.push(KeyValue::new(key, name.to_owned()));
        }
    }
    for (k, v) in &proc.env_attributes {
        if k != "service.name" && !attrs.iter().any(|kv| kv.key == *k) {
            attrs.push(KeyValue {
                key: k.clone().into(),
                value: Value::from(v.clone()),
            });
        }
    }
    Resource {
        key: format!("{pid}:{}:{version}", proc.start_time),
        attributes: attrs,
    }
}

/// What the kernel told of a process at its exec: enough for its resource once `/proc` has
/// forgotten it.
#[derive(Clone, Debug, Default)]
struct ExecFacts {
    cgroup_id: u64,
    env: Option<ExecEnv>,
}

/// Bound on processes whose exec facts are remembered (oldest forgotten first).
const MAX_EXEC_FACTS: usize = 8192;

crate::counters! {
    /// Counters of resource detection.
    pub struct ResourceStats {
        /// Programs started with OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES, as the kernel
        /// saw their exec.
        exec_env_seen,
        /// Of those, values longer than the kernel keeps (cut).
        exec_env_truncated,
        /// Resources of processes gone before /proc was read, completed from what the kernel
        /// saw at their exec.
        from_exec,
        /// Exec facts forgotten because too many processes were remembered.
        exec_facts_evicted,
        /// Cgroup ids not found under the cgroup v2 mount (no container id for that process).
        cgroup_unresolved,
    }
}

/// Cgroup v2 id -> path (the id is the inode of the cgroup's directory in cgroupfs), built by
/// walking the mount, rebuilt on a miss at most once a second.
struct CgroupPaths {
    /// The cgroup v2 mount; None when there is none (every id is then unresolved).
    root: Option<PathBuf>,
    by_id: HashMap<u64, String>,
    walked: Option<std::time::Instant>,
}

/// Most cgroup directories looked at in one walk.
const MAX_CGROUPS: usize = 100_000;

impl CgroupPaths {
    fn new(root: Option<PathBuf>) -> Self {
        Self {
            root,
            by_id: HashMap::new(),
            walked: None,
        }
    }

    /// The path of cgroup `id` relative to the mount (`/kubepods/...`), as `/proc/PID/cgroup`
    /// writes it.
    fn path(&mut self, id: u64) -> Option<&str> {
        if !self.by_id.contains_key(&id)
            && self
                .walked
                .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1))
        {
            self.walk();
        }
        self.by_id.get(&id).map(String::as_str)
    }

    /// The first cgroup v2 mount of this mount namespace.
    fn mounted() -> Option<PathBuf> {
        let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        crate::capture::inject::cgroup2_mounts(&text)
            .into_iter()
            .next()
    }

    fn walk(&mut self) {
        use std::os::unix::fs::MetadataExt as _;
        self.walked = Some(std::time::Instant::now());
        self.by_id.clear();
        let Some(root) = &self.root else {
            return;
        };
        let mut stack = vec![(root.clone(), String::new())];
        while let Some((dir, rel)) = stack.pop() {
            if let Ok(meta) = std::fs::metadata(&dir) {
                let path = if rel.is_empty() {
                    "/".to_owned()
                } else {
                    rel.clone()
                };
                self.by_id.insert(meta.ino(), path);
            }
            if self.by_id.len() >= MAX_CGROUPS {
                break;
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let name = e.file_name().to_string_lossy().into_owned();
                    stack.push((e.path(), format!("{rel}/{name}")));
                }
            }
        }
    }
}

struct Entry {
    proc: ProcInfo,
    resource: Arc<Resource>,
    /// Whether the process passes the `--k8s-namespace`/`--container`/`--service-name` filter.
    selected: bool,
    pod: Option<ContainerMeta>,
    /// Pod index generation `pod` was resolved at.
    generation: u64,
}

/// Per-process resources, built once per process and refreshed on exec, and when the pod of
/// its container becomes known or changes.
pub struct ResourceCache {
    proc: ProcRoot,
    host_name: String,
    k8s: Option<K8sMetadata>,
    filter: ResourceFilter,
    by_pid: HashMap<u32, Entry>,
    /// Spans dropped by the resource filter.
    filtered: u64,
    /// Resources built so far: part of each resource's key, so that two builds for the same
    /// process (after an exec, or new pod metadata) never share a key.
    builds: u64,
    /// Exited processes, kept for [`EXITED_GRACE`] (see [`Self::exited`]), and their order.
    gone: HashMap<u32, (std::time::Instant, Entry)>,
    gone_order: std::collections::VecDeque<(std::time::Instant, u32)>,
    /// Resource variables of the exec under way, by pid, until its `exec` event.
    exec_env: HashMap<u32, ExecEnv>,
    /// What the kernel saw at each recent exec, and the order they came in.
    exec_facts: HashMap<u32, ExecFacts>,
    exec_order: std::collections::VecDeque<u32>,
    cgroups: CgroupPaths,
    stats: ResourceStats,
}

/// How long the resource of an exited process stays available for its last spans.
const EXITED_GRACE: std::time::Duration = std::time::Duration::from_secs(30);
/// Bound on remembered exited processes (a fork storm must not grow memory).
const MAX_EXITED: usize = 4096;

impl ResourceCache {
    pub fn new(proc: ProcRoot) -> Self {
        let host_name = std::fs::read_to_string(proc.0.join("sys/kernel/hostname"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "localhost".to_owned());
        Self {
            proc,
            host_name,
            k8s: None,
            filter: ResourceFilter::default(),
            by_pid: HashMap::new(),
            filtered: 0,
            builds: 0,
            gone: HashMap::new(),
            gone_order: std::collections::VecDeque::new(),
            exec_env: HashMap::new(),
            exec_facts: HashMap::new(),
            exec_order: std::collections::VecDeque::new(),
            cgroups: CgroupPaths::new(CgroupPaths::mounted()),
            stats: ResourceStats::default(),
        }
    }

    /// Where the cgroup v2 hierarchy is mounted (tests use a fake).
    pub fn with_cgroup_root(mut self, root: PathBuf) -> Self {
        self.cgroups = CgroupPaths::new(Some(root));
        self
    }

    /// Counters of resource detection.
    pub fn stats(&self) -> ResourceStats {
        self.stats
    }

    /// The kernel read the resource variables of a program being started; its `exec` follows.
    pub fn exec_env(&mut self, env: ExecEnv) {
        self.stats.exec_env_seen += 1;
        if env.truncated {
            self.stats.exec_env_truncated += 1;
        }
        if self.exec_env.len() >= MAX_EXEC_FACTS {
            // Envs whose exec never came (not possible from the kernel's order, but bounded).
            self.exec_env.clear();
        }
        self.exec_env.insert(env.pid, env);
    }

    /// `pid` exec'd a new image in cgroup `cgroup_id`: its resource is read again, and what the
    /// kernel saw is kept for when `/proc` no longer has it.
    pub fn exec(&mut self, pid: u32, cgroup_id: u64) {
        self.invalidate(pid);
        let facts = ExecFacts {
            cgroup_id,
            env: self.exec_env.remove(&pid),
        };
        if self.exec_facts.insert(pid, facts).is_none() {
            self.exec_order.push_back(pid);
        }
        while self.exec_order.len() > MAX_EXEC_FACTS {
            if let Some(old) = self.exec_order.pop_front() {
                self.exec_facts.remove(&old);
                self.stats.exec_facts_evicted += 1;
            }
        }
    }

    /// Completes what procfs could not say of a process that is already gone.
    fn complete_from_exec(&mut self, proc: &mut ProcInfo) {
        let Some(facts) = self.exec_facts.get(&proc.pid) else {
            return;
        };
        let mut used = false;
        if !proc.read_env
            && let Some(env) = &facts.env
        {
            proc.otel_service_name = env.service_name.clone();
            proc.env_attributes = env
                .resource_attributes
                .as_deref()
                .map(parse_resource_attributes)
                .unwrap_or_default();
            used = true;
        }
        if !proc.read_cgroup && facts.cgroup_id != 0 {
            let id = facts.cgroup_id;
            match self.cgroups.path(id) {
                Some(path) => {
                    proc.container_id = container_id_from_cgroup(&format!("0::{path}"));
                    used = true;
                }
                None => self.stats.cgroup_unresolved += 1,
            }
        }
        if used {
            self.stats.from_exec += 1;
        }
    }

    /// Adds Kubernetes pod metadata to the resources of processes in this node's pods.
    pub fn with_k8s(mut self, k8s: Option<K8sMetadata>) -> Self {
        self.k8s = k8s;
        self
    }

    /// Keeps only spans of processes matching `filter` (see [`Self::get_selected`]).
    pub fn with_filter(mut self, filter: ResourceFilter) -> Self {
        self.filter = filter;
        self
    }

    /// The resource of `pid`, read from procfs the first time it is needed. `comm` (the task
    /// name the kernel reported) names a process that has already exited.
    pub fn get(&mut self, pid: u32, comm: Option<&str>) -> Arc<Resource> {
        self.entry(pid, comm).resource.clone()
    }

    /// Like [`Self::get`], but `None` (and counted) when the process does not pass the resource
    /// filter: its spans are not exported.
    pub fn get_selected(&mut self, pid: u32, comm: Option<&str>) -> Option<Arc<Resource>> {
        let e = self.entry(pid, comm);
        if e.selected {
            Some(e.resource.clone())
        } else {
            self.filtered += 1;
            None
        }
    }

    /// The Kubernetes metadata in use, if any.
    pub fn k8s(&self) -> Option<&K8sMetadata> {
        self.k8s.as_ref()
    }

    /// Spans dropped so far because their process did not match the resource filter.
    pub fn filtered(&self) -> u64 {
        self.filtered
    }

    fn entry(&mut self, pid: u32, comm: Option<&str>) -> &Entry {
        let generation = self.k8s.as_ref().map_or(0, |k| k.index.generation());
        let lookup = |k8s: &Option<K8sMetadata>, proc: &ProcInfo| match (k8s, &proc.container_id) {
            (Some(k), Some(id)) => k.index.lookup(id),
            _ => None,
        };
        if !self.by_pid.contains_key(&pid) && self.exited_still_gone(pid) {
            return &self.gone[&pid].1;
        }
        match self.by_pid.get_mut(&pid) {
            Some(e) if e.generation == generation => {}
            Some(e) => {
                let found = lookup(&self.k8s, &e.proc);
                // A pod deleted while its process still runs keeps its attributes; an
                // unrelated change in the index rebuilds nothing.
                if found.is_none() || found == e.pod {
                    e.generation = generation;
                } else if let Some(e) = self.by_pid.remove(&pid) {
                    let entry = self.make_entry(e.proc, found, generation);
                    self.by_pid.insert(pid, entry);
                }
            }
            None => {
                let mut proc = ProcInfo::read(&self.proc, pid, comm);
                self.complete_from_exec(&mut proc);
                let pod = lookup(&self.k8s, &proc);
                let entry = self.make_entry(proc, pod, generation);
                self.by_pid.insert(pid, entry);
            }
        }
        &self.by_pid[&pid]
    }

    /// Whether `pid` is a process that exited recently and was not replaced by a new process
    /// with the same pid (which would have another start time).
    fn exited_still_gone(&self, pid: u32) -> bool {
        let Some((_, e)) = self.gone.get(&pid) else {
            return false;
        };
        let stat = std::fs::read_to_string(self.proc.0.join(pid.to_string()).join("stat"));
        match stat.ok().and_then(|s| stat_start_time(&s)) {
            None => true,
            Some(start) => start == e.proc.start_time,
        }
    }

    fn make_entry(&mut self, proc: ProcInfo, pod: Option<ContainerMeta>, generation: u64) -> Entry {
        self.builds = self.builds.wrapping_add(1);
        let version = self.builds;
        let resource = build_resource(
            &proc,
            &self.host_name,
            self.k8s.as_ref(),
            pod.as_ref(),
            version,
        );
        let selected = !self.filter.is_active()
            || self.filter.matches(&ResourceFacts {
                service_name: resource.service_name(),
                namespace: pod.as_ref().map(|c| c.pod.namespace.as_str()),
                container_name: pod.as_ref().map(|c| c.container_name.as_str()),
                container_id: proc.container_id.as_deref(),
            });
        Entry {
            proc,
            resource: Arc::new(resource),
            selected,
            pod,
            generation,
        }
    }

    /// Whether `pid` is cached (cheap check before building the arguments of [`Self::get`]).
    pub fn contains(&self, pid: u32) -> bool {
        self.by_pid.contains_key(&pid)
    }

    /// Forget `pid` (it exec'd a new image); the next span re-reads it.
    pub fn invalidate(&mut self, pid: u32) {
        self.by_pid.remove(&pid);
    }

    /// `pid` exited. Its resource is kept a little longer: spans of its last connections are
    /// often completed after the exit event (a client's response paired at close), when procfs
    /// no longer knows the process. A new process reusing the pid is told apart by its start
    /// time.
    pub fn exited(&mut self, pid: u32) {
        let now = std::time::Instant::now();
        while self.gone_order.front().is_some_and(|(t, _)| {
            now.duration_since(*t) > EXITED_GRACE || self.gone_order.len() > MAX_EXITED
        }) {
            if let Some((t, p)) = self.gone_order.pop_front()
                && self.gone.get(&p).is_some_and(|(at, _)| *at == t)
            {
                self.gone.remove(&p);
            }
        }
        if let Some(e) = self.by_pid.remove(&pid) {
            self.gone.insert(pid, (now, e));
            self.gone_order.push_back((now, pid));
        }
    }

    pub fn len(&self) -> usize {
        self.by_pid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
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

/// Decodes `%XX` escapes (malformed ones are kept as they are), as in `OTEL_RESOURCE_ATTRIBUTES`
/// values and gRPC's `grpc-message`.
pub(crate) fn percent_decode(s: &str) -> String {
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

/// Field 22 of `/proc/PID/stat`: start time in clock ticks.
fn stat_start_time(stat: &str) -> Option<u64> {
    stat_field(stat, 22)
}

/// Extracts a container id (64 hex characters) from `/proc/PID/cgroup`, as written by Docker,
/// containerd/CRI, CRI-O and Podman with the cgroupfs or systemd driver, on cgroup v1
/// (`N:controllers:/path` lines), v2 (`0::/path`) and hybrid hosts (both; the v2 line may be
/// `0::/` while the v1 lines hold the id, so every line is looked at). The innermost path segment
/// that names a container wins: `<id>` (cgroupfs: `/docker/<id>`,
/// `/kubepods/burstable/pod<uid>/<id>`) or `<prefix>-<id>[.scope]` (`docker-`,
/// `cri-containerd-`, `crio-`, `libpod-`, ...). The monitor processes of CRI-O and Podman
/// (`crio-conmon-<id>`, `libpod-conmon-<id>`) carry their container's id but are not inside it,
/// so they get none. Paths seen from a private cgroup namespace (`/../../kubepods-...`) work too.
/// Examples of every shape are in `agent/tests/data/cgroup/`.
pub fn container_id_from_cgroup(cgroup: &str) -> Option<String> {
    cgroup
        .lines()
        .find_map(|line| container_id_from_path(line.splitn(3, ':').nth(2)?))
}

/// The container id of one cgroup path (see [`container_id_from_cgroup`]).
fn container_id_from_path(path: &str) -> Option<String> {
    for segment in path.rsplit('/') {
        let unit = segment.strip_suffix(".scope").unwrap_or(segment);
        let (prefix, id) = match unit.rfind(['-', ':']) {
            Some(i) => (&unit[..i], &unit[i + 1..]),
            None => ("", unit),
        };
        if id.len() == 64 && id.bytes().all(|c| c.is_ascii_hexdigit()) {
            if prefix.ends_with("conmon") {
                return None;
            }
            return Some(id.to_ascii_lowercase());
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
            // Upper case is normalised; docker-in-docker gives the innermost container.
            format!("0::/docker/{}", ID.to_ascii_uppercase()),
            format!("0::/docker/{}/docker/{ID}", "0".repeat(64)),
        ] {
            assert_eq!(
                container_id_from_cgroup(&line).as_deref(),
                Some(ID),
                "{line}"
            );
        }
        for not_a_container in [
            "0::/user.slice/session-2.scope".to_owned(),
            format!("0::/machine.slice/libpod-conmon-{ID}.scope"),
            format!("0::/kubepods/besteffort/pod1/crio-conmon-{ID}"),
            // 63 and 65 hex digits, a 64-character non-hex name.
            format!("0::/docker/{}", &ID[1..]),
            format!("0::/docker/{ID}0"),
            format!("0::/docker/{}", "g".repeat(64)),
            String::new(),
            "garbage without colons".to_owned(),
        ] {
            assert_eq!(
                container_id_from_cgroup(&not_a_container),
                None,
                "{not_a_container}"
            );
        }
    }

    /// Real shapes of `/proc/PID/cgroup` per runtime, driver and cgroup version; where each
    /// comes from is in `agent/tests/data/cgroup/README.md`.
    #[test]
    fn container_ids_of_recorded_cgroup_files() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                "docker-cgroupfs-v1",
                Some("62f76840cd9ba6b7d1c03ef534f76bda700635e39c81211612487b78aba75a5c"),
            ),
            (
                "docker-systemd-v1",
                Some("dcb18cd70c8d8fae24d53c04801bc4f6520b25fda3ba057ff13df9fae72e65e9"),
            ),
            (
                "docker-cgroupfs-hybrid",
                Some("5f4db9b658ed5e3cd18685af520963fedc4f8ea91b64fc6e9bfe3bb8cab3ef95"),
            ),
            (
                "docker-systemd-hybrid",
                Some("abdbf0e8b86b2b9251f766c415bfe626b3ef95f8269e7c8fd682c1069f4a7bba"),
            ),
            (
                "docker-systemd-v2",
                Some("91684ecb012a8fe79dee4d5d577d9b9bc4cea104195fe9e3cd212b8a22962afe"),
            ),
            (
                "docker-cgroupfs-v2",
                Some("e58f2b18f9337b5e18fd61258ae65d0e4c75acfd69b09828943e583e21277415"),
            ),
            (
                "docker-rootless-systemd-v2",
                Some("dcec1d912a8df1460d15b6890497555d904141de4160648d9ce4f296868f4076"),
            ),
            (
                "containerd-k8s-cgroupfs-v1",
                Some("266e1eefed9f9c4f20928f04f3e936f9e3e5d9e320e441f0442790306f185843"),
            ),
            (
                "containerd-k8s-cgroupfs-hybrid",
                Some("326e144d3d9df5a70f5370e3c102a888d462fab06b0085ab5ef362b2d59ad047"),
            ),
            (
                "containerd-k8s-guaranteed-cgroupfs-v2",
                Some("10aabca721c8b5bc7a2c8fb4025ffb93f5b778204892e224c28b2301507d5c7c"),
            ),
            (
                "containerd-k8s-systemd-hybrid",
                Some("3dcaf75b59c64a26b0b9e9581e420180faa711eeaeef69781a7397d72d12c639"),
            ),
            (
                "containerd-k8s-systemd-v2",
                Some("8808d367ea1018d575c42061229a5c463f6388108ea630ae38e57dd68d0bcd8b"),
            ),
            (
                "containerd-k8s-systemd-v2-seen-from-pod",
                Some("8808d367ea1018d575c42061229a5c463f6388108ea630ae38e57dd68d0bcd8b"),
            ),
            (
                "crio-k8s-systemd-v1",
                Some("64d71a517777459a4e9dd0f21a25bd47478579f9a27444b4240820176849c352"),
            ),
            ("crio-conmon-k8s-systemd-v1", None),
            (
                "crio-k8s-systemd-v2",
                Some("db984e9e26394027e1af4f6b91e352a9efd287db3901c9a16a4d142d05708512"),
            ),
            ("crio-conmon-k8s-systemd-v2", None),
            (
                "crio-k8s-cgroupfs-v1",
                Some("57d0338553e67d96f29ea109e798cd62b2f9b72f2969d99187e1b36942544e95"),
            ),
            (
                "podman-systemd-v2",
                Some("2685e3f37305960ab62c2c247e87bab7e6c8fad69fff7c0aa052ddc7f1c80063"),
            ),
            ("podman-conmon-systemd-v2", None),
            (
                "podman-rootless-v2",
                Some("62f76840cd9ba6b7d1c03ef534f76bda700635e39c81211612487b78aba75a5c"),
            ),
            ("podman-conmon-rootless-v2", None),
            (
                "podman-cgroupfs-v1",
                Some("dcb18cd70c8d8fae24d53c04801bc4f6520b25fda3ba057ff13df9fae72e65e9"),
            ),
            (
                "podman-systemd-hybrid",
                Some("5f4db9b658ed5e3cd18685af520963fedc4f8ea91b64fc6e9bfe3bb8cab3ef95"),
            ),
            ("host-session-v2", None),
            ("host-service-hybrid", None),
            ("host-no-systemd-hybrid", None),
        ];
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cgroup");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .expect("fixture dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|n| n.strip_suffix(".cgroup").map(str::to_owned))
            .collect();
        files.sort();
        let mut named: Vec<String> = cases.iter().map(|(n, _)| (*n).to_owned()).collect();
        named.sort();
        assert_eq!(
            files, named,
            "every fixture has an expectation and vice versa"
        );
        for (name, want) in cases {
            let text = std::fs::read_to_string(dir.join(format!("{name}.cgroup")))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(container_id_from_cgroup(&text).as_deref(), *want, "{name}");
        }
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

    use crate::resource::k8s::{Owners, PodIndex, PodMeta};

    fn attr<'a>(r: &'a Resource, key: &str) -> Option<&'a Value> {
        r.attributes
            .iter()
            .find(|kv| kv.key == key)
            .map(|kv| &kv.value)
    }

    fn s(v: &str) -> Option<Value> {
        Some(Value::from(v))
    }

    fn container(pod: PodMeta, name: &str) -> ContainerMeta {
        ContainerMeta {
            pod: Arc::new(pod),
            container_name: name.to_owned(),
        }
    }

    fn full_pod() -> PodMeta {
        PodMeta {
            namespace: "shop".into(),
            name: "checkout-7c9f-x2x4z".into(),
            uid: "6b1d0f8e-1d5c-4a8f-9c33-0d2b6c0f4a11".into(),
            service_name_annotation: Some("from-annotation".into()),
            app_name_label: Some("from-label".into()),
            owners: Owners {
                deployment: Some("checkout".into()),
                replicaset: Some("checkout-7c9f".into()),
                ..Owners::default()
            },
        }
    }

    #[test]
    fn service_name_ladder_every_rung() {
        let mut proc = ProcInfo {
            pid: 7,
            exe_name: "python3".into(),
            otel_service_name: Some("from-env".into()),
            env_attributes: vec![("service.name".into(), "from-attrs".into())],
            ..ProcInfo::default()
        };
        let mut pod = full_pod();
        let name = |proc: &ProcInfo, pod: &PodMeta| {
            service_name(proc, Some(&container(pod.clone(), "app")))
        };
        assert_eq!(name(&proc, &pod), "from-env");
        proc.otel_service_name = None;
        assert_eq!(name(&proc, &pod), "from-attrs");
        proc.env_attributes.clear();
        assert_eq!(name(&proc, &pod), "from-annotation");
        pod.service_name_annotation = None;
        assert_eq!(name(&proc, &pod), "from-label");
        pod.app_name_label = None;
        assert_eq!(
            name(&proc, &pod),
            "checkout",
            "Deployment through its ReplicaSet"
        );
        pod.owners.deployment = None;
        assert_eq!(name(&proc, &pod), "checkout-7c9f", "bare ReplicaSet");
        for (owners, want) in [
            (
                Owners {
                    statefulset: Some("db".into()),
                    ..Owners::default()
                },
                "db",
            ),
            (
                Owners {
                    daemonset: Some("agent".into()),
                    ..Owners::default()
                },
                "agent",
            ),
            (
                Owners {
                    cronjob: Some("backup".into()),
                    job: Some("backup-2900".into()),
                    ..Owners::default()
                },
                "backup",
            ),
            (
                Owners {
                    job: Some("migrate".into()),
                    ..Owners::default()
                },
                "migrate",
            ),
        ] {
            pod.owners = owners;
            assert_eq!(name(&proc, &pod), want);
        }
        pod.owners = Owners::default();
        assert_eq!(name(&proc, &pod), "checkout-7c9f-x2x4z", "pod name");
        pod.name.clear();
        assert_eq!(name(&proc, &pod), "app", "container name");
        assert_eq!(service_name(&proc, None), "python3", "executable name");
        // Empty values do not count as set.
        proc.env_attributes = vec![("service.name".into(), String::new())];
        assert_eq!(service_name(&proc, None), "python3");
    }

    fn k8s_meta(index: Arc<PodIndex>, cluster: Option<&str>) -> K8sMetadata {
        K8sMetadata {
            index,
            node_name: "node-a".into(),
            cluster_name: cluster.map(str::to_owned),
        }
    }

    #[test]
    fn pod_attributes_and_service_namespace() {
        let proc = ProcInfo {
            pid: 7,
            exe_name: "python3".into(),
            container_id: Some(ID.into()),
            env_attributes: vec![
                ("deployment.environment".into(), "prod".into()),
                ("k8s.pod.name".into(), "ignored-api-wins".into()),
            ],
            ..ProcInfo::default()
        };
        let k8s = k8s_meta(Arc::new(PodIndex::new()), Some("east"));
        let c = container(full_pod(), "app");
        let r = build_resource(&proc, "host", Some(&k8s), Some(&c), 1);
        assert_eq!(attr(&r, "service.name").cloned(), s("from-annotation"));
        assert_eq!(attr(&r, "service.namespace").cloned(), s("shop"));
        assert_eq!(attr(&r, "k8s.namespace.name").cloned(), s("shop"));
        assert_eq!(attr(&r, "k8s.pod.name").cloned(), s("checkout-7c9f-x2x4z"));
        assert_eq!(
            attr(&r, "k8s.pod.uid").cloned(),
            s("6b1d0f8e-1d5c-4a8f-9c33-0d2b6c0f4a11")
        );
        assert_eq!(attr(&r, "k8s.container.name").cloned(), s("app"));
        assert_eq!(attr(&r, "k8s.node.name").cloned(), s("node-a"));
        assert_eq!(attr(&r, "k8s.cluster.name").cloned(), s("east"));
        assert_eq!(attr(&r, "k8s.deployment.name").cloned(), s("checkout"));
        assert_eq!(attr(&r, "k8s.replicaset.name").cloned(), s("checkout-7c9f"));
        assert_eq!(attr(&r, "k8s.statefulset.name"), None);
        assert_eq!(attr(&r, "container.id").cloned(), s(ID));
        assert_eq!(attr(&r, "deployment.environment").cloned(), s("prod"));
        assert_eq!(
            r.attributes
                .iter()
                .filter(|kv| kv.key == "k8s.pod.name")
                .count(),
            1
        );

        // The process's own service.namespace wins.
        let mut own = proc.clone();
        own.env_attributes
            .push(("service.namespace".into(), "payments".into()));
        let r = build_resource(&own, "host", Some(&k8s), Some(&c), 2);
        assert_eq!(attr(&r, "service.namespace").cloned(), s("payments"));
        assert_eq!(
            r.attributes
                .iter()
                .filter(|kv| kv.key == "service.namespace")
                .count(),
            1
        );

        // No pod: no k8s attributes but the configured cluster name.
        let r = build_resource(&proc, "host", Some(&k8s), None, 3);
        assert!(
            !r.attributes.iter().any(|kv| kv.key.starts_with("k8s.")
                && kv.key != "k8s.cluster.name"
                && kv.key != "k8s.pod.name"),
            "{:?}",
            r.attributes
        );
        assert_eq!(attr(&r, "service.namespace"), None);
        // (k8s.pod.name here comes from the process's own OTEL_RESOURCE_ATTRIBUTES.)
        assert_eq!(attr(&r, "k8s.pod.name").cloned(), s("ignored-api-wins"));
    }

    /// A fake `/proc` with one process in a CRI container.
    fn fake_proc(tag: &str, pid: u32, environ: &str) -> ProcRoot {
        let root =
            std::env::temp_dir().join(format!("socktrace-proc-{tag}-{}", std::process::id()));
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("comm"), "server\n").unwrap();
        std::fs::write(dir.join("environ"), environ.replace(' ', "\0")).unwrap();
        std::fs::write(
            dir.join("stat"),
            format!("{pid} (server) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 777 0 0"),
        )
        .unwrap();
        std::fs::write(
            dir.join("cgroup"),
            format!("0::/kubepods.slice/cri-containerd-{ID}.scope\n"),
        )
        .unwrap();
        ProcRoot(root)
    }

    /// A process gone before its first span is read: what the kernel saw at its exec names it.
    #[test]
    fn exited_process_is_completed_from_its_exec() {
        use std::os::unix::fs::MetadataExt as _;
        let tag = format!("exec-{}", std::process::id());
        let proc_root = std::env::temp_dir().join(format!("socktrace-proc-{tag}"));
        std::fs::create_dir_all(&proc_root).unwrap();
        let cgroups = std::env::temp_dir().join(format!("socktrace-cgroup-{tag}"));
        let leaf = cgroups.join(format!("kubepods.slice/cri-containerd-{ID}.scope"));
        std::fs::create_dir_all(&leaf).unwrap();
        let leaf_id = std::fs::metadata(&leaf).unwrap().ino();
        let mut cache =
            ResourceCache::new(ProcRoot(proc_root.clone())).with_cgroup_root(cgroups.clone());

        cache.exec_env(ExecEnv {
            pid: 5001,
            service_name: Some("short-lived".into()),
            resource_attributes: Some("deployment.environment=ci,team=a%20b".into()),
            truncated: false,
        });
        cache.exec(5001, leaf_id);
        // Exec'd without the variables, in an unknown cgroup.
        cache.exec(5002, 1);
        // No exec seen at all.
        let short = cache.get(5001, Some("psql"));
        let plain = cache.get(5002, Some("curl"));
        let unknown = cache.get(5003, Some("wget"));

        assert_eq!(short.service_name(), "short-lived");
        assert_eq!(attr(&short, "deployment.environment").cloned(), s("ci"));
        assert_eq!(attr(&short, "team").cloned(), s("a b"));
        assert_eq!(attr(&short, "container.id").cloned(), s(ID));
        assert_eq!(attr(&short, "process.executable.name").cloned(), s("psql"));
        assert_eq!(plain.service_name(), "curl");
        assert_eq!(attr(&plain, "container.id"), None);
        assert_eq!(unknown.service_name(), "wget");
        assert_eq!(
            cache.stats(),
            ResourceStats {
                exec_env_seen: 1,
                exec_env_truncated: 0,
                from_exec: 1,
                exec_facts_evicted: 0,
                cgroup_unresolved: 1,
            }
        );

        // A live process is read from procfs, whatever the exec said.
        let live = fake_proc(&tag, 5004, "OTEL_SERVICE_NAME=from-procfs");
        let mut cache = ResourceCache::new(live).with_cgroup_root(cgroups.clone());
        cache.exec_env(ExecEnv {
            pid: 5004,
            service_name: Some("from-exec".into()),
            ..ExecEnv::default()
        });
        cache.exec(5004, leaf_id);
        assert_eq!(cache.get(5004, None).service_name(), "from-procfs");
        assert_eq!(cache.stats().from_exec, 0);

        // Bounded: the oldest facts go first, counted.
        for pid in 0..(MAX_EXEC_FACTS as u32 + 3) {
            cache.exec(10_000 + pid, 0);
        }
        assert_eq!(cache.stats().exec_facts_evicted, 4);
        assert_eq!(cache.exec_facts.len(), MAX_EXEC_FACTS);
        let _ = std::fs::remove_dir_all(&proc_root);
        let _ = std::fs::remove_dir_all(&cgroups);
    }

    #[test]
    fn cache_picks_up_pod_metadata_that_arrives_after_the_first_span() {
        let proc = fake_proc("late", 4242, "PATH=/bin OTEL_RESOURCE_ATTRIBUTES=team=a");
        let index = Arc::new(PodIndex::new());
        let mut cache = ResourceCache::new(proc).with_k8s(Some(k8s_meta(index.clone(), None)));
        let first = cache.get(4242, None);
        assert_eq!(first.service_name(), "server");
        assert_eq!(attr(&first, "container.id").cloned(), s(ID));
        assert_eq!(attr(&first, "k8s.pod.name"), None);
        // Unchanged index: the same Arc, nothing rebuilt.
        assert!(Arc::ptr_eq(&first, &cache.get(4242, None)));

        let mut pod = full_pod();
        pod.service_name_annotation = None;
        index.upsert(pod.clone(), vec![(ID.into(), "app".into())]);
        let second = cache.get(4242, None);
        assert_eq!(second.service_name(), "from-label");
        assert_eq!(
            attr(&second, "k8s.pod.name").cloned(),
            s("checkout-7c9f-x2x4z")
        );
        assert_eq!(attr(&second, "team").cloned(), s("a"));
        assert_ne!(first.key, second.key);

        // Another pod changing does not rebuild this process's resource.
        index.upsert(
            PodMeta {
                uid: "other".into(),
                ..PodMeta::default()
            },
            vec![("ff".into(), "x".into())],
        );
        assert!(Arc::ptr_eq(&second, &cache.get(4242, None)));

        // MODIFIED: a new label shows up.
        pod.app_name_label = Some("relabelled".into());
        index.upsert(pod.clone(), vec![(ID.into(), "app".into())]);
        assert_eq!(cache.get(4242, None).service_name(), "relabelled");

        // DELETED while the process still runs: the last known pod stays.
        index.remove(&pod.uid);
        assert_eq!(cache.get(4242, None).service_name(), "relabelled");
    }

    #[test]
    fn resource_filter_applies_to_the_resolved_resource() {
        let proc = fake_proc("filter", 4343, "OTEL_SERVICE_NAME=checkout");
        let index = Arc::new(PodIndex::new());
        let mut cache = ResourceCache::new(proc)
            .with_k8s(Some(k8s_meta(index.clone(), None)))
            .with_filter(ResourceFilter::new(
                &["shop".into()],
                &[],
                &["check*".into()],
            ));
        assert!(cache.get_selected(4343, None).is_none(), "no pod yet");
        assert_eq!(cache.filtered(), 1);
        index.upsert(full_pod(), vec![(ID.into(), "app".into())]);
        let r = cache
            .get_selected(4343, None)
            .expect("selected once in shop");
        assert_eq!(r.service_name(), "checkout");

        let proc = fake_proc("filter2", 4344, "");
        let mut cache = ResourceCache::new(proc).with_filter(ResourceFilter::new(
            &[],
            &[ID[..12].to_owned()],
            &[],
        ));
        assert!(
            cache.get_selected(4344, None).is_some(),
            "container id prefix"
        );
    }

    #[test]
    fn exited_process_keeps_its_resource_until_the_pid_is_reused() {
        let proc = fake_proc("exit", 4545, "OTEL_SERVICE_NAME=short-lived");
        let dir = proc.0.join("4545");
        let mut cache = ResourceCache::new(proc);
        let alive = cache.get(4545, Some("curl"));
        assert_eq!(alive.service_name(), "short-lived");
        cache.exited(4545);
        std::fs::remove_dir_all(&dir).unwrap();
        // The last span, completed after the exit event: still the same process.
        assert!(Arc::ptr_eq(&alive, &cache.get(4545, Some("curl"))));
        // A new process with the same pid (another start time) is read afresh.
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("stat"),
            "4545 (sh) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 999 0 0",
        )
        .unwrap();
        let reused = cache.get(4545, Some("sh"));
        assert_eq!(reused.service_name(), "sh");
    }
}
