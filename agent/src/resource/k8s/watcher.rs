//! Keeps the pod index in step with the API server: list this node's pods, then watch from the
//! list's resource version; relist when the watch expires or after an outage.
//!
//! An unreachable or refusing API server is reported once per outage (a warning naming the
//! cause) and once when it answers again; in between, retries back off up to [`MAX_BACKOFF`].

use std::{collections::HashMap, sync::Arc, time::Duration};

use super::{
    client::{ApiClient, ApiError, WATCH_SECONDS},
    index::PodIndex,
    model::{
        MetaOnly, OwnerReference, Owners, Pod, PodList, PodMeta, Status,
        deployment_from_replicaset_name,
    },
};

const MIN_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Owner lookups remembered; a node's pods have far fewer distinct owners.
const MAX_OWNER_CACHE: usize = 4096;

/// The workload kinds whose own controller is looked up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ParentKind {
    /// ReplicaSet -> Deployment.
    ReplicaSet,
    /// Job -> CronJob.
    Job,
}

impl ParentKind {
    fn path(self, namespace: &str, name: &str) -> String {
        let (group, plural) = match self {
            ParentKind::ReplicaSet => ("apps/v1", "replicasets"),
            ParentKind::Job => ("batch/v1", "jobs"),
        };
        format!(
            "/apis/{group}/namespaces/{}/{plural}/{}",
            enc(namespace),
            enc(name)
        )
    }
    fn parent_kind(self) -> &'static str {
        match self {
            ParentKind::ReplicaSet => "Deployment",
            ParentKind::Job => "CronJob",
        }
    }
    fn resource(self) -> &'static str {
        match self {
            ParentKind::ReplicaSet => "replicasets",
            ParentKind::Job => "jobs",
        }
    }
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Reads the controller of a ReplicaSet or Job (the API client; a fake in tests).
pub(crate) trait ParentLookup {
    async fn controller_of(
        &self,
        kind: ParentKind,
        namespace: &str,
        name: &str,
    ) -> Result<Option<OwnerReference>, ApiError>;
}

impl ParentLookup for ApiClient {
    async fn controller_of(
        &self,
        kind: ParentKind,
        namespace: &str,
        name: &str,
    ) -> Result<Option<OwnerReference>, ApiError> {
        let obj: MetaOnly = self.get(&kind.path(namespace, name)).await?;
        Ok(obj.metadata.controller().cloned())
    }
}

/// Resolves pod owners to workload names, caching the ReplicaSet -> Deployment and
/// Job -> CronJob lookups.
#[derive(Default)]
pub(crate) struct OwnerResolver {
    cache: HashMap<(ParentKind, String, String), Option<String>>,
    /// Kinds RBAC does not let us read: not asked again.
    forbidden: Vec<ParentKind>,
}

impl OwnerResolver {
    pub(crate) async fn resolve(&mut self, pod: &Pod, api: &impl ParentLookup) -> Owners {
        let mut owners = Owners::default();
        let Some(owner) = pod.metadata.controller() else {
            return owners;
        };
        let ns = &pod.metadata.namespace;
        match owner.kind.as_str() {
            "ReplicaSet" => {
                owners.replicaset = Some(owner.name.clone());
                owners.deployment = match self
                    .parent(ParentKind::ReplicaSet, ns, &owner.name, api)
                    .await
                {
                    Ok(d) => d,
                    // Cannot ask: the Deployment controller names ReplicaSets
                    // `<deployment>-<pod-template-hash>`.
                    Err(()) => deployment_from_replicaset_name(&owner.name, pod),
                };
            }
            "Job" => {
                owners.job = Some(owner.name.clone());
                owners.cronjob = self
                    .parent(ParentKind::Job, ns, &owner.name, api)
                    .await
                    .unwrap_or(None);
            }
            "StatefulSet" => owners.statefulset = Some(owner.name.clone()),
            "DaemonSet" => owners.daemonset = Some(owner.name.clone()),
            _ => {}
        }
        owners
    }

