//! Kubernetes pod metadata for resource attributes: which pod and container a traced process
//! runs in, and the workload that owns the pod.
//!
//! A task on the async runtime lists and watches the pods of this node (kube-rs's watcher, field
//! selector on `spec.nodeName`) and keeps a container id -> pod index ([`PodIndex`]); the
//! capture thread reads it through an `Arc` without ever waiting on the network. Without a
//! reachable API server the index stays empty and spans simply carry no pod attributes.

pub mod config;
pub mod index;
pub mod model;
pub mod watcher;

use std::{path::PathBuf, sync::Arc};

pub use config::{ApiConfig, ConfigError};
pub use index::{ContainerMeta, PodIndex};
pub use model::{Owners, PodMeta};

/// Whether Kubernetes metadata is read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum K8sMode {
    /// Never.
    Off,
    /// From the `--kubeconfig` file (else the `KUBECONFIG` files) when given, or the in-cluster
    /// service account when running in a pod; otherwise off.
    #[default]
    Auto,
    /// Like auto, but refuse to start without a configuration.
    On,
}

/// What the command line says about Kubernetes.
#[derive(Clone, Debug, Default)]
pub struct K8sSettings {
    pub mode: K8sMode,
    pub kubeconfig: Option<PathBuf>,
    /// `--k8s-node-name` / `NODE_NAME`; else the host name.
    pub node_name: Option<String>,
    pub cluster_name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "--k8s on: no Kubernetes configuration (not in a pod: KUBERNETES_SERVICE_HOST is unset, and neither --kubeconfig nor KUBECONFIG given)"
    )]
    NotConfigured,
    #[error("Kubernetes API client: {0}")]
    Client(#[from] kube::Error),
}

/// Static Kubernetes facts plus the live pod index, shared with the resource cache.
#[derive(Clone)]
pub struct K8sMetadata {
    pub index: Arc<PodIndex>,
    pub node_name: String,
    pub cluster_name: Option<String>,
}

/// Kubeconfig files named by `--kubeconfig`, else by `KUBECONFIG` (a path list, merged).
fn kubeconfig_paths(
    settings: &K8sSettings,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<Vec<PathBuf>> {
    if let Some(path) = &settings.kubeconfig {
        return Some(vec![path.clone()]);
    }
    let list = env("KUBECONFIG")?;
    let paths: Vec<PathBuf> = std::env::split_paths(&list)
        .filter(|p| !p.as_os_str().is_empty())
        .collect();
    (!paths.is_empty()).then_some(paths)
}

/// Picks the API configuration the settings ask for; `Ok(None)` when Kubernetes is off.
pub async fn resolve_config(
    settings: &K8sSettings,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<ApiConfig>, StartError> {
    if settings.mode == K8sMode::Off {
        return Ok(None);
    }
    if let Some(paths) = kubeconfig_paths(settings, env) {
        return Ok(Some(ApiConfig::from_kubeconfig(&paths).await?));
    }
    match ApiConfig::in_cluster(env, std::path::Path::new(config::SERVICE_ACCOUNT_DIR)) {
        Ok(Some(c)) => Ok(Some(c)),
        Ok(None) if settings.mode == K8sMode::On => Err(StartError::NotConfigured),
        Ok(None) => Ok(None),
        Err(e) if settings.mode == K8sMode::On => Err(e.into()),
        Err(e) => {
            tracing::warn!("Kubernetes metadata off: {e}");
            Ok(None)
        }
    }
}

/// Starts watching pods (on the runtime of `rt`) when configured. `host_name` is the node name
/// of last resort. Blocks on `rt` while the configuration loads: call it outside the runtime.
pub fn start(
    settings: &K8sSettings,
    host_name: &str,
    env: &dyn Fn(&str) -> Option<String>,
    rt: &tokio::runtime::Handle,
) -> Result<Option<K8sMetadata>, StartError> {
    rt.block_on(async {
        let Some(api) = resolve_config(settings, env).await? else {
            tracing::debug!("Kubernetes metadata off (not in a pod, no kubeconfig)");
            return Ok(None);
        };
        let node_name = settings
            .node_name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| host_name.to_owned());
        let server = api.config.cluster_url.to_string();
        // Builds the HTTP stack (its buffer task needs the runtime); connects lazily.
        let client = kube::Client::try_from(api.config)?;
        let index = Arc::new(PodIndex::new());
        let watcher =
            watcher::Watcher::new(client, api.source, server, node_name.clone(), index.clone());
        tokio::spawn(watcher.run());
        Ok(Some(K8sMetadata {
            index,
            node_name,
            cluster_name: settings.cluster_name.clone().filter(|c| !c.is_empty()),
        }))
    })
}

/// Host name as the kernel reports it (the default node name).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(
        settings: &K8sSettings,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<ApiConfig>, StartError> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(resolve_config(settings, env))
    }

    #[test]
    fn modes() {
        let none = |_: &str| None;
        let off = K8sSettings {
            mode: K8sMode::Off,
            kubeconfig: Some("/nonexistent".into()),
            ..K8sSettings::default()
        };
        assert!(resolve(&off, &none).unwrap().is_none());
        let auto = K8sSettings::default();
        assert!(resolve(&auto, &none).unwrap().is_none());
        let on = K8sSettings {
            mode: K8sMode::On,
            ..K8sSettings::default()
        };
        assert!(matches!(
            resolve(&on, &none),
            Err(StartError::NotConfigured)
        ));
        // An explicit kubeconfig that cannot be read fails in auto mode too.
        let bad = K8sSettings {
            kubeconfig: Some("/nonexistent/kubeconfig".into()),
            ..K8sSettings::default()
        };
        assert!(resolve(&bad, &none).is_err());
        // So does a KUBECONFIG list without --kubeconfig; --kubeconfig wins over it.
        let kubeconfig_env =
            |k: &str| (k == "KUBECONFIG").then(|| "/nonexistent/a:/nonexistent/b".to_owned());
        let e = resolve(&auto, &kubeconfig_env).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/a:/nonexistent/b"), "{e}");
        let e = resolve(&bad, &kubeconfig_env).unwrap_err().to_string();
        assert!(
            e.contains("/nonexistent/kubeconfig") && !e.contains("/nonexistent/a"),
            "{e}"
        );
        let empty = |k: &str| (k == "KUBECONFIG").then(String::new);
        assert!(resolve(&auto, &empty).unwrap().is_none());
        assert!(resolve(&off, &kubeconfig_env).unwrap().is_none());
    }
}
