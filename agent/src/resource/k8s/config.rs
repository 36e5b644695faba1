//! Where the API server is and how to authenticate: in-cluster service account, or a kubeconfig.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

/// Service-account files mounted into every pod (unless automounting is off).
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing kubeconfig {path}")]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("kubeconfig {path}: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error(
        "KUBERNETES_SERVICE_HOST is set but the service-account token {0} cannot be read (is automountServiceAccountToken off?)"
    )]
    NoServiceAccountToken(PathBuf),
}

/// Bearer token: fixed, or a file re-read periodically (projected service-account tokens are
/// rotated by the kubelet, roughly hourly).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Token {
    None,
    Value(String),
    File(PathBuf),
}

#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Base URL without a trailing slash, e.g. `https://10.96.0.1:443`.
    pub server: String,
    /// Extra trusted CA certificates (PEM).
    pub ca_pem: Option<Vec<u8>>,
    pub insecure_skip_tls_verify: bool,
    pub token: Token,
    /// Client certificate and key, PEM, concatenated.
    pub identity_pem: Option<Vec<u8>>,
    /// For log lines: where this configuration came from.
    pub source: String,
}

impl ApiConfig {
    /// The in-cluster configuration, if this process runs in a pod (`KUBERNETES_SERVICE_HOST`
    /// set). `sa_dir` holds `token`, `ca.crt` and `namespace`.
    pub fn in_cluster(
        env: &dyn Fn(&str) -> Option<String>,
        sa_dir: &Path,
    ) -> Result<Option<Self>, ConfigError> {
        let Some(host) = env("KUBERNETES_SERVICE_HOST").filter(|h| !h.is_empty()) else {
            return Ok(None);
        };
        let port = env("KUBERNETES_SERVICE_PORT")
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "443".to_owned());
        let token = sa_dir.join("token");
        if std::fs::metadata(&token).is_err() {
            return Err(ConfigError::NoServiceAccountToken(token));
        }
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host
        };
        Ok(Some(Self {
            server: format!("https://{host}:{port}"),
            ca_pem: std::fs::read(sa_dir.join("ca.crt")).ok(),
            insecure_skip_tls_verify: false,
            token: Token::File(token),
            identity_pem: None,
            source: "in-cluster service account".to_owned(),
        }))
    }

    /// The current context of a kubeconfig file. Supports tokens (inline or `tokenFile`) and
    /// client certificates (inline or files); `exec` and `auth-provider` plugins are not run.
    pub fn from_kubeconfig(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let kc: Kubeconfig = serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |what: String| ConfigError::Invalid {
            path: path.to_owned(),
            what,
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let context_name = kc.current_context.clone().unwrap_or_default();
        let context = if context_name.is_empty() {
            // No current context: a file with a single context is unambiguous.
            match kc.contexts.as_slice() {
                [only] => &only.context,
                _ => return Err(invalid("no current-context".to_owned())),
            }
        } else {
            &kc.contexts
                .iter()
                .find(|c| c.name == context_name)
                .ok_or_else(|| invalid(format!("current-context {context_name:?} not found")))?
                .context
        };
        let cluster = &kc
            .clusters
            .iter()
            .find(|c| c.name == context.cluster)
            .ok_or_else(|| invalid(format!("cluster {:?} not found", context.cluster)))?
            .cluster;
        if cluster.server.is_empty() {
            return Err(invalid(format!(
                "cluster {:?} has no server",
                context.cluster
            )));
        }
        let user = match &context.user {
            Some(name) if !name.is_empty() => kc
                .users
                .iter()
                .find(|u| &u.name == name)
                .map(|u| u.user.clone())
                .ok_or_else(|| invalid(format!("user {name:?} not found")))?,
            _ => User::default(),
        };
        if user.exec.is_some() || user.auth_provider.is_some() {
            return Err(invalid(
                "the user's credentials come from an exec or auth-provider plugin, which socktrace does not run; use a token or a client certificate".to_owned(),
            ));
        }
        let file_or_data = |file: &Option<String>,
                            data: &Option<String>,
                            what: &str|
         -> Result<Option<Vec<u8>>, ConfigError> {
            if let Some(d) = data.as_deref().filter(|d| !d.is_empty()) {
                return base64::engine::general_purpose::STANDARD
                    .decode(d.trim())
                    .map(Some)
                    .map_err(|e| invalid(format!("{what}-data is not base64: {e}")));
            }
            match file.as_deref().filter(|f| !f.is_empty()) {
                Some(f) => {
                    let p = base.join(f);
                    std::fs::read(&p)
                        .map(Some)
                        .map_err(|source| ConfigError::Read { path: p, source })
                }
                None => Ok(None),
            }
        };
        let ca_pem = file_or_data(
            &cluster.certificate_authority,
            &cluster.certificate_authority_data,
            "certificate-authority",
        )?;
        let cert = file_or_data(
            &user.client_certificate,
            &user.client_certificate_data,
            "client-certificate",
        )?;
        let key = file_or_data(&user.client_key, &user.client_key_data, "client-key")?;
        let identity_pem = match (cert, key) {
            (Some(mut c), Some(k)) => {
                c.push(b'\n');
                c.extend_from_slice(&k);
                Some(c)
            }
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "client certificate and key must both be given".to_owned(),
                ));
            }
        };
        let token = match (&user.token, &user.token_file) {
            (Some(t), _) if !t.is_empty() => Token::Value(t.trim().to_owned()),
            (_, Some(f)) if !f.is_empty() => Token::File(base.join(f)),
            _ => Token::None,
        };
        Ok(Self {
            server: cluster.server.trim_end_matches('/').to_owned(),
            ca_pem,
            insecure_skip_tls_verify: cluster.insecure_skip_tls_verify,
            token,
            identity_pem,
            source: format!("kubeconfig {}", path.display()),
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
struct Kubeconfig {
    current_context: Option<String>,
    clusters: Vec<NamedCluster>,
    users: Vec<NamedUser>,
    contexts: Vec<NamedContext>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct NamedCluster {
    name: String,
    cluster: Cluster,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct NamedUser {
    name: String,
    user: User,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct NamedContext {
    name: String,
    context: Context,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
struct Cluster {
    server: String,
    certificate_authority: Option<String>,
    certificate_authority_data: Option<String>,
    insecure_skip_tls_verify: bool,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
struct User {
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<String>,
    client_certificate: Option<String>,
    client_certificate_data: Option<String>,
    client_key: Option<String>,
    client_key_data: Option<String>,
    exec: Option<serde_yaml::Value>,
    auth_provider: Option<serde_yaml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Context {
    cluster: String,
    user: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("socktrace-k8s-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn kubeconfig_current_context_with_token_and_ca_data() {
        let dir = temp_dir("kc1");
        let path = dir.join("config");
        std::fs::write(
            &path,
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
    certificate-authority-data: LS0tLS1CRUdJTg==
contexts:
- name: dev
  context: {cluster: dev, user: dev}
- name: prod
  context:
    cluster: prod-cluster
    user: agent
    namespace: observability
users:
- name: agent
  user:
    token: abc.def
preferences: {}
"#,
        )
        .unwrap();
        let c = ApiConfig::from_kubeconfig(&path).unwrap();
        assert_eq!(c.server, "https://k8s.example:6443");
        assert_eq!(c.ca_pem.as_deref(), Some(&b"-----BEGIN"[..]));
        assert_eq!(c.token, Token::Value("abc.def".into()));
        assert!(!c.insecure_skip_tls_verify);
        assert!(c.identity_pem.is_none());
    }

    #[test]
    fn kubeconfig_relative_files_and_client_cert() {
        let dir = temp_dir("kc2");
        std::fs::write(dir.join("ca.pem"), "CA").unwrap();
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
        let c = ApiConfig::from_kubeconfig(&path).unwrap();
        assert_eq!(c.ca_pem.as_deref(), Some(&b"CA"[..]));
        assert!(c.insecure_skip_tls_verify);
        assert_eq!(c.token, Token::File(dir.join("tok")));
        assert_eq!(c.identity_pem.as_deref(), Some(&b"CERT\nKEY"[..]));
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
        let e = ApiConfig::from_kubeconfig(&path).unwrap_err().to_string();
        assert!(e.contains("current-context \"x\" not found"), "{e}");
        std::fs::write(
            &path,
            r#"current-context: c
clusters: [{name: k, cluster: {server: "https://h:1"}}]
contexts: [{name: c, context: {cluster: k, user: u}}]
users: [{name: u, user: {exec: {command: aws}}}]
"#,
        )
        .unwrap();
        let e = ApiConfig::from_kubeconfig(&path).unwrap_err().to_string();
        assert!(e.contains("exec"), "{e}");
        let e = ApiConfig::from_kubeconfig(&dir.join("missing"))
            .unwrap_err()
            .to_string();
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
        std::fs::write(dir.join("token"), "tok").unwrap();
        std::fs::write(dir.join("ca.crt"), "CA").unwrap();
        let c = ApiConfig::in_cluster(&env, &dir).unwrap().unwrap();
        assert_eq!(c.server, "https://[fd00::1]:6443");
        assert_eq!(c.token, Token::File(dir.join("token")));
        assert_eq!(c.ca_pem.as_deref(), Some(&b"CA"[..]));
    }
}
