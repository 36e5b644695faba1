//! Where the API server is and how to authenticate: a kubeconfig (`--kubeconfig`, else the
//! `KUBECONFIG` list of files), or the in-cluster service account. Parsing, credential plugins
//! (`exec`), token-file rotation and TLS are kube-rs's; this module only decides which source
//! applies and names it in errors and logs.

use std::path::{Path, PathBuf};

use kube::config::{InClusterError, KubeConfigOptions, Kubeconfig, KubeconfigError};

/// Service-account files mounted into every pod (unless automounting is off).
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: KubeconfigError,
    },
    #[error(
        "KUBERNETES_SERVICE_HOST is set but the service-account token {0} cannot be read (is automountServiceAccountToken off?)"
    )]
    NoServiceAccountToken(PathBuf),
    #[error("in-cluster configuration: {0}")]
    InCluster(#[from] InClusterError),
}

/// A client configuration and, for log lines, where it came from.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub config: kube::Config,
    pub source: String,
}

impl ApiConfig {
    /// The in-cluster configuration, if this process runs in a pod (`KUBERNETES_SERVICE_HOST`
    /// set). `sa_dir` holds `token`, `ca.crt` and `namespace`; kube-rs reads them from
    /// [`SERVICE_ACCOUNT_DIR`] and re-reads the token as the kubelet rotates it.
    pub fn in_cluster(
        env: &dyn Fn(&str) -> Option<String>,
        sa_dir: &Path,
    ) -> Result<Option<Self>, ConfigError> {
        if env("KUBERNETES_SERVICE_HOST")
            .filter(|h| !h.is_empty())
            .is_none()
        {
            return Ok(None);
        }
        let token = sa_dir.join("token");
        if std::fs::metadata(&token).is_err() {
            return Err(ConfigError::NoServiceAccountToken(token));
        }
        Ok(Some(Self {
            config: kube::Config::incluster()?,
            source: "in-cluster service account".to_owned(),
        }))
    }

