//! Keeps the pod index in step with the API server through kube-rs's watcher: it lists this
//! node's pods, watches from the list's resource version, resumes a broken watch from the last
//! version seen and lists again when that version expired (410 Gone). After an error the next
//! attempt waits, from [`MIN_BACKOFF`] doubling up to [`MAX_BACKOFF`].
//!
//! An unreachable or refusing API server is reported once per outage (a warning naming the
//! server and the cause) and once when it answers again; every error is counted.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures_util::StreamExt as _;
use k8s_openapi::{
    api::{apps::v1::ReplicaSet, batch::v1::Job, core::v1::Pod},
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{Api, Client, runtime::watcher};

use super::{
    index::PodIndex,
    model::{
        Owners, PodMeta, controller, deployment_from_replicaset_name, pod_containers, pod_node,
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

/// The HTTP status of an error the API server answered with.
fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// An error with its causes: the outer layers ("failed to start watching object") rarely say
/// what an operator needs (connection refused, certificate unknown).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// Reads the controller of a ReplicaSet or Job (the API client; a fake in tests).
pub(crate) trait ParentLookup {
    async fn controller_of(
        &self,
        kind: ParentKind,
        namespace: &str,
        name: &str,
    ) -> Result<Option<OwnerReference>, kube::Error>;
}

impl ParentLookup for Client {
    /// Only the object's metadata is asked for (`PartialObjectMetadata`).
    async fn controller_of(
        &self,
        kind: ParentKind,
        namespace: &str,
        name: &str,
    ) -> Result<Option<OwnerReference>, kube::Error> {
        let meta = match kind {
            ParentKind::ReplicaSet => {
                Api::<ReplicaSet>::namespaced(self.clone(), namespace)
                    .get_metadata(name)
                    .await?
                    .metadata
            }
            ParentKind::Job => {
                Api::<Job>::namespaced(self.clone(), namespace)
                    .get_metadata(name)
                    .await?
                    .metadata
            }
        };
        Ok(controller(&meta).cloned())
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
        let Some(owner) = controller(&pod.metadata) else {
            return owners;
        };
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
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
            Err(e) if status_code(&e) == Some(403) => {
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

pub struct Watcher {
    client: Client,
    /// Where the configuration came from, and the API server's URL (for log lines).
    source: String,
    server: String,
    node: String,
    index: Arc<PodIndex>,
    owners: OwnerResolver,
}

impl Watcher {
    pub fn new(
        client: Client,
        source: String,
        server: String,
        node: String,
        index: Arc<PodIndex>,
    ) -> Self {
        Self {
            client,
            source,
            server,
            node,
            index,
            owners: OwnerResolver::default(),
        }
    }

    /// Runs forever (the task is dropped with the runtime at exit). Errors never end it.
    pub async fn run(mut self) {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let config = watcher::Config::default().fields(&format!("spec.nodeName={}", self.node));
        // The backoff is applied here rather than with kube-rs's `StreamBackoff`: that one
        // resets on every `Ok` item, and the watcher yields `Event::Init` before each list
        // attempt, so against an unreachable API server it would never grow.
        let mut events = watcher(pods, config).boxed();
        let mut backoff = MIN_BACKOFF;
        let mut down = false;
        let mut connected_once = false;
        // The pods of a list in progress (between `Init` and `InitDone`): the index keeps the
        // previous state until the list is complete.
        let mut listing: Vec<(PodMeta, Vec<(String, String)>)> = Vec::new();
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    self.index.stats().count_error();
                    if is_expired(&e) {
                        tracing::debug!("Kubernetes watch expired; listing pods again");
                    } else if down {
                        tracing::debug!("Kubernetes API still unavailable: {}", error_chain(&e));
                    } else {
                        tracing::warn!(
                            "Kubernetes metadata unavailable ({}, {}): {}; pod attributes are missing or stale until the API server answers (retrying, at most every {}s)",
                            self.source,
                            self.server,
                            error_chain(&e),
                            MAX_BACKOFF.as_secs()
                        );
                        down = true;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            self.index.stats().count_event();
            if matches!(event, watcher::Event::Init) {
                // A list starts (it may still fail): not yet a sign of a working API server.
                listing.clear();
                continue;
            }
            backoff = MIN_BACKOFF;
            if down {
                tracing::info!(
                    "Kubernetes API at {} answers again; pod attributes resume",
                    self.server
                );
                down = false;
            }
            match event {
                watcher::Event::Init => {}
                watcher::Event::InitApply(pod) => listing.push(self.entry(&pod).await),
                watcher::Event::InitDone => {
                    self.index.replace_all(std::mem::take(&mut listing));
                    let pods = self.index.pod_count();
                    if connected_once {
                        tracing::debug!(
                            "Kubernetes pods listed again: {pods} on node {}",
                            self.node
                        );
                    } else {
                        tracing::info!(
                            "Kubernetes metadata from {} ({}): {pods} pods on node {}",
                            self.source,
                            self.server,
                            self.node
                        );
                        connected_once = true;
                    }
                }
                watcher::Event::Apply(pod) => {
                    let node = pod_node(&pod);
                    if !node.is_empty() && node != self.node {
                        self.index
                            .remove(pod.metadata.uid.as_deref().unwrap_or_default());
                        continue;
                    }
                    let (meta, containers) = self.entry(&pod).await;
                    self.index.upsert(meta, containers);
                }
                watcher::Event::Delete(pod) => self
                    .index
                    .remove(pod.metadata.uid.as_deref().unwrap_or_default()),
            }
        }
    }

    async fn entry(&mut self, pod: &Pod) -> (PodMeta, Vec<(String, String)>) {
        let owners = self.owners.resolve(pod, &self.client).await;
        let containers = pod_containers(pod)
            .map(|(id, name)| (id, name.to_owned()))
            .collect();
        (PodMeta::from_pod(pod, owners), containers)
    }
}

/// The resource version to watch from is too old (410 Gone): the watcher lists again, which is
/// routine (watches expire), not an outage.
fn is_expired(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::WatchError(status) => status.code == 410,
        watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
            status_code(e) == Some(410)
        }
        _ => false,
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
        ) -> Result<Option<OwnerReference>, kube::Error> {
            *self.calls.lock().unwrap() += 1;
            match self.owners.get(&(kind, name.to_owned())) {
                Some(Ok(o)) => Ok(o.clone()),
                Some(Err(status)) => Err(api_error(*status)),
                None => Err(api_error(404)),
            }
        }
    }

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(kube::core::Status::failure("", "").with_code(code).boxed())
    }

    fn owner(kind: &str, name: &str) -> OwnerReference {
        OwnerReference {
            kind: kind.into(),
            name: name.into(),
            controller: Some(true),
            ..OwnerReference::default()
        }
    }

    fn pod_owned_by(kind: &str, name: &str, hash: Option<&str>) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.namespace = Some("shop".into());
        pod.metadata.owner_references = Some(vec![owner(kind, name)]);
        if let Some(h) = hash {
            pod.metadata.labels = Some(
                [("pod-template-hash".to_owned(), h.to_owned())]
                    .into_iter()
                    .collect(),
            );
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
