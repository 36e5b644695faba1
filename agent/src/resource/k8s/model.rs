//! What the agent reads of Kubernetes API objects (the `k8s-openapi` types), and what it keeps
//! of them.
//!
//! A pod is decoded whole as it arrives, but the index keeps only [`PodMeta`] and the container
//! names, so a pod costs a few hundred bytes there however large its spec is.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{ContainerStatus, Pod, PodStatus},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};

/// Pod annotation that names the service explicitly (OpenTelemetry convention).
pub const SERVICE_NAME_ANNOTATION: &str = "resource.opentelemetry.io/service.name";
/// Recommended Kubernetes label naming the application.
pub const APP_NAME_LABEL: &str = "app.kubernetes.io/name";
/// Label the Deployment controller puts on the pods of each ReplicaSet it creates; the
/// ReplicaSet is named `<deployment>-<hash>`.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// The managing controller of an object: the owner reference marked `controller: true`, else
/// the first.
pub fn controller(meta: &ObjectMeta) -> Option<&OwnerReference> {
    let owners = meta.owner_references.as_deref().unwrap_or_default();
    owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.first())
}

/// Container id (runtime prefix stripped) -> container name, over regular, init and ephemeral
/// containers.
pub fn pod_containers(pod: &Pod) -> impl Iterator<Item = (String, &str)> {
    let status = pod.status.as_ref();
    let list = |f: fn(&PodStatus) -> &Option<Vec<ContainerStatus>>| {
        status
            .and_then(|s| f(s).as_deref())
            .unwrap_or_default()
            .iter()
    };
    list(|s| &s.container_statuses)
        .chain(list(|s| &s.init_container_statuses))
        .chain(list(|s| &s.ephemeral_container_statuses))
        .filter_map(|c| {
            Some((
                normalize_container_id(c.container_id.as_deref()?)?,
                c.name.as_str(),
            ))
        })
}

/// The node a pod is scheduled on; empty while pending.
pub fn pod_node(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or_default()
}

/// A label or annotation value, when present and not empty.
fn non_empty(map: &Option<BTreeMap<String, String>>, key: &str) -> Option<String> {
    map.as_ref()?.get(key).filter(|v| !v.is_empty()).cloned()
}

/// `containerd://<id>`, `cri-o://<id>`, `docker://<id>` (any `<runtime>://`) -> `<id>`,
/// lower-cased as in cgroup paths. None for an empty or prefix-only value.
pub fn normalize_container_id(raw: &str) -> Option<String> {
    let id = raw.split_once("://").map_or(raw, |(_, id)| id).trim();
    (!id.is_empty()).then(|| id.to_ascii_lowercase())
}

/// Names of the workload objects above a pod, as far as they could be resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owners {
    pub deployment: Option<String>,
    pub replicaset: Option<String>,
    pub statefulset: Option<String>,
    pub daemonset: Option<String>,
    pub cronjob: Option<String>,
    pub job: Option<String>,
}

impl Owners {
    /// The workload name used for `service.name`: the top-most owner.
    pub fn workload_name(&self) -> Option<&str> {
        [
            &self.deployment,
            &self.replicaset,
            &self.statefulset,
            &self.daemonset,
            &self.cronjob,
            &self.job,
        ]
        .into_iter()
        .find_map(|o| o.as_deref())
    }

    /// `(attribute key, name)` for every known owner.
    pub fn attributes(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("k8s.deployment.name", &self.deployment),
            ("k8s.replicaset.name", &self.replicaset),
            ("k8s.statefulset.name", &self.statefulset),
            ("k8s.daemonset.name", &self.daemonset),
            ("k8s.cronjob.name", &self.cronjob),
            ("k8s.job.name", &self.job),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v.as_deref()?)))
    }
}

/// What the agent keeps of a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodMeta {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Annotation `resource.opentelemetry.io/service.name`.
    pub service_name_annotation: Option<String>,
    /// Label `app.kubernetes.io/name`.
    pub app_name_label: Option<String>,
    pub owners: Owners,
}

impl PodMeta {
    /// The pod's own fields; owners are resolved separately (they may need API calls).
    pub fn from_pod(pod: &Pod, owners: Owners) -> Self {
        let m = &pod.metadata;
        Self {
            namespace: m.namespace.clone().unwrap_or_default(),
            name: m.name.clone().unwrap_or_default(),
            uid: m.uid.clone().unwrap_or_default(),
            service_name_annotation: non_empty(&m.annotations, SERVICE_NAME_ANNOTATION),
            app_name_label: non_empty(&m.labels, APP_NAME_LABEL),
            owners,
        }
    }
}