    /// The parent's name (`Ok(None)`: it has no parent of the expected kind), or `Err` when
    /// the object could not be read.
    async fn parent(
        &mut self,
        kind: ParentKind,
        namespace: &str,
        name: &str,
        api: &impl ParentLookup,
    ) -> Result<Option<String>, ()> {
        if self.forbidden.contains(&kind) {
            return Err(());
        }
        let key = (kind, namespace.to_owned(), name.to_owned());
        if let Some(v) = self.cache.get(&key) {
            return Ok(v.clone());
        }
        match api.controller_of(kind, namespace, name).await {
            Ok(owner) => {
                let parent = owner
                    .filter(|o| o.kind == kind.parent_kind())
                    .map(|o| o.name);
                if self.cache.len() >= MAX_OWNER_CACHE {
                    self.cache.clear();
                }
                self.cache.insert(key, parent.clone());
                Ok(parent)
            }
            Err(e) if e.status() == Some(403) => {
                tracing::info!(
                    "Kubernetes RBAC does not allow reading {}: {}",
                    kind.resource(),
                    match kind {
                        ParentKind::ReplicaSet =>
                            "Deployment names are derived from ReplicaSet names",
                        ParentKind::Job => "CronJob names are left out",
                    }
                );
                self.forbidden.push(kind);
                Err(())
            }
            Err(e) => {
                tracing::debug!("looking up the owner of {namespace}/{name}: {e}");
                Err(())
            }
        }
    }
}

/// How a watch request ended.
enum WatchEnd {
    /// The server closed it (timeout): watch again from the last resource version.
    Closed,
    /// The resource version is too old (410 Gone): list again.
    Expired,
}

pub struct Watcher {
    client: ApiClient,
    source: String,
    node: String,
    index: Arc<PodIndex>,
    owners: OwnerResolver,
}

impl Watcher {
    pub fn new(client: ApiClient, source: String, node: String, index: Arc<PodIndex>) -> Self {
        Self {
            client,
            source,
            node,
            index,
            owners: OwnerResolver::default(),
        }
    }

    fn pods_path(&self) -> String {
        format!(
            "/api/v1/pods?fieldSelector={}",
            enc(&format!("spec.nodeName={}", self.node))
        )
    }

