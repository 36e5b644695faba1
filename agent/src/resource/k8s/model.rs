//! The parts of Kubernetes API objects the agent reads, and what it keeps of them.
//!
//! Only the fields needed for resource attributes are deserialised (serde skips the rest), so a
//! pod costs a few hundred bytes in the index however large its spec is.

use std::collections::HashMap;

use serde::Deserialize;

/// Pod annotation that names the service explicitly (OpenTelemetry convention).
pub const SERVICE_NAME_ANNOTATION: &str = "resource.opentelemetry.io/service.name";
/// Recommended Kubernetes label naming the application.
pub const APP_NAME_LABEL: &str = "app.kubernetes.io/name";
/// Label the Deployment controller puts on the pods of each ReplicaSet it creates; the
/// ReplicaSet is named `<deployment>-<hash>`.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OwnerReference {
    pub kind: String,
    pub name: String,
    pub controller: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ObjectMeta {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub resource_version: String,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    pub owner_references: Vec<OwnerReference>,
}

impl ObjectMeta {
    /// The managing controller: the owner reference marked `controller: true`, else the first.
    pub fn controller(&self) -> Option<&OwnerReference> {
        self.owner_references
            .iter()
            .find(|o| o.controller == Some(true))
            .or_else(|| self.owner_references.first())
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ContainerStatus {
    pub name: String,
    /// `<runtime>://<id>`, empty until the container was created.
    #[serde(rename = "containerID")]
    pub container_id: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PodStatus {
    pub container_statuses: Vec<ContainerStatus>,
    pub init_container_statuses: Vec<ContainerStatus>,
    pub ephemeral_container_statuses: Vec<ContainerStatus>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PodSpec {
    pub node_name: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Pod {
    pub metadata: ObjectMeta,
    pub spec: PodSpec,
    pub status: PodStatus,
}

impl Pod {
    /// Container id (runtime prefix stripped) -> container name, over regular, init and
    /// ephemeral containers.
    pub fn containers(&self) -> impl Iterator<Item = (String, &str)> {
        self.status
            .container_statuses
            .iter()
            .chain(&self.status.init_container_statuses)
            .chain(&self.status.ephemeral_container_statuses)
            .filter_map(|c| Some((normalize_container_id(&c.container_id)?, c.name.as_str())))
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ListMeta {
    pub resource_version: String,
}

/// `GET /api/v1/pods` (a `PodList`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct PodList {
    pub metadata: ListMeta,
    pub items: Vec<Pod>,
}

/// Any object of which only the metadata matters (ReplicaSet, Job).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct MetaOnly {
    pub metadata: ObjectMeta,
}

/// `metav1.Status`, the body of API errors and of watch `ERROR` events.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Status {
    pub code: u16,
    pub reason: String,
    pub message: String,
}

/// One line of a watch stream.
#[derive(Clone, Debug, Deserialize)]
pub struct WatchEvent {
    #[serde(rename = "type")]
    pub kind: String,
    pub object: serde_json::Value,
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
        let non_empty = |v: Option<&String>| v.filter(|s| !s.is_empty()).cloned();
        Self {
            namespace: m.namespace.clone(),
            name: m.name.clone(),
            uid: m.uid.clone(),
            service_name_annotation: non_empty(m.annotations.get(SERVICE_NAME_ANNOTATION)),
            app_name_label: non_empty(m.labels.get(APP_NAME_LABEL)),
            owners,
        }
    }
}

/// The Deployment name guessed from a ReplicaSet name when the ReplicaSet cannot be read:
/// `<deployment>-<pod-template-hash>`, only when the pod's hash label confirms the suffix.
pub fn deployment_from_replicaset_name(replicaset: &str, pod: &Pod) -> Option<String> {
    let hash = pod.metadata.labels.get(POD_TEMPLATE_HASH_LABEL)?;
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
                  "initContainerStatuses":[{"name":"init","containerID":"containerd://aa"}],
                  "containerStatuses":[{"name":"app","containerID":"containerd://bb"},
                                       {"name":"waiting"}],
                  "ephemeralContainerStatuses":[{"name":"debug","containerID":"cri-o://cc"}]}}"#,
        )
        .unwrap();
        let mut got: Vec<(String, String)> = pod
            .containers()
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
            r#"{"ownerReferences":[{"kind":"Foo","name":"a"},
                                   {"kind":"ReplicaSet","name":"b","controller":true}]}"#,
        )
        .unwrap();
        assert_eq!(meta.controller().unwrap().name, "b");
        assert!(ObjectMeta::default().controller().is_none());
    }

    #[test]
    fn deployment_guess_needs_matching_hash_label() {
        let mut pod = Pod::default();
        assert_eq!(deployment_from_replicaset_name("web-5d8f7c9b6", &pod), None);
        pod.metadata
            .labels
            .insert(POD_TEMPLATE_HASH_LABEL.into(), "5d8f7c9b6".into());
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