/// The Deployment name guessed from a ReplicaSet name when the ReplicaSet cannot be read:
/// `<deployment>-<pod-template-hash>`, only when the pod's hash label confirms the suffix.
pub fn deployment_from_replicaset_name(replicaset: &str, pod: &Pod) -> Option<String> {
    let hash = pod.metadata.labels.as_ref()?.get(POD_TEMPLATE_HASH_LABEL)?;
    let prefix = replicaset.strip_suffix(hash.as_str())?.strip_suffix('-')?;
    (!prefix.is_empty()).then(|| prefix.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_id_prefixes_are_stripped() {
        let id = "3F0C8FF6B5D4c4f9d3a1e2b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7";
        let lower = id.to_ascii_lowercase();
        for raw in [
            format!("containerd://{id}"),
            format!("cri-o://{id}"),
            format!("docker://{id}"),
            id.to_owned(),
        ] {
            assert_eq!(
                normalize_container_id(&raw).as_deref(),
                Some(lower.as_str())
            );
        }
        assert_eq!(normalize_container_id(""), None);
        assert_eq!(normalize_container_id("containerd://"), None);
    }

    #[test]
    fn pod_containers_include_init_and_ephemeral() {
        let pod: Pod = serde_json::from_str(
            r#"{"metadata":{"name":"p","namespace":"n","uid":"u"},
                "status":{
                  "initContainerStatuses":[{"name":"init","containerID":"containerd://aa",
                    "image":"i","imageID":"","ready":false,"restartCount":0}],
                  "containerStatuses":[{"name":"app","containerID":"containerd://bb",
                    "image":"i","imageID":"","ready":true,"restartCount":0},
                                       {"name":"waiting",
                    "image":"i","imageID":"","ready":false,"restartCount":0}],
                  "ephemeralContainerStatuses":[{"name":"debug","containerID":"cri-o://cc",
                    "image":"i","imageID":"","ready":true,"restartCount":0}]}}"#,
        )
        .unwrap();
        let mut got: Vec<(String, String)> = pod_containers(&pod)
            .map(|(id, name)| (id, name.to_owned()))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("aa".into(), "init".into()),
                ("bb".into(), "app".into()),
                ("cc".into(), "debug".into())
            ]
        );
    }

    #[test]
    fn controller_owner_is_preferred() {
        let meta: ObjectMeta = serde_json::from_str(
            r#"{"ownerReferences":[{"apiVersion":"v1","kind":"Foo","name":"a","uid":"1"},
                                   {"apiVersion":"apps/v1","kind":"ReplicaSet","name":"b",
                                    "uid":"2","controller":true}]}"#,
        )
        .unwrap();
        assert_eq!(controller(&meta).unwrap().name, "b");
        let first: ObjectMeta = serde_json::from_str(
            r#"{"ownerReferences":[{"apiVersion":"v1","kind":"Foo","name":"a","uid":"1"}]}"#,
        )
        .unwrap();
        assert_eq!(controller(&first).unwrap().name, "a");
        assert!(controller(&ObjectMeta::default()).is_none());
    }

    #[test]
    fn deployment_guess_needs_matching_hash_label() {
        let mut pod = Pod::default();
        assert_eq!(deployment_from_replicaset_name("web-5d8f7c9b6", &pod), None);
        pod.metadata.labels = Some(BTreeMap::from([(
            POD_TEMPLATE_HASH_LABEL.into(),
            "5d8f7c9b6".into(),
        )]));
        assert_eq!(
            deployment_from_replicaset_name("web-api-5d8f7c9b6", &pod).as_deref(),
            Some("web-api")
        );
        assert_eq!(deployment_from_replicaset_name("other-123", &pod), None);
        assert_eq!(deployment_from_replicaset_name("5d8f7c9b6", &pod), None);
    }

    #[test]
    fn workload_name_prefers_the_top_owner() {
        let o = Owners {
            deployment: Some("d".into()),
            replicaset: Some("d-1".into()),
            ..Owners::default()
        };
        assert_eq!(o.workload_name(), Some("d"));
        let o = Owners {
            cronjob: Some("c".into()),
            job: Some("c-2".into()),
            ..Owners::default()
        };
        assert_eq!(o.workload_name(), Some("c"));
        assert_eq!(Owners::default().workload_name(), None);
    }
}
