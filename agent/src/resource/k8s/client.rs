//! A minimal Kubernetes API client: authenticated GETs returning JSON, and watch streams of
//! newline-delimited events. Plain reqwest; the agent needs three read-only endpoints.

use std::{
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::de::DeserializeOwned;

use super::{
    config::{ApiConfig, Token},
    model::{Status, WatchEvent},
};

/// How long a cached token file is trusted before it is read again.
const TOKEN_REFRESH: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A watch with no line (not even a bookmark) for this long is presumed dead. The server ends
/// each watch after `WATCH_SECONDS` and sends bookmarks about once a minute.
const WATCH_IDLE: Duration = Duration::from_secs(330);
pub const WATCH_SECONDS: u64 = 290;
/// Longest watch line accepted (one pod object); protects memory from a broken stream.
const MAX_LINE: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("request to {url} failed: {cause}")]
    Transport { url: String, cause: String },
    #[error("{url} answered HTTP {status}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("invalid response from {url}: {cause}")]
    Decode { url: String, cause: String },
    #[error("reading the API token {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("setting up the API client: {0}")]
    Setup(String),
}

impl ApiError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// `reqwest::Error` displays only its own layer ("error sending request"); the cause that
/// helps an operator (connection refused, certificate unknown) is deeper in the chain.
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

pub struct ApiClient {
    http: reqwest::Client,
    server: String,
    token: Token,
    cached_token: Mutex<Option<(String, Instant)>>,
}

impl ApiClient {
    pub fn new(cfg: &ApiConfig) -> Result<Self, ApiError> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("socktrace/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &cfg.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| ApiError::Setup(format!("CA certificate: {}", error_chain(&e))))?;
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        if cfg.insecure_skip_tls_verify {
            b = b.danger_accept_invalid_certs(true);
        }
        if let Some(pem) = &cfg.identity_pem {
            let id = reqwest::Identity::from_pem(pem)
                .map_err(|e| ApiError::Setup(format!("client certificate: {}", error_chain(&e))))?;
            b = b.identity(id);
        }
        let http = b.build().map_err(|e| ApiError::Setup(error_chain(&e)))?;
        Ok(Self {
            http,
            server: cfg.server.clone(),
            token: cfg.token.clone(),
            cached_token: Mutex::new(None),
        })
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    fn bearer(&self) -> Result<Option<String>, ApiError> {
        match &self.token {
            Token::None => Ok(None),
            Token::Value(t) => Ok(Some(t.clone())),
            Token::File(path) => {
                let mut cached = self.cached_token.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((t, at)) = cached.as_ref()
                    && at.elapsed() < TOKEN_REFRESH
                {
                    return Ok(Some(t.clone()));
                }
                let t = std::fs::read_to_string(path)
                    .map_err(|source| ApiError::Token {
                        path: path.clone(),
                        source,
                    })?
                    .trim()
                    .to_owned();
                *cached = Some((t.clone(), Instant::now()));
                Ok(Some(t))
            }
        }
    }

    async fn send(
        &self,
        path: &str,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, ApiError> {
        let url = format!("{}{path}", self.server);
        let mut req = self.http.get(&url).header("Accept", "application/json");
        if let Some(t) = self.bearer()? {
            req = req.bearer_auth(t);
        }
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let resp = req.send().await.map_err(|e| ApiError::Transport {
            url: url.clone(),
            cause: error_chain(&e),
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        // The body of an error is a metav1.Status naming the reason (e.g. RBAC's message).
        let body = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Status>(&body)
            .map(|s| s.message)
            .unwrap_or_default();
        Err(ApiError::Status {
            url,
            status: status.as_u16(),
            message,
        })
    }

    /// GET `path` (with query) and decode the JSON body.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        let url = format!("{}{path}", self.server);
        let resp = self.send(path, Some(REQUEST_TIMEOUT)).await?;
        let body = resp.bytes().await.map_err(|e| ApiError::Transport {
            url: url.clone(),
            cause: error_chain(&e),
        })?;
        serde_json::from_slice(&body).map_err(|e| ApiError::Decode {
            url,
            cause: e.to_string(),
        })
    }

    /// Starts a watch (`path` carries `watch=1` and the other query parameters).
    pub async fn watch(&self, path: &str) -> Result<WatchStream, ApiError> {
        let resp = self.send(path, None).await?;
        Ok(WatchStream {
            url: format!("{}{path}", self.server),
            resp,
            buf: Vec::new(),
        })
    }
}

/// Events of one watch request, one JSON object per line.
pub struct WatchStream {
    url: String,
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl WatchStream {
    /// The next event; `Ok(None)` when the server ended the watch normally.
    pub async fn next(&mut self) -> Result<Option<WatchEvent>, ApiError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(&line)
                    .map(Some)
                    .map_err(|e| ApiError::Decode {
                        url: self.url.clone(),
                        cause: e.to_string(),
                    });
            }
            if self.buf.len() > MAX_LINE {
                return Err(ApiError::Decode {
                    url: self.url.clone(),
                    cause: format!("watch line longer than {MAX_LINE} bytes"),
                });
            }
            let chunk = tokio::time::timeout(WATCH_IDLE, self.resp.chunk())
                .await
                .map_err(|_| ApiError::Transport {
                    url: self.url.clone(),
                    cause: format!("watch idle for {}s", WATCH_IDLE.as_secs()),
                })?
                .map_err(|e| ApiError::Transport {
                    url: self.url.clone(),
                    cause: error_chain(&e),
                })?;
            match chunk {
                Some(c) => self.buf.extend_from_slice(&c),
                None if self.buf.iter().all(u8::is_ascii_whitespace) => return Ok(None),
                None => {
                    // A last event without its newline.
                    let line = std::mem::take(&mut self.buf);
                    return serde_json::from_slice(&line)
                        .map(Some)
                        .map_err(|e| ApiError::Decode {
                            url: self.url.clone(),
                            cause: e.to_string(),
                        });
                }
            }
        }
    }
}