    /// The current context of the kubeconfig `paths` (merged in order, like kubectl does with
    /// `KUBECONFIG`). Tokens, token files, client certificates and `exec` credential plugins
    /// all work; plugins run when a token is needed, not here.
    pub async fn from_kubeconfig(paths: &[PathBuf]) -> Result<Self, ConfigError> {
        let shown = paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let err = |source| ConfigError::Kubeconfig {
            path: shown.clone(),
            source,
        };
        let mut merged = Kubeconfig::default();
        for path in paths {
            merged = merged
                .merge(Kubeconfig::read_from(path).map_err(err)?)
                .map_err(err)?;
        }
        let config = kube::Config::from_custom_kubeconfig(merged, &KubeConfigOptions::default())
            .await
            .map_err(err)?;
        Ok(Self {
            config,
            source: format!("kubeconfig {shown}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("socktrace-k8s-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn load(paths: &[PathBuf]) -> Result<ApiConfig, ConfigError> {
        block_on(ApiConfig::from_kubeconfig(paths))
    }

    /// `-----BEGIN CERTIFICATE-----` around `Q0VSVA==` ("CERT"), base64-encoded again.
    const CA_DATA: &str =
        "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tClEwVlNWQT09Ci0tLS0tRU5EIENFUlRJRklDQVRFLS0tLS0K";
    const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nQ0VSVA==\n-----END CERTIFICATE-----\n";

    /// The auth fields as kubeconfig spells them (kube-rs keeps tokens as secrets).
    fn auth(c: &ApiConfig) -> serde_json::Value {
        serde_json::to_value(&c.config.auth_info).unwrap()
    }

    #[test]
    fn kubeconfig_current_context_with_token_and_ca_data() {
        let dir = temp_dir("kc1");
        let path = dir.join("config");
        std::fs::write(
            &path,
            format!(
                r#"apiVersion: v1
kind: Config
current-context: prod
clusters:
- name: dev
  cluster:
    server: http://127.0.0.1:1
- name: prod-cluster
  cluster:
    server: https://k8s.example:6443/
    certificate-authority-data: {CA_DATA}
contexts:
- name: dev
  context: {{cluster: dev, user: dev}}
- name: prod
  context:
    cluster: prod-cluster
    user: agent
    namespace: observability
users:
- name: agent
  user:
    token: abc.def
preferences: {{}}
"#
            ),
        )
        .unwrap();
        let c = load(std::slice::from_ref(&path)).unwrap();
        assert_eq!(
            c.config.cluster_url.to_string(),
            "https://k8s.example:6443/"
        );
        assert_eq!(c.config.root_cert, Some(vec![b"CERT".to_vec()]));
        assert_eq!(auth(&c)["token"], "abc.def");
        assert!(!c.config.accept_invalid_certs);
        assert!(c.config.auth_info.client_certificate_data.is_none());
        assert_eq!(c.config.default_namespace, "observability");
        assert_eq!(c.source, format!("kubeconfig {}", path.display()));
    }

    #[test]
    fn kubeconfig_relative_files_and_client_cert() {
        let dir = temp_dir("kc2");
        std::fs::write(dir.join("ca.pem"), CA_PEM).unwrap();
        std::fs::write(dir.join("tok"), "t").unwrap();
        let path = dir.join("config");
        std::fs::write(
            &path,
            r#"current-context: c
clusters: [{name: k, cluster: {server: "https://h:1", certificate-authority: ca.pem, insecure-skip-tls-verify: true}}]
contexts: [{name: c, context: {cluster: k, user: u}}]
users: [{name: u, user: {tokenFile: tok, client-certificate-data: Q0VSVA==, client-key-data: S0VZ}}]
"#,
        )
        .unwrap();
        let c = load(&[path]).unwrap();
        assert_eq!(c.config.root_cert, Some(vec![b"CERT".to_vec()]));
        assert!(c.config.accept_invalid_certs);
        let tok = dir.join("tok");
        assert_eq!(
            c.config.auth_info.token_file.as_deref(),
            tok.to_str(),
            "relative to the kubeconfig's directory"
        );
        assert_eq!(auth(&c)["client-certificate-data"], "Q0VSVA==");
        assert_eq!(auth(&c)["client-key-data"], "S0VZ");
    }

    #[test]
    fn kubeconfig_exec_plugins_and_merged_files() {
        let dir = temp_dir("kc4");
        let first = dir.join("first");
        let second = dir.join("second");
        std::fs::write(&first, "current-context: c\n").unwrap();
        std::fs::write(
            &second,
            r#"current-context: other
clusters: [{name: k, cluster: {server: "https://h:1"}}]
contexts: [{name: c, context: {cluster: k, user: u}}]
users: [{name: u, user: {exec: {apiVersion: client.authentication.k8s.io/v1beta1, command: aws, args: [eks, get-token]}}}]
"#,
        )
        .unwrap();
        // The first file's current-context wins; the plugin is configured, not run.
        let c = load(&[first.clone(), second.clone()]).unwrap();
        let exec = c.config.auth_info.exec.as_ref().expect("exec plugin");
        assert_eq!(exec.command.as_deref(), Some("aws"));
        assert_eq!(
            c.source,
            format!("kubeconfig {}:{}", first.display(), second.display())
        );
    }

    #[test]
    fn kubeconfig_errors_name_the_problem() {
        let dir = temp_dir("kc3");
        let path = dir.join("config");
        std::fs::write(
            &path,
            "current-context: x\nclusters: []\ncontexts: []\nusers: []\n",
        )
        .unwrap();
        let e = load(std::slice::from_ref(&path)).unwrap_err().to_string();
        assert!(
            e.contains("x") && e.contains(&path.display().to_string()),
            "{e}"
        );
        let e = load(&[dir.join("missing")]).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
    }

    #[test]
    fn in_cluster_from_service_account() {
        let dir = temp_dir("sa");
        let none = |_: &str| None;
        assert!(ApiConfig::in_cluster(&none, &dir).unwrap().is_none());
        let env = |k: &str| match k {
            "KUBERNETES_SERVICE_HOST" => Some("fd00::1".to_owned()),
            "KUBERNETES_SERVICE_PORT" => Some("6443".to_owned()),
            _ => None,
        };
        assert!(matches!(
            ApiConfig::in_cluster(&env, &dir),
            Err(ConfigError::NoServiceAccountToken(_))
        ));
    }
}