    /// Runs forever (the task is dropped with the runtime at exit).
    pub async fn run(mut self) {
        let mut backoff = MIN_BACKOFF;
        let mut down = false;
        let mut connected_once = false;
        loop {
            let failure = match self.list().await {
                Ok(mut version) => {
                    let pods = self.index.pod_count();
                    if down {
                        tracing::info!(
                            "Kubernetes API at {} answers again: {pods} pods on node {}; pod attributes resume",
                            self.client.server(),
                            self.node
                        );
                    } else if !connected_once {
                        tracing::info!(
                            "Kubernetes metadata from {} ({}): {pods} pods on node {}",
                            self.source,
                            self.client.server(),
                            self.node
                        );
                    }
                    down = false;
                    connected_once = true;
                    backoff = MIN_BACKOFF;
                    loop {
                        match self.watch(&mut version).await {
                            Ok(WatchEnd::Closed) => continue,
                            Ok(WatchEnd::Expired) => break None,
                            Err(e) => break Some(e),
                        }
                    }
                }
                Err(e) => Some(e),
            };
            let Some(e) = failure else {
                tracing::debug!("Kubernetes watch expired; listing pods again");
                continue;
            };
            if down {
                tracing::debug!("Kubernetes API still unavailable: {e}");
            } else {
                tracing::warn!(
                    "Kubernetes metadata unavailable ({}): {e}; pod attributes are missing or stale until the API server answers (retrying, at most every {}s)",
                    self.source,
                    MAX_BACKOFF.as_secs()
                );
                down = true;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Lists this node's pods into the index; returns the list's resource version.
    async fn list(&mut self) -> Result<String, ApiError> {
        let list: PodList = self.client.get(&self.pods_path()).await?;
        let mut entries = Vec::with_capacity(list.items.len());
        for pod in &list.items {
            entries.push(self.entry(pod).await);
        }
        self.index.replace_all(entries);
        Ok(list.metadata.resource_version)
    }

    async fn entry(&mut self, pod: &Pod) -> (PodMeta, Vec<(String, String)>) {
        let owners = self.owners.resolve(pod, &self.client).await;
        let containers = pod
            .containers()
            .map(|(id, name)| (id, name.to_owned()))
            .collect();
        (PodMeta::from_pod(pod, owners), containers)
    }

    async fn watch(&mut self, version: &mut String) -> Result<WatchEnd, ApiError> {
        let path = format!(
            "{}&watch=1&allowWatchBookmarks=true&timeoutSeconds={WATCH_SECONDS}&resourceVersion={}",
            self.pods_path(),
            enc(version)
        );
        let mut stream = match self.client.watch(&path).await {
            Ok(s) => s,
            Err(e) if e.status() == Some(410) => return Ok(WatchEnd::Expired),
            Err(e) => return Err(e),
        };
        while let Some(event) = stream.next().await? {
            if event.kind == "ERROR" {
                let status: Status = serde_json::from_value(event.object).unwrap_or_default();
                if status.code == 410 {
                    return Ok(WatchEnd::Expired);
                }
                return Err(ApiError::Status {
                    url: format!("{}{path}", self.client.server()),
                    status: status.code,
                    message: status.message,
                });
            }
            let pod: Pod = match serde_json::from_value(event.object) {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!("ignored a malformed {} watch event: {e}", event.kind);
                    continue;
                }
            };
            if !pod.metadata.resource_version.is_empty() {
                version.clone_from(&pod.metadata.resource_version);
            }
            match event.kind.as_str() {
                "ADDED" | "MODIFIED" => {
                    if !pod.spec.node_name.is_empty() && pod.spec.node_name != self.node {
                        self.index.remove(&pod.metadata.uid);
                        continue;
                    }
                    let (meta, containers) = self.entry(&pod).await;
                    self.index.upsert(meta, containers);
                }
                "DELETED" => self.index.remove(&pod.metadata.uid),
                // BOOKMARK only moves the resource version.
                _ => {}
            }
        }
        Ok(WatchEnd::Closed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Answers owner lookups from a table; counts calls.
    struct FakeApi {
        owners: HashMap<(ParentKind, String), Result<Option<OwnerReference>, u16>>,
        calls: Mutex<usize>,
    }

    impl ParentLookup for FakeApi {
        async fn controller_of(
            &self,
            kind: ParentKind,
            _namespace: &str,
            name: &str,
        ) -> Result<Option<OwnerReference>, ApiError> {
            *self.calls.lock().unwrap() += 1;
            match self.owners.get(&(kind, name.to_owned())) {
                Some(Ok(o)) => Ok(o.clone()),
                Some(Err(status)) => Err(ApiError::Status {
                    url: String::new(),
                    status: *status,
                    message: String::new(),
                }),
                None => Err(ApiError::Status {
                    url: String::new(),
                    status: 404,
                    message: String::new(),
                }),
            }
        }
    }

    fn owner(kind: &str, name: &str) -> OwnerReference {
        OwnerReference {
            kind: kind.into(),
            name: name.into(),
            controller: Some(true),
        }
    }

    fn pod_owned_by(kind: &str, name: &str, hash: Option<&str>) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.namespace = "shop".into();
        pod.metadata.owner_references = vec![owner(kind, name)];
        if let Some(h) = hash {
            pod.metadata
                .labels
                .insert("pod-template-hash".into(), h.into());
        }
        pod
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn owners_of_every_kind() {
        let api = FakeApi {
            owners: HashMap::from([
                (
                    (ParentKind::ReplicaSet, "web-7c9f".to_owned()),
                    Ok(Some(owner("Deployment", "web"))),
                ),
                ((ParentKind::ReplicaSet, "bare-rs".to_owned()), Ok(None)),
                (
                    (ParentKind::Job, "backup-29000000".to_owned()),
                    Ok(Some(owner("CronJob", "backup"))),
                ),
                ((ParentKind::Job, "migrate".to_owned()), Ok(None)),
            ]),
            calls: Mutex::new(0),
        };
        let mut r = OwnerResolver::default();
        let o = block_on(r.resolve(&pod_owned_by("ReplicaSet", "web-7c9f", Some("7c9f")), &api));
        assert_eq!(
            (o.deployment.as_deref(), o.replicaset.as_deref()),
            (Some("web"), Some("web-7c9f"))
        );
        let o = block_on(r.resolve(&pod_owned_by("ReplicaSet", "bare-rs", None), &api));
        assert_eq!(
            (o.deployment.as_deref(), o.replicaset.as_deref()),
            (None, Some("bare-rs"))
        );
        let o = block_on(r.resolve(&pod_owned_by("Job", "backup-29000000", None), &api));
        assert_eq!(
            (o.cronjob.as_deref(), o.job.as_deref()),
            (Some("backup"), Some("backup-29000000"))
        );
        let o = block_on(r.resolve(&pod_owned_by("Job", "migrate", None), &api));
        assert_eq!(
            (o.cronjob.as_deref(), o.job.as_deref()),
            (None, Some("migrate"))
        );
        let o = block_on(r.resolve(&pod_owned_by("StatefulSet", "db", None), &api));
        assert_eq!(o.statefulset.as_deref(), Some("db"));
        let o = block_on(r.resolve(&pod_owned_by("DaemonSet", "agent", None), &api));
        assert_eq!(o.daemonset.as_deref(), Some("agent"));
        let o = block_on(r.resolve(&pod_owned_by("Node", "node-1", None), &api));
        assert_eq!(o, Owners::default());
        assert_eq!(
            block_on(r.resolve(&Pod::default(), &api)),
            Owners::default()
        );

        // Lookups are cached: a second pod of the same ReplicaSet asks nothing.
        let before = *api.calls.lock().unwrap();
        let o = block_on(r.resolve(&pod_owned_by("ReplicaSet", "web-7c9f", Some("7c9f")), &api));
        assert_eq!(o.deployment.as_deref(), Some("web"));
        assert_eq!(*api.calls.lock().unwrap(), before);
    }

    #[test]
    fn forbidden_replicaset_falls_back_to_the_hash_suffix_and_is_not_asked_again() {
        let api = FakeApi {
            owners: HashMap::from([
                (
                    (ParentKind::ReplicaSet, "api-5d8f7c9b6".to_owned()),
                    Err(403),
                ),
                ((ParentKind::Job, "nightly-1".to_owned()), Err(403)),
            ]),
            calls: Mutex::new(0),
        };
        let mut r = OwnerResolver::default();
        let o = block_on(r.resolve(
            &pod_owned_by("ReplicaSet", "api-5d8f7c9b6", Some("5d8f7c9b6")),
            &api,
        ));
        assert_eq!(o.deployment.as_deref(), Some("api"));
        assert_eq!(o.replicaset.as_deref(), Some("api-5d8f7c9b6"));
        let o = block_on(r.resolve(
            &pod_owned_by("ReplicaSet", "other-5d8f7c9b6", Some("5d8f7c9b6")),
            &api,
        ));
        assert_eq!(o.deployment.as_deref(), Some("other"));
        // No hash label: no guess.
        let o = block_on(r.resolve(&pod_owned_by("ReplicaSet", "x-1", None), &api));
        assert_eq!(o.deployment, None);
        assert_eq!(*api.calls.lock().unwrap(), 1);
        let o = block_on(r.resolve(&pod_owned_by("Job", "nightly-1", None), &api));
        assert_eq!((o.cronjob, o.job.as_deref()), (None, Some("nightly-1")));
    }

    #[test]
    fn not_found_replicaset_is_guessed_but_not_cached() {
        let api = FakeApi {
            owners: HashMap::new(),
            calls: Mutex::new(0),
        };
        let mut r = OwnerResolver::default();
        let p = pod_owned_by("ReplicaSet", "web-abc", Some("abc"));
        assert_eq!(
            block_on(r.resolve(&p, &api)).deployment.as_deref(),
            Some("web")
        );
        assert_eq!(
            block_on(r.resolve(&p, &api)).deployment.as_deref(),
            Some("web")
        );
        assert_eq!(*api.calls.lock().unwrap(), 2);
    }
}
